"""Cell options exported to ONNX (activations with alpha/beta, clip, linear_before_reset), run by
ONNX Runtime's own LSTM / GRU / RNN kernels against lstmkit (float32, relative error <= 1e-5),
and clear errors for what ONNX cannot express (full gate recurrence, a removed gate that the
gate function cannot open exactly)."""

from __future__ import annotations

import numpy as np
import pytest

import lstmkit
from lstmkit.interop import to_onnx_model
from tests.test_onnx import flat, make_inputs, rel_err, run_onnx

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

CASES = [
    ("LSTM", {"recurrent_activation": "HardSigmoid", "activation": "LeakyRelu",
              "output_activation": "ScaledTanh", "activation_alpha": [0.3, 0.2, 1.5],
              "activation_beta": [0.4, 0.7], "peepholes": True}),
    ("LSTM", {"activation": "softsign", "output_activation": "identity", "clip": 0.7,
              "bidirectional": True}),
    ("LSTM", {"activation": "elu", "recurrent_activation": "softsign", "clip": 2.0,
              "coupled_input_forget": True, "num_layers": 2}),
    ("LSTM", {"recurrent_activation": "hard_sigmoid", "output_gate": False}),
    ("GRU", {"linear_before_reset": False}),
    ("GRU", {"linear_before_reset": False, "bidirectional": True, "clip": 0.5,
             "recurrent_activation": "hardsigmoid", "activation": "thresholdedrelu",
             "activation_alpha": [0.25, 0.1]}),
    ("GRU", {"activation": "softplus", "clip": 1.0, "num_layers": 2}),
    ("RNN", {"activation": "affine", "activation_alpha": [0.5], "activation_beta": [0.1],
             "clip": 0.9}),
    ("RNN", {"activation": "elu", "bidirectional": True}),
    ("LSTM", {"reverse": True, "peepholes": True, "num_layers": 2}),
    ("GRU", {"reverse": True, "linear_before_reset": False}),
]


@pytest.mark.parametrize("mode, kw", CASES, ids=[f"{m}-{i}" for i, (m, _) in enumerate(CASES)])
def test_onnx_runtime_runs_the_options(mode, kw):
    layer = getattr(lstmkit, mode)(3, 4, seed=0, **kw)
    rng = np.random.default_rng(0)
    x, state = make_inputs(layer, 5, 3, True, rng)
    lengths = np.array([5, 2, 4])
    model = to_onnx_model(layer, initial_state=True, lengths=True)
    ours = flat(layer(x, state, lengths=lengths))
    for got, want in zip(run_onnx(model, x, state, lengths), ours):
        assert rel_err(got, want) <= 1e-5


def test_default_activations_are_not_written():
    """A layer without options exports the same node attributes as before the options."""
    node = to_onnx_model(lstmkit.GRU(2, 3)).graph.node[0]
    assert {a.name for a in node.attribute} == {"hidden_size", "direction",
                                                "linear_before_reset"}


def test_what_onnx_cannot_express_is_refused():
    with pytest.raises(ValueError, match="full_gate_recurrence"):
        to_onnx_model(lstmkit.LSTM(2, 3, full_gate_recurrence=True))
    with pytest.raises(ValueError, match="gives 64 there, not 1"):
        to_onnx_model(lstmkit.LSTM(2, 3, input_gate=False, recurrent_activation="relu"))
    with pytest.raises(ValueError, match="after clip=3"):
        to_onnx_model(lstmkit.LSTM(2, 3, forget_gate=False, clip=3.0))
    with pytest.raises(ValueError, match="not exported to ONNX"):
        to_onnx_model(lstmkit.GRU(2, 3, bidirectional=True, merge_mode="sum"))
    with pytest.raises(ValueError, match="not exported to ONNX"):
        to_onnx_model(lstmkit.RNN(2, 3, go_backwards=True))
