"""Tests for lstmkit.text: reading corpora, the character vocabulary, splitting and batching."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lstmkit.text import (
    StreamBatcher,
    TextError,
    UnknownCharactersError,
    Vocabulary,
    read_text,
    split_train_val,
)

JAPANESE = "映画おもしろかったね。ところで、とてもお腹が空いたから何か"
# A face, a thumbs-up with a skin tone (2 code points), a family joined by ZWJs (5 code points).
EMOJI = "😀 👍🏽 👨\u200d👩\u200d👧"


# ----------------------------------------------------------------------------------------------
# read_text


def test_read_text_japanese_and_emoji(tmp_path):
    text = f"{JAPANESE}\n{EMOJI}\nplain ASCII\r\nwindows line\n"
    path = tmp_path / "corpus.txt"
    path.write_bytes(text.encode("utf-8"))
    assert read_text(path) == text  # line endings are kept as they are
    assert read_text(str(path)) == text


def test_read_text_strips_one_bom(tmp_path):
    path = tmp_path / "bom.txt"
    path.write_bytes(b"\xef\xbb\xbf" + JAPANESE.encode("utf-8"))
    assert read_text(path) == JAPANESE
    # Only the leading BOM is a byte order mark; a second one is a character of the text.
    path.write_bytes(b"\xef\xbb\xbf\xef\xbb\xbfab")
    assert read_text(path) == "\ufeffab"


def test_read_text_missing_file(tmp_path):
    with pytest.raises(TextError, match=r"nope\.txt does not exist; expected a UTF-8 text file"):
        read_text(tmp_path / "nope.txt")


def test_read_text_directory(tmp_path):
    with pytest.raises(TextError, match="is a directory"):
        read_text(tmp_path)


@pytest.mark.parametrize("content", [b"", b"\xef\xbb\xbf"], ids=["empty", "bom-only"])
def test_read_text_empty(tmp_path, content):
    path = tmp_path / "empty.txt"
    path.write_bytes(content)
    with pytest.raises(TextError, match=r"empty\.txt is empty"):
        read_text(path)


def test_read_text_nul_bytes_mean_binary(tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(b"abc\ndef\x00\x01\x02")
    with pytest.raises(TextError, match=r"binary.*NUL byte at byte offset 7 \(line 2"):
        read_text(path)


def test_read_text_mostly_control_characters_mean_binary(tmp_path):
    path = tmp_path / "data.txt"
    path.write_bytes(bytes(range(1, 32)) * 10 + b"some text")
    with pytest.raises(TextError, match=r"binary.*control characters"):
        read_text(path)


def test_read_text_a_few_control_characters_are_fine(tmp_path):
    text = "line\twith tab\x1b[1m bold\x1b[0m and a form feed\f\n" * 3
    path = tmp_path / "ok.txt"
    path.write_text(text, encoding="utf-8", newline="")
    assert read_text(path) == text


def test_read_text_reports_offset_of_bad_utf8(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("line one\ncafé\n".encode("latin-1"))
    with pytest.raises(TextError) as caught:
        read_text(path)
    message = str(caught.value)
    assert "latin1.txt is not valid UTF-8" in message
    assert "byte 0xe9 at byte offset 12 (line 2, byte 4 of the line)" in message


def test_read_text_bad_utf8_offset_counts_the_bom(tmp_path):
    path = tmp_path / "bom-then-bad.txt"
    path.write_bytes(b"\xef\xbb\xbfab\xff")
    with pytest.raises(TextError, match="byte 0xff at byte offset 5 "):
        read_text(path)


def test_read_text_truncated_multibyte_character(tmp_path):
    path = tmp_path / "cut.txt"
    path.write_bytes(JAPANESE.encode("utf-8")[:-1])  # the last character loses a byte
    with pytest.raises(TextError, match="not valid UTF-8"):
        read_text(path)


def test_read_text_utf16_is_named(tmp_path):
    path = tmp_path / "utf16.txt"
    path.write_bytes(JAPANESE.encode("utf-16"))
    with pytest.raises(TextError, match="is UTF-16 text; lstmkit reads UTF-8"):
        read_text(path)


# ----------------------------------------------------------------------------------------------
# Vocabulary


def test_vocabulary_is_sorted_distinct_and_deterministic():
    vocab = Vocabulary.from_text("hello world")
    assert vocab.chars == (" ", "d", "e", "h", "l", "o", "r", "w")
    assert len(vocab) == 8
    assert Vocabulary.from_text("dlrow olleh") == vocab
    assert "h" in vocab and "z" not in vocab


def test_vocabulary_round_trip_japanese_and_emoji():
    text = JAPANESE + EMOJI
    vocab = Vocabulary.from_text(text)
    ids = vocab.encode(text)
    assert ids.dtype == np.int64
    assert ids.shape == (len(text),)
    assert vocab.decode(ids) == text
    assert vocab.decode(list(ids)) == text
    assert [vocab.chars[i] for i in ids] == list(text)
    # The skin-tone modifier and the zero-width joiner are characters of their own.
    assert "\U0001f3fd" in vocab and "\u200d" in vocab
    assert vocab.index("映") == vocab.chars.index("映")


def test_encode_lists_every_unknown_character():
    vocab = Vocabulary.from_text("abc")
    with pytest.raises(UnknownCharactersError) as caught:
        vocab.encode("abxzy\tx😀a")
    error = caught.value
    assert isinstance(error, TextError) and isinstance(error, ValueError)
    assert error.characters == ["\t", "x", "y", "z", "😀"]
    message = str(error)
    assert "5 characters not in the vocabulary of 3" in message
    for shown in ["'\\t' (U+0009)", "'x' (U+0078)", "'y' (U+0079)", "'z' (U+007A)", "(U+1F600)"]:
        assert shown in message


def test_encode_empty_text():
    ids = Vocabulary.from_text("ab").encode("")
    assert ids.dtype == np.int64 and ids.shape == (0,)


def test_index_of_unknown_character():
    with pytest.raises(UnknownCharactersError, match="'q' is not in the vocabulary"):
        Vocabulary.from_text("ab").index("q")


def test_vocabulary_json_round_trip():
    vocab = Vocabulary.from_text(JAPANESE + EMOJI + "\n\t ")
    data = json.loads(json.dumps(vocab.to_json()))
    restored = Vocabulary.from_json(data)
    assert restored == vocab
    assert restored.chars == vocab.chars
    assert np.array_equal(restored.encode(JAPANESE), vocab.encode(JAPANESE))


@pytest.mark.parametrize(
    "data",
    [
        None,
        ["a", "b"],
        {"chars": ["a"]},
        {"kind": "words", "chars": ["a"]},
        {"kind": "characters", "chars": "ab"},
        {"kind": "characters", "chars": ["ab"]},
        {"kind": "characters", "chars": []},
        {"kind": "characters", "chars": ["a", "a"]},
    ],
)
def test_vocabulary_from_bad_json(data):
    with pytest.raises(TextError):
        Vocabulary.from_json(data)


def test_vocabulary_constructor_checks():
    assert Vocabulary("ba").chars == ("b", "a")  # explicit order is kept
    with pytest.raises(TextError, match="repeated: 'a' \\(U\\+0061\\)"):
        Vocabulary(["a", "b", "a"])
    with pytest.raises(TextError, match="not a single character"):
        Vocabulary(["a", 1])
    with pytest.raises(TextError, match="empty text"):
        Vocabulary.from_text("")


def test_decode_errors():
    vocab = Vocabulary.from_text("abc")
    with pytest.raises(TextError, match=r"ids -1, 3, 7 are out of range; .* ids 0 to 2"):
        vocab.decode([0, 3, -1, 7, 3])
    with pytest.raises(TextError, match="expected a 1-D sequence"):
        vocab.decode(np.zeros((2, 2), dtype=np.int64))
    with pytest.raises(TextError, match="expected integers"):
        vocab.decode([0.5, 1.0])
    assert vocab.decode([]) == ""


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.text(min_size=1))
def test_encode_decode_round_trip_any_text(text):
    vocab = Vocabulary.from_text(text)
    ids = vocab.encode(text)
    assert vocab.decode(ids) == text
    assert ids.min() >= 0 and ids.max() < len(vocab)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.text(min_size=1), st.text())
def test_unknown_characters_are_exactly_the_missing_ones(known, text):
    vocab = Vocabulary.from_text(known)
    missing = sorted(set(text) - set(known))
    if missing:
        with pytest.raises(UnknownCharactersError) as caught:
            vocab.encode(text)
        assert caught.value.characters == missing
    else:
        assert vocab.decode(vocab.encode(text)) == text


def test_unknown_symbol_comes_after_the_characters_and_keeps_their_ids():
    plain = Vocabulary.from_text(JAPANESE)
    vocab = Vocabulary.from_text(JAPANESE, unknown=True)
    assert vocab.chars == plain.chars and vocab != plain
    assert plain.unknown_id is None and len(plain) == len(plain.chars)
    assert vocab.unknown_id == len(vocab.chars) and len(vocab) == len(vocab.chars) + 1
    assert np.array_equal(vocab.encode(JAPANESE), plain.encode(JAPANESE))
    text = "とても犬が好き"  # 犬 好 き are not in the vocabulary
    with pytest.raises(UnknownCharactersError) as caught:
        vocab.encode(text)  # refused unless asked for
    assert caught.value.characters == ["き", "好", "犬"]
    ids = vocab.encode(text, allow_unknown=True)
    assert ids.tolist() == [vocab.index(c) if c in vocab else vocab.unknown_id for c in text]
    assert vocab.decode(ids) == "とても\ufffdが\ufffd\ufffd"
    assert vocab.unknown_characters(text) == ["き", "好", "犬"]
    with pytest.raises(UnknownCharactersError, match="no unknown symbol"):
        plain.encode(text, allow_unknown=True)
    with pytest.raises(TextError, match="out of range"):
        plain.decode([len(plain)])


def test_unknown_symbol_json_round_trip_and_older_vocabularies():
    vocab = Vocabulary.from_text("abc", unknown=True)
    data = json.loads(json.dumps(vocab.to_json()))
    assert data == {"kind": "characters", "chars": ["a", "b", "c"], "unknown": True}
    assert Vocabulary.from_json(data) == vocab
    # What lstmkit 0.1 wrote: no "unknown" key; it loads as it was, without the symbol.
    old = Vocabulary.from_json({"kind": "characters", "chars": ["a", "b", "c"]})
    assert old.unknown_id is None and old.to_json() == {"kind": "characters",
                                                        "chars": ["a", "b", "c"]}
    for bad in ({"kind": "characters", "chars": ["a"], "unknown": "yes"},
                {"kind": "characters", "chars": ["a"], "unknown": True, "extra": 1}):
        with pytest.raises(TextError, match="expected"):
            Vocabulary.from_json(bad)


def test_min_count_folds_rare_characters_into_the_unknown_symbol():
    vocab = Vocabulary.from_text("aabbbc", unknown=True, min_count=2)
    assert vocab.chars == ("a", "b") and vocab.unknown_id == 2
    assert vocab.encode("abc", allow_unknown=True).tolist() == [0, 1, 2]
    with pytest.raises(TextError, match="unknown=True"):
        Vocabulary.from_text("aabbbc", min_count=2)
    with pytest.raises(TextError, match="lower min_count"):
        Vocabulary.from_text("abc", unknown=True, min_count=2)


# ----------------------------------------------------------------------------------------------
# split_train_val


def test_split_holds_out_the_last_fraction():
    ids = np.arange(100)
    train, val = split_train_val(ids, val_fraction=0.1)
    assert np.array_equal(train, np.arange(90))
    assert np.array_equal(val, np.arange(90, 100))
    assert train.dtype == np.int64 and val.dtype == np.int64


def test_split_rounds_and_keeps_both_parts_non_empty():
    train, val = split_train_val(np.arange(7), val_fraction=0.25)
    assert (len(train), len(val)) == (5, 2)
    train, val = split_train_val(np.arange(5), val_fraction=0.01)
    assert (len(train), len(val)) == (4, 1)
    train, val = split_train_val(np.arange(5), val_fraction=0.99)
    assert (len(train), len(val)) == (1, 4)
    train, val = split_train_val([3, 1, 2], val_fraction=0.0)
    assert list(train) == [3, 1, 2] and len(val) == 0


@pytest.mark.parametrize("fraction", [1.0, -0.1, 1.5])
def test_split_rejects_fraction_out_of_range(fraction):
    with pytest.raises(ValueError, match=r"expected a number in \[0, 1\)"):
        split_train_val(np.arange(10), val_fraction=fraction)


def test_split_rejects_bad_ids():
    with pytest.raises(TextError, match="needs at least 2"):
        split_train_val(np.arange(1), 0.5)
    with pytest.raises(TextError, match="1-D"):
        split_train_val(np.zeros((2, 3), dtype=np.int64))
    with pytest.raises(TextError, match="integer ids"):
        split_train_val(np.linspace(0, 1, 5))
    with pytest.raises(TextError, match="negative id -2"):
        split_train_val(np.array([1, -2, 3]))


# ----------------------------------------------------------------------------------------------
# StreamBatcher


def _collect(batcher: StreamBatcher, count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    return [batcher.next_batch() for _ in range(count)]


def test_batches_are_time_major_contiguous_streams():
    ids = np.arange(1000)
    batcher = StreamBatcher(ids, batch_size=4, seq_len=10)
    stream_length = 250
    assert len(batcher) == batcher.batches_per_epoch == (stream_length - 1) // 10 == 24
    x, y = batcher.next_batch()
    assert x.shape == y.shape == (10, 4)
    assert x.dtype == np.int64 and y.dtype == np.int64
    assert x.flags.c_contiguous and y.flags.c_contiguous
    for b in range(4):
        start = b * stream_length
        assert np.array_equal(x[:, b], ids[start : start + 10])
        assert np.array_equal(y[:, b], ids[start + 1 : start + 11])


def test_batches_continue_each_stream():
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 50, size=2003)  # 2003 % 3 = 2 ids are dropped
    batcher = StreamBatcher(ids, batch_size=3, seq_len=7)
    batches = _collect(batcher, batcher.batches_per_epoch)
    for x, y in batches:
        assert np.array_equal(x[1:], y[:-1])  # y is x shifted by one within each stream
    for (_, y_k), (x_next, _) in zip(batches, batches[1:]):
        # The last target of batch k is the first input of batch k + 1, in every stream.
        assert np.array_equal(y_k[-1], x_next[0])
    # Read back, the inputs of one epoch are each stream from its start, without gaps.
    stream_length = 2003 // 3
    inputs = np.concatenate([x for x, _ in batches], axis=0)  # (epoch_steps * T, B)
    for b in range(3):
        stream = ids[b * stream_length : (b + 1) * stream_length]
        assert np.array_equal(inputs[:, b], stream[: len(inputs)])


def test_epoch_wraps_around():
    ids = np.arange(2 * 23)  # streams of 23: (23 - 1) // 5 = 4 batches, the tail is dropped
    batcher = StreamBatcher(ids, batch_size=2, seq_len=5)
    assert batcher.at_epoch_start
    first_epoch = list(batcher)
    assert len(first_epoch) == 4
    assert batcher.epoch == 1 and batcher.at_epoch_start
    assert first_epoch[-1][1][-1, 0] == 20  # the last target of stream 0
    x, y = batcher.next_batch()
    assert np.array_equal(x, first_epoch[0][0]) and np.array_equal(y, first_epoch[0][1])
    assert not batcher.at_epoch_start
    assert len(list(batcher)) == 3  # iteration yields what is left of the current epoch
    assert batcher.epoch == 2


def test_shortest_text_gives_one_batch_per_epoch():
    batcher = StreamBatcher(np.arange(24), batch_size=4, seq_len=5)
    assert batcher.batches_per_epoch == 1
    x1, _ = batcher.next_batch()
    x2, _ = batcher.next_batch()
    assert np.array_equal(x1, x2) and batcher.epoch == 2


def test_too_short_text_says_how_much_is_needed():
    with pytest.raises(TextError) as caught:
        StreamBatcher(np.arange(23), batch_size=4, seq_len=5)
    message = str(caught.value)
    assert "23 characters" in message
    assert "seq_len + 1 = 6" in message
    assert "at least 24 are needed" in message


@pytest.mark.parametrize(
    ("batch_size", "seq_len"), [(0, 5), (2, 0), (-1, 5), (True, 5), (2.0, 5), (2, None)]
)
def test_batcher_rejects_bad_sizes(batch_size, seq_len):
    with pytest.raises(ValueError, match="expected an integer >= 1"):
        StreamBatcher(np.arange(100), batch_size=batch_size, seq_len=seq_len)


def test_state_resume_reproduces_the_same_batches():
    ids = np.random.default_rng(1).integers(0, 30, size=997)
    reference = StreamBatcher(ids, batch_size=5, seq_len=8)
    expected = _collect(reference, 40)  # crosses an epoch boundary: 24 batches per epoch

    for stop in (0, 7, 23, 24, 31):
        first = StreamBatcher(ids, batch_size=5, seq_len=8)
        _collect(first, stop)
        state = json.loads(json.dumps(first.state_dict()))  # as a checkpoint stores it
        resumed = StreamBatcher(ids, batch_size=5, seq_len=8)
        resumed.load_state_dict(state)
        assert resumed.epoch == stop // 24
        for x_expected, y_expected in expected[stop:]:
            x, y = resumed.next_batch()
            assert np.array_equal(x, x_expected) and np.array_equal(y, y_expected)


def test_load_state_dict_rejects_another_setup():
    ids = np.arange(500)
    state = StreamBatcher(ids, batch_size=4, seq_len=10).state_dict()
    with pytest.raises(TextError, match="saved with seq_len=10, but this batcher has seq_len=9"):
        StreamBatcher(ids, batch_size=4, seq_len=9).load_state_dict(state)
    with pytest.raises(TextError, match="num_tokens=500, but this batcher has num_tokens=499"):
        StreamBatcher(ids[:-1], batch_size=4, seq_len=10).load_state_dict(state)
    batcher = StreamBatcher(ids, batch_size=4, seq_len=10)
    with pytest.raises(TextError, match="expected the keys"):
        batcher.load_state_dict({"epoch": 0})
    with pytest.raises(TextError, match="'batch_index' is -1"):
        batcher.load_state_dict({**state, "batch_index": -1})
    with pytest.raises(TextError, match="expected less than 12"):
        batcher.load_state_dict({**state, "batch_index": 12})
    assert batcher.state_dict() == state  # nothing was changed by the refused loads


def test_pipeline_on_japanese_text():
    text = (JAPANESE + EMOJI + "\n") * 20
    vocab = Vocabulary.from_text(text)
    train, val = split_train_val(vocab.encode(text), val_fraction=0.1)
    assert vocab.decode(val) == text[-len(val) :]
    batcher = StreamBatcher(train, batch_size=4, seq_len=16)
    x, y = batcher.next_batch()
    stream_length = len(train) // 4
    assert vocab.decode(x[:, 0]) == text[:16]
    assert vocab.decode(y[:, 1]) == text[stream_length + 1 : stream_length + 17]
