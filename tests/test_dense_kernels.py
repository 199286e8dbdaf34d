"""The fused paths outside the recurrence (``lstmkit.engine.kernels.linear``, thread-pool hygiene)
equal their readable NumPy definitions."""

from __future__ import annotations

import numpy as np
import pytest

from lstmkit.engine import kernels
from lstmkit.engine.kernels import linear, threads
from lstmkit.nn import Embedding, Linear

RTOL = {np.float32: 2e-5, np.float64: 1e-12}


@pytest.fixture(params=[1, 2, 3], ids=["serial", "2-parts", "3-parts"])
def parts(request, monkeypatch):
    monkeypatch.setattr(threads, "parts_for_flops", lambda flops: request.param)
    return request.param


def linear_run(layer, x, d):
    layer.zero_grad()
    y = layer(x)
    dx = layer.backward(d)
    return [y, dx] + [g.copy() for g in layer.grads.values()]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 1, 1), (1, 5, 3), (7, 4, 1), (3, 5, 9, 17), (2, 40, 33, 70)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_kernels_equal_numpy(dtype, shape, bias, parts, monkeypatch):
    *lead, n_in, n_out = shape
    rng = np.random.default_rng(sum(shape))
    x = rng.standard_normal((*lead, n_in)).astype(dtype)
    d = rng.standard_normal((*lead, n_out)).astype(dtype)
    layer = Linear(n_in, n_out, bias=bias, dtype=dtype, seed=1)
    fast = linear_run(layer, x, d)
    kernels.set_enabled(False)
    try:
        slow = linear_run(layer, x, d)
    finally:
        kernels.set_enabled(True)
    assert len(fast) == len(slow)
    for a, b in zip(fast, slow):
        assert a.shape == b.shape and a.dtype == b.dtype == dtype
        np.testing.assert_allclose(a, b, rtol=RTOL[dtype], atol=RTOL[dtype] * 10)


def test_linear_kernels_are_used_and_accumulate(monkeypatch):
    calls = []
    for name in ("forward", "input_grad", "weight_grad"):
        original = getattr(linear, name)
        monkeypatch.setattr(linear, name, lambda *a, _o=original, _n=name: (calls.append(_n),
                                                                            _o(*a)))
    layer = Linear(6, 4, seed=0)
    x = np.ones((5, 6), np.float32)
    layer(x)
    layer.backward(np.ones((5, 4), np.float32))
    first = layer.grads["weight"].copy()
    layer(x)
    layer.backward(np.ones((5, 4), np.float32))
    assert calls == ["forward", "weight_grad", "input_grad"] * 2
    np.testing.assert_allclose(layer.grads["weight"], 2 * first)


def test_tied_linear_kernels_add_into_the_embedding_gradient(parts):
    emb = Embedding(9, 4, seed=0)
    dec = Linear(4, 9, tied_to=emb, seed=1)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 9, (3, 2))
    dec(emb(ids))
    emb.backward(dec.backward(np.ones((3, 2, 9), np.float32)))
    fast = emb.grads["weight"].copy()
    emb.zero_grad()
    kernels.set_enabled(False)
    try:
        dec(emb(ids))
        emb.backward(dec.backward(np.ones((3, 2, 9), np.float32)))
    finally:
        kernels.set_enabled(True)
    np.testing.assert_allclose(fast, emb.grads["weight"], rtol=1e-5, atol=1e-6)


def test_non_contiguous_or_mixed_operands_take_numpy():
    a = np.ones((4, 6), np.float32)
    assert linear.supports(a, np.ones((3, 6), np.float32))
    assert not linear.supports(a[:, ::2], np.ones((3, 3), np.float32))
    assert not linear.supports(a, np.ones((3, 6), np.float64))
    assert not linear.supports(a.astype(np.float16), np.ones((3, 6), np.float16))


def test_numpy_blas_single_threaded_restores_the_limits():
    from threadpoolctl import threadpool_info

    def blas_threads():
        return sorted(i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas")

    before = blas_threads()
    with threads.numpy_blas_single_threaded():
        assert blas_threads() and all(n == 1 for n in blas_threads())
    assert blas_threads() == before
