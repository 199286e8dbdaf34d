"""Prototype (not shipped): the packed micro-kernel of ``lstmkit.engine.kernels.packed`` with the
vector width, the tile height and the block width as parameters, to measure AVX-512 variants against
the AVX2 kernel (``benchmarks/bench_gemm_libraries.py``).

``variant(lanes, vectors, max_nb, tall)`` returns ``(tile, gemm)``: A (M, K) packed in tiles of
``tile = lanes * vectors`` rows (``pack(A, tile)``, the layout of ``packed.pack`` for tile = 16),
and ``gemm(a, M, X, C, beta)``: C (M, B) (+)= A X, X (K, B) and C row-major, as
``packed.packed_gemm``. Each micro-kernel call computes a tile x nb block (nb <= max_nb) with
``vectors * nb`` accumulators of ``<lanes x float>``; B = 1 runs ``tall`` tiles at once. With
lanes = 16 LLVM emits zmm registers on an AVX-512 host (checked by the benchmark) and splits the
vectors in two on an AVX2 host, where the results are the same and only the speed differs.

The block's store reuses ``packed._store_rows`` (16 rows, <= 8 columns at a time), so the rows
of C are written as short vectors exactly as the shipped kernel writes them.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from lstmkit.engine.kernels import packed as _packed

_F32 = ir.FloatType()
_I32 = ir.IntType(32)
_I64 = ir.IntType(64)


def _vec(lanes: int) -> ir.VectorType:
    return ir.VectorType(_F32, lanes)


def _fmuladd(builder: ir.IRBuilder, lanes: int) -> ir.Function:
    return cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(_vec(lanes), [_vec(lanes)] * 3),
        f"llvm.fmuladd.v{lanes}f32")


def _splat(builder: ir.IRBuilder, ptr: ir.Value, lanes: int) -> ir.Value:
    value = builder.insert_element(ir.Constant(_vec(lanes), ir.Undefined), builder.load(ptr),
                                   ir.Constant(_I32, 0))
    return builder.shuffle_vector(value, ir.Constant(_vec(lanes), ir.Undefined),
                                  ir.Constant(ir.VectorType(_I32, lanes), [0] * lanes))


def _eights(builder: ir.IRBuilder, vec: ir.Value, lanes: int) -> list[ir.Value]:
    """A <lanes x float> vector as lanes / 8 vectors of 8."""
    if lanes == 8:
        return [vec]
    return [builder.shuffle_vector(vec, vec, ir.Constant(ir.VectorType(_I32, 8),
                                                         list(range(8 * h, 8 * h + 8))))
            for h in range(lanes // 8)]


def _micro_kernel(lanes: int, vectors: int, nb: int):
    """``micro(a, a_off, x, x_off, ldx, K, c, c_off, ldc, rows, beta)``: for r < rows (<= tile),
    j < nb: ``c[c_off + r*ldc + j] (+)= sum_k a[a_off + tile*k + r] * x[x_off + k*ldx + j]``."""
    tile = lanes * vectors
    vec = _vec(lanes)

    @intrinsic
    def micro(typingctx, a, a_off, x, x_off, ldx, K, c, c_off, ldc, rows, beta):
        sig = types.void(a, a_off, x, x_off, ldx, K, c, c_off, ldc, rows, beta)

        def codegen(context, builder, signature, args):
            data, int64, flag = _packed._arguments(context, builder, signature, args)
            a_ptr, x_ptr, c_ptr = data(0), data(2), data(6)
            a_off, x_off, ldx, K = int64(1), int64(3), int64(4), int64(5)
            c_off, ldc, rows, beta = int64(7), int64(8), int64(9), flag(10)
            fmuladd = _fmuladd(builder, lanes)
            zero = ir.Constant(vec, [0.0] * lanes)
            acc = [[cgutils.alloca_once_value(builder, zero) for _ in range(vectors)]
                   for _ in range(nb)]
            with cgutils.for_range(builder, K) as loop:
                k = loop.index
                a_k = builder.gep(a_ptr, [builder.add(a_off, builder.mul(k, ir.Constant(
                    _I64, tile)))])
                w = [builder.load(builder.bitcast(builder.gep(a_k, [ir.Constant(
                    _I64, lanes * v)]), vec.as_pointer()), align=4) for v in range(vectors)]
                x_k = builder.gep(x_ptr, [builder.add(x_off, builder.mul(k, ldx))])
                for j in range(nb):
                    s = _splat(builder, builder.gep(x_k, [ir.Constant(_I64, j)]), lanes)
                    for v in range(vectors):
                        builder.store(builder.call(fmuladd, [w[v], s, builder.load(acc[j][v])]),
                                      acc[j][v])
            full = builder.icmp_signed("==", rows, ir.Constant(_I64, tile))
            with builder.if_else(full, likely=True) as (whole, partial):
                with whole:
                    # column j as 8-row pieces, then 16 rows x <= 8 columns per _store_rows
                    pieces = [sum((_eights(builder, builder.load(acc[j][v]), lanes)
                                   for v in range(vectors)), []) for j in range(nb)]
                    for g in range(tile // 16):
                        for j0 in range(0, nb, 8):
                            cols = [pieces[j][2 * g:2 * g + 2] for j in range(j0, min(nb, j0 + 8))]
                            off = builder.add(c_off, builder.add(
                                builder.mul(ir.Constant(_I64, 16 * g), ldc), ir.Constant(_I64, j0)))
                            _packed._store_rows(builder, cols, c_ptr, off, ldc, beta)
                with partial:
                    for j in range(nb):
                        for v in range(vectors):
                            val_v = builder.load(acc[j][v])
                            for lane in range(lanes):
                                r = ir.Constant(_I64, lanes * v + lane)
                                with builder.if_then(builder.icmp_signed("<", r, rows)):
                                    idx = builder.add(c_off, builder.add(builder.mul(r, ldc),
                                                                         ir.Constant(_I64, j)))
                                    ptr = builder.gep(c_ptr, [idx])
                                    val = builder.extract_element(val_v, ir.Constant(_I32, lane))
                                    total = builder.fadd(builder.load(ptr), val)
                                    builder.store(builder.select(beta, total, val), ptr)
            return context.get_dummy_value()

        return sig, codegen

    return micro


def _column_kernel(lanes: int, vectors: int, tall: int):
    """``column(a, a_off, K, x, c, c_off, beta)``: ``tall`` tiles times one column (B = 1),
    ``tall * vectors`` independent accumulators; C read and written as whole vectors."""
    tile = lanes * vectors
    vec = _vec(lanes)

    @intrinsic
    def column(typingctx, a, a_off, K, x, c, c_off, beta):
        sig = types.void(a, a_off, K, x, c, c_off, beta)

        def codegen(context, builder, signature, args):
            data, int64, flag = _packed._arguments(context, builder, signature, args)
            a_ptr, x_ptr, c_ptr = data(0), data(3), data(4)
            a_off, K, c_off, beta = int64(1), int64(2), int64(5), flag(6)
            fmuladd = _fmuladd(builder, lanes)
            zero = ir.Constant(vec, [0.0] * lanes)
            acc = [cgutils.alloca_once_value(builder, zero) for _ in range(tall * vectors)]
            tile_stride = builder.mul(K, ir.Constant(_I64, tile))
            with cgutils.for_range(builder, K) as loop:
                k = loop.index
                s = _splat(builder, builder.gep(x_ptr, [k]), lanes)
                a_k = builder.add(a_off, builder.mul(k, ir.Constant(_I64, tile)))
                for t in range(tall):
                    a_t = builder.add(a_k, builder.mul(tile_stride, ir.Constant(_I64, t)))
                    for v in range(vectors):
                        ptr = builder.gep(a_ptr, [builder.add(a_t, ir.Constant(_I64, lanes * v))])
                        w = builder.load(builder.bitcast(ptr, vec.as_pointer()), align=4)
                        slot = acc[t * vectors + v]
                        builder.store(builder.call(fmuladd, [w, s, builder.load(slot)]), slot)
            for i, slot in enumerate(acc):
                ptr = builder.gep(c_ptr, [builder.add(c_off, ir.Constant(_I64, lanes * i))])
                ptr = builder.bitcast(ptr, vec.as_pointer())
                val = builder.load(slot)
                total = builder.fadd(builder.load(ptr, align=4), val)
                builder.store(builder.select(beta, total, val), ptr, align=4)
            return context.get_dummy_value()

        return sig, codegen

    return column


_DRIVER = """
def block(nb, a, a_off, x, x_off, ldx, K, c, c_off, ldc, rows, beta):
{branches}

