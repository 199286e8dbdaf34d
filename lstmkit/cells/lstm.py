"""The LSTM cell: one time step, forward and backward, in readable NumPy.

The equations (Hochreiter & Schmidhuber 1997; forget gate: Gers, Schmidhuber & Cummins 2000;
peepholes: Gers, Schraudolph & Schmidhuber 2002; gate order and bias layout: PyTorch)::

    i = sigmoid(W_ii x + b_ii + W_hi h_prev + b_hi + w_ci * c_prev)   input gate
    f = sigmoid(W_if x + b_if + W_hf h_prev + b_hf + w_cf * c_prev)   forget gate
    g = tanh   (W_ig x + b_ig + W_hg h_prev + b_hg)                   cell input
    c = f * c_prev + i * g                                            Constant Error Carousel
    o = sigmoid(W_io x + b_io + W_ho h_prev + b_ho + w_co * c)        output gate
    h = o * tanh(c)

The variant switches remove pieces of it (Greff et al. 2017 name the variants):

- ``peepholes=False`` drops the ``w_c*`` terms (PyTorch's and Keras' LSTM);
- ``forget_gate=False`` fixes f = 1: the original 1997 cell, whose carousel never forgets;
- ``input_gate=False`` fixes i = 1, ``output_gate=False`` fixes o = 1;
- ``coupled_input_forget=True`` (CIFG) computes f = 1 - i and has no forget-gate weights.

A gate that a switch removes has no weights at all: the pre-activation ``z`` holds only the
gates present, in the order i, f, g, o. With the forget gate fixed open (f = 1) the carousel
passes the gradient unchanged: dL/dc_prev = dL/dc, the "error carousel" of the 1997 paper.

The options of the ONNX LSTM operator and of Greff et al.'s remaining variants:

- ``recurrent_activation`` replaces the gates' sigmoid, ``activation`` the cell input's tanh
  (g) and ``output_activation`` the tanh of c in h = o * tanh(c) (ONNX's f, g, h; Keras uses
  its ``activation`` for both g and h). ``Identity`` there is Greff's NIAF (no input
  activation) and NOAF (no output activation). Functions: ``lstmkit.activations``.
- ``clip`` (ONNX's cell clip) bounds every gate's pre-activation, peephole term and bias
  included, to [-clip, clip] before its activation (c itself is not clipped, as in ONNX
  Runtime); the gradient is zero where a pre-activation was clipped.
- ``full_gate_recurrence`` (Greff's FGR, after the original LSTM's gate-to-gate connections):
  the gates also see the previous step's gate values a_prev = [i_prev, f_prev, o_prev] (B, 3H),
  through ``weight_gg`` (3H, 3H): rows are the receiving gates i, f, o, columns the sending
  ones, so ``z_{i,f,o} += a_prev @ weight_gg.T`` (Greff's nine matrices R_ii, R_fi, R_oi, ...
  as blocks). The previous gate values are carried as three more state parts, zero at t = 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lstmkit.activations import (
    SIGMOID,
    TANH,
    Activation,
    clip_gradient,
    clip_preactivation,
)

Array = np.ndarray

_FGR_GATES = ("i", "f", "o")  # the gates full gate recurrence connects, in weight_gg's order


@dataclass(frozen=True)
class LSTMCell:
    """One LSTM time step with the variant switches and options.

    Parameters (a dict ``p``; ``G`` = number of gates present, 4 for the full cell):
        weight_ih (G*H, D), weight_hh (G*H, H), bias_ih (G*H,), bias_hh (G*H,) (if ``bias``),
        weight_ci, weight_cf, weight_co (H,) (if ``peepholes`` and the gate is present),
        weight_gg (3H, 3H) (if ``full_gate_recurrence``).
    State: (h, c), each (B, H); with ``full_gate_recurrence`` also (i, f, o) of the step.
    """

    input_size: int
    hidden_size: int
    bias: bool = True
    peepholes: bool = False
    forget_gate: bool = True
    input_gate: bool = True
    output_gate: bool = True
    coupled_input_forget: bool = False
    recurrent_activation: Activation = SIGMOID
    activation: Activation = TANH
    output_activation: Activation = TANH
    clip: float | None = None
    full_gate_recurrence: bool = False

    all_gates = ("i", "f", "g", "o")  # for inspection: removed gates appear as their constant

    def __post_init__(self) -> None:
        if self.coupled_input_forget and not self.input_gate:
            raise ValueError(
                "coupled_input_forget=True computes f = 1 - i and needs the input gate; "
                "got input_gate=False"
            )
        if self.coupled_input_forget and not self.forget_gate:
            raise ValueError(
                "coupled_input_forget=True replaces the forget gate by 1 - i; "
                "it cannot be combined with forget_gate=False"
            )
        for name in ("recurrent_activation", "activation", "output_activation"):
            if not isinstance(getattr(self, name), Activation):
                raise TypeError(f"{name} must be an lstmkit.Activation, "
                                f"got {getattr(self, name)!r}")
        check_clip(self.clip)
        if self.full_gate_recurrence and self.gates != ("i", "f", "g", "o"):
            raise ValueError(
                "full_gate_recurrence connects the input, forget and output gates to each "
                "other and needs all three (input_gate, forget_gate, output_gate True and "
                "coupled_input_forget False)"
            )

    @property
    def state_names(self) -> tuple[str, ...]:
        """The parts of the state: h and c, and the previous gate values with FGR."""
        return ("h", "c", *_FGR_GATES) if self.full_gate_recurrence else ("h", "c")

    @property
    def gates(self) -> tuple[str, ...]:
        """The gates that have weights, in PyTorch's order (a subset of 'i', 'f', 'g', 'o')."""
        present = {
            "i": self.input_gate,
            "f": self.forget_gate and not self.coupled_input_forget,
            "g": True,
            "o": self.output_gate,
        }
        return tuple(name for name, on in present.items() if on)

    @property
    def peephole_gates(self) -> tuple[str, ...]:
        """The gates with a peephole weight ``weight_c{gate}``: 'i' and 'f' see c_prev, 'o' c."""
        if not self.peepholes:
            return ()
        return tuple(gate for gate in self.gates if gate != "g")

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Names and shapes of the parameters, PyTorch-style names without the layer suffix."""
        G, H, D = len(self.gates), self.hidden_size, self.input_size
        shapes: dict[str, tuple[int, ...]] = {"weight_ih": (G * H, D), "weight_hh": (G * H, H)}
        if self.bias:
            shapes["bias_ih"] = (G * H,)
            shapes["bias_hh"] = (G * H,)
        for gate in self.peephole_gates:
            shapes[f"weight_c{gate}"] = (H,)
        if self.full_gate_recurrence:
            shapes["weight_gg"] = (3 * H, 3 * H)
        return shapes

    def split(self, z: Array) -> dict[str, Array]:
        """Split a (B, G*H) pre-activation into its gate blocks (views)."""
        H = self.hidden_size
        return {gate: z[:, k * H : (k + 1) * H] for k, gate in enumerate(self.gates)}

    def forward(
        self, x: Array, state: tuple[Array, ...], p: dict[str, Array]
    ) -> tuple[tuple[Array, ...], dict[str, Array]]:
        """One step. x (B, D), state (h_prev, c_prev) each (B, H) -> ((h, c), cache).

        The cache holds what backward needs, and every gate's value for inspection; ``z*``
        are the gates' pre-activations before the clip.
        """
        h_prev, c_prev = state[0], state[1]
        z = x @ p["weight_ih"].T + h_prev @ p["weight_hh"].T
        if self.bias:
            z += p["bias_ih"] + p["bias_hh"]
        zs = self.split(z)
        cache = {"x": x, "h_prev": h_prev, "c_prev": c_prev}
        if self.full_gate_recurrence:
            a_prev = np.concatenate(state[2:], axis=1)  # (B, 3H): i, f, o of the previous step
            gg = a_prev @ p["weight_gg"].T
            for k, gate in enumerate(_FGR_GATES):
                zs[gate] += gg[:, k * self.hidden_size : (k + 1) * self.hidden_size]
            cache["a_prev"] = a_prev
        one = np.ones_like(c_prev)
        gate_fn = self.recurrent_activation

        if self.input_gate:
            zi = zs["i"] + p["weight_ci"] * c_prev if self.peepholes else zs["i"]
            i = gate_fn(clip_preactivation(zi, self.clip))
            cache["zi"] = zi
        else:
            i = one
        if self.coupled_input_forget:
            f = 1.0 - i
        elif self.forget_gate:
            zf = zs["f"] + p["weight_cf"] * c_prev if self.peepholes else zs["f"]
            f = gate_fn(clip_preactivation(zf, self.clip))
            cache["zf"] = zf
        else:
            f = one
        cache["zg"] = zs["g"]
        g = self.activation(clip_preactivation(zs["g"], self.clip))
        c = f * c_prev + i * g
        if self.output_gate:
            zo = zs["o"] + p["weight_co"] * c if self.peepholes else zs["o"]
            o = gate_fn(clip_preactivation(zo, self.clip))
            cache["zo"] = zo
        else:
            o = one
        act_c = self.output_activation(c)
        h = o * act_c
        cache.update({"i": i, "f": f, "g": g, "o": o, "c": c, "act_c": act_c})
        new_state = (h, c, i, f, o) if self.full_gate_recurrence else (h, c)
        return new_state, cache

    def _gate_gradient(self, fn: Activation, d_value: Array, z: Array, value: Array) -> Array:
        """dL/dz of a gate from dL/d(gate): through the activation, then the clip."""
        zc = clip_preactivation(z, self.clip)
        dz = d_value * fn.derivative(zc, value)
        mask = clip_gradient(z, self.clip)
        return dz if mask is None else dz * mask

    def carousel_gradient(self, d_state: tuple[Array, ...], cache: dict[str, Array],
                          p: dict[str, Array]) -> Array:
        """dL/dc of this step with h = o * h(c) counted as a function of c (and, with
        peepholes, o of c): Graves 2008's epsilon_c, the first lines of ``backward``."""
        return self._output_gradients(d_state, cache, p)[0]

    def _output_gradients(self, d_state: tuple[Array, ...], cache: dict[str, Array],
                          p: dict[str, Array]) -> tuple[Array, Array | None]:
        """(dL/dc total, dL/dz_o or None) from the gradients arriving at h, c (and o)."""
        dh, dc = d_state[0], d_state[1]
        o, c, act_c = cache["o"], cache["c"], cache["act_c"]
        dc = dc + dh * o * self.output_activation.derivative(c, act_c)
        if not self.output_gate:
            return dc, None
        do = dh * act_c
        if self.full_gate_recurrence:
            do = do + d_state[4]
        dzo = self._gate_gradient(self.recurrent_activation, do, cache["zo"], o)
        if self.peepholes:  # o sees the new c
            dc = dc + dzo * p["weight_co"]
        return dc, dzo

    def backward(
        self,
        d_state: tuple[Array, ...],
        cache: dict[str, Array],
        p: dict[str, Array],
        grads: dict[str, Array],
    ) -> tuple[Array, tuple[Array, ...]]:
        """Backward of one step, the forward read in reverse.

        d_state = (dL/dh, dL/dc) (and dL/d(i, f, o) with FGR), each (B, H), the gradients
        arriving at this step's outputs. Accumulates into ``grads`` (same names as ``p``) and
        returns (dL/dx (B, D), (dL/dh_prev, dL/dc_prev, ...)).
        """
        x, h_prev, c_prev = cache["x"], cache["h_prev"], cache["c_prev"]
        i, f, g = cache["i"], cache["f"], cache["g"]
        gate_fn = self.recurrent_activation
        dz = {}

        # h = o * h(c)
        dc, dzo = self._output_gradients(d_state, cache, p)
        if dzo is not None:
            dz["o"] = dzo
            if self.peepholes:
                grads["weight_co"] += (dzo * cache["c"]).sum(axis=0)
        # c = f * c_prev + i * g
        di = dc * g
        df = dc * c_prev
        if self.full_gate_recurrence:
            di = di + d_state[2]
            df = df + d_state[3]
        dc_prev = dc * f
        dz["g"] = self._gate_gradient(self.activation, dc * i, cache["zg"], g)
        if self.coupled_input_forget:  # f = 1 - i
            di = di - df
        elif self.forget_gate:
            dz["f"] = self._gate_gradient(gate_fn, df, cache["zf"], f)
            if self.peepholes:
                dc_prev += dz["f"] * p["weight_cf"]
                grads["weight_cf"] += (dz["f"] * c_prev).sum(axis=0)
        if self.input_gate:
            dz["i"] = self._gate_gradient(gate_fn, di, cache["zi"], i)
            if self.peepholes:
                dc_prev += dz["i"] * p["weight_ci"]
                grads["weight_ci"] += (dz["i"] * c_prev).sum(axis=0)

        # z = x W_ih^T + h_prev W_hh^T + b_ih + b_hh (+ a_prev W_gg^T)
        dz_all = np.concatenate([dz[gate] for gate in self.gates], axis=1)
        grads["weight_ih"] += dz_all.T @ x
        grads["weight_hh"] += dz_all.T @ h_prev
        if self.bias:
            db = dz_all.sum(axis=0)
            grads["bias_ih"] += db
            grads["bias_hh"] += db
        dx = dz_all @ p["weight_ih"]
        dh_prev = dz_all @ p["weight_hh"]
        if not self.full_gate_recurrence:
            return dx, (dh_prev, dc_prev)
        dgg = np.concatenate([dz[gate] for gate in _FGR_GATES], axis=1)  # (B, 3H)
        grads["weight_gg"] += dgg.T @ cache["a_prev"]
        da_prev = dgg @ p["weight_gg"]
        H = self.hidden_size
        return dx, (dh_prev, dc_prev, *(da_prev[:, k * H : (k + 1) * H] for k in range(3)))


def check_clip(clip: object) -> None:
    """ONNX's cell clip: None (no clip) or a positive finite number."""
    if clip is None:
        return
    if isinstance(clip, bool) or not isinstance(clip, (int, float, np.number)):
        raise TypeError(f"clip must be None or a positive number, got {clip!r}")
    if not (np.isfinite(clip) and clip > 0):
        raise ValueError(f"clip must be a positive finite number (or None), got {clip!r}")
