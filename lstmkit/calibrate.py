"""Measuring the engine's thresholds on the machine in hand (``lstmkit bench --calibrate``).

``lstmkit.engine.plan.choose_plan`` switches between plans at thresholds (``Thresholds``) whose
defaults were measured on one CPU. This module times the alternatives on this one, through the
public API only (a layer with a pinned plan), and writes what it found where ``choose_plan``
reads it (``plan.calibration_path()``, one file per CPU model):

- ``parallel_min_flops``: LSTM training steps of growing H (B = 16) on one thread against all
  of them; the threshold is the flop count of the smallest step from which splitting is faster
  at every larger size measured;
- ``direct_max_floats``: the direct input projection against the panel one, for growing
  D = H (B = 32, the threads' split as chosen); the threshold is the largest part's weight
  count up to which the direct projection is faster at every smaller size measured;
- ``blas_products_min_b``: the batch-inner plan with BLAS's per-step products against the one
  chosen without them, for growing B (D = H = 128); the threshold is the smallest B from which
  BLAS's products are faster at every larger B measured (never, if none).

The other thresholds keep their defaults. Each comparison alternates the two plans in one
process and takes the median of the rounds' time ratios, so that a machine whose speed drifts
affects both alike.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np

import lstmkit
from lstmkit.cells import LSTMCell
from lstmkit.engine import Plan, Thresholds
from lstmkit.engine import plan as engine_plan

# (H values for the split, D = H values for the projection, B values for BLAS's products): the
# full and the quick grid
GRIDS = {
    "full": ((32, 48, 64, 96, 128, 192, 256), (64, 128, 192, 256, 384, 512), (16, 32, 64, 128)),
    "quick": ((32, 64, 128), (64, 256), (32, 128)),
}
_NEVER = 1 << 30


def _ratio(layer: Any, x: np.ndarray, d: np.ndarray, a: dict[str, Any] | Plan,
           b: dict[str, Any] | Plan, rounds: int) -> float:
    """Median over ``rounds`` of time(plan a) / time(plan b), training steps alternated."""
    def step(pin: dict[str, Any] | Plan) -> float:
        layer.pin_plan(pin)
        start = time.perf_counter()
        out, _ = layer(x)
        layer.backward(d)
        return time.perf_counter() - start

    step(a), step(b)  # compile and warm up
    ratios = [step(a) / step(b) for _ in range(rounds)]
    return float(np.median(ratios))


def _first_winning(wins: list[tuple[Any, bool]]) -> Any:
    """The smallest size of (size, won) pairs in growing size from which the alternative won
    at every larger size too; None if it lost at the largest."""
    return next((size for k, (size, _) in enumerate(wins) if all(w for _, w in wins[k:])), None)


def _problem(T: int, B: int, D: int, H: int) -> tuple[Any, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    layer = lstmkit.LSTM(D, H, seed=0)
    return (layer, rng.standard_normal((T, B, D)).astype(np.float32),
            rng.standard_normal((T, B, H)).astype(np.float32))


def calibrate(quick: bool = False, rounds: int = 7, threads: int | None = None,
              echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Measure the thresholds, write them for this CPU model and return the record."""
    from lstmkit.engine.kernels.threads import usable_threads

    n = threads or usable_threads()
    split_grid, direct_grid, blas_grid = GRIDS["quick" if quick else "full"]
    T, G = 20 if quick else 50, 4
    found = Thresholds()
    measured: dict[str, Any] = {"split": [], "direct": [], "blas_products": []}
    if n >= 2:
        wins = []
        for H in split_grid:
            layer, x, d = _problem(T, 16, H, H)
            r = _ratio(layer, x, d, {"kernel": "batch-inner", "parts": n},
                       {"kernel": "batch-inner", "parts": 1}, rounds)
            flops = 2.0 * 16 * G * H * H
            wins.append((flops, r < 1.0))
            measured["split"].append({"H": H, "flops": flops, "split_over_serial": r})
            echo(f"split over {n} threads, H = {H}: {r:.2f}x the serial time")
        first = _first_winning(wins)
        found = dataclasses.replace(found, parallel_min_flops=first if first else 1e18)
    wins = []
    for D in direct_grid:
        layer, x, d = _problem(T, 32, D, D)
        layer(x)
        parts = layer.last_plans["l0"].parts
        r = _ratio(layer, x, d, {"projection": "direct"}, {"projection": "panel"}, rounds)
        size = -(-G * D // parts) * (D + 1 + D)
        wins.append((size, r < 1.0))
        measured["direct"].append({"D": D, "H": D, "parts": parts, "part_floats": size,
                                   "direct_over_panel": r})
        echo(f"direct projection, D = H = {D} ({parts} parts): {r:.2f}x the panel's time")
    last = 0
    for size, win in wins:
        if not win:
            break
        last = size
    found = dataclasses.replace(found, direct_max_floats=int(last))
    wins = []
    for B in blas_grid:
        layer, x, d = _problem(T, B, 128, 128)
        without = engine_plan.choose_plan(
            LSTMCell(128, 128), np.float32, T, B, keep=True, threads=n,
            thresholds=dataclasses.replace(found, blas_products_min_b=_NEVER))
        with_blas = dataclasses.replace(without, projection="panel", backward_panels=False,
                                        blas_products=True)
        r = _ratio(layer, x, d, with_blas, without, rounds)
        wins.append((B, r < 1.0))
        measured["blas_products"].append({"B": B, "D": 128, "H": 128, "without": str(without),
                                          "blas_over_packed": r})
        echo(f"BLAS's per-step products, B = {B}: {r:.2f}x the time of '{without}'")
    found = dataclasses.replace(found, blas_products_min_b=_first_winning(wins) or _NEVER)
    record = {"cpu": engine_plan.cpu_model(), "threads": n, "quick": quick, "rounds": rounds,
              "thresholds": dataclasses.asdict(found), "measured": measured,
              "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    path = engine_plan.calibration_path()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(record, f, indent=2)
    os.replace(tmp, path)
    echo(f"thresholds for {record['cpu']} written to {path}: "
         f"parallel_min_flops {found.parallel_min_flops:.3g}, "
         f"direct_max_floats {found.direct_max_floats}, "
         f"blas_products_min_b {found.blas_products_min_b}")
    return record
