"""Fused softmax cross-entropy over the rows of an (N, V) array: the fast path of
``lstmkit.nn.softmax_cross_entropy``.

The readable definition (``lstmkit.nn.loss``) makes about ten passes over the (N, V) logits
with NumPy (max, subtract, exp, sum, scale, ...), each a full trip through memory. Here each
row is handled on its own while it sits in the L1/L2 cache, in place on the row that receives
the gradient (``out[n]``, a copy of the logits row unless ``out`` is the logits themselves; a
scratch row when no gradient is wanted):

1. ``m = max_v z_v`` (NaN if the row holds a NaN, as ``np.max``);
2. ``row_v = exp(z_v - m)`` and ``s = sum_v row_v`` (summed in the row's dtype over blocks of
   ``_BLOCK`` elements, which LLVM vectorises, and in float64 across blocks); the row loss
   ``log(s) - (z_t - m)`` in float64;
3. with the gradient: ``row *= w / s``, then ``row_t -= w``, with ``w`` the weight of a counted
   row (``1 / count`` for the mean, 1 for a sum); an ignored row gets zeros and loss 0.

Every path (gradient or not, into ``out`` or in place, serial or split over threads) runs the
same passes on the same values, so the loss is the same to the bit on all of them. float32
uses the vectorisable ``exp`` of ``lstmkit.engine.kernels.gates`` (``exp32``; float64:
``math.exp``).

Rows are split into ``parts`` contiguous ranges, one per thread (``prange``), when the array
is large enough (``threads.parts_for_flops``); else one serial call.
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

from lstmkit.engine.kernels import threads
from lstmkit.engine.kernels.gates import exp, like

_OPTS = {"cache": True, "nogil": True}
# reassociation lets LLVM vectorise the block sums (several partial sums at once); no
# "nnan"/"ninf": NaN and infinite logits reach the loss as in the NumPy definition
_ROW_OPTS = {"fastmath": {"reassoc"}, "error_model": "numpy"}
# the exponentials of a row are summed in its dtype over blocks of this many elements (LLVM
# vectorises such a sum), and the block sums in float64
_BLOCK = 256
# rough cost of one element (max, two exponentials, scaling), for the serial/parallel choice
_FLOPS_PER_ELEMENT = 40.0


@intrinsic
def _maximum(typingctx, a, b):
    """IEEE ``maximum(a, b)`` of two float32 or float64 scalars: NaN if either is NaN, as
    ``np.max``. (LLVM's ``llvm.maximum``: unlike a compare and select, LLVM vectorises a max
    reduction over it.)"""
    if a != b or a not in (types.float32, types.float64):
        return None

    def codegen(context, builder, signature, args):
        ty = args[0].type
        fn = builder.module.declare_intrinsic("llvm.maximum", [ty], ir.FunctionType(ty, [ty, ty]))
        return builder.call(fn, args)

    return a(a, b), codegen


@njit(**_ROW_OPTS)
def _row_max(row):
    """max of the row (V,), V >= 1; NaN if the row holds a NaN."""
    m = row[0]
    for v in range(1, row.shape[0]):
        m = _maximum(m, row[v])
    return m


@njit(**_ROW_OPTS)
def _block_exp_sum(block, m):
    """block (<= _BLOCK,) <- exp(block - m), in place; returns the block's sum (its dtype)."""
    s = like(m, 0.0)
    for v in range(block.shape[0]):
        e = exp(block[v] - m)
        block[v] = e
        s += e
    return s


@njit(**_ROW_OPTS)
def _row_exp_sum(row, m):
    """row (V,) <- exp(row - m), in place; returns sum_v exp(row_v - m) in float64, summed in
    the row's dtype over blocks of ``_BLOCK`` elements (vectorised) and in float64 across them."""
    s = 0.0
    for b0 in range(0, row.shape[0], _BLOCK):
        s += np.float64(_block_exp_sum(row[b0:b0 + _BLOCK], m))
    return s


@njit(**_ROW_OPTS)
def _row_scale(row, scale):
    """row (V,) *= scale, in place."""
    for v in range(row.shape[0]):
        row[v] *= scale


