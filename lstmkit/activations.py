"""The squashing functions of the gates, and the derivative bound behind vanishing gradients.

``sigmoid(z) = 1 / (1 + exp(-z))`` is computed by SciPy's ``expit``, which is exact to the
last bit where the naive formula over- or underflows (no warnings for |z| up to 1e4 and beyond).

Its derivative is ``sigmoid(z) * (1 - sigmoid(z))``: largest at z = 0, where sigmoid = 0.5 and
the derivative is 0.25. Backpropagating through k sigmoid layers multiplies the gradient by at
most 0.25**k (times the weights): one reason gradients vanish in deep or recurrent networks.
"""

from __future__ import annotations

import numpy as np
from scipy.special import expit as sigmoid

SIGMOID_DERIVATIVE_MAX = 0.25


def sigmoid_derivative(z: np.ndarray) -> np.ndarray:
    """d sigmoid / dz = s (1 - s), with s = sigmoid(z); never above 0.25 (equal at z = 0)."""
    s = sigmoid(z)
    return s * (1.0 - s)


def tanh_derivative(z: np.ndarray) -> np.ndarray:
    """d tanh / dz = 1 - tanh(z)^2; never above 1 (equal at z = 0)."""
    return 1.0 - np.tanh(z) ** 2


__all__ = ["SIGMOID_DERIVATIVE_MAX", "sigmoid", "sigmoid_derivative", "tanh_derivative"]
