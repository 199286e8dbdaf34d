"""PyTorch conversion: from_torch, to_torch, load_torch_state_dict and `lstmkit import-torch`.

Forward outputs and final states agree with torch within 1e-5 (float32) and 1e-12 (float64)
relative error, in both directions; state_dict files are read with weights_only=True only.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from click.testing import CliRunner

import lstmkit
from lstmkit.cli import main as cli
from lstmkit.interop import from_torch, load_torch_state_dict, to_torch

torch = pytest.importorskip("torch")

TOL = {"float32": 1e-5, "float64": 1e-12}


def rel_err(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


def flat_state(state) -> list:
    return list(state) if isinstance(state, tuple) else [state]


def assert_same_forward(layer, module, dtype, batch_first=False, with_state=True, seed=0):
    """layer and module (eval mode) give the same output and final state on random inputs."""
    rng = np.random.default_rng(seed)
    T, B = 7, 3
    D, H = layer.input_size, layer.hidden_size
    L = layer.num_layers * layer.num_directions
    x = rng.standard_normal((B, T, D) if batch_first else (T, B, D)).astype(dtype)
    state = None
    if with_state:
        parts = tuple(rng.standard_normal((L, B, H)).astype(dtype)
                      for _ in range(2 if layer.mode == "LSTM" else 1))
        state = parts if layer.mode == "LSTM" else parts[0]
    out, st = layer(x, state)
    with torch.no_grad():
        st_t = None if state is None else (
            tuple(map(torch.from_numpy, state)) if isinstance(state, tuple)
            else torch.from_numpy(state))
        out_t, fin_t = module(torch.from_numpy(x), st_t)
    assert rel_err(out, out_t.numpy()) <= TOL[dtype]
    for a, b in zip(flat_state(st), flat_state(fin_t)):
        assert rel_err(a, b.numpy()) <= TOL[dtype]


MODULES = [
    ("LSTM", {}),
    ("LSTM", {"num_layers": 3, "bidirectional": True, "batch_first": True}),
    ("LSTM", {"bias": False, "num_layers": 2, "dropout": 0.25}),
    ("GRU", {"num_layers": 2, "bidirectional": True}),
    ("GRU", {"bias": False, "batch_first": True}),
    ("RNN", {"nonlinearity": "relu", "num_layers": 2}),
    ("RNN", {"nonlinearity": "tanh", "bidirectional": True, "batch_first": True}),
]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("mode,kw", MODULES)
def test_from_torch_carries_config_and_weights(mode, kw, dtype):
    torch.manual_seed(0)
    module = getattr(torch.nn, mode)(4, 5, dtype=getattr(torch, dtype), **kw).eval()
    layer = from_torch(module)
    assert type(layer) is getattr(lstmkit, mode)
    assert layer.dtype == np.dtype(dtype)
    for name in ("input_size", "hidden_size", "num_layers", "bias", "batch_first",
                 "bidirectional", "dropout"):
        assert getattr(layer, name) == getattr(module, name), name
    if mode == "RNN":
        assert layer.nonlinearity == module.nonlinearity
    assert not layer.training
    assert_same_forward(layer, module, dtype, batch_first=kw.get("batch_first", False))
    # the weights were copied: changing the module does not change the layer
    with torch.no_grad():
        module.weight_ih_l0.add_(1.0)
    assert not np.array_equal(layer.params["weight_ih_l0"],
                              module.weight_ih_l0.detach().numpy())


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("mode,kw", MODULES)
def test_to_torch_and_back(mode, kw, dtype):
    layer = getattr(lstmkit, mode)(4, 5, dtype=dtype, seed=2, **kw).eval()
    module = to_torch(layer)
    assert isinstance(module, getattr(torch.nn, mode))
    assert next(module.parameters()).dtype == getattr(torch, dtype)
    assert not module.training
    assert_same_forward(layer, module, dtype, batch_first=kw.get("batch_first", False))
    back = from_torch(module)
    assert back.state_dict().keys() == layer.state_dict().keys()
    for name, value in layer.state_dict().items():
        assert np.array_equal(back.params[name], value), name


def test_training_mode_travels():
    module = torch.nn.GRU(2, 3)
    assert from_torch(module.train()).training
    assert not from_torch(module.eval()).training
    assert to_torch(lstmkit.GRU(2, 3)).training


def test_from_torch_refusals():
    with pytest.raises(TypeError, match="float16.*float32 or float64"):
        from_torch(torch.nn.GRU(3, 4).half())
    with pytest.raises(TypeError, match="expected a torch.nn.LSTM"):
        from_torch(torch.nn.Linear(3, 4))


@pytest.mark.parametrize("switch", [
    {"peepholes": True}, {"forget_gate": False}, {"input_gate": False}, {"output_gate": False},
    {"coupled_input_forget": True},
])
def test_to_torch_refuses_what_torch_lacks(switch):
    (name, value), = switch.items()
    with pytest.raises(ValueError, match=f"{name}={value}"):
        to_torch(lstmkit.LSTM(3, 4, **switch))
    with pytest.raises(TypeError, match="expected an lstmkit.LSTM"):
        to_torch(torch.nn.LSTM(3, 4))


def test_missing_torch_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    for call in (lambda: from_torch(object()), lambda: to_torch(lstmkit.LSTM(2, 3)),
                 lambda: load_torch_state_dict(tmp_path / "x.pt")):
        with pytest.raises(ImportError, match=r"pip install torch==2\.13\.0"):
            call()
    result = CliRunner().invoke(cli, ["import-torch", str(tmp_path / "x.pt"),
                                      "--out", str(tmp_path / "w.safetensors")])
    assert result.exit_code != 0
    assert "needs PyTorch" in result.output and "pip install torch==2.13.0" in result.output


# -- state_dict files ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("mode,kw", MODULES)
def test_load_torch_state_dict_infers_the_layer(tmp_path, mode, kw, dtype):
    torch.manual_seed(1)
    module = getattr(torch.nn, mode)(4, 5, dtype=getattr(torch, dtype), **kw).eval()
    path = tmp_path / "sd.pt"
    torch.save(module.state_dict(), path)
    layer = load_torch_state_dict(
        path, batch_first=kw.get("batch_first", False),
        nonlinearity=kw.get("nonlinearity", "tanh"),
    ).eval()
    assert type(layer) is getattr(lstmkit, mode)
    assert (layer.num_layers, layer.bidirectional, layer.bias, layer.dtype) == (
        module.num_layers, module.bidirectional, module.bias, np.dtype(dtype))
    assert_same_forward(layer, module, dtype, batch_first=kw.get("batch_first", False))
    assert type(load_torch_state_dict(path, mode.lower())) is getattr(lstmkit, mode)


def test_load_with_prefix_from_a_larger_model(tmp_path):
    model = torch.nn.ModuleDict({"embed": torch.nn.Embedding(5, 3), "rnn": torch.nn.LSTM(3, 4)})
    path = tmp_path / "model.pt"
    torch.save(model.state_dict(), path)
    with pytest.raises(KeyError, match="prefix='rnn.'"):
        load_torch_state_dict(path)
    layer = load_torch_state_dict(path, prefix="rnn.")
    assert_same_forward(layer.eval(), model["rnn"], "float32")


class _RunsCodeWhenUnpickled:
    """A pickle payload: unpickling calls _touch(path). weights_only must refuse it."""

    def __init__(self, path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (_touch, (self.path,))


def _touch(path: str) -> None:
    open(path, "w").close()


def test_state_dict_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no state_dict file"):
        load_torch_state_dict(tmp_path / "missing.pt")
    with pytest.raises(IsADirectoryError, match="expected a file"):
        load_torch_state_dict(tmp_path)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x00not a torch file" * 10)
    with pytest.raises(ValueError, match="corrupt or holds more than tensors"):
        load_torch_state_dict(corrupt)
    truncated = tmp_path / "truncated.pt"
    torch.save(torch.nn.LSTM(2, 3).state_dict(), truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(ValueError, match="not a readable PyTorch file"):
        load_torch_state_dict(truncated)

    marker = tmp_path / "code_ran"
    evil = tmp_path / "evil.pt"
    torch.save({"weight_ih_l0": _RunsCodeWhenUnpickled(marker)}, evil)
    with pytest.raises(ValueError, match=r"weights_only=True\) refused it \(.*GLOBAL"):
        load_torch_state_dict(evil)
    assert not marker.exists()

    tensor_only = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor_only)
    with pytest.raises(ValueError, match="expected a state_dict"):
        load_torch_state_dict(tensor_only)

    ints = tmp_path / "ints.pt"
    torch.save({k: v.to(torch.int32) for k, v in torch.nn.RNN(2, 3).state_dict().items()}, ints)
    with pytest.raises(TypeError, match="expected float32 or float64"):
        load_torch_state_dict(ints)

    gru = tmp_path / "gru.pt"
    torch.save(torch.nn.GRU(2, 3).state_dict(), gru)
    with pytest.raises(ValueError, match="a LSTM has 4.*expected mode='gru'"):
        load_torch_state_dict(gru, "lstm")
    with pytest.raises(ValueError, match="mode must be one of"):
        load_torch_state_dict(gru, "transformer")

    extra = tmp_path / "extra.pt"
    torch.save({**torch.nn.GRU(2, 3).state_dict(), "scale": torch.ones(1)}, extra)
    with pytest.raises(KeyError, match="unexpected key 'scale'"):
        load_torch_state_dict(extra)


# -- the command line ---------------------------------------------------------------------------


def test_import_torch_writes_safetensors_and_config(tmp_path):
    from safetensors.numpy import load_file

    torch.manual_seed(0)
    module = torch.nn.RNN(3, 4, num_layers=2, nonlinearity="relu", bidirectional=True).eval()
    sd = tmp_path / "rnn.pt"
    torch.save(module.state_dict(), sd)
    out = tmp_path / "rnn.safetensors"
    runner = CliRunner()
    result = runner.invoke(cli, ["import-torch", str(sd), "--out", str(out),
                                 "--nonlinearity", "relu"])
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "rnn.json").read_text())
    assert meta["mode"] == "RNN" and meta["format"] == "lstmkit.layer"
    assert meta["config"] == {
        "input_size": 3, "hidden_size": 4, "num_layers": 2, "bias": True,
        "batch_first": False, "dropout": 0.0, "bidirectional": True, "dtype": "float32",
        "nonlinearity": "relu", "activation": None, "clip": None,
    }
    layer = getattr(lstmkit, meta["mode"])(**meta["config"])
    layer.load_state_dict(load_file(str(out)))
    assert_same_forward(layer.eval(), module, "float32")

    before = out.read_bytes(), (tmp_path / "rnn.json").read_bytes()
    again = runner.invoke(cli, ["import-torch", str(sd), "--out", str(out), "--mode", "rnn"])
    assert again.exit_code != 0 and "--force" in again.output
    assert (out.read_bytes(), (tmp_path / "rnn.json").read_bytes()) == before
    forced = runner.invoke(cli, ["import-torch", str(sd), "--out", str(out), "--force"])
    assert forced.exit_code == 0, forced.output
    assert json.loads((tmp_path / "rnn.json").read_text())["config"]["nonlinearity"] == "tanh"
    leftovers = sorted(p.name for p in tmp_path.iterdir())
    assert leftovers == ["rnn.json", "rnn.pt", "rnn.safetensors"]


def test_import_torch_errors_are_one_line(tmp_path):
    runner = CliRunner()
    missing = runner.invoke(cli, ["import-torch", str(tmp_path / "nope.pt"),
                                  "--out", str(tmp_path / "w.safetensors")])
    assert missing.exit_code == 1 and "no state_dict file" in missing.output
    assert "Traceback" not in missing.output
    bad = tmp_path / "bad.pt"
    bad.write_text("hello")
    corrupt = runner.invoke(cli, ["import-torch", str(bad), "--out",
                                  str(tmp_path / "w.safetensors")])
    assert corrupt.exit_code == 1 and "not a readable PyTorch file" in corrupt.output
    assert not (tmp_path / "w.safetensors").exists()


def test_export_layer_from_imported_weights(tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    module = torch.nn.LSTM(3, 4, num_layers=2, dtype=torch.float64).eval()
    sd = tmp_path / "lstm.pt"
    torch.save(module.state_dict(), sd)
    runner = CliRunner()
    weights = tmp_path / "lstm.safetensors"
    assert runner.invoke(cli, ["import-torch", str(sd), "--out", str(weights)]).exit_code == 0
    out = tmp_path / "lstm.onnx"
    result = runner.invoke(cli, ["export-layer", str(weights), str(out), "--float32",
                                 "--initial-state"])
    assert result.exit_code == 0, result.output
    onnx.checker.check_model(str(out))
    x = np.random.default_rng(0).standard_normal((5, 2, 3))
    h0, c0 = np.zeros((2, 2, 4)), np.zeros((2, 2, 4))
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    y, *_ = sess.run(None, {"input": x.astype(np.float32), "h_0": h0.astype(np.float32),
                            "c_0": c0.astype(np.float32)})
    with torch.no_grad():
        expected = module(torch.from_numpy(x))[0].numpy()
    assert rel_err(y, expected) <= 1e-5
    refused = runner.invoke(cli, ["export-layer", str(weights), str(out)])
    assert refused.exit_code == 1 and "--force" in refused.output
    no_meta = runner.invoke(cli, ["export-layer", str(tmp_path / "other.safetensors"),
                                  str(tmp_path / "o.onnx")])
    assert no_meta.exit_code != 0 and "lstmkit import" in no_meta.output


def test_import_reads_pytorch_files_as_import_torch_does(tmp_path):
    torch.manual_seed(0)
    module = torch.nn.GRU(3, 4, batch_first=True).eval()
    sd = tmp_path / "gru.bin"
    torch.save({f"enc.{k}": v for k, v in module.state_dict().items()}, sd)
    runner = CliRunner()
    result = runner.invoke(cli, ["import", str(sd), "--out", str(tmp_path / "gru.safetensors"),
                                 "--prefix", "enc.", "--batch-first"])
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "gru.json").read_text())
    assert meta["source"] == {"format": "torch", "file": "gru.bin"}
    alias = runner.invoke(cli, ["import-torch", str(sd), "--out", str(tmp_path / "a.safetensors"),
                                "--prefix", "enc.", "--batch-first"])
    assert alias.exit_code == 0, alias.output
    assert json.loads((tmp_path / "a.json").read_text())["config"] == meta["config"]
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "gru.safetensors").read_bytes()
    named = runner.invoke(cli, ["import", str(sd), "--out", str(tmp_path / "n.safetensors"),
                                "--name", "enc"])
    assert named.exit_code == 2 and "--name applies to ONNX and Keras files" in named.output
