"""Gradient clipping, the study note's remedy for exploding gradients.

The note's exercise: ``rate = threshold / norm``; if ``rate < 1``, multiply the gradient by
``rate``. Computing the rate first lets one rate scale *every* parameter's gradient, so the
clipped update keeps its direction and its global norm becomes the threshold (Pascanu, Mikolov &
Bengio 2013). (Multiplying by ``norm / threshold`` instead, as one rewrite of the note does,
would enlarge the gradient.) ``clip_grad_norm`` follows ``torch.nn.utils.clip_grad_norm_``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import numpy as np

Array = np.ndarray


def _arrays(grads: Mapping[str, Array] | Iterable[Array] | Array) -> list[Array]:
    if isinstance(grads, np.ndarray):
        return [grads]
    values = list(grads.values()) if isinstance(grads, Mapping) else list(grads)
    for value in values:
        if not isinstance(value, np.ndarray) or not np.issubdtype(value.dtype, np.floating):
            raise TypeError(
                "gradients must be floating-point NumPy arrays (a dict name -> array, a list, "
                f"or one array), got {type(value).__name__}"
            )
    return values


def total_norm(grads: Mapping[str, Array] | Iterable[Array] | Array,
               norm_type: float = 2.0) -> float:
    """The norm of all gradients taken together as one vector (``inf`` = max-abs).

    With the kernels on (the default), the 2-norm of float32/float64 C-contiguous arrays is
    computed by ``lstmkit.engine.kernels.norms`` (one pass, no float64 copy), equal to this
    definition to rounding (~1e-15 relative).
    """
    arrays = _arrays(grads)
    if not arrays:
        return 0.0
    norm_type = float(norm_type)
    if norm_type == np.inf:
        return float(max(np.max(np.abs(a)) if a.size else 0.0 for a in arrays))
    if norm_type <= 0:
        raise ValueError(f"norm_type must be > 0 or inf, got {norm_type}")
    if norm_type == 2.0:
        fused = _fused_2_norm(arrays)
        if fused is not None:
            return fused
    per_array = [np.linalg.norm(a.ravel().astype(np.float64), ord=norm_type) for a in arrays]
    return float(np.linalg.norm(np.array(per_array), ord=norm_type))


def _fused_2_norm(arrays: list[Array]) -> float | None:
    """The 2-norm of all arrays together from ``lstmkit.engine.kernels.norms`` (one pass per array,
    float64 sums of squares), or None when the kernels are off or an array does not qualify
    (float32/float64, C-contiguous). NaN and infinity propagate as in ``np.linalg.norm``
    (which also sums unscaled squares: float64 elements beyond 1e154 overflow in both)."""
    from lstmkit.engine import kernels

    norms = kernels.fast_path("norms", *arrays)
    if norms is None:
        return None
    return math.sqrt(sum(norms.sum_of_squares(a) for a in arrays))


def clip_grad_norm(
    grads: Mapping[str, Array] | Iterable[Array] | Array,
    max_norm: float,
    norm_type: float = 2.0,
    error_if_nonfinite: bool = False,
) -> float:
    """Scale all gradients in place by ``min(1, max_norm / (total_norm + 1e-6))``.

    Returns the total norm *before* clipping (as PyTorch does). With ``error_if_nonfinite``,
    a NaN or infinite norm raises ``RuntimeError`` and leaves the gradients untouched.
    """
    if not max_norm >= 0:
        raise ValueError(f"max_norm must be >= 0, got {max_norm!r}")
    arrays = _arrays(grads)
    norm = total_norm(arrays, norm_type)
    if error_if_nonfinite and not np.isfinite(norm):
        raise RuntimeError(
            f"the total norm of order {norm_type} of the gradients is {norm}: they cannot be "
            "clipped. Set error_if_nonfinite=False to scale them anyway."
        )
    rate = max_norm / (norm + 1e-6)
    if rate < 1.0:
        for a in arrays:
            a *= a.dtype.type(rate)
    return norm


def clip_grad_value(grads: Mapping[str, Array] | Iterable[Array] | Array,
                    clip_value: float) -> None:
    """Clamp every gradient element to [-clip_value, clip_value] in place."""
    if not clip_value >= 0:
        raise ValueError(f"clip_value must be >= 0, got {clip_value!r}")
    for a in _arrays(grads):
        np.clip(a, -clip_value, clip_value, out=a)
