"""Folding an embedding lookup into the LSTM's input projection (``rows_of=(ids, E)``) gives
the same outputs, states and weight gradients as running the layer on x = E[ids], and dL/dE
equal to dL/dx summed by id."""

from __future__ import annotations

import numpy as np
import pytest

import lstmkit
from lstmkit.models import CharLM

TOL = {"rtol": 2e-4, "atol": 2e-5}


@pytest.fixture(params=[1, 2], ids=["serial", "2-parts"])
def parts(request):
    return request.param


def _run(layer, x, d_out, rows_of=None, parts=None):
    if parts is not None:
        layer.pin_plan({"parts": parts})
    layer.zero_grad()
    out, state = layer(x, rows_of=rows_of)
    dx, d0 = layer.backward(d_out)
    return out, state, dx, d0, {k: v.copy() for k, v in layer.grads.items()}


@pytest.mark.parametrize("options", [{}, {"peepholes": True}, {"bias": False},
                                     {"bidirectional": True}, {"num_layers": 2}],
                         ids=["plain", "peepholes", "no-bias", "bidirectional", "2-layers"])
def test_folded_layer_equals_the_layer_on_the_looked_up_rows(options, parts):
    T, B, V, D, H = 9, 4, 7, 5, 16
    rng = np.random.default_rng(3)
    ids = rng.integers(0, V, size=(T, B))
    E = rng.standard_normal((V, D)).astype(np.float32)
    x = E[ids]
    layer = lstmkit.LSTM(D, H, seed=1, **options)
    d_out = rng.standard_normal((T, B, H * (2 if options.get("bidirectional") else 1)))
    d_out = d_out.astype(np.float32)
    out, state, dx, d0, grads = _run(layer, x, d_out, parts=parts)
    assert layer.last_plans["l0"].projection == "direct"
    out_f, state_f, dE, d0_f, grads_f = _run(layer, x, d_out, rows_of=(ids, E), parts=parts)
    assert layer.last_plans["l0"].projection == "folded" and layer.folds_rows
    assert layer.last_plans["l0"].parts == parts
    np.testing.assert_allclose(out_f, out, **TOL)
    for a, b in zip(state_f + d0_f, state + d0):
        np.testing.assert_allclose(a, b, **TOL)
    for name in grads:
        np.testing.assert_allclose(grads_f[name], grads[name], err_msg=name, **TOL)
    expect = np.zeros_like(E)
    np.add.at(expect, ids, dx)
    assert dE.shape == (V, D)
    np.testing.assert_allclose(dE, expect, **TOL)


def test_rows_of_is_ignored_where_it_does_not_pay_or_run():
    T, B, V, D, H = 3, 2, 50, 4, 8  # V >= T * B: no folding, the usual dx
    rng = np.random.default_rng(0)
    ids = rng.integers(0, V, size=(T, B))
    E = rng.standard_normal((V, D)).astype(np.float32)
    for layer in (lstmkit.LSTM(D, H, seed=0), lstmkit.LSTM(D, H, seed=0, fast=False),
                  lstmkit.GRU(D, H, seed=0)):
        layer(E[ids], rows_of=(ids, E))
        dx, _ = layer.backward(np.ones((T, B, H), np.float32))
        assert dx.shape == (T, B, D)


def test_rows_of_is_checked():
    layer = lstmkit.LSTM(4, 8, seed=0)
    x = np.zeros((5, 3, 4), np.float32)
    with pytest.raises(ValueError, match="ids"):
        layer(x, rows_of=(np.zeros((5, 2), np.int64), np.zeros((6, 4), np.float32)))
    with pytest.raises(ValueError, match="E"):
        layer(x, rows_of=(np.zeros((5, 3), np.int64), np.zeros((6, 5), np.float32)))


@pytest.mark.parametrize("tie", [False, True])
def test_charlm_gradients_are_the_same_with_and_without_folding(tie):
    V, T, B = 11, 12, 4
    rng = np.random.default_rng(5)
    ids = rng.integers(0, V, size=(T, B))

    def grads(fold: bool):
        model = CharLM(V, hidden_size=16, num_layers=2, embedding_dim=16 if tie else 6,
                       tie_weights=tie, seed=2)
        if not fold:
            model.rnn.pin_plan({"projection": "direct"})
        model.zero_grad()
        logits, _ = model(ids)
        model.backward(np.tanh(logits))
        assert (model.rnn.last_plans["l0"].projection == "folded") == fold
        return logits, {k: v.copy() for k, v in model.grads.items()}

    logits_f, g_f = grads(True)
    logits, g = grads(False)
    np.testing.assert_allclose(logits_f, logits, **TOL)
    assert g.keys() == g_f.keys()
    for name in g:
        np.testing.assert_allclose(g_f[name], g[name], err_msg=name, **TOL)


def test_folding_with_batch_first_input(parts):
    T, B, V, D, H = 6, 6, 5, 3, 8  # T == B: the ids' orientation must come from batch_first
    rng = np.random.default_rng(11)
    ids = rng.integers(0, V, size=(B, T))  # batch first, like x
    E = rng.standard_normal((V, D)).astype(np.float32)
    layer = lstmkit.LSTM(D, H, seed=4, batch_first=True)
    d_out = rng.standard_normal((B, T, H)).astype(np.float32)
    out, _, dx, _, grads = _run(layer, E[ids], d_out, parts=parts)
    out_f, _, dE, _, grads_f = _run(layer, E[ids], d_out, rows_of=(ids, E), parts=parts)
    assert layer.folds_rows
    np.testing.assert_allclose(out_f, out, **TOL)
    for name in grads:
        np.testing.assert_allclose(grads_f[name], grads[name], err_msg=name, **TOL)
    expect = np.zeros_like(E)
    np.add.at(expect, ids, dx)
    np.testing.assert_allclose(dE, expect, **TOL)
