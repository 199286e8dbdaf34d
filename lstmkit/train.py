"""Train a character language model on a text, with checkpoints, resume and early stopping.

The loop is char-rnn's (and Deep Learning from Scratch 2's ``RnnlmTrainer``): the training text
is cut into ``batch_size`` contiguous streams (:class:`lstmkit.text.StreamBatcher`), and every
step reads the next ``seq_len`` characters of each stream with the recurrent state the previous
step ended with as its initial state. Gradients stop at that boundary (truncated
backpropagation through time); the state is reset to zeros when the streams start over.

One step::

    x, y = batcher.next_batch()                 # (T, B) ids, y is x shifted by one
    logits, state = model(x, state)             # (T, B, V), state carried to the next step
    loss, dlogits = softmax_cross_entropy(logits, y, out=logits)   # mean nats per character
    model.backward(dlogits)
    clip_grad_norm(model.grads, clip)           # global norm, as torch.nn.utils
    optimizer.step(); schedule.step()           # Adam, cosine annealing to min_lr

Every ``eval_every`` steps the held-out end of the text (the last ``val_fraction``) is evaluated
in eval mode under :func:`lstmkit.no_grad`, as ``eval_batch_size`` streams whose state is carried
over the whole validation text (:func:`evaluate`), and a checkpoint is saved; ``best.json`` names
the one with the lowest validation loss. Training stops at the first of: ``steps`` steps,
``time_limit`` seconds, ``patience`` evaluations without improvement, SIGINT/SIGTERM (the
current step is finished and a checkpoint saved), or a non-finite loss or gradient (nothing is
saved, so the last good checkpoint stays the latest).

Checkpoint contents (a :class:`lstmkit.io.CheckpointManager` root, ``step-NNNNNN/`` each)::

    tensors: model.<param>                      the weights (model.rnn.weight_ih_l0, ...)
             optimizer.<buffer>.<param>         Adam's exp_avg / exp_avg_sq
             state.<k>                          the recurrent state carried into the next step
             history.train_loss                 float64 (steps,), every step's training loss
    meta:    format, format_version, model (CharLM config), vocabulary, train (TrainConfig),
             data (text SHA-256, sizes), optimizer (hyperparameters, step), schedule,
             rng (the model's dropout Generators), batcher (stream position), progress
             (step, tokens, elapsed, best validation loss, evaluations without improvement),
             history (every validation), status

``train(..., resume=True)`` restores all of it, so that an interrupted run continues with
bit-identical losses to a run that was never interrupted (same machine, same thread count).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lstmkit.clip import clip_grad_norm
from lstmkit.engine.kernels.threads import numpy_blas_single_threaded
from lstmkit.grad_mode import no_grad
from lstmkit.io import CheckpointError, CheckpointManager, load_checkpoint, rng_to_json
from lstmkit.io import rng_state_from_json as _rng_state_from_json
from lstmkit.models import CELLS, CharLM
from lstmkit.nn import softmax_cross_entropy
from lstmkit.optim import Adam
from lstmkit.sampling import sample
from lstmkit.schedules import CosineAnnealingLR
from lstmkit.text import (
    StreamBatcher,
    TextError,
    UnknownCharactersError,
    Vocabulary,
    held_out_start,
    read_text,
)

__all__ = [
    "ARCHITECTURE",
    "PRESETS",
    "TextEvaluation",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "TrainingError",
    "evaluate",
    "evaluate_text",
    "calibration_due",
    "load_charlm",
    "prepare_text",
    "remaining_steps",
    "train",
    "validation_batches",
]

FORMAT = "lstmkit-charlm-training"
FORMAT_VERSION = 1
LN2 = math.log(2.0)

# Options that may change when a run is resumed; all others must stay as the run started.
RESUME_OVERRIDES = frozenset(
    {"steps", "time_limit", "eval_every", "sample_every", "sample_length", "sample_temperature",
     "patience", "keep"}
)


class TrainingError(ValueError):
    """Training cannot start or continue: bad settings, a clash with existing checkpoints, ..."""


@dataclass
class TrainConfig:
    """Every setting of a training run (saved in each checkpoint as JSON).

    Model: ``cell`` ("lstm", "gru", "rnn"), ``num_layers``, ``hidden_size``, ``embedding_dim``,
    ``dropout`` (between recurrent layers and before the decoder). Data: ``seq_len`` (T, the
    truncated-BPTT length), ``batch_size`` (B, the number of streams), ``val_fraction`` (the
    held-out end of the text), ``min_count`` (characters seen fewer times in the training part
    are read as the vocabulary's unknown symbol, which every new run has). Optimisation: Adam
    with ``lr`` annealed along a cosine to ``min_lr`` over the run, gradients clipped to global
    norm ``clip`` (0: no clipping).
    Budget: ``steps`` and/or ``time_limit`` (seconds, wall clock, counted over all sessions of a
    resumed run); with only a time limit the cosine's length is estimated from the measured
    speed once training has warmed up, and re-estimated at every validation. Evaluation: every
    ``eval_every`` steps, as ``eval_batch_size`` streams in chunks of ``eval_seq_len``;
    ``patience`` evaluations without a lower validation loss stop the run (0: never).
    ``sample_every`` steps (0: never) print ``sample_length`` characters at
    ``sample_temperature``. ``keep``: checkpoints kept besides the best one. ``seed`` fixes
    the weights, the dropout masks and the samples. ``cell_options``: keyword arguments of the
    recurrent layer (``lstmkit.LSTM``'s peepholes, forget_bias, activations, clip, ...; see
    docs/options.md), JSON values, recorded with the model so that a checkpoint rebuilds it.
    """

    cell: str = "lstm"
    num_layers: int = 2
    hidden_size: int = 256
    embedding_dim: int = 128
    dropout: float = 0.2
    seq_len: int = 50
    batch_size: int = 16
    val_fraction: float = 0.1
    min_count: int = 1
    lr: float = 3e-3
    min_lr: float = 1e-4
    clip: float = 5.0
    steps: int | None = None
    time_limit: float | None = None
    eval_every: int = 200
    eval_batch_size: int = 32
    eval_seq_len: int = 200
    patience: int = 5
    sample_every: int = 1000
    sample_length: int = 200
    sample_temperature: float = 0.8
    keep: int = 3
    seed: int = 0
    dtype: str = "float32"
    cell_options: dict[str, Any] = dataclasses.field(default_factory=dict)

    def validate(self) -> TrainConfig:
        """Check every field; return self. Raises TrainingError naming the bad field."""
        if self.cell not in CELLS:
            raise TrainingError(f"cell is {self.cell!r}; expected one of {', '.join(CELLS)}")
        positive = ("num_layers", "hidden_size", "embedding_dim", "seq_len", "batch_size",
                    "min_count", "eval_every", "eval_batch_size", "eval_seq_len", "keep")
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise TrainingError(f"{name} is {value!r}; expected an integer >= 1")
        for name in ("patience", "sample_every", "sample_length", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise TrainingError(f"{name} is {value!r}; expected an integer >= 0")
        if self.steps is not None and (
            isinstance(self.steps, bool) or not isinstance(self.steps, (int, np.integer))
            or self.steps < 1
        ):
            raise TrainingError(f"steps is {self.steps!r}; expected an integer >= 1 or None")
        if self.time_limit is not None and not (
            _is_number(self.time_limit) and self.time_limit > 0
        ):
            raise TrainingError(
                f"time_limit is {self.time_limit!r}; expected a positive number of seconds or None"
            )
        if not (_is_number(self.dropout) and 0 <= self.dropout < 1):
            raise TrainingError(f"dropout is {self.dropout!r}; expected a number in [0, 1)")
        if not (_is_number(self.val_fraction) and 0 <= self.val_fraction < 1):
            raise TrainingError(
                f"val_fraction is {self.val_fraction!r}; expected a number in [0, 1)"
            )
        for name in ("lr", "min_lr", "clip", "sample_temperature"):
            value = getattr(self, name)
            if not (_is_number(value) and value >= 0):
                raise TrainingError(f"{name} is {value!r}; expected a finite number >= 0")
        if self.dtype not in ("float32", "float64"):
            raise TrainingError(f"dtype is {self.dtype!r}; expected 'float32' or 'float64'")
        if not (isinstance(self.cell_options, Mapping)
                and all(isinstance(k, str) for k in self.cell_options)):
            raise TrainingError(f"cell_options is {self.cell_options!r}; expected a dict of "
                                "the recurrent layer's keyword arguments")
        return self

    def to_json(self) -> dict[str, Any]:
        """The settings as a JSON-ready dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TrainConfig:
        """Rebuild from :meth:`to_json` output; unknown keys are refused."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise TrainingError(
                f"unknown training settings {unknown}; expected some of {sorted(names)}"
            )
        return cls(**dict(data)).validate()


def _is_number(value: Any) -> bool:
    return (
        not isinstance(value, bool)
        and isinstance(value, (int, float, np.integer, np.floating))
        and math.isfinite(value)
    )


#: Named groups of settings (``--preset``); options given explicitly override them.
#: The defaults favour many optimiser steps (short sequences): on a large vocabulary (the
#: 3,082 characters of neko.txt) a model sits at the unigram loss until enough *steps* have
#: been taken, whatever the number of characters (measured on neko.txt, seed 0: after 1,300
#: steps of 16 x 50 characters, lr 3e-3 reached 3.96 nats/char and lr 2e-3 4.00; 32 x 50
#: characters, lr 3e-3, 5.03 after 800 steps).
PRESETS: dict[str, dict[str, Any]] = {
    "reference": {"seq_len": 100, "dropout": 0.1, "lr": 2e-3},
    "neko": {"embedding_dim": 128, "seq_len": 50, "dropout": 0.2, "lr": 2e-3},
    "tiny": {"num_layers": 1, "hidden_size": 64, "embedding_dim": 32, "seq_len": 50,
             "eval_every": 100},
}
PRESET_HELP: dict[str, str] = {
    "reference": "the PyTorch reference protocol for English text: seq 100, dropout 0.1, lr 2e-3",
    "neko": "the PyTorch reference protocol for neko.txt: seq 50, dropout 0.2, lr 2e-3",
    "tiny": "a 1x64 LSTM for quick experiments and smoke tests",
}


@dataclass
class TrainResult:
    """What a training run did.

    ``status``: "completed" (``steps`` reached), "time_limit", "early_stopped", "interrupted"
    (SIGINT/SIGTERM or :meth:`Trainer.request_stop`), "nonfinite" (a NaN/Inf loss or gradient
    stopped it; nothing was saved at that step) or "nothing_to_do" (a resumed run whose budget
    was already spent). ``train_losses``: every step's training loss (nats/char), all sessions.
    ``history``: one dict per validation (step, tokens, elapsed, train_seconds, train_loss,
    val_loss, lr).
    """

    status: str
    message: str
    step: int
    tokens: int
    elapsed: float
    train_losses: np.ndarray
    history: list[dict[str, Any]]
    best_val_loss: float | None
    best_step: int | None
    checkpoint: Path | None
    best_checkpoint: Path | None
    out_dir: Path = field(default_factory=Path)

    @property
    def last_val_loss(self) -> float | None:
        """The validation loss of the last evaluation, or None if none ran."""
        return self.history[-1]["val_loss"] if self.history else None


# ----------------------------------------------------------------------------------------------
# Data


def _sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def prepare_text(
    text: str, val_fraction: float = 0.1, vocab: Vocabulary | None = None, min_count: int = 1
) -> tuple[Vocabulary, np.ndarray, np.ndarray]:
    """Vocabulary, training ids and held-out ids (the last ``val_fraction`` of the text).

    Without ``vocab``, the vocabulary is built from the training part alone, with the unknown
    symbol, which stands for the characters seen fewer than ``min_count`` times there and for
    the held-out part's characters that the training part lacks: the held-out text is then
    scored as a text never seen would be. A given vocabulary with the unknown symbol reads the
    characters it lacks as that symbol; one without it (an older checkpoint's) refuses them.
    """
    start = held_out_start(len(text), val_fraction)
    if vocab is None:
        vocab = Vocabulary.from_text(text[:start], unknown=True, min_count=min_count)
    ids = vocab.encode(text, allow_unknown=vocab.unknown_id is not None)
    return vocab, ids[:start], ids[start:]


def validation_batches(
    ids: np.ndarray, batch_size: int = 32, seq_len: int = 200
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The evaluation protocol's windows: ``(x, y)`` int64 ``(T, B)``, streams carried on.

    ``ids`` is cut into ``B`` contiguous streams of ``L = len(ids) // B`` ids (the last
    ``len(ids) % B`` ids are left out), with ``B = batch_size`` or fewer, so that every stream is
    at least ``seq_len`` long (a short text is one stream: every stream starts from a zero state,
    and those first predictions are the hardest). The windows walk along the streams
    ``seq_len`` at a time, the last one shorter, so that every stream's ``L - 1`` targets are
    each predicted exactly once with the state carried from the stream's start.
    """
    ids = np.asarray(ids, dtype=np.int64)
    if ids.ndim != 1 or ids.size < 2:
        raise TextError(f"evaluation needs at least 2 characters, got {ids.size}")
    streams = max(1, min(int(batch_size), (ids.size - 1) // int(seq_len)))
    length = ids.size // streams
    grid = ids[: streams * length].reshape(streams, length).T  # (L, B)
    for start in range(0, length - 1, int(seq_len)):
        stop = min(start + int(seq_len), length - 1)
        yield (np.ascontiguousarray(grid[start:stop]),
               np.ascontiguousarray(grid[start + 1 : stop + 1]))


def evaluate(
    model: CharLM, ids: np.ndarray, batch_size: int = 32, seq_len: int = 200,
    ignore_index: int | None = None,
) -> float:
    """Mean cross entropy (nats per character) of ``model`` on ``ids``, in eval mode.

    Runs under :func:`lstmkit.no_grad` over the windows of :func:`validation_batches`, carrying
    the state from window to window; restores the model's training mode afterwards. Targets
    equal to ``ignore_index`` (the unknown symbol) are read as inputs but left out of the mean.

    Raises:
        TextError: every target is ``ignore_index``: there is nothing to score.
    """
    was_training = model.training
    model.eval()
    total, count, state = 0.0, 0, None
    ignore = -100 if ignore_index is None else int(ignore_index)
    try:
        with no_grad():
            for x, y in validation_batches(ids, batch_size, seq_len):
                logits, state = model(x, state)
                loss, _ = softmax_cross_entropy(
                    logits, y, ignore_index=ignore, reduction="sum", compute_grad=False,
                    out=logits,
                )
                total += float(loss)
                count += y.size if ignore_index is None else int(np.count_nonzero(y != ignore))
    finally:
        model.train(was_training)
    if count == 0:
        raise TextError("every character to predict is unknown to the model: nothing to score")
    return total / count


@dataclass
class TextEvaluation:
    """A model's score on a text, the characters it never saw set apart.

    ``loss`` (nats per character), ``bpc`` and ``perplexity`` are over the predicted characters
    that the vocabulary holds; ``unknown_count`` characters of the text (``unknown_share`` of
    its ``characters``) are not in it: the model reads each as its unknown symbol, and predicting
    them is not scored. ``unknown_characters``: the distinct ones, sorted.
    """

    loss: float
    bpc: float
    perplexity: float
    characters: int
    unknown_count: int
    unknown_share: float
    unknown_characters: list[str]

    def to_json(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict."""
        return dataclasses.asdict(self)


def evaluate_text(
    model: CharLM, vocab: Vocabulary, text: str, batch_size: int = 32, seq_len: int = 200
) -> TextEvaluation:
    """Score ``model`` on ``text`` (see :class:`TextEvaluation` and :func:`evaluate`).

    Raises:
        UnknownCharactersError: the text holds characters outside a vocabulary that has no
            unknown symbol (a checkpoint of lstmkit 0.1); the message lists them.
        TextError: the text is shorter than 2 characters, or all of it is unknown.
    """
    ids = vocab.encode(text, allow_unknown=True)
    unknown = vocab.unknown_id
    unknown_count = 0 if unknown is None else int(np.count_nonzero(ids == unknown))
    loss = evaluate(model, ids, batch_size, seq_len, ignore_index=unknown)
    return TextEvaluation(
        loss=loss, bpc=loss / LN2, perplexity=math.exp(loss), characters=int(ids.size),
        unknown_count=unknown_count, unknown_share=unknown_count / ids.size,
        unknown_characters=vocab.unknown_characters(text) if unknown_count else [],
    )


# ----------------------------------------------------------------------------------------------
# Checkpoints


def _model_generators(model: CharLM) -> list[np.random.Generator]:
    """The distinct Generators the model's modules draw dropout masks from, in a fixed order."""
    found: dict[int, np.random.Generator] = {}

    def visit(module: Any) -> None:
        for name in sorted(vars(module)):
            value = vars(module)[name]
            if isinstance(value, np.random.Generator):
                found.setdefault(id(value), value)
        for child_name in sorted(getattr(module, "_modules", {})):
            visit(module._modules[child_name])

    visit(model)
    return list(found.values())


def _state_tuple(state: Any) -> tuple[np.ndarray, ...]:
    if state is None:
        return ()
    return tuple(state) if isinstance(state, tuple) else (state,)


def load_charlm(
    path: str | Path, which: str = "best"
) -> tuple[CharLM, Vocabulary, dict[str, Any]]:
    """Load a trained model: ``(model, vocabulary, meta)``, the model in eval mode.

    Args:
        path: a training output directory (a checkpoint root), or one ``step-*`` checkpoint.
        which: for a root, "best" (the lowest validation loss; the latest if there is no
            ``best.json``) or "latest".

    Raises:
        CheckpointError: the path holds no readable character-model checkpoint.
    """
    if which not in ("best", "latest"):
        raise ValueError(f"which is {which!r}; expected 'best' or 'latest'")
    path = Path(path)
    if which == "best" and (path / "best.json").is_file():
        tensors, meta = CheckpointManager(path).load_best()
    else:
        tensors, meta = load_checkpoint(path)
    if meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is a checkpoint but not of a character language model (its meta 'format' "
            f"is {meta.get('format')!r}, expected {FORMAT!r})"
        )
    model = CharLM(**meta["model"])
    model.load_state_dict(
        {name[len("model."):]: a for name, a in tensors.items() if name.startswith("model.")}
    )
    model.eval()
    return model, Vocabulary.from_json(meta["vocabulary"]), meta


#: The settings that fix a model's architecture, named alike in TrainConfig and CharLM.config().
ARCHITECTURE = ("cell", "num_layers", "hidden_size", "embedding_dim", "dtype")


def _fine_tuning_source(
    path: str | Path, config: TrainConfig
) -> tuple[CharLM, Vocabulary, dict[str, Any]]:
    """The model to fine-tune, its vocabulary, and what the new run records about it.

    Raises:
        TrainingError: the checkpoint cannot be read, or ``config`` asks for another
            architecture (or another vocabulary, through ``min_count``).
    """
    try:
        model, vocab, meta = load_charlm(path)
    except CheckpointError as error:
        raise TrainingError(f"cannot fine-tune from {path}: {error}") from None
    saved = model.config()
    for key in ARCHITECTURE:
        if getattr(config, key) != saved[key]:
            raise TrainingError(
                f"{key}={getattr(config, key)!r} contradicts the model in {path}, which has "
                f"{key}={saved[key]!r}: fine-tuning keeps the architecture, so leave that option "
                "out (it is taken from the checkpoint) or give the checkpoint's value"
            )
    others = {k: v for k, v in saved.items()
              if k not in {*ARCHITECTURE, "vocab_size", "dropout", "tie_weights"}}
    if saved.get("tie_weights"):
        raise TrainingError(
            f"the model in {path} has options training does not set (tie_weights); "
            "lstmkit train can fine-tune only the models it trains"
        )
    if others != dict(config.cell_options):
        raise TrainingError(
            f"cell_options={dict(config.cell_options)!r} contradicts the model in {path}, whose "
            f"cell options are {others!r}: fine-tuning keeps the architecture"
        )
    if config.min_count != 1:
        raise TrainingError(
            f"min_count={config.min_count} would build a new vocabulary, but a fine-tuned model "
            f"keeps the vocabulary of {path}: leave min_count out"
        )
    record = {"path": str(path), "step": meta.get("progress", {}).get("step"),
              "data_sha256": meta.get("data", {}).get("sha256")}
    return model, vocab, record


def _existing_run(out_dir: Path) -> bool:
    if not out_dir.is_dir():
        return False
    names = {p.name for p in out_dir.iterdir()}
    return bool({"latest.json", "best.json"} & names) or any(
        re.fullmatch(r"step-\d+", n) for n in names
    )


def _clear_run(out_dir: Path) -> None:
    """Delete a previous run's checkpoints and pointers (only those) from ``out_dir``."""
    for entry in out_dir.iterdir():
        if re.fullmatch(r"step-\d+", entry.name) and entry.is_dir():
            shutil.rmtree(entry)
        elif entry.name in ("latest.json", "best.json"):
            entry.unlink()


# ----------------------------------------------------------------------------------------------
# Time budgets


def calibration_due(steps_measured: int, seconds_measured: float, time_limit: float) -> bool:
    """Whether enough steps have been timed to plan the rest of a time-limited run.

    At least 10 steps after the first two (which may compile kernels), taking at least
    ``min(20 s, 5% of the time limit)`` of training time.
    """
    return steps_measured >= 10 and seconds_measured >= min(20.0, 0.05 * time_limit)


def remaining_steps(
    remaining_seconds: float, seconds_per_step: float, chars_per_step: int, val_chars: int,
    eval_every: int, eval_seconds: float | None = None,
) -> int:
    """How many more steps fit in ``remaining_seconds``, validations included (at least 1).

    Until a validation has been timed (``eval_seconds``), one is assumed to cost a third of a
    training step's time per character: it runs forwards only.
    """
    if eval_seconds is None:
        eval_seconds = val_chars * seconds_per_step / chars_per_step / 3
    per_step = seconds_per_step + eval_seconds / eval_every
    return max(int(max(remaining_seconds, 0.0) / per_step), 1)


# ----------------------------------------------------------------------------------------------
# The loop


def _default_log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Trainer:
    """One training run; use :func:`train` unless you need the pieces.

    Build it with :meth:`new` or :meth:`resume`, then call :meth:`run`. ``callback(trainer)``
    runs after every step (it may call :meth:`request_stop`).
    """

    def __init__(
        self,
        config: TrainConfig,
        text: str,
        out_dir: Path,
        *,
        vocab: Vocabulary | None = None,
        text_path: str | None = None,
        quiet: bool = False,
        progress: bool | None = None,
        log: Callable[[str], None] | None = None,
        callback: Callable[[Trainer], None] | None = None,
    ) -> None:
        self.config = config.validate()
        self.out_dir = Path(out_dir)
        self.quiet = quiet
        self.progress = progress
        self._log_fn = log or _default_log
        self.callback = callback
        self.text_sha256 = _sha256_text(text)
        self.text_path = text_path
        self.vocab, self.train_ids, self.val_ids = prepare_text(
            text, config.val_fraction, vocab, config.min_count
        )
        unknown = self.vocab.unknown_id
        self.unknown_counts = tuple(
            0 if unknown is None else int(np.count_nonzero(part == unknown))
            for part in (self.train_ids, self.val_ids)
        )
        self.init_from: dict[str, Any] | None = None
        if self.val_ids.size == 1:
            raise TrainingError(
                "the validation part is 1 character, too short to evaluate: use a longer text, "
                "a larger val_fraction, or val_fraction=0"
            )
        self.batcher = StreamBatcher(self.train_ids, config.batch_size, config.seq_len)
        try:
            self.model = CharLM(
                len(self.vocab), config.hidden_size, config.num_layers, cell=config.cell,
                embedding_dim=config.embedding_dim, dropout=config.dropout, dtype=config.dtype,
                seed=config.seed, **config.cell_options,
            )
        except (TypeError, ValueError) as error:
            raise TrainingError(f"the cell options {dict(config.cell_options)} do not make a "
                                f"{config.cell.upper()}: {error}") from None
        self.model.train()
        self.optimizer = Adam(self.model.params, self.model.grads, lr=config.lr)
        self.schedule: CosineAnnealingLR | None = None
        if config.steps is not None:
            self._make_schedule(config.steps)
        self.manager = CheckpointManager(self.out_dir, keep=config.keep)
        self.state: Any = None
        self.step = 0
        self.elapsed = 0.0  # wall seconds of all sessions
        self.train_seconds = 0.0  # of which spent in training steps
        self.losses: list[float] = []
        self.history: list[dict[str, Any]] = []
        self.best_val_loss: float | None = None
        self.best_step: int | None = None
        self.bad_evals = 0
        self.last_saved_step: int | None = None
        self._last_saved_status: str | None = None
        self.last_checkpoint: Path | None = None
        self._stop: str | None = None
        self._session_start = 0.0
        self._elapsed_before = 0.0
        self._rate_mark: tuple[int, float] | None = None  # (step, train_seconds)
        self._eval_seconds: float | None = None

    # -- construction ---------------------------------------------------------------------------

    @classmethod
    def new(cls, config: TrainConfig, text: str, out_dir: str | Path, *, force: bool = False,
            init_from: str | Path | None = None, **kwargs: Any) -> Trainer:
        """A fresh run writing into ``out_dir``; an existing run there needs ``force``.

        ``init_from``: a trained model's checkpoint to fine-tune; see :func:`train`.
        """
        out_dir = Path(out_dir)
        if _existing_run(out_dir):
            if not force:
                raise TrainingError(
                    f"{out_dir} already holds the checkpoints of a training run; continue it with "
                    "--resume, or pass --force to delete them and start over"
                )
        if init_from is None:
            trainer = cls(config, text, out_dir, **kwargs)
            rare, unseen = trainer.unknown_counts
            parts = []
            if rare:
                parts.append(f"{rare:,} training characters seen fewer than {config.min_count} "
                             "times")
            if unseen:
                parts.append(f"{unseen:,} held-out characters the training part lacks (not "
                             "scored in validation)")
            if parts:
                trainer._log(
                    f"vocabulary: {len(trainer.vocab.chars):,} characters of the training part "
                    f"and the unknown symbol, which stands for {' and '.join(parts)}"
                )
        else:
            source, vocab, record = _fine_tuning_source(init_from, config)
            try:
                trainer = cls(config, text, out_dir, vocab=vocab, **kwargs)
            except UnknownCharactersError as error:
                raise TrainingError(
                    f"the text holds characters the model in {init_from} never saw, and its "
                    f"vocabulary has no unknown symbol to read them as: {error}"
                ) from None
            trainer.model.load_state_dict(source.params)
            trainer.init_from = record
            unseen = sum(trainer.unknown_counts)
            if unseen:
                distinct = vocab.unknown_characters(text)
                shown = "".join(distinct[:40]) + ("..." if len(distinct) > 40 else "")
                trainer._log(
                    f"{unseen:,} characters of the text ({unseen / len(text):.2%}; "
                    f"{len(distinct)} distinct: {shown}) are not in the vocabulary of "
                    f"{init_from}: the model reads them as its unknown symbol"
                )
        if force and _existing_run(out_dir):
            _clear_run(out_dir)
        return trainer

    @classmethod
    def resume(cls, text: str, out_dir: str | Path, overrides: Mapping[str, Any] | None = None,
               **kwargs: Any) -> Trainer:
        """Continue the run whose latest checkpoint is in ``out_dir``, on the same text.

        ``overrides`` may change the budget and evaluation settings (:data:`RESUME_OVERRIDES`);
        any other setting must equal the run's.
        """
        out_dir = Path(out_dir)
        if not _existing_run(out_dir):
            raise TrainingError(
                f"there is nothing to resume in {out_dir}: it holds no checkpoints (start a new "
                "run without --resume)"
            )
        tensors, meta = CheckpointManager(out_dir).load_latest()
        if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
            raise TrainingError(
                f"{out_dir} holds checkpoints that are not of an lstmkit character-model training "
                f"run (format {meta.get('format')!r}, version {meta.get('format_version')!r})"
            )
        saved = dict(meta["train"])
        for key, value in (overrides or {}).items():
            if key in RESUME_OVERRIDES:
                saved[key] = value
            elif saved.get(key) != value:
                raise TrainingError(
                    f"the run in {out_dir} was started with {key}={saved.get(key)!r}; a resumed "
                    f"run keeps its model and data settings, so {key}={value!r} cannot be used"
                )
        config = TrainConfig.from_json(saved)
        if _sha256_text(text) != meta["data"]["sha256"]:
            raise TrainingError(
                f"the text differs from the one the run in {out_dir} was trained on (SHA-256 "
                f"{meta['data']['sha256'][:12]}..., {meta['data']['num_chars']} characters): "
                "resume with the same file"
            )
        vocab = Vocabulary.from_json(meta["vocabulary"])
        trainer = cls(config, text, out_dir, vocab=vocab, **kwargs)
        trainer._restore(tensors, meta)
        trainer.init_from = meta.get("init_from")
        return trainer

    def _make_schedule(self, total_steps: int, done: int = 0) -> None:
        """Cosine annealing over ``total_steps``, advanced ``done`` steps (PyTorch's values)."""
        self.optimizer.lr = self.config.lr  # the schedule starts from the optimizer's rate
        self.schedule = CosineAnnealingLR(self.optimizer, T_max=int(total_steps),
                                          eta_min=self.config.min_lr)
        for _ in range(min(done, total_steps)):
            self.schedule.step()

    def _restore(self, tensors: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        model_sd = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
        self.model.load_state_dict(model_sd)
        buffers: dict[str, dict[str, np.ndarray]] = {}
        for key, value in tensors.items():
            if key.startswith("optimizer."):
                _, buffer, name = key.split(".", 2)
                buffers.setdefault(buffer, {})[name] = value
        self.optimizer.load_state_dict({
            "hyperparameters": meta["optimizer"]["hyperparameters"],
            "step": meta["optimizer"]["step"],
            "buffers": buffers,
        })
        schedule = meta["schedule"]
        if schedule is not None:
            self.schedule = CosineAnnealingLR(self.optimizer, T_max=schedule["T_max"],
                                              eta_min=schedule["eta_min"])
            self.schedule.load_state_dict(schedule)
        else:
            self.schedule = None
        generators = _model_generators(self.model)
        if len(generators) != len(meta["rng"]):
            raise TrainingError(
                f"the checkpoint holds {len(meta['rng'])} random generator states, the model has "
                f"{len(generators)}"
            )
        for generator, state in zip(generators, meta["rng"]):
            generator.bit_generator.state = _rng_state_from_json(state)
        self.batcher.load_state_dict(meta["batcher"])
        parts = [tensors[f"state.{k}"] for k in range(len(meta["carried_state"]))]
        self.state = None if not parts else (tuple(parts) if len(parts) > 1 else parts[0])
        progress = meta["progress"]
        self.step = progress["step"]
        self.elapsed = self._elapsed_before = progress["elapsed"]
        self.train_seconds = progress["train_seconds"]
        self.best_val_loss = progress["best_val_loss"]
        self.best_step = progress["best_step"]
        self.bad_evals = progress["bad_evals"]
        self.losses = tensors["history.train_loss"].tolist()
        self.history = list(meta["history"])
        self.last_saved_step = self.step
        self._last_saved_status = meta["status"]
        self.last_checkpoint = self.manager.latest_path()

    # -- state ----------------------------------------------------------------------------------

    @property
    def tokens(self) -> int:
        """Training characters read so far."""
        return self.step * self.config.batch_size * self.config.seq_len

    def request_stop(self, reason: str = "interrupted") -> None:
        """Stop after the current step: save a checkpoint and return from :meth:`run`."""
        self._stop = reason

    def _log(self, message: str) -> None:
        if not self.quiet:
            self._log_fn(message)

    def _checkpoint(self, status: str, is_best: bool) -> Path:
        tensors: dict[str, np.ndarray] = {
            f"model.{k}": v for k, v in self.model.params.items()
        }
        opt_state = self.optimizer.state_dict()
        for buffer, arrays in opt_state["buffers"].items():
            for name, value in arrays.items():
                tensors[f"optimizer.{buffer}.{name}"] = value
        carried = _state_tuple(self.state)
        for k, part in enumerate(carried):
            tensors[f"state.{k}"] = part
        tensors["history.train_loss"] = np.asarray(self.losses, dtype=np.float64)
        schedule = None
        if self.schedule is not None:
            schedule = self.schedule.state_dict()
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "status": status,
            "model": self.model.config(),
            "vocabulary": self.vocab.to_json(),
            "train": self.config.to_json(),
            "data": {
                "path": self.text_path, "sha256": self.text_sha256,
                "num_chars": int(self.train_ids.size + self.val_ids.size),
                "num_train": int(self.train_ids.size), "num_val": int(self.val_ids.size),
                "unknown_train": self.unknown_counts[0], "unknown_val": self.unknown_counts[1],
            },
            "optimizer": {"name": "Adam", "hyperparameters": opt_state["hyperparameters"],
                          "step": opt_state["step"]},
            "schedule": schedule,
            "rng": [rng_to_json(g) for g in _model_generators(self.model)],
            "batcher": self.batcher.state_dict(),
            "carried_state": [list(p.shape) for p in carried],
            "progress": {
                "step": self.step, "tokens": self.tokens, "elapsed": self.elapsed,
                "train_seconds": self.train_seconds, "best_val_loss": self.best_val_loss,
                "best_step": self.best_step, "bad_evals": self.bad_evals,
            },
            "history": self.history,
        }
        if self.init_from is not None:
            meta["init_from"] = self.init_from
        path = self.manager.save(self.step, tensors, meta, is_best=is_best, force=True)
        self.last_saved_step = self.step
        self._last_saved_status = status
        self.last_checkpoint = path
        return path

    def _validate_and_save(self, status: str) -> None:
        """Evaluate (if there is held-out text), record, and save a checkpoint."""
        cfg = self.config
        is_best = False
        val_loss = None
        start = time.perf_counter()
        if self.val_ids.size:
            val_loss = evaluate(self.model, self.val_ids, cfg.eval_batch_size, cfg.eval_seq_len,
                                ignore_index=self.vocab.unknown_id)
            self._eval_seconds = time.perf_counter() - start
            if self.best_val_loss is None or val_loss < self.best_val_loss:
                self.best_val_loss, self.best_step, self.bad_evals = val_loss, self.step, 0
                is_best = True
            else:
                self.bad_evals += 1
        previous = self.history[-1]["step"] if self.history else 0
        recent = self.losses[previous:self.step]
        self._update_elapsed()
        self.history.append({
            "step": self.step, "tokens": self.tokens, "elapsed": self.elapsed,
            "train_seconds": self.train_seconds,
            "train_loss": float(np.mean(recent)) if recent else None,
            "val_loss": val_loss, "lr": float(self.optimizer.lr),
        })
        self._checkpoint(status, is_best or self.best_step is None)
        self._update_elapsed()
        text = f"step {self.step}"
        if recent:
            text += f" | train loss {np.mean(recent):.4f}"
        if val_loss is not None:
            marker = " (best)" if is_best else f" (best {self.best_val_loss:.4f})"
            text += f" | val loss {val_loss:.4f}, {val_loss / LN2:.3f} bpc{marker}"
        rate = self.tokens / self.train_seconds if self.train_seconds else 0.0
        text += f" | {rate / 1000:.1f}k chars/s | {_clock(self.elapsed)}"
        self._log(text)

    def _update_elapsed(self) -> None:
        self.elapsed = self._elapsed_before + (time.perf_counter() - self._session_start)

    def _budget_status(self) -> str | None:
        cfg = self.config
        if cfg.steps is not None and self.step >= cfg.steps:
            return "completed"
        if cfg.time_limit is not None and self.elapsed >= cfg.time_limit:
            return "time_limit"
        if cfg.patience and self.bad_evals >= cfg.patience:
            return "early_stopped"
        return None

    def _maybe_calibrate(self, replan: bool = False) -> None:
        """With only a time limit: fit the cosine's length to the measured speed.

        First as soon as enough steps have been timed, then (``replan``) after every validation
        from the average speed since the first steps and the measured validation time, since a
        shared machine's speed drifts; each new cosine continues from the current step.
        """
        cfg = self.config
        if cfg.steps is not None or cfg.time_limit is None:
            return
        if self._rate_mark is None:
            if self.step >= 2:  # after the first steps, which may compile kernels
                self._rate_mark = (self.step, self.train_seconds)
            return
        if self.schedule is not None and not replan:
            return
        mark_step, mark_seconds = self._rate_mark
        seconds = self.train_seconds - mark_seconds
        if not calibration_due(self.step - mark_step, seconds, cfg.time_limit):
            return
        total = self.step + remaining_steps(
            cfg.time_limit - self.elapsed, seconds / (self.step - mark_step),
            cfg.batch_size * cfg.seq_len, self.val_ids.size, cfg.eval_every, self._eval_seconds,
        )
        if self.schedule is None or total != self.schedule.T_max:
            self._make_schedule(total, done=self.step)

    def _progress_bar(self) -> Any:
        from tqdm import tqdm

        disable = True if self.quiet else (None if self.progress is None else not self.progress)
        cfg = self.config
        if cfg.steps is not None:
            return tqdm(total=cfg.steps, initial=self.step, unit="step", file=sys.stderr,
                        disable=disable, dynamic_ncols=True, leave=False)
        return tqdm(total=float(cfg.time_limit or 0) or None, initial=self.elapsed, unit="s",
                    file=sys.stderr, disable=disable, dynamic_ncols=True, leave=False,
                    bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f}s [{elapsed}<{remaining}"
                               "{postfix}]")

    def _install_signal_handlers(self) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}
        previous: dict[int, Any] = {}

        def handler(signum: int, frame: Any) -> None:
            if self._stop == "interrupted":
                raise KeyboardInterrupt
            self.request_stop("interrupted")
            self._log(f"{signal.Signals(signum).name} received: finishing the current step and "
                      "saving a checkpoint (send it again to abort at once)")

        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, handler)
        return previous

    def run(self) -> TrainResult:
        """Train until a budget, early stopping, a signal or a non-finite value stops it."""
        self._session_start = time.perf_counter()
        self._elapsed_before = self.elapsed
        status = self._budget_status()
        if status is not None and self.step > 0:
            return self._result("nothing_to_do", f"the run in {self.out_dir} already stopped "
                                f"({status}) at step {self.step}; raise --steps, --time-limit or "
                                "--patience to continue it")
        previous_handlers = self._install_signal_handlers()
        bar = self._progress_bar()
        log_fn = self._log_fn
        if not bar.disable:
            self._log_fn = bar.write
        message = ""
        try:
            with numpy_blas_single_threaded():  # one thread pool: the kernels'
                status, message = self._loop(bar)
        finally:
            bar.close()
            self._log_fn = log_fn
            for signum, handler in previous_handlers.items():
                signal.signal(signum, handler)
        return self._result(status, message)

    def _loop(self, bar: Any) -> tuple[str, str]:
        cfg = self.config
        model, optimizer, batcher = self.model, self.optimizer, self.batcher
        grads = model.grads
        ema: float | None = None
        last_postfix = 0.0
        while True:
            status = self._stop or self._budget_status()
            if status is not None:
                break
            step_start = time.perf_counter()
            if batcher.at_epoch_start:
                self.state = None  # the streams start over: so does the state
            x, y = batcher.next_batch()  # (T, B) each
            model.zero_grad()
            logits, state = model(x, self.state)  # (T, B, V)
            loss, dlogits = softmax_cross_entropy(logits, y, out=logits)
            loss = float(loss)
            if not math.isfinite(loss):
                return "nonfinite", self._nonfinite_message(f"the training loss is {loss}")
            model.backward(dlogits)
            # With clip = 0 the norm is still computed (never scaling) to catch NaN and Inf.
            norm = clip_grad_norm(grads, cfg.clip if cfg.clip > 0 else math.inf)
            if not math.isfinite(norm):
                return "nonfinite", self._nonfinite_message(f"the gradient norm is {norm}")
            optimizer.step()
            if self.schedule is not None and self.schedule.last_epoch < self.schedule.T_max:
                self.schedule.step()
            self.state = state
            self.step += 1
            self.losses.append(loss)
            now = time.perf_counter()
            self.train_seconds += now - step_start
            self._update_elapsed()
            self._maybe_calibrate()
            ema = loss if ema is None else 0.95 * ema + 0.05 * loss
            if not bar.disable:
                bar.update(1 if cfg.steps is not None else self.elapsed - bar.n)
                if now - last_postfix > 0.5:
                    rate = cfg.batch_size * cfg.seq_len / (now - step_start)
                    bar.set_postfix_str(f"loss {ema:.3f}, {ema / LN2:.2f} bpc, "
                                        f"{rate / 1000:.1f}k chars/s, step {self.step}")
                    last_postfix = now
            if self.callback is not None:
                self.callback(self)
            if self.step % cfg.eval_every == 0:
                self._validate_and_save(self._stop or "running")
                self._maybe_calibrate(replan=True)
            if cfg.sample_every and self.step % cfg.sample_every == 0 and not self.quiet:
                text = sample(model, self.vocab, cfg.sample_length,
                              temperature=cfg.sample_temperature, seed=cfg.seed + self.step)
                self._log(f"--- sample at step {self.step} ---\n{text}\n---")
        if self.last_saved_step != self.step:
            if status == "interrupted":
                self._checkpoint(status, is_best=self.best_step is None)
            else:
                self._validate_and_save(status)
        elif self._last_saved_status != status:  # saved at this step before the stop was known
            self._checkpoint(status, is_best=self.best_step == self.step)
        messages = {
            "completed": f"reached {cfg.steps} steps",
            "time_limit": f"reached the time limit of {_clock(cfg.time_limit or 0)}",
            "early_stopped": f"stopped early: {cfg.patience} evaluations without a lower "
                             "validation loss",
            "interrupted": f"interrupted at step {self.step}; the checkpoint "
                           f"{self.last_checkpoint} was saved: continue with --resume",
        }
        return status, messages.get(status, status)

    def _nonfinite_message(self, what: str) -> str:
        where = (f"the last good checkpoint is {self.last_checkpoint} (step {self.last_saved_step})"
                 if self.last_checkpoint is not None else "no checkpoint had been saved yet")
        return (f"training stopped at step {self.step + 1}: {what}. Nothing was saved for this "
                f"step and the parameters were not updated; {where}. Lower the learning rate "
                f"(now {self.optimizer.lr:.3g}) or the clipping norm, or check the data")

    def _result(self, status: str, message: str) -> TrainResult:
        best = self.manager.best_path() if self.out_dir.is_dir() else None
        return TrainResult(
            status=status, message=message, step=self.step, tokens=self.tokens,
            elapsed=self.elapsed, train_losses=np.asarray(self.losses, dtype=np.float64),
            history=list(self.history), best_val_loss=self.best_val_loss,
            best_step=self.best_step, checkpoint=self.last_checkpoint, best_checkpoint=best,
            out_dir=self.out_dir,
        )


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def train(
    text: str | Path,
    out_dir: str | Path,
    config: TrainConfig | None = None,
    *,
    resume: bool = False,
    force: bool = False,
    init_from: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    quiet: bool = False,
    progress: bool | None = None,
    log: Callable[[str], None] | None = None,
    callback: Callable[[Trainer], None] | None = None,
) -> TrainResult:
    """Train a character language model; checkpoints go to ``out_dir``.

    Args:
        text: the training text, or a path to a UTF-8 file (read with
            :func:`lstmkit.text.read_text`).
        out_dir: the checkpoint root (``step-*/``, ``latest.json``, ``best.json``).
        config: the settings of a new run (default :class:`TrainConfig`).
        resume: continue the run in ``out_dir`` (``config`` is ignored; see ``overrides``).
        force: start a new run even though ``out_dir`` holds one (its checkpoints are deleted).
        init_from: fine-tune: start from the weights of this trained model (a checkpoint root or
            ``step-*`` directory; its best checkpoint) instead of random ones, with its
            vocabulary (the text's characters outside it are read as the unknown symbol, and
            their count is logged). ``config`` must give the same architecture (cell, layers,
            sizes, dtype); the optimizer, schedule and step count start afresh.
        overrides: with ``resume``, new values for :data:`RESUME_OVERRIDES`.
        quiet: no progress bar and no log lines.
        progress: show the tqdm bar (None: only when stderr is a terminal).
        log: where log lines go (default: stderr).
        callback: called with the trainer after every step.

    Raises:
        TextError: the text cannot be used (empty, binary, not UTF-8, too short).
        TrainingError: bad settings, an existing run without ``resume``/``force``, nothing to
            resume, or a resume with another text or model settings.
    """
    text_path = None
    if isinstance(text, Path):
        text_path = str(text)
        text = read_text(text)
    kwargs = {"text_path": text_path, "quiet": quiet, "progress": progress, "log": log,
              "callback": callback}
    if resume:
        if init_from is not None:
            raise TrainingError("resume continues a run and init_from starts one: choose one")
        trainer = Trainer.resume(text, out_dir, overrides, **kwargs)
    else:
        trainer = Trainer.new(config or TrainConfig(), text, out_dir, force=force,
                              init_from=init_from, **kwargs)
    return trainer.run()
