"""The classic LSTM experiments, each a function and a command (``lstmkit experiment NAME``).

==============  =====================================================================
name            what it reproduces
==============  =====================================================================
adding          Hochreiter & Schmidhuber 1997, Exp. 4: simple RNN vs LSTM, T = 100
clipping        Pascanu, Mikolov & Bengio 2013: exploding gradients and clipping
forget-gate     Gers, Schmidhuber & Cummins 2000: continual embedded Reber grammar
peepholes       Gers, Schraudolph & Schmidhuber 2002: timing with and without peepholes
temporal-order  Hochreiter & Schmidhuber 1997, Exp. 6a: the temporal order problem
variants        Greff et al. 2017: V, NIG, NFG, NOG, NP, CIFG on one task
==============  =====================================================================

Each module has ``run(mode="full"|"quick"|"tiny", seeds=None, seed=0, out=None, force=False,
show_progress=True, **overrides)``, which writes ``results.json``, ``results.md`` and PNGs into
a results folder (see :mod:`lstmkit.experiments.common`) and returns an ``ExperimentResult``.
``run`` is made of the parts a sweep (:mod:`lstmkit.experiments.sweep`) runs separately:
``configure(mode, overrides)`` (the settings), ``run_seed(config, seed, index)`` (every run
of one seed, each a dict of what it measured), ``report(config, mode, seeds, runs, out_dir)``
(tables, plots, results files) and ``MEASURES`` (which numbers a sweep summarises).
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

from lstmkit.experiments import (
    adding,
    clipping,
    forget_gate,
    peepholes,
    temporal_order,
    variants,
)
from lstmkit.experiments.common import ExperimentResult

MODULES: dict[str, ModuleType] = {
    "adding": adding,
    "clipping": clipping,
    "forget-gate": forget_gate,
    "peepholes": peepholes,
    "temporal-order": temporal_order,
    "variants": variants,
}

EXPERIMENTS: dict[str, Callable[..., ExperimentResult]] = {
    name: module.run for name, module in MODULES.items()
}

TITLES: dict[str, str] = {name: module.TITLE for name, module in MODULES.items()}


def run_experiment(name: str, **kwargs: Any) -> ExperimentResult:
    """Run the experiment called ``name`` (see ``EXPERIMENTS``) with ``run``'s arguments."""
    if name not in EXPERIMENTS:
        raise KeyError(f"unknown experiment {name!r}; choose among {sorted(EXPERIMENTS)}")
    return EXPERIMENTS[name](**kwargs)


__all__ = ["EXPERIMENTS", "MODULES", "TITLES", "ExperimentResult", "run_experiment"]
