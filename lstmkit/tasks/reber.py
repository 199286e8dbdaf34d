"""The Reber grammar, the embedded Reber grammar, and the continual embedded Reber stream.

The Reber grammar (Reber 1967, in the form used by Cleeremans, Servan-Schreiber & McClelland
1989 and by Hochreiter & Schmidhuber 1997, Experiment 1) is the finite automaton below. Every
string starts with B and ends with E; where a state has two outgoing edges each is taken with
probability 1/2::

    state 0 --B--> 1
    state 1 --T--> 2      state 1 --P--> 3
    state 2 --S--> 2      state 2 --X--> 4
    state 3 --T--> 3      state 3 --V--> 5
    state 4 --X--> 3      state 4 --S--> 6
    state 5 --P--> 4      state 5 --V--> 6
    state 6 --E--> accept

e.g. BTXSE, BPVVE, BTSSXXTVVE, BPVPXVVE. The mean length of a string is 8.

The embedded Reber grammar wraps one Reber string: B, then T or P (probability 1/2 each), the
Reber string, the *same* T or P again, E; e.g. BT BPVVE TE. Predicting the symbol before the
final E needs the second symbol, remembered across the whole inner string: this is the
long-range dependency (Hochreiter & Schmidhuber 1997, Experiment 1).

The continual embedded Reber grammar (Gers, Schmidhuber & Cummins 2000, "Learning to Forget:
Continual Prediction with LSTM", Neural Computation 12(10)) concatenates embedded strings into
one stream that is never reset; after each final E the next symbol is the B of the next string.
The network sees one symbol per step and must predict the set of legal next symbols.

One-hot channels are in the order of ``REBER_SYMBOLS``: B, T, P, S, X, V, E.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import DTypeLike

from lstmkit.tasks.batch import check_float_dtype, check_int, check_rng

REBER_SYMBOLS: tuple[str, ...] = ("B", "T", "P", "S", "X", "V", "E")
"""The seven symbols, in the order of the one-hot channels."""

_INDEX = {symbol: i for i, symbol in enumerate(REBER_SYMBOLS)}

Graph = dict[Hashable, dict[str, Hashable]]

_REBER_ACCEPT = 7
REBER_GRAPH: Graph = {
    0: {"B": 1},
    1: {"T": 2, "P": 3},
    2: {"S": 2, "X": 4},
    3: {"T": 3, "V": 5},
    4: {"X": 3, "S": 6},
    5: {"P": 4, "V": 6},
    6: {"E": _REBER_ACCEPT},
    _REBER_ACCEPT: {},
}
"""The Reber automaton: state -> {symbol: next state}; state 0 is the start, 7 accepts."""


def _embed(inner: Graph, inner_start: Hashable, inner_accept: Hashable) -> Graph:
    """Build the embedded grammar's automaton around the Reber automaton ``inner``.

    Its states remember the branch (T or P) taken after the first B, so that the symbol after
    the inner string is forced to repeat it.
    """
    graph: Graph = {"start": {"B": "fork"}, "fork": {}}
    for branch in ("T", "P"):
        graph["fork"][branch] = (branch, inner_start)
        for state, edges in inner.items():
            graph[(branch, state)] = {symbol: (branch, nxt) for symbol, nxt in edges.items()}
        graph[(branch, inner_accept)] = {branch: (branch, "end")}
        graph[(branch, "end")] = {"E": "accept"}
    graph["accept"] = {}
    return graph


EMBEDDED_REBER_GRAPH: Graph = _embed(REBER_GRAPH, 0, _REBER_ACCEPT)
"""The embedded Reber automaton; states "start" and "accept" begin and end a string."""


def _generate(rng: np.random.Generator, graph: Graph, start: Hashable) -> list[str]:
    """Walk ``graph`` from ``start`` to a state without edges, choosing edges uniformly."""
    symbols: list[str] = []
    state = start
    while graph[state]:
        edges = list(graph[state].items())
        # Only real choices draw from rng, so forced steps leave its stream untouched.
        symbol, state = edges[int(rng.integers(len(edges)))] if len(edges) > 1 else edges[0]
        symbols.append(symbol)
    return symbols


def _walk(graph: Graph, start: Hashable, symbols: Sequence[str], name: str) -> list[Hashable]:
    """Return the states reached after each symbol, or raise ValueError at the first illegal one."""
    states: list[Hashable] = []
    state = start
    for position, symbol in enumerate(symbols):
        edges = graph[state]
        if symbol not in edges:
            legal = "/".join(edges) if edges else "nothing (the string has ended)"
            raise ValueError(
                f"not a prefix of the {name}: symbol {position} of {''.join(symbols)!r} is "
                f"{symbol!r}, but only {legal} may follow {''.join(symbols[:position])!r}"
            )
        state = edges[symbol]
        states.append(state)
    return states


def _accepts(graph: Graph, start: Hashable, symbols: Sequence[str], name: str) -> bool:
    try:
        states = _walk(graph, start, symbols, name)
    except ValueError:
        return False
    return bool(states) and not graph[states[-1]]


def _legal_next(
    graph: Graph, start: Hashable, symbols: Sequence[str], name: str
) -> list[frozenset[str]]:
    return [frozenset(graph[state]) for state in _walk(graph, start, symbols, name)]


def reber_string(rng: np.random.Generator) -> list[str]:
    """Draw one string of the Reber grammar, e.g. ``['B', 'T', 'X', 'S', 'E']``."""
    return _generate(check_rng(rng), REBER_GRAPH, 0)


def embedded_reber_string(rng: np.random.Generator) -> list[str]:
    """Draw one string of the embedded Reber grammar, e.g. ``list('BTBPVVETE')``."""
    return _generate(check_rng(rng), EMBEDDED_REBER_GRAPH, "start")


def is_reber(symbols: Sequence[str]) -> bool:
    """True when ``symbols`` is a complete string of the Reber grammar."""
    return _accepts(REBER_GRAPH, 0, symbols, "Reber grammar")


def is_embedded_reber(symbols: Sequence[str]) -> bool:
    """True when ``symbols`` is a complete string of the embedded Reber grammar."""
    return _accepts(EMBEDDED_REBER_GRAPH, "start", symbols, "embedded Reber grammar")


def reber_legal_next(symbols: Sequence[str]) -> list[frozenset[str]]:
    """The legal next symbols after each prefix of a Reber string (or of a prefix of one).

    Args:
        symbols: a string of the Reber grammar or a prefix of one, e.g. ``"BTXSE"``.

    Returns:
        One set per symbol: entry t holds the symbols that may follow ``symbols[:t + 1]``;
        after the final E it is empty. E.g. for BTXSE: {T, P}, {S, X}, {X, S}, {E}, {}.

    Raises:
        ValueError: if ``symbols`` is not a prefix of a Reber string; the message says where.
    """
    return _legal_next(REBER_GRAPH, 0, symbols, "Reber grammar")


def embedded_reber_legal_next(symbols: Sequence[str]) -> list[frozenset[str]]:
    """The legal next symbols after each prefix of an embedded Reber string (or of a prefix).

    After the inner string's E the set is the single symbol equal to the string's second
    symbol (T or P): the long-range prediction. E.g. for BTBPVVETE: {T, P}, {B}, {T, P},
    {T, V}, {P, V}, {E}, {T}, {E}, {}.

    Raises:
        ValueError: if ``symbols`` is not a prefix of an embedded Reber string.
    """
    return _legal_next(EMBEDDED_REBER_GRAPH, "start", symbols, "embedded Reber grammar")


def reber_one_hot(symbols: Sequence[str], dtype: DTypeLike = np.float32) -> np.ndarray:
    """One-hot code symbols of the Reber alphabet: shape (len(symbols), 7)."""
    dtype = check_float_dtype(dtype)
    unknown = sorted({s for s in symbols if s not in _INDEX})
    if unknown:
        raise ValueError(f"symbols must be among {''.join(REBER_SYMBOLS)}; got {unknown}")
    codes = np.array([_INDEX[s] for s in symbols], dtype=np.int64)
    return np.eye(len(REBER_SYMBOLS), dtype=dtype)[codes].reshape(len(codes), len(REBER_SYMBOLS))


def reber_multi_hot(sets: Sequence[frozenset[str]], dtype: DTypeLike = np.float32) -> np.ndarray:
    """Multi-hot code sets of Reber symbols (e.g. legal-next sets): shape (len(sets), 7)."""
    dtype = check_float_dtype(dtype)
    out = np.zeros((len(sets), len(REBER_SYMBOLS)), dtype=dtype)
    for t, symbols in enumerate(sets):
        for s in symbols:
            if s not in _INDEX:
                raise ValueError(f"symbols must be among {''.join(REBER_SYMBOLS)}; got {s!r}")
            out[t, _INDEX[s]] = 1.0
    return out


@dataclass(frozen=True)
class ReberStream:
    """A continual embedded Reber stream, one symbol per step.

    Shapes are (T, ...) for one stream and (T, B, ...) for B streams side by side.

    Attributes:
        x: one-hot input symbols, (T, 7) or (T, B, 7).
        y: multi-hot legal next symbols after each input, same shape as x. After a string's
            final E the legal next symbol is B, the start of the next string.
        boundary: bool, (T,) or (T, B): true at the first symbol (the outer B) of each string,
            where a network with external resets would reset its state.
        long_range: bool, (T,) or (T, B): true at the inner string's E, the input at which the
            network must predict the T or P that repeats the string's second symbol.
        long_range_symbol: int64, (T,) or (T, B): at ``long_range`` steps the channel index
            (into ``REBER_SYMBOLS``) of that T or P, elsewhere -1.
    """

    x: np.ndarray
    y: np.ndarray
    boundary: np.ndarray
    long_range: np.ndarray
    long_range_symbol: np.ndarray

    def __len__(self) -> int:
        return self.x.shape[0]


def _stream_from_strings(strings: Sequence[Sequence[str]], dtype: np.dtype) -> ReberStream:
    symbols: list[str] = []
    sets: list[frozenset[str]] = []
    boundary: list[bool] = []
    long_range_symbol: list[int] = []
    for string in strings:
        legal = embedded_reber_legal_next(string)
        legal[-1] = frozenset("B")  # the stream goes on with the next string
        symbols.extend(string)
        sets.extend(legal)
        boundary.extend([True] + [False] * (len(string) - 1))
        marks = [-1] * len(string)
        marks[-3] = _INDEX[string[1]]  # input: the inner E; next: the repeated T/P
        long_range_symbol.extend(marks)
    lr = np.array(long_range_symbol, dtype=np.int64)
    return ReberStream(
        x=reber_one_hot(symbols, dtype),
        y=reber_multi_hot(sets, dtype),
        boundary=np.array(boundary, dtype=bool),
        long_range=lr >= 0,
        long_range_symbol=lr,
    )


def continual_embedded_reber(
    rng: np.random.Generator, n_strings: int, dtype: DTypeLike = np.float32
) -> ReberStream:
    """One continual embedded Reber stream of ``n_strings`` strings (Gers et al. 2000).

    Args:
        rng: the only source of randomness.
        n_strings: how many embedded strings to concatenate, >= 1.
        dtype: float32 (default) or float64 for x and y.

    Returns:
        ``ReberStream`` with arrays of length T = total number of symbols (12 per string on
        average): x, y of shape (T, 7); boundary, long_range, long_range_symbol of shape (T,).
    """
    rng = check_rng(rng)
    n_strings = check_int("n_strings", n_strings, 1)
    dtype = check_float_dtype(dtype)
    return _stream_from_strings([embedded_reber_string(rng) for _ in range(n_strings)], dtype)


def continual_embedded_reber_batch(
    rng: np.random.Generator, n_streams: int, n_steps: int, dtype: DTypeLike = np.float32
) -> ReberStream:
    """B independent continual embedded Reber streams side by side, each ``n_steps`` long.

    Each stream is generated string after string (stream 0 first, then stream 1, ...) until it
    holds at least ``n_steps`` symbols, then cut at ``n_steps``: the last string of a stream is
    usually incomplete, as a stream that is never reset has no natural end. Cut the result
    with :func:`chunk_stream` for truncated backpropagation through time.

    Args:
        rng: the only source of randomness.
        n_streams: B, >= 1.
        n_steps: T, the number of symbols per stream, >= 1.
        dtype: float32 (default) or float64 for x and y.

    Returns:
        ``ReberStream`` with x, y of shape (T, B, 7) and the three masks of shape (T, B).
    """
    rng = check_rng(rng)
    n_streams = check_int("n_streams", n_streams, 1)
    n_steps = check_int("n_steps", n_steps, 1)
    dtype = check_float_dtype(dtype)
    streams = []
    for _ in range(n_streams):
        strings: list[list[str]] = []
        total = 0
        while total < n_steps:
            strings.append(embedded_reber_string(rng))
            total += len(strings[-1])
        streams.append(_stream_from_strings(strings, dtype))
    return ReberStream(
        x=np.stack([s.x[:n_steps] for s in streams], axis=1),
        y=np.stack([s.y[:n_steps] for s in streams], axis=1),
        boundary=np.stack([s.boundary[:n_steps] for s in streams], axis=1),
        long_range=np.stack([s.long_range[:n_steps] for s in streams], axis=1),
        long_range_symbol=np.stack([s.long_range_symbol[:n_steps] for s in streams], axis=1),
    )


def chunk_stream(stream: ReberStream, chunk_len: int) -> list[ReberStream]:
    """Cut a stream along time into consecutive chunks for truncated BPTT.

    Feed the chunks in order and carry the network state from one to the next: the streams
    continue across chunk boundaries. With (T, B, 7) input every chunk is (chunk_len, B, 7);
    the last is shorter when chunk_len does not divide T.

    Args:
        stream: a ``ReberStream`` of one (T, 7) or several (T, B, 7) streams.
        chunk_len: the number of steps per chunk, >= 1.

    Returns:
        ceil(T / chunk_len) ``ReberStream`` chunks that concatenate back to ``stream``.
    """
    chunk_len = check_int("chunk_len", chunk_len, 1)
    return [
        ReberStream(
            x=stream.x[start : start + chunk_len],
            y=stream.y[start : start + chunk_len],
            boundary=stream.boundary[start : start + chunk_len],
            long_range=stream.long_range[start : start + chunk_len],
            long_range_symbol=stream.long_range_symbol[start : start + chunk_len],
        )
        for start in range(0, len(stream), chunk_len)
    ]
