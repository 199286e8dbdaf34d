"""Optimizers with PyTorch's update rules, and gradient clipping.

An optimizer takes a model's ``params`` and ``grads`` dicts (same names, same shapes) and
updates every parameter array *in place* on :meth:`Optimizer.step`, so every holder of an
array (a tied layer, a second model view) sees the change. float32 parameters stay float32:
hyperparameters are Python floats, which NumPy does not let widen an array's dtype.

The learning rate is the plain attribute ``lr``, read at every step, which is what the
schedules in :mod:`lstmkit.schedules` set. Each update follows ``torch.optim``'s single-tensor
implementation operation by operation, with one parameter group.

``state_dict()`` holds only NumPy arrays and plain Python numbers and bools::

    {"hyperparameters": {"lr": 0.001, "betas": [0.9, 0.999], ...},   # JSON
     "step": 12,                                                      # JSON
     "buffers": {"exp_avg": {"lstm.weight_ih_l0": ndarray, ...}, ...}}  # safetensors

so it can be saved as safetensors + JSON, and an optimizer that loads it continues
bit for bit as if it had never stopped.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from lstmkit.clip import clip_grad_norm, clip_grad_value

__all__ = [
    "SGD",
    "Adagrad",
    "Adam",
    "AdamW",
    "Optimizer",
    "RMSprop",
    "clip_grad_norm",
    "clip_grad_value",
]

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


class Optimizer:
    """Base class: holds the params/grads dicts, the step count and the per-parameter buffers.

    Subclasses list their hyperparameter names in ``_HYPERPARAMETERS`` (the constructor's
    keyword arguments) and their buffer names in ``_BUFFERS``, validate in ``__init__``, and
    implement ``_update(name, param, grad, lr)`` for one parameter.
    """

    _HYPERPARAMETERS: tuple[str, ...] = ("lr",)
    _BUFFERS: tuple[str, ...] = ()

    def __init__(
        self, params: Mapping[str, np.ndarray], grads: Mapping[str, np.ndarray], lr: float
    ) -> None:
        _check_params_and_grads(params, grads)
        self.params = params
        self.grads = grads
        self.lr = _nonnegative("lr", lr)
        self.step_count = 0
        # buffer name -> parameter name -> array, created on a parameter's first update
        self.state: dict[str, dict[str, np.ndarray]] = {name: {} for name in self._BUFFERS}

    def step(self) -> None:
        """Update every parameter in place from its gradient, with the current ``lr``."""
        lr = float(self.lr)
        self.step_count += 1
        for name, param in self.params.items():
            self._update(name, param, self.grads[name], lr)

    def _update(self, name: str, param: np.ndarray, grad: np.ndarray, lr: float) -> None:
        raise NotImplementedError(f"{type(self).__name__} does not define _update()")

    def _buffer(self, buffer: str, name: str, like: np.ndarray, fill: float = 0.0) -> np.ndarray:
        """Return buffer ``buffer`` of parameter ``name``, creating it filled with ``fill``."""
        store = self.state[buffer]
        if name not in store:
            store[name] = np.full_like(like, fill)
        return store[name]

    def zero_grad(self) -> None:
        """Set every gradient array to zero in place."""
        for grad in self.grads.values():
            grad.fill(0)

    def hyperparameters(self) -> dict[str, Any]:
        """Return the hyperparameters as plain Python numbers, bools and lists."""
        out: dict[str, Any] = {}
        for key in self._HYPERPARAMETERS:
            value = getattr(self, key)
            out[key] = [float(v) for v in value] if isinstance(value, tuple) else value
        out["lr"] = float(self.lr)
        return out

    def state_dict(self) -> dict[str, Any]:
        """Return hyperparameters, step count and copies of all buffers (see module docs)."""
        return {
            "hyperparameters": self.hyperparameters(),
            "step": self.step_count,
            "buffers": {
                buffer: {name: array.copy() for name, array in arrays.items()}
                for buffer, arrays in self.state.items()
            },
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore hyperparameters, step count and buffers saved by :meth:`state_dict`.

        Raises:
            KeyError: on missing or unknown entries (another optimizer's state, say).
            ValueError: on invalid hyperparameters or a buffer of the wrong shape.
        """
        cls = type(self).__name__
        if set(state_dict) != {"hyperparameters", "step", "buffers"}:
            raise KeyError(
                f"{cls}.load_state_dict expects keys ['hyperparameters', 'step', 'buffers'], "
                f"got {sorted(state_dict)}"
            )
        hyper = dict(state_dict["hyperparameters"])
        if set(hyper) != set(self._HYPERPARAMETERS):
            raise KeyError(
                f"{cls}.load_state_dict: hyperparameters {sorted(hyper)} do not match "
                f"{cls}'s {sorted(self._HYPERPARAMETERS)} (state of another optimizer?)"
            )
        step = state_dict["step"]
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
            raise ValueError(f"{cls}.load_state_dict: step must be an int >= 0, got {step!r}")
        buffers = state_dict["buffers"]
        unknown = sorted(set(buffers) - set(self._BUFFERS))
        if unknown:
            raise KeyError(
                f"{cls}.load_state_dict: unknown buffers {unknown}; {cls} has {self._BUFFERS}"
            )
        loaded: dict[str, dict[str, np.ndarray]] = {name: {} for name in self._BUFFERS}
        for buffer, arrays in buffers.items():
            for name, value in arrays.items():
                if name not in self.params:
                    raise KeyError(
                        f"{cls}.load_state_dict: buffer {buffer!r} is for parameter {name!r}, "
                        f"which this optimizer does not hold"
                    )
                value = np.asarray(value)
                if value.shape != self.params[name].shape:
                    raise ValueError(
                        f"{cls}.load_state_dict: buffer {buffer!r} of {name!r} has shape "
                        f"{value.shape}, expected {self.params[name].shape}"
                    )
                loaded[buffer][name] = value.astype(self.params[name].dtype, copy=True)
        # Building a fresh optimizer runs the constructor's checks on the loaded values.
        checked = type(self)(self.params, self.grads, **hyper)
        for key in self._HYPERPARAMETERS:
            setattr(self, key, getattr(checked, key))
        self.step_count = int(step)
        self.state = loaded

    def __repr__(self) -> str:
        hyper = ", ".join(f"{k}={v}" for k, v in self.hyperparameters().items())
        return f"{type(self).__name__}({hyper})"


