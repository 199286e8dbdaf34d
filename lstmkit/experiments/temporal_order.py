"""Hochreiter & Schmidhuber (1997), Experiment 6a: the temporal order problem.

Sequences of 100-110 random symbols from {a, b, c, d} hold an X or a Y at two positions (steps
10-20 and 50-60); the class, given at the last step, is the order of the two: XX, XY, YX or YY
(generator: ``lstmkit.tasks.temporal_order``). The network must keep two bits over 40-100
steps of noise. A softmax read-out at each sequence's own last step is trained with
cross-entropy (Adam, batch 32, gradient clipped at global norm 1). As in the adding problem, the
LSTM's forget gate starts nearly open (bias 5): with bias 1 it was still at chance after 40,000
sequences, with bias 5 it had no test errors after 12,800 (seed 0).

A sequence is correct by the paper's criterion when every output unit is within 0.3 of its
one-hot target (``TEMPORAL_ORDER_TOLERANCE``); the argmax accuracy is reported beside it.

Paper (Table 9, 2 cell blocks of size 2, mean of 20 trials): 1 of 2560 test sequences wrong
after 31,390 training sequences.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

import lstmkit
from lstmkit.experiments.common import (
    PathLike,
    all_finite,
    markdown_table,
    pct,
    pick_config,
    plot_curves,
    prepare_out_dir,
    progress_bar,
    seed_list,
    stopwatch,
    write_results,
)
from lstmkit.models import SequenceModel
from lstmkit.nn import softmax_cross_entropy
from lstmkit.optim import Adam
from lstmkit.tasks import TEMPORAL_ORDER_SYMBOLS, TEMPORAL_ORDER_TOLERANCE, temporal_order

NAME = "temporal-order"
TITLE = "Temporal order (Hochreiter & Schmidhuber 1997, Experiment 6a)"
PAPER = {"sequences": 31_390, "wrong": "1/2560", "trials": 20}
N_CLASSES = 4
LABELS = {"lstm": "LSTM", "lstm-1997": "LSTM without forget gate (1997)", "rnn": "RNN (tanh)"}


@dataclass(frozen=True)
class TemporalOrderConfig:
    """Settings (``--set NAME=VALUE``). ``models``: among "lstm", "lstm-1997" and "rnn"."""

    hidden: int = 16
    batch: int = 32
    lr: float = 1e-2
    forget_bias: float = 5.0
    clip: float = 1.0
    budget: int = 100_000
    eval_every: int = 3_200
    test_size: int = 2560
    stop_accuracy: float = 0.999
    seeds: int = 3
    models: tuple[str, ...] = ("rnn", "lstm")


PRESETS = {
    "full": TemporalOrderConfig(),
    "quick": TemporalOrderConfig(budget=40_000, seeds=1, models=("lstm",)),
    "tiny": TemporalOrderConfig(hidden=6, batch=8, budget=48, eval_every=16, test_size=64,
                                seeds=1),
}


def build_model(kind: str, config: TemporalOrderConfig, seed: int) -> SequenceModel:
    """"lstm" (forget bias ``config.forget_bias``), "lstm-1997" (no forget gate, the paper's
    cell) or "rnn", read out at the last step."""
    inputs = len(TEMPORAL_ORDER_SYMBOLS)
    if kind == "lstm":
        return SequenceModel(inputs, config.hidden, N_CLASSES, cell="lstm", seed=seed,
                             forget_bias=config.forget_bias)
    if kind == "lstm-1997":
        return SequenceModel(inputs, config.hidden, N_CLASSES, cell="lstm", seed=seed,
                             forget_gate=False)
    if kind == "rnn":
        return SequenceModel(inputs, config.hidden, N_CLASSES, cell="rnn", seed=seed)
    raise ValueError(f"unknown model {kind!r}; choose 'lstm', 'lstm-1997' or 'rnn'")


def evaluate(model: SequenceModel, test: Any) -> dict[str, float]:
    """Argmax accuracy, the paper's criterion (all outputs within 0.3) and the loss."""
    with lstmkit.no_grad():
        logits, _ = model.forward(test.x, lengths=test.lengths)
    loss, _ = softmax_cross_entropy(logits, test.y, compute_grad=False)
    z = logits.astype(np.float64)
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    target = np.eye(N_CLASSES)[test.y]
    paper_ok = np.all(np.abs(p - target) < TEMPORAL_ORDER_TOLERANCE, axis=1)
    return {"loss": float(loss), "accuracy": float(np.mean(p.argmax(axis=1) == test.y)),
            "paper_accuracy": float(paper_ok.mean()), "wrong": int((~paper_ok).sum())}


