"""Cell options of issue 20: activation functions, ONNX's clip, GRU linear_before_reset, full
gate recurrence. Float64 finite-difference gradients (tests/test_engine.py's check), the plan
that runs them (the reference) and clear errors for what is not defined."""

from __future__ import annotations

import numpy as np
import pytest

import lstmkit
from lstmkit.activations import FUNCTIONS, IDENTITY, TANH, Activation, resolve_functions
from lstmkit.cells import GRUCell, LSTMCell
from tests.test_engine import check_gradients

# points at least 1e-3 from every kink of the functions (0, ThresholdedRelu's alpha = 1,
# HardSigmoid's -2.5 and 2.5): the finite differences below see smooth functions
Z = np.array([-3.1, -2.0, -1.2, -0.4, -0.05, 0.05, 0.3, 0.9, 1.1, 1.7, 2.6, 4.0])


@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_every_function_has_its_derivative(name):
    act = Activation(name, **({"alpha": 0.7} if FUNCTIONS[name].alpha is not None else {}),
                     **({"beta": 0.3} if FUNCTIONS[name].beta is not None else {}))
    eps = 1e-6
    numeric = (act(Z + eps) - act(Z - eps)) / (2 * eps)
    np.testing.assert_allclose(act.derivative(Z, act(Z)), numeric, rtol=1e-6, atol=1e-8)


def test_onnx_definitions_and_defaults():
    z = np.array([-2.0, -0.5, 0.0, 0.5, 2.0])
    np.testing.assert_allclose(Activation("LeakyRelu")(z), np.where(z >= 0, z, 0.01 * z))
    np.testing.assert_allclose(Activation("ThresholdedRelu")(z), np.where(z >= 1.0, z, 0.0))
    np.testing.assert_allclose(Activation("HardSigmoid")(z), np.clip(0.2 * z + 0.5, 0, 1))
    np.testing.assert_allclose(Activation("Elu")(z), np.where(z >= 0, z, np.exp(z) - 1))
    np.testing.assert_allclose(Activation("ScaledTanh", 2.0, 0.5)(z), 2 * np.tanh(0.5 * z))
    np.testing.assert_allclose(Activation("Affine", 2.0, -1.0)(z), 2 * z - 1)
    np.testing.assert_allclose(Activation("Softsign")(z), z / (1 + abs(z)))
    np.testing.assert_allclose(Activation("Softplus")(z), np.log1p(np.exp(z)))
    # names without regard to case; Keras' spellings with Keras' defaults
    assert Activation("LEAKYRELU") == Activation("leakyrelu") == Activation("LeakyRelu", 0.01)
    assert Activation("leaky_relu").alpha == 0.2
    assert Activation("hard_sigmoid") == Activation("HardSigmoid", 1 / 6, 0.5)
    assert Activation("linear") == IDENTITY
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        Activation("swish")
    with pytest.raises(ValueError, match="Tanh takes no alpha"):
        Activation("tanh", alpha=1.0)


def test_onnx_alpha_beta_lists_are_consumed_in_order():
    f, g, h = resolve_functions(["HardSigmoid", "Tanh", "ScaledTanh"], [0.3, 1.5], [0.6],
                                ["f", "g", "h"])
    assert (f.alpha, f.beta) == (0.3, 0.6)  # the first alpha and beta
    assert g == TANH  # takes none
    assert (h.alpha, h.beta) == (1.5, 1.0)  # the second alpha; beta left at its default
    with pytest.raises(ValueError, match="activation_alpha has 1 value"):
        resolve_functions(["Tanh", "Relu"], [1.0], None, ["f", "g"])


