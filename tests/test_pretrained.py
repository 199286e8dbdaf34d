"""The bundled Japanese model: it loads, completes the study note's sentence, and ``gates`` and
``sample`` use it when no checkpoint is given."""

from __future__ import annotations

import json
import re
from fnmatch import fnmatch
from pathlib import Path

import numba
import numpy as np
import pytest
from click.testing import CliRunner
from threadpoolctl import threadpool_limits

import lstmkit
from lstmkit.cli import main
from lstmkit.cli.gates import NOTE_SENTENCE, _layer_gate
from lstmkit.pretrained import PRETRAINED, load_pretrained, model_card, pretrained_path
from lstmkit.sampling import sample
from lstmkit.train import evaluate_text

ROOT = Path(__file__).resolve().parent.parent
# What the bundled model writes after the note's sentence: greedily (temperature 0), and at
# temperature 0.5 with seed 0 (one thread; the same with two on the machine that measured it).
GREEDY = "しても、それでも、それでも"
SEEDED = "も知れないから、そんなに気が付いている。\n\u3000今日はこんな事を"


@pytest.fixture(scope="module")
def neko():
    return load_pretrained()


@pytest.fixture()
def one_thread():
    """The same numbers on every machine: one kernel thread and one BLAS thread."""
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        with threadpool_limits(1):
            yield
    finally:
        numba.set_num_threads(threads)


def test_the_bundled_model_is_small_float32_and_documented(neko):
    model, vocab, meta = neko
    assert not model.training
    assert {a.dtype for a in model.params.values()} == {np.dtype(np.float32)}
    assert vocab.unknown_id == len(vocab.chars) == model.vocab_size - 1
    assert all(char in vocab for char in NOTE_SENTENCE)
    files = list(pretrained_path().iterdir())
    assert sum(f.stat().st_size for f in files) < 5 * 2**20
    scores = json.loads((pretrained_path() / "scores.json").read_text(encoding="utf-8"))
    card = model_card()
    held_out = scores["held_out"]
    assert f"{held_out['loss']:.4f}" in card and f"{held_out['bpc']:.4f}" in card
    assert "benchmarks/train_neko_model.py" in card and "float16" in card
    assert meta["train"]["val_fraction"] == 0.1 and meta["storage"].startswith("float16")
    with pytest.raises(ValueError, match="'neko'"):
        load_pretrained("shakespeare")
    assert list(PRETRAINED) == ["neko"]


def test_the_model_files_are_package_data():
    """A non-editable install carries every file of the bundled models."""
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    section = pyproject.split("[tool.setuptools.package-data]", 1)[1]
    patterns = json.loads(re.search(r"^lstmkit = (\[.*\])$", section, re.M).group(1))
    package = Path(lstmkit.__file__).parent
    for path in (package / "data" / "pretrained").rglob("*"):
        if path.is_file():
            relative = path.relative_to(package).as_posix()
            assert any(fnmatch(relative, pattern) for pattern in patterns), relative


def test_it_completes_the_note_s_sentence(neko, one_thread):
    model, vocab, _ = neko
    assert sample(model, vocab, len(GREEDY), prime=NOTE_SENTENCE, temperature=0) == GREEDY
    assert sample(model, vocab, 30, prime=NOTE_SENTENCE, temperature=0.5, seed=0) == SEEDED
    result = CliRunner().invoke(main, ["sample", "--prime", NOTE_SENTENCE, "-n", len(GREEDY),
                                       "--temperature", 0])
    assert result.exit_code == 0, result.output
    assert result.output == NOTE_SENTENCE + GREEDY + "\n"


def test_gates_shows_the_bundled_model_s_forget_gate_on_totemo(neko, tmp_path):
    model, vocab, _ = neko
    out = tmp_path / "f.png"
    result = CliRunner().invoke(main, ["gates", "--text", NOTE_SENTENCE, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = re.findall(r"^\s+'(.)'\s+(-?\d+\.\d{3})", result.output, re.M)
    assert "".join(char for char, _ in rows) == NOTE_SENTENCE
    forget = _layer_gate(model, vocab.encode(NOTE_SENTENCE), "f", 0).mean(axis=1)  # (T,)
    start = NOTE_SENTENCE.index("とても")
    for t in range(start, start + 3):
        assert rows[t] == (NOTE_SENTENCE[t], f"{forget[t]:.3f}")
        assert 0 < forget[t] < 1


def test_it_scores_a_text_with_characters_it_never_saw(neko):
    model, vocab, _ = neko
    result = evaluate_text(model, vocab, "吾輩は猫である。名前はまだ無い。🐈")
    assert result.unknown_count == 1 and result.unknown_characters == ["🐈"]
    assert 0 < result.loss < 10
