"""ONNX import: ``lstmkit.from_onnx`` gives the layer computing an ONNX LSTM / GRU / RNN node.

Checked three ways: against the ONNX package's own operator test cases (the expected outputs
its ``onnx.backend.test.case.node`` modules compute), against ONNX Runtime on graphs built
here with each attribute and input, and by round trips through ``lstmkit.export_onnx``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

import lstmkit
from lstmkit.cli import main as cli
from lstmkit.interop.onnx_import import from_onnx, read_node, read_onnx

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import helper, numpy_helper  # noqa: E402

TOL32 = 2e-6


def onnx_node_cases() -> list:
    """The ONNX package's own LSTM, GRU and RNN test cases (model + inputs + expected outputs).

    Importing a case module runs its ``export_*`` functions, which append their cases to the
    package's list (what ``collect_testcases`` gathers after importing every operator's
    module, 15 s here; these three take 2 s).
    """
    import onnx.backend.test.case.node as node_cases
    from onnx.backend.test.case.node import gru, lstm, rnn  # noqa: F401

    cases = [c for c in node_cases._NodeTestCases
             if c.model.graph.node[0].op_type in ("LSTM", "GRU", "RNN")]
    return sorted({c.name: c for c in cases}.values(), key=lambda c: c.name)


NODE_CASES = onnx_node_cases()
def test_the_onnx_cases_are_found():
    ops = sorted({c.model.graph.node[0].op_type for c in NODE_CASES})
    assert ops == ["GRU", "LSTM", "RNN"] and len(NODE_CASES) >= 18


@pytest.mark.parametrize("case", NODE_CASES, ids=lambda c: c.name)
def test_onnx_operator_test_cases(case):
    node = case.model.graph.node[0]
    inputs, expected = case.data_sets[0]
    feeds = dict(zip([n for n in node.input if n], inputs))
    weights = {k: v for k, v in feeds.items() if k in ("W", "R", "B", "P")}
    found = read_node(node, weights)
    got = found.run(feeds["X"], feeds.get("initial_h"), feeds.get("initial_c"),
                    feeds.get("sequence_lens"))
    names = [k for k, n in zip(("Y", "Y_h", "Y_c"), node.output) if n]
    assert len(names) == len(expected)
    for name, want in zip(names, expected):
        assert got[name].shape == want.shape, name
        np.testing.assert_allclose(got[name], want, rtol=1e-5, atol=1e-6, err_msg=name)


# -- graphs built here, run by ONNX Runtime ----------------------------------------------------


GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


def build(op, *, D=3, H=4, direction="forward", bias=True, peepholes=False, lengths=False,
          state=False, constants="initializer", seed=0, **attrs):
    """A graph with one recurrent node on random weights, its inputs X (T, B, D), and
    sequence_lens, initial_h, initial_c as graph inputs when asked for."""
    rng = np.random.default_rng(seed)
    nd = 2 if direction == "bidirectional" else 1
    G = GATES[op]
    arrays = {"W": rng.standard_normal((nd, G * H, D)), "R": rng.standard_normal((nd, G * H, H))}
    if bias:
        arrays["B"] = rng.standard_normal((nd, 2 * G * H))
    if peepholes:
        arrays["P"] = rng.standard_normal((nd, 3 * H))
    arrays = {k: (0.5 * v).astype(np.float32) for k, v in arrays.items()}
    nodes, inits = [], []
    for name, value in arrays.items():
        if constants == "initializer":
            inits.append(numpy_helper.from_array(value, name))
        else:
            nodes.append(helper.make_node("Constant", [], [name],
                                          value=numpy_helper.from_array(value, name)))
    graph_inputs = [helper.make_tensor_value_info("X", onnx.TensorProto.FLOAT, ["T", "B", D])]
    names = ["X", "W", "R", "B" if bias else "", "", "", "", "P" if peepholes else ""]
    if lengths:
        names[4] = "sequence_lens"
        graph_inputs.append(helper.make_tensor_value_info("sequence_lens",
                                                          onnx.TensorProto.INT32, ["B"]))
    if state:
        for j, name in ((5, "initial_h"), (6, "initial_c"))[: 2 if op == "LSTM" else 1]:
            names[j] = name
            graph_inputs.append(helper.make_tensor_value_info(
                name, onnx.TensorProto.FLOAT, [nd, "B", H]))
    names = names[: 8 if op == "LSTM" else 6]
    while names[-1] == "":
        names.pop()
    outputs = ["Y", "Y_h", "Y_c"][: 3 if op == "LSTM" else 2]
    nodes.append(helper.make_node(op, names, outputs, name="rec", hidden_size=H,
                                  direction=direction, **attrs))
    shapes = {"Y": ["T", nd, "B", H], "Y_h": [nd, "B", H], "Y_c": [nd, "B", H]}
    if attrs.get("layout"):
        shapes = {"Y": ["B", "T", nd, H], "Y_h": ["B", nd, H], "Y_c": ["B", nd, H]}
        graph_inputs = [helper.make_tensor_value_info(v.name, v.type.tensor_type.elem_type,
                                                      _batch_first(v)) for v in graph_inputs]
    graph = helper.make_graph(nodes, "g", graph_inputs,
                              [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT,
                                                             shapes[n]) for n in outputs],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _batch_first(value) -> list:
    """A time-first input's shape with its first two axes swapped (X, initial_h, initial_c)."""
    dims = [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
    return dims if len(dims) == 1 else [dims[1], dims[0], *dims[2:]]


def feeds_for(model, T=5, B=3, seed=1):
    rng = np.random.default_rng(seed)
    node = model.graph.node[-1]
    H = node.attribute[[a.name for a in node.attribute].index("hidden_size")].i
    nd = 2 if b"bidirectional" in [a.s for a in node.attribute] else 1
    D = model.graph.input[0].type.tensor_type.shape.dim[2].dim_value
    feeds = {"X": rng.standard_normal((T, B, D)).astype(np.float32)}
    for value in model.graph.input[1:]:
        if value.name == "sequence_lens":
            feeds[value.name] = np.array([T, 2, 1][:B], dtype=np.int32)
        else:
            feeds[value.name] = rng.standard_normal((nd, B, H)).astype(np.float32)
    return feeds


def assert_matches_ort(model, feeds):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = dict(zip(["Y", "Y_h", "Y_c"], session.run(None, feeds)))
    found = read_onnx(model)
    got = found.run(feeds["X"], feeds.get("initial_h"), feeds.get("initial_c"),
                    feeds.get("sequence_lens"))
    assert sorted(got) == sorted(expected)
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name], rtol=TOL32, atol=TOL32,
                                   err_msg=name)
    return found


