"""BLAS ``gemm`` callable from Numba code, on row-major views with any leading dimension.

Numba's ``np.dot`` needs contiguous operands and cannot accumulate (``beta``); the fused
recurrences need both: ``Z[t] += h_prev @ W_hh^T`` straight into a strided slice of the
pre-activation buffer, with no temporary. This module calls the same BLAS that Numba's
``np.dot`` calls (SciPy's ``cython_blas``, through Numba's own ``numba_xxgemm`` wrapper, which
is linked by name, so functions that use it can be cached on disk with ``cache=True``).

``gemm(ta, tb, alpha, A, B, beta, C)`` computes ``C = alpha * op(A) @ op(B) + beta * C`` for
row-major 2-D arrays whose last axis is contiguous (``op(X)`` is ``X.T`` when the flag is
True). Every GEMM of the fused kernels goes through it, so a process uses one BLAS library
(and one thread pool) for the whole recurrence.
"""

from __future__ import annotations

from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic
from numba.np.linalg import ensure_blas

from lstmkit.engine.kernels.loops import fill_rows

_LL_CHAR = ir.IntType(8)
_LL_VOIDP = _LL_CHAR.as_pointer()


@intrinsic
def _xgemm(typingctx, transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    """Column-major BLAS ``?gemm`` on the data pointers of arrays a, b, c (Numba's wrapper)."""
    if not all(isinstance(arr, types.Array) for arr in (a, b, c)):
        return None
    if not (a.dtype == b.dtype == c.dtype) or c.dtype not in (types.float32, types.float64):
        return None
    dtype = c.dtype
    kind = "s" if dtype == types.float32 else "d"
    sig = types.int32(transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)

    def codegen(context, builder, signature, args):
        ensure_blas()
        (ta, tb, mm, nn, kk, al, aa, la, bb, lb, be, cc, lc) = args
        intp = context.get_value_type(types.intp)
        fnty = ir.FunctionType(
            ir.IntType(32),
            [_LL_CHAR, _LL_CHAR, _LL_CHAR, intp, intp, intp, _LL_VOIDP, _LL_VOIDP, intp,
             _LL_VOIDP, intp, _LL_VOIDP, _LL_VOIDP, intp],
        )
        fn = cgutils.get_or_insert_function(builder.module, fnty, "numba_xxgemm")
        sigargs = signature.args

        def cast(val, ty):
            return context.cast(builder, val, ty, types.intp)

        def data(val, ty):
            arr = cgutils.create_struct_proxy(ty)(context, builder, value=val)
            return builder.bitcast(arr.data, _LL_VOIDP)

        al_slot = cgutils.alloca_once_value(builder, context.cast(builder, al, sigargs[5], dtype))
        be_slot = cgutils.alloca_once_value(builder, context.cast(builder, be, sigargs[10], dtype))
        res = builder.call(fn, (
            ir.Constant(_LL_CHAR, ord(kind)),
            builder.trunc(cast(ta, sigargs[0]), _LL_CHAR),
            builder.trunc(cast(tb, sigargs[1]), _LL_CHAR),
            cast(mm, sigargs[2]), cast(nn, sigargs[3]), cast(kk, sigargs[4]),
            builder.bitcast(al_slot, _LL_VOIDP), data(aa, sigargs[6]), cast(la, sigargs[7]),
            data(bb, sigargs[8]), cast(lb, sigargs[9]),
            builder.bitcast(be_slot, _LL_VOIDP), data(cc, sigargs[11]), cast(lc, sigargs[12]),
        ))
        return res

    return sig, codegen


@intrinsic
def _xgemv(typingctx, trans, m, n, alpha, a, lda, x, beta, y):
    """Column-major BLAS ``?gemv`` (unit strides for x and y), Numba's wrapper."""
    if not all(isinstance(arr, types.Array) for arr in (a, x, y)):
        return None
    if not (a.dtype == x.dtype == y.dtype) or y.dtype not in (types.float32, types.float64):
        return None
    dtype = y.dtype
    kind = "s" if dtype == types.float32 else "d"
    sig = types.int32(trans, m, n, alpha, a, lda, x, beta, y)

    def codegen(context, builder, signature, args):
        ensure_blas()
        (tr, mm, nn, al, aa, la, xx, be, yy) = args
        intp = context.get_value_type(types.intp)
        fnty = ir.FunctionType(
            ir.IntType(32),
            [_LL_CHAR, _LL_CHAR, intp, intp, _LL_VOIDP, _LL_VOIDP, intp, _LL_VOIDP,
             _LL_VOIDP, _LL_VOIDP],
        )
        fn = cgutils.get_or_insert_function(builder.module, fnty, "numba_xxgemv")
        sigargs = signature.args

        def cast(val, ty):
            return context.cast(builder, val, ty, types.intp)

        def data(val, ty):
            arr = cgutils.create_struct_proxy(ty)(context, builder, value=val)
            return builder.bitcast(arr.data, _LL_VOIDP)

        al_slot = cgutils.alloca_once_value(builder, context.cast(builder, al, sigargs[3], dtype))
        be_slot = cgutils.alloca_once_value(builder, context.cast(builder, be, sigargs[7], dtype))
        return builder.call(fn, (
            ir.Constant(_LL_CHAR, ord(kind)),
            builder.trunc(cast(tr, sigargs[0]), _LL_CHAR),
            cast(mm, sigargs[1]), cast(nn, sigargs[2]),
            builder.bitcast(al_slot, _LL_VOIDP), data(aa, sigargs[4]), cast(la, sigargs[5]),
            data(xx, sigargs[6]), builder.bitcast(be_slot, _LL_VOIDP), data(yy, sigargs[8]),
        ))

    return sig, codegen


_N = 78  # ord("N")
_T = 84  # ord("T")


@njit(cache=True)
def gemm(ta, tb, alpha, A, B, beta, C):
    """Row-major ``C = alpha * op(A) @ op(B) + beta * C`` (2-D arrays, last axis contiguous).

    In column-major terms, C^T = op(B)^T op(A)^T: BLAS sees each row-major array as its
    transpose, so the operands swap places and keep their own transpose flags.
    """
    m, n = C.shape
    k = A.shape[0] if ta else A.shape[1]
    if m == 0 or n == 0 or k == 0:  # never happens in the kernels: every size is >= 1
        return
    isz = C.itemsize
    if m == 1 and (n == 1 or C.strides[1] == isz):
        # one row of C: y = op(B)^T x with x = row 0 of op(A); BLAS gemv, not a 1-row gemm
        if not ta or k == 1 or A.strides[0] == isz:
            x = A[0, :] if not ta else A[:, 0]
            y = C[0, :]
            ldb = max(B.strides[0] // isz, B.shape[1], 1)
            if tb:  # op(B)^T = B, (n, k) row-major = column-major (k, n): transposed
                _xgemv(_T, k, n, alpha, B, ldb, x, beta, y)
            else:  # op(B)^T = B^T, B (k, n) row-major = column-major (n, k)
                _xgemv(_N, n, k, alpha, B, ldb, x, beta, y)
            return
    if n == 1 and (m == 1 or C.strides[0] == isz):
        # one column of C: y = op(A) x with x = column 0 of op(B)
        if tb or k == 1 or B.strides[0] == isz:
            x = B[:, 0] if not tb else B[0, :]
            y = C[:, 0]
            lda = max(A.strides[0] // isz, A.shape[1], 1)
            if ta:  # op(A) = A^T, A (k, m) row-major = column-major (m, k)
                _xgemv(_N, m, k, alpha, A, lda, x, beta, y)
            else:  # op(A) = A (m, k) row-major = column-major (k, m): transposed
                _xgemv(_T, k, m, alpha, A, lda, x, beta, y)
            return
    lda = max(A.strides[0] // isz, A.shape[1], 1)
    ldb = max(B.strides[0] // isz, B.shape[1], 1)
    ldc = max(C.strides[0] // isz, C.shape[1], 1)
    _xgemm(_T if tb else _N, _T if ta else _N, n, m, k, alpha, B, ldb, A, lda, beta, C, ldc)


# OpenBLAS's small-matrix kernels (its AVX-512 builds) take a product of m x n outputs over k
# when m n <= 1024 and m n k < 1e6 (measured: 95-120 GFLOP/s for m <= 32 rows, where its
# general kernels give 20-60); ``gemm_blocks`` cuts the columns of C to fit
SMALL_MN = 1024
SMALL_MNK = 1000000


@njit(cache=True)
def small_columns(m, k):
    """The widest block of columns (a multiple of 16) whose product of m rows over k fits
    BLAS's small-matrix kernels, or 0 where none does."""
    n = (SMALL_MN // max(m, 1)) // 16 * 16
    while n >= 16 and m * n * k >= SMALL_MNK:
        n -= 16
    return n if n >= 16 else 0


@njit(cache=True)
def gemm_blocks(ta, tb, alpha, A, B, beta, C, small):
    """``gemm`` for a per-step product of few rows: with ``small`` (the plan's
    ``small_products``), C's columns in the blocks that BLAS's small-matrix kernels take
    (``small_columns``), each block one call; else one call. Each output is the same dot
    product either way; only the BLAS kernel that sums it (and so its rounding) changes."""
    m, n = C.shape
    k = A.shape[0] if ta else A.shape[1]
    w = small_columns(m, k) if small else 0
    if w == 0 or w >= n:
        gemm(ta, tb, alpha, A, B, beta, C)
        return
    for c0 in range(0, n, w):
        c1 = min(n, c0 + w)
        if tb:
            gemm(ta, tb, alpha, A, B[c0:c1], beta, C[:, c0:c1])
        else:
            gemm(ta, tb, alpha, A, B[:, c0:c1], beta, C[:, c0:c1])


@njit(cache=True)
def project(X, W, bias, has_bias, Z):
    """Z = bias + X W^T (Z = X W^T without a bias): the input projection of a chunk of steps,
    X (rows, D), W (N, D), Z (rows, N), one GEMM."""
    if has_bias:
        fill_rows(Z, bias)
    gemm(False, True, 1.0, X, W, 1.0 if has_bias else 0.0, Z)


@njit(cache=True)
def _step_columns(Z, transposed, j0, j1):
    """Columns [j0, j1) (steps' batch columns) of the gate gradients M (G H, T B), held as Z
    = M, or as Z = M^T when ``transposed``."""
    if transposed:
        return Z[j0:j1]
    return Z[:, j0:j1]


@njit(cache=True)
def add_recurrent_weight_gradient(gWhh, Z, transposed, states, saved, h0, T, B, reverse,
                                  has_mask):
    """gWhh (rows, H) += the sum over steps t of dZ_t^T h_prev(t), as GEMMs over all steps.

    Z: the gate gradients of gWhh's rows as M (rows, T B), or M^T (T B, rows) when
    ``transposed`` (the row layout's step-major dZ). h_prev(t) is the state before step t: with
    a mask, as saved by the forward pass (``saved``, (T, B, H)); without, the previous step's
    output (``states``, (T B, H)): the columns of step t - 1 (t + 1 when ``reverse``), one step
    shifted against dZ, and h0 (B, H) before the first step (t = 0, or T - 1 reversed).
    """
    TB = T * B
    if has_mask:
        gemm(transposed, False, 1.0, Z, saved.reshape(TB, saved.shape[2]), 1.0, gWhh)
        return
    if T > 1:
        if reverse:  # step t follows step t + 1
            gemm(transposed, False, 1.0, _step_columns(Z, transposed, 0, TB - B), states[B:],
                 1.0, gWhh)
        else:
            gemm(transposed, False, 1.0, _step_columns(Z, transposed, B, TB), states[:TB - B],
                 1.0, gWhh)
    first = (T - 1 if reverse else 0) * B
    gemm(transposed, False, 1.0, _step_columns(Z, transposed, first, first + B), h0, 1.0, gWhh)
