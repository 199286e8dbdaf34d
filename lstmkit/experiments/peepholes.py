"""Gers, Schraudolph & Schmidhuber (2002): precise timing, with and without peephole connections.

Two timing tasks (``lstmkit.tasks.timing``), each learned by an LSTM with peepholes (the cell
state feeds the input, forget and output gates) and by the same LSTM without, over many seeds:

* ``spike:D``: a stream of trigger spikes; the target spikes exactly D steps after each trigger
  (``spike_delay_stream``). Trained on 16 streams of 60 steps from a zero state with binary
  cross-entropy; **solved** when on a test set of 20 streams of 400 steps (seed 2002) the
  thresholded output (sigmoid > 0.5) equals the target at every single step.
* ``cos:F``: generate 0.5 (1 - cos(2 pi t / F)) from a constant zero input
  (``periodic_cosine``), trained with MSE on 4F steps; **solved** when the absolute error stays
  below 0.1 for 8F steps, twice as long as the training sequence, so that the cell must keep
  time rather than fit one stretch.

Calibration found that in about a minute of training per run neither variant learned D = 10 or
F = 10 with its settings, so there is no pass bar: the table reports solve rates as measured.
The paper found that timing needs peepholes; Greff et al. (2017) found that peepholes make no
difference on their (non-timing) benchmarks.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import lstmkit
from lstmkit.experiments.common import (
    Measures,
    PathLike,
    bce_with_logits,
    markdown_table,
    mean_std,
    pct,
    pick_config,
    plot_curves,
    run_parts,
    stopwatch,
    write_results,
)
from lstmkit.models import SequenceModel
from lstmkit.nn import mse_loss
from lstmkit.optim import Adam
from lstmkit.tasks import periodic_cosine, spike_delay_stream

NAME = "peepholes"
TITLE = "Precise timing with and without peepholes (Gers, Schraudolph & Schmidhuber 2002)"
PAPER = ("Gers et al. 2002: LSTM with peepholes learned the timing tasks (e.g. generating "
         "f_cos with F = 10 and 25, measuring delays); LSTM without peepholes failed on them. "
         "Greff et al. 2017: removing peepholes did not hurt on TIMIT, IAM and JSB.")
MEASURES = Measures(group=("task", "peepholes"),
                    metrics=("solved", "step_error_rate", "max_error", "rmse"),
                    curve=("update", "train_loss"))
COS_TOLERANCE = 0.1
SPIKE_TRAIN_STEPS, SPIKE_TRAIN_STREAMS = 60, 16
SPIKE_TEST_STEPS, SPIKE_TEST_STREAMS, TEST_SEED = 400, 20, 2002


@dataclass(frozen=True)
class PeepholeConfig:
    """Settings (``--set NAME=VALUE``). ``tasks``: "spike:D:UPDATES" or "cos:F:UPDATES"."""

    hidden: int = 8
    lr: float = 1e-2
    forget_bias: float = 1.0
    clip: float = 1.0
    seeds: int = 10
    tasks: tuple[str, ...] = ("spike:5:300", "spike:8:600", "cos:10:400", "cos:25:400")
    curve_points: int = 10


PRESETS = {
    "full": PeepholeConfig(),
    "quick": PeepholeConfig(tasks=("spike:5:300",)),
    "tiny": PeepholeConfig(hidden=4, seeds=2, tasks=("spike:3:8", "cos:4:8"), curve_points=2),
}


def parse_task(spec: str) -> tuple[str, int, int]:
    """"spike:5:300" -> ("spike", 5, 300)."""
    try:
        kind, size, updates = spec.split(":")
        if kind not in ("spike", "cos"):
            raise ValueError(kind)
        return kind, int(size), int(updates)
    except ValueError as error:
        raise ValueError(
            f"a task is 'spike:D:UPDATES' or 'cos:F:UPDATES' (e.g. 'spike:5:300'), got {spec!r}"
        ) from error


def _batch(kind: str, size: int, rng: np.random.Generator) -> Any:
    if kind == "spike":
        return spike_delay_stream(rng, SPIKE_TRAIN_STREAMS, SPIKE_TRAIN_STEPS, size)
    return periodic_cosine(1, 4 * size, size)


def _loss(kind: str, y: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray]:
    if kind == "spike":
        return bce_with_logits(y, target)
    loss, dy = mse_loss(y, target)
    return float(loss), dy


def score_model(kind: str, size: int, model: SequenceModel) -> dict[str, Any]:
    """Score one model on its task's test (see the module docstring)."""
    if kind == "spike":
        test = spike_delay_stream(np.random.default_rng(TEST_SEED), SPIKE_TEST_STREAMS,
                                  SPIKE_TEST_STEPS, size)
    else:
        test = periodic_cosine(1, 8 * size, size)
    with lstmkit.no_grad():
        y, _ = model.forward(test.x)
    if kind == "spike":
        wrong = (y > 0.0) != (test.y > 0.5)
        return {"solved": bool(not wrong.any()), "step_error_rate": float(wrong.mean()),
                "missed_spikes": int((wrong & (test.y > 0.5)).sum()),
                "spikes": int((test.y > 0.5).sum())}
    err = np.abs(y.astype(np.float64) - test.y)[:, 0, 0]
    return {"solved": bool(err.max() < COS_TOLERANCE), "max_error": float(err.max()),
            "max_error_train_length": float(err[: 4 * size].max()),
            "rmse": float(np.sqrt(np.mean(err**2)))}


