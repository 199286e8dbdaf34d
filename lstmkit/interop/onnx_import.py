"""Read an ONNX ``LSTM``, ``GRU`` or ``RNN`` node into the equal lstmkit layer.

``from_onnx(model_or_path)`` finds the graph's one recurrent node, reads its weights from the
graph's initializers (or ``Constant`` nodes) and returns an ``lstmkit.LSTM`` / ``GRU`` /
``RNN`` computing the same function::

    layer = lstmkit.from_onnx("model.onnx")
    output, state = layer(X, state, lengths=sequence_lens)

``X`` is in the node's layout ((T, B, D), or (B, T, D) for ``layout=1``: the layer is then
``batch_first``); the state is lstmkit's ((h, c) for an LSTM, h otherwise, each
(num_directions, B, H)); ``output`` is (T, B, num_directions * H) (or batch first): ONNX's
``Y`` with the direction axis merged into the features. ``read_onnx`` returns the same layer
inside an ``OnnxRecurrent``, whose ``run`` takes and gives the node's own tensors (``Y``,
``Y_h``, ``Y_c`` in ONNX's shapes) and which holds an initial state or lengths that the graph
fixes as constants.

What the conversion bridges (the gate orders live in ``lstmkit.interop.gate_order``, shared
with the exporter):

- ``W`` (nd, G*H, D), ``R`` (nd, G*H, H): the gate blocks reordered by name into
  ``weight_ih_l0`` / ``weight_hh_l0`` (``_reverse`` for the second direction).
- ``B`` (nd, 2*G*H) = [Wb, Rb]: ``bias_ih_l0`` and ``bias_hh_l0``; no ``B`` = ``bias=False``.
- ``P`` (nd, 3H) = [P_i, P_o, P_f]: ``peepholes=True``, ``weight_ci/co/cf_l0``.
- ``direction``: "forward", "bidirectional" (``bidirectional=True``) or "reverse"
  (``reverse=True``: the one direction runs from each sequence's end, its output aligned
  with the input positions, as ONNX's Y).
- ``input_forget=1``: f = 1 - i (ONNX Runtime ignores the forget block of W, R, B and P_f
  then), lstmkit's ``coupled_input_forget=True``, which has no forget weights.
- ``activations`` with ``activation_alpha`` / ``activation_beta``: LSTM [f, g, h] =
  ``recurrent_activation``, ``activation``, ``output_activation``; GRU [f, g] =
  ``recurrent_activation``, ``activation``; RNN [f] = ``activation`` (as
  ``lstmkit.Activation`` objects; an ONNX default alpha/beta is the ONNX operator's, as the
  standard says). An lstmkit layer has one set of functions for both directions.
- ``clip``: ``clip`` (every gate pre-activation clipped to [-clip, clip]).
- GRU ``linear_before_reset`` (ONNX's default 0): ``linear_before_reset=False``; 1 is
  PyTorch's GRU (lstmkit's default).

Files from elsewhere are untrusted: the file is parsed as a protobuf and only the node's
attributes and the constant tensors it names are read; nothing in it is run. Weights kept in
external data files are refused (their paths would point outside the model).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lstmkit.interop.gate_order import (
    ONNX_GRU_GATES,
    ONNX_LSTM_GATES,
    ONNX_PEEPHOLE_GATES,
    blocks,
    restack,
)

Array = np.ndarray

RECURRENT_OPS = ("LSTM", "GRU", "RNN")
_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}  # gate blocks per direction in W and R
# ONNX's default activation functions, per direction: LSTM f (gates), g (cell input),
# h (output); GRU f (gates), g (candidate); RNN f
_DEFAULT_ACTIVATIONS = {
    "LSTM": ("sigmoid", "tanh", "tanh"),
    "GRU": ("sigmoid", "tanh"),
    "RNN": ("tanh",),
}
_ATTRIBUTES = {
    "LSTM": {"activation_alpha", "activation_beta", "activations", "clip", "direction",
             "hidden_size", "input_forget", "layout"},
    "GRU": {"activation_alpha", "activation_beta", "activations", "clip", "direction",
            "hidden_size", "layout", "linear_before_reset"},
    "RNN": {"activation_alpha", "activation_beta", "activations", "clip", "direction",
            "hidden_size", "layout"},
}
_INPUTS = {  # the node's inputs by position
    "LSTM": ("X", "W", "R", "B", "sequence_lens", "initial_h", "initial_c", "P"),
    "GRU": ("X", "W", "R", "B", "sequence_lens", "initial_h"),
    "RNN": ("X", "W", "R", "B", "sequence_lens", "initial_h"),
}
_DIRECTIONS = {"forward": 1, "reverse": 1, "bidirectional": 2}


def _onnx() -> Any:
    try:
        import onnx
    except ImportError as error:  # pragma: no cover - exercised only without onnx
        raise ImportError(
            "reading ONNX files needs the onnx package: pip install 'lstmkit[onnx]' "
            "(or pip install onnx)"
        ) from error
    return onnx


@dataclass(frozen=True)
class OnnxRecurrent:
    """An ONNX recurrent node read into an lstmkit layer.

    ``layer`` is the lstmkit layer. ``initial_state`` ((h_0,) or (h_0, c_0), each
    (num_directions, B, H)) and ``sequence_lens`` ((B,) ints) are set where the graph fixes
    them as constants, None where they are graph inputs (or absent: zeros, full length).
    """

    layer: Any
    node_name: str
    op_type: str
    direction: str
    layout: int
    initial_state: tuple[Array, ...] | None = None
    sequence_lens: Array | None = None

    def state_from_onnx(self, initial_h: Any, initial_c: Any = None) -> Any:
        """The node's ``initial_h`` (and ``initial_c``), (nd, B, H) or with ``layout=1``
        (B, nd, H), as the layer's state: h, or (h, c) for an LSTM (zeros for a missing c)."""
        h = self._from_layout(np.asarray(initial_h))
        if self.op_type != "LSTM":
            if initial_c is not None:
                raise ValueError(f"a {self.op_type} has no cell state; got initial_c")
            return h
        c = np.zeros_like(h) if initial_c is None else self._from_layout(np.asarray(initial_c))
        return h, c

    def run(self, X: Any, initial_h: Any = None, initial_c: Any = None,
            sequence_lens: Any = None) -> dict[str, Array]:
        """Compute the node's outputs in ONNX's shapes: ``{"Y", "Y_h"}`` (and ``"Y_c"``).

        ``X`` and the optional inputs are the node's (``layout=0``: X (T, B, D), initial_h
        (nd, B, H); ``layout=1``: X (B, T, D), initial_h (B, nd, H)); ``sequence_lens`` (B,)
        ints in [1, T]. An input left out takes the graph's constant if it has one, else
        zeros (or full lengths). Returns Y (T, nd, B, H) (``layout=1``: (B, T, nd, H)) and
        Y_h, Y_c (nd, B, H) (``layout=1``: (B, nd, H)); Y is zero past a sequence's end.
        """
        layer = self.layer
        if initial_h is None and initial_c is None and self.initial_state is not None:
            state = self.initial_state if self.op_type == "LSTM" else self.initial_state[0]
        elif initial_h is None and initial_c is None:
            state = None
        elif initial_h is None:
            raise ValueError("initial_c was given without initial_h; pass both (or neither)")
        else:
            state = self.state_from_onnx(initial_h, initial_c)
        lengths = self.sequence_lens if sequence_lens is None else np.asarray(sequence_lens)
        output, final = layer(X, state, lengths=lengths)
        nd, H = layer.num_directions, layer.hidden_size
        # (T, B, nd*H) -> (T, nd, B, H); batch first: (B, T, nd*H) -> (B, T, nd, H)
        Y = output.reshape(output.shape[:2] + (nd, H))
        if not self.layout:
            Y = Y.transpose(0, 2, 1, 3)
        finals = final if self.op_type == "LSTM" else (final,)
        result = {"Y": np.ascontiguousarray(Y)}
        for name, value in zip(("Y_h", "Y_c"), finals):
            result[name] = np.ascontiguousarray(self._to_layout(value))
        return result

    def _from_layout(self, state: Array) -> Array:
        return state.swapaxes(0, 1) if self.layout else state

    def _to_layout(self, state: Array) -> Array:
        return state.swapaxes(0, 1) if self.layout else state


