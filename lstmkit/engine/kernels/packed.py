"""The recurrent product of one step, ``C (+)= A X``, on weights packed once per sequence.

Every step of a recurrence multiplies the same weight matrix (W_hh, or W_hh^T backward) by a
thin matrix: the state h^T (H, B) or the gate gradients dZ^T (GH, B), with B the batch. A BLAS
``gemm`` call copies ("packs") the weight matrix into its own cache-friendly layout on every
call, i.e. on every time step; for small batches that copy costs as much as the arithmetic.
Here the weights are packed once per forward or backward pass (``pack_rows``, or
``pack_columns`` for W_hh^T, straight from W_hh) and each step runs a register-tiled
micro-kernel on them:

- ``A`` (M, K) is stored as ceil(M/16) tiles of (K, 16): tile t holds rows 16t..16t+15, one
  cache line per k (rows past M are zero), in a buffer aligned to 64 bytes (``empty_aligned``);
- a micro-kernel computes one 16 x nb block of ``C`` (nb <= MAX_NB columns of the batch): for
  each k it loads the tile's 16 weights as vectors of the host's width (``LANES``: two of 8
  floats with AVX2, one of 16 with AVX-512), broadcasts the nb numbers ``X[k, b]``, and
  accumulates nb multiply-adds per vector in registers (AVX2: 12 accumulators of its 16
  registers, nb <= 6; AVX-512: 12 of 32, nb <= 12), then adds the block into ``C`` (or writes
  it, ``beta = False``), transposed in registers so that each row of C is written as a short
  vector (for short K the block's store is a large part of the call: 1.5 us of 7.2 for a
  (256, 64) x (64, 16) product written number by number, 0.6-0.9 us this way).

The micro-kernels are written directly in LLVM IR (``numba.extending.intrinsic``) with explicit
vectors and ``llvm.fmuladd``: Numba-compiled loops over small register tiles do not vectorise
(measured: 3-8 GFLOP/s); the 8-float kernels run at 65-95 GFLOP/s on one Zen 3 core, 1.0-1.5x
OpenBLAS's ``sgemm`` on the per-step products of the standard benchmark grid
(``benchmarks/bench_packed.py``); on an AVX-512 Xeon they use half its vector registers' width,
and 16-float kernels are 1.4-1.9x faster there (``benchmarks/bench_gemm_libraries.py``,
docs/performance.md). A single sequence, B = 1, has a kernel of its own (``_column_kernel``:
TALL tiles at once, so that its multiply-adds do not wait on each other; faster than BLAS's
``gemv``, which the row layout still uses on one thread). Either width runs on any x86 CPU:
LLVM splits or joins the vectors, and ``fmuladd`` becomes a multiply and an add where there is
no fused instruction (``LSTMKIT_VECTOR_WIDTH`` forces one, for tests).

``packed_gemm_stacked`` multiplies by two thin matrices stacked, ``A [X; X2]``, without
stacking them: the LSTM's "direct" steps compute ``[W_ih | b | W_hh] [x_t^T; 1; h_prev]`` in one
pass over the step's block (see ``lstm_t``).

float32 only (the batch-inner LSTM kernels are float32 only). The sums run in a different order
than BLAS's, so results agree with ``A @ X`` to float32 rounding, not bit for bit.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from lstmkit.engine.kernels import vector_width
from lstmkit.engine.kernels.blas import gemm
from lstmkit.engine.kernels.loops import copy1
from lstmkit.engine.kernels.transpose import shuffle_8x8, transpose_into

_OPTS = {"cache": True, "error_model": "numpy", "nogil": True}



TILE = 16  # rows of A per packed tile (the packing is the same for every vector width)
LANES = vector_width()  # floats per vector register (8: AVX2, 16: AVX-512)
VECTORS = TILE // LANES  # vectors per tile column
# batch columns per micro-kernel call: VECTORS * MAX_NB accumulators, VECTORS weights and a
# broadcast in the registers (AVX2: 12 + 2 + 1 of 16; AVX-512: 12 + 1 + 1 of 32)
MAX_NB = 6 if LANES == 8 else 12
TALL = 4 if LANES == 8 else 8  # tiles per call of the single-column kernel (B = 1)

_F32 = ir.FloatType()
_I32 = ir.IntType(32)
_I64 = ir.IntType(64)
_VEC = ir.VectorType(_F32, LANES)


def _arguments(context, builder, signature, args):
    """Accessors for an intrinsic's arguments in its codegen: ``data(i)``, the data pointer of
    array argument i; ``int64(i)``, argument i as an int64; ``flag(i)``, argument i as an i1."""
    st = signature.args

    def data(i: int) -> ir.Value:
        return cgutils.create_struct_proxy(st[i])(context, builder, value=args[i]).data

    def int64(i: int) -> ir.Value:
        return context.cast(builder, args[i], st[i], types.int64)

    def flag(i: int) -> ir.Value:
        value = context.cast(builder, args[i], st[i], types.boolean)
        if value.type != ir.IntType(1):
            value = builder.icmp_unsigned("!=", value, ir.Constant(value.type, 0))
        return value

    return data, int64, flag


def _fmuladd(builder: ir.IRBuilder) -> ir.Function:
    """LLVM's fused multiply-add on vectors of LANES floats (a multiply and an add where no
    FMA)."""
    return cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(_VEC, [_VEC, _VEC, _VEC]), f"llvm.fmuladd.v{LANES}f32")


def _eights(builder: ir.IRBuilder, vec: ir.Value) -> list[ir.Value]:
    """A vector of LANES floats as LANES / 8 vectors of 8 (for the 8 x 8 transposes)."""
    if LANES == 8:
        return [vec]
    return [builder.shuffle_vector(vec, vec, ir.Constant(ir.VectorType(_I32, 8),
                                                         list(range(8 * h, 8 * h + 8))))
            for h in range(LANES // 8)]


def _splat(builder: ir.IRBuilder, ptr: ir.Value) -> ir.Value:
    """The float at ptr in all LANES lanes (a broadcast load)."""
    value = builder.insert_element(ir.Constant(_VEC, ir.Undefined), builder.load(ptr),
                                   ir.Constant(_I32, 0))
    return builder.shuffle_vector(value, ir.Constant(_VEC, ir.Undefined),
                                  ir.Constant(ir.VectorType(_I32, LANES), [0] * LANES))


def _store_rows(builder: ir.IRBuilder, columns: list[list[ir.Value]], c_ptr: ir.Value,
                c_off: ir.Value, ldc: ir.Value, beta: ir.Value) -> None:
    """A whole 16 x nb block into C (row r at c_off + r * ldc, nb contiguous numbers), from the
    accumulators ``columns[j][h]`` (column j, rows 8h .. 8h + 7, vectors of 8): each group of 8
    rows is transposed in registers, 8 columns at a time (padded with zeros to 8), so that row r
    becomes one vector, whose first numbers are added to (``beta``) or written over C's row as
    pieces of 4, 2 and 1 numbers: 16 short vector accesses per 8 columns instead of 16 * nb
    single numbers."""
    for j0 in range(0, len(columns), 8):
        offset = builder.add(c_off, ir.Constant(_I64, j0))
        _store_rows8(builder, columns[j0:j0 + 8], c_ptr, offset, ldc, beta)


def _store_rows8(builder: ir.IRBuilder, columns: list[list[ir.Value]], c_ptr: ir.Value,
                 c_off: ir.Value, ldc: ir.Value, beta: ir.Value) -> None:
    """``_store_rows`` for nb <= 8 columns."""
    nb = len(columns)
    vec8 = ir.VectorType(_F32, 8)
    zero = ir.Constant(vec8, [0.0] * 8)
    pieces = []  # (first lane, width) covering nb
    lane = 0
    for width in (8, 4, 2, 1):
        while nb - lane >= width:
            pieces.append((lane, width))
            lane += width
    for h in range(TILE // 8):
        rows = shuffle_8x8(builder, [columns[j][h] for j in range(nb)] + [zero] * (8 - nb))
        for r in range(8):
            start = builder.add(c_off, builder.mul(ir.Constant(_I64, 8 * h + r), ldc))
            for first, width in pieces:
                ptr = builder.gep(c_ptr, [builder.add(start, ir.Constant(_I64, first))])
                if width == 1:
                    val = builder.extract_element(rows[r], ir.Constant(_I32, first))
                else:
                    val = builder.shuffle_vector(rows[r], rows[r], ir.Constant(
                        ir.VectorType(_I32, width), list(range(first, first + width))))
                    ptr = builder.bitcast(ptr, ir.VectorType(_F32, width).as_pointer())
                total = builder.fadd(builder.load(ptr, align=4), val)
                builder.store(builder.select(beta, total, val), ptr, align=4)


def _micro_codegen(builder: ir.IRBuilder, nb: int, a_ptr: ir.Value, a_off: ir.Value,
                   segments: list[tuple[ir.Value, ir.Value]], x_off: ir.Value, ldx: ir.Value,
                   c_ptr: ir.Value, c_off: ir.Value, ldc: ir.Value, rows: ir.Value,
                   beta: ir.Value) -> None:
    """The micro-kernel's code: accumulate a 16 x nb block over the segments (x pointer, row
    count) one after the other, A's packed columns continuing from one to the next, then add
    the block into C or write it."""
    fmuladd = _fmuladd(builder)
    zero = ir.Constant(_VEC, [0.0] * LANES)
    acc = [[cgutils.alloca_once_value(builder, zero) for _ in range(VECTORS)]
           for _ in range(nb)]
    seg_start = a_off
    for seg_ptr, seg_len in segments:
        with cgutils.for_range(builder, seg_len) as loop:
            k = loop.index
            a_k = builder.gep(a_ptr, [builder.add(seg_start,
                                                  builder.mul(k, ir.Constant(_I64, TILE)))])
            w = [builder.load(builder.bitcast(
                builder.gep(a_k, [ir.Constant(_I64, LANES * v)]), _VEC.as_pointer()),
                align=4) for v in range(VECTORS)]
            x_k = builder.gep(seg_ptr, [builder.add(x_off, builder.mul(k, ldx))])
            for j in range(nb):
                s = _splat(builder, builder.gep(x_k, [ir.Constant(_I64, j)]))
                for v in range(VECTORS):
                    builder.store(builder.call(fmuladd, [w[v], s,
                                                         builder.load(acc[j][v])]),
                                  acc[j][v])
        seg_start = builder.add(seg_start, builder.mul(seg_len, ir.Constant(_I64, TILE)))
    full = builder.icmp_signed("==", rows, ir.Constant(_I64, TILE))
    with builder.if_else(full, likely=True) as (whole, partial):
        with whole:  # rows of C as short vectors (see _store_rows)
            _store_rows(builder, [sum((_eights(builder, builder.load(acc[j][v]))
                                       for v in range(VECTORS)), []) for j in range(nb)],
                        c_ptr, c_off, ldc, beta)
        with partial:  # number by number, the rows that exist
            for j in range(nb):
                for v in range(VECTORS):
                    vec = builder.load(acc[j][v])
                    for lane in range(LANES):
                        r = ir.Constant(_I64, LANES * v + lane)
                        with builder.if_then(builder.icmp_signed("<", r, rows)):
                            idx = builder.add(c_off, builder.add(builder.mul(r, ldc),
                                                                 ir.Constant(_I64, j)))
                            ptr = builder.gep(c_ptr, [idx])
                            val = builder.extract_element(vec, ir.Constant(_I32, lane))
                            total = builder.fadd(builder.load(ptr), val)
                            builder.store(builder.select(beta, total, val), ptr)


def _micro_kernel(nb: int, stacked: bool = False):
    """The intrinsic for blocks of nb batch columns:

    ``micro(a, a_off, x, x_off, ldx, K, c, c_off, ldc, rows, beta)``, on flat float32 arrays:
    for r < rows (<= 16), j < nb:
    ``c[c_off + r*ldc + j] (+)= sum_k a[a_off + 16k + r] * x[x_off + k*ldx + j]``.

    ``stacked``: ``micro(a, a_off, x, x2, x_off, ldx, K, K2, c, c_off, ldc, rows, beta)``, the
    same over k < K + K2, with x's K rows followed by x2's K2 rows (same ldx and x_off): the
    product of A with two thin matrices stacked, without stacking them. (A kernel of its own:
    the one-matrix kernel with an empty second loop measured 1-7% slower on most products, 20%
    on one; and only the forward kernels that use it compile it.)
    """

    def check(arrays):
        return all(isinstance(t, types.Array) and t.dtype == types.float32 for t in arrays)

    if stacked:
        @intrinsic
        def micro(typingctx, a, a_off, x, x2, x_off, ldx, K, K2, c, c_off, ldc, rows, beta):
            if not check((a, x, x2, c)):
                return None
            sig = types.void(a, a_off, x, x2, x_off, ldx, K, K2, c, c_off, ldc, rows, beta)

            def codegen(context, builder, signature, args):
                data, int64, flag = _arguments(context, builder, signature, args)
                _micro_codegen(builder, nb, data(0), int64(1),
                               [(data(2), int64(6)), (data(3), int64(7))], int64(4), int64(5),
                               data(8), int64(9), int64(10), int64(11), flag(12))
                return context.get_dummy_value()

            return sig, codegen
    else:
        @intrinsic
        def micro(typingctx, a, a_off, x, x_off, ldx, K, c, c_off, ldc, rows, beta):
            if not check((a, x, c)):
                return None
            sig = types.void(a, a_off, x, x_off, ldx, K, c, c_off, ldc, rows, beta)

            def codegen(context, builder, signature, args):
                data, int64, flag = _arguments(context, builder, signature, args)
                _micro_codegen(builder, nb, data(0), int64(1), [(data(2), int64(5))], int64(3),
                               int64(4), data(6), int64(7), int64(8), int64(9), flag(10))
                return context.get_dummy_value()

            return sig, codegen

    return micro


# one kernel per block width up to 12 (the dispatch below names each; widths past MAX_NB are
# never called, and LLVM drops their branches)
(_micro1, _micro2, _micro3, _micro4, _micro5, _micro6, _micro7, _micro8, _micro9, _micro10,
 _micro11, _micro12) = (_micro_kernel(nb) for nb in range(1, 13))
(_stacked1, _stacked2, _stacked3, _stacked4, _stacked5, _stacked6, _stacked7, _stacked8,
 _stacked9, _stacked10, _stacked11, _stacked12) = (_micro_kernel(nb, stacked=True)
                                                   for nb in range(1, 13))


def _column_kernel(tall: int):
    """The intrinsic for a single batch column (B = 1), ``tall`` tiles at once:

    ``column(a, a_off, K, x, c, c_off, beta)``: for r < 16 * tall,
    ``c[c_off + r] (+)= sum_k a[a_off + (r // 16) * 16K + 16k + r % 16] * x[k]``.

    With one column, a tile's accumulators would each wait for the previous multiply-add
    (4 cycles) at every k; ``tall`` tiles give VECTORS * tall independent chains, and C, one
    contiguous column, is read and written as whole vectors. (Measured on one Zen 3 core:
    W (512, 128) in 2.7 us, against 5.5 us for the one-tile kernel and 4.2 us for OpenBLAS's
    sgemv.)
    """

    @intrinsic
    def column(typingctx, a, a_off, K, x, c, c_off, beta):
        if not all(isinstance(t, types.Array) and t.dtype == types.float32 for t in (a, x, c)):
            return None
        sig = types.void(a, a_off, K, x, c, c_off, beta)

        def codegen(context, builder, signature, args):
            data, int64, flag = _arguments(context, builder, signature, args)
            a_ptr, x_ptr, c_ptr = data(0), data(3), data(4)
            a_off, K, c_off, beta = int64(1), int64(2), int64(5), flag(6)
            fmuladd = _fmuladd(builder)
            zero = ir.Constant(_VEC, [0.0] * LANES)
            acc = [cgutils.alloca_once_value(builder, zero) for _ in range(tall * VECTORS)]
            tile_stride = builder.mul(K, ir.Constant(_I64, TILE))
            with cgutils.for_range(builder, K) as loop:
                k = loop.index
                s = _splat(builder, builder.gep(x_ptr, [k]))
                a_k = builder.add(a_off, builder.mul(k, ir.Constant(_I64, TILE)))
                for t in range(tall):
                    a_t = builder.add(a_k, builder.mul(tile_stride, ir.Constant(_I64, t)))
                    for v in range(VECTORS):
                        ptr = builder.gep(a_ptr, [builder.add(a_t, ir.Constant(_I64, LANES * v))])
                        w = builder.load(builder.bitcast(ptr, _VEC.as_pointer()), align=4)
                        slot = acc[t * VECTORS + v]
                        builder.store(builder.call(fmuladd, [w, s, builder.load(slot)]), slot)
            for i, slot in enumerate(acc):
                ptr = builder.gep(c_ptr, [builder.add(c_off, ir.Constant(_I64, LANES * i))])
                ptr = builder.bitcast(ptr, _VEC.as_pointer())
                val = builder.load(slot)
                total = builder.fadd(builder.load(ptr, align=4), val)
                builder.store(builder.select(beta, total, val), ptr, align=4)
            return context.get_dummy_value()

        return sig, codegen

    return column


_column = _column_kernel(TALL)
# AVX-512: after the groups of 8 tiles, groups of 4 (a thread's part of a step often has fewer
# than 8 tiles: (200, 1, 32, 128) backward splits W_hh^T's 128 rows in two parts of 4 tiles)
_column4 = _column_kernel(4)


@njit(**_OPTS)
def _block(nb, a, a_off, x, x_off, ldx, K, c, c_off, ldc, rows, beta):
    if MAX_NB > 6 and nb > 6:
        _wide_block(nb, a, a_off, x, x_off, ldx, K, c, c_off, ldc, rows, beta)
    elif nb == 6:
        _micro6(a, a_off, x, x_off, ldx, K, c, c_off, ldc, rows, beta)
    elif nb == 5:
        _micro5(a, a_off, x, x_off, ldx, K, c, c_off, ldc, rows, beta)
    elif nb == 4:
        _micro4(a, a_off, x, x_off, ldx, K, c, c_off, ldc, rows, beta)
    elif nb == 3:
        _micro3(a, a_off, x, x_off, ldx, K, c, c_off, ldc, rows, beta)
    elif nb == 2:
        _micro2(a, a_off, x, x_off, ldx, K, c, c_off, ldc, rows, beta)
    else:
        _micro1(a, a_off, x, x_off, ldx, K, c, c_off, ldc, rows, beta)


@njit(**_OPTS)
def _wide_block(nb, a, a_off, x, x_off, ldx, K, c, c_off, ldc, rows, beta):
    """``_block`` for 7 to 12 columns (AVX-512 only)."""
    if nb == 12:
        _micro12(a, a_off, x, x_off, ldx, K, c, c_off, ldc, rows, beta)
    elif nb == 11:
        _micro11(a, a_off, x, x_off, ldx, K, c, c_off, ldc, rows, beta)
    elif nb == 10:
        _micro10(a, a_off, x, x_off, ldx, K, c, c_off, ldc, rows, beta)
    elif nb == 9:
        _micro9(a, a_off, x, x_off, ldx, K, c, c_off, ldc, rows, beta)
    elif nb == 8:
        _micro8(a, a_off, x, x_off, ldx, K, c, c_off, ldc, rows, beta)
    else:
        _micro7(a, a_off, x, x_off, ldx, K, c, c_off, ldc, rows, beta)


@njit(**_OPTS)
def _wide_stacked_block(nb, a, a_off, x, x2, x_off, ldx, K, K2, c, c_off, ldc, rows, beta):
    """``_stacked_block`` for 7 to 12 columns (AVX-512 only)."""
    if nb == 12:
        _stacked12(a, a_off, x, x2, x_off, ldx, K, K2, c, c_off, ldc, rows, beta)
    elif nb == 11:
        _stacked11(a, a_off, x, x2, x_off, ldx, K, K2, c, c_off, ldc, rows, beta)
    elif nb == 10:
        _stacked10(a, a_off, x, x2, x_off, ldx, K, K2, c, c_off, ldc, rows, beta)
    elif nb == 9:
        _stacked9(a, a_off, x, x2, x_off, ldx, K, K2, c, c_off, ldc, rows, beta)
    elif nb == 8:
        _stacked8(a, a_off, x, x2, x_off, ldx, K, K2, c, c_off, ldc, rows, beta)
    else:
        _stacked7(a, a_off, x, x2, x_off, ldx, K, K2, c, c_off, ldc, rows, beta)


@njit(**_OPTS)
def _stacked_block(nb, a, a_off, x, x2, x_off, ldx, K, K2, c, c_off, ldc, rows, beta):
    if MAX_NB > 6 and nb > 6:
        _wide_stacked_block(nb, a, a_off, x, x2, x_off, ldx, K, K2, c, c_off, ldc, rows, beta)
    elif nb == 6:
        _stacked6(a, a_off, x, x2, x_off, ldx, K, K2, c, c_off, ldc, rows, beta)
    elif nb == 5:
        _stacked5(a, a_off, x, x2, x_off, ldx, K, K2, c, c_off, ldc, rows, beta)
    elif nb == 4:
        _stacked4(a, a_off, x, x2, x_off, ldx, K, K2, c, c_off, ldc, rows, beta)
    elif nb == 3:
        _stacked3(a, a_off, x, x2, x_off, ldx, K, K2, c, c_off, ldc, rows, beta)
    elif nb == 2:
        _stacked2(a, a_off, x, x2, x_off, ldx, K, K2, c, c_off, ldc, rows, beta)
    else:
        _stacked1(a, a_off, x, x2, x_off, ldx, K, K2, c, c_off, ldc, rows, beta)


def empty_aligned(size: int) -> np.ndarray:
    """An uninitialised float32 array of ``size`` numbers starting on a 64-byte boundary: a
    cache line, and one AVX-512 vector, so that every packed tile (16 K numbers) starts on one
    too. (NumPy's allocations are 16-byte aligned; the single-column kernel's loads measured
    1.33-1.36x faster aligned, and the AVX-512 one needs it to gain at all: docs/performance.md.)
    """
    raw = np.empty(size + 16, dtype=np.float32)
    start = (-raw.ctypes.data % 64) // 4
    return raw[start:start + size]


def packed_size(M: int, K: int) -> int:
    """Floats needed to pack an (M, K) matrix."""
    return -(-M // TILE) * K * TILE


@njit(**_OPTS)
def _consecutive(order, first, n):
    """Whether order[first:first + n] are n consecutive row numbers."""
    for r in range(1, n):
        if order[first + r] != order[first] + r:
            return False
    return True


@njit(**_OPTS)
def _pack_tile(A, order, first, r1, tile):
    """tile (K, 16) = rows first .. first + 15 of A[order] (A (M, K)), transposed; rows from r1
    on are zeros. 16 consecutive rows of A are one 8 x 8-block transpose."""
    if first + TILE <= r1 and _consecutive(order, first, TILE):
        transpose_into(tile, A[order[first]:order[first] + TILE])
        return
    for r in range(TILE):
        row = first + r
        if row < r1:
            src = order[row]
            for k in range(A.shape[1]):
                tile[k, r] = A[src, k]
        else:
            for k in range(A.shape[1]):
                tile[k, r] = 0.0


@njit(**_OPTS)
def pack_rows(A, order, r0, r1, out, off):
    """Pack rows r0 .. r1-1 of A[order] (A (M, K), ``order`` a row permutation of A) into
    out[off : off + packed_size(r1 - r0, K)]."""
    K = A.shape[1]
    tiles = (r1 - r0 + TILE - 1) // TILE
    for t in range(tiles):
        base = off + t * K * TILE
        _pack_tile(A, order, r0 + t * TILE, r1, out[base:base + K * TILE].reshape(K, TILE))


@njit(**_OPTS)
def pack_rows_stacked(A, b, A2, order, r0, r1, out, off):
    """``pack_rows`` of the matrix [A | b | A2] (A (M, K), b (M,), A2 (M, K2)) without building
    it: rows r0 .. r1-1 of its rows in ``order``, into out[off : off + packed_size(r1 - r0,
    K + 1 + K2)] (the LSTM's direct steps: [W_ih | b | W_hh], see ``lstm_t``): each (K + 1 + K2,
    16) tile is the (K, 16), (1, 16) and (K2, 16) tiles of the three pieces, one after another."""
    K = A.shape[1]
    KS = K + 1 + A2.shape[1]
    bcol = b.reshape(b.shape[0], 1)
    tiles = (r1 - r0 + TILE - 1) // TILE
    for t in range(tiles):
        base = off + t * KS * TILE
        tile = out[base:base + KS * TILE].reshape(KS, TILE)
        first = r0 + t * TILE
        _pack_tile(A, order, first, r1, tile[:K])
        _pack_tile(bcol, order, first, r1, tile[K:K + 1])
        _pack_tile(A2, order, first, r1, tile[K + 1:])


@njit(**_OPTS)
def copy_rows(A, order, r0, r1, out, off):
    """Rows r0 .. r1-1 of A[order] (A (M, K)), unpacked: a row-major (r1 - r0, K) matrix at
    out[off:] (for a BLAS call instead of the packed kernels; fits in ``packed_size``)."""
    K = A.shape[1]
    for r in range(r0, r1):
        copy1(out[off + (r - r0) * K:off + (r - r0 + 1) * K], A[order[r]])


@njit(**_OPTS)
def copy_columns(A, order, c0, c1, out, off):
    """Columns c0 .. c1-1 of A[order] (A (K, N)) as rows, unpacked: the row-major (c1 - c0, K)
    matrix (A[order])^T[c0:c1] at out[off:] (as ``copy_rows``)."""
    K = order.shape[0]
    M = c1 - c0
    block = out[off:off + M * K].reshape(M, K)
    for k in range(K):
        row = A[order[k]]
        for c in range(M):
            block[c, k] = row[c0 + c]


@njit(**_OPTS)
def pack_columns(A, order, c0, c1, out, off):
    """Pack rows c0 .. c1-1 of (A[order])^T, i.e. columns c0 .. c1-1 of A with its rows
    permuted (A (K, N)), into out[off : off + packed_size(c1 - c0, K)]: the transpose is
    packed straight from A, reading runs of 16 contiguous numbers, with no transposed copy."""
    K = order.shape[0]
    M = c1 - c0
    tiles = (M + TILE - 1) // TILE
    for t in range(tiles):
        base = off + t * K * TILE
        width = min(TILE, M - t * TILE)
        col = c0 + t * TILE
        if width == TILE:  # a fixed count: two vector copies per k
            for k in range(K):
                row = A[order[k]]
                dst = base + k * TILE
                for r in range(TILE):
                    out[dst + r] = row[col + r]
            continue
        for k in range(K):
            src = order[k]
            dst = base + k * TILE
            for r in range(width):
                out[dst + r] = A[src, col + r]
            for r in range(width, TILE):
                out[dst + r] = 0.0


@njit(**_OPTS)
def _column_blocks(B):
    """How many micro-kernel calls cover B columns: as few blocks of at most MAX_NB as
    possible, of equal widths (``_block_columns``)."""
    return (B + MAX_NB - 1) // MAX_NB


@njit(**_OPTS)
def _block_columns(B, blocks, q):
    """The columns [b0, b1) of block q of B columns split into ``blocks`` equal blocks."""
    return (B * q) // blocks, (B * (q + 1)) // blocks


@njit(**_OPTS)
def _tiles(a, a_off, M, K, B, xf, panels, first, cf, beta):
    """Tiles first, first + 1, ... of C (M, B) (+)= A X, one micro-kernel call per tile and
    block of columns (as few blocks as possible, of equal widths), X read from xf as (K, B)
    row-major or, with ``panels``, as panels (``to_panels``)."""
    blocks = _column_blocks(B)
    for t in range(first, (M + TILE - 1) // TILE):
        rows = min(TILE, M - t * TILE)
        for q in range(blocks):
            b0, b1 = _block_columns(B, blocks, q)
            x_off, ldx = (K * b0, b1 - b0) if panels else (b0, B)
            _block(b1 - b0, a, a_off + t * K * TILE, xf, x_off, ldx, K, cf, t * TILE * B + b0,
                   B, rows, beta)


@njit(**_OPTS)
def packed_gemm(a, a_off, M, X, C, beta):
    """C (M, B) (+)= A X for A (M, K) packed at a[a_off:] (``pack_rows``), X (K, B) and C
    contiguous (C may be a block of rows of a larger array). ``beta``: add to C (True) or
    overwrite it (False)."""
    K, B = X.shape
    xf = X.reshape(K * B)
    cf = C.reshape(M * B)
    first = 0
    if B == 1:  # whole groups of TALL (then 4) full tiles, then the rest one tile at a time
        first = (M // (TALL * TILE)) * TALL
        for t in range(0, first, TALL):
            _column(a, a_off + t * K * TILE, K, xf, cf, t * TILE, beta)
        if TALL > 4:
            for t in range(first, (M // (4 * TILE)) * 4, 4):
                _column4(a, a_off + t * K * TILE, K, xf, cf, t * TILE, beta)
                first = t + 4
    _tiles(a, a_off, M, K, B, xf, False, first, cf, beta)


@njit(**_OPTS)
def packed_gemm_stacked(a, a_off, M, X, X2, C, beta):
    """C (M, B) (+)= A [X; X2] for A (M, K + K2) packed at a[a_off:], X (K, B) and X2 (K2, B)
    contiguous: the product with the two stacked, without stacking them, in one pass over C
    (two products, A's first K columns times X and its last K2 times X2, would write each
    block of C twice). Measured on one core, (128, 17 + 64) x 16: 1.22x the two products."""
    K, B = X.shape
    K2 = X2.shape[0]
    xf = X.reshape(K * B)
    x2f = X2.reshape(K2 * B)
    cf = C.reshape(M * B)
    blocks = _column_blocks(B)
    for t in range((M + TILE - 1) // TILE):
        rows = min(TILE, M - t * TILE)
        for q in range(blocks):
            b0, b1 = _block_columns(B, blocks, q)
            _stacked_block(b1 - b0, a, a_off + t * (K + K2) * TILE, xf, x2f, b0, B, K, K2, cf,
                           t * TILE * B + b0, B, rows, beta)


@njit(**_OPTS)
def to_panels(X, r0, r1, XP):
    """Write rows r0 .. r1-1 of X (K, B) into XP (K * B numbers), where X is held as panels:
    for each block of columns [b0, b1) that ``packed_gemm`` would give one micro-kernel call,
    the (K, b1 - b0) panel of those columns, row-major, at XP[K * b0:]."""
    K, B = X.shape
    blocks = _column_blocks(B)
    for q in range(blocks):
        b0, b1 = _block_columns(B, blocks, q)
        nb = b1 - b0
        for r in range(r0, r1):
            base = K * b0 + r * nb
            for j in range(nb):
                XP[base + j] = X[r, b0 + j]


@njit(**_OPTS)
def packed_gemm_panels(a, a_off, M, XP, K, B, C, beta):
    """``packed_gemm`` with X (K, B) given as panels (``to_panels``): each micro-kernel call
    reads its columns as one contiguous run (K x nb numbers) instead of nb numbers from each
    of K rows, one or two cache lines apart. For long K (the backward step's W_hh^T dZ^T,
    K = G H) the product alone runs faster on one core (measured: (256, 2048) x 64 65 -> 90
    GFLOP/s, (128, 1024) x 64 62 -> 79, (64, 512) x 128 62 -> 75; (32, 256) x 16 72 -> 72);
    in a layer, where the panels are written at each step, it pays only for large G H and B
    (``recurrence.backward_panels``)."""
    if B == 1:  # one column: the panel is the column
        packed_gemm(a, a_off, M, XP[:K].reshape(K, 1), C, beta)
    else:
        _tiles(a, a_off, M, K, B, XP, True, 0, C.reshape(M * B), beta)


def pack(A: np.ndarray) -> np.ndarray:
    """The packed copy of a float32 (M, K) matrix (for tests and one-off use)."""
    A = np.ascontiguousarray(A, dtype=np.float32)
    out = empty_aligned(packed_size(*A.shape))
    pack_rows(A, np.arange(A.shape[0]), 0, A.shape[0], out, 0)
    return out


@njit(**_OPTS)
def blas_or_packed(blas, a, a_off, M, X, C, beta):
    """``packed_gemm``'s product C (M, B) (+)= A X, with ``blas`` from A unpacked at a[a_off:]
    (``copy_rows``, ``copy_columns``) by one BLAS call instead."""
    if blas:
        K = X.shape[0]
        gemm(False, False, 1.0, a[a_off:a_off + M * K].reshape(M, K), X, 1.0 if beta else 0.0,
             C)
    else:
        packed_gemm(a, a_off, M, X, C, beta)
