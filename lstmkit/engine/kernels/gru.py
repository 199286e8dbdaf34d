"""The fused GRU recurrence (PyTorch's GRU, ``lstmkit.cells.gru``), whole loops in Numba.

Z (T, B, 3, H) starts as ``gi = X W_ih^T + b_ih`` (one GEMM for all steps); per step one GEMM
``gh = h_prev W_hh^T`` into a (B, 3, H) buffer, then one fused pass computes r, z, n (stored in
place of gi) and h. ``W_hn h_prev + b_hn`` (what the reset gate multiplies) is kept for
backward in HN (T, B, H).

Backward: the per-step pass writes ``dgh = [dr, dz, dn_pre * r]`` into dGH (T, B, 3, H) and
``dn_pre`` (the n block of dgi, which differs from dgh's) into dNI (T, B, H); the recurrent
gradient is one GEMM per step, the weight gradients large GEMMs over all steps afterwards.

With the cell's options (other functions than sigmoid and tanh, ONNX's clip: ``activate``)
the per-step passes are ``_gates_options`` and ``_candidate_options`` (and their backward),
and the pre-activations of r, z, n are kept in PRE (the shape of Z) for backward.
"""

from __future__ import annotations

from numba import njit, prange

from lstmkit.engine.kernels import activate
from lstmkit.engine.kernels.blas import (
    add_recurrent_weight_gradient,
    gemm,
    gemm_blocks,
    project,
)
from lstmkit.engine.kernels.gates import flush, one_like, sigmoid, tanh
from lstmkit.engine.kernels.loops import add_rows, copy1, copy2, fill1, flush_all

_OPTS = {"cache": True, "error_model": "numpy", "fastmath": {"contract"}, "nogil": True}


@njit(**_OPTS)
def _cell_forward(gr, gz, gn, hr, hz, hn, br, bz, bn, hp, hn_out, h_out):
    """One row: gi blocks g* (in: pre-activations, out: r, z, n), gh blocks h* -> h."""
    for j in range(hp.shape[0]):
        one = one_like(hp[j])
        r = sigmoid(gr[j] + (hr[j] + br[j]))
        z = sigmoid(gz[j] + (hz[j] + bz[j]))
        hnj = hn[j] + bn[j]
        n = tanh(gn[j] + r * hnj)
        gr[j] = r
        gz[j] = z
        gn[j] = n
        hn_out[j] = hnj
        h_out[j] = (one - z) * n + z * hp[j]


@njit(**_OPTS)
def _cell_backward(r, z, n, hn, hp, dh, dho, dr_out, dz_out, dnh_out, dni_out, dh_prev):
    for j in range(hp.shape[0]):
        one = one_like(hp[j])
        dhj = flush(dh[j]) + dho[j]
        zj = z[j]
        nj = n[j]
        rj = r[j]
        dn = dhj * (one - zj)
        dz = dhj * (hp[j] - nj) * zj * (one - zj)
        dn_pre = dn * (one - nj * nj)
        dr = dn_pre * hn[j] * rj * (one - rj)
        dr = flush(dr)
        dz = flush(dz)
        dn_pre = flush(dn_pre)
        dr_out[j] = dr
        dz_out[j] = dz
        dnh_out[j] = dn_pre * rj
        dni_out[j] = dn_pre
        dh_prev[j] = flush(dhj * zj)


# -- the cell with its options (loops compiled once per function: ``activate.by_function``) ----
# Each loop runs a whole step, all B rows: Z, gh, PRE blocks (B, 3, H), the rest (B, H); its
# ``row`` takes the runs of one row as arguments (views made inside the loop and indexed there
# kept LLVM from vectorising: 4x slower).


