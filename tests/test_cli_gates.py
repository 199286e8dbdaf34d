"""``lstmkit gates``: a forget-gate heatmap for a trained text model."""

from __future__ import annotations

import numpy as np
from click.testing import CliRunner

from lstmkit.cli import main
from lstmkit.cli.gates import NOTE_SENTENCE, _layer_gate
from lstmkit.train import TrainConfig, load_charlm, train


def test_gates_writes_heatmap_and_table(tmp_path):
    text = (NOTE_SENTENCE + "。今日はいい天気ですね。") * 30
    config = TrainConfig(num_layers=2, hidden_size=8, embedding_dim=4, seq_len=10,
                         batch_size=2, steps=3, eval_every=3, sample_every=0, seed=0)
    train(text, tmp_path / "run", config, quiet=True)
    out = tmp_path / "f.png"
    result = CliRunner().invoke(main, ["gates", str(tmp_path / "run"), "--layer", "1",
                                       "--units", "4", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = [line for line in result.output.splitlines() if line.startswith("  ")]
    assert len(lines) == len(NOTE_SENTENCE)
    model, vocab, _ = load_charlm(tmp_path / "run")
    values = _layer_gate(model, vocab.encode(NOTE_SENTENCE), "f", 1)
    assert values.shape == (len(NOTE_SENTENCE), 8)
    assert f"{values.mean(axis=1)[0]:7.3f}" in lines[0]
    assert np.all((values > 0) & (values < 1))
    again = CliRunner().invoke(main, ["gates", str(tmp_path / "run"), "--out", str(out)])
    assert again.exit_code != 0 and "--force" in again.output
    unknown = CliRunner().invoke(main, ["gates", str(tmp_path / "run"), "--text", "xyz"])
    assert unknown.exit_code != 0 and "'x'" in unknown.output
