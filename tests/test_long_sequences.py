"""Long sequences (T = 2,000, float32): training stays finite, and no denormals in backward.

Denormal (subnormal) floats, below ``np.finfo(np.float32).tiny`` = 1.2e-38, make x86 arithmetic
up to ~100x slower per operation. A gradient that decays geometrically on its way back through
time passes through that range on its way to zero; unless the backward pass flushes such values
to zero, every step it spends there is slow. Rather than time the backward pass (timings flake
in CI; see ``benchmarks/bench_denormals.py`` for the measurement), the tests check the arrays:
first that the gradient really decays through the denormal range, then that no denormal value
survives in dx, the initial-state gradients or the parameter gradients.
"""

from __future__ import annotations

import numpy as np
import pytest

import lstmkit

T_LONG = 2000
TINY32 = np.finfo(np.float32).tiny  # the smallest normal float32


def denormal_count(array: np.ndarray) -> int:
    """How many entries are subnormal: nonzero and smaller in magnitude than the tiniest
    normal number."""
    magnitude = np.abs(array)
    return int(np.count_nonzero((magnitude > 0) & (magnitude < np.finfo(array.dtype).tiny)))


@pytest.mark.parametrize("options", [{}, {"forget_gate": False}, {"peepholes": True}],
                         ids=["lstm", "no_forget_gate", "peepholes"])
def test_sgd_on_a_2000_step_sequence_stays_finite(options):
    """A few SGD steps of an LSTM on one long random sequence: every forward output, gradient
    and updated weight stays finite, and the weights do move."""
    rng = np.random.default_rng(0)
    B, D, H = 4, 8, 32
    layer = lstmkit.LSTM(D, H, num_layers=2, seed=0, **options)
    x = rng.standard_normal((T_LONG, B, D)).astype(np.float32)
    target = np.tanh(np.cumsum(x[..., :1], axis=0) / 30.0).astype(np.float32)  # (T, B, 1)
    readout = (rng.standard_normal((H, 1)) / np.sqrt(H)).astype(np.float32)
    start = layer.state_dict()
    losses = []
    for _ in range(3):
        layer.zero_grad()
        out, (h_n, c_n) = layer(x)
        assert np.isfinite(out).all() and np.isfinite(h_n).all() and np.isfinite(c_n).all()
        error = out @ readout - target  # (T, B, 1)
        losses.append(float(np.mean(error**2)))
        d_out = (2.0 / error.size) * error @ readout.T  # dL/d(out), (T, B, H)
        dx, (dh0, dc0) = layer.backward(d_out.astype(np.float32))
        assert np.isfinite(dx).all() and np.isfinite(dh0).all() and np.isfinite(dc0).all()
        for name, grad in layer.grads.items():
            assert np.isfinite(grad).all(), name
        total = lstmkit.clip_grad_norm(layer.grads, max_norm=1.0)
        assert np.isfinite(total) and total > 0
        for name, value in layer.params.items():
            value -= 0.5 * layer.grads[name]
    assert all(np.isfinite(loss) for loss in losses)
    assert all(np.isfinite(v).all() for v in layer.params.values())
    assert any(not np.array_equal(layer.params[n], start[n]) for n in start)


@pytest.fixture(scope="module")
def decaying_backward() -> dict[str, np.ndarray]:
    """Backward through 2,000 steps of a forgetful LSTM (forget gates near 0.1) with the loss
    on the last output only, so the gradient shrinks ~10x per step back through time."""
    layer = lstmkit.LSTM(4, 16, forget_bias=-2.0, seed=0, fast=True)
    x = np.random.default_rng(0).standard_normal((T_LONG, 2, 4)).astype(np.float32)
    out, _ = layer(x)
    d_out = np.zeros_like(out)
    d_out[-1] = 1.0
    dx, (dh0, dc0) = layer.backward(d_out)
    return {"dx": dx, "dh_0": dh0, "dc_0": dc0,
            **{f"grad {name}": g.copy() for name, g in layer.grads.items()}}


def test_the_gradient_decays_through_the_denormal_range(decaying_backward):
    """The premise of the next test: back through time, the gradient per step shrinks by a
    bounded factor (at most 2**-8 per step) from ordinary sizes to values near the smallest
    normal float, then is exactly zero. Without flushing, the steps in between hold denormals
    (the next smaller value, >= 2**-8 * tiny, is subnormal, not zero); with flushing they are
    zero. Both pass here; the next test tells them apart."""
    dx = decaying_backward["dx"]
    per_step = np.abs(dx).reshape(T_LONG, -1).max(axis=1)  # (T,) largest |dx_t| per step
    assert per_step[-1] > 1e-6
    assert per_step[0] == 0.0
    first = int(np.argmax(per_step > 0))  # the earliest step the gradient still reaches
    assert np.all(per_step[first:] > 0)
    shrink = per_step[first:-1] / per_step[first + 1 :]  # |dx_t| / |dx_{t+1}|
    assert shrink.min() > 2.0**-8, shrink.min()
    assert per_step[first] < 2.0**8 * TINY32  # the decay reached the denormal boundary


def test_backward_leaves_no_denormals(decaying_backward):
    """The fused kernels (the default path) flush subnormals to zero in the backward pass;
    the readable reference loop does not (it is the documentation, not the fast path)."""
    found = {name: denormal_count(a) for name, a in decaying_backward.items()}
    assert all(count == 0 for count in found.values()), found


def test_denormal_check_itself():
    a = np.array([0.0, TINY32, -TINY32, TINY32 / 2, 1.0, np.float32(1e-45)], dtype=np.float32)
    assert denormal_count(a) == 2
    assert np.all((np.abs(a) == 0) | (np.abs(a) >= TINY32)) == (denormal_count(a) == 0)
