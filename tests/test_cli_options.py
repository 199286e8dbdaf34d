"""``lstmkit train`` with cell options: recorded in the checkpoint, rebuilt by sample/eval/gates."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from lstmkit.activations import Activation
from lstmkit.train import load_charlm
from tests.test_cli_charlm import TINY, assert_one_line_error, english, invoke


@pytest.fixture()
def runner() -> CliRunner:
    return CliRunner()


def test_a_variant_trains_and_is_rebuilt_for_sample_eval_and_gates(tmp_path, runner):
    text = tmp_path / "t.txt"
    text.write_text(english(), encoding="utf-8")
    out = tmp_path / "run"
    result = invoke(runner, "train", text, "--out", out, "--steps", 4, "--eval-every", 2,
                    "--variant", "FGR", "--cell-clip", 3, "--recurrent-activation",
                    "hard_sigmoid", "--cell-option", "input_gate=true", *TINY)
    assert result.exit_code == 0, result.output
    model, _, meta = load_charlm(out)
    assert meta["train"]["cell_options"] == {
        "peepholes": True, "full_gate_recurrence": True, "forget_bias": 1.0, "clip": 3.0,
        "recurrent_activation": "hard_sigmoid", "input_gate": True}
    cell = model.rnn._cells[0]
    assert cell.full_gate_recurrence and cell.peepholes and cell.clip == 3.0
    assert cell.recurrent_activation == Activation("HardSigmoid", 1 / 6, 0.5)
    assert invoke(runner, "sample", out, "-n", 10, "--seed", 1).exit_code == 0
    held_out = tmp_path / "h.txt"
    held_out.write_text(english(100), encoding="utf-8")
    assert invoke(runner, "eval", out, held_out, "--json").exit_code == 0
    gates = invoke(runner, "gates", out, "--text", "to be or not", "--out", tmp_path / "f.png")
    assert gates.exit_code == 0, gates.output
    # fine-tuning takes the cell options from the checkpoint, and refuses others
    tuned = invoke(runner, "train", text, "--out", tmp_path / "tuned", "--steps", 2,
                   "--eval-every", 2, "--init-from", out, "--seq-len", 10, "--batch", 2,
                   "--sample-every", 0, "--quiet")
    assert tuned.exit_code == 0, tuned.output
    assert load_charlm(tmp_path / "tuned")[0].rnn._cells[0] == cell
    other = invoke(runner, "train", text, "--out", tmp_path / "other", "--steps", 2,
                   "--init-from", out, "--cell-clip", 1, "--quiet")
    assert_one_line_error(other, 1, "contradicts")
    # a resumed run keeps its model: other cell options are refused
    clash = invoke(runner, "train", text, "--out", out, "--steps", 6, "--resume",
                   "--cell-clip", 1)
    assert_one_line_error(clash, 1, "cell_options")


def test_gru_option_and_noaf(tmp_path, runner):
    text = tmp_path / "t.txt"
    text.write_text(english(), encoding="utf-8")
    gru = invoke(runner, "train", text, "--out", tmp_path / "gru", "--steps", 2, "--eval-every",
                 2, "--model", "gru", "--cell-option", "linear_before_reset=false", *TINY)
    assert gru.exit_code == 0, gru.output
    assert not load_charlm(tmp_path / "gru")[0].rnn._cells[0].linear_before_reset
    noaf = invoke(runner, "train", text, "--out", tmp_path / "noaf", "--steps", 2,
                  "--eval-every", 2, "--variant", "NOAF", "--no-peepholes", *TINY)
    assert noaf.exit_code == 0, noaf.output
    cell = load_charlm(tmp_path / "noaf")[0].rnn._cells[0]
    assert cell.output_activation.name == "Identity" and not cell.peepholes


@pytest.mark.parametrize("args, fragment", [
    (["--activation", "gelu"], "unknown activation 'gelu'"),
    (["--cell-option", "nonsense=1"], "nonsense"),
    (["--model", "gru", "--peepholes"], "peepholes"),
])
def test_bad_cell_options_are_one_line_errors(tmp_path, runner, args, fragment):
    text = tmp_path / "t.txt"
    text.write_text(english(), encoding="utf-8")
    result = invoke(runner, "train", text, "--out", tmp_path / "run", "--steps", 2, *args, *TINY)
    assert_one_line_error(result, 1, fragment)
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


def test_cell_option_needs_key_value(tmp_path, runner):
    result = invoke(runner, "train", tmp_path / "t.txt", "--out", tmp_path / "run",
                    "--cell-option", "peepholes")
    assert result.exit_code == 2 and "KEY=VALUE" in result.output
