"""The guides can't rot: their code runs, their outputs hold, their citations point at the code.

``docs/guide.md`` and ``docs/guide.ja.md`` follow these conventions, checked here:

- A fenced ```` ```python ```` block is runnable. It is executed in a fresh namespace; if a
  ```` ```text ```` block follows it (blank lines between allowed), that block is the output the
  guide shows, and the block's stdout must match it: the words exactly, the numbers to a
  relative 1e-3 (so a different BLAS cannot fail the test, a changed result does).
  ```` ```py ```` blocks are quoted excerpts and are not run.
- Command transcripts (``$ lstmkit ...`` and what it printed) are ```` ```text ```` blocks
  after prose, not after a ``python`` block: they are not run here (the experiments take
  minutes); the numbers they show come from the tested functions above them where possible.
  Each ``$ lstmkit NAME --option`` in them must name a real command and real options.
- A citation reads ```` `lstmkit/path.py`, `Name.method`, L10-L20 ````. The file must exist,
  the name must be a function, class, method or assigned name in it whose lines contain the
  range, and if a ```` ```py ```` excerpt follows the citation, each of its lines (``...``
  lines aside) must appear in the cited range, in order.
- Each guide links to the other near its top, and every in-page link ``(#anchor)`` names a
  heading (GitHub's anchors: lower case, punctuation dropped, spaces to hyphens).
"""

from __future__ import annotations

import ast
import contextlib
import io
import math
import re
import shlex
import unicodedata
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GUIDES = {"en": ROOT / "docs" / "guide.md", "ja": ROOT / "docs" / "guide.ja.md"}
OTHER = {"en": "guide.ja.md", "ja": "guide.md"}

FENCE = re.compile(r"^```([\w-]*)\n(.*?)^```\s*$", re.M | re.S)
CITATION = re.compile(r"`(lstmkit/[\w/]+\.py)`,\s+`([\w.]+)`,\s+L(\d+)-L(\d+)")
NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")


@dataclass(frozen=True)
class Block:
    lang: str
    body: str
    start: int  # offset of the opening fence in the guide
    end: int  # offset just after the closing fence
    line: int  # line number of the opening fence


@cache
def guide_text(lang: str) -> str:
    """The guide's text; empty if it is missing (``test_guides_exist`` then fails)."""
    path = GUIDES[lang]
    return path.read_text(encoding="utf-8") if path.is_file() else ""


@cache
def blocks(lang: str) -> tuple[Block, ...]:
    text = guide_text(lang)
    return tuple(
        Block(m.group(1), m.group(2), m.start(), m.end(), text.count("\n", 0, m.start()) + 1)
        for m in FENCE.finditer(text)
    )


def following(lang: str, block: Block, kind: str) -> Block | None:
    """The block right after ``block`` (only whitespace between) if it is of ``kind``."""
    text = guide_text(lang)
    for other in blocks(lang):
        if other.start >= block.end:
            between = text[block.end : other.start]
            return other if other.lang == kind and not between.strip() else None
    return None


def same_output(actual: str, expected: str) -> bool:
    """Words equal after whitespace normalisation; numbers equal to a relative 1e-3."""
    def split(s: str) -> tuple[list[str], list[float]]:
        words = " ".join(NUMBER.sub(" # ", s).split())
        return [words], [float(n) for n in NUMBER.findall(s)]

    words_a, nums_a = split(actual)
    words_e, nums_e = split(expected)
    return words_a == words_e and len(nums_a) == len(nums_e) and all(
        math.isclose(a, e, rel_tol=1e-3, abs_tol=1e-300) for a, e in zip(nums_a, nums_e)
    )


def python_blocks() -> list:
    return [
        pytest.param(lang, b, id=f"{lang}-L{b.line}")
        for lang in GUIDES for b in blocks(lang) if b.lang == "python"
    ]


def citations() -> list:
    result = []
    for lang in GUIDES:
        text = guide_text(lang)
        for m in CITATION.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            excerpt = next(
                (b for b in blocks(lang) if b.start > m.end()
                 and b.lang == "py" and not text[m.end() : b.start].strip(":：\n ")),
                None,
            )
            result.append(pytest.param(
                m.group(1), m.group(2), int(m.group(3)), int(m.group(4)),
                excerpt.body if excerpt else None, id=f"{lang}-L{line}-{m.group(2)}",
            ))
    return result


def test_guides_exist():
    for path in GUIDES.values():
        assert path.is_file(), f"{path.relative_to(ROOT)} is missing"


def test_both_guides_have_runnable_blocks_and_citations():
    for lang in GUIDES:
        kinds = [b.lang for b in blocks(lang)]
        assert kinds.count("python") >= 5, f"{GUIDES[lang].name}: too few runnable blocks"
        assert len(CITATION.findall(guide_text(lang))) >= 8, f"{GUIDES[lang].name}: citations"


def test_guides_have_the_same_structure():
    """The same sections, blocks, citations and outputs, in the same order (the Japanese
    guide's code may differ in its comments, so the outputs stand for the code)."""
    def shape(lang: str) -> dict[str, list]:
        text = guide_text(lang)
        return {
            "sections": re.findall(r"^(#{2,3}) ", text, re.M),
            "blocks": [b.lang for b in blocks(lang)],
            "citations": CITATION.findall(text),
            "outputs": [b.body for b in blocks(lang) if b.lang in ("text", "console", "py")],
        }

    en, ja = shape("en"), shape("ja")
    for part in en:
        assert en[part] == ja[part], f"the guides' {part} differ"


