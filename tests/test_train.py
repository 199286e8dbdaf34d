"""Tests for lstmkit.train: the truncated-BPTT loop, checkpoints, resume, stops and evaluation.

Every run here is a tiny model on a few hundred generated characters, a few dozen steps.
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

import lstmkit.train as train_module
from lstmkit.engine import kernels
from lstmkit.grad_mode import no_grad
from lstmkit.io import CheckpointManager, load_checkpoint
from lstmkit.models import CharLM
from lstmkit.nn import softmax_cross_entropy
from lstmkit.text import TextError
from lstmkit.train import (
    TrainConfig,
    TrainingError,
    evaluate,
    load_charlm,
    train,
    validation_batches,
)


def make_text(n: int = 330, seed: int = 0) -> str:
    """Words from a small lexicon: learnable structure, a few distinct characters."""
    rng = np.random.default_rng(seed)
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran\n"]
    out = ""
    while len(out) < n:
        out += words[rng.integers(len(words))] + " "
    return out[:n]


TEXT = make_text()


@pytest.fixture(autouse=True, scope="module")
def reference_recurrence():
    """Test the loop on the reference recurrence: for these tiny models it is as fast, and no
    test waits for the fused kernels to compile (one test below runs them on purpose)."""
    enabled = kernels.is_enabled()
    kernels.set_enabled(False)
    yield
    kernels.set_enabled(enabled)


def tiny(**changes: object) -> TrainConfig:
    """A 2-layer model small enough for a step to take about a millisecond."""
    config = TrainConfig(
        num_layers=2, hidden_size=12, embedding_dim=6, dropout=0.2, seq_len=8, batch_size=3,
        steps=16, eval_every=4, eval_batch_size=4, eval_seq_len=16, sample_every=0, lr=1e-2,
        patience=0, seed=3,
    )
    return dataclasses.replace(config, **changes)


def run(tmp_path, name: str = "run", config: TrainConfig | None = None, **kwargs):
    return train(TEXT, tmp_path / name, config or tiny(), quiet=True, **kwargs)


def params_of(path) -> dict[str, np.ndarray]:
    model, _, _ = load_charlm(path, which="latest")
    return {k: v.copy() for k, v in model.params.items()}


# ----------------------------------------------------------------------------------------------
# Learning and determinism


def test_training_lowers_the_loss_and_tracks_the_best_checkpoint(tmp_path):
    result = run(tmp_path, config=tiny(steps=100, eval_every=25, lr=2e-2, dropout=0.0))
    assert result.status == "completed" and result.step == 100
    assert result.tokens == 100 * 3 * 8
    assert result.train_losses.shape == (100,)
    assert result.train_losses[-10:].mean() < 0.75 * result.train_losses[:5].mean()
    vals = [h["val_loss"] for h in result.history]
    assert [h["step"] for h in result.history] == [25, 50, 75, 100]
    assert result.best_val_loss == min(vals)
    assert result.best_checkpoint.name == f"step-{result.best_step:06d}"
    assert result.history[-1]["lr"] == pytest.approx(1e-4)  # the cosine reached min_lr


def test_same_seed_gives_identical_weights_and_losses(tmp_path):
    first = run(tmp_path, "a")
    second = run(tmp_path, "b")
    assert np.array_equal(first.train_losses, second.train_losses)
    a, b = params_of(tmp_path / "a"), params_of(tmp_path / "b")
    assert all(np.array_equal(a[k], b[k]) for k in a)
    other = run(tmp_path, "c", tiny(seed=4))
    assert not np.array_equal(first.train_losses, other.train_losses)


def test_float32_throughout(tmp_path):
    run(tmp_path)
    tensors, meta = load_checkpoint(tmp_path / "run")
    assert meta["model"]["dtype"] == "float32"
    assert {a.dtype for k, a in tensors.items() if not k.startswith("history.")} == {
        np.dtype(np.float32)
    }


# ----------------------------------------------------------------------------------------------
# Checkpoints and resume


def test_checkpoint_holds_everything_needed_to_resume(tmp_path):
    run(tmp_path, config=tiny(steps=8, keep=1))
    manager = CheckpointManager(tmp_path / "run")
    assert manager.latest_path().name == "step-000008"
    tensors, meta = manager.load_latest()
    assert meta["format"] == "lstmkit-charlm-training"
    assert {"model.embedding.weight", "model.rnn.weight_ih_l1", "model.decoder.bias"} <= set(
        tensors
    )
    assert any(k.startswith("optimizer.exp_avg.") for k in tensors)
    assert any(k.startswith("optimizer.exp_avg_sq.") for k in tensors)
    assert tensors["state.0"].shape == tensors["state.1"].shape == (2, 3, 12)  # LSTM (h, c)
    assert tensors["history.train_loss"].shape == (8,)
    assert meta["progress"]["step"] == 8 and meta["progress"]["tokens"] == 8 * 24
    assert meta["optimizer"]["step"] == 8
    assert meta["schedule"]["T_max"] == 8 and meta["schedule"]["last_epoch"] == 8
    assert meta["batcher"]["batch_index"] == 8 % 10
    assert meta["vocabulary"]["chars"] == sorted(set(TEXT))
    assert meta["train"] == tiny(steps=8, keep=1).to_json()
    assert len(meta["rng"]) == 1 and meta["rng"][0]["bit_generator"] == "PCG64"
    assert [h["step"] for h in meta["history"]] == [4, 8]
    json.dumps(meta)  # all of it is plain JSON


@pytest.mark.parametrize("stop_at", [6, 8, 11])
def test_resume_continues_bit_identically(tmp_path, stop_at):
    """Stopped at step ``stop_at`` (mid-epoch, at an evaluation, after an epoch wrap) and
    resumed, a run gives exactly the losses and weights of an uninterrupted one."""
    config = tiny(steps=16)
    whole = run(tmp_path, "whole", config)

    def stop(trainer):
        if trainer.step == stop_at:
            trainer.request_stop()

    first = run(tmp_path, "parts", config, callback=stop)
    assert first.status == "interrupted" and first.step == stop_at
    assert first.checkpoint.name == f"step-{stop_at:06d}"
    second = train(TEXT, tmp_path / "parts", resume=True, quiet=True)
    assert second.status == "completed" and second.step == 16
    assert np.array_equal(second.train_losses, whole.train_losses)
    assert [h["val_loss"] for h in second.history] == [h["val_loss"] for h in whole.history]
    a, b = params_of(tmp_path / "whole"), params_of(tmp_path / "parts")
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_full_gate_recurrence_carries_its_gates_between_windows(tmp_path):
    """FGR's state is (h, c, a): the gate values a reach the next window (and the
    checkpoint), so a stopped and resumed run equals an uninterrupted one."""
    config = tiny(steps=10, cell_options={"full_gate_recurrence": True})
    whole = run(tmp_path, "whole", config)
    tensors, _ = CheckpointManager(tmp_path / "whole").load_latest()
    assert tensors["state.2"].shape == (2, 3, 36)  # (layers, streams, [i, f, o])
    assert np.abs(tensors["state.2"]).min() > 0.0  # gate values, not a reset to zero

    def stop(trainer):
        if trainer.step == 5:
            trainer.request_stop()

    run(tmp_path, "parts", config, callback=stop)
    second = train(TEXT, tmp_path / "parts", resume=True, quiet=True)
    assert np.array_equal(second.train_losses, whole.train_losses)
    a, b = params_of(tmp_path / "whole"), params_of(tmp_path / "parts")
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_resume_is_bit_identical_with_the_fused_kernels(tmp_path):
    config = tiny(steps=10, eval_every=5)

    def stop(trainer):
        if trainer.step == 7:
            trainer.request_stop()

    kernels.set_enabled(True)
    try:
        whole = run(tmp_path, "whole", config)
        run(tmp_path, "parts", config, callback=stop)
        resumed = train(TEXT, tmp_path / "parts", resume=True, quiet=True)
    finally:
        kernels.set_enabled(False)
    assert np.array_equal(resumed.train_losses, whole.train_losses)
    a, b = params_of(tmp_path / "whole"), params_of(tmp_path / "parts")
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_resume_with_a_larger_budget_and_nothing_to_do(tmp_path):
    run(tmp_path, config=tiny(steps=8))
    again = train(TEXT, tmp_path / "run", resume=True, quiet=True)
    assert again.status == "nothing_to_do" and "--steps" in again.message
    more = train(TEXT, tmp_path / "run", resume=True, overrides={"steps": 12}, quiet=True)
    assert more.status == "completed" and more.step == 12
    assert more.train_losses.shape == (12,)


def test_existing_run_is_not_overwritten_without_force(tmp_path):
    run(tmp_path, config=tiny(steps=4))
    with pytest.raises(TrainingError, match="--resume.*--force"):
        run(tmp_path, config=tiny(steps=4))
    (tmp_path / "run" / "notes.txt").write_text("keep me")
    result = run(tmp_path, config=tiny(steps=2, eval_every=2), force=True)
    assert result.step == 2
    assert [p.name for p in CheckpointManager(tmp_path / "run").checkpoints()] == ["step-000002"]
    assert (tmp_path / "run" / "notes.txt").read_text() == "keep me"


def test_resume_errors(tmp_path):
    with pytest.raises(TrainingError, match="nothing to resume"):
        train(TEXT, tmp_path / "empty", resume=True, quiet=True)
    run(tmp_path, config=tiny(steps=4))
    with pytest.raises(TrainingError, match="text differs"):
        train(TEXT[::-1], tmp_path / "run", resume=True, quiet=True)
    with pytest.raises(TrainingError, match="hidden_size=12.*hidden_size=64"):
        train(TEXT, tmp_path / "run", resume=True, overrides={"hidden_size": 64}, quiet=True)


# ----------------------------------------------------------------------------------------------
# Stopping


def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    calls = {"n": 0}

    def poisoned(logits, targets, *args, **kwargs):
        loss, grad = softmax_cross_entropy(logits, targets, *args, **kwargs)
        if kwargs.get("compute_grad", True):  # training steps only, not evaluation
            calls["n"] += 1
            if calls["n"] == 7:
                return np.float32(np.nan), grad
        return loss, grad

    monkeypatch.setattr(train_module, "softmax_cross_entropy", poisoned)
    result = run(tmp_path, config=tiny(steps=20, eval_every=3))
    assert result.status == "nonfinite" and result.step == 6
    assert "step 7" in result.message and "nan" in result.message
    assert "step-000006" in result.message
    manager = CheckpointManager(tmp_path / "run")
    assert manager.latest_path().name == "step-000006"
    tensors, meta = manager.load_latest()  # intact: the hash checks pass
    assert meta["progress"]["step"] == 6
    assert all(np.isfinite(a).all() for a in tensors.values())


def test_nonfinite_gradient_stops_before_the_update(tmp_path, monkeypatch):
    def broken(grads, max_norm):
        return math.inf

    monkeypatch.setattr(train_module, "clip_grad_norm", broken)
    result = run(tmp_path, config=tiny(steps=5))
    assert result.status == "nonfinite" and result.step == 0
    assert "gradient norm is inf" in result.message
    assert "no checkpoint had been saved yet" in result.message


def test_early_stopping_on_a_flat_validation_loss(tmp_path):
    result = run(tmp_path, config=tiny(steps=100, eval_every=2, lr=0.0, min_lr=0.0, patience=2))
    assert result.status == "early_stopped"
    assert result.step == 6  # best at step 2, no improvement at 4 and 6
    assert result.best_step == 2


def test_time_limit_estimates_the_cosine_length(tmp_path):
    result = run(tmp_path, config=tiny(steps=None, time_limit=0.6, eval_every=1000))
    assert result.status == "time_limit" and result.step >= 12
    _, meta = load_checkpoint(tmp_path / "run")
    assert meta["schedule"] is not None and meta["schedule"]["T_max"] >= 12


def test_config_is_validated(tmp_path):
    with pytest.raises(TrainingError, match="cell"):
        run(tmp_path, config=tiny(cell="transformer"))
    with pytest.raises(TrainingError, match="dropout"):
        run(tmp_path, config=tiny(dropout=1.0))
    with pytest.raises(TrainingError, match="steps"):
        run(tmp_path, config=tiny(steps=0))
    with pytest.raises(TextError, match="too few"):
        train("abc" * 5, tmp_path / "short", tiny(), quiet=True)


def test_log_lines_and_samples(tmp_path):
    lines: list[str] = []
    train(TEXT, tmp_path / "run", tiny(steps=4, sample_every=4, sample_length=20), log=lines.append)
    assert any(line.startswith("step 4 | train loss") and "bpc" in line for line in lines)
    assert any("sample at step 4" in line for line in lines)


def test_gru_and_rnn_cells_train_and_resume(tmp_path):
    for cell in ("gru", "rnn"):
        config = tiny(cell=cell, steps=6, eval_every=3)

        def stop(trainer):
            if trainer.step == 4:
                trainer.request_stop()

        whole = run(tmp_path, f"{cell}-whole", config)
        run(tmp_path, f"{cell}-parts", config, callback=stop)
        resumed = train(TEXT, tmp_path / f"{cell}-parts", resume=True, quiet=True)
        assert np.array_equal(whole.train_losses, resumed.train_losses)


# ----------------------------------------------------------------------------------------------
# Evaluation


def test_validation_batches_predict_every_target_once_in_order():
    ids = np.arange(103)
    windows = list(validation_batches(ids, batch_size=4, seq_len=7))
    x = np.concatenate([w[0] for w in windows])  # (L - 1, B)
    y = np.concatenate([w[1] for w in windows])
    length = 103 // 4
    assert x.shape == (length - 1, 4)
    for b in range(4):
        stream = ids[b * length : (b + 1) * length]
        assert np.array_equal(x[:, b], stream[:-1]) and np.array_equal(y[:, b], stream[1:])
    assert len(list(validation_batches(np.arange(10), batch_size=8, seq_len=20))) == 1  # 1 stream


def test_evaluate_carries_the_state_across_windows():
    model = CharLM(7, 10, num_layers=2, embedding_dim=5, dropout=0.3, seed=0)
    ids = np.random.default_rng(1).integers(0, 7, 60)
    model.eval()
    with no_grad():
        logits, _ = model(ids[:-1, None])
    expected, _ = softmax_cross_entropy(logits.astype(np.float64), ids[1:, None])
    model.train()
    got = evaluate(model, ids, batch_size=1, seq_len=7)
    assert got == pytest.approx(float(expected), rel=1e-5)
    assert model.training  # the mode is restored


# ----------------------------------------------------------------------------------------------
# Unknown characters, older checkpoints, fine-tuning


def test_the_vocabulary_is_the_training_part_s_with_the_unknown_symbol(tmp_path):
    text = TEXT[:300] + "xyz" + TEXT[303:]  # x, y, z only in the held-out end (the last 33)
    lines: list[str] = []
    result = train(text, tmp_path / "run", tiny(steps=4), log=lines.append)
    assert lines[0].startswith(f"vocabulary: {len(set(text[:297]))} characters")
    assert lines[0].endswith("stands for 3 held-out characters the training part lacks (not "
                             "scored in validation)")
    _, meta = load_checkpoint(tmp_path / "run")
    assert meta["vocabulary"] == {"kind": "characters", "chars": sorted(set(text[:297])),
                                  "unknown": True}
    assert meta["data"]["unknown_train"] == 0 and meta["data"]["unknown_val"] == 3
    model, vocab, _ = load_charlm(tmp_path / "run")
    val_ids = vocab.encode(text[297:], allow_unknown=True)
    expected = evaluate(model, val_ids, 4, 16, ignore_index=vocab.unknown_id)
    assert result.history[-1]["val_loss"] == pytest.approx(expected, rel=1e-6)
    assert expected != pytest.approx(evaluate(model, val_ids, 4, 16), rel=1e-3)


def test_min_count_trains_the_unknown_symbol_on_rare_characters(tmp_path):
    text = TEXT[:100] + "Q" + TEXT[101:]  # one Q in the training part
    train(text, tmp_path / "run", tiny(steps=4, min_count=2), quiet=True)
    _, meta = load_checkpoint(tmp_path / "run")
    assert "Q" not in meta["vocabulary"]["chars"] and meta["data"]["unknown_train"] == 1
    assert meta["train"]["min_count"] == 2


def save_old_checkpoint(path, text: str):
    """A checkpoint as lstmkit 0.1 wrote it: the vocabulary of the whole text, no unknown."""
    from lstmkit.io import save_checkpoint

    chars = sorted(set(text))
    model = CharLM(len(chars), 12, num_layers=1, embedding_dim=6, seed=0)
    meta = {"format": train_module.FORMAT, "format_version": 1, "model": model.config(),
            "vocabulary": {"kind": "characters", "chars": chars}}
    save_checkpoint(path, {f"model.{k}": v for k, v in model.params.items()}, meta)
    return model


def test_checkpoints_without_the_unknown_symbol_load_and_work_as_before(tmp_path):
    from lstmkit.sampling import sample
    from lstmkit.text import UnknownCharactersError

    original = save_old_checkpoint(tmp_path / "old", TEXT)
    model, vocab, _ = load_charlm(tmp_path / "old")
    assert vocab.unknown_id is None and len(vocab) == len(set(TEXT)) == model.vocab_size
    assert all(np.array_equal(model.params[k], original.params[k]) for k in original.params)
    assert len(sample(model, vocab, 20, prime="the ", seed=0)) == 20
    scored = train_module.evaluate_text(model, vocab, TEXT[:100])
    assert scored.unknown_count == 0
    assert scored.loss == pytest.approx(evaluate(model, vocab.encode(TEXT[:100])))
    with pytest.raises(UnknownCharactersError, match="'Z'.*no unknown symbol"):
        train_module.evaluate_text(model, vocab, "the Zoo")
    with pytest.raises(TrainingError, match="never saw.*'Z'"):
        train("the Zoo " * 20, tmp_path / "tuned", tiny(num_layers=1), init_from=tmp_path / "old",
              quiet=True)


def test_init_from_fine_tunes_the_trained_weights_on_a_new_text(tmp_path):
    run(tmp_path, "base", tiny(steps=8))
    source, vocab, _ = load_charlm(tmp_path / "base")
    new_text = make_text(330, seed=5).replace("dog", "cow")  # c o w: w is new
    lines: list[str] = []
    tuned = train(new_text, tmp_path / "tuned", tiny(steps=1, lr=0.0, min_lr=0.0),
                  init_from=tmp_path / "base", log=lines.append)
    assert tuned.step == 1
    model, tuned_vocab, meta = load_charlm(tmp_path / "tuned")
    assert tuned_vocab == vocab  # the checkpoint's vocabulary, not the new text's
    assert all(np.array_equal(model.params[k], source.params[k]) for k in source.params)
    assert meta["init_from"]["path"] == str(tmp_path / "base")
    assert meta["init_from"]["step"] == 8
    unseen = new_text.count("w")
    assert meta["data"]["unknown_train"] + meta["data"]["unknown_val"] == unseen
    assert any(line.startswith(f"{unseen} characters of the text") and "1 distinct: w)" in line
               and "unknown symbol" in line for line in lines), lines
    more = train(new_text, tmp_path / "tuned", resume=True, overrides={"steps": 2}, quiet=True)
    assert more.step == 2 and load_charlm(tmp_path / "tuned")[2]["init_from"] == meta["init_from"]
    learning = train(new_text, tmp_path / "learning", tiny(steps=4), init_from=tmp_path / "base",
                     quiet=True)
    assert learning.train_losses[0] < run(tmp_path, "scratch", tiny(steps=1)).train_losses[0]


def test_init_from_refuses_another_architecture(tmp_path):
    run(tmp_path, "base", tiny(steps=4))
    for change, fragment in (({"hidden_size": 16}, "hidden_size=16 contradicts.*hidden_size=12"),
                             ({"cell": "gru"}, "cell='gru' contradicts"),
                             ({"min_count": 2}, "min_count=2.*keeps the vocabulary")):
        with pytest.raises(TrainingError, match=fragment):
            train(TEXT, tmp_path / "tuned", tiny(**change), init_from=tmp_path / "base",
                  quiet=True)
    with pytest.raises(TrainingError, match="cannot fine-tune from"):
        train(TEXT, tmp_path / "tuned", tiny(), init_from=tmp_path / "missing", quiet=True)
    with pytest.raises(TrainingError, match="choose one"):
        train(TEXT, tmp_path / "base", resume=True, init_from=tmp_path / "base", quiet=True)
