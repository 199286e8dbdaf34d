"""Linear: an affine map over the last axis, as ``torch.nn.Linear``, with optional weight tying."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from lstmkit.nn.embedding import Embedding
from lstmkit.nn.module import Module, check_positive_int, resolve_dtype, resolve_rng

__all__ = ["Linear"]


class Linear(Module):
    r"""Apply :math:`y = x W^T + b` over the last axis.

    Forward and backward, with ``x`` flattened to ``(N, in)`` and ``dy`` to ``(N, out)``:

    .. math::
        y = x W^T + b \qquad
        \frac{\partial L}{\partial W} \mathrel{+}= dy^T x \qquad
        \frac{\partial L}{\partial b} \mathrel{+}= \textstyle\sum_n dy_n \qquad
        dx = dy\, W

    Args:
        in_features: size of each input vector.
        out_features: size of each output vector.
        bias: whether to add the learned bias ``b``.
        dtype: ``"float32"`` (default) or ``"float64"``; floating inputs of the other
            precision are cast to it.
        seed: None, an int or a ``np.random.Generator``. Initialisation as PyTorch:
            ``W, b ~ U(-1/sqrt(in_features), 1/sqrt(in_features))``.
        tied_to: an :class:`Embedding` whose weight this layer shares (see
            :meth:`tie_weight`); its weight must have shape ``(out_features, in_features)``.

    Shapes:
        input: ``(..., in_features)``; output: ``(..., out_features)``.
        ``params["weight"]``: ``(out_features, in_features)`` (absent when tied);
        ``params["bias"]``: ``(out_features,)``.

    Weight tying (Press & Wolf 2017; ``decoder.weight = encoder.weight`` in PyTorch): a tied
    Linear owns no weight. :attr:`weight` is the embedding's ``params["weight"]`` array (the
    same object), and ``backward`` adds the weight gradient straight into the embedding's
    ``grads["weight"]``, where the embedding's own backward adds its part too. The shared
    matrix therefore appears exactly once in a model's ``params`` (under the embedding's
    name), its gradient is the sum of both uses, and an optimizer updates it once.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        dtype: str | np.dtype = "float32",
        seed: int | np.random.Generator | None = None,
        tied_to: Embedding | None = None,
    ) -> None:
        super().__init__()
        self.in_features = check_positive_int("in_features", in_features)
        self.out_features = check_positive_int("out_features", out_features)
        self.dtype = resolve_dtype(dtype)
        self._tied: Embedding | None = None
        rng = resolve_rng(seed)
        bound = 1.0 / math.sqrt(self.in_features)
        shape = (self.out_features, self.in_features)
        if tied_to is None:
            self.add_param("weight", rng.uniform(-bound, bound, shape).astype(self.dtype))
        if bias:
            self.add_param("bias", rng.uniform(-bound, bound, self.out_features).astype(self.dtype))
        if tied_to is not None:
            self.tie_weight(tied_to)
        self._x: np.ndarray | None = None

    @property
    def weight(self) -> np.ndarray:
        """The live ``(out_features, in_features)`` weight (the embedding's when tied)."""
        if self._tied is not None:
            return self._tied.params["weight"]
        return self.params["weight"]

    @property
    def weight_grad(self) -> np.ndarray:
        """The array ``backward`` accumulates the weight gradient into."""
        if self._tied is not None:
            return self._tied.grads["weight"]
        return self.grads["weight"]

    @property
    def bias(self) -> np.ndarray | None:
        """The live ``(out_features,)`` bias, or None when built with ``bias=False``."""
        return self.params.get("bias")

    @property
    def tied(self) -> bool:
        """Whether the weight is shared with an :class:`Embedding`."""
        return self._tied is not None

    def tie_weight(self, embedding: Embedding) -> None:
        """Share ``embedding``'s weight: drop this layer's own weight parameter and gradient.

        Tie before registering this layer in a parent module, so that the parent's
        ``params`` never lists the dropped weight.

        Raises:
            TypeError: if ``embedding`` is not an :class:`Embedding`.
            ValueError: if its weight is not ``(out_features, in_features)`` of our dtype,
                or this layer is already tied.
        """
        if not isinstance(embedding, Embedding):
            raise TypeError(f"tie_weight expects an Embedding, got {type(embedding).__name__}")
        if self._tied is not None:
            raise ValueError("this Linear is already tied to an Embedding")
        expected = (self.out_features, self.in_features)
        if embedding.weight.shape != expected:
            raise ValueError(
                f"cannot tie: the embedding weight has shape {embedding.weight.shape}, the "
                f"Linear needs (out_features, in_features) = {expected}; build the Embedding as "
                f"Embedding({self.out_features}, {self.in_features})"
            )
        if embedding.weight.dtype != self.dtype:
            raise ValueError(
                f"cannot tie: the embedding weight is {embedding.weight.dtype}, "
                f"the Linear is {self.dtype}"
            )
        self.params.pop("weight", None)
        self.grads.pop("weight", None)
        self._tied = embedding

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Return ``x @ W.T + b``; ``x`` is ``(..., in_features)``, the result ``(..., out)``."""
        x = np.asarray(x)
        if not np.issubdtype(x.dtype, np.floating):
            raise TypeError(f"Linear expects a floating-point input, got dtype {x.dtype}")
        if x.ndim == 0 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"Linear expects input of shape (..., {self.in_features}), got {x.shape}"
            )
        x = x.astype(self.dtype, copy=False)
        self._x = x
        # One 2-D GEMM over all leading axes: x (T, B, in) @ W.T as a batch of T small
        # products is much slower than (T*B, in) @ (in, out).
        x2 = x.reshape(-1, self.in_features)  # (N, in)
        fast = _kernels(x2, self.weight)
        if fast is not None:
            y = np.empty((x2.shape[0], self.out_features), dtype=self.dtype)
            fast.forward(x2, self.weight, y)
        else:
            y = x2 @ self.weight.T  # (N, out)
        if "bias" in self.params:
            y += self.params["bias"]
        return y.reshape(x.shape[:-1] + (self.out_features,))

    def backward(self, dout: np.ndarray) -> np.ndarray:
        """Accumulate dW and db from ``dout`` (``(..., out_features)``); return dx ``(..., in)``."""
        if self._x is None:
            raise RuntimeError("Linear.backward called before forward")
        x = self._x
        expected = x.shape[:-1] + (self.out_features,)
        dout = np.asarray(dout)
        if dout.shape != expected:
            raise ValueError(f"Linear.backward: dout has shape {dout.shape}, expected {expected}")
        dout = dout.astype(self.dtype, copy=False)
        d2 = dout.reshape(-1, self.out_features)  # (N, out)
        x2 = x.reshape(-1, self.in_features)  # (N, in)
        dweight = self.weight_grad
        fast = _kernels(d2, x2, self.weight, dweight)
        if "bias" in self.grads:
            self.grads["bias"] += d2.sum(axis=0)
        if fast is None:
            dweight += d2.T @ x2
            return (d2 @ self.weight).reshape(x.shape)
        fast.weight_grad(d2, x2, dweight)
        dx = np.empty(x.shape, dtype=self.dtype)
        fast.input_grad(d2, self.weight, dx.reshape(-1, self.in_features))
        return dx


def _kernels(*arrays: np.ndarray) -> Any:
    """``lstmkit.engine.kernels.linear`` (the same GEMMs on the kernels' thread pool) when the fused
    kernels are on and take these operands, else None (NumPy's ``@``)."""
    from lstmkit.engine import kernels

    return kernels.fast_path("linear", *arrays)
