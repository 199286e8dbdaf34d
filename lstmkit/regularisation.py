"""The random masks of regularisation inside the recurrence, drawn once per forward call.

Three kinds (``docs/options.md``), each active only while the layer is in training mode:

- variational recurrent dropout (Gal & Ghahramani 2016; Keras' ``recurrent_dropout``): one
  mask per gate and sequence, (G, B, R), the same at every step, on the h_prev that gate sees;
- zoneout (Krueger et al. 2017; Haste's ``zoneout``): a fresh mask per step, unit and
  sequence, (T, B, R) for h and (T, B, H) for c, 1 where the unit keeps its previous value;
- weight drop (DropConnect on W_hh, Wan et al. 2013, as in AWD-LSTM, Merity et al. 2018, and
  Haste's ``dropout``): one mask on the recurrent weights per call, the same for every
  sequence and step.

Dropout masks are scaled by 1 / (1 - rate) (inverted dropout, as Keras and PyTorch), so that
evaluation needs no rescaling; zoneout masks are 0/1, and evaluation uses their expectation.
The cell (``lstmkit.cells.lstm``) reads the recurrent-dropout and zoneout masks from its
parameter dict under the names below; weight drop needs nothing from the cell: the layer hands
the engine ``W_hh * mask`` and takes the gradient back through the same mask.
"""

from __future__ import annotations

from typing import Any

import numpy as np

Array = np.ndarray

RATES = ("recurrent_dropout", "zoneout", "zoneout_c", "weight_drop")


def check_rate(name: str, value: Any) -> float:
    """A rate in [0, 1), or a ValueError naming the argument."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number in [0, 1), got {type(value).__name__} "
                        f"{value!r}")
    if not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")
    return float(value)


def dropout_mask(rng: np.random.Generator, shape: tuple[int, ...], rate: float,
                 dtype: Any) -> Array:
    """Inverted dropout: 1 / (1 - rate) with probability 1 - rate, else 0."""
    keep = 1.0 - rate
    return (rng.random(shape) < keep).astype(dtype) / np.asarray(keep, dtype=dtype)


def zoneout_mask(rng: np.random.Generator, shape: tuple[int, ...], rate: float,
                 dtype: Any) -> Array:
    """1 (keep the previous value) with probability ``rate``, else 0: a uniform 32-bit
    integer below rate * 2^32, two taken from each of the generator's raw 64-bit words (low
    half first, whatever the machine's byte order). A mask per step, unit and sequence: float32
    uniforms cost 0.26-0.30 ms a mask of (50, 16, 128) on a 2-core Xeon, this 0.14."""
    n = int(np.prod(shape))
    words = rng.bit_generator.random_raw((n + 1) // 2).astype("<u8", copy=False)
    threshold = np.uint32(min(round(rate * 2.0**32), 2**32 - 1))
    return (words.view("<u4")[:n] < threshold).reshape(shape).astype(dtype)


def cell_masks(cell: Any, rng: np.random.Generator, T: int, B: int, dtype: Any) -> dict[str, Array]:
    """The masks one layer and direction of an LSTM reads during one training call, under the
    names the cell reads them by (empty if the cell has none of the options)."""
    masks: dict[str, Array] = {}
    R, H = cell.output_size, cell.hidden_size
    if cell.recurrent_dropout:
        masks["recurrent_dropout_mask"] = dropout_mask(rng, (len(cell.gates), B, R),
                                                       cell.recurrent_dropout, dtype)
    if cell.zoneout:
        masks["zoneout_mask"] = zoneout_mask(rng, (T, B, R), cell.zoneout, dtype)
    if cell.zoneout_c:
        masks["zoneout_c_mask"] = zoneout_mask(rng, (T, B, H), cell.zoneout_c, dtype)
    return masks