def gradcheck_layer(mode, T=3, B=2, D=2, H=2, lengths=None, state=True, seed=0,
                    reference=True, **kw):
    layer = getattr(lstmkit, mode)(D, H, dtype="float64", seed=seed, **kw)
    rng = np.random.default_rng(seed + 1)
    x = rng.standard_normal((T, B, D))
    s0 = None
    if state:
        L = layer.num_layers * layer.num_directions
        parts = tuple(rng.standard_normal((L, B, H)) for _ in range(2 if mode == "LSTM" else 1))
        s0 = parts if mode == "LSTM" else parts[0]
    check_gradients(layer, x, s0, lengths)
    assert all((str(plan) == "reference") == reference for plan in layer.last_plans.values())
    return layer


LSTM_ACTIVATIONS = [
    {"recurrent_activation": "hardsigmoid", "activation": "relu", "output_activation": "linear"},
    {"recurrent_activation": "softsign", "activation": "elu", "output_activation": "softplus"},
    {"activation": "identity"},  # NIAF and NOAF at once (Keras: one activation for g and h)
    {"output_activation": "identity", "peepholes": True},  # NOAF
    {"activation": "identity", "output_activation": "tanh", "coupled_input_forget": True},
    {"recurrent_activation": "ScaledTanh", "activation": "LeakyRelu",
     "output_activation": "ThresholdedRelu", "activation_alpha": [0.5, 0.1, 0.2],
     "activation_beta": [2.0], "input_gate": False, "peepholes": True},
    {"activation": "Affine", "activation_alpha": [0.5], "activation_beta": [0.2],
     "forget_gate": False},
    {"clip": 0.5, "output_gate": False, "coupled_input_forget": True, "peepholes": True,
     "recurrent_activation": "softplus"},
]


@pytest.mark.parametrize("options", LSTM_ACTIVATIONS, ids=lambda o: "-".join(
    str(v) for v in o.values()))
def test_lstm_activations_gradcheck(options):
    gradcheck_layer("LSTM", reference=False, **options)  # the compiled cell's options


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN"])
def test_clip_stacked_bidirectional_lengths_gradcheck(mode):
    kw = {"peepholes": True} if mode == "LSTM" else {}
    layer = gradcheck_layer(mode, T=4, B=3, num_layers=2, bidirectional=True,
                            lengths=np.array([4, 2, 3]), clip=0.4, reference=False, **kw)
    # the clip was active: some pre-activation lay outside [-0.4, 0.4]
    trace = layer.trace(np.random.default_rng(2).standard_normal((4, 3, 2)))
    keys = [k for k in trace.streams[0].cache["caches"][0] if k[:1] in "za"]
    assert any(np.abs(trace.streams[0].cache["caches"][0][k]).max() > 0.4 for k in keys)


def test_clip_bounds_every_preactivation_and_not_c():
    layer = lstmkit.LSTM(2, 3, dtype="float64", seed=0, clip=0.01, fast=False)
    layer.params["bias_ih_l0"][...] = 10.0  # every pre-activation near 10, clipped to 0.01
    x = np.zeros((20, 1, 2))
    _, _, gates = layer(x, return_gates=True)
    s = 1 / (1 + np.exp(-0.01))
    np.testing.assert_allclose(gates["l0"]["i"], s)
    np.testing.assert_allclose(gates["l0"]["g"], np.tanh(0.01))
    assert gates["l0"]["c"][-1].max() > 0.01  # c grows past the clip


@pytest.mark.parametrize("options", [
    {"linear_before_reset": False},
    {"linear_before_reset": False, "bias": False},
    {"linear_before_reset": False, "recurrent_activation": "hard_sigmoid",
     "activation": "softsign", "clip": 1.0},
    {"recurrent_activation": "HardSigmoid", "activation": "Elu", "activation_alpha": [0.3]},
])
def test_gru_options_gradcheck(options):
    gradcheck_layer("GRU", H=3, reference=False, **options)  # the compiled GRU's options