def train_one(task: str, peepholes: bool, config: PeepholeConfig, seed: int,
              bar: Any = None) -> dict[str, Any]:
    """Train one LSTM on one task; return its test score and loss curve."""
    kind, size, updates = parse_task(task)
    model = SequenceModel(1, config.hidden, 1, cell="lstm", readout="all", seed=seed,
                          peepholes=peepholes, forget_bias=config.forget_bias)
    optimizer = Adam(model.params, model.grads, lr=config.lr)
    rng = np.random.default_rng([seed, 2002])
    every = max(updates // config.curve_points, 1)
    curve = []
    with stopwatch() as timing:
        for update in range(1, updates + 1):
            batch = _batch(kind, size, rng)
            optimizer.zero_grad()
            y, _ = model.forward(batch.x)
            loss, dy = _loss(kind, y, batch.y)
            model.backward(dy)
            lstmkit.clip_grad_norm(model.grads, config.clip)
            optimizer.step()
            if bar is not None:
                bar.update(1)
            if update % every == 0:
                curve.append({"update": update, "train_loss": loss})
    return {"task": task, "peepholes": peepholes, "seed": seed, "updates": updates,
            "seconds": timing["seconds"], "curve": curve, **score_model(kind, size, model)}


def _task_name(task: str) -> str:
    kind, size, updates = parse_task(task)
    what = f"spike delay D = {size}" if kind == "spike" else f"f_cos, F = {size}"
    return f"{what} ({updates} updates)"


def configure(mode: str, overrides: dict[str, Any]) -> PeepholeConfig:
    """The preset for ``mode`` with ``overrides`` applied (see ``pick_config``), checked."""
    config = pick_config(PRESETS, mode, overrides)
    for task in config.tasks:
        parse_task(task)
    return config


def seed_work(config: PeepholeConfig) -> int:
    """The progress-bar units (updates) of one seed."""
    return 2 * sum(parse_task(t)[2] for t in config.tasks)


def run_seed(config: PeepholeConfig, seed: int, index: int = 0,
             bar: Any = None) -> list[dict[str, Any]]:
    """Every task learned with and without peepholes with one seed (``index``: its place among
    the experiment's seeds, unused here)."""
    runs = []
    for task in config.tasks:
        for peep in (True, False):
            if bar is not None:
                bar.set_postfix_str(f"{task} peepholes={peep} seed {seed}")
            runs.append(train_one(task, peep, config, seed, bar))
    return runs


def run(mode: str = "full", seeds: int | None = None, seed: int = 0, out: PathLike | None = None,
        force: bool = False, show_progress: bool = True, **overrides: Any) -> Any:
    """Run the experiment and write its results folder; returns an ``ExperimentResult``."""
    return run_parts(sys.modules[__name__], mode, seeds, seed, out, force, show_progress,
                     **overrides)


def report(config: PeepholeConfig, mode: str, run_seeds: list[int],
           runs: list[dict[str, Any]], out_dir: Path) -> Any:
    """Write the table, plots, results.json and results.md of ``runs``; an ``ExperimentResult``."""
    runs = sorted(runs, key=lambda r: (config.tasks.index(r["task"]), not r["peepholes"]))
    headers = ["task", "variant", "solved", "solve rate", "error (mean ± std over seeds)",
               "failed seeds"]
    rows = []
    for task in config.tasks:
        kind = parse_task(task)[0]
        for peep in (True, False):
            mine = [r for r in runs if r["task"] == task and r["peepholes"] == peep]
            solved = sum(r["solved"] for r in mine)
            if kind == "spike":
                err = "step error " + mean_std([r["step_error_rate"] for r in mine], ".4f")
            else:
                err = "max abs error " + mean_std([r["max_error"] for r in mine], ".3f")
            failed = [r["seed"] for r in mine if not r["solved"]]
            rows.append([_task_name(task), "peepholes" if peep else "no peepholes",
                         f"{solved}/{len(mine)}", pct(solved / len(mine), 0), err,
                         ", ".join(map(str, failed)) or "-"])
    table = markdown_table(headers, rows)
    plots = [plot_curves(
        out_dir / "learning_curves.png",
        [{f"{'peepholes' if r['peepholes'] else 'no peepholes'} #{r['seed']}":
          ([p["update"] for p in r["curve"]], [p["train_loss"] for p in r["curve"]])
          for r in runs if r["task"] == task} for task in config.tasks],
        [_task_name(task) for task in config.tasks], "update", "training loss", logy=True,
        suptitle="Timing tasks: LSTM with and without peepholes",
    )]
    notes = [
        f"LSTM {config.hidden} units (forget bias {config.forget_bias:g}), Adam lr {config.lr}, "
        f"gradient clipped at {config.clip:g}; seeds {run_seeds[0]}..{run_seeds[-1]}.",
        f"spike: trained on {SPIKE_TRAIN_STREAMS} streams x {SPIKE_TRAIN_STEPS} steps; solved = "
        f"every step right on {SPIKE_TEST_STREAMS} x {SPIKE_TEST_STEPS} test steps "
        f"(seed {TEST_SEED}). cos: trained on 4F steps; solved = |error| < {COS_TOLERANCE} "
        "for 8F steps.",
        "No pass bar: calibration found neither variant learning D = 10 or F = 10 in about "
        "a minute per run.",
        PAPER,
    ]
    data = {"config": config, "mode": mode, "seeds": run_seeds, "paper": PAPER, "runs": runs}
    return write_results(NAME, out_dir, TITLE, table, data, notes, plots)
