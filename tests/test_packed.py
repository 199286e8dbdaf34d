"""The packed-weight product of one recurrent step (``lstmkit.engine.kernels.packed``) equals
NumPy's ``A @ X`` to float32 rounding, on every tile remainder (rows not a multiple of 16, batch
columns not a multiple of the block width, 6 or 12; for a single column, B = 1, rows in groups
of 4 or 8 tiles and the rest), writing only its own block of rows; for the host's vector width
and, in a child process, for the other one (8 and 16 floats both run on any x86 CPU)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from numba import njit

from lstmkit.engine.kernels import packed


@njit(cache=False)
def _rows_product(a, a_off, X, C, r0, r1, beta):
    packed.packed_gemm(a, a_off, r1 - r0, X, C[r0:r1], beta)


SHAPES = [(1, 1, 1), (16, 3, 6), (17, 5, 7), (33, 19, 13), (64, 64, 16), (100, 37, 20),
          (128, 128, 1), (5, 200, 12), (64, 5, 1), (100, 37, 1), (200, 20, 1), (40, 9, 11),
          (48, 7, 24), (300, 17, 1)]


@pytest.mark.parametrize("M,K,B", SHAPES)
@pytest.mark.parametrize("beta", [True, False])
def test_packed_gemm_equals_numpy(M, K, B, beta):
    rng = np.random.default_rng(M * 1000 + K * 10 + B)
    A = rng.standard_normal((M, K)).astype(np.float32)
    X = rng.standard_normal((K, B)).astype(np.float32)
    C = rng.standard_normal((M + 7, B)).astype(np.float32)  # rows 3 .. 3 + M are the block
    before = C.copy()
    room = np.full(packed.packed_size(M, K) + 5, np.nan, dtype=np.float32)
    packed.pack_rows(A, np.arange(M), 0, M, room, 5)  # at an offset, as each thread's part is
    _rows_product(room, 5, X, C, 3, 3 + M, beta)
    expect = A.astype(np.float64) @ X.astype(np.float64)
    if beta:
        expect += before[3:3 + M]
    scale = np.sqrt(K) + np.abs(before).max()
    np.testing.assert_allclose(C[3:3 + M], expect, rtol=0, atol=2e-6 * scale)
    np.testing.assert_array_equal(C[:3], before[:3])
    np.testing.assert_array_equal(C[3 + M:], before[3 + M:])


@njit(cache=False)
def _stacked_rows_product(a, a_off, X, X2, C, r0, r1, beta):
    packed.packed_gemm_stacked(a, a_off, r1 - r0, X, X2, C[r0:r1], beta)


@pytest.mark.parametrize("M,K,K2,B", [(1, 1, 1, 2), (16, 3, 5, 6), (17, 5, 16, 7),
                                      (33, 19, 1, 13), (64, 17, 64, 16), (100, 1, 37, 20),
                                      (40, 9, 0, 3), (40, 0, 9, 3), (24, 4, 8, 1)])
@pytest.mark.parametrize("beta", [True, False])
def test_stacked_product_equals_numpy(M, K, K2, B, beta):
    """A [X; X2] with A (M, K + K2) packed, X and X2 separate arrays (either may be empty)."""
    rng = np.random.default_rng(M * 1000 + K * 10 + K2 + B)
    A = rng.standard_normal((M, K + K2)).astype(np.float32)
    X = rng.standard_normal((K, B)).astype(np.float32)
    X2 = rng.standard_normal((K2, B)).astype(np.float32)
    C = rng.standard_normal((M + 7, B)).astype(np.float32)
    before = C.copy()
    room = np.full(packed.packed_size(M, K + K2) + 5, np.nan, dtype=np.float32)
    packed.pack_rows(A, np.arange(M), 0, M, room, 5)
    _stacked_rows_product(room, 5, X, X2, C, 3, 3 + M, beta)
    expect = A.astype(np.float64) @ np.concatenate([X, X2]).astype(np.float64)
    if beta:
        expect += before[3:3 + M]
    scale = np.sqrt(K + K2) + np.abs(before).max()
    np.testing.assert_allclose(C[3:3 + M], expect, rtol=0, atol=2e-6 * scale)
    np.testing.assert_array_equal(C[:3], before[:3])
    np.testing.assert_array_equal(C[3 + M:], before[3 + M:])


@njit(cache=False)
def _panels_product(a, a_off, X, C, r0, r1, beta):
    K, B = X.shape
    XP = np.full(K * B, np.nan, dtype=np.float32)
    packed.to_panels(X, K // 2, K, XP)  # in two pieces of rows, as each thread writes its own
    packed.to_panels(X, 0, K // 2, XP)
    packed.packed_gemm_panels(a, a_off, r1 - r0, XP, K, B, C[r0:r1], beta)


@pytest.mark.parametrize("M,K,B", SHAPES + [(40, 300, 64), (20, 260, 128)])
@pytest.mark.parametrize("beta", [True, False])
def test_panels_product_equals_numpy(M, K, B, beta):
    """A X with X written as panels (every number of XP written: it starts NaN)."""
    rng = np.random.default_rng(M * 1000 + K * 10 + B + 1)
    A = rng.standard_normal((M, K)).astype(np.float32)
    X = rng.standard_normal((K, B)).astype(np.float32)
    C = rng.standard_normal((M + 7, B)).astype(np.float32)
    before = C.copy()
    room = np.full(packed.packed_size(M, K) + 5, np.nan, dtype=np.float32)
    packed.pack_rows(A, np.arange(M), 0, M, room, 5)
    _panels_product(room, 5, X, C, 3, 3 + M, beta)
    expect = A.astype(np.float64) @ X.astype(np.float64)
    if beta:
        expect += before[3:3 + M]
    scale = np.sqrt(K) + np.abs(before).max()  # float32 sums of K terms: a few ulp of that
    np.testing.assert_allclose(C[3:3 + M], expect, rtol=0, atol=4e-6 * scale)
    np.testing.assert_array_equal(C[:3], before[:3])
    np.testing.assert_array_equal(C[3 + M:], before[3 + M:])


def test_panel_layout_is_column_blocks_row_major():
    """X (3, 28): as few blocks of columns of at most MAX_NB (6: [0, 5), [5, 11), [11, 16),
    [16, 22), [22, 28); 12: [0, 9), [9, 18), [18, 28)), of equal widths, each a (3, width)
    row-major panel at offset 3 * its first column."""
    X = np.arange(3 * 28, dtype=np.float32).reshape(3, 28)
    XP = np.full(X.size, np.nan, dtype=np.float32)
    packed.to_panels(X, 0, 3, XP)
    cuts = {6: [0, 5, 11, 16, 22, 28], 12: [0, 9, 18, 28]}[packed.MAX_NB]
    for b0, b1 in zip(cuts[:-1], cuts[1:]):
        np.testing.assert_array_equal(XP[3 * b0:3 * b1].reshape(3, b1 - b0), X[:, b0:b1])


_OTHER_WIDTH = r"""
import numpy as np
from lstmkit.engine.kernels import packed
assert packed.LANES == {lanes}, packed.LANES
rng = np.random.default_rng(0)
for M, K, K2, B in ((33, 19, 5, 13), (300, 17, 3, 1), (48, 7, 9, 24), (17, 64, 0, 6)):
    A = rng.standard_normal((M, K + K2)).astype(np.float32)
    X = rng.standard_normal((K + K2, B)).astype(np.float32)
    expect = A.astype(np.float64) @ X.astype(np.float64)
    C = np.zeros((M, B), np.float32)
    packed.packed_gemm(packed.pack(A), 0, M, X, C, False)
    np.testing.assert_allclose(C, expect, rtol=0, atol=1e-5 * (K + K2))
    C2 = np.zeros((M, B), np.float32)
    packed.packed_gemm_stacked(packed.pack(A), 0, M, X[:K].copy(), X[K:].copy(), C2, False)
    np.testing.assert_allclose(C2, expect, rtol=0, atol=1e-5 * (K + K2))
