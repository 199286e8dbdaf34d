"""``lstmkit.engine.kernels.transpose.transpose_into`` moves every number to its transposed place
and touches nothing else: whole 8 x 8 blocks, the edges that do not fill one, blocks of columns of
larger arrays (row strides other than the width), and views whose rows are not contiguous."""

from __future__ import annotations

import numpy as np
import pytest

from lstmkit.engine.kernels.transpose import transpose_into

SHAPES = [(1, 1), (8, 8), (3, 5), (8, 13), (13, 8), (16, 24), (29, 13), (64, 33), (128, 128)]


@pytest.mark.parametrize("m,n", SHAPES)
def test_transpose_equals_numpy(m, n):
    src = np.random.default_rng(m * 100 + n).standard_normal((m, n)).astype(np.float32)
    dst = np.full((n, m), np.nan, dtype=np.float32)
    transpose_into(dst, src)
    np.testing.assert_array_equal(dst, src.T)


@pytest.mark.parametrize("m,n", [(8, 8), (19, 21), (32, 40)])
def test_transpose_between_blocks_of_columns(m, n):
    """src: rows 2 .. 2 + m of a wider array's columns 5 .. 5 + n; dst: columns 3 .. 3 + m of
    one slice of a 3-D array (as a part's units of one output step); the rest stays as it was."""
    rng = np.random.default_rng(m + n)
    big = rng.standard_normal((m + 4, n + 9)).astype(np.float32)
    out = rng.standard_normal((3, n, m + 7)).astype(np.float32)
    before = out.copy()
    transpose_into(out[1, :, 3:3 + m], big[2:2 + m, 5:5 + n])
    np.testing.assert_array_equal(out[1, :, 3:3 + m], big[2:2 + m, 5:5 + n].T)
    expect = before.copy()
    expect[1, :, 3:3 + m] = out[1, :, 3:3 + m]
    np.testing.assert_array_equal(out, expect)


def test_transpose_of_a_strided_view():
    src = np.random.default_rng(0).standard_normal((16, 34)).astype(np.float32)[:, ::2]
    dst = np.zeros((17, 16), dtype=np.float32)
    transpose_into(dst, src)
    np.testing.assert_array_equal(dst, src.T)
