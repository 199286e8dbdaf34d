"""Layer normalisation of rows, forward and backward, for the layer-normalised LSTM's rows.

The readable definition is ``lstmkit.cells.layernorm_lstm`` (Haste's ``LayerNormLSTM``)::

    LN(v) = (v - mean(v)) / sqrt(var(v) + eps)        over the n numbers of v

    for y = w * LN(v):  dL/dv = inv * (d - mean(d) - v_hat * mean(d * v_hat)),
                        d = w * dL/dy,  v_hat = LN(v),  inv = 1 / std,  dL/dw = dL/dy * v_hat

The variance is the two-pass one (the mean, then the centred squares), as NumPy's ``var``; the
sums run in the array's dtype, as the reference's, and are reassociated (several partial sums
at once, so that they vectorise): the order is fixed by the compiled code, so the same inputs
always give the same numbers. The LSTM normalises two rows of a step together (W_ih x and
W_hh h_prev), so the functions come in pairs that read and write both in the same passes.
"""

from __future__ import annotations

import math

from numba import njit

from lstmkit.engine.kernels.gates import like, zero_like

_OPTS = {"cache": True, "error_model": "numpy", "fastmath": {"contract", "reassoc"},
         "nogil": True}


@njit(**_OPTS)
def stats(v, eps):
    """(mean, 1 / std) of a run of n numbers, in its dtype."""
    n = v.shape[0]
    total = zero_like(v[0])
    for j in range(n):
        total += v[j]
    mean = total * like(v[0], 1.0 / n)
    squares = zero_like(v[0])
    for j in range(n):
        d = v[j] - mean
        squares += d * d
    return mean, like(v[0], 1.0 / math.sqrt(squares / n + eps))


@njit(**_OPTS)
def normalise(v, v_hat, eps):
    """v_hat = LN(v) for a run of n numbers (v_hat may be v itself); returns 1 / std."""
    mean, inv = stats(v, eps)
    for j in range(v.shape[0]):
        v_hat[j] = (v[j] - mean) * inv
    return inv


@njit(**_OPTS)
def backward(dy, w, v_hat, inv, dv, g_w):
    """For y = w * LN(v) (+ any bias), from dy = dL/dy: dv = dL/dv (dv may be dy itself), and
    g_w += dy * v_hat, the gain's gradient."""
    n = dy.shape[0]
    s1 = zero_like(dy[0])
    s2 = zero_like(dy[0])
    for j in range(n):
        d = dy[j] * w[j]
        s1 += d
        s2 += d * v_hat[j]
        g_w[j] += dy[j] * v_hat[j]
    rn = like(dy[0], 1.0 / n)
    m1 = s1 * rn
    m2 = s2 * rn
    for j in range(n):
        dv[j] = inv * (dy[j] * w[j] - m1 - v_hat[j] * m2)


@njit(**_OPTS)
def _centre(v, mean, inv, v_hat):
    for j in range(v.shape[0]):
        v_hat[j] = (v[j] - mean) * inv


@njit(**_OPTS)
def normalise_pair(a, r, w_a, w_r, bias, a_hat, r_hat, eps):
    """a = w_a * LN(a) + w_r * LN(r) + bias in place, keeping LN(a) in a_hat and LN(r) in
    r_hat (which may be r itself); returns the two 1 / std. (Each loop writes one array: with
    more, LLVM's checks that they do not overlap exceed its limit and the loop stays scalar.)"""
    mean_a, inv_a = stats(a, eps)
    mean_r, inv_r = stats(r, eps)
    _centre(a, mean_a, inv_a, a_hat)
    _centre(r, mean_r, inv_r, r_hat)
    for j in range(a.shape[0]):
        a[j] = w_a[j] * a_hat[j] + w_r[j] * r_hat[j] + bias[j]
    return inv_a, inv_r


@njit(**_OPTS)
def _sums(dz, w, v_hat):
    """sum(dz * w), sum(dz * w * v_hat)."""
    s1 = zero_like(dz[0])
    s2 = zero_like(dz[0])
    for j in range(dz.shape[0]):
        d = dz[j] * w[j]
        s1 += d
        s2 += d * v_hat[j]
    return s1, s2


@njit(**_OPTS)
def _add_product(acc, x, y):
    for j in range(acc.shape[0]):
        acc[j] += x[j] * y[j]


@njit(**_OPTS)
def _input_gradient(dz, w, v_hat, inv, m1, m2, dv):
    for j in range(dz.shape[0]):
        dv[j] = inv * (dz[j] * w[j] - m1 - v_hat[j] * m2)


@njit(**_OPTS)
def backward_pair(dz, w_a, a_hat, inv_a, w_r, r_hat, inv_r, da, dr, g_a, g_r):
    """Backward of ``normalise_pair``: from dz = dL/dz, da = dL/da and dr = dL/dr; the gains'
    gradients added into g_a and g_r."""
    rn = like(dz[0], 1.0 / dz.shape[0])
    sa1, sa2 = _sums(dz, w_a, a_hat)
    sr1, sr2 = _sums(dz, w_r, r_hat)
    _add_product(g_a, dz, a_hat)
    _add_product(g_r, dz, r_hat)
    _input_gradient(dz, w_a, a_hat, inv_a, sa1 * rn, sa2 * rn, da)
    _input_gradient(dz, w_r, r_hat, inv_r, sr1 * rn, sr2 * rn, dr)
