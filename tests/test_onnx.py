"""ONNX export: the exported file, run by ONNX Runtime, computes what the lstmkit layer does.

Relative error (max |ORT - ours| / max |ours|) <= 1e-5 in float32 for LSTM (plain, peepholes,
stacked, bidirectional, batch_first, initial state, lengths, every variant switch), GRU and
RNN (tanh, relu); float64 files are checked with ONNX's reference evaluator (<= 1e-12). A gate
that a variant removes is exported as a gate whose bias opens it; the exactness tests show
ONNX Runtime computes that gate as exactly 1.0.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import lstmkit
from lstmkit.interop import GraphBuilder, add_layer_nodes, export_onnx, to_onnx_model
from lstmkit.interop.onnx_export import GATE_OPEN_BIAS, ONNX_GRU_GATES, ONNX_LSTM_GATES

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

TOL32 = 1e-5


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


def session(model) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def run_onnx(model, x, state=None, lengths=None) -> list[np.ndarray]:
    feed = {"input": x}
    if state is not None:
        for name, value in zip(("h_0", "c_0"), state if isinstance(state, tuple) else (state,)):
            feed[name] = value
    if lengths is not None:
        feed["lengths"] = np.asarray(lengths, dtype=np.int32)
    return session(model).run(None, feed)


def flat(result) -> list[np.ndarray]:
    """(output, state) -> [output, h_n(, c_n)], the order of the ONNX graph's outputs."""
    output, state = result
    return [output, *(state if isinstance(state, tuple) else (state,))]


def make_inputs(layer, T, B, with_state, rng):
    D, H = layer.input_size, layer.hidden_size
    x = rng.standard_normal((B, T, D) if layer.batch_first else (T, B, D)).astype(layer.dtype)
    if not with_state:
        return x, None
    L = layer.num_layers * layer.num_directions
    parts = tuple(rng.standard_normal((L, B, H)).astype(layer.dtype)
                  for _ in range(2 if layer.mode == "LSTM" else 1))
    return x, parts if layer.mode == "LSTM" else parts[0]


CASES = [
    # mode, constructor kwargs, with_state, with_lengths
    ("LSTM", {}, False, False),
    ("LSTM", {"peepholes": True}, True, False),
    ("LSTM", {"num_layers": 2}, True, False),
    ("LSTM", {"num_layers": 3, "peepholes": True}, False, True),
    ("LSTM", {"bidirectional": True}, False, False),
    ("LSTM", {"bidirectional": True, "num_layers": 2, "peepholes": True}, True, True),
    ("LSTM", {"batch_first": True}, False, False),
    ("LSTM", {"batch_first": True, "num_layers": 2, "bidirectional": True}, True, True),
    ("LSTM", {"bias": False}, True, False),
    ("LSTM", {"forget_gate": False}, True, False),
    ("LSTM", {"input_gate": False, "peepholes": True}, True, True),
    ("LSTM", {"output_gate": False, "bias": False, "bidirectional": True}, True, False),
    ("LSTM", {"forget_gate": False, "output_gate": False, "num_layers": 2}, False, True),
    ("LSTM", {"coupled_input_forget": True}, True, False),
    ("LSTM", {"coupled_input_forget": True, "peepholes": True, "bidirectional": True}, True, True),
    ("GRU", {}, False, False),
    ("GRU", {"num_layers": 2, "bidirectional": True}, True, True),
    ("GRU", {"batch_first": True, "bias": False}, True, False),
    ("GRU", {"num_layers": 3}, False, True),
    ("RNN", {}, False, False),
    ("RNN", {"nonlinearity": "relu"}, True, False),
    ("RNN", {"nonlinearity": "tanh", "num_layers": 2, "bidirectional": True}, True, True),
    ("RNN", {"nonlinearity": "relu", "batch_first": True, "num_layers": 2}, False, True),
]


@pytest.mark.parametrize("mode,kw,with_state,with_lengths", CASES)
def test_onnx_runtime_matches_lstmkit(mode, kw, with_state, with_lengths):
    T, B = 11, 4
    layer = getattr(lstmkit, mode)(5, 6, seed=3, **kw)
    rng = np.random.default_rng(7)
    x, state = make_inputs(layer, T, B, with_state, rng)
    lengths = np.array([11, 4, 1, 8]) if with_lengths else None
    model = to_onnx_model(layer, initial_state=with_state, lengths=with_lengths)
    onnx.checker.check_model(model, full_check=True)

    ours = flat(layer(x, state, lengths=lengths))
    theirs = run_onnx(model, x, state, lengths)
    assert [o.name for o in model.graph.output] == ["output", "h_n", "c_n"][: len(ours)]
    for name, a, b in zip(("output", "h_n", "c_n"), theirs, ours):
        assert a.dtype == np.float32
        assert rel_err(a, b) <= TOL32, name


