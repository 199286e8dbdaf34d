"""Running a cell over a sequence in one direction: the reference time loop.

This is backpropagation through time written plainly: a Python loop over the steps calling the
cell's readable ``forward``, then the same steps in reverse calling its ``backward``. Padded
batches are handled with a mask: where ``mask[t, b]`` is False, sequence b has ended (or, in the
reverse direction, not yet begun), its state passes through unchanged and its output is zero,
so each sequence's final state is the one at its own last step, as with PyTorch's packed
sequences. The fused kernels in ``lstmkit.engine.kernels`` implement the same interface faster.

A cell may name entries of ``p`` that hold one array per step, stacked (T, ...) (its
``step_masks``, e.g. the LSTM's zoneout masks): the loop hands the cell step t's slice of each.
"""

from __future__ import annotations

from typing import Any

import numpy as np

Array = np.ndarray
State = tuple[Array, ...]


class ReferenceRecurrence:
    """The readable time loop (any cell of ``lstmkit.cells``)."""

    name = "reference"

    def forward(
        self,
        cell: Any,
        p: dict[str, Array],
        x: Array,
        state0: State,
        mask: Array | None,
        reverse: bool,
        keep_cache: bool,
        rows_of: Any = None,
        plan: Any = None,
    ) -> tuple[Array, State, Any]:
        """x (T, B, D), state0 per cell (each (B, H)), mask (T, B) bool or None.

        ``rows_of`` and ``plan`` are the engine's arguments (``lstmkit.engine.Engine``): the
        readable loop runs x as given, and is itself the plan "reference".

        Returns output (T, B, R) (h of each step, zero where masked; R = ``cell.output_size``
        if the cell has one, else H), the final state, and a cache for ``backward`` (None
        unless ``keep_cache``).
        """
        T = x.shape[0]
        steps = range(T - 1, -1, -1) if reverse else range(T)
        width = getattr(cell, "output_size", cell.hidden_size)
        out = np.zeros((T, x.shape[1], width), dtype=x.dtype)
        state = state0
        caches: dict[int, dict[str, Array]] = {}
        per_step = [name for name in getattr(cell, "step_masks", ()) if name in p]
        for t in steps:
            p_t = {**p, **{name: p[name][t] for name in per_step}} if per_step else p
            new_state, step_cache = cell.forward(x[t], state, p_t)
            if mask is None:
                state = new_state
                out[t] = new_state[0]
            else:
                m = mask[t][:, None]
                state = tuple(np.where(m, new, old) for new, old in zip(new_state, state))
                out[t] = np.where(m, new_state[0], 0.0)
            if keep_cache:
                caches[t] = step_cache
        cache = {"steps": list(steps), "caches": caches, "mask": mask} if keep_cache else None
        return out, state, cache

    def backward(
        self,
        cell: Any,
        p: dict[str, Array],
        cache: Any,
        d_out: Array,
        d_state: State,
        grads: dict[str, Array],
    ) -> tuple[Array, State]:
        """d_out (T, B, R), d_state = gradient at the final state -> (dx (T, B, D), d_state0).

        The cell's backward reads the step's masks from its cache; ``p`` is the forward's."""
        mask = cache["mask"]
        dx: Array | None = None
        for t in reversed(cache["steps"]):
            step_cache = cache["caches"][t]
            d_new = (d_state[0] + d_out[t],) + tuple(d_state[1:])
            if mask is not None:
                m = mask[t][:, None]
                passed = tuple(np.where(m, 0.0, d) for d in d_state)
                d_new = tuple(np.where(m, d, 0.0) for d in d_new)
            dx_t, d_prev = cell.backward(d_new, step_cache, p, grads)
            if mask is not None:
                d_prev = tuple(a + b for a, b in zip(d_prev, passed))
            if dx is None:
                dx = np.zeros((d_out.shape[0],) + dx_t.shape, dtype=dx_t.dtype)
            dx[t] = dx_t
            d_state = d_prev
        assert dx is not None
        return dx, d_state

    def gate_sequences(self, cell: Any, cache: Any) -> dict[str, Array]:
        """The value of every gate (and c, for the LSTM) at every step: name -> (T, B, H)."""
        names = [*getattr(cell, "all_gates", cell.gates)]
        if "c" in cell.state_names:
            names.append("c")
        first = cache["caches"][cache["steps"][0]]
        T = len(cache["steps"])
        result = {}
        for name in names:
            seq = np.empty((T,) + first[name].shape, dtype=first[name].dtype)
            for t in cache["steps"]:
                seq[t] = cache["caches"][t][name]
            result[name] = seq
        return result
