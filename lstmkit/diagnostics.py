"""Looking inside a recurrent layer: gradient flow through time, gate saturation, gate heatmaps.

Three pictures from the literature, for any ``lstmkit.LSTM``, ``GRU`` or ``RNN``:

1. **Gradient flow through time** (Hochreiter 1991; Bengio, Simard & Frasconi 1994;
   Hochreiter & Schmidhuber 1997). For a loss L read at one step, ``gradient_flow`` returns
   ``||dL/dh_t||`` and, for the LSTM, ``||dL/dc_t||`` at every step t: the simple RNN's decays
   geometrically as t moves away from the loss (the vanishing gradient), while the LSTM's
   Constant Error Carousel carries ``dL/dc_t`` back unchanged wherever the forget gate is 1.
2. **Gate saturation** (Karpathy, Johnson & Fei-Fei 2015, "Visualizing and Understanding
   Recurrent Networks", section 4.3): the fraction of steps at which each unit's gate is
   left-saturated (< 0.1, closed) or right-saturated (> 0.9, open), plotted unit by unit.
3. **Gate heatmaps over text**: a gate's value at each character of a sentence, e.g. the forget
   gate over the study note's 「映画おもしろかったね。ところで、とてもお腹が空いたから何か」.

How per-step gradients are obtained: every function here traces the layer's forward pass
(``RecurrentLayer.trace``: the reference time loop on the layer's own cells and parameters,
every step's cache kept), then walks the steps backwards calling each cell's ``backward``,
exactly as ``ReferenceRecurrence.backward`` does, recording the gradient that arrives at every
step. The layer itself is left untouched: its cache (so a pending ``backward``), its
accumulated ``grads`` and the state a ``stateful`` layer carries stay as they were. Dropout
between layers is off (evaluation semantics), so the results are deterministic.

Plots are drawn on a ``matplotlib.figure.Figure`` with the Agg canvas (no ``pyplot``, no
global backend switch, no display needed) and written as PNG.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from lstmkit.cells import GRUCell, LSTMCell
from lstmkit.layers import TraceStream

Array = np.ndarray
PathLike = str | os.PathLike

SATURATION_LOW = 0.1
SATURATION_HIGH = 0.9

# -- running a layer step by step ---------------------------------------------------------------


# -- 1. gradient flow through time -------------------------------------------------------------


@dataclass(frozen=True)
class GradientFlow:
    """The gradient of one loss with respect to every step's state, in one layer and direction.

    Attributes:
        mode: "LSTM", "GRU" or "RNN".
        stream: which layer and direction: "l0", "l0_reverse", "l1", ...
        dh: (T, B, H) dL/dh_t: the whole gradient reaching h_t, through ``output[t]`` and through
            the steps after t (before t, in the reverse direction). Always time-major; B = 1
            for unbatched input.
        dc: (T, B, H) dL/dc_t (LSTM only, else None): the error in the carousel at step t, with
            h_t = o_t * tanh(c_t) counted as a function of c_t (Graves 2008's epsilon_c). It
            obeys dc_{t-1} = f_t * dc_t + (terms through h_{t-1} and the peepholes), so it is
            exactly constant where f = 1 and nothing else feeds back. The gradient with respect
            to c_t alone, as the state handed to step t+1, is dc_t - dh_t * d h_t / d c_t.
        dh_norm: (T,) ||dL/dh_t||, the norm over the batch and the units.
        dc_norm: (T,) ||dL/dc_t|| (LSTM only, else None).
        loss_step: the last step whose output the loss reads (the end of the flow).
    """

    mode: str
    stream: str
    dh: Array
    dc: Array | None
    dh_norm: Array
    dc_norm: Array | None
    loss_step: int


def _backward_stream(stream: TraceStream, d_out: Array, d_final: tuple[Array, ...],
                     ) -> tuple[Array, Array | None, Array]:
    """BPTT through one stream, recording the gradient at every step.

    d_out (T, B, H) and d_final (one (B, H) per state part) -> dh (T, B, H), dc (T, B, H) or
    None, dx (T, B, D). The same walk as ``ReferenceRecurrence.backward`` without lengths.
    """
    cell, p, cache = stream.cell, stream.params, stream.cache
    scratch = {name: np.zeros_like(value) for name, value in p.items()}  # layer.grads untouched
    T, B, H = d_out.shape
    dh = np.zeros((T, B, H), dtype=d_out.dtype)
    dc = np.zeros_like(dh) if isinstance(cell, LSTMCell) else None
    dx = np.zeros((T, B, cell.input_size), dtype=d_out.dtype)
    d_state = d_final
    for t in reversed(cache["steps"]):
        step = cache["caches"][t]
        d_new = (d_state[0] + d_out[t],) + tuple(d_state[1:])
        dh[t] = d_new[0]
        if dc is not None:
            dc[t] = cell.carousel_gradient(d_new, step, p)
        dx[t], d_state = cell.backward(d_new, step, p, scratch)
    return dh, dc, dx


def _resolve_step(step: int, T: int) -> int:
    if not isinstance(step, (int, np.integer)) or isinstance(step, bool):
        raise TypeError(f"loss_step must be an integer, got {step!r}")
    if not -T <= step < T:
        raise ValueError(f"loss_step must lie in [-T, T) = [{-T}, {T}), got {step}")
    return int(step) % T


def gradient_flows(layer: Any, x: Any, loss_step: int = -1, *, d_output: Any = None,
                   d_state: Any = None, state: Any = None) -> dict[str, GradientFlow]:
    """Per-step gradients in every layer and direction: ``{"l0": GradientFlow, ...}``.

    Args:
        layer: an ``lstmkit.LSTM``, ``GRU`` or ``RNN`` (any number of layers, either direction).
        x: the input in the layer's layout: (T, B, D), (B, T, D) with ``batch_first``, or (T, D).
        loss_step: the step the loss reads when ``d_output`` is None: L = sum(output[loss_step])
            (negative values count from the end).
        d_output: dL/d(output), shaped like the layer's output; replaces the default loss.
        d_state: dL/d(state_n), shaped like the returned state (zeros if None).
        state: the initial state, as the layer takes it.

    The loss is defined on the top layer's output; a lower layer's flow is the gradient that
    reaches it through the layers above. Limits: no ``lengths`` (padded batches), and dropout
    is off. The layer's cache, grads and carried state are not touched.
    """
    run = layer.trace(x, state)
    T, B = run.shape
    H, nd, L = layer.hidden_size, layer.num_directions, layer.num_layers
    if d_output is None:
        step = _resolve_step(loss_step, T)
        d_out = np.zeros((T, B, nd * H), dtype=layer.dtype)
        d_out[step] = 1.0
    else:
        d_out = run.d_output(d_output)
        nonzero = np.flatnonzero(np.any(d_out != 0, axis=(1, 2)))
        step = int(nonzero[-1]) if nonzero.size else T - 1
    d_fin = run.d_state(d_state)
    if d_state is not None:
        step = T - 1 if any(np.any(s != 0) for s in d_fin) else step

    flows: dict[str, GradientFlow] = {}
    d_layer = d_out
    for k in range(L - 1, -1, -1):
        d_below = None
        for d in range(nd):
            j = k * nd + d
            stream = run.streams[j]
            dh, dc, dx = _backward_stream(
                stream, np.ascontiguousarray(d_layer[:, :, d * H : (d + 1) * H]),
                tuple(s[j] for s in d_fin),
            )
            d_below = dx if d_below is None else d_below + dx
            flows[stream.name] = GradientFlow(
                mode=layer.mode, stream=stream.name, dh=dh, dc=dc,
                dh_norm=np.linalg.norm(dh, axis=(1, 2)),
                dc_norm=None if dc is None else np.linalg.norm(dc, axis=(1, 2)),
                loss_step=step,
            )
        d_layer = d_below
    return {name: flows[name] for name in sorted(flows, key=_stream_order)}


def _stream_order(name: str) -> tuple[int, int]:
    k, _, reverse = name[1:].partition("_")
    return int(k), int(bool(reverse))


def gradient_flow(layer: Any, x: Any, loss_step: int = -1, *, d_output: Any = None,
                  d_state: Any = None, state: Any = None,
                  stream: str | None = None) -> GradientFlow:
    """The gradient reaching every step's state: ``dh_norm[t] = ||dL/dh_t||``, (LSTM) ``dc_norm``.

    L = sum(output[loss_step]) unless ``d_output`` / ``d_state`` give dL/d(output) and
    dL/d(state_n) (see ``gradient_flows`` for the arguments). ``stream`` picks the layer and
    direction ("l0", "l0_reverse", ...); by default the top layer's forward direction, whose
    output the loss reads directly (for a one-layer unidirectional layer: its only one).
    """
    flows = gradient_flows(layer, x, loss_step, d_output=d_output, d_state=d_state, state=state)
    name = f"l{layer.num_layers - 1}" if stream is None else stream
    if name not in flows:
        raise KeyError(f"no stream {name!r} in this {layer.mode}; it has {sorted(flows)}")
    return flows[name]


# -- 2. gate statistics --------------------------------------------------------------------------


@dataclass(frozen=True)
class GateStatistics:
    """Saturation of one gate, per unit and overall, over the valid (unpadded) steps.

    Attributes:
        left_saturated: (H,) fraction of steps with value < ``low`` (the gate nearly closed).
        right_saturated: (H,) fraction of steps with value > ``high`` (the gate nearly open).
        mean: (H,) mean value per unit.
        std: (H,) standard deviation per unit.
        count: number of values per unit (valid steps times sequences).
        overall: the same four numbers over all units and steps: keys "left_saturated",
            "right_saturated", "mean", "std".
        low, high: the thresholds (strict: a value equal to one is not saturated).
    """

    left_saturated: Array
    right_saturated: Array
    mean: Array
    std: Array
    count: int
    overall: dict[str, float] = field(default_factory=dict)
    low: float = SATURATION_LOW
    high: float = SATURATION_HIGH


def saturation_statistics(values: Any, mask: Any = None, low: float = SATURATION_LOW,
                          high: float = SATURATION_HIGH) -> GateStatistics:
    """Saturation statistics of gate values.

    Args:
        values: (T, B, H) or (T, H) gate values.
        mask: (T, B) or (T,) bool, True where a step is valid (None: all are).
        low, high: the thresholds; Karpathy et al. (2015) use 0.1 and 0.9.
    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim == 2:
        v = v[:, None, :]
    if v.ndim != 3 or v.shape[0] == 0 or v.shape[1] == 0:
        raise ValueError(f"values must be (T, B, H) or (T, H) with T, B >= 1, got {v.shape}")
    if not low < high:
        raise ValueError(f"need low < high, got low={low}, high={high}")
    if mask is None:
        m = np.ones(v.shape[:2], dtype=bool)
    else:
        m = np.asarray(mask, dtype=bool).reshape(v.shape[0], -1)
        if m.shape != v.shape[:2]:
            raise ValueError(f"mask must have shape {v.shape[:2]}, got {np.shape(mask)}")
    flat = v[m]  # (N, H): the valid steps of every sequence
    if flat.shape[0] == 0:
        raise ValueError("mask leaves no valid step")
    left, right = flat < low, flat > high
    return GateStatistics(
        left_saturated=left.mean(axis=0), right_saturated=right.mean(axis=0),
        mean=flat.mean(axis=0), std=flat.std(axis=0), count=int(flat.shape[0]),
        overall={"left_saturated": float(left.mean()), "right_saturated": float(right.mean()),
                 "mean": float(flat.mean()), "std": float(flat.std())},
        low=float(low), high=float(high),
    )


def sigmoid_gates(cell: Any) -> tuple[str, ...]:
    """The cell's gates that are sigmoids with weights: LSTM i, f, o (those present; f also
    under CIFG, where f = 1 - i), GRU r, z; none for the simple RNN."""
    if isinstance(cell, LSTMCell):
        present = [g for g in cell.gates if g != "g"]
        if cell.coupled_input_forget:  # needs the input gate: present == ["i", ...]
            present.insert(1, "f")
        return tuple(present)
    if isinstance(cell, GRUCell):
        return ("r", "z")
    return ()


def gate_statistics(layer: Any, x: Any, lengths: Any = None, *, state: Any = None,
                    gates: Sequence[str] | None = None, low: float = SATURATION_LOW,
                    high: float = SATURATION_HIGH) -> dict[str, dict[str, GateStatistics]]:
    """Saturation of every gate: ``{"l0": {"i": GateStatistics, "f": ..., "o": ...}, ...}``.

    Args:
        layer: an ``lstmkit.LSTM`` or ``GRU``.
        x: the input in the layer's layout.
        lengths: (B,) true lengths of padded sequences; padded steps are left out.
        state: the initial state, as the layer takes it.
        gates: which gates (default ``sigmoid_gates(cell)``: LSTM i, f, o; GRU r, z). Any name
            of the layer's ``return_gates`` dict is accepted, e.g. "g" or "c", though the
            thresholds only mean saturation for sigmoids.
        low, high: saturation thresholds.
    """
    run = layer.trace(x, state, lengths)
    result: dict[str, dict[str, GateStatistics]] = {}
    for stream in run.streams:
        sequences = stream.gates()
        names = tuple(gates) if gates is not None else sigmoid_gates(stream.cell)
        if not names:
            raise ValueError(f"the {layer.mode} has no gates to measure")
        unknown = [g for g in names if g not in sequences]
        if unknown:
            raise ValueError(
                f"unknown gate(s) {unknown} for the {layer.mode}; it has {sorted(sequences)}"
            )
        result[stream.name] = {
            g: saturation_statistics(sequences[g], run.mask, low, high) for g in names
        }
    return result


def gate_per_step(layer: Any, inputs: Any, gate: str, stream: str = "l0",
                  state: Any = None) -> Array:
    """One gate's value at every step of one unbatched sequence: inputs (T, D) -> (T, H).

    A gate that a variant switch removed appears as its constant (1), as in ``return_gates``.
    """
    array = np.asarray(inputs)
    if array.ndim != 2:
        raise ValueError(f"inputs must be one sequence (T, D), got shape {array.shape}")
    run = layer.trace(array, state)
    names = [s.name for s in run.streams]
    if stream not in names:
        raise KeyError(f"no stream {stream!r} in this {layer.mode}; it has {names}")
    sequences = run.streams[names.index(stream)].gates()
    if gate not in sequences:
        raise ValueError(f"the {layer.mode} has no gate {gate!r}; it has {sorted(sequences)}")
    return sequences[gate][:, 0]


def forget_gate_per_char(layer: Any, embedded_inputs: Any, stream: str = "l0",
                         state: Any = None) -> Array:
    """The LSTM's forget gate at every character: embedded_inputs (T, D) -> (T, H).

    ``embedded_inputs`` are the character embeddings the LSTM reads (e.g. ``embedding(ids)``),
    so this works with any model that feeds an ``lstmkit.LSTM``.
    """
    if layer.mode != "LSTM":
        raise ValueError(f"forget_gate_per_char needs an LSTM, got a {layer.mode}")
    return gate_per_step(layer, embedded_inputs, "f", stream, state)


# -- fonts: drawing Japanese (and any other) characters ----------------------------------------

# Families with CJK glyphs, the most common first; any other installed font that has the
# glyphs is used too.
CJK_FAMILIES = (
    "Noto Sans CJK JP", "Noto Sans JP", "Noto Serif CJK JP", "Source Han Sans JP",
    "IPAexGothic", "IPAGothic", "IPAPGothic", "TakaoGothic", "VL Gothic", "Hiragino Sans",
    "Hiragino Kaku Gothic ProN", "Yu Gothic", "Meiryo", "MS Gothic", "Noto Sans CJK SC",
    "Noto Sans CJK TC", "Noto Sans CJK KR", "WenQuanYi Zen Hei", "Droid Sans Fallback",
)


@functools.cache
def _charmap(path: str) -> frozenset[int]:
    """The code points a font file has glyphs for (empty if it cannot be read)."""
    from matplotlib.ft2font import FT2Font

    try:
        return frozenset(FT2Font(path).get_charmap())
    except (OSError, RuntimeError, ValueError):
        return frozenset()


def _default_font() -> str:
    from matplotlib import font_manager

    return font_manager.findfont(font_manager.FontProperties(), fallback_to_default=True)


def _fc_list(lang: str) -> list[str]:
    """Font files fontconfig knows for a language (it sees fonts installed after matplotlib
    built its font cache)."""
    if shutil.which("fc-list") is None:
        return []
    try:
        done = subprocess.run(["fc-list", "--format", "%{file}\n", f":lang={lang}"],
                              capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.SubprocessError):
        return []
    return sorted(line for line in done.stdout.splitlines() if line)


def _candidate_fonts() -> Iterable[str]:
    from matplotlib import font_manager

    entries = font_manager.fontManager.ttflist
    for family in CJK_FAMILIES:
        yield from (e.fname for e in entries if e.name == family)
    # matplotlib-fontja (a dependency) and japanize-matplotlib ship IPAexGothic; located
    # without importing them (importing them changes matplotlib's global settings).
    for package in ("matplotlib_fontja", "japanize_matplotlib"):
        spec = importlib.util.find_spec(package)
        if spec is not None and spec.origin is not None:
            yield str(Path(spec.origin).parent / "fonts" / "ipaexg.ttf")
    for lang in ("ja", "zh-cn", "zh-tw", "ko"):
        yield from _fc_list(lang)
    yield from (e.fname for e in entries)


# Fonts whose glyphs are placeholders (matplotlib >= 3.10 bundles Last Resort as its final
# fallback: it "covers" every code point with a box naming the Unicode block).
_PLACEHOLDER_FONTS = ("lastresort",)


@functools.lru_cache(maxsize=64)
def _font_covering(needed: frozenset[int]) -> str | None:
    """The first candidate font with every code point of ``needed``, else the one with the
    most of them (None if no font has any)."""
    seen = set()
    best, best_count = None, 0
    for path in _candidate_fonts():
        placeholder = any(p in Path(path).name.lower() for p in _PLACEHOLDER_FONTS)
        if path in seen or placeholder or not os.path.isfile(path):
            continue
        seen.add(path)
        count = len(needed & _charmap(path))
        if count == len(needed):
            return path
        if count > best_count:
            best, best_count = path, count
    return best


def _needed(text: str) -> frozenset[int]:
    """The code points of ``text`` that matplotlib's default font has no glyph for."""
    return frozenset(ord(c) for c in text if not c.isspace()) - _charmap(_default_font())


def find_font_for(text: str) -> str | None:
    """A font file with glyphs for every character of ``text`` that matplotlib's default
    font (DejaVu Sans) lacks; None if no installed font has them all (or none is needed).

    Looks at matplotlib's font list (preferring ``CJK_FAMILIES``), the IPAexGothic that
    ``japanize-matplotlib`` ships, and fontconfig's ``fc-list :lang=ja`` (and zh, ko), which
    also sees fonts installed after matplotlib built its font cache. Never returns a
    placeholder font such as the Last Resort font bundled with matplotlib. On Debian/Ubuntu
    ``apt-get install fonts-noto-cjk`` (or ``fonts-ipaexfont-gothic``) provides one.
    """
    needed = _needed(text)
    if not needed:
        return None
    path = _font_covering(needed)
    return path if path is not None and needed <= _charmap(path) else None


class _Glyphs:
    """Which font draws which text: the default (DejaVu Sans), else ``font`` (e.g. a CJK one).

    ``font``: "auto" (the installed font with the most of the glyphs the default lacks), a
    font file, a family name, or None (the default font only). Records in ``missing`` every
    character it had to write as a code point.
    """

    def __init__(self, text: str, font: str | None) -> None:
        self.default = _default_font()
        if font == "auto":
            needed = _needed(text)
            font = _font_covering(needed) if needed else None
        elif font is not None and not os.path.isfile(font):
            from matplotlib import font_manager

            font = font_manager.findfont(font, fallback_to_default=False)
        self.font = font
        self.fonts = [self.default] + ([font] if font else [])
        self.missing: dict[str, None] = {}  # an ordered set

    def label(self, text: str, size: float) -> tuple[str, Any]:
        """``text`` and the FontProperties to draw it: the first font with every glyph, else
        the one with the most, the other characters written as U+XXXX."""
        from matplotlib.font_manager import FontProperties

        def drawable(path: str) -> list[bool]:
            return [c.isspace() or ord(c) in _charmap(path) for c in text]

        best = max(self.fonts, key=lambda path: sum(drawable(path)))  # first of the best
        code = "U+{:04X}" if len(text) == 1 else "<U+{:04X}>"
        flags = drawable(best)
        self.missing.update((c, None) for c, ok in zip(text, flags) if not ok)
        shown = "".join(c if ok else code.format(ord(c)) for c, ok in zip(text, flags))
        if best == self.default:
            return shown, FontProperties(size=size)
        return shown, FontProperties(fname=best, size=size)


_VISIBLE = {" ": "\u2423", "\n": "\\n", "\t": "\\t", "\r": "\\r"}


class HeatmapResult(NamedTuple):
    """What ``plot_gate_heatmap`` drew: the PNG, the font used for characters DejaVu Sans
    lacks (None if none was needed or none was found), and the characters it found no font
    for, which are labelled by code point (U+XXXX) instead."""

    path: Path
    font: str | None
    missing: str


# -- plots ---------------------------------------------------------------------------------------


def _new_figure(width: float, height: float) -> Any:
    """A figure bound to the Agg canvas, independent of pyplot and of the global backend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: PathLike, dpi: int = 120) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=dpi)
    return out


def _positive(values: Array) -> Array:
    """Zeros (and anything not positive) become NaN: gaps on a log scale, not warnings."""
    return np.where(values > 0, values, np.nan)


def _draw_flows(ax: Any, flows: Mapping[str, GradientFlow], normalize: bool) -> None:
    colors = [f"C{n % 10}" for n in range(len(flows))]
    for color, (label, flow) in zip(colors, flows.items()):
        series = [("dh", flow.dh_norm, "-")]
        if flow.dc_norm is not None:
            series.append(("dc", flow.dc_norm, "--"))
        for kind, norm, style in series:
            y = np.asarray(norm, dtype=np.float64)
            if normalize and y[flow.loss_step] > 0:
                y = y / y[flow.loss_step]
            y = _positive(y)
            if np.isnan(y).all():
                continue
            symbol = r"\|\partial L/\partial h_t\|" if kind == "dh" else \
                r"\|\partial L/\partial c_t\|"
            ax.plot(np.arange(y.size), y, style, color=color, lw=1.6,
                    label=f"{label}: ${symbol}$")
    ax.set_yscale("log")
    ax.set_xlabel("time step t")
    ax.grid(True, which="major", alpha=0.3)


def plot_gradient_flow(flows: Mapping[str, GradientFlow], path: PathLike, *,
                       title: str = "Gradient flow back through time",
                       normalize: bool = False) -> Path:
    """One line per model: ||dL/dh_t|| (solid) and, for an LSTM, ||dL/dc_t|| (dashed), log y.

    ``flows`` maps a label (e.g. "RNN", "LSTM") to its ``GradientFlow``; ``normalize`` divides
    each curve by its value at the loss step. Steps where a norm is exactly 0 are gaps.
    Writes a PNG and returns its path.
    """
    if not flows:
        raise ValueError("flows is empty: give at least one {label: GradientFlow}")
    fig = _new_figure(8.0, 4.8)
    ax = fig.add_subplot()
    _draw_flows(ax, flows, normalize)
    ax.set_ylabel("gradient norm" + (" / value at the loss step" if normalize else ""))
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_gradient_flow_comparison(
    flows: Mapping[str, tuple[GradientFlow, GradientFlow]], path: PathLike, *,
    labels: tuple[str, str] = ("at initialisation", "after training"),
    title: str = "Gradient flow back through time", normalize: bool = False,
) -> Path:
    """Two panels sharing the y axis: each model's flow before (left) and after (right).

    ``flows`` maps a label to a pair ``(flow_at_init, flow_after_training)``.
    """
    if not flows:
        raise ValueError("flows is empty: give at least one {label: (before, after)}")
    for label, pair in flows.items():
        if len(pair) != 2:
            raise ValueError(f"flows[{label!r}] must be a pair (before, after), got {len(pair)}")
    fig = _new_figure(12.0, 4.8)
    axes = fig.subplots(1, 2, sharey=True)
    for n, (ax, panel) in enumerate(zip(axes, labels)):
        _draw_flows(ax, {label: pair[n] for label, pair in flows.items()}, normalize)
        ax.set_title(panel)
    axes[0].set_ylabel("gradient norm" + (" / value at the loss step" if normalize else ""))
    axes[1].legend(fontsize=8)
    fig.suptitle(title)
    return _save(fig, path)


def plot_saturation(stats: Mapping[str, Mapping[str, GateStatistics]], path: PathLike, *,
                    title: str = "Gate saturation per unit") -> Path:
    """Karpathy et al. (2015)'s scatter: one panel per gate, one point per unit, at (fraction
    of steps left-saturated, fraction right-saturated); colour = layer and direction.

    ``stats`` is what ``gate_statistics`` returns. Points lie under the line x + y = 1.
    """
    gates: list[str] = []
    for per_gate in stats.values():
        gates.extend(g for g in per_gate if g not in gates)
    if not gates:
        raise ValueError("stats holds no gate: pass what gate_statistics returns")
    fig = _new_figure(3.6 * len(gates) + 0.6, 4.0)
    axes = np.atleast_1d(fig.subplots(1, len(gates), sharex=True, sharey=True))
    for ax, gate in zip(axes, gates):
        ax.plot([0, 1], [1, 0], color="0.7", lw=0.8, ls="--")
        for n, (stream, per_gate) in enumerate(stats.items()):
            if gate in per_gate:
                s = per_gate[gate]
                ax.scatter(s.left_saturated, s.right_saturated, s=18, alpha=0.7,
                           color=f"C{n % 10}", edgecolors="none", label=stream)
        some = next(per_gate[gate] for per_gate in stats.values() if gate in per_gate)
        ax.set_title(f"gate {gate}")
        ax.set_xlabel(f"fraction left-saturated (< {some.low:g})")
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.set_aspect("equal")
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel(f"fraction right-saturated (> {some.high:g})")
    axes[-1].legend(fontsize=8, loc="upper right")
    fig.suptitle(title)
    return _save(fig, path)


def plot_gate_heatmap(text: str, values: Any, path: PathLike, *, title: str = "",
                      units: Sequence[int] | None = None, font: str | None = "auto",
                      vmin: float | None = 0.0, vmax: float | None = 1.0,
                      cmap: str = "viridis") -> HeatmapResult:
    """A heatmap of gate values per character, the characters along the x axis.

    Args:
        text: the characters, one per step.
        values: (len(text), H) one column per unit, or (len(text),) a single row.
        path: the PNG to write.
        title: drawn above; may contain any characters.
        units: which units (columns of ``values``) to show, in order; all by default.
        font: "auto" finds a font for the characters DejaVu Sans lacks (``find_font_for``);
            a font file or family name uses that one; None uses none.
        vmin, vmax: the colour scale (0..1 suits gates; None scales to the data).

    Characters no available font can draw are labelled U+XXXX (code point) instead, and a note
    under the plot says so: no "Glyph missing" warning is raised, and none is suppressed.
    Spaces and newlines are shown as ␣ and \\n. Returns a ``HeatmapResult``.
    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim == 1:
        v = v[:, None]
    if v.ndim != 2 or v.shape[0] != len(text):
        raise ValueError(
            f"values must be (len(text), H) or (len(text),) = ({len(text)}, ...), "
            f"got shape {np.shape(values)}"
        )
    if len(text) == 0:
        raise ValueError("text is empty")
    chosen = list(range(v.shape[1])) if units is None else [int(u) for u in units]
    if not chosen or min(chosen) < 0 or max(chosen) >= v.shape[1]:
        raise ValueError(f"units must be indices in [0, {v.shape[1]}), got {units!r}")
    glyphs = _Glyphs(text + title, font)

    T, n_units = len(text), len(chosen)
    fig = _new_figure(max(4.0, 0.32 * T + 1.8), max(2.0, 0.22 * n_units + 1.6))
    ax = fig.add_subplot()
    image = ax.imshow(v[:, chosen].T, aspect="auto", cmap=cmap, vmin=vmin, vmax=vmax,
                      interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.04, pad=0.01)
    ax.set_xticks(np.arange(T))
    ticks = [glyphs.label(_VISIBLE.get(c, c), size=11) for c in text]
    ax.set_xticklabels([shown for shown, _ in ticks])
    for tick, (shown, properties) in zip(ax.get_xticklabels(), ticks):
        tick.set_fontproperties(properties)
        if shown.startswith("U+") and len(shown) > 2:
            tick.set_rotation(90)
            tick.set_fontsize(7)
    if n_units == 1 and units is None and np.ndim(values) == 1:
        ax.set_yticks([])
    else:
        step = max(1, n_units // 24)
        ax.set_yticks(np.arange(0, n_units, step))
        ax.set_yticklabels([str(chosen[n]) for n in range(0, n_units, step)])
        ax.set_ylabel("unit")
    if title:
        shown, properties = glyphs.label(title, size=12)
        ax.set_title(shown, fontproperties=properties)
    missing = "".join(glyphs.missing)
    if missing:
        fig.supxlabel(f"no installed font has glyphs for {len(missing)} character(s): they "
                      "are labelled by code point (install e.g. fonts-noto-cjk)",
                      fontsize=7, color="0.35")
    return HeatmapResult(_save(fig, path), glyphs.font, missing)


__all__ = [
    "CJK_FAMILIES",
    "SATURATION_HIGH",
    "SATURATION_LOW",
    "GateStatistics",
    "GradientFlow",
    "HeatmapResult",
    "find_font_for",
    "forget_gate_per_char",
    "gate_per_step",
    "gate_statistics",
    "gradient_flow",
    "gradient_flows",
    "plot_gate_heatmap",
    "plot_gradient_flow",
    "plot_gradient_flow_comparison",
    "plot_saturation",
    "saturation_statistics",
    "sigmoid_gates",
]
