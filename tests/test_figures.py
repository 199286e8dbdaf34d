"""The guides' figures: drawn by one command, committed, and embedded in both guides."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from lstmkit import figures
from lstmkit.cli import main

ROOT = Path(__file__).resolve().parent.parent
FIGURE_DIR = ROOT / "docs" / "figures"
GUIDES = {"en": ROOT / "docs" / "guide.md", "ja": ROOT / "docs" / "guide.ja.md"}
# Markdown files that may embed figures, and the folder their links are relative to.
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
IMAGE = re.compile(r"!\[[^\]]*\]\(([^)\s]+\.png)\)")


def embedded(document: Path) -> list[Path]:
    """The PNGs a Markdown file embeds, resolved against its folder."""
    text = document.read_text(encoding="utf-8")
    return [(document.parent / link).resolve() for link in IMAGE.findall(text)]


def test_the_generator_writes_exactly_the_committed_figures(tmp_path):
    result = CliRunner().invoke(main, ["figures", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.png"))
    assert written == sorted(figures.figure_files())
    committed = sorted(str(p.relative_to(FIGURE_DIR)) for p in FIGURE_DIR.rglob("*.png"))
    assert committed == written, "run `lstmkit figures --out docs/figures --force` and commit"
    assert all(p.stat().st_size > 10_000 for p in tmp_path.rglob("*.png"))


def test_the_figures_are_small():
    total = sum(p.stat().st_size for p in FIGURE_DIR.rglob("*.png"))
    assert total < 2_000_000, f"docs/figures holds {total:,} bytes"


def test_the_command_does_not_overwrite_without_force(tmp_path):
    runner = CliRunner()
    assert runner.invoke(main, ["figures", "--out", str(tmp_path), "--only", "sigmoid"]
                         ).exit_code == 0
    before = (tmp_path / "en" / "sigmoid.png").read_bytes()
    refused = runner.invoke(main, ["figures", "--out", str(tmp_path), "--only", "sigmoid"])
    assert refused.exit_code != 0 and "--force" in refused.output
    assert (tmp_path / "en" / "sigmoid.png").read_bytes() == before
    forced = runner.invoke(main, ["figures", "--out", str(tmp_path), "--only", "sigmoid",
                                  "--force"])
    assert forced.exit_code == 0 and (tmp_path / "en" / "sigmoid.png").read_bytes() == before


def test_every_language_has_every_label():
    for key, labels in figures.TEXT.items():
        assert set(labels) == set(figures.LANGUAGES), key


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.name)
def test_every_embedded_figure_exists(document):
    missing = [str(p) for p in embedded(document) if not p.is_file()]
    assert not missing, f"{document.name} embeds missing images: {missing}"


@pytest.mark.parametrize("lang", list(GUIDES))
def test_each_guide_embeds_every_figure_in_its_language(lang):
    shown = {p for p in embedded(GUIDES[lang]) if FIGURE_DIR in p.parents}
    expected = {(FIGURE_DIR / lang / f"{name}.png").resolve() for name in figures.FIGURES}
    assert shown == expected, (
        f"{GUIDES[lang].name} embeds {sorted(p.name for p in shown)}, expected every figure "
        f"from docs/figures/{lang}/"
    )
