"""``lstmkit train``, ``lstmkit sample`` and ``lstmkit eval``: character language models.

    lstmkit train input.txt --out runs/shakespeare --time-limit 15
    lstmkit sample runs/shakespeare --prime "ROMEO:" -n 500 --temperature 0.8 --seed 1
    lstmkit sample --prime "吾輩は"       # no checkpoint: the bundled Japanese model
    lstmkit eval runs/shakespeare held_out.txt --json
    lstmkit train new.txt --out runs/tuned --init-from runs/shakespeare   # fine-tune

Problems the user can fix (an unreadable text, characters the model does not know, an output
directory that already holds a run) end the command with a one-line ``Error: ...`` message and
exit status 1 (2 for invalid options), never a traceback.
"""

from __future__ import annotations

import json
import math
import resource
import sys
from pathlib import Path
from typing import Any

import click

import lstmkit.train as training
from lstmkit.experiments.variants import VARIANTS as GREFF_VARIANTS
from lstmkit.io import CheckpointError
from lstmkit.models import CharLM
from lstmkit.pretrained import load_pretrained
from lstmkit.sampling import sample as sample_text
from lstmkit.text import TextError, Vocabulary, read_text
from lstmkit.train import (
    PRESET_HELP,
    PRESETS,
    TrainConfig,
    TrainingError,
    evaluate_text,
    load_charlm,
)

DEFAULTS = TrainConfig()
DEFAULT_MINUTES = 15.0
_USER_ERRORS = (TextError, TrainingError, CheckpointError)


def _fail(error: Exception) -> click.ClickException:
    """One line, no traceback: the error's own message."""
    return click.ClickException(" ".join(str(error).split("\n")))


def _peak_memory_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes vs KiB


def _preset_help() -> str:
    return "; ".join(f"{name}: {text}" for name, text in PRESET_HELP.items())


def load_model(
    checkpoint: Path | None, which: str = "best"
) -> tuple[CharLM, Vocabulary, dict[str, Any]]:
    """The model in CHECKPOINT, or without one the bundled Japanese model (user errors -> Error)."""
    try:
        if checkpoint is None:
            return load_pretrained()
        return load_charlm(checkpoint, which=which)
    except _USER_ERRORS as error:
        raise _fail(error) from None