LSTM_GRAPHS = [
    {},
    {"direction": "reverse", "peepholes": True, "lengths": True, "state": True},
    {"bias": False},
    {"peepholes": True, "lengths": True, "state": True},
    {"direction": "bidirectional", "peepholes": True, "lengths": True, "state": True},
    {"input_forget": 1},
    {"input_forget": 1, "peepholes": True, "direction": "bidirectional", "state": True},
    {"constants": "Constant", "peepholes": True},
]


@pytest.mark.parametrize("kw", LSTM_GRAPHS, ids=lambda kw: ",".join(map(str, kw.items())))
def test_lstm_graphs_match_onnx_runtime(kw):
    found = assert_matches_ort(build("LSTM", **kw), feeds_for(build("LSTM", **kw)))
    layer = found.layer
    assert layer.reverse == (kw.get("direction") == "reverse")
    assert layer.cell_options["peepholes"] == kw.get("peepholes", False)
    assert layer.cell_options["coupled_input_forget"] == bool(kw.get("input_forget"))
    assert layer.bias == kw.get("bias", True)


@pytest.mark.parametrize("op,kw", [
    ("GRU", {}),  # ONNX's default linear_before_reset=0
    ("GRU", {"linear_before_reset": 1}),
    ("GRU", {"direction": "bidirectional", "lengths": True, "state": True}),
    ("GRU", {"linear_before_reset": 1, "direction": "bidirectional", "lengths": True,
             "state": True}),
    ("GRU", {"linear_before_reset": 1, "bias": False, "constants": "Constant"}),
    ("GRU", {"direction": "reverse", "lengths": True, "state": True}),
    ("RNN", {"direction": "reverse", "lengths": True, "activations": ["Softsign"]}),
    ("RNN", {"lengths": True, "state": True}),
    ("RNN", {"activations": ["Relu", "Relu"], "direction": "bidirectional", "lengths": True}),
])
def test_gru_and_rnn_graphs_match_onnx_runtime(op, kw):
    model = build(op, **kw)
    found = assert_matches_ort(model, feeds_for(model))
    if kw.get("activations", ["Tanh"])[0] == "Relu":
        assert found.layer.nonlinearity == "relu"
    if op == "GRU":
        assert found.layer.cell_options["linear_before_reset"] == bool(
            kw.get("linear_before_reset", 0))


