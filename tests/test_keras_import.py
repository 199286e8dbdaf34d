"""Keras import: ``lstmkit.from_keras`` gives the layer computing a Keras 3 LSTM, GRU,
SimpleRNN or Bidirectional, checked against Keras itself (PyTorch backend, no TensorFlow).

Keras picks its backend when first imported, so the ``keras`` fixture sets KERAS_BACKEND
before importing it (and KERAS_HOME, so that Keras writes no ~/.keras).
"""

from __future__ import annotations

import json
import os
import sys
import zipfile

import numpy as np
import pytest
from click.testing import CliRunner

import lstmkit
from lstmkit.cli import main as cli
from lstmkit.interop.keras_import import from_keras

TOL32 = 2e-6


@pytest.fixture(scope="module")
def keras(tmp_path_factory):
    pytest.importorskip("torch")
    if "keras" not in sys.modules:
        os.environ["KERAS_BACKEND"] = "torch"
        os.environ.setdefault("KERAS_HOME", str(tmp_path_factory.mktemp("keras_home")))
    keras = pytest.importorskip("keras")
    assert keras.backend.backend() == "torch", "these tests run Keras on the PyTorch backend"
    keras.utils.set_random_seed(0)
    return keras


def randomize(layer, seed=0):
    """Random weights everywhere (Keras initialises biases to zero, which hides bias bugs)."""
    rng = np.random.default_rng(seed)
    layer.set_weights([(0.5 * rng.standard_normal(w.shape)).astype(w.dtype)
                       for w in layer.get_weights()])


def keras_output(keras, layer, x) -> np.ndarray:
    return keras.ops.convert_to_numpy(layer(x))


