"""The temporal order problem: classify a long sequence by the order of two distant symbols.

Hochreiter & Schmidhuber (1997), "Long Short-Term Memory", Neural Computation 9(8),
Experiment 6, Task 6a ("two relevant, widely separated symbols").
"""

from __future__ import annotations

import numpy as np
from numpy.typing import DTypeLike

from lstmkit.tasks.batch import SequenceBatch, check_float_dtype, check_int, check_rng

TEMPORAL_ORDER_SYMBOLS: tuple[str, ...] = ("a", "b", "c", "d", "X", "Y", "B", "E")
"""The eight input symbols, in the order of the one-hot channels."""

TEMPORAL_ORDER_CLASSES: tuple[str, ...] = ("Q", "R", "S", "U")
"""Class names of the paper by label: Q = (X, X), R = (X, Y), S = (Y, X), U = (Y, Y)."""

TEMPORAL_ORDER_TOLERANCE = 0.3
"""The paper's success criterion: a sequence is classified correctly when the absolute error of
every (locally coded, one-hot target) output unit at the sequence end is below 0.3."""

MIN_LENGTH, MAX_LENGTH = 100, 110
T1_RANGE = (10, 20)
T2_RANGE = (50, 60)

_X = TEMPORAL_ORDER_SYMBOLS.index("X")
_B = TEMPORAL_ORDER_SYMBOLS.index("B")
_E = TEMPORAL_ORDER_SYMBOLS.index("E")


def temporal_order(
    rng: np.random.Generator,
    batch_size: int,
    dtype: DTypeLike = np.float32,
) -> SequenceBatch:
    """Task 6a of Hochreiter & Schmidhuber (1997), generated as the paper describes.

    "The sequence starts with an E, ends with a B (the 'trigger symbol') and otherwise consists
    of randomly chosen symbols from the set {a, b, c, d} except for two elements at positions
    t1 and t2 that are either X or Y. The sequence length is randomly chosen between 100 and
    110, t1 is randomly chosen between 10 and 20, and t2 is randomly chosen between 50 and 60."

    Every choice is uniform and independent, ranges include both ends. Positions are the
    paper's, counted from 1 (the starting E is position 1), so X/Y sit at array indices
    t1 - 1 in [9, 19] and t2 - 1 in [49, 59]. This reading matches the paper's Table 10, whose
    minimal lag between the last relevant input and the target is 40 (= 100 - 60) for Task 6a.

    The label is the order of the two symbols: 0 = Q (X, X), 1 = R (X, Y), 2 = S (Y, X),
    3 = U (Y, Y), i.e. ``2 * (first is Y) + (second is Y)``; the paper gives the target only at
    the last step, as a one-hot vector over the four classes. Guessing is right one time in four.

    Paper result (Table 9, LSTM with 2 cell blocks of size 2, 156 weights, mean of 20 trials):
    1 of 2560 test sequences wrong, after 31,390 training sequences.

    Args:
        rng: the only source of randomness.
        batch_size: B, the number of sequences, >= 1.
        dtype: float32 (default) or float64 for the one-hot inputs.

    Returns:
        ``SequenceBatch`` with x one-hot of shape (110, B, 8), channels in the order of
        ``TEMPORAL_ORDER_SYMBOLS`` (a, b, c, d, X, Y, B, E), all zero after each sequence's
        end; y int64 labels of shape (B,); int64 lengths (B,) in [100, 110].
    """
    rng = check_rng(rng)
    batch_size = check_int("batch_size", batch_size, 1)
    dtype = check_float_dtype(dtype)

    columns = np.arange(batch_size)
    lengths = rng.integers(MIN_LENGTH, MAX_LENGTH, size=batch_size, endpoint=True)
    t1 = rng.integers(*T1_RANGE, size=batch_size, endpoint=True)
    t2 = rng.integers(*T2_RANGE, size=batch_size, endpoint=True)
    is_y = rng.integers(0, 2, size=(2, batch_size))  # 0: X, 1: Y, for t1 and t2

    symbols = rng.integers(0, 4, size=(MAX_LENGTH, batch_size))  # a, b, c, d
    symbols[0, :] = _E
    symbols[lengths - 1, columns] = _B
    symbols[t1 - 1, columns] = _X + is_y[0]
    symbols[t2 - 1, columns] = _X + is_y[1]

    x = np.eye(len(TEMPORAL_ORDER_SYMBOLS), dtype=dtype)[symbols]  # (T, B, 8)
    x[np.arange(MAX_LENGTH)[:, None] >= lengths[None, :]] = 0.0
    labels = (2 * is_y[0] + is_y[1]).astype(np.int64)
    return SequenceBatch(x=x, y=labels, lengths=lengths.astype(np.int64))


def decode_temporal_order(batch: SequenceBatch) -> list[str]:
    """Turn the one-hot inputs of a temporal-order batch back into strings, for reading.

    Args:
        batch: as returned by :func:`temporal_order`.

    Returns:
        B strings, each of its sequence's length, e.g. ``"EadcbX...B"``.
    """
    if batch.lengths is None or batch.x.shape[2] != len(TEMPORAL_ORDER_SYMBOLS):
        raise ValueError(
            "expected a batch from temporal_order(): x of shape (T, B, 8) and lengths; "
            f"got x of shape {batch.x.shape} and lengths {batch.lengths!r}"
        )
    codes = batch.x.argmax(axis=2)  # (T, B)
    return [
        "".join(TEMPORAL_ORDER_SYMBOLS[c] for c in codes[:length, b])
        for b, length in enumerate(batch.lengths)
    ]