def test_gru_linear_before_reset_false_is_cho_et_al():
    gru = lstmkit.GRU(2, 3, dtype="float64", seed=0, linear_before_reset=False)
    x = np.random.default_rng(0).standard_normal((1, 1, 2))
    h0 = np.random.default_rng(1).standard_normal((1, 1, 3))
    out, _ = gru(x, h0)
    p, H = gru.params, 3
    W, R, bW, bR = p["weight_ih_l0"], p["weight_hh_l0"], p["bias_ih_l0"], p["bias_hh_l0"]
    h, xt = h0[0, 0], x[0, 0]

    def sig(v):
        return 1 / (1 + np.exp(-v))

    r = sig(W[:H] @ xt + bW[:H] + R[:H] @ h + bR[:H])
    z = sig(W[H:2 * H] @ xt + bW[H:2 * H] + R[H:2 * H] @ h + bR[H:2 * H])
    n = np.tanh(W[2 * H:] @ xt + bW[2 * H:] + R[2 * H:] @ (r * h) + bR[2 * H:])
    np.testing.assert_allclose(out[0, 0], (1 - z) * n + z * h, rtol=1e-12)
    # True (the default) is today's GRU, on the fused plan
    default = lstmkit.GRU(2, 3, dtype="float64", seed=0, linear_before_reset=True)
    default(x, h0)
    assert str(default.last_plans["l0"]) != "reference"


def test_rnn_activation_and_nonlinearity():
    gradcheck_layer("RNN", activation="elu", clip=0.8, reference=False)
    assert lstmkit.RNN(2, 3, activation="relu").nonlinearity == "relu"
    assert lstmkit.RNN(2, 3, nonlinearity="relu", activation="Relu").nonlinearity == "relu"
    with pytest.raises(ValueError, match="contradict"):
        lstmkit.RNN(2, 3, nonlinearity="relu", activation="elu")
    layer = lstmkit.RNN(2, 3, activation="softsign")
    assert layer.cell_options["activation"] == "Softsign"
    assert layer.nonlinearity == "tanh"  # what PyTorch can build; the cell runs softsign


@pytest.mark.parametrize("options", [
    {},
    {"peepholes": True, "num_layers": 2, "bidirectional": True},
    {"clip": 0.5, "recurrent_activation": "hardsigmoid"},
])
def test_full_gate_recurrence_gradcheck(options):
    lengths = np.array([3, 2]) if options.get("bidirectional") else None
    layer = gradcheck_layer("LSTM", T=3, full_gate_recurrence=True, lengths=lengths,
                            reference=False, **options)  # the compiled row kernels
    assert layer.params["weight_gg_l0"].shape == (6, 6)


def test_full_gate_recurrence_feeds_the_previous_gates():
    """z_{i,f,o} at step t gains weight_gg @ [i, f, o] of step t-1 (zero at t = 0)."""
    layer = lstmkit.LSTM(2, 2, dtype="float64", seed=3, full_gate_recurrence=True)
    plain = lstmkit.LSTM(2, 2, dtype="float64", seed=3)
    plain.load_state_dict({k: v for k, v in layer.params.items() if k != "weight_gg_l0"})
    x = np.random.default_rng(0).standard_normal((3, 1, 2))
    out, _, gates = layer(x, return_gates=True)
    ref, _ = plain(x[:1])
    np.testing.assert_allclose(out[0], ref[0], rtol=1e-12)  # no previous gates yet
    layer.params["weight_gg_l0"][...] = 0.0
    np.testing.assert_allclose(layer(x)[0], plain(x)[0], rtol=1e-12)
    # the state the user sees is (h, c, a): the last gate values travel with it
    _, state, gates = layer(x, return_gates=True)
    assert len(state) == 3
    np.testing.assert_array_equal(state[2][0], np.concatenate(
        [gates["l0"][k][-1] for k in "ifo"], axis=-1))