def x_of(B=3, T=6, D=4, seed=1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((B, T, D)).astype(np.float32)


LAYERS = {  # kind -> (keras, return_sequences) -> layer
    "lstm": lambda k, seq: k.layers.LSTM(5, return_sequences=seq),
    "lstm_no_bias": lambda k, seq: k.layers.LSTM(5, use_bias=False, return_sequences=seq),
    "lstm_no_unit_forget_bias": lambda k, seq: k.layers.LSTM(5, unit_forget_bias=False,
                                                             return_sequences=seq),
    "gru": lambda k, seq: k.layers.GRU(5, return_sequences=seq),
    "gru_no_bias": lambda k, seq: k.layers.GRU(5, use_bias=False, return_sequences=seq),
    "simple_rnn": lambda k, seq: k.layers.SimpleRNN(5, return_sequences=seq),
    "simple_rnn_relu": lambda k, seq: k.layers.SimpleRNN(5, activation="relu",
                                                         return_sequences=seq),
    "bidirectional_lstm": lambda k, seq: k.layers.Bidirectional(
        k.layers.LSTM(5, return_sequences=seq)),
    "bidirectional_gru": lambda k, seq: k.layers.Bidirectional(
        k.layers.GRU(5, return_sequences=seq)),
    "bidirectional_rnn": lambda k, seq: k.layers.Bidirectional(
        k.layers.SimpleRNN(5, return_sequences=seq)),
    "lstm_activations": lambda k, seq: k.layers.LSTM(
        5, activation="softsign", recurrent_activation="hard_sigmoid", return_sequences=seq),
    "lstm_go_backwards": lambda k, seq: k.layers.LSTM(5, go_backwards=True,
                                                      return_sequences=seq),
    "gru_reset_before": lambda k, seq: k.layers.GRU(5, reset_after=False, return_sequences=seq),
    "gru_reset_before_no_bias": lambda k, seq: k.layers.GRU(
        5, reset_after=False, use_bias=False, activation="relu", return_sequences=seq),
    "gru_go_backwards": lambda k, seq: k.layers.GRU(5, go_backwards=True, activation="elu",
                                                    recurrent_activation="hard_sigmoid",
                                                    return_sequences=seq),
    "simple_rnn_sigmoid": lambda k, seq: k.layers.SimpleRNN(5, activation="leaky_relu",
                                                            return_sequences=seq),
    "bidirectional_sum": lambda k, seq: k.layers.Bidirectional(
        k.layers.LSTM(5, activation="softplus", return_sequences=seq), merge_mode="sum"),
    "bidirectional_mul": lambda k, seq: k.layers.Bidirectional(
        k.layers.GRU(5, reset_after=False, return_sequences=seq), merge_mode="mul"),
    "bidirectional_ave": lambda k, seq: k.layers.Bidirectional(
        k.layers.SimpleRNN(5, activation="linear", return_sequences=seq), merge_mode="ave"),
}


@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_layers_equal_keras(keras, kind):
    layer = LAYERS[kind](keras, True)
    x = x_of()
    layer(x)  # builds the weights
    randomize(layer)
    expected = keras_output(keras, layer, x)
    ours = from_keras(layer)
    assert ours.batch_first
    output, _ = ours(x)
    np.testing.assert_allclose(output, expected, rtol=TOL32, atol=TOL32)


def test_float64_layers_stay_float64(keras):
    layer = keras.layers.GRU(4, dtype="float64", return_sequences=True)
    x = x_of().astype(np.float64)
    layer(x)
    randomize(layer)
    ours = from_keras(layer)
    assert ours.dtype == np.float64
    np.testing.assert_allclose(ours(x)[0], keras_output(keras, layer, x), rtol=1e-12,
                               atol=1e-12)


@pytest.mark.parametrize("kind", ["lstm_activations", "gru_reset_before", "bidirectional_gru"])
def test_keras_to_onnx_through_lstmkit(keras, kind, tmp_path):
    """A Keras layer, imported and exported, runs in ONNX Runtime as it does in Keras."""
    ort = pytest.importorskip("onnxruntime")
    layer = LAYERS[kind](keras, True)
    x = x_of()
    layer(x)
    randomize(layer)
    path = lstmkit.export_onnx(from_keras(layer), tmp_path / "k.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (output, *_) = session.run(None, {"input": x})
    np.testing.assert_allclose(output, keras_output(keras, layer, x), rtol=1e-5, atol=1e-5)


def test_merge_mode_none_is_the_pair(keras):
    layer = keras.layers.Bidirectional(keras.layers.LSTM(4, return_sequences=True),
                                       merge_mode=None)
    x = x_of()
    layer(x)
    randomize(layer)
    forward, backward = (keras.ops.convert_to_numpy(y) for y in layer(x))
    (ours_forward, ours_backward), _ = from_keras(layer)(x)
    np.testing.assert_allclose(ours_forward, forward, rtol=TOL32, atol=TOL32)
    np.testing.assert_allclose(ours_backward, backward, rtol=TOL32, atol=TOL32)


@pytest.mark.parametrize("kind", ["lstm", "gru_go_backwards", "bidirectional_lstm"])
def test_return_sequences_false_is_the_final_state(keras, kind):
    """Keras without return_sequences returns the last state: h_n (both directions'
    concatenated for Bidirectional, merge_mode="concat"; with go_backwards, the state after
    reading x[:, 0])."""
    layer = LAYERS[kind](keras, False)
    x = x_of()
    layer(x)
    randomize(layer, seed=2)
    expected = keras_output(keras, layer, x)
    _, state = from_keras(layer)(x)
    h_n = state[0] if isinstance(state, tuple) else state
    np.testing.assert_allclose(np.concatenate(list(h_n), axis=-1), expected,
                               rtol=TOL32, atol=TOL32)


def test_stateful_carries_the_state(keras):
    layer = keras.layers.LSTM(3, stateful=True, return_sequences=True)
    x = x_of(B=2)
    layer(x)
    randomize(layer)
    layer.reset_states()
    first, second = keras_output(keras, layer, x), keras_output(keras, layer, x)
    ours = from_keras(layer)
    assert ours.stateful
    np.testing.assert_allclose(ours(x)[0], first, rtol=TOL32, atol=TOL32)
    np.testing.assert_allclose(ours(x)[0], second, rtol=TOL32, atol=TOL32)


@pytest.mark.parametrize("make,message", [
    (lambda k: k.layers.LSTM(3, activation="gelu"), "activation='gelu', which lstmkit does not"),
    (lambda k: k.layers.SimpleRNN(3, activation="swish"), "activation='silu'"),
    (lambda k: k.layers.GRU(3, dtype="mixed_float16"), "dtype policy 'mixed_float16'"),
    (lambda k: k.layers.Bidirectional(k.layers.LSTM(3),
                                      backward_layer=k.layers.LSTM(3, go_backwards=True,
                                                                   use_bias=False)),
     r"configured differently \(\['use_bias'\]\)"),
    (lambda k: k.layers.Bidirectional(k.layers.LSTM(3, go_backwards=True),
                                      backward_layer=k.layers.LSTM(3)),
     "runs its forward layer backwards"),
])
def test_what_lstmkit_cannot_compute_is_refused(keras, make, message):
    layer = make(keras)
    layer(x_of())
    with pytest.raises(ValueError, match=message):
        from_keras(layer)


def test_objects_that_are_not_recurrent_layers(keras):
    with pytest.raises(ValueError, match="no weights yet"):
        from_keras(keras.layers.LSTM(3))
    with pytest.raises(ValueError, match="not an LSTM, GRU, SimpleRNN or Bidirectional"):
        from_keras(keras.layers.Dense(3))
    with pytest.raises(TypeError, match="expected a Keras layer or model"):
        from_keras(3)


# -- .keras files -------------------------------------------------------------------------------


def save(keras, model, path):
    model.save(str(path))
    return path


def test_keras_file_round_trip(keras, tmp_path, monkeypatch):
    inputs = keras.Input((6, 4))
    hidden = keras.layers.LSTM(5, return_sequences=True, name="first")(inputs)
    hidden = keras.layers.Dense(3, name="project")(hidden)
    outputs = keras.layers.Bidirectional(keras.layers.GRU(2, return_sequences=True),
                                         name="second")(hidden)
    model = keras.Model(inputs, outputs)
    for layer in model.layers:
        if layer.get_weights():
            randomize(layer)
    path = save(keras, model, tmp_path / "model.keras")
    x = x_of()
    expected_first = keras_output(keras, model.get_layer("first"), x)
    middle = keras_output(keras, model.get_layer("project"), expected_first)
    expected_second = keras_output(keras, model.get_layer("second"), middle)
    with pytest.raises(ValueError, match=r"2 recurrent layers \['first', 'second'\]"):
        from_keras(path)
    with pytest.raises(ValueError, match=r"recurrent layers \['first', 'second'\]; expected one"):
        from_keras(model)
    np.testing.assert_allclose(from_keras(model, name="second")(middle)[0], expected_second,
                               rtol=TOL32, atol=TOL32)
    # the file is read as JSON + HDF5: it needs no Keras (and so runs none of it)
    monkeypatch.setitem(sys.modules, "keras", None)
    first = from_keras(path, name="first")
    second = from_keras(path, name="second")
    np.testing.assert_allclose(first(x)[0], expected_first, rtol=TOL32, atol=TOL32)
    np.testing.assert_allclose(second(middle)[0], expected_second, rtol=TOL32, atol=TOL32)
    assert second.bidirectional and second.mode == "GRU"


def test_a_lambda_layer_is_refused(keras, tmp_path):
    model = keras.Sequential([keras.Input((6, 4)), keras.layers.Lambda(lambda t: t * 2),
                              keras.layers.LSTM(3)])
    path = save(keras, model, tmp_path / "lambda.keras")
    with pytest.raises(ValueError, match="Lambda layer .* never runs code from a file"):
        from_keras(path)


def rewrite_config(path, change) -> None:
    """Edit a .keras archive's config.json in place."""
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    config = json.loads(members["config.json"])
    change(config)
    members["config.json"] = json.dumps(config).encode()
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)


def test_custom_and_malformed_files_are_refused(keras, tmp_path):
    model = keras.Sequential([keras.Input((6, 4)), keras.layers.LSTM(3)])
    path = save(keras, model, tmp_path / "m.keras")
    assert from_keras(path).hidden_size == 3

    def custom(config):
        config["config"]["layers"][1]["module"] = "my_package.layers"

    rewrite_config(path, custom)
    with pytest.raises(ValueError, match="'LSTM' from module 'my_package.layers'.*not one of "
                                         "Keras' own layers"):
        from_keras(path)
    path = save(keras, model, tmp_path / "m2.keras")

    def registered(config):
        config["config"]["layers"][1]["registered_name"] = "MyLSTM"

    rewrite_config(path, registered)
    with pytest.raises(ValueError, match="not one of Keras' own layers"):
        from_keras(path)
    path = save(keras, model, tmp_path / "m3.keras")
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "h5py", None)  # `import h5py` now raises ImportError
        with pytest.raises(ImportError, match=r"pip install 'lstmkit\[keras\]'"):
            from_keras(path)
    junk = tmp_path / "junk.keras"
    junk.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a zip archive"):
        from_keras(junk)
    with pytest.raises(FileNotFoundError):
        from_keras(tmp_path / "missing.keras")


