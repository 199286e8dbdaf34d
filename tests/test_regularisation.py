"""Regularisation inside the recurrence: variational recurrent dropout, zoneout and weight drop.

Exact gradients (finite differences in float64 with the masks held fixed), only in training
mode, reproducible from the layer's seed, the equations checked on masks chosen by hand, and the
plan each runs on."""

from __future__ import annotations

import numpy as np
import pytest

import lstmkit
from lstmkit.cells import LSTMCell
from lstmkit.engine import ReferenceRecurrence
from lstmkit.regularisation import cell_masks
from tests.test_engine import check_gradients

REF = ReferenceRecurrence()


class FixedNoise:
    """The layer, its generator reset before every call: each forward pass (the finite
    differences' included) draws the same masks."""

    def __init__(self, layer, seed=11):
        self.layer, self.seed = layer, seed

    def __call__(self, *args, **kwargs):
        self.layer._rng = np.random.default_rng(self.seed)
        return self.layer(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.layer, name)


OPTIONS = [
    {"recurrent_dropout": 0.4},
    {"zoneout": 0.3},
    {"zoneout_c": 0.3, "peepholes": True},
    {"weight_drop": 0.5},
    {"recurrent_dropout": 0.3, "zoneout": 0.2, "zoneout_c": 0.2, "weight_drop": 0.3,
     "proj_size": 2, "num_layers": 2, "bidirectional": True},
    {"recurrent_dropout": 0.3, "zoneout": 0.5, "coupled_input_forget": True},
    {"recurrent_dropout": 0.3, "zoneout": 0.3, "zoneout_c": 0.3, "proj_size": 2,
     "full_gate_recurrence": True, "peepholes": True, "activation": "elu", "clip": 0.8},
]


@pytest.mark.parametrize("kw", OPTIONS, ids=lambda kw: ",".join(kw))
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_finite_difference_gradients(kw, training):
    layer = lstmkit.LSTM(2, 3, dtype="float64", seed=0, **kw)
    layer.train(training)
    rng = np.random.default_rng(1)
    L = kw.get("num_layers", 1) * (2 if kw.get("bidirectional") else 1)
    x = rng.standard_normal((4, 2, 2))
    state = (rng.standard_normal((L, 2, kw.get("proj_size", 3))),
             rng.standard_normal((L, 2, 3)))
    check_gradients(FixedNoise(layer), x, state, np.array([4, 3]))


def test_masks_change_with_each_call_and_repeat_with_the_seed():
    x = np.random.default_rng(0).standard_normal((6, 3, 2))
    kw = {"recurrent_dropout": 0.5, "zoneout": 0.3, "zoneout_c": 0.3, "weight_drop": 0.5}
    a = lstmkit.LSTM(2, 4, dtype="float64", seed=5, **kw)
    b = lstmkit.LSTM(2, 4, dtype="float64", seed=5, **kw)
    first, second = a(x)[0], a(x)[0]
    assert not np.allclose(first, second)
    np.testing.assert_array_equal(b(x)[0], first)


@pytest.mark.parametrize("kw", [{"recurrent_dropout": 0.5}, {"weight_drop": 0.5}])
def test_dropout_is_off_in_evaluation_and_any_plan_runs_it(kw):
    x = np.random.default_rng(0).standard_normal((6, 3, 2)).astype(np.float32)
    layer = lstmkit.LSTM(2, 4, seed=5, **kw).eval()
    plain = lstmkit.LSTM(2, 4, seed=5).eval()
    np.testing.assert_array_equal(layer(x)[0], plain(x)[0])
    assert layer.last_plans["l0"].kernel != "reference"
    layer.train()
    layer(x)
    # recurrent dropout's per-gate products run on the row kernels only
    expected = "rows" if "recurrent_dropout" in kw else plain.last_plans["l0"].kernel
    assert layer.last_plans["l0"].kernel == expected


