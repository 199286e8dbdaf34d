"""The GRU cell exactly as ``torch.nn.GRU`` computes it (Cho et al. 2014, PyTorch's layout).

    r = sigmoid(W_ir x + b_ir + W_hr h_prev + b_hr)           reset gate
    z = sigmoid(W_iz x + b_iz + W_hz h_prev + b_hz)           update gate
    n = tanh   (W_in x + b_in + r * (W_hn h_prev + b_hn))     candidate
    h = (1 - z) * n + z * h_prev

Note the reset gate multiplies ``W_hn h_prev + b_hn`` (bias included), as PyTorch and cuDNN
do, not ``h_prev`` before the product as in the original paper. Gate blocks are stacked r, z, n.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lstmkit.activations import sigmoid

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

    state_names = ("h",)
    gates = ("r", "z", "n")

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Names and shapes of the parameters, PyTorch-style names without the layer suffix."""
        H, D = self.hidden_size, self.input_size
        shapes: dict[str, tuple[int, ...]] = {"weight_ih": (3 * H, D), "weight_hh": (3 * H, H)}
        if self.bias:
            shapes["bias_ih"] = (3 * H,)
            shapes["bias_hh"] = (3 * H,)
        return shapes

    def forward(
        self, x: Array, state: tuple[Array], p: dict[str, Array]
    ) -> tuple[tuple[Array], dict[str, Array]]:
        """One step. x (B, D), state (h_prev,) (B, H) -> ((h,), cache)."""
        (h_prev,) = state
        H = self.hidden_size
        gi = x @ p["weight_ih"].T  # (B, 3H): input part of r, z, n
        gh = h_prev @ p["weight_hh"].T  # (B, 3H): recurrent part of r, z, n
        if self.bias:
            gi += p["bias_ih"]
            gh += p["bias_hh"]
        r = sigmoid(gi[:, :H] + gh[:, :H])
        z = sigmoid(gi[:, H : 2 * H] + gh[:, H : 2 * H])
        hn = gh[:, 2 * H :]  # W_hn h_prev + b_hn
        n = np.tanh(gi[:, 2 * H :] + r * hn)
        h = (1.0 - z) * n + z * h_prev
        cache = {"x": x, "h_prev": h_prev, "r": r, "z": z, "n": n, "hn": hn}
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
        # h = (1 - z) * n + z * h_prev
        dn = dh * (1.0 - z)
        dz = dh * (h_prev - n) * z * (1.0 - z)
        dh_prev = dh * z
        # n = tanh(gi_n + r * hn)
        dn_pre = dn * (1.0 - n**2)
        dr = dn_pre * hn * r * (1.0 - r)
        dgi = np.concatenate([dr, dz, dn_pre], axis=1)  # (B, 3H)
        dgh = np.concatenate([dr, dz, dn_pre * r], axis=1)
        grads["weight_ih"] += dgi.T @ x
        grads["weight_hh"] += dgh.T @ h_prev
        if self.bias:
            grads["bias_ih"] += dgi.sum(axis=0)
            grads["bias_hh"] += dgh.sum(axis=0)
        dx = dgi @ p["weight_ih"]
        dh_prev = dh_prev + dgh @ p["weight_hh"]
        return dx, (dh_prev,)
