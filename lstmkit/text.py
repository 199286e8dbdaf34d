"""Text corpora for character-level language models.

The pipeline is ``read_text`` -> ``Vocabulary.from_text`` -> ``Vocabulary.encode`` ->
``split_train_val`` -> ``StreamBatcher``. A *character* here is one Unicode code point, so
Japanese text works as it is, and an emoji with a skin-tone modifier or a ZWJ sequence is several
characters (which the model learns to emit together, as char-rnn does).
"""

from __future__ import annotations

import numbers
import os
import re
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "StreamBatcher",
    "TextError",
    "UnknownCharactersError",
    "UNKNOWN_DISPLAY",
    "Vocabulary",
    "held_out_start",
    "read_text",
    "split_train_val",
]

_BOM = b"\xef\xbb\xbf"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
# Control characters (Unicode category Cc) other than the ones text uses: \t \n \v \f \r.
_CONTROL = re.compile("[\x00-\x08\x0e-\x1f\x7f-\x9f]")
# A file whose characters are more than this fraction control characters is data, not text.
_MAX_CONTROL_FRACTION = 0.10
#: How :meth:`Vocabulary.decode` shows the unknown symbol: U+FFFD REPLACEMENT CHARACTER.
UNKNOWN_DISPLAY = "\ufffd"


class TextError(ValueError):
    """A text file, a vocabulary, or ids given to it are not what was expected."""


class UnknownCharactersError(TextError):
    """Text holds characters that the vocabulary lacks.

    Attributes:
        characters: the unknown characters, distinct and sorted.
    """

    def __init__(self, message: str, characters: Sequence[str]) -> None:
        super().__init__(message)
        self.characters = list(characters)


def _show(char: str) -> str:
    """A character as a reader can identify it even if it is invisible: ``'\\t' (U+0009)``."""
    return f"{char!r} (U+{ord(char):04X})"


def _position(data: bytes, offset: int) -> str:
    line = data.count(b"\n", 0, offset) + 1
    column = offset - (data.rfind(b"\n", 0, offset) + 1) + 1
    return f"byte offset {offset} (line {line}, byte {column} of the line)"


