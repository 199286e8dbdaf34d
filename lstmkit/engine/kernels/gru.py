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

from numba import njit

from lstmkit.engine.kernels import activate
from lstmkit.engine.kernels.blas import add_recurrent_weight_gradient, gemm
from lstmkit.engine.kernels.gates import flush, one_like, sigmoid, tanh
from lstmkit.engine.kernels.loops import add_rows, copy1, copy2, fill1, fill_rows, flush_all

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


def _gates_options(f, df):
    def loop(args):  # r, z = f(clip(gi + gh + b_h)), pre-activations kept
        gr, gz, hr, hz, br, bz, pr, pz, a, b, clip = args
        for j in range(gr.shape[0]):
            vr = gr[j] + (hr[j] + br[j])
            vz = gz[j] + (hz[j] + bz[j])
            pr[j] = vr
            pz[j] = vz
            gr[j] = f(activate.clipped(vr, clip), a, b)
            gz[j] = f(activate.clipped(vz, clip), a, b)
    return loop


def _candidate_options(f, df):
    def loop(args):  # n = f(clip(gi_n + r * (W_hn h_prev + b_hn))), h
        r, z, gn, hn, bn, pn, hp, hn_out, h_out, a, b, clip = args
        for j in range(hp.shape[0]):
            hnj = hn[j] + bn[j]
            v = gn[j] + r[j] * hnj
            pn[j] = v
            n = f(activate.clipped(v, clip), a, b)
            gn[j] = n
            hn_out[j] = hnj
            h_out[j] = (one_like(n) - z[j]) * n + z[j] * hp[j]
    return loop


def _candidate_options_backward(f, df):
    def loop(args):  # dn_pre (dni), dL/dz before z's derivative (into dz_out), dh_prev's z part
        z, n, pn, hp, dh, dho, dz_out, dni_out, dh_prev, a, b, clip = args
        for j in range(hp.shape[0]):
            dhj = flush(dh[j]) + dho[j]
            zj = z[j]
            dn = dhj * (one_like(zj) - zj)
            dni_out[j] = flush(activate.cut(dn * df(pn[j], n[j], a, b), pn[j], clip))
            dz_out[j] = dhj * (hp[j] - n[j])
            dh_prev[j] = flush(dhj * zj)
    return loop


def _gates_options_backward(f, df):
    def loop(args):  # dz, dr through the gates' function; dgh's n block dn_pre * r
        r, z, hn, pr, pz, dr_out, dz_out, dnh_out, dni, a, b, clip = args
        for j in range(r.shape[0]):
            dz_out[j] = flush(activate.cut(dz_out[j] * df(pz[j], z[j], a, b), pz[j], clip))
            dr_out[j] = flush(activate.cut(dni[j] * hn[j] * df(pr[j], r[j], a, b), pr[j],
                                           clip))
            dnh_out[j] = dni[j] * r[j]
    return loop


_run_gates_options = activate.by_function(_gates_options)
_run_candidate_options = activate.by_function(_candidate_options)
_run_candidate_options_backward = activate.by_function(_candidate_options_backward)
_run_gates_options_backward = activate.by_function(_gates_options_backward)


@njit(**_OPTS)
def _cell_forward_options(gr, gz, gn, hr, hz, hn, br, bz, bn, hp, hn_out, h_out, act, pr, pz,
                          pn):
    """``_cell_forward`` with the functions and clip of ``act`` (``activate.params``: the
    gates', the candidate's); pre-activations into pr, pz, pn."""
    clip = act[activate.CLIP]
    kind, a, b = activate.function(act, 0)
    _run_gates_options(kind, (gr, gz, hr, hz, br, bz, pr, pz, a, b, clip))
    kind_n, a_n, b_n = activate.function(act, 1)
    _run_candidate_options(kind_n, (gr, gz, gn, hn, bn, pn, hp, hn_out, h_out, a_n, b_n, clip))


