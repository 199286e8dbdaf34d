"""Parity with PyTorch: outputs, final states and every gradient of LSTM, GRU and RNN.

Relative error <= 1e-9 in float64 and <= 1e-4 in float32, for stacked, bidirectional,
batch_first layers, with an initial state, and with padded batches of variable length compared
against ``pack_padded_sequence``. Weights travel both ways through state_dict.
"""

from __future__ import annotations

import numpy as np
import pytest

import lstmkit

torch = pytest.importorskip("torch")

TOL = {"float64": 1e-9, "float32": 1e-4}


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


def make_pair(mode, D, H, dtype, **kw):
    torch.manual_seed(0)
    nonlin = kw.pop("nonlinearity", None)
    torch_kw = dict(kw)
    if nonlin is not None:
        torch_kw["nonlinearity"] = nonlin
    module = getattr(torch.nn, mode)(D, H, **torch_kw).to(getattr(torch, dtype))
    ours_kw = dict(kw)
    if nonlin is not None:
        ours_kw["nonlinearity"] = nonlin
    layer = getattr(lstmkit, mode)(D, H, dtype=dtype, seed=1, **ours_kw)
    layer.load_state_dict(module.state_dict())
    return module, layer


def run_torch(module, x, state, lengths, batch_first):
    xt = torch.tensor(x, requires_grad=True)
    state_t = None
    if state is not None:
        state_t = tuple(torch.tensor(s, requires_grad=True) for s in state)
    arg = state_t if (state_t is None or len(state_t) == 2) else state_t[0]
    inp = xt
    if lengths is not None:
        inp = torch.nn.utils.rnn.pack_padded_sequence(
            xt, torch.tensor(lengths), batch_first=batch_first, enforce_sorted=False
        )
    out, st = module(inp, arg)
    if lengths is not None:
        out, _ = torch.nn.utils.rnn.pad_packed_sequence(
            out, batch_first=batch_first, total_length=x.shape[1 if batch_first else 0]
        )
    st = st if isinstance(st, tuple) else (st,)
    return xt, state_t, out, st


CASES = [
    # mode, kwargs, batch_first, with_state, with_lengths
    ("LSTM", {}, False, False, False),
    ("LSTM", {"num_layers": 2, "bidirectional": True}, False, True, True),
    ("LSTM", {"num_layers": 3}, True, True, False),
    ("LSTM", {"bidirectional": True, "bias": False}, True, False, True),
    ("GRU", {}, False, False, False),
    ("GRU", {"num_layers": 2, "bidirectional": True}, True, True, True),
    ("GRU", {"bias": False}, False, True, False),
    ("RNN", {"nonlinearity": "tanh", "num_layers": 2}, False, True, True),
    ("RNN", {"nonlinearity": "relu", "bidirectional": True}, True, False, True),
]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("mode,kw,batch_first,with_state,with_lengths", CASES)
def test_matches_torch(dtype, mode, kw, batch_first, with_state, with_lengths):
    T, B, D, H = 9, 4, 5, 6
    module, layer = make_pair(mode, D, H, dtype, batch_first=batch_first, **kw)
    rng = np.random.default_rng(42)
    L = kw.get("num_layers", 1) * (2 if kw.get("bidirectional") else 1)
    shape = (B, T, D) if batch_first else (T, B, D)
    x = rng.standard_normal(shape).astype(dtype)
    n_state = 2 if mode == "LSTM" else 1
    state = (
        tuple(rng.standard_normal((L, B, H)).astype(dtype) for _ in range(n_state))
        if with_state else None
    )
    lengths = np.array([9, 3, 1, 6]) if with_lengths else None

    xt, state_t, out_t, st_t = run_torch(module, x, state, lengths, batch_first)
    ours_state = None if state is None else (state if mode == "LSTM" else state[0])
    out, st = layer(x, ours_state, lengths=lengths)
    st = st if isinstance(st, tuple) else (st,)

    tol = TOL[dtype]
    assert out.dtype == np.dtype(dtype)
    assert rel_err(out, out_t.detach().numpy()) <= tol
    for a, b in zip(st, st_t):
        assert rel_err(a, b.detach().numpy()) <= tol

    g_out = rng.standard_normal(out.shape).astype(dtype)
    g_st = tuple(rng.standard_normal(s.shape).astype(dtype) for s in st)
    loss = (out_t * torch.tensor(g_out)).sum()
    for s, g in zip(st_t, g_st):
        loss = loss + (s * torch.tensor(g)).sum()
    loss.backward()
    dx, d_state0 = layer.backward(g_out, g_st if mode == "LSTM" else g_st[0])
    assert rel_err(dx, xt.grad.numpy()) <= tol
    if with_state:
        d_state0 = d_state0 if isinstance(d_state0, tuple) else (d_state0,)
        for a, b in zip(d_state0, state_t):
            assert rel_err(a, b.grad.numpy()) <= tol
    names = [n for n, _ in module.named_parameters()]
    assert sorted(names) == sorted(layer.grads)
    for name, p in module.named_parameters():
        assert rel_err(layer.grads[name], p.grad.numpy()) <= tol, name


def test_state_dict_travels_both_ways():
    layer = lstmkit.LSTM(4, 5, num_layers=2, bidirectional=True, dtype="float64", seed=3)
    module = torch.nn.LSTM(4, 5, num_layers=2, bidirectional=True).double()
    module.load_state_dict({k: torch.tensor(v) for k, v in layer.state_dict().items()})
    x = np.random.default_rng(0).standard_normal((6, 2, 4))
    out, (h, c) = layer(x)
    out_t, (h_t, c_t) = module(torch.tensor(x))
    assert rel_err(out, out_t.detach().numpy()) <= 1e-12
    assert rel_err(c, c_t.detach().numpy()) <= 1e-12
    # and back: torch's keys, shapes and gate order are ours
    assert list(layer.state_dict()) == list(module.state_dict())
    other = lstmkit.LSTM(4, 5, num_layers=2, bidirectional=True, dtype="float64", seed=9)
    other.load_state_dict(module.state_dict())
    assert np.array_equal(other(x)[0], out)


def test_dropout_only_in_training():
    layer = lstmkit.LSTM(3, 4, num_layers=2, dropout=0.5, seed=0)
    x = np.random.default_rng(0).standard_normal((5, 2, 3)).astype(np.float32)
    a, _ = layer(x)
    b, _ = layer(x)
    assert not np.allclose(a, b)
    layer.eval()
    c, _ = layer(x)
    d, _ = layer(x)
    assert np.array_equal(c, d)
    module = torch.nn.LSTM(3, 4, num_layers=2, dropout=0.5).eval()
    module.load_state_dict({k: torch.tensor(v) for k, v in layer.state_dict().items()})
    assert rel_err(c, module(torch.tensor(x))[0].detach().numpy()) <= 1e-5
