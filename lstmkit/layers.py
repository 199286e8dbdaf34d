"""Sequence layers ``LSTM``, ``GRU`` and ``RNN`` with PyTorch's names, shapes and weights.

A layer runs its cell (``lstmkit.cells``) over a whole sequence, for every stacked layer and
direction, and backpropagates through time. Shapes (``L`` layers, ``nd`` = 2 if bidirectional
else 1, ``H`` hidden size)::

    x            (T, B, input_size)      or (B, T, input_size) with batch_first, or (T, input_size)
    output       (T, B, nd * R)          or (B, T, nd * R) with batch_first
    h_0, h_n     (L * nd, B, R)          the state, per layer and direction (layer-major)
    c_0, c_n     (L * nd, B, H)          LSTM only

where R = H, or the LSTM's ``proj_size`` P when it has one (``output_size``).

Parameters are ``weight_ih_l{k}``, ``weight_hh_l{k}``, ``bias_ih_l{k}``, ``bias_hh_l{k}`` (and
``weight_c{i,f,o}_l{k}`` for LSTM peepholes, ``weight_hr_l{k}`` for its projection), with
``_reverse`` for the backward direction: a PyTorch module's ``load_state_dict`` takes ours and
gives the same outputs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from lstmkit.activations import RELU, TANH, Activation, resolve_functions
from lstmkit.cells import GRUCell, LayerNormLSTMCell, LSTMCell, RNNCell
from lstmkit.cells.lstm import check_clip
from lstmkit.engine import ENGINE, Plan, ReferenceRecurrence, plan_of
from lstmkit.grad_mode import is_grad_enabled
from lstmkit.nn.module import Module, resolve_rng
from lstmkit.regularisation import cell_masks, check_rate, dropout_mask

Array = np.ndarray
_REFERENCE = ReferenceRecurrence()
MERGE_MODES = ("concat", "sum", "mul", "ave", None)  # Keras' Bidirectional merge_mode
_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _as_dtype(dtype: Any) -> np.dtype:
    if dtype is None:  # np.dtype(None) would silently mean float64
        raise TypeError("dtype must be 'float32' or 'float64', got None")
    try:
        resolved = np.dtype(dtype)
    except TypeError as error:
        raise TypeError(f"dtype must be 'float32' or 'float64', got {dtype!r}") from error
    if resolved not in _DTYPES:
        raise TypeError(f"dtype must be 'float32' or 'float64', got {resolved}")
    return resolved


def _as_array(value: Any, what: str) -> Array:
    """``np.asarray(value)`` (CPU tensors included), with an error naming the argument."""
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu().numpy()
    try:
        return np.asarray(value)
    except (ValueError, TypeError) as error:
        raise ValueError(
            f"{what} must be an array of one rectangular shape, got a {type(value).__name__} "
            f"NumPy cannot convert ({error})"
        ) from None


def _real(name: str, value: Any) -> float:
    """A finite real number (not a bool or a string), or an error naming the argument."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    if not np.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return float(value)


def _activation_config(act: Activation) -> str | dict[str, Any]:
    """How a layer records an activation among its (JSON) options: the name, or a dict
    with its parameters (``lstmkit.activations.get`` reads both)."""
    return act.to_config() if act.parameters else act.name


def _resolve_activations(
    specs: dict[str, Any], alphas: Sequence[float] | None, betas: Sequence[float] | None
) -> dict[str, Activation]:
    """The layer's activations, by argument name, in ONNX's order (f, g, h); a spec that is
    None is left out (it takes no value from activation_alpha / activation_beta), which only
    ``output_activation`` may be."""
    for name, spec in specs.items():
        if spec is None and name != "output_activation":
            raise TypeError(f"{name}=None: give a function's name, e.g. 'linear' (what Keras "
                            "means by None) or 'tanh'")
    for what, values in (("activation_alpha", alphas), ("activation_beta", betas)):
        if values is not None and (isinstance(values, (str, bytes)) or
                                   not isinstance(values, Sequence)):
            raise TypeError(f"{what} must be a list of numbers, got {values!r}")
    given = {name: spec for name, spec in specs.items() if spec is not None}
    acts = resolve_functions(list(given.values()), alphas, betas, list(given))
    return dict(zip(given, acts))


@dataclass
class TraceStream:
    """One layer and direction of a traced forward pass (``RecurrentLayer.trace``).

    ``cache`` is the reference loop's: ``{"steps": [t, ...] in the order they ran, "caches":
    {t: the cell's forward cache at step t (its gates, c, ...)}, "mask": (T, B) or None}``.
    """

    name: str  # "l0", "l0_reverse", "l1", ...
    cell: Any
    params: dict[str, Array]  # the layer's live parameters, under the cell's short names
    cache: dict[str, Any]

    def gates(self) -> dict[str, Array]:
        """Every gate's value (and the LSTM's c) at every step, each (T, B, H)."""
        return _REFERENCE.gate_sequences(self.cell, self.cache)


@dataclass
class LayerTrace:
    """A forward pass run step by step on the reference loop, every step's cache kept."""

    layer: RecurrentLayer
    streams: list[TraceStream]  # layer-major: l0, l0_reverse, l1, ...
    output: Array  # (T, B, nd * H), time-major
    mask: Array | None  # (T, B) bool, False past a sequence's length
    unbatched: bool

    @property
    def shape(self) -> tuple[int, int]:
        """(T, B)."""
        return self.output.shape[0], self.output.shape[1]

    def d_output(self, d_output: Any) -> Array:
        """A gradient shaped like the layer's output (user's layout) -> (T, B, nd * H)."""
        return self.layer._unmerge_gradient(d_output, self.output, self.unbatched)

    def d_state(self, d_state: Any) -> tuple[Array, ...]:
        """A gradient shaped like the returned state (zeros if None) -> per state part,
        (num_layers * nd, B, H)."""
        layer = self.layer
        B = self.shape[1]
        if d_state is None:
            return tuple(np.zeros((layer.num_layers * layer.num_directions, B, size),
                                  dtype=layer.dtype) for size in layer._state_sizes)
        return layer._initial_state(d_state, B, self.unbatched, label="d{}_n")