@pytest.mark.parametrize("op,kw", [
    ("LSTM", {"clip": 0.7, "peepholes": True, "lengths": True}),
    ("LSTM", {"activations": ["HardSigmoid", "LeakyRelu", "Softsign"],
              "activation_alpha": [0.3, 0.05], "activation_beta": [0.4]}),
    ("LSTM", {"activations": ["Sigmoid", "Elu", "ScaledTanh"] * 2, "direction": "bidirectional",
              "activation_alpha": [0.8, 1.3, 0.8, 1.3], "activation_beta": [0.6, 0.6],
              "clip": 2.0, "input_forget": 1, "state": True}),
    ("GRU", {"activations": ["Softsign", "Softplus"], "clip": 1.5}),
    ("GRU", {"activations": ["HardSigmoid", "Affine"] * 2, "direction": "bidirectional",
             "activation_alpha": [0.25, 0.5, 0.25, 0.5], "activation_beta": [0.45, 0.1] * 2,
             "linear_before_reset": 1}),
    ("RNN", {"activations": ["ThresholdedRelu"], "activation_alpha": [0.2], "clip": 3.0}),
    ("RNN", {"activations": ["Sigmoid"], "lengths": True}),
])
def test_activations_and_clip_match_onnx_runtime(op, kw):
    """Every alpha and beta given: ONNX Runtime fills a missing Affine / ThresholdedRelu /
    ScaledTanh parameter with 0 where the standard says the operator's default."""
    model = build(op, **kw)
    found = assert_matches_ort(model, feeds_for(model))
    clip = found.layer.cell_options["clip"]
    assert clip is None if "clip" not in kw else clip == pytest.approx(kw["clip"], rel=1e-7)


