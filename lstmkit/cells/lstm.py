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

Options that add to it (``docs/options.md``):

- ``proj_size=P`` (LSTMP, Sak et al. 2014; ``torch.nn.LSTM(proj_size=P)``): the state h is
  projected, ``h = W_hr (o * tanh(c))`` with ``weight_hr`` (P, H); h and h_prev are (B, P),
  c stays (B, H), and ``weight_hh`` is (G*H, P);
- ``recurrent_dropout`` (Gal & Ghahramani 2016, as Keras' ``recurrent_dropout``): each gate k
  sees ``h_prev * m_k`` in place of h_prev, masks drawn once per sequence (``p`` holds them
  while training, see below);
- ``zoneout``, ``zoneout_c`` (Krueger et al. 2017; ``zoneout`` is Haste's, on h): with d_h, d_c
  the zoneout masks (1 = keep the previous value), ``h = d_h * h_prev + (1 - d_h) * h_new`` and
  ``c = d_c * c_prev + (1 - d_c) * c_new``, where c_new and h_new are the cell's values above
  (o sees c_new through its peephole, and h_new = o * tanh(c_new)); in evaluation the masks are
  their expectations, d_h = zoneout and d_c = zoneout_c.

The random masks are not parameters: the layer draws them per call while training and passes
them in ``p`` under reserved names, ``p["recurrent_dropout_mask"]`` (G, B, P or H), scaled by
1 / (1 - rate), and ``p["zoneout_mask"]``, ``p["zoneout_c_mask"]``, each (T, B, P or H), of
which the reference loop hands the cell step t's slice (``step_masks``). Without them (the
layer in evaluation mode) recurrent dropout is the identity and zoneout uses its expectation.

A gate that a switch removes has no weights at all: the pre-activation ``z`` holds only the
gates present, in the order i, f, g, o. With the forget gate fixed open (f = 1) the carousel
passes the gradient unchanged: dL/dc_prev = dL/dc, the "error carousel" of the 1997 paper.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lstmkit.activations import sigmoid

Array = np.ndarray


@dataclass(frozen=True)
class LSTMCell:
    """One LSTM time step with the variant switches.

    Parameters (a dict ``p``; ``G`` = number of gates present, 4 for the full cell; ``R`` =
    ``output_size``, the size of h: ``proj_size`` if set, else H):
        weight_ih (G*H, D), weight_hh (G*H, R), bias_ih (G*H,), bias_hh (G*H,) (if ``bias``),
        weight_ci, weight_cf, weight_co (H,) (if ``peepholes`` and the gate is present),
        weight_hr (P, H) (if ``proj_size``).
    State: (h, c), h (B, R) and c (B, H).
    """

    input_size: int
    hidden_size: int
    bias: bool = True
    peepholes: bool = False
    forget_gate: bool = True
    input_gate: bool = True
    output_gate: bool = True
    coupled_input_forget: bool = False
    proj_size: int = 0  # 0: no projection
    recurrent_dropout: float = 0.0
    zoneout: float = 0.0
    zoneout_c: float = 0.0

    state_names = ("h", "c")
    step_masks = ("zoneout_mask", "zoneout_c_mask")  # (T, B, .) in p: the loop passes step t's
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
        if isinstance(self.proj_size, bool) or not isinstance(self.proj_size, (int, np.integer)):
            raise ValueError(f"proj_size must be an integer, got {self.proj_size!r}")
        if not 0 <= self.proj_size < self.hidden_size:
            raise ValueError(
                f"proj_size must be 0 (no projection) or in [1, hidden_size) as in "
                f"torch.nn.LSTM, got proj_size={self.proj_size} with "
                f"hidden_size={self.hidden_size}"
            )
        for name in ("recurrent_dropout", "zoneout", "zoneout_c"):
            rate = getattr(self, name)
            if isinstance(rate, bool) or not isinstance(rate, (int, float, np.number)) \
                    or not 0.0 <= rate < 1.0:
                raise ValueError(f"{name} must be a number in [0, 1), got {rate!r}")

    @property
    def output_size(self) -> int:
        """The size of h (and of the output): ``proj_size`` if set, else ``hidden_size``."""
        return self.proj_size or self.hidden_size

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
        G, H, D, R = len(self.gates), self.hidden_size, self.input_size, self.output_size
        shapes: dict[str, tuple[int, ...]] = {"weight_ih": (G * H, D), "weight_hh": (G * H, R)}
        if self.bias:
            shapes["bias_ih"] = (G * H,)
            shapes["bias_hh"] = (G * H,)
        for gate in self.peephole_gates:
            shapes[f"weight_c{gate}"] = (H,)
        if self.proj_size:
            shapes["weight_hr"] = (self.proj_size, H)
        return shapes

    def split(self, z: Array) -> dict[str, Array]:
        """Split a (B, G*H) pre-activation into its gate blocks (views)."""
        H = self.hidden_size
        return {gate: z[:, k * H : (k + 1) * H] for k, gate in enumerate(self.gates)}

    def forward(
        self, x: Array, state: tuple[Array, Array], p: dict[str, Array]
    ) -> tuple[tuple[Array, Array], dict[str, Array]]:
        """One step. x (B, D), state (h_prev (B, R), c_prev (B, H)) -> ((h, c), cache).

        The cache holds what backward needs, and every gate's value for inspection.
        """
        h_prev, c_prev = state
        drop = p.get("recurrent_dropout_mask")  # (G, B, R) while training, else None
        z = x @ p["weight_ih"].T + self._recurrent(h_prev, drop, p["weight_hh"])
        if self.bias:
            z += p["bias_ih"] + p["bias_hh"]
        zs = self.split(z)
        one = np.ones_like(c_prev)

        if self.input_gate:
            zi = zs["i"] + p["weight_ci"] * c_prev if self.peepholes else zs["i"]
            i = sigmoid(zi)
        else:
            i = one
        if self.coupled_input_forget:
            f = 1.0 - i
        elif self.forget_gate:
            zf = zs["f"] + p["weight_cf"] * c_prev if self.peepholes else zs["f"]
            f = sigmoid(zf)
        else:
            f = one
        g = np.tanh(zs["g"])
        c = f * c_prev + i * g
        if self.output_gate:
            zo = zs["o"] + p["weight_co"] * c if self.peepholes else zs["o"]
            o = sigmoid(zo)
        else:
            o = one
        tanh_c = np.tanh(c)
        h = o * tanh_c
        if self.proj_size:
            h = h @ p["weight_hr"].T  # (B, P)
        cache = {"x": x, "h_prev": h_prev, "c_prev": c_prev, "drop": drop,
                 "i": i, "f": f, "g": g, "o": o, "c_new": c, "c": c, "tanh_c": tanh_c}
        # zoneout: d = 1 keeps the previous value; a rate (the expectation) in evaluation
        d_h = p.get("zoneout_mask", self.zoneout)
        d_c = p.get("zoneout_c_mask", self.zoneout_c)
        if self.zoneout:
            h = d_h * h_prev + (1.0 - d_h) * h
        if self.zoneout_c:
            c = d_c * c_prev + (1.0 - d_c) * c
        cache.update(d_h=d_h, d_c=d_c, c=c)  # "c": the state the step passes on
        return (h, c), cache

    def _recurrent(self, h_prev: Array, drop: Array | None, w_hh: Array) -> Array:
        """W_hh h_prev (B, G*H), each gate k seeing h_prev * drop[k] when ``drop`` is given."""
        if drop is None:
            return h_prev @ w_hh.T
        G, H = len(self.gates), self.hidden_size
        w = w_hh.reshape(G, H, -1)  # (G, H, R): one block per gate
        per_gate = np.matmul(h_prev[None] * drop, w.transpose(0, 2, 1))  # (G, B, H)
        return per_gate.transpose(1, 0, 2).reshape(h_prev.shape[0], G * H)

    def backward(
        self,
        d_state: tuple[Array, Array],
        cache: dict[str, Array],
        p: dict[str, Array],
        grads: dict[str, Array],
    ) -> tuple[Array, tuple[Array, Array]]:
        """Backward of one step, the forward read in reverse.

        d_state = (dL/dh (B, R), dL/dc (B, H)), the gradients arriving at this step's outputs.
        Accumulates into ``grads`` (same names as ``p``) and returns
        (dL/dx (B, D), (dL/dh_prev, dL/dc_prev)).
        """
        dh, dc = d_state
        x, h_prev, c_prev = cache["x"], cache["h_prev"], cache["c_prev"]
        i, f, g, o, c, tanh_c = (cache[k] for k in ("i", "f", "g", "o", "c_new", "tanh_c"))
        dz = {}

        # zoneout: h = d_h * h_prev + (1 - d_h) * h_new, the same for c
        dh_kept = dc_kept = 0.0
        if self.zoneout:
            dh_kept, dh = dh * cache["d_h"], dh * (1.0 - cache["d_h"])
        if self.zoneout_c:
            dc_kept, dc = dc * cache["d_c"], dc * (1.0 - cache["d_c"])
        # h = W_hr (o * tanh(c))
        if self.proj_size:
            grads["weight_hr"] += dh.T @ (o * tanh_c)
            dh = dh @ p["weight_hr"]  # (B, H)

        # h = o * tanh(c)
        dc = dc + dh * o * (1.0 - tanh_c**2)
        if self.output_gate:
            dz["o"] = dh * tanh_c * o * (1.0 - o)
            if self.peepholes:  # o sees the new c
                dc = dc + dz["o"] * p["weight_co"]
                grads["weight_co"] += (dz["o"] * c).sum(axis=0)
        # c = f * c_prev + i * g
        di = dc * g
        df = dc * c_prev
        dc_prev = dc * f
        dz["g"] = dc * i * (1.0 - g**2)
        if self.coupled_input_forget:  # f = 1 - i
            di = di - df
        elif self.forget_gate:
            dz["f"] = df * f * (1.0 - f)
            if self.peepholes:
                dc_prev += dz["f"] * p["weight_cf"]
                grads["weight_cf"] += (dz["f"] * c_prev).sum(axis=0)
        if self.input_gate:
            dz["i"] = di * i * (1.0 - i)
            if self.peepholes:
                dc_prev += dz["i"] * p["weight_ci"]
                grads["weight_ci"] += (dz["i"] * c_prev).sum(axis=0)

        # z = x W_ih^T + h_prev W_hh^T + b_ih + b_hh
        dz_all = np.concatenate([dz[gate] for gate in self.gates], axis=1)
        grads["weight_ih"] += dz_all.T @ x
        if self.bias:
            db = dz_all.sum(axis=0)
            grads["bias_ih"] += db
            grads["bias_hh"] += db
        dx = dz_all @ p["weight_ih"]
        dh_prev = self._recurrent_backward(dz_all, h_prev, cache["drop"], p["weight_hh"], grads)
        return dx, (dh_prev + dh_kept, dc_prev + dc_kept)

    def _recurrent_backward(self, dz: Array, h_prev: Array, drop: Array | None, w_hh: Array,
                            grads: dict[str, Array]) -> Array:
        """Backward of ``_recurrent``: dz (B, G*H) -> dL/dh_prev (B, R); adds dL/dW_hh."""
        if drop is None:
            grads["weight_hh"] += dz.T @ h_prev
            return dz @ w_hh
        G, H = len(self.gates), self.hidden_size
        dz_k = dz.reshape(-1, G, H).transpose(1, 0, 2)  # (G, B, H)
        grads["weight_hh"] += (dz_k.transpose(0, 2, 1) @ (h_prev[None] * drop)).reshape(G * H, -1)
        return ((dz_k @ w_hh.reshape(G, H, -1)) * drop).sum(axis=0)
