"""The step-by-step work sharing of the fused kernels (``lstmkit.engine.kernels.sync``): every part
of every step is done exactly once, and no part of step s starts before all parts of step
s - 1 are done, whether the workers run together, one after the other, or fewer threads than
parts run them."""

from __future__ import annotations

import numba
import numpy as np
import pytest
from numba import njit, prange

from lstmkit.engine.kernels import sync


@njit(cache=False)
def _worker(w, steps, parts, out, done_count, claimed, finished):
    """A recurrence over steps: part p of step s reads every part of step s - 1."""
    for s in range(1, steps):
        for q in range(parts):
            p = sync.claim(claimed, s, w, q, parts)
            if p >= 0:
                total = 0.0
                for r in range(parts):
                    total += out[s - 1, r]
                acc = 0.0
                for i in range(200 * (p + 1)):  # uneven work, so the workers drift apart
                    acc += 1e-9 * i
                out[s, p] = 0.5 * total + p + 1.0 + acc * 0.0
                done_count[s, p] += 1
                sync.finish(finished, s)
        sync.wait(finished, s, parts)


@njit(parallel=True, cache=False)
def _run_parallel(steps, parts, out, done_count, claimed, finished):
    for w in prange(parts):
        _worker(w, steps, parts, out, done_count, claimed, finished)


@njit(cache=False)
def _run_serial(steps, parts, out, done_count, claimed, finished):
    for w in range(parts):  # worker 0 runs everything (taking the others' parts), then the rest
        _worker(w, steps, parts, out, done_count, claimed, finished)


def _expected(steps, parts):
    out = np.zeros((steps, parts))
    out[0] = 1.0
    for s in range(1, steps):
        out[s] = 0.5 * out[s - 1].sum() + np.arange(parts) + 1.0
    return out


@pytest.mark.parametrize("parts", [1, 2, 3])
@pytest.mark.parametrize("mode", ["parallel", "parallel-1-thread", "serial"])
def test_every_part_once_and_steps_in_order(parts, mode):
    steps = 400
    out = np.zeros((steps, parts))
    out[0] = 1.0
    done_count = np.zeros((steps, parts), dtype=np.int64)
    claimed = np.zeros(steps * parts, dtype=np.int64)
    finished = np.zeros(steps, dtype=np.int64)
    if mode == "serial":
        _run_serial(steps, parts, out, done_count, claimed, finished)
    else:
        threads = numba.get_num_threads()
        try:
            if mode == "parallel-1-thread":
                numba.set_num_threads(1)
            _run_parallel(steps, parts, out, done_count, claimed, finished)
        finally:
            numba.set_num_threads(threads)
    np.testing.assert_array_equal(done_count[1:], 1)
    np.testing.assert_array_equal(finished[1:], parts)
    np.testing.assert_allclose(out, _expected(steps, parts), rtol=1e-12)