def load_onnx_model(model_or_path: Any) -> Any:
    """An ``onnx.ModelProto``: the one given, or the file at a path parsed (nothing run)."""
    onnx = _onnx()
    if isinstance(model_or_path, onnx.ModelProto):
        return model_or_path
    if not isinstance(model_or_path, (str, os.PathLike)):
        raise TypeError(
            f"expected an onnx.ModelProto or the path of a .onnx file, got "
            f"{type(model_or_path).__name__}"
        )
    path = Path(model_or_path)
    if not path.is_file():
        raise FileNotFoundError(f"no ONNX file at {path}")
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as error:  # protobuf's DecodeError and friends
        raise ValueError(f"{path} is not an ONNX model (it does not parse: {error})") from error


def from_onnx(model_or_path: Any, node: str | None = None) -> Any:
    """The lstmkit layer computing a graph's ONNX ``LSTM``, ``GRU`` or ``RNN`` node.

    ``model_or_path``: an ``onnx.ModelProto`` or a .onnx file. The graph must hold one
    recurrent node (or name it with ``node``), whose W, R (and B, P) are initializers or
    Constant nodes. See the module docstring for the mapping; ``read_onnx`` also returns the
    graph's constant initial state and lengths.
    """
    return read_onnx(model_or_path, node=node).layer


