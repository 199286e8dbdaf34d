"""The fused LSTM recurrence: whole forward and backward time loops in Numba.

Layout (row-major, ``G`` gates present, ``GH = G * H``): pre-activations ``Z`` (T, B, GH), the
blocks of each row in the order i, f, g, o of the gates present, as ``weight_ih`` stacks them.

Forward:
    1. ``Z = b_ih + b_hh + X W_ih^T``: the input projection of every step, one GEMM.
    2. per step (one GEMM + one fused element-wise pass):
       ``Z[t] += h_prev W_hh^T`` (BLAS with beta = 1, in place), then the gate kernel turns
       ``Z[t]`` into the gate activations (in place), the cell state ``C[t]`` and ``h``.
    The whole loop runs inside one compiled function, so a step costs one BLAS call and one
    vectorised pass over (B, H) with no Python in between.

Backward (the forward read in reverse), per step: the gate kernel turns the incoming dh, dc
into ``dZ[t]`` and dc_prev, then ``dh_prev = dZ[t] W_hh`` (one GEMM). The weight gradients are
then three large GEMMs over all steps at once: ``dW_hh += dZ^T H_prev``,
``dW_ih += dZ^T X``, ``dX = dZ W_ih`` (and column sums of dZ for the biases).

Variants (peepholes, a removed gate, CIFG) run the same code: a removed gate reads a constant
pre-activation whose sigmoid is exactly 1 (and writes to scratch), an absent peephole has
weight 0 (adding 0 * c changes nothing), and CIFG selects f = 1 - i.

Options (other functions than sigmoid and tanh, ONNX's clip): the same loops with
``cell_forward_options`` and ``cell_backward_options`` for the element-wise pass, which apply
the cell's functions (``activate``; a removed gate is then set to 1 outright) and keep each
gate's pre-activation in ``PRE`` (the shape of Z) for backward, whose derivatives and clip
read it.

Masks (padded sequences): state buffers carry (h, c) past the masked steps, and the state
before every step is kept for backward (``HP``, ``CP``); without a mask, the state before step
t is simply the output and the cell state of the previous step.

Parts (a "rows" plan of k parts, ``engine.plan``): the batch is cut into k runs of sequences,
each run's arrays a slice of arrays with a leading parts axis, and ``lstm_forward_parts`` /
``lstm_backward_parts`` run ``lstm_forward`` / ``lstm_backward`` on each run, the runs on the
threads of one parallel region (sequences are independent: no exchange between the threads at
any step). The serial twins (plain Python) run a single part on the calling thread.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from lstmkit.engine.kernels import activate, layernorm
from lstmkit.engine.kernels.blas import (
    add_recurrent_weight_gradient,
    gemm,
    gemm_blocks,
    project,
)
from lstmkit.engine.kernels.gates import flush, one_like, sigmoid, tanh
from lstmkit.engine.kernels.loops import (
    add1,
    add_rows,
    copy1,
    copy2,
    fill1,
    flush_all,
    state_before,
)

_OPTS = {"cache": True, "error_model": "numpy", "fastmath": {"contract"}, "nogil": True}
BIG = 100.0  # sigmoid(BIG) == 1 exactly in float32 and float64: a removed gate's input


@njit(**_OPTS)
def _forward_gates_ifg(zi, zf, zg, cp, wci, wcf, cifg):
    for j in range(cp.shape[0]):
        c_prev = cp[j]
        i = sigmoid(zi[j] + wci[j] * c_prev)
        f = sigmoid(zf[j] + wcf[j] * c_prev)
        if cifg:
            f = one_like(i) - i
        zi[j] = i
        zf[j] = f
        zg[j] = tanh(zg[j])


@njit(**_OPTS)
def _forward_cell_o(zi, zf, zg, zo, cp, cn, hn, wco):
    for j in range(cp.shape[0]):
        c = zf[j] * cp[j] + zi[j] * zg[j]
        o = sigmoid(zo[j] + wco[j] * c)
        zo[j] = o
        cn[j] = c
        hn[j] = o * tanh(c)


@njit(**_OPTS)
def cell_forward(zi, zf, zg, zo, cp, cn, hn, wci, wcf, wco, cifg):
    """The LSTM step on runs of n numbers (one row of the row layout here, one gate block of
    the batch-inner layout in ``lstm_t.py``): pre-activations z* -> activations (in place),
    c_prev (cp) -> c (cn), h (hn); peephole weights one per element (0 when absent).

    Each gate is one array, read and written in place at the same index: LLVM then knows a
    store cannot feed a later load and vectorises (distinct input and output arrays that
    overlap would force its runtime alias check onto the scalar path). Two passes (i, f, g;
    then c, o, h) keep register pressure low: faster than one fused loop.
    """
    _forward_gates_ifg(zi, zf, zg, cp, wci, wcf, cifg)
    _forward_cell_o(zi, zf, zg, zo, cp, cn, hn, wco)


@njit(**_OPTS)
def cell_backward(ai, af, ag, ao, c_row, cp, dh, dho, dc, dzi, dzf, dzg, dzo, wci, wcf, wco,
                  cifg):
    """The LSTM step backward on runs of n numbers (as ``cell_forward``): activations a*, c,
    c_prev, (dh + dho, dc) -> dz*, and dc_prev (into dc)."""
    for j in range(cp.shape[0]):
        i = ai[j]
        g = ag[j]
        o = ao[j]
        one = one_like(i)
        f = af[j]
        if cifg:
            f = one - i
        c = c_row[j]
        c_prev = cp[j]
        tc = tanh(c)
        dhj = flush(dh[j]) + dho[j]
        d_o = dhj * tc * o * (one - o)
        dcj = dc[j] + dhj * o * (one - tc * tc)
        dcj = dcj + d_o * wco[j]
        di = dcj * g
        df = dcj * c_prev
        d_g = dcj * i * (one - g * g)
        if cifg:
            di = di - df
        d_f = df * f * (one - f)
        d_i = di * i * (one - i)
        dc_prev = dcj * f + d_f * wcf[j] + d_i * wci[j]
        dzi[j] = flush(d_i)
        dzf[j] = flush(d_f)
        dzg[j] = flush(d_g)
        dzo[j] = flush(d_o)
        dc[j] = flush(dc_prev)


# -- the cell with its options: other functions than sigmoid/tanh, and the clip ------------------
# Each loop below is compiled once per function (``activate.by_function``): ``f`` is the
# function it applies, ``df`` its derivative; a, b its alpha and beta; ``clip`` the bound.


def _gates_if(f, df):
    def loop(args):  # i and f (the same function): pre-activations kept, then the gate values
        zi, zf, cp, wci, wcf, pi, pf, a, b, clip = args
        for j in range(cp.shape[0]):
            vi = zi[j] + wci[j] * cp[j]
            vf = zf[j] + wcf[j] * cp[j]
            pi[j] = vi
            pf[j] = vf
            zi[j] = f(activate.clipped(vi, clip), a, b)
            zf[j] = f(activate.clipped(vf, clip), a, b)
    return loop


def _cell_and_output_gate(f, df):
    def loop(args):  # c = f * c_prev + i * g, then o (its peephole sees c)
        zi, zf, zg, zo, cp, cn, wco, po, a, b, clip = args
        for j in range(cp.shape[0]):
            c = zf[j] * cp[j] + zi[j] * zg[j]
            cn[j] = c
            v = zo[j] + wco[j] * c
            po[j] = v
            zo[j] = f(activate.clipped(v, clip), a, b)
    return loop


def _hidden(f, df):
    def loop(args):  # h = o * f(c)
        zo, cn, hn, a, b = args
        for j in range(cn.shape[0]):
            hn[j] = zo[j] * f(cn[j], a, b)
    return loop


def _output_gradient(f, df):
    def loop(args):  # from h = o * f(c): dL/do (into dzo) and dL/dc (into dct)
        c, ao, dh, dho, dc, dzo, dct, a, b = args
        for j in range(c.shape[0]):
            y = f(c[j], a, b)
            dhj = flush(dh[j]) + dho[j]
            dzo[j] = dhj * y
            dct[j] = dc[j] + dhj * ao[j] * df(c[j], y, a, b)
    return loop


def _output_gate_gradient(f, df):
    def loop(args):  # dz_o, and its share of dL/dc through the peephole
        po, ao, dzo, dct, wco, a, b, clip = args
        for j in range(po.shape[0]):
            d = activate.cut(dzo[j] * df(po[j], ao[j], a, b), po[j], clip)
            dzo[j] = d
            dct[j] += d * wco[j]
    return loop


def _cell_gradient(f, df):
    def loop(args):  # c = f * c_prev + i * g: dz_g, dL/di, dL/df, dL/dc_prev (its f * dc part)
        ai, af, ag, pg, cp, dct, dzi, dzf, dzg, dc, cifg, a, b, clip = args
        for j in range(cp.shape[0]):
            i = ai[j]
            fg = one_like(i) - i if cifg else af[j]
            d = dct[j]
            di = d * ag[j]
            dfg = d * cp[j]
            dzg[j] = activate.cut(d * i * df(pg[j], ag[j], a, b), pg[j], clip)
            dzi[j] = di - dfg if cifg else di
            dzf[j] = dfg
            dc[j] = d * fg
    return loop


def _input_forget_gradient(f, df):
    def loop(args):  # dz_i, dz_f, the peepholes' share of dL/dc_prev; flush to zero
        ai, af, pi, pf, dzi, dzf, dzg, dzo, dc, wci, wcf, a, b, clip = args
        for j in range(dc.shape[0]):
            di = activate.cut(dzi[j] * df(pi[j], ai[j], a, b), pi[j], clip)
            dfg = activate.cut(dzf[j] * df(pf[j], af[j], a, b), pf[j], clip)
            dc[j] = flush(dc[j] + dfg * wcf[j] + di * wci[j])
            dzi[j] = flush(di)
            dzf[j] = flush(dfg)
            dzg[j] = flush(dzg[j])
            dzo[j] = flush(dzo[j])
    return loop


_run_gates_if = activate.by_function(_gates_if)
_run_cell_and_output_gate = activate.by_function(_cell_and_output_gate)
_run_hidden = activate.by_function(_hidden)
_run_output_gradient = activate.by_function(_output_gradient)
_run_output_gate_gradient = activate.by_function(_output_gate_gradient)
_run_cell_gradient = activate.by_function(_cell_gradient)
_run_input_forget_gradient = activate.by_function(_input_forget_gradient)


@njit(**_OPTS)
def cell_forward_options(zi, zf, zg, zo, cp, cn, hn, wci, wcf, wco, cifg, gidx, act, pi, pf,
                         pg, po):
    """``cell_forward`` with the cell's options: the functions and clip of ``act``
    (``activate.params``). The pre-activations (peepholes included, before the clip) go to
    pi, pf, pg, po for backward; a removed gate (gidx < 0) is 1 (its z* and p* are scratch)."""
    clip = act[activate.CLIP]
    kind, a, b = activate.function(act, 0)
    _run_gates_if(kind, (zi, zf, cp, wci, wcf, pi, pf, a, b, clip))
    if gidx[0] < 0:
        fill1(zi, 1.0)
    if gidx[1] < 0:
        fill1(zf, 1.0)
    if cifg:
        for j in range(zf.shape[0]):
            zf[j] = one_like(zi[j]) - zi[j]
    kind_g, a_g, b_g = activate.function(act, 1)
    activate.apply_keeping(kind_g, (zg, pg, a_g, b_g, clip))  # g
    _run_cell_and_output_gate(kind, (zi, zf, zg, zo, cp, cn, wco, po, a, b, clip))
    if gidx[3] < 0:
        fill1(zo, 1.0)
    kind_h, a_h, b_h = activate.function(act, 2)
    _run_hidden(kind_h, (zo, cn, hn, a_h, b_h))


@njit(**_OPTS)
def cell_backward_options(ai, af, ag, ao, c_row, cp, dh, dho, dc, dzi, dzf, dzg, dzo, wci, wcf,
                          wco, cifg, gidx, act, pi, pf, pg, po, dct, dga):
    """``cell_backward`` with the cell's options (``cell_forward_options``): p* the kept
    pre-activations (any array of ones for a removed gate), dct: n numbers of scratch.
    dga (3, n): gradients at the gate values i, f, o from elsewhere (full gate recurrence: the
    next step's gates see them), added before each gate's derivative; (0, n) for none."""
    clip = act[activate.CLIP]
    kind_h, a_h, b_h = activate.function(act, 2)
    _run_output_gradient(kind_h, (c_row, ao, dh, dho, dc, dzo, dct, a_h, b_h))
    if dga.shape[0] > 0:  # dzo holds dL/do here, before o's derivative
        add1(dzo, dga[2])
    kind, a, b = activate.function(act, 0)
    if gidx[3] >= 0:
        _run_output_gate_gradient(kind, (po, ao, dzo, dct, wco, a, b, clip))
    kind_g, a_g, b_g = activate.function(act, 1)
    _run_cell_gradient(kind_g, (ai, af, ag, pg, cp, dct, dzi, dzf, dzg, dc, cifg, a_g, b_g,
                                clip))
    if dga.shape[0] > 0:  # and dzi, dzf dL/di, dL/df
        add1(dzi, dga[0])
        add1(dzf, dga[1])
    _run_input_forget_gradient(kind, (ai, af, pi, pf, dzi, dzf, dzg, dzo, dc, wci, wcf, a, b,
                                      clip))


@njit(**_OPTS)
def zoneout_forward(x, x_prev, d):
    """Zoneout on a run of numbers, in place: x = d * x_prev + (1 - d) * x (the mask d is 1
    where the previous value is kept)."""
    for j in range(x.shape[0]):
        x[j] = d[j] * x_prev[j] + (one_like(d[j]) - d[j]) * x[j]


@njit(**_OPTS)
def zoneout_backward(d_state, d_out, z, d_new, keep):
    """Zoneout backward on a run: the gradient at the step's state, d_state + d_out, split
    into the cell's own value's (d_new) and the part the state kept of the previous one
    (keep), for the mask z. d_new or keep may be d_state itself."""
    for j in range(z.shape[0]):
        d = flush(d_state[j]) + d_out[j]
        d_new[j] = d * (one_like(d) - z[j])
        keep[j] = d * z[j]


@njit(**_OPTS)
def _add_recurrent(h_prev, Whh, DROP, hd, zt, beta, small):
    """zt (B, G, H) = beta * zt + W_hh h_prev for every gate block; with recurrent dropout
    (DROP not empty) block k sees h_prev * DROP[k] instead. ``small``: the plan's
    ``small_products`` (``blas.gemm_blocks``)."""
    B, G, H = zt.shape
    if DROP.shape[0] == 0:
        gemm_blocks(False, True, 1.0, h_prev, Whh, beta, zt.reshape(B, G * H), small)
        return
    for k in range(G):
        for b in range(B):
            for j in range(hd.shape[1]):
                hd[b, j] = h_prev[b, j] * DROP[k, b, j]
        gemm_blocks(False, True, 1.0, hd, Whh[k * H:(k + 1) * H], beta, zt[:, k], small)


@njit(**_OPTS)
def _recurrent_backward(dzt, Whh, DROP, hd, dh, small):
    """dh (B, R) += the gradient through ``_add_recurrent``: dZ_t W_hh, or with recurrent
    dropout the sum over gate blocks k of (dZ_t,k W_hh,k) * DROP[k]."""
    B, G, H = dzt.shape
    if DROP.shape[0] == 0:
        gemm_blocks(False, False, 1.0, dzt.reshape(B, G * H), Whh, 1.0, dh, small)
        return
    for k in range(G):
        gemm_blocks(False, False, 1.0, dzt[:, k], Whh[k * H:(k + 1) * H], 0.0, hd, small)
        for b in range(B):
            for j in range(hd.shape[1]):
                dh[b, j] += hd[b, j] * DROP[k, b, j]


@njit(**_OPTS)
def _layer_norm_step(zt, h_prev, Whh, DROP, hd, LNG, bias, eps, AH, RH, INV, small):
    """The layer-normalised cell's pre-activations of one step, in zt (B, G, H), which holds
    a = W_ih x on entry: z = w_ln_ih * LN(a) + w_ln_hh * LN(r) + b with r = W_hh h_prev.
    Keeps LN(a) in AH, LN(r) in RH (each (B, G*H)) and the two 1 / std in INV[:, 0:2]."""
    B, G, H = zt.shape
    _add_recurrent(h_prev, Whh, DROP, hd, RH.reshape(B, G, H), 0.0, small)
    layernorm.normalise_pair_rows(zt.reshape(B, G * H), RH, AH, INV, LNG, bias, eps)


@njit(**_OPTS)
def _layer_norm_hidden(zt, ko, C, CH, INV, LNC, m, eps):
    """h = o * tanh(w_ln_c * LN(c) + b_ln_c) for a step's rows (o: gate block ko of zt
    (B, G, H), c: C (B, H)) into m; LN(c) kept in CH, its 1 / std in INV[:, 2]."""
    layernorm.normalise_rows(C, CH, INV, 2, eps)
    for b in range(C.shape[0]):
        for j in range(C.shape[1]):
            m[b, j] = zt[b, ko, j] * tanh(LNC[0, j] * CH[b, j] + LNC[1, j])


@njit(**_OPTS)
def _layer_norm_cell_backward(ai, af, ag, ao, c_hat, inv, cp, dm, dc, dzi, dzf, dzg, dzo, LNC,
                              w_c, gLNC, g_c, dn):
    """The layer-normalised cell's step backward on a row: from dL/dm (dm, m = o * tanh(n),
    n = w_ln_c * LN(c) + b_ln_c) and dL/dc (dc) to dz_i, dz_f, dz_g, dz_o and dL/dc_prev (into
    dc); the gradients of w_ln_c and b_ln_c added into gLNC (2, H); w_c, g_c: LNC[0] and
    gLNC[0] (views made once per call); dn: n numbers of work."""
    for j in range(cp.shape[0]):
        tn = tanh(LNC[0, j] * c_hat[j] + LNC[1, j])
        o = ao[j]
        one = one_like(o)
        dzo[j] = flush(dm[j] * tn * o * (one - o))
        dn[j] = dm[j] * o * (one - tn * tn)
        gLNC[1, j] += dn[j]
    layernorm.backward_in_place(dn, w_c, c_hat, inv, g_c)  # dn becomes dL/dc via LN(c)
    for j in range(cp.shape[0]):
        i = ai[j]
        f = af[j]
        g = ag[j]
        one = one_like(i)
        d = dc[j] + dn[j]
        dzi[j] = flush(d * g * i * (one - i))
        dzf[j] = flush(d * cp[j] * f * (one - f))
        dzg[j] = flush(d * i * (one - g * g))
        dc[j] = flush(d * f)


@njit(**_OPTS)
def _add_gate_recurrence(zt, AS, Wgg, ap, GG, ki, kf, ko, small):
    """Full gate recurrence: z_{i,f,o} (blocks of zt (B, G, H)) += a_prev Wgg^T, a_prev the
    gate state AS (B, 3H), kept in ap."""
    H = zt.shape[2]
    copy2(ap, AS)
    gemm_blocks(False, True, 1.0, ap, Wgg, 0.0, GG, small)
    for b in range(zt.shape[0]):
        add1(zt[b, ki], GG[b, :H])
        add1(zt[b, kf], GG[b, H:2 * H])
        add1(zt[b, ko], GG[b, 2 * H:])


@njit(**_OPTS)
def _gate_recurrence_backward(dzt, dzg, Wgg, dGG, DAS, mask_t, has_mask, ki, kf, ko, small):
    """Backward of ``_add_gate_recurrence`` for one step: dz_{i,f,o} (zero for a masked row)
    into dzg (B, 3H), and the gradient at the previous step's gate state, dzg Wgg, into DAS
    (a masked row's passes through unchanged)."""
    H = dzt.shape[2]
    for b in range(dzt.shape[0]):
        if has_mask and not mask_t[b]:
            fill1(dzg[b], 0.0)
        else:
            copy1(dzg[b, :H], dzt[b, ki])
            copy1(dzg[b, H:2 * H], dzt[b, kf])
            copy1(dzg[b, 2 * H:], dzt[b, ko])
    gemm_blocks(False, False, 1.0, dzg, Wgg, 0.0, dGG, small)
    for b in range(dzt.shape[0]):
        if not has_mask or mask_t[b]:
            for j in range(3 * H):
                DAS[b, j] = flush(dGG[b, j])


@njit(**_OPTS)
def _scale_rows(dst, src, m):
    """dst[t, b] = src[t, b] * m[b] for (T, B, R) arrays and a (B, R) mask."""
    for t in range(src.shape[0]):
        for b in range(src.shape[1]):
            for j in range(src.shape[2]):
                dst[t, b, j] = src[t, b, j] * m[b, j]


@njit(**_OPTS)
def _mul_add(acc, a, b):
    for j in range(acc.shape[0]):
        acc[j] += a[j] * b[j]


@njit(**_OPTS)
def lstm_forward(X, Wih, Whh, Whr, bias, has_bias, peep, gidx, cifg, act, ZH, ZC, DROP, LNG,
                 LNC, eps, AH, RH, CH, INV, Wgg, AS, AP, GG, mask, has_mask, reverse, keep, h0,
                 c0, Z, PRE, OUT, M, C, CS, HP, CP, hs, cs, hd, scratch, big, small):
    """Run the whole sequence. Buffers are allocated by the caller:

    Z: (T, B, G, H) when ``keep`` (holds the gate activations afterwards), else a chunk
    (Tc, B, G, H) reused for Tc steps at a time. C: (T, B, H) cell states when ``keep``, else
    (2, B, H). HP, CP: (T, B, H) states before each step (only with ``keep`` and a mask).
    hs, cs: (B, H), the final state on return. scratch, big: (4, H), big filled with BIG.
    ``gidx[k]`` is the block of gate k (i, f, g, o) in Z, or -1 if the gate is removed.
    ``act``: the cell's functions and clip (``activate.params``), or empty for the defaults;
    with them, PRE (the shape of Z) receives the pre-activations (``cell_forward_options``).
    Zoneout (ZH, ZC (T, B, H), the masks of h and c: 1 keeps the previous value; empty
    without): C then holds the cell's own c, and CS (the shape of C) the state it passes on,
    d * c_prev + (1 - d) * c; without zoneout CS is C itself.
    A projection (LSTMP: ``Whr`` (P, H), or (0, H) for none): h = W_hr m with m = o * tanh(c)
    kept in M ((T, B, H) with ``keep``, else (1, B, H)); then h, h0, hs, OUT, HP and ZH are
    P wide and Whh is (G*H, P).
    Recurrent dropout (DROP (G, B, R), the masks of one sequence, scaled; or (0, 1, 1)): gate
    block k sees h_prev * DROP[k] (one product per gate, through hd (B, R)).
    Layer normalisation (``lstmkit.cells.layernorm_lstm``; LNG (2, G*H) the gains w_ln_ih,
    w_ln_hh, LNC (2, H) w_ln_c and b_ln_c; LNG empty (0, 1) without): AH and RH (steps, B,
    G*H) keep LN(W_ih x) and LN(W_hh h_prev), CH (steps, B, H) LN(c), INV (steps, B, 3) the
    three 1 / std, steps being T with ``keep``, else 1.
    Full gate recurrence (``Wgg`` (3H, 3H), or (0, 0) without; always with ``act``): the gates
    i, f, o also see the previous step's values a_prev = [i, f, o] (B, 3H), z += a_prev Wgg^T;
    AS (B, 3H) holds the gate state (the initial one on entry, the final one on return), AP
    (steps, B, 3H) each step's a_prev, GG (B, 3H) work.
    ``small``: the per-step products in BLAS's small-matrix blocks (``blas.gemm_blocks``).
    """
    T, B, D = X.shape
    H = c0.shape[1]
    proj = Whr.shape[0] > 0
    Tc, _, G, _ = Z.shape
    GH = G * H
    X2 = X.reshape(T * B, D)
    Z2 = Z.reshape(Tc * B, GH)
    wci = peep[0]
    wcf = peep[1]
    wco = peep[2]
    ki, kf, kg, ko = gidx[0], gidx[1], gidx[2], gidx[3]
    options = act.shape[0] > 0
    zoneout = ZH.shape[0] > 0
    ln = LNG.shape[0] > 0
    fgr = Wgg.shape[0] > 0
    add_bias = has_bias and not ln  # layer normalisation adds the bias after normalising
    copy2(hs, h0)
    copy2(cs, c0)
    done = 0
    while done < T:
        n = min(Tc, T - done)
        # the chunk of steps [t0, t0 + n) in time order, processed forwards or backwards
        t0 = T - done - n if reverse else done
        zoff = t0 if Tc == T else 0
        # Z[chunk] = b_ih + b_hh + X[chunk] W_ih^T: one GEMM for the n steps
        project(X2[t0 * B:(t0 + n) * B], Wih, bias, add_bias, Z2[zoff * B:(zoff + n) * B])
        for k in range(n):
            s = done + k  # processing index
            t = T - 1 - s if reverse else s
            zt = Z[zoff + (t - t0)]
            cslot = t if keep else s % 2
            if has_mask:
                h_prev = hs
                c_prev = cs
                if keep:
                    copy2(HP[t], hs)
                    copy2(CP[t], cs)
            elif s == 0:
                h_prev = h0
                c_prev = c0
            else:
                tp = t + 1 if reverse else t - 1
                h_prev = OUT[tp]
                c_prev = CS[tp if keep else (s - 1) % 2]
            slot = t if keep else 0
            if ln:
                _layer_norm_step(zt, h_prev, Whh, DROP, hd, LNG, bias, eps, AH[slot], RH[slot],
                                 INV[slot], small)
            else:
                _add_recurrent(h_prev, Whh, DROP, hd, zt, 1.0, small)
            if fgr:
                _add_gate_recurrence(zt, AS, Wgg, AP[slot], GG, ki, kf, ko, small)
            m = M[t if keep else 0] if proj else OUT[t]  # where the cell writes o * tanh(c)
            for b in range(B):
                # a removed gate computes on scratch holding BIG: its sigmoid is exactly 1
                if ki < 0 or kf < 0 or ko < 0:
                    copy2(scratch[:4], big)
                zi = zt[b, ki] if ki >= 0 else scratch[0]
                zf = zt[b, kf] if kf >= 0 else scratch[1]
                zo = zt[b, ko] if ko >= 0 else scratch[3]
                if options:
                    pt = PRE[zoff + (t - t0), b]
                    cell_forward_options(zi, zf, zt[b, kg], zo, c_prev[b], C[cslot, b],
                                         m[b], wci, wcf, wco, cifg, gidx, act,
                                         pt[ki] if ki >= 0 else scratch[4], pt[kf] if kf >= 0
                                         else scratch[4], pt[kg], pt[ko] if ko >= 0
                                         else scratch[4])
                else:
                    cell_forward(zi, zf, zt[b, kg], zo, c_prev[b], C[cslot, b], m[b],
                                 wci, wcf, wco, cifg)
                if zoneout:
                    copy1(CS[cslot, b], C[cslot, b])
                    zoneout_forward(CS[cslot, b], c_prev[b], ZC[t, b])
            if ln:  # h = o * tanh(w_ln_c * LN(c) + b_ln_c) replaces o * tanh(c)
                _layer_norm_hidden(zt, ko, C[cslot], CH[slot], INV[slot], LNC, m, eps)
            if proj:  # h = m W_hr^T
                gemm(False, True, 1.0, m, Whr, 0.0, OUT[t])
            if zoneout:
                for b in range(B):
                    zoneout_forward(OUT[t, b], h_prev[b], ZH[t, b])
            if fgr:  # the gate state passed on: this step's i, f, o (a masked row keeps its own)
                for b in range(B):
                    if not has_mask or mask[t, b]:
                        copy1(AS[b, :H], zt[b, ki])
                        copy1(AS[b, H:2 * H], zt[b, kf])
                        copy1(AS[b, 2 * H:], zt[b, ko])
            if has_mask:
                for b in range(B):
                    if mask[t, b]:
                        copy1(hs[b], OUT[t, b])
                        copy1(cs[b], CS[cslot, b])
                    else:
                        fill1(OUT[t, b], 0.0)
        done += n
    if not has_mask:
        last = 0 if reverse else T - 1
        copy2(hs, OUT[last])
        copy2(cs, CS[last if keep else (T - 1) % 2])


@njit(**_OPTS)
def lstm_backward(X, Wih, Whh, Whr, has_bias, peep, has_peep, gidx, cifg, act, ZH, ZC, DROP,
                  LNG, LNC, AH, RH, CH, INV, Wgg, AP, DAS, DZG, dGG, gWgg, mask, has_mask,
                  reverse, h0, c0, Z, PRE, OUT, M, C, CS, HP, CP, dOUT, dh, dc, dZ, dA, dR, dX,
                  dHN, dM, hd, gWih, gWhh, gWhr, gbih, gbhh, gpeep, gLNG, gLNC, scratch, ones,
                  small):
    """Backpropagation through time. dh, dc (B, H): the gradient at the final state on entry,
    at the initial state on return. dZ (T, B, G, H) (with layer normalisation (1, B, G, H),
    one step's: the bias gradient is then summed step by step), dX (T, B, D): outputs. Gradients are
    accumulated into gWih, gWhh, gbih, gbhh (if has_bias) and gpeep (3, H) (if has_peep).
    ``act``, PRE, ZH, ZC, DROP, CS, Whr, M: the options, masks and buffers of the forward pass
    (``lstm_forward``); with a projection its gradient is accumulated into gWhr (P, H).
    dHN: the gradient at each step's own h (before zoneout), (T, B, R) with a projection
    (read again for dW_hr), else (1, B, R); dM (B, H): work. scratch (8, H).
    Layer normalisation (LNG, LNC, AH, RH, CH, INV of the forward pass): dA and dR (the shape
    of dZ) receive the gradients at W_ih x and W_hh h_prev (without, both are dZ itself);
    the gains' gradients are accumulated into gLNG (2, G*H) and gLNC (2, H).
    Full gate recurrence (Wgg, AP of the forward pass): DAS (B, 3H), the gradient at the gate
    state, final on entry and initial on return; DZG (T, B, 3H) and dGG (B, 3H) work; the
    gradient of Wgg accumulated into gWgg."""
    T, B, D = X.shape
    H = c0.shape[1]
    R = h0.shape[1]
    proj = Whr.shape[0] > 0
    G = Z.shape[2]
    GH = G * H
    wci = peep[0]
    wcf = peep[1]
    wco = peep[2]
    ki, kf, kg, ko = gidx[0], gidx[1], gidx[2], gidx[3]
    options = act.shape[0] > 0
    zoneout = ZH.shape[0] > 0
    ln = LNG.shape[0] > 0
    fgr = Wgg.shape[0] > 0
    no_ga = DAS[:0].reshape(0, H)  # no gradients at the gate values from elsewhere
    db = np.zeros(GH, dtype=X.dtype)
    # views made once (each costs reference-count updates, layernorm.py); without layer
    # norm LNC is empty and they are never read
    dn = scratch[4]
    no_dh = scratch[5]
    keep_c = scratch[6]
    w_c = LNC[0] if ln else no_dh
    g_c = gLNC[0] if ln else no_dh
    fill1(no_dh, 0.0)
    for s in range(T - 1, -1, -1):
        t = T - 1 - s if reverse else s
        c_prev = state_before(s, t, reverse, has_mask, CP, c0, CS)
        zt = Z[t]
        dzt = dZ[0] if ln else dZ[t]
        # the gradient at each row's own h (dhn), and what passes straight back in dh: a
        # masked row's whole gradient, zoneout's kept part, else nothing
        dhn = dHN[t if proj else 0]
        for b in range(B):
            if has_mask and not mask[t, b]:
                fill1(dhn[b], 0.0)
            elif zoneout:
                zoneout_backward(dh[b], dOUT[t, b], ZH[t, b], dhn[b], dh[b])
            else:
                for j in range(R):
                    dhn[b, j] = flush(dh[b, j]) + dOUT[t, b, j]
                    dh[b, j] = 0.0
        if proj:  # h = W_hr m: the gradient at m = o * tanh(c)
            gemm(False, False, 1.0, dhn, Whr, 0.0, dM)
        dm = dM if proj else dhn
        for b in range(B):
            if has_mask and not mask[t, b]:
                fill1(dzt[b].reshape(GH), 0.0)
                continue
            ai = zt[b, ki] if ki >= 0 else ones
            af = zt[b, kf] if kf >= 0 else ones
            ao = zt[b, ko] if ko >= 0 else ones
            dzi = dzt[b, ki] if ki >= 0 else scratch[0]
            dzf = dzt[b, kf] if kf >= 0 else scratch[1]
            dzo = dzt[b, ko] if ko >= 0 else scratch[3]
            if zoneout:
                zoneout_backward(dc[b], no_dh, ZC[t, b], dc[b], keep_c)
            if ln:
                _layer_norm_cell_backward(ai, af, zt[b, kg], ao, CH[t, b], INV[t, b, 2],
                                          c_prev[b], dm[b], dc[b], dzi, dzf, dzt[b, kg], dzo,
                                          LNC, w_c, gLNC, g_c, dn)
            elif options:
                pt = PRE[t, b]
                cell_backward_options(ai, af, zt[b, kg], ao, C[t, b], c_prev[b], dm[b],
                                      no_dh, dc[b], dzi, dzf, dzt[b, kg], dzo, wci, wcf,
                                      wco, cifg, gidx, act, pt[ki] if ki >= 0 else ones,
                                      pt[kf] if kf >= 0 else ones, pt[kg],
                                      pt[ko] if ko >= 0 else ones, scratch[4],
                                      DAS[b].reshape(3, H) if fgr else no_ga)
            else:
                cell_backward(ai, af, zt[b, kg], ao, C[t, b], c_prev[b], dm[b], no_dh,
                              dc[b], dzi, dzf, dzt[b, kg], dzo, wci, wcf, wco, cifg)
            if zoneout:  # what the state kept of the previous step's c passes straight back
                for j in range(H):
                    dc[b, j] = flush(dc[b, j] + keep_c[j])
        if ln:  # z = w_ln_ih * LN(a) + w_ln_hh * LN(r) + b: the gradients at a and r
            layernorm.backward_pair_rows(dzt.reshape(B, GH), LNG, AH[t], RH[t], INV[t],
                                         dA[t].reshape(B, GH), dR[t].reshape(B, GH), gLNG,
                                         mask[t if has_mask else 0], has_mask)
            if has_bias:  # this step's part of the bias gradient (masked rows are 0)
                add_rows(db, dzt.reshape(B, GH))
        # dh_prev = dR[t] W_hh + what passes straight back (dR is dZ without layer norm)
        _recurrent_backward(dR[t], Whh, DROP, hd, dh, small)
        if fgr:
            _gate_recurrence_backward(dzt, DZG[t], Wgg, dGG, DAS, mask[t], has_mask, ki, kf, ko,
                                      small)
    TB = T * B
    dA2 = dA.reshape(TB, GH)
    dR2 = dR.reshape(TB, GH)
    X2 = X.reshape(TB, D)
    gemm(True, False, 1.0, dA2, X2, 1.0, gWih)
    gemm(False, False, 1.0, dA2, Wih, 0.0, dX.reshape(TB, D))
    if DROP.shape[0] == 0:
        add_recurrent_weight_gradient(gWhh, dR2, True, OUT.reshape(TB, R), HP, h0, T, B,
                                      reverse, has_mask)
    else:  # gate block k saw h_prev * DROP[k] at every step
        OUTk = np.empty_like(OUT)
        HPk = np.empty_like(HP) if has_mask else HP
        h0k = np.empty_like(h0)
        for k in range(G):
            _scale_rows(OUTk, OUT, DROP[k])
            if has_mask:
                _scale_rows(HPk, HP, DROP[k])
            _scale_rows(h0k.reshape(1, B, R), h0.reshape(1, B, R), DROP[k])
            add_recurrent_weight_gradient(gWhh[k * H:(k + 1) * H], dR2[:, k * H:(k + 1) * H],
                                          True, OUTk.reshape(TB, R), HPk, h0k, T, B, reverse,
                                          has_mask)
    if fgr:  # dW_gg = sum over steps of dz_{i,f,o}^T a_prev
        gemm(True, False, 1.0, DZG.reshape(TB, 3 * H), AP.reshape(TB, 3 * H), 1.0, gWgg)
        flush_all(gWgg.reshape(gWgg.size))
        flush_all(DAS.reshape(DAS.size))
    if proj:  # dW_hr = sum over steps of dh_t^T m_t
        gemm(True, False, 1.0, dHN.reshape(TB, R), M.reshape(TB, H), 1.0, gWhr)
        flush_all(gWhr.reshape(gWhr.size))
    if has_bias:
        if not ln:
            add_rows(db, dZ.reshape(TB, GH))
        add_rows(gbih, db.reshape(1, GH))
        add_rows(gbhh, db.reshape(1, GH))
    if has_peep:  # sum over steps of dz_i c_prev, dz_f c_prev, dz_o c
        for s in range(T):
            t = T - 1 - s if reverse else s
            c_prev = state_before(s, t, reverse, has_mask, CP, c0, CS)
            for b in range(B):
                if ki >= 0:
                    _mul_add(gpeep[0], dZ[t, b, ki], c_prev[b])
                if kf >= 0:
                    _mul_add(gpeep[1], dZ[t, b, kf], c_prev[b])
                if ko >= 0:
                    _mul_add(gpeep[2], dZ[t, b, ko], C[t, b])
    # flush-to-zero for what the GEMMs produced (the element-wise results already are)
    for a in (dX.reshape(TB * D), dh.reshape(B * R), gWih.reshape(GH * D), gWhh.reshape(GH * R),
              gbih, gbhh, gpeep.reshape(3 * H), gLNG.reshape(gLNG.size),
              gLNC.reshape(gLNC.size)):
        flush_all(a)


# -- the batch in parts, one parallel region ---------------------------------------------------
# Arguments as ``lstm_forward``'s and ``lstm_backward``'s, those that belong to the sequences
# (inputs, states, masks, caches, work and the gradients each part accumulates) with a leading
# parts axis; the weights and switches shared.


def _forward_parts_driver(loop):
    def lstm_forward_parts(X, Wih, Whh, Whr, bias, has_bias, peep, gidx, cifg, act, ZH, ZC,
                           DROP, LNG, LNC, eps, AH, RH, CH, INV, Wgg, AS, AP, GG, mask, has_mask,
                           reverse, keep, h0, c0, Z, PRE, OUT, M, C, CS, HP, CP, hs, cs, hd,
                           scratch, big, small):
        """``lstm_forward`` on each part k of the batch (X[k], ZH[k], ... hs[k], cs[k])."""
        for k in loop(X.shape[0]):
            lstm_forward(X[k], Wih, Whh, Whr, bias, has_bias, peep, gidx, cifg, act, ZH[k],
                         ZC[k], DROP[k], LNG, LNC, eps, AH[k], RH[k], CH[k], INV[k], Wgg, AS[k],
                         AP[k], GG[k], mask[k], has_mask, reverse, keep, h0[k], c0[k], Z[k],
                         PRE[k], OUT[k], M[k], C[k], CS[k], HP[k], CP[k], hs[k], cs[k], hd[k],
                         scratch[k], big, small)

    return lstm_forward_parts


def _backward_parts_driver(loop):
    def lstm_backward_parts(X, Wih, Whh, Whr, has_bias, peep, has_peep, gidx, cifg, act, ZH,
                            ZC, DROP, LNG, LNC, AH, RH, CH, INV, Wgg, AP, DAS, DZG, dGG, gWgg,
                            mask, has_mask, reverse, h0, c0, Z, PRE, OUT, M, C, CS, HP, CP,
                            dOUT, dh, dc, dZ, dA, dR, dX, dHN, dM, hd, gWih, gWhh, gWhr, gbih,
                            gbhh, gpeep, gLNG, gLNC, scratch, ones, small):
        """``lstm_backward`` on each part k of the batch, each accumulating its own gradients
        (gWih[k], ...), which the caller adds in the parts' order."""
        for k in loop(X.shape[0]):
            lstm_backward(X[k], Wih, Whh, Whr, has_bias, peep, has_peep, gidx, cifg, act, ZH[k],
                          ZC[k], DROP[k], LNG, LNC, AH[k], RH[k], CH[k], INV[k], Wgg, AP[k],
                          DAS[k], DZG[k], dGG[k], gWgg[k], mask[k], has_mask, reverse, h0[k],
                          c0[k], Z[k], PRE[k], OUT[k], M[k], C[k], CS[k], HP[k], CP[k], dOUT[k],
                          dh[k], dc[k], dZ[k], dA[k], dR[k], dX[k], dHN[k], dM[k], hd[k],
                          gWih[k], gWhh[k], gWhr[k], gbih[k], gbhh[k], gpeep[k], gLNG[k],
                          gLNC[k], scratch[k], ones, small)

    return lstm_backward_parts


# the parallel drivers compiled (a region over the parts); the serial ones, for a single part,
# left as Python: they only index the arrays and call the kernel, and a compiled wrapper
# cost ~7.5 s of compilation per kernel signature (the kernel optimised again inside it)
lstm_forward_parts = njit(parallel=True, **_OPTS)(_forward_parts_driver(prange))
lstm_forward_parts_serial = _forward_parts_driver(range)  # plain Python
lstm_backward_parts = njit(parallel=True, **_OPTS)(_backward_parts_driver(prange))
lstm_backward_parts_serial = _backward_parts_driver(range)  # plain Python
