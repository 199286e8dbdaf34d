"""Dropout: inverted dropout, active only in training mode, as ``torch.nn.Dropout``."""

from __future__ import annotations

import numpy as np

from lstmkit.nn.module import Module, resolve_rng

__all__ = ["Dropout"]


class Dropout(Module):
    r"""Zero each element with probability ``p`` and scale the survivors by ``1 / (1 - p)``.

    In training mode, with a fresh mask :math:`m_k \sim \text{Bernoulli}(1 - p)` per call:

    .. math::
        y = x \odot m / (1 - p) \qquad dx = dy \odot m / (1 - p)

    so that :math:`E[y] = x`; in evaluation mode (or with ``p = 0``) :math:`y = x` and
    :math:`dx = dy`. The mask comes from the module's own Generator, so a seeded Dropout
    gives the same masks in every run whatever else draws random numbers.

    Args:
        p: drop probability, in ``[0, 1)``.
        seed: None, an int or a ``np.random.Generator`` for the masks.

    Shapes:
        input: any floating array; output: the same shape and dtype.
    """

    def __init__(self, p: float = 0.5, seed: int | np.random.Generator | None = None) -> None:
        super().__init__()
        if (
            isinstance(p, bool)
            or not isinstance(p, (int, float, np.floating, np.integer))
            or not 0.0 <= p < 1.0
        ):
            raise ValueError(f"Dropout probability p must be a number in [0, 1), got {p!r}")
        self.p = float(p)
        self.rng = resolve_rng(seed)
        self._mask: np.ndarray | None = None
        self._shape: tuple[int, ...] | None = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Apply dropout to ``x`` in training mode; return ``x`` unchanged in eval mode."""
        x = np.asarray(x)
        if not np.issubdtype(x.dtype, np.floating):
            raise TypeError(f"Dropout expects a floating-point input, got dtype {x.dtype}")
        self._shape = x.shape
        if not self.training or self.p == 0.0:
            self._mask = None
            return x
        # The mask holds 0 or 1/(1-p) in x's dtype, so forward and backward are one multiply.
        uniform_dtype = np.float32 if x.dtype == np.float32 else np.float64
        keep = self.rng.random(x.shape, dtype=uniform_dtype) >= self.p
        mask = keep.astype(x.dtype)
        mask *= 1.0 / (1.0 - self.p)
        self._mask = mask
        return x * mask

    def backward(self, dout: np.ndarray) -> np.ndarray:
        """Return ``dout`` times the mask of the last forward (``dout`` itself if none)."""
        if self._shape is None:
            raise RuntimeError("Dropout.backward called before forward")
        dout = np.asarray(dout)
        if dout.shape != self._shape:
            raise ValueError(
                f"Dropout.backward: dout has shape {dout.shape}, expected {self._shape}"
            )
        if self._mask is None:
            return dout
        return dout * self._mask

    def __repr__(self) -> str:
        return f"Dropout(p={self.p})"