@pytest.mark.parametrize("lang", list(GUIDES))
def test_every_line_range_is_a_checked_citation(lang):
    """A line range written any other way would escape the citation check."""
    text = guide_text(lang)
    ranges = len(re.findall(r"\bL\d+-L\d+\b", text))
    assert ranges == len(CITATION.findall(text)), (
        f"{GUIDES[lang].name}: write every line range as `lstmkit/path.py`, `Name`, L1-L2"
    )


@pytest.mark.parametrize("lang", list(GUIDES))
def test_guides_link_to_each_other(lang):
    top = "\n".join(guide_text(lang).splitlines()[:6])
    assert f"]({OTHER[lang]})" in top, f"{GUIDES[lang].name} must link to {OTHER[lang]} at the top"
    assert (GUIDES[lang].parent / OTHER[lang]).is_file()


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: letters, marks, numbers, '_', '-' kept; ' ' -> '-'."""
    kept = "".join(
        ch for ch in heading.strip().lower()
        if unicodedata.category(ch)[0] in "LMN" or unicodedata.category(ch) == "Pc" or ch in " -"
    )
    return kept.replace(" ", "-")


@pytest.mark.parametrize("lang", list(GUIDES))
def test_in_page_links_name_a_heading(lang):
    text = FENCE.sub("", guide_text(lang))
    anchors = {github_anchor(h) for h in re.findall(r"^#{1,6} (.+)$", text, re.M)}
    links = re.findall(r"\]\(#([^)]+)\)", text)
    assert links, f"{GUIDES[lang].name} has no in-page links"
    missing = sorted(set(links) - anchors)
    assert not missing, f"{GUIDES[lang].name}: links to no heading: {missing}"


@pytest.mark.parametrize(("lang", "block"), python_blocks())
def test_python_block_runs_and_prints_what_the_guide_shows(lang, block):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = compile(block.body, f"{GUIDES[lang].name}:{block.line}", "exec")
        exec(code, {"__name__": "__guide__"})
    shown = following(lang, block, "text")
    if shown is not None:
        assert same_output(out.getvalue(), shown.body), (
            f"{GUIDES[lang].name} line {block.line}: the block prints\n{out.getvalue()}\n"
            f"but the guide shows\n{shown.body}"
        )


def transcribed_commands() -> list:
    result = []
    for lang in GUIDES:
        for b in blocks(lang):
            if b.lang != "text":
                continue
            for line in b.body.splitlines():
                if line.startswith("$ lstmkit"):
                    result.append(pytest.param(line[2:], id=f"{lang}-L{b.line}-{line[2:40]}"))
    return result


@pytest.mark.parametrize("command", transcribed_commands())
def test_transcribed_command_exists(command):
    """A transcript shows a command that exists, with options it has (it is not run here)."""
    from lstmkit.cli import main

    args = shlex.split(command)[1:]
    assert args and args[0] in main.commands, f"no command `lstmkit {args[0] if args else ''}`"
    params = main.commands[args[0]].params
    known = {opt for param in params for opt in param.opts + param.secondary_opts}
    for arg in args[1:]:
        if arg.startswith("-"):
            assert arg.split("=")[0] in known, f"`lstmkit {args[0]}` has no option {arg}"


def _spans(tree: ast.Module) -> dict[str, tuple[int, int]]:
    """Qualified names (``Class.method``, ``function``, ``CONSTANT``) -> (first, last) line."""
    spans: dict[str, tuple[int, int]] = {}

    def visit(body: list[ast.stmt], prefix: str) -> None:
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                first = min([node.lineno] + [d.lineno for d in node.decorator_list])
                spans[prefix + node.name] = (first, node.end_lineno)
                if isinstance(node, ast.ClassDef):
                    visit(node.body, f"{prefix}{node.name}.")
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    if isinstance(target, ast.Name):
                        spans[prefix + target.id] = (node.lineno, node.end_lineno)

    visit(tree.body, "")
    return spans


@pytest.mark.parametrize(("path", "name", "first", "last", "excerpt"), citations())
def test_citation_points_at_the_named_code(path, name, first, last, excerpt):
    source = ROOT / path
    assert source.is_file(), f"{path} does not exist"
    text = source.read_text(encoding="utf-8")
    lines = text.splitlines()
    assert 1 <= first <= last <= len(lines), (
        f"{path} has {len(lines)} lines, cited L{first}-L{last}"
    )
    spans = _spans(ast.parse(text))
    assert name in spans, f"{path} defines no {name}"
    start, end = spans[name]
    assert start <= first and last <= end, (
        f"{path} L{first}-L{last} is not inside {name} (L{start}-L{end})"
    )
    if excerpt is not None:
        cited = [line.strip() for line in lines[first - 1 : last]]
        pos = 0
        for quoted in (q.strip() for q in excerpt.splitlines()):
            if not quoted or quoted == "...":
                continue
            assert quoted in cited[pos:], (
                f"{path} L{first}-L{last} ({name}) does not contain, in order: {quoted!r}"
            )
            pos = cited.index(quoted, pos) + 1