def test_lengths_past_the_end_are_zero_in_both():
    """ONNX Runtime writes zeros past each sequence's length, as lstmkit does: compared where
    defined, and the padding checked to be exactly zero on both sides."""
    T, B = 9, 3
    layer = lstmkit.LSTM(4, 5, num_layers=2, bidirectional=True, seed=0)
    x = np.random.default_rng(1).standard_normal((T, B, 4)).astype(np.float32)
    lengths = np.array([2, 9, 5])
    ours, (h, c) = layer(x, lengths=lengths)
    theirs, h_ort, c_ort = run_onnx(to_onnx_model(layer, lengths=True), x, lengths=lengths)
    defined = np.arange(T)[:, None] < lengths[None, :]  # (T, B)
    assert rel_err(theirs[defined], ours[defined]) <= TOL32
    assert np.all(theirs[~defined] == 0.0)
    assert np.all(ours[~defined] == 0.0)
    assert rel_err(h_ort, h) <= TOL32 and rel_err(c_ort, c) <= TOL32
    # the final state of each sequence is the one at its own last step, not at T
    short, _ = layer(x[:2, :1])
    assert rel_err(theirs[:2, 0], short[:, 0]) <= TOL32


def test_dynamic_time_and_batch_axes():
    layer = lstmkit.GRU(3, 4, num_layers=2, batch_first=True, seed=0)
    model = to_onnx_model(layer, initial_state=True)
    sess = session(model)
    rng = np.random.default_rng(0)
    for B, T in ((1, 1), (5, 17), (2, 3)):
        x = rng.standard_normal((B, T, 3)).astype(np.float32)
        h0 = rng.standard_normal((2, B, 4)).astype(np.float32)
        out, h_n = sess.run(None, {"input": x, "h_0": h0})
        ours, h = layer(x, h0)
        assert out.shape == (B, T, 4)
        assert rel_err(out, ours) <= TOL32 and rel_err(h_n, h) <= TOL32
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["B", "T", 3]


# -- a removed gate is exactly 1 in the exported file ------------------------------------------


def _zero_weights(layer) -> None:
    for value in layer.params.values():
        value[...] = 0.0


def _gate_bias(layer, gate: str, value: float) -> None:
    H = layer.hidden_size
    j = layer._cells[0].gates.index(gate)
    layer.params["bias_ih_l0"][j * H : (j + 1) * H] = value


def test_sigmoid_of_the_open_bias_is_one():
    """The premise, in float32 and float64: 1 / (1 + exp(-64)) == 1 and no overflow on the way."""
    for dtype in (np.float32, np.float64):
        z = dtype(GATE_OPEN_BIAS)
        with np.errstate(all="raise"):
            assert dtype(1) / (dtype(1) + np.exp(-z)) == 1.0
            assert np.exp(z) / (dtype(1) + np.exp(z)) == 1.0
        assert lstmkit.activations.sigmoid(z) == 1.0


def test_removed_forget_gate_is_exactly_one():
    """With f == 1 exactly, zero weights (g = tanh(0) = 0) keep c_0 bit for bit over 200 steps;
    f = 1 - 2**-24 (the float32 just below 1) would lose 200 ulps."""
    layer = lstmkit.LSTM(2, 3, forget_gate=False, peepholes=True, seed=0)
    _zero_weights(layer)
    c0 = np.array([[[3.0, -1.5, 1e4]]], dtype=np.float32)
    h0 = np.zeros_like(c0)
    x = np.random.default_rng(0).standard_normal((200, 1, 2)).astype(np.float32)
    out, h_n, c_n = run_onnx(to_onnx_model(layer, initial_state=True), x, (h0, c0))
    assert np.array_equal(c_n, c0)
    ours, (h, c) = layer(x, (h0, c0))
    assert np.array_equal(c, c0)
    assert rel_err(h_n, h) <= TOL32 and rel_err(out, ours) <= TOL32  # o, tanh: a few ulps


def test_removed_input_gate_is_exactly_one():
    """c_1 = f * 0 + i * g with g = tanh(30) = 1: c_1 == 1.0 exactly iff i == 1.0 exactly."""
    layer = lstmkit.LSTM(2, 3, input_gate=False, seed=0)
    _zero_weights(layer)
    _gate_bias(layer, "g", 30.0)
    x = np.zeros((1, 2, 2), dtype=np.float32)
    _, _, c_n = run_onnx(to_onnx_model(layer), x)
    assert np.all(c_n == 1.0)
    assert np.all(layer(x)[1][1] == 1.0)


