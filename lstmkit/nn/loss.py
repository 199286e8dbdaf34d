"""Losses that return their value and the gradient of their input together.

Each function computes ``(loss, dinput)`` in one pass, the way a training step needs it:
``loss`` follows ``torch.nn.functional`` exactly (same reductions, same ``ignore_index``
rule), and ``dinput`` is the gradient of that loss with respect to the input.

The code here is the readable definition; with the fused kernels on (``lstmkit.engine.kernels``,
the default), ``softmax_cross_entropy`` runs on ``lstmkit.engine.kernels.softmax`` instead, one
compiled pass per row with the same results to rounding.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

__all__ = ["mse_loss", "softmax_cross_entropy"]

Reduction = Literal["mean", "sum", "none"]
_REDUCTIONS = ("mean", "sum", "none")
_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def softmax_cross_entropy(
    logits: np.ndarray,
    targets: np.ndarray,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
    compute_grad: bool = True,
    out: np.ndarray | None = None,
) -> tuple[np.floating | np.ndarray, np.ndarray | None]:
    r"""Cross entropy of softmax(logits) against integer class targets, and its gradient.

    For each row ``n`` with target :math:`t_n \ne` ``ignore_index`` (a *counted* row),
    with the log-softmax computed stably by subtracting the row maximum :math:`m_n`:

    .. math::
        \ell_n = \log \sum_v e^{z_{nv} - m_n} - (z_{n t_n} - m_n) \qquad
        \frac{\partial \ell_n}{\partial z_{nv}} = \mathrm{softmax}(z_n)_v - [v = t_n]

    ``reduction="mean"`` returns :math:`\frac{1}{C}\sum_n \ell_n` over the :math:`C` counted
    rows (``nan`` with a zero gradient when :math:`C = 0`, as PyTorch), ``"sum"`` returns
    :math:`\sum_n \ell_n`, and ``"none"`` returns every :math:`\ell_n` (0 for ignored rows) in
    the targets' shape, with ``dlogits`` the gradient of their sum. Ignored rows get a zero
    gradient. This equals ``torch.nn.functional.cross_entropy`` with the classes on the last
    axis instead of axis 1.

    Args:
        logits: float32 or float64 scores, shape ``(..., V)``, e.g. ``(T, B, V)`` or ``(N, V)``.
        targets: integer classes, shape ``(...)`` (the logits' shape without ``V``), each in
            ``[0, V)`` or equal to ``ignore_index``.
        ignore_index: target value whose rows are left out of the loss and the mean.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        compute_grad: if False, skip the gradient and return ``None`` in its place.
        out: optional array of the logits' shape and dtype to write ``dlogits`` into; it may
            be ``logits`` itself when the logits are no longer needed, which saves memory.

    Returns:
        ``(loss, dlogits)``: ``loss`` is a NumPy scalar of the logits' dtype (an array of the
        targets' shape for ``"none"``); ``dlogits`` has the logits' shape and dtype.

    Raises:
        TypeError: for non-float logits or non-integer targets.
        ValueError: for mismatched shapes, an unknown reduction or a bad ``out``.
        IndexError: for a target outside ``[0, V)`` that is not ``ignore_index``.
    """
    logits = np.asarray(logits)
    targets = np.asarray(targets)
    if logits.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"logits must be float32 or float64, got dtype {logits.dtype}")
    if not np.issubdtype(targets.dtype, np.integer):
        raise TypeError(f"targets must be an integer array, got dtype {targets.dtype}")
    if logits.ndim == 0 or targets.shape != logits.shape[:-1]:
        raise ValueError(
            f"logits of shape (..., V) need targets of shape (...): got logits {logits.shape} "
            f"and targets {targets.shape}"
        )
    _check_reduction(reduction)
    num_classes = logits.shape[-1]
    if num_classes == 0:
        raise ValueError("logits must have at least one class (V > 0)")
    if out is not None and (
        not isinstance(out, np.ndarray)
        or out.shape != logits.shape
        or out.dtype != logits.dtype
        or not out.flags.c_contiguous
    ):
        raise ValueError(
            f"out must be a C-contiguous ndarray of shape {logits.shape} and dtype {logits.dtype}"
        )

    z = logits.reshape(-1, num_classes)  # (N, V)
    t = targets.reshape(-1)  # (N,)
    counted = t != ignore_index
    all_counted = bool(counted.all())
    t_counted = t if all_counted else t[counted]
    if t_counted.size and (t_counted.min() < 0 or t_counted.max() >= num_classes):
        bad = t_counted[(t_counted < 0) | (t_counted >= num_classes)]
        raise IndexError(
            f"targets must be in [0, {num_classes}) or equal ignore_index={ignore_index}; "
            f"found {bad.size} out of range, e.g. {bad[0]}"
        )
    from lstmkit.engine import kernels

    fused = kernels.fast_path("softmax", z)
    if fused is not None:
        return _softmax_cross_entropy_fused(fused, z, t, counted, all_counted, logits.shape,
                                            targets.shape, reduction, compute_grad, out)
    t_safe = t if all_counted else np.where(counted, t, 0)
    rows = np.arange(t.size)

    # One (N, V) work array: z - max, then exp(z - max), then the gradient, all in place.
    work = out.reshape(-1, num_classes) if out is not None else np.empty_like(z)
    np.subtract(z, z.max(axis=1, keepdims=True), out=work)
    picked = work[rows, t_safe]  # z_{n t_n} - m_n, (N,)
    np.exp(work, out=work)
    sumexp = work.sum(axis=1)  # (N,), >= 1 because the row maximum contributes e^0
    losses = np.log(sumexp) - picked  # (N,)
    if not all_counted:
        losses[~counted] = 0

    count = t.size if all_counted else int(counted.sum())
    dtype = logits.dtype.type
    if reduction == "none":
        loss: np.floating | np.ndarray = losses.reshape(targets.shape)
        row_weight = 1.0
    elif reduction == "sum":
        loss = dtype(losses.sum(dtype=np.float64))
        row_weight = 1.0
    elif count == 0:
        loss = dtype(np.nan)
        row_weight = 0.0
    else:
        loss = dtype(losses.sum(dtype=np.float64) / count)
        row_weight = 1.0 / count

    if not compute_grad:
        return loss, None
    # d loss / d z_n = w_n * (softmax(z_n) - onehot(t_n)), w_n = row_weight or 0 if ignored.
    weights = np.full(t.size, row_weight, dtype=logits.dtype)  # (N,)
    if not all_counted:
        weights[~counted] = 0
    work *= (weights / sumexp)[:, None]
    work[rows, t_safe] -= weights
    return loss, work.reshape(logits.shape)


def _softmax_cross_entropy_fused(
    softmax: Any,
    z: np.ndarray,
    t: np.ndarray,
    counted: np.ndarray,
    all_counted: bool,
    logits_shape: tuple[int, ...],
    targets_shape: tuple[int, ...],
    reduction: Reduction,
    compute_grad: bool,
    out: np.ndarray | None,
) -> tuple[np.floating | np.ndarray, np.ndarray | None]:
    """``softmax_cross_entropy`` on the fused kernel (``lstmkit.engine.kernels.softmax``),
    for checked inputs: the logits z (N, V), the targets t (N,) (valid where ``counted``), the
    same results to rounding."""
    count = t.size if all_counted else int(counted.sum())
    dtype = z.dtype.type
    if reduction == "mean":
        row_weight = 1.0 / count if count else 0.0
    else:
        row_weight = 1.0
    kernel_targets = t.astype(np.int64)  # (N,), -1 marks an ignored row
    if not all_counted:
        kernel_targets[~counted] = -1
    work = None if out is None else out.reshape(z.shape)
    losses, work = softmax.cross_entropy_rows(z, kernel_targets, row_weight, work, compute_grad)
    if reduction == "none":
        loss: np.floating | np.ndarray = losses.astype(z.dtype).reshape(targets_shape)
    elif reduction == "sum":
        loss = dtype(losses.sum())
    elif count == 0:
        loss = dtype(np.nan)
    else:
        loss = dtype(losses.sum() / count)
    return loss, None if work is None else work.reshape(logits_shape)


def mse_loss(
    input: np.ndarray, target: np.ndarray, reduction: Reduction = "mean"
) -> tuple[np.floating | np.ndarray, np.ndarray]:
    r"""Mean squared error and its gradient, as ``torch.nn.functional.mse_loss``.

    .. math::
        L = \frac{1}{N} \sum_k (x_k - y_k)^2 \qquad \frac{\partial L}{\partial x_k}
        = \frac{2}{N} (x_k - y_k)

    over all :math:`N` elements for ``"mean"``; ``"sum"`` drops the :math:`1/N`, and
    ``"none"`` returns the element-wise squares with ``dinput`` the gradient of their sum.

    Args:
        input: float32 or float64 predictions, any shape.
        target: values of the same shape (cast to the input's dtype).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Returns:
        ``(loss, dinput)``: ``loss`` a NumPy scalar of the input's dtype (an array for
        ``"none"``), ``dinput`` of the input's shape and dtype.

    Raises:
        TypeError: for non-float input or non-numeric target.
        ValueError: for different shapes (no broadcasting) or an unknown reduction.
    """
    input = np.asarray(input)
    target = np.asarray(target)
    if input.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"input must be float32 or float64, got dtype {input.dtype}")
    if not (np.issubdtype(target.dtype, np.floating) or np.issubdtype(target.dtype, np.integer)):
        raise TypeError(f"target must be numeric, got dtype {target.dtype}")
    if input.shape != target.shape:
        raise ValueError(
            f"mse_loss needs input and target of the same shape, got {input.shape} and "
            f"{target.shape}"
        )
    _check_reduction(reduction)
    diff = input - target.astype(input.dtype, copy=False)
    squares = diff * diff
    dtype = input.dtype.type
    if reduction == "none":
        return squares, 2 * diff
    if reduction == "sum":
        return dtype(squares.sum(dtype=np.float64)), 2 * diff
    if diff.size == 0:
        return dtype(np.nan), diff
    diff *= 2.0 / diff.size
    return dtype(squares.sum(dtype=np.float64) / squares.size), diff


def _check_reduction(reduction: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