def _check_sizes(input_size: Any, hidden_size: Any, num_layers: Any) -> None:
    """Each a positive integer (not a bool), or a ValueError naming it."""
    for name, value in (("input_size", input_size), ("hidden_size", hidden_size),
                        ("num_layers", num_layers)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


class RecurrentLayer(Module):
    """What LSTM, GRU and RNN share: stacking, directions, lengths, state, dropout, weights.

    Subclasses say which cell they run (``_make_cell``) and how their state is packed.
    """

    mode = ""

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        dtype: Any = "float32",
        seed: int | np.random.Generator | None = None,
        recurrent_init: str = "uniform",
        stateful: bool = False, fast: bool = True,
        *,
        merge_mode: str | None = "concat",
        go_backwards: bool = False,
        reverse: bool = False,
        weight_drop: float = 0.0,
    ) -> None:
        if merge_mode not in MERGE_MODES:
            raise ValueError(f"merge_mode must be one of {MERGE_MODES}, got {merge_mode!r}")
        if merge_mode != "concat" and not bidirectional:
            raise ValueError(f"merge_mode={merge_mode!r} merges the two directions of a "
                             "bidirectional layer; this one has bidirectional=False")
        if (go_backwards or reverse) and bidirectional:
            raise ValueError(f"{'go_backwards' if go_backwards else 'reverse'} makes a "
                             "one-directional layer run from the end; a bidirectional layer "
                             "already runs both ways")
        if go_backwards and reverse:
            raise ValueError("go_backwards already runs the layer from the end (reverse=True) "
                             "and returns its outputs in that order; give one of them")
        _check_sizes(input_size, hidden_size, num_layers)
        if not 0.0 <= _real("dropout", dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        if recurrent_init not in ("uniform", "orthogonal"):
            raise ValueError(
                f"recurrent_init must be 'uniform' or 'orthogonal', got {recurrent_init!r}"
            )
        super().__init__()
        self.input_size = int(input_size)
        self.hidden_size = int(hidden_size)
        self.num_layers = int(num_layers)
        self.bias = bool(bias)
        self.batch_first = bool(batch_first)
        self.dropout = float(dropout)
        self.bidirectional = bool(bidirectional)
        self.num_directions = 2 if bidirectional else 1
        self.dtype = _as_dtype(dtype)
        self.stateful = bool(stateful)
        self.merge_mode = merge_mode
        self.go_backwards = bool(go_backwards)
        self.reverse = bool(reverse)
        self.weight_drop = check_rate("weight_drop", weight_drop)
        # the engine (one call per layer and direction); an experiment may put a recurrence
        # of its own here (``ReferenceRecurrence``'s interface), e.g. a truncated gradient
        self.recurrence: Any = ENGINE
        self._pin: Plan | str | dict[str, Any] | None = None if fast else "reference"
        self.last_plans: dict[str, Plan] = {}
        self._rng = resolve_rng(seed)
        self._cells = [
            self._make_cell(self.input_size if k == 0 else self.num_directions * self.output_size)
            for k in range(self.num_layers)
        ]
        self.params: dict[str, Array] = {}
        for k, cell in enumerate(self._cells):
            for sfx in self._suffixes():
                for short, shape in cell.param_shapes().items():
                    self.params[f"{short}_l{k}{sfx}"] = np.zeros(shape, dtype=self.dtype)
        self.grads: dict[str, Array] = {n: np.zeros_like(v) for n, v in self.params.items()}
        self.reset_parameters(recurrent_init)
        self._cache: dict[str, Any] | None = None
        self._carried: tuple[Array, ...] | None = None

    # -- construction -------------------------------------------------------------------------

    def _make_cell(self, input_size: int) -> Any:
        raise NotImplementedError

    def _suffixes(self) -> list[str]:
        return ["", "_reverse"][: self.num_directions]

    def reset_parameters(self, recurrent_init: str = "uniform") -> None:
        """PyTorch's default: every parameter ~ U(-1/sqrt(H), 1/sqrt(H)).

        ``recurrent_init="orthogonal"`` makes each gate's (H, H) block of ``weight_hh`` a random
        orthogonal matrix (Saxe et al. 2014), which keeps a linear recurrence's gradient norm.
        """
        bound = 1.0 / np.sqrt(self.hidden_size)
        H = self.hidden_size
        for name, value in self.params.items():
            value[...] = self._rng.uniform(-bound, bound, size=value.shape)
            if recurrent_init == "orthogonal" and name.startswith("weight_hh"):
                for block in range(value.shape[0] // H):  # (H, R) blocks, R <= H
                    q, r = np.linalg.qr(self._rng.standard_normal((H, value.shape[1])))
                    value[block * H : (block + 1) * H] = q * np.sign(np.diag(r))

    # -- looking inside ---------------------------------------------------------------------------

    def trace(self, x: Any, state: Any = None, lengths: Any = None) -> LayerTrace:
        """Run the forward pass on the readable reference loop, keeping every step's cache.

        Takes what ``forward`` takes (``x`` in the layer's layout; ``state`` None means zeros,
        or the carried state of a ``stateful`` layer, read only). Dropout between layers is
        off. The layer is left untouched: its cache (a pending ``backward``), ``grads`` and
        carried state stay as they were. ``lstmkit.diagnostics`` walks these caches back.
        The regularisation inside the recurrence (recurrent dropout, zoneout, weight drop)
        is off too: zoneout runs as in evaluation.
        """
        x3, unbatched = self._check_input(x)
        T, B, _ = x3.shape
        mask = self._lengths_mask(lengths, T, B)
        state0 = self._initial_state(state, B, unbatched)
        nd = self.num_directions
        streams = []
        layer_in = x3
        for k, cell in enumerate(self._cells):
            outs = []
            for d in range(nd):
                params = self._direction(self.params, k, d)
                out, _, cache = _REFERENCE.forward(cell, params, layer_in,
                                                   tuple(s[k * nd + d] for s in state0), mask,
                                                   self._runs_reversed(d), True)
                outs.append(out)
                streams.append(TraceStream(f"l{k}{'_reverse' if d else ''}", cell, params,
                                           cache))
            layer_in = outs[0] if nd == 1 else np.concatenate(outs, axis=2)
        return LayerTrace(self, streams, layer_in, mask, unbatched)

    # -- plans ----------------------------------------------------------------------------------

    def pin_plan(self, plan: Plan | str | dict[str, Any] | None) -> None:
        """Run every later call on this plan instead of the one the engine chooses.

        ``plan``: a ``lstmkit.engine.Plan``; "reference" (the readable loop, as ``fast=False``);
        a dict of plan fields that replace the chosen plan's (e.g. ``{"parts": 1}``); or None
        to let the engine choose again. A plan that cannot run a call's cell, dtype or shape
        makes that call raise ValueError saying why. ``last_plans`` says what ran.
        """
        if plan is not None and not isinstance(plan, (Plan, str, dict)):
            raise TypeError(f"plan must be a Plan, 'reference', a dict of plan fields or None, "
                            f"got {type(plan).__name__}")
        if isinstance(plan, str) and plan != "reference":
            raise ValueError(f"the only plan named by a string is 'reference', got {plan!r}")
        self._pin = plan

    # -- state and weights -----------------------------------------------------------------------

    def reset_state(self) -> None:
        """Forget the state a ``stateful`` layer carries between calls."""
        self._carried = None

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Copy weights in (NumPy arrays, or anything ``np.asarray`` takes, e.g. CPU tensors).

        Every name must match, and every shape; nothing is changed if any check fails.
        """
        if not isinstance(state_dict, Mapping):
            raise TypeError(
                f"state_dict must be a mapping name -> array, got {type(state_dict).__name__}"
            )
        missing = sorted(set(self.params) - set(state_dict))
        unexpected = sorted(set(state_dict) - set(self.params))
        if missing or unexpected:
            raise KeyError(
                f"state_dict does not match this {self.mode}: missing {missing}, "
                f"unexpected {unexpected}"
            )
        converted = {}
        for name, value in state_dict.items():
            array = _as_array(value, f"state_dict[{name!r}]")
            if array.shape != self.params[name].shape:
                raise ValueError(
                    f"state_dict[{name!r}] has shape {array.shape}, "
                    f"expected {self.params[name].shape}"
                )
            if not np.issubdtype(array.dtype, np.floating):
                raise TypeError(f"state_dict[{name!r}] has dtype {array.dtype}, expected floats")
            converted[name] = array
        for name, array in converted.items():
            self.params[name][...] = array

    # -- state packing: LSTM carries (h, c), GRU and RNN carry h ------------------------------

    def _pack_state(self, state: tuple[Array, ...]) -> Any:
        return state[0]

    def _unpack_state(self, state: Any, what: str) -> tuple[Array, ...]:
        return (state,)

    @property
    def _state_names(self) -> tuple[str, ...]:
        return self._cells[0].state_names

    @property
    def output_size(self) -> int:
        """The size of h and of each direction's output: ``hidden_size`` (an LSTM with
        ``proj_size`` P: P)."""
        return self.hidden_size

    @property
    def _state_sizes(self) -> tuple[int, ...]:
        """The last axis of each part of the state (h, or h and c)."""
        return (self.output_size,) + (self.hidden_size,) * (len(self._state_names) - 1)

    def _call_setup(self, k: int, d: int, T: int, B: int) -> tuple[Any, dict[str, Array],
                                                                   dict[str, Array]]:
        """The cell and parameters layer k, direction d runs with in this call, and the
        masks on weights to take the gradient through: (cell, p, {short name: mask}).

        While training with ``weight_drop`` (DropConnect on W_hh, as AWD-LSTM): p holds
        ``W_hh * M`` for a mask M drawn now, and ``backward`` multiplies W_hh's gradient by M.
        A subclass with more regularisation inside the recurrence adds its masks here."""
        cell, p = self._cells[k], self._direction(self.params, k, d)
        if not (self.training and self.weight_drop):
            return cell, p, {}
        mask = dropout_mask(self._rng, p["weight_hh"].shape, self.weight_drop, self.dtype)
        return cell, {**p, "weight_hh": p["weight_hh"] * mask}, {"weight_hh": mask}

    # -- forward ------------------------------------------------------------------------------

    def __call__(self, x: Any, state: Any = None, lengths: Any = None,
                 return_gates: bool = False, rows_of: Any = None) -> Any:
        return self.forward(x, state, lengths=lengths, return_gates=return_gates,
                            rows_of=rows_of)

    def forward(self, x: Any, state: Any = None, lengths: Any = None,
                return_gates: bool = False, rows_of: Any = None) -> Any:
        """Run the layer over a sequence.

        Args:
            x: (T, B, input_size), (B, T, input_size) if ``batch_first``, or unbatched
                (T, input_size).
            state: the initial state (see the subclass), zeros if None (or, for a ``stateful``
                layer, the state the previous call ended with).
            lengths: (B,) ints in [1, T]: the true length of each padded sequence.
            return_gates: also return ``{"l0": {"i": (T, B, H), ...}, "l0_reverse": ...}``,
                the value of every gate and of the cell state at every step.
            rows_of: ``(ids, E)`` with ids (T, B) ints and E (V, input_size): a promise that
                ``x = E[ids]`` (an embedding lookup, as in ``CharLM``). Where the engine's plan
                uses it (float32 LSTM, B >= 2, V < T * B: a "folded" projection), the first
                layer's input projection is taken from the (4H, V) table ``W_ih E^T`` instead
                of computed for every step, and ``backward`` then returns dL/dE
                (V, input_size) in place of dL/dx; see ``folds_rows``. Elsewhere it is ignored.

        Returns: ``(output, state_n)``, or ``(output, state_n, gates)``. The plan each layer
        and direction ran is in ``last_plans`` ({"l0": Plan, "l0_reverse": ...}).
        """
        x, unbatched = self._check_input(x)
        T, B, _ = x.shape
        fold = self._fold(rows_of, x, unbatched)
        mask = self._lengths_mask(lengths, T, B)
        state0 = self._initial_state(state, B, unbatched)
        keep = is_grad_enabled()
        L, nd = self.num_layers, self.num_directions
        finals: list[list[Array]] = [[] for _ in self._state_names]
        caches, drop_masks, setups = [], [], []
        plans: dict[str, Plan] = {}
        layer_in = x
        for k in range(L):
            outs = []
            for d in range(nd):
                j = k * nd + d
                run_cell, p, weight_masks = self._call_setup(k, d, T, B)
                setups.append((run_cell, p, weight_masks))
                out, final, cache = self.recurrence.forward(
                    run_cell, p, layer_in,
                    tuple(s[j] for s in state0), mask, self._runs_reversed(d),
                    keep or return_gates,
                    rows_of=fold if k == 0 else None, plan=self._pin)
                plans[f"l{k}{'_reverse' if d else ''}"] = plan_of(cache)
                outs.append(out)
                caches.append(cache)
                for n, s in enumerate(final):
                    finals[n].append(s)
            layer_out = outs[0] if nd == 1 else np.concatenate(outs, axis=2)
            drop = None
            if self.training and self.dropout > 0.0 and k < L - 1:
                keep_prob = 1.0 - self.dropout
                drop = (self._rng.random(layer_out.shape) < keep_prob).astype(self.dtype)
                drop /= keep_prob
                layer_out = layer_out * drop
            drop_masks.append(drop)
            layer_in = layer_out
        self.last_plans = plans
        folded = fold is not None and plans["l0"].projection == "folded"
        state_n = tuple(_stack(f) for f in finals)
        if self.stateful:
            self._carried = tuple(s.copy() for s in state_n)
        gates = self._gates(caches, [c for c, _, _ in setups], unbatched) if return_gates else None
        self._cache = (
            {"caches": caches, "drop": drop_masks, "mask": mask, "shape": (T, B),
             "unbatched": unbatched, "folded": folded, "setups": setups}
            if keep else None
        )
        if keep:
            self._cache["merged"] = layer_in  # mul's gradient reads both directions
        output = self._merge(layer_in, unbatched)
        packed = self._pack_state(
            tuple(s[:, 0] for s in state_n) if unbatched else state_n
        )
        return (output, packed, gates) if return_gates else (output, packed)

    @property
    def folds_rows(self) -> bool:
        """Whether the last forward call folded its ``rows_of`` (then ``backward`` returns
        dL/dE instead of dL/dx)."""
        return self._cache is not None and self._cache["folded"]

    def _fold(self, rows_of: Any, x: Array, unbatched: bool) -> tuple[Array, Array] | None:
        """The checked ``(ids, E)``, or None without ``rows_of`` (the plan decides whether the
        lookup is folded into the kernels)."""
        if rows_of is None:
            return None
        T, B, D = x.shape
        ids, E = (np.asarray(a) for a in rows_of)
        if unbatched and ids.shape == (T,):
            ids = ids[:, None]
        elif self.batch_first and not unbatched and ids.shape == (B, T):
            ids = ids.T
        if ids.shape != (T, B) or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"rows_of: ids must be integers shaped like the input's (T, B) = "
                             f"{(T, B)}, got {ids.dtype} {ids.shape}")
        if E.ndim != 2 or E.shape[1] != D:
            raise ValueError(f"rows_of: E must be (V, {D}), got shape {E.shape}")
        return ids, E

    def _direction(self, store: dict[str, Array], k: int, d: int) -> dict[str, Array]:
        """The parameters (or gradients) of layer k, direction d, under the cell's short names."""
        sfx = "_reverse" if d == 1 else ""
        return {short: store[f"{short}_l{k}{sfx}"] for short in self._cells[k].param_shapes()}

    def _gates(self, caches: list[Any], cells: list[Any],
               unbatched: bool) -> dict[str, dict[str, Array]]:
        result = {}
        for j, cache in enumerate(caches):
            k, d = divmod(j, self.num_directions)
            seqs = self.recurrence.gate_sequences(cells[j], cache)
            result[f"l{k}{'_reverse' if d else ''}"] = {
                name: self._to_user(seq, unbatched) for name, seq in seqs.items()
            }
        return result

    def _to_user(self, seq: Array, unbatched: bool) -> Array:
        """(T, B, F) -> the user's layout: (B, T, F) with batch_first, (T, F) unbatched."""
        if unbatched:
            return seq[:, 0]
        return np.ascontiguousarray(seq.transpose(1, 0, 2)) if self.batch_first else seq

    def _from_user(self, seq: Array, unbatched: bool) -> Array:
        if unbatched:
            return seq[:, None]
        return seq.transpose(1, 0, 2) if self.batch_first else seq

    # -- input checks -------------------------------------------------------------------------

    def _check_array(self, value: Any, what: str) -> Array:
        array = _as_array(value, what)
        if not np.issubdtype(array.dtype, np.floating):
            raise TypeError(
                f"{what} must be a floating-point array ({self.dtype}), got dtype {array.dtype}"
            )
        if array.dtype != self.dtype:
            raise TypeError(
                f"{what} has dtype {array.dtype} but this {self.mode} is {self.dtype}: "
                f"convert it with .astype(np.{self.dtype})"
            )
        if not np.isfinite(array).all():
            raise ValueError(f"{what} contains NaN or Inf; expected finite values")
        return array

    def _check_input(self, x: Any) -> tuple[Array, bool]:
        x = self._check_array(x, "input")
        layout = "(B, T, input_size)" if self.batch_first else "(T, B, input_size)"
        if x.ndim not in (2, 3):
            raise ValueError(
                f"input must be 3-D {layout} or unbatched 2-D (T, input_size), "
                f"got shape {x.shape}"
            )
        if x.shape[-1] != self.input_size:
            raise ValueError(
                f"input has {x.shape[-1]} features (last axis of shape {x.shape}), "
                f"expected input_size={self.input_size}"
            )
        unbatched = x.ndim == 2
        x = np.ascontiguousarray(self._from_user(x, unbatched))
        if x.shape[0] == 0:
            raise ValueError("input has sequence length T = 0; expected T >= 1")
        if x.shape[1] == 0:
            raise ValueError("input has batch size B = 0; expected B >= 1")
        return x, unbatched

    def _lengths_mask(self, lengths: Any, T: int, B: int) -> Array | None:
        if lengths is None:
            return None
        lengths = _as_array(lengths, "lengths")
        if lengths.shape != (B,) or not np.issubdtype(lengths.dtype, np.integer):
            raise ValueError(
                f"lengths must be {B} integers (one per sequence in the batch), "
                f"got {lengths.dtype} array of shape {lengths.shape}"
            )
        if lengths.min() < 1 or lengths.max() > T:
            raise ValueError(
                f"lengths must lie in [1, T={T}], got min {lengths.min()}, max {lengths.max()}"
            )
        if (lengths == T).all():
            return None
        return np.arange(T)[:, None] < lengths[None, :]

    def _initial_state(
        self, state: Any, B: int, unbatched: bool, label: str = "{}_0"
    ) -> tuple[Array, ...]:
        shapes = [(self.num_layers * self.num_directions, B, size) for size in self._state_sizes]
        shape = shapes[0]
        if state is None:
            if self.stateful and self._carried is not None:
                if self._carried[0].shape != shape:
                    raise ValueError(
                        f"this stateful {self.mode} carries a state of shape "
                        f"{self._carried[0].shape} but the input needs {shape}: "
                        "call reset_state() when the batch size changes"
                    )
                return self._carried
            return tuple(np.zeros(s, dtype=self.dtype) for s in shapes)
        parts = self._unpack_state(state, label.format("state"))
        checked = []
        for name, part, shape in zip(self._state_names, parts, shapes):
            what = label.format(name)
            part = self._check_array(part, what)
            if unbatched:
                if part.shape != (shape[0], shape[2]):
                    raise ValueError(
                        f"{what} has shape {part.shape}, expected {(shape[0], shape[2])} "
                        "for unbatched input"
                    )
                part = part[:, None]
            if part.shape != shape:
                size = "proj_size" if shape[2] != self.hidden_size else "hidden_size"
                raise ValueError(
                    f"{what} has shape {part.shape}, expected "
                    f"(num_layers * num_directions, B, {size}) = {shape}"
                )
            checked.append(part)
        return tuple(checked)

    # -- backward -----------------------------------------------------------------------------

    def backward(self, d_output: Any, d_state: Any = None) -> tuple[Array, Any]:
        """Backpropagation through time of the last forward call.

        Args:
            d_output: dL/d(output), the shape of ``output``.
            d_state: dL/d(state_n), shaped like the returned state; zeros if None.

        Returns: ``(dx, d_state_0)``, the gradients with respect to the input and the initial
        state (``dx`` is dL/dE (V, input_size) when the forward call folded ``rows_of``).
        Parameter gradients are accumulated into ``self.grads``. With ``stateful``, the
        gradient stops at the state carried in from the previous call (truncated BPTT).
        """
        if self._cache is None:
            raise RuntimeError(
                "backward() needs a forward() call first, with gradients enabled "
                "(not inside lstmkit.no_grad())"
            )
        cache = self._cache
        T, B = cache["shape"]
        unbatched = cache["unbatched"]
        nd, H = self.num_directions, self.output_size
        d_out = self._unmerge_gradient(d_output, cache["merged"], unbatched)
        if d_state is None:
            d_fin = tuple(
                np.zeros((self.num_layers * nd, B, size), dtype=self.dtype)
                for size in self._state_sizes
            )
        else:
            d_fin = self._initial_state(d_state, B, unbatched, label="d{}_n")
        d_state0: list[list[Array]] = [[None] * (self.num_layers * nd) for _ in d_fin]
        d_layer = d_out
        for k in range(self.num_layers - 1, -1, -1):
            if cache["drop"][k] is not None:
                d_layer = d_layer * cache["drop"][k]
            dx = None
            for d in range(nd):
                j = k * nd + d
                run_cell, p, weight_masks = cache["setups"][j]
                grads = self._direction(self.grads, k, d)
                dropped = {name: np.zeros_like(grads[name]) for name in weight_masks}
                dx_d, d0 = self.recurrence.backward(
                    run_cell, p, cache["caches"][j],
                    np.ascontiguousarray(d_layer[:, :, d * H : (d + 1) * H]),
                    tuple(s[j] for s in d_fin), {**grads, **dropped},
                )
                for name, weight_mask in weight_masks.items():  # W_used = W * mask
                    grads[name] += dropped[name] * weight_mask
                dx = dx_d if dx is None else dx + dx_d
                for n, s in enumerate(d0):
                    d_state0[n][j] = s
            d_layer = dx
        d_state_0 = tuple(_stack(parts) for parts in d_state0)
        if cache["folded"]:
            return d_layer, self._pack_state(d_state_0)
        if unbatched:
            d_state_0 = tuple(s[:, 0] for s in d_state_0)
        return self._to_user(d_layer, unbatched), self._pack_state(d_state_0)

    # -- merging the directions (Keras' merge_mode) ----------------------------------------------

    def _runs_reversed(self, d: int) -> bool:
        """Whether direction d runs from the last step to the first."""
        return d == 1 or self.reverse or self.go_backwards

    def _merge(self, out: Array, unbatched: bool) -> Any:
        """(T, B, nd * H) time-major -> the user's output: concatenated (PyTorch's), summed,
        multiplied, averaged, or None: the pair (forward, backward), each (.., H); with
        ``go_backwards``, in the order the steps ran (Keras')."""
        if self.go_backwards:
            out = out[::-1]
        if self.merge_mode == "concat":
            return self._to_user(out, unbatched)
        H = self.output_size
        fw, bw = out[:, :, :H], out[:, :, H:]
        if self.merge_mode is None:
            return self._to_user(fw, unbatched), self._to_user(bw, unbatched)
        merged = {"sum": lambda: fw + bw, "mul": lambda: fw * bw,
                  "ave": lambda: (fw + bw) * 0.5}[self.merge_mode]()
        return self._to_user(merged, unbatched)

    def _unmerge_gradient(self, d_output: Any, out: Array, unbatched: bool) -> Array:
        """dL/d(the user's output) -> dL/d(out), (T, B, nd * H) time-major."""
        if self.go_backwards:
            d = self._user_gradient(d_output, out.shape, unbatched, "d_output")
            return np.ascontiguousarray(d[::-1])
        T, B, width = out.shape
        H = self.output_size
        if self.merge_mode is None:
            if not isinstance(d_output, (tuple, list)) or len(d_output) != 2:
                raise ValueError("with merge_mode=None the output is a pair (forward, backward)"
                                 f" and d_output must be one too, got {type(d_output).__name__}")
            parts = [self._user_gradient(d, (T, B, H), unbatched, f"d_output[{n}]")
                     for n, d in enumerate(d_output)]
            return np.concatenate(parts, axis=2)
        if self.merge_mode == "concat":
            return self._user_gradient(d_output, (T, B, width), unbatched, "d_output")
        d = self._user_gradient(d_output, (T, B, H), unbatched, "d_output")
        if self.merge_mode == "sum":
            return np.concatenate([d, d], axis=2)
        if self.merge_mode == "ave":
            return np.concatenate([d, d], axis=2) * 0.5
        return np.concatenate([d * out[:, :, H:], d * out[:, :, :H]], axis=2)  # mul

    def _user_gradient(self, d: Any, shape: tuple[int, int, int], unbatched: bool,
                       what: str) -> Array:
        """A gradient in the user's layout, checked against ``shape`` (time-major)."""
        expected = self._to_user(np.empty(shape, dtype=np.uint8), unbatched).shape
        array = self._check_array(d, what)
        if array.shape != expected:
            raise ValueError(f"{what} has shape {array.shape}, expected {expected}")
        return self._from_user(array, unbatched)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.input_size}, {self.hidden_size}, "
            f"num_layers={self.num_layers}, bidirectional={self.bidirectional}, "
            f"dtype={self.dtype})"
        )


