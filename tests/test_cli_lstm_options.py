"""``lstmkit train`` with the LSTM options of docs/options.md (``--proj-size``,
``--recurrent-dropout``, ``--zoneout``, ``--zoneout-c``, ``--weight-drop``, ``--layer-norm``):
recorded in the checkpoint, rebuilt by ``load_charlm``, sampled from; refused for a GRU, for
values the LSTM refuses, and when changed on resume."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from lstmkit.cli import main
from lstmkit.train import load_charlm

TINY = ["--layers", "1", "--hidden", "12", "--embedding", "6", "--seq-len", "8", "--batch", "2",
        "--sample-every", "0", "--eval-every", "2", "--steps", "2", "--quiet"]
OPTIONS = ["--proj-size", "5", "--recurrent-dropout", "0.2", "--zoneout", "0.1",
           "--zoneout-c", "0.05", "--weight-drop", "0.3", "--layer-norm"]


@pytest.fixture()
def source(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "t.txt"
    path.write_text("".join("abc de\n"[i] for i in rng.integers(7, size=400)), encoding="utf-8")
    return path


def test_train_records_the_options_and_sample_reads_them(tmp_path, source):
    runner = CliRunner()
    result = runner.invoke(main, ["train", str(source), "--out", str(tmp_path / "run"),
                                  *TINY, *OPTIONS])
    assert result.exit_code == 0, result.output
    model, _, meta = load_charlm(tmp_path / "run")
    expected = {"proj_size": 5, "recurrent_dropout": 0.2, "zoneout": 0.1, "zoneout_c": 0.05,
                "weight_drop": 0.3, "layer_norm": True}
    assert {k: meta["model"][k] for k in expected} == expected
    rnn = model.rnn
    assert (rnn.proj_size, rnn.weight_drop, rnn.layer_norm) == (5, 0.3, True)
    assert rnn.cell_options["zoneout"] == 0.1 and "weight_ln_c_l0" in rnn.params
    assert model.decoder.params["weight"].shape[1] == 5
    sampled = runner.invoke(main, ["sample", str(tmp_path / "run"), "-n", "20", "--seed", "1"])
    assert sampled.exit_code == 0, sampled.output
    gates = runner.invoke(main, ["gates", str(tmp_path / "run"), "--text", "abc de",
                                 "--out", str(tmp_path / "f.png")])
    assert gates.exit_code == 0 and (tmp_path / "f.png").exists(), gates.output
    resumed = runner.invoke(main, ["train", str(source), "--out", str(tmp_path / "run"),
                                   "--resume", "--zoneout", "0.3", "--quiet"])
    assert resumed.exit_code != 0 and "cell_options" in resumed.output


@pytest.mark.parametrize("args,match", [
    (["--model", "gru", "--zoneout", "0.1"], "do not make a GRU"),
    (["--proj-size", "12"], "proj_size must be smaller than hidden_size"),
    (["--layer-norm", "--peepholes"], "cannot be combined with peepholes"),
])
def test_refused_with_a_clear_error(tmp_path, source, args, match):
    result = CliRunner().invoke(main, ["train", str(source), "--out", str(tmp_path / "run"),
                                       *TINY, *args])
    assert result.exit_code == 1 and match in result.output, result.output
