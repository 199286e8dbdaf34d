"""The GEMMs of ``lstmkit.nn.Linear`` on the kernels' thread pool.

``Linear`` (the decoder of a language model: ``(T*B, H) @ (H, V)`` with V up to thousands) is
three GEMMs per training step. NumPy would run them on its own OpenBLAS thread pool, whose idle
workers keep spinning for about 0.1 s after each call and take the cores away from the
recurrent kernels' threads that run next (measured on 2 cores: a char-LM training step went
from 135 ms to 267 ms). Here the same products run on Numba's pool, the one the recurrent
kernels use: the rows of the result are split into ``parts`` contiguous ranges, each computed
by one single-threaded BLAS call (``lstmkit.engine.kernels.blas.gemm``, SciPy's OpenBLAS).

- ``forward(x2, W, y2)``: ``y2 = x2 @ W.T`` (N, out), split over rows of ``y2``;
- ``input_grad(d2, W, dx2)``: ``dx2 = d2 @ W`` (N, in), split over rows of ``dx2``;
- ``weight_grad(d2, x2, dW)``: ``dW += d2.T @ x2`` (out, in), split over rows of ``dW``.

The readable definition stays in ``Linear`` (NumPy); tests check these against it.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from lstmkit.engine.kernels import threads
from lstmkit.engine.kernels.blas import gemm

_OPTS = {"cache": True, "nogil": True}


def _split_rows(loop):
    def rows(A, B, tb, C, parts):
        """C[r0:r1] = A[r0:r1] @ op(B) for each part's range of rows."""
        m = C.shape[0]
        for p in loop(parts):
            r0 = (m * p) // parts
            r1 = (m * (p + 1)) // parts
            if r1 > r0:
                gemm(False, tb, 1.0, A[r0:r1], B, 0.0, C[r0:r1])

    return rows


def _split_weight_rows(loop):
    def weight_rows(D, X, W, parts):
        """W[r0:r1] += D[:, r0:r1].T @ X for each part's range of rows of W."""
        m = W.shape[0]
        for p in loop(parts):
            r0 = (m * p) // parts
            r1 = (m * (p + 1)) // parts
            if r1 > r0:
                gemm(True, False, 1.0, D[:, r0:r1], X, 1.0, W[r0:r1])

    return weight_rows


_rows = njit(parallel=True, **_OPTS)(_split_rows(prange))
_rows_serial = njit(**_OPTS)(_split_rows(range))
_weight_rows = njit(parallel=True, **_OPTS)(_split_weight_rows(prange))
_weight_rows_serial = njit(**_OPTS)(_split_weight_rows(range))


def supports(*arrays: np.ndarray) -> bool:
    """Whether these operands can take the kernels: one float dtype, 2-D, rows contiguous."""
    dtype = arrays[0].dtype
    return dtype in (np.float32, np.float64) and all(
        a.dtype == dtype and a.ndim == 2 and a.flags.c_contiguous for a in arrays)


def _parts(m: int, n: int, k: int, rows: int) -> int:
    return min(threads.parts_for_flops(2.0 * m * n * k), max(1, rows // 8))


def _run(parallel, serial, parts: int, *args) -> None:
    with threads.blas_single_threaded():
        threads.run_parts(parallel, serial, parts, *args)


def forward(x2: np.ndarray, W: np.ndarray, y2: np.ndarray) -> None:
    """y2 (N, out) = x2 (N, in) @ W.T, W (out, in)."""
    N, out = y2.shape
    _run(_rows, _rows_serial, _parts(N, out, x2.shape[1], N), x2, W, True, y2)


def input_grad(d2: np.ndarray, W: np.ndarray, dx2: np.ndarray) -> None:
    """dx2 (N, in) = d2 (N, out) @ W, W (out, in)."""
    N, n_in = dx2.shape
    _run(_rows, _rows_serial, _parts(N, n_in, d2.shape[1], N), d2, W, False, dx2)


def weight_grad(d2: np.ndarray, x2: np.ndarray, dW: np.ndarray) -> None:
    """dW (out, in) += d2.T @ x2, d2 (N, out), x2 (N, in)."""
    out, n_in = dW.shape
    _run(_weight_rows, _weight_rows_serial, _parts(out, n_in, d2.shape[0], out), d2, x2, dW)