class LSTM(RecurrentLayer):
    """Long Short-Term Memory over a sequence (cell equations: ``lstmkit.cells.lstm``).

    ``output, (h_n, c_n) = lstm(x, (h_0, c_0), lengths=None)``;
    ``dx, (dh_0, dc_0) = lstm.backward(d_output, (dh_n, dc_n))``. With
    ``full_gate_recurrence`` the state is a triple (h, c, a), a (num_layers * num_directions,
    B, 3H) the last step's gate values [i, f, o] that the next step's gates see (zeros when a
    state is given as (h, c) or not at all), so that a state carried from call to call (as
    ``lstmkit train`` does) carries them too.

    Args beyond PyTorch's: ``peepholes``, ``forget_gate``, ``input_gate``, ``output_gate``,
    ``coupled_input_forget`` (the variant switches of ``LSTMCell``); ``forget_bias`` is added to
    the forget gate's bias at initialisation (Gers et al. 2000 and Jozefowicz et al. 2015 use
    1.0; with ``coupled_input_forget`` it is subtracted from the input gate's, since f = 1 - i);
    ``recurrent_init``; ``stateful`` (carry the state between calls: truncated BPTT); ``dtype``;
    ``seed``; ``fast`` (False: the readable reference recurrence instead of the fused kernels).

    Keyword-only options (docs/options.md): ``activation`` (g and, unless
    ``output_activation`` is given, the function of c in h = o * act(c); Keras' name),
    ``recurrent_activation`` (the gates' function), ``output_activation`` (ONNX's h), each a
    name of ``lstmkit.activations`` or an ``lstmkit.Activation``; ``activation_alpha`` /
    ``activation_beta`` (ONNX's lists, consumed in the order recurrent_activation,
    activation, output_activation by the functions that take a parameter); ``clip`` (ONNX's
    cell clip); ``full_gate_recurrence`` (Greff et al.'s FGR, parameter ``weight_gg_l{k}``
    (3H, 3H)), and those of docs/options.md below. ``cell_options`` holds all of them,
    JSON-ready.

    ``proj_size`` (> 0: LSTMP, as ``torch.nn.LSTM``): h = W_hr (o * tanh(c)) with
    ``weight_hr_l{k}`` (P, H); h_0, h_n and each direction's output are P wide, c stays H wide.

    Regularisation inside the recurrence, in training mode only (``train()``; off after
    ``eval()``), its masks drawn from the layer's generator (``seed``) at each call:
    ``recurrent_dropout`` (Gal & Ghahramani 2016, Keras' name: one mask per gate and sequence
    on h_prev), ``zoneout`` and ``zoneout_c`` (Krueger et al. 2017: h, or c, keeps its previous
    value with this probability at each step; Haste's ``zoneout`` is on h; in evaluation each
    takes its expectation) and ``weight_drop`` (DropConnect on ``weight_hh``, AWD-LSTM's: one
    mask per call). See ``docs/options.md`` and ``lstmkit.cells.lstm``.

    ``layer_norm=True``: the layer-normalised LSTM (Ba et al. 2016) as Haste's LayerNormLSTM
    (``lstmkit.cells.layernorm_lstm``: the input and recurrent pre-activations normalised
    separately, and c where it enters the output), with the parameters ``weight_ln_ih_l{k}``,
    ``weight_ln_hh_l{k}`` (4H,), ``weight_ln_c_l{k}``, ``bias_ln_c_l{k}`` (H,).
    """

    mode = "LSTM"

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        peepholes: bool = False,
        forget_gate: bool = True,
        input_gate: bool = True,
        output_gate: bool = True,
        coupled_input_forget: bool = False,
        forget_bias: float = 0.0,
        dtype: Any = "float32",
        seed: int | np.random.Generator | None = None,
        recurrent_init: str = "uniform",
        stateful: bool = False, fast: bool = True,
        *,
        activation: Any = "tanh",
        recurrent_activation: Any = "sigmoid",
        output_activation: Any = None,
        activation_alpha: Sequence[float] | None = None,
        activation_beta: Sequence[float] | None = None,
        clip: float | None = None,
        full_gate_recurrence: bool = False,
        merge_mode: str | None = "concat",
        go_backwards: bool = False,
        reverse: bool = False,
        proj_size: int = 0,
        recurrent_dropout: float = 0.0,
        zoneout: float = 0.0,
        zoneout_c: float = 0.0,
        weight_drop: float = 0.0,
        layer_norm: bool = False,
    ) -> None:
        _check_sizes(input_size, hidden_size, num_layers)  # before the cell that uses them
        if isinstance(proj_size, bool) or not isinstance(proj_size, (int, np.integer)) \
                or proj_size < 0:
            raise ValueError(f"proj_size must be a non-negative integer, got {proj_size!r}")
        if proj_size >= hidden_size:
            raise ValueError(f"proj_size must be smaller than hidden_size (as torch.nn.LSTM "
                             f"requires), got proj_size={proj_size}, hidden_size={hidden_size}")
        acts = _resolve_activations(
            {"recurrent_activation": recurrent_activation, "activation": activation,
             "output_activation": output_activation}, activation_alpha, activation_beta)
        acts.setdefault("output_activation", acts["activation"])
        check_clip(clip)
        self._cell_fields: dict[str, Any] = {
            "peepholes": bool(peepholes), "forget_gate": bool(forget_gate),
            "input_gate": bool(input_gate), "output_gate": bool(output_gate),
            "coupled_input_forget": bool(coupled_input_forget), **acts,
            "clip": None if clip is None else float(clip),
            "full_gate_recurrence": bool(full_gate_recurrence),
            "proj_size": int(proj_size),
            "recurrent_dropout": check_rate("recurrent_dropout", recurrent_dropout),
            "zoneout": check_rate("zoneout", zoneout),
            "zoneout_c": check_rate("zoneout_c", zoneout_c),
        }
        self.proj_size = int(proj_size)
        self.layer_norm = bool(layer_norm)
        # checks the combination before any work
        (LayerNormLSTMCell if self.layer_norm else LSTMCell)(1, hidden_size, **self._cell_fields)
        # the constructor's options, JSON-ready (``LSTM(..., **layer.cell_options)`` rebuilds)
        self.cell_options = {
            **self._cell_fields,
            **{name: _activation_config(act) for name, act in acts.items()},
            "weight_drop": check_rate("weight_drop", weight_drop), "layer_norm": self.layer_norm,
        }
        if acts["output_activation"] == acts["activation"]:
            self.cell_options["output_activation"] = None
        self.forget_bias = _real("forget_bias", forget_bias)
        if self.forget_bias != 0.0 and not bias:
            raise ValueError("forget_bias needs bias=True")
        if self.forget_bias != 0.0 and not forget_gate:
            raise ValueError("forget_bias needs a forget gate; got forget_gate=False")
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, dtype, seed, recurrent_init, stateful, fast,
                         merge_mode=merge_mode, go_backwards=go_backwards, reverse=reverse,
                         weight_drop=weight_drop)

    def _make_cell(self, input_size: int) -> LSTMCell:
        cell = LayerNormLSTMCell if self.layer_norm else LSTMCell
        return cell(input_size, self.hidden_size, self.bias, **self._cell_fields)

    @property
    def output_size(self) -> int:
        return self.proj_size or self.hidden_size

    def _call_setup(self, k: int, d: int, T: int, B: int) -> tuple[Any, dict[str, Array],
                                                                   dict[str, Array]]:
        cell, p, weight_masks = super()._call_setup(k, d, T, B)
        if not self.training:  # recurrent dropout is the identity: any plan may run the cell
            return (replace(cell, recurrent_dropout=0.0) if cell.recurrent_dropout else cell), p, {}
        return cell, {**p, **cell_masks(cell, self._rng, T, B, self.dtype)}, weight_masks

    def reset_parameters(self, recurrent_init: str = "uniform") -> None:
        super().reset_parameters(recurrent_init)
        for name, value in self.params.items():  # layer normalisation starts as the identity
            if name.startswith("weight_ln_"):
                value[...] = 1.0
            elif name.startswith("bias_ln_"):
                value[...] = 0.0
        if self.forget_bias == 0.0:
            return
        cell, H = self._cells[0], self.hidden_size
        gate, sign = ("i", -1.0) if cell.coupled_input_forget else ("f", 1.0)
        block = cell.gates.index(gate)
        for name, value in self.params.items():
            if name.startswith("bias_ih"):
                value[block * H : (block + 1) * H] += sign * self.forget_bias

    def _pack_state(self, state: tuple[Array, ...]) -> tuple[Array, ...]:
        if len(state) == 2:
            return state[0], state[1]
        # FGR: (h, c, a), a = the last gate values [i, f, o] (L * D, B, 3H)
        return state[0], state[1], np.concatenate(state[2:], axis=-1)

    def _initial_state(
        self, state: Any, B: int, unbatched: bool, label: str = "{}_0"
    ) -> tuple[Array, ...]:
        parts = super()._initial_state(state, B, unbatched, label)
        extra = len(self._state_names) - len(parts)  # FGR: the gates before the first step
        return parts + tuple(np.zeros_like(parts[1]) for _ in range(extra))

    def _unpack_state(self, state: Any, what: str) -> tuple[Array, ...]:
        fgr = len(self._state_names) > 2
        if not isinstance(state, (tuple, list)) or len(state) not in ((2, 3) if fgr else (2,)):
            expected = "a pair (h, c) or a triple (h, c, a)" if fgr else "a pair (h, c)"
            raise ValueError(f"the LSTM's {what} must be {expected}, got "
                             f"{type(state).__name__}"
                             + (f" of {len(state)}" if isinstance(state, (tuple, list)) else ""))
        if len(state) == 2:
            return tuple(state)
        a = self._check_array(state[2], f"{what}'s gates a")
        H = self.hidden_size
        if a.shape[-1] != 3 * H:
            raise ValueError(f"the gates a of the LSTM's {what} have shape {a.shape}, expected "
                             f"(num_layers * num_directions, B, 3 * hidden_size = {3 * H}): "
                             "the previous step's i, f, o")
        return state[0], state[1], a[..., :H], a[..., H:2 * H], a[..., 2 * H:]