def _gates_options(f, df):
    @njit(**_OPTS)
    def row(gr, gz, hr, hz, br, bz, pr, pz, a, b, clip):
        for j in range(gr.shape[0]):
            vr = gr[j] + (hr[j] + br[j])
            vz = gz[j] + (hz[j] + bz[j])
            pr[j] = vr
            pz[j] = vz
            gr[j] = f(activate.clipped(vr, clip), a, b)
            gz[j] = f(activate.clipped(vz, clip), a, b)

    def loop(args):  # r, z = f(clip(gi + gh + b_h)), pre-activations kept
        zt, gh, bhh, pt, a, b, clip = args
        B, _, H = zt.shape
        for k in range(B):
            row(zt[k, 0], zt[k, 1], gh[k, 0], gh[k, 1], bhh[:H], bhh[H:2 * H], pt[k, 0],
                pt[k, 1], a, b, clip)
    return loop


def _candidate_options(f, df):
    @njit(**_OPTS)
    def row(r, z, gn, hn, bn, pn, hp, hn_out, h_out, lbr, a, b, clip):
        for j in range(hp.shape[0]):
            hnj = hn[j] + bn[j]
            v = gn[j] + (r[j] * hnj if lbr else hnj)
            pn[j] = v
            n = f(activate.clipped(v, clip), a, b)
            gn[j] = n
            hn_out[j] = hnj
            h_out[j] = (one_like(n) - z[j]) * n + z[j] * hp[j]

    def loop(args):  # n = f(clip(gi_n + r * (W_hn h_prev + b_hn))) (Cho's: gi_n + gh_n + b_hn)
        zt, gh, bhh, pt, hp, hn_out, h_out, lbr, a, b, clip = args
        B, _, H = zt.shape
        for k in range(B):
            row(zt[k, 0], zt[k, 1], zt[k, 2], gh[k, 2], bhh[2 * H:], pt[k, 2], hp[k], hn_out[k],
                h_out[k], lbr, a, b, clip)
    return loop


def _candidate_options_backward(f, df):
    @njit(**_OPTS)
    def row(z, n, pn, hp, dh, dho, dz, dni, dh_prev, a, b, clip):
        for j in range(hp.shape[0]):
            dhj = flush(dh[j]) + dho[j]
            dn = dhj * (one_like(z[j]) - z[j])
            dni[j] = flush(activate.cut(dn * df(pn[j], n[j], a, b), pn[j], clip))
            dz[j] = dhj * (hp[j] - n[j])
            dh_prev[j] = flush(dhj * z[j])

    def loop(args):  # dn_pre (dni), dL/dz before z's derivative (into dg's z block), dh_prev
        zt, pt, hp, dh, dho, dg, dni, dh_prev, a, b, clip = args
        for k in range(zt.shape[0]):
            row(zt[k, 1], zt[k, 2], pt[k, 2], hp[k], dh[k], dho[k], dg[k, 1], dni[k],
                dh_prev[k], a, b, clip)
    return loop


def _gates_options_backward(f, df):
    @njit(**_OPTS)
    def row(r, z, pr, pz, hn, dni, drh, hp, dr, dz, dnh, dh_prev, lbr, a, b, clip):
        for j in range(r.shape[0]):
            dz[j] = flush(activate.cut(dz[j] * df(pz[j], z[j], a, b), pz[j], clip))
            d = dni[j] * hn[j] if lbr else drh[j] * hp[j]
            dr[j] = flush(activate.cut(d * df(pr[j], r[j], a, b), pr[j], clip))
            dnh[j] = dni[j] * r[j] if lbr else dni[j]
            if not lbr:
                dh_prev[j] += drh[j] * r[j]

    def loop(args):  # dz, dr through the gates' function; dgh's n block
        zt, pt, hn, dg, dni, drh, hp, dh_prev, lbr, a, b, clip = args
        for k in range(zt.shape[0]):
            row(zt[k, 0], zt[k, 1], pt[k, 0], pt[k, 1], hn[k], dni[k], drh[k], hp[k], dg[k, 0],
                dg[k, 1], dg[k, 2], dh_prev[k], lbr, a, b, clip)
    return loop


_run_gates_options = activate.by_function(_gates_options)
_run_candidate_options = activate.by_function(_candidate_options)
_run_candidate_options_backward = activate.by_function(_candidate_options_backward)
_run_gates_options_backward = activate.by_function(_gates_options_backward)


