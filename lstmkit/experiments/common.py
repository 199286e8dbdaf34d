"""What every experiment shares: its results folder, tables, seeds, progress bar and plots.

An experiment is a function ``run(mode=..., seeds=..., seed=..., out=..., force=..., **overrides)``
in its own module. It trains what its paper trained, writes a results folder and returns an
:class:`ExperimentResult`::

    results/NAME/                  (or --out DIR; a timestamped subfolder if that one is used)
        results.json               settings, seeds, every number measured, the paper's numbers
        results.md                 the table: our numbers next to the paper's, and notes
        *.png                      learning curves, gradient norms

Settings live in one frozen dataclass per experiment with three presets: ``full`` (a few
minutes on two cores), ``quick`` (under a minute) and ``tiny`` (seconds, for the tests). Any
field can be overridden by name (``--set budget=200000`` on the command line).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from tqdm.auto import tqdm

from lstmkit.activations import sigmoid

Array = np.ndarray
PathLike = str | os.PathLike
C = TypeVar("C")

MODES = ("tiny", "quick", "full")
RESULTS_ROOT = Path("results")


# -- settings -------------------------------------------------------------------------------------


def pick_config(presets: Mapping[str, C], mode: str, overrides: Mapping[str, Any]) -> C:
    """The preset for ``mode`` ("tiny", "quick", "full") with ``overrides`` applied by name.

    String values (from the command line) are converted to the type of the preset's field.
    """
    if mode not in presets:
        raise ValueError(f"mode must be one of {sorted(presets)}, got {mode!r}")
    config = presets[mode]
    fields = {f.name: f for f in dataclasses.fields(config)}  # type: ignore[arg-type]
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise ValueError(
            f"unknown setting(s) {unknown} for this experiment; its settings are {sorted(fields)}"
        )
    converted = {
        name: _convert(name, value, getattr(config, name)) for name, value in overrides.items()
    }
    return dataclasses.replace(config, **converted)  # type: ignore[type-var]


def _convert(name: str, value: Any, current: Any) -> Any:
    if not isinstance(value, str) or isinstance(current, str):
        return value
    try:
        if isinstance(current, bool):
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if isinstance(current, int):
            return int(float(value)) if "e" in value.lower() else int(value)
        if isinstance(current, float):
            return float(value)
        if isinstance(current, tuple):
            kind = type(current[0]) if current else float
            return tuple(kind(v) for v in value.split(","))
    except ValueError as error:
        raise ValueError(
            f"setting {name}={value!r}: expected a {type(current).__name__} like {current!r}"
        ) from error
    return value


def seed_list(seed: int, n: int) -> list[int]:
    """The seeds of ``n`` runs: ``seed, seed + 1, ..., seed + n - 1``."""
    if n < 1:
        raise ValueError(f"the number of seeds must be >= 1, got {n}")
    return [int(seed) + k for k in range(n)]


# -- results folder -------------------------------------------------------------------------------


def prepare_out_dir(name: str, out: PathLike | None = None, force: bool = False) -> Path:
    """The folder an experiment writes to, created; never one whose results would be replaced.

    ``out`` defaults to ``results/NAME/``. If that folder already holds a ``results.json``, a
    new subfolder named by the date and time is used instead (``results/NAME/20250101-120000``),
    unless ``force``, which writes over the old files.
    """
    base = Path(out) if out is not None else RESULTS_ROOT / name
    if base.exists() and not base.is_dir():
        raise FileExistsError(f"--out {base} exists and is not a folder")
    if force or not (base / "results.json").exists():
        base.mkdir(parents=True, exist_ok=True)
        return base
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    candidate = base / stamp
    n = 1
    while candidate.exists():
        candidate = base / f"{stamp}-{n}"
        n += 1
    candidate.mkdir(parents=True)
    return candidate


@dataclass(frozen=True)
class Measures:
    """What a sweep reads from an experiment's runs (the dicts its ``run_seed`` returns).

    Attributes:
        group: the keys whose values name a group of runs compared across seeds (a model, a
            variant), e.g. ``("label",)``.
        metrics: the scalar numbers to summarise (mean ± std, box plots), the headline first.
        curve: the keys of a run's ``curve`` points to plot: (x, y), e.g. ("update", "mse").
    """

    group: tuple[str, ...]
    metrics: tuple[str, ...]
    curve: tuple[str, str]


@dataclass
class ExperimentResult:
    """What an experiment returns and writes.

    Attributes:
        name: the experiment's command name ("adding", "clipping", ...).
        out_dir: the folder holding results.json, results.md and the PNGs.
        table: the main results table, Markdown.
        data: everything written to results.json.
        plots: the PNG files written.
        markdown: the whole of results.md.
    """

    name: str
    out_dir: Path
    table: str
    data: dict[str, Any]
    plots: list[Path] = field(default_factory=list)
    markdown: str = ""


def to_jsonable(value: Any) -> Any:
    """Numbers, arrays, dataclasses, paths and tuples as plain JSON values (NaN/inf as strings)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_jsonable(dataclasses.asdict(value))
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if np.isfinite(value) else str(value)
    if isinstance(value, Path):
        return str(value)
    return value


