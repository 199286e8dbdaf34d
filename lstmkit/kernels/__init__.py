"""Fused, compiled recurrences: the fast path of every layer (LSTM, GRU, RNN).

``FUSED`` implements the interface of ``lstmkit.recurrence.ReferenceRecurrence`` (forward,
backward, gate_sequences) with the same results to floating-point rounding, much faster:

- the input projection of all time steps is one GEMM, ``X W_ih^T + b``;
- each step is one GEMM for the recurrence (accumulated in place into the pre-activations)
  and one fused, vectorised Numba pass for the gates (``lstmkit.kernels.gates``);
- the whole time loop runs in one compiled function: no Python per step;
- backward writes every step's gate gradients into one (T, B, G*H) buffer and computes the
  weight gradients and dX with three large GEMMs over all steps, not T small ones;
- under ``lstmkit.no_grad()`` nothing is kept and the input projection runs in chunks.

Every variant switch of the LSTM cell (peepholes, removed gates, CIFG), padded sequences
(masks), the reverse direction, float32 and float64 take this path. The kernels are compiled
on first use and cached on disk (``cache=True``), so only the first run on a machine pays the
compilation (see ``lstmkit bench``, which reports it).

Switches: ``LSTM(..., fast=False)`` runs one layer on the reference; ``set_enabled(False)``
(or the environment variable ``LSTMKIT_KERNELS=0`` at import) runs every layer on it.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from lstmkit.recurrence import ReferenceRecurrence

Array = np.ndarray
State = tuple[Array, ...]

_REFERENCE = ReferenceRecurrence()


def _drop_stale_compiled_kernels() -> None:
    """Delete Numba's cached machine code when any kernel source changed.

    Numba checks only the source file of each cached function itself; a kernel compiled with
    an older ``gates.py`` (inlined into it) would otherwise be loaded as is. A digest of all
    the kernel modules is kept next to the cache, and the cache is dropped when it differs.
    """
    import glob
    import hashlib

    here = os.path.dirname(os.path.abspath(__file__))
    try:
        digest = hashlib.sha256()
        for path in sorted(glob.glob(os.path.join(here, "*.py"))):
            with open(path, "rb") as f:
                digest.update(os.path.basename(path).encode() + b"\0" + f.read())
        cache_dir = os.environ.get("NUMBA_CACHE_DIR")
        if cache_dir:  # Numba mirrors the source directory under it
            cache_dir = os.path.join(cache_dir, os.path.splitdrive(here)[1].lstrip(os.sep))
        else:
            cache_dir = os.path.join(here, "__pycache__")
        stamp = os.path.join(cache_dir, "lstmkit-kernels.sha256")
        try:
            with open(stamp) as f:
                if f.read().strip() == digest.hexdigest():
                    return
        except OSError:
            pass
        for path in glob.glob(os.path.join(cache_dir, "*.nb[ic]")):
            os.remove(path)
        os.makedirs(cache_dir, exist_ok=True)
        with open(stamp, "w") as f:
            f.write(digest.hexdigest())
    except OSError:  # a read-only installation: nothing to do
        pass


_drop_stale_compiled_kernels()
_enabled = os.environ.get("LSTMKIT_KERNELS", "1").strip().lower() not in ("0", "false", "no", "off")


def set_enabled(enabled: bool) -> None:
    """Turn the fused kernels on or off for every layer (``fast=True`` layers included)."""
    global _enabled
    _enabled = bool(enabled)


def is_enabled() -> bool:
    """Whether layers built with ``fast=True`` (the default) use the fused kernels."""
    return _enabled


def fast_path(name: str, *arrays: Array | None) -> Any:
    """The kernel module ``lstmkit.kernels.<name>`` (``linear``, ``softmax``, ``adam``,
    ``norms``) when the kernels are on and its ``supports(*arrays)`` accepts these operands,
    else None: the caller then runs its readable NumPy definition."""
    if not _enabled:
        return None
    import importlib

    module = importlib.import_module(f"lstmkit.kernels.{name}")
    return module if module.supports(*arrays) else None


class FusedRecurrence:
    """The compiled time loops, with the reference as fallback.

    Falls back to the reference when the kernels are switched off (``set_enabled``) or for a
    cell or dtype they do not cover; the cache remembers which implementation produced it, so
    backward and gate_sequences always match the forward pass that made it.
    """

    name = "fused"

    def _fast(self, cell: Any, dtype: np.dtype) -> bool:
        if not _enabled:
            return False
        from lstmkit.kernels import recurrence

        return recurrence.supports(cell, dtype)

    def can_fold(self, cell: Any, dtype: np.dtype, T: int, B: int, V: int) -> bool:
        """Whether ``forward(..., rows_of=(ids, E))`` folds an embedding lookup x = E[ids]
        (E: (V, D)) into the input projection (``recurrence.can_fold``)."""
        if not self._fast(cell, dtype):
            return False
        from lstmkit.kernels import recurrence

        return recurrence.can_fold(cell, dtype, T, B, V)

    def forward(self, cell: Any, p: dict[str, Array], x: Array, state0: State,
                mask: Array | None, reverse: bool, keep_cache: bool,
                rows_of: tuple[Array, Array] | None = None) -> tuple[Array, State, Any]:
        if not self._fast(cell, x.dtype):
            out, state, cache = _REFERENCE.forward(cell, p, x, state0, mask, reverse, keep_cache)
            return out, state, (None if cache is None else {"kind": "reference", "ref": cache})
        from lstmkit.kernels import recurrence

        return recurrence.forward(cell, p, x, state0, mask, reverse, keep_cache, rows_of)

    def backward(self, cell: Any, p: dict[str, Array], cache: Any, d_out: Array,
                 d_state: State, grads: dict[str, Array]) -> tuple[Array, State]:
        if cache["kind"] == "reference":
            return _REFERENCE.backward(cell, p, cache["ref"], d_out, d_state, grads)
        from lstmkit.kernels import recurrence

        return recurrence.backward(cell, p, cache, d_out, d_state, grads)

    def gate_sequences(self, cell: Any, cache: Any) -> dict[str, Array]:
        if cache["kind"] == "reference":
            return _REFERENCE.gate_sequences(cell, cache["ref"])
        from lstmkit.kernels import recurrence

        return recurrence.gate_sequences(cell, cache)


FUSED = FusedRecurrence()


def select_recurrence(fast: bool = True) -> Any:
    """The recurrence a layer runs: ``FUSED`` (which honours ``set_enabled``) or the reference."""
    return FUSED if fast else _REFERENCE


select = select_recurrence

__all__ = ["FUSED", "FusedRecurrence", "ReferenceRecurrence", "fast_path", "is_enabled", "select",
           "select_recurrence", "set_enabled"]
