"""The engine without PyTorch: finite-difference gradients, the study note's claims, errors."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest

import lstmkit
from lstmkit.activations import SIGMOID_DERIVATIVE_MAX, sigmoid, sigmoid_derivative
from lstmkit.cells import LSTMCell, RNNCell


def valid_switches():
    for peep, fg, ig, og, cifg in itertools.product([False, True], repeat=5):
        if cifg and not (ig and fg):
            continue
        yield {"peepholes": peep, "forget_gate": fg, "input_gate": ig, "output_gate": og,
               "coupled_input_forget": cifg}


SWITCHES = list(valid_switches())


def loss_and_grads(layer, x, state, lengths, weights):
    """L = sum(out * w_out) + sum(state_n * w_state): value, and the analytic gradients."""
    out, st = layer(x, state, lengths=lengths)
    st = st if isinstance(st, tuple) else (st,)
    w_out, w_st = weights
    loss = float((out * w_out).sum() + sum((s * w).sum() for s, w in zip(st, w_st)))
    return loss, out, st


def numeric_grad(f, array, eps=1e-6):
    grad = np.zeros_like(array)
    flat, g = array.reshape(-1), grad.reshape(-1)
    for n in range(flat.size):
        old = flat[n]
        flat[n] = old + eps
        plus = f()
        flat[n] = old - eps
        minus = f()
        flat[n] = old
        g[n] = (plus - minus) / (2 * eps)
    return grad


def check_gradients(layer, x, state, lengths, tol=1e-6):
    rng = np.random.default_rng(7)
    _, out, st = loss_and_grads(layer, x, state, lengths, (0, [0] * 2))
    weights = (rng.standard_normal(out.shape), [rng.standard_normal(s.shape) for s in st])
    layer.zero_grad()
    _, out, st = loss_and_grads(layer, x, state, lengths, weights)
    d_state = tuple(weights[1]) if len(st) > 1 else weights[1][0]
    dx, d_state0 = layer.backward(weights[0], d_state)
    d_state0 = d_state0 if isinstance(d_state0, tuple) else (d_state0,)

    def f():
        return loss_and_grads(layer, x, state, lengths, weights)[0]

    checks = [("x", dx, x)] + [(name, layer.grads[name], p) for name, p in layer.params.items()]
    if state is not None:
        parts = state if isinstance(state, tuple) else (state,)
        checks += [(f"state{n}", d, s) for n, (d, s) in enumerate(zip(d_state0, parts))]
    for name, analytic, array in checks:
        numeric = numeric_grad(f, array)
        scale = max(np.abs(numeric).max(), 1e-3)
        assert np.abs(analytic - numeric).max() / scale <= tol, name


def switch_id(switches: dict) -> str:
    defaults = {"peepholes": False, "forget_gate": True, "input_gate": True,
                "output_gate": True, "coupled_input_forget": False}
    changed = [f"{k}={v}" for k, v in switches.items() if v != defaults[k]]
    return ",".join(changed) or "vanilla"


@pytest.mark.parametrize("switches", SWITCHES, ids=switch_id)
def test_lstm_switches_gradcheck(switches):
    forget_bias = 0.5 if switches["forget_gate"] else 0.0
    layer = lstmkit.LSTM(3, 3, dtype="float64", seed=0, forget_bias=forget_bias, **switches)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 2, 3))
    state = (rng.standard_normal((1, 2, 3)), rng.standard_normal((1, 2, 3)))
    check_gradients(layer, x, state, None)


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN"])
def test_stacked_bidirectional_lengths_gradcheck(mode):
    kw = {"peepholes": True} if mode == "LSTM" else {}
    layer = getattr(lstmkit, mode)(2, 3, num_layers=2, bidirectional=True, dtype="float64",
                                   seed=0, **kw)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((5, 3, 2))
    n = 2 if mode == "LSTM" else 1
    parts = tuple(rng.standard_normal((4, 3, 3)) for _ in range(n))
    check_gradients(layer, x, parts if n == 2 else parts[0], np.array([5, 2, 4]))


def test_gradients_past_the_end_are_zero():
    layer = lstmkit.LSTM(2, 3, dtype="float64", seed=0)
    x = np.random.default_rng(0).standard_normal((6, 2, 2))
    out, _ = layer(x, lengths=np.array([6, 2]))
    assert np.all(out[2:, 1] == 0)
    dx, _ = layer.backward(np.ones_like(out))
    assert np.all(dx[2:, 1] == 0)
    assert np.all(dx[:2, 1] != 0)


# -- the study note's claims -------------------------------------------------------------------

def test_sigmoid_derivative_bound():
    z = np.linspace(-20, 20, 400_001)
    d = sigmoid_derivative(z)
    s = sigmoid(z)
    assert np.allclose(d, s * (1 - s))
    assert d.max() <= SIGMOID_DERIVATIVE_MAX
    assert sigmoid_derivative(np.array(0.0)) == 0.25
    numeric = (sigmoid(z[1:]) - sigmoid(z[:-1])) / (z[1] - z[0])
    assert np.abs(numeric - sigmoid_derivative((z[1:] + z[:-1]) / 2)).max() < 1e-8


def test_constant_error_carousel_passes_gradient_exactly():
    """With f fixed at 1, dc_{t-1}/dc_t through the carousel is exactly 1."""
    rng = np.random.default_rng(0)
    cell = LSTMCell(3, 4, forget_gate=False)
    p = {n: rng.standard_normal(s) for n, s in cell.param_shapes().items()}
    g = {n: np.zeros(s) for n, s in cell.param_shapes().items()}
    x, h, c = rng.standard_normal((2, 3)), rng.standard_normal((2, 4)), rng.standard_normal((2, 4))
    _, cache = cell.forward(x, (h, c), p)
    dc = rng.standard_normal((2, 4))
    _, (_, dc_prev) = cell.backward((np.zeros((2, 4)), dc), cache, p, g)
    assert np.array_equal(dc_prev, dc)


def test_carousel_keeps_gradient_over_100_steps_where_rnn_vanishes():
    rng = np.random.default_rng(0)
    T = 100
    x = rng.standard_normal((T, 1, 2))
    lstm = lstmkit.LSTM(2, 4, forget_gate=False, dtype="float64", seed=0)
    lstm.params["weight_hh_l0"][...] = 0.0  # only the carousel links the steps
    lstm(x)
    d_out = np.zeros((T, 1, 4))
    _, (_, dc0) = lstm.backward(d_out, (np.zeros((1, 1, 4)), np.ones((1, 1, 4))))
    assert np.array_equal(dc0, np.ones((1, 1, 4)))
    rnn = lstmkit.RNN(2, 4, dtype="float64", seed=0)
    rnn(x)
    _, dh0 = rnn.backward(np.zeros((T, 1, 4)), np.ones((1, 1, 4)))
    assert np.abs(dh0).max() < 1e-6


def test_clipping_keeps_direction_and_sets_norm():
    rng = np.random.default_rng(0)
    grads = {"a": rng.standard_normal((3, 4)) * 10, "b": rng.standard_normal(5) * 10}
    before = {k: v.copy() for k, v in grads.items()}
    norm = lstmkit.clip_grad_norm(grads, 1.0)
    flat_before = np.concatenate([v.ravel() for v in before.values()])
    flat_after = np.concatenate([v.ravel() for v in grads.values()])
    assert norm == pytest.approx(np.linalg.norm(flat_before))
    assert np.linalg.norm(flat_after) == pytest.approx(1.0, rel=1e-5)
    cos = flat_after @ flat_before / (np.linalg.norm(flat_after) * np.linalg.norm(flat_before))
    assert cos == pytest.approx(1.0, abs=1e-12)
    small = {"a": np.full(4, 0.1)}
    lstmkit.clip_grad_norm(small, 1.0)
    assert np.array_equal(small["a"], np.full(4, 0.1))


def test_clipping_errors_and_value_clip():
    with pytest.raises(RuntimeError, match="cannot be clipped"):
        lstmkit.clip_grad_norm([np.array([np.nan, 1.0])], 1.0, error_if_nonfinite=True)
    with pytest.raises(ValueError, match="max_norm"):
        lstmkit.clip_grad_norm([np.ones(2)], -1.0)
    g = np.array([-3.0, 0.5, 4.0])
    lstmkit.clip_grad_value([g], 1.0)
    assert np.array_equal(g, [-1.0, 0.5, 1.0])


def test_clipping_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    for norm_type in (2.0, 1.0, float("inf")):
        arrays = [rng.standard_normal((4, 3)), rng.standard_normal(7)]
        params = [torch.zeros(a.shape, dtype=torch.float64, requires_grad=True) for a in arrays]
        for p, a in zip(params, arrays):
            p.grad = torch.tensor(a.copy())
        expected = torch.nn.utils.clip_grad_norm_(params, 0.5, norm_type=norm_type)
        got = lstmkit.clip_grad_norm(arrays, 0.5, norm_type=norm_type)
        assert got == pytest.approx(float(expected), rel=1e-12)
        for p, a in zip(params, arrays):
            assert np.allclose(a, p.grad.numpy(), rtol=1e-12, atol=0)


# -- options ------------------------------------------------------------------------------------

def test_orthogonal_init_and_forget_bias():
    layer = lstmkit.LSTM(3, 5, recurrent_init="orthogonal", forget_bias=1.0, dtype="float64",
                         seed=0)
    w = layer.params["weight_hh_l0"]
    for k in range(4):
        block = w[k * 5 : (k + 1) * 5]
        assert np.allclose(block @ block.T, np.eye(5))
    b = layer.params["bias_ih_l0"]
    bound = 1 / np.sqrt(5)
    assert np.all((b[5:10] > 1 - bound) & (b[5:10] < 1 + bound))
    assert np.all(np.abs(b[:5]) < bound)
    cifg = lstmkit.LSTM(3, 5, coupled_input_forget=True, forget_bias=2.0, seed=0)
    assert cifg.params["bias_ih_l0"].shape == (15,)
    assert np.all(cifg.params["bias_ih_l0"][:5] < -2 + bound)


def test_default_init_is_torch_uniform():
    layer = lstmkit.LSTM(10, 16, seed=0, peepholes=True)
    for value in layer.params.values():
        assert np.abs(value).max() <= 0.25
        assert value.dtype == np.float32
    assert layer.params["weight_ci_l0"].shape == (16,)


def test_stateful_equals_one_long_call_and_cuts_gradient():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((10, 2, 3))
    whole = lstmkit.LSTM(3, 4, dtype="float64", seed=0)
    out, (h, c) = whole(x)
    parts = lstmkit.LSTM(3, 4, dtype="float64", seed=0, stateful=True)
    a, _ = parts(x[:6])
    b, (h2, c2) = parts(x[6:])
    assert np.allclose(np.concatenate([a, b]), out, rtol=0, atol=1e-14)
    assert np.allclose(c2, c, rtol=0, atol=1e-14)
    parts.zero_grad()
    dx, _ = parts.backward(np.ones_like(b))
    assert dx.shape == (4, 2, 3)
    reference = lstmkit.LSTM(3, 4, dtype="float64", seed=0)
    _, st = reference(x[:6])
    reference(x[6:], st)
    reference.backward(np.ones_like(b))
    for name in parts.grads:
        assert np.allclose(parts.grads[name], reference.grads[name])
    parts.reset_state()
    fresh, _ = parts(x[:6])
    assert np.allclose(fresh, a)
    with pytest.raises(ValueError, match="reset_state"):
        parts(x[:, :1])


def test_return_gates_are_the_cell_values():
    layer = lstmkit.LSTM(3, 4, num_layers=2, bidirectional=True, peepholes=True, seed=0,
                         dtype="float64")
    x = np.random.default_rng(0).standard_normal((5, 2, 3))
    out, (h, c), gates = layer(x, return_gates=True)
    assert set(gates) == {"l0", "l0_reverse", "l1", "l1_reverse"}
    top = gates["l1"]
    assert set(top) == {"i", "f", "g", "o", "c"}
    assert np.allclose(top["o"] * np.tanh(top["c"]), out[:, :, :4])
    assert np.allclose(top["c"][-1], c[2])
    assert np.allclose(gates["l1_reverse"]["c"][0], c[3])
    for name in "ifo":
        assert np.all((top[name] > 0) & (top[name] < 1))
    no_forget = lstmkit.LSTM(3, 4, forget_gate=False, seed=0)
    _, _, g = no_forget(x.astype(np.float32), return_gates=True)
    assert np.all(g["l0"]["f"] == 1)


def test_batch_first_and_unbatched_agree():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 2, 3)).astype(np.float32)
    tm = lstmkit.GRU(3, 4, seed=0)
    bf = lstmkit.GRU(3, 4, seed=0, batch_first=True)
    out, h = tm(x)
    out_bf, h_bf = bf(x.transpose(1, 0, 2))
    assert np.allclose(out_bf.transpose(1, 0, 2), out) and np.allclose(h, h_bf)
    single, h1 = tm(x[:, 0])
    assert single.shape == (6, 4) and h1.shape == (1, 4)
    assert np.allclose(single, out[:, 0], atol=1e-6)
    dx, dh = tm.backward(np.ones_like(single))
    assert dx.shape == (6, 3) and dh.shape == (1, 4)


def test_no_grad_keeps_nothing():
    layer = lstmkit.LSTM(3, 4, seed=0)
    x = np.zeros((3, 1, 3), dtype=np.float32)
    with lstmkit.no_grad():
        layer(x)
    with pytest.raises(RuntimeError, match="forward"):
        layer.backward(np.zeros((3, 1, 4), dtype=np.float32))


# -- bad input: one clear error naming what was expected -----------------------------------------

@pytest.fixture
def lstm():
    return lstmkit.LSTM(3, 4, num_layers=2, seed=0)


@pytest.mark.parametrize(
    "x,error,match",
    [
        (np.zeros((2, 3, 4, 3), np.float32), ValueError, "3-D"),
        (np.zeros(3, np.float32), ValueError, "3-D"),
        (np.zeros((5, 2, 7), np.float32), ValueError, "input_size=3"),
        (np.zeros((5, 2, 3), np.int64), TypeError, "floating-point"),
        (np.zeros((5, 2, 3), np.float64), TypeError, "astype"),
        (np.full((5, 2, 3), np.nan, np.float32), ValueError, "NaN"),
        (np.full((5, 2, 3), np.inf, np.float32), ValueError, "Inf"),
        (np.zeros((0, 2, 3), np.float32), ValueError, "T = 0"),
        (np.zeros((4, 0, 3), np.float32), ValueError, "B = 0"),
        ("text", TypeError, "floating-point"),
    ],
)
def test_bad_input(lstm, x, error, match):
    with pytest.raises(error, match=match):
        lstm(x)


def test_bad_state_and_lengths(lstm):
    x = np.zeros((5, 2, 3), np.float32)
    h = np.zeros((2, 2, 4), np.float32)
    with pytest.raises(ValueError, match=r"expected \(num_layers \* num_directions, B"):
        lstm(x, (h, np.zeros((1, 2, 4), np.float32)))
    with pytest.raises(ValueError, match="pair"):
        lstm(x, h)
    with pytest.raises(ValueError, match=r"\[1, T=5\]"):
        lstm(x, lengths=np.array([6, 2]))
    with pytest.raises(ValueError, match=r"\[1, T=5\]"):
        lstm(x, lengths=np.array([0, 2]))
    with pytest.raises(ValueError, match="2 integers"):
        lstm(x, lengths=np.array([3]))
    with pytest.raises(ValueError, match="2 integers"):
        lstm(x, lengths=np.array([3.0, 2.0]))
    out, _ = lstm(x)
    with pytest.raises(ValueError, match="d_output has shape"):
        lstm.backward(out[:2])


def test_bad_construction():
    with pytest.raises(ValueError, match="hidden_size"):
        lstmkit.LSTM(3, 0)
    with pytest.raises(ValueError, match="dropout"):
        lstmkit.LSTM(3, 4, dropout=1.0)
    with pytest.raises(TypeError, match="float32"):
        lstmkit.LSTM(3, 4, dtype="int32")
    with pytest.raises(ValueError, match="input gate"):
        lstmkit.LSTM(3, 4, coupled_input_forget=True, input_gate=False)
    with pytest.raises(ValueError, match="nonlinearity"):
        lstmkit.RNN(3, 4, nonlinearity="sigmoid")
    with pytest.raises(ValueError, match="forget gate"):
        lstmkit.LSTM(3, 4, forget_gate=False, forget_bias=1.0)
    layer = lstmkit.LSTM(3, 4)
    with pytest.raises(KeyError, match="missing"):
        layer.load_state_dict({})
    sd = layer.state_dict()
    sd["weight_ih_l0"] = np.zeros((3, 3))
    with pytest.raises(ValueError, match=r"expected \(16, 3\)"):
        layer.load_state_dict(sd)


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN"])
def test_no_warning_for_huge_preactivations(mode):
    layer = getattr(lstmkit, mode)(3, 4, seed=0, **({"peepholes": True} if mode == "LSTM" else {}))
    for p in layer.params.values():
        p *= 4000.0
    x = np.full((20, 2, 3), 3.0, np.float32)
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        out, _ = layer(x)
        dx, _ = layer.backward(np.ones_like(out))
    assert np.isfinite(out).all() and np.isfinite(dx).all()


def test_rnn_cell_relu_derivative():
    cell = RNNCell(2, 2, nonlinearity="relu")
    p = {n: np.eye(2) if n.startswith("weight") else np.zeros(2) for n in cell.param_shapes()}
    g = {n: np.zeros(s) for n, s in cell.param_shapes().items()}
    (h,), cache = cell.forward(np.array([[1.0, -1.0]]), (np.zeros((1, 2)),), p)
    assert np.array_equal(h, [[1.0, 0.0]])
    dx, _ = cell.backward((np.ones((1, 2)),), cache, p, g)
    assert np.array_equal(dx, [[1.0, 0.0]])