class SGD(Optimizer):
    r"""Stochastic gradient descent with optional momentum, as ``torch.optim.SGD``.

    With :math:`g_t` the gradient and :math:`\theta` the parameter:

    .. math::
        g_t &\leftarrow g_t + \lambda \theta_{t-1} \quad (\text{weight\_decay } \lambda)\\
        b_t &= g_t \ (t = 1), \qquad b_t = \mu b_{t-1} + (1 - \tau) g_t \ (t > 1)\\
        g_t &\leftarrow g_t + \mu b_t \ (\text{nesterov}), \qquad g_t \leftarrow b_t \
            (\text{otherwise})\\
        \theta_t &= \theta_{t-1} - \gamma g_t

    where the momentum lines apply only when :math:`\mu > 0` (``momentum``), :math:`\tau` is
    ``dampening`` and :math:`\gamma` is ``lr``. Buffer: ``momentum_buffer``.
    """

    _HYPERPARAMETERS = ("lr", "momentum", "dampening", "weight_decay", "nesterov")
    _BUFFERS = ("momentum_buffer",)

    def __init__(
        self,
        params: Mapping[str, np.ndarray],
        grads: Mapping[str, np.ndarray],
        lr: float = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
    ) -> None:
        super().__init__(params, grads, lr)
        self.momentum = _nonnegative("momentum", momentum)
        self.dampening = _finite("dampening", dampening)
        self.weight_decay = _nonnegative("weight_decay", weight_decay)
        self.nesterov = _flag("nesterov", nesterov)
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError(
                "Nesterov momentum requires momentum > 0 and dampening = 0, got "
                f"momentum={self.momentum}, dampening={self.dampening}"
            )

    def _update(self, name: str, param: np.ndarray, grad: np.ndarray, lr: float) -> None:
        d_p = grad
        if self.weight_decay != 0:
            d_p = d_p + self.weight_decay * param
        if self.momentum != 0:
            store = self.state["momentum_buffer"]
            if name not in store:
                store[name] = buf = d_p.copy()
            else:
                buf = store[name]
                buf *= self.momentum
                buf += (1 - self.dampening) * d_p
            d_p = d_p + self.momentum * buf if self.nesterov else buf
        param -= lr * d_p