def read_onnx(model_or_path: Any, node: str | None = None) -> OnnxRecurrent:
    """The graph's recurrent node read into an ``OnnxRecurrent`` (layer + the node's layout,
    direction and constant initial state or lengths). Arguments as ``from_onnx``."""
    onnx = _onnx()
    model = load_onnx_model(model_or_path)
    graph = model.graph
    found = [n for n in graph.node
             if n.op_type in RECURRENT_OPS and n.domain in ("", "ai.onnx")]
    if node is not None:
        found = [n for n in found if n.name == node]
        if not found:
            names = [n.name for n in graph.node if n.op_type in RECURRENT_OPS]
            raise ValueError(f"the graph has no LSTM, GRU or RNN node named {node!r}; "
                             f"its recurrent nodes: {names}")
    if not found:
        ops = sorted({n.op_type for n in graph.node})
        raise ValueError(
            f"the graph has no LSTM, GRU or RNN node (its operators: {ops}); expected one"
        )
    if len(found) > 1:
        names = [n.name or f"#{j}" for j, n in enumerate(found)]
        raise ValueError(
            f"the graph has {len(found)} recurrent nodes {names}; expected one: pick one with "
            "node=NAME (--name in the CLI)"
        )
    constants = _constants(graph, onnx)
    return read_node(found[0], constants)


