"""Hochreiter & Schmidhuber (1997), Experiment 4: the adding problem, simple RNN vs LSTM.

Each sequence holds pairs (value, marker); two values are marked, and at the sequence's end the
network must output 0.5 + (X1 + X2) / 4. The first mark is among the first ten pairs, so the
information must be kept for about T steps (generator: ``lstmkit.tasks.hochreiter_adding``).
A sequence counts as correct when the absolute error is below 0.04.

Both models have 32 units and a linear read-out at each sequence's own last step (``lengths``),
trained with Adam on mini-batches of 32; the RNN's gradient is clipped (global norm 1), and so
is the LSTM's. The LSTM's forget gate starts with bias 5 (nearly open): calibration found that
with bias 1 it stayed at chance for 272k sequences, with bias 5 it learned in 90k-310k, and the
plateau ends abruptly. The paper's cell had no forget gate at all (f = 1).

Paper (T = 100, mean of 10 trials): 1 of 2560 test sequences wrong after 74,000 training
sequences. The paper's learning rate was 0.5 with plain gradient descent and 2 cell blocks of
size 2; ours are the modern defaults above.
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
    all_finite,
    markdown_table,
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
from lstmkit.tasks import ADDING_TOLERANCE, hochreiter_adding

NAME = "adding"
TITLE = "Adding problem (Hochreiter & Schmidhuber 1997, Experiment 4): RNN vs LSTM"

CHANCE_MSE = 19 / 480  # always answering 0.5
PAPER = {"T": 100, "sequences": 74_000, "wrong": "1/2560", "trials": 10}
SOLVED_ACCURACY = 0.97
PARTIAL_ACCURACY, PARTIAL_MSE = 0.90, 0.005
MEASURES = Measures(group=("label",), metrics=("final_accuracy", "final_mse", "sequences"),
                    curve=("sequences", "accuracy"))


@dataclass(frozen=True)
class AddingConfig:
    """Settings of the adding experiment (``--set NAME=VALUE`` on the command line).

    ``models``: which networks, among "rnn", "lstm" (forget bias ``forget_bias``) and "lstm-fb1"
    (forget bias 1, the calibration's pitfall). ``budget``: training sequences per run.
    ``stop_accuracy``: a run stops early once its test accuracy reaches this.
    """

    T: int = 100
    hidden: int = 32
    batch: int = 32
    lr: float = 1e-3
    forget_bias: float = 5.0
    clip: float = 1.0
    budget: int = 400_000
    eval_every: int = 10_240
    test_size: int = 2560
    stop_accuracy: float = 0.99
    seeds: int = 1
    models: tuple[str, ...] = ("rnn", "lstm")


PRESETS = {
    "full": AddingConfig(),
    "quick": AddingConfig(T=30, budget=64_000, eval_every=4_096),
    "tiny": AddingConfig(T=20, hidden=8, batch=8, budget=64, eval_every=32, test_size=64),
}


def build_model(kind: str, config: AddingConfig, seed: int) -> SequenceModel:
    """"rnn": tanh RNN; "lstm": LSTM with ``config.forget_bias``; "lstm-fb1": forget bias 1."""
    if kind == "rnn":
        return SequenceModel(2, config.hidden, 1, cell="rnn", seed=seed)
    if kind in ("lstm", "lstm-fb1"):
        bias = 1.0 if kind == "lstm-fb1" else config.forget_bias
        return SequenceModel(2, config.hidden, 1, cell="lstm", seed=seed, forget_bias=bias)
    raise ValueError(f"unknown model {kind!r}; choose among 'rnn', 'lstm', 'lstm-fb1'")


def model_label(kind: str, config: AddingConfig) -> str:
    """A row label that says the forget bias of the LSTM."""
    if kind == "rnn":
        return "RNN (tanh)"
    bias = 1.0 if kind == "lstm-fb1" else config.forget_bias
    return f"LSTM (forget bias {bias:g})"


def evaluate(model: SequenceModel, test: Any) -> tuple[float, float]:
    """(MSE, fraction correct with |error| < 0.04) on a test batch."""
    with lstmkit.no_grad():
        y, _ = model.forward(test.x, lengths=test.lengths)
    err = y.astype(np.float64) - test.y
    return float(np.mean(err**2)), float(np.mean(np.abs(err) < ADDING_TOLERANCE))


def train_one(kind: str, config: AddingConfig, seed: int, test: Any,
              bar: Any = None) -> dict[str, Any]:
    """Train one model with one seed; return its curve and the milestones it reached."""
    model = build_model(kind, config, seed)
    optimizer = Adam(model.params, model.grads, lr=config.lr)
    rng = np.random.default_rng([seed, 4])
    seen, next_eval = 0, config.eval_every
    curve: list[dict[str, float]] = []
    grad_norms: list[float] = []
    reached: dict[str, int | None] = {"90%": None, "97%": None}
    status = "budget spent"
    with stopwatch() as timing:
        while seen < config.budget:
            batch = hochreiter_adding(rng, config.batch, config.T)
            optimizer.zero_grad()
            y, _ = model.forward(batch.x, lengths=batch.lengths)
            loss, dy = mse_loss(y, batch.y)
            model.backward(dy)
            norm = lstmkit.clip_grad_norm(model.grads, config.clip)
            grad_norms.append(norm)
            if not (np.isfinite(loss) and np.isfinite(norm)):
                status = "diverged (non-finite loss or gradient)"
                break
            optimizer.step()
            seen += config.batch
            if bar is not None:
                bar.update(config.batch)
            if seen >= next_eval or seen >= config.budget:
                next_eval += config.eval_every
                mse, acc = evaluate(model, test)
                curve.append({"sequences": seen, "mse": mse, "accuracy": acc,
                              "train_loss": float(loss)})
                for key, level in (("90%", 0.90), ("97%", 0.97)):
                    if reached[key] is None and acc >= level:
                        reached[key] = seen
                if acc >= config.stop_accuracy:
                    status = f"stopped at {pct(config.stop_accuracy, 0)} accuracy"
                    break
    if bar is not None and seen < config.budget:
        bar.update(config.budget - seen)
    mse, acc = evaluate(model, test) if all_finite(model.params) else (float("nan"), 0.0)
    solved = acc >= SOLVED_ACCURACY
    partial = acc >= PARTIAL_ACCURACY and mse < PARTIAL_MSE
    return {
        "model": kind, "label": model_label(kind, config), "seed": seed, "sequences": seen,
        "final_mse": mse, "final_accuracy": acc, "wrong": int(round((1 - acc) * len(test.y))),
        "reached": reached, "solved": bool(solved), "partial": bool(partial or solved),
        "status": status, "seconds": timing["seconds"], "curve": curve,
        "grad_norms": grad_norms,
    }


def configure(mode: str, overrides: dict[str, Any]) -> AddingConfig:
    """The preset for ``mode`` with ``overrides`` applied (see ``pick_config``)."""
    return pick_config(PRESETS, mode, overrides)


def seed_work(config: AddingConfig) -> int:
    """The progress-bar units (training sequences) of one seed."""
    return config.budget * len(config.models)


def run_seed(config: AddingConfig, seed: int, index: int = 0,
             bar: Any = None) -> list[dict[str, Any]]:
    """Every model of ``config.models`` trained with one seed (``index``: its place among the
    experiment's seeds, unused here)."""
    test = hochreiter_adding(np.random.default_rng(2560), config.test_size, config.T)
    runs = []
    for kind in config.models:
        if bar is not None:
            bar.set_postfix_str(f"{kind} seed {seed}")
        runs.append(train_one(kind, config, seed, test, bar))
    return runs


def run(mode: str = "full", seeds: int | None = None, seed: int = 0, out: PathLike | None = None,
        force: bool = False, show_progress: bool = True, **overrides: Any) -> Any:
    """Run the experiment and write its results folder; returns an ``ExperimentResult``."""
    return run_parts(sys.modules[__name__], mode, seeds, seed, out, force, show_progress,
                     **overrides)


def report(config: AddingConfig, mode: str, run_seeds: list[int], runs: list[dict[str, Any]],
           out_dir: Path) -> Any:
    """Write the table, plots, results.json and results.md of ``runs``; an ``ExperimentResult``."""
    test_size = config.test_size
    rows = []
    for r in runs:
        rows.append([
            r["label"], r["seed"], f"{r['sequences']:,}",
            _fmt_reached(r["reached"]["90%"]), _fmt_reached(r["reached"]["97%"]),
            f"{r['final_mse']:.4f}", pct(r["final_accuracy"], 2),
            f"{r['wrong']}/{test_size}", f"{r['seconds']:.0f} s",
        ])
    rows.append(["LSTM, paper (10 trials, T=100)", "-", f"{PAPER['sequences']:,}", "-", "-",
                 "-", "99.96%", PAPER["wrong"], "-"])
    headers = ["model", "seed", "sequences trained", "seqs to 90%", "seqs to 97%",
               "test MSE", "test accuracy", "wrong", "time"]
    table = markdown_table(headers, rows)
    summary = _summary(runs, config)
    plots = _plots(out_dir, runs)
    notes = [
        f"T = {config.T} (lengths T..T+T//10), {config.hidden} units, Adam lr {config.lr}, "
        f"batch {config.batch}, gradient clipped at global norm {config.clip}; "
        f"test set {test_size} sequences (seed 2560), correct if |error| < {ADDING_TOLERANCE}.",
        f"Chance: always answering 0.5 gives MSE {CHANCE_MSE:.4f} and ~15% correct.",
        f"Bar for a correct implementation (calibration, T=100): LSTM >= 97% (or MSE < 0.005 "
        f"and >= 90%) within 400k sequences, RNN <= 25%. A run stops early at "
        f"{pct(config.stop_accuracy, 0)} test accuracy.",
        *summary,
    ]
    data = {"config": config, "mode": mode, "seeds": run_seeds, "paper": PAPER,
            "chance_mse": CHANCE_MSE, "runs": runs, "summary": summary}
    return write_results(NAME, out_dir, TITLE, table, data, notes, plots)


def _fmt_reached(value: int | None) -> str:
    return "never" if value is None else f"{value:,}"


def _summary(runs: list[dict[str, Any]], config: AddingConfig) -> list[str]:
    lines = []
    for kind in config.models:
        mine = [r for r in runs if r["model"] == kind]
        solved = sum(r["solved"] for r in mine)
        partial = sum(r["partial"] for r in mine)
        lines.append(
            f"{model_label(kind, config)}: {solved}/{len(mine)} seeds >= 97% correct, "
            f"{partial}/{len(mine)} at least MSE < 0.005 and >= 90%; "
            f"failures: {len(mine) - partial}."
        )
    return lines


def _plots(out_dir: Path, runs: list[dict[str, Any]]) -> list[Path]:
    acc = {f"{r['label']} #{r['seed']}": ([p["sequences"] for p in r["curve"]],
                                           [p["accuracy"] for p in r["curve"]]) for r in runs}
    mse = {f"{r['label']} #{r['seed']}": ([p["sequences"] for p in r["curve"]],
                                           [p["mse"] for p in r["curve"]]) for r in runs}
    curves = plot_curves(
        out_dir / "learning_curves.png", [acc, mse],
        ["test accuracy (|error| < 0.04)", "test MSE"], "training sequences",
        ["fraction correct", "MSE"], logy=[False, True],
        hlines=[{"97%": 0.97}, {"chance (answer 0.5)": CHANCE_MSE}],
        suptitle="Adding problem: simple RNN vs LSTM",
    )
    norms = {}
    for r in runs:
        g = np.asarray(r["grad_norms"], dtype=np.float64)
        x = (np.arange(len(g)) + 1) * (r["sequences"] / max(len(g), 1))
        norms[f"{r['label']} #{r['seed']}"] = (x, g)
    grads = plot_curves(out_dir / "gradient_norms.png", [norms],
                        ["gradient norm before clipping, per update"], "training sequences",
                        "global gradient norm", logy=True)
    return [curves, grads]
