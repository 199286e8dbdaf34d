"""Tests for lstmkit.sampling: temperature, top-k, priming, seeding, errors."""

from __future__ import annotations

import numpy as np
import pytest

from lstmkit.engine import kernels
from lstmkit.models import CharLM
from lstmkit.sampling import next_char_probabilities, sample
from lstmkit.text import UnknownCharactersError, Vocabulary
from lstmkit.train import TrainConfig, load_charlm, train

JAPANESE = "吾輩は猫である。名前はまだ無い。"


@pytest.fixture(autouse=True, scope="module")
def reference_recurrence():
    """Test the loop on the reference recurrence: for these tiny models it is as fast, and no
    test waits for the fused kernels to compile."""
    enabled = kernels.is_enabled()
    kernels.set_enabled(False)
    yield
    kernels.set_enabled(enabled)


@pytest.fixture(scope="module")
def cyclic(tmp_path_factory):
    """A model trained on "abcd" repeated: greedy sampling must continue the cycle."""
    out = tmp_path_factory.mktemp("cyclic")
    config = TrainConfig(num_layers=1, hidden_size=16, embedding_dim=8, dropout=0.0, seq_len=8,
                         batch_size=2, steps=80, eval_every=80, sample_every=0, lr=3e-2,
                         patience=0, seed=0)
    train("abcd" * 60, out, config, quiet=True)
    model, vocab, _ = load_charlm(out)
    return model, vocab


@pytest.fixture()
def untrained():
    vocab = Vocabulary.from_text("abcdefgh ." + JAPANESE)
    return CharLM(len(vocab), 16, num_layers=2, embedding_dim=8, dropout=0.2, seed=0), vocab


def test_prime_warms_the_state_up(cyclic):
    model, vocab = cyclic
    assert sample(model, vocab, 9, prime="ab", temperature=0) == "cdabcdabc"
    assert sample(model, vocab, 6, prime="abcdabc", temperature=0) == "dabcda"
    assert sample(model, vocab, 4, prime="abcda", top_k=1, seed=5) == "bcda"


def test_same_seed_same_text_and_seeds_differ(untrained):
    model, vocab = untrained
    first = sample(model, vocab, 60, prime="a", seed=7)
    assert len(first) == 60 and set(first) <= set(vocab.chars)
    assert sample(model, vocab, 60, prime="a", seed=7) == first
    assert sample(model, vocab, 60, prime="a", seed=8) != first
    rng = np.random.default_rng(7)
    assert sample(model, vocab, 60, prime="a", seed=rng) == first


def test_greedy_equals_top_k_one(untrained):
    model, vocab = untrained
    greedy = sample(model, vocab, 30, prime="abc", temperature=0)
    assert sample(model, vocab, 30, prime="abc", top_k=1, seed=1) == greedy
    assert sample(model, vocab, 30, prime="abc", top_k=1, seed=2) == greedy


def test_japanese_prime_and_empty_prime(untrained):
    model, vocab = untrained
    text = sample(model, vocab, 20, prime="吾輩は", seed=0)
    assert len(text) == 20
    assert len(sample(model, vocab, 5, seed=0)) == 5  # no newline in the vocabulary: id 0
    assert sample(model, vocab, 0, prime="a") == ""


def test_unknown_prime_characters_are_listed(untrained):
    model, vocab = untrained
    with pytest.raises(UnknownCharactersError, match="prime") as info:
        sample(model, vocab, 5, prime="abXcZ犬")
    assert info.value.characters == ["X", "Z", "犬"]
    assert "'X'" in str(info.value) and "'犬'" in str(info.value)


def test_sampling_leaves_the_model_as_it_was(untrained):
    model, vocab = untrained
    model.train()
    rng_state = model.drop.rng.bit_generator.state
    sample(model, vocab, 10, prime="ab", seed=0)
    assert model.training
    assert model.drop.rng.bit_generator.state == rng_state  # no dropout masks were drawn


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"length": -1}, "length"),
        ({"length": 2.5}, "length"),
        ({"length": 5, "temperature": -0.1}, "temperature"),
        ({"length": 5, "temperature": float("nan")}, "temperature"),
        ({"length": 5, "top_k": 0}, "top_k"),
    ],
)
def test_argument_errors(untrained, kwargs, match):
    model, vocab = untrained
    with pytest.raises(ValueError, match=match):
        sample(model, vocab, **kwargs)


def test_vocabulary_must_match_the_model(untrained):
    model, _ = untrained
    with pytest.raises(ValueError, match="vocabulary has 3 characters"):
        sample(model, Vocabulary("abc"), 5)


def test_next_char_probabilities():
    logits = np.array([1.0, 3.0, 2.0, 0.0], dtype=np.float32)
    plain = next_char_probabilities(logits)
    assert plain.sum() == pytest.approx(1.0)
    assert plain == pytest.approx(np.exp(logits) / np.exp(logits).sum())
    hot = next_char_probabilities(logits, temperature=2.0)
    assert hot == pytest.approx(np.exp(logits / 2) / np.exp(logits / 2).sum())
    top2 = next_char_probabilities(logits, top_k=2)
    assert top2[0] == top2[3] == 0.0
    assert top2[1] / top2[2] == pytest.approx(np.e)
    assert list(next_char_probabilities(logits, temperature=0)) == [0, 1, 0, 0]
    assert next_char_probabilities(logits, top_k=10) == pytest.approx(plain)


@pytest.mark.parametrize("temperature", [0.0, 1.0, 5.0])
def test_the_unknown_symbol_is_never_drawn(temperature):
    vocab = Vocabulary.from_text(JAPANESE, unknown=True)
    model = CharLM(len(vocab), 8, num_layers=1, embedding_dim=4, seed=0)
    model.decoder.params["bias"][vocab.unknown_id] = 50.0  # the model's favourite, by far
    text = sample(model, vocab, 200, prime="吾輩", temperature=temperature, seed=0)
    assert len(text) == 200 and "\ufffd" not in text
    assert set(text) <= set(vocab.chars)
    top = sample(model, vocab, 50, prime="吾輩", temperature=1.0, top_k=1, seed=0)
    assert "\ufffd" not in top
