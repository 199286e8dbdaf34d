"""``lstmkit export``: a trained character language model out to a deployable format.

    lstmkit export runs/shakespeare --format onnx
    lstmkit export runs/shakespeare --format onnx --out shakespeare.onnx --which latest --force

The ONNX file holds the model in evaluation mode (``ids`` (T, B) int64 -> ``logits``
(T, B, V), with the state ``h_0``/``c_0`` -> ``h_n``/``c_n``) and the vocabulary in its
metadata (see :mod:`lstmkit.interop.charlm_onnx`). Problems the user can fix (a missing or
damaged checkpoint, an existing output without ``--force``, a missing output directory) end
the command with a one-line ``Error: ...`` and exit status 1; invalid options exit with 2.
"""

from __future__ import annotations

from pathlib import Path

import click

from lstmkit.io import CheckpointError
from lstmkit.text import TextError

FORMATS = ("onnx",)
DEFAULT_NAMES = {"onnx": "model.onnx"}


def _one_line(error: BaseException) -> str:
    """The error's message on one line (no traceback, no quotes around a KeyError's)."""
    return " ".join(str(error).strip("'\"").split())


@click.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--format", "fmt", required=True,
              type=click.Choice(FORMATS, case_sensitive=False),
              help="Output format (ONNX: standard operators, runs in ONNX Runtime).")
@click.option("--out", "out", type=click.Path(path_type=Path),
              help="File to write. [default: CHECKPOINT/model.onnx]")
@click.option("--force", is_flag=True, help="Replace an existing output file.")
@click.option("--which", type=click.Choice(["best", "latest"]), default="best",
              show_default=True,
              help="For a training directory: the checkpoint with the best validation loss, or "
                   "the latest one.")
def export(checkpoint: Path, fmt: str, out: Path | None, force: bool, which: str) -> None:
    """Export the character language model in CHECKPOINT (a `lstmkit train --out` directory
    or one of its step-* checkpoints).

    The model is exported in evaluation mode (no dropout), with its vocabulary.
    """
    from lstmkit.train import load_charlm

    fmt = fmt.lower()
    try:
        model, vocab, _ = load_charlm(checkpoint, which=which)
    except (CheckpointError, TextError) as error:
        raise click.ClickException(_one_line(error)) from None
    except (KeyError, TypeError, ValueError) as error:
        # A checkpoint whose model description or weights do not fit together.
        raise click.ClickException(
            f"{checkpoint} holds no loadable character model: {_one_line(error)}"
        ) from None
    target = checkpoint / DEFAULT_NAMES[fmt] if out is None else out

    from lstmkit.interop.charlm_onnx import export_charlm_onnx

    try:
        path = export_charlm_onnx(model, target, vocab=vocab, force=force)
    except FileExistsError:
        raise click.ClickException(
            f"{target} already exists; pass --force to replace it (nothing was written)"
        ) from None
    except (ImportError, OSError, TypeError, ValueError) as error:
        raise click.ClickException(_one_line(error)) from None
    config = model.config()
    click.echo(
        f"wrote {path}: {config['cell'].upper()} char LM, {config['num_layers']} layer(s) x "
        f"{config['hidden_size']}, vocabulary of {len(vocab)}; inputs ids (T, B) int64"
        f"{', h_0, c_0' if config['cell'] == 'lstm' else ', h_0'}"
    )


COMMANDS = [export]