def _constants(graph: Any, onnx: Any) -> dict[str, Any]:
    """Name -> TensorProto of every initializer and every Constant node's ``value``."""
    tensors = {t.name: t for t in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant" and n.domain in ("", "ai.onnx"):
            for attribute in n.attribute:
                if attribute.name == "value":
                    tensors[n.output[0]] = attribute.t
    return tensors


def _to_array(tensor: Any, what: str) -> Array:
    onnx = _onnx()
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        raise ValueError(
            f"{what} is stored in an external data file, which lstmkit does not read (its path "
            "comes from the model file); expected the weights inside the .onnx file "
            "(onnx.save_model(model, path, save_as_external_data=False))"
        )
    return onnx.numpy_helper.to_array(tensor)


def read_node(node: Any, constants: dict[str, Any]) -> OnnxRecurrent:
    """Read one recurrent ``onnx.NodeProto`` whose constant inputs are in ``constants``
    (name -> TensorProto or ndarray) into an ``OnnxRecurrent``.

    ``read_onnx`` passes the graph's initializers; a test harness can pass arrays for W, R,
    B, P given as graph inputs.
    """
    onnx = _onnx()
    op = node.op_type
    if op not in RECURRENT_OPS:
        raise ValueError(f"expected an LSTM, GRU or RNN node, got {op!r}")
    label = f"the {op} node {node.name!r}" if node.name else f"the {op} node"
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    unknown = sorted(set(attrs) - _ATTRIBUTES[op])
    if unknown:
        raise ValueError(
            f"{label} has attribute(s) {unknown} that the current {op} operator does not "
            f"define (an old opset?); expected only {sorted(_ATTRIBUTES[op])}"
        )

    def constant(name: str, what: str) -> Array | None:
        if name == "":
            return None
        if name not in constants:
            raise ValueError(
                f"{label}'s {what} ({name!r}) is not a constant of the graph; lstmkit reads "
                "weights from initializers (or Constant nodes) only, expected "
                f"{what} as an initializer"
            )
        value = constants[name]
        return np.asarray(value) if isinstance(value, np.ndarray) else _to_array(
            value, f"{label}'s {what} ({name!r})")

    names = dict(zip(_INPUTS[op], list(node.input) + [""] * len(_INPUTS[op])))
    if len(node.input) > len(_INPUTS[op]):
        raise ValueError(f"{label} has {len(node.input)} inputs; an {op} has at most "
                         f"{len(_INPUTS[op])}")
    W = constant(names["W"], "W")
    R = constant(names["R"], "R")
    if W is None or R is None:
        raise ValueError(f"{label} lacks W or R; both are required inputs")
    Bias = constant(names["B"], "B")
    P = constant(names.get("P", ""), "P")
    sequence_lens = (constant(names["sequence_lens"], "sequence_lens")
                     if names["sequence_lens"] in constants else None)
    initial = []
    for key in ("initial_h", "initial_c"):
        name = names.get(key, "")
        initial.append(constant(name, key) if name in constants else None)

    direction = _text(attrs.get("direction", b"forward"))
    if direction not in _DIRECTIONS:
        raise ValueError(f"{label} has direction={direction!r}; expected 'forward', "
                         "'reverse' or 'bidirectional'")
    nd = _DIRECTIONS[direction]
    layout = int(attrs.get("layout", 0))
    if layout not in (0, 1):
        raise ValueError(f"{label} has layout={layout}; expected 0 (time first) or 1 "
                         "(batch first)")
    G = _GATES[op]
    H, D, dtype = _check_weights(label, op, W, R, Bias, P, nd, G, attrs.get("hidden_size"))
    acts = _activations(label, attrs, op, nd)

    options: dict[str, Any] = {
        "bias": Bias is not None,
        "batch_first": layout == 1,
        "bidirectional": nd == 2,
        "reverse": direction == "reverse",
        "dtype": dtype.name,
    }
    if "clip" in attrs:
        options["clip"] = float(attrs["clip"])
    if op == "LSTM":
        options["peepholes"] = P is not None
        options["coupled_input_forget"] = bool(attrs.get("input_forget", 0))
        options.update(zip(("recurrent_activation", "activation", "output_activation"), acts))
    elif op == "GRU":
        options["linear_before_reset"] = bool(attrs.get("linear_before_reset", 0))
        options.update(zip(("recurrent_activation", "activation"), acts))
    else:
        options["activation"] = acts[0]
    import lstmkit

    layer = getattr(lstmkit, op)(D, H, **options)
    layer.load_state_dict(_state_dict(layer, op, W, R, Bias, P, nd, H))

    initial_state = None
    if initial[0] is not None or initial[1] is not None:
        if initial[0] is None:
            raise ValueError(f"{label} has a constant initial_c but initial_h is not "
                             "constant; expected both constants or both graph inputs")
        parts = [initial[0]] + ([initial[1]] if op == "LSTM" else [])
        if op == "LSTM" and parts[1] is None:
            parts[1] = np.zeros_like(parts[0])
        initial_state = tuple(
            np.ascontiguousarray(p.swapaxes(0, 1) if layout else p).astype(dtype)
            for p in parts
        )
    return OnnxRecurrent(layer, node.name, op, direction, layout, initial_state,
                         None if sequence_lens is None else sequence_lens.astype(np.int64))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _check_weights(label: str, op: str, W: Array, R: Array, Bias: Array | None,
                   P: Array | None, nd: int, G: int,
                   hidden_size: Any) -> tuple[int, int, np.dtype]:
    """Check the shapes and dtypes of W, R, B, P; return (H, D, dtype)."""
    if W.ndim != 3 or R.ndim != 3 or W.shape[0] != nd or R.shape[0] != nd:
        raise ValueError(
            f"{label}: W has shape {W.shape} and R {R.shape}; expected (num_directions={nd}, "
            f"{G}*hidden_size, input_size) and ({nd}, {G}*hidden_size, hidden_size)"
        )
    H = R.shape[2]
    if hidden_size is not None and int(hidden_size) != H:
        raise ValueError(f"{label} has hidden_size={hidden_size} but R has shape {R.shape} "
                         f"(hidden size {H}); expected them to agree")
    D = W.shape[2]
    if H < 1 or D < 1 or W.shape[1] != G * H or R.shape[1] != G * H:
        raise ValueError(
            f"{label}: W has shape {W.shape} and R {R.shape}; an {op} with hidden size {H} "
            f"needs ({nd}, {G * H}, input_size) and ({nd}, {G * H}, {H})"
        )
    expected = {"B": (nd, 2 * G * H), "P": (nd, 3 * H)}
    for name, value in (("B", Bias), ("P", P)):
        if value is not None and value.shape != expected[name]:
            raise ValueError(f"{label}: {name} has shape {value.shape}; expected "
                             f"{expected[name]}")
    dtype = W.dtype
    if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise TypeError(f"{label}: W has dtype {dtype}; lstmkit layers are float32 or float64")
    for name, value in (("R", R), ("B", Bias), ("P", P)):
        if value is not None and value.dtype != dtype:
            raise TypeError(f"{label}: {name} has dtype {value.dtype} but W {dtype}; "
                            "expected one dtype")
    return int(H), int(D), dtype


def _activations(label: str, attrs: dict[str, Any], op: str, nd: int) -> tuple[Any, ...]:
    """The node's activation functions of one direction (``lstmkit.Activation``s: LSTM f, g,
    h; GRU f, g; RNN f), with activation_alpha / activation_beta consumed as ONNX Runtime
    does; both directions must use the same functions."""
    from lstmkit.activations import NAMES, resolve_functions

    n = len(_DEFAULT_ACTIVATIONS[op])
    given = attrs.get("activations")
    names = ([_text(a) for a in given] if given is not None
             else list(_DEFAULT_ACTIVATIONS[op]) * nd)
    if len(names) != n * nd:
        raise ValueError(
            f"{label} lists {len(names)} activations {names}; expected {n} per direction "
            f"({n * nd} in all)"
        )
    onnx_names = {name.lower() for name in NAMES if name != "Identity"}
    unknown = [name for name in names if name.lower() not in onnx_names]
    if unknown:
        raise ValueError(f"{label} uses activations {unknown} that ONNX does not define; "
                         f"expected names from {sorted(n for n in NAMES if n != 'Identity')}")
    try:
        acts = resolve_functions(names, attrs.get("activation_alpha"),
                                 attrs.get("activation_beta"),
                                 [f"activations[{j}]" for j in range(len(names))])
    except (TypeError, ValueError) as error:
        raise ValueError(f"{label}: {error}") from None
    if nd == 2 and acts[:n] != acts[n:]:
        raise ValueError(
            f"{label}'s directions use different activations "
            f"{[str(a) for a in acts[:n]]} and {[str(a) for a in acts[n:]]}; an lstmkit "
            "layer has one set of functions for both directions"
        )
    return acts[:n]


def _state_dict(layer: Any, op: str, W: Array, R: Array, Bias: Array | None,
                P: Array | None, nd: int, H: int) -> dict[str, Array]:
    """The layer's state dict from the node's (nd, ...) tensors."""
    order = {"LSTM": ONNX_LSTM_GATES, "GRU": ONNX_GRU_GATES, "RNN": ("h",)}[op]
    cell = layer._cells[0]
    ours = getattr(cell, "gates", ()) or ("h",)
    G = len(order)
    state: dict[str, Array] = {}
    for d, sfx in enumerate(["", "_reverse"][:nd]):
        state[f"weight_ih_l0{sfx}"] = restack(W[d], order, ours, H)
        state[f"weight_hh_l0{sfx}"] = restack(R[d], order, ours, H)
        if Bias is not None:
            state[f"bias_ih_l0{sfx}"] = restack(Bias[d, : G * H], order, ours, H)
            state[f"bias_hh_l0{sfx}"] = restack(Bias[d, G * H :], order, ours, H)
        if P is not None:
            peep = blocks(P[d], ONNX_PEEPHOLE_GATES, H)
            for gate in cell.peephole_gates:
                state[f"weight_c{gate}_l0{sfx}"] = peep[gate]
    return state


__all__ = ["OnnxRecurrent", "from_onnx", "load_onnx_model", "read_node", "read_onnx"]