@njit(**_OPTS)
def _step_forward_options(zt, gh, bhh, pt, hp, hn_out, h_out, act, lbr, Whn, rh, small):
    """The element-wise pass of one step, all rows, with the functions and clip of ``act``
    (``activate.params``: the gates', the candidate's): r, z, n into zt (B, 3, H), their
    pre-activations into pt, the candidate's recurrent term into hn_out, h into h_out. gh
    (B, 3, H) holds h_prev W_hh^T: all three blocks with ``lbr`` (linear_before_reset), else
    r's and z's, and then (Cho et al.) this computes r * h_prev into rh (B, H) and
    gh's n block = rh W_hn^T (Whn = W_hh's n rows) before the candidate."""
    clip = act[activate.CLIP]
    kind, a, b = activate.function(act, 0)
    _run_gates_options(kind, (zt, gh, bhh, pt, a, b, clip))
    if not lbr:
        B, _, H = zt.shape
        for k in range(B):
            for j in range(H):
                rh[k, j] = zt[k, 0, j] * hp[k, j]
        gemm_blocks(False, True, 1.0, rh, Whn, 0.0, gh[:, 2], small)
    kind_n, a_n, b_n = activate.function(act, 1)
    _run_candidate_options(kind_n, (zt, gh, bhh, pt, hp, hn_out, h_out, lbr, a_n, b_n, clip))


@njit(**_OPTS)
def _step_backward_options(zt, pt, hn, hp, dh, dho, dg, dni, dh_prev, act, lbr, Whn, drh,
                           small):
    """Backward of ``_step_forward_options``: dgh into dg (B, 3, H) ([dr, dz, dn_pre * r], or
    Cho et al.'s [dr, dz, dn_pre]), dn_pre into dni, dh * z into dh_prev (+ d(r h_prev) r for
    Cho et al.'s, with d(r h_prev) = dn_pre W_hn into drh (B, H)); every row: the caller
    fixes the masked ones."""
    clip = act[activate.CLIP]
    kind_n, a_n, b_n = activate.function(act, 1)
    _run_candidate_options_backward(kind_n, (zt, pt, hp, dh, dho, dg, dni, dh_prev, a_n, b_n,
                                             clip))
    if not lbr:
        gemm_blocks(False, False, 1.0, dni, Whn, 0.0, drh, small)
    kind, a, b = activate.function(act, 0)
    _run_gates_options_backward(kind, (zt, pt, hn, dg, dni, drh, hp, dh_prev, lbr, a, b, clip))


