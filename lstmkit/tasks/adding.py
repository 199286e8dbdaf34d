"""The adding problem: remember two marked real numbers across a long sequence, output their sum.

Two versions are in use and they differ in every detail, so both are here under their authors'
names:

* :func:`hochreiter_adding` is Experiment 4 of Hochreiter & Schmidhuber (1997), "Long
  Short-Term Memory", Neural Computation 9(8), section 5.4, generated as the paper describes.
* :func:`pascanu_adding` is the simpler variant of Pascanu, Mikolov & Bengio (2013), "On the
  difficulty of training recurrent neural networks", ICML, used by most later papers.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import DTypeLike

from lstmkit.tasks.batch import SequenceBatch, check_float_dtype, check_int, check_rng

ADDING_TOLERANCE = 0.04
"""Hochreiter & Schmidhuber's success criterion: a sequence is processed correctly when the
absolute error of the output at its end is below 0.04."""


def hochreiter_adding(
    rng: np.random.Generator,
    batch_size: int,
    T: int,
    dtype: DTypeLike = np.float32,
) -> SequenceBatch:
    """Adding problem of Hochreiter & Schmidhuber (1997), Experiment 4, as published.

    Each element of a sequence is a pair (value, marker):

    * value: uniform in [-1, 1];
    * length: an integer uniform in [T, T + T // 10] (both ends included);
    * X1: one of the first ten pairs, chosen uniformly, is marked (marker 1.0);
    * X2: one of the first T/2 - 1 *still unmarked* pairs, chosen uniformly, is marked. As X1 is
      among the first ten pairs and T >= 20, these are the pairs 0 .. T//2 - 1 without X1's
      (T//2 - 1 candidates, so that X2 can be the pair at index T//2 - 1);
    * every other marker is 0, except the first and the last pair of the sequence, whose marker
      is -1 unless it is marked (only the first pair can be: the last lies beyond T/2);
    * "X1 is set to zero in the rare case where the first pair of the sequence got marked": when
      X1 is the pair at index 0 its value is set to 0, in the input and so in the target. The
      paper names only X1: when X2 falls on the first pair, its value is kept.

    The target, given only at the end of the sequence, is 0.5 + (X1 + X2) / 4.0, the sum scaled
    into [0, 1]. A sequence counts as processed correctly when the absolute error there is below
    ``ADDING_TOLERANCE`` (0.04). The paper trains with T = 100, 500 and 1000.

    Baseline to beat: always answering the mean 0.5 gives a mean squared error of
    (0.9 / 3 + 1 / 3) / 16 = 19/480 ~ 0.0396 (X1 is zero for one sequence in ten) and about
    15.4 % of sequences "correct".

    Args:
        rng: the only source of randomness; the same generator state gives the same batch.
        batch_size: B, the number of sequences, >= 1.
        T: the minimal sequence length, an integer >= 20 (so that the ten pairs X1 may occupy
            lie within the first T/2 pairs X2 is drawn from).
        dtype: float32 (default) or float64 for ``x`` and ``y``.

    Returns:
        ``SequenceBatch`` with x of shape (T + T // 10, B, 2) (channel 0 the values, channel 1
        the markers, zero after each sequence's end), y of shape (B, 1) and int64 lengths (B,).
    """
    rng = check_rng(rng)
    batch_size = check_int("batch_size", batch_size, 1)
    T = check_int("T (the minimal sequence length of the adding problem)", T, 20)
    dtype = check_float_dtype(dtype)

    max_len = T + T // 10
    columns = np.arange(batch_size)
    lengths = rng.integers(T, max_len, size=batch_size, endpoint=True)
    x1 = rng.integers(0, 10, size=batch_size)
    # Uniform over the T//2 - 1 indices 0 .. T//2 - 1 other than x1: draw a rank, skip x1.
    rank = rng.integers(0, T // 2 - 1, size=batch_size)
    x2 = rank + (rank >= x1)

    values = rng.uniform(-1.0, 1.0, size=(max_len, batch_size))
    values[0, x1 == 0] = 0.0
    past_end = np.arange(max_len)[:, None] >= lengths[None, :]  # (T_max, B)
    values[past_end] = 0.0

    markers = np.zeros((max_len, batch_size))
    markers[0, :] = -1.0
    markers[lengths - 1, columns] = -1.0
    markers[x1, columns] = 1.0
    markers[x2, columns] = 1.0

    x = np.stack([values, markers], axis=-1).astype(dtype)  # (T_max, B, 2)
    marked_sum = x[x1, columns, 0].astype(np.float64) + x[x2, columns, 0]
    y = (0.5 + marked_sum / 4.0).astype(dtype)[:, None]  # (B, 1)
    return SequenceBatch(x=x, y=y, lengths=lengths.astype(np.int64))


def pascanu_adding(
    rng: np.random.Generator,
    batch_size: int,
    T: int,
    dtype: DTypeLike = np.float32,
) -> SequenceBatch:
    """Adding problem in the variant of Pascanu, Mikolov & Bengio (2013).

    Every sequence has exactly T pairs (value, marker): values uniform in [0, 1], markers 0
    except two 1s, one at an index uniform in the first half [0, T//2) and one uniform in the
    second half [T//2, T) (for odd T the second half is one step longer). The target is the
    sum of the two marked values, in [0, 2].

    Baseline to beat: always answering the mean 1.0 gives a mean squared error of
    Var(U1 + U2) = 2/12 = 1/6 ~ 0.167.

    Args:
        rng: the only source of randomness.
        batch_size: B, the number of sequences, >= 1.
        T: the sequence length, an integer >= 2 (each half must hold one mark).
        dtype: float32 (default) or float64.

    Returns:
        ``SequenceBatch`` with x of shape (T, B, 2) (values, markers), y of shape (B, 1) and
        ``lengths=None`` (all sequences have length T).
    """
    rng = check_rng(rng)
    batch_size = check_int("batch_size", batch_size, 1)
    T = check_int("T (the sequence length of the adding problem)", T, 2)
    dtype = check_float_dtype(dtype)

    columns = np.arange(batch_size)
    first = rng.integers(0, T // 2, size=batch_size)
    second = rng.integers(T // 2, T, size=batch_size)
    values = rng.uniform(0.0, 1.0, size=(T, batch_size))
    markers = np.zeros((T, batch_size))
    markers[first, columns] = 1.0
    markers[second, columns] = 1.0

    x = np.stack([values, markers], axis=-1).astype(dtype)  # (T, B, 2)
    y = (x[first, columns, 0].astype(np.float64) + x[second, columns, 0]).astype(dtype)
    return SequenceBatch(x=x, y=y[:, None], lengths=None)