def test_option_errors_are_clear():
    with pytest.raises(ValueError, match="full_gate_recurrence .* needs all three"):
        lstmkit.LSTM(2, 3, full_gate_recurrence=True, coupled_input_forget=True)
    with pytest.raises(ValueError, match="clip must be a positive"):
        lstmkit.GRU(2, 3, clip=-1.0)
    with pytest.raises(ValueError, match="activation: unknown activation 'gelu'"):
        lstmkit.LSTM(2, 3, activation="gelu")
    with pytest.raises(TypeError, match="activation_alpha must be a list"):
        lstmkit.LSTM(2, 3, activation="elu", activation_alpha=0.5)
    with pytest.raises(TypeError, match="what Keras means by None"):
        lstmkit.GRU(2, 3, recurrent_activation=None)
    with pytest.raises(ValueError, match="hold"):
        lstmkit.LSTM(2, 3, activation=Activation("Elu", 0.5), activation_alpha=[0.5])


def test_which_options_run_on_the_fused_plans():
    """The functions and clip of the LSTM, GRU and RNN and Cho et al.'s GRU run on the
    compiled plans (``kernels.activate``); full gate recurrence and layer normalisation on the
    row kernels."""
    x = np.random.default_rng(0).standard_normal((3, 2, 2)).astype(np.float32)
    for kw in ({"activation": "relu"}, {"clip": 3.0}, {"recurrent_activation": "hardsigmoid"},
               {"output_activation": "identity"}):
        layer = lstmkit.LSTM(2, 3, seed=0, **kw)
        layer(x)
        assert str(layer.last_plans["l0"]) != "reference", kw
    for layer in (lstmkit.GRU(2, 3, seed=0, clip=3.0), lstmkit.RNN(2, 3, seed=0, clip=3.0),
                  lstmkit.GRU(2, 3, seed=0, activation="relu"),
                  lstmkit.GRU(2, 3, seed=0, linear_before_reset=False)):
        layer(x)
        assert str(layer.last_plans["l0"]) != "reference", layer
    for kw in ({"full_gate_recurrence": True}, {"layer_norm": True}):
        layer = lstmkit.LSTM(2, 3, seed=0, **kw)
        layer(x)
        assert str(layer.last_plans["l0"]).startswith("rows"), kw
    layer = lstmkit.LSTM(2, 3, seed=0, activation="Tanh", recurrent_activation="SIGMOID",
                         output_activation="tanh")
    layer(x)
    assert str(layer.last_plans["l0"]) != "reference"
    assert layer._cells[0] == LSTMCell(2, 3)
    assert lstmkit.GRU(2, 3)._cells[0] == GRUCell(2, 3)


def test_cell_options_rebuild_the_layer():
    layer = lstmkit.LSTM(2, 3, seed=0, recurrent_activation="hardsigmoid", activation="elu",
                         activation_alpha=[0.25, 0.5], clip=2.0, peepholes=True)
    assert layer.cell_options["activation"] == {"name": "Elu", "alpha": 0.5}
    again = lstmkit.LSTM(2, 3, seed=0, **layer.cell_options)
    assert again._cells == layer._cells
    gru = lstmkit.GRU(2, 3, linear_before_reset=False, activation="softsign")
    assert lstmkit.GRU(2, 3, **gru.cell_options)._cells == gru._cells


def test_torch_refuses_what_it_cannot_compute():
    pytest.importorskip("torch")
    for layer in (lstmkit.GRU(2, 3, linear_before_reset=False), lstmkit.RNN(2, 3, clip=1.0),
                  lstmkit.LSTM(2, 3, output_activation="identity")):
        with pytest.raises(ValueError, match="cannot express"):
            lstmkit.to_torch(layer)
    assert lstmkit.to_torch(lstmkit.RNN(2, 3, activation="relu")).nonlinearity == "relu"