def read_text(path: str | os.PathLike[str]) -> str:
    """Read a UTF-8 text file whole, dropping a leading byte order mark.

    Nothing else is changed: line endings stay as they are in the file.

    Raises:
        TextError: the file is missing, is a directory, cannot be read, is empty, looks binary
            (holds NUL bytes, or is mostly control characters), is UTF-16, or is not valid
            UTF-8 -- in that case the message gives the byte offset of the first bad byte.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise TextError(f"{path} does not exist; expected a UTF-8 text file") from None
    except IsADirectoryError:
        raise TextError(f"{path} is a directory; expected a UTF-8 text file") from None
    except OSError as error:
        raise TextError(f"{path} cannot be read ({error.strerror})") from None

    if data.startswith(_UTF16_BOMS):
        raise TextError(f"{path} is UTF-16 text; lstmkit reads UTF-8: re-save the file as UTF-8")
    start = len(_BOM) if data.startswith(_BOM) else 0
    if len(data) == start:
        raise TextError(f"{path} is empty; expected UTF-8 text to train on")
    nul = data.find(b"\x00", start)
    if nul >= 0:
        raise TextError(
            f"{path} looks like a binary file, not text: it holds a NUL byte at "
            f"{_position(data, nul)}"
        )
    try:
        text = data[start:].decode("utf-8")
    except UnicodeDecodeError as error:
        offset = start + error.start
        raise TextError(
            f"{path} is not valid UTF-8: byte {data[offset]:#04x} at {_position(data, offset)} "
            f"cannot be decoded ({error.reason}); convert the file to UTF-8"
        ) from None

    controls = len(_CONTROL.findall(text))
    if controls > _MAX_CONTROL_FRACTION * len(text):
        raise TextError(
            f"{path} looks like a binary file, not text: {controls} of its {len(text)} "
            "characters are control characters"
        )
    return text


class Vocabulary:
    """A bijection between characters and ids ``0 .. len(vocab) - 1``, and an unknown symbol.

    Built from text, the characters are the distinct characters of the text sorted by code
    point, so the same text always gives the same ids. With ``unknown=True`` one more id,
    :attr:`unknown_id` ``= len(chars)``, stands for every character outside ``chars``: a
    model trained with it can read a text holding characters it never saw. The unknown id comes
    after the characters, so adding it changes no character's id, and a vocabulary saved
    without it (lstmkit 0.1's checkpoints) loads as it was.

    Example::

        vocab = Vocabulary.from_text(text, unknown=True)
        ids = vocab.encode("hello")         # int64 array, shape (5,)
        assert vocab.decode(ids) == "hello"
        vocab.encode("h\u00e9llo")          # UnknownCharactersError: '\u00e9' is not in it
        vocab.encode("h\u00e9llo", allow_unknown=True)   # '\u00e9' -> vocab.unknown_id
    """

    def __init__(self, chars: Sequence[str], unknown: bool = False) -> None:
        """Make a vocabulary whose id ``k`` is ``chars[k]``.

        Args:
            chars: distinct single characters, at least one.
            unknown: add the unknown symbol, id ``len(chars)``.
        """
        if isinstance(chars, str):
            chars = list(chars)
        chars = list(chars)
        if not isinstance(unknown, (bool, np.bool_)):
            raise TextError(f"unknown is {unknown!r}; expected True or False")
        if not chars:
            raise TextError("a vocabulary needs at least one character; got none")
        for char in chars:
            if not isinstance(char, str) or len(char) != 1:
                raise TextError(
                    f"vocabulary entry {char!r} is not a single character; expected a sequence "
                    "of one-character strings"
                )
        repeated = sorted(char for char, count in Counter(chars).items() if count > 1)
        if repeated:
            raise TextError(
                f"vocabulary characters must be distinct; repeated: "
                f"{', '.join(map(_show, repeated))}"
            )
        self._chars = tuple(chars)
        self._unknown = bool(unknown)
        self._ids = {char: i for i, char in enumerate(chars)}
        # For vectorised encoding: the code points in ascending order and their ids.
        code_points = np.array([ord(c) for c in chars], dtype=np.uint32)
        self._order = np.argsort(code_points).astype(np.int64)
        self._sorted_code_points = code_points[self._order]

    @classmethod
    def from_text(cls, text: str, unknown: bool = False, min_count: int = 1) -> Vocabulary:
        """The vocabulary of ``text``: its distinct characters, sorted by code point.

        Args:
            text: the text.
            unknown: add the unknown symbol (see the class docstring).
            min_count: leave out the characters that occur fewer times than this; they are read
                as the unknown symbol, which needs ``unknown=True``.
        """
        if not isinstance(text, str):
            raise TypeError(f"text is a {type(text).__name__}; expected a str")
        if not text:
            raise TextError("cannot build a vocabulary from empty text")
        if isinstance(min_count, bool) or not isinstance(min_count, (int, np.integer)) or (
            min_count < 1
        ):
            raise TextError(f"min_count is {min_count!r}; expected an integer >= 1")
        if min_count > 1 and not unknown:
            raise TextError(
                f"min_count={min_count} leaves rare characters out, which needs the unknown "
                "symbol to stand for them: pass unknown=True"
            )
        counts = Counter(text)
        chars = sorted(char for char, count in counts.items() if count >= min_count)
        if not chars:
            raise TextError(
                f"no character of the text occurs {min_count} times or more; lower min_count"
            )
        return cls(chars, unknown=unknown)

    @property
    def chars(self) -> tuple[str, ...]:
        """The characters, in id order (without the unknown symbol)."""
        return self._chars

    @property
    def unknown_id(self) -> int | None:
        """The id of the unknown symbol (``len(chars)``), or None if there is none."""
        return len(self._chars) if self._unknown else None

    def __len__(self) -> int:
        """The number of ids: the characters, plus one for the unknown symbol if there is one."""
        return len(self._chars) + self._unknown

    def __contains__(self, char: object) -> bool:
        return char in self._ids

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Vocabulary):
            return NotImplemented
        return self._chars == other._chars and self._unknown == other._unknown

    def __hash__(self) -> int:
        return hash((self._chars, self._unknown))

    def __repr__(self) -> str:
        preview = "".join(self._chars[:20])
        more = "..." if len(self._chars) > 20 else ""
        unknown = " and the unknown symbol" if self._unknown else ""
        return f"Vocabulary({len(self._chars)} characters{unknown}: {preview!r}{more})"

    def index(self, char: str) -> int:
        """The id of one character."""
        try:
            return self._ids[char]
        except (KeyError, TypeError):
            raise UnknownCharactersError(
                f"{char!r} is not in the vocabulary of {len(self._chars)} characters", [char]
            ) from None

    def encode(self, text: str, allow_unknown: bool = False) -> np.ndarray:
        """Ids of the characters of ``text``: int64, shape ``(len(text),)``.

        Args:
            text: the text.
            allow_unknown: read characters outside the vocabulary as :attr:`unknown_id`
                instead of refusing them (needs a vocabulary with the unknown symbol).

        Raises:
            UnknownCharactersError: ``text`` holds characters not in the vocabulary (and
                ``allow_unknown`` is False, or there is no unknown symbol); the message lists
                every one of them (its ``characters`` attribute too).
        """
        if not isinstance(text, str):
            raise TypeError(f"text is a {type(text).__name__}; expected a str")
        # UTF-32 gives one 4-byte code point per character, so the lookup can be vectorised.
        code_points = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")
        slots = np.searchsorted(self._sorted_code_points, code_points)
        slots = np.minimum(slots, len(self._chars) - 1)
        known = self._sorted_code_points[slots] == code_points
        ids = self._order[slots]
        if known.all():
            return ids
        if allow_unknown and self._unknown:
            ids[~known] = len(self._chars)
            return ids
        unknown = sorted({chr(int(cp)) for cp in np.unique(code_points[~known])})
        hint = ""
        if allow_unknown:
            hint = ("; this vocabulary has no unknown symbol to read them as (it was saved by "
                    "an older lstmkit): train the model again to have one")
        raise UnknownCharactersError(
            f"{len(unknown)} character{'s' if len(unknown) != 1 else ''} not in the "
            f"vocabulary of {len(self._chars)}: {', '.join(map(_show, unknown))}{hint}",
            unknown,
        )

    def unknown_characters(self, text: str) -> list[str]:
        """The distinct characters of ``text`` that are not in the vocabulary, sorted."""
        if not isinstance(text, str):
            raise TypeError(f"text is a {type(text).__name__}; expected a str")
        return sorted(set(text) - self._ids.keys())

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """The text that a sequence of ids stands for (the unknown symbol as U+FFFD).

        Args:
            ids: a 1-D sequence of integer ids in ``0 .. len(self) - 1``.
        """
        array = np.asarray(ids)
        if array.ndim != 1:
            raise TextError(f"ids have shape {array.shape}; expected a 1-D sequence of ids")
        if array.size == 0:
            return ""
        if array.dtype.kind not in "iu":
            raise TextError(f"ids have dtype {array.dtype}; expected integers")
        bad = (array < 0) | (array >= len(self))
        if bad.any():
            shown = ", ".join(str(i) for i in np.unique(array[bad])[:20])
            raise TextError(
                f"ids {shown} are out of range; this vocabulary has ids 0 to {len(self) - 1}"
            )
        chars = self._chars + ((UNKNOWN_DISPLAY,) if self._unknown else ())
        return "".join(chars[i] for i in array.tolist())

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready description, for a checkpoint's metadata.

        ``{"kind": "characters", "chars": [...]}``, with ``"unknown": true`` when the
        vocabulary has the unknown symbol (the key is absent otherwise, as lstmkit 0.1 wrote it).
        """
        data: dict[str, Any] = {"kind": "characters", "chars": list(self._chars)}
        if self._unknown:
            data["unknown"] = True
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Vocabulary:
        """Rebuild a vocabulary from :meth:`to_json` output (with or without ``"unknown"``)."""
        if (
            not isinstance(data, Mapping)
            or data.get("kind") != "characters"
            or not isinstance(data.get("chars"), list)
            or not isinstance(data.get("unknown", False), bool)
            or set(data) - {"kind", "chars", "unknown"}
        ):
            raise TextError(
                f"vocabulary data is {data!r:.100}; expected "
                '{"kind": "characters", "chars": [<one-character strings>]} and optionally '
                '"unknown": true'
            )
        return cls(data["chars"], unknown=data.get("unknown", False))


def _check_ids(ids: Any, argument: str = "ids") -> np.ndarray:
    array = np.asarray(ids)
    if array.ndim != 1:
        raise TextError(f"{argument} have shape {array.shape}; expected a 1-D array of ids")
    if array.size and array.dtype.kind not in "iu":
        raise TextError(f"{argument} have dtype {array.dtype}; expected integer ids")
    if array.size and array.min() < 0:
        raise TextError(f"{argument} hold the negative id {array.min()}; ids are >= 0")
    return array.astype(np.int64, copy=False)


def split_train_val(ids: Any, val_fraction: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Split encoded text into a training part and a held-out part: the LAST ``val_fraction``.

    The held-out part is one contiguous block at the end, so no validation text is seen during
    training, not even as a neighbour of a training window.

    Args:
        ids: 1-D integer ids of the whole text.
        val_fraction: the fraction to hold out, in ``[0, 1)``. It is rounded to whole characters
            but, when positive, at least one character goes to each part.

    Returns:
        ``(train, val)``: views of ``ids`` (int64).
    """
    array = _check_ids(ids)
    start = held_out_start(len(array), val_fraction)
    return array[:start], array[start:]


def held_out_start(length: int, val_fraction: float) -> int:
    """Where :func:`split_train_val` cuts a text of ``length`` characters: the held-out start."""
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, numbers.Real):
        raise TypeError(f"val_fraction is {val_fraction!r}; expected a number in [0, 1)")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction is {val_fraction}; expected a number in [0, 1)")
    if val_fraction == 0:
        return length
    if length < 2:
        raise TextError(
            f"the text has {length} character{'s' if length != 1 else ''}; splitting off a "
            "validation part needs at least 2"
        )
    return length - min(max(round(length * val_fraction), 1), length - 1)


class StreamBatcher:
    """Contiguous streams for truncated backpropagation through time (char-rnn, DLFS2 style).

    The ids are cut into ``batch_size`` equal contiguous streams (the last
    ``len(ids) % batch_size`` ids are dropped); stream ``b`` is column ``b`` of every batch.
    Each batch is ``(x, y)``, both int64 of shape ``(seq_len, batch_size)``, time-major, with
    ``y[t, b]`` the id after ``x[t, b]`` in stream ``b``. Successive batches continue each stream
    where the previous one stopped -- ``x`` of batch ``k + 1`` starts at the last ``y`` of batch
    ``k`` -- so the recurrent state at the end of one batch is the right initial state for the
    next. After the last full window of the streams the epoch ends and the next batch starts the
    streams again from their beginning (:attr:`at_epoch_start` tells the training loop to reset
    its state).

    Example::

        batcher = StreamBatcher(train_ids, batch_size=32, seq_len=64)
        for x, y in batcher:         # the rest of the current epoch
            ...
        x, y = batcher.next_batch()  # or one batch at a time, wrapping around epochs

    Args:
        ids: 1-D non-negative integer ids. The batcher keeps a view of them (no copy), so do
            not modify them while it is in use.
        batch_size: the number of streams, B >= 1.
        seq_len: the length T >= 1 of each window.
    """

    def __init__(self, ids: Any, batch_size: int, seq_len: int) -> None:
        for name, value in (("batch_size", batch_size), ("seq_len", seq_len)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} is {value!r}; expected an integer >= 1")
        array = _check_ids(ids)
        self.batch_size = int(batch_size)
        self.seq_len = int(seq_len)
        self.num_tokens = len(array)
        stream_length = len(array) // self.batch_size
        # Every stream needs seq_len inputs plus the one target after them.
        needed = self.batch_size * (self.seq_len + 1)
        if stream_length < self.seq_len + 1:
            raise TextError(
                f"the text has {len(array)} characters, too few for batch_size={self.batch_size} "
                f"and seq_len={self.seq_len}: each of the {self.batch_size} streams needs "
                f"seq_len + 1 = {self.seq_len + 1} characters, so at least {needed} are needed; "
                "use a longer text or a smaller batch_size or seq_len"
            )
        self._streams = array[: self.batch_size * stream_length].reshape(
            self.batch_size, stream_length
        )  # (B, L)
        self.batches_per_epoch = (stream_length - 1) // self.seq_len
        self.epoch = 0
        self.batch_index = 0

    def __len__(self) -> int:
        return self.batches_per_epoch

    def __repr__(self) -> str:
        return (
            f"StreamBatcher(num_tokens={self.num_tokens}, batch_size={self.batch_size}, "
            f"seq_len={self.seq_len}, epoch={self.epoch}, batch_index={self.batch_index})"
        )

    @property
    def at_epoch_start(self) -> bool:
        """True when the next batch starts the streams from their beginning."""
        return self.batch_index == 0

    def next_batch(self) -> tuple[np.ndarray, np.ndarray]:
        """The next ``(x, y)``, each int64 ``(seq_len, batch_size)``; wraps to a new epoch."""
        start = self.batch_index * self.seq_len
        window = self._streams[:, start : start + self.seq_len + 1]  # (B, T + 1)
        x = np.ascontiguousarray(window[:, :-1].T)  # (T, B)
        y = np.ascontiguousarray(window[:, 1:].T)  # (T, B)
        self.batch_index += 1
        if self.batch_index == self.batches_per_epoch:
            self.batch_index = 0
            self.epoch += 1
        return x, y

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The batches left in the current epoch (all of them at an epoch's start)."""
        while True:
            yield self.next_batch()
            if self.at_epoch_start:
                return

    def state_dict(self) -> dict[str, int]:
        """The position, as JSON-ready ints, so that training can resume at the same batch."""
        return {
            "epoch": self.epoch,
            "batch_index": self.batch_index,
            "batch_size": self.batch_size,
            "seq_len": self.seq_len,
            "num_tokens": self.num_tokens,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume at the position :meth:`state_dict` recorded.

        Raises:
            TextError: the state is malformed, or was saved for another text length,
                batch_size or seq_len (then the batches would differ).
        """
        keys = ("epoch", "batch_index", "batch_size", "seq_len", "num_tokens")
        if not isinstance(state, Mapping) or set(state) != set(keys):
            raise TextError(f"batcher state is {state!r:.200}; expected the keys {', '.join(keys)}")
        for key in keys:
            value = state[key]
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise TextError(f"batcher state {key!r} is {value!r}; expected an integer >= 0")
        mine = self.state_dict()
        differing = [k for k in ("num_tokens", "batch_size", "seq_len") if state[k] != mine[k]]
        if differing:
            saved = ", ".join(f"{k}={state[k]}" for k in differing)
            here = ", ".join(f"{k}={mine[k]}" for k in differing)
            raise TextError(
                f"batcher state was saved with {saved}, but this batcher has {here}; resume "
                "with the same text, batch_size and seq_len"
            )
        if state["batch_index"] >= self.batches_per_epoch:
            raise TextError(
                f"batcher state batch_index is {state['batch_index']}; expected less than "
                f"{self.batches_per_epoch}, the batches per epoch"
            )
        self.epoch = int(state["epoch"])
        self.batch_index = int(state["batch_index"])
