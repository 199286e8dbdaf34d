"""The fused kernels of a training step outside the model (``lstmkit.engine.kernels.softmax``,
``adam``, ``norms``) equal their readable NumPy definitions (``softmax_cross_entropy``,
``Adam._update``, ``clip.total_norm``), serially and split over threads."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lstmkit.clip import clip_grad_norm, total_norm
from lstmkit.engine import kernels
from lstmkit.engine.kernels import adam, norms, softmax, threads
from lstmkit.nn import softmax_cross_entropy
from lstmkit.optim import Adam, AdamW

DTYPES = [np.float32, np.float64]
RTOL = {np.float32: 1e-5, np.float64: 1e-12}


@pytest.fixture(params=[1, 2, 3], ids=["serial", "2-parts", "3-parts"])
def parts(request, monkeypatch):
    monkeypatch.setattr(threads, "parts_for_flops", lambda flops: request.param)
    return request.param


def reference(fn, *args, **kwargs):
    """fn(*args, **kwargs) with the fused kernels off: the readable NumPy definitions."""
    kernels.set_enabled(False)
    try:
        return fn(*args, **kwargs)
    finally:
        kernels.set_enabled(True)


def spy(monkeypatch, module, name):
    """Record the calls of module.name (still calling it); returns the list of calls."""
    calls = []
    original = getattr(module, name)

    def wrapper(*args, **kwargs):
        calls.append(name)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)
    return calls


def assert_close(a, b, dtype):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape and a.dtype == b.dtype == dtype
    scale = float(np.max(np.abs(b))) if b.size else 0.0
    np.testing.assert_allclose(a, b, rtol=RTOL[dtype], atol=RTOL[dtype] * scale)


# --- softmax cross-entropy -------------------------------------------------------------------


def ce_case(dtype, shape, n_ignored=0, scale=3.0, seed=0, ignore_index=-100):
    *lead, vocab = shape
    rng = np.random.default_rng(seed + sum(shape))
    logits = (rng.standard_normal(shape) * scale).astype(dtype)
    targets = rng.integers(0, vocab, tuple(lead))
    flat = targets.reshape(-1)
    flat[rng.permutation(flat.size)[:n_ignored]] = ignore_index
    return logits, targets


CE_SHAPES = [(1, 1), (1, 7), (5, 1), (37, 300), (3, 4, 17), (6, 2, 1000)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", CE_SHAPES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("ignored", ["none", "some", "all"])
def test_cross_entropy_kernel_equals_numpy(dtype, shape, reduction, ignored, parts, monkeypatch):
    rows = int(np.prod(shape[:-1]))
    n_ignored = {"none": 0, "some": rows // 3, "all": rows}[ignored]
    logits, targets = ce_case(dtype, shape, n_ignored=n_ignored)
    calls = spy(monkeypatch, softmax, "cross_entropy_rows")
    loss, grad = softmax_cross_entropy(logits, targets, reduction=reduction)
    assert calls == ["cross_entropy_rows"]
    ref_loss, ref_grad = reference(softmax_cross_entropy, logits, targets, reduction=reduction)
    assert len(calls) == 1  # the reference did not call the kernel
    if reduction == "mean" and n_ignored == rows:
        assert np.isnan(loss) and np.isnan(ref_loss) and np.asarray(loss).dtype == dtype
    else:
        assert_close(loss, ref_loss, dtype)
    assert_close(grad, ref_grad, dtype)
    assert not grad[targets == -100].any()  # ignored rows: zero gradient


@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_loss_is_the_same_on_every_path(dtype, monkeypatch):
    """Gradient or not, into a new array, a given one or the logits, serial or split: the
    same loss to the bit, the same gradient to the bit."""
    logits, targets = ce_case(dtype, (9, 4, 333), n_ignored=5)
    results = []
    for n_parts in (1, 2, 3):
        monkeypatch.setattr(threads, "parts_for_flops", lambda flops, n=n_parts: n)
        loss, grad = softmax_cross_entropy(logits, targets)
        no_grad_loss, none = softmax_cross_entropy(logits, targets, compute_grad=False)
        buf = np.full_like(logits, np.nan)
        buf_loss, buf_grad = softmax_cross_entropy(logits, targets, out=buf)
        z = logits.copy()
        inplace_loss, inplace_grad = softmax_cross_entropy(z, targets, out=z)
        assert none is None
        assert np.shares_memory(buf_grad, buf) and np.shares_memory(inplace_grad, z)
        assert loss == no_grad_loss == buf_loss == inplace_loss
        np.testing.assert_array_equal(buf_grad, grad)
        np.testing.assert_array_equal(inplace_grad, grad)
        results.append((loss, grad))
    for loss, grad in results[1:]:
        assert loss == results[0][0]
        np.testing.assert_array_equal(grad, results[0][1])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale", [1e4, 1e30])
def test_cross_entropy_kernel_huge_logits_and_ties(dtype, scale, parts):
    logits, targets = ce_case(dtype, (4, 3, 50), scale=scale)
    logits[0, 0, :] = scale  # a row of ties at the top
    logits[1, 1, :] = -scale
    logits[2, 2, ::3] = -np.inf  # excluded classes
    targets[2, 2] = 1
    loss, grad = softmax_cross_entropy(logits, targets, reduction="sum")
    ref_loss, ref_grad = reference(softmax_cross_entropy, logits, targets, reduction="sum")
    assert np.isfinite(loss) and np.isfinite(grad).all()
    assert_close(loss, ref_loss, dtype)
    assert_close(grad, ref_grad, dtype)


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # in the reference
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_cross_entropy_kernel_nonfinite_logits(dtype, bad, parts):
    logits, targets = ce_case(dtype, (3, 5, 40))
    logits[1, 2, 7] = bad
    if bad == -np.inf:
        logits[2, 0, :] = -np.inf  # a row without any finite logit
    for reduction in ("mean", "none"):
        loss, grad = softmax_cross_entropy(logits, targets, reduction=reduction)
        ref_loss, ref_grad = reference(softmax_cross_entropy, logits, targets,
                                       reduction=reduction)
        np.testing.assert_array_equal(np.isnan(loss), np.isnan(ref_loss))
        np.testing.assert_array_equal(np.isnan(grad), np.isnan(ref_grad))
        finite = ~np.isnan(ref_grad)
        assert_close(grad[finite], ref_grad[finite], dtype)


def test_cross_entropy_kernel_targets_dtypes_ignore_index_and_layouts(parts):
    logits, targets = ce_case(np.float32, (7, 3, 30), n_ignored=4, ignore_index=29)
    for t in (targets.astype(np.uint8), targets.astype(np.int32), targets.astype(np.uint64)):
        loss, grad = softmax_cross_entropy(logits, t, ignore_index=29)
        ref_loss, ref_grad = reference(softmax_cross_entropy, logits, t, ignore_index=29)
        assert_close(loss, ref_loss, np.float32)
        assert_close(grad, ref_grad, np.float32)
    # strided logits (the kernel takes a contiguous copy, or the reference runs)
    wide = np.repeat(logits, 2, axis=-1)[..., ::2]
    loss, grad = softmax_cross_entropy(wide, targets, ignore_index=29)
    ref_loss, ref_grad = reference(softmax_cross_entropy, logits, targets, ignore_index=29)
    assert_close(loss, ref_loss, np.float32)
    assert_close(grad, ref_grad, np.float32)
    # no rows at all
    loss, grad = softmax_cross_entropy(np.zeros((0, 5), np.float32), np.zeros(0, np.int64))
    assert np.isnan(loss) and grad.shape == (0, 5)


def test_cross_entropy_errors_unchanged_with_the_kernel():
    logits, targets = ce_case(np.float32, (6, 3, 17))
    bad = targets.copy()
    bad[2, 1] = 17
    with pytest.raises(IndexError, match=r"targets must be in \[0, 17\) or equal ignore_index"):
        softmax_cross_entropy(logits, bad)
    with pytest.raises(ValueError, match="reduction must be one of"):
        softmax_cross_entropy(logits, targets, reduction="avg")
    with pytest.raises(ValueError, match="out must be a C-contiguous ndarray"):
        softmax_cross_entropy(logits, targets, out=np.empty((6, 3, 17), np.float32)[:, ::-1])


# --- Adam / AdamW ------------------------------------------------------------------------------

ADAM_SHAPES = {"weight": (37, 19), "bias": (300,), "tiny": (5,), "scalar": (), "emb": (3, 41)}


def adam_run(cls, kwargs, dtype, steps=6):
    rng = np.random.default_rng(7)
    params = {n: rng.standard_normal(s).astype(dtype) for n, s in ADAM_SHAPES.items()}
    grads = {n: np.zeros_like(p) for n, p in params.items()}
    opt = cls(params, grads, **kwargs)
    for step in range(steps):
        for g in grads.values():
            g[...] = rng.standard_normal(g.shape) * (0.1 + step % 3)
            g[rng.random(g.shape) < 0.1] = 0.0
        opt.lr = kwargs.get("lr", 1e-3) * (1 + step)
        opt.step()
    return params, opt.state


ADAM_CASES = [(cls, {"lr": 0.01, "weight_decay": wd, "amsgrad": ams})
              for cls in (Adam, AdamW) for wd in (0.0, 0.05) for ams in (False, True)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "cls, kwargs", ADAM_CASES,
    ids=[f"{c.__name__}-wd{k['weight_decay']}-ams{k['amsgrad']}" for c, k in ADAM_CASES])
def test_adam_kernel_equals_numpy_to_the_bit(cls, kwargs, dtype, parts, monkeypatch):
    calls = spy(monkeypatch, adam, "adam_update")
    params, state = adam_run(cls, kwargs, dtype)
    assert len(calls) == 6 * len(ADAM_SHAPES)
    ref_params, ref_state = reference(adam_run, cls, kwargs, dtype)
    assert len(calls) == 6 * len(ADAM_SHAPES)  # the reference did not call the kernel
    for name in ADAM_SHAPES:
        assert params[name].dtype == dtype
        np.testing.assert_array_equal(params[name], ref_params[name])
    assert {b: set(s) for b, s in state.items()} == {b: set(s) for b, s in ref_state.items()}
    for buffer, arrays in state.items():
        for name, array in arrays.items():
            np.testing.assert_array_equal(array, ref_state[buffer][name])


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # in the reference
def test_adam_kernel_nan_gradients_and_amsgrad_like_numpy():
    def run():
        params = {"w": np.linspace(-1, 1, 200).astype(np.float32)}
        grads = {"w": np.full(200, 0.5, np.float32)}
        opt = Adam(params, grads, amsgrad=True)
        opt.step()
        grads["w"][3] = np.nan
        grads["w"][4] = np.inf
        opt.step()
        grads["w"][:] = 0.1
        opt.step()
        return params["w"], opt.state["max_exp_avg_sq"]["w"]

    for fast, slow in zip(run(), reference(run)):
        np.testing.assert_array_equal(fast, slow)


def test_adam_kernel_falls_back_for_non_contiguous_arrays(monkeypatch):
    calls = spy(monkeypatch, adam, "adam_update")

    def run():
        rng = np.random.default_rng(0)
        params = {"f": np.asfortranarray(rng.standard_normal((6, 5))),
                  "c": rng.standard_normal((6, 5))}
        grads = {n: np.ones_like(p) for n, p in params.items()}
        opt = AdamW(params, grads)
        for _ in range(3):
            opt.step()
        return params

    fast, slow = run(), reference(run)
    assert len(calls) == 3  # only the C-contiguous parameter took the kernel
    for name in fast:
        np.testing.assert_array_equal(fast[name], slow[name])


# --- gradient norm -----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", [0, 1, 4095, 4096, 4097, 3 * 4096 + 5, 50_000])
def test_sum_of_squares_equals_numpy(dtype, size, parts):
    rng = np.random.default_rng(size)
    a = rng.standard_normal(size).astype(dtype)
    expected = float(np.sum(a.astype(np.float64) ** 2))
    got = norms.sum_of_squares(a)
    assert isinstance(got, float)
    assert got == pytest.approx(expected, rel=1e-13, abs=0.0)
    if size > 2:
        assert norms.sum_of_squares(a.reshape(-1, 1)) == got


@pytest.mark.parametrize("dtype", DTYPES)
def test_sum_of_squares_is_the_same_for_any_split(dtype, monkeypatch):
    a = np.random.default_rng(3).standard_normal((37, 1001)).astype(dtype)
    sums = set()
    for n_parts in (1, 2, 3, 5):
        monkeypatch.setattr(threads, "parts_for_flops", lambda flops, n=n_parts: n)
        sums.add(norms.sum_of_squares(a))
    assert len(sums) == 1


def norm_grads(dtype, scale=1.0):
    rng = np.random.default_rng(11)
    shapes = [(64, 33), (300,), (7,), (), (2, 3, 4100)]
    return {f"g{i}": np.asarray(rng.standard_normal(s) * scale, dtype=dtype)
            for i, s in enumerate(shapes)}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("max_norm", [0.5, 1e6])
def test_clip_grad_norm_kernel_equals_numpy(dtype, max_norm, parts, monkeypatch):
    calls = spy(monkeypatch, norms, "sum_of_squares")
    grads = norm_grads(dtype)
    ref_grads = {n: g.copy() for n, g in grads.items()}
    norm = clip_grad_norm(grads, max_norm)
    assert len(calls) == len(grads)
    ref_norm = reference(clip_grad_norm, ref_grads, max_norm)
    assert len(calls) == len(grads)  # the reference did not call the kernel
    assert isinstance(norm, float)
    assert norm == pytest.approx(ref_norm, rel=1e-12, abs=0.0)
    for name, g in grads.items():
        assert_close(g, ref_grads[name], dtype)
    for norm_type in (1.0, 3.0, math.inf):  # other norms: the NumPy definition, unchanged
        assert total_norm(grads, norm_type) == reference(total_norm, grads, norm_type)


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning")  # in the reference
@pytest.mark.parametrize("case", ["huge", "tiny", "zero", "nan", "inf", "strided", "float16"])
def test_total_norm_kernel_edge_cases_like_numpy(case):
    grads = norm_grads(np.float64)
    for g in grads.values():  # squares that overflow or underflow float64, as in NumPy
        g *= {"huge": 1e200, "tiny": 1e-200, "zero": 0.0}.get(case, 1.0)
    if case == "nan":
        grads["g0"][3, 4] = np.nan
    elif case == "inf":
        grads["g1"][5] = -np.inf
    elif case == "strided":  # not contiguous: the NumPy definition
        grads["g0"] = grads["g0"][:, ::2]
    elif case == "float16":  # not float32/float64: the NumPy definition
        grads["g1"] = grads["g1"].astype(np.float16)
    got, expected = total_norm(grads), reference(total_norm, grads)
    if math.isnan(expected):
        assert math.isnan(got)
    else:
        assert got == pytest.approx(expected, rel=1e-12, abs=0.0)
