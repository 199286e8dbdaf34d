"""Export ``lstmkit.LSTM``, ``GRU`` and ``RNN`` layers as standard ONNX operators.

Each stacked layer becomes one ONNX ``LSTM`` / ``GRU`` / ``RNN`` node (both directions in one
node with ``direction="bidirectional"``), so any ONNX runtime runs the file with its own fused
kernels. What the conversion has to bridge, and how:

- Gate order. PyTorch (and lstmkit) stack the gate blocks i, f, g, o (LSTM) and r, z, n (GRU);
  ONNX stacks i, o, f, c and z, r, h. The blocks are reordered by name with
  ``ONNX_LSTM_GATES`` and ``ONNX_GRU_GATES`` (``lstmkit.interop.gate_order``), never by
  position arithmetic.
- Biases. ONNX takes one ``B`` = [Wb, Rb] per direction: our ``bias_ih`` and ``bias_hh``.
- GRU reset. ``linear_before_reset=1`` makes ONNX apply the reset gate to ``W_hn h + b_hn``,
  as PyTorch and lstmkit's default do; a GRU with ``linear_before_reset=False`` gets 0.
- Activations and clip. A layer's functions become the node's ``activations`` ([f, g, h] for
  the LSTM, [f, g] for the GRU, [f] for the RNN, repeated per direction), with every alpha
  and beta written out (``activation_alpha`` / ``activation_beta``, consumed by the functions
  that take them, as ONNX Runtime reads them), identity as ``Affine`` (alpha 1, beta 0); the
  cell clip is the ``clip`` attribute. Full gate recurrence has no ONNX form (an error says so).
- Peepholes. ONNX's ``P`` input is [P_i, P_o, P_f] with exactly our convention: i and f see
  c_prev, o sees the new c.
- LSTM variants. A gate that a switch removes is fixed at 1. ONNX has no such switch, so the
  gate gets zero weights, zero peephole and the bias ``GATE_OPEN_BIAS`` (= 64): every float32
  sigmoid formula gives exactly 1.0 there (1 / (1 + e^-64) rounds to 1, e^64 does not overflow),
  so the exported gate is bit-for-bit the constant 1 (tests/test_onnx.py proves it through ONNX
  Runtime's own LSTM kernel). ``coupled_input_forget`` (f = 1 - i) is ONNX's
  ``input_forget=1`` attribute.
- Layout. An ONNX recurrent node returns Y as (T, num_directions, B, H); the next layer (and
  the user) needs (T, B, num_directions * H), so Y goes through Transpose(0, 2, 1, 3) and
  Reshape. ``batch_first`` layers get a Transpose at the graph's input and output (ONNX
  Runtime's CPU kernels do not implement the operators' ``layout=1``).
- State. ``h_0`` / ``c_0`` (L * nd, B, H) are sliced per layer into the (nd, B, H) ONNX wants;
  each layer's Y_h / Y_c are concatenated back into ``h_n`` / ``c_n``.
- Lengths. ``sequence_lens`` (int32, (B,)) goes to every layer: outputs past a sequence's end
  are zero and its final state is the one at its last step, as lstmkit's ``lengths=``.

The exported graph is the layer in evaluation mode: dropout between layers is not exported,
and a ``stateful`` layer's carried state is not part of it (pass it as ``h_0``/``c_0``).

Building larger models. ``add_layer_nodes(builder, layer, input_name, ...)`` appends one
layer's nodes to a ``GraphBuilder`` and returns the names of its outputs, so a model can be
assembled from pieces, for example a character-level language model::

    builder = GraphBuilder(np.float32)
    tokens = builder.add_input("tokens", np.int64, ["T", "B"])
    table = builder.constant("embedding", embedding_weight)              # (V, E)
    (x,) = builder.node("Gather", [table, tokens])                       # (T, B, E)
    out = add_layer_nodes(builder, lstm, x)                              # out.output (T, B, H)
    (logits,) = builder.node("MatMul", [out.output, builder.constant("W", W.T)])
    (logits,) = builder.node("Add", [logits, builder.constant("b", b)])  # (T, B, V)
    builder.add_output(logits, ["T", "B", V], name="logits")
    model = builder.model(opset=DEFAULT_OPSET)
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lstmkit.interop.gate_order import ONNX_GRU_GATES, ONNX_LSTM_GATES, ONNX_PEEPHOLE_GATES
from lstmkit.interop.gate_order import blocks as _blocks

Array = np.ndarray

DEFAULT_OPSET = 17
MIN_OPSET = 14  # Reshape with 0 = "copy this dimension" and the recurrent ops' current form


# The bias of a gate that a variant switch removes (fixed at 1). sigmoid(64) is 1.0 exactly in
# float32 and float64 by every usual formula: 1 / (1 + exp(-64)) with exp(-64) = 1.6e-28 below
# half an ulp of 1, exp(64) / (1 + exp(64)) without overflow (exp(64) = 6.2e27), and clamped
# rational approximations (ONNX Runtime clamps at 18, where its result is already 1.0).
GATE_OPEN_BIAS = 64.0



def _onnx() -> Any:
    """The ``onnx`` package, imported on first use (it is an optional dependency)."""
    try:
        import onnx
    except ImportError as error:  # pragma: no cover - exercised only without onnx
        raise ImportError(
            "exporting to ONNX needs the onnx package: pip install 'lstmkit[onnx]' "
            "(or pip install onnx)"
        ) from error
    return onnx


def _elem_type(dtype: Any) -> int:
    onnx = _onnx()
    return int(onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype)))


class GraphBuilder:
    """Collects the nodes, weights, inputs and outputs of an ONNX graph, with unique names.

    ``dtype`` (float32 or float64) is the floating-point type of the weights and activations.
    Names passed in are made unique by appending ``_1``, ``_2``, ...; every method returns the
    name it actually used.
    """

    def __init__(self, dtype: Any = np.float32, name: str = "lstmkit") -> None:
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise TypeError(f"GraphBuilder dtype must be float32 or float64, got {self.dtype}")
        self.name = name
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self.inputs: list[Any] = []
        self.outputs: list[Any] = []
        self._used: set[str] = set()

    def fresh(self, base: str) -> str:
        """A name not used yet in this graph, ``base`` itself if free."""
        name, n = base, 0
        while name in self._used:
            n += 1
            name = f"{base}_{n}"
        self._used.add(name)
        return name

    def constant(self, base: str, array: Any, dtype: Any = None) -> str:
        """Add ``array`` as a weight (initializer), cast to ``dtype`` (default: the builder's
        float type for floating arrays, unchanged otherwise). Returns its name."""
        onnx = _onnx()
        value = np.asarray(array)
        if dtype is not None:
            value = value.astype(dtype)
        elif np.issubdtype(value.dtype, np.floating):
            value = value.astype(self.dtype)
        name = self.fresh(base)
        self.initializers.append(onnx.numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def node(
        self,
        op_type: str,
        inputs: list[str],
        n_outputs: int = 1,
        base: str | None = None,
        **attributes: Any,
    ) -> list[str]:
        """Append one operator; ``""`` in ``inputs`` skips an optional input. Returns the names
        of its ``n_outputs`` outputs."""
        onnx = _onnx()
        stem = base or op_type.lower()
        outputs = [self.fresh(f"{stem}_out{j}" if n_outputs > 1 else stem)
                   for j in range(n_outputs)]
        self.nodes.append(onnx.helper.make_node(
            op_type, inputs, outputs, name=self.fresh(f"{stem}_node"), **attributes
        ))
        return outputs

    def add_input(self, name: str, dtype: Any, shape: list[int | str]) -> str:
        """Declare a graph input; a string in ``shape`` is a dynamic axis ("T", "B")."""
        onnx = _onnx()
        if name in self._used:
            raise ValueError(f"graph input name {name!r} is already used; expected a new name")
        self._used.add(name)
        self.inputs.append(onnx.helper.make_tensor_value_info(name, _elem_type(dtype), shape))
        return name

    def add_output(self, value: str, shape: list[int | str] | None, name: str | None = None,
                   dtype: Any = None) -> str:
        """Declare ``value`` a graph output, renamed to ``name`` (through Identity) if given."""
        onnx = _onnx()
        if name is not None and name != value:
            if name in self._used:
                raise ValueError(f"graph output name {name!r} is already used; expected a new name")
            self._used.add(name)
            self.nodes.append(onnx.helper.make_node(
                "Identity", [value], [name], name=self.fresh(f"{name}_node")
            ))
            value = name
        elem = _elem_type(self.dtype if dtype is None else dtype)
        self.outputs.append(onnx.helper.make_tensor_value_info(value, elem, shape))
        return value

    def model(self, opset: int = DEFAULT_OPSET, doc_string: str = "") -> Any:
        """The finished ``onnx.ModelProto``, checked by ``onnx.checker``."""
        onnx = _onnx()
        opset = _check_opset(opset)
        graph = onnx.helper.make_graph(
            self.nodes, self.name, self.inputs, self.outputs, self.initializers
        )
        model = onnx.helper.make_model(
            graph,
            opset_imports=[onnx.helper.make_opsetid("", opset)],
            producer_name="lstmkit",
            doc_string=doc_string,
        )
        # Runtimes lag behind the onnx package: declare the oldest IR version the opset needs.
        model.ir_version = onnx.helper.find_min_ir_version_for(list(model.opset_import))
        onnx.checker.check_model(model, full_check=True)
        return model


def _check_opset(opset: Any) -> int:
    onnx = _onnx()
    newest = int(onnx.defs.onnx_opset_version())
    if not isinstance(opset, (int, np.integer)) or isinstance(opset, bool) or not (
        MIN_OPSET <= opset <= newest
    ):
        raise ValueError(
            f"opset must be an integer in [{MIN_OPSET}, {newest}] (the installed onnx's newest), "
            f"got {opset!r}"
        )
    return int(opset)


@dataclass(frozen=True)
class LayerOutputs:
    """The names of a layer's outputs in a graph: ``output`` in the layer's layout ((T, B, nd*H),
    or (B, T, nd*H) with batch_first), ``h_n`` and ``c_n`` (LSTM only) (L*nd, B, H)."""

    output: str
    h_n: str
    c_n: str | None = None


def _check_layer(layer: Any) -> str:
    from lstmkit.layers import GRU, LSTM, RNN

    if not isinstance(layer, (LSTM, GRU, RNN)):
        raise TypeError(
            f"expected an lstmkit.LSTM, GRU or RNN layer, got {type(layer).__name__}"
        )
    options = getattr(layer, "cell_options", {})
    if options.get("proj_size"):
        raise ValueError(
            f"the ONNX LSTM operator has no projection; this LSTM has "
            f"proj_size={options['proj_size']}: expected proj_size=0"
        )
    if getattr(layer, "layer_norm", False):
        raise ValueError("the ONNX LSTM operator has no layer normalisation; this LSTM has "
                         "layer_norm=True: expected layer_norm=False")
    zoned = [f"{name}={options[name]}" for name in ("zoneout", "zoneout_c") if options.get(name)]
    if zoned:
        raise ValueError(
            f"the ONNX LSTM operator cannot express zoneout (evaluation mixes each step's state "
            f"with the previous one); this LSTM has {', '.join(zoned)}: expected 0"
        )
    return layer.mode


def _layer_cell(layer: Any, k: int) -> Any:
    return layer._cells[k]


def _direction_tensors(layer: Any, k: int, sfx: str) -> dict[str, Array]:
    """W, R, B (and P for a peephole LSTM) of layer k, one direction, in ONNX's layout.

    W (G*H, D_k), R (G*H, H), B (2*G*H,) = [Wb, Rb], P (3H,); G = 4 (LSTM), 3 (GRU), 1 (RNN).
    """
    mode, H = layer.mode, layer.hidden_size
    cell = _layer_cell(layer, k)
    p = {short: layer.params[f"{short}_l{k}{sfx}"] for short in cell.param_shapes()}
    D = p["weight_ih"].shape[1]
    dtype = layer.dtype
    if mode == "RNN":
        order: tuple[str, ...] = ("h",)
        ours: tuple[str, ...] = ("h",)
    elif mode == "GRU":
        order, ours = ONNX_GRU_GATES, cell.gates
    else:
        order, ours = ONNX_LSTM_GATES, cell.gates

    w = _blocks(p["weight_ih"], ours, H)
    r = _blocks(p["weight_hh"], ours, H)
    zero_b = np.zeros(len(ours) * H, dtype=dtype)
    wb = _blocks(p.get("bias_ih", zero_b), ours, H)
    rb = _blocks(p.get("bias_hh", zero_b), ours, H)
    W, R, Wb, Rb = [], [], [], []
    for gate in order:
        if gate in w:
            W.append(w[gate])
            R.append(r[gate])
            Wb.append(wb[gate])
            Rb.append(rb[gate])
            continue
        # A gate the variant removed: zero weights. Fixed at 1 unless it is the coupled forget
        # gate, which ONNX computes itself from input_forget=1 (its weights are ignored).
        open_gate = not (gate == "f" and cell.coupled_input_forget)
        W.append(np.zeros((H, D), dtype=dtype))
        R.append(np.zeros((H, H), dtype=dtype))
        Wb.append(np.full(H, GATE_OPEN_BIAS if open_gate else 0.0, dtype=dtype))
        Rb.append(np.zeros(H, dtype=dtype))
    tensors = {
        "W": np.concatenate(W),
        "R": np.concatenate(R),
        "B": np.concatenate(Wb + Rb),
    }
    if mode == "LSTM" and cell.peepholes:
        tensors["P"] = np.concatenate([
            p.get(f"weight_c{gate}", np.zeros(H, dtype=dtype)) for gate in ONNX_PEEPHOLE_GATES
        ])
    return tensors


def _needs_bias_input(layer: Any) -> bool:
    """Whether ONNX needs ``B``: the layer has biases, or a removed gate needs its open bias."""
    if layer.bias:
        return True
    if layer.mode != "LSTM":
        return False
    cell = _layer_cell(layer, 0)
    return not (cell.input_gate and cell.forget_gate and cell.output_gate)


def _lstm_attributes(layer: Any) -> dict[str, Any]:
    if layer.mode != "LSTM":
        return {}
    return {"input_forget": 1} if _layer_cell(layer, 0).coupled_input_forget else {}


_ONNX_DEFAULT_ACTIVATIONS = {"LSTM": ("Sigmoid", "Tanh", "Tanh"), "GRU": ("Sigmoid", "Tanh"),
                             "RNN": ("Tanh",)}


def _cell_functions(cell: Any, mode: str) -> list[Any]:
    """The cell's activations in ONNX's order: [f, g, h] (LSTM), [f, g] (GRU), [f] (RNN)."""
    if mode == "LSTM":
        return [cell.recurrent_activation, cell.activation, cell.output_activation]
    if mode == "GRU":
        return [cell.recurrent_activation, cell.activation]
    return [cell.function]


def _check_expressible(layer: Any) -> None:
    """A clear error for what the ONNX operators cannot compute."""
    if layer.merge_mode != "concat" or layer.go_backwards:
        raise ValueError(
            f"merge_mode={layer.merge_mode!r}, go_backwards={layer.go_backwards} (Keras' "
            "options) are not exported to ONNX; export a layer with merge_mode='concat' and "
            "go_backwards=False (reverse=True is ONNX's direction='reverse')"
        )
    if layer.mode != "LSTM":
        return
    cell = _layer_cell(layer, 0)
    if cell.full_gate_recurrence:
        raise ValueError(
            "the ONNX LSTM operator has no gate-to-gate recurrence: an LSTM with "
            "full_gate_recurrence=True cannot be exported to ONNX"
        )
    if len(cell.gates) < 4 or cell.coupled_input_forget:
        # a removed gate is exported as a gate opened by a large bias; the gate function
        # (after the clip) must give exactly 1 there
        z = np.float32(GATE_OPEN_BIAS if cell.clip is None else min(GATE_OPEN_BIAS, cell.clip))
        removed = [g for g in ("i", "f", "o") if g not in cell.gates and
                   not (g == "f" and cell.coupled_input_forget)]
        if removed and cell.recurrent_activation(np.array([z]))[0] != 1.0:
            raise ValueError(
                f"a gate removed by a variant switch ({', '.join(removed)}) is exported as a "
                f"gate opened by the bias {GATE_OPEN_BIAS:g}, but recurrent_activation="
                f"{cell.recurrent_activation}"
                + ("" if cell.clip is None else f" after clip={cell.clip:g}")
                + f" gives {float(cell.recurrent_activation(np.array([z]))[0]):g} there, not "
                "1: this combination cannot be exported to ONNX"
            )


def _activation_attributes(layer: Any, nd: int) -> dict[str, Any]:
    """``activations``, ``activation_alpha``, ``activation_beta`` and ``clip`` of a node."""
    cell = _layer_cell(layer, 0)
    names, alphas, betas = [], [], []
    for fn in _cell_functions(cell, layer.mode) * nd:
        if fn.name == "Identity":  # ONNX's list has no identity: Affine(1, 0)
            names.append("Affine")
            alphas.append(1.0)
            betas.append(0.0)
            continue
        names.append(fn.name)
        if fn.alpha is not None:
            alphas.append(fn.alpha)
        if fn.beta is not None:
            betas.append(fn.beta)
    attributes: dict[str, Any] = {}
    if names != list(_ONNX_DEFAULT_ACTIVATIONS[layer.mode]) * nd:
        attributes["activations"] = names
    if alphas:
        attributes["activation_alpha"] = alphas
    if betas:
        attributes["activation_beta"] = betas
    if cell.clip is not None:
        attributes["clip"] = float(cell.clip)
    return attributes


def add_layer_nodes(
    builder: GraphBuilder,
    layer: Any,
    input_name: str,
    *,
    initial_state: tuple[str, ...] | None = None,
    sequence_lens: str | None = None,
    prefix: str | None = None,
) -> LayerOutputs:
    """Append the ONNX nodes computing ``layer(x, state, lengths)`` to ``builder``.

    Args:
        builder: the graph being built; the layer's weights are added to it as initializers,
            cast to ``builder.dtype``.
        layer: an ``lstmkit.LSTM``, ``GRU`` or ``RNN`` (exported as in eval mode: no dropout).
        input_name: the value holding x, in the layer's layout: (T, B, input_size), or
            (B, T, input_size) if ``layer.batch_first``.
        initial_state: names of (h_0,) for GRU/RNN or (h_0, c_0) for LSTM, each
            (num_layers * num_directions, B, hidden_size); zeros if None.
        sequence_lens: name of an int32 (B,) value with each sequence's length in [1, T];
            None if every sequence has length T.
        prefix: the stem of the new names (default: the layer's mode in lower case).

    Returns: the names of ``output`` (the layer's layout), ``h_n`` and ``c_n`` (LSTM only).
    """
    mode = _check_layer(layer)
    _check_expressible(layer)
    stem = prefix or mode.lower()
    n_state = 2 if mode == "LSTM" else 1
    if initial_state is not None and len(initial_state) != n_state:
        raise ValueError(
            f"initial_state for an {mode} must be {n_state} name(s) "
            f"({'(h_0, c_0)' if n_state == 2 else '(h_0,)'}), got {initial_state!r}"
        )
    L, nd, H = layer.num_layers, layer.num_directions, layer.hidden_size
    direction = "bidirectional" if nd == 2 else ("reverse" if layer.reverse else "forward")
    sfxs = ["", "_reverse"][:nd]

    x = input_name
    if layer.batch_first:  # (B, T, D) -> (T, B, D)
        (x,) = builder.node("Transpose", [x], base=f"{stem}_time_major", perm=[1, 0, 2])

    finals: list[list[str]] = [[] for _ in range(n_state)]
    reshape_to = builder.constant(f"{stem}_merge_directions", np.array([0, 0, nd * H]),
                                  dtype=np.int64)
    for k in range(L):
        per_dir = [_direction_tensors(layer, k, sfx) for sfx in sfxs]
        # (nd, ...) stacks of each ONNX input
        W = builder.constant(f"{stem}_W_l{k}", np.stack([t["W"] for t in per_dir]))
        R = builder.constant(f"{stem}_R_l{k}", np.stack([t["R"] for t in per_dir]))
        B = (builder.constant(f"{stem}_B_l{k}", np.stack([t["B"] for t in per_dir]))
             if _needs_bias_input(layer) else "")
        P = (builder.constant(f"{stem}_P_l{k}", np.stack([t["P"] for t in per_dir]))
             if "P" in per_dir[0] else "")
        states0 = ["", ""]
        if initial_state is not None:
            for n, name in enumerate(initial_state):
                states0[n] = _slice_layer(builder, name, k, nd, L, f"{stem}_{'hc'[n]}0_l{k}")
        inputs = [x, W, R, B, sequence_lens or "", states0[0]]
        attributes: dict[str, Any] = {"hidden_size": H, "direction": direction,
                                      **_activation_attributes(layer, nd)}
        if mode == "LSTM":
            inputs += [states0[1], P]
            attributes.update(_lstm_attributes(layer))
        elif mode == "GRU":
            attributes["linear_before_reset"] = int(_layer_cell(layer, 0).linear_before_reset)
        while inputs[-1] == "":  # trailing optional inputs are left out, not named ""
            inputs.pop()
        outs = builder.node(mode, inputs, n_outputs=1 + n_state,
                            base=f"{stem}_l{k}", **attributes)
        Y = outs[0]  # (T, nd, B, H)
        for n in range(n_state):
            finals[n].append(outs[1 + n])  # (nd, B, H)
        (Y,) = builder.node("Transpose", [Y], base=f"{stem}_l{k}_tbdh", perm=[0, 2, 1, 3])
        (x,) = builder.node("Reshape", [Y, reshape_to], base=f"{stem}_l{k}_output")  # (T, B, nd*H)

    if layer.batch_first:  # (T, B, F) -> (B, T, F)
        (x,) = builder.node("Transpose", [x], base=f"{stem}_batch_major", perm=[1, 0, 2])
    states = []
    for n in range(n_state):
        if L == 1:
            states.append(finals[n][0])
        else:
            (s,) = builder.node("Concat", finals[n], base=f"{stem}_{'hc'[n]}_n", axis=0)
            states.append(s)
    return LayerOutputs(output=x, h_n=states[0], c_n=states[1] if n_state == 2 else None)


def _slice_layer(builder: GraphBuilder, name: str, k: int, nd: int, L: int, base: str) -> str:
    """Rows [k*nd, (k+1)*nd) of a (L*nd, B, H) state: layer k's (nd, B, H) initial state."""
    if L == 1:
        return name
    starts = builder.constant(f"{base}_start", np.array([k * nd]), dtype=np.int64)
    ends = builder.constant(f"{base}_end", np.array([(k + 1) * nd]), dtype=np.int64)
    axes = builder.constant(f"{base}_axis", np.array([0]), dtype=np.int64)
    (s,) = builder.node("Slice", [name, starts, ends, axes], base=base)
    return s


def to_onnx_model(
    layer: Any,
    *,
    opset: int = DEFAULT_OPSET,
    initial_state: bool = False,
    lengths: bool = False,
    dtype: Any = None,
) -> Any:
    """The ONNX model of ``layer`` (an ``onnx.ModelProto``), as ``export_onnx`` writes it.

    Graph inputs: ``input`` ((T, B, input_size), or (B, T, input_size) with batch_first; T and
    B dynamic), then ``h_0`` (and ``c_0`` for an LSTM) (L*nd, B, H) if ``initial_state``, then
    ``lengths`` (int32, (B,), each in [1, T]) if ``lengths``. Graph outputs: ``output``,
    ``h_n`` (and ``c_n``). ``dtype`` is the float type of the file (default: the layer's;
    ONNX Runtime's CPU recurrent kernels run float32 only).
    """
    mode = _check_layer(layer)
    opset = _check_opset(opset)
    if dtype is None:
        dtype = layer.dtype
    try:
        dtype = np.dtype(dtype)
    except TypeError as error:
        raise TypeError(f"dtype must be 'float32', 'float64' or None, got {dtype!r}") from error
    if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise TypeError(f"dtype must be 'float32', 'float64' or None, got {dtype}")
    builder = GraphBuilder(dtype, name=f"lstmkit_{mode.lower()}")
    L, nd, H, D = layer.num_layers, layer.num_directions, layer.hidden_size, layer.input_size
    x_shape: list[int | str] = ["B", "T", D] if layer.batch_first else ["T", "B", D]
    x = builder.add_input("input", dtype, x_shape)
    state_names = ("h_0", "c_0") if mode == "LSTM" else ("h_0",)
    state = (tuple(builder.add_input(n, dtype, [L * nd, "B", H]) for n in state_names)
             if initial_state else None)
    seq_lens = builder.add_input("lengths", np.int32, ["B"]) if lengths else None
    outs = add_layer_nodes(builder, layer, x, initial_state=state, sequence_lens=seq_lens)
    y_shape: list[int | str] = (["B", "T", nd * H] if layer.batch_first
                                else ["T", "B", nd * H])
    builder.add_output(outs.output, y_shape, name="output")
    builder.add_output(outs.h_n, [L * nd, "B", H], name="h_n")
    if outs.c_n is not None:
        builder.add_output(outs.c_n, [L * nd, "B", H], name="c_n")
    return builder.model(opset=opset, doc_string=f"lstmkit {layer!r}")


def export_onnx(
    layer: Any,
    path: str | os.PathLike[str],
    *,
    opset: int = DEFAULT_OPSET,
    force: bool = False,
    initial_state: bool = False,
    lengths: bool = False,
    dtype: Any = None,
) -> Path:
    """Write ``layer`` (``lstmkit.LSTM``, ``GRU`` or ``RNN``) to ``path`` as an ONNX model.

    The graph's inputs and outputs are described in ``to_onnx_model``. An existing file is
    not replaced unless ``force=True``; the file is written to a temporary name next to it and
    renamed into place, so a crash never leaves a half-written model. Returns the path.
    """
    target = check_target(path, force)
    model = to_onnx_model(layer, opset=opset, initial_state=initial_state, lengths=lengths,
                          dtype=dtype)
    write_atomic(target, model.SerializeToString(), overwrite=force)
    return target


def check_target(path: str | os.PathLike, force: bool) -> Path:
    """The path an exporter may write: a file in an existing directory, new unless ``force``."""
    target = Path(path)
    if target.is_dir():
        raise IsADirectoryError(f"{target} is a directory; expected a file path such as model.onnx")
    if target.exists() and not force:
        raise FileExistsError(
            f"{target} exists; pass force=True to replace it (nothing was written)"
        )
    if not target.parent.is_dir():
        raise FileNotFoundError(f"the directory {target.parent} does not exist; create it first")
    return target


def write_atomic(target: Path, data: bytes, overwrite: bool = True) -> None:
    """Write ``data`` to a temporary file in ``target``'s directory, then move it to ``target``.

    With ``overwrite`` the move is ``os.replace`` (atomic on POSIX and Windows). Without it the
    temporary file is hard-linked to ``target``, which fails if ``target`` exists, even if it
    appeared after the caller checked: nothing is ever silently replaced. A crash leaves at
    most a hidden ``.NAME.*.tmp`` file, never a half-written ``target``.
    """
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if overwrite:
            os.replace(tmp, target)
            return
        try:
            os.link(tmp, target)
        except FileExistsError:
            raise FileExistsError(
                f"{target} exists; refusing to replace it (nothing was written)"
            ) from None
        except OSError:  # a file system without hard links
            if target.exists():
                raise FileExistsError(
                    f"{target} exists; refusing to replace it (nothing was written)"
                ) from None
            os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


__all__ = [
    "DEFAULT_OPSET",
    "GATE_OPEN_BIAS",
    "ONNX_GRU_GATES",
    "ONNX_LSTM_GATES",
    "GraphBuilder",
    "LayerOutputs",
    "add_layer_nodes",
    "export_onnx",
    "to_onnx_model",
    "write_atomic",
]
