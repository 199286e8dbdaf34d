"""Tests for ``lstmkit train``, ``lstmkit sample`` and ``lstmkit eval`` (click's CliRunner).

Texts are generated here (English-like and Japanese); models are tiny and train a few steps.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from click.testing import CliRunner

import lstmkit.train as train_module
from lstmkit.cli import main
from lstmkit.engine import kernels
from lstmkit.grad_mode import no_grad
from lstmkit.io import CheckpointManager, load_checkpoint
from lstmkit.nn import softmax_cross_entropy

TINY = ["--layers", "1", "--hidden", "16", "--embedding", "8", "--seq-len", "10", "--batch", "2",
        "--sample-every", "0", "--quiet"]
PRIME_JA = "ところで、とてもお腹が空いたから何か"


@pytest.fixture(autouse=True, scope="module")
def reference_recurrence():
    """Test the loop on the reference recurrence: for these tiny models it is as fast, and no
    test waits for the fused kernels to compile."""
    enabled = kernels.is_enabled()
    kernels.set_enabled(False)
    yield
    kernels.set_enabled(enabled)


def english(n: int = 600) -> str:
    rng = np.random.default_rng(0)
    words = ["to", "be", "or", "not", "that", "is", "the", "question,", "ROMEO:\n", "love."]
    return " ".join(words[i] for i in rng.integers(len(words), size=n))[:n]


def japanese(n: int = 600) -> str:
    rng = np.random.default_rng(1)
    parts = ["吾輩は猫である。", "名前はまだ無い。", "ところで、", "とてもお腹が空いたから",
             "何か食べたい。", "どこで生れたか", "とんと見当がつかぬ。\n"]
    return "".join(parts[i] for i in rng.integers(len(parts), size=n))[:n]


@pytest.fixture()
def runner() -> CliRunner:
    return CliRunner()


def invoke(runner: CliRunner, *args: object):
    return runner.invoke(main, [str(a) for a in args])


def assert_one_line_error(result, code: int = 1, *fragments: str) -> None:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)
    lines = result.output.strip().splitlines()
    error = [line for line in lines if line.startswith("Error:")]
    assert len(error) == 1, result.output
    for fragment in fragments:
        assert fragment in error[0], error[0]


# ----------------------------------------------------------------------------------------------
# The whole round trip


@pytest.mark.parametrize(("make_text", "prime"), [(english, "ROMEO:"), (japanese, PRIME_JA)])
def test_train_sample_eval(tmp_path, runner, make_text, prime):
    text_file = tmp_path / "input.txt"
    text_file.write_text(make_text(), encoding="utf-8")
    out = tmp_path / "run"
    result = invoke(runner, "train", text_file, "--out", out, "--steps", 8, "--eval-every", 4,
                    *TINY)
    assert result.exit_code == 0, result.output
    assert result.output.startswith("completed: reached 8 steps")
    assert "validation loss" in result.output and "peak memory" in result.output
    assert (out / "latest.json").is_file() and (out / "best.json").is_file()

    first = invoke(runner, "sample", out, "--prime", prime, "-n", 40, "--seed", 3,
                   "--temperature", 0.7)
    assert first.exit_code == 0, first.output
    assert first.output.startswith(prime) and len(first.output) == len(prime) + 40 + 1
    again = invoke(runner, "sample", out, "--prime", prime, "-n", 40, "--seed", 3,
                   "--temperature", 0.7)
    assert again.output == first.output
    top = invoke(runner, "sample", out, "-n", 10, "--seed", 3, "--top-k", 2, "--latest")
    assert top.exit_code == 0 and len(top.output) == 11

    held_out = tmp_path / "held_out.txt"
    held_out.write_text(make_text()[:200], encoding="utf-8")
    as_json = invoke(runner, "eval", out, held_out, "--json")
    assert as_json.exit_code == 0, as_json.output
    metrics = json.loads(as_json.output)  # exactly one JSON object
    assert set(metrics) == {"loss", "bpc", "perplexity", "characters", "unknown_count",
                            "unknown_share", "unknown_characters"}
    assert metrics["unknown_count"] == 0 and metrics["characters"] == 200
    assert metrics["bpc"] == pytest.approx(metrics["loss"] / math.log(2))
    assert metrics["perplexity"] == pytest.approx(math.exp(metrics["loss"]))
    assert 0 < metrics["loss"] < math.log(len(set(make_text()))) + 1
    plain = invoke(runner, "eval", out, held_out)
    assert "nats/char" in plain.output and "bits/char" in plain.output


def test_help_explains_every_option(runner):
    result = invoke(runner, "train", "--help")
    assert result.exit_code == 0
    for option in ("--model", "--layers", "--hidden", "--embedding", "--dropout", "--seq-len",
                   "--batch", "--lr", "--clip", "--time-limit", "--steps", "--seed",
                   "--val-fraction", "--eval-every", "--sample-every", "--patience", "--resume",
                   "--force", "--quiet", "--preset"):
        assert option in result.output
    assert "[default: 256]" in result.output
    for command, option in (("sample", "--top-k"), ("eval", "--json")):
        result = invoke(runner, command, "--help")
        assert result.exit_code == 0 and option in result.output


# ----------------------------------------------------------------------------------------------
# Runs that already exist: refuse, force, resume


def test_existing_output_needs_resume_or_force(tmp_path, runner):
    text_file = tmp_path / "input.txt"
    text_file.write_text(english(), encoding="utf-8")
    out = tmp_path / "run"
    args = ["train", text_file, "--out", out, "--eval-every", 4, *TINY]
    assert invoke(runner, *args, "--steps", 4).exit_code == 0
    assert_one_line_error(invoke(runner, *args, "--steps", 4), 1, "--resume", "--force")
    resumed = invoke(runner, *args, "--steps", 8, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert "Step 8" in resumed.output
    _, meta = load_checkpoint(out)
    assert meta["progress"]["step"] == 8
    clash = invoke(runner, *args[:4], "--resume", "--hidden", 32)
    assert_one_line_error(clash, 1, "hidden_size=16", "hidden_size=32")
    assert_one_line_error(invoke(runner, *args, "--resume", "--force"), 2, "choose one")
    forced = invoke(runner, *args, "--steps", 2, "--eval-every", 2, "--force")
    assert forced.exit_code == 0, forced.output
    assert [p.name for p in CheckpointManager(out).checkpoints()] == ["step-000002"]


def test_preset_and_explicit_options(tmp_path, runner):
    text_file = tmp_path / "input.txt"
    text_file.write_text(english(), encoding="utf-8")
    result = invoke(runner, "train", text_file, "--out", tmp_path / "run", "--preset", "tiny",
                    "--hidden", 8, "--seq-len", 10, "--batch", 2, "--steps", 2, "--quiet")
    assert result.exit_code == 0, result.output
    _, meta = load_checkpoint(tmp_path / "run")
    assert meta["model"]["hidden_size"] == 8  # explicit beats the preset
    assert meta["model"]["embedding_dim"] == 32 and meta["train"]["eval_every"] == 100  # preset


def test_nonfinite_loss_exits_with_a_message(tmp_path, runner, monkeypatch):
    def poisoned(logits, targets, *args, **kwargs):
        loss, grad = softmax_cross_entropy(logits, targets, *args, **kwargs)
        return (np.float32(np.inf), grad) if kwargs.get("compute_grad", True) else (loss, grad)

    monkeypatch.setattr(train_module, "softmax_cross_entropy", poisoned)
    text_file = tmp_path / "input.txt"
    text_file.write_text(english(), encoding="utf-8")
    result = invoke(runner, "train", text_file, "--out", tmp_path / "run", "--steps", 4, *TINY)
    assert_one_line_error(result, 1, "training stopped at step 1", "inf", "learning rate")


# ----------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"", "is empty"),
        (b"abc\x00\x01\x02def" * 10, "binary"),
        (b"caf\xe9 au lait", "not valid UTF-8"),
        (b"\xff\xfea\x00b\x00", "UTF-16"),
    ],
)
def test_unusable_text_files(tmp_path, runner, content, fragment):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(content)
    result = invoke(runner, "train", bad, "--out", tmp_path / "run", "--steps", 2, *TINY)
    assert_one_line_error(result, 1, fragment)
    assert not (tmp_path / "run").exists()


def test_missing_and_too_short_inputs(tmp_path, runner):
    result = invoke(runner, "train", tmp_path / "nope.txt", "--out", tmp_path / "run", *TINY)
    assert_one_line_error(result, 1, "does not exist")
    short = tmp_path / "short.txt"
    short.write_text("abcdefghijklmno", encoding="utf-8")
    assert_one_line_error(invoke(runner, "train", short, "--out", tmp_path / "r", *TINY), 1,
                          "too few")
    assert_one_line_error(invoke(runner, "sample", tmp_path / "none"), 1, "does not exist")
    result = invoke(runner, "train", short, "--out", tmp_path / "r", "--dropout", 1.5)
    assert result.exit_code == 2 and "Traceback" not in result.output


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("trained")
    text_file = root / "input.txt"
    text_file.write_text(japanese(), encoding="utf-8")
    result = CliRunner().invoke(main, ["train", str(text_file), "--out", str(root / "run"),
                                       "--steps", "2", *TINY])
    assert result.exit_code == 0, result.output
    return root


def test_unknown_characters_are_counted_in_eval_and_refused_in_a_prime(trained, runner):
    other = trained / "other.txt"
    other.write_text("吾輩は犬である。Dog!", encoding="utf-8")
    result = invoke(runner, "eval", trained / "run", other, "--json")
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.output)
    assert metrics["unknown_count"] == 5 and metrics["characters"] == 12
    assert metrics["unknown_share"] == pytest.approx(5 / 12)
    assert metrics["unknown_characters"] == ["!", "D", "g", "o", "犬"]
    # The loss is over the 6 predicted characters the model knows (not 犬, D, o, g, !).
    model, vocab, _ = train_module.load_charlm(trained / "run")
    ids = vocab.encode("吾輩は犬である。Dog!", allow_unknown=True)
    with no_grad():
        logits, _ = model(ids[:-1, None])
    targets = ids[1:, None]
    expected, _ = softmax_cross_entropy(logits.astype(np.float64), targets,
                                        ignore_index=vocab.unknown_id)
    assert np.count_nonzero(targets != vocab.unknown_id) == 6
    assert metrics["loss"] == pytest.approx(float(expected), rel=1e-5)
    plain = invoke(runner, "eval", trained / "run", other)
    assert "5 characters (41.67%) are unknown" in plain.output and "犬" in plain.output
    unknown_only = trained / "unknown.txt"
    unknown_only.write_text("Dog!", encoding="utf-8")
    result = invoke(runner, "eval", trained / "run", unknown_only)
    assert_one_line_error(result, 1, "nothing to score")
    result = invoke(runner, "sample", trained / "run", "--prime", "吾輩は犬", "-n", 5)
    assert_one_line_error(result, 1, "'犬' (U+72AC)", "prime")
    result = invoke(runner, "eval", trained / "run", trained / "missing.txt")
    assert_one_line_error(result, 1, "does not exist")


# ----------------------------------------------------------------------------------------------
# Signals: a real process, a real signal


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_saves_a_checkpoint_and_exits_cleanly(tmp_path, signum):
    text_file = tmp_path / "input.txt"
    text_file.write_text(english(3000), encoding="utf-8")
    out = tmp_path / "run"
    stdout, stderr = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    command = [sys.executable, "-c", "from lstmkit.cli import main; main()", "train",
               str(text_file), "--out", str(out), "--steps", "1000000", "--time-limit", "2",
               "--eval-every", "20", *[a for a in TINY if a != "--quiet"]]
    with open(stdout, "wb") as out_file, open(stderr, "wb") as err_file:
        env = {**os.environ, "LSTMKIT_KERNELS": "0"}
        process = subprocess.Popen(command, stdout=out_file, stderr=err_file, env=env)
        try:
            deadline = time.monotonic() + 60
            while not (out / "latest.json").exists():  # the first checkpoint: training runs
                assert process.poll() is None, stderr.read_text()
                assert time.monotonic() < deadline, "no checkpoint within 60 s"
                time.sleep(0.05)
            process.send_signal(signum)
            code = process.wait(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
    output, errors = stdout.read_text(), stderr.read_text()
    assert code == 0, errors
    assert "Traceback" not in errors
    assert f"{signum.name} received" in errors
    assert output.startswith("interrupted: interrupted at step") and "--resume" in output
    tensors, meta = load_checkpoint(out)
    assert meta["status"] == "interrupted"
    assert meta["progress"]["step"] >= 20
    assert tensors["history.train_loss"].shape == (meta["progress"]["step"],)


def test_init_from_takes_the_architecture_of_the_checkpoint(trained, runner, tmp_path):
    new_text = tmp_path / "new.txt"
    new_text.write_text(japanese(300).replace("猫", "犬"), encoding="utf-8")  # 犬 is new
    result = invoke(runner, "train", new_text, "--out", tmp_path / "tuned", "--steps", 2,
                    "--init-from", trained / "run", "--seq-len", 10, "--batch", 2,
                    "--sample-every", 0)
    assert result.exit_code == 0, result.output
    assert "unknown symbol" in result.output and "犬" in result.output
    _, meta = load_checkpoint(tmp_path / "tuned")
    assert meta["model"]["hidden_size"] == 16 and meta["model"]["embedding_dim"] == 8
    assert meta["init_from"]["path"] == str(trained / "run")
    contradiction = invoke(runner, "train", new_text, "--out", tmp_path / "other", "--steps", 2,
                           "--init-from", trained / "run", "--hidden", 32)
    assert_one_line_error(contradiction, 1, "hidden_size=32 contradicts", "hidden_size=16")
    both = invoke(runner, "train", new_text, "--out", tmp_path / "tuned", "--resume",
                  "--init-from", trained / "run")
    assert both.exit_code == 2 and "choose one" in both.output
