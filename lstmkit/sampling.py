"""Generate text from a character language model, one character at a time.

The model first reads the *prime* text, which warms its recurrent state up, then each new
character is drawn from the softmax of the model's next logits and fed back in:

    p(v) = softmax(z / temperature)_v     over the ``top_k`` largest logits z (all if None)

``temperature`` below 1 sharpens the distribution (safer, more repetitive text), above 1 flattens
it (more surprising text); ``temperature=0`` always takes the most likely character (greedy).
The vocabulary's unknown symbol, if it has one, is never drawn: it stands for characters the
model never learned to write. Everything runs in evaluation mode (no dropout) under
:func:`lstmkit.no_grad`, and the draws come
from a Generator of their own, so the same model, prime and seed always give the same text and
sampling never disturbs a training run's random streams.

Example::

    model, vocab, _ = lstmkit.train.load_charlm("runs/shakespeare")
    print(sample(model, vocab, 500, prime="ROMEO:", temperature=0.8, seed=1))
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lstmkit.grad_mode import no_grad
from lstmkit.models import CharLM
from lstmkit.text import UnknownCharactersError, Vocabulary

__all__ = ["next_char_probabilities", "sample"]


def next_char_probabilities(
    logits: np.ndarray, temperature: float = 1.0, top_k: int | None = None
) -> np.ndarray:
    """The sampling distribution over the vocabulary for one step's logits (V,): float64 (V,).

    ``temperature=0`` puts all the mass on the largest logit (the first one on ties); ``top_k``
    keeps the ``k`` largest logits and zeroes the others' probabilities.
    """
    z = np.asarray(logits, dtype=np.float64).ravel()  # (V,)
    if temperature == 0:
        probs = np.zeros_like(z)
        probs[int(np.argmax(z))] = 1.0
        return probs
    if top_k is not None and top_k < z.size:
        # Everything below the k-th largest logit is left out (ties at the threshold stay in).
        threshold = np.partition(z, z.size - top_k)[z.size - top_k]
        z = np.where(z >= threshold, z, -np.inf)
    z = (z - z.max()) / temperature
    probs = np.exp(z)
    probs /= probs.sum()
    return probs


def _check_arguments(length: Any, temperature: Any, top_k: Any) -> tuple[int, float, int | None]:
    if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 0:
        raise ValueError(f"length is {length!r}; expected an integer >= 0 (characters to generate)")
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, (int, float, np.floating, np.integer))
        or not np.isfinite(temperature)
        or temperature < 0
    ):
        raise ValueError(
            f"temperature is {temperature!r}; expected a number >= 0 (1 samples the model's own "
            "distribution, lower is more conservative, 0 is greedy)"
        )
    if top_k is not None and (
        isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1
    ):
        raise ValueError(f"top_k is {top_k!r}; expected None or an integer >= 1")
    return int(length), float(temperature), None if top_k is None else int(top_k)


def sample(
    model: CharLM,
    vocab: Vocabulary,
    length: int,
    prime: str = "",
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int | np.random.Generator | None = None,
) -> str:
    """Generate ``length`` characters that continue ``prime``; return them (without the prime).

    Args:
        model: a character language model whose vocabulary is ``vocab``.
        vocab: the characters of the model's ids.
        length: how many characters to generate (0 gives ``""``).
        prime: text the model reads first to warm its state up. Empty: the model starts from a
            zero state after a newline (or, if the vocabulary has no newline, after its first
            character), as if at the start of a line.
        temperature: divides the logits before the softmax, >= 0; 0 means greedy.
        top_k: draw only among the ``top_k`` most likely characters (None: all of them).
        seed: None, an int or a ``np.random.Generator`` for the draws.

    Raises:
        UnknownCharactersError: ``prime`` holds characters that are not in the vocabulary; the
            message lists all of them.
        ValueError: an argument is out of range, or ``vocab`` does not match the model.
    """
    length, temperature, top_k = _check_arguments(length, temperature, top_k)
    if len(vocab) != model.vocab_size:
        raise ValueError(
            f"the vocabulary has {len(vocab)} characters but the model predicts "
            f"{model.vocab_size}; use the vocabulary saved with the model"
        )
    try:
        prime_ids = vocab.encode(prime)
    except UnknownCharactersError as error:
        raise UnknownCharactersError(
            f"the prime text holds characters the model never saw in training: {error}; "
            "remove or replace them",
            error.characters,
        ) from None
    if prime_ids.size == 0:
        prime_ids = np.array([vocab.index("\n") if "\n" in vocab else 0], dtype=np.int64)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)

    was_training = model.training
    model.eval()
    try:
        with no_grad():
            logits, state = model(prime_ids[:, None])  # (T, 1, V)
            last = logits[-1, 0]  # (V,)
            out = np.empty(length, dtype=np.int64)
            token = np.empty((1, 1), dtype=np.int64)
            unknown = vocab.unknown_id
            for n in range(length):
                if unknown is not None:  # the unknown symbol is not a character to print
                    last = last.copy()
                    last[unknown] = -np.inf
                probs = next_char_probabilities(last, temperature, top_k)
                # Inverse-CDF draw: one uniform number per character, the same on every platform.
                cdf = np.cumsum(probs)
                index = int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"))
                out[n] = min(index, probs.size - 1)
                token[0, 0] = out[n]
                logits, state = model(token, state)
                last = logits[0, 0]
    finally:
        model.train(was_training)
    return vocab.decode(out)
