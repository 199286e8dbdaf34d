"""Timing tasks after Gers, Schraudolph & Schmidhuber (2002), "Learning Precise Timing with LSTM
Recurrent Networks", Journal of Machine Learning Research 3:115-143.

Both tasks are continual: one long stream per batch element, no resets, a target at every
step. The paper's point is that a cell must count time steps exactly, which peephole
connections (cell state into the gates) make learnable.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from lstmkit.tasks.batch import SequenceBatch, check_float_dtype, check_int, check_rng


def spike_delay_stream(
    rng: np.random.Generator,
    batch_size: int,
    T: int,
    delay: int,
    min_gap: int | None = None,
    max_gap: int | None = None,
    dtype: DTypeLike = np.float32,
) -> SequenceBatch:
    """A stream of trigger spikes; the target spikes exactly ``delay`` steps after each one.

    The input is 1 at trigger times and 0 elsewhere; the target is 1 at every trigger time plus
    ``delay`` and 0 elsewhere, so the network must measure ``delay`` steps of silence itself.
    The first trigger is at a time uniform in [0, max_gap - 1]; each later one follows the
    previous after a gap uniform in [min_gap, max_gap]. Since min_gap > delay, every target
    spike comes before the next trigger. Targets that would fall at or after T are cut off
    with the stream.

    This is a fixed-delay member of the paper's family of spike-timing tasks, not a copy of
    one of its protocols: in its "measuring spike delays" task the spikes are F + I(n) steps
    apart and the target is the extra delay I(n), and "generating timed spikes" exchanges
    that task's input and target.

    Args:
        rng: the only source of randomness.
        batch_size: B, the number of independent streams, >= 1.
        T: the number of steps per stream, >= 1.
        delay: steps from a trigger to its target spike, >= 1.
        min_gap: the shortest gap between triggers, > delay (default delay + 1).
        max_gap: the longest gap between triggers, >= min_gap (default min_gap + delay).
        dtype: float32 (default) or float64.

    Returns:
        ``SequenceBatch`` with x and y of shape (T, B, 1) and ``lengths=None``.
    """
    rng = check_rng(rng)
    batch_size = check_int("batch_size", batch_size, 1)
    T = check_int("T (the stream length)", T, 1)
    delay = check_int("delay", delay, 1)
    if min_gap is None:
        min_gap = delay + 1
    min_gap = check_int("min_gap (the shortest gap, > delay)", min_gap, delay + 1)
    if max_gap is None:
        max_gap = min_gap + delay
    max_gap = check_int("max_gap (the longest gap, >= min_gap)", max_gap, min_gap)
    dtype = check_float_dtype(dtype)

    # Enough gaps to pass T even if all are minimal.
    n_gaps = T // min_gap + 1
    first = rng.integers(0, max_gap, size=(1, batch_size))
    gaps = rng.integers(min_gap, max_gap, size=(n_gaps, batch_size), endpoint=True)
    times = np.concatenate([first, first + np.cumsum(gaps, axis=0)])  # (n_gaps + 1, B)
    columns = np.broadcast_to(np.arange(batch_size), times.shape)

    x = np.zeros((T, batch_size, 1), dtype=dtype)
    y = np.zeros((T, batch_size, 1), dtype=dtype)
    fired = times < T
    x[times[fired], columns[fired], 0] = 1.0
    hit = times + delay < T
    y[times[hit] + delay, columns[hit], 0] = 1.0
    return SequenceBatch(x=x, y=y, lengths=None)


def periodic_cosine(
    batch_size: int,
    T: int,
    period: int,
    phase: ArrayLike = 0.0,
    input_value: float = 0.0,
    dtype: DTypeLike = np.float32,
) -> SequenceBatch:
    """The periodic function generation target f_cos(t) = 0.5 * (1 - cos(2 pi t / F)).

    The network receives a constant input (0 by default, the paper gives none) and must
    produce the wave by itself, keeping time with its cell state: the target starts at 0 at
    t = 0, peaks at 1 at t = F / 2 and repeats every F steps. The paper uses F = 10 and 25.
    (It also generates triangle and rectangle waves, which are not provided here.)

    Nothing here is random, so no ``rng`` is taken; for random phases pass e.g.
    ``phase=rng.integers(0, period, size=batch_size)``.

    Args:
        batch_size: B, >= 1.
        T: the number of steps, >= 1.
        period: F, the period in steps, an integer >= 2.
        phase: a shift in steps, one number or one per batch element (shape (B,)):
            y[t, b] = f_cos(t + phase[b]). The paper's stream starts at phase 0.
        input_value: the constant input at every step.
        dtype: float32 (default) or float64.

    Returns:
        ``SequenceBatch`` with x (constant) and y of shape (T, B, 1), ``lengths=None``.
    """
    batch_size = check_int("batch_size", batch_size, 1)
    T = check_int("T (the stream length)", T, 1)
    period = check_int("period", period, 2)
    dtype = check_float_dtype(dtype)
    phase = np.asarray(phase, dtype=np.float64)
    if phase.shape not in ((), (batch_size,)):
        raise ValueError(
            f"phase must be one number or one per batch element, shape ({batch_size},); "
            f"got shape {phase.shape}"
        )

    t = np.arange(T, dtype=np.float64)[:, None] + phase  # (T, B) by broadcasting
    y = 0.5 * (1.0 - np.cos(2.0 * np.pi * t / period))
    y = np.broadcast_to(y, (T, batch_size))[:, :, None].astype(dtype)
    x = np.full((T, batch_size, 1), input_value, dtype=dtype)
    return SequenceBatch(x=x, y=y, lengths=None)
