"""The engine: the one seam between the layers and the code that runs a recurrence.

A layer validates, names and shapes its inputs, then calls ``ENGINE.forward`` once per layer
and direction; everything below that call is the engine's::

    plan.py        choose_plan: which implementation runs (the only place that decides), from
                   the cell and all its switches, the dtype, the shape and the thread count
    reference.py   the readable time loop over the cells of ``lstmkit.cells`` (one plan)
    fused.py       the compiled plans' buffers and calls
    kernels/       the compiled (Numba) kernels

The plan that ran is recorded in the cache (``plan_of``) and by the layer
(``RecurrentLayer.last_plans``); a plan can be pinned (``RecurrentLayer.pin_plan``). Every plan
gives the reference's results to floating-point rounding (``tests/engine/``), and the same
plan always gives the same numbers.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lstmkit.engine import fused
from lstmkit.engine.kernels import is_enabled, set_enabled, threads
from lstmkit.engine.plan import (
    Plan,
    Thresholds,
    candidate_plans,
    check_plan,
    choose_plan,
    fused_supports,
    load_thresholds,
    pinned,
)
from lstmkit.engine.reference import ReferenceRecurrence

Array = np.ndarray
State = tuple[Array, ...]

_REFERENCE = ReferenceRecurrence()


class Engine:
    """Runs a cell over a sequence in one direction, on the plan ``choose_plan`` picks (or the
    one pinned). Same interface as ``ReferenceRecurrence``; its caches carry their plan, so
    ``backward`` and ``gate_sequences`` always run the plan the forward pass ran."""

    name = "engine"

    def plan(self, cell: Any, dtype: Any, T: int, B: int, keep: bool,
             rows_of: tuple[Array, Array] | None = None,
             pin: Plan | str | dict[str, Any] | None = None) -> Plan:
        """The plan ``forward`` runs for these arguments (checked: ValueError if a pinned
        plan cannot run them)."""
        V = None if rows_of is None else int(rows_of[1].shape[0])
        chosen = choose_plan(cell, dtype, T, B, keep=keep, threads=threads.usable_threads(),
                             fold_rows=V, enabled=is_enabled(), fast_pool=threads.has_fast_pool(),
                             small_kernels=threads.blas_small_kernels(),
                             thresholds=load_thresholds())
        run = pinned(pin, chosen)
        check_plan(run, cell, dtype, T, B, V)
        return run

    def forward(self, cell: Any, p: dict[str, Array], x: Array, state0: State,
                mask: Array | None, reverse: bool, keep_cache: bool,
                rows_of: tuple[Array, Array] | None = None,
                plan: Plan | str | dict[str, Any] | None = None) -> tuple[Array, State, Any]:
        """x (T, B, D), state0 per cell (each (B, H)), mask (T, B) bool or None.

        ``rows_of = (ids, E)`` promises x = E[ids] (ids (T, B), E (V, D)); a "folded" plan then
        projects from a (G H, V) table and ``backward`` returns dL/dE instead of dL/dx.
        Returns output (T, B, H), the final state and a cache holding the plan that ran (and,
        if ``keep_cache``, what ``backward`` needs).
        """
        T, B, _ = x.shape
        run = self.plan(cell, x.dtype, T, B, keep_cache, rows_of, plan)
        if run.kernel == "reference":
            out, state, ref = _REFERENCE.forward(cell, p, x, state0, mask, reverse, keep_cache)
            return out, state, {"plan": run, "ref": ref}
        out, state, cache = fused.forward(cell, p, x, state0, mask, reverse, keep_cache, run,
                                          rows_of if run.projection == "folded" else None)
        return out, state, {"plan": run} if cache is None else cache

    def backward(self, cell: Any, p: dict[str, Array], cache: Any, d_out: Array,
                 d_state: State, grads: dict[str, Array]) -> tuple[Array, State]:
        """Backpropagation through time of the forward pass that made ``cache``: returns dx
        (T, B, D) (dL/dE (V, D) for a folded plan) and the gradient at the initial state;
        parameter gradients are added into ``grads``."""
        if cache["plan"].kernel == "reference":
            return _REFERENCE.backward(cell, p, cache["ref"], d_out, d_state, grads)
        return fused.backward(cell, p, cache, d_out, d_state, grads)

    def gate_sequences(self, cell: Any, cache: Any) -> dict[str, Array]:
        """Every gate's value (and the LSTM's c) at every step, each (T, B, H)."""
        if cache["plan"].kernel == "reference":
            return _REFERENCE.gate_sequences(cell, cache["ref"])
        return fused.gate_sequences(cell, cache)


def set_num_threads(n: int) -> None:
    """Let the compiled kernels use ``n`` threads (Numba's pool, at most NUMBA_NUM_THREADS),
    and the BLAS they call as many, in every thread of the process (like
    ``torch.set_num_threads``; Numba's own setting is per thread).

    The thread count is part of what a plan is chosen from: the same inputs and thread count
    give the same numbers. PyTorch's OpenMP runtime, if PyTorch is installed, is kept apart
    from the kernels' (see ``kernels.threads.keep_torch_openmp_apart``).
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"the number of threads must be a positive integer, got {n!r}")
    threads.choose_kernel_threads(int(n))


def get_num_threads() -> int:
    """The number of threads the compiled kernels use."""
    return threads.kernel_threads()


def plan_of(cache: Any) -> Plan:
    """The plan that made a forward pass's cache (a custom recurrence's: the reference)."""
    if isinstance(cache, dict) and isinstance(cache.get("plan"), Plan):
        return cache["plan"]
    return Plan("reference")


ENGINE = Engine()

__all__ = ["ENGINE", "Engine", "Plan", "ReferenceRecurrence", "Thresholds", "candidate_plans",
           "check_plan", "choose_plan", "fused_supports", "get_num_threads", "is_enabled",
           "load_thresholds", "plan_of", "set_enabled", "set_num_threads"]