def rewrite_weights(path, change) -> None:
    """Edit a .keras archive's model.weights.h5 in place with h5py."""
    import h5py

    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    weights = path.parent / "weights.h5"
    weights.write_bytes(members["model.weights.h5"])
    with h5py.File(weights, "r+") as h5:
        change(h5)
    members["model.weights.h5"] = weights.read_bytes()
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)


def test_weights_stored_outside_the_archive_are_refused(keras, tmp_path):
    """HDF5 can point a dataset at another file (external storage, external links): a crafted
    archive must not make lstmkit read this machine's files into the weights."""
    model = keras.Sequential([keras.Input((6, 4)), keras.layers.SimpleRNN(2)])
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.arange(8, dtype=np.float32).tobytes())
    path = save(keras, model, tmp_path / "storage.keras")

    def external_storage(h5):
        del h5["layers/simple_rnn/cell/vars/0"]
        h5["layers/simple_rnn/cell/vars"].create_dataset(
            "0", shape=(4, 2), dtype="float32", external=[(str(secret), 0, 32)])

    rewrite_weights(path, external_storage)
    with pytest.raises(ValueError, match="keeps layers/simple_rnn/cell/vars/0 in another file"):
        from_keras(path)
    path = save(keras, model, tmp_path / "link.keras")

    def external_link(h5):
        import h5py

        del h5["layers/simple_rnn/cell/vars/1"]
        h5["layers/simple_rnn/cell/vars/1"] = h5py.ExternalLink(str(tmp_path / "x.h5"), "/w")

    rewrite_weights(path, external_link)
    with pytest.raises(ValueError, match="links 'layers/simple_rnn/cell/vars/1' elsewhere"):
        from_keras(path)


def test_cli_import_keras(keras, tmp_path):
    from lstmkit.cli.interop import load_layer

    layer = keras.layers.Bidirectional(
        keras.layers.GRU(4, reset_after=False, activation="softsign", return_sequences=True),
        merge_mode="ave")
    model = keras.Sequential([keras.Input((6, 4)), layer])
    randomize(layer)
    path = save(keras, model, tmp_path / "bi.keras")
    out = tmp_path / "bi.safetensors"
    result = CliRunner().invoke(cli, ["import", str(path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "bi.json").read_text())
    assert meta["source"] == {"format": "keras", "file": "bi.keras"}
    assert meta["config"]["batch_first"] and meta["config"]["bidirectional"]
    assert meta["config"]["merge_mode"] == "ave" and meta["config"]["activation"] == "Softsign"
    assert meta["config"]["linear_before_reset"] is False
    x = x_of()
    np.testing.assert_allclose(load_layer(out)(x)[0], keras_output(keras, layer, x),
                               rtol=TOL32, atol=TOL32)
    refused = CliRunner().invoke(cli, ["import", str(path), "--out", str(out)])
    assert refused.exit_code == 1 and "--force" in refused.output


def test_from_keras_is_exported():
    assert lstmkit.from_keras is from_keras
