"""One fused pass per parameter for Adam and AdamW: the fast path of ``lstmkit.optim.Adam``.

``Adam._update`` (the readable definition) runs about twelve NumPy operations per parameter,
each a pass through memory with a temporary array. Here one compiled loop reads every element
of the parameter, its gradient and its buffers once and writes them back, with exactly the
arithmetic of ``Adam._update`` (PyTorch's single-tensor order), operation by operation in the
parameter's dtype, the hyperparameters first rounded to that dtype as NumPy does::

    param *= 1 - lr * weight_decay                  (AdamW: decoupled weight decay)
    g = grad + weight_decay * param                 (Adam with weight_decay)
    exp_avg += (1 - beta1) * (g - exp_avg)
    exp_avg_sq = exp_avg_sq * beta2 + ((1 - beta2) * g) * g
    max_exp_avg_sq = maximum(max_exp_avg_sq, exp_avg_sq)           (amsgrad)
    denom = sqrt(exp_avg_sq or max_exp_avg_sq) / bias_correction2_sqrt + eps
    param -= step_size * (exp_avg / denom)

No operation is fused into another (no FMA contraction: Numba's default), so the results equal
the NumPy definition to the bit. The gradient array is only read.

Large parameters are split into ``parts`` contiguous ranges of elements, one per thread
(``prange``), chosen with ``threads.parts_for_flops``; small ones take one serial call.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from lstmkit.engine.kernels import threads

_OPTS = {"cache": True, "nogil": True}
# floating-point operations of one element's update, for the serial/parallel choice
_FLOPS_PER_ELEMENT = 15.0


@njit(error_model="numpy")
def _update_range(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, one_minus_beta1, beta2,
                  one_minus_beta2, step_size, bias_correction2_sqrt, eps, weight_decay,
                  decay, decoupled, amsgrad):
    """The Adam update of one contiguous range: every array (n,), the scalars in its dtype.

    ``decay`` (1 - lr * weight_decay) multiplies the parameter first when ``decoupled``;
    otherwise a nonzero ``weight_decay`` enters the gradient. ``max_exp_avg_sq`` is only
    touched with ``amsgrad``.
    """
    coupled = weight_decay != 0 and not decoupled
    for i in range(param.shape[0]):
        p = param[i]
        if decoupled:
            p = p * decay
        g = grad[i]
        if coupled:
            g = g + weight_decay * p
        m = exp_avg[i]
        m = m + one_minus_beta1 * (g - m)
        v = exp_avg_sq[i] * beta2
        v = v + one_minus_beta2 * g * g
        exp_avg[i] = m
        exp_avg_sq[i] = v
        if amsgrad:
            v_max = max_exp_avg_sq[i]
            if v > v_max or v != v:  # np.maximum: NaN if either is NaN
                v_max = v
            max_exp_avg_sq[i] = v_max
            v = v_max
        denom = math.sqrt(v) / bias_correction2_sqrt + eps
        param[i] = p - step_size * (m / denom)


def _split_elements(loop):
    def update(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, one_minus_beta1, beta2,
               one_minus_beta2, step_size, bias_correction2_sqrt, eps, weight_decay, decay,
               decoupled, amsgrad, parts):
        """``_update_range`` over ``parts`` contiguous ranges of the (n,) arrays."""
        n = param.shape[0]
        for p in loop(parts):
            i0 = (n * p) // parts
            i1 = (n * (p + 1)) // parts
            _update_range(param[i0:i1], grad[i0:i1], exp_avg[i0:i1], exp_avg_sq[i0:i1],
                          max_exp_avg_sq[i0:i1],
                          one_minus_beta1, beta2, one_minus_beta2, step_size,
                          bias_correction2_sqrt, eps, weight_decay, decay, decoupled, amsgrad)

    return update


_update = njit(parallel=True, **_OPTS)(_split_elements(prange))
_update_serial = njit(**_OPTS)(_split_elements(range))


def supports(*arrays: np.ndarray | None) -> bool:
    """Whether these arrays (a parameter, its gradient, its buffers; None is skipped) can take
    the kernel: one dtype, float32 or float64, one shape, all C-contiguous."""
    present = [a for a in arrays if a is not None]
    first = present[0]
    return first.dtype in (np.float32, np.float64) and all(
        a.dtype == first.dtype and a.shape == first.shape and a.flags.c_contiguous
        for a in present)


def adam_update(
    param: np.ndarray,
    grad: np.ndarray,
    exp_avg: np.ndarray,
    exp_avg_sq: np.ndarray,
    max_exp_avg_sq: np.ndarray | None,
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    decoupled: bool,
    step: int,
) -> None:
    """One Adam/AdamW step of one parameter, in place (``param`` and the buffers).

    Args:
        param, grad, exp_avg, exp_avg_sq: arrays of one shape (any, e.g. (out, in)) and one
            dtype (float32 or float64), C-contiguous (``supports``).
        max_exp_avg_sq: the amsgrad buffer of the same shape, or None without amsgrad.
        lr, beta1, beta2, eps, weight_decay: the hyperparameters (Python floats).
        decoupled: AdamW's weight decay (the parameter shrinks) instead of Adam's (the
            gradient grows).
        step: the step count, >= 1 (for the bias corrections).
    """
    dtype = param.dtype.type
    n = param.size
    if n == 0:
        return
    amsgrad = max_exp_avg_sq is not None
    flat = [a.reshape(-1) for a in (param, grad, exp_avg, exp_avg_sq)]
    # without amsgrad an empty stand-in, never read (not another buffer: LLVM would then see
    # two arrays that overlap and give up vectorising)
    v_max = max_exp_avg_sq.reshape(-1) if amsgrad else np.empty(0, dtype=param.dtype)
    parts = min(threads.parts_for_flops(_FLOPS_PER_ELEMENT * n), max(1, n // 64))
    threads.run_parts(_update, _update_serial, parts, *flat, v_max,
                      dtype(1 - beta1), dtype(beta2), dtype(1 - beta2),
                      dtype(lr / (1 - beta1**step)), dtype((1 - beta2**step) ** 0.5), dtype(eps),
                      dtype(weight_decay), dtype(1 - lr * weight_decay),
                      bool(decoupled and weight_decay != 0), amsgrad)
