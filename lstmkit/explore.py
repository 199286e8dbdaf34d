"""A page to look inside a character model: one self-contained HTML file, no server, no network.

    lstmkit explore runs/neko --text "吾輩は猫である。名前はまだ無い。" --out neko.html

The page shows the text with each character coloured by one unit's cell state ``c``, output
``h`` or gate ``i``, ``f``, ``g``, ``o`` at that step (the value after reading the character);
hovering or clicking a character shows all six for the chosen unit. Beside it, a list ranks the
units by how well they track simple features of the text -- inside quotes, inside brackets, the
position in the line, a punctuation mark just read -- measured as Pearson's correlation over the
text, as Karpathy, Johnson & Fei-Fei (2015, "Visualizing and Understanding Recurrent Networks")
looked for interpretable cells; clicking a row selects that unit.

Everything the page needs is inside it: CSS, a short script, and the values as JSON in a
``<script type="application/json">`` element in which ``<``, ``>`` and ``&`` are written as
JSON escapes, so no text can close the element. The characters of the text are written as
HTML-escaped text, so a text that holds markup shows as text. Values are stored rounded to
:data:`DECIMALS` places, the precision the page prints.
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from lstmkit.grad_mode import no_grad
from lstmkit.models import CharLM
from lstmkit.text import Vocabulary

__all__ = [
    "DECIMALS",
    "FEATURES",
    "MAX_VALUES",
    "QUANTITIES",
    "correlations",
    "explore_page",
    "rank_units",
    "text_features",
    "trace",
    "write_explore_page",
]

#: What each step holds for each unit, in the page's order.
QUANTITIES: dict[str, str] = {
    "c": "cell state c",
    "h": "output h = o·tanh(c)",
    "i": "input gate i",
    "f": "forget gate f",
    "g": "candidate g",
    "o": "output gate o",
}
#: The features of the text that units are ranked by.
FEATURES: dict[str, str] = {
    "in_quotes": "inside quotes 「」『』“”\"\"",
    "in_brackets": "inside brackets （）()［］[]【】〔〕",
    "line_position": "position in the line",
    "after_punctuation": "a punctuation mark just read",
}
#: Decimal places of the values stored in, and printed by, the page.
DECIMALS = 4
#: The most values (characters x layers x units x 6) a page may hold: about 50 MB of HTML.
MAX_VALUES = 10_000_000

_QUOTES = {"「": "」", "『": "』", "“": "”"}
_BRACKETS = {"（": "）", "(": ")", "［": "］", "[": "]", "【": "】", "〔": "〕"}
_PUNCTUATION = frozenset("。、，．！？,.!?;:；：…")
# Options of the LSTM under which h = o * tanh(c) holds (and the gates mean what they say).
_PLAIN_OPTIONS = frozenset({
    "vocab_size", "hidden_size", "num_layers", "cell", "embedding_dim", "dropout",
    "tie_weights", "dtype", "peepholes", "forget_bias", "forget_gate", "input_gate",
    "output_gate", "coupled_input_forget", "fast",
})


def trace(model: CharLM, ids: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
    """Every unit's c, h, i, f, g, o at every step of one sequence, layer by layer.

    Args:
        model: an LSTM character model (run in eval mode, from a zero state).
        ids: (T,) character ids.

    Returns:
        ``{"l0": {"c": (T, H), "h": (T, H), "i": ..., "f": ..., "g": ..., "o": ...}, "l1": ...}``,
        float64; row t is the value after reading character t.
    """
    config = model.config()
    if config["cell"] != "lstm":
        raise ValueError(f"the model is a {config['cell'].upper()}; explore needs an LSTM")
    unusual = sorted(set(config) - _PLAIN_OPTIONS)
    if unusual:
        raise ValueError(
            f"the model's LSTM has the options {', '.join(unusual)}; explore shows h as "
            "o * tanh(c), which holds only for the plain LSTM"
        )
    ids = np.asarray(ids, dtype=np.int64)
    was_training = model.training
    model.eval()
    try:
        with no_grad():
            _, _, gates = model.forward(ids[:, None], return_gates=True)
    finally:
        model.train(was_training)
    result = {}
    for layer in range(config["num_layers"]):
        per_step = {name: gates[f"l{layer}"][name][:, 0].astype(np.float64) for name in "cifgo"}
        per_step["h"] = per_step["o"] * np.tanh(per_step["c"])
        result[f"l{layer}"] = {name: per_step[name] for name in QUANTITIES}
    return result


def _inside(text: str, pairs: Mapping[str, str], toggles: str = "") -> np.ndarray:
    """1 where the state after reading the character is inside an open pair (nesting counted)."""
    closing = {close: open_ for open_, close in pairs.items()}
    depth, open_toggles = 0, set()
    inside = np.zeros(len(text))
    for t, char in enumerate(text):
        if char in pairs:
            depth += 1
        elif char in closing:
            depth = max(depth - 1, 0)
        elif char in toggles:
            open_toggles ^= {char}
        inside[t] = depth > 0 or bool(open_toggles)
    return inside


def text_features(text: str) -> dict[str, np.ndarray]:
    """The :data:`FEATURES` of ``text`` at each character: ``name -> (T,)`` float64.

    Each describes the moment after the character is read: ``in_quotes`` and ``in_brackets``
    are 1 from an opening mark up to (not including) its closing mark; ``line_position``
    counts the characters since the last newline (0 for the first of a line, and for the
    newline itself); ``after_punctuation`` is 1 at a punctuation mark.
    """
    position = np.zeros(len(text))
    column = 0
    for t, char in enumerate(text):
        position[t] = column
        column = 0 if char == "\n" else column + 1
    return {
        "in_quotes": _inside(text, _QUOTES, toggles='"'),
        "in_brackets": _inside(text, _BRACKETS),
        "line_position": position,
        "after_punctuation": np.array([char in _PUNCTUATION for char in text], dtype=np.float64),
    }


def correlations(values: np.ndarray, features: Mapping[str, np.ndarray]) -> np.ndarray:
    """Pearson's r between every unit and every feature over the steps: (H, F) float64.

    Args:
        values: (T, H) one quantity of every unit at every step.
        features: ``name -> (T,)``, in the order of the result's columns.

    A unit or feature that does not vary over the text has no correlation: its r is 0.
    """
    x = np.asarray(values, dtype=np.float64)
    f = np.stack([np.asarray(v, dtype=np.float64) for v in features.values()], axis=1)  # (T, F)
    x_norm = np.sqrt(((x - x.mean(axis=0)) ** 2).sum(axis=0))  # (H,)
    f_norm = np.sqrt(((f - f.mean(axis=0)) ** 2).sum(axis=0))  # (F,)
    # A constant's mean can differ from it in the last bit: flat means "varies less than that".
    x_flat = x_norm <= 1e-12 * np.sqrt(len(x)) * np.abs(x).max(axis=0, initial=0.0)
    f_flat = f_norm <= 1e-12 * np.sqrt(len(f)) * np.abs(f).max(axis=0, initial=0.0)
    x = (x - x.mean(axis=0)) / np.where(x_flat, 1.0, x_norm)
    f = (f - f.mean(axis=0)) / np.where(f_flat, 1.0, f_norm)
    r = x.T @ f  # (H, F)
    r[x_flat, :] = 0.0
    r[:, f_flat] = 0.0
    return np.clip(r, -1.0, 1.0)


def rank_units(
    values: np.ndarray, features: Mapping[str, np.ndarray], top: int | None = None
) -> list[dict[str, Any]]:
    """Units ranked by how well they track a feature: the largest |r| first.

    Returns:
        ``[{"unit": u, "feature": name, "r": r}, ...]``, each unit once with its best feature
        (ties: the earlier feature, then the lower unit), at most ``top`` entries.
    """
    r = correlations(values, features)  # (H, F)
    names = list(features)
    best = np.argmax(np.abs(r), axis=1)  # (H,)
    strength = np.abs(r[np.arange(r.shape[0]), best])
    order = sorted(range(r.shape[0]), key=lambda unit: (-strength[unit], unit))
    return [
        {"unit": unit, "feature": names[best[unit]], "r": float(r[unit, best[unit]])}
        for unit in order[:top]
    ]


def _json_for_script(value: Any) -> str:
    """JSON that can sit inside a ``<script>`` element: no ``<``, ``>`` or ``&`` appear."""
    text = json.dumps(value, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _character_html(t: int, char: str, unknown: bool) -> str:
    kind = "ch unk" if unknown else "ch"
    if char == "\n":
        return f'<span class="{kind} nl" data-t="{t}">↵</span><br>'
    if char == "\t":
        return f'<span class="{kind}" data-t="{t}">→</span>'
    return f'<span class="{kind}" data-t="{t}">{html.escape(char, quote=True)}</span>'


def explore_page(
    model: CharLM,
    vocab: Vocabulary,
    text: str,
    *,
    title: str = "",
    layer: int = 0,
    quantity: str = "c",
    unit: int | None = None,
    top: int = 25,
) -> str:
    """The HTML of the explore page for ``text`` (see the module docstring).

    Args:
        model, vocab: an LSTM character model and its vocabulary.
        text: the characters to show. Those outside the vocabulary are read as its unknown
            symbol and underlined (a vocabulary without one refuses them).
        title: a description of the model for the page's heading.
        layer, quantity, unit: what the page shows first (``unit`` None: the unit that tracks
            a feature best in that layer and quantity).
        top: how many units each ranked list shows.

    Raises:
        UnknownCharactersError: ``text`` holds characters outside a vocabulary that has no
            unknown symbol.
        ValueError: an empty text, one too long for a page (see :data:`MAX_VALUES`), a model
            other than a plain LSTM, or a selection out of range.
    """
    if not text:
        raise ValueError("the text is empty; give the characters to look at")
    config = model.config()
    per_character = config["num_layers"] * config["hidden_size"] * len(QUANTITIES)
    if len(text) * per_character > MAX_VALUES:
        raise ValueError(
            f"the text has {len(text):,} characters; a page holds every value of every unit, "
            f"{per_character:,} per character for this model, so it can show at most "
            f"{MAX_VALUES // per_character:,} characters: give a shorter text"
        )
    if quantity not in QUANTITIES:
        raise ValueError(f"quantity is {quantity!r}; expected one of {', '.join(QUANTITIES)}")
    ids = vocab.encode(text, allow_unknown=True)
    unknown = ids == vocab.unknown_id if vocab.unknown_id is not None else np.zeros(len(ids), bool)
    steps = trace(model, ids)
    layers = list(steps)
    hidden = config["hidden_size"]
    if not 0 <= layer < len(layers):
        raise ValueError(f"layer {layer}: the model has layers 0..{len(layers) - 1}")
    if unit is not None and not 0 <= unit < hidden:
        raise ValueError(f"unit {unit}: the model's layers have units 0..{hidden - 1}")
    features = text_features(text)
    scale = 10**DECIMALS
    values: dict[str, dict[str, list[int]]] = {}
    ranking: dict[str, dict[str, list[list[Any]]]] = {}
    for name, per_quantity in steps.items():
        # Integers of 10^-DECIMALS: the page divides by `scale` and prints DECIMALS places.
        values[name] = {q: np.rint(v * scale).astype(np.int64).ravel().tolist()
                        for q, v in per_quantity.items()}
        ranking[name] = {
            q: [[e["unit"], e["feature"], round(e["r"], 3)] for e in rank_units(v, features, top)]
            for q, v in per_quantity.items()
        }
    if unit is None:
        unit = ranking[layers[layer]][quantity][0][0]
    data = {
        "steps": len(text), "hidden": hidden, "layers": layers, "scale": scale,
        "decimals": DECIMALS, "quantities": QUANTITIES, "features": FEATURES,
        "values": values, "ranking": ranking,
        "start": {"layer": layers[layer], "quantity": quantity, "unit": int(unit)},
    }
    characters = "".join(_character_html(t, char, bool(unknown[t]))
                         for t, char in enumerate(text))
    if unknown.any():
        distinct = vocab.unknown_characters(text)
        note = (f"{int(unknown.sum())} characters of the text ({len(distinct)} distinct) are not "
                "in the model's vocabulary: it reads them as its unknown symbol (underlined).")
    else:
        note = ""
    layer_options = "".join(
        f'<option value="{name}"{" selected" if name == layers[layer] else ""}>'
        f"{i}</option>" for i, name in enumerate(layers)
    )
    quantity_options = "".join(
        f'<option value="{q}"{" selected" if q == quantity else ""}>'
        f"{html.escape(label)}</option>" for q, label in QUANTITIES.items()
    )
    detail_rows = "".join(  # in the order of the equations: i, f, g, o, then c and h
        f'<tr><th>{q}</th><td class="label">{html.escape(QUANTITIES[q])}</td>'
        f'<td class="value" id="value-{q}">–</td></tr>' for q in "ifgoch"
    )
    # Japanese (or Chinese) text gets a CJK font; the page itself is in English.
    cjk = any("\u3040" <= char <= "\u30ff" or "\u4e00" <= char <= "\u9fff" for char in text)
    heading = html.escape(title or "a character model")
    return _PAGE.format(
        heading=heading, layer_options=layer_options, quantity_options=quantity_options,
        max_unit=hidden - 1, unit=int(unit), characters=characters, detail_rows=detail_rows,
        note=html.escape(note), text_lang=' lang="ja"' if cjk else "",
        data=_json_for_script(data), style=_STYLE, script=_SCRIPT,
    )


def write_explore_page(
    path: str | os.PathLike[str],
    model: CharLM,
    vocab: Vocabulary,
    text: str,
    *,
    force: bool = False,
    **options: Any,
) -> Path:
    """Write :func:`explore_page` to ``path`` (UTF-8); an existing file needs ``force``.

    Returns:
        The path written.
    """
    path = Path(path)
    if path.exists() and not force:
        raise FileExistsError(f"{path} exists; pass force=True (--force) to overwrite it")
    page = explore_page(model, vocab, text, **options)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(page, encoding="utf-8")
    os.replace(temporary, path)
    return path


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.3em; margin: 0 0 .2em; } h2 { font-size: 1em; margin: .2em 0 .5em; }
#controls { margin: 1em 0; display: flex; gap: 1.5em; flex-wrap: wrap; align-items: center; }
#controls input { width: 5em; }
main { display: flex; gap: 2em; align-items: flex-start; flex-wrap: wrap; }
#text { flex: 1 1 30em; font-size: 1.4em; line-height: 1.9; white-space: pre-wrap;
        word-break: break-all; font-family: "Noto Sans CJK JP", "Noto Sans JP", sans-serif; }
.ch { cursor: pointer; border-radius: 2px; padding: 0 1px; }
.ch.nl { color: #999; }
.ch.unk { text-decoration: underline dotted #b2182b 2px; }
.ch.pinned { outline: 2px solid #000; }
aside { flex: 0 0 24em; }
table { border-collapse: collapse; margin-bottom: 1.5em; }
td, th { padding: .15em .6em; text-align: left; }
td.value, td.r { font-family: ui-monospace, monospace; text-align: right; }
#ranking tbody tr { cursor: pointer; } #ranking tbody tr:hover { background: #eef; }
#ranking tr.current { background: #dde; }
#legend, #note { font-size: .9em; color: #555; }
"""

