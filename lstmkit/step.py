"""Step modules: one time step at a time, with ``torch.nn.LSTMCell``'s interface.

``lstmkit.LSTMCell``, ``GRUCell`` and ``RNNCell`` run one step of the cells of
``lstmkit.cells`` (the readable reference) on their own parameters, so a learner can write the
time loop and backpropagation through time by hand, as the study note's step-by-step exercise
does::

    cell = lstmkit.LSTMCell(D, H)
    state = None                                   # zeros
    for t in range(T):                             # forward, step by step
        h, c = state = cell(x[t], state)           # x[t] (B, D) or unbatched (D,)
    dh, dc = dL_dh_T, np.zeros_like(c)
    for t in reversed(range(T)):                   # backward, the same steps in reverse
        dx_t, (dh, dc) = cell.backward(dh + dL_dh[t], dc)
    # cell.grads now holds the BPTT gradient of the whole sequence

Each call (with gradients enabled, outside ``lstmkit.no_grad()``) pushes its cache onto a stack
and each ``backward`` pops the most recent one, so T calls then T backward calls in reverse
order are exactly backpropagation through time; ``pending_steps`` says how many calls wait for
their backward, ``clear_steps()`` drops them. Parameters have PyTorch's names and shapes
(``weight_ih`` (G*H, D), ``weight_hh`` (G*H, H), ``bias_ih``, ``bias_hh`` (G*H,)), so
``state_dict`` / ``load_state_dict`` go both ways with ``torch.nn.LSTMCell`` / ``GRUCell`` /
``RNNCell``; they are initialised as layer 0 of ``lstmkit.LSTM`` (``GRU``, ``RNN``) with the
same arguments and seed. The cell options are the layers' (docs/options.md), except what a
single step cannot carry (full gate recurrence) and what a layer owns (directions, stacking).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lstmkit.grad_mode import is_grad_enabled
from lstmkit.layers import GRU, LSTM, RNN
from lstmkit.nn.module import Module

Array = np.ndarray


class _StepModule(Module):
    """What the three step modules share: parameters, the cache stack, shape checks."""

    _layer_class: Any = None
    _options: frozenset[str] = frozenset()  # the layer's arguments that shape one step

    def __init__(self, input_size: int, hidden_size: int, bias: bool, dtype: Any,
                 seed: Any, **options: Any) -> None:
        unknown = sorted(set(options) - self._options)
        if unknown:
            raise TypeError(
                f"{type(self).__name__} takes the cell options {sorted(self._options)}; got "
                f"{unknown} (a step module runs one step of one layer and direction)"
            )
        super().__init__()
        layer = self._layer_class(input_size, hidden_size, bias=bias, dtype=dtype, seed=seed,
                                  **options)
        self.input_size, self.hidden_size = layer.input_size, layer.hidden_size
        self.bias, self.dtype = layer.bias, layer.dtype
        self.cell = layer._cells[0]  # the math of one step (lstmkit.cells)
        self.cell_options = layer.cell_options
        for name, value in layer.params.items():
            self.add_param(name.removesuffix("_l0"), value)
        self._steps: list[tuple[dict[str, Array], bool]] = []

    @property
    def pending_steps(self) -> int:
        """Forward calls whose backward has not run yet."""
        return len(self._steps)

    def clear_steps(self) -> None:
        """Drop the caches of the forward calls still waiting for their backward."""
        self._steps.clear()

    def _check(self, value: Any, what: str, width: int) -> Array:
        array = np.asarray(value.detach().cpu().numpy() if hasattr(value, "detach") else value)
        if array.dtype != self.dtype:
            raise TypeError(f"{what} has dtype {array.dtype} but this {type(self).__name__} is "
                            f"{self.dtype}: convert it with .astype(np.{self.dtype})")
        if array.ndim not in (1, 2) or array.shape[-1] != width:
            raise ValueError(f"{what} must be (B, {width}) or unbatched ({width},), got shape "
                             f"{array.shape}")
        return array

    def _step(self, x: Any, state: Any) -> tuple[Array, ...]:
        x = self._check(x, "input", self.input_size)
        unbatched = x.ndim == 1
        xb = x[None] if unbatched else x
        n = len(self.cell.state_names)
        if state is None:
            parts = tuple(np.zeros((xb.shape[0], self.hidden_size), dtype=self.dtype)
                          for _ in range(n))
        else:
            expected = (self.hidden_size,) if unbatched else (xb.shape[0], self.hidden_size)
            parts = tuple(self._check(s, f"state[{k}]", self.hidden_size)
                          for k, s in enumerate(state))
            for k, part in enumerate(parts):
                if part.shape != expected:
                    raise ValueError(f"state[{k}] has shape {part.shape}, expected {expected} "
                                     f"(the input is {x.shape})")
            parts = tuple(p[None] if unbatched else p for p in parts)
        new_state, cache = self.cell.forward(xb, parts, self.params)
        if is_grad_enabled():
            self._steps.append((cache, unbatched))
        return tuple(s[0] if unbatched else s for s in new_state)

    def _backward_step(self, d_state: tuple[Any, ...]) -> tuple[Array, tuple[Array, ...]]:
        if not self._steps:
            raise RuntimeError(
                f"{type(self).__name__}.backward() has no forward call left to go back through "
                "(one backward per forward call, the latest first; calls inside "
                "lstmkit.no_grad() keep nothing)"
            )
        cache, unbatched = self._steps[-1]
        B = cache["x"].shape[0]
        shape = (self.hidden_size,) if unbatched else (B, self.hidden_size)
        parts = []
        for k, d in enumerate(d_state):
            if d is None:
                parts.append(np.zeros((B, self.hidden_size), dtype=self.dtype))
                continue
            d = self._check(d, f"the gradient of state[{k}]", self.hidden_size)
            if d.shape != shape:
                raise ValueError(f"the gradient of state[{k}] has shape {d.shape}, expected "
                                 f"{shape} (the shape of the state the call returned)")
            parts.append(d[None] if unbatched else d)
        self._steps.pop()
        dx, d_prev = self.cell.backward(tuple(parts), cache, self.params, self.grads)
        if unbatched:
            return dx[0], tuple(d[0] for d in d_prev)
        return dx, tuple(d_prev)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.input_size}, {self.hidden_size}, bias={self.bias})"


class LSTMCell(_StepModule):
    """One LSTM step, as ``torch.nn.LSTMCell``: ``h, c = cell(x, (h, c))``.

    Args: ``input_size``, ``hidden_size``, ``bias`` (PyTorch's); the LSTM's cell options as
    keywords (``peepholes``, ``forget_gate``, ``input_gate``, ``output_gate``,
    ``coupled_input_forget``, ``forget_bias``, ``activation``, ``recurrent_activation``,
    ``output_activation``, ``activation_alpha``, ``activation_beta``, ``clip``); ``dtype``,
    ``seed``. ``backward(dh, dc)`` -> ``(dx, (dh_prev, dc_prev))`` for the latest call.
    """

    _layer_class = LSTM
    _options = frozenset({"peepholes", "forget_gate", "input_gate", "output_gate",
                          "coupled_input_forget", "forget_bias", "activation",
                          "recurrent_activation", "output_activation", "activation_alpha",
                          "activation_beta", "clip", "full_gate_recurrence"})

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, *,
                 dtype: Any = "float32", seed: Any = None, **options: Any) -> None:
        if options.get("full_gate_recurrence"):
            raise ValueError("full_gate_recurrence carries the previous step's gates in the "
                             "state, which a step module's (h, c) does not hold; use "
                             "lstmkit.LSTM(..., full_gate_recurrence=True)")
        super().__init__(input_size, hidden_size, bias, dtype, seed, **options)

    def forward(self, x: Any, state: tuple[Any, Any] | None = None) -> tuple[Array, Array]:
        """x (B, D) or (D,); state (h, c), each (B, H) or (H,), zeros if None -> (h, c)."""
        if state is not None and (not isinstance(state, (tuple, list)) or len(state) != 2):
            raise ValueError(f"the LSTMCell's state must be a pair (h, c), got "
                             f"{type(state).__name__}")
        h, c = self._step(x, state)
        return h, c

    def backward(self, dh: Any, dc: Any = None) -> tuple[Array, tuple[Array, Array]]:
        """dL/dh and dL/dc (zeros if None) at the latest call's output ->
        (dL/dx, (dL/dh_prev, dL/dc_prev)); parameter gradients are added into ``grads``."""
        dx, (dh_prev, dc_prev) = self._backward_step((dh, dc))
        return dx, (dh_prev, dc_prev)


class GRUCell(_StepModule):
    """One GRU step, as ``torch.nn.GRUCell``: ``h = cell(x, h)``.

    Options as ``lstmkit.GRU``'s (``linear_before_reset``, ``activation``,
    ``recurrent_activation``, ``activation_alpha``, ``activation_beta``, ``clip``).
    ``backward(dh)`` -> ``(dx, dh_prev)``.
    """

    _layer_class = GRU
    _options = frozenset({"linear_before_reset", "activation", "recurrent_activation",
                          "activation_alpha", "activation_beta", "clip"})

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, *,
                 dtype: Any = "float32", seed: Any = None, **options: Any) -> None:
        super().__init__(input_size, hidden_size, bias, dtype, seed, **options)

    def forward(self, x: Any, h: Any = None) -> Array:
        """x (B, D) or (D,); h (B, H) or (H,), zeros if None -> the new h."""
        return self._step(x, None if h is None else (h,))[0]

    def backward(self, dh: Any) -> tuple[Array, Array]:
        """dL/dh at the latest call's output -> (dL/dx, dL/dh_prev)."""
        dx, (dh_prev,) = self._backward_step((dh,))
        return dx, dh_prev


class RNNCell(GRUCell):
    """One simple-RNN step, as ``torch.nn.RNNCell``: ``h = cell(x, h)``;
    ``nonlinearity`` "tanh" or "relu" (PyTorch's), or ``activation``, ``clip`` as
    ``lstmkit.RNN``'s."""

    _layer_class = RNN
    _options = frozenset({"nonlinearity", "activation", "activation_alpha", "activation_beta",
                          "clip"})

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 nonlinearity: str = "tanh", *, dtype: Any = "float32", seed: Any = None,
                 **options: Any) -> None:
        _StepModule.__init__(self, input_size, hidden_size, bias, dtype, seed,
                             nonlinearity=nonlinearity, **options)
        self.nonlinearity = self.cell.nonlinearity


__all__ = ["GRUCell", "LSTMCell", "RNNCell"]