def test_gradient_flow_with_an_output_activation():
    """lstmkit.diagnostics' carousel gradient follows h = o * h(c) for any h."""
    from lstmkit.diagnostics import gradient_flows

    layer = lstmkit.LSTM(2, 3, dtype="float64", seed=0, output_activation="softsign",
                         full_gate_recurrence=True)
    x = np.random.default_rng(0).standard_normal((6, 1, 2))
    flow = gradient_flows(layer, x)["l0"]
    # at the loss step, dL/dc = dL/dh * o * h'(c) (+ the output gate's share, none here:
    # no peepholes)
    step = layer.trace(x).streams[0].cache["caches"][5]
    act = layer._cells[0].output_activation
    expected = flow.dh[5] * step["o"] * act.derivative(step["c"], act(step["c"]))
    np.testing.assert_allclose(flow.dc[5], expected, rtol=1e-12)


@pytest.mark.parametrize("merge_mode", ["concat", "sum", "mul", "ave", None])
def test_merge_modes_gradcheck(merge_mode):
    """Keras' merge_mode against the concatenated output, and its gradient (the loss of
    check_gradients is taken over every returned array)."""
    layer = lstmkit.GRU(2, 3, dtype="float64", seed=0, bidirectional=True, num_layers=2,
                        merge_mode=merge_mode)
    concat = lstmkit.GRU(2, 3, dtype="float64", seed=0, bidirectional=True, num_layers=2)
    x = np.random.default_rng(0).standard_normal((4, 2, 2))
    out, h = layer(x, lengths=np.array([4, 3]))
    ref, h_ref = concat(x, lengths=np.array([4, 3]))
    fw, bw = ref[..., :3], ref[..., 3:]
    want = {"concat": ref, "sum": fw + bw, "mul": fw * bw, "ave": (fw + bw) / 2,
            None: (fw, bw)}[merge_mode]
    np.testing.assert_allclose(np.concatenate(out, 2) if merge_mode is None else out,
                               np.concatenate(want, 2) if merge_mode is None else want)
    np.testing.assert_allclose(h, h_ref)

    rng = np.random.default_rng(3)
    w = [rng.standard_normal(o.shape) for o in (out if merge_mode is None else (out,))]

    def loss():
        o, _ = layer(x, lengths=np.array([4, 3]))
        return sum(float((a * b).sum()) for a, b in zip(o if merge_mode is None else (o,), w))

    loss()
    layer.zero_grad()
    dx, _ = layer.backward(tuple(w) if merge_mode is None else w[0])
    eps = 1e-6
    for name, array in [("x", x), ("weight_hh_l0_reverse", layer.params["weight_hh_l0_reverse"])]:
        analytic = dx if name == "x" else layer.grads[name].copy()
        numeric = np.zeros_like(array)
        for n in range(array.size):
            old = array.flat[n]
            array.flat[n] = old + eps
            plus = loss()
            array.flat[n] = old - eps
            minus = loss()
            array.flat[n] = old
            numeric.flat[n] = (plus - minus) / (2 * eps)
        np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-8)


def test_go_backwards_is_the_reversed_sequence_in_processing_order():
    """Keras' go_backwards: the input read from its end, the output in the order computed;
    the same as a forward layer on the reversed input, gradient included."""
    layer = gradcheck_layer("LSTM", T=4, go_backwards=True, peepholes=True, reference=False)
    plain = lstmkit.LSTM(2, 2, dtype="float64", seed=0, peepholes=True)
    x = np.random.default_rng(0).standard_normal((4, 2, 2))
    out, (h, c) = layer(x)
    ref, (h_ref, c_ref) = plain(x[::-1].copy())
    np.testing.assert_allclose(out, ref)
    np.testing.assert_allclose(h, h_ref)
    d = np.random.default_rng(1).standard_normal(out.shape)
    dx, _ = layer.backward(d)
    dx_ref, _ = plain.backward(d)
    np.testing.assert_allclose(dx, dx_ref[::-1])