@njit(**_ROW_OPTS)
def _row_copy(src, dst):
    """dst (V,) = src (V,), not overlapping."""
    for v in range(src.shape[0]):
        dst[v] = src[v]


def _split_rows(loop):
    def rows(z, targets, weight, out, inplace, grad, losses, parts):
        """Row losses into losses (N,) float64 and, if grad, the gradient into out (N, V).

        z (N, V) logits; targets (N,) int64 classes, -1 for an ignored row; weight the
        gradient weight of a counted row (z's dtype); out (N, V) gets the gradient when grad
        and not inplace (z gets it when inplace); without grad, out is a (parts, V) scratch.
        """
        n_rows = z.shape[0]
        for p in loop(parts):
            r0 = (n_rows * p) // parts
            r1 = (n_rows * (p + 1)) // parts
            for n in range(r0, r1):
                t = targets[n]
                row = z[n] if inplace else out[n if grad else np.int64(p)]
                if t < 0:  # ignored: no loss, no gradient
                    losses[n] = 0.0
                    if grad:
                        row[:] = 0.0
                    continue
                if not inplace:
                    _row_copy(z[n], row)
                # the same in-place passes on every path: the same loss on every path
                m = _row_max(row)
                picked = row[t] - m
                s = _row_exp_sum(row, m)  # row = exp(z_n - m)
                losses[n] = math.log(s) - np.float64(picked)
                if grad:
                    _row_scale(row, like(weight, weight / s))
                    row[t] -= weight

    return rows


_rows = njit(parallel=True, **_OPTS)(_split_rows(prange))
_rows_serial = njit(**_OPTS)(_split_rows(range))


def supports(logits: np.ndarray) -> bool:
    """Whether the (N, V) logits can take the kernel: float32/float64, C-contiguous."""
    return (logits.ndim == 2 and logits.dtype in (np.float32, np.float64)
            and logits.flags.c_contiguous and logits.shape[1] > 0)


def cross_entropy_rows(z: np.ndarray, targets: np.ndarray, weight: float,
                       out: np.ndarray | None, compute_grad: bool
                       ) -> tuple[np.ndarray, np.ndarray | None]:
    """Row losses of softmax cross-entropy, and the weighted gradient written into ``out``.

    Args:
        z: logits, shape (N, V), float32 or float64, C-contiguous (``supports``).
        targets: shape (N,), int64 classes in [0, V), or -1 for an ignored row (no loss, zero
            gradient).
        weight: the gradient weight of every counted row (``1 / count`` for a mean).
        out: (N, V) array of z's dtype, C-contiguous, for the gradient
            ``weight * (softmax(z_n) - onehot(t_n))``; it may be ``z`` itself; None: a new
            array. Unused when ``compute_grad`` is False.
        compute_grad: whether to write the gradient.

    Returns:
        ``(losses, out)``: the row losses ``log sum_v exp(z_nv - m_n) - (z_nt - m_n)``, shape
        (N,), float64 (0 for ignored rows), and the gradient (N, V) (None without
        ``compute_grad``).
    """
    n_rows, n_classes = z.shape
    losses = np.empty(n_rows, dtype=np.float64)
    if compute_grad and out is None:
        out = np.empty_like(z)
    if n_rows == 0:
        return losses, out if compute_grad else None
    parts = min(threads.parts_for_flops(_FLOPS_PER_ELEMENT * n_rows * n_classes), n_rows)
    inplace = False
    if not compute_grad:
        out = np.empty((parts, n_classes), dtype=z.dtype)  # scratch rows
    elif out is z or (_address(out) == _address(z) and out.shape == z.shape):
        inplace = True
    elif np.may_share_memory(out, z):  # a partial overlap: work on a copy of the logits
        z = z.copy()
    targets = np.ascontiguousarray(targets, dtype=np.int64)
    threads.run_parts(_rows, _rows_serial, parts, z, targets, z.dtype.type(weight), out,
                      inplace, compute_grad, losses)
    return losses, (out if compute_grad else None)


def _address(a: np.ndarray) -> int:
    return int(a.__array_interface__["data"][0])
