"""The fused LSTM in the batch-inner layout, optionally split over threads.

Same arithmetic as ``lstm.py`` (the row layout, the simplest form of the kernels; its
``cell_forward`` and ``cell_backward`` run here on each gate block), with every per-step array
transposed so that the batch is the contiguous axis: a step's pre-activations are a (GH, B)
block, the states h^T, c^T are (H, B). Two reasons:

- the recurrent product of each step, ``Z_t^T += W_hh h^T`` (and backward's
  ``dh^T = W_hh^T dZ_t^T``), has the thin batch as its columns, which is what the packed
  micro-kernels of ``packed.py`` compute (W_hh packed once per pass, not once per step), or,
  with the plan's ``blas_products``, one BLAS call per part and step (where BLAS's kernels are
  faster, see ``engine.plan``);
- every gate block of a step is one contiguous run of H*B numbers, so the element-wise pass is
  one long vectorised loop per gate, whatever B (no short rows, no scalar remainders).

The input projection is either one GEMM per chunk of steps into a (GH, Tc*B) panel, whose
rows are then copied into each step's block, or ("direct", while a thread's share of the
weights is small: the plan's "direct" projection, ``engine.plan``) computed in each step with the
recurrent product, as one packed product ``[W_ih | b | W_hh] [x_t^T; 1; h_prev]`` straight into
the step's block (that matrix packed once per pass, ``packed.packed_gemm_stacked``): no panel
and no copy (the panel's rows, far apart in memory, cost more than their few numbers for small
B), and one pass over the block instead of two.

Backward copies each step's gate gradients into a (GH, T*B) matrix (in the layer's row order),
so that ``dW_ih = dZ X``, ``dW_hh = dZ H_prev``, ``dX = dZ^T W_ih`` stay one GEMM each over
all steps (per thread). For a single sequence (B = 1) that matrix is held transposed, step-major
(T, GH): a step's gradients are then one contiguous row, where the (GH, T) matrix would take
one number from each of GH rows far apart (a cache line each: on (200, 1, 32, 128) that copy
cost 10-17% of a training step), and the GEMMs read it with their transpose flags swapped
(``_gate_gradients``).

Threads ("parts"): the hidden units are split into ``parts`` contiguous ranges, and the rows of
every weight matrix are permuted (by the caller) so that the G gate rows of each part's units
are contiguous. A pass is one ``prange`` region over the parts, in which every worker runs the
whole time loop: at each step worker p multiplies its own rows (the packed product) and runs the
element-wise pass for its own units, then waits until every part of the step is done
(``sync.py``: a spinning wait on atomic counters, ~0.2 us, where a region per step cost ~1.6 us).
With ``parts == 1`` the permutation is the identity and the loop runs on the calling thread.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from lstmkit.engine.kernels.blas import add_recurrent_weight_gradient, gemm
from lstmkit.engine.kernels.gates import flush
from lstmkit.engine.kernels.loops import copy1, copy2, flush_all, state_before
from lstmkit.engine.kernels.lstm import (
    cell_backward,
    cell_backward_options,
    cell_forward,
    cell_forward_options,
    zoneout_backward,
    zoneout_forward,
)
from lstmkit.engine.kernels.packed import (
    blas_or_packed,
    copy_columns,
    copy_rows,
    pack_columns,
    pack_rows,
    pack_rows_stacked,
    packed_gemm_panels,
    packed_gemm_stacked,
    to_panels,
)
from lstmkit.engine.kernels.sync import claim, finish, wait
from lstmkit.engine.kernels.transpose import transpose_into

_OPTS = {"cache": True, "error_model": "numpy", "fastmath": {"contract"}, "nogil": True}
BIG = 100.0


@njit(**_OPTS)
def _mask_run(M, t, u0, u1, run):
    """Units [u0, u1) of a zoneout mask M (T, B, H) at step t as the part's flat run (unit
    major, the batch inner: run[(u - u0) * B + b] = M[t, b, u]); returns run. (The masks are
    drawn, and cached, as (T, B, H): each part transposes its own units here, at each step.)"""
    B = M.shape[1]
    for u in range(u0, u1):
        for b in range(B):
            run[(u - u0) * B + b] = M[t, b, u]
    return run


@njit(**_OPTS)
def _gate(flat, r0, kk, hp, B, n, other):
    """The flat run of gate block kk of a part (rows r0 + kk*hp ...), or ``other``."""
    if kk < 0:
        return other
    start = (r0 + kk * hp) * B
    return flat[start:start + n]


@njit(**_OPTS)
def _forward_part(u0, u1, G, gidx, cifg, act, zt, pt, P, zs, Wp, w_off, hprev, cprev, cnew,
                  cnext, ZH, ZC, hout, OUT, t, wexp, scratch, mask, has_mask, hstate, cstate,
                  fold, table, ids, order, direct, xt, Wxp, wx_off, blas):
    """Step t for the units [u0, u1): copy their rows of the projection P[:, zs] (for B = 1
    held as (Tc, GH): P.reshape(Tc, GH)[zs]) into the step's block zt, add W_hh h_prev (their
    rows of W_hh, packed at Wp[w_off:]), then gates, c (into cnew), h (into hout), and OUT[t]
    for these units. With a mask, masked columns keep their state (hstate, cstate: the state
    after the step, updated in place) and output 0.
    With ``fold`` the input rows come from ``table`` (GH, V) = W_ih E^T + b instead of P:
    z[r, b] = table[order[r], ids[t, b]]. With ``direct`` there is no P, and the whole
    pre-activation is one packed product, [W_ih | b | W_hh] [x_t^T; 1; h_prev] (packed at
    Wxp[wx_off:]; xt (D + 1, B) is x_t^T with a row of ones), written straight into zt.
    With options (``act`` not empty: ``lstm.cell_forward_options``) the pre-activations go
    to pt, laid out as zt. With zoneout (ZH, ZC (T, B, H) not empty; scratch rows 4 and 5
    hold their runs) h becomes
    zh * h_prev + (1 - zh) * h in hout, and the state c passed on goes to cnext (cnew keeps
    the cell's own c); without, cnext is cnew."""
    H, B = hprev.shape
    hp = u1 - u0
    r0 = G * u0
    r1 = G * u1
    n = hp * B
    if direct:
        packed_gemm_stacked(Wxp, wx_off, r1 - r0, xt, hprev, zt[r0:r1], False)
    elif fold:
        for r in range(r0, r1):
            src = order[r]
            for b in range(B):
                zt[r, b] = table[src, ids[t, b]]
    elif B == 1:
        Pt = P.reshape(P.shape[1], P.shape[0])
        for r in range(r0, r1):
            zt[r, 0] = Pt[zs, r]
    else:
        for r in range(r0, r1):
            for b in range(B):
                zt[r, b] = P[r, zs, b]
    if not direct:
        blas_or_packed(blas, Wp, w_off, r1 - r0, hprev, zt[r0:r1], True)
    flat = zt.reshape(zt.shape[0] * B)
    if gidx[0] < 0 or gidx[1] < 0 or gidx[3] < 0:
        for k in range(3):
            for j in range(n):
                scratch[k, j] = BIG
    a0 = u0 * B
    a1 = u1 * B
    zi = _gate(flat, r0, gidx[0], hp, B, n, scratch[0, :n])
    zf = _gate(flat, r0, gidx[1], hp, B, n, scratch[1, :n])
    zg = _gate(flat, r0, gidx[2], hp, B, n, scratch[2, :n])
    zo = _gate(flat, r0, gidx[3], hp, B, n, scratch[2, :n])
    cp = cprev.reshape(H * B)[a0:a1]
    cn = cnew.reshape(H * B)[a0:a1]
    hn = hout.reshape(H * B)[a0:a1]
    wci = wexp[0].reshape(H * B)[a0:a1]
    wcf = wexp[1].reshape(H * B)[a0:a1]
    wco = wexp[2].reshape(H * B)[a0:a1]
    if act.shape[0] > 0:
        pflat = pt.reshape(pt.shape[0] * B)
        cell_forward_options(zi, zf, zg, zo, cp, cn, hn, wci, wcf, wco, cifg, gidx, act,
                             _gate(pflat, r0, gidx[0], hp, B, n, scratch[3, :n]),
                             _gate(pflat, r0, gidx[1], hp, B, n, scratch[3, :n]),
                             _gate(pflat, r0, gidx[2], hp, B, n, scratch[3, :n]),
                             _gate(pflat, r0, gidx[3], hp, B, n, scratch[3, :n]))
    else:
        cell_forward(zi, zf, zg, zo, cp, cn, hn, wci, wcf, wco, cifg)
    if ZH.shape[0] > 0:
        cs = cnext.reshape(H * B)[a0:a1]
        copy1(cs, cn)
        zoneout_forward(hn, hprev.reshape(H * B)[a0:a1], _mask_run(ZH, t, u0, u1, scratch[4, :n]))
        zoneout_forward(cs, cp, _mask_run(ZC, t, u0, u1, scratch[5, :n]))
    transpose_into(OUT[t, :, u0:u1], hout[u0:u1])
    if has_mask:
        for u in range(u0, u1):
            for b in range(B):
                if mask[t, b]:
                    hstate[u, b] = hout[u, b]
                    cstate[u, b] = cnext[u, b]
                else:
                    hstate[u, b] = hprev[u, b]
        for b in range(B):
            if not mask[t, b]:
                for u in range(u0, u1):
                    OUT[t, b, u] = 0.0


@njit(**_OPTS)
def _next_input(X, XT, t, k, p, parts):
    """Part p's share of the rows of x_t^T into XT[k] (XT (2, D + 1, B): x^T of two steps,
    whose last rows stay ones). During step s the parts fill XT[(s + 1) % 2], which no part
    reads before all have finished step s; XT[s % 2] is not written before all have
    finished step s either (its next fill is during step s + 1)."""
    D = X.shape[2]
    d0 = (D * p) // parts
    d1 = (D * (p + 1)) // parts
    transpose_into(XT[k, d0:d1], X[t, :, d0:d1])


@njit(**_OPTS)
def _project_part(r0, r1, P, m, Wih, bias, has_bias, Xc):
    """Rows [r0, r1) of the projection panel P (GH, Tc, B): P[r0:r1] = bias + W_ih[r0:r1] Xc^T
    (for m = n * B numbers of n steps). For B = 1, P holds (Tc, GH) instead, so that a step
    reads its projection as one contiguous run (in the (GH, Tc) panel that would be one number
    from each of GH cache lines): columns r0 .. r1 of Xc W_ih^T."""
    GH, Tc, B = P.shape
    beta = 1.0 if has_bias else 0.0
    if B == 1:
        pc = P.reshape(Tc, GH)[0:m, r0:r1]
        if has_bias:
            for j in range(m):
                for r in range(r1 - r0):
                    pc[j, r] = bias[r0 + r]
        gemm(False, True, 1.0, Xc, Wih[r0:r1], beta, pc)
    else:
        pc = P.reshape(GH, Tc * B)[r0:r1, 0:m]
        if has_bias:
            for r in range(r1 - r0):
                v = bias[r0 + r]
                for j in range(m):
                    pc[r, j] = v
        gemm(False, True, 1.0, Wih[r0:r1], Xc, beta, pc)


@njit(**_OPTS)
def _gate_gradients(dZ, q0, q1, j0, j1):
    """Rows [q0, q1) and columns [j0, j1) of the gate gradients as the (GH, T*B) matrix M,
    as (view, transposed): M[q0:q1, j0:j1] is the view, or its transpose when dZ is held
    step-major (B = 1: dZ (T, GH, 1), M^T = dZ.reshape(T, GH)). Pass ``transposed`` as the
    operand's flag to ``gemm`` (or its negation where the GEMM reads M^T)."""
    if dZ.shape[2] == 1:
        return dZ.reshape(dZ.shape[0], dZ.shape[1])[j0:j1, q0:q1], True
    GH, T, B = dZ.shape
    return dZ.reshape(GH, T * B)[q0:q1, j0:j1], False


@njit(**_OPTS)
def _gate_gradient(dZ, r, t, b):
    """Gate gradient of row r, step t, column b (dZ (GH, T, B), or (T, GH, 1) for B = 1)."""
    if dZ.shape[2] == 1:
        return dZ[t, r, 0]
    return dZ[r, t, b]


@njit(**_OPTS)
def _weights_part(p, parts, u0, u1, gidx, reverse, has_mask, has_bias, has_peep, Wp, w_off, last,
                  add_dh, dhT, dZ, X2, gWih, HP, gWhh, O2, h0, ones, db, gbih, gbhh, Wih, dX2, CPT,
                  c0T, CT, CST, gpeep, fold, ids, E, S, dE, blas):
    """After the time loop, part p: dh_0 of its units [u0, u1), then its share of the weight
    gradients: the rows [q0, q1) of dZ (GH, T, B; for B = 1 step-major, (T, GH, 1), see
    ``_gate_gradients``), which holds the gate gradients in the layer's
    own order (gate k, unit u at row k * H + u, as gWih, gWhh, gbih, gbhh and Wih): one GEMM
    each for dW_ih, dW_hh, the bias sums; its share of the rows of dX; the peephole gradients of
    its units. With ``fold`` (X = E[ids]): S = dZ summed by input id (its rows, (GH, V)),
    dW_ih = S E, and instead of dX this part's term of dE = S^T W_ih, into dE[p] (V, D).
    ``add_dh``: dh_0 adds onto what dhT holds (a masked column's or zoneout's pass-through);
    CST: the states c passed on (CT without zoneout)."""
    B, H = h0.shape
    T = X2.shape[0] // B
    GH = gWih.shape[0]
    TB = T * B
    q0 = (GH * p) // parts
    q1 = (GH * (p + 1)) // parts
    # dh_0^T of these units (the last step's gradients are still in the parts' order)
    blas_or_packed(blas, Wp, w_off, u1 - u0, last, dhT[u0:u1], add_dh)
    Zq, tz = _gate_gradients(dZ, q0, q1, 0, TB)  # this part's rows, every step
    if fold:
        Mq = Zq.T if tz else Zq  # (q1 - q0, TB) either way
        V = S.shape[1]
        for r in range(q0, q1):
            for v in range(V):
                S[r, v] = 0.0
            for j in range(TB):
                S[r, ids[j]] += Mq[r - q0, j]
        gemm(True, False, 1.0, S[q0:q1], Wih[q0:q1], 0.0, dE[p])
        gemm(False, False, 1.0, S[q0:q1], E, 1.0, gWih[q0:q1])
    else:
        gemm(tz, False, 1.0, Zq, X2, 1.0, gWih[q0:q1])
    if has_bias:  # row sums of dZ: a BLAS gemv with a vector of ones
        gemm(False, not tz, 1.0, ones[:TB].reshape(1, TB), Zq, 0.0, db[:, q0:q1])
        for r in range(q0, q1):
            gbih[r] += db[0, r]
            gbhh[r] += db[0, r]
    add_recurrent_weight_gradient(gWhh[q0:q1], Zq, tz, O2, HP, h0, T, B, reverse, has_mask)
    if not fold:  # dX rows of this part's share of the steps
        j0 = (TB * p) // parts
        j1 = (TB * (p + 1)) // parts
        Zj, tj = _gate_gradients(dZ, 0, GH, j0, j1)
        gemm(not tj, False, 1.0, Zj, Wih, 0.0, dX2[j0:j1])
    if has_peep:
        for s in range(T):
            t = T - 1 - s if reverse else s
            cp = state_before(s, t, reverse, has_mask, CPT, c0T, CST)
            for u in range(u0, u1):
                for k in range(3):
                    kk = gidx[0] if k == 0 else gidx[1] if k == 1 else gidx[3]
                    if kk < 0:
                        continue
                    row = kk * H + u
                    acc = 0.0
                    for b in range(B):
                        cv = CT[t, u, b] if k == 2 else cp[u, b]
                        acc += _gate_gradient(dZ, row, t, b) * cv
                    gpeep[k, u] += acc


@njit(**_OPTS)
def _forward_thread(w, X, Wih, Whh, order, bias, has_bias, wexp, gidx, cifg, act, ZH, ZC,
                    mask, has_mask, reverse, keep, h0, P, Z, PRE, OUT, OUTK, CT, CST, HP, CPT, hT,
                    cT, hnew, scratch, bounds, Wp, w_off, fold, table, ids, claimed, finished,
                    direct, XT, Wxp, wx_off, blas):
    """The forward pass as worker w of the region runs it: the packing of W_hh, each chunk's
    projection and each step are done part by part, worker w doing part w (``sync.claim``),
    and every worker waits for all parts of one before the next (slots: 0 for the packing,
    then one per projection chunk and one per step, in order). With ``direct`` (no chunks),
    part p packs its rows of [W_ih | b | W_hh] instead of W_hh and, during each step,
    transposes its share of the next step's x into the other half of XT (``_next_input``)."""
    T, B, D = X.shape
    H = h0.shape[1]
    GH = Z.shape[1]
    G = GH // H
    Tc = T if direct else P.shape[1]
    parts = bounds.shape[0] - 1
    X2 = X.reshape(T * B, D)
    for q in range(parts):
        p = claim(claimed, 0, w, q, parts)
        if p >= 0:
            if direct:
                pack_rows_stacked(Wih, bias, Whh, order, G * bounds[p], G * bounds[p + 1], Wxp,
                                  wx_off[p])
                _next_input(X, XT, T - 1 if reverse else 0, 0, p, parts)
            elif blas:
                copy_rows(Whh, order, G * bounds[p], G * bounds[p + 1], Wp, w_off[p])
            else:
                pack_rows(Whh, order, G * bounds[p], G * bounds[p + 1], Wp, w_off[p])
            finish(finished, 0)
    wait(finished, 0, parts)
    slot = 1
    done = 0
    while done < T:
        n = min(Tc, T - done)
        t0 = T - done - n if reverse else done
        if not fold and not direct:
            for q in range(parts):
                p = claim(claimed, slot, w, q, parts)
                if p >= 0:
                    _project_part(G * bounds[p], G * bounds[p + 1], P, n * B, Wih, bias, has_bias,
                                  X2[t0 * B:(t0 + n) * B])
                    finish(finished, slot)
            wait(finished, slot, parts)
            slot += 1
        for k in range(n):
            s = done + k
            t = T - 1 - s if reverse else s
            zs = t - t0
            zt = Z[t] if keep else Z[0]
            pt = PRE[t if keep and act.shape[0] > 0 else 0]
            cslot = t if keep else s % 2
            hprev = hT[s % 2]
            hstate = hT[(s + 1) % 2]
            if has_mask:
                cprev = cT
                hout = hnew
            else:
                hout = hstate
                if s == 0:
                    cprev = cT
                elif keep:
                    cprev = CST[t + 1 if reverse else t - 1]
                else:
                    cprev = CST[(s - 1) % 2]
            for q in range(parts):
                p = claim(claimed, slot, w, q, parts)
                if p >= 0:
                    u0 = bounds[p]  # this part's units
                    u1 = bounds[p + 1]
                    if has_mask and keep:  # the state before the step
                        transpose_into(HP[t, :, u0:u1], hprev[u0:u1])
                        copy2(CPT[t, u0:u1], cT[u0:u1])
                    _forward_part(u0, u1, G, gidx, cifg, act, zt, pt, P, zs, Wp, w_off[p],
                                  hprev, cprev, CT[cslot], CST[cslot], ZH, ZC, hout, OUT, t,
                                  wexp, scratch[p], mask, has_mask, hstate, cT, fold, table, ids,
                                  order, direct, XT[s % 2], Wxp, wx_off[p], blas)
                    if keep:  # the cache's own copy of this part's outputs, still in cache
                        copy2(OUTK[t, :, u0:u1], OUT[t, :, u0:u1])
                    if direct and s + 1 < T:
                        _next_input(X, XT, t - 1 if reverse else t + 1, (s + 1) % 2, p, parts)
                    finish(finished, slot)
            wait(finished, slot, parts)
            slot += 1
        done += n


def _forward_driver(loop):
    def lstm_forward_t(X, Wih, Whh, order, bias, has_bias, wexp, gidx, cifg, act, ZH, ZC,
                       mask, has_mask, reverse, keep, h0, c0, P, Z, PRE, OUT, OUTK, CT, CST, HP,
                       CPT, hT, cT, hnew, hs, cs, scratch, bounds, Wp, w_off, fold, table, ids,
                       direct, XT, Wxp, wx_off, blas):
        """The whole sequence. W_ih, bias and Z rows in the parts' order (see the module doc);
        W_hh as the layer holds it, ``order``: its rows in the parts' order.

        P (GH, Tc, B): the projection of a chunk of Tc steps (held as (Tc, GH) for B = 1).
        Z (T, GH, B) with ``keep`` (the gate activations afterwards) else (1, GH, B); with the
        cell's options (``act``, ``lstm.cell_forward_options``) PRE, the shape of Z, receives
        the pre-activations (else it is not read). ZH, ZC (T, B, H): zoneout's masks of h
        and c, or empty (``_forward_part``); CST, the shape of CT: the states c passed on
        (CT itself without zoneout). CT (T, H, B)
        computed cell states with ``keep``, else (2, H, B). HP (T, B, H), CPT (T, H, B): the
        state before each step (``keep`` with a mask). hT (2, H, B), cT, hnew (H, B): work.
        hs, cs (B, H): the final state on return. OUT (T, B, H): the output h of every step;
        with ``keep`` also written to OUTK (T, B, H), the copy that backward reads (the caller
        may change OUT in place), else OUTK is not used.
        wexp (3, H, B): peephole weights i, f, o per element. scratch (parts, 4, max units * B).
        bounds (parts + 1,): the unit ranges of the parts. Wp, w_off (parts,): room for W_hh,
        packed part by part (``packed.pack_rows``), and where each part's rows start.
        fold: X[t, b] is row ids[t, b] of an embedding E, and table (GH, V) = W_ih E^T + b (rows
        in the layer's order) replaces the input projection (see ``recurrence.lstm_forward``).
        direct: no P (nor Wp); instead [W_ih | b | W_hh] (W_ih and bias then in the layer's
        order, like W_hh), packed part by part into Wxp at wx_off (parts,)
        (``packed.pack_rows_stacked``), and XT (2, D + 1, B) for x_t^T, last row ones: each
        step's pre-activations are one packed product (``_forward_part``).
        blas: W_hh's rows are copied into Wp unpacked (``packed.copy_rows``) and each step's
        recurrent product is one BLAS call per part instead of the packed kernel (not with
        ``direct``).
        """
        T = X.shape[0]
        parts = bounds.shape[0] - 1
        transpose_into(hT[0], h0)
        transpose_into(cT, c0)
        claimed = np.zeros((2 * T + 1) * parts, dtype=np.int64)
        finished = np.zeros(2 * T + 1, dtype=np.int64)
        for w in loop(parts):  # one region: every worker runs the time loop (see sync.py)
            _forward_thread(w, X, Wih, Whh, order, bias, has_bias, wexp, gidx, cifg, act, ZH,
                            ZC, mask, has_mask, reverse, keep, h0, P, Z, PRE, OUT, OUTK, CT, CST,
                            HP, CPT, hT, cT, hnew, scratch, bounds, Wp, w_off, fold, table, ids,
                            claimed, finished, direct, XT, Wxp, wx_off, blas)
        if not has_mask:
            last = 0 if reverse else T - 1
            copy2(cT, CST[last] if keep else CST[(T - 1) % 2])
        transpose_into(hs, hT[T % 2])
        transpose_into(cs, cT)

    return lstm_forward_t


@njit(**_OPTS)
def _backward_part(u0, u1, G, gidx, cifg, act, ZH, ZC, first, Z, PRE, t, dZs_prev, dZs,
                   dZP_prev, dZP, dZ, order, Wp, w_off, C, CP, dhT, dOUT, dOT, dcT, wexp, ones,
                   scratch, mask, has_mask, saved, blas):
    """Step t backward for the units [u0, u1): dh^T of these units = W_hh^T dZ_{t+1} (their
    rows of W_hh^T, packed at Wp[w_off:]; dZ_{t+1} from dZs_prev, or from the same held as
    panels in dZP_prev when dZP is not empty, see ``packed.to_panels``; not for the first
    step processed), then the element-wise pass into this part's rows of dZs (GH, B, the
    parts' order), copied into dZ[:, t] (the layer's order: row r of dZs goes to row
    order[r]) and into the panels dZP. A masked column gets dZ = 0 and passes its dh, dc
    through. With options (``act``), PRE holds the forward's pre-activations (as Z); with
    zoneout (ZH, ZC (T, B, H); scratch rows 8 and 9 hold their runs), the part of dh, dc
    the state kept from the previous step passes
    straight back (scratch rows 4-7: work)."""
    H, B = dhT.shape
    hp = u1 - u0
    r0 = G * u0
    r1 = G * u1
    n = hp * B
    a0 = u0 * B
    a1 = u1 * B
    zoneout = ZH.shape[0] > 0
    if not first:  # + dh passed through a masked column, or kept by zoneout
        if dZP.shape[0] > 0:
            packed_gemm_panels(Wp, w_off, hp, dZP_prev, dZs.shape[0], B, dhT[u0:u1],
                               has_mask or zoneout)
        else:
            blas_or_packed(blas, Wp, w_off, hp, dZs_prev, dhT[u0:u1], has_mask or zoneout)
    transpose_into(dOT[u0:u1], dOUT[t, :, u0:u1])
    if has_mask:
        for u in range(u0, u1):
            for b in range(B):
                saved[u, b] = dcT[u, b]
    zflat = Z[t].reshape(Z.shape[1] * B)
    dflat = dZs.reshape(dZs.shape[0] * B)
    ai = _gate(zflat, r0, gidx[0], hp, B, n, ones[:n])
    af = _gate(zflat, r0, gidx[1], hp, B, n, ones[:n])
    ag = _gate(zflat, r0, gidx[2], hp, B, n, ones[:n])
    ao = _gate(zflat, r0, gidx[3], hp, B, n, ones[:n])
    c_run = C.reshape(H * B)[a0:a1]
    cp_run = CP.reshape(H * B)[a0:a1]
    dh_run = dhT.reshape(H * B)[a0:a1]
    dho_run = dOT.reshape(H * B)[a0:a1]
    dc_run = dcT.reshape(H * B)[a0:a1]
    dzi = _gate(dflat, r0, gidx[0], hp, B, n, scratch[0, :n])
    dzf = _gate(dflat, r0, gidx[1], hp, B, n, scratch[1, :n])
    dzg = _gate(dflat, r0, gidx[2], hp, B, n, scratch[2, :n])
    dzo = _gate(dflat, r0, gidx[3], hp, B, n, scratch[2, :n])
    wci = wexp[0].reshape(H * B)[a0:a1]
    wcf = wexp[1].reshape(H * B)[a0:a1]
    wco = wexp[2].reshape(H * B)[a0:a1]
    keep_h = scratch[6, :n]
    keep_c = scratch[7, :n]
    if zoneout:
        dh_new = scratch[4, :n]
        no_dh = scratch[5, :n]
        for j in range(n):
            no_dh[j] = 0.0
        zoneout_backward(dh_run, dho_run, _mask_run(ZH, t, u0, u1, scratch[8, :n]), dh_new,
                         keep_h)
        zoneout_backward(dc_run, no_dh, _mask_run(ZC, t, u0, u1, scratch[9, :n]), dc_run,
                         keep_c)
        dh_run = dh_new
        dho_run = no_dh
    if act.shape[0] > 0:
        pflat = PRE[t].reshape(PRE.shape[1] * B)
        cell_backward_options(ai, af, ag, ao, c_run, cp_run, dh_run, dho_run, dc_run, dzi, dzf,
                              dzg, dzo, wci, wcf, wco, cifg, gidx, act,
                              _gate(pflat, r0, gidx[0], hp, B, n, ones[:n]),
                              _gate(pflat, r0, gidx[1], hp, B, n, ones[:n]),
                              _gate(pflat, r0, gidx[2], hp, B, n, ones[:n]),
                              _gate(pflat, r0, gidx[3], hp, B, n, ones[:n]),
                              scratch[3, :n], scratch[3:3])
    else:
        cell_backward(ai, af, ag, ao, c_run, cp_run, dh_run, dho_run, dc_run, dzi, dzf, dzg,
                      dzo, wci, wcf, wco, cifg)
    if zoneout:
        for j in range(n):
            dc_run[j] = flush(dc_run[j] + keep_c[j])
        if not has_mask:
            copy1(dhT.reshape(H * B)[a0:a1], keep_h)
    if has_mask:
        for b in range(B):
            if mask[t, b]:
                for u in range(u0, u1):  # the next GEMM adds dZ W_hh onto it (beta = 1)
                    dhT[u, b] = keep_h[(u - u0) * B + b] if zoneout else 0.0
            else:
                for r in range(r0, r1):
                    dZs[r, b] = 0.0
                for u in range(u0, u1):
                    dcT[u, b] = saved[u, b]
    if B == 1:  # dZ step-major (T, GH, 1): this step's row
        for r in range(r0, r1):
            dZ[t, order[r], 0] = dZs[r, 0]
    else:  # into dZ in the layer's row order
        for r in range(r0, r1):
            dst = order[r]
            for b in range(B):
                dZ[dst, t, b] = dZs[r, b]
    if dZP.shape[0] > 0:
        to_panels(dZs, r0, r1, dZP)


@njit(**_OPTS)
def _backward_thread(w, X, Wih, Whh, order, has_bias, wexp, gidx, cifg, act, ZH, ZC, mask,
                     has_mask, reverse, h0, Z, PRE, OUT, CT, CST, HP, CPT, dOUT, dZs2, dZP2, dZ,
                     dX, gWih, gWhh,
                     gbih, gbhh, gpeep, has_peep, dhT, dcT, dOT, saved, ones, scratch, bounds,
                     Wp, w_off, fold, ids, E, S, dE, c0T, db, claimed, finished, blas):
    """Backpropagation through time as worker w of the region runs it: the packing of W_hh^T,
    each step and the weight gradients are done part by part, worker w doing part w
    (``sync.claim``; slots: 0 for the packing, T - s for step s, T + 1 for the weight
    gradients)."""
    T, B, D = X.shape
    H = h0.shape[1]
    GH = Z.shape[1]
    G = GH // H
    parts = bounds.shape[0] - 1
    for q in range(parts):
        p = claim(claimed, 0, w, q, parts)
        if p >= 0:
            if blas:
                copy_columns(Whh, order, bounds[p], bounds[p + 1], Wp, w_off[p])
            else:
                pack_columns(Whh, order, bounds[p], bounds[p + 1], Wp, w_off[p])
            finish(finished, 0)
    wait(finished, 0, parts)
    for s in range(T - 1, -1, -1):
        t = T - 1 - s if reverse else s
        cprev = state_before(s, t, reverse, has_mask, CPT, c0T, CST)
        cur = dZs2[s % 2]
        prev = dZs2[(s + 1) % 2]
        slot = T - s
        for q in range(parts):
            p = claim(claimed, slot, w, q, parts)
            if p >= 0:
                _backward_part(bounds[p], bounds[p + 1], G, gidx, cifg, act, ZH, ZC, s == T - 1,
                               Z, PRE, t, prev, cur, dZP2[(s + 1) % 2], dZP2[s % 2], dZ, order, Wp,
                               w_off[p],
                               CT[t], cprev, dhT, dOUT, dOT, dcT, wexp, ones, scratch[p], mask,
                               has_mask, saved, blas)
                finish(finished, slot)
        wait(finished, slot, parts)
    last = dZs2[0]  # the gradient of the first step processed last: s == 0
    add_dh = has_mask or ZH.shape[0] > 0  # dh_0 adds onto a pass-through (mask, zoneout)
    TB = T * B
    X2 = X.reshape(TB, D)
    dX2 = dX.reshape(TB, D)
    O2 = OUT.reshape(TB, H)
    for q in range(parts):
        p = claim(claimed, T + 1, w, q, parts)
        if p >= 0:
            _weights_part(p, parts, bounds[p], bounds[p + 1], gidx, reverse, has_mask,
                          has_bias, has_peep, Wp, w_off[p], last, add_dh,
                          dhT, dZ, X2, gWih, HP, gWhh, O2, h0, ones, db, gbih, gbhh, Wih, dX2, CPT,
                          c0T, CT, CST, gpeep, fold, ids, E, S, dE, blas)
            finish(finished, T + 1)


def _backward_driver(loop):
    def lstm_backward_t(X, Wih, Whh, order, has_bias, wexp, gidx, cifg, act, ZH, ZC, mask,
                        has_mask, reverse, h0, c0, Z, PRE, OUT, CT, CST, HP, CPT, dOUT, dh, dc,
                        dZs2, dZP2, dZ, dX, gWih, gWhh,
                        gbih, gbhh, gpeep, has_peep, dhT, dcT, dOT, saved, ones, scratch, bounds,
                        Wp, w_off, fold, ids, E, S, dE, blas):
        """Backpropagation through time. Z (T, GH, B): the forward's activations, rows in the
        parts' order (``order``: those rows in the layer's order); PRE: the forward's
        pre-activations with options (``act``), else not read; ZH, ZC, CST: zoneout's, as
        in the forward pass. dh, dc (B, H): the gradient
        at the final state on entry, at the initial state on return. dZs2 (2, GH, B) and
        dZP2 (2, GH * B, the same as panels; or (2, 0): none): work (the parts' order);
        dZ (GH, T, B) (the layer's order; for B = 1 step-major, (T, GH, 1)), dX (T, B, D):
        outputs. Wih, Whh as the layer holds
        them. Gradients are accumulated into gWih, gWhh, gbih, gbhh (the layer's order) and
        gpeep (3, H).
        ones: at least max(T * B, H * B) ones. Wp, w_off (parts,): room for W_hh^T packed
        part by part (``packed.pack_columns``), and where each part's rows start. With ``fold``
        (X = E[ids], ids flat (T * B,)): dX is not computed; each part's term of dE = dL/dE goes
        to dE[p] (parts, V, D); S (GH, V): work. blas: W_hh^T unpacked in Wp
        (``packed.copy_columns``), each step's product one BLAS call per part."""
        T, B, D = X.shape
        H = h0.shape[1]
        GH = Z.shape[1]
        parts = bounds.shape[0] - 1
        transpose_into(dhT, dh)
        transpose_into(dcT, dc)
        c0T = np.empty((H, B), dtype=X.dtype)
        transpose_into(c0T, c0)
        db = np.empty((1, GH), dtype=X.dtype)
        claimed = np.zeros((T + 2) * parts, dtype=np.int64)
        finished = np.zeros(T + 2, dtype=np.int64)
        for w in loop(parts):  # one region: every worker runs the time loop (see sync.py)
            _backward_thread(w, X, Wih, Whh, order, has_bias, wexp, gidx, cifg, act, ZH, ZC,
                             mask, has_mask, reverse, h0, Z, PRE, OUT, CT, CST, HP, CPT, dOUT,
                             dZs2, dZP2, dZ, dX, gWih, gWhh,
                             gbih, gbhh, gpeep, has_peep, dhT, dcT, dOT, saved, ones, scratch,
                             bounds, Wp, w_off, fold, ids, E, S, dE, c0T, db, claimed, finished,
                             blas)
        TB = T * B
        transpose_into(dh, dhT)
        transpose_into(dc, dcT)
        for a in (dh.reshape(B * H), dc.reshape(B * H), gWih.reshape(GH * D),
                  gWhh.reshape(GH * H), gbih, gbhh, gpeep.reshape(3 * H)):
            flush_all(a)
        if fold:
            flush_all(dE.reshape(dE.size))
        else:
            flush_all(dX.reshape(TB * D))

    return lstm_backward_t


# one compiled driver per threading mode (the closure variable keeps their cache entries apart)
lstm_forward_t = njit(parallel=True, **_OPTS)(_forward_driver(prange))
lstm_forward_t_serial = njit(**_OPTS)(_forward_driver(range))
lstm_backward_t = njit(parallel=True, **_OPTS)(_backward_driver(prange))
lstm_backward_t_serial = njit(**_OPTS)(_backward_driver(range))