def from_jsonable(value: Any) -> Any:
    """``to_jsonable``'s non-finite numbers back as floats ("nan", "inf", "-inf" -> float),
    in nested dicts and lists; everything else as it is."""
    if isinstance(value, Mapping):
        return {k: from_jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_jsonable(v) for v in value]
    if isinstance(value, str) and value in ("nan", "inf", "-inf"):
        return float(value)
    return value


def write_results(
    name: str,
    out_dir: Path,
    title: str,
    table: str,
    data: dict[str, Any],
    notes: Sequence[str] = (),
    plots: Sequence[Path] = (),
    extra_tables: Sequence[tuple[str, str]] = (),
) -> ExperimentResult:
    """Write ``results.json`` and ``results.md`` into ``out_dir`` and return the result.

    ``data`` should hold at least ``config``, ``seeds`` and the measured numbers; the time of
    writing and the names of the plots are added.
    """
    data = {"experiment": name, "title": title, **data,
            "written": datetime.now().isoformat(timespec="seconds"),
            "plots": [p.name for p in plots]}
    (out_dir / "results.json").write_text(json.dumps(to_jsonable(data), indent=2) + "\n")
    parts = [f"# {title}", "", table, ""]
    for heading, extra in extra_tables:
        parts += [f"## {heading}", "", extra, ""]
    if notes:
        parts += ["## Notes", ""] + [f"- {note}" for note in notes] + [""]
    if plots:
        parts += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots] + [""]
    config = data.get("config")
    if config is not None:
        parts += ["## Settings", "", "```", json.dumps(to_jsonable(config), indent=1), "```", ""]
    markdown = "\n".join(parts)
    (out_dir / "results.md").write_text(markdown)
    return ExperimentResult(name, out_dir, table, data, list(plots), markdown)


# -- tables and numbers --------------------------------------------------------------------------


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub Markdown table; cells are written with ``str``."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def pct(value: float | None, digits: int = 1) -> str:
    """0.975 -> '97.5%'; None -> '-'."""
    if value is None or not np.isfinite(value):
        return "-"
    return f"{100.0 * value:.{digits}f}%"


def mean_std(values: Sequence[float], fmt: str = ".3f") -> str:
    """'mean ± std' of the finite values (sample std; '-' when there are none)."""
    finite = [float(v) for v in values if v is not None and np.isfinite(v)]
    if not finite:
        return "-"
    if len(finite) == 1:
        return f"{finite[0]:{fmt}}"
    return f"{np.mean(finite):{fmt}} ± {np.std(finite, ddof=1):{fmt}}"


def sci(value: float | None, digits: int = 2) -> str:
    """A number in scientific notation, '-' for None."""
    if value is None:
        return "-"
    return f"{value:.{digits}e}"


# -- progress and time ----------------------------------------------------------------------------


def progress_bar(total: int, desc: str, enabled: bool = True) -> tqdm:
    """A tqdm bar on stderr (disabled in tests and when ``enabled`` is False)."""
    return tqdm(total=total, desc=desc, disable=not enabled, leave=False, dynamic_ncols=True,
                mininterval=0.5)


@contextmanager
def stopwatch() -> Iterator[dict[str, float]]:
    """``with stopwatch() as t: ...`` then ``t["seconds"]`` is the wall time taken."""
    timing = {"seconds": 0.0}
    start = time.perf_counter()
    try:
        yield timing
    finally:
        timing["seconds"] = time.perf_counter() - start


# -- losses the experiments need that lstmkit.nn does not have ---------------------------------