def test_weight_drop_on_a_fused_plan_equals_the_reference():
    x = np.random.default_rng(0).standard_normal((6, 3, 2))
    runs = []
    for plan in (None, "reference"):
        layer = FixedNoise(lstmkit.LSTM(2, 4, weight_drop=0.5, dtype="float64", seed=5))
        layer.pin_plan(plan)
        out, _ = layer(x)
        layer.backward(np.ones_like(out))
        runs.append((layer.last_plans["l0"].kernel, out, layer.grads["weight_hh_l0"].copy()))
    (fused, out_f, g_f), (ref, out_r, g_r) = runs
    assert fused != "reference" and ref == "reference"
    np.testing.assert_allclose(out_f, out_r, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(g_f, g_r, rtol=1e-12, atol=1e-14)
    dropped = (g_r == 0.0).mean()
    assert 0.2 < dropped < 0.8  # the gradient reaches only the kept weights


def cell_run(cell, p, x, state0):
    out, state, _ = REF.forward(cell, p, x, state0, None, False, False)
    return out, state


def test_zoneout_keeps_the_previous_state_where_the_mask_says_so():
    rng = np.random.default_rng(0)
    T, B, D, H = 5, 2, 3, 4
    cell = LSTMCell(D, H, zoneout=0.5, zoneout_c=0.5)
    p = {name: rng.standard_normal(shape) for name, shape in cell.param_shapes().items()}
    x = rng.standard_normal((T, B, D))
    state0 = (rng.standard_normal((B, H)), rng.standard_normal((B, H)))
    ones = np.ones((T, B, H))
    out, (h, c) = cell_run(cell, {**p, "zoneout_mask": ones, "zoneout_c_mask": ones}, x, state0)
    np.testing.assert_array_equal(out, np.broadcast_to(state0[0], out.shape))
    np.testing.assert_array_equal(c, state0[1])
    zeros = np.zeros((T, B, H))
    plain = cell_run(LSTMCell(D, H), p, x, state0)[0]
    zoned = cell_run(cell, {**p, "zoneout_mask": zeros, "zoneout_c_mask": zeros}, x, state0)[0]
    np.testing.assert_allclose(zoned, plain, rtol=1e-14)


def test_zoneout_in_evaluation_is_the_expectation():
    rng = np.random.default_rng(0)
    T, B, D, H, z = 5, 2, 3, 4, 0.3
    layer = lstmkit.LSTM(D, H, zoneout=z, dtype="float64", seed=0).eval()
    x = rng.standard_normal((T, B, D))
    out, _ = layer(x)
    p = {k[: -len("_l0")]: v for k, v in layer.params.items()}
    h, c = np.zeros((B, H)), np.zeros((B, H))
    cell = LSTMCell(D, H)
    for t in range(T):
        (h_new, c), _ = cell.forward(x[t], (h, c), p)
        h = z * h + (1 - z) * h_new  # Haste's evaluation: h = z h_prev + (1 - z) h_new
        np.testing.assert_allclose(out[t], h, rtol=1e-12)


def test_recurrent_dropout_is_one_mask_per_gate_on_h_prev():
    rng = np.random.default_rng(0)
    T, B, D, H = 4, 3, 2, 5
    cell = LSTMCell(D, H, recurrent_dropout=0.5)
    masks = cell_masks(cell, rng, T, B, np.float64)
    drop = masks["recurrent_dropout_mask"]
    assert drop.shape == (4, B, H) and set(np.unique(drop)) <= {0.0, 2.0}
    p = {name: rng.standard_normal(shape) for name, shape in cell.param_shapes().items()}
    x = rng.standard_normal((T, B, D))
    state0 = (rng.standard_normal((B, H)), rng.standard_normal((B, H)))
    out, _ = cell_run(cell, {**p, **masks}, x, state0)
    # by hand: gate k's recurrent input is (h_prev * drop[k]) W_hh[k]^T, the same masks each step
    h, c = state0
    W = p["weight_hh"].reshape(4, H, H)
    for t in range(T):
        rec = np.concatenate([(h * drop[k]) @ W[k].T for k in range(4)], axis=1)
        z = x[t] @ p["weight_ih"].T + rec + p["bias_ih"] + p["bias_hh"]
        i, f, g, o = (z[:, k * H:(k + 1) * H] for k in range(4))
        sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
        c = sig(f) * c + sig(i) * np.tanh(g)
        h = sig(o) * np.tanh(c)
        np.testing.assert_allclose(out[t], h, rtol=1e-12)


def test_zoneout_masks_are_fresh_each_step_and_recurrent_dropout_fixed():
    cell = LSTMCell(2, 50, recurrent_dropout=0.5, zoneout=0.5, zoneout_c=0.25)
    masks = cell_masks(cell, np.random.default_rng(0), 40, 8, np.float32)
    assert masks["zoneout_mask"].shape == (40, 8, 50)
    assert abs(masks["zoneout_mask"].mean() - 0.5) < 0.02
    assert abs(masks["zoneout_c_mask"].mean() - 0.25) < 0.02
    assert not np.array_equal(masks["zoneout_mask"][0], masks["zoneout_mask"][1])
    assert masks["recurrent_dropout_mask"].dtype == np.float32


@pytest.mark.parametrize("rate", [0.01, 0.1, 0.5, 0.9])
@pytest.mark.parametrize("shape", [(3, 5, 7), (200, 16, 64)])
def test_zoneout_mask_keeps_each_number_with_its_rate(rate, shape):
    """Each number of a zoneout mask is 1 with probability ``rate`` (32-bit integers from the
    generator's raw words, odd sizes included): the count of ones is within 5 standard
    deviations of the binomial's mean; the same seed gives the same mask."""
    from lstmkit.regularisation import zoneout_mask

    mask = zoneout_mask(np.random.default_rng(3), shape, rate, np.float32)
    assert mask.shape == shape and mask.dtype == np.float32
    assert set(np.unique(mask)) <= {0.0, 1.0}
    n = mask.size
    assert abs(mask.sum() - n * rate) <= 5 * np.sqrt(n * rate * (1 - rate)) + 1
    np.testing.assert_array_equal(mask, zoneout_mask(np.random.default_rng(3), shape, rate,
                                                     np.float32))


def test_gates_and_trace_with_regularisation():
    layer = lstmkit.LSTM(2, 3, zoneout=0.5, zoneout_c=0.5, recurrent_dropout=0.3,
                         dtype="float64", seed=0)
    x = np.random.default_rng(0).standard_normal((5, 2, 2))
    _, (_, c), gates = layer(x, return_gates=True)
    np.testing.assert_array_equal(gates["l0"]["c"][-1], c[0])  # the zoned state c
    traced = layer.trace(x)  # no noise: zoneout's expectation, as in evaluation
    np.testing.assert_allclose(traced.output, layer.eval()(x)[0], rtol=1e-14)


@pytest.mark.parametrize("name", ["recurrent_dropout", "zoneout", "zoneout_c", "weight_drop"])
@pytest.mark.parametrize("value", [1.0, -0.1])
def test_rates_are_checked(name, value):
    with pytest.raises(ValueError, match=name):
        lstmkit.LSTM(2, 3, **{name: value})


def test_onnx_export(tmp_path):
    with pytest.raises(ValueError, match="zoneout"):
        lstmkit.export_onnx(lstmkit.LSTM(2, 3, zoneout=0.1), tmp_path / "z.onnx")
    pytest.importorskip("onnx")
    # dropout is off in evaluation: the exported LSTM is the plain one
    lstmkit.export_onnx(lstmkit.LSTM(2, 3, recurrent_dropout=0.3, weight_drop=0.3),
                        tmp_path / "d.onnx")
    assert (tmp_path / "d.onnx").exists()


@pytest.mark.parametrize("mode,kw", [("GRU", {}), ("GRU", {"linear_before_reset": False,
                                                             "bidirectional": True}),
                                      ("RNN", {"num_layers": 2})])
def test_weight_drop_of_gru_and_rnn(mode, kw):
    layer = getattr(lstmkit, mode)(2, 3, weight_drop=0.4, dtype="float64", seed=0, **kw)
    rng = np.random.default_rng(1)
    L = kw.get("num_layers", 1) * (2 if kw.get("bidirectional") else 1)
    x = rng.standard_normal((4, 2, 2))
    check_gradients(FixedNoise(layer), x, rng.standard_normal((L, 2, 3)), np.array([4, 3]))
    plain = getattr(lstmkit, mode)(2, 3, dtype="float64", seed=0, **kw)
    plain(x)
    assert layer.last_plans == plain.last_plans  # the plain cell's plan, compiled where it is
    np.testing.assert_array_equal(layer.eval()(x)[0], plain.eval()(x)[0])
