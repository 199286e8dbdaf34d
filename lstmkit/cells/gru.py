"""The GRU cell exactly as ``torch.nn.GRU`` computes it (Cho et al. 2014, PyTorch's layout).

    r = sigmoid(W_ir x + b_ir + W_hr h_prev + b_hr)           reset gate
    z = sigmoid(W_iz x + b_iz + W_hz h_prev + b_hz)           update gate
    n = tanh   (W_in x + b_in + r * (W_hn h_prev + b_hn))     candidate
    h = (1 - z) * n + z * h_prev

Note the reset gate multiplies ``W_hn h_prev + b_hn`` (bias included), as PyTorch and cuDNN
do (``linear_before_reset=True``, ONNX's name). ``linear_before_reset=False`` is Cho et al.'s
original candidate, ONNX's default and Keras' ``reset_after=False``: the reset gate multiplies
h_prev before the product, and the recurrent bias is added after it (ONNX's equation)::

    n = tanh(W_in x + b_in + W_hn (r * h_prev) + b_hn)

Gate blocks are stacked r, z, n. The options shared with the LSTM (``lstmkit.cells.lstm``):
``recurrent_activation`` replaces the gates' sigmoid and ``activation`` the candidate's tanh
(ONNX's f and g), and ``clip`` bounds the pre-activations of r, z and n to [-clip, clip].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lstmkit.activations import SIGMOID, TANH, Activation, clip_gradient, clip_preactivation
from lstmkit.cells.lstm import check_clip

Array = np.ndarray


@dataclass(frozen=True)
class GRUCell:
    """One GRU time step.

    Parameters: weight_ih (3H, D), weight_hh (3H, H), bias_ih (3H,), bias_hh (3H,) (if ``bias``).
    State: (h,), (B, H).
    """

    input_size: int
    hidden_size: int
    bias: bool = True
    linear_before_reset: bool = True
    recurrent_activation: Activation = SIGMOID
    activation: Activation = TANH
    clip: float | None = None

    state_names = ("h",)
    gates = ("r", "z", "n")

    def __post_init__(self) -> None:
        for name in ("recurrent_activation", "activation"):
            if not isinstance(getattr(self, name), Activation):
                raise TypeError(f"{name} must be an lstmkit.Activation, "
                                f"got {getattr(self, name)!r}")
        check_clip(self.clip)

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Names and shapes of the parameters, PyTorch-style names without the layer suffix."""
        H, D = self.hidden_size, self.input_size
        shapes: dict[str, tuple[int, ...]] = {"weight_ih": (3 * H, D), "weight_hh": (3 * H, H)}
        if self.bias:
            shapes["bias_ih"] = (3 * H,)
            shapes["bias_hh"] = (3 * H,)
        return shapes

    def _activate(self, fn: Activation, z: Array) -> Array:
        return fn(clip_preactivation(z, self.clip))

    def _d_pre(self, fn: Activation, d_value: Array, z: Array, value: Array) -> Array:
        """dL/dz from dL/d(fn(clip(z))) = d_value."""
        dz = d_value * fn.derivative(clip_preactivation(z, self.clip), value)
        mask = clip_gradient(z, self.clip)
        return dz if mask is None else dz * mask

    def forward(
        self, x: Array, state: tuple[Array], p: dict[str, Array]
    ) -> tuple[tuple[Array], dict[str, Array]]:
        """One step. x (B, D), state (h_prev,) (B, H) -> ((h,), cache)."""
        (h_prev,) = state
        H = self.hidden_size
        W_hh = p["weight_hh"]
        gi = x @ p["weight_ih"].T  # (B, 3H): input part of r, z, n
        if self.bias:
            gi += p["bias_ih"]
        if self.linear_before_reset:
            gh = h_prev @ W_hh.T  # (B, 3H): recurrent part of r, z, n
        else:  # r and z only; n's recurrent part needs r first
            gh = h_prev @ W_hh[: 2 * H].T
        if self.bias:
            gh += p["bias_hh"][: gh.shape[1]]
        zr, zz = gi[:, :H] + gh[:, :H], gi[:, H : 2 * H] + gh[:, H : 2 * H]
        fn = self.recurrent_activation
        r, z = self._activate(fn, zr), self._activate(fn, zz)
        if self.linear_before_reset:
            hn = gh[:, 2 * H :]  # W_hn h_prev + b_hn
            zn = gi[:, 2 * H :] + r * hn
        else:
            hn = (r * h_prev) @ W_hh[2 * H :].T  # W_hn (r * h_prev)
            if self.bias:
                hn += p["bias_hh"][2 * H :]
            zn = gi[:, 2 * H :] + hn
        n = self._activate(self.activation, zn)
        h = (1.0 - z) * n + z * h_prev
        cache = {"x": x, "h_prev": h_prev, "r": r, "z": z, "n": n, "hn": hn,
                 "zr": zr, "zz": zz, "zn": zn}
        return (h,), cache

    def backward(
        self,
        d_state: tuple[Array],
        cache: dict[str, Array],
        p: dict[str, Array],
        grads: dict[str, Array],
    ) -> tuple[Array, tuple[Array]]:
        """Backward of one step: d_state = (dL/dh,) (B, H) -> (dL/dx, (dL/dh_prev,))."""
        (dh,) = d_state
        x, h_prev, r, z, n, hn = (cache[k] for k in ("x", "h_prev", "r", "z", "n", "hn"))
        H = self.hidden_size
        W_hh = p["weight_hh"]
        fn = self.recurrent_activation
        # h = (1 - z) * n + z * h_prev
        dn = dh * (1.0 - z)
        dz = self._d_pre(fn, dh * (h_prev - n), cache["zz"], z)
        dh_prev = dh * z
        dn_pre = self._d_pre(self.activation, dn, cache["zn"], n)
        if self.linear_before_reset:
            # n = act(gi_n + r * hn), hn = W_hn h_prev + b_hn
            dr = self._d_pre(fn, dn_pre * hn, cache["zr"], r)
            dgh = np.concatenate([dr, dz, dn_pre * r], axis=1)
            grads["weight_hh"] += dgh.T @ h_prev
            dh_prev = dh_prev + dgh @ W_hh
        else:
            # n = act(gi_n + W_hn (r * h_prev) + b_hn)
            d_rh = dn_pre @ W_hh[2 * H :]  # dL/d(r * h_prev)
            dr = self._d_pre(fn, d_rh * h_prev, cache["zr"], r)
            dgh = np.concatenate([dr, dz, dn_pre], axis=1)
            grads["weight_hh"][: 2 * H] += dgh[:, : 2 * H].T @ h_prev
            grads["weight_hh"][2 * H :] += dn_pre.T @ (r * h_prev)
            dh_prev = dh_prev + dgh[:, : 2 * H] @ W_hh[: 2 * H] + d_rh * r
        dgi = np.concatenate([dr, dz, dn_pre], axis=1)  # (B, 3H)
        grads["weight_ih"] += dgi.T @ x
        if self.bias:
            grads["bias_ih"] += dgi.sum(axis=0)
            grads["bias_hh"] += dgh.sum(axis=0)
        dx = dgi @ p["weight_ih"]
        return dx, (dh_prev,)