@njit(**_OPTS)
def gru_forward(X, Wih, Whh, bih, bhh, has_bias, act, lbr, mask, has_mask, reverse, keep, h0,
                Z, PRE, HN, RH, OUT, HP, hs, gh, small):
    """Z: (T, B, 3, H) if keep (r, z, n afterwards) else a (Tc, B, 3, H) chunk; HN: (T, B, H)
    if keep else (1, B, H); HP: (T, B, H) states before each step (keep with a mask);
    hs (B, H): the final state; gh (B, 3, H): workspace. ``act``: the cell's functions and
    clip (``activate.params``), or empty for sigmoid and tanh; with them PRE (the shape of Z)
    receives the pre-activations. ``lbr`` False: Cho et al.'s candidate (always with ``act``),
    r * h_prev of each step kept in RH ((T, B, H) with keep, else (1, B, H)). ``small``: the
    per-step products in BLAS's small-matrix blocks (``blas.gemm_blocks``)."""
    T, B, D = X.shape
    H = h0.shape[1]
    Tc = Z.shape[0]
    X2 = X.reshape(T * B, D)
    Z2 = Z.reshape(Tc * B, 3 * H)
    gh2 = gh.reshape(B, 3 * H)
    br = bhh[:H]
    bz = bhh[H:2 * H]
    bn = bhh[2 * H:]
    copy2(hs, h0)
    done = 0
    while done < T:
        n = min(Tc, T - done)
        t0 = T - done - n if reverse else done
        zoff = t0 if Tc == T else 0
        project(X2[t0 * B:(t0 + n) * B], Wih, bih, has_bias, Z2[zoff * B:(zoff + n) * B])
        for k in range(n):
            s = done + k
            t = T - 1 - s if reverse else s
            zt = Z[zoff + (t - t0)]
            if has_mask:
                h_prev = hs
                if keep:
                    copy2(HP[t], hs)
            elif s == 0:
                h_prev = h0
            else:
                h_prev = OUT[t + 1 if reverse else t - 1]
            hn_t = HN[t if keep else 0]
            if act.shape[0] > 0:
                if lbr:
                    gemm_blocks(False, True, 1.0, h_prev, Whh, 0.0, gh2, small)
                else:  # r's and z's blocks; the candidate's needs r first
                    gemm_blocks(False, True, 1.0, h_prev, Whh[:2 * H], 0.0, gh2[:, :2 * H],
                                small)
                _step_forward_options(zt, gh, bhh, PRE[zoff + (t - t0)], h_prev, hn_t, OUT[t],
                                      act, lbr, Whh[2 * H:], RH[t if keep and not lbr else 0],
                                      small)
            else:
                gemm_blocks(False, True, 1.0, h_prev, Whh, 0.0, gh2, small)
                for b in range(B):
                    _cell_forward(zt[b, 0], zt[b, 1], zt[b, 2], gh[b, 0], gh[b, 1], gh[b, 2],
                                  br, bz, bn, h_prev[b], hn_t[b], OUT[t, b])
            if has_mask:
                for b in range(B):
                    if mask[t, b]:
                        copy1(hs[b], OUT[t, b])
                    else:
                        fill1(OUT[t, b], 0.0)
        done += n
    if not has_mask:
        copy2(hs, OUT[0 if reverse else T - 1])


@njit(**_OPTS)
def gru_backward(X, Wih, Whh, has_bias, act, lbr, mask, has_mask, reverse, h0, Z, PRE, HN, RH,
                 OUT, HP, dOUT, dh, dh_new, drh, dGH, dNI, dX, gWih, gWhh, gbih, gbhh, small):
    """dh (B, H): gradient at the final state on entry, at the initial state on return.
    ``act``, ``lbr``, PRE, RH: the options, pre-activations and r * h_prev of the forward
    pass (``gru_forward``); drh (B, H): work."""
    T, B, D = X.shape
    H = h0.shape[1]
    cur = dh
    nxt = dh_new
    for s in range(T - 1, -1, -1):
        t = T - 1 - s if reverse else s
        if has_mask:
            h_prev = HP[t]
        elif s == 0:
            h_prev = h0
        else:
            h_prev = OUT[t + 1 if reverse else t - 1]
        zt = Z[t]
        dg = dGH[t]
        if act.shape[0] > 0:  # every row at once; masked rows are set right below
            _step_backward_options(zt, PRE[t], HN[t], h_prev, cur, dOUT[t], dg, dNI[t], nxt, act,
                                   lbr, Whh[2 * H:], drh, small)
        for b in range(B):
            if has_mask and not mask[t, b]:
                fill1(dg[b].reshape(3 * H), 0.0)
                fill1(dNI[t, b], 0.0)
                copy1(nxt[b], cur[b])
                continue
            if act.shape[0] == 0:
                _cell_backward(zt[b, 0], zt[b, 1], zt[b, 2], HN[t, b], h_prev[b], cur[b],
                               dOUT[t, b], dg[b, 0], dg[b, 1], dg[b, 2], dNI[t, b], nxt[b])
        # dh_prev = dh * z (set above) + dgh W_hh (Cho et al.'s: r's and z's rows; the
        # candidate's part went through r * h_prev above)
        if lbr:
            gemm_blocks(False, False, 1.0, dg.reshape(B, 3 * H), Whh, 1.0, nxt, small)
        else:
            gemm_blocks(False, False, 1.0, dg.reshape(B, 3 * H)[:, :2 * H], Whh[:2 * H], 1.0,
                        nxt, small)
        cur, nxt = nxt, cur
    if T % 2 == 1:  # the result is in the other buffer after an odd number of swaps
        copy2(dh, dh_new)
    TB = T * B
    dG2 = dGH.reshape(TB, 3 * H)
    dN2 = dNI.reshape(TB, H)
    X2 = X.reshape(TB, D)
    dX2 = dX.reshape(TB, D)
    # gi's gradient is dgh with the n block replaced by dn_pre
    gemm(True, False, 1.0, dG2[:, :2 * H], X2, 1.0, gWih[:2 * H])
    gemm(True, False, 1.0, dN2, X2, 1.0, gWih[2 * H:])
    gemm(False, False, 1.0, dG2[:, :2 * H], Wih[:2 * H], 0.0, dX2)
    gemm(False, False, 1.0, dN2, Wih[2 * H:], 1.0, dX2)
    if lbr:
        add_recurrent_weight_gradient(gWhh, dG2, True, OUT.reshape(TB, H), HP, h0, T, B,
                                      reverse, has_mask)
    else:  # W_hn multiplied r * h_prev
        add_recurrent_weight_gradient(gWhh[:2 * H], dG2[:, :2 * H], True, OUT.reshape(TB, H),
                                      HP, h0, T, B, reverse, has_mask)
        gemm(True, False, 1.0, dN2, RH.reshape(TB, H), 1.0, gWhh[2 * H:])
    if has_bias:
        add_rows(gbhh, dG2)
        add_rows(gbih[:2 * H], dG2[:, :2 * H])
        add_rows(gbih[2 * H:], dN2)
    for a in (dX2.reshape(TB * D), dh.reshape(B * H), gWih.reshape(3 * H * D),
              gWhh.reshape(3 * H * H), gbih, gbhh):
        flush_all(a)