print("ok", packed.MAX_NB)
"""


def test_the_other_vector_width_runs_correctly_here(tmp_path):
    """The micro-kernels written for the vector width this CPU does not have (AVX2's 8 floats
    on an AVX-512 CPU, or AVX-512's 16 on another) compute the same products: LLVM joins or
    splits the vectors. Compiled afresh in a child (its own Numba cache)."""
    other = 8 if packed.LANES == 16 else 16
    env = dict(os.environ, LSTMKIT_VECTOR_WIDTH=str(other), NUMBA_CACHE_DIR=str(tmp_path))
    result = subprocess.run([sys.executable, "-c", _OTHER_WIDTH.format(lanes=other)],
                            capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.split() == ["ok", "6" if other == 8 else "12"]


def test_pack_layout_is_tiles_of_16_rows_zero_padded():
    A = np.arange(20 * 3, dtype=np.float32).reshape(20, 3)
    p = packed.pack(A).reshape(2, 3, 16)  # 2 tiles of (K, 16)
    np.testing.assert_array_equal(p[0], A[:16].T)
    np.testing.assert_array_equal(p[1, :, :4], A[16:].T)
    np.testing.assert_array_equal(p[1, :, 4:], 0.0)


def test_pack_rows_of_a_part_with_permuted_rows():
    rng = np.random.default_rng(0)
    A = rng.standard_normal((40, 9)).astype(np.float32)
    order = rng.permutation(40)
    room = np.empty(packed.packed_size(24, 9), dtype=np.float32)
    packed.pack_rows(A, order, 16, 40, room, 0)
    np.testing.assert_array_equal(room, packed.pack(A[order][16:40]))


@pytest.mark.parametrize("part", [0, 1])
def test_pack_rows_of_the_parts_gate_blocks(part):
    """The layer's own permutation (threads.row_permutation): runs of consecutive rows, which
    pack as 8 x 8 transposes, and tiles that straddle two gate blocks, which do not."""
    from lstmkit.engine.kernels import threads

    G, H = 4, 40
    bounds = np.array([0, 24, 40])
    order = threads.row_permutation(G, H, bounds)
    A = np.random.default_rng(part).standard_normal((G * H, 13)).astype(np.float32)
    r0, r1 = G * bounds[part], G * bounds[part + 1]
    room = np.full(packed.packed_size(r1 - r0, 13) + 2, np.nan, dtype=np.float32)
    packed.pack_rows(A, order, r0, r1, room, 2)
    np.testing.assert_array_equal(room[2:], packed.pack(A[order][r0:r1]))


@pytest.mark.parametrize("part", [0, 1])
@pytest.mark.parametrize("K,K2", [(13, 40), (16, 8), (1, 3)])
def test_pack_rows_stacked_packs_the_joined_matrix(part, K, K2):
    """[A | b | A2] packed without joining it: the same floats as pack_rows of the joined
    matrix, for whole tiles of consecutive rows (8 x 8 transposes) and straddling ones."""
    from lstmkit.engine.kernels import threads

    G, H = 4, 40
    bounds = np.array([0, 24, 40])
    order = threads.row_permutation(G, H, bounds)
    rng = np.random.default_rng(10 * K + part)
    A = rng.standard_normal((G * H, K)).astype(np.float32)
    b = rng.standard_normal(G * H).astype(np.float32)
    A2 = rng.standard_normal((G * H, K2)).astype(np.float32)
    r0, r1 = G * bounds[part], G * bounds[part + 1]
    room = np.full(packed.packed_size(r1 - r0, K + 1 + K2) + 2, np.nan, dtype=np.float32)
    packed.pack_rows_stacked(A, b, A2, order, r0, r1, room, 2)
    joined = np.hstack([A, b[:, None], A2])
    np.testing.assert_array_equal(room[2:], packed.pack(joined[order][r0:r1]))


@pytest.mark.parametrize("c0,c1", [(0, 40), (8, 29), (16, 17)])
def test_pack_columns_packs_the_transpose_of_the_permuted_matrix(c0, c1):
    rng = np.random.default_rng(c1)
    A = rng.standard_normal((37, 40)).astype(np.float32)
    order = rng.permutation(37)
    room = np.full(packed.packed_size(c1 - c0, 37) + 3, np.nan, dtype=np.float32)
    packed.pack_columns(A, order, c0, c1, room, 3)
    np.testing.assert_array_equal(room[3:], packed.pack(A[order].T[c0:c1]))