def test_reverse_is_the_backward_half_and_go_backwards_its_flip_with_lengths():
    """reverse=True runs the one direction from each sequence's end (ONNX's "reverse",
    the "_reverse" half of a bidirectional layer, output aligned with the input);
    go_backwards returns the same outputs in the order they ran."""
    bi = lstmkit.GRU(2, 3, dtype="float64", seed=0, bidirectional=True)
    rev = lstmkit.GRU(2, 3, dtype="float64", seed=1, reverse=True)
    back = lstmkit.GRU(2, 3, dtype="float64", seed=1, go_backwards=True)
    weights = {k.removesuffix("_reverse"): v for k, v in bi.params.items() if "_reverse" in k}
    rev.load_state_dict(weights)
    back.load_state_dict(weights)
    x = np.random.default_rng(0).standard_normal((5, 3, 2))
    lengths = np.array([5, 2, 4])
    out_bi, h_bi = bi(x, lengths=lengths)
    out_rev, h_rev = rev(x, lengths=lengths)
    out_back, h_back = back(x, lengths=lengths)
    np.testing.assert_allclose(out_rev, out_bi[..., 3:], rtol=1e-12)
    np.testing.assert_allclose(h_rev[0], h_bi[1], rtol=1e-12)
    np.testing.assert_allclose(out_back, out_rev[::-1], rtol=1e-12)
    np.testing.assert_allclose(h_back, h_rev, rtol=1e-12)
    d = np.random.default_rng(1).standard_normal(out_rev.shape)
    dx_rev, _ = rev.backward(d)
    dx_back, _ = back.backward(d[::-1].copy())
    np.testing.assert_allclose(dx_back, dx_rev, rtol=1e-12)
    gradcheck_layer("LSTM", T=4, B=3, reverse=True, lengths=np.array([4, 1, 3]),
                    reference=False, num_layers=2)
    gradcheck_layer("RNN", T=4, B=3, go_backwards=True, lengths=np.array([4, 1, 3]),
                    reference=False)


def test_merge_mode_and_go_backwards_errors():
    with pytest.raises(ValueError, match="bidirectional=False"):
        lstmkit.LSTM(2, 3, merge_mode="sum")
    with pytest.raises(ValueError, match="merge_mode must be one of"):
        lstmkit.LSTM(2, 3, bidirectional=True, merge_mode="max")
    with pytest.raises(ValueError, match="already runs both ways"):
        lstmkit.RNN(2, 3, bidirectional=True, go_backwards=True)
    with pytest.raises(ValueError, match="give one of them"):
        lstmkit.RNN(2, 3, reverse=True, go_backwards=True)
    layer = lstmkit.LSTM(2, 3, bidirectional=True, merge_mode=None)
    layer(np.zeros((2, 1, 2), dtype=np.float32))
    with pytest.raises(ValueError, match="must be one too"):
        layer.backward(np.zeros((2, 1, 6), dtype=np.float32))


def test_full_gate_recurrence_stateful_and_unbatched():
    """A stateful FGR layer carries the gates between calls: two halves equal one call."""
    layer = lstmkit.LSTM(2, 3, dtype="float64", seed=0, full_gate_recurrence=True)
    x = np.random.default_rng(0).standard_normal((6, 2))  # unbatched (T, D)
    whole, (h, c, a) = layer(x)
    halves = lstmkit.LSTM(2, 3, dtype="float64", seed=0, full_gate_recurrence=True,
                          stateful=True)
    first, _ = halves(x[:3])
    second, (h2, c2, a2) = halves(x[3:])
    np.testing.assert_allclose(np.concatenate([first, second]), whole, rtol=1e-12)
    np.testing.assert_allclose(h2, h, rtol=1e-12)
    np.testing.assert_allclose(a2, a, rtol=1e-12)
    assert h.shape == (1, 3) and a.shape == (1, 9)