class Adam(Optimizer):
    r"""Adam (Kingma & Ba 2015), optionally AMSGrad, as ``torch.optim.Adam``.

    .. math::
        g_t &\leftarrow g_t + \lambda \theta_{t-1} \quad (\text{weight\_decay } \lambda)\\
        m_t &= \beta_1 m_{t-1} + (1 - \beta_1) g_t \qquad
        v_t = \beta_2 v_{t-1} + (1 - \beta_2) g_t^2\\
        \hat v_t &= \max(\hat v_{t-1}, v_t) \ (\text{amsgrad}), \qquad \hat v_t = v_t \
            (\text{otherwise})\\
        \theta_t &= \theta_{t-1} - \frac{\gamma}{1 - \beta_1^t} \cdot
            \frac{m_t}{\sqrt{\hat v_t} / \sqrt{1 - \beta_2^t} + \epsilon}

    Buffers: ``exp_avg`` (m), ``exp_avg_sq`` (v), ``max_exp_avg_sq`` (amsgrad only).

    With the fused kernels on (``lstmkit.engine.kernels``, the default), each parameter's update is
    one compiled pass (``lstmkit.engine.kernels.adam``) with the same result to the bit.
    """

    _HYPERPARAMETERS = ("lr", "betas", "eps", "weight_decay", "amsgrad")
    _BUFFERS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
    _decoupled_weight_decay = False

    def __init__(
        self,
        params: Mapping[str, np.ndarray],
        grads: Mapping[str, np.ndarray],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
    ) -> None:
        super().__init__(params, grads, lr)
        self.betas = _betas(betas)
        self.eps = _nonnegative("eps", eps)
        self.weight_decay = _nonnegative("weight_decay", weight_decay)
        self.amsgrad = _flag("amsgrad", amsgrad)

    def _update(self, name: str, param: np.ndarray, grad: np.ndarray, lr: float) -> None:
        if self._update_fused(name, param, grad, lr):
            return
        beta1, beta2 = self.betas
        step = self.step_count
        if self.weight_decay != 0:
            if self._decoupled_weight_decay:
                param *= 1 - lr * self.weight_decay
            else:
                grad = grad + self.weight_decay * param
        exp_avg = self._buffer("exp_avg", name, param)
        exp_avg_sq = self._buffer("exp_avg_sq", name, param)
        exp_avg += (1 - beta1) * (grad - exp_avg)  # torch's lerp towards g
        exp_avg_sq *= beta2
        exp_avg_sq += (1 - beta2) * grad * grad
        step_size = lr / (1 - beta1**step)
        bias_correction2_sqrt = (1 - beta2**step) ** 0.5
        if self.amsgrad:
            max_exp_avg_sq = self._buffer("max_exp_avg_sq", name, param)
            np.maximum(max_exp_avg_sq, exp_avg_sq, out=max_exp_avg_sq)
            denom = np.sqrt(max_exp_avg_sq)
        else:
            denom = np.sqrt(exp_avg_sq)
        denom /= bias_correction2_sqrt
        denom += self.eps
        param -= step_size * (exp_avg / denom)

    def _update_fused(self, name: str, param: np.ndarray, grad: np.ndarray, lr: float) -> bool:
        """The same update as ``_update`` in one compiled pass (``engine.kernels.adam``), equal to
        the bit; False (nothing done) when the kernels are off or the arrays do not qualify
        (float32/float64, C-contiguous)."""
        from lstmkit.engine import kernels

        adam = kernels.fast_path("adam", param, grad)
        if adam is None:
            return False
        exp_avg = self._buffer("exp_avg", name, param)
        exp_avg_sq = self._buffer("exp_avg_sq", name, param)
        max_exp_avg_sq = self._buffer("max_exp_avg_sq", name, param) if self.amsgrad else None
        if not adam.supports(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq):
            return False
        beta1, beta2 = self.betas
        adam.adam_update(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, lr=lr, beta1=beta1,
                         beta2=beta2, eps=self.eps, weight_decay=self.weight_decay,
                         decoupled=self._decoupled_weight_decay, step=self.step_count)
        return True


