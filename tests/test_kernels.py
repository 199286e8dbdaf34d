"""Every plan of the engine (``lstmkit.engine``) against the readable reference.

Every plan that ``candidate_plans`` lists for a problem (the plans ``choose_plan`` can return,
pinned one by one) must give what ``ReferenceRecurrence`` gives, to floating-point rounding:
forward outputs, final states, gate sequences, dx, the gradient at the initial state and every
parameter gradient, for each LSTM variant, GRU and RNN (tanh, relu), with padded sequences,
in the reverse direction, float32 and float64; and through the layers (stacked,
bidirectional, initial state, batch_first, return_gates). Timing is not tested here: see
``benchmarks/bench_lstm.py``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import warnings

import numpy as np
import pytest

import lstmkit
from lstmkit.activations import NAMES, RELU, SIGMOID, TANH, Activation
from lstmkit.cells import GRUCell, LayerNormLSTMCell, LSTMCell, RNNCell
from lstmkit.engine import ENGINE, Plan, Thresholds, candidate_plans, choose_plan, kernels
from lstmkit.engine import plan as plan_module
from lstmkit.engine.reference import ReferenceRecurrence
from lstmkit.regularisation import cell_masks

REF = ReferenceRecurrence()
RTOL = {np.float32: 1e-5, np.float64: 1e-10}

LSTM_VARIANTS = [
    {},
    {"peepholes": True},
    {"forget_gate": False},
    {"input_gate": False},
    {"output_gate": False},
    {"coupled_input_forget": True},
    {"coupled_input_forget": True, "peepholes": True},
    {"forget_gate": False, "output_gate": False, "peepholes": True},
    {"input_gate": False, "peepholes": True, "bias": False},
]


# the row plans of a problem of B = 3 sequences: one part, or the batch split over 2 or 3 threads,
# each with and without BLAS's small-matrix blocks
ROWS = [Plan("rows", parts, small_products=small) for parts in (1, 2, 3) for small in (False, True)]


class Pinned:
    """The engine with one plan pinned, in ``ReferenceRecurrence``'s interface."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan

    def forward(self, cell, p, x, state0, mask, reverse, keep):
        out, final, cache = ENGINE.forward(cell, p, x, state0, mask, reverse, keep,
                                           plan=self.plan)
        assert cache["plan"] == self.plan
        return out, final, cache if keep else None

    backward = staticmethod(ENGINE.backward)
    gate_sequences = staticmethod(ENGINE.gate_sequences)


def fused_plans(cell, dtype, T, B, keep=True):
    """Every plan but the reference that can run this problem."""
    plans = [plan for plan in candidate_plans(cell, dtype, T, B, keep=keep)
             if plan.kernel != "reference"]
    assert plans, "no compiled plan for this problem"
    return plans


