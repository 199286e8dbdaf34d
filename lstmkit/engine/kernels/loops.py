"""Tiny copy/fill loops for the kernels (explicit loops compile much faster in Numba than the
equivalent array-expression assignments, and run as fast)."""

from __future__ import annotations

from numba import njit

from lstmkit.engine.kernels.gates import flush

_OPTS = {"cache": True, "error_model": "numpy", "nogil": True}


@njit(**_OPTS)
def copy1(dst, src):
    for j in range(dst.shape[0]):
        dst[j] = src[j]


@njit(**_OPTS)
def copy2(dst, src):
    for i in range(dst.shape[0]):
        for j in range(dst.shape[1]):
            dst[i, j] = src[i, j]


@njit(**_OPTS)
def add1(dst, src):
    for j in range(dst.shape[0]):
        dst[j] += src[j]


@njit(**_OPTS)
def fill1(dst, value):
    for j in range(dst.shape[0]):
        dst[j] = value


@njit(**_OPTS)
def fill_rows(dst, row):
    """Every row of the 2-D dst = row."""
    for i in range(dst.shape[0]):
        for j in range(dst.shape[1]):
            dst[i, j] = row[j]


@njit(**_OPTS)
def add_rows(acc, src):
    """acc (n,) += the sum of the rows of src (m, n)."""
    for i in range(src.shape[0]):
        for j in range(src.shape[1]):
            acc[j] += src[i, j]


@njit(**_OPTS)
def state_before(s, t, reverse, has_mask, saved, initial, states):
    """The cell state entering processing step s (time index t): ``saved[t]`` when a mask
    kept a copy of every step's incoming state, ``initial`` for the first step, else the state
    computed by the previous step, ``states[t - 1]`` (``states[t + 1]`` in reverse)."""
    if has_mask:
        return saved[t]
    if s == 0:
        return initial
    return states[t + 1 if reverse else t - 1]


@njit(**_OPTS)
def flush_all(a):
    """Zero the subnormal entries of a contiguous 1-D view (see ``gates.flush``)."""
    for j in range(a.shape[0]):
        a[j] = flush(a[j])
