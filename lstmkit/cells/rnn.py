"""The simple (Elman) RNN cell, as ``torch.nn.RNN`` computes it.

    h = act(W_ih x + b_ih + W_hh h_prev + b_hh),   act = tanh or relu

Backpropagated through time, dL/dh_prev = W_hh^T (act'(a) * dL/dh): a product of one such
factor per step, which shrinks (vanishes) or grows (explodes) geometrically with the number of
steps unless the spectral radius of ``diag(act') W_hh`` stays at 1 -- the problem the LSTM's
Constant Error Carousel was designed to remove.

``activation`` (an ``lstmkit.Activation``, ONNX's f) replaces ``act`` by any function of
``lstmkit.activations``; ``clip`` (ONNX's) bounds the pre-activation a to [-clip, clip].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lstmkit.activations import RELU, TANH, Activation, clip_gradient, clip_preactivation
from lstmkit.cells.lstm import check_clip

Array = np.ndarray

NONLINEARITIES = ("tanh", "relu")


@dataclass(frozen=True)
class RNNCell:
    """One simple-RNN time step.

    Parameters: weight_ih (H, D), weight_hh (H, H), bias_ih (H,), bias_hh (H,) (if ``bias``).
    State: (h,), (B, H).
    """

    input_size: int
    hidden_size: int
    bias: bool = True
    nonlinearity: str = "tanh"
    activation: Activation | None = None  # None: the nonlinearity's; else it, when "tanh"
    clip: float | None = None

    state_names = ("h",)
    gates = ()

    def __post_init__(self) -> None:
        if self.nonlinearity not in NONLINEARITIES:
            raise ValueError(
                f"nonlinearity must be one of {NONLINEARITIES}, got {self.nonlinearity!r}"
            )
        if self.activation is not None:
            if not isinstance(self.activation, Activation):
                raise TypeError(f"activation must be an lstmkit.Activation or None, "
                                f"got {self.activation!r}")
            if self.nonlinearity != "tanh":
                raise ValueError(f"give either nonlinearity={self.nonlinearity!r} or "
                                 f"activation={self.activation}, not both")
        check_clip(self.clip)

    @property
    def function(self) -> Activation:
        """The activation this cell applies."""
        if self.activation is not None:
            return self.activation
        return RELU if self.nonlinearity == "relu" else TANH

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Names and shapes of the parameters, PyTorch-style names without the layer suffix."""
        H, D = self.hidden_size, self.input_size
        shapes: dict[str, tuple[int, ...]] = {"weight_ih": (H, D), "weight_hh": (H, H)}
        if self.bias:
            shapes["bias_ih"] = (H,)
            shapes["bias_hh"] = (H,)
        return shapes

    def forward(
        self, x: Array, state: tuple[Array], p: dict[str, Array]
    ) -> tuple[tuple[Array], dict[str, Array]]:
        """One step. x (B, D), state (h_prev,) (B, H) -> ((h,), cache)."""
        (h_prev,) = state
        a = x @ p["weight_ih"].T + h_prev @ p["weight_hh"].T
        if self.bias:
            a += p["bias_ih"] + p["bias_hh"]
        h = self.function(clip_preactivation(a, self.clip))
        return (h,), {"x": x, "h_prev": h_prev, "h": h, "a": a}

    def backward(
        self,
        d_state: tuple[Array],
        cache: dict[str, Array],
        p: dict[str, Array],
        grads: dict[str, Array],
    ) -> tuple[Array, tuple[Array]]:
        """Backward of one step: d_state = (dL/dh,) (B, H) -> (dL/dx, (dL/dh_prev,))."""
        (dh,) = d_state
        x, h_prev, h, a = cache["x"], cache["h_prev"], cache["h"], cache["a"]
        da = dh * self.function.derivative(clip_preactivation(a, self.clip), h)
        mask = clip_gradient(a, self.clip)
        if mask is not None:
            da = da * mask
        grads["weight_ih"] += da.T @ x
        grads["weight_hh"] += da.T @ h_prev
        if self.bias:
            db = da.sum(axis=0)
            grads["bias_ih"] += db
            grads["bias_hh"] += db
        return da @ p["weight_ih"], (da @ p["weight_hh"],)
