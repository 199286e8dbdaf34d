"""Pascanu, Mikolov & Bengio (2013): exploding gradients, and clipping by the global norm.

A tanh RNN of 50 units whose recurrent matrix is rescaled to spectral radius 1.4 (> 1: the
regime where the gradient can explode) is trained with plain SGD (lr 0.1, batch 20) on the
adding problem of length 50 (``lstmkit.tasks.pascanu_adding``), once without clipping and once
with the study note's clipping: when the global gradient norm exceeds 1, all gradients are
scaled by ``1 / norm`` (``lstmkit.clip_grad_norm``).

The layers check their inputs for NaN/Inf, not their outputs, so divergence is detected here:
a run stops at the first update whose loss or gradient norm is not finite.

Calibration: unclipped, 5/5 seeds reach NaN/inf within 25 updates (gradient norms ~1e19);
clipped, 5/5 stay finite for 3,000 updates. Learning under clipping needs a milder start:
radius 1.2 reached MSE 0.086 after 10k updates in one seed; that is the second panel.
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
    markdown_table,
    mean_std,
    pick_config,
    plot_curves,
    run_parts,
    sci,
    stopwatch,
    write_results,
)
from lstmkit.models import SequenceModel
from lstmkit.nn import mse_loss
from lstmkit.optim import SGD
from lstmkit.tasks import pascanu_adding

NAME = "clipping"
TITLE = "Exploding gradients and clipping (Pascanu, Mikolov & Bengio 2013)"

CHANCE_MSE = 1.0 / 6.0  # always answering 1.0
PAPER = ("Pascanu et al. (2013) show the explosion in the regime where the recurrent matrix's "
         "spectral radius exceeds 1 and propose rescaling the gradient when its norm exceeds a "
         "threshold (their Algorithm 1); with it, SGD trains the adding problem. Qualitative: "
         "no per-seed counts to compare with.")
MEASURES = Measures(group=("panel", "radius", "clip"),
                    metrics=("updates_run", "max_grad_norm", "final_test_mse", "best_test_mse"),
                    curve=("update", "mse"))


@dataclass(frozen=True)
class ClippingConfig:
    """Settings (``--set NAME=VALUE``).

    Panel 1: ``radius`` (1.4), ``updates`` per run, with and without clipping, ``seeds`` seeds.
    Panel 2: the milder start ``learn_radius`` (1.2), ``learn_updates``, on the first
    ``learn_seeds`` of those seeds.
    """

    T: int = 50
    hidden: int = 50
    batch: int = 20
    lr: float = 0.1
    max_norm: float = 1.0
    radius: float = 1.4
    updates: int = 3000
    seeds: int = 5
    learn_radius: float = 1.2
    learn_updates: int = 10_000
    learn_seeds: int = 1
    eval_every: int = 250
    test_size: int = 1000


PRESETS = {
    "full": ClippingConfig(),
    "quick": ClippingConfig(updates=600, learn_updates=3000, eval_every=100),
    "tiny": ClippingConfig(T=10, hidden=8, batch=4, updates=30, seeds=2, learn_updates=30,
                           eval_every=10, test_size=32),
}


def build_rnn(config: ClippingConfig, radius: float, seed: int) -> SequenceModel:
    """The tanh RNN with its recurrent matrix rescaled to spectral radius ``radius``."""
    model = SequenceModel(2, config.hidden, 1, cell="rnn", seed=seed)
    w = model.params["rnn.weight_hh_l0"]
    w *= np.float32(radius / np.max(np.abs(np.linalg.eigvals(w.astype(np.float64)))))
    return model


def train_one(config: ClippingConfig, radius: float, clip: bool, updates: int, seed: int,
              test: Any, bar: Any = None) -> dict[str, Any]:
    """Plain SGD for ``updates`` updates or until the loss or gradient is not finite."""
    model = build_rnn(config, radius, seed)
    optimizer = SGD(model.params, model.grads, lr=config.lr)
    rng = np.random.default_rng([seed, 2013])
    norms: list[float] = []
    losses: list[float] = []
    curve: list[dict[str, float]] = []
    diverged_at = None
    with stopwatch() as timing, np.errstate(over="ignore", invalid="ignore"):
        for update in range(1, updates + 1):
            batch = pascanu_adding(rng, config.batch, config.T)
            optimizer.zero_grad()
            y, _ = model.forward(batch.x)
            loss, dy = mse_loss(y, batch.y)
            model.backward(dy)
            if clip:
                norm = lstmkit.clip_grad_norm(model.grads, config.max_norm)
            else:
                norm = lstmkit.clip.total_norm(model.grads)
            norms.append(float(norm))
            losses.append(float(loss))
            if not (np.isfinite(loss) and np.isfinite(norm)):
                diverged_at = update
                break
            optimizer.step()
            if bar is not None:
                bar.update(1)
            if update % config.eval_every == 0 or update == updates:
                curve.append({"update": update, "mse": _test_mse(model, test)})
    if bar is not None and diverged_at is not None:
        bar.update(updates - diverged_at + 1)
    finite = [n for n in norms if np.isfinite(n)]
    return {
        "radius": radius, "clip": clip, "seed": seed, "updates_run": len(norms),
        "diverged_at": diverged_at, "max_grad_norm": max(finite) if finite else None,
        "final_test_mse": curve[-1]["mse"] if curve and diverged_at is None else None,
        "best_test_mse": min((p["mse"] for p in curve), default=None),
        "grad_norms": norms, "train_loss": losses, "curve": curve,
        "seconds": timing["seconds"],
    }


def _test_mse(model: SequenceModel, test: Any) -> float:
    with lstmkit.no_grad(), np.errstate(over="ignore", invalid="ignore"):
        try:
            y, _ = model.forward(test.x)
        except ValueError:  # a NaN already in the weights
            return float("nan")
    return float(np.mean((y.astype(np.float64) - test.y) ** 2))


def configure(mode: str, overrides: dict[str, Any]) -> ClippingConfig:
    """The preset for ``mode`` with ``overrides`` applied (see ``pick_config``)."""
    return pick_config(PRESETS, mode, overrides)


def seed_work(config: ClippingConfig) -> int:
    """The progress-bar units (updates) of one seed (the first seeds also run panel 2)."""
    return 2 * config.updates + 2 * config.learn_updates * (config.learn_seeds > 0)


def run_seed(config: ClippingConfig, seed: int, index: int = 0,
             bar: Any = None) -> list[dict[str, Any]]:
    """One seed's runs without and with clipping: panel 1 ("explode", ``radius``), and panel 2
    ("learn", ``learn_radius``) when the seed is among the experiment's first ``learn_seeds``
    (``index``: its place among them)."""
    test = pascanu_adding(np.random.default_rng(50), config.test_size, config.T)
    panels = [("explode", config.radius, config.updates)]
    if index < config.learn_seeds:
        panels.append(("learn", config.learn_radius, config.learn_updates))
    elif bar is not None:
        bar.update(2 * config.learn_updates)
    runs = []
    for panel, radius, updates in panels:
        for clip in (False, True):
            if bar is not None:
                bar.set_postfix_str(f"radius {radius} clip={clip} seed {seed}")
            runs.append({"panel": panel,
                         **train_one(config, radius, clip, updates, seed, test, bar)})
    return runs


def run(mode: str = "full", seeds: int | None = None, seed: int = 0, out: PathLike | None = None,
        force: bool = False, show_progress: bool = True, **overrides: Any) -> Any:
    """Run the experiment and write its results folder; returns an ``ExperimentResult``."""
    return run_parts(sys.modules[__name__], mode, seeds, seed, out, force, show_progress,
                     **overrides)


def report(config: ClippingConfig, mode: str, main_seeds: list[int],
           runs: list[dict[str, Any]], out_dir: Path) -> Any:
    """Write the tables, plots, results.json and results.md of ``runs``; an
    ``ExperimentResult``."""
    explode = sorted((r for r in runs if r["panel"] == "explode"), key=lambda r: r["clip"])
    learn = sorted((r for r in runs if r["panel"] == "learn"), key=lambda r: r["clip"])
    learn_seeds = sorted({r["seed"] for r in learn})
    headers = ["radius", "clipping", "seeds", "diverged (NaN/inf)", "updates to divergence",
               "finite for all updates", "max gradient norm", "final test MSE"]
    rows = []
    for radius, panel, updates in ((config.radius, explode, config.updates),
                                   (config.learn_radius, learn, config.learn_updates)):
        for clip in (False, True) if panel else ():
            mine = [r for r in panel if r["clip"] == clip]
            div = [r["diverged_at"] for r in mine if r["diverged_at"] is not None]
            rows.append([
                f"{radius:g}", f"global norm {config.max_norm:g}" if clip else "none",
                ", ".join(str(r["seed"]) for r in mine),
                f"{len(div)}/{len(mine)}",
                "-" if not div else str(min(div)) if min(div) == max(div)
                else f"{min(div)}-{max(div)}",
                f"{len(mine) - len(div)}/{len(mine)} ({updates:,} updates)",
                sci(max((r["max_grad_norm"] or 0.0) for r in mine)),
                mean_std([r["final_test_mse"] for r in mine if r["final_test_mse"] is not None],
                         ".4f"),
            ])
    table = markdown_table(headers, rows)
    per_seed = markdown_table(
        ["radius", "clipping", "seed", "updates run", "diverged at", "max gradient norm",
         "best test MSE", "final test MSE"],
        [[f"{r['radius']:g}", "yes" if r["clip"] else "no", r["seed"], r["updates_run"],
          r["diverged_at"] or "-", sci(r["max_grad_norm"]),
          "-" if r["best_test_mse"] is None or not np.isfinite(r["best_test_mse"])
          else f"{r['best_test_mse']:.4f}",
          "-" if r["final_test_mse"] is None else f"{r['final_test_mse']:.4f}"]
         for r in explode + learn],
    )
    plots = _plots(out_dir, config, explode, learn)
    notes = [
        f"tanh RNN, {config.hidden} units, SGD lr {config.lr}, batch {config.batch}, adding "
        f"problem T = {config.T} (Pascanu variant); test set {config.test_size} sequences; "
        f"chance MSE (answer 1.0) = {CHANCE_MSE:.3f}.",
        "Calibration bar: unclipped 5/5 seeds NaN/inf within 25 updates; clipped 5/5 finite "
        "for 3,000 updates; radius 1.2 clipped reached MSE 0.086 after 10k updates (1 seed).",
        "A run without clipping stops at its first non-finite loss or gradient norm.",
        PAPER,
    ]
    data = {"config": config, "mode": mode, "seeds": main_seeds, "learn_seeds": learn_seeds,
            "paper": PAPER, "chance_mse": CHANCE_MSE, "explode_runs": explode,
            "learn_runs": learn}
    return write_results(NAME, out_dir, TITLE, table, data, notes, plots,
                         extra_tables=[("Per seed", per_seed)])


def _label(r: dict[str, Any]) -> str:
    return f"{'clipped' if r['clip'] else 'unclipped'} #{r['seed']}"


def _plots(out_dir: Path, config: ClippingConfig, explode: list[dict[str, Any]],
           learn: list[dict[str, Any]]) -> list[Path]:
    def norms(runs: list[dict[str, Any]]) -> dict[str, tuple[Any, Any]]:
        series = {}
        for r in runs:
            g = np.asarray(r["grad_norms"], dtype=np.float64)
            g = np.where(np.isfinite(g), g, np.nan)
            series[_label(r)] = (np.arange(1, len(g) + 1), g)
        return series

    grad_plot = plot_curves(
        out_dir / "gradient_norms.png", [norms(explode), norms(learn)],
        [f"spectral radius {config.radius:g}: {config.updates:,} updates",
         f"spectral radius {config.learn_radius:g}: {config.learn_updates:,} updates"],
        "update", "global gradient norm (before clipping)", logy=True,
        hlines=[{"clip threshold": config.max_norm}] * 2,
        suptitle="Gradient norm per update, with and without clipping (runs end at NaN/inf)",
    )

    def curves(runs: list[dict[str, Any]]) -> dict[str, tuple[Any, Any]]:
        return {_label(r): ([p["update"] for p in r["curve"]], [p["mse"] for p in r["curve"]])
                for r in runs}

    mse_plot = plot_curves(
        out_dir / "learning_curves.png", [curves(explode), curves(learn)],
        [f"spectral radius {config.radius:g}", f"spectral radius {config.learn_radius:g}"],
        "update", "test MSE", logy=True, hlines=[{"chance": CHANCE_MSE}] * 2,
        suptitle=f"Adding problem T = {config.T}, plain SGD (unclipped runs that diverge "
                 "before the first evaluation have no curve)",
    )
    return [grad_plot, mse_plot]