class GRU(RecurrentLayer):
    """Gated Recurrent Unit over a sequence, exactly as ``torch.nn.GRU`` (``lstmkit.cells.gru``).

    ``output, h_n = gru(x, h_0, lengths=None)``; ``dx, dh_0 = gru.backward(d_output, dh_n)``.


    Keyword-only options (docs/options.md): ``linear_before_reset`` (True: PyTorch's, the
    reset gate multiplies W_hn h_prev + b_hn; False: Cho et al.'s, ONNX's default, Keras'
    ``reset_after=False``: it multiplies h_prev), ``activation`` (the candidate's function),
    ``recurrent_activation`` (the gates'), ``activation_alpha`` / ``activation_beta`` (ONNX's
    lists, in the order recurrent_activation, activation), ``clip`` (ONNX's); ``weight_drop``
    (DropConnect on ``weight_hh`` while training, as the LSTM's; Haste's GRU ``dropout``).
    """

    mode = "GRU"

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        dtype: Any = "float32",
        seed: int | np.random.Generator | None = None,
        recurrent_init: str = "uniform",
        stateful: bool = False, fast: bool = True,
        *,
        linear_before_reset: bool = True,
        activation: Any = "tanh",
        recurrent_activation: Any = "sigmoid",
        activation_alpha: Sequence[float] | None = None,
        activation_beta: Sequence[float] | None = None,
        clip: float | None = None,
        merge_mode: str | None = "concat",
        go_backwards: bool = False,
        reverse: bool = False,
        weight_drop: float = 0.0,
    ) -> None:
        acts = _resolve_activations(
            {"recurrent_activation": recurrent_activation, "activation": activation},
            activation_alpha, activation_beta)
        check_clip(clip)
        self._cell_fields: dict[str, Any] = {
            "linear_before_reset": bool(linear_before_reset), **acts,
            "clip": None if clip is None else float(clip),
        }
        self.cell_options = {
            **self._cell_fields,
            **{name: _activation_config(act) for name, act in acts.items()},
        }
        if check_rate("weight_drop", weight_drop):  # recorded when set: JSON configs as before
            self.cell_options["weight_drop"] = float(weight_drop)
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, dtype, seed, recurrent_init, stateful, fast,
                         merge_mode=merge_mode, go_backwards=go_backwards, reverse=reverse,
                         weight_drop=weight_drop)

    def _make_cell(self, input_size: int) -> GRUCell:
        return GRUCell(input_size, self.hidden_size, self.bias, **self._cell_fields)