def bce_with_logits(logits: Array, targets: Array,
                    mask: Array | None = None) -> tuple[float, Array]:
    """Binary cross-entropy of sigmoid(logits) against 0/1 targets, and d loss / d logits.

    For multi-hot targets (the legal next symbols of a grammar): every output unit is its own
    yes/no prediction. The mean is over the counted elements; ``mask`` (broadcastable to the
    logits, e.g. (T, B, 1)) leaves the others out.
    """
    z = logits.astype(np.float64)
    y = targets.astype(np.float64)
    losses = np.logaddexp(0.0, z) - y * z  # softplus(z) - y z, stable for any z
    grad = sigmoid(z) - y
    if mask is not None:
        weight = np.broadcast_to(mask, z.shape).astype(np.float64)
        count = max(weight.sum(), 1.0)
        loss = float((losses * weight).sum() / count)
        grad = grad * weight / count
    else:
        loss = float(losses.mean())
        grad = grad / z.size
    return loss, grad.astype(logits.dtype)


def global_norm(grads: Mapping[str, Array]) -> float:
    """The norm of all gradients taken together (float64, inf/nan when they are)."""
    with np.errstate(over="ignore", invalid="ignore"):
        return float(np.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2))
                                 for g in grads.values())))


def all_finite(arrays: Mapping[str, Array]) -> bool:
    """True when no array holds a NaN or an infinity."""
    return all(bool(np.isfinite(a).all()) for a in arrays.values())


# -- plots ---------------------------------------------------------------------------------------


def new_figure(width: float = 8.0, height: float = 4.8, ncols: int = 1, nrows: int = 1,
               **subplot_kw: Any) -> tuple[Any, Any]:
    """A matplotlib Figure on the Agg canvas (no pyplot, no display) and its axes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False, **subplot_kw)
    return fig, axes


def save_figure(fig: Any, path: Path, dpi: int = 110) -> Path:
    """Write ``fig`` as PNG and return its path."""
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    return path


def plot_curves(
    path: Path,
    panels: Sequence[Mapping[str, tuple[Sequence[float], Sequence[float]]]],
    titles: Sequence[str],
    xlabel: str,
    ylabel: str | Sequence[str],
    logy: bool | Sequence[bool] = False,
    hlines: Sequence[Mapping[str, float]] | None = None,
    suptitle: str = "",
) -> Path:
    """One panel per mapping ``{label: (x, y)}``, side by side; optional labelled hlines.

    Lines whose label repeats one already drawn in the panel share its colour and have no
    second legend entry (several seeds of one model).
    """
    n = len(panels)
    fig, axes = new_figure(6.0 * n, 4.4, ncols=n)
    ylabels = [ylabel] * n if isinstance(ylabel, str) else list(ylabel)
    logys = [logy] * n if isinstance(logy, bool) else list(logy)
    for k, (ax, series) in enumerate(zip(axes[0], panels)):
        colours: dict[str, Any] = {}
        for label, (x, y) in series.items():
            base = label.split(" #")[0]
            y = np.asarray(y, dtype=np.float64)
            kwargs: dict[str, Any] = {"lw": 1.2, "alpha": 0.85}
            if base in colours:
                ax.plot(x, y, color=colours[base], **kwargs)
            else:
                (line,) = ax.plot(x, y, label=base, **kwargs)
                colours[base] = line.get_color()
        if hlines and k < len(hlines):
            for label, value in hlines[k].items():
                ax.axhline(value, color="gray", ls="--", lw=0.9)
                ax.annotate(label, (0.01, value), xycoords=("axes fraction", "data"),
                            fontsize=8, color="gray", va="bottom")
        if logys[k]:
            ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabels[k])
        ax.set_title(titles[k] if k < len(titles) else "")
        ax.grid(True, alpha=0.3)
        if colours:
            ax.legend(fontsize=8)
    if suptitle:
        fig.suptitle(suptitle)
    return save_figure(fig, path)


def run_parts(module: Any, mode: str = "full", seeds: int | None = None, seed: int = 0,
              out: PathLike | None = None, force: bool = False, show_progress: bool = True,
              **overrides: Any) -> Any:
    """An experiment module's whole run from its parts (see ``lstmkit.experiments``): the
    settings (``configure``), every run of each seed (``run_seed``), then the tables, plots and
    results files (``report``); returns its ``ExperimentResult``."""
    config = module.configure(mode, overrides)
    run_seeds = seed_list(seed, seeds if seeds is not None else config.seeds)
    out_dir = prepare_out_dir(module.NAME, out, force)
    with progress_bar(module.seed_work(config) * len(run_seeds), module.NAME,
                      show_progress) as bar:
        runs = [r for k, s in enumerate(run_seeds) for r in module.run_seed(config, s, k, bar)]
    return module.report(config, mode, run_seeds, runs, out_dir)