_SCRIPT = """
"use strict";
const data = JSON.parse(document.getElementById("lstmkit-data").textContent);
const layerSelect = document.getElementById("layer");
const quantitySelect = document.getElementById("quantity");
const unitInput = document.getElementById("unit");
const chars = Array.from(document.querySelectorAll("#text .ch"));
let pinned = null;

function value(layer, q, t, unit) {
  return data.values[layer][q][t * data.hidden + unit] / data.scale;
}
function selectedUnit() {
  const u = Math.round(Number(unitInput.value));
  return Math.min(Math.max(Number.isFinite(u) ? u : 0, 0), data.hidden - 1);
}
function colour(v, q, extent) {
  // Gates in [0, 1]: white to blue; c, g, h: red below 0, blue above, white at 0.
  let s = (q === "i" || q === "f" || q === "o") ? v : v / extent;
  s = Math.max(-1, Math.min(1, s));
  const rgb = s >= 0 ? [33, 102, 172] : [178, 24, 43];
  const a = Math.abs(s);
  const mix = rgb.map(c => Math.round(255 + (c - 255) * a));
  return ["rgb(" + mix.join(",") + ")", a > 0.55 ? "#fff" : "#222"];
}
function paint() {
  const layer = layerSelect.value, q = quantitySelect.value, unit = selectedUnit();
  let extent = 1;
  if (q === "c") {
    extent = 1e-6;
    for (let t = 0; t < data.steps; t++) {
      extent = Math.max(extent, Math.abs(value(layer, q, t, unit)));
    }
  }
  chars.forEach(span => {
    const [bg, fg] = colour(value(layer, q, Number(span.dataset.t), unit), q, extent);
    span.style.background = bg;
    span.style.color = fg;
  });
  const bound = extent.toFixed(data.decimals);
  const range = (q === "i" || q === "f" || q === "o") ? "0 (white) to 1 (blue)"
    : "-" + bound + " (red) to +" + bound + " (blue)";
  document.getElementById("legend").textContent =
    "Colour: " + data.quantities[q] + " of unit " + unit + " in layer " +
    layer.slice(1) + ", " + range + ".";
  rank();
  show(pinned);
}
function show(t) {
  const layer = layerSelect.value, unit = selectedUnit();
  document.getElementById("step").textContent = t === null ? "–" : String(t);
  document.getElementById("char").textContent = t === null ? "" : chars[t].textContent;
  for (const q of Object.keys(data.quantities)) {
    document.getElementById("value-" + q).textContent =
      t === null ? "–" : value(layer, q, t, unit).toFixed(data.decimals);
  }
}
function rank() {
  const body = document.querySelector("#ranking tbody");
  body.replaceChildren();
  const layer = layerSelect.value, q = quantitySelect.value, unit = selectedUnit();
  document.getElementById("ranked-quantity").textContent = data.quantities[q];
  for (const [u, feature, r] of data.ranking[layer][q]) {
    const row = document.createElement("tr");
    if (u === unit) row.className = "current";
    for (const cell of [String(u), data.features[feature], r.toFixed(3)]) {
      const td = document.createElement("td");
      td.textContent = cell;
      row.appendChild(td);
    }
    row.lastChild.className = "r";
    row.addEventListener("click", () => { unitInput.value = u; paint(); });
    body.appendChild(row);
  }
}
chars.forEach(span => {
  const t = Number(span.dataset.t);
  span.addEventListener("mouseenter", () => show(t));
  span.addEventListener("mouseleave", () => show(pinned));
  span.addEventListener("click", () => {
    if (pinned !== null) chars[pinned].classList.remove("pinned");
    pinned = pinned === t ? null : t;
    if (pinned !== null) span.classList.add("pinned");
    show(pinned === null ? t : pinned);
  });
});
[layerSelect, quantitySelect, unitInput].forEach(el => el.addEventListener("input", paint));
paint();
"""

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>lstmkit explore: {heading}</title>
<style>{style}</style>
</head>
<body>
<h1>lstmkit explore</h1>
<div>{heading}</div>
<div id="controls">
<label>layer <select id="layer">{layer_options}</select></label>
<label>colour by <select id="quantity">{quantity_options}</select></label>
<label>unit <input id="unit" type="number" min="0" max="{max_unit}" value="{unit}"></label>
</div>
<p id="legend"></p>
<p id="note">{note}</p>
<main>
<div id="text"{text_lang}>{characters}</div>
<aside>
<section id="detail">
<h2>step <span id="step">–</span>: <span id="char"></span></h2>
<table>{detail_rows}</table>
</section>
<section id="ranking">
<h2>Units ranked by |r| with a feature of the text (<span id="ranked-quantity"></span>)</h2>
<table><thead><tr><th>unit</th><th>feature</th><th>r</th></tr></thead><tbody></tbody></table>
</section>
</aside>
</main>
<script type="application/json" id="lstmkit-data">{data}</script>
<script>{script}</script>
</body>
</html>
"""