def assert_close(actual, expected, dtype, what):
    """Relative to the largest magnitude: |a - e| <= rtol * (|e| + max|e|)."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    assert np.isfinite(actual).all(), f"{what}: not finite"
    rtol = RTOL[dtype]
    scale = max(float(np.abs(expected).max(initial=0.0)), 1e-30)
    err = np.abs(actual - expected) / (np.abs(expected) + scale)
    assert err.max(initial=0.0) <= rtol, f"{what}: relative error {err.max():.3g} > {rtol}"


def run_recurrence(R, cell, p, x, state0, mask, reverse, d_out, d_state):
    out, final, cache = R.forward(cell, p, x, state0, mask, reverse, True)
    gates = R.gate_sequences(cell, cache)
    grads = {name: np.zeros_like(v) for name, v in p.items()}
    dx, d0 = R.backward(cell, p, cache, d_out, d_state, grads)
    return {"out": out, "final": final, "gates": gates, "grads": grads, "dx": dx, "d0": d0}


def random_problem(cell, dtype, T, B, masked, seed, scale=0.5):
    rng = np.random.default_rng(seed)
    p = {k: rng.uniform(-scale, scale, size=s).astype(dtype)
         for k, s in cell.param_shapes().items()}
    x = rng.standard_normal((T, B, cell.input_size)).astype(dtype)
    R = getattr(cell, "output_size", cell.hidden_size)  # the size of h (an LSTMP's P)
    widths = [R if name == "h" else cell.hidden_size for name in cell.state_names]
    state0 = tuple(rng.standard_normal((B, w)).astype(dtype) for w in widths)
    mask = None
    if masked:
        lengths = rng.integers(1, T + 1, size=B)
        lengths[0] = T
        mask = np.arange(T)[:, None] < lengths[None, :]
    d_out = rng.standard_normal((T, B, R)).astype(dtype)
    d_state = tuple(rng.standard_normal((B, w)).astype(dtype) for w in widths)
    return p, x, state0, mask, d_out, d_state


def compare(cell, dtype, T=6, B=3, masked=False, reverse=False, seed=0, training=False):
    """Every compiled plan for this problem against the reference; returns the plans run.
    ``training``: with the random masks a layer draws while training (zoneout's)."""
    p, x, state0, mask, d_out, d_state = random_problem(cell, dtype, T, B, masked, seed)
    if training:
        p.update(cell_masks(cell, np.random.default_rng(seed + 7), T, B, dtype))
    ref = run_recurrence(REF, cell, p, x, state0, mask, reverse, d_out, d_state)
    plans = fused_plans(cell, dtype, T, B)
    for plan in plans:
        fast = run_recurrence(Pinned(plan), cell, p, x, state0, mask, reverse, d_out, d_state)
        try:
            _assert_same(fast, ref, cell, p, dtype)
        except AssertionError as error:
            raise AssertionError(f"plan {plan}: {error}") from None
    return plans


def _assert_same(fast, ref, cell, p, dtype):
    assert_close(fast["out"], ref["out"], dtype, "output")
    for k, (a, e) in enumerate(zip(fast["final"], ref["final"])):
        assert_close(a, e, dtype, f"final state {cell.state_names[k]}")
    assert set(fast["gates"]) == set(ref["gates"])
    for name in ref["gates"]:
        assert_close(fast["gates"][name], ref["gates"][name], dtype, f"gate {name}")
    assert_close(fast["dx"], ref["dx"], dtype, "dx")
    for k, (a, e) in enumerate(zip(fast["d0"], ref["d0"])):
        assert_close(a, e, dtype, f"d state0 {cell.state_names[k]}")
    for name in p:
        assert_close(fast["grads"][name], ref["grads"][name], dtype, f"grad {name}")
    for value in (*fast["final"], *fast["d0"], fast["dx"]):
        assert value.dtype == dtype


# -- recurrence level: every variant, masks, reverse, dtypes -----------------------------------


# the float32 LSTM's candidate plans (B >= 2, no folding): the rows in 1-3 parts with and without
# small products; batch-inner in 1-3 parts x (panel/direct x backward panels, and the panel
# projection with BLAS's products)
LSTM_PLANS = 6 + 3 * (2 * 2 + 1)


@pytest.mark.parametrize("variant", LSTM_VARIANTS, ids=lambda v: ",".join(v) or "full")
@pytest.mark.parametrize("masked,reverse", [(False, False), (False, True), (True, False),
                                            (True, True)])
def test_lstm_variants_float32(variant, masked, reverse):
    plans = compare(LSTMCell(5, 7, **variant), np.float32, masked=masked, reverse=reverse)
    kinds = {(plan.kernel, plan.parts, plan.projection, plan.backward_panels, plan.blas_products)
             for plan in plans}
    # rows in 1-3 parts; 1-3 parts x (panel/direct x panels, and panel with BLAS's products)
    assert len(kinds) == 3 + 3 * (2 * 2 + 1)
    assert len(plans) == LSTM_PLANS  # the rows twice: with and without small products


@pytest.mark.parametrize("variant", LSTM_VARIANTS, ids=lambda v: ",".join(v) or "full")
@pytest.mark.parametrize("masked,reverse", [(False, False), (True, True)])
def test_lstm_variants_float64(variant, masked, reverse):
    compare(LSTMCell(5, 7, **variant), np.float64, masked=masked, reverse=reverse, seed=1)


def _with_parameters(name):
    """ONNX's function ``name`` with alpha = 0.7 and beta = 0.3 where it takes them."""
    act = Activation(name)
    return Activation(name, **{n: v for n, v in (("alpha", 0.7), ("beta", 0.3))
                               if n in act.parameters})


@pytest.mark.parametrize("k,name", list(enumerate(NAMES)), ids=NAMES)
def test_lstm_functions_and_clip(k, name):
    """Each of ONNX's functions (and identity), with non-default alpha and beta, as the gates',
    the cell input's and the cell output's function, over the variant switches, every other one
    with a clip, in every compiled plan of both dtypes (``cell_forward_options``)."""
    variant = LSTM_VARIANTS[k % len(LSTM_VARIANTS)]
    for j, field in enumerate(("recurrent_activation", "activation", "output_activation")):
        cell = LSTMCell(5, 7, **variant, **{field: _with_parameters(name)},
                        clip=0.4 if (k + j) % 2 else None)
        plans = compare(cell, np.float32, masked=j == 1, reverse=j == 2, seed=k)
        assert len(plans) == LSTM_PLANS
        compare(cell, np.float64, masked=j != 1, reverse=j == 0, seed=k)


@pytest.mark.parametrize("zoneout,zoneout_c", [(0.3, 0.0), (0.0, 0.4), (0.25, 0.5)])
@pytest.mark.parametrize("training", [False, True])
def test_lstm_zoneout(zoneout, zoneout_c, training):
    """Zoneout (Krueger et al. 2017) on h, c or both, with the masks drawn for training or
    their expectation (evaluation), in every plan, over the variant switches and the cell's
    functions, padded sequences, directions and both dtypes; single sequences (B = 1)."""
    for k, variant in enumerate(LSTM_VARIANTS):
        cell = LSTMCell(5, 7, **variant, zoneout=zoneout, zoneout_c=zoneout_c,
                        activation=Activation("Softsign") if k % 3 == 1 else TANH)
        for dtype in (np.float32, np.float64):
            plans = compare(cell, dtype, masked=k % 2 == 1, reverse=k % 4 >= 2, seed=k,
                            training=training)
            assert len(plans) == (LSTM_PLANS if dtype == np.float32 else 6)
    compare(LSTMCell(4, 19, peepholes=True, zoneout=zoneout, zoneout_c=zoneout_c), np.float32,
            T=7, B=1, masked=True, reverse=True, seed=3, training=training)


@pytest.mark.parametrize("k,name", list(enumerate(NAMES)), ids=NAMES)
def test_gru_rnn_functions_and_clip(k, name):
    """The GRU's gate and candidate functions and the RNN's function, each of ONNX's with
    non-default alpha and beta, every other one with a clip, in the compiled plan."""
    act = _with_parameters(name)
    clip = 0.4 if k % 2 else None
    for cell in (GRUCell(4, 6, recurrent_activation=act, clip=clip, bias=k % 3 != 0),
                 GRUCell(4, 6, activation=act, clip=clip), RNNCell(4, 6, activation=act,
                                                                   clip=clip)):
        for dtype in (np.float32, np.float64):
            plans = compare(cell, dtype, masked=k % 2 == 0, reverse=k % 4 >= 2, seed=k)
            assert plans == ROWS


def assert_rows_only(cell, masked, reverse, refusal):
    """A pass without gradients in chunks of 2 steps equals the reference, and a batch-inner
    plan is refused (saying ``refusal``); returns the final state."""
    p, x, state0, mask, _, _ = random_problem(cell, np.float32, 7, 3, masked, 6)
    ref_out, ref_final, _ = REF.forward(cell, p, x, state0, mask, reverse, False)
    out, final, _ = ENGINE.forward(cell, p, x, state0, mask, reverse, False,
                                   plan=Plan("rows", chunk_steps=2))
    assert_close(out, ref_out, np.float32, "no-grad output")
    for a, e in zip(final, ref_final):
        assert_close(a, e, np.float32, "no-grad final state")
    with pytest.raises(ValueError, match=refusal):
        ENGINE.forward(cell, p, x, state0, mask, reverse, True, plan=Plan("batch-inner"))
    return final


@pytest.mark.parametrize("masked,reverse", [(False, False), (True, True)])
def test_lstm_projection(masked, reverse):
    """proj_size (LSTMP, h = W_hr (o * tanh(c))) in the row kernels, over the variant switches,
    with the cell's functions and zoneout (masks drawn, or their expectation), both dtypes,
    B = 1 and chunked no-grad passes; the batch-inner plans refuse it."""
    for k, variant in enumerate(LSTM_VARIANTS):
        cell = LSTMCell(5, 7, **variant, proj_size=1 + k % 5,
                        activation=Activation("Softsign") if k % 3 == 1 else TANH,
                        zoneout=0.3 if k % 2 else 0.0, zoneout_c=0.2 if k % 4 == 1 else 0.0)
        for dtype in (np.float32, np.float64):
            plans = compare(cell, dtype, masked=masked, reverse=reverse, seed=k,
                            training=k % 4 == 3)
            assert plans == ROWS
    compare(LSTMCell(4, 9, proj_size=3, peepholes=True), np.float32, T=5, B=1, masked=masked,
            reverse=reverse)
    cell = LSTMCell(4, 6, proj_size=2)
    assert choose(cell, B=64, T=50) == Plan("rows")
    assert_rows_only(cell, masked, reverse, refusal="do not implement")


@pytest.mark.parametrize("masked,reverse", [(False, False), (True, False), (False, True),
                                            (True, True)])
def test_lstm_recurrent_dropout(masked, reverse):
    """Recurrent dropout (one mask per gate and sequence on h_prev) in the row kernels, over
    the variant switches, with the cell's functions, zoneout and a projection, both dtypes and
    B = 1; without the masks (evaluation) it is the identity, as in the cell."""
    for k, variant in enumerate(LSTM_VARIANTS):
        cell = LSTMCell(5, 7, **variant, recurrent_dropout=0.4,
                        activation=Activation("Softsign") if k % 3 == 1 else TANH,
                        zoneout=0.3 if k % 4 == 2 else 0.0, proj_size=3 if k % 3 == 2 else 0)
        for dtype in (np.float32, np.float64):
            for training in (True, False):
                plans = compare(cell, dtype, masked=masked, reverse=reverse, seed=k,
                                training=training)
                assert plans == ROWS
    compare(LSTMCell(4, 9, recurrent_dropout=0.5, peepholes=True), np.float32, T=5, B=1,
            masked=masked, reverse=reverse, training=True)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("masked,reverse", [(False, False), (True, False), (False, True),
                                            (True, True)])
def test_gru_cho_et_al(dtype, masked, reverse):
    """Cho et al.'s GRU (linear_before_reset=False: n = g(W_in x + W_hn (r * h_prev) + b)) in
    the compiled row plan, with and without biases, functions and clip, B = 1 included."""
    for k, kw in enumerate(({}, {"bias": False},
                            {"activation": Activation("Softsign"), "clip": 0.5})):
        plans = compare(GRUCell(4, 6, linear_before_reset=False, **kw), dtype, masked=masked,
                        reverse=reverse, seed=k)
        assert plans == ROWS
    compare(GRUCell(3, 5, linear_before_reset=False), dtype, T=4, B=1, masked=masked,
            reverse=reverse)


@pytest.mark.parametrize("masked,reverse", [(False, False), (True, False), (False, True),
                                            (True, True)])
def test_lstm_full_gate_recurrence(masked, reverse):
    """Greff's FGR (the gates see the previous step's i, f, o through W_gg; the gate values
    are a state, carried past padding) in the row kernels, with peepholes, the cell's
    functions and clip, zoneout, a projection and recurrent dropout, both dtypes, B = 1 and
    chunked no-grad passes; the batch-inner plans refuse it."""
    for k, kw in enumerate(({}, {"peepholes": True}, {"activation": "softsign", "clip": 0.6},
                            {"zoneout": 0.3, "zoneout_c": 0.2, "peepholes": True},
                            {"proj_size": 3, "recurrent_dropout": 0.3, "bias": False})):
        cell = LSTMCell(5, 7, full_gate_recurrence=True, **{
            name: Activation(value.capitalize()) if name == "activation" else value
            for name, value in kw.items()})
        for dtype in (np.float32, np.float64):
            plans = compare(cell, dtype, masked=masked, reverse=reverse, seed=k,
                            training=k >= 3)
            assert plans == ROWS
    cell = LSTMCell(4, 9, full_gate_recurrence=True, peepholes=True)
    compare(cell, np.float32, T=5, B=1, masked=masked, reverse=reverse)
    assert len(assert_rows_only(cell, masked, reverse, refusal="do not implement")) == 5


LAYER_NORM_OPTIONS = [{}, {"bias": False}, {"proj_size": 3}, {"zoneout": 0.3, "zoneout_c": 0.2},
                      {"recurrent_dropout": 0.4, "proj_size": 2},
                      {"recurrent_dropout": 0.3, "zoneout": 0.2, "bias": False}]


@pytest.mark.parametrize("kw", LAYER_NORM_OPTIONS, ids=lambda kw: ",".join(kw) or "plain")
@pytest.mark.parametrize("masked,reverse", [(False, False), (True, True)])
def test_layer_norm_lstm(kw, masked, reverse):
    """The layer-normalised LSTM (Haste's LayerNormLSTM) in the row kernels, with its options
    (projection, zoneout, recurrent dropout: masks drawn or their expectation), both dtypes,
    B = 1 and chunked no-grad passes; the batch-inner plans refuse it."""
    cell = LayerNormLSTMCell(5, 7, **kw)
    for dtype in (np.float32, np.float64):
        for training in (False, True):
            plans = compare(cell, dtype, masked=masked, reverse=reverse, seed=len(kw),
                            training=training)
            assert plans == ROWS
    compare(cell, np.float32, T=5, B=1, masked=masked, reverse=reverse, training=True)
    assert choose(cell, B=64, T=50) == Plan("rows")
    assert_rows_only(cell, masked, reverse, refusal="layer-normalised")


def test_clip_only_cuts_the_gates():
    """ONNX's clip bounds the gates' pre-activations, never c: every gate stays within
    f([-clip, clip]) while c (from a large c0) passes the clip, in every plan."""
    cell = LSTMCell(3, 5, clip=0.1, peepholes=True)
    plans = compare(cell, np.float32, T=9, B=4)
    p, x, state0, mask, d_out, d_state = random_problem(cell, np.float32, 9, 4, False, 0,
                                                        scale=3.0)
    state0 = (state0[0], 4.0 * state0[1])
    bound = 1.0 / (1.0 + np.exp(-0.1)) + 1e-6
    for plan in plans:
        run = run_recurrence(Pinned(plan), cell, p, x, state0, mask, False, d_out, d_state)
        for gate in "ifo":
            assert np.all(np.abs(run["gates"][gate] - 0.5) <= bound - 0.5), (plan, gate)
        assert np.all(np.abs(run["gates"]["g"]) <= np.tanh(0.1) + 1e-6), plan
        assert np.abs(run["gates"]["c"]).max() > 1.0, plan


@pytest.mark.parametrize("T,B,H", [(1, 1, 9), (6, 1, 17), (5, 1, 40), (3, 1, 70), (5, 4, 16),
                                   (4, 9, 24)])
def test_lstm_layouts_shapes(T, B, H):
    """Uneven unit splits, single sequences and steps, in every plan; with a mask (for a
    single sequence an all-true one, which still takes the masked kernels' state saving)."""
    compare(LSTMCell(3, H, peepholes=True), np.float32, T=T, B=B, masked=True, reverse=True,
            seed=H)
    compare(LSTMCell(3, H, coupled_input_forget=True), np.float32, T=T, B=B, seed=B)


@pytest.mark.parametrize("variant", LSTM_VARIANTS, ids=lambda v: ",".join(v) or "full")
@pytest.mark.parametrize("masked,reverse", [(False, False), (False, True), (True, True)])
def test_lstm_single_sequence_variants(variant, masked, reverse):
    """B = 1 in the batch-inner plans (1-3 parts), whose backward holds the gate gradients
    step-major (T, GH): every weight gradient's GEMM, the bias sums, dx and the peephole sums
    read them that way, in both directions and with a mask."""
    compare(LSTMCell(4, 19, **variant), np.float32, T=7, B=1, masked=masked, reverse=reverse,
            seed=2)


def choose(cell, dtype=np.float32, T=10, B=16, keep=True, threads=2, thresholds=None, **kw):
    """The chooser's plan with the default thresholds (not this host's, unless given)."""
    return choose_plan(cell, dtype, T, B, keep=keep, threads=threads,
                       thresholds=thresholds or Thresholds(), **kw)


def test_row_kernels_split_the_batch_when_large_enough():
    """The row kernels give each thread a part of the batch's sequences once a call's products
    reach ``rows_split_min_flops`` and each part has ``rows_split_min_b`` sequences; their
    results are the reference's (above: every test compares the 2- and 3-part row plans)."""
    def rows(cell, dtype=np.float32, **kw):
        plan = choose(cell, dtype, **kw)
        assert plan.kernel == "rows"
        return plan.parts

    for cell in (LayerNormLSTMCell(64, 128), LSTMCell(64, 128, recurrent_dropout=0.2),
                 GRUCell(64, 128), LSTMCell(64, 128, proj_size=64)):
        assert rows(cell, T=50, B=16, threads=2) == 2
        assert rows(cell, T=50, B=16, threads=1) == 1
        assert rows(cell, T=50, B=7, threads=2) == 1  # 3 sequences a part: too few
        assert rows(cell, T=1, B=8, threads=2) == 1  # too little work
        assert rows(cell, T=50, B=16, threads=8) == 4
    assert rows(LSTMCell(64, 128), np.float64, T=50, B=16) == 2


def test_small_products_where_the_blas_has_small_kernels():
    """The row kernels' per-step products in BLAS's small-matrix blocks (``small_products``):
    chosen where the BLAS has such kernels and a part has 2 to 32 sequences; the blocks are
    the widest multiple of 16 columns that fit (m n <= 1024, m n k < 1e6)."""
    from lstmkit.engine.kernels.blas import small_columns

    cell = GRUCell(64, 128)
    for B, threads, small in ((16, 1, True), (16, 2, True), (64, 2, True), (65, 2, False),
                              (1, 1, False), (16, 1, False)):
        plan = choose(cell, T=50, B=B, threads=threads, small_kernels=small or B != 16)
        assert plan.small_products == small, (B, threads)
    assert "small products" in str(choose(cell, T=50, B=16, small_kernels=True))
    assert [small_columns(m, 128) for m in (1, 4, 8, 16, 32, 64, 65)] == [
        1024, 256, 128, 64, 32, 16, 0]
    assert small_columns(8, 1024) == 112  # 8 * 128 * 1024 >= 1e6
    assert small_columns(32, 1024) == 16 and small_columns(64, 1024) == 0
    with pytest.raises(ValueError, match="small_products is the row kernels'"):
        ENGINE.plan(LSTMCell(3, 4), np.float32, 2, 3, True,
                    pin=Plan("batch-inner", small_products=True))
    cell = GRUCell(3, 4)
    p, x, state0 = random_problem(cell, np.float32, 2, 3, False, 0)[:3]
    with pytest.raises(ValueError, match="at most B = 3"):
        ENGINE.forward(cell, p, x, state0, None, False, True, plan=Plan("rows", 4))


def test_single_sequence_splits_its_steps_when_large_enough():
    """B = 1: on two threads, from H = 128 (LSTM) the steps are split over the threads, which
    only the batch-inner plans can do; smaller ones, one thread and float64 keep the row
    kernels. Either way the results are the reference's (above)."""
    assert choose(LSTMCell(3, 128), B=1) == Plan("batch-inner", 2, "panel", False, 10)
    assert choose(LSTMCell(3, 96), B=1).kernel == "rows"
    assert choose(LSTMCell(3, 128), B=1, threads=1).kernel == "rows"
    assert choose(LSTMCell(3, 128), np.float64, B=1).kernel == "rows"
    assert choose(LSTMCell(3, 96), B=2).parts == 1  # B >= 2 counts its flops once: 147k < 250k


def test_direct_input_projection_while_a_parts_weights_fit_the_cache():
    """The batch-inner LSTM projects each step's input in the step (B > 1) while a part's
    packed [W_ih | b | W_hh] has at most 2^18 numbers (1 MiB), with a panel per chunk of steps
    otherwise; B = 1 keeps its step-major panel."""
    def projection(B, D, H, threads=2):
        return choose(LSTMCell(D, H), B=B, threads=threads).projection

    assert projection(16, 16, 64) == projection(32, 64, 128) == "direct"
    assert projection(128, 128, 128) == projection(64, 128, 256) == "direct"
    assert projection(1, 32, 128) == "panel"
    assert projection(64, 256, 512) == projection(20, 650, 650) == "panel"
    assert projection(64, 128, 256, threads=1) == "panel"  # one part holds all of W: 1.5 MiB


def test_backward_reads_gate_gradients_as_panels_for_large_steps():
    """Backward's per-step product reads dZ as panels from G H = 1024 rows and B = 64 up
    (measured faster only there)."""
    def panels(B, H, **kw):
        return choose(LSTMCell(8, H, **kw), B=B).backward_panels

    assert panels(64, 512) and panels(64, 256) and panels(128, 650)
    assert not panels(32, 512) and not panels(20, 650)  # too few batch columns
    assert not panels(128, 128) and not panels(64, 256, output_gate=False)  # rows: 512, 768


def test_blas_products_from_64_sequences_where_the_kernels_are_16_floats_wide():
    """Where BLAS's per-step products beat the packed kernels (``blas_products_min_b``: 64 on a
    host with 16-float kernels, measured; never with 8-float ones unless calibrated), the
    batch-inner LSTM takes them, with the panel projection they need; a folded projection
    still wins. Their results are the reference's (above: ``LSTM_PLANS``)."""
    th = Thresholds(blas_products_min_b=64)
    big = choose(LSTMCell(128, 256), B=64, thresholds=th)
    assert big == Plan("batch-inner", 2, "panel", False, big.chunk_steps, blas_products=True)
    assert not choose(LSTMCell(128, 256), B=32, thresholds=th).blas_products
    folded = choose(LSTMCell(128, 256), B=64, thresholds=th, fold_rows=70)
    assert folded.projection == "folded" and not folded.blas_products
    assert not choose(LSTMCell(128, 256), B=64).blas_products  # the defaults: never
    host = plan_module.host_thresholds().blas_products_min_b
    assert host == (64 if kernels.vector_width() >= 16 else Thresholds().blas_products_min_b)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("masked,reverse", [(False, False), (False, True), (True, False),
                                            (True, True)])
def test_gru(dtype, bias, masked, reverse):
    compare(GRUCell(5, 7, bias=bias), dtype, masked=masked, reverse=reverse, seed=2)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("masked,reverse", [(False, False), (False, True), (True, False),
                                            (True, True)])
def test_rnn(dtype, nonlinearity, masked, reverse):
    compare(RNNCell(5, 7, nonlinearity=nonlinearity), dtype, masked=masked, reverse=reverse,
            seed=3)


@pytest.mark.parametrize("cell", [LSTMCell(3, 4, peepholes=True), GRUCell(3, 4), RNNCell(3, 4)],
                         ids=["lstm", "gru", "rnn"])
@pytest.mark.parametrize("T,B", [(1, 1), (1, 5), (9, 1), (4, 2)])
def test_edge_shapes(cell, T, B):
    """Single step, single sequence (the BLAS gemv path), both directions."""
    compare(cell, np.float32, T=T, B=B, reverse=False, seed=4)
    compare(cell, np.float32, T=T, B=B, masked=B > 1, reverse=True, seed=5)


@pytest.mark.parametrize("seed", range(4))
def test_random_shapes(seed):
    rng = np.random.default_rng(100 + seed)
    T, B, D, H = (int(v) for v in rng.integers(1, 12, size=4))
    variant = LSTM_VARIANTS[seed % len(LSTM_VARIANTS)]
    masked, reverse = bool(seed % 2), bool(seed // 2)
    compare(LSTMCell(D, H, **variant), np.float32, T=T, B=B, masked=masked and B > 1,
            reverse=reverse, seed=seed)
    compare(GRUCell(D, H), np.float32, T=T, B=B, masked=masked and B > 1, reverse=reverse,
            seed=seed)


@pytest.mark.parametrize("cell", [LSTMCell(4, 6, peepholes=True),
                                  LSTMCell(4, 6, activation=Activation("Softsign"), clip=0.5),
                                  GRUCell(4, 6), GRUCell(4, 6, activation=RELU, clip=0.5),
                                  GRUCell(4, 6, linear_before_reset=False),
                                  RNNCell(4, 6), RNNCell(4, 6, activation=SIGMOID, clip=0.5)],
                         ids=["lstm", "lstm-options", "gru", "gru-options", "gru-cho", "rnn",
                              "rnn-options"])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("reverse", [False, True])
def test_no_grad_forward_in_chunks(cell, masked, reverse):
    """Without a cache the input projection runs in chunks (here one step each): same
    outputs, nothing kept."""
    p, x, state0, mask, _, _ = random_problem(cell, np.float32, 7, 3, masked, 6)
    ref_out, ref_final, _ = REF.forward(cell, p, x, state0, mask, reverse, False)
    for plan in fused_plans(cell, np.float32, 7, 3, keep=False):
        plan = Plan(plan.kernel, plan.parts, plan.projection, plan.backward_panels, 1)
        out, final, cache = ENGINE.forward(cell, p, x, state0, mask, reverse, False, plan=plan)
        assert cache == {"plan": plan}
        assert_close(out, ref_out, np.float32, f"output, {plan}")
        for a, e in zip(final, ref_final):
            assert_close(a, e, np.float32, f"final state, {plan}")


def test_backward_twice_accumulates():
    """backward leaves the cache intact: a second call adds the same gradients again."""
    cell = LSTMCell(4, 5, peepholes=True)
    p, x, state0, mask, d_out, d_state = random_problem(cell, np.float32, 6, 3, True, 7)
    for plan in fused_plans(cell, np.float32, 6, 3):
        _, _, cache = ENGINE.forward(cell, p, x, state0, mask, False, True, plan=plan)
        grads = {name: np.zeros_like(v) for name, v in p.items()}
        dx1, _ = ENGINE.backward(cell, p, cache, d_out, d_state, grads)
        once = {name: g.copy() for name, g in grads.items()}
        dx2, _ = ENGINE.backward(cell, p, cache, d_out, d_state, grads)
        np.testing.assert_array_equal(dx1, dx2)
        for name in grads:
            np.testing.assert_allclose(grads[name], 2 * once[name], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("H, B, masked, reverse", [(4, 2, False, False), (64, 16, False, True),
                                                    (64, 16, True, False), (128, 1, False, False)])
def test_output_is_not_the_cache(H, B, masked, reverse):
    """Changing the returned output in place does not change what backward computes (a
    single thread and, from H = 64, steps split over two threads; with and without a mask)."""
    cell = LSTMCell(3, H)
    p, x, state0, mask, d_out, d_state = random_problem(cell, np.float32, 5, B, masked, 8)
    plan = choose(cell, T=5, B=B)
    assert plan.parts == (1 if H < 64 else 2)
    out, _, cache = ENGINE.forward(cell, p, x, state0, mask, reverse, True, plan=plan)
    grads = {name: np.zeros_like(v) for name, v in p.items()}
    dx1, _ = ENGINE.backward(cell, p, cache, d_out, d_state, grads)
    out[...] = 1e3
    grads2 = {name: np.zeros_like(v) for name, v in p.items()}
    dx2, _ = ENGINE.backward(cell, p, cache, d_out, d_state, grads2)
    np.testing.assert_array_equal(dx1, dx2)
    for name in grads:
        np.testing.assert_array_equal(grads[name], grads2[name])


# -- numerical safety --------------------------------------------------------------------------


def test_dropped_caches_lend_their_arrays_to_later_calls():
    """A forward cache's arrays go back to a pool when the cache is dropped (the layer's next
    call), unless something still holds one (a view): results are the same either way, and
    an array that is still held is never handed out again."""
    from lstmkit.engine import fused

    layer = lstmkit.LSTM(8, 16, seed=0)
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((40, 32, 8)).astype(np.float32) for _ in range(3)]
    fresh = lstmkit.LSTM(8, 16, seed=0)
    for x in xs:  # each call recycles the previous call's cache
        out, _ = layer(x)
        dx, _ = layer.backward(np.ones_like(out))
        fresh._cache = None
        fused._RECYCLED.arrays.clear()  # the second layer always runs on fresh arrays
        fused._RECYCLED.nbytes = 0
        ref, _ = fresh(x)
        ref_dx, _ = fresh.backward(np.ones_like(ref))
        np.testing.assert_array_equal(out, ref)
        np.testing.assert_array_equal(dx, ref_dx)
    held = layer._cache["caches"][0]["Z"]
    view = held[:1]
    layer(xs[0])  # drops the cache that holds `held`
    assert not any(a is held for free in fused._RECYCLED.arrays.values() for a in free)
    layer(xs[1])
    layer(xs[2])
    assert all(c["Z"] is not held for c in layer._cache["caches"])
    assert view.base is held
    dropped = id(layer._cache["caches"][0]["Z"])  # an id: a reference would hold it
    layer(xs[0])
    assert any(id(a) == dropped for free in fused._RECYCLED.arrays.values() for a in free)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cell", [LSTMCell(3, 4, peepholes=True), GRUCell(3, 4), RNNCell(3, 4)],
                         ids=["lstm", "gru", "rnn"])
def test_huge_preactivations(cell, dtype):
    """|z| ~ 1e4: no warning, finite, and the same saturated values as the reference."""
    p, x, state0, mask, d_out, d_state = random_problem(cell, dtype, 5, 3, True, 9)
    for name in p:
        p[name] *= 2e3
    x *= 10
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fast = run_recurrence(ENGINE, cell, p, x, state0, mask, False, d_out, d_state)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = run_recurrence(REF, cell, p, x, state0, mask, False, d_out, d_state)
    for value in (fast["out"], fast["dx"], *fast["final"], *fast["d0"], *fast["grads"].values(),
                  *fast["gates"].values()):
        assert np.isfinite(value).all()
    np.testing.assert_allclose(fast["out"], ref["out"], rtol=1e-4, atol=1e-4)
    for name in ref["gates"]:
        np.testing.assert_allclose(fast["gates"][name], ref["gates"][name], rtol=1e-4, atol=1e-4)


def test_gate_functions_accuracy():
    """The vectorised float32 sigmoid/tanh are within the ulp their docstrings state (2.3 and
    about 1); extremes are exact 0/1; nothing denormal near the clamps."""
    from numba import njit
    from scipy.special import expit

    from lstmkit.engine.kernels.gates import sigmoid, tanh

    @njit(error_model="numpy")
    def apply(x, s, t):
        for k in range(x.shape[0]):
            s[k] = sigmoid(x[k])
            t[k] = tanh(x[k])

    rng = np.random.default_rng(10)
    x = np.concatenate([rng.standard_normal(20000) * 4, rng.uniform(-90, 90, 20000),
                        np.linspace(-1e-3, 1e-3, 2001), np.linspace(-100, 100, 400001),
                        np.linspace(-87.4, -87.3, 1001), np.linspace(87.3, 87.4, 1001),
                        [0.0, 1e4, -1e4, 1e30, -1e30, 88.8, -88.8, 1e-30]]).astype(np.float32)
    s, t = np.empty_like(x), np.empty_like(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        apply(x, s, t)
    x64 = x.astype(np.float64)
    s_true = expit(x64)
    t_true = np.tanh(x64)
    normal = s_true > 1.2e-38
    ulp_s = np.abs(s - s_true)[normal] / np.spacing(s_true[normal].astype(np.float32))
    ulp_t = np.abs(t - t_true) / np.spacing(np.maximum(np.abs(t_true), 1e-37).astype(np.float32))
    assert ulp_s.max() <= 2.5 and ulp_t.max() <= 1.5
    assert np.abs(s - s_true).max() < 1e-37 + 4 * np.spacing(np.float32(1))
    assert s[x == 1e4][0] == 1.0 and s[x == -1e4][0] == 0.0
    assert t[x == 1e4][0] == 1.0 and t[x == -1e4][0] == -1.0
    assert not np.any((s != 0) & (np.abs(s) < np.finfo(np.float32).tiny))  # no denormals
    special = np.tile(np.array([np.nan, np.inf, -np.inf], dtype=np.float32), 8)  # + vector path
    s, t = np.empty_like(special), np.empty_like(special)
    apply(special, s, t)  # NaN propagates (a diverged run must show), infinities saturate
    assert np.isnan(s[::3]).all() and np.isnan(t[::3]).all()
    assert (s[1::3] == 1).all() and (s[2::3] == 0).all()
    assert (t[1::3] == 1).all() and (t[2::3] == -1).all()


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN"])
def test_long_backward_flushes_denormals(mode):
    """Back through time a decaying gradient goes from normal numbers straight to 0: nothing
    subnormal is left in dx, the initial-state gradient or any parameter gradient."""
    T, tiny = 400, np.finfo(np.float32).tiny
    kw = {"forget_bias": -3.0} if mode == "LSTM" else {}
    layer = getattr(lstmkit, mode)(4, 8, seed=0, **kw)
    if mode != "LSTM":  # a contracting recurrence: the gradient shrinks every step
        for value in layer.params.values():
            value *= 0.3
    x = np.random.default_rng(11).standard_normal((T, 2, 4)).astype(np.float32)
    out, _ = layer(x)
    d_out = np.zeros_like(out)
    d_out[-1] = 1.0
    dx, d0 = layer.backward(d_out)
    per_step = np.abs(dx).reshape(T, -1).max(axis=1)
    assert per_step[0] == 0.0 and per_step[-1] > 1e-6  # it did decay all the way to zero
    nonzero = per_step[per_step > 0]
    assert nonzero.min() < 1e-30  # ... through the smallest normal numbers
    for value in (dx, *(d0 if isinstance(d0, tuple) else (d0,)), *layer.grads.values()):
        magnitude = np.abs(value)
        assert not np.any((magnitude > 0) & (magnitude < tiny))


def test_gemm_strided_views():
    from numba import njit

    from lstmkit.engine.kernels.blas import gemm

    @njit
    def call(ta, tb, alpha, a, b, beta, c):
        gemm(ta, tb, alpha, a, b, beta, c)

    rng = np.random.default_rng(12)
    for dtype in (np.float32, np.float64):
        for ta in (False, True):
            for tb in (False, True):
                for m, n in ((1, 3), (4, 3), (4, 1), (1, 1)):
                    a = rng.standard_normal((6, 9)).astype(dtype)[:, 1:6]
                    a = a[:5, :m] if ta else a[:m, :5]
                    b = rng.standard_normal((7, 10)).astype(dtype)
                    b = b[:n, 2:7] if tb else b[:5, 2:2 + n]
                    c_full = rng.standard_normal((m, 8)).astype(dtype)
                    c = c_full[:, 2:2 + n] if n > 1 else rng.standard_normal((m, 1)).astype(dtype)
                    expected = 0.5 * ((a.T if ta else a) @ (b.T if tb else b)) + 2.0 * c
                    call(ta, tb, 0.5, a, b, 2.0, c)
                    np.testing.assert_allclose(c, expected, rtol=1e-5)


# -- through the layers ------------------------------------------------------------------------


def layer_pair(mode, D, H, **kw):
    fast = getattr(lstmkit, mode)(D, H, seed=3, **kw)
    slow = getattr(lstmkit, mode)(D, H, seed=3, fast=False, **kw)
    return fast, slow


def run_layer(layer, x, state, lengths, d_out, d_state):
    layer.zero_grad()
    out, state_n, gates = layer(x, state, lengths=lengths, return_gates=True)
    dx, d0 = layer.backward(d_out, d_state)
    return out, state_n, gates, dx, d0, {n: g.copy() for n, g in layer.grads.items()}


def flat(value):
    if isinstance(value, (tuple, list)):
        return [v for item in value for v in flat(item)]
    return [value]


LAYER_CASES = [
    ("LSTM", {"num_layers": 2, "bidirectional": True, "peepholes": True}, False, True, True),
    ("LSTM", {"num_layers": 2, "coupled_input_forget": True}, True, True, False),
    ("LSTM", {"bidirectional": True, "forget_gate": False, "dtype": "float64"}, True, False,
     True),
    ("GRU", {"num_layers": 2, "bidirectional": True}, False, True, True),
    ("RNN", {"nonlinearity": "relu", "bidirectional": True, "num_layers": 2}, True, True, True),
]


@pytest.mark.parametrize("mode,kw,batch_first,with_state,with_lengths", LAYER_CASES)
def test_layers_fast_equals_reference(mode, kw, batch_first, with_state, with_lengths):
    T, B, D, H = 7, 4, 5, 6
    fast, slow = layer_pair(mode, D, H, batch_first=batch_first, **kw)
    dtype = fast.dtype.type
    rng = np.random.default_rng(13)
    x = rng.standard_normal((B, T, D) if batch_first else (T, B, D)).astype(dtype)
    L = fast.num_layers * fast.num_directions
    n_state = 2 if mode == "LSTM" else 1
    state = None
    if with_state:
        parts = tuple(rng.standard_normal((L, B, H)).astype(dtype) for _ in range(n_state))
        state = parts if n_state == 2 else parts[0]
    lengths = np.array([T, 3, 1, 5]) if with_lengths else None
    out_shape = (B, T, fast.num_directions * H) if batch_first else (T, B,
                                                                     fast.num_directions * H)
    d_out = rng.standard_normal(out_shape).astype(dtype)
    d_parts = tuple(rng.standard_normal((L, B, H)).astype(dtype) for _ in range(n_state))
    d_state = d_parts if n_state == 2 else d_parts[0]
    a = run_layer(fast, x, state, lengths, d_out, d_state)
    e = run_layer(slow, x, state, lengths, d_out, d_state)
    assert all(plan.kernel != "reference" for plan in fast.last_plans.values())
    assert all(plan.kernel == "reference" for plan in slow.last_plans.values())
    assert len(fast.last_plans) == fast.num_layers * fast.num_directions
    assert_close(a[0], e[0], dtype, "output")
    for u, v in zip(flat(a[1]), flat(e[1])):
        assert_close(u, v, dtype, "state_n")
    assert a[2].keys() == e[2].keys()
    for key in e[2]:
        for name in e[2][key]:
            assert_close(a[2][key][name], e[2][key][name], dtype, f"gates {key} {name}")
    assert_close(a[3], e[3], dtype, "dx")
    for u, v in zip(flat(a[4]), flat(e[4])):
        assert_close(u, v, dtype, "d state_0")
    for name in e[5]:
        assert_close(a[5][name], e[5][name], dtype, f"grad {name}")


def test_no_grad_layer_matches():
    fast, slow = layer_pair("LSTM", 5, 6, num_layers=2, bidirectional=True)
    x = np.random.default_rng(14).standard_normal((8, 3, 5)).astype(np.float32)
    with lstmkit.no_grad():
        out_f, (h_f, c_f) = fast(x, lengths=np.array([8, 2, 5]))
        out_s, (h_s, c_s) = slow(x, lengths=np.array([8, 2, 5]))
    assert_close(out_f, out_s, np.float32, "output")
    assert_close(h_f, h_s, np.float32, "h_n")
    assert_close(c_f, c_s, np.float32, "c_n")


def test_switches():
    layer = lstmkit.LSTM(3, 4, seed=0)
    x = np.random.default_rng(15).standard_normal((4, 2, 3)).astype(np.float32)
    assert kernels.is_enabled()
    layer(x)
    assert layer.last_plans["l0"].kernel == "batch-inner"
    try:
        kernels.set_enabled(False)
        assert not kernels.is_enabled()
        layer(x)
        assert layer.last_plans["l0"] == Plan("reference")
        layer.backward(np.ones((4, 2, 4), np.float32))
    finally:
        kernels.set_enabled(True)
    for mode in ("LSTM", "GRU", "RNN"):
        slow = getattr(lstmkit, mode)(3, 4, fast=False)
        slow(x)
        assert slow.last_plans == {"l0": Plan("reference")}


def test_environment_switch():
    code = ("import numpy as np, lstmkit, lstmkit.engine.kernels as k; layer = lstmkit.LSTM(2, 3); "
            "layer(np.zeros((2, 1, 2), np.float32)); "
            "print(k.is_enabled(), layer.last_plans['l0'].kernel)")
    for value, expected in (("0", "False reference"), ("1", "True rows")):
        env = dict(os.environ, LSTMKIT_KERNELS=value)
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                env=env, check=True)
        assert result.stdout.strip() == expected


# -- against PyTorch, fast path on -------------------------------------------------------------


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN"])
def test_quick_parity_with_torch(mode):
    """The quick PyTorch check (packed variable-length batch) with the default fast path."""
    torch = pytest.importorskip("torch")
    T, B, D, H = 8, 3, 4, 5
    torch.manual_seed(0)
    module = getattr(torch.nn, mode)(D, H, num_layers=2, bidirectional=True)
    layer = getattr(lstmkit, mode)(D, H, num_layers=2, bidirectional=True, seed=0)
    layer.load_state_dict(module.state_dict())
    rng = np.random.default_rng(16)
    x = rng.standard_normal((T, B, D)).astype(np.float32)
    lengths = np.array([8, 5, 2])
    xt = torch.tensor(x, requires_grad=True)
    packed = torch.nn.utils.rnn.pack_padded_sequence(xt, torch.tensor(lengths),
                                                     enforce_sorted=False)
    out_t, _ = module(packed)
    out_t, _ = torch.nn.utils.rnn.pad_packed_sequence(out_t, total_length=T)
    out_t.backward(torch.ones_like(out_t))
    out, _ = layer(x, lengths=lengths)
    dx, _ = layer.backward(np.ones_like(out))
    np.testing.assert_allclose(out, out_t.detach().numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-4, atol=1e-5)
    for name, param in module.named_parameters():
        np.testing.assert_allclose(layer.grads[name], param.grad.numpy(), rtol=1e-4, atol=1e-5)


def test_bench_command_runs_without_torch(tmp_path, monkeypatch):
    """``lstmkit bench`` works with PyTorch absent (simulated) and writes its JSON."""
    import json

    from click.testing import CliRunner

    from lstmkit.cli import main

    monkeypatch.setenv("LSTMKIT_BENCH_NO_TORCH", "1")
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(main, ["bench", "--quick", "--shapes", "5,2,3,4", "--reps", "1",
                                       "--json", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["results"][0]["shape"] == [5, 2, 3, 4]
    assert report["results"][0]["train"]["lstmkit"]["median_s"] > 0
    assert "torch" not in report["results"][0]["train"]
    assert report["results"][0]["train"]["sgemm_gflops"] > 0  # the peak timed alongside


def test_bench_summary_of_the_peak_timed_alongside():
    """The large shapes' share of the peak, of the run's (start or end) and of the sgemm timed
    in each shape's own alternation, in the summary and the table."""
    from lstmkit import benchmark

    def entry(gflops, sgemm):
        timing = {"median_s": 0.01, "min_s": 0.01, "runs_s": [0.01], "gflops": gflops}
        return {"flops": gflops * 1e7, "lstmkit": timing, "sgemm_gflops": sgemm}

    results = [{"shape": list(shape), "train": entry(90.0 + k, 100.0 + 20 * k),
                "infer": entry(50.0, 100.0)} for k, shape in enumerate(sorted(benchmark.LARGE))]
    results.append({"shape": [5, 2, 3, 4], "train": entry(1.0, 100.0),
                    "infer": entry(1.0, 100.0)})
    summary = benchmark._summary(results, 120.0, with_torch=False)
    train, infer = summary["train"], summary["infer"]
    np.testing.assert_allclose(train["large_shapes_fraction_of_peak"], [0.75, 91 / 120, 92 / 120])
    np.testing.assert_allclose(train["large_shapes_fraction_of_peak_alongside"],
                               [0.9, 91 / 120, 92 / 140])
    assert not train["large_shapes_ge_80pct_peak"]
    assert not train["large_shapes_ge_80pct_peak_alongside"]  # 92 / 140 < 0.8
    np.testing.assert_allclose(infer["large_shapes_fraction_of_peak_alongside"], [0.5] * 3)
    report = {"peak_gflops": {"numpy": 120.0}, "machine": {}, "results": results,
              "summary": summary}
    table = benchmark.format_table(report)
    assert "%along" in table
    assert "of the sgemm timed alongside: 90%, 76%, 66%" in table


def test_parallel_kernels_survive_fork():
    """A child forked after parallel kernels ran still trains (serially), without aborting."""
    import multiprocessing

    from lstmkit.engine.kernels import threads

    if threads.kernel_threads() < 2 or "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("needs 2 threads and fork")
    code = (
        "import multiprocessing as mp, numpy as np, lstmkit\n"
        "from lstmkit.engine.kernels import threads\n"
        "layer = lstmkit.LSTM(8, 256, seed=0)\n"
        "x = np.ones((3, 64, 8), np.float32)\n"
        "layer(x)\n"
        "def child(q):\n"
        "    out, _ = layer(x)\n"
        "    q.put(float(out.sum()))\n"
        "q = mp.get_context('fork').Queue()\n"
        "p = mp.get_context('fork').Process(target=child, args=(q,))\n"
        "p.start(); p.join(120)\n"
        "print(p.exitcode, q.get(timeout=5) if p.exitcode == 0 else None, threads._parallel_pid)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300)
    words = result.stdout.split()
    assert words[0] == "0", result.stdout + result.stderr
    assert words[-1] != "None"  # the parent did run parallel kernels before the fork


def test_stale_compiled_kernels_are_dropped(tmp_path, monkeypatch):
    """When a kernel source changes, cached machine code built from the old one is deleted."""
    from lstmkit.engine import kernels as k

    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path))
    here = os.path.dirname(os.path.abspath(k.__file__))
    mirror = tmp_path / os.path.splitdrive(here)[1].lstrip(os.sep)
    mirror.mkdir(parents=True)
    (mirror / "lstm.lstm_forward-1.py311.nbi").write_bytes(b"old")
    (mirror / "lstmkit-kernels.sha256").write_text("not the digest")
    k._drop_stale_compiled_kernels()
    assert not (mirror / "lstm.lstm_forward-1.py311.nbi").exists()
    (mirror / "lstm.lstm_forward-1.py311.nbi").write_bytes(b"current")
    k._drop_stale_compiled_kernels()  # digest now matches: the cache stays
    assert (mirror / "lstm.lstm_forward-1.py311.nbi").exists()
    other = 8 if k.vector_width() == 16 else 16  # kernels generated for another vector width
    monkeypatch.setenv("LSTMKIT_VECTOR_WIDTH", str(other))
    k._drop_stale_compiled_kernels()
    assert not (mirror / "lstm.lstm_forward-1.py311.nbi").exists()


def test_row_kernels_blas_runs_on_the_kernels_thread_count(monkeypatch):
    """``lstmkit.set_num_threads(n)`` holds the BLAS the row kernels call to n threads (one for
    a single sequence, and one in each part of a split plan, whose parts are the threads): at
    n = 1 a second BLAS thread would take the other core from another process (two 1-thread
    jobs side by side each ran 2x slower)."""
    from lstmkit.engine import fused
    from lstmkit.engine.kernels import threads

    handle = threads._scipy_openblas()
    if handle is None:
        pytest.skip("the kernels' BLAS cannot be queried")
    import numba

    seen = []
    run_parts = fused._run_row_parts

    def spy(rp, parallel, serial, *args):
        def seen_then(kernel):
            def run(*a):
                seen.append(int(handle[1]()))  # the BLAS threads as the kernel starts
                return kernel(*a)
            return run
        return run_parts(rp, seen_then(parallel), seen_then(serial), *args)

    monkeypatch.setattr(fused, "_run_row_parts", spy)
    previous = lstmkit.get_num_threads()
    layer = lstmkit.GRU(4, 8, seed=0)
    x = np.zeros((3, 4, 4), np.float32)
    try:
        lstmkit.set_num_threads(1)
        layer.pin_plan({"kernel": "rows", "parts": 1})
        layer(x)
        assert seen == [1]
        if numba.config.NUMBA_NUM_THREADS >= 2:
            lstmkit.set_num_threads(2)
            layer(x)
            layer(x[:, :1])  # a single sequence
            layer.pin_plan({"kernel": "rows", "parts": 2})
            layer(x)
            assert seen == [1, 2, 1, 1]  # the split plan: one region, BLAS on 1 thread
    finally:
        lstmkit.set_num_threads(previous)


def test_set_num_threads_holds_in_every_thread():
    """``lstmkit.set_num_threads(n)`` is the process's, as ``torch.set_num_threads`` (Numba's
    own count is per thread, and a new thread would start with all cores): a layer called from
    another thread runs the plan of n threads, so the same numbers as in the main thread."""
    import threading

    import numba

    previous = lstmkit.get_num_threads()
    layer = lstmkit.LSTM(32, 128, seed=0)
    x = np.random.default_rng(0).standard_normal((20, 16, 32)).astype(np.float32)
    seen = {}

    def run(name):
        out, _ = layer(x)
        seen[name] = (layer.last_plans["l0"].parts, out)

    try:
        for n in sorted({1, min(2, numba.config.NUMBA_NUM_THREADS)}):
            lstmkit.set_num_threads(n)
            run(f"main {n}")
            worker = threading.Thread(target=run, args=(f"thread {n}",))
            worker.start()
            worker.join()
            assert seen[f"thread {n}"][0] == seen[f"main {n}"][0] == n
            np.testing.assert_array_equal(seen[f"thread {n}"][1], seen[f"main {n}"][1])
    finally:
        lstmkit.set_num_threads(previous)


@pytest.mark.parametrize("user_setting", [None, "5000"])
def test_kernels_openmp_threads_sleep_soon_after_a_region(user_setting):
    """Numba's OpenMP runtime is loaded with GOMP_SPINCOUNT = 30000 (its idle threads sleep
    soon after a parallel region instead of spinning for milliseconds on the cores the next
    call needs), unless the user chose a setting; the variable is not left in the
    environment, for PyTorch's runtime or child processes."""
    pytest.importorskip("numba.np.ufunc.omppool", reason="needs Numba's OpenMP layer")
    code = (
        "import os, numpy as np, lstmkit\n"
        "layer = lstmkit.LSTM(4, 32)\n"
        "layer.pin_plan({'kernel': 'batch-inner', 'parts': 2})\n"
        "layer(np.ones((3, 8, 4), np.float32))\n"
        "print('left:', os.environ.get('GOMP_SPINCOUNT'))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    env["OMP_DISPLAY_ENV"] = "VERBOSE"
    env["NUMBA_THREADING_LAYER"] = "omp"
    if user_setting:
        env["GOMP_SPINCOUNT"] = user_setting
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300, env=env)
    settings = re.findall(r"GOMP_SPINCOUNT = '(\d+)'", result.stderr)
    if user_setting:
        assert settings and set(settings) == {user_setting}, result.stderr
        assert result.stdout.strip().endswith(f"left: {user_setting}")
    else:
        assert "30000" in settings, result.stderr
        assert result.stdout.strip().endswith("left: None")


@pytest.mark.parametrize("user_setting", [None, "25"])
def test_kernels_blas_threads_sleep_soon_after_a_call(user_setting):
    """SciPy's OpenBLAS (the kernels') is loaded with OPENBLAS_THREAD_TIMEOUT = 20 (its idle
    threads sleep ~0.4 ms after a call instead of spinning ~0.1 s on the cores the next
    call's threads need), also when NumPy (whose own OpenBLAS is named alike) came first,
    unless the user chose a setting; the variable is not left in the environment. Seen by
    recording the variable when the first SciPy module is looked up (the library loads with
    it)."""
    code = (
        "import os, sys\n"
        "seen = []\n"
        "class Spy:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'scipy' and not seen:\n"
        "            seen.append(os.environ.get('OPENBLAS_THREAD_TIMEOUT'))\n"
        "sys.meta_path.insert(0, Spy())\n"
        "import numpy\n"
        "import lstmkit\n"
        "print('loaded with:', seen[0], 'left:', os.environ.get('OPENBLAS_THREAD_TIMEOUT'))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    if user_setting:
        env["OPENBLAS_THREAD_TIMEOUT"] = user_setting
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300, env=env)
    assert result.returncode == 0, result.stderr
    expected = user_setting or "20"
    assert result.stdout.strip().endswith(f"loaded with: {expected} left: {user_setting}")


def test_torch_keeps_its_own_openmp_after_parallel_kernels():
    """Parallel kernels run before ``import torch`` must not hand PyTorch the system's OpenMP
    runtime (PyTorch's GRU/RNN are then tens of times slower): PyTorch's copy stays loaded."""
    torch_spec = __import__("importlib.util").util.find_spec("torch")
    if torch_spec is None or not sys.platform.startswith("linux"):
        pytest.skip("needs PyTorch on Linux")
    bundled = [os.path.join(folder, "lib", "libgomp.so.1")
               for folder in torch_spec.submodule_search_locations]
    if not any(os.path.exists(path) for path in bundled):
        pytest.skip("this PyTorch build has no bundled OpenMP runtime")
    code = (
        "import os, numpy as np, lstmkit\n"
        "layer = lstmkit.LSTM(4, 32)\n"
        "layer.pin_plan({'kernel': 'batch-inner', 'parts': 2})\n"
        "layer(np.ones((3, 8, 4), np.float32))\n"
        "import torch\n"
        "torch.nn.GRU(4, 8)(torch.ones(3, 2, 4))\n"
        "maps = open('/proc/self/maps').read()\n"
        "print(any('torch/lib/libgomp' in line for line in maps.splitlines()))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300)
    assert result.stdout.strip().endswith("True"), result.stdout + result.stderr