def train_one(kind: str, config: TemporalOrderConfig, seed: int, test: Any,
              bar: Any = None) -> dict[str, Any]:
    """Train one network until ``stop_accuracy`` (paper criterion) or the budget."""
    model = build_model(kind, config, seed)
    optimizer = Adam(model.params, model.grads, lr=config.lr)
    rng = np.random.default_rng([seed, 6])
    seen, next_eval = 0, config.eval_every
    curve: list[dict[str, float]] = []
    reached = None
    status = "budget spent"
    with stopwatch() as timing:
        while seen < config.budget:
            batch = temporal_order(rng, config.batch)
            optimizer.zero_grad()
            logits, _ = model.forward(batch.x, lengths=batch.lengths)
            loss, d_logits = softmax_cross_entropy(logits, batch.y)
            model.backward(d_logits)
            norm = lstmkit.clip_grad_norm(model.grads, config.clip)
            if not (np.isfinite(loss) and np.isfinite(norm)):
                status = "diverged (non-finite loss or gradient)"
                break
            optimizer.step()
            seen += config.batch
            if bar is not None:
                bar.update(config.batch)
            if seen >= next_eval or seen >= config.budget:
                next_eval += config.eval_every
                m = evaluate(model, test)
                curve.append({"sequences": seen, "train_loss": float(loss), **m})
                if reached is None and m["paper_accuracy"] >= 0.99:
                    reached = seen
                if m["paper_accuracy"] >= config.stop_accuracy:
                    status = f"stopped at {pct(config.stop_accuracy)} (paper criterion)"
                    break
    if bar is not None and seen < config.budget:
        bar.update(config.budget - seen)
    final = evaluate(model, test) if all_finite(model.params) else {
        "loss": float("nan"), "accuracy": 0.0, "paper_accuracy": 0.0, "wrong": len(test.y)}
    return {"model": kind, "label": LABELS[kind], "seed": seed,
            "sequences": seen, "reached_99": reached, "status": status,
            "seconds": timing["seconds"], "curve": curve, **final}


def run(mode: str = "full", seeds: int | None = None, seed: int = 0, out: PathLike | None = None,
        force: bool = False, show_progress: bool = True, **overrides: Any) -> Any:
    """Run the experiment and write its results folder; returns an ``ExperimentResult``."""
    config = pick_config(PRESETS, mode, overrides)
    run_seeds = seed_list(seed, seeds if seeds is not None else config.seeds)
    out_dir = prepare_out_dir(NAME, out, force)
    test = temporal_order(np.random.default_rng(2561), config.test_size)
    runs = []
    with progress_bar(config.budget * len(run_seeds) * len(config.models), NAME,
                      show_progress) as bar:
        for s in run_seeds:
            for kind in config.models:
                bar.set_postfix_str(f"{kind} seed {s}")
                runs.append(train_one(kind, config, s, test, bar))

    headers = ["model", "seed", "sequences trained", "seqs to 99% (paper criterion)",
               "test accuracy (argmax)", "test accuracy (paper criterion)", "wrong", "time"]
    rows = [[r["label"], r["seed"], f"{r['sequences']:,}",
             "never" if r["reached_99"] is None else f"{r['reached_99']:,}",
             pct(r["accuracy"], 2), pct(r["paper_accuracy"], 2),
             f"{r['wrong']}/{len(test.y)}", f"{r['seconds']:.0f} s"] for r in runs]
    rows.append(["LSTM, paper (20 trials)", "-", f"{PAPER['sequences']:,}", "-", "-", "99.96%",
                 PAPER["wrong"], "-"])
    table = markdown_table(headers, rows)
    summary = []
    for kind in config.models:
        mine = [r for r in runs if r["model"] == kind]
        solved = sum(r["paper_accuracy"] >= 0.99 for r in mine)
        summary.append(f"{mine[0]['label']}: {solved}/{len(mine)} seeds reach 99% by the "
                       f"paper's criterion; failures: {len(mine) - solved}.")
    plots = [plot_curves(
        out_dir / "learning_curves.png",
        [{f"{r['label']} #{r['seed']}": ([p["sequences"] for p in r["curve"]],
                                         [p["paper_accuracy"] for p in r["curve"]])
          for r in runs},
         {f"{r['label']} #{r['seed']}": ([p["sequences"] for p in r["curve"]],
                                         [p["loss"] for p in r["curve"]]) for r in runs}],
        ["test accuracy (every output within 0.3)", "test cross-entropy"],
        "training sequences", ["fraction correct", "loss"], logy=[False, True],
        hlines=[{"chance": 0.25}, {"chance (ln 4)": float(np.log(4))}],
        suptitle="Temporal order problem (Task 6a)",
    )]
    notes = [
        f"{config.hidden} units, Adam lr {config.lr}, batch {config.batch}, LSTM forget bias "
        f"{config.forget_bias:g}, gradient clipped at {config.clip:g}; test set {len(test.y)} "
        f"sequences (seed 2561). A run stops at {pct(config.stop_accuracy)} (paper criterion).",
        *summary,
    ]
    data = {"config": config, "mode": mode, "seeds": run_seeds, "paper": PAPER, "runs": runs,
            "summary": summary}
    return write_results(NAME, out_dir, TITLE, table, data, notes, plots)