class AdamW(Adam):
    r"""Adam with decoupled weight decay (Loshchilov & Hutter 2019), as ``torch.optim.AdamW``.

    The same update as :class:`Adam`, except that the weight decay does not enter the
    gradient; before the Adam step the parameter shrinks:
    :math:`\theta_{t-1} \leftarrow \theta_{t-1} (1 - \gamma \lambda)`. Default
    ``weight_decay=1e-2`` as in PyTorch.
    """

    _decoupled_weight_decay = True

    def __init__(
        self,
        params: Mapping[str, np.ndarray],
        grads: Mapping[str, np.ndarray],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
    ) -> None:
        super().__init__(params, grads, lr, betas, eps, weight_decay, amsgrad)


class RMSprop(Optimizer):
    r"""RMSprop (Hinton 2012; centered: Graves 2013), as ``torch.optim.RMSprop``.

    .. math::
        g_t &\leftarrow g_t + \lambda \theta_{t-1} \quad (\text{weight\_decay } \lambda)\\
        v_t &= \alpha v_{t-1} + (1 - \alpha) g_t^2 \qquad
        \bar g_t = \alpha \bar g_{t-1} + (1 - \alpha) g_t \ (\text{centered})\\
        d_t &= \sqrt{v_t - \bar g_t^2} + \epsilon \ (\text{centered}), \qquad
        d_t = \sqrt{v_t} + \epsilon \ (\text{otherwise})\\
        b_t &= \mu b_{t-1} + g_t / d_t, \ \theta_t = \theta_{t-1} - \gamma b_t \
            (\mu > 0), \qquad \theta_t = \theta_{t-1} - \gamma g_t / d_t \ (\mu = 0)

    Buffers: ``square_avg`` (v), ``grad_avg`` (centered), ``momentum_buffer`` (momentum > 0).
    """

    _HYPERPARAMETERS = ("lr", "alpha", "eps", "weight_decay", "momentum", "centered")
    _BUFFERS = ("square_avg", "grad_avg", "momentum_buffer")

    def __init__(
        self,
        params: Mapping[str, np.ndarray],
        grads: Mapping[str, np.ndarray],
        lr: float = 1e-2,
        alpha: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        momentum: float = 0.0,
        centered: bool = False,
    ) -> None:
        super().__init__(params, grads, lr)
        self.alpha = _nonnegative("alpha", alpha)
        self.eps = _nonnegative("eps", eps)
        self.weight_decay = _nonnegative("weight_decay", weight_decay)
        self.momentum = _nonnegative("momentum", momentum)
        self.centered = _flag("centered", centered)

    def _update(self, name: str, param: np.ndarray, grad: np.ndarray, lr: float) -> None:
        alpha = self.alpha
        if self.weight_decay != 0:
            grad = grad + self.weight_decay * param
        square_avg = self._buffer("square_avg", name, param)
        square_avg *= alpha
        square_avg += (1 - alpha) * grad * grad
        if self.centered:
            grad_avg = self._buffer("grad_avg", name, param)
            grad_avg += (1 - alpha) * (grad - grad_avg)  # torch's lerp towards g
            avg = np.sqrt(square_avg - grad_avg * grad_avg)
        else:
            avg = np.sqrt(square_avg)
        avg += self.eps
        if self.momentum > 0:
            buf = self._buffer("momentum_buffer", name, param)
            buf *= self.momentum
            buf += grad / avg
            param -= lr * buf
        else:
            param -= lr * (grad / avg)


