"""``lstmkit gates [CHECKPOINT] --text "..."``: look at a text model's forget gate, character by
character (the study note's question: which word of a sentence may the forget gate drop?).
Without CHECKPOINT the bundled Japanese model is used."""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from lstmkit import diagnostics
from lstmkit.cli.charlm import load_model
from lstmkit.grad_mode import no_grad
from lstmkit.models import CharLM
from lstmkit.text import TextError

NOTE_SENTENCE = "映画おもしろかったね。ところで、とてもお腹が空いたから何か"


@click.command()
@click.argument("checkpoint", required=False, type=click.Path(exists=True, path_type=Path))
@click.option("--text", default=NOTE_SENTENCE, show_default=True,
              help="The characters to feed the model (all must be in its vocabulary).")
@click.option("--gate", type=click.Choice(["f", "i", "o", "g", "c"]), default="f",
              show_default=True, help="Which gate (or the cell state c) to show.")
@click.option("--layer", default=0, show_default=True, help="Which stacked layer to look at.")
@click.option("--units", default=16, show_default=True,
              help="Show the units whose values vary most over the text (0 = all).")
@click.option("--out", "out_path", type=click.Path(path_type=Path), default=None,
              help="PNG to write [default: gates-<gate>-l<layer>.png next to the checkpoint, "
                   "or in the current directory for the bundled model].")
@click.option("--force", is_flag=True, help="Overwrite the PNG if it exists.")
def gates(checkpoint: Path | None, text: str, gate: str, layer: int, units: int,
          out_path: Path | None, force: bool) -> None:
    """Heatmap of one gate per character of TEXT for a trained character model.

    Without CHECKPOINT, the bundled Japanese model is used.
    """
    model, vocab, _ = load_model(checkpoint)
    try:
        ids = vocab.encode(text)
    except (TextError, ValueError) as error:
        raise click.ClickException(str(error)) from error
    if model.rnn.mode != "LSTM":
        raise click.ClickException(f"the model is a {model.rnn.mode}; gates needs an LSTM")
    if not 0 <= layer < model.rnn.num_layers:
        raise click.ClickException(
            f"--layer {layer}: the model has layers 0..{model.rnn.num_layers - 1}"
        )
    values = _layer_gate(model, ids, gate, layer)
    order = np.argsort(-values.std(axis=0))
    chosen = order if units <= 0 else order[:units]
    out_path = out_path or Path(checkpoint or ".") / f"gates-{gate}-l{layer}.png"
    if out_path.exists() and not force:
        raise click.ClickException(f"{out_path} exists; pass --force to overwrite it")
    result = diagnostics.plot_gate_heatmap(
        text, values, out_path, units=list(chosen),
        title=f"{gate} gate, layer {layer}, {len(chosen)} most varying units",
        vmin=None if gate in "gc" else 0.0, vmax=None if gate in "gc" else 1.0,
    )
    click.echo(f"mean {gate} over all {values.shape[1]} units, per character:")
    for char, value in zip(text, values.mean(axis=1)):
        bar = "#" * int(round(20 * value)) if gate in "fio" else ""
        click.echo(f"  {char!r:>6} {value:7.3f} {bar}")
    click.echo(f"heatmap written to {result.path} (font: {result.font or 'none found'})")


def _layer_gate(model: CharLM, ids: np.ndarray, gate: str, layer: int) -> np.ndarray:
    """(T, H) values of ``gate`` in stacked layer ``layer`` for one sequence of ids."""
    with no_grad():
        _, _, gates_by_stream = model.forward(ids[:, None], return_gates=True)
    return gates_by_stream[f"l{layer}"][gate][:, 0]


COMMANDS = [gates]
