"""Step modules lstmkit.LSTMCell / GRUCell / RNNCell: torch.nn.LSTMCell's interface, the
study note's step-by-step BPTT, state dicts both ways with PyTorch."""

from __future__ import annotations

import numpy as np
import pytest

import lstmkit
from lstmkit import cells


def bptt_by_hand(cell, x, d_out, state=None):
    """The study note's exercise: T calls, then T backward calls in reverse order."""
    lstm = isinstance(cell, lstmkit.LSTMCell)
    outs = []
    for t in range(x.shape[0]):
        state = cell(x[t], state)
        outs.append(state[0] if lstm else state)
    dh = np.zeros_like(outs[-1])
    dc = np.zeros_like(outs[-1]) if lstm else None
    dx = np.zeros_like(x)
    for t in reversed(range(x.shape[0])):
        if lstm:
            dx[t], (dh, dc) = cell.backward(dh + d_out[t], dc)
        else:
            dx[t], dh = cell.backward(dh + d_out[t])
    return np.stack(outs), dx, dh, dc


@pytest.mark.parametrize("mode, kw", [
    ("LSTM", {}), ("LSTM", {"peepholes": True, "forget_bias": 1.0, "clip": 0.8}),
    ("LSTM", {"coupled_input_forget": True, "output_activation": "identity"}),
    ("GRU", {}), ("GRU", {"linear_before_reset": False, "activation": "softsign"}),
    ("RNN", {"nonlinearity": "relu"}), ("RNN", {"activation": "elu"}),
])
def test_step_by_step_bptt_equals_the_layer(mode, kw):
    cell = getattr(lstmkit, f"{mode}Cell")(3, 4, dtype="float64", seed=5, **kw)
    layer = getattr(lstmkit, mode)(3, 4, dtype="float64", seed=5, fast=False, **kw)
    assert {k + "_l0": v.shape for k, v in cell.params.items()} == {
        k: v.shape for k, v in layer.params.items()}
    for name, value in cell.params.items():  # same initialisation for the same seed
        np.testing.assert_array_equal(value, layer.params[name + "_l0"])
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 2, 3))
    d_out = rng.standard_normal((5, 2, 4))
    out, dx, dh0, dc0 = bptt_by_hand(cell, x, d_out)
    ref, _ = layer(x)
    dx_ref, d0 = layer.backward(d_out)
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dh0, (d0[0] if mode == "LSTM" else d0)[0], rtol=1e-10,
                               atol=1e-12)
    for name, grad in cell.grads.items():
        np.testing.assert_allclose(grad, layer.grads[name + "_l0"], rtol=1e-10, atol=1e-12)
    assert cell.pending_steps == 0


def test_unbatched_zero_state_and_the_stack():
    cell = lstmkit.LSTMCell(3, 2, seed=0)
    x = np.ones(3, dtype=np.float32)
    h, c = cell(x)
    h2, c2 = cell(x[None], (np.zeros((1, 2), np.float32), np.zeros((1, 2), np.float32)))
    np.testing.assert_array_equal(h, h2[0])
    assert h.shape == (2,) and cell.pending_steps == 2
    dx, (dh, dc) = cell.backward(np.ones((1, 2), np.float32))  # the latest call: batched
    assert dx.shape == (1, 3) and cell.pending_steps == 1
    with pytest.raises(ValueError, match=r"expected \(2,\)"):
        cell.backward(np.ones((1, 2), np.float32))  # the first call was unbatched
    cell.backward(np.ones(2, np.float32))
    with pytest.raises(RuntimeError, match="no forward call left"):
        cell.backward(np.ones(2, np.float32))
    with lstmkit.no_grad():
        cell(x)
    assert cell.pending_steps == 0
    cell(x)
    cell.clear_steps()
    assert cell.pending_steps == 0


def test_step_module_errors():
    with pytest.raises(TypeError, match="a step module runs one step"):
        lstmkit.LSTMCell(3, 2, bidirectional=True)
    with pytest.raises(ValueError, match="full_gate_recurrence"):
        lstmkit.LSTMCell(3, 2, full_gate_recurrence=True)
    cell = lstmkit.GRUCell(3, 2)
    with pytest.raises(ValueError, match=r"must be \(B, 3\)"):
        cell(np.zeros((2, 4), np.float32))
    with pytest.raises(TypeError, match="float64"):
        cell(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="state\\[0\\] has shape"):
        cell(np.zeros((2, 3), np.float32), np.zeros((3, 2), np.float32))
    # the math dataclass keeps its name and place
    assert cells.LSTMCell is not lstmkit.LSTMCell
    assert cells.LSTMCell(3, 2).gates == ("i", "f", "g", "o")


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN"])
def test_state_dicts_both_ways_with_torch(mode):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    kw = {"nonlinearity": "relu"} if mode == "RNN" else {}
    theirs = getattr(torch.nn, f"{mode}Cell")(3, 4, dtype=torch.float64, **kw)
    ours = getattr(lstmkit, f"{mode}Cell")(3, 4, dtype="float64", **kw)
    assert set(ours.state_dict()) == set(theirs.state_dict())
    ours.load_state_dict(theirs.state_dict())
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3))
    state0 = rng.standard_normal((2, 4))
    if mode == "LSTM":
        c0 = rng.standard_normal((2, 4))
        h, c = ours(x, (state0, c0))
        th, tc = theirs(torch.from_numpy(x), (torch.from_numpy(state0), torch.from_numpy(c0)))
        np.testing.assert_allclose(c, tc.detach().numpy(), rtol=1e-12)
    else:
        h = ours(x, state0)
        th = theirs(torch.from_numpy(x), torch.from_numpy(state0))
    np.testing.assert_allclose(h, th.detach().numpy(), rtol=1e-12)
    # and back: PyTorch takes ours
    back = getattr(torch.nn, f"{mode}Cell")(3, 4, dtype=torch.float64, **kw)
    back.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})
    again = back(torch.from_numpy(x), (torch.from_numpy(state0), torch.from_numpy(c0))
                 if mode == "LSTM" else torch.from_numpy(state0))
    np.testing.assert_allclose((again[0] if mode == "LSTM" else again).detach().numpy(), h,
                               rtol=1e-12)


def test_gradients_match_torch_autograd():
    torch = pytest.importorskip("torch")
    torch.manual_seed(1)
    theirs = torch.nn.LSTMCell(3, 4, dtype=torch.float64)
    ours = lstmkit.LSTMCell(3, 4, dtype="float64")
    ours.load_state_dict(theirs.state_dict())
    x = np.random.default_rng(0).standard_normal((3, 2, 3))
    d_out = np.random.default_rng(1).standard_normal((3, 2, 4))
    _, dx, _, _ = bptt_by_hand(ours, x, d_out)
    xt = torch.from_numpy(x).requires_grad_()
    state = None
    outs = []
    for t in range(3):
        state = theirs(xt[t], state)
        outs.append(state[0])
    (torch.stack(outs) * torch.from_numpy(d_out)).sum().backward()
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-10)
    for name, p in theirs.named_parameters():
        np.testing.assert_allclose(ours.grads[name], p.grad.numpy(), rtol=1e-10, atol=1e-12)
