"""``lstmkit figures --out docs/figures``: draw the guides' figures (English and Japanese)."""

from __future__ import annotations

from pathlib import Path

import click

from lstmkit.figures import FIGURES, write_figures


@click.command()
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("docs/figures"), show_default=True,
              help="Folder to write en/NAME.png and ja/NAME.png into.")
@click.option("--only", "names", multiple=True, type=click.Choice(list(FIGURES)),
              help="Draw only this figure (repeatable); all by default.")
@click.option("--force", is_flag=True, help="Replace PNGs that already exist.")
def figures(out_dir: Path, names: tuple[str, ...], force: bool) -> None:
    """Draw the figures of the guides, seeded, in English and Japanese."""
    try:
        written = write_figures(out_dir, list(names) or None, force=force)
    except (FileExistsError, RuntimeError) as error:
        raise click.ClickException(str(error)) from error
    for path in written:
        click.echo(str(path))


COMMANDS = [figures]
