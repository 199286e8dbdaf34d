"""LSTM with a projection (LSTMP, ``proj_size``): equal to ``torch.nn.LSTM(proj_size=...)``
in outputs, states and every gradient (float64), exact finite-difference gradients with the
variant switches, weights both ways, the plan it runs on, and its errors."""

from __future__ import annotations

import numpy as np
import pytest

import lstmkit
from lstmkit.interop.torch_convert import from_torch, load_torch_state_dict, to_torch
from tests.test_engine import check_gradients

torch = pytest.importorskip("torch")


def rel_err(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


CASES = [
    # num_layers, bidirectional, proj_size, batch_first, with_state, with_lengths
    (1, False, 3, False, False, False),
    (2, True, 2, False, True, True),
    (2, False, 1, True, True, False),
    (1, True, 4, True, False, True),
]


@pytest.mark.parametrize("L,bi,P,batch_first,with_state,with_lengths", CASES)
def test_matches_torch_lstm_with_proj_size(L, bi, P, batch_first, with_state, with_lengths):
    T, B, D, H = 7, 4, 3, 5
    torch.manual_seed(0)
    module = torch.nn.LSTM(D, H, num_layers=L, bidirectional=bi, proj_size=P,
                           batch_first=batch_first).double()
    layer = lstmkit.LSTM(D, H, num_layers=L, bidirectional=bi, proj_size=P,
                         batch_first=batch_first, dtype="float64", seed=1)
    assert list(layer.state_dict()) == list(module.state_dict())
    layer.load_state_dict(module.state_dict())
    nd = 2 if bi else 1
    rng = np.random.default_rng(3)
    x = rng.standard_normal((B, T, D) if batch_first else (T, B, D))
    state = ((rng.standard_normal((L * nd, B, P)), rng.standard_normal((L * nd, B, H)))
             if with_state else None)
    lengths = np.array([7, 2, 5, 1]) if with_lengths else None

    xt = torch.tensor(x, requires_grad=True)
    state_t = None if state is None else tuple(torch.tensor(s, requires_grad=True)
                                               for s in state)
    inp = xt if lengths is None else torch.nn.utils.rnn.pack_padded_sequence(
        xt, torch.tensor(lengths), batch_first=batch_first, enforce_sorted=False)
    out_t, (h_t, c_t) = module(inp, state_t)
    if lengths is not None:
        out_t, _ = torch.nn.utils.rnn.pad_packed_sequence(out_t, batch_first=batch_first,
                                                          total_length=T)
    out, (h, c) = layer(x, state, lengths=lengths)
    assert out.shape == tuple(out_t.shape) and out.shape[-1] == nd * P
    assert h.shape == (L * nd, B, P) and c.shape == (L * nd, B, H)
    for ours, theirs in ((out, out_t), (h, h_t), (c, c_t)):
        assert rel_err(ours, theirs.detach().numpy()) <= 1e-9

    g_out, g_h, g_c = (rng.standard_normal(a.shape) for a in (out, h, c))
    loss = ((out_t * torch.tensor(g_out)).sum() + (h_t * torch.tensor(g_h)).sum()
            + (c_t * torch.tensor(g_c)).sum())
    loss.backward()
    dx, (dh0, dc0) = layer.backward(g_out, (g_h, g_c))
    assert rel_err(dx, xt.grad.numpy()) <= 1e-9
    if with_state:
        assert rel_err(dh0, state_t[0].grad.numpy()) <= 1e-9
        assert rel_err(dc0, state_t[1].grad.numpy()) <= 1e-9
    for name, p in module.named_parameters():
        assert rel_err(layer.grads[name], p.grad.numpy()) <= 1e-9, name


@pytest.mark.parametrize("kw", [
    {"peepholes": True},
    {"coupled_input_forget": True, "peepholes": True, "num_layers": 2},
    {"output_gate": False, "bidirectional": True},
    {"bidirectional": True, "merge_mode": "mul", "num_layers": 2, "full_gate_recurrence": True},
])
def test_finite_difference_gradients_with_variant_switches(kw):
    layer = lstmkit.LSTM(2, 4, proj_size=2, dtype="float64", seed=0, **kw)
    rng = np.random.default_rng(0)
    L = kw.get("num_layers", 1) * (2 if kw.get("bidirectional") else 1)
    x = rng.standard_normal((4, 2, 2))
    state = (rng.standard_normal((L, 2, 2)), rng.standard_normal((L, 2, 4)))
    check_gradients(layer, x, state, np.array([4, 2]))


def test_weights_travel_both_ways(tmp_path):
    torch.manual_seed(1)
    module = torch.nn.LSTM(3, 6, num_layers=2, bidirectional=True, proj_size=4).double()
    layer = from_torch(module)
    assert layer.proj_size == 4 and layer.params["weight_hr_l1_reverse"].shape == (4, 6)
    x = np.random.default_rng(0).standard_normal((5, 2, 3))
    expected = module(torch.tensor(x))[0].detach().numpy()
    assert rel_err(layer(x)[0], expected) <= 1e-12
    back = to_torch(layer)
    assert back.proj_size == 4
    assert rel_err(back(torch.tensor(x))[0].detach().numpy(), expected) <= 1e-12
    path = tmp_path / "lstmp.pt"
    torch.save(module.state_dict(), path)
    loaded = load_torch_state_dict(path)
    assert (loaded.hidden_size, loaded.proj_size, loaded.num_layers) == (6, 4, 2)
    assert rel_err(loaded(x)[0], expected) <= 1e-12


def test_runs_on_the_row_kernels_and_equals_the_reference():
    """A projected layer runs the compiled row kernels (the batch-inner ones have no
    projection), with the same outputs and gradients as the reference plan."""
    x = np.random.default_rng(0).standard_normal((5, 3, 4)).astype(np.float32)
    runs = []
    for plan in (None, "reference"):
        layer = lstmkit.LSTM(4, 6, proj_size=3, seed=0, num_layers=2, bidirectional=True)
        layer.pin_plan(plan)
        out, _ = layer(x)
        layer.backward(np.ones_like(out))
        runs.append((layer.last_plans["l0"].kernel, out, dict(layer.grads)))
    (fused, out_f, g_f), (ref, out_r, g_r) = runs
    assert (fused, ref) == ("rows", "reference")
    np.testing.assert_allclose(out_f, out_r, rtol=1e-5, atol=1e-6)
    for name in g_r:
        np.testing.assert_allclose(g_f[name], g_r[name], rtol=1e-4, atol=1e-5, err_msg=name)
    plain = lstmkit.LSTM(4, 6, seed=0)
    plain(x)
    assert plain.last_plans["l0"].kernel != "reference"


def test_gates_and_trace_with_a_projection():
    layer = lstmkit.LSTM(3, 5, proj_size=2, num_layers=2, dtype="float64", seed=0)
    x = np.random.default_rng(0).standard_normal((4, 2, 3))
    out, (h, c), gates = layer(x, return_gates=True)
    assert gates["l1"]["c"].shape == (4, 2, 5) and gates["l1"]["o"].shape == (4, 2, 5)
    np.testing.assert_array_equal(gates["l1"]["c"][-1], c[1])
    trace = layer.trace(x)  # the reference loop; the call above ran the compiled rows plan
    np.testing.assert_allclose(trace.output, out, rtol=1e-12, atol=1e-15)
    assert trace.d_state(None)[0].shape == (2, 2, 2)


@pytest.mark.parametrize("P", [5, 7, -1])
def test_proj_size_must_be_below_hidden_size(P):
    with pytest.raises(ValueError, match="proj_size"):
        lstmkit.LSTM(3, 5, proj_size=P)


def test_state_shapes_are_checked():
    layer = lstmkit.LSTM(3, 5, proj_size=2, dtype="float64")
    x = np.zeros((4, 2, 3))
    with pytest.raises(ValueError, match=r"proj_size\) = \(1, 2, 2\)"):
        layer(x, (np.zeros((1, 2, 5)), np.zeros((1, 2, 5))))


def test_onnx_export_refuses_a_projection(tmp_path):
    with pytest.raises(ValueError, match="no projection"):
        lstmkit.export_onnx(lstmkit.LSTM(3, 5, proj_size=2), tmp_path / "p.onnx")