def _architecture_from(checkpoint: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """``settings`` completed with the architecture of the model in ``checkpoint``.

    Options the user gave are kept as they are, so that a contradiction is refused by
    :func:`lstmkit.train.train` with both values named.
    """
    model, _, _ = load_model(checkpoint)
    config = model.config()
    cell_options = {k: v for k, v in config.items()
                    if k not in {*training.ARCHITECTURE, "vocab_size", "dropout", "tie_weights"}}
    return {**{key: config[key] for key in training.ARCHITECTURE},
            **({"cell_options": cell_options} if cell_options else {}), **settings}


@click.command()
@click.argument("text_file", type=click.Path(path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Directory for the checkpoints (step-*/, latest.json, best.json); give it to "
                   "`lstmkit sample` and `lstmkit eval`.")
@click.option("--preset", type=click.Choice(sorted(PRESETS)),
              help=f"A named group of settings; options given explicitly override it. "
                   f"{_preset_help()}.")
@click.option("--model", "cell", type=click.Choice(["lstm", "gru", "rnn"]),
              help=f"Recurrent cell. [default: {DEFAULTS.cell}]")
@click.option("--layers", "num_layers", type=click.IntRange(min=1),
              help=f"Stacked recurrent layers. [default: {DEFAULTS.num_layers}]")
@click.option("--hidden", "hidden_size", type=click.IntRange(min=1),
              help=f"Units per recurrent layer. [default: {DEFAULTS.hidden_size}]")
@click.option("--embedding", "embedding_dim", type=click.IntRange(min=1),
              help=f"Size of the character embedding. [default: {DEFAULTS.embedding_dim}]")
@click.option("--dropout", type=click.FloatRange(0, 1, max_open=True),
              help=f"Dropout between recurrent layers and before the output layer. "
                   f"[default: {DEFAULTS.dropout}]")
@click.option("--seq-len", type=click.IntRange(min=1),
              help=f"Characters per step and stream: how far back gradients flow (truncated "
                   f"BPTT; the state itself is carried on). [default: {DEFAULTS.seq_len}]")
@click.option("--batch", "batch_size", type=click.IntRange(min=1),
              help=f"Parallel streams through the text. [default: {DEFAULTS.batch_size}]")
@click.option("--lr", type=click.FloatRange(min=0),
              help=f"Adam's starting learning rate. [default: {DEFAULTS.lr}]")
@click.option("--min-lr", type=click.FloatRange(min=0),
              help=f"Learning rate at the end of the cosine schedule. [default: {DEFAULTS.min_lr}]")
@click.option("--clip", type=click.FloatRange(min=0),
              help=f"Clip the gradients' global norm to this (0: no clipping). "
                   f"[default: {DEFAULTS.clip}]")
@click.option("--time-limit", type=click.FloatRange(min=0, min_open=True),
              help=f"Stop after this many minutes (wall clock, all sessions of a resumed run). "
                   f"[default: {DEFAULT_MINUTES:g} if --steps is not given]")
@click.option("--steps", type=click.IntRange(min=1),
              help="Stop after this many steps (the learning-rate cosine spans them).")
@click.option("--seed", type=click.IntRange(min=0),
              help=f"Seed of the weights, dropout masks and samples. [default: {DEFAULTS.seed}]")
@click.option("--val-fraction", type=click.FloatRange(0, 1, max_open=True),
              help=f"Held-out end of the text for validation (0: none). "
                   f"[default: {DEFAULTS.val_fraction}]")
@click.option("--min-count", type=click.IntRange(min=1),
              help=f"Characters seen fewer times in the training part are read as the unknown "
                   f"symbol (which learns to stand for rare characters). "
                   f"[default: {DEFAULTS.min_count}]")
@click.option("--init-from", type=click.Path(exists=True, path_type=Path),
              help="Fine-tune: start from the weights and vocabulary of this trained model "
                   "(a `lstmkit train --out` directory); the text's characters it never saw are "
                   "read as its unknown symbol. Its architecture is kept: --model, --layers, "
                   "--hidden and --embedding default to the checkpoint's and may not differ.")
@click.option("--eval-every", type=click.IntRange(min=1),
              help=f"Validate and save a checkpoint every this many steps. "
                   f"[default: {DEFAULTS.eval_every}]")
@click.option("--sample-every", type=click.IntRange(min=0),
              help=f"Print a sample every this many steps (0: never). "
                   f"[default: {DEFAULTS.sample_every}]")
@click.option("--patience", type=click.IntRange(min=0),
              help=f"Stop after this many validations without a lower loss (0: never). "
                   f"[default: {DEFAULTS.patience}]")
@click.option("--keep", type=click.IntRange(min=1),
              help=f"Checkpoints kept besides the best one. [default: {DEFAULTS.keep}]")
@click.option("--variant", type=click.Choice(list(GREFF_VARIANTS)),
              help="One of Greff et al.'s LSTM variants (lstmkit experiment variants): its "
                   "switches, which the options below may override.")
@click.option("--peepholes/--no-peepholes", default=None,
              help="LSTM peephole connections (Gers et al. 2002). [default: off]")
@click.option("--forget-bias", type=float,
              help="Added to the LSTM's forget-gate bias at initialisation. [default: 0]")
@click.option("--activation", help="The cell input's (and LSTM output's) function: a name of "
                                   "lstmkit.activations, e.g. tanh, relu, identity, elu. "
                                   "[default: tanh]")
@click.option("--recurrent-activation", help="The gates' function, e.g. sigmoid, hard_sigmoid. "
                                             "[default: sigmoid]")
@click.option("--output-activation", help="The LSTM's function of c in h = o * f(c) (ONNX's h). "
                                          "[default: as --activation]")
@click.option("--cell-clip", type=click.FloatRange(min=0, min_open=True),
              help="ONNX's cell clip: every gate pre-activation bounded to [-C, C]. "
                   "[default: none]")
@click.option("--cell-option", "cell_option", multiple=True, metavar="KEY=VALUE",
              help="Any other keyword of the recurrent layer (docs/options.md), VALUE as JSON "
                   "or a plain string, e.g. input_gate=false, linear_before_reset=false. "
                   "Repeatable.")
@click.option("--resume", is_flag=True,
              help="Continue the run in --out exactly where it stopped (same text; the budget, "
                   "evaluation and patience options may change).")
@click.option("--force", is_flag=True,
              help="Delete the checkpoints of a run in --out and start over.")
@click.option("--quiet", "-q", is_flag=True,
              help="No progress bar, log lines or samples; only the final summary.")
def train(text_file: Path, out_dir: Path, preset: str | None, resume: bool, force: bool,
          quiet: bool, init_from: Path | None, **options: Any) -> None:
    """Train a character-level language model on TEXT_FILE (any UTF-8 text).

    The last --val-fraction of the text is held out for validation. Ctrl-C (or SIGTERM)
    finishes the current step, saves a checkpoint and exits; --resume continues from it.
    """
    cell_options = _cell_options(options)
    given = {key: value for key, value in options.items() if value is not None}
    if cell_options:
        given["cell_options"] = cell_options
    if "time_limit" in given:
        given["time_limit"] = given["time_limit"] * 60.0
    if resume and force:
        raise click.UsageError("--resume continues the run in --out and --force deletes it: "
                               "choose one")
    if resume and init_from is not None:
        raise click.UsageError("--resume continues the run in --out and --init-from starts a new "
                               "one from another model: choose one")
    settings = {**(PRESETS[preset] if preset else {}), **given}
    if init_from is not None:
        settings = _architecture_from(init_from, settings)
    try:
        if resume:
            result = training.train(text_file, out_dir, resume=True, overrides=settings,
                                  quiet=quiet)
        else:
            if "steps" not in settings and "time_limit" not in settings:
                settings["time_limit"] = DEFAULT_MINUTES * 60.0
            config = TrainConfig(**{**DEFAULTS.to_json(), **settings})
            result = training.train(text_file, out_dir, config, force=force, quiet=quiet,
                                    init_from=init_from)
    except _USER_ERRORS as error:
        raise _fail(error) from None
    if result.status == "nonfinite":
        raise click.ClickException(result.message)
    summary = f"{result.status}: {result.message}. Step {result.step}, {result.tokens:,} characters"
    if result.last_val_loss is not None:
        summary += (f", validation loss {result.last_val_loss:.4f} nats/char "
                    f"({result.last_val_loss / math.log(2):.3f} bits/char)")
    if result.best_checkpoint is not None and result.best_val_loss is not None:
        summary += f"; best {result.best_val_loss:.4f} in {result.best_checkpoint}"
    summary += f"; peak memory {_peak_memory_mb():.0f} MiB"
    click.echo(summary)


def _cell_options(options: dict[str, Any]) -> dict[str, Any]:
    """The recurrent layer's keyword arguments from train's options (removed from ``options``):
    the variant's switches, then the named options, then each --cell-option KEY=VALUE."""
    variant = options.pop("variant")
    result: dict[str, Any] = dict(GREFF_VARIANTS[variant]) if variant else {}
    named = {"peepholes": options.pop("peepholes"), "forget_bias": options.pop("forget_bias"),
             "activation": options.pop("activation"),
             "recurrent_activation": options.pop("recurrent_activation"),
             "output_activation": options.pop("output_activation"),
             "clip": options.pop("cell_clip")}
    result.update({key: value for key, value in named.items() if value is not None})
    for item in options.pop("cell_option"):
        key, sep, text = item.partition("=")
        if not sep or not key.isidentifier():
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}",
                                     param_hint="--cell-option")
        try:
            result[key] = json.loads(text)
        except json.JSONDecodeError:
            result[key] = text
    return result


