"""``transpose_into(dst, src)``: dst = src^T for float32 matrices, 8 x 8 blocks in registers.

The batch-inner LSTM kernels keep each step's state as (H, B) (the batch contiguous) while the
layer's output sequence is (T, B, H): every step transposes its h into the output (backward: the
output gradient out of it). Written as two nested loops, Numba compiles a transpose to scalar
loads and stores (~1.2 ns per number, 6% of a forward step at B = H = 128); here each 8 x 8 block
is eight vector loads, the 24 shuffles of the classic AVX transpose and eight vector stores,
written in LLVM IR (``numba.extending.intrinsic``, as the micro-kernels of ``packed.py``); the
edges that do not fill a block are copied number by number. On a CPU without 8-wide vectors LLVM
splits the vectors: the result is the same everywhere (a transpose only moves numbers).

The matrices may be views with any row stride (a block of columns of a larger array, e.g.
``out[t, :, u0:u1]``); their rows must be contiguous.
"""

from __future__ import annotations

from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

_OPTS = {"cache": True, "error_model": "numpy", "nogil": True}

_F32 = ir.FloatType()
_I32 = ir.IntType(32)
_I64 = ir.IntType(64)
_VEC = ir.VectorType(_F32, 8)


def _mask(values: list[int]) -> ir.Constant:
    return ir.Constant(ir.VectorType(_I32, 8), values)


# the three stages of the 8 x 8 transpose (as unpcklps/unpckhps, shufps, vperm2f128 do it):
# each combines pairs of vectors (a, b) into (shuffle(a, b, lo), shuffle(a, b, hi))
_STAGES = (
    ((0, 1), (2, 3), (4, 5), (6, 7)),
    ((0, 2), (1, 3), (4, 6), (5, 7)),
    ((0, 4), (1, 5), (2, 6), (3, 7)),
)
_LO_HI = (
    ([0, 8, 1, 9, 4, 12, 5, 13], [2, 10, 3, 11, 6, 14, 7, 15]),
    ([0, 1, 8, 9, 4, 5, 12, 13], [2, 3, 10, 11, 6, 7, 14, 15]),
    ([0, 1, 2, 3, 8, 9, 10, 11], [4, 5, 6, 7, 12, 13, 14, 15]),
)


def shuffle_8x8(builder: ir.IRBuilder, rows: list[ir.Value]) -> list[ir.Value]:
    """The eight columns of the 8 x 8 block whose rows are ``rows``."""
    v = list(rows)
    for pairs, (lo, hi) in zip(_STAGES, _LO_HI):
        out: list[ir.Value] = [None] * 8  # type: ignore[list-item]
        for k, (a, b) in enumerate(pairs):
            out[2 * k] = builder.shuffle_vector(v[a], v[b], _mask(lo))
            out[2 * k + 1] = builder.shuffle_vector(v[a], v[b], _mask(hi))
        v = out
    # after the stages, vector k holds column 0, 4, 1, 5, 2, 6, 3, 7 (the pairing order)
    order = [0, 4, 1, 5, 2, 6, 3, 7]
    columns: list[ir.Value] = [None] * 8  # type: ignore[list-item]
    for k, col in enumerate(order):
        columns[col] = v[k]
    return columns


@intrinsic
def _block8(typingctx, dst, src, i, j):
    """dst[j + c, i + r] = src[i + r, j + c] for r, c < 8 (2-D float32 arrays, rows
    contiguous)."""
    if not all(isinstance(a, types.Array) and a.ndim == 2 and a.dtype == types.float32
               for a in (dst, src)):
        return None
    sig = types.void(dst, src, i, j)

    def codegen(context, builder, signature, args):
        st = signature.args

        def pointer_and_stride(k):
            arr = cgutils.create_struct_proxy(st[k])(context, builder, value=args[k])
            stride = cgutils.unpack_tuple(builder, arr.strides, 2)[0]
            data = builder.bitcast(arr.data, ir.IntType(8).as_pointer())
            return data, stride

        def element(base, stride, row, col):
            offset = builder.add(builder.mul(row, stride),
                                 builder.mul(col, ir.Constant(_I64, 4)))
            return builder.bitcast(builder.gep(base, [offset]), _VEC.as_pointer())

        d_ptr, d_stride = pointer_and_stride(0)
        s_ptr, s_stride = pointer_and_stride(1)
        i0 = context.cast(builder, args[2], st[2], types.int64)
        j0 = context.cast(builder, args[3], st[3], types.int64)
        rows = [builder.load(element(s_ptr, s_stride, builder.add(i0, ir.Constant(_I64, r)), j0),
                             align=4)
                for r in range(8)]
        for c, column in enumerate(shuffle_8x8(builder, rows)):
            builder.store(column, element(d_ptr, d_stride, builder.add(j0, ir.Constant(_I64, c)),
                                          i0), align=4)
        return context.get_dummy_value()

    return sig, codegen


@njit(**_OPTS)
def transpose_into(dst, src):
    """dst (n, m) = src (m, n)^T (float32; rows of both contiguous, any row stride)."""
    m, n = src.shape
    m8 = m - m % 8
    n8 = n - n % 8
    if src.strides[1] != 4 or dst.strides[1] != 4:  # rows not contiguous: no blocks
        m8 = 0
    for i in range(0, m8, 8):
        for j in range(0, n8, 8):
            _block8(dst, src, i, j)
    for i in range(m8, m):  # the edges
        for j in range(n):
            dst[j, i] = src[i, j]
    for i in range(m8):
        for j in range(n8, n):
            dst[j, i] = src[i, j]
