"""The container every task generator returns, and the argument checks they share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import DTypeLike


@dataclass(frozen=True)
class SequenceBatch:
    """One batch of sequences, time-major like PyTorch's default layout.

    Attributes:
        x: inputs, shape (T, B, D). For variable-length batches T is the longest possible
            length and every sequence is zero-padded after its end.
        y: targets; the shape depends on the task: (B, 1) for one value per sequence,
            (B,) int64 class labels, or (T, B, K) for a target at every step.
        lengths: int64, shape (B,): the true length of each sequence, or ``None`` when all
            sequences fill the whole time axis.
    """

    x: np.ndarray
    y: np.ndarray
    lengths: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.x.ndim != 3:
            raise ValueError(f"x must have shape (T, B, D); got shape {self.x.shape}")
        batch_size = self.x.shape[1]
        batch_axis = 1 if self.y.ndim == 3 else 0
        if self.y.shape[batch_axis] != batch_size:
            raise ValueError(
                f"y must hold {batch_size} sequences like x (shape {self.x.shape}); "
                f"got shape {self.y.shape}"
            )
        if self.lengths is not None and self.lengths.shape != (batch_size,):
            raise ValueError(
                f"lengths must have shape ({batch_size},); got shape {self.lengths.shape}"
            )

    @property
    def batch_size(self) -> int:
        """B, the number of sequences."""
        return self.x.shape[1]


def check_float_dtype(dtype: DTypeLike) -> np.dtype:
    """Return ``dtype`` as a NumPy dtype if it is float32 or float64, else raise ValueError."""
    resolved = np.dtype(dtype)
    if resolved not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64; got {resolved}")
    return resolved


def check_int(name: str, value: Any, minimum: int) -> int:
    """Return ``value`` as an int if it is an integer >= ``minimum``, else raise ValueError."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value}")
    return int(value)


def check_rng(rng: Any) -> np.random.Generator:
    """Return ``rng`` if it is a numpy Generator, else raise TypeError saying how to make one."""
    if not isinstance(rng, np.random.Generator):
        raise TypeError(
            "rng must be a numpy.random.Generator, e.g. numpy.random.default_rng(0); "
            f"got {type(rng).__name__}"
        )
    return rng
