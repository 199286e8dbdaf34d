"""Tests of lstmkit.tasks: every generator against its published protocol.

Statistical checks use fixed seeds and large samples, so they are deterministic; each bound is
a few standard errors wide and would fail for the plausible misreadings of the protocols
(e.g. X2 drawn from one position fewer, Y/X positions counted from 0, a wrong Reber edge).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from lstmkit.tasks import (
    ADDING_TOLERANCE,
    REBER_SYMBOLS,
    TEMPORAL_ORDER_CLASSES,
    TEMPORAL_ORDER_SYMBOLS,
    TEMPORAL_ORDER_TOLERANCE,
    ReberStream,
    SequenceBatch,
    chunk_stream,
    continual_embedded_reber,
    continual_embedded_reber_batch,
    decode_temporal_order,
    embedded_reber_legal_next,
    embedded_reber_string,
    hochreiter_adding,
    is_embedded_reber,
    is_reber,
    pascanu_adding,
    periodic_cosine,
    reber_legal_next,
    reber_multi_hot,
    reber_one_hot,
    reber_string,
    spike_delay_stream,
    temporal_order,
)

P_MIN = 1e-3  # smallest chi-square p-value accepted for a correct generator


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def chi_square_p(observed: np.ndarray, expected_probs: np.ndarray) -> float:
    observed = np.asarray(observed, dtype=np.float64)
    expected = np.asarray(expected_probs, dtype=np.float64) * observed.sum()
    return float(stats.chisquare(observed, expected).pvalue)


def uniform_counts(values: np.ndarray, low: int, high: int) -> np.ndarray:
    """Counts of each integer in [low, high]; fails if any value lies outside."""
    values = np.asarray(values).ravel()
    assert values.min() >= low and values.max() <= high, (values.min(), values.max())
    return np.bincount(values - low, minlength=high - low + 1)


# ----------------------------------------------------------------------------------------------
# Shared behaviour: determinism, dtypes, argument errors


GENERATORS = {
    "hochreiter_adding": lambda r, dtype=np.float32: hochreiter_adding(r, 4, 30, dtype=dtype),
    "pascanu_adding": lambda r, dtype=np.float32: pascanu_adding(r, 4, 30, dtype=dtype),
    "temporal_order": lambda r, dtype=np.float32: temporal_order(r, 4, dtype=dtype),
    "spike_delay_stream": lambda r, dtype=np.float32: spike_delay_stream(r, 4, 80, 5, dtype=dtype),
}


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_same_seed_same_batch_other_seed_other_batch(name: str) -> None:
    make = GENERATORS[name]
    a, b, c = make(rng(3)), make(rng(3)), make(rng(4))
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.y, b.y)
    assert not np.array_equal(a.x, c.x)


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_float32_by_default_float64_on_request(name: str) -> None:
    make = GENERATORS[name]
    default, double = make(rng(3)), make(rng(3), dtype=np.float64)
    assert default.x.dtype == np.float32 and double.x.dtype == np.float64
    if name != "temporal_order":
        assert default.y.dtype == np.float32 and double.y.dtype == np.float64
    np.testing.assert_allclose(default.x, double.x, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="float32 or float64"):
        make(rng(3), dtype=np.int32)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: hochreiter_adding(rng(), 4, 19), r"T .*>= 20; got 19"),
        (lambda: hochreiter_adding(rng(), 0, 100), r"batch_size must be an integer >= 1; got 0"),
        (lambda: hochreiter_adding(rng(), 4, 100.0), r"T .*integer >= 20; got 100.0"),
        (lambda: hochreiter_adding(rng(), True, 100), r"batch_size must be an integer"),
        (lambda: pascanu_adding(rng(), 4, 1), r"T .*>= 2; got 1"),
        (lambda: pascanu_adding(rng(), -1, 10), r"batch_size must be an integer >= 1; got -1"),
        (lambda: temporal_order(rng(), 0), r"batch_size must be an integer >= 1; got 0"),
        (lambda: spike_delay_stream(rng(), 2, 50, 0), r"delay must be an integer >= 1; got 0"),
        (lambda: spike_delay_stream(rng(), 2, 0, 3), r"T .*>= 1; got 0"),
        (lambda: spike_delay_stream(rng(), 2, 50, 5, min_gap=5), r"min_gap .*>= 6; got 5"),
        (
            lambda: spike_delay_stream(rng(), 2, 50, 5, min_gap=8, max_gap=7),
            r"max_gap .*>= 8; got 7",
        ),
        (lambda: periodic_cosine(2, 50, 1), r"period must be an integer >= 2; got 1"),
        (lambda: periodic_cosine(0, 50, 10), r"batch_size must be an integer >= 1; got 0"),
        (lambda: periodic_cosine(3, 50, 10, phase=[0.0, 1.0]), r"shape \(3,\); got shape \(2,\)"),
        (lambda: continual_embedded_reber(rng(), 0), r"n_strings must be an integer >= 1"),
        (lambda: continual_embedded_reber_batch(rng(), 0, 10), r"n_streams must be"),
        (lambda: continual_embedded_reber_batch(rng(), 2, 0), r"n_steps must be"),
        (
            lambda: chunk_stream(continual_embedded_reber(rng(), 2), 0),
            r"chunk_len must be an integer >= 1; got 0",
        ),
        (lambda: reber_one_hot(list("BTQE")), r"among BTPSXVE; got \['Q'\]"),
        (lambda: reber_multi_hot([frozenset("Z")]), r"among BTPSXVE; got 'Z'"),
    ],
)
def test_bad_arguments_raise_value_error_naming_what_was_expected(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


def test_rng_must_be_a_generator() -> None:
    with pytest.raises(TypeError, match="numpy.random.Generator"):
        hochreiter_adding(np.random.RandomState(0), 2, 100)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="default_rng"):
        reber_string(0)  # type: ignore[arg-type]


def test_sequence_batch_checks_shapes_and_is_frozen() -> None:
    x = np.zeros((5, 3, 2))
    batch = SequenceBatch(x=x, y=np.zeros((3, 1)), lengths=np.full(3, 5))
    assert batch.batch_size == 3
    with pytest.raises(AttributeError):
        batch.x = x  # type: ignore[misc]
    with pytest.raises(ValueError, match=r"\(T, B, D\)"):
        SequenceBatch(x=np.zeros((5, 3)), y=np.zeros((3, 1)))
    with pytest.raises(ValueError, match="y must hold 3 sequences"):
        SequenceBatch(x=x, y=np.zeros((4, 1)))
    with pytest.raises(ValueError, match=r"lengths must have shape \(3,\)"):
        SequenceBatch(x=x, y=np.zeros((3, 1)), lengths=np.zeros(4, dtype=np.int64))


# ----------------------------------------------------------------------------------------------
# Hochreiter & Schmidhuber (1997), Experiment 4: the adding problem


def test_hochreiter_adding_shapes_and_pinned_values() -> None:
    batch = hochreiter_adding(rng(7), 4, 100)
    assert batch.x.shape == (110, 4, 2) and batch.y.shape == (4, 1)
    assert batch.lengths.dtype == np.int64
    assert batch.lengths.tolist() == [110, 106, 107, 109]
    marks = [np.flatnonzero(batch.x[:, b, 1] == 1.0).tolist() for b in range(4)]
    assert marks == [[2, 5], [7, 15], [8, 14], [2, 43]]
    np.testing.assert_allclose(batch.y[:, 0], [0.485377, 0.148655, 0.353956, 0.797349], atol=1e-6)
    np.testing.assert_allclose(batch.x[:2, 0, 0], [-0.989469, -0.393935], atol=1e-6)


def test_hochreiter_adding_marker_conventions_and_padding() -> None:
    batch = hochreiter_adding(rng(1), 3000, 100)
    values, markers = batch.x[..., 0], batch.x[..., 1]
    steps = np.arange(values.shape[0])[:, None]
    inside = steps < batch.lengths[None, :]
    assert np.all(values[~inside] == 0.0) and np.all(markers[~inside] == 0.0)
    assert np.all(np.abs(values[inside]) <= 1.0)
    assert np.all((markers == 1.0).sum(axis=0) == 2)
    columns = np.arange(batch.batch_size)
    last = batch.lengths - 1
    assert np.all(markers[last, columns] == -1.0)
    first_marked = markers[0] == 1.0
    assert np.all(markers[0, ~first_marked] == -1.0)
    middle = inside.copy()
    middle[0] = False
    middle[last, columns] = False
    assert set(np.unique(markers[middle])) == {0.0, 1.0}
    # Values are U[-1, 1]: mean 0, variance 1/3 (the zeroed first values excluded).
    drawn = values[inside & ~((steps == 0) & (values == 0.0))]
    assert abs(drawn.mean()) < 0.005 and abs(drawn.var() - 1 / 3) < 0.005


def test_hochreiter_adding_target_is_scaled_sum_of_marked_values() -> None:
    batch = hochreiter_adding(rng(2), 2000, 100)
    marked_sum = (batch.x[..., 0] * (batch.x[..., 1] == 1.0)).sum(axis=0)
    np.testing.assert_allclose(batch.y[:, 0], 0.5 + marked_sum / 4.0, atol=1e-6)
    assert batch.y.min() >= 0.0 and batch.y.max() <= 1.0


def test_hochreiter_adding_lengths_uniform_in_t_to_t_plus_t_over_10() -> None:
    lengths = hochreiter_adding(rng(3), 20000, 100).lengths
    counts = uniform_counts(lengths, 100, 110)
    assert np.all(counts > 0)
    assert chi_square_p(counts, np.full(11, 1 / 11)) > P_MIN


def test_hochreiter_adding_mark_positions_follow_the_paper() -> None:
    # X1 uniform over pairs 0..9; X2 uniform over the first T/2 - 1 still unmarked pairs,
    # i.e. pairs 0..T/2 - 1 without X1. A mark lands on pair i < 10 with probability
    # 1/10 + (9/10) / (T/2 - 1) and on 10 <= i < T/2 with probability 1 / (T/2 - 1).
    T, n = 40, 20000
    batch = hochreiter_adding(rng(4), n, T)
    positions = np.nonzero(batch.x[..., 1].T == 1.0)[1]
    counts = uniform_counts(positions, 0, T // 2 - 1)
    candidates = T // 2 - 1
    probs = np.where(np.arange(T // 2) < 10, 0.1 + 0.9 / candidates, 1 / candidates)
    assert math.isclose(probs.sum(), 2.0)
    assert chi_square_p(counts, probs / 2.0) > P_MIN


def test_hochreiter_adding_first_pair_x1_is_zeroed() -> None:
    # When pair 0 is marked it is X1 with probability 0.1 / (0.1 + 0.9 / (T/2 - 1)); only then
    # is its value 0. No other value is ever exactly 0.
    T = 40
    batch = hochreiter_adding(rng(5), 20000, T)
    values, markers = batch.x[..., 0], batch.x[..., 1]
    marked_first = markers[0] == 1.0
    zeroed = values[0, marked_first] == 0.0
    expected = 0.1 / (0.1 + 0.9 / (T // 2 - 1))
    standard_error = math.sqrt(expected * (1 - expected) / marked_first.sum())
    assert abs(zeroed.mean() - expected) < 4 * standard_error
    assert np.all(values[0, ~marked_first] != 0.0)
    inside = np.arange(values.shape[0])[:, None] < batch.lengths[None, :]
    assert np.all(values[1:][inside[1:]] != 0.0)


def test_hochreiter_adding_mean_prediction_baseline() -> None:
    # Predicting 0.5: MSE = (0.9 * 1/3 + 1/3) / 16 = 19/480 ~ 0.0396, ~15.4 % within 0.04.
    y = hochreiter_adding(rng(6), 200_000, 20, dtype=np.float64).y[:, 0]
    assert abs(y.mean() - 0.5) < 0.001
    mse = np.mean((y - 0.5) ** 2)
    assert abs(mse - 19 / 480) < 3e-4
    p_within = 0.9 * (1 - (2 - 0.16) ** 2 / 4) + 0.1 * 0.16
    correct = np.mean(np.abs(y - 0.5) < ADDING_TOLERANCE)
    assert abs(correct - p_within) < 0.004
    assert ADDING_TOLERANCE == 0.04


# ----------------------------------------------------------------------------------------------
# Pascanu, Mikolov & Bengio (2013): the adding problem variant


def test_pascanu_adding_shapes_and_pinned_values() -> None:
    batch = pascanu_adding(rng(7), 3, 10)
    assert batch.x.shape == (10, 3, 2) and batch.y.shape == (3, 1) and batch.lengths is None
    marks = [np.flatnonzero(batch.x[:, b, 1] == 1.0).tolist() for b in range(3)]
    assert marks == [[4, 9], [3, 7], [3, 8]]
    np.testing.assert_allclose(batch.y[:, 0], [1.050371, 0.959965, 1.018666], atol=1e-6)


def test_pascanu_adding_one_mark_per_half_and_target_is_sum() -> None:
    T, n = 21, 20000
    batch = pascanu_adding(rng(8), n, T)
    values, markers = batch.x[..., 0], batch.x[..., 1]
    assert set(np.unique(markers)) == {0.0, 1.0}
    assert np.all(values >= 0.0) and np.all(values <= 1.0)
    assert np.all(markers[: T // 2].sum(axis=0) == 1)
    assert np.all(markers[T // 2 :].sum(axis=0) == 1)
    np.testing.assert_allclose(batch.y[:, 0], (values * markers).sum(axis=0), atol=1e-6)
    first = markers[: T // 2].argmax(axis=0)
    second = markers[T // 2 :].argmax(axis=0)
    assert chi_square_p(uniform_counts(first, 0, T // 2 - 1), np.full(10, 0.1)) > P_MIN
    assert chi_square_p(uniform_counts(second, 0, T - T // 2 - 1), np.full(11, 1 / 11)) > P_MIN


def test_pascanu_adding_mean_prediction_baseline() -> None:
    y = pascanu_adding(rng(9), 200_000, 10, dtype=np.float64).y[:, 0]
    assert abs(y.mean() - 1.0) < 0.003
    assert abs(np.mean((y - 1.0) ** 2) - 1 / 6) < 0.002


# ----------------------------------------------------------------------------------------------
# Hochreiter & Schmidhuber (1997), Task 6a: temporal order


def test_temporal_order_shapes_and_pinned_values() -> None:
    batch = temporal_order(rng(7), 3)
    assert batch.x.shape == (110, 3, 8) and batch.y.dtype == np.int64
    assert batch.lengths.tolist() == [110, 106, 107]
    assert batch.y.tolist() == [1, 0, 2]
    strings = decode_temporal_order(batch)
    assert [s[:22] for s in strings] == [
        "EabcbcdcddcbcdcbaaXcac",
        "EbbbbcdcbaaaddbXdadbca",
        "EdbdccdbadaabdcbaYabdc",
    ]


def test_temporal_order_structure_follows_the_paper() -> None:
    n = 6000
    batch = temporal_order(rng(10), n)
    x = batch.x
    inside = np.arange(110)[:, None] < batch.lengths[None, :]
    assert np.all(x[~inside] == 0.0)
    assert np.all(x[inside].sum(axis=-1) == 1.0)
    strings = decode_temporal_order(batch)
    t1, t2, filler = [], [], []
    for s, label in zip(strings, batch.y):
        assert s[0] == "E" and s[-1] == "B"
        relevant = [i for i, c in enumerate(s) if c in "XY"]
        assert len(relevant) == 2
        t1.append(relevant[0])
        t2.append(relevant[1])
        assert label == 2 * (s[relevant[0]] == "Y") + (s[relevant[1]] == "Y")
        middle = s[1:-1].replace("X", "").replace("Y", "")
        assert set(middle) <= set("abcd") and len(middle) == len(s) - 4
        filler.append(middle)
    # Positions counted from 1 as in the paper: t1 in [10, 20] is index 9..19.
    assert chi_square_p(uniform_counts(np.array(t1), 9, 19), np.full(11, 1 / 11)) > P_MIN
    assert chi_square_p(uniform_counts(np.array(t2), 49, 59), np.full(11, 1 / 11)) > P_MIN
    lengths = uniform_counts(batch.lengths, 100, 110)
    assert chi_square_p(lengths, np.full(11, 1 / 11)) > P_MIN
    assert chi_square_p(np.bincount(batch.y, minlength=4), np.full(4, 0.25)) > P_MIN
    letters = np.frombuffer("".join(filler).encode(), dtype=np.uint8) - ord("a")
    assert chi_square_p(np.bincount(letters, minlength=4), np.full(4, 0.25)) > P_MIN


def test_temporal_order_constants() -> None:
    assert TEMPORAL_ORDER_SYMBOLS == ("a", "b", "c", "d", "X", "Y", "B", "E")
    assert TEMPORAL_ORDER_CLASSES == ("Q", "R", "S", "U")
    assert TEMPORAL_ORDER_TOLERANCE == 0.3


def test_decode_temporal_order_rejects_other_batches() -> None:
    with pytest.raises(ValueError, match="expected a batch from temporal_order"):
        decode_temporal_order(pascanu_adding(rng(), 2, 10))


# ----------------------------------------------------------------------------------------------
# Reber grammars

VALID_REBER = ["BTXSE", "BPVVE", "BTSSXXTVVE", "BPVPXVVE", "BTXXVPSE", "BPTVPSE", "BTSXSE"]
INVALID_REBER = [
    "BTSSXXTVPE",  # after ...VP only X or S
    "BTXE",  # after TX only X or S
    "BPVV",  # incomplete
    "TXSE",  # no B
    "BTXSEE",  # nothing after E
    "BPE",
    "",
    "BPVVEB",
]


@pytest.mark.parametrize("string", VALID_REBER)
def test_reber_recogniser_accepts_known_strings(string: str) -> None:
    assert is_reber(string)
    for branch in "TP":
        assert is_embedded_reber("B" + branch + string + branch + "E")


@pytest.mark.parametrize("string", INVALID_REBER)
def test_reber_recogniser_rejects_non_strings(string: str) -> None:
    assert not is_reber(string)
    assert not is_embedded_reber("BT" + string + "TE")


def test_embedded_recogniser_requires_matching_branch_symbols() -> None:
    assert is_embedded_reber("BTBPVVETE") and is_embedded_reber("BPBPVVEPE")
    assert not is_embedded_reber("BTBPVVEPE") and not is_embedded_reber("BPBPVVETE")
    assert not is_embedded_reber("BPVVE") and not is_embedded_reber("BTBPVVET")


def test_reber_legal_next_on_hand_written_examples() -> None:
    sets = [set(s) for s in reber_legal_next("BTXSE")]
    assert sets == [{"T", "P"}, {"S", "X"}, {"X", "S"}, {"E"}, set()]
    sets = [set(s) for s in reber_legal_next("BPVPXVVE")]
    assert sets == [
        {"T", "P"},
        {"T", "V"},
        {"P", "V"},
        {"X", "S"},
        {"T", "V"},
        {"P", "V"},
        {"E"},
        set(),
    ]
    assert [set(s) for s in reber_legal_next("BTSS")] == [
        {"T", "P"},
        {"S", "X"},
        {"S", "X"},
        {"S", "X"},
    ]
    with pytest.raises(ValueError, match=r"symbol 3 of 'BTXE' is 'E', but only X/S may follow"):
        reber_legal_next("BTXE")


def test_embedded_reber_legal_next_on_hand_written_examples() -> None:
    sets = [set(s) for s in embedded_reber_legal_next("BTBPVVETE")]
    assert sets == [
        {"T", "P"},
        {"B"},
        {"T", "P"},
        {"T", "V"},
        {"P", "V"},
        {"E"},
        {"T"},
        {"E"},
        set(),
    ]
    sets = [set(s) for s in embedded_reber_legal_next("BPBTXSEPE")]
    assert sets == [
        {"T", "P"},
        {"B"},
        {"T", "P"},
        {"S", "X"},
        {"X", "S"},
        {"E"},
        {"P"},
        {"E"},
        set(),
    ]
    with pytest.raises(ValueError, match=r"symbol 7 of 'BPBTXSETE' is 'T', but only P"):
        embedded_reber_legal_next("BPBTXSETE")


def test_generated_reber_strings_are_accepted_and_distributed_as_the_grammar_says() -> None:
    generator = rng(11)
    strings = ["".join(reber_string(generator)) for _ in range(4000)]
    assert all(is_reber(s) for s in strings)
    lengths = np.array([len(s) for s in strings])
    # With every choice 1/2: mean length 8 (solving the chain by hand) and
    # P(length 5) = P(BTXSE) + P(BPVVE) = 1/8 + 1/8.
    assert abs(lengths.mean() - 8.0) < 0.25
    assert abs(np.mean(lengths == 5) - 0.25) < 0.03
    assert abs(np.mean([s[1] == "T" for s in strings]) - 0.5) < 0.03


def test_generated_embedded_strings_are_accepted() -> None:
    generator = rng(12)
    strings = ["".join(embedded_reber_string(generator)) for _ in range(2000)]
    assert all(is_embedded_reber(s) for s in strings)
    assert all(s[1] == s[-2] for s in strings)
    assert abs(np.mean([s[1] == "T" for s in strings]) - 0.5) < 0.04
    assert abs(np.mean([len(s) for s in strings]) - 12.0) < 0.3


def test_reber_generators_pinned() -> None:
    generator = rng(7)
    assert ["".join(reber_string(generator)) for _ in range(3)] == ["BPVVE", "BPVVE", "BPTTTTVVE"]
    generator = rng(7)
    assert ["".join(embedded_reber_string(generator)) for _ in range(3)] == [
        "BPBPVVEPE",
        "BPBPVPXTTVVEPE",
        "BTBTXXVPXVPXTVPSETE",
    ]


def test_reber_one_hot_and_multi_hot() -> None:
    x = reber_one_hot("BTE")
    assert x.shape == (3, 7) and x.dtype == np.float32
    np.testing.assert_array_equal(x.argmax(axis=1), [0, 1, 6])
    assert np.all(x.sum(axis=1) == 1.0)
    y = reber_multi_hot([frozenset("TP"), frozenset(), frozenset("E")], dtype=np.float64)
    np.testing.assert_array_equal(
        y, [[0, 1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 1]]
    )
    assert REBER_SYMBOLS == ("B", "T", "P", "S", "X", "V", "E")


def split_at_boundaries(symbols: str, boundary: np.ndarray) -> list[str]:
    starts = list(np.flatnonzero(boundary)) + [len(symbols)]
    return [symbols[a:b] for a, b in zip(starts[:-1], starts[1:])]


def decode(x: np.ndarray) -> str:
    return "".join(REBER_SYMBOLS[i] for i in x.argmax(axis=-1))


def test_continual_stream_concatenates_strings_with_correct_targets() -> None:
    n = 400
    stream = continual_embedded_reber(rng(13), n)
    T = len(stream)
    assert stream.x.shape == (T, 7) and stream.y.shape == (T, 7)
    symbols = decode(stream.x)
    strings = split_at_boundaries(symbols, stream.boundary)
    assert stream.boundary[0] and len(strings) == n
    assert all(is_embedded_reber(s) for s in strings)
    # Every next input is among the legal targets of the step before it.
    following = stream.x[1:].argmax(axis=1)
    assert np.all(stream.y[np.arange(T - 1), following] == 1.0)
    # After each final E the only legal next symbol is B (the next string's start).
    ends = np.flatnonzero(np.r_[stream.boundary[1:], True])
    np.testing.assert_array_equal(stream.y[ends], np.tile(reber_one_hot("B"), (n, 1)))
    # Each step's targets are exactly the grammar's legal set (B after the last E).
    offset = 0
    for s in strings:
        legal = embedded_reber_legal_next(s)[:-1] + [frozenset("B")]
        np.testing.assert_array_equal(stream.y[offset : offset + len(s)], reber_multi_hot(legal))
        offset += len(s)


def test_continual_stream_long_range_marks() -> None:
    n = 300
    stream = continual_embedded_reber(rng(14), n)
    symbols = decode(stream.x)
    steps = np.flatnonzero(stream.long_range)
    assert len(steps) == n
    starts = np.flatnonzero(stream.boundary)
    for start, step in zip(starts, steps):
        second = symbols[start + 1]
        assert symbols[step] == "E" and symbols[step + 1] == second  # inner E, then T/P
        assert symbols[step + 2] == "E"  # the long-range symbol is the penultimate one
        assert stream.long_range_symbol[step] == REBER_SYMBOLS.index(second)
        np.testing.assert_array_equal(stream.y[step], reber_one_hot(second)[0])
    assert np.all(stream.long_range_symbol[~stream.long_range] == -1)


def test_continual_stream_batch_and_chunks() -> None:
    batch = continual_embedded_reber_batch(rng(15), 4, 250)
    assert batch.x.shape == (250, 4, 7) and batch.y.shape == (250, 4, 7)
    for field in ("boundary", "long_range", "long_range_symbol"):
        assert getattr(batch, field).shape == (250, 4)
    assert batch.boundary.dtype == bool and batch.long_range_symbol.dtype == np.int64
    columns = [decode(batch.x[:, b]) for b in range(4)]
    assert len(set(columns)) == 4  # independent streams
    for b, symbols in enumerate(columns):
        assert batch.boundary[0, b]
        pieces = split_at_boundaries(symbols, batch.boundary[:, b])
        assert all(is_embedded_reber(s) for s in pieces[:-1])
        embedded_reber_legal_next(pieces[-1])  # the cut-off last string is a legal prefix
    chunks = chunk_stream(batch, 64)
    assert [c.x.shape for c in chunks] == [(64, 4, 7)] * 3 + [(58, 4, 7)]
    assert all(isinstance(c, ReberStream) for c in chunks)
    for field in ("x", "y", "boundary", "long_range", "long_range_symbol"):
        joined = np.concatenate([getattr(c, field) for c in chunks])
        np.testing.assert_array_equal(joined, getattr(batch, field))


def test_continual_stream_pinned_and_deterministic() -> None:
    stream = continual_embedded_reber(rng(7), 3)
    assert decode(stream.x) == "BPBPVVEPEBPBPVPXTTVVEPEBTBTXXVPXVPXTVPSETE"
    again = continual_embedded_reber(rng(7), 3, dtype=np.float64)
    np.testing.assert_array_equal(stream.y, again.y)
    assert again.x.dtype == np.float64


# ----------------------------------------------------------------------------------------------
# Gers, Schraudolph & Schmidhuber (2002): timing


def test_spike_delay_targets_exactly_delay_steps_after_each_trigger() -> None:
    delay, T = 7, 400
    batch = spike_delay_stream(rng(16), 50, T, delay)
    x, y = batch.x[..., 0], batch.y[..., 0]
    assert batch.x.shape == (T, 50, 1) and batch.y.shape == (T, 50, 1)
    assert set(np.unique(x)) == {0.0, 1.0} and set(np.unique(y)) == {0.0, 1.0}
    np.testing.assert_array_equal(y[delay:], x[:-delay])
    assert np.all(y[:delay] == 0.0)


def test_spike_delay_gaps_uniform_between_min_and_max() -> None:
    delay, min_gap, max_gap = 4, 6, 12
    batch = spike_delay_stream(rng(17), 200, 600, delay, min_gap=min_gap, max_gap=max_gap)
    gaps, firsts, lasts = [], [], []
    for b in range(200):
        times = np.flatnonzero(batch.x[:, b, 0])
        gaps.append(np.diff(times))
        firsts.append(times[0])
        lasts.append(times[-1])
    counts = uniform_counts(np.concatenate(gaps), min_gap, max_gap)
    assert chi_square_p(counts, np.full(max_gap - min_gap + 1, 1 / (max_gap - min_gap + 1))) > P_MIN
    assert (
        chi_square_p(
            uniform_counts(np.array(firsts), 0, max_gap - 1), np.full(max_gap, 1 / max_gap)
        )
        > P_MIN
    )
    assert min(lasts) >= 600 - max_gap  # the stream is filled to its end


def test_spike_delay_default_gaps_and_pinned_triggers() -> None:
    batch = spike_delay_stream(rng(7), 2, 60, 5)
    triggers = [np.flatnonzero(batch.x[:, b, 0]).tolist() for b in range(2)]
    assert triggers == [[10, 20, 29, 40, 46, 53], [6, 17, 27, 34, 41, 52, 58]]
    gaps = np.concatenate([np.diff(t) for t in triggers])
    assert gaps.min() >= 6 and gaps.max() <= 11  # defaults: delay + 1 .. 2 * delay + 1


def test_periodic_cosine_matches_the_formula() -> None:
    F, T = 25, 200
    batch = periodic_cosine(3, T, F, input_value=0.0)
    y = batch.y[..., 0]
    assert batch.x.shape == (T, 3, 1) and np.all(batch.x == 0.0) and batch.lengths is None
    expected = [0.5 * (1 - math.cos(2 * math.pi * t / F)) for t in range(T)]
    for b in range(3):
        np.testing.assert_allclose(y[:, b], expected, atol=1e-6)
    assert y[0, 0] == 0.0
    np.testing.assert_allclose(y[F:, 0], y[:-F, 0], atol=1e-6)
    even = periodic_cosine(1, 30, 10, dtype=np.float64).y[:, 0, 0]
    assert even[5] == pytest.approx(1.0) and even[10] == pytest.approx(0.0, abs=1e-12)
    assert even.min() >= 0.0 and even.max() <= 1.0


def test_periodic_cosine_phase_and_input() -> None:
    batch = periodic_cosine(3, 40, 10, phase=[0, 2.5, 5], input_value=1.0, dtype=np.float64)
    y = batch.y[..., 0]
    assert np.all(batch.x == 1.0) and batch.x.dtype == np.float64
    np.testing.assert_allclose(y[:-5, 2], y[5:, 0], atol=1e-12)  # half a period ahead
    assert y[0, 1] == pytest.approx(0.5)  # a quarter period in
    np.testing.assert_allclose(
        periodic_cosine(2, 20, 10, phase=3).y[:, 1, 0],
        periodic_cosine(1, 23, 10).y[3:, 0, 0],
        atol=1e-6,
    )
