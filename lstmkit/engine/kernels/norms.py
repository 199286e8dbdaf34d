"""The sum of squares of an array in float64, in one compiled pass: the fast path of the
2-norm in ``lstmkit.clip.total_norm``.

The readable definition converts each gradient to a float64 copy and calls
``np.linalg.norm`` (a BLAS dot product). Here the elements are read once, in their own dtype,
squared and summed in float64:

- the array is cut into blocks of ``BLOCK`` elements; each block's sum is one vectorised loop
  (several partial sums at once);
- the block sums are written to an array and added up at the end, in the same order whatever
  the number of threads, so the result does not depend on how the blocks were split over
  threads (``parts`` contiguous ranges of blocks, one per thread, ``prange``).

A float32 element's square is exact in float64 and can neither overflow nor underflow; float64
elements beyond 1e154 overflow to infinity, as in ``np.linalg.norm`` (``x.dot(x)``, unscaled).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from lstmkit.engine.kernels import threads

_OPTS = {"cache": True, "nogil": True}
# elements per block: a block's sum is one vectorised loop, the blocks' sums a float64 array
BLOCK = 4096


@njit(fastmath={"reassoc"}, error_model="numpy")
def _block_sum_of_squares(block):
    """sum_i block_i**2 of a (<= BLOCK,) array, in float64; reassociation lets LLVM keep
    several partial sums (vectorise)."""
    s = 0.0
    for i in range(block.shape[0]):
        x = np.float64(block[i])
        s += x * x
    return s


def _split_blocks(loop):
    def block_sums(x, sums, parts):
        """sums[b] = the sum of squares of block b of x (n,), for ``parts`` ranges of blocks."""
        n_blocks = sums.shape[0]
        for p in loop(parts):
            b0 = (n_blocks * p) // parts
            b1 = (n_blocks * (p + 1)) // parts
            for b in range(b0, b1):
                sums[b] = _block_sum_of_squares(x[b * BLOCK:(b + 1) * BLOCK])

    return block_sums


_block_sums = njit(parallel=True, **_OPTS)(_split_blocks(prange))
_block_sums_serial = njit(**_OPTS)(_split_blocks(range))


def supports(*arrays: np.ndarray) -> bool:
    """Whether the arrays (any shapes) can take the kernel: float32/float64, C-contiguous."""
    return all(a.dtype in (np.float32, np.float64) and a.flags.c_contiguous for a in arrays)


def sum_of_squares(a: np.ndarray) -> float:
    """``sum(a**2)`` over all elements of ``a`` (any shape, float32 or float64, C-contiguous:
    ``supports``), computed in float64; the same value for any number of threads."""
    x = a.reshape(-1)
    n = x.shape[0]
    if n == 0:
        return 0.0
    sums = np.empty((n + BLOCK - 1) // BLOCK, dtype=np.float64)  # (blocks,)
    parts = min(threads.parts_for_flops(2.0 * n), sums.shape[0])
    threads.run_parts(_block_sums, _block_sums_serial, parts, x, sums)
    return float(sums.sum())
