"""A small Greff et al. (2017) ablation: which parts of the LSTM matter, on one task.

Greff, Srivastava, Koutník, Steunebrink & Schmidhuber, "LSTM: A Search Space Odyssey" (IEEE
TNNLS 2017) compared the vanilla LSTM (input, forget and output gates, peepholes) with eight
variants on speech, handwriting and music. All eight are options of ``lstmkit.LSTM``:

======  ==========================================  =====================================
name    what changes                                options
======  ==========================================  =====================================
V       vanilla: all gates and peepholes            ``peepholes=True``
NIG     no input gate (i = 1)                       ``input_gate=False``
NFG     no forget gate (f = 1)                      ``forget_gate=False``
NOG     no output gate (o = 1)                      ``output_gate=False``
NIAF    no input activation (g = z_g)               ``activation="identity"``
NOAF    no output activation (h = o * c)            ``output_activation="identity"``
NP      no peepholes                                ``peepholes=False``
CIFG    coupled input and forget gate (f = 1 - i)   ``coupled_input_forget=True``
FGR     full gate recurrence (gates see i, f, o     ``full_gate_recurrence=True``
        of the previous step)
======  ==========================================  =====================================

FGR runs on the reference plan (full gate recurrence is not compiled), so it takes several
times longer per update than the others; NIAF and NOAF (identity functions) are compiled.

The task is the continual embedded Reber grammar of the ``forget-gate`` experiment (same
training and test stream, see ``lstmkit.experiments.forget_gate``): one endless stream, so the
forget gate's job is real. Every variant is trained with every seed; the table ranks them by
the fraction of test strings predicted without a single error (mean ± std over seeds), and
compares each with V by Welch's t-test on that fraction, as Greff et al. compared theirs
(p < 0.05: significantly better or worse).

Greff et al. found the forget gate (and the output activation) the most critical parts, and that
coupling the gates (CIFG) or removing the peepholes (NP) did not significantly hurt.
"""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lstmkit.experiments.common import (
    Measures,
    PathLike,
    markdown_table,
    mean_std,
    pick_config,
    plot_curves,
    run_parts,
    write_results,
)
from lstmkit.experiments.forget_gate import TEST_SEED, ReberConfig, train_one
from lstmkit.tasks import continual_embedded_reber

NAME = "variants"
TITLE = "LSTM variants on the continual embedded Reber grammar (after Greff et al. 2017)"

VARIANTS: dict[str, dict[str, Any]] = {
    "V": {"peepholes": True, "forget_bias": 1.0},
    "NIG": {"peepholes": True, "input_gate": False, "forget_bias": 1.0},
    "NFG": {"peepholes": True, "forget_gate": False},
    "NOG": {"peepholes": True, "output_gate": False, "forget_bias": 1.0},
    "NP": {"peepholes": False, "forget_bias": 1.0},
    "CIFG": {"peepholes": True, "coupled_input_forget": True, "forget_bias": 1.0},
    "NIAF": {"peepholes": True, "activation": "identity", "output_activation": "tanh",
             "forget_bias": 1.0},
    "NOAF": {"peepholes": True, "output_activation": "identity", "forget_bias": 1.0},
    "FGR": {"peepholes": True, "full_gate_recurrence": True, "forget_bias": 1.0},
}
MEASURES = Measures(group=("model",),
                    metrics=("strings_all_legal", "long_range_accuracy", "step_accuracy",
                             "c_norm_last_string"),
                    curve=("update", "strings_all_legal"))
PAPER = {
    "V": "reference",
    "NIG": "significantly worse on at least one data set",
    "NFG": "significantly worse on all three: with the output activation, the most critical part",
    "NOG": "significantly worse on at least one data set",
    "NP": "no significant difference",
    "CIFG": "no significant difference",
    "NIAF": "significantly worse on at least one data set",
    "NOAF": "significantly worse on all three: with the forget gate, the most critical part",
    "FGR": "no significant difference on speech and handwriting, worse on music; "
           "many more weights",
}


@dataclass(frozen=True)
class VariantsConfig:
    """Settings (``--set NAME=VALUE``): the ``forget-gate`` training settings and the variants."""

    hidden: int = 16
    streams: int = 16
    chunk: int = 30
    lr: float = 1e-2
    clip: float = 1.0
    updates: int = 3000
    eval_every: int = 500
    test_strings: int = 200
    seeds: int = 3
    variants: tuple[str, ...] = ("V", "NIG", "NFG", "NOG", "NIAF", "NOAF", "NP", "CIFG", "FGR")

    def reber(self) -> ReberConfig:
        """The training settings as the forget-gate experiment takes them."""
        return ReberConfig(hidden=self.hidden, streams=self.streams, chunk=self.chunk,
                           lr=self.lr, clip=self.clip, updates=self.updates,
                           eval_every=self.eval_every, test_strings=self.test_strings)


PRESETS = {
    "full": VariantsConfig(),
    "quick": VariantsConfig(updates=600, eval_every=200, seeds=1),
    "tiny": VariantsConfig(hidden=6, streams=4, chunk=10, updates=8, eval_every=4,
                           test_strings=10, seeds=1,
                           variants=("V", "NFG", "CIFG", "NIAF", "NOAF", "FGR")),
}