def test_layout_1_is_the_batch_first_layer():
    """ONNX Runtime's CPU kernels have no layout=1: the layout=0 graph's results, transposed,
    are the batch-first node's (the ONNX test case test_lstm_batchwise checks it too)."""
    time_first = build("LSTM", peepholes=True, lengths=True, state=True)
    batch_first = build("LSTM", peepholes=True, lengths=True, state=True, layout=1)
    feeds = feeds_for(time_first)
    session = ort.InferenceSession(time_first.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    Y, Y_h, Y_c = session.run(None, feeds)
    found = read_onnx(batch_first)
    assert found.layer.batch_first and found.layout == 1
    got = found.run(feeds["X"].swapaxes(0, 1), feeds["initial_h"].swapaxes(0, 1),
                    feeds["initial_c"].swapaxes(0, 1), feeds["sequence_lens"])
    np.testing.assert_allclose(got["Y"], Y.transpose(2, 0, 1, 3), rtol=TOL32, atol=TOL32)
    np.testing.assert_allclose(got["Y_h"], Y_h.swapaxes(0, 1), rtol=TOL32, atol=TOL32)
    np.testing.assert_allclose(got["Y_c"], Y_c.swapaxes(0, 1), rtol=TOL32, atol=TOL32)


@pytest.mark.parametrize("direction", ["bidirectional", "reverse"])
def test_the_layer_is_called_as_the_design_says(direction):
    """output, state = layer(X, state, lengths=sequence_lens): X in the node's layout, the
    state lstmkit's (nd, B, H), output (T, B, nd*H), ONNX's Y with the directions merged,
    aligned with the input positions (also for direction="reverse")."""
    model = build("LSTM", direction=direction, lengths=True, state=True)
    feeds = feeds_for(model)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    Y, Y_h, Y_c = session.run(None, feeds)
    layer = from_onnx(model)
    output, (h_n, c_n) = layer(feeds["X"], (feeds["initial_h"], feeds["initial_c"]),
                               lengths=feeds["sequence_lens"])
    T, B = feeds["X"].shape[:2]
    np.testing.assert_allclose(output, Y.transpose(0, 2, 1, 3).reshape(T, B, -1),
                               rtol=TOL32, atol=TOL32)
    np.testing.assert_allclose(h_n, Y_h, rtol=TOL32, atol=TOL32)
    np.testing.assert_allclose(c_n, Y_c, rtol=TOL32, atol=TOL32)


def test_constant_initial_state_and_lengths_are_read(tmp_path):
    model = build("GRU", linear_before_reset=1, lengths=True, state=True)
    feeds = feeds_for(model)
    graph = model.graph
    for name in ("sequence_lens", "initial_h"):
        graph.initializer.append(numpy_helper.from_array(feeds.pop(name), name))
    del graph.input[1:]
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    Y, Y_h = session.run(None, feeds)
    found = read_onnx(model)
    assert found.sequence_lens.tolist() == [5, 2, 1]
    got = found.run(feeds["X"])  # the graph's constants, not zeros
    np.testing.assert_allclose(got["Y"], Y, rtol=TOL32, atol=TOL32)
    np.testing.assert_allclose(got["Y_h"], Y_h, rtol=TOL32, atol=TOL32)
    onnx.save_model(model, str(tmp_path / "fixed.onnx"))
    result = CliRunner().invoke(cli, ["import", str(tmp_path / "fixed.onnx"), "--out",
                                      str(tmp_path / "fixed.safetensors")])
    assert result.exit_code == 0, result.output
    assert "the graph fixes the initial state and sequence_lens as constants" in result.output


@pytest.mark.parametrize("mode,kw", [
    ("LSTM", {"peepholes": True, "bidirectional": True}),
    ("LSTM", {"coupled_input_forget": True, "peepholes": True}),
    ("LSTM", {"bias": False}),
    ("LSTM", {"activation": "softsign", "clip": 2.0,
              "recurrent_activation": {"name": "HardSigmoid", "alpha": 0.25, "beta": 0.5},
              "output_activation": {"name": "LeakyRelu", "alpha": 0.25}}),
    ("GRU", {"bidirectional": True}),
    ("GRU", {"linear_before_reset": False, "activation": "elu", "clip": 0.5}),
    ("RNN", {"nonlinearity": "relu", "dtype": "float64"}),
    ("LSTM", {"reverse": True, "peepholes": True}),
    ("GRU", {"reverse": True, "linear_before_reset": False}),
    ("RNN", {"activation": "softplus", "bidirectional": True}),
])
def test_export_then_import_gives_the_same_layer(tmp_path, mode, kw):
    layer = getattr(lstmkit, mode)(3, 4, seed=0, **kw)
    path = lstmkit.export_onnx(layer, tmp_path / "layer.onnx", initial_state=True, lengths=True)
    back = from_onnx(path)
    assert type(back) is type(layer)
    assert (back.bias, back.bidirectional, back.reverse, back.dtype) == (
        layer.bias, layer.bidirectional, layer.reverse, layer.dtype)
    assert back.cell_options == layer.cell_options
    assert sorted(back.params) == sorted(layer.params)
    for name, value in layer.params.items():
        np.testing.assert_array_equal(back.params[name], value, err_msg=name)


def test_a_removed_gate_comes_back_as_a_gate_held_open(tmp_path):
    """An lstmkit forget_gate=False LSTM is exported with a forget gate biased to exactly 1;
    imported, that is a full LSTM computing the same outputs."""
    layer = lstmkit.LSTM(3, 4, forget_gate=False, seed=0)
    back = from_onnx(lstmkit.export_onnx(layer, tmp_path / "nfg.onnx"))
    x = np.random.default_rng(0).standard_normal((6, 2, 3)).astype(np.float32)
    np.testing.assert_array_equal(back(x)[0], layer(x)[0])


# -- refusals -----------------------------------------------------------------------------------


def test_graphs_without_one_recurrent_node_are_refused(tmp_path):
    stacked = lstmkit.export_onnx(lstmkit.LSTM(3, 4, num_layers=2, seed=0), tmp_path / "two.onnx")
    with pytest.raises(ValueError, match=r"2 recurrent nodes .*node=NAME"):
        from_onnx(stacked)
    second = onnx.load(str(stacked)).graph.node
    name = [n.name for n in second if n.op_type == "LSTM"][1]
    assert from_onnx(stacked, node=name).input_size == 4  # the second layer reads 4 features
    with pytest.raises(ValueError, match="no LSTM, GRU or RNN node named 'nope'"):
        from_onnx(stacked, node="nope")
    relu = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                             [helper.make_tensor_value_info("x", 1, [2])],
                             [helper.make_tensor_value_info("y", 1, [2])])
    with pytest.raises(ValueError, match=r"no LSTM, GRU or RNN node \(its operators: \['Relu'\]"):
        from_onnx(helper.make_model(relu))


