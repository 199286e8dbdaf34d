"""ONNX export of a character language model (``lstmkit.interop.charlm_onnx``, ``lstmkit export``).

ONNX Runtime's logits and final states equal lstmkit's (relative error max |ORT - ours| /
max |ours| <= 1e-5 in float32) for LSTM (peepholes, 2 layers), GRU, RNN and tied weights, with
and without an initial state, at several (T, B) on one session; generation one character at a
time with the state carried in ORT follows lstmkit's step by step. The vocabulary round-trips
through the file's metadata, and the ``lstmkit export`` command works on a checkpoint trained
for two steps and fails with one-line errors.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from click.testing import CliRunner

from lstmkit.cli import main
from lstmkit.interop.charlm_onnx import (
    CHARLM_ONNX_FORMAT,
    charlm_onnx_vocabulary,
    charlm_to_onnx_model,
    export_charlm_onnx,
    read_charlm_onnx_metadata,
)
from lstmkit.models import CharLM
from lstmkit.text import Vocabulary
from lstmkit.train import TrainConfig, load_charlm, train

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

TOL32 = 1e-5
VOCAB = Vocabulary(list("abcdefghij\n 猫。"))  # 14 characters, one of them multi-byte
V = len(VOCAB)

MODELS = {
    # name: CharLM keyword arguments (vocab_size V, seed fixed below)
    "lstm-peepholes-2layers": {"cell": "lstm", "hidden_size": 8, "embedding_dim": 5,
                               "num_layers": 2, "peepholes": True},
    "gru-2layers": {"cell": "gru", "hidden_size": 7, "embedding_dim": 4, "num_layers": 2},
    "rnn": {"cell": "rnn", "hidden_size": 6, "embedding_dim": 3, "num_layers": 1},
    "lstm-tied": {"cell": "lstm", "hidden_size": 6, "num_layers": 2, "tie_weights": True},
    "gru-tied": {"cell": "gru", "hidden_size": 5, "num_layers": 1, "tie_weights": True},
}


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


def make_model(name: str, seed: int = 0, **extra) -> CharLM:
    model = CharLM(V, seed=seed, **{**MODELS[name], **extra})
    model.eval()
    return model


def session(proto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(proto.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def state_parts(state) -> tuple[np.ndarray, ...]:
    return tuple(state) if isinstance(state, tuple) else (state,)


def as_state(model: CharLM, parts: tuple[np.ndarray, ...]):
    return parts if model.rnn.mode == "LSTM" else parts[0]


def random_state(model: CharLM, B: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    L, H = model.rnn.num_layers, model.rnn.hidden_size
    n = 2 if model.rnn.mode == "LSTM" else 1
    return tuple((0.5 * rng.standard_normal((L, B, H))).astype(np.float32) for _ in range(n))


def feed(ids: np.ndarray, parts: tuple[np.ndarray, ...]) -> dict[str, np.ndarray]:
    inputs = {"ids": np.asarray(ids, dtype=np.int64)}
    inputs.update(zip(("h_0", "c_0"), parts))
    return inputs


# ----------------------------------------------------------------------------------------------
# The graph computes what the model computes


@pytest.mark.parametrize("name", sorted(MODELS))
def test_logits_and_state_match(name: str) -> None:
    model = make_model(name)
    proto = charlm_to_onnx_model(model, vocab=VOCAB)
    assert [i.name for i in proto.graph.input] == (
        ["ids", "h_0", "c_0"] if model.rnn.mode == "LSTM" else ["ids", "h_0"])
    assert [o.name for o in proto.graph.output] == (
        ["logits", "h_n", "c_n"] if model.rnn.mode == "LSTM" else ["logits", "h_n"])
    sess = session(proto)
    rng = np.random.default_rng(1)
    for T, B in [(7, 3), (1, 5), (12, 1)]:  # dynamic T and B on one session
        ids = rng.integers(0, V, size=(T, B))
        parts = random_state(model, B, rng)
        logits, state = model(ids, as_state(model, parts))
        got = sess.run(None, feed(ids, parts))
        assert got[0].shape == (T, B, V)
        for ours, theirs in zip([logits, *state_parts(state)], got):
            assert rel_err(theirs, ours) <= TOL32


@pytest.mark.parametrize("name", ["lstm-peepholes-2layers", "gru-2layers", "lstm-tied"])
def test_generation_step_by_step_carries_state(name: str) -> None:
    """Feed a state in, read a prime, then generate 5 characters one at a time (greedy), the
    state carried from call to call in ORT exactly as lstmkit carries it."""
    model = make_model(name, seed=3)
    sess = session(charlm_to_onnx_model(model, vocab=VOCAB))
    rng = np.random.default_rng(2)
    B = 2
    prime = rng.integers(0, V, size=(4, B))
    parts = random_state(model, B, rng)
    ours_logits, ours_state = model(prime, as_state(model, parts))
    got = sess.run(None, feed(prime, parts))
    assert rel_err(got[0], ours_logits) <= TOL32
    ort_parts = tuple(got[1:])
    ours_ids, ort_ids = [], []
    for _ in range(5):
        ours_next = ours_logits[-1].argmax(axis=-1)  # (B,)
        ort_next = got[0][-1].argmax(axis=-1)
        assert np.array_equal(ours_next, ort_next)
        ours_ids.append(ours_next)
        ort_ids.append(ort_next)
        ours_logits, ours_state = model(ours_next[None, :], ours_state)
        got = sess.run(None, feed(ort_next[None, :], ort_parts))
        ort_parts = tuple(got[1:])
        assert got[0].shape == (1, B, V)
        assert rel_err(got[0], ours_logits) <= TOL32
        for ours, theirs in zip(state_parts(ours_state), ort_parts):
            assert rel_err(theirs, ours) <= TOL32
    assert np.array_equal(np.stack(ours_ids), np.stack(ort_ids))


def test_without_state_inputs_starts_from_zeros() -> None:
    model = make_model("lstm-peepholes-2layers")
    proto = charlm_to_onnx_model(model, with_state=False)
    assert [i.name for i in proto.graph.input] == ["ids"]
    assert [o.name for o in proto.graph.output] == ["logits"]
    ids = np.random.default_rng(4).integers(0, V, size=(6, 2))
    (logits,) = session(proto).run(None, {"ids": ids.astype(np.int64)})
    assert rel_err(logits, model(ids)[0]) <= TOL32


def test_exported_in_eval_mode_without_dropout() -> None:
    """A model in training mode with dropout exports its eval-mode function."""
    model = CharLM(V, cell="lstm", hidden_size=8, embedding_dim=4, num_layers=2, dropout=0.5,
                   seed=5)
    model.train()
    proto = charlm_to_onnx_model(model, with_state=False)
    assert model.training  # exporting does not switch the model's mode
    ids = np.random.default_rng(5).integers(0, V, size=(5, 3))
    (logits,) = session(proto).run(None, {"ids": ids.astype(np.int64)})
    model.eval()
    assert rel_err(logits, model(ids)[0]) <= TOL32


def test_float64_model_exports_as_float32() -> None:
    model = make_model("gru-2layers", dtype="float64")
    proto = charlm_to_onnx_model(model)
    assert all(init.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.INT64)
               for init in proto.graph.initializer)
    rng = np.random.default_rng(6)
    ids = rng.integers(0, V, size=(5, 2))
    parts = random_state(model, 2, rng)
    logits, h_n = model(ids, parts[0].astype(np.float64))
    got = session(proto).run(None, feed(ids, parts))
    assert rel_err(got[0], logits) <= TOL32
    assert rel_err(got[1], h_n) <= TOL32


def test_tied_weights_stored_once() -> None:
    tied = make_model("lstm-tied")
    assert tied.decoder.tied
    proto = charlm_to_onnx_model(tied)
    E = tied.embedding.weight.shape[1]
    matrices = [i for i in proto.graph.initializer if list(i.dims) in ([V, E], [E, V])]
    assert len(matrices) == 1
    np.testing.assert_array_equal(onnx.numpy_helper.to_array(matrices[0]),
                                  tied.embedding.weight)
    untied = make_model("rnn")
    names = {i.name for i in charlm_to_onnx_model(untied).graph.initializer}
    assert {"embedding_weight", "decoder_weight_t", "decoder_bias"} <= names


def test_refuses_what_is_not_an_exportable_char_lm() -> None:
    with pytest.raises(TypeError, match="CharLM"):
        charlm_to_onnx_model(make_model("rnn").rnn)
    with pytest.raises(ValueError, match="vocabulary has 3 characters"):
        charlm_to_onnx_model(make_model("rnn"), vocab=Vocabulary("abc"))


# ----------------------------------------------------------------------------------------------
# Metadata and the file


def test_vocabulary_and_config_round_trip(tmp_path) -> None:
    model = make_model("lstm-peepholes-2layers")
    path = export_charlm_onnx(model, tmp_path / "lm.onnx", vocab=VOCAB)
    assert path == tmp_path / "lm.onnx"
    loaded = onnx.load(str(path))
    onnx.checker.check_model(loaded, full_check=True)
    props = {p.key: p.value for p in loaded.metadata_props}
    assert "lstmkit.vocabulary" in props and "猫" in props["lstmkit.vocabulary"]
    assert charlm_onnx_vocabulary(path) == VOCAB
    meta = read_charlm_onnx_metadata(path)
    assert meta["format"] == CHARLM_ONNX_FORMAT and meta["version"] == 1
    assert meta["model"] == model.config()
    rebuilt = CharLM(**meta["model"])
    assert rebuilt.config() == model.config()
    assert [i["name"] for i in meta["io"]["inputs"]] == ["ids", "h_0", "c_0"]
    assert meta["io"]["outputs"][0] == {"name": "logits", "shape": ["T", "B", V],
                                        "type": "float32"}
    # The characters in id order also work as the vocabulary.
    proto = charlm_to_onnx_model(model, vocab=list(VOCAB.chars))
    assert charlm_onnx_vocabulary(proto) == VOCAB


def test_metadata_errors() -> None:
    no_vocab = charlm_to_onnx_model(make_model("rnn"))
    assert "vocabulary" not in read_charlm_onnx_metadata(no_vocab)
    with pytest.raises(ValueError, match="without a vocabulary"):
        charlm_onnx_vocabulary(no_vocab)
    from lstmkit.interop import to_onnx_model

    layer_only = to_onnx_model(make_model("rnn").rnn)
    with pytest.raises(ValueError, match="not an lstmkit char LM export"):
        read_charlm_onnx_metadata(layer_only)


def test_no_silent_overwrite_and_atomic_write(tmp_path) -> None:
    model = make_model("gru-tied")
    target = tmp_path / "lm.onnx"
    target.write_bytes(b"keep me")
    with pytest.raises(FileExistsError, match="force=True"):
        export_charlm_onnx(model, target)
    assert target.read_bytes() == b"keep me"
    export_charlm_onnx(model, target, force=True, vocab=VOCAB)
    assert charlm_onnx_vocabulary(target) == VOCAB
    with pytest.raises(IsADirectoryError):
        export_charlm_onnx(model, tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        export_charlm_onnx(model, tmp_path / "missing" / "lm.onnx")
    assert sorted(os.listdir(tmp_path)) == ["lm.onnx"]  # no temporary file left behind


# ----------------------------------------------------------------------------------------------
# The command line


def _text() -> str:
    rng = np.random.default_rng(0)
    words = ["to", "be", "or", "not", "猫", "question,", "ROMEO:\n"]
    return " ".join(words[i] for i in rng.integers(len(words), size=120))


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> os.PathLike:
    out = tmp_path_factory.mktemp("charlm") / "run"
    config = TrainConfig(cell="lstm", num_layers=2, hidden_size=8, embedding_dim=4, seq_len=8,
                         batch_size=2, eval_every=1, eval_batch_size=2, eval_seq_len=16,
                         sample_every=0, steps=2, seed=0)
    train(_text(), out, config, quiet=True)
    return out


def invoke(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_one_line_error(result, code: int, *fragments: str) -> None:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def check_against_checkpoint(path, checkpoint, which: str) -> None:
    model, vocab, _ = load_charlm(checkpoint, which=which)
    assert charlm_onnx_vocabulary(path) == vocab
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(7)
    ids = rng.integers(0, len(vocab), size=(9, 2))
    parts = random_state(model, 2, rng)
    logits, (h_n, c_n) = model(ids, parts)
    got = sess.run(None, feed(ids, parts))
    for ours, theirs in zip([logits, h_n, c_n], got):
        assert rel_err(theirs, ours) <= TOL32


def test_cli_export(trained, tmp_path) -> None:
    result = invoke("export", trained, "--format", "onnx")
    assert result.exit_code == 0, result.output
    default = trained / "model.onnx"
    assert default.is_file() and str(default) in result.output
    check_against_checkpoint(default, trained, "best")
    # An existing output is kept without --force ...
    before = default.read_bytes()
    assert_one_line_error(invoke("export", trained, "--format", "onnx"), 1,
                          str(default), "--force")
    assert default.read_bytes() == before
    # ... and replaced with it; the checkpoints still load with the file beside them.
    result = invoke("export", trained, "--format", "ONNX", "--force", "--which", "latest")
    assert result.exit_code == 0, result.output
    check_against_checkpoint(default, trained, "latest")
    out = tmp_path / "elsewhere.onnx"
    result = invoke("export", trained / "step-000001", "--format", "onnx", "--out", out)
    assert result.exit_code == 0, result.output
    assert str(out) in result.output
    check_against_checkpoint(out, trained / "step-000001", "best")


def test_cli_errors(trained, tmp_path) -> None:
    assert_one_line_error(invoke("export", tmp_path / "nothere", "--format", "onnx"), 1,
                          "nothere", "does not exist")
    assert_one_line_error(invoke("export", trained, "--format", "tflite"), 2, "--format")
    assert_one_line_error(invoke("export", trained), 2, "--format")
    assert_one_line_error(
        invoke("export", trained, "--format", "onnx", "--out", tmp_path / "no" / "m.onnx"), 1,
        "does not exist")
    assert_one_line_error(invoke("export", trained, "--format", "onnx", "--out", tmp_path), 1,
                          "is a directory")
    # A damaged checkpoint: a copy of one step with its weights truncated.
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(trained / "step-000002", broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    assert_one_line_error(invoke("export", broken, "--format", "onnx"), 1, str(broken))
    assert not (broken / "model.onnx").exists()
