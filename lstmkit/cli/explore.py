"""``lstmkit explore [CHECKPOINT] --text "..." --out PAGE.html``: a page to look inside a model."""

from __future__ import annotations

from pathlib import Path

import click

from lstmkit.cli.charlm import load_model
from lstmkit.cli.gates import NOTE_SENTENCE
from lstmkit.explore import QUANTITIES, write_explore_page
from lstmkit.text import TextError


@click.command()
@click.argument("checkpoint", required=False, type=click.Path(exists=True, path_type=Path))
@click.option("--text", default=NOTE_SENTENCE, show_default=True,
              help="The characters to look at (those the model never saw are read as its "
                   "unknown symbol, and underlined).")
@click.option("--out", "out_path", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("explore.html"), show_default=True, help="The HTML page to write.")
@click.option("--layer", default=0, show_default=True, type=click.IntRange(min=0),
              help="The layer the page shows first.")
@click.option("--quantity", type=click.Choice(list(QUANTITIES)), default="c", show_default=True,
              help="What colours the characters first: the cell state c, the output h, or a "
                   "gate (i, f, g, o).")
@click.option("--unit", type=click.IntRange(min=0),
              help="The unit the page shows first. [default: the one that tracks a feature of "
                   "the text best]")
@click.option("--force", is_flag=True, help="Overwrite the page if it exists.")
def explore(checkpoint: Path | None, text: str, out_path: Path, layer: int, quantity: str,
            unit: int | None, force: bool) -> None:
    """Write one self-contained HTML page (no server, no network) to look inside a model.

    The page shows TEXT with each character coloured by a chosen unit's cell state or gate;
    hovering or clicking a character shows i, f, g, o, c and h of that step; a list ranks the
    units by how well they track inside-quotes, inside-brackets, position in the line and a
    punctuation mark just read. Without CHECKPOINT, the bundled Japanese model is used.
    """
    model, vocab, meta = load_model(checkpoint)
    config = model.config()
    source = str(checkpoint) if checkpoint is not None else "the bundled model 'neko'"
    title = (f"{source}: {config['cell'].upper()}, {config['num_layers']} layer(s) of "
             f"{config['hidden_size']} units, {len(vocab.chars):,} characters")
    try:
        path = write_explore_page(out_path, model, vocab, text, force=force, title=title,
                                  layer=layer, quantity=quantity, unit=unit)
    except FileExistsError:
        raise click.ClickException(f"{out_path} exists; pass --force to overwrite it") from None
    except (TextError, ValueError) as error:
        raise click.ClickException(" ".join(str(error).split())) from None
    size = path.stat().st_size
    click.echo(f"page written to {path} ({size / 1024:,.0f} KiB, {len(text):,} characters, "
               f"{config['num_layers']} x {config['hidden_size']} units): open it in a browser")


COMMANDS = [explore]