# -- the batch in parts, one parallel region (as ``lstm.lstm_forward_parts``) -----------------


def _forward_parts_driver(loop):
    def gru_forward_parts(X, Wih, Whh, bih, bhh, has_bias, act, lbr, mask, has_mask, reverse,
                          keep, h0, Z, PRE, HN, RH, OUT, HP, hs, gh, small):
        """``gru_forward`` on each part k of the batch (X[k], mask[k], h0[k], Z[k], ...)."""
        for k in loop(X.shape[0]):
            gru_forward(X[k], Wih, Whh, bih, bhh, has_bias, act, lbr, mask[k], has_mask,
                        reverse, keep, h0[k], Z[k], PRE[k], HN[k], RH[k], OUT[k], HP[k], hs[k],
                        gh[k], small)

    return gru_forward_parts


def _backward_parts_driver(loop):
    def gru_backward_parts(X, Wih, Whh, has_bias, act, lbr, mask, has_mask, reverse, h0, Z,
                           PRE, HN, RH, OUT, HP, dOUT, dh, dh_new, drh, dGH, dNI, dX, gWih,
                           gWhh, gbih, gbhh, small):
        """``gru_backward`` on each part k of the batch, each accumulating its own gradients
        (gWih[k], ...), which the caller adds in the parts' order."""
        for k in loop(X.shape[0]):
            gru_backward(X[k], Wih, Whh, has_bias, act, lbr, mask[k], has_mask, reverse, h0[k],
                         Z[k], PRE[k], HN[k], RH[k], OUT[k], HP[k], dOUT[k], dh[k], dh_new[k],
                         drh[k], dGH[k], dNI[k], dX[k], gWih[k], gWhh[k], gbih[k], gbhh[k],
                         small)

    return gru_backward_parts


gru_forward_parts = njit(parallel=True, **_OPTS)(_forward_parts_driver(prange))
gru_forward_parts_serial = _forward_parts_driver(range)  # plain Python
gru_backward_parts = njit(parallel=True, **_OPTS)(_backward_parts_driver(prange))
gru_backward_parts_serial = _backward_parts_driver(range)  # plain Python
