"""lstmkit.diagnostics: per-step gradients against finite differences, the vanishing gradient and
the Constant Error Carousel, gate saturation, and the plots (Agg, PNG)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from matplotlib.ft2font import FT2Font
from scipy.special import expit, logit

import lstmkit
from lstmkit import diagnostics as D

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SENTENCE = "映画おもしろかったね。ところで、とてもお腹が空いたから何か"
EPS = 1e-6


def make(cls, D_in=3, H=3, seed=0, **kwargs):
    return cls(D_in, H, dtype="float64", seed=seed, **kwargs)


def inputs(T, B, D_in, seed=1):
    return np.random.default_rng(seed).standard_normal((T, B, D_in))


# -- finite differences of the loss with respect to the state after step t -------------------------


def loss_after_moving_state(layer, x, t, head, dh=None, dc=None):
    """Run ``layer`` (one layer, one direction) in two parts, moving the state between them.

    Part one reads x[:t+1] and ends in (h_t, c_t); h_t += dh, or c_t += dc with h_t following
    as o_t * tanh(c_t) (o_t recomputed when a peephole lets it see c_t); output[t] is the moved
    h_t; part two continues from the moved state. Returns head(output, state_n).
    """
    T = x.shape[0]
    lstm = layer.mode == "LSTM"
    out_a, state_a, gates = layer(x[: t + 1], return_gates=True)
    h, c = (state_a[0][0], state_a[1][0]) if lstm else (state_a[0], None)
    if dc is not None:
        o = gates["l0"]["o"][t]
        c_new = c + dc
        if layer.cell_options["peepholes"]:
            w_co = layer.params["weight_co_l0"]
            o = expit(logit(o) - w_co * c + w_co * c_new)
        h, c = o * np.tanh(c_new), c_new
    if dh is not None:
        h = h + dh
    out_a = out_a.copy()
    out_a[t] = h
    state = (h[None], c[None]) if lstm else h[None]
    if t == T - 1:
        return head(out_a, state)
    out_b, state_n = layer(x[t + 1 :], state)
    return head(np.concatenate([out_a, out_b]), state_n)


def numeric_state_gradient(layer, x, t, head, which):
    B, H = x.shape[1], layer.hidden_size
    grad = np.zeros((B, H))
    for b in range(B):
        for j in range(H):
            step = np.zeros((B, H))
            step[b, j] = EPS
            plus = loss_after_moving_state(layer, x, t, head, **{which: step})
            minus = loss_after_moving_state(layer, x, t, head, **{which: -step})
            grad[b, j] = (plus - minus) / (2 * EPS)
    return grad


def relative_error(numeric, analytic):
    return np.linalg.norm(numeric - analytic) / np.linalg.norm(analytic)


def weighted_sum_head(w_out, w_state):
    def head(out, state):
        parts = state if isinstance(state, tuple) else (state,)
        return float((out * w_out).sum() + sum((s * w).sum() for s, w in zip(parts, w_state)))

    return head


CASES = [
    (lstmkit.LSTM, {}),
    (lstmkit.LSTM, {"peepholes": True}),
    (lstmkit.LSTM, {"peepholes": True, "coupled_input_forget": True}),
    (lstmkit.GRU, {}),
    (lstmkit.RNN, {}),
]


@pytest.mark.parametrize("loss", ["last step", "every output and the final state"])
@pytest.mark.parametrize("cls, options", CASES)
def test_per_step_gradients_match_finite_differences(cls, options, loss):
    layer = make(cls, **options)
    T, B, H = 5, 2, layer.hidden_size
    x = inputs(T, B, layer.input_size)
    rng = np.random.default_rng(2)
    n_states = 2 if cls is lstmkit.LSTM else 1
    if loss == "last step":
        w_out = np.zeros((T, B, H))
        w_out[-1] = 1.0
        w_state = [np.zeros((1, B, H))] * n_states
        flow = D.gradient_flow(layer, x)
    else:
        w_out = rng.standard_normal((T, B, H))
        w_state = [rng.standard_normal((1, B, H)) for _ in range(n_states)]
        d_state = tuple(w_state) if n_states == 2 else w_state[0]
        flow = D.gradient_flow(layer, x, d_output=w_out, d_state=d_state)
    head = weighted_sum_head(w_out, w_state)
    assert flow.dh.shape == (T, B, H) and flow.dh_norm.shape == (T,)
    for t in range(T):
        numeric = numeric_state_gradient(layer, x, t, head, "dh")
        assert relative_error(numeric, flow.dh[t]) <= 1e-6, t
        assert flow.dh_norm[t] == pytest.approx(np.linalg.norm(numeric), rel=1e-6)
        if cls is lstmkit.LSTM:
            numeric = numeric_state_gradient(layer, x, t, head, "dc")
            assert relative_error(numeric, flow.dc[t]) <= 1e-6, t
            assert flow.dc_norm[t] == pytest.approx(np.linalg.norm(numeric), rel=1e-6)
    if cls is not lstmkit.LSTM:
        assert flow.dc is None and flow.dc_norm is None


def single_layer_copy(stacked, k, input_size, suffix=""):
    """A one-layer, one-direction layer holding layer k's (and direction's) weights."""
    copy = type(stacked)(input_size, stacked.hidden_size, dtype="float64",
                         **getattr(stacked, "cell_options", {}))
    copy.load_state_dict({
        name: stacked.params[name[: -len("_l0")] + f"_l{k}{suffix}"] for name in copy.params
    })
    return copy


def test_lower_layer_flow_matches_finite_differences_through_the_layer_above():
    stacked = lstmkit.LSTM(3, 3, num_layers=2, dtype="float64", seed=4)
    T, B = 5, 2
    x = inputs(T, B, 3, seed=5)
    w_out = np.random.default_rng(6).standard_normal((T, B, 3))
    flows = D.gradient_flows(stacked, x, d_output=w_out)
    assert list(flows) == ["l0", "l1"]
    assert D.gradient_flow(stacked, x, d_output=w_out).stream == "l1"  # the top by default

    bottom, top = single_layer_copy(stacked, 0, 3), single_layer_copy(stacked, 1, 3)

    def through_top(out0, _state):
        return float((top(out0)[0] * w_out).sum())

    for t in range(T):
        assert relative_error(numeric_state_gradient(bottom, x, t, through_top, "dh"),
                              flows["l0"].dh[t]) <= 1e-6
        assert relative_error(numeric_state_gradient(bottom, x, t, through_top, "dc"),
                              flows["l0"].dc[t]) <= 1e-6
    out0, _ = bottom(x)
    alone = D.gradient_flow(top, out0, d_output=w_out)
    np.testing.assert_allclose(flows["l1"].dh, alone.dh, rtol=1e-12, atol=1e-15)


def test_reverse_direction_is_the_forward_flow_of_the_reversed_sequence():
    bi = lstmkit.GRU(3, 4, bidirectional=True, dtype="float64", seed=7)
    T, B, H = 6, 2, 4
    x = inputs(T, B, 3, seed=8)
    d_out = np.random.default_rng(9).standard_normal((T, B, 2 * H))
    flows = D.gradient_flows(bi, x, d_output=d_out)
    assert list(flows) == ["l0", "l0_reverse"]
    forward = single_layer_copy(bi, 0, 3)
    backward = single_layer_copy(bi, 0, 3, "_reverse")
    expected_fwd = D.gradient_flow(forward, x, d_output=d_out[:, :, :H])
    expected_rev = D.gradient_flow(backward, x[::-1].copy(), d_output=d_out[::-1, :, H:].copy())
    np.testing.assert_allclose(flows["l0"].dh, expected_fwd.dh, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(flows["l0_reverse"].dh, expected_rev.dh[::-1], rtol=1e-12,
                               atol=1e-15)


def test_lower_layer_of_a_bidirectional_stack_gets_both_upper_directions():
    stacked = lstmkit.LSTM(3, 3, num_layers=2, bidirectional=True, dtype="float64", seed=13)
    T, B = 5, 2
    x = inputs(T, B, 3, seed=14)
    w_out = np.random.default_rng(15).standard_normal((T, B, 6))
    flows = D.gradient_flows(stacked, x, d_output=w_out)
    assert list(flows) == ["l0", "l0_reverse", "l1", "l1_reverse"]
    bottom = single_layer_copy(stacked, 0, 3)
    out_reverse = single_layer_copy(stacked, 0, 3, "_reverse")(x[::-1].copy())[0][::-1]
    top = lstmkit.LSTM(6, 3, bidirectional=True, dtype="float64")
    top.load_state_dict({name: stacked.params[name.replace("_l0", "_l1")] for name in top.params})

    def through_top(out_forward, _state):
        return float((top(np.concatenate([out_forward, out_reverse], axis=2))[0] * w_out).sum())

    for t in range(T):
        assert relative_error(numeric_state_gradient(bottom, x, t, through_top, "dh"),
                              flows["l0"].dh[t]) <= 1e-6


def test_layouts_agree_and_the_default_loss_is_the_sum_at_loss_step():
    layer = make(lstmkit.LSTM, H=4, seed=3)
    x = inputs(7, 1, 3, seed=3)
    batched = D.gradient_flow(layer, x, loss_step=4)
    one_hot = np.zeros((7, 1, 4))
    one_hot[4] = 1.0
    np.testing.assert_array_equal(batched.dh, D.gradient_flow(layer, x, d_output=one_hot).dh)
    assert batched.loss_step == 4
    assert np.all(batched.dh_norm[5:] == 0.0) and np.all(batched.dh_norm[:5] > 0.0)
    unbatched = D.gradient_flow(layer, x[:, 0], loss_step=-3)
    np.testing.assert_array_equal(unbatched.dh, batched.dh)
    bf = make(lstmkit.LSTM, H=4, seed=3, batch_first=True)
    np.testing.assert_array_equal(D.gradient_flow(bf, x.transpose(1, 0, 2), loss_step=4).dc,
                                  batched.dc)


def test_diagnostics_leave_the_layer_as_they_found_it():
    x = inputs(6, 2, 3)
    layer, twin = (make(lstmkit.LSTM, H=4, stateful=True) for _ in range(2))
    for m in (layer, twin):
        m(x)
        out, _ = m(x)  # carries a state and holds the cache of this call
    D.gradient_flow(layer, x)
    D.gate_statistics(layer, x)
    assert all(np.all(g == 0) for g in layer.grads.values())
    for mine, theirs in zip(layer._carried, twin._carried):
        np.testing.assert_array_equal(mine, theirs)
    d_out = np.random.default_rng(0).standard_normal(out.shape)
    np.testing.assert_array_equal(layer.backward(d_out)[0], twin.backward(d_out)[0])
    for name in layer.grads:
        np.testing.assert_array_equal(layer.grads[name], twin.grads[name])


def test_errors_speak_to_the_user():
    layer = make(lstmkit.RNN)
    x = inputs(4, 2, 3)
    with pytest.raises(ValueError, match="loss_step"):
        D.gradient_flow(layer, x, loss_step=4)
    with pytest.raises(ValueError, match="d_output has shape"):
        D.gradient_flow(layer, x, d_output=np.ones((4, 2, 5)))
    with pytest.raises(KeyError, match="l0_reverse"):
        D.gradient_flow(layer, x, stream="l0_reverse")
    with pytest.raises(ValueError, match="no gates"):
        D.gate_statistics(layer, x)


# -- the study note's point 1 and point 3, as numbers --------------------------------------------


def test_simple_rnn_gradient_vanishes_geometrically_at_initialisation():
    rnn = lstmkit.RNN(4, 32, dtype="float64", seed=0)
    flow = D.gradient_flow(rnn, inputs(60, 2, 4))
    assert flow.dh_norm[0] < 1e-8 * flow.dh_norm[-1]  # eight orders of magnitude in 60 steps
    decades = np.log10(flow.dh_norm[::10])  # steady decay, not a single drop
    assert np.all(np.diff(decades) > 1.0)


def test_constant_error_carousel_keeps_dc_exactly_constant():
    lstm = lstmkit.LSTM(4, 8, forget_gate=False, dtype="float64", seed=0)
    lstm.params["weight_hh_l0"][...] = 0.0
    flow = D.gradient_flow(lstm, inputs(60, 2, 4))
    assert flow.dc_norm[-1] > 0.0
    np.testing.assert_array_equal(flow.dc, np.broadcast_to(flow.dc[-1], flow.dc.shape))
    assert np.all(flow.dh_norm[:-1] == 0.0)  # no path back through h without weight_hh
    forgetting = lstmkit.LSTM(4, 8, dtype="float64", seed=0)
    forgetting.params["weight_hh_l0"][...] = 0.0
    decaying = D.gradient_flow(forgetting, inputs(60, 2, 4))
    assert decaying.dc_norm[0] < 1e-6 * decaying.dc_norm[-1]  # f < 1 forgets the error too


# -- gate saturation -------------------------------------------------------------------------------


def test_saturation_statistics_on_hand_made_values():
    # values[t, b, unit]; thresholds are strict, so 0.1 and 0.9 are not saturated
    values = np.array([
        [[0.05, 0.99], [0.10, 0.01]],
        [[0.50, 0.99], [0.90, 0.50]],
        [[0.95, 0.20], [0.00, 0.91]],
    ])
    stats = D.saturation_statistics(values)
    np.testing.assert_allclose(stats.left_saturated, [2 / 6, 1 / 6])
    np.testing.assert_allclose(stats.right_saturated, [1 / 6, 3 / 6])
    assert stats.count == 6
    mask = np.array([[True, True], [True, False], [True, False]])  # sequence 1 has length 1
    stats = D.saturation_statistics(values, mask)
    assert stats.count == 4
    np.testing.assert_allclose(stats.left_saturated, [1 / 4, 1 / 4])
    np.testing.assert_allclose(stats.right_saturated, [1 / 4, 2 / 4])
    np.testing.assert_allclose(stats.mean, [0.4, 0.5475])
    np.testing.assert_allclose(stats.std[0], np.sqrt(0.13125))
    assert stats.overall["left_saturated"] == pytest.approx(2 / 8)
    assert stats.overall["right_saturated"] == pytest.approx(3 / 8)
    assert stats.overall["mean"] == pytest.approx((0.4 + 0.5475) / 2)
    wider = D.saturation_statistics(values, mask, low=0.2, high=0.8)
    np.testing.assert_allclose(wider.left_saturated, [2 / 4, 1 / 4])


def test_gate_statistics_leave_padded_steps_out():
    lstm = lstmkit.LSTM(3, 4, bidirectional=True, dtype="float64", seed=11, forget_bias=2.0)
    T, B = 8, 3
    x = inputs(T, B, 3, seed=12) * 3.0
    lengths = np.array([8, 3, 5])
    stats = D.gate_statistics(lstm, x, lengths, low=0.3, high=0.7)
    assert set(stats) == {"l0", "l0_reverse"} and list(stats["l0"]) == ["i", "f", "o"]
    for stream in stats:
        for gate in ("i", "f", "o"):
            valid = np.concatenate([
                lstm(x[: lengths[b], b], return_gates=True)[2][stream][gate] for b in range(B)
            ])  # each sequence alone, cut to its length: (sum(lengths), H)
            s = stats[stream][gate]
            assert s.count == lengths.sum()
            np.testing.assert_allclose(s.left_saturated, (valid < 0.3).sum(0) / lengths.sum())
            np.testing.assert_allclose(s.right_saturated, (valid > 0.7).sum(0) / lengths.sum())
            np.testing.assert_allclose(s.mean, valid.mean(0), rtol=1e-12)
            np.testing.assert_allclose(s.std, valid.std(0), rtol=1e-10)
    padded = D.gate_statistics(lstm, x, low=0.3, high=0.7)["l0"]["f"]
    assert not np.allclose(padded.mean, stats["l0"]["f"].mean)  # the mask matters here


def test_default_gates_are_the_sigmoid_gates_that_exist():
    x = inputs(4, 1, 3)
    assert list(D.gate_statistics(make(lstmkit.LSTM), x)["l0"]) == ["i", "f", "o"]
    assert list(D.gate_statistics(make(lstmkit.LSTM, forget_gate=False), x)["l0"]) == ["i", "o"]
    cifg = make(lstmkit.LSTM, coupled_input_forget=True)
    assert list(D.gate_statistics(cifg, x)["l0"]) == ["i", "f", "o"]
    assert list(D.gate_statistics(make(lstmkit.GRU), x)["l0"]) == ["r", "z"]
    assert list(D.gate_statistics(make(lstmkit.LSTM), x, gates=["g"])["l0"]) == ["g"]
    with pytest.raises(ValueError, match="unknown gate"):
        D.gate_statistics(make(lstmkit.GRU), x, gates=["f"])


def test_forget_gate_per_char_is_the_layers_forget_gate():
    lstm = make(lstmkit.LSTM, D_in=5, H=6, num_layers=2)
    emb = np.random.default_rng(0).standard_normal((len(SENTENCE), 5))
    expected = lstm(emb, return_gates=True)[2]
    f = D.forget_gate_per_char(lstm, emb)
    assert f.shape == (len(SENTENCE), 6)
    # diagnostics runs the readable reference loop; the layer may run the fused kernels,
    # which agree with it to float64 rounding
    np.testing.assert_allclose(f, expected["l0"]["f"], rtol=1e-13, atol=0)
    np.testing.assert_allclose(D.forget_gate_per_char(lstm, emb, stream="l1"),
                               expected["l1"]["f"], rtol=1e-13, atol=0)
    with pytest.raises(ValueError, match="needs an LSTM"):
        D.forget_gate_per_char(make(lstmkit.GRU, D_in=5), emb)
    with pytest.raises(ValueError, match=r"\(T, D\)"):
        D.forget_gate_per_char(lstm, emb[:, None])


# -- plots ----------------------------------------------------------------------------------------


def assert_png(path, min_bytes=8_000):
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > min_bytes


@pytest.fixture
def no_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a "Glyph missing" or log-of-zero warning fails
        yield


def some_flows():
    x = inputs(40, 2, 4)
    cec = lstmkit.LSTM(4, 8, forget_gate=False, dtype="float64", seed=0)
    cec.params["weight_hh_l0"][...] = 0.0  # dh is exactly 0 before the loss step: gaps
    return {
        "RNN": D.gradient_flow(lstmkit.RNN(4, 8, dtype="float64", seed=0), x),
        "LSTM": D.gradient_flow(lstmkit.LSTM(4, 8, dtype="float64", seed=0), x),
        "LSTM, f = 1": D.gradient_flow(cec, x),
    }


def test_gradient_flow_plots_are_pngs(tmp_path, no_warnings):
    flows = some_flows()
    assert_png(D.plot_gradient_flow(flows, tmp_path / "flow.png"))
    assert_png(D.plot_gradient_flow(flows, tmp_path / "norm.png", normalize=True))
    pairs = {name: (flow, flow) for name, flow in flows.items()}
    assert_png(D.plot_gradient_flow_comparison(pairs, tmp_path / "sub" / "before_after.png"))
    with pytest.raises(ValueError, match="pair"):
        D.plot_gradient_flow_comparison({"RNN": (flows["RNN"],)}, tmp_path / "bad.png")


def test_saturation_plot_is_a_png(tmp_path, no_warnings):
    lstm = lstmkit.LSTM(3, 16, num_layers=2, dtype="float64", seed=0)
    stats = D.gate_statistics(lstm, inputs(30, 4, 3) * 4.0)
    assert_png(D.plot_saturation(stats, tmp_path / "saturation.png"))


def font_has(path, text):
    charmap = FT2Font(path).get_charmap()
    return all(ord(c) in charmap for c in text)


def test_gate_heatmap_draws_japanese_or_falls_back_without_warnings(tmp_path, no_warnings):
    values = np.random.default_rng(0).random((len(SENTENCE), 8))
    result = D.plot_gate_heatmap(SENTENCE, values, tmp_path / "auto.png",
                                 title="forget gate 「とても」", units=[0, 3, 5])
    assert_png(result.path)
    if result.font is not None:  # a font with the glyphs is installed: every character drawn
        assert font_has(result.font, SENTENCE + "「」")
        assert "lastresort" not in result.font.lower()  # real glyphs, not placeholder boxes
        assert result.missing == ""
    else:  # none installed: labelled by code point, and said so
        assert set(result.missing) == {c for c in SENTENCE + "「」" if ord(c) > 0x2FFF}

    forced = D.plot_gate_heatmap(SENTENCE, values[:, 0], tmp_path / "fallback.png", font=None)
    assert_png(forced.path, min_bytes=4_000)
    assert forced.font is None
    assert set(forced.missing) == {c for c in SENTENCE if ord(c) > 0x2FFF}
    assert "、" in forced.missing and "映" in forced.missing

    # a character no font has does not stop the others from being drawn
    mixed = D.plot_gate_heatmap(SENTENCE[:4] + "\U000F0000", np.zeros(5), tmp_path / "mix.png")
    if mixed.font is not None:
        assert font_has(mixed.font, SENTENCE[:4]) and set(mixed.missing) <= {"\U000F0000"}
    else:
        assert set(mixed.missing) >= set(SENTENCE[:4])
    assert result.font is None or mixed.font is not None

    latin = D.plot_gate_heatmap("hello world", np.linspace(0, 1, 11), tmp_path / "latin.png")
    assert latin.font is None and latin.missing == ""
    assert D.find_font_for("hello world") is None
    # matplotlib bundles Last Resort, whose "glyphs" for every code point are boxes: never it
    private_use = D.find_font_for("\U000F0000")
    assert private_use is None or "lastresort" not in private_use.lower()


def test_gate_heatmap_on_a_machine_without_cjk_fonts(tmp_path, monkeypatch, no_warnings):
    monkeypatch.setattr(D, "_candidate_fonts", lambda: iter(()))
    D._font_covering.cache_clear()
    try:
        result = D.plot_gate_heatmap(SENTENCE, np.random.default_rng(0).random(len(SENTENCE)),
                                     tmp_path / "bare.png", title="f 「とても」")
    finally:
        D._font_covering.cache_clear()
    assert_png(result.path, min_bytes=4_000)
    assert result.font is None
    assert set(result.missing) == {c for c in SENTENCE + "「」" if ord(c) > 0x2FFF}


def test_gate_heatmap_checks_its_inputs(tmp_path):
    with pytest.raises(ValueError, match="len\\(text\\)"):
        D.plot_gate_heatmap("abc", np.zeros((4, 2)), tmp_path / "x.png")
    with pytest.raises(ValueError, match="units"):
        D.plot_gate_heatmap("abc", np.zeros((3, 2)), tmp_path / "x.png", units=[2])