class RNN(RecurrentLayer):
    """The simple (Elman) RNN over a sequence, as ``torch.nn.RNN`` (``lstmkit.cells.rnn``).

    ``nonlinearity`` is "tanh" or "relu" (PyTorch's name). Calls as ``GRU``.

    Keyword-only options (docs/options.md): ``activation`` (Keras' and ONNX's name: any
    function of ``lstmkit.activations``; it replaces the default nonlinearity, and must agree
    with a nonlinearity given as "relu"), ``activation_alpha`` / ``activation_beta`` (ONNX's
    lists), ``clip`` (ONNX's), ``weight_drop`` (DropConnect on ``weight_hh`` while training, as
    the LSTM's). ``nonlinearity`` stays "tanh" or "relu" (what PyTorch can build);
    ``cell_options["activation"]`` records any other function.
    """

    mode = "RNN"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 nonlinearity: str = "tanh", bias: bool = True, batch_first: bool = False,
                 dropout: float = 0.0, bidirectional: bool = False, dtype: Any = "float32",
                 seed: int | np.random.Generator | None = None, recurrent_init: str = "uniform",
                 stateful: bool = False, fast: bool = True, *, activation: Any = None,
                 activation_alpha: Sequence[float] | None = None,
                 activation_beta: Sequence[float] | None = None,
                 clip: float | None = None, merge_mode: str | None = "concat",
                 go_backwards: bool = False, reverse: bool = False,
                 weight_drop: float = 0.0) -> None:
        RNNCell(1, 1, nonlinearity=nonlinearity)  # validates the name before any work
        spec = nonlinearity if activation is None else activation
        act = _resolve_activations({"activation": spec}, activation_alpha,
                                   activation_beta)["activation"]
        named = RELU if nonlinearity == "relu" else TANH
        if nonlinearity != "tanh" and act != named:
            raise ValueError(f"nonlinearity={nonlinearity!r} and activation={act} contradict "
                             "each other; give one of them")
        check_clip(clip)
        self.nonlinearity = "relu" if act == RELU else "tanh"
        self._cell_fields: dict[str, Any] = {
            "nonlinearity": self.nonlinearity,
            "activation": None if act in (TANH, RELU) else act,
            "clip": None if clip is None else float(clip),
        }
        self.cell_options = {
            "activation": None if act in (TANH, RELU) else _activation_config(act),
            "clip": self._cell_fields["clip"],
        }
        if check_rate("weight_drop", weight_drop):  # recorded when set: JSON configs as before
            self.cell_options["weight_drop"] = float(weight_drop)
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, dtype, seed, recurrent_init, stateful, fast,
                         merge_mode=merge_mode, go_backwards=go_backwards, reverse=reverse,
                         weight_drop=weight_drop)

    def _make_cell(self, input_size: int) -> RNNCell:
        return RNNCell(input_size, self.hidden_size, self.bias, **self._cell_fields)


def _stack(arrays: list[Array]) -> Array:
    """np.stack(arrays), a new array (the caller may modify it); for the one array of a
    single-layer, one-direction layer without np.stack's overhead."""
    return arrays[0][None].copy() if len(arrays) == 1 else np.stack(arrays)