def test_removed_output_gate_is_exactly_one():
    """h = o * tanh(c) with c = 30, tanh(30) = 1: h == 1.0 exactly iff o == 1.0 exactly."""
    layer = lstmkit.LSTM(2, 3, output_gate=False, forget_gate=False, peepholes=True, bias=False,
                         seed=0)
    _zero_weights(layer)
    c0 = np.full((1, 2, 3), 30.0, dtype=np.float32)
    h0 = np.zeros_like(c0)
    x = np.ones((4, 2, 2), dtype=np.float32)
    out, h_n, c_n = run_onnx(to_onnx_model(layer, initial_state=True), x, (h0, c0))
    assert np.all(out == 1.0) and np.all(h_n == 1.0) and np.array_equal(c_n, c0)


def test_coupled_input_forget_is_one_minus_input():
    """input_forget=1: f = 1 - i. With i = sigmoid(2), c_1 = (1 - i) * c_0 + i * g, g = 1."""
    layer = lstmkit.LSTM(2, 3, coupled_input_forget=True, seed=0)
    _zero_weights(layer)
    _gate_bias(layer, "i", 2.0)
    _gate_bias(layer, "g", 30.0)
    c0 = np.full((1, 1, 3), 2.0, dtype=np.float32)
    x = np.zeros((1, 1, 2), dtype=np.float32)
    _, _, c_n = run_onnx(to_onnx_model(layer, initial_state=True), x, (np.zeros_like(c0), c0))
    i = 1.0 / (1.0 + np.exp(-2.0))
    assert np.allclose(c_n, (1.0 - i) * 2.0 + i, rtol=1e-6, atol=0)
    assert rel_err(c_n, layer(x, (np.zeros_like(c0), c0))[1][1]) <= TOL32


def test_gate_orders_are_named_permutations():
    cell = lstmkit.LSTM(1, 1)._cells[0]
    assert sorted(ONNX_LSTM_GATES) == sorted(cell.gates)
    assert sorted(ONNX_GRU_GATES) == sorted(lstmkit.GRU(1, 1)._cells[0].gates)


# -- float64 files ------------------------------------------------------------------------------


@pytest.mark.parametrize("mode,kw", [
    ("LSTM", {"num_layers": 2, "bidirectional": True, "peepholes": True}),
    ("GRU", {"num_layers": 2}),
    ("RNN", {"nonlinearity": "tanh", "bidirectional": True}),
])
def test_float64_file_matches_with_onnx_reference_evaluator(mode, kw):
    """ONNX Runtime's CPU recurrent kernels are float32 only; ONNX's reference runs float64."""
    from onnx.reference import ReferenceEvaluator

    layer = getattr(lstmkit, mode)(3, 4, dtype="float64", seed=0, **kw)
    x = np.random.default_rng(0).standard_normal((6, 2, 3))
    model = to_onnx_model(layer)
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.DOUBLE
    theirs = ReferenceEvaluator(model).run(None, {"input": x})
    for a, b in zip(theirs, flat(layer(x))):
        assert rel_err(a, b) <= 1e-12


def test_float64_layer_exported_as_float32_runs_in_onnx_runtime():
    layer = lstmkit.LSTM(3, 4, num_layers=2, dtype="float64", seed=0)
    x = np.random.default_rng(0).standard_normal((6, 2, 3))
    theirs = run_onnx(to_onnx_model(layer, dtype="float32"), x.astype(np.float32))
    for a, b in zip(theirs, flat(layer(x))):
        assert rel_err(a, b) <= TOL32


# -- building bigger graphs ---------------------------------------------------------------------