@click.command()
@click.argument("checkpoint", required=False, type=click.Path(path_type=Path))
@click.option("--prime", default="", help="Text the model reads first; the sample continues it.")
@click.option("--temperature", "-t", default=0.8, show_default=True,
              type=click.FloatRange(min=0),
              help="Below 1: safer, more repetitive text; above 1: wilder; 0: always the most "
                   "likely character.")
@click.option("-n", "--length", default=500, show_default=True, type=click.IntRange(min=0),
              help="Characters to generate.")
@click.option("--seed", type=click.IntRange(min=0),
              help="Seed of the draws: the same seed gives the same text. [default: random]")
@click.option("--top-k", type=click.IntRange(min=1),
              help="Draw only among the K most likely characters. [default: all]")
@click.option("--latest", is_flag=True,
              help="Use the latest checkpoint instead of the one with the best validation loss.")
def sample(checkpoint: Path, prime: str, temperature: float, length: int, seed: int | None,
           top_k: int | None, latest: bool) -> None:
    """Print text generated by the model in CHECKPOINT (a `lstmkit train --out` directory).

    Without CHECKPOINT, the bundled Japanese model (trained on Natsume Soseki's "I Am a Cat")
    writes. The output is the prime followed by the generated characters.
    """
    model, vocab, _ = load_model(checkpoint, which="latest" if latest else "best")
    try:
        text = sample_text(model, vocab, length, prime=prime, temperature=temperature,
                           top_k=top_k, seed=seed)
    except _USER_ERRORS as error:
        raise _fail(error) from None
    click.echo(prime + text)