@njit(**_OPTS)
def _cell_backward_options(r, z, n, hn, hp, dh, dho, dr_out, dz_out, dnh_out, dni_out, dh_prev,
                           act, pr, pz, pn):
    """``_cell_backward`` with the cell's options (``_cell_forward_options``)."""
    clip = act[activate.CLIP]
    kind_n, a_n, b_n = activate.function(act, 1)
    _run_candidate_options_backward(kind_n, (z, n, pn, hp, dh, dho, dz_out, dni_out, dh_prev,
                                             a_n, b_n, clip))
    kind, a, b = activate.function(act, 0)
    _run_gates_options_backward(kind, (r, z, hn, pr, pz, dr_out, dz_out, dnh_out, dni_out, a, b,
                                       clip))


@njit(**_OPTS)
def gru_forward(X, Wih, Whh, bih, bhh, has_bias, act, mask, has_mask, reverse, keep, h0,
                Z, PRE, HN, OUT, HP, hs, gh):
    """Z: (T, B, 3, H) if keep (r, z, n afterwards) else a (Tc, B, 3, H) chunk; HN: (T, B, H)
    if keep else (1, B, H); HP: (T, B, H) states before each step (keep with a mask);
    hs (B, H): the final state; gh (B, 3, H): workspace. ``act``: the cell's functions and
    clip (``activate.params``), or empty for sigmoid and tanh; with them PRE (the shape of Z)
    receives the pre-activations."""
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
        zc = Z2[zoff * B:(zoff + n) * B]
        if has_bias:
            fill_rows(zc, bih)
        gemm(False, True, 1.0, X2[t0 * B:(t0 + n) * B], Wih, 1.0 if has_bias else 0.0, zc)
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
            gemm(False, True, 1.0, h_prev, Whh, 0.0, gh2)
            hn_t = HN[t if keep else 0]
            for b in range(B):
                if act.shape[0] > 0:
                    pt = PRE[zoff + (t - t0), b]
                    _cell_forward_options(zt[b, 0], zt[b, 1], zt[b, 2], gh[b, 0], gh[b, 1],
                                          gh[b, 2], br, bz, bn, h_prev[b], hn_t[b], OUT[t, b],
                                          act, pt[0], pt[1], pt[2])
                else:
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
def gru_backward(X, Wih, Whh, has_bias, act, mask, has_mask, reverse, h0, Z, PRE, HN, OUT, HP,
                 dOUT, dh, dh_new, dGH, dNI, dX, gWih, gWhh, gbih, gbhh):
    """dh (B, H): gradient at the final state on entry, at the initial state on return.
    ``act``, PRE: the options and pre-activations of the forward pass (``gru_forward``)."""
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
        for b in range(B):
            if has_mask and not mask[t, b]:
                fill1(dg[b].reshape(3 * H), 0.0)
                fill1(dNI[t, b], 0.0)
                copy1(nxt[b], cur[b])
                continue
            if act.shape[0] > 0:
                pt = PRE[t, b]
                _cell_backward_options(zt[b, 0], zt[b, 1], zt[b, 2], HN[t, b], h_prev[b],
                                       cur[b], dOUT[t, b], dg[b, 0], dg[b, 1], dg[b, 2],
                                       dNI[t, b], nxt[b], act, pt[0], pt[1], pt[2])
            else:
                _cell_backward(zt[b, 0], zt[b, 1], zt[b, 2], HN[t, b], h_prev[b], cur[b],
                               dOUT[t, b], dg[b, 0], dg[b, 1], dg[b, 2], dNI[t, b], nxt[b])
        # dh_prev = dh * z (set above) + dgh W_hh
        gemm(False, False, 1.0, dg.reshape(B, 3 * H), Whh, 1.0, nxt)
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
    add_recurrent_weight_gradient(gWhh, dG2, True, OUT.reshape(TB, H), HP, h0, T, B,
                                  reverse, has_mask)
    if has_bias:
        add_rows(gbhh, dG2)
        add_rows(gbih[:2 * H], dG2[:, :2 * H])
        add_rows(gbih[2 * H:], dN2)
    for a in (dX2.reshape(TB * D), dh.reshape(B * H), gWih.reshape(3 * H * D),
              gWhh.reshape(3 * H * H), gbih, gbhh):
        flush_all(a)
