"""The layer-normalised LSTM (``layer_norm=True``, Haste's LayerNormLSTM): exact gradients,
equal to the same equations written with PyTorch's layer_norm and autograd, and its errors."""

from __future__ import annotations

import numpy as np
import pytest

import lstmkit
from tests.test_engine import check_gradients
from tests.test_regularisation import FixedNoise

CASES = [
    ({}, False),
    ({"bias": False}, False),
    ({"proj_size": 2, "num_layers": 2, "bidirectional": True}, False),
    ({"zoneout": 0.3, "zoneout_c": 0.2, "recurrent_dropout": 0.3, "weight_drop": 0.3}, True),
    ({"zoneout": 0.3, "zoneout_c": 0.2, "recurrent_dropout": 0.3}, False),
]


def perturb(layer, rng):
    """Gains and biases away from their initial 1 and 0, so that every gradient is tested."""
    for name, value in layer.params.items():
        if "_ln_" in name:
            value += 0.3 * rng.standard_normal(value.shape)


@pytest.mark.parametrize("kw,training", CASES)
def test_finite_difference_gradients(kw, training):
    layer = lstmkit.LSTM(2, 3, layer_norm=True, dtype="float64", seed=0, **kw).train(training)
    rng = np.random.default_rng(1)
    perturb(layer, rng)
    L = kw.get("num_layers", 1) * (2 if kw.get("bidirectional") else 1)
    x = rng.standard_normal((4, 2, 2))
    state = (rng.standard_normal((L, 2, kw.get("proj_size", 3))),
             rng.standard_normal((L, 2, 3)))
    check_gradients(FixedNoise(layer), x, state, np.array([4, 2]))


def test_equals_the_equations_in_pytorch():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    T, B, D, H = 5, 3, 4, 6
    layer = lstmkit.LSTM(D, H, layer_norm=True, dtype="float64", seed=0)
    rng = np.random.default_rng(2)
    perturb(layer, rng)
    x = rng.standard_normal((T, B, D))
    out, (h_n, c_n) = layer(x)
    g_out = rng.standard_normal(out.shape)
    dx, _ = layer.backward(g_out)

    p = {k[: -len("_l0")]: torch.tensor(v, requires_grad=True) for k, v in layer.params.items()}
    xt = torch.tensor(x, requires_grad=True)
    h, c = torch.zeros(B, H, dtype=torch.float64), torch.zeros(B, H, dtype=torch.float64)
    outs = []
    for t in range(T):  # Haste's LayerNormLSTM, PyTorch's gate order i, f, g, o
        z = (F.layer_norm(xt[t] @ p["weight_ih"].T, (4 * H,), p["weight_ln_ih"], eps=1e-5)
             + F.layer_norm(h @ p["weight_hh"].T, (4 * H,), p["weight_ln_hh"], eps=1e-5)
             + p["bias_ih"] + p["bias_hh"])
        i, f, g, o = z.chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(F.layer_norm(c, (H,), p["weight_ln_c"], p["bias_ln_c"],
                                                       eps=1e-5))
        outs.append(h)
    out_t = torch.stack(outs)
    np.testing.assert_allclose(out, out_t.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(c_n[0], c.detach().numpy(), rtol=1e-10, atol=1e-12)
    (out_t * torch.tensor(g_out)).sum().backward()
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-9, atol=1e-12)
    for name, value in p.items():
        np.testing.assert_allclose(layer.grads[f"{name}_l0"], value.grad.numpy(), rtol=1e-9,
                                   atol=1e-12, err_msg=name)


def test_parameters_start_as_the_identity_and_run_on_the_row_kernels():
    layer = lstmkit.LSTM(3, 4, layer_norm=True, forget_bias=1.0, seed=0)
    assert (layer.params["weight_ln_ih_l0"] == 1).all()
    assert (layer.params["weight_ln_c_l0"] == 1).all() and (layer.params["bias_ln_c_l0"] == 0).all()
    x = np.random.default_rng(0).standard_normal((5, 2, 3)).astype(np.float32)
    out, state, gates = layer(x, return_gates=True)
    assert str(layer.last_plans["l0"]).startswith("rows, 1 part")
    assert set(gates["l0"]) == {"i", "f", "g", "o", "c"}
    np.testing.assert_allclose(layer.trace(x).output, out, rtol=1e-5, atol=1e-6)  # reference


@pytest.mark.parametrize("kw", [{"peepholes": True}, {"forget_gate": False},
                                {"coupled_input_forget": True}])
def test_refuses_what_haste_does_not_define(kw):
    with pytest.raises(ValueError, match="layer-normalised LSTM.*cannot be combined"):
        lstmkit.LSTM(3, 4, layer_norm=True, **kw)


def test_no_export_to_onnx_or_torch(tmp_path):
    layer = lstmkit.LSTM(3, 4, layer_norm=True)
    with pytest.raises(ValueError, match="layer normalisation"):
        lstmkit.export_onnx(layer, tmp_path / "ln.onnx")
    pytest.importorskip("torch")
    from lstmkit.interop.torch_convert import to_torch

    with pytest.raises(ValueError, match="layer_norm=True"):
        to_torch(layer)


@pytest.mark.parametrize("kw", [{"proj_size": 2}, {"layer_norm": True, "proj_size": 2,
                                                    "zoneout": 0.4}])
def test_gradient_flow_through_the_carousel(kw):
    """dL/dc_{-1} = dL/dc_0 * f_0 for one step without peepholes: the diagnostics' carousel
    gradient agrees with the layer's backward."""
    from lstmkit.diagnostics import gradient_flows

    layer = lstmkit.LSTM(3, 4, dtype="float64", seed=0, **kw).eval()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 2, 3))
    state = (rng.standard_normal((1, 2, 2)), rng.standard_normal((1, 2, 4)))
    flow = gradient_flows(layer, x, state=state)["l0"]
    out, _, gates = layer(x, state, return_gates=True)
    _, (_, dc0) = layer.backward(np.ones_like(out))
    np.testing.assert_allclose(flow.dc[0] * gates["l0"]["f"][0], dc0[0], rtol=1e-12)