@click.command(name="eval")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True,
              help='Print one JSON object: {"loss": ..., "bpc": ..., "perplexity": ..., '
                   '"characters": ..., "unknown_count": ..., "unknown_share": ..., '
                   '"unknown_characters": [...]}.')
@click.option("--latest", is_flag=True,
              help="Use the latest checkpoint instead of the one with the best validation loss.")
@click.option("--batch", "batch_size", default=DEFAULTS.eval_batch_size, show_default=True,
              type=click.IntRange(min=1), help="Streams evaluated in parallel.")
@click.option("--seq-len", default=DEFAULTS.eval_seq_len, show_default=True,
              type=click.IntRange(min=1), help="Characters per window (the state is carried on).")
def evaluate_command(checkpoint: Path, file: Path, as_json: bool, latest: bool,
                     batch_size: int, seq_len: int) -> None:
    """Evaluate the model in CHECKPOINT on FILE: loss in nats/char, bits/char, perplexity.

    FILE is read as contiguous streams with the state carried from window to window, as the
    validation during training. Characters the model never saw are read as its unknown symbol:
    the loss is over the characters it knows, and the unknown ones are counted.
    """
    model, vocab, _ = load_model(checkpoint, which="latest" if latest else "best")
    try:
        text = read_text(file)
        try:
            result = evaluate_text(model, vocab, text, batch_size=batch_size, seq_len=seq_len)
        except TextError as error:
            raise TextError(f"{file}: {error}") from None
    except _USER_ERRORS as error:
        raise _fail(error) from None
    if as_json:
        click.echo(json.dumps(result.to_json(), ensure_ascii=False))
        return
    click.echo(f"loss {result.loss:.4f} nats/char, {result.bpc:.4f} bits/char, perplexity "
               f"{result.perplexity:.3f} ({result.characters:,} characters)")
    if result.unknown_count:
        shown = "".join(result.unknown_characters[:40])
        more = "..." if len(result.unknown_characters) > 40 else ""
        click.echo(f"{result.unknown_count:,} characters ({result.unknown_share:.2%}) are unknown "
                   f"to the model ({len(result.unknown_characters)} distinct: {shown}{more}); "
                   "the loss is over the others")


COMMANDS = [train, sample, evaluate_command]