class Adagrad(Optimizer):
    r"""Adagrad (Duchi et al. 2011), as ``torch.optim.Adagrad``.

    .. math::
        g_t &\leftarrow g_t + \lambda \theta_{t-1} \quad (\text{weight\_decay } \lambda)\\
        \tilde\gamma_t &= \gamma / (1 + (t - 1) \eta) \quad (\text{lr\_decay } \eta)\\
        s_t &= s_{t-1} + g_t^2, \quad s_0 = \text{initial\_accumulator\_value}\\
        \theta_t &= \theta_{t-1} - \tilde\gamma_t \, g_t / (\sqrt{s_t} + \epsilon)

    Buffer: ``sum`` (s).
    """

    _HYPERPARAMETERS = ("lr", "lr_decay", "weight_decay", "initial_accumulator_value", "eps")
    _BUFFERS = ("sum",)

    def __init__(
        self,
        params: Mapping[str, np.ndarray],
        grads: Mapping[str, np.ndarray],
        lr: float = 1e-2,
        lr_decay: float = 0.0,
        weight_decay: float = 0.0,
        initial_accumulator_value: float = 0.0,
        eps: float = 1e-10,
    ) -> None:
        super().__init__(params, grads, lr)
        self.lr_decay = _nonnegative("lr_decay", lr_decay)
        self.weight_decay = _nonnegative("weight_decay", weight_decay)
        self.initial_accumulator_value = _nonnegative(
            "initial_accumulator_value", initial_accumulator_value
        )
        self.eps = _nonnegative("eps", eps)

    def _update(self, name: str, param: np.ndarray, grad: np.ndarray, lr: float) -> None:
        if self.weight_decay != 0:
            grad = grad + self.weight_decay * param
        clr = lr / (1 + (self.step_count - 1) * self.lr_decay)
        state_sum = self._buffer("sum", name, param, fill=self.initial_accumulator_value)
        state_sum += grad * grad
        std = np.sqrt(state_sum)
        std += self.eps
        param -= clr * (grad / std)


def _check_params_and_grads(params: Any, grads: Any) -> None:
    if not isinstance(params, Mapping) or not isinstance(grads, Mapping):
        raise TypeError(
            "an optimizer takes the model's params and grads dicts (name -> ndarray), got "
            f"{type(params).__name__} and {type(grads).__name__}"
        )
    if not params:
        raise ValueError("the optimizer got an empty params dict")
    if list(params) != list(grads):
        missing = [name for name in params if name not in grads]
        extra = [name for name in grads if name not in params]
        if missing or extra:
            raise KeyError(
                f"params and grads must have the same names: grads lacks {missing}, "
                f"has extra {extra}"
            )
    seen: dict[int, str] = {}
    for name, param in params.items():
        grad = grads[name]
        if not isinstance(param, np.ndarray) or not isinstance(grad, np.ndarray):
            raise TypeError(f"params[{name!r}] and grads[{name!r}] must be NumPy arrays")
        if param.dtype not in _FLOAT_DTYPES or grad.dtype != param.dtype:
            raise TypeError(
                f"params[{name!r}] must be float32 or float64 with a gradient of the same "
                f"dtype, got {param.dtype} and {grad.dtype}"
            )
        if grad.shape != param.shape:
            raise ValueError(
                f"grads[{name!r}] has shape {grad.shape}, params[{name!r}] has {param.shape}"
            )
        if id(param) in seen:
            raise ValueError(
                f"params[{name!r}] is the same array as params[{seen[id(param)]!r}]; it would "
                "be updated twice (a tied weight must be listed once)"
            )
        seen[id(param)] = name


def _finite(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return float(value)


def _nonnegative(name: str, value: Any) -> float:
    value = _finite(name, value)
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def _flag(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {value!r}")
    return bool(value)


def _betas(betas: Any) -> tuple[float, float]:
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
    beta1, beta2 = (_finite(f"betas[{i}]", b) for i, b in enumerate(betas))
    for i, beta in enumerate((beta1, beta2)):
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"betas[{i}] must be in [0, 1), got {beta}")
    return beta1, beta2
