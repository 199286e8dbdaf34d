"""``lstmkit train`` with the LSTM options of docs/options.md: recorded in the checkpoint,
rebuilt by ``load_charlm``, sampled from; refused for GRU/RNN and on resume."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from lstmkit.cli import main
from lstmkit.train import TrainConfig, TrainingError, load_charlm

TINY = ["--layers", "1", "--hidden", "12", "--embedding", "6", "--seq-len", "8", "--batch", "2",
        "--sample-every", "0", "--eval-every", "2", "--steps", "2", "--quiet"]
OPTIONS = ["--proj-size", "5", "--recurrent-dropout", "0.2", "--zoneout", "0.1",
           "--zoneout-c", "0.05", "--weight-drop", "0.3", "--layer-norm"]


def text() -> str:
    rng = np.random.default_rng(0)
    return "".join("abc de\n"[i] for i in rng.integers(7, size=400))


def test_train_records_the_options_and_sample_reads_them(tmp_path):
    source = tmp_path / "t.txt"
    source.write_text(text(), encoding="utf-8")
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
    resumed = runner.invoke(main, ["train", str(source), "--out", str(tmp_path / "run"),
                                   "--resume", "--zoneout", "0.3", "--quiet"])
    assert resumed.exit_code != 0 and "zoneout" in resumed.output


@pytest.mark.parametrize("option", [{"zoneout": 0.1}, {"layer_norm": True}, {"proj_size": 2}])
def test_lstm_options_need_the_lstm(option):
    with pytest.raises(TrainingError, match="LSTM option.*use cell 'lstm'"):
        TrainConfig(cell="gru", **option).validate()


@pytest.mark.parametrize("option,match", [({"proj_size": 256}, "proj_size"),
                                          ({"weight_drop": 1.0}, "weight_drop"),
                                          ({"layer_norm": 1}, "layer_norm")])
def test_bad_values_are_refused(option, match):
    with pytest.raises(TrainingError, match=match):
        TrainConfig(**option).validate()
