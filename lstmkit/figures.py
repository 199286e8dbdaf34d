"""The guides' figures, drawn from code: ``lstmkit figures --out docs/figures``.

Each figure follows one step of the study note's path and exists in English and Japanese
(``en/NAME.png``, ``ja/NAME.png``; the Japanese labels are drawn with IPAexGothic, which the
``matplotlib-fontja`` dependency ships):

- ``lstm_cell``: the LSTM cell as a diagram: the gates i, f, o, the cell input g, the cell
  state c on its carousel (the CEC), h, and the peephole connections (dashed).
- ``gradient_through_time``: ||dL/dh_t|| of a tanh RNN and ||dL/dc_t|| of LSTMs, step by step
  back from the loss (the vanishing gradient, and the carousel that keeps it).
- ``clipping``: clipping by the norm, drawn as vectors, and the gradient norm of an exploding
  RNN with the exercise's clipping and with the note's "clearer" rewrite (which enlarges it).
- ``cec``: the gradient carried by the carousel alone, and the cell state a carousel without
  a forget gate piles up.
- ``sigmoid``: the sigmoid, its derivative and the derivative's maximum 0.25.
- ``forget_gate_sentence``: the forget gate of the bundled Japanese model (trained on
  吾輩は猫である) over the note's sentence
  「映画おもしろかったね。ところで、とてもお腹が空いたから何か」.

Everything is seeded and computed in float64, so a rerun draws the same curves; the PNGs carry
no software-version metadata, so a rerun with the same matplotlib writes the same bytes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

import lstmkit
from lstmkit.activations import sigmoid, sigmoid_derivative
from lstmkit.diagnostics import gradient_flow

PathLike = str | os.PathLike
LANGUAGES = ("en", "ja")
DPI = 100
NOTE_SENTENCE = "映画おもしろかったね。ところで、とてもお腹が空いたから何か"

# Every label in both languages: TEXT[key][lang].
TEXT: dict[str, dict[str, str]] = {
    "cell_title": {"en": "The LSTM cell (one step)", "ja": "LSTM のセル（1ステップ）"},
    "cec": {"en": "CEC: cell state c", "ja": "CEC：セル状態 c"},
    "f": {"en": "forget gate f", "ja": "忘却ゲート f"},
    "i": {"en": "input gate i", "ja": "入力ゲート i"},
    "g": {"en": "cell input g", "ja": "セルへの入力 g"},
    "o": {"en": "output gate o", "ja": "出力ゲート o"},
    "peephole": {"en": "peephole connections (dashed)", "ja": "覗き穴結合（破線）"},
    "out_h": {"en": "output, and to\nthe next step", "ja": "出力、次の\nステップへ"},
    "gates_note": {
        "en": "Each gate: sigmoid of its own weights times [x_t, h_{t-1}] (+ bias); "
              "one value per unit, multiplied element-wise.",
        "ja": "各ゲート：[x_t, h_{t-1}] に専用の重みを掛けて（バイアスを足して）シグモイドへ。"
              "値はユニットごとに1つ、要素ごとに掛ける。",
    },
    "grad_title": {
        "en": "The gradient going back through time (at initialisation, T = 100)",
        "ja": "時間をさかのぼる勾配（初期化直後、T = 100）",
    },
    "steps_back": {"en": "steps back from the loss", "ja": "損失からさかのぼったステップ数"},
    "grad_norm": {"en": "gradient norm (relative to the loss step)",
                  "ja": "勾配のノルム（損失のステップを1とする）"},
    "rnn": {"en": "RNN (tanh): ||dL/dh_t||", "ja": "RNN（tanh）：||dL/dh_t||"},
    "lstm": {"en": "LSTM, f ≈ 0.5 at initialisation: ||dL/dc_t||",
             "ja": "LSTM（初期化直後 f ≈ 0.5）：||dL/dc_t||"},
    "lstm_bias": {"en": "LSTM, forget_bias = 3 (f ≈ 0.95): ||dL/dc_t||",
                  "ja": "LSTM（forget_bias = 3、f ≈ 0.95）：||dL/dc_t||"},
    "lstm_nof": {"en": "LSTM without forget gate (CEC, f = 1): ||dL/dc_t||",
                 "ja": "忘却ゲートなしの LSTM（CEC、f = 1）：||dL/dc_t||"},
    "clip_vec_title": {"en": "Clipping by the norm (threshold 5)",
                       "ja": "ノルムによる勾配クリッピング（しきい値 5）"},
    "grad_vec": {"en": "gradient g, norm 10", "ja": "勾配 g（ノルム 10）"},
    "clipped": {"en": "g × threshold / norm: norm 5", "ja": "g × threshold / norm：ノルム 5"},
    "rewrite": {"en": "g × norm / threshold: norm 20", "ja": "g × norm / threshold：ノルム 20"},
    "threshold": {"en": "norm = threshold", "ja": "ノルム = しきい値"},
    "clip_norm_title": {
        "en": "Exploding RNN (W_hh: singular values 1.5), threshold 1",
        "ja": "勾配爆発する RNN（W_hh の特異値 1.5）、しきい値 1",
    },
    "seq_len": {"en": "sequence length T", "ja": "系列長 T"},
    "global_norm": {"en": "global gradient norm", "ja": "勾配のグローバルノルム"},
    "no_clip": {"en": "no clipping", "ja": "クリッピングなし"},
    "exercise": {"en": "the exercise: × threshold / norm",
                 "ja": "演習のコード：× threshold / norm"},
    "rewrite_line": {"en": "the rewrite: × norm / threshold",
                     "ja": "書き直した式：× norm / threshold"},
    "cec_grad_title": {
        "en": "Gradient along the carousel alone (W_hh = 0, L = sum c_T)",
        "ja": "CEC だけを通る勾配（W_hh = 0、L = sum c_T）",
    },
    "k_back": {"en": "k: steps back from c_T", "ja": "k：c_T からさかのぼったステップ数"},
    "dc0": {"en": "mean |dL/dc_{T-k}| over the units", "ja": "|dL/dc_{T-k}| のユニット平均"},
    "nof_short": {"en": "forget_gate=False (f = 1)", "ja": "forget_gate=False（f = 1）"},
    "default_short": {"en": "forget gate, initial (f ≈ 0.5)",
                      "ja": "忘却ゲートあり、初期値（f ≈ 0.5）"},
    "bias_short": {"en": "forget_bias = 5 (f ≈ 0.99)", "ja": "forget_bias = 5（f ≈ 0.99）"},
    "cec_c_title": {"en": "What the carousel holds on a long sequence",
                    "ja": "長い系列でセル状態にたまる値"},
    "step": {"en": "step t", "ja": "ステップ t"},
    "max_c": {"en": "max |c| up to step t", "ja": "ステップ t までの max |c|"},
    "without_f": {"en": "without forget gate", "ja": "忘却ゲートなし"},
    "with_f": {"en": "with forget gate", "ja": "忘却ゲートあり"},
    "sig_title": {"en": "The sigmoid and its derivative", "ja": "シグモイド関数とその微分"},
    "sig": {"en": "σ(z)", "ja": "σ(z)"},
    "dsig": {"en": "σ'(z) = σ(z)(1 - σ(z))", "ja": "σ'(z) = σ(z)(1 - σ(z))"},
    "dtanh": {"en": "tanh'(z) = 1 - tanh²(z)", "ja": "tanh'(z) = 1 - tanh²(z)"},
    "max_note": {"en": "the derivative's maximum: 0.25 at z = 0\n(the sigmoid itself is 0.5 there)",
                 "ja": "微分の最大値：z = 0 で 0.25\n（シグモイド関数の値はそこで 0.5）"},
    "sent_title": {
        "en": "The note's sentence through the bundled model (trained on 吾輩は猫である): "
              "forget gate, first layer",
        "ja": "『吾輩は猫である』で学習した同梱モデルにノートの文を入力：1層目の忘却ゲート",
    },
    "mean_f": {"en": "mean f over all units", "ja": "全ユニットの f の平均"},
    "unit": {"en": "unit (the 16 that vary most)", "ja": "ユニット（変化の大きい16個）"},
}


def _t(key: str, lang: str) -> str:
    return TEXT[key][lang]


# -- drawing ---------------------------------------------------------------------------------


def _japanese_font() -> str:
    """The IPAexGothic file that ``matplotlib-fontja`` ships (found without importing it:
    importing it changes matplotlib's global settings)."""
    import importlib.util

    spec = importlib.util.find_spec("matplotlib_fontja")
    if spec is None or spec.origin is None:
        raise RuntimeError("the Japanese figures need matplotlib-fontja: pip install "
                           "matplotlib-fontja")
    return str(Path(spec.origin).parent / "fonts" / "ipaexg.ttf")


@contextmanager
def _style(lang: str) -> Iterator[None]:
    """DejaVu Sans, with IPAexGothic for the glyphs it lacks (the Japanese labels, and the
    note's sentence in either language)."""
    import matplotlib
    from matplotlib import font_manager

    path = _japanese_font()
    font_manager.fontManager.addfont(path)
    families = ["DejaVu Sans", font_manager.FontProperties(fname=path).get_name()]
    with matplotlib.rc_context({"font.family": families, "font.size": 10,
                                "axes.titlesize": 11, "svg.hashsalt": "lstmkit"}):
        yield


def _figure(width: float, height: float, ncols: int = 1) -> tuple[Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, ncols, squeeze=False)[0]


# -- the figures -----------------------------------------------------------------------------


def lstm_cell(lang: str) -> Any:
    """The cell diagram: boxes for the gates, the carousel as a thick line, peepholes dashed."""
    from matplotlib.patches import Circle, FancyArrowPatch, FancyBboxPatch

    fig, (ax,) = _figure(9.0, 5.6)
    ax.set_xlim(0, 12.4)
    ax.set_ylim(-0.6, 7.6)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title(_t("cell_title", lang))
    ax.add_patch(FancyBboxPatch((1.1, 0.5), 10.0, 6.2, boxstyle="round,pad=0.1",
                                facecolor="0.97", edgecolor="0.6"))

    def arrow(start, end, style="-|>", dashed=False, width=1.3, color="0.15", rad=0.0):
        ax.add_patch(FancyArrowPatch(
            start, end, arrowstyle=style, mutation_scale=12, linewidth=width, color=color,
            linestyle=(0, (4, 3)) if dashed else "-", connectionstyle=f"arc3,rad={rad}",
            shrinkA=0, shrinkB=0))

    def node(xy, symbol):
        ax.add_patch(Circle(xy, 0.28, facecolor="white", edgecolor="0.15", linewidth=1.3,
                            zorder=3))
        ax.text(*xy, symbol, ha="center", va="center", fontsize=13, zorder=4)

    def box(x, y, function, label, color):
        ax.add_patch(FancyBboxPatch((x - 0.6, y - 0.35), 1.2, 0.7, boxstyle="round,pad=0.05",
                                    facecolor=color, edgecolor="0.15", zorder=3))
        ax.text(x, y, function, ha="center", va="center", fontsize=11, zorder=4)
        ax.text(x, y - 0.65, label, ha="center", va="top", fontsize=9, zorder=4,
                bbox={"facecolor": "0.97", "edgecolor": "none", "pad": 1.0})

    sig_color, tanh_color, cec_color = "#fbd9a8", "#b9d7f0", "#c0392b"
    y_cec, y_box, y_bus = 6.0, 3.0, 1.2
    x_f, x_i, x_g, x_o, x_tanh = 3.2, 5.0, 6.6, 8.6, 10.0
    # The carousel: c_{t-1} -> (x f) -> (+ i g) -> c_t.
    arrow((0.2, y_cec), (x_f - 0.28, y_cec), style="-", width=3.0, color=cec_color)
    arrow((x_f + 0.28, y_cec), (x_g - 0.28, y_cec), style="-", width=3.0, color=cec_color)
    arrow((x_g + 0.28, y_cec), (12.2, y_cec), width=3.0, color=cec_color)
    ax.text(0.2, y_cec + 0.25, r"$c_{t-1}$", fontsize=12, va="bottom")
    ax.text(12.2, y_cec + 0.25, r"$c_t$", fontsize=12, va="bottom", ha="right")
    ax.text((x_f + x_g) / 2, y_cec + 0.3, _t("cec", lang), color=cec_color, ha="center",
            va="bottom", fontsize=10)
    node((x_f, y_cec), "×")
    node((x_g, y_cec), "+")
    # The gates and the cell input, fed by [x_t, h_{t-1}].
    box(x_f, y_box, "σ", _t("f", lang), sig_color)
    box(x_i, y_box, "σ", _t("i", lang), sig_color)
    box(x_g, y_box, "tanh", _t("g", lang), tanh_color)
    box(x_o, y_box, "σ", _t("o", lang), sig_color)
    ax.plot([1.6, x_o], [y_bus, y_bus], color="0.15", linewidth=1.3)
    arrow((0.2, y_bus), (1.6, y_bus), style="-")
    ax.text(0.2, y_bus + 0.15, r"$h_{t-1}$", fontsize=12, va="bottom")
    ax.plot([0.2, 1.6], [0.3, 0.3], color="0.15", linewidth=1.3)
    arrow((1.6, 0.3), (1.6, y_bus), style="-")
    ax.text(0.2, 0.45, r"$x_t$", fontsize=12, va="bottom")
    for x in (x_f, x_i, x_g, x_o):
        arrow((x, y_bus), (x, y_box - 0.4))
    ax.plot([x_f, x_o], [y_bus, y_bus], "o", color="0.15", markersize=3)
    # f scales c_{t-1}; i scales g, and the product is added.
    arrow((x_f, y_box + 0.4), (x_f, y_cec - 0.28))
    node((x_g, 4.6), "×")
    arrow((x_i, y_box + 0.4), (x_g - 0.22, 4.45), rad=-0.2)
    arrow((x_g, y_box + 0.4), (x_g, 4.6 - 0.28))
    arrow((x_g, 4.6 + 0.28), (x_g, y_cec - 0.28))
    # h_t = o * tanh(c_t).
    ax.add_patch(FancyBboxPatch((x_tanh - 0.5, 4.4), 1.0, 0.55, boxstyle="round,pad=0.05",
                                facecolor=tanh_color, edgecolor="0.15", zorder=3))
    ax.text(x_tanh, 4.675, "tanh", ha="center", va="center", fontsize=11, zorder=4)
    arrow((x_tanh, y_cec), (x_tanh, 4.95 + 0.05))
    node((x_tanh, y_box), "×")
    arrow((x_tanh, 4.4 - 0.05), (x_tanh, y_box + 0.28))
    arrow((x_o + 0.65, y_box), (x_tanh - 0.28, y_box))
    arrow((x_tanh + 0.28, y_box), (12.2, y_box))
    ax.text(12.2, y_box + 0.15, r"$h_t$", fontsize=12, va="bottom", ha="right")
    ax.text(12.2, y_box - 0.2, _t("out_h", lang), fontsize=8, va="top", ha="right")
    # Peepholes: i and f see c_{t-1}, o sees c_t.
    peep = "#7d3c98"
    arrow((2.0, y_cec), (x_f - 0.45, y_box + 0.4), dashed=True, color=peep, width=1.1)
    arrow((2.0, y_cec), (x_i - 0.3, y_box + 0.4), dashed=True, color=peep, width=1.1, rad=0.15)
    arrow((10.9, y_cec), (x_o + 0.35, y_box + 0.4), dashed=True, color=peep, width=1.1,
          rad=-0.1)
    ax.plot([2.0, 10.9], [y_cec, y_cec], "o", color=peep, markersize=4, zorder=4)
    ax.text(11.1, 0.25, _t("peephole", lang), color=peep, ha="right", va="bottom",
            fontsize=9)
    ax.text(6.2, 7.0,
            r"$c_t = f_t \odot c_{t-1} + i_t \odot g_t, \quad h_t = o_t \odot \tanh(c_t)$",
            ha="center", va="bottom", fontsize=11)
    ax.text(6.2, -0.5, _t("gates_note", lang), ha="center", va="bottom", fontsize=8,
            color="0.3")
    return fig


def _lstm(seed: int = 0, **options: Any) -> lstmkit.LSTM:
    return lstmkit.LSTM(8, 32, dtype="float64", seed=seed, **options)


def gradient_through_time(lang: str) -> Any:
    """||dL/dh_t|| (RNN) and ||dL/dc_t|| (LSTMs) for L = sum(h_T), T = 100, at initialisation."""
    T = 100
    x = np.random.default_rng(0).standard_normal((T, 1, 8))
    series = {
        "rnn": gradient_flow(lstmkit.RNN(8, 32, dtype="float64", seed=0), x).dh_norm,
        "lstm": gradient_flow(_lstm(), x).dc_norm,
        "lstm_bias": gradient_flow(_lstm(forget_bias=3.0), x).dc_norm,
        "lstm_nof": gradient_flow(_lstm(forget_gate=False), x).dc_norm,
    }
    fig, (ax,) = _figure(7.5, 4.4)
    back = np.arange(T)
    for n, (key, norm) in enumerate(series.items()):
        y = norm[::-1] / norm[-1]
        ax.semilogy(back, np.where(y > 0, y, np.nan), color=f"C{n}", label=_t(key, lang),
                    linewidth=1.8)
    ax.set_xlabel(_t("steps_back", lang))
    ax.set_ylabel(_t("grad_norm", lang))
    ax.set_title(_t("grad_title", lang))
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    return fig


def _exploding_rnn_norm(T: int) -> float:
    """Global gradient norm of the guide's exploding RNN (W_hh orthogonal x 1.5, no bias, tiny
    inputs: tanh near its linear range), L = sum h_T."""
    rnn = lstmkit.RNN(4, 16, dtype="float64", seed=0, recurrent_init="orthogonal")
    rnn.params["weight_hh_l0"] *= 1.5
    for name in ("bias_ih_l0", "bias_hh_l0"):
        rnn.params[name][...] = 0.0
    x = 1e-3 * np.random.default_rng(0).standard_normal((T, 1, 4))
    out, _ = rnn(x)
    d_out = np.zeros_like(out)
    d_out[-1] = 1.0
    rnn.backward(d_out)
    return lstmkit.clip.total_norm(rnn.grads)


def clipping(lang: str) -> Any:
    """Left: g, g x threshold/norm, g x norm/threshold as arrows. Right: norms against T."""
    from matplotlib.patches import Circle

    fig, (left, right) = _figure(10.5, 4.6, ncols=2)
    g = np.array([6.0, 8.0])
    threshold = 5.0
    norm = float(np.linalg.norm(g))
    left.add_patch(Circle((0, 0), threshold, fill=False, linestyle="--", color="0.5",
                          label=_t("threshold", lang)))
    for vector, key, color, width in ((g * norm / threshold, "rewrite", "C3", 0.25),
                                      (g, "grad_vec", "0.2", 0.3),
                                      (g * threshold / norm, "clipped", "C2", 0.35)):
        left.arrow(0, 0, *vector, color=color, width=width, length_includes_head=True,
                   label=_t(key, lang))
    left.set_xlim(-6, 18)
    left.set_ylim(-6, 18)
    left.set_aspect("equal")
    left.grid(True, alpha=0.3)
    left.legend(fontsize=8, loc="upper left")
    left.set_title(_t("clip_vec_title", lang))

    lengths = np.arange(1, 21)  # beyond ~20 steps h leaves the linear range and saturates
    before = np.array([_exploding_rnn_norm(int(T)) for T in lengths])
    max_norm = 1.0
    rate = max_norm / before
    exercise = np.where(rate < 1, before * rate, before)
    rewrite = np.where(before > max_norm, before * before / max_norm, before)
    right.semilogy(lengths, before, color="0.2", label=_t("no_clip", lang), linewidth=1.8)
    right.semilogy(lengths, exercise, color="C2", label=_t("exercise", lang), linewidth=1.8)
    right.semilogy(lengths, rewrite, color="C3", linestyle="--", label=_t("rewrite_line", lang),
                   linewidth=1.8)
    right.set_xlabel(_t("seq_len", lang))
    right.set_ylabel(_t("global_norm", lang))
    right.set_title(_t("clip_norm_title", lang))
    right.grid(True, alpha=0.3)
    right.legend(fontsize=8, loc="upper left")
    return fig


def cec(lang: str) -> Any:
    """Left: dL/dc_{T-k} along the carousel alone. Right: max|c| over 3,000 steps."""
    fig, (left, right) = _figure(10.5, 4.4, ncols=2)
    T = 100
    x = np.random.default_rng(0).standard_normal((T, 1, 3))
    for n, (key, options) in enumerate((("nof_short", {"forget_gate": False}),
                                        ("default_short", {}),
                                        ("bias_short", {"forget_bias": 5.0}))):
        lstm = lstmkit.LSTM(3, 4, dtype="float64", seed=0, **options)
        lstm.params["weight_hh_l0"][...] = 0.0
        flow = gradient_flow(lstm, x, d_output=np.zeros((T, 1, 4)),
                             d_state=(np.zeros((1, 1, 4)), np.ones((1, 1, 4))))
        y = np.abs(flow.dc[::-1, 0, :]).mean(axis=1)
        left.semilogy(np.arange(T), np.where(y > 0, y, np.nan), color=f"C{n}",
                      label=_t(key, lang), linewidth=1.8)
    left.set_xlabel(_t("k_back", lang))
    left.set_ylabel(_t("dc0", lang))
    left.set_title(_t("cec_grad_title", lang), fontsize=10)
    left.grid(True, alpha=0.3)
    left.legend(fontsize=8, loc="lower left")

    long = np.random.default_rng(0).standard_normal((3000, 1, 3))
    for n, (key, forget_gate) in enumerate((("without_f", False), ("with_f", True))):
        lstm = lstmkit.LSTM(3, 4, forget_gate=forget_gate, dtype="float64", seed=0)
        _, _, gates = lstm(long, return_gates=True)
        running = np.maximum.accumulate(np.abs(gates["l0"]["c"]).max(axis=(1, 2)))
        right.plot(np.arange(1, 3001), running, color=f"C{3 * n}", label=_t(key, lang),
                   linewidth=1.8)
    right.set_yscale("log")
    right.set_xlabel(_t("step", lang))
    right.set_ylabel(_t("max_c", lang))
    right.set_title(_t("cec_c_title", lang), fontsize=10)
    right.grid(True, alpha=0.3)
    right.legend(fontsize=8, loc="center right")
    return fig


def sigmoid_bound(lang: str) -> Any:
    """σ, σ' (maximum 0.25 at z = 0) and tanh' (maximum 1)."""
    fig, (ax,) = _figure(7.0, 4.0)
    z = np.linspace(-6, 6, 601)
    ax.plot(z, sigmoid(z), color="C0", label=_t("sig", lang), linewidth=1.8)
    ax.plot(z, sigmoid_derivative(z), color="C3", label=_t("dsig", lang), linewidth=1.8)
    ax.plot(z, 1 - np.tanh(z) ** 2, color="0.5", linestyle=":", label=_t("dtanh", lang),
            linewidth=1.5)
    ax.plot([0], [0.25], "o", color="C3")
    ax.axhline(0.25, color="C3", linewidth=0.8, linestyle="--")
    ax.annotate(_t("max_note", lang), xy=(0, 0.25), xytext=(1.2, 0.55), fontsize=9,
                arrowprops={"arrowstyle": "->", "color": "C3"})
    ax.set_xlabel("z")
    ax.set_ylim(-0.02, 1.05)
    ax.set_title(_t("sig_title", lang))
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    return fig


def forget_gate_sentence(lang: str) -> Any:
    """The bundled model's forget gate over the note's sentence: the mean over all units per
    character (「とても」 marked), and the 16 units whose f varies most."""
    from lstmkit.grad_mode import no_grad
    from lstmkit.pretrained import load_pretrained

    model, vocab, _ = load_pretrained()
    with no_grad():
        _, _, gates = model.forward(vocab.encode(NOTE_SENTENCE)[:, None], return_gates=True)
    f = np.asarray(gates["l0"]["f"][:, 0], dtype=np.float64)  # (T, H)
    units = np.argsort(-f.std(axis=0), kind="stable")[:16]
    T = len(NOTE_SENTENCE)
    start = NOTE_SENTENCE.index("とても")
    fig, (top, bottom) = _stacked(10.0, 5.6)
    colors = ["C3" if start <= t < start + 3 else "C0" for t in range(T)]
    top.bar(np.arange(T), f.mean(axis=1), color=colors)
    top.set_ylim(0, 1)
    top.set_xlim(-0.5, T - 0.5)
    top.set_xticks(np.arange(T), list(NOTE_SENTENCE))
    top.set_ylabel(_t("mean_f", lang))
    top.grid(True, axis="y", alpha=0.3)
    top.set_title(_t("sent_title", lang))
    image = bottom.imshow(f[:, units].T, aspect="auto", cmap="viridis", vmin=0, vmax=1,
                          interpolation="nearest")
    bottom.set_xticks(np.arange(T), list(NOTE_SENTENCE))
    bottom.set_yticks(np.arange(len(units)), [str(u) for u in units], fontsize=7)
    bottom.set_ylabel(_t("unit", lang))
    for edge in (start - 0.5, start + 2.5):
        bottom.axvline(edge, color="C3", linewidth=1.2)
    fig.colorbar(image, ax=bottom, fraction=0.03, pad=0.01, label="f")
    return fig


def _stacked(width: float, height: float) -> tuple[Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, height_ratios=[1, 1.6])
    return fig, (top, bottom)


FIGURES: dict[str, Callable[[str], Any]] = {
    "lstm_cell": lstm_cell,
    "gradient_through_time": gradient_through_time,
    "clipping": clipping,
    "cec": cec,
    "sigmoid": sigmoid_bound,
    "forget_gate_sentence": forget_gate_sentence,
}


def figure_files() -> list[str]:
    """The files ``write_figures`` writes, relative to its folder: ``en/NAME.png``, ..."""
    return [f"{lang}/{name}.png" for lang in LANGUAGES for name in FIGURES]


def write_figures(out: PathLike, names: list[str] | None = None, force: bool = False,
                  dpi: int = DPI) -> list[Path]:
    """Draw the figures (all, or ``names``) in every language into ``out/<lang>/<name>.png``.

    Refuses (``FileExistsError``) to replace an existing PNG unless ``force``.
    """
    chosen = list(FIGURES) if names is None else list(names)
    unknown = sorted(set(chosen) - set(FIGURES))
    if unknown:
        raise ValueError(f"no figure named {unknown}; the figures are {list(FIGURES)}")
    paths = [Path(out) / lang / f"{name}.png" for lang in LANGUAGES for name in chosen]
    existing = [str(p) for p in paths if p.exists()]
    if existing and not force:
        raise FileExistsError(f"{', '.join(existing)} exist; pass force=True (--force) to "
                              "replace them")
    written = []
    for lang in LANGUAGES:
        for name in chosen:
            path = Path(out) / lang / f"{name}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            with _style(lang):
                fig = FIGURES[name](lang)
                fig.savefig(path, format="png", dpi=dpi, metadata={"Software": None})
            written.append(path)
    return written


__all__ = ["FIGURES", "LANGUAGES", "TEXT", "figure_files", "write_figures"]
