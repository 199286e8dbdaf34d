"""The fused simple RNN (tanh or relu, ``lstmkit.cells.rnn``), whole loops in Numba.

A (T, B, H) holds ``b + X W_ih^T`` (one GEMM), then per step ``A[t] += h_prev W_hh^T`` (one
GEMM) and the activation in place: A ends as h at every step (masked rows included). Without a
mask A is the output itself. With the cell's options (another function than tanh or relu, or
ONNX's clip: ``activate``) each step's pre-activation is kept in PRE for backward.
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
from lstmkit.engine.kernels.gates import flush, one_like, tanh
from lstmkit.engine.kernels.loops import add_rows, copy1, copy2, fill1, flush_all

_OPTS = {"cache": True, "error_model": "numpy", "fastmath": {"contract"}, "nogil": True}


@njit(**_OPTS)
def _act_forward(a, relu):
    for j in range(a.shape[0]):
        v = a[j]
        if relu:
            a[j] = max(v, v - v)
        else:
            a[j] = tanh(v)


@njit(**_OPTS)
def _act_backward(h, dh, dho, da, relu):
    for j in range(h.shape[0]):
        hj = h[j]
        d = flush(dh[j]) + dho[j]
        one = one_like(hj)
        if relu:
            da[j] = flush(d) if hj > 0 else d - d
        else:
            da[j] = flush(d * (one - hj * hj))


def _step_options_backward(f, df):
    def loop(args):
        h, pre, dh, dho, da, alpha, beta, clip = args
        for j in range(h.shape[0]):
            d = flush(dh[j]) + dho[j]
            da[j] = flush(activate.cut(d * df(pre[j], h[j], alpha, beta), pre[j], clip))
    return loop


_run_step_options_backward = activate.by_function(_step_options_backward)


@njit(**_OPTS)
def rnn_forward(X, Wih, Whh, bias, has_bias, relu, act, mask, has_mask, reverse, keep, h0,
                A, PRE, OUT, HP, hs, small):
    """A: (T, B, H) activations; OUT: the output (A itself without a mask); HP: (T, B, H)
    states before each step (keep with a mask); hs (B, H): the final state. ``act``: the
    function and clip (``activate.params``), or empty for tanh / relu (``relu``); with them
    PRE (T, B, H) receives the pre-activations."""
    T, B, D = X.shape
    H = h0.shape[1]
    project(X.reshape(T * B, D), Wih, bias, has_bias, A.reshape(T * B, H))
    copy2(hs, h0)
    for s in range(T):
        t = T - 1 - s if reverse else s
        if has_mask:
            h_prev = hs
            if keep:
                copy2(HP[t], hs)
        elif s == 0:
            h_prev = h0
        else:
            h_prev = A[t + 1 if reverse else t - 1]
        at = A[t]
        gemm_blocks(False, True, 1.0, h_prev, Whh, 1.0, at, small)
        if act.shape[0] > 0:
            kind, alpha, beta = activate.function(act, 0)
            for b in range(B):
                activate.apply_keeping(kind, (at[b], PRE[t, b], alpha, beta, act[activate.CLIP]))
        else:
            for b in range(B):
                _act_forward(at[b], relu)
        if has_mask:
            for b in range(B):
                if mask[t, b]:
                    copy1(hs[b], at[b])
                    copy1(OUT[t, b], at[b])
                else:
                    fill1(OUT[t, b], 0.0)
    if not has_mask:
        copy2(hs, A[0 if reverse else T - 1])


@njit(**_OPTS)
def rnn_backward(X, Wih, Whh, has_bias, relu, act, mask, has_mask, reverse, h0, A, PRE, HP,
                 dOUT, dh, dA, dX, gWih, gWhh, gbih, gbhh, small):
    """dh (B, H): gradient at the final state on entry, at the initial state on return.
    ``act``, PRE: the options and pre-activations of the forward pass (``rnn_forward``)."""
    T, B, D = X.shape
    H = h0.shape[1]
    options = act.shape[0] > 0
    for s in range(T - 1, -1, -1):
        t = T - 1 - s if reverse else s
        da = dA[t]
        for b in range(B):
            if has_mask and not mask[t, b]:
                fill1(da[b], 0.0)
                continue
            if options:
                kind, alpha, beta = activate.function(act, 0)
                _run_step_options_backward(kind, (A[t, b], PRE[t, b], dh[b], dOUT[t, b], da[b],
                                                  alpha, beta, act[activate.CLIP]))
            else:
                _act_backward(A[t, b], dh[b], dOUT[t, b], da[b], relu)
            if has_mask:
                fill1(dh[b], 0.0)
        gemm_blocks(False, False, 1.0, da, Whh, 1.0 if has_mask else 0.0, dh, small)
    TB = T * B
    dA2 = dA.reshape(TB, H)
    X2 = X.reshape(TB, D)
    gemm(True, False, 1.0, dA2, X2, 1.0, gWih)
    gemm(False, False, 1.0, dA2, Wih, 0.0, dX.reshape(TB, D))
    add_recurrent_weight_gradient(gWhh, dA2, True, A.reshape(TB, H), HP, h0, T, B,
                                  reverse, has_mask)
    if has_bias:
        add_rows(gbih, dA2)
        add_rows(gbhh, dA2)
    for a in (dX.reshape(TB * D), dh.reshape(B * H), gWih.reshape(H * D), gWhh.reshape(H * H),
              gbih, gbhh):
        flush_all(a)


# -- the batch in parts, one parallel region (as ``lstm.lstm_forward_parts``) -----------------


def _forward_parts_driver(loop):
    def rnn_forward_parts(X, Wih, Whh, bias, has_bias, relu, act, mask, has_mask, reverse,
                          keep, h0, A, PRE, OUT, HP, hs, small):
        """``rnn_forward`` on each part k of the batch (X[k], mask[k], h0[k], A[k], ...)."""
        for k in loop(X.shape[0]):
            rnn_forward(X[k], Wih, Whh, bias, has_bias, relu, act, mask[k], has_mask, reverse,
                        keep, h0[k], A[k], PRE[k], OUT[k], HP[k], hs[k], small)

    return rnn_forward_parts


def _backward_parts_driver(loop):
    def rnn_backward_parts(X, Wih, Whh, has_bias, relu, act, mask, has_mask, reverse, h0, A,
                           PRE, HP, dOUT, dh, dA, dX, gWih, gWhh, gbih, gbhh, small):
        """``rnn_backward`` on each part k of the batch, each accumulating its own gradients
        (gWih[k], ...), which the caller adds in the parts' order."""
        for k in loop(X.shape[0]):
            rnn_backward(X[k], Wih, Whh, has_bias, relu, act, mask[k], has_mask, reverse, h0[k],
                         A[k], PRE[k], HP[k], dOUT[k], dh[k], dA[k], dX[k], gWih[k], gWhh[k],
                         gbih[k], gbhh[k], small)

    return rnn_backward_parts


rnn_forward_parts = njit(parallel=True, **_OPTS)(_forward_parts_driver(prange))
rnn_forward_parts_serial = _forward_parts_driver(range)  # plain Python
rnn_backward_parts = njit(parallel=True, **_OPTS)(_backward_parts_driver(prange))
rnn_backward_parts_serial = _backward_parts_driver(range)  # plain Python