def test_add_layer_nodes_builds_a_character_language_model():
    """Embedding (Gather) -> stacked LSTM -> Linear (MatMul + Add), the way a char-level
    language model will be exported, checked against the same computation in NumPy."""
    V, E, H, T, B = 11, 4, 6, 7, 3
    rng = np.random.default_rng(0)
    table = rng.standard_normal((V, E)).astype(np.float32)
    lstm = lstmkit.LSTM(E, H, num_layers=2, seed=1)
    W = rng.standard_normal((V, H)).astype(np.float32)
    b = rng.standard_normal(V).astype(np.float32)

    builder = GraphBuilder(np.float32, name="char_lm")
    tokens = builder.add_input("tokens", np.int64, ["T", "B"])
    (x,) = builder.node("Gather", [builder.constant("embedding", table), tokens], axis=0)
    h0, c0 = (builder.add_input(n, np.float32, [2, "B", H]) for n in ("h_0", "c_0"))
    out = add_layer_nodes(builder, lstm, x, initial_state=(h0, c0))
    (logits,) = builder.node("MatMul", [out.output, builder.constant("W_out", W.T)])
    (logits,) = builder.node("Add", [logits, builder.constant("b_out", b)])
    builder.add_output(logits, ["T", "B", V], name="logits")
    builder.add_output(out.h_n, [2, "B", H], name="h_n")
    builder.add_output(out.c_n, [2, "B", H], name="c_n")
    model = builder.model()

    ids = rng.integers(0, V, size=(T, B))
    h, c = (rng.standard_normal((2, B, H)).astype(np.float32) for _ in range(2))
    got = session(model).run(None, {"tokens": ids, "h_0": h, "c_0": c})
    y, (h_n, c_n) = lstm(table[ids], (h, c))
    for a, b_ in zip(got, (y @ W.T + b, h_n, c_n)):
        assert rel_err(a, b_) <= TOL32


def test_two_layers_in_one_graph_get_distinct_names():
    builder = GraphBuilder(np.float32)
    x = builder.add_input("x", np.float32, ["T", "B", 3])
    first = add_layer_nodes(builder, lstmkit.GRU(3, 4, seed=0), x)
    second = add_layer_nodes(builder, lstmkit.GRU(4, 2, seed=1), first.output)
    builder.add_output(second.output, ["T", "B", 2], name="y")
    model = builder.model()
    names = [t.name for t in model.graph.initializer]
    assert len(names) == len(set(names))
    xv = np.random.default_rng(0).standard_normal((5, 2, 3)).astype(np.float32)
    (y,) = session(model).run(None, {"x": xv})
    expected = lstmkit.GRU(4, 2, seed=1)(lstmkit.GRU(3, 4, seed=0)(xv)[0])[0]
    assert rel_err(y, expected) <= TOL32


# -- the file -----------------------------------------------------------------------------------


def test_export_writes_a_checked_file_and_refuses_to_overwrite(tmp_path):
    layer = lstmkit.LSTM(3, 4, peepholes=True, seed=0)
    path = tmp_path / "lstm.onnx"
    assert export_onnx(layer, path) == path
    onnx.checker.check_model(str(path), full_check=True)
    first = path.read_bytes()
    x = np.ones((2, 1, 3), dtype=np.float32)
    assert rel_err(session(onnx.load(str(path))).run(None, {"input": x})[0], layer(x)[0]) <= TOL32

    other = lstmkit.LSTM(3, 4, seed=1)
    with pytest.raises(FileExistsError, match="force=True"):
        export_onnx(other, path)
    assert path.read_bytes() == first  # untouched
    export_onnx(other, path, force=True)
    assert path.read_bytes() != first
    assert sorted(os.listdir(tmp_path)) == ["lstm.onnx"]  # no temporary file left behind


def test_export_errors_name_what_was_expected(tmp_path):
    layer = lstmkit.RNN(2, 3)
    with pytest.raises(TypeError, match="expected an lstmkit.LSTM, GRU or RNN"):
        export_onnx(object(), tmp_path / "a.onnx")
    with pytest.raises(ValueError, match="opset must be an integer"):
        export_onnx(layer, tmp_path / "a.onnx", opset=7)
    with pytest.raises(TypeError, match="dtype must be"):
        export_onnx(layer, tmp_path / "a.onnx", dtype="int32")
    with pytest.raises(IsADirectoryError, match="expected a file path"):
        export_onnx(layer, tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        export_onnx(layer, tmp_path / "missing" / "a.onnx")
    with pytest.raises(ValueError, match=r"\(h_0, c_0\)"):
        add_layer_nodes(GraphBuilder(), lstmkit.LSTM(2, 3), "x", initial_state=("h",))
    assert os.listdir(tmp_path) == []


def test_write_without_overwrite_never_replaces_a_file_that_appeared(tmp_path):
    """The no-clobber write itself (a file created after export_onnx's check is kept)."""
    from lstmkit.interop.onnx_export import write_atomic

    path = tmp_path / "model.onnx"
    path.write_bytes(b"the user's file")
    with pytest.raises(FileExistsError, match="refusing to replace"):
        write_atomic(path, b"new", overwrite=False)
    assert path.read_bytes() == b"the user's file"
    write_atomic(tmp_path / "fresh.onnx", b"new", overwrite=False)
    assert (tmp_path / "fresh.onnx").read_bytes() == b"new"
    assert sorted(os.listdir(tmp_path)) == ["fresh.onnx", "model.onnx"]
