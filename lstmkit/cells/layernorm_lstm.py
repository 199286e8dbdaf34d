"""The layer-normalised LSTM cell (Ba, Kiros & Hinton 2016), as Haste's ``LayerNormLSTM``.

Layer normalisation of a vector v of n features, per sequence (Haste's ``layer_norm``: mean and
biased variance over the features, epsilon 1e-5)::

    LN(v) = (v - mean(v)) / sqrt(var(v) + 1e-5)

Three tensors are normalised, as in Haste (gate order and bias layout here PyTorch's)::

    z = w_ln_ih * LN(W_ih x) + w_ln_hh * LN(W_hh h_prev) + b_ih + b_hh    (B, 4H), each LN over
                                                                          all 4H pre-activations
    i, f, o = sigmoid(z_i), sigmoid(z_f), sigmoid(z_o);   g = tanh(z_g)
    c = f * c_prev + i * g                                the carousel carries c unnormalised
    h = o * tanh(w_ln_c * LN(c) + b_ln_c)                 LN over the H units

so the input and recurrent pre-activations are normalised separately, each with a gain and no
bias of its own (the gate bias b plays that part), and the cell state is normalised, with gain
and bias, only where it enters the output. Parameters (Haste's names in brackets): ``weight_ih``
(4H, D) [kernel^T], ``weight_hh`` (4H, R) [recurrent_kernel^T], ``bias_ih`` + ``bias_hh`` (4H,)
[bias], ``weight_ln_ih`` (4H,) [gamma[0]], ``weight_ln_hh`` (4H,) [gamma[1]], ``weight_ln_c``
(H,) [gamma_h], ``bias_ln_c`` (H,) [beta_h]; gains start at 1, ``bias_ln_c`` at 0.

Of ``LSTMCell``'s options it takes ``bias``, ``proj_size`` (h = W_hr (o * tanh(...)), which
Haste lacks), ``recurrent_dropout`` (on h_prev before W_hh) and zoneout (Haste's ``zoneout`` is
on h; ``zoneout_c`` on c), with the same equations and masks (``lstmkit.cells.lstm``); the
layer's ``weight_drop`` is Haste's ``dropout`` (DropConnect on W_hh). Peepholes and the variant
switches (a gate removed or coupled) are refused: Haste defines the full cell only.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from lstmkit.activations import sigmoid
from lstmkit.cells.lstm import LSTMCell

Array = np.ndarray

EPS = 1e-5  # Haste's


def layer_norm(v: Array) -> tuple[Array, Array]:
    """LN over the last axis: (v_hat, 1 / std), v_hat shaped as v, 1 / std (B, 1)."""
    centred = v - v.mean(axis=-1, keepdims=True)
    inv_std = 1.0 / np.sqrt((centred**2).mean(axis=-1, keepdims=True) + EPS)
    return centred * inv_std, inv_std


def layer_norm_backward(d_hat: Array, v_hat: Array, inv_std: Array) -> Array:
    """dL/dv from dL/dv_hat, v_hat = LN(v)."""
    return inv_std * (d_hat - d_hat.mean(axis=-1, keepdims=True)
                      - v_hat * (d_hat * v_hat).mean(axis=-1, keepdims=True))


# the LSTMCell fields this cell implements; any other set away from its default is refused
_SUPPORTED = frozenset({"input_size", "hidden_size", "bias", "proj_size", "recurrent_dropout",
                        "zoneout", "zoneout_c"})


@dataclass(frozen=True)
class LayerNormLSTMCell(LSTMCell):
    """One step of the layer-normalised LSTM (equations in the module's docstring).

    State (h, c): h (B, R), c (B, H), R = ``output_size``. Same interface as ``LSTMCell``.
    """

    def __post_init__(self) -> None:
        super().__post_init__()
        refused = [f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self)
                   if f.name not in _SUPPORTED and getattr(self, f.name) != f.default]
        if refused:
            raise ValueError(
                f"the layer-normalised LSTM (Haste's LayerNormLSTM) is the full cell without "
                f"peepholes; it cannot be combined with {', '.join(refused)}"
            )

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """LSTMCell's parameters and the normalisations' gains and bias."""
        shapes = super().param_shapes()
        G, H = len(self.gates), self.hidden_size
        shapes.update(weight_ln_ih=(G * H,), weight_ln_hh=(G * H,), weight_ln_c=(H,),
                      bias_ln_c=(H,))
        return shapes

    def forward(
        self, x: Array, state: tuple[Array, Array], p: dict[str, Array]
    ) -> tuple[tuple[Array, Array], dict[str, Array]]:
        """One step. x (B, D), state (h_prev (B, R), c_prev (B, H)) -> ((h, c), cache)."""
        h_prev, c_prev = state
        drop = p.get("recurrent_dropout_mask")  # (4, B, R) while training, else None
        a_hat, inv_a = layer_norm(x @ p["weight_ih"].T)
        r_hat, inv_r = layer_norm(self._recurrent(h_prev, drop, p["weight_hh"]))
        z = p["weight_ln_ih"] * a_hat + p["weight_ln_hh"] * r_hat
        if self.bias:
            z += p["bias_ih"] + p["bias_hh"]
        zs = self.split(z)
        i, f, o = sigmoid(zs["i"]), sigmoid(zs["f"]), sigmoid(zs["o"])
        g = np.tanh(zs["g"])
        c = f * c_prev + i * g
        c_hat, inv_c = layer_norm(c)
        tanh_c = np.tanh(p["weight_ln_c"] * c_hat + p["bias_ln_c"])
        h = o * tanh_c
        if self.proj_size:
            h = h @ p["weight_hr"].T  # (B, P)
        cache = {"x": x, "h_prev": h_prev, "c_prev": c_prev, "drop": drop, "a_hat": a_hat,
                 "inv_a": inv_a, "r_hat": r_hat, "inv_r": inv_r, "c_hat": c_hat, "inv_c": inv_c,
                 "i": i, "f": f, "g": g, "o": o, "c_new": c, "tanh_c": tanh_c}
        d_h = p.get("zoneout_mask", self.zoneout)  # 1 keeps the previous value
        d_c = p.get("zoneout_c_mask", self.zoneout_c)
        if self.zoneout:
            h = d_h * h_prev + (1.0 - d_h) * h
        if self.zoneout_c:
            c = d_c * c_prev + (1.0 - d_c) * c
        cache.update(d_h=d_h, d_c=d_c, c=c)
        return (h, c), cache

    def backward(
        self,
        d_state: tuple[Array, Array],
        cache: dict[str, Array],
        p: dict[str, Array],
        grads: dict[str, Array],
    ) -> tuple[Array, tuple[Array, Array]]:
        """Backward of one step: (dL/dh (B, R), dL/dc (B, H)) -> (dL/dx, (dL/dh_prev,
        dL/dc_prev)), parameter gradients added into ``grads``."""
        x, h_prev, c_prev = cache["x"], cache["h_prev"], cache["c_prev"]
        i, f, g, o, tanh_c = (cache[k] for k in ("i", "f", "g", "o", "tanh_c"))
        dh, dc = self._before_zoneout(d_state, cache)  # at h_new, c_new
        if self.proj_size:
            grads["weight_hr"] += dh.T @ (o * tanh_c)
            dh = dh @ p["weight_hr"]  # (B, H)

        # h = o * tanh(n), n = w_ln_c * LN(c) + b_ln_c
        dn = dh * o * (1.0 - tanh_c**2)
        grads["weight_ln_c"] += (dn * cache["c_hat"]).sum(axis=0)
        grads["bias_ln_c"] += dn.sum(axis=0)
        dc = dc + layer_norm_backward(dn * p["weight_ln_c"], cache["c_hat"], cache["inv_c"])
        # c = f * c_prev + i * g
        dz = {"i": dc * g * i * (1.0 - i), "f": dc * c_prev * f * (1.0 - f),
              "g": dc * i * (1.0 - g**2), "o": dh * tanh_c * o * (1.0 - o)}
        dc_prev = dc * f

        # z = w_ln_ih * LN(W_ih x) + w_ln_hh * LN(W_hh h_prev) + b
        dz_all = np.concatenate([dz[gate] for gate in self.gates], axis=1)
        if self.bias:
            db = dz_all.sum(axis=0)
            grads["bias_ih"] += db
            grads["bias_hh"] += db
        grads["weight_ln_ih"] += (dz_all * cache["a_hat"]).sum(axis=0)
        grads["weight_ln_hh"] += (dz_all * cache["r_hat"]).sum(axis=0)
        da = layer_norm_backward(dz_all * p["weight_ln_ih"], cache["a_hat"], cache["inv_a"])
        dr = layer_norm_backward(dz_all * p["weight_ln_hh"], cache["r_hat"], cache["inv_r"])
        grads["weight_ih"] += da.T @ x
        dx = da @ p["weight_ih"]
        dh_prev = self._recurrent_backward(dr, h_prev, cache["drop"], p["weight_hh"], grads)
        if self.zoneout:  # the part of h (and c) kept from the previous step
            dh_prev = dh_prev + d_state[0] * cache["d_h"]
        if self.zoneout_c:
            dc_prev = dc_prev + d_state[1] * cache["d_c"]
        return dx, (dh_prev, dc_prev)

    def carousel_gradient(self, d_state: tuple[Array, ...], cache: dict[str, Array],
                          p: dict[str, Array]) -> Array:
        """dL/dc_new of this step with h = o * tanh(w_ln_c * LN(c) + b_ln_c) counted as a
        function of c: the first lines of ``backward``."""
        dh, dc = self._before_zoneout(d_state, cache)
        if self.proj_size:
            dh = dh @ p["weight_hr"]
        dn = dh * cache["o"] * (1.0 - cache["tanh_c"] ** 2)
        return dc + layer_norm_backward(dn * p["weight_ln_c"], cache["c_hat"], cache["inv_c"])
