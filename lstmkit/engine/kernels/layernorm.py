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
    """v_hat = LN(v) for a run of n numbers; returns 1 / std."""
    mean, inv = stats(v, eps)
    for j in range(v.shape[0]):
        v_hat[j] = (v[j] - mean) * inv
    return inv


@njit(**_OPTS)
def backward_in_place(d, w, v_hat, inv, g_w):
    """For y = w * LN(v) (+ any bias): d = dL/dy on entry, dL/dv on return; g_w += dL/dy *
    v_hat, the gain's gradient."""
    n = d.shape[0]
    s1 = zero_like(d[0])
    s2 = zero_like(d[0])
    for j in range(n):
        e = d[j] * w[j]
        s1 += e
        s2 += e * v_hat[j]
        g_w[j] += d[j] * v_hat[j]
    rn = like(d[0], 1.0 / n)
    m1 = s1 * rn
    m2 = s2 * rn
    for j in range(n):  # one array written, read at the same place: no overlap check
        d[j] = inv * (d[j] * w[j] - m1 - v_hat[j] * m2)


@njit(**_OPTS)
def _centre(v, mean, inv, v_hat):
    for j in range(v.shape[0]):
        v_hat[j] = (v[j] - mean) * inv


@njit(**_OPTS)
def _centre_in_place(v, mean, inv):
    for j in range(v.shape[0]):
        v[j] = (v[j] - mean) * inv


@njit(**_OPTS)
def normalise_pair(a, r, w_a, w_r, bias, a_hat, eps):
    """a = w_a * LN(a) + w_r * LN(r) + bias in place, keeping LN(a) in a_hat and LN(r) in r
    itself; returns the two 1 / std. Both runs' sums are taken in the same passes (the values
    are those of ``stats`` on each). (Each loop writes one array: with more, LLVM's checks that
    they do not overlap exceed its limit and the loop stays scalar; an array written in place
    needs no check.)"""
    n = a.shape[0]
    sa = zero_like(a[0])
    sr = zero_like(a[0])
    for j in range(n):
        sa += a[j]
        sr += r[j]
    rn = like(a[0], 1.0 / n)
    mean_a = sa * rn
    mean_r = sr * rn
    qa = zero_like(a[0])
    qr = zero_like(a[0])
    for j in range(n):
        da = a[j] - mean_a
        dr = r[j] - mean_r
        qa += da * da
        qr += dr * dr
    inv_a = like(a[0], 1.0 / math.sqrt(qa / n + eps))
    inv_r = like(a[0], 1.0 / math.sqrt(qr / n + eps))
    _centre(a, mean_a, inv_a, a_hat)
    _centre_in_place(r, mean_r, inv_r)
    for j in range(n):
        a[j] = w_a[j] * a_hat[j] + w_r[j] * r[j] + bias[j]
    return inv_a, inv_r


@njit(**_OPTS)
def _sums_and_gain(dz, w, v_hat, g_w):
    """sum(dz * w), sum(dz * w * v_hat); g_w += dz * v_hat."""
    s1 = zero_like(dz[0])
    s2 = zero_like(dz[0])
    for j in range(dz.shape[0]):
        d = dz[j] * w[j]
        s1 += d
        s2 += d * v_hat[j]
        g_w[j] += dz[j] * v_hat[j]
    return s1, s2


@njit(**_OPTS)
def _input_gradient(dz, w, v_hat, inv, m1, m2, dv):
    for j in range(dz.shape[0]):
        dv[j] = inv * (dz[j] * w[j] - m1 - v_hat[j] * m2)


@njit(**_OPTS)
def backward_pair(dz, w_a, a_hat, inv_a, w_r, r_hat, inv_r, da, dr, g_a, g_r):
    """Backward of ``normalise_pair``: from dz = dL/dz, da = dL/da and dr = dL/dr; the gains'
    gradients added into g_a and g_r."""
    rn = like(dz[0], 1.0 / dz.shape[0])
    sa1, sa2 = _sums_and_gain(dz, w_a, a_hat, g_a)
    sr1, sr2 = _sums_and_gain(dz, w_r, r_hat, g_r)
    _input_gradient(dz, w_a, a_hat, inv_a, sa1 * rn, sa2 * rn, da)
    _input_gradient(dz, w_r, r_hat, inv_r, sr1 * rn, sr2 * rn, dr)