def test_weights_must_be_constants():
    model = build("LSTM")
    weight = model.graph.initializer.pop(0)  # W becomes a graph input
    model.graph.input.append(helper.make_tensor_value_info(weight.name, 1, list(weight.dims)))
    with pytest.raises(ValueError, match="W .*is not a constant of the graph.*initializer"):
        from_onnx(model)


@pytest.mark.parametrize("op,attrs,message", [
    ("LSTM", {"direction": "backward"}, "direction='backward'; expected 'forward'"),
    ("LSTM", {"direction": "bidirectional",
              "activations": ["Sigmoid", "Tanh", "Tanh", "Sigmoid", "Tanh", "Relu"]},
     "directions use different activations"),
    ("LSTM", {"direction": "bidirectional", "activations": ["LeakyRelu", "Tanh", "Tanh"] * 2,
              "activation_alpha": [0.1, 0.2]}, "directions use different activations"),
    ("GRU", {"activations": ["Sigmoid", "Gelu"]}, r"activations \['Gelu'\] that ONNX does not"),
    ("RNN", {"activations": ["Tanh", "Tanh"]}, "expected 1 per direction"),
    ("RNN", {"activation_alpha": [0.5]}, "activation_alpha has 1 value"),
])
def test_what_lstmkit_cannot_compute_is_refused(op, attrs, message):
    with pytest.raises(ValueError, match=message):
        from_onnx(build(op, **attrs))


def test_files_are_parsed_not_trusted(tmp_path):
    with pytest.raises(FileNotFoundError, match="no ONNX file"):
        from_onnx(tmp_path / "missing.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\xff\x00 not a protobuf")
    with pytest.raises(ValueError, match="not an ONNX model"):
        from_onnx(junk)
    model = build("LSTM")
    onnx.save_model(model, str(tmp_path / "ext.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)
    with pytest.raises(ValueError, match="external data file"):
        from_onnx(tmp_path / "ext.onnx")
    with pytest.raises(TypeError, match="onnx.ModelProto or the path"):
        from_onnx(3)


# -- the command line ---------------------------------------------------------------------------


def test_cli_import_onnx(tmp_path):
    from lstmkit.cli.interop import load_layer

    layer = lstmkit.LSTM(3, 4, peepholes=True, bidirectional=True, seed=0)
    path = lstmkit.export_onnx(layer, tmp_path / "model.onnx")
    out = tmp_path / "w.safetensors"
    runner = CliRunner()
    result = runner.invoke(cli, ["import", str(path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "w.json").read_text())
    assert meta["mode"] == "LSTM" and meta["config"]["peepholes"] is True
    assert meta["source"] == {"format": "onnx", "file": "model.onnx"}
    back = load_layer(out)
    x = np.random.default_rng(0).standard_normal((4, 2, 3)).astype(np.float32)
    np.testing.assert_array_equal(back(x)[0], layer(x)[0])

    before = out.read_bytes()
    again = runner.invoke(cli, ["import", str(path), "--out", str(out)])
    assert again.exit_code == 1 and "--force" in again.output and out.read_bytes() == before
    assert runner.invoke(cli, ["import", str(path), "--out", str(out), "--force"]).exit_code == 0
    torch_only = runner.invoke(cli, ["import", str(path), "--out", str(tmp_path / "o.st"),
                                     "--mode", "lstm"])
    assert torch_only.exit_code == 2 and "--mode: for PyTorch files only" in torch_only.output
    refused = runner.invoke(cli, ["import", str(build_file(tmp_path, activations=["Gelu"] * 3)),
                                  "--out", str(tmp_path / "gelu.safetensors")])
    assert refused.exit_code == 1 and "ONNX does not define" in refused.output
    assert "Traceback" not in refused.output and not (tmp_path / "gelu.safetensors").exists()
    reverse = runner.invoke(cli, ["import", str(build_file(tmp_path, direction="reverse")),
                                  "--out", str(tmp_path / "rev.safetensors")])
    assert reverse.exit_code == 0, reverse.output
    assert load_layer(tmp_path / "rev.safetensors").reverse
    clipped = runner.invoke(cli, ["import", str(build_file(tmp_path, clip=1.0)), "--out",
                                  str(tmp_path / "clip.safetensors")])
    assert clipped.exit_code == 0, clipped.output
    assert load_layer(tmp_path / "clip.safetensors").cell_options["clip"] == 1.0


def build_file(tmp_path, **attrs):
    path = tmp_path / "built.onnx"
    onnx.save_model(build("LSTM", **attrs), str(path))
    return path