def gemm(a, M, X, C, beta):
    K, B = X.shape
    xf = X.reshape(K * B)
    cf = C.reshape(M * B)
    first = 0
    if B == 1:
        first = (M // (TALL * TILE)) * TALL
        for t in range(0, first, TALL):
            column(a, t * K * TILE, K, xf, cf, t * TILE, beta)
    blocks = (B + MAX_NB - 1) // MAX_NB
    for t in range(first, (M + TILE - 1) // TILE):
        rows = min(TILE, M - t * TILE)
        for q in range(blocks):
            b0 = (B * q) // blocks
            b1 = (B * (q + 1)) // blocks
            block(b1 - b0, a, t * K * TILE, xf, b0, B, K, cf, t * TILE * B + b0, B, rows, beta)
"""


def variant(lanes: int, vectors: int, max_nb: int, tall: int):
    """(tile, gemm) for one set of parameters (see the module's docstring)."""
    tile = lanes * vectors
    branches = "\n".join(
        f"    {'if' if nb == max_nb else 'elif'} nb == {nb}:\n"
        f"        micro{nb}(a, a_off, x, x_off, ldx, K, c, c_off, ldc, rows, beta)"
        for nb in range(max_nb, 1, -1))
    branches += "\n    else:\n        micro1(a, a_off, x, x_off, ldx, K, c, c_off, ldc, rows, beta)"
    scope = {f"micro{nb}": _micro_kernel(lanes, vectors, nb) for nb in range(1, max_nb + 1)}
    scope.update(column=_column_kernel(lanes, vectors, tall), TILE=tile, TALL=tall,
                 MAX_NB=max_nb)
    exec(_DRIVER.format(branches=branches), scope)  # noqa: S102 - generated dispatch
    block = njit(nogil=True, error_model="numpy")(scope["block"])
    scope["block"] = block
    return tile, njit(nogil=True, error_model="numpy")(scope["gemm"])


def pack(A: np.ndarray, tile: int, misalign: int = 0) -> np.ndarray:
    """A (M, K) as ceil(M / tile) tiles of (K, tile) (rows past M zero), in a float32 buffer
    that starts ``misalign`` bytes past a 64-byte boundary (``placed``)."""
    M, K = A.shape
    Mp = -(-M // tile) * tile
    padded = np.zeros((Mp, K), dtype=np.float32)
    padded[:M] = A
    return placed(padded.reshape(Mp // tile, tile, K).transpose(0, 2, 1).ravel(), misalign)


def placed(a: np.ndarray, misalign: int) -> np.ndarray:
    """A 1-D float32 copy of ``a`` whose data starts ``misalign`` bytes (a multiple of 4) past
    a 64-byte boundary: 0 for cache-line-aligned tiles, 16 where NumPy usually puts an array
    (its allocator aligns to 16 bytes)."""
    raw = np.empty(a.size + 16, dtype=np.float32)
    shift = ((-raw.ctypes.data % 64) + misalign) % 64 // 4
    out = raw[shift:shift + a.size]
    out[:] = a.ravel()
    return out


# ------------------------------------------------ vectors along the batch (no transposed store)

def _mask(builder: ir.IRBuilder, count: ir.Value) -> ir.Value:
    """<16 x i1>: lane i set when i < count."""
    lanes = ir.Constant(ir.VectorType(_I64, 16), list(range(16)))
    splat = builder.shuffle_vector(
        builder.insert_element(ir.Constant(ir.VectorType(_I64, 16), ir.Undefined), count,
                               ir.Constant(_I32, 0)),
        ir.Constant(ir.VectorType(_I64, 16), ir.Undefined),
        ir.Constant(ir.VectorType(_I32, 16), [0] * 16))
    return builder.icmp_signed("<", lanes, splat)


def _masked(builder: ir.IRBuilder, name: str, args: list[ir.Value]) -> ir.Value:
    vec, ptr_t = _vec(16), _vec(16).as_pointer()
    mask_t = ir.VectorType(ir.IntType(1), 16)
    if name == "load":
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(
            vec, [ptr_t, _I32, mask_t, vec]), "llvm.masked.load.v16f32.p0v16f32")
    else:
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(
            ir.VoidType(), [vec, ptr_t, _I32, mask_t]), "llvm.masked.store.v16f32.p0v16f32")
    return builder.call(fn, args)


def _bvec_kernel(mr: int, nv: int):
    """``micro(a, a_off, x, x_off, ldx, K, c, c_off, ldc, rows, cols, beta)``: C's block of
    rows r < rows (<= mr) and columns j < cols (<= 16 nv) (+)= sum_k a[a_off + 16k + r] *
    x[x_off + k*ldx + j]: A in the shipped 16-row tiles (a_off may point inside a tile), the
    vectors along C's rows (the batch), A's numbers broadcast; no transpose at the store, the
    last vector of each row masked to the columns that exist."""
    vec = _vec(16)

    @intrinsic
    def micro(typingctx, a, a_off, x, x_off, ldx, K, c, c_off, ldc, rows, cols, beta):
        sig = types.void(a, a_off, x, x_off, ldx, K, c, c_off, ldc, rows, cols, beta)

        def codegen(context, builder, signature, args):
            data, int64, flag = _packed._arguments(context, builder, signature, args)
            a_ptr, x_ptr, c_ptr = data(0), data(2), data(6)
            a_off, x_off, ldx, K = int64(1), int64(3), int64(4), int64(5)
            c_off, ldc, rows, cols, beta = int64(7), int64(8), int64(9), int64(10), flag(11)
            fmuladd = _fmuladd(builder, 16)
            zero = ir.Constant(vec, [0.0] * 16)
            masks = [_mask(builder, builder.sub(cols, ir.Constant(_I64, 16 * v)))
                     for v in range(nv)]
            acc = [[cgutils.alloca_once_value(builder, zero) for _ in range(nv)]
                   for _ in range(mr)]
            with cgutils.for_range(builder, K) as loop:
                k = loop.index
                x_k = builder.gep(x_ptr, [builder.add(x_off, builder.mul(k, ldx))])
                xs = [_masked(builder, "load", [builder.bitcast(builder.gep(x_k, [ir.Constant(
                    _I64, 16 * v)]), vec.as_pointer()), ir.Constant(_I32, 4), masks[v], zero])
                    for v in range(nv)]
                a_k = builder.gep(a_ptr, [builder.add(a_off, builder.mul(k, ir.Constant(
                    _I64, 16)))])
                for r in range(mr):
                    s = _splat(builder, builder.gep(a_k, [ir.Constant(_I64, r)]), 16)
                    for v in range(nv):
                        builder.store(builder.call(fmuladd, [s, xs[v], builder.load(acc[r][v])]),
                                      acc[r][v])
            for r in range(mr):
                with builder.if_then(builder.icmp_signed("<", ir.Constant(_I64, r), rows),
                                     likely=True):
                    row = builder.add(c_off, builder.mul(ir.Constant(_I64, r), ldc))
                    for v in range(nv):
                        ptr = builder.bitcast(builder.gep(c_ptr, [builder.add(
                            row, ir.Constant(_I64, 16 * v))]), vec.as_pointer())
                        old = _masked(builder, "load", [ptr, ir.Constant(_I32, 4), masks[v],
                                                        zero])
                        val = builder.load(acc[r][v])
                        new = builder.select(beta, builder.fadd(old, val), val)
                        _masked(builder, "store", [new, ptr, ir.Constant(_I32, 4), masks[v]])
            return context.get_dummy_value()

        return sig, codegen

    return micro


_BVEC_DRIVER = """
def block(nv, a, a_off, x, x_off, ldx, K, c, c_off, ldc, rows, cols, beta):
    if nv == 1:
        micro1(a, a_off, x, x_off, ldx, K, c, c_off, ldc, rows, cols, beta)
    elif nv == 2:
        micro2(a, a_off, x, x_off, ldx, K, c, c_off, ldc, rows, cols, beta)
    elif nv == 3:
        micro3(a, a_off, x, x_off, ldx, K, c, c_off, ldc, rows, cols, beta)
    else:
        micro4(a, a_off, x, x_off, ldx, K, c, c_off, ldc, rows, cols, beta)

def gemm(a, M, X, C, beta):
    K, B = X.shape
    xf = X.reshape(K * B)
    cf = C.reshape(M * B)
    if B == 1:
        first = (M // (TALL * 16)) * TALL
        for t in range(0, first, TALL):
            column(a, t * K * 16, K, xf, cf, t * 16, beta)
        r_first = first * 16
    else:
        r_first = 0
    blocks = (B + 16 * MAX_NV - 1) // (16 * MAX_NV)
    for r0 in range(r_first, M, MR):
        t = r0 // 16
        a_off = t * K * 16 + (r0 - 16 * t)
        rows = min(MR, M - r0)
        for q in range(blocks):
            b0 = (B * q) // blocks
            b1 = (B * (q + 1)) // blocks
            block((b1 - b0 + 15) // 16, a, a_off, xf, b0, B, K, cf, r0 * B + b0, B, rows,
                  b1 - b0, beta)
"""


def bvec_variant(mr: int, max_nv: int = 3, tall: int = 8):
    """(16, gemm): the batch-vector kernel on the shipped 16-row tiles (``pack(A, 16)``), mr
    rows (a divisor of 16) by up to 16 max_nv columns per call; the MR x nv kernels for each
    nv <= max_nv (at most 4) are compiled as mr * nv accumulators: mr * max_nv <= 28 keeps
    them in AVX-512's 32 registers. B = 1 runs ``_column_kernel(16, 1, tall)``."""
    scope = {f"micro{nv}": _bvec_kernel(mr, min(nv, max_nv)) for nv in range(1, 5)}
    scope.update(column=_column_kernel(16, 1, tall), TALL=tall, MR=mr, MAX_NV=max_nv)
    exec(_BVEC_DRIVER, scope)  # noqa: S102 - generated dispatch
    scope["block"] = njit(nogil=True, error_model="numpy")(scope["block"])
    return 16, njit(nogil=True, error_model="numpy")(scope["gemm"])
