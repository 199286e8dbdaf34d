"""Gers, Schmidhuber & Cummins (2000), "Learning to Forget": the continual embedded Reber grammar.

Embedded Reber strings follow each other in one endless stream that is never reset; at every
step the network sees one symbol and must predict the set of legal next symbols (multi-hot
targets, one sigmoid output per symbol, trained with binary cross-entropy). Training is
truncated backpropagation through time on ``chunk`` steps at a time, with the state carried
from chunk to chunk (and the gradient stopped there), on ``streams`` streams side by side.

Three networks, the same size and seed:

* ``forget``: an LSTM with a forget gate (forget bias +1);
* ``no-forget``: the same cell with f fixed to 1 (``forget_gate=False``), the 1997 LSTM, in the
  same endless stream: nothing ever empties its cells;
* ``no-forget-reset``: the same no-forget cell, with its state reset to zero at every string
  boundary (the control: the task is solvable by this cell when someone else does the
  forgetting). Resetting at each boundary is the same as training on single strings from a
  zero state, which is how it is trained here.

Measured on a fresh stream of 200 strings (seed 2000): the long-range prediction (after the
inner string's E, the T or P that repeats the string's second symbol; correct when both the T
and the P output are on the right side of 0.5), whether the predicted set (outputs > 0.5) is
exactly the legal set at every step of a string, the norm of the cell state over the stream,
and the fraction of cells whose tanh(c) is saturated (|tanh c| > 0.99) during the last string.

Training differs from the paper's in one way that matters: the paper truncated the gradient so
that errors flowed back in time only through the cells (the carousel), while here the gradient
flows back through h_{t-1} -> gates for up to ``chunk`` steps (full BPTT within a chunk). A
network whose cells are all saturated can then still carry information in its recurrent h,
like a simple RNN, over the short lags of this grammar. ``--set gradient=carousel`` trains with
the paper's truncation instead (``CarouselGradient``: at every step the error reaching h_{t-1}
through the recurrent weights is dropped; only the cell state carries errors back in time; on
the readable reference recurrence).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import lstmkit
from lstmkit.engine.reference import ReferenceRecurrence
from lstmkit.experiments.common import (
    Measures,
    PathLike,
    bce_with_logits,
    markdown_table,
    pct,
    pick_config,
    plot_curves,
    run_parts,
    stopwatch,
    write_results,
)
from lstmkit.models import SequenceModel
from lstmkit.optim import Adam
from lstmkit.tasks import REBER_SYMBOLS, ReberStream, continual_embedded_reber

NAME = "forget-gate"
TITLE = "Learning to forget: continual embedded Reber grammar (Gers, Schmidhuber & Cummins 2000)"

N_SYMBOLS = len(REBER_SYMBOLS)
TEST_SEED = 2000
PAPER = {
    "no-forget": "0% of trials perfect; mean error-free run 37 symbols (Table 2, 'standard LSTM')",
    "forget": "18-62% of trials perfect, by learning-rate setting (Table 2, 'LSTM with forget "
              "gates'); the rest make rare errors",
    "no-forget-reset": "solved: the embedded Reber grammar with resets is the 1997 LSTM's "
                       "Experiment 1 (100% of trials)",
}

MODELS: dict[str, dict[str, Any]] = {
    "forget": {"forget_bias": 1.0},
    "no-forget": {"forget_gate": False},
    "no-forget-reset": {"forget_gate": False},
}
MEASURES = Measures(group=("label",),
                    metrics=("long_range_accuracy", "strings_all_legal", "step_accuracy",
                             "mean_error_free_run", "c_norm_last_string"),
                    curve=("update", "long_range_accuracy"))
LABELS = {
    "forget": "LSTM with forget gate (bias +1)",
    "no-forget": "LSTM without forget gate",
    "no-forget-reset": "LSTM without forget gate, reset at string boundaries",
}


@dataclass(frozen=True)
class ReberConfig:
    """Settings (``--set NAME=VALUE``); also used by the ``variants`` experiment."""

    hidden: int = 16
    streams: int = 16
    chunk: int = 30
    lr: float = 1e-2
    clip: float = 1.0
    updates: int = 3000
    eval_every: int = 250
    test_strings: int = 200
    seeds: int = 1
    models: tuple[str, ...] = ("forget", "no-forget", "no-forget-reset")
    gradient: str = "bptt"  # or "carousel": the paper's truncated gradient (CarouselGradient)


class CarouselGradient(ReferenceRecurrence):
    """BPTT truncated as in Hochreiter & Schmidhuber (1997) and Gers et al. (2000): errors flow
    back in time only through the cell state c (the Constant Error Carousel). At every step,
    the part of dL/dh_{t-1} that comes through the recurrent weights (dz_t W_hh) is dropped;
    dL/dc_{t-1} (f_t dc_t, plus the peephole terms) is kept, and every weight still gets the
    gradient of its own step."""

    def backward(self, cell: Any, p: dict[str, Any], cache: Any, d_out: Any, d_state: Any,
                 grads: dict[str, Any]) -> Any:
        return super().backward(_ErrorsOnlyThroughC(cell), p, cache, d_out, d_state, grads)


class _ErrorsOnlyThroughC:
    """An LSTM cell whose backward step returns dh_{t-1} = 0 (see ``CarouselGradient``)."""

    def __init__(self, cell: Any) -> None:
        self.cell = cell

    def backward(self, d_new: Any, step: Any, p: Any, grads: Any) -> Any:
        dx, (dh_prev, dc_prev) = self.cell.backward(d_new, step, p, grads)
        return dx, (np.zeros_like(dh_prev), dc_prev)


PRESETS = {
    "full": ReberConfig(),
    "quick": ReberConfig(updates=1000, eval_every=200),
    "tiny": ReberConfig(hidden=6, streams=4, chunk=10, updates=12, eval_every=6,
                        test_strings=10),
}


class StreamFeeder:
    """``streams`` endless continual embedded Reber streams, served ``chunk`` steps at a time.

    Whole strings are generated as needed, so no string is ever cut short.
    """

    def __init__(self, rng: np.random.Generator, streams: int) -> None:
        self.rng = rng
        self.buffers = [continual_embedded_reber(rng, 20) for _ in range(streams)]

    def next(self, chunk: int) -> ReberStream:
        """The next ``chunk`` steps of every stream: x, y (chunk, B, 7), masks (chunk, B)."""
        parts = []
        for k, buf in enumerate(self.buffers):
            while len(buf) < chunk:
                buf = _concat([buf, continual_embedded_reber(self.rng, 20)])
            parts.append(_slice(buf, 0, chunk))
            self.buffers[k] = _slice(buf, chunk, len(buf))
        return ReberStream(*(np.stack([getattr(p, f) for p in parts], axis=1)
                             for f in ("x", "y", "boundary", "long_range", "long_range_symbol")))


def _slice(s: ReberStream, start: int, stop: int) -> ReberStream:
    return ReberStream(s.x[start:stop], s.y[start:stop], s.boundary[start:stop],
                       s.long_range[start:stop], s.long_range_symbol[start:stop])


def _concat(parts: list[ReberStream]) -> ReberStream:
    return ReberStream(*(np.concatenate([getattr(p, f) for p in parts])
                         for f in ("x", "y", "boundary", "long_range", "long_range_symbol")))


def split_strings(stream: ReberStream) -> tuple[ReberStream, np.ndarray]:
    """Cut a (T, 7) stream at its boundaries into a padded batch of strings.

    Returns the batch (x, y (L, S, 7), masks (L, S)) and the int64 lengths (S,).
    """
    starts = np.flatnonzero(stream.boundary)
    ends = np.append(starts[1:], len(stream))
    lengths = (ends - starts).astype(np.int64)
    L, S = int(lengths.max()), len(starts)
    fields = {}
    for f in ("x", "y", "boundary", "long_range", "long_range_symbol"):
        src = getattr(stream, f)
        fill = -1 if f == "long_range_symbol" else 0
        dst = np.full((L, S) + src.shape[1:], fill, dtype=src.dtype)
        for j, (a, b) in enumerate(zip(starts, ends)):
            dst[: b - a, j] = src[a:b]
        fields[f] = dst
    return ReberStream(**fields), lengths


def string_batch(rng: np.random.Generator, n: int) -> tuple[ReberStream, np.ndarray]:
    """``n`` independent embedded Reber strings, padded: the training data of a reset network."""
    return split_strings(continual_embedded_reber(rng, n))


def build_model(options: dict[str, Any], config: ReberConfig, seed: int) -> SequenceModel:
    """A one-layer LSTM of ``config.hidden`` units with a sigmoid read-out at every step."""
    return SequenceModel(N_SYMBOLS, config.hidden, N_SYMBOLS, cell="lstm", readout="all",
                         seed=seed, **options)


def evaluate(model: SequenceModel, test: ReberStream, reset: bool) -> dict[str, Any]:
    """Run the test stream from a zero state (reset at boundaries if ``reset``); score it."""
    with lstmkit.no_grad():
        if reset:
            batch, lengths = split_strings(test)
            out, _, gates = model.rnn(batch.x, lengths=lengths, return_gates=True)
            logits_b = model.head(out)
            c_b = gates["l0"]["c"]
            logits = np.concatenate([logits_b[:n, j] for j, n in enumerate(lengths)])
            c = np.concatenate([c_b[:n, j] for j, n in enumerate(lengths)])
        else:
            out, _, gates = model.rnn(test.x[:, None], return_gates=True)
            logits = model.head(out)[:, 0]
            c = gates["l0"]["c"][:, 0]
    return score(logits, c, test)


def score(logits: np.ndarray, c: np.ndarray, test: ReberStream) -> dict[str, Any]:
    """The measures of the paper on one (T, 7) stream of logits and its (T, H) cell states."""
    with np.errstate(invalid="ignore"):
        predicted = logits > 0.0  # sigmoid > 0.5
    exact = np.all(predicted == (test.y > 0.5), axis=1)  # (T,)
    lr_steps = np.flatnonzero(test.long_range)
    lr_symbol = test.long_range_symbol[lr_steps]
    other = np.where(lr_symbol == REBER_SYMBOLS.index("T"), REBER_SYMBOLS.index("P"),
                     REBER_SYMBOLS.index("T"))
    lr_right = predicted[lr_steps, lr_symbol] & ~predicted[lr_steps, other]
    string_id = np.cumsum(test.boundary) - 1
    n_strings = int(string_id[-1]) + 1
    wrong_per_string = np.bincount(string_id, weights=~exact, minlength=n_strings)
    errors = np.flatnonzero(~exact)
    runs = np.diff(np.concatenate([[-1], errors, [len(exact)]])) - 1
    c_norm = np.linalg.norm(c.astype(np.float64), axis=1)
    first = string_id == 0
    last = string_id == n_strings - 1
    return {
        "long_range_accuracy": float(lr_right.mean()) if lr_right.size else float("nan"),
        "strings_all_legal": float(np.mean(wrong_per_string == 0)),
        "step_accuracy": float(exact.mean()),
        "errors": int(errors.size),
        "mean_error_free_run": float(runs[runs > 0].mean()) if (runs > 0).any() else 0.0,
        "first_error_at": int(errors[0]) if errors.size else None,
        "c_norm_first_string": float(c_norm[first].mean()),
        "c_norm_last_string": float(c_norm[last].mean()),
        "c_norm_max": float(c_norm.max()),
        "saturated_last_string": float(np.mean(np.abs(np.tanh(c[last])) > 0.99)),
        "c_norm": c_norm,
    }


def train_one(kind: str, options: dict[str, Any], reset: bool, config: ReberConfig, seed: int,
              test: ReberStream, bar: Any = None) -> dict[str, Any]:
    """Train one network for ``config.updates`` updates; evaluate along the way."""
    model = build_model(options, config, seed)
    if config.gradient == "carousel":
        model.rnn.recurrence = CarouselGradient()
    elif config.gradient != "bptt":
        raise ValueError(f"gradient must be 'bptt' or 'carousel', got {config.gradient!r}")
    optimizer = Adam(model.params, model.grads, lr=config.lr)
    rng = np.random.default_rng([seed, 2000])
    feeder = None if reset else StreamFeeder(rng, config.streams)
    state = None
    curve: list[dict[str, float]] = []
    status = "ok"
    with stopwatch() as timing:
        for update in range(1, config.updates + 1):
            optimizer.zero_grad()
            if reset:
                batch, lengths = string_batch(rng, config.streams)
                logits, _ = model.forward(batch.x, lengths=lengths)
                mask = (np.arange(len(batch.x))[:, None] < lengths[None, :])[:, :, None]
                loss, d_logits = bce_with_logits(logits, batch.y, mask)
            else:
                chunk = feeder.next(config.chunk)  # type: ignore[union-attr]
                logits, state = model.forward(chunk.x, state)
                loss, d_logits = bce_with_logits(logits, chunk.y)
            model.backward(d_logits)
            norm = lstmkit.clip_grad_norm(model.grads, config.clip)
            if not (np.isfinite(loss) and np.isfinite(norm)):
                status = f"diverged at update {update}"
                break
            optimizer.step()
            if bar is not None:
                bar.update(1)
            if update % config.eval_every == 0 or update == config.updates:
                m = evaluate(model, test, reset)
                curve.append({"update": update, "train_loss": loss,
                              **{k: v for k, v in m.items() if k != "c_norm"}})
    final = evaluate(model, test, reset)
    return {"model": kind, "label": LABELS.get(kind, kind), "seed": seed, "options": options,
            "reset": reset, "status": status, "seconds": timing["seconds"], "curve": curve,
            **final}


def configure(mode: str, overrides: dict[str, Any]) -> ReberConfig:
    """The preset for ``mode`` with ``overrides`` applied (see ``pick_config``), checked."""
    config = pick_config(PRESETS, mode, overrides)
    unknown = sorted(set(config.models) - set(MODELS))
    if unknown:
        raise ValueError(f"unknown models {unknown}; choose among {sorted(MODELS)}")
    return config


def seed_work(config: ReberConfig) -> int:
    """The progress-bar units (updates) of one seed."""
    return config.updates * len(config.models)


def run_seed(config: ReberConfig, seed: int, index: int = 0,
             bar: Any = None) -> list[dict[str, Any]]:
    """Every network of ``config.models`` trained with one seed (``index``: its place among the
    experiment's seeds, unused here)."""
    test = continual_embedded_reber(np.random.default_rng(TEST_SEED), config.test_strings)
    runs = []
    for kind in config.models:
        if bar is not None:
            bar.set_postfix_str(f"{kind} seed {seed}")
        runs.append(train_one(kind, MODELS[kind], kind.endswith("reset"), config, seed, test,
                              bar))
    return runs


def run(mode: str = "full", seeds: int | None = None, seed: int = 0, out: PathLike | None = None,
        force: bool = False, show_progress: bool = True, **overrides: Any) -> Any:
    """Run the experiment and write its results folder; returns an ``ExperimentResult``."""
    return run_parts(sys.modules[__name__], mode, seeds, seed, out, force, show_progress,
                     **overrides)


def report(config: ReberConfig, mode: str, run_seeds: list[int], runs: list[dict[str, Any]],
           out_dir: Path) -> Any:
    """Write the table, plots, results.json and results.md of ``runs``; an ``ExperimentResult``."""
    headers = ["model", "seed", "long-range symbol right", "strings all steps legal",
               "steps legal", "mean error-free run", "‖c‖ first string -> last string",
               "cells saturated (last string)", "paper"]
    rows = [[r["label"], r["seed"], pct(r["long_range_accuracy"]), pct(r["strings_all_legal"]),
             pct(r["step_accuracy"], 2), f"{r['mean_error_free_run']:.0f}",
             f"{r['c_norm_first_string']:.1f} -> {r['c_norm_last_string']:.1f}",
             pct(r["saturated_last_string"], 0), PAPER[r["model"]]] for r in runs]
    table = markdown_table(headers, rows)
    checks = _checks(runs)
    plots = _plots(out_dir, runs)
    how = ("the paper's truncated gradient (errors back in time only through c)"
           if config.gradient == "carousel" else "full BPTT within each chunk")
    notes = [
        f"LSTM {config.hidden} units, Adam lr {config.lr}, {config.streams} streams, truncated "
        f"BPTT over {config.chunk} steps with the state carried ({how}), gradient clipped at "
        f"global norm {config.clip}, {config.updates:,} updates; test stream {config.test_strings} "
        f"strings (seed {TEST_SEED}), run from a zero state without resets (except the "
        "reset control).",
        "Bar (calibration, 3,000 updates): forget >= 97% long-range and >= 95% strings all "
        "legal; no-forget <= 75% long-range with ‖c‖ growing > 10x over the stream; "
        "reset >= 97%.",
        *checks,
    ]
    data = {"config": config, "mode": mode, "seeds": run_seeds, "paper": PAPER,
            "test_seed": TEST_SEED, "runs": runs, "checks": checks}
    return write_results(NAME, out_dir, TITLE, table, data, notes, plots)


def _checks(runs: list[dict[str, Any]]) -> list[str]:
    lines = []
    for kind in ("forget", "no-forget", "no-forget-reset"):
        mine = [r for r in runs if r["model"] == kind]
        if not mine:
            continue
        if kind == "no-forget":
            ok = [r["long_range_accuracy"] <= 0.75
                  and r["c_norm_last_string"] > 10 * r["c_norm_first_string"] for r in mine]
            bar = "long-range <= 75% and ‖c‖ growing > 10x"
        elif kind == "forget":
            ok = [r["long_range_accuracy"] >= 0.97 and r["strings_all_legal"] >= 0.95
                  for r in mine]
            bar = "long-range >= 97% and strings all legal >= 95%"
        else:
            ok = [r["long_range_accuracy"] >= 0.97 for r in mine]
            bar = "long-range >= 97%"
        lines.append(f"{LABELS[kind]}: {sum(ok)}/{len(mine)} seeds meet the bar ({bar}).")
    return lines


def _plots(out_dir: Path, runs: list[dict[str, Any]]) -> list[Path]:
    lr = {f"{r['label']} #{r['seed']}": ([p["update"] for p in r["curve"]],
                                          [p["long_range_accuracy"] for p in r["curve"]])
          for r in runs}
    legal = {f"{r['label']} #{r['seed']}": ([p["update"] for p in r["curve"]],
                                             [p["strings_all_legal"] for p in r["curve"]])
             for r in runs}
    curves = plot_curves(out_dir / "learning_curves.png", [lr, legal],
                         ["long-range symbol right (test stream)",
                          "strings with every step legal (test stream)"],
                         "update", "fraction", suptitle="Continual embedded Reber grammar")
    norms = {f"{r['label']} #{r['seed']}": (np.arange(len(r["c_norm"])), r["c_norm"])
             for r in runs}
    cell = plot_curves(out_dir / "cell_state_norm.png", [norms],
                       ["‖c_t‖ over the test stream (reset only in the control)"], "step",
                       "‖c_t‖", logy=True)
    return [curves, cell]
