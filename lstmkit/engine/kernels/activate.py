"""Every function of ``lstmkit.activations`` inside the fused kernels' loops.

The compiled LSTM runs the cell's other functions than the defaults (sigmoid gates, tanh cell
input and output) and ONNX's ``clip`` with the loops of ``lstm.cell_forward_options`` and
``cell_backward_options``. Each such loop is written once, as a function of the scalar pair
(f, f') it applies, and ``by_function`` compiles one copy of it per function of ``NAMES``
(the pair inlined: each copy is one plain loop that LLVM vectorises, as the default cell's);
the kernels then pick the copy by the function's number (``KINDS``) outside the loop.

The definitions and the derivatives at the kinks are those of ``lstmkit.activations`` (the
readable reference the tests compare against); sigmoid and tanh are ``gates.sigmoid`` and
``gates.tanh``, as in the default cell. Each derivative reads the pre-activation z and the
value y = f(z). With a clip, f is applied to clip(z) and its gradient is 0 where |z| > clip.

``params(functions, clip, dtype)`` packs one layer's choice into the small array the kernels
read.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
from numba import njit

from lstmkit.activations import NAMES, Activation
from lstmkit.engine.kernels.gates import exp, one_like, sigmoid, tanh, zero_like

_OPTS = {"cache": True, "error_model": "numpy", "fastmath": {"contract"}, "nogil": True}
_SCALAR = {"inline": "always", **_OPTS}

KINDS = {name: k for k, name in enumerate(NAMES)}
CLIP = 0  # params(): the clip, "no clip" (infinity), then (kind, alpha, beta) per function
NO_CLIP = 1
FUNCTION_FIELDS = 3


def params(functions: tuple[Activation, ...], clip: float | None, dtype: np.dtype) -> np.ndarray:
    """The kernels' description of a cell's functions and clip: the clip (infinity for none),
    infinity (the bound for a value that is never clipped, such as the LSTM's c), then
    (kind, alpha, beta) of each function in order (``function``), in ``dtype`` (so that
    alpha and beta enter the arithmetic in the arrays' precision, as in the reference)."""
    values = [math.inf if clip is None else float(clip), math.inf]
    for act in functions:
        values += [KINDS[act.name], act.alpha or 0.0, act.beta or 0.0]
    return np.array(values, dtype=dtype)


@njit(**_OPTS)
def function(act, k):
    """(kind, alpha, beta) of function k of ``act`` (``params``)."""
    f = NO_CLIP + 1 + FUNCTION_FIELDS * k
    return int(act[f]), act[f + 1], act[f + 2]


# -- the scalar pairs: f(z, alpha, beta) and f'(z, y, alpha, beta), y = f(z) -----------------


@njit(**_SCALAR)
def _relu(z, a, b):
    return max(z, zero_like(z))


@njit(**_SCALAR)
def _d_relu(z, y, a, b):
    return one_like(z) if z > 0 else zero_like(z)


@njit(**_SCALAR)
def _tanh(z, a, b):
    return tanh(z)


@njit(**_SCALAR)
def _d_tanh(z, y, a, b):
    return one_like(y) - y * y


@njit(**_SCALAR)
def _sigmoid(z, a, b):
    return sigmoid(z)


@njit(**_SCALAR)
def _d_sigmoid(z, y, a, b):
    return y * (one_like(y) - y)


@njit(**_SCALAR)
def _affine(z, a, b):
    return a * z + b


@njit(**_SCALAR)
def _d_affine(z, y, a, b):
    return a


@njit(**_SCALAR)
def _leaky_relu(z, a, b):
    return z if z >= 0 else a * z


@njit(**_SCALAR)
def _d_leaky_relu(z, y, a, b):
    return one_like(z) if z >= 0 else a


@njit(**_SCALAR)
def _thresholded_relu(z, a, b):
    return z if z >= a else zero_like(z)


@njit(**_SCALAR)
def _d_thresholded_relu(z, y, a, b):
    return one_like(z) if z >= a else zero_like(z)


@njit(**_SCALAR)
def _scaled_tanh(z, a, b):
    return a * tanh(b * z)


@njit(**_SCALAR)
def _d_scaled_tanh(z, y, a, b):
    t = tanh(b * z)
    return a * b * (one_like(t) - t * t)


@njit(**_SCALAR)
def _hard_sigmoid(z, a, b):
    return min(max(a * z + b, zero_like(z)), one_like(z))


@njit(**_SCALAR)
def _d_hard_sigmoid(z, y, a, b):
    v = a * z + b
    return a if v > 0 and v < 1 else zero_like(z)


@njit(**_SCALAR)
def _elu(z, a, b):
    return z if z >= 0 else a * (exp(z) - one_like(z))


@njit(**_SCALAR)
def _d_elu(z, y, a, b):
    return one_like(z) if z >= 0 else a * exp(z)


@njit(**_SCALAR)
def _softsign(z, a, b):
    return z / (one_like(z) + abs(z))


@njit(**_SCALAR)
def _d_softsign(z, y, a, b):
    s = one_like(z) + abs(z)
    return one_like(z) / (s * s)


@njit(**_SCALAR)
def _softplus(z, a, b):
    return max(z, zero_like(z)) + math.log1p(exp(-abs(z)))


@njit(**_SCALAR)
def _d_softplus(z, y, a, b):
    return sigmoid(z)


@njit(**_SCALAR)
def _identity(z, a, b):
    return z


@njit(**_SCALAR)
def _d_identity(z, y, a, b):
    return one_like(z)


_PAIRS = {
    "Relu": (_relu, _d_relu),
    "Tanh": (_tanh, _d_tanh),
    "Sigmoid": (_sigmoid, _d_sigmoid),
    "Affine": (_affine, _d_affine),
    "LeakyRelu": (_leaky_relu, _d_leaky_relu),
    "ThresholdedRelu": (_thresholded_relu, _d_thresholded_relu),
    "ScaledTanh": (_scaled_tanh, _d_scaled_tanh),
    "HardSigmoid": (_hard_sigmoid, _d_hard_sigmoid),
    "Elu": (_elu, _d_elu),
    "Softsign": (_softsign, _d_softsign),
    "Softplus": (_softplus, _d_softplus),
    "Identity": (_identity, _d_identity),
}
assert tuple(_PAIRS) == NAMES  # KINDS numbers them in this order


def by_function(loop: Callable[[Any, Any], Callable]) -> Callable:
    """``run(kind, args)``: ``loop(f, df)`` (a factory returning a Python function of one tuple
    ``args``) compiled once per function of ``NAMES``, the copy for function ``kind`` called
    with ``args``. The pair enters each copy as a closure variable, which Numba inlines and
    keeps in the copy's cache key (a function passed as an argument would not be cached)."""
    c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11 = (
        njit(**_OPTS)(loop(f, df)) for f, df in _PAIRS.values())

    def run(kind, args):
        if kind == 0:
            c0(args)
        elif kind == 1:
            c1(args)
        elif kind == 2:
            c2(args)
        elif kind == 3:
            c3(args)
        elif kind == 4:
            c4(args)
        elif kind == 5:
            c5(args)
        elif kind == 6:
            c6(args)
        elif kind == 7:
            c7(args)
        elif kind == 8:
            c8(args)
        elif kind == 9:
            c9(args)
        elif kind == 10:
            c10(args)
        else:
            c11(args)

    return njit(**_OPTS)(run)


@njit(**_SCALAR)
def clipped(z, clip):
    """z bounded to [-clip, clip] (``clip`` = inf: z)."""
    return min(max(z, -clip), clip)


@njit(**_SCALAR)
def cut(d, z, clip):
    """d where the clip kept z (|z| <= clip), else 0: the clip's gradient."""
    return d if abs(z) <= clip else zero_like(d)


def _apply_keeping(f, df):
    def loop(args):  # z = f(clip(z)) in place, the pre-activation kept in pre
        z, pre, a, b, clip = args
        for j in range(z.shape[0]):
            v = z[j]
            pre[j] = v
            z[j] = f(clipped(v, clip), a, b)
    return loop


apply_keeping = by_function(_apply_keeping)  # (kind, (z, pre, alpha, beta, clip))