def test_full_gate_recurrence_carries_its_gates_in_the_state():
    """An FGR layer's state is (h, c, a), a the last step's [i, f, o]: carried by hand from
    call to call (as ``lstmkit train`` carries it between windows), two halves equal one
    call; (h, c) alone starts the gates at zero; backward returns dL/da_0, checked by finite
    differences; a wrong a is refused."""
    layer = lstmkit.LSTM(2, 3, dtype="float64", seed=0, num_layers=2, bidirectional=True,
                         full_gate_recurrence=True)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((6, 2, 2))
    whole, state = layer(x)
    assert [s.shape for s in state] == [(4, 2, 3), (4, 2, 3), (4, 2, 9)]
    zeros = (np.zeros((4, 2, 3)), np.zeros((4, 2, 3)))
    np.testing.assert_array_equal(layer(x, zeros)[0], whole)
    np.testing.assert_array_equal(layer(x, (*zeros, np.zeros((4, 2, 9))))[0], whole)
    uni = lstmkit.LSTM(2, 3, dtype="float64", seed=0, full_gate_recurrence=True)
    whole, final = uni(x)
    first, carried = uni(x[:3])
    second, final2 = uni(x[3:], carried)
    np.testing.assert_allclose(np.concatenate([first, second]), whole, rtol=1e-12)
    for a, b in zip(final2, final):
        np.testing.assert_allclose(a, b, rtol=1e-12)
    state0 = tuple(rng.uniform(0.1, 0.9, s.shape) for s in carried)
    out, _ = uni(x, state0)
    g = rng.standard_normal(out.shape)
    _, d0 = uni.backward(g)
    assert [d.shape for d in d0] == [(1, 2, 3), (1, 2, 3), (1, 2, 9)]
    for index in [(0, 0, 0), (0, 1, 4), (0, 1, 8)]:
        bumped = [s.copy() for s in state0]
        eps = 1e-6
        bumped[2][index] += eps
        up = (uni(x, tuple(bumped))[0] * g).sum()
        bumped[2][index] -= 2 * eps
        down = (uni(x, tuple(bumped))[0] * g).sum()
        np.testing.assert_allclose(d0[2][index], (up - down) / (2 * eps), rtol=1e-6, atol=1e-9)
    with pytest.raises(ValueError, match="3 \\* hidden_size = 9"):
        uni(x, (*zeros[:1], zeros[1][:1], np.zeros((1, 2, 3))))
    with pytest.raises(ValueError, match="a pair \\(h, c\\) or a triple"):
        uni(x, (zeros[0][:1],))
    with pytest.raises(ValueError, match="must be a pair \\(h, c\\), got tuple of 3"):
        lstmkit.LSTM(2, 3, dtype="float64")(x, (*zeros, zeros[0]))


@pytest.mark.parametrize("layer", [
    lstmkit.LSTM(2, 3, seed=0, recurrent_activation="hard_sigmoid", activation="elu",
                 output_activation="identity", clip=2.0, full_gate_recurrence=True,
                 peepholes=True),
    lstmkit.GRU(2, 3, seed=0, linear_before_reset=False, bidirectional=True, merge_mode="ave"),
    lstmkit.RNN(2, 3, seed=0, activation="leakyrelu", activation_alpha=[0.3], go_backwards=True),
    lstmkit.LSTM(2, 3, seed=0, reverse=True),
], ids=["lstm", "gru", "rnn", "reverse"])
def test_saved_layer_files_rebuild_the_options(tmp_path, layer):
    """The safetensors + JSON files of `lstmkit import-torch` / `import` keep every option."""
    from lstmkit.cli.interop import load_layer, save_layer

    save_layer(layer, tmp_path / "w.safetensors", force=False)
    again = load_layer(tmp_path / "w.safetensors")
    assert again._cells == layer._cells
    assert (again.merge_mode, again.go_backwards, again.reverse) == (
        layer.merge_mode, layer.go_backwards, layer.reverse)
    x = np.random.default_rng(0).standard_normal((4, 2, 2)).astype(np.float32)
    np.testing.assert_array_equal(again(x)[0], layer(x)[0])
