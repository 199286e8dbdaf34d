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

The functions take a step's whole (B, n) blocks and index the rows, rather than one row's
view each: in compiled code every array view costs two atomic reference-count updates, and
per row and step those took 7% of a layer-normalised training call (``perf``, 2-core Xeon).
(Each loop writes one array: with more, LLVM's checks that they do not overlap exceed its
limit and the loop stays scalar; an array written in place needs no check.)
"""

from __future__ import annotations

import math

from numba import njit

from lstmkit.engine.kernels.gates import like, zero_like

_OPTS = {"cache": True, "error_model": "numpy", "fastmath": {"contract", "reassoc"},
         "nogil": True}


@njit(**_OPTS)
def normalise_rows(V, V_hat, INV, k, eps):
    """V_hat[b] = LN(V[b]) for each row b of V (B, n); INV[b, k] = its 1 / std."""
    B, n = V.shape
    rn = like(V[0, 0], 1.0 / n)
    for b in range(B):
        total = zero_like(V[0, 0])
        for j in range(n):
            total += V[b, j]
        mean = total * rn
        squares = zero_like(V[0, 0])
        for j in range(n):
            d = V[b, j] - mean
            squares += d * d
        inv = like(V[0, 0], 1.0 / math.sqrt(squares / n + eps))
        for j in range(n):
            V_hat[b, j] = (V[b, j] - mean) * inv
        INV[b, k] = inv


@njit(**_OPTS)
def backward_in_place(d, w, v_hat, inv, g_w):
    """For y = w * LN(v) (+ any bias), on one row: d = dL/dy on entry, dL/dv on return;
    g_w += dL/dy * v_hat, the gain's gradient."""
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
def normalise_pair_rows(Z, R, A, INV, w, bias, eps):
    """For each row b of a step's blocks (B, n): Z[b] = w[0] * LN(Z[b]) + w[1] * LN(R[b]) +
    bias in place, keeping LN(Z[b]) in A[b] and LN(R[b]) in R[b] itself; INV[b, 0] and
    INV[b, 1] the two 1 / std. Both rows' sums are taken in the same passes."""
    B, n = Z.shape
    rn = like(Z[0, 0], 1.0 / n)
    for b in range(B):
        sa = zero_like(Z[0, 0])
        sr = zero_like(Z[0, 0])
        for j in range(n):
            sa += Z[b, j]
            sr += R[b, j]
        mean_a = sa * rn
        mean_r = sr * rn
        qa = zero_like(Z[0, 0])
        qr = zero_like(Z[0, 0])
        for j in range(n):
            da = Z[b, j] - mean_a
            dr = R[b, j] - mean_r
            qa += da * da
            qr += dr * dr
        inv_a = like(Z[0, 0], 1.0 / math.sqrt(qa / n + eps))
        inv_r = like(Z[0, 0], 1.0 / math.sqrt(qr / n + eps))
        for j in range(n):
            A[b, j] = (Z[b, j] - mean_a) * inv_a
        for j in range(n):
            R[b, j] = (R[b, j] - mean_r) * inv_r
        for j in range(n):
            Z[b, j] = w[0, j] * A[b, j] + w[1, j] * R[b, j] + bias[j]
        INV[b, 0] = inv_a
        INV[b, 1] = inv_r


@njit(**_OPTS)
def backward_pair_rows(dZ, w, A, R, INV, dA, dR, g, mask_t, has_mask):
    """Backward of ``normalise_pair_rows`` for a step: from dZ = dL/dZ (B, n), dA = dL/da and
    dR = dL/dr (zero for a masked row), the gains' gradients added into g (2, n)."""
    B, n = dZ.shape
    rn = like(dZ[0, 0], 1.0 / n)
    for b in range(B):
        for k in range(2):  # k = 0: a, whose LN is A; k = 1: r, whose LN is R
            V = A if k == 0 else R
            dV = dA if k == 0 else dR
            if has_mask and not mask_t[b]:
                for j in range(n):
                    dV[b, j] = 0.0
                continue
            s1 = zero_like(dZ[0, 0])
            s2 = zero_like(dZ[0, 0])
            for j in range(n):
                e = dZ[b, j] * w[k, j]
                s1 += e
                s2 += e * V[b, j]
                g[k, j] += dZ[b, j] * V[b, j]
            inv = INV[b, k]
            for j in range(n):
                dV[b, j] = inv * (dZ[b, j] * w[k, j] - s1 * rn - V[b, j] * (s2 * rn))
