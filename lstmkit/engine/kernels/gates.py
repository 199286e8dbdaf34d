"""Element-wise activations for the fused kernels: ``sigmoid``, ``tanh``, ``flush``.

Numba (without Intel's SVML) calls the C library's scalar ``expf``/``tanhf``, which stops LLVM
from vectorising the gate loops. For float32 these are therefore written out from the classic
Cephes single-precision ``expf`` (exponent bits times a polynomial), plain arithmetic that LLVM
turns into AVX/NEON code: ``exp32`` and Cephes's ``tanhf`` within ~1 ulp of the correctly
rounded value, the sigmoid as one quotient of exp's polynomial and exponent bits (within 2.3
ulp, and 20% faster than 1 / (1 + exp(-|x|)) from a whole exp). float64 uses
``math.exp``/``math.tanh`` (exact, scalar: float64 is supported, not the fast path).

Both are stable for any finite input: the argument is clamped before the exponential, so
|z| = 1e4 (or 1e30) gives exactly 0 or 1, never an overflow, a NaN or a denormal (results that
would be below the smallest normal number are flushed to 0; they are < 1e-38 anyway).

``flush(v)`` zeroes subnormal values (|v| below the smallest normal number, 1.2e-38 in
float32), as a CPU's flush-to-zero mode would: the backward kernels apply it to every gradient
they store or carry from step to step (and to the outputs of their GEMMs), so that a gradient
decaying on its way back through time goes from the smallest normal numbers straight to 0
instead of spending many steps in the subnormal range, where each floating-point operation
(and each BLAS call that reads such values) is many times slower. The change is below 1e-38.
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

# float32 constants (module globals keep their NumPy type inside Numba: no float64 promotion)
_F0 = np.float32(0.0)
_F1 = np.float32(1.0)
_F2 = np.float32(2.0)
_HALF = np.float32(0.5)
_LOG2E = np.float32(1.44269504088896341)
_LN2_HI = np.float32(0.693359375)
_LN2_LO = np.float32(-2.12194440e-4)
_EXP_HI = np.float32(88.3762626647949)
_EXP_LO = np.float32(-87.3365447505531)  # exp(_EXP_LO) is the smallest normal float32
_P0 = np.float32(1.9875691500e-4)
_P1 = np.float32(1.3981999507e-3)
_P2 = np.float32(8.3334519073e-3)
_P3 = np.float32(4.1665795894e-2)
_P4 = np.float32(1.6666665459e-1)
_P5 = np.float32(5.0000001201e-1)
_T0 = np.float32(-5.70498872745e-3)
_T1 = np.float32(2.06390887954e-2)
_T2 = np.float32(-5.37397155531e-2)
_T3 = np.float32(1.33314422036e-1)
_T4 = np.float32(-3.33332819422e-1)
_TANH_SMALL = np.float32(0.625)
_TANH_BIG = np.float32(9.1)  # tanh(9.1) rounds to 1.0 in float32
_TINY32 = np.finfo(np.float32).tiny  # the smallest normal numbers: flush-to-zero semantics
_TINY64 = float(np.finfo(np.float64).tiny)
_EXP_LO64 = -708.0


@intrinsic
def _i32_as_f32(typingctx, value):
    """Reinterpret the bits of an int32 as a float32 (LLVM bitcast; vectorises)."""
    if value != types.int32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(value), codegen


@njit(fastmath={"contract"}, error_model="numpy")
def _exp32_split(y):
    """exp(y) = s (1 + q) for float32 y in [-87.33, 88.37] (no range check), as Cephes ``expf``
    computes it: s = 2^n, q = expm1(r) for r = y - n ln2 in [-ln2 / 2, ln2 / 2] (a polynomial).
    Callers combine s and q with their own constants: fewer roundings (and operations) than
    combining exp(y) with them."""
    n = np.floor(y * _LOG2E + _HALF)
    r = y - n * _LN2_HI - n * _LN2_LO
    p = ((((_P0 * r + _P1) * r + _P2) * r + _P3) * r + _P4) * r + _P5
    q = p * (r * r) + r
    s = _i32_as_f32(np.int32((np.int32(n) + np.int32(127)) << np.int32(23)))
    return s, q


@njit(fastmath={"contract"}, error_model="numpy")
def _exp32_core(x):
    """exp(x) for float32 x in [-87.33, 88.37] (no range check): Cephes ``expf``, ~1 ulp."""
    s, q = _exp32_split(x)
    return (q + _F1) * s


@njit(fastmath={"contract"}, error_model="numpy")
def exp32(x):
    """exp(x) for any float32 x: 0 below -87.33 (no denormals), clamped above 88.37."""
    small = x < _EXP_LO
    e = _exp32_core(max(min(x, _EXP_HI), _EXP_LO))
    return _F0 if small else e


@njit(fastmath={"contract"}, error_model="numpy")
def sigmoid32(x):
    """1 / (1 + exp(-x)) = 1 / ((1 + s) + s q) with exp(-x) = s (1 + q) (``_exp32_split``;
    within 2.3 ulp, no cancellation in either tail); 0 below -87.33 (the result would be
    below the smallest normal number)."""
    s, q = _exp32_split(max(min(-x, -_EXP_LO), _EXP_LO))
    v = _F1 / ((_F1 + s) + s * q)
    return _F0 if x < _EXP_LO else v


@njit(fastmath={"contract"}, error_model="numpy")
def tanh32(x):
    """Cephes ``tanhf``: a polynomial for |x| < 0.625, 1 - 2 / (exp(2|x|) + 1) beyond."""
    a = abs(x)
    z = x * x
    small = (((((_T0 * z + _T1) * z + _T2) * z + _T3) * z + _T4) * z) * x + x
    e = _exp32_core(_F2 * min(a, _TANH_BIG))  # in [0, 18.2]: no range check needed
    big = math.copysign(_F1 - _F2 / (e + _F1), x)
    return small if a < _TANH_SMALL else big


@njit(error_model="numpy")
def sigmoid64(x):
    if x >= 0.0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(max(x, _EXP_LO64))
    return e / (1.0 + e)


def exp(x):
    """exp(x) for a float32 (``exp32``) or float64 scalar (Numba only)."""
    raise NotImplementedError("exp is only callable from Numba code")


def sigmoid(x):
    """Logistic function for a float32 or float64 scalar (Numba only)."""
    raise NotImplementedError("sigmoid is only callable from Numba code")


def tanh(x):
    """Hyperbolic tangent for a float32 or float64 scalar (Numba only)."""
    raise NotImplementedError("tanh is only callable from Numba code")


def flush(x):
    """x, or 0 where |x| is below the denormal guard (Numba only)."""
    raise NotImplementedError("flush is only callable from Numba code")


def _overload_by_precision(generic, f32, f64):
    """Register the Numba implementation of ``generic``: ``f32`` for float32, ``f64`` for
    float64 scalars."""

    @overload(generic)
    def _impl(x):
        if x == types.float32:
            return lambda x: f32(x)
        if x == types.float64:
            return lambda x: f64(x)
        return None

    return _impl


_overload_by_precision(exp, exp32, math.exp)
_overload_by_precision(sigmoid, sigmoid32, sigmoid64)
_overload_by_precision(tanh, tanh32, math.tanh)


@overload(flush)
def _flush_impl(x):
    if x == types.float32:
        return lambda x: x if abs(x) >= _TINY32 else _F0
    if x == types.float64:
        return lambda x: x if abs(x) >= _TINY64 else 0.0
    return None


def one_like(x):
    """1 in the type of the scalar x (Numba only): ``1 - x`` with a plain 1 would be float64."""
    raise NotImplementedError("one_like is only callable from Numba code")


@overload(one_like)
def _one_like_impl(x):
    if x == types.float32:
        return lambda x: _F1
    if x == types.float64:
        return lambda x: 1.0
    return None


def zero_like(x):
    """0 in the type of the scalar x (Numba only)."""
    raise NotImplementedError("zero_like is only callable from Numba code")


@overload(zero_like)
def _zero_like_impl(x):
    if x == types.float32:
        return lambda x: _F0
    if x == types.float64:
        return lambda x: 0.0
    return None


def like(x, v):
    """The number v in the type of the scalar x (Numba only)."""
    raise NotImplementedError("like is only callable from Numba code")


@overload(like)
def _like_impl(x, v):
    if x == types.float32:
        return lambda x, v: np.float32(v)
    if x == types.float64:
        return lambda x, v: np.float64(v)
    return None