def configure(mode: str, overrides: dict[str, Any]) -> VariantsConfig:
    """The preset for ``mode`` with ``overrides`` applied (see ``pick_config``), checked."""
    config = pick_config(PRESETS, mode, overrides)
    unknown = sorted(set(config.variants) - set(VARIANTS))
    if unknown:
        raise ValueError(f"unknown variants {unknown}; choose among {list(VARIANTS)}")
    return config


def seed_work(config: VariantsConfig) -> int:
    """The progress-bar units (updates) of one seed."""
    return config.updates * len(config.variants)


def run_seed(config: VariantsConfig, seed: int, index: int = 0,
             bar: Any = None) -> list[dict[str, Any]]:
    """Every variant of ``config.variants`` trained with one seed (``index``: its place among
    the experiment's seeds, unused here)."""
    test = continual_embedded_reber(np.random.default_rng(TEST_SEED), config.test_strings)
    runs = []
    for name in config.variants:
        if bar is not None:
            bar.set_postfix_str(f"{name} seed {seed}")
        result = train_one(name, VARIANTS[name], False, config.reber(), seed, test, bar)
        result["label"] = name
        runs.append(result)
    return runs


def run(mode: str = "full", seeds: int | None = None, seed: int = 0, out: PathLike | None = None,
        force: bool = False, show_progress: bool = True, **overrides: Any) -> Any:
    """Run the experiment and write its results folder; returns an ``ExperimentResult``."""
    return run_parts(sys.modules[__name__], mode, seeds, seed, out, force, show_progress,
                     **overrides)


def report(config: VariantsConfig, mode: str, run_seeds: list[int],
           runs: list[dict[str, Any]], out_dir: Path) -> Any:
    """Write the tables, plots, results.json and results.md of ``runs``; an
    ``ExperimentResult``."""

    def scores(name: str, key: str) -> list[float]:
        return [r[key] for r in runs if r["model"] == name]

    ranked = sorted(config.variants,
                    key=lambda n: (-np.mean(scores(n, "strings_all_legal")),
                                   -np.mean(scores(n, "long_range_accuracy"))))
    headers = ["rank", "variant", "strings all legal", "long-range symbol right",
               "steps legal", "final ‖c‖ (last string)", "vs V: Welch's t-test p",
               "Greff et al. 2017"]
    rows = [[k + 1, name, mean_std(scores(name, "strings_all_legal"), ".3f"),
             mean_std(scores(name, "long_range_accuracy"), ".3f"),
             mean_std(scores(name, "step_accuracy"), ".4f"),
             mean_std(scores(name, "c_norm_last_string"), ".1f"),
             _versus_vanilla(scores(name, "strings_all_legal"), scores("V", "strings_all_legal"))
             if name != "V" else "-", PAPER[name]]
            for k, name in enumerate(ranked)]
    table = markdown_table(headers, rows)
    per_seed = markdown_table(
        ["variant", "seed", "strings all legal", "long-range", "steps legal", "status"],
        [[r["model"], r["seed"], f"{r['strings_all_legal']:.3f}",
          f"{r['long_range_accuracy']:.3f}", f"{r['step_accuracy']:.4f}", r["status"]]
         for r in runs])
    plots = [plot_curves(
        out_dir / "learning_curves.png",
        [{f"{r['model']} #{r['seed']}": ([p["update"] for p in r["curve"]],
                                         [p["strings_all_legal"] for p in r["curve"]])
          for r in runs}],
        ["test strings with every step legal"], "update", "fraction",
        suptitle="LSTM variants, continual embedded Reber grammar",
    )]
    notes = [
        f"Task and training as the forget-gate experiment: LSTM {config.hidden} units, Adam lr "
        f"{config.lr}, {config.streams} streams, truncated BPTT over {config.chunk} steps, "
        f"{config.updates:,} updates, seeds {', '.join(map(str, run_seeds))}; test stream of "
        f"{config.test_strings} strings (seed {TEST_SEED}). Values are mean ± std over seeds.",
        "Greff et al.'s tasks were speech, handwriting and polyphonic music, not this grammar: "
        "their column is what they found there, for comparison of the ranking only.",
    ]
    data = {"config": config, "mode": mode, "seeds": run_seeds, "paper": PAPER,
            "ranking": ranked, "runs": runs}
    return write_results(NAME, out_dir, TITLE, table, data, notes, plots,
                         extra_tables=[("Per seed", per_seed)])


def _versus_vanilla(mine: list[float], vanilla: list[float]) -> str:
    """Welch's t-test of a variant's scores against V's, as Greff et al. compared variants:
    the p-value, and "worse" or "better" when p < 0.05; "-" with fewer than 2 seeds each."""
    if len(mine) < 2 or len(vanilla) < 2:
        return "-"
    from scipy.stats import ttest_ind

    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # identical scores: p is NaN, shown "-"
        p = float(ttest_ind(mine, vanilla, equal_var=False).pvalue)
    if not np.isfinite(p):
        return "-"
    if p >= 0.05:
        return f"{p:.2g}"
    return f"{p:.2g} ({'worse' if np.mean(mine) < np.mean(vanilla) else 'better'})"
