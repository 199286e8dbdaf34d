"""The squashing functions of the gates and cells: ONNX's list, plus identity, with derivatives.

``sigmoid(z) = 1 / (1 + exp(-z))`` is computed by SciPy's ``expit``, which is exact to the
last bit where the naive formula over- or underflows (no warnings for |z| up to 1e4 and beyond).
Its derivative is ``sigmoid(z) * (1 - sigmoid(z))``: largest at z = 0, where sigmoid = 0.5 and
the derivative is 0.25. Backpropagating through k sigmoid layers multiplies the gradient by at
most 0.25**k (times the weights): one reason gradients vanish in deep or recurrent networks.

The functions a recurrent layer can use (``lstmkit.LSTM(..., activation=...,
recurrent_activation=...)``) are the ONNX recurrent operators' list, with ONNX's definitions
(docs/Operators.md, LSTM/GRU/RNN), and identity::

    Relu(x)             max(0, x)
    Tanh(x)             tanh(x)
    Sigmoid(x)          1 / (1 + e^-x)
    Affine(x)           alpha * x + beta                  alpha = 1, beta = 0
    LeakyRelu(x)        x if x >= 0 else alpha * x        alpha = 0.01
    ThresholdedRelu(x)  x if x >= alpha else 0            alpha = 1
    ScaledTanh(x)       alpha * tanh(beta * x)            alpha = 1, beta = 1 (lstmkit's choice)
    HardSigmoid(x)      min(max(alpha * x + beta, 0), 1)  alpha = 0.2, beta = 0.5
    Elu(x)              x if x >= 0 else alpha (e^x - 1)  alpha = 1
    Softsign(x)         x / (1 + |x|)
    Softplus(x)         log(1 + e^x)
    Identity(x)         x                                 (Keras' "linear")

The defaults on the right are those of the ONNX operators of the same name (ONNX says its
recurrent operators default to them), except ScaledTanh, for which ONNX defines none. Names
are matched without regard to case ("tanh", "Tanh", "LEAKYRELU"). Keras' spellings with an
underscore name Keras' functions, with Keras' defaults: ``"hard_sigmoid"`` is Keras 3's
``x / 6 + 0.5`` clipped (HardSigmoid with alpha = 1/6, beta = 0.5) and ``"leaky_relu"`` has
Keras' slope 0.2; ``"linear"`` is identity.

Derivatives are taken where the function is differentiable and, at a kink, from the side the
definition's ``>=`` picks (Relu'(0) = 0 as PyTorch; LeakyRelu'(0) = Elu'(0) = 1;
ThresholdedRelu's jump at alpha is not a gradient). Each derivative is computed from the
pre-activation z and the value y = f(z), so Sigmoid and Tanh reuse y as their usual
``y (1 - y)`` and ``1 - y**2``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from scipy.special import expit as sigmoid

SIGMOID_DERIVATIVE_MAX = 0.25

Array = np.ndarray


def sigmoid_derivative(z: np.ndarray) -> np.ndarray:
    """d sigmoid / dz = s (1 - s), with s = sigmoid(z); never above 0.25 (equal at z = 0)."""
    s = sigmoid(z)
    return s * (1.0 - s)


def tanh_derivative(z: np.ndarray) -> np.ndarray:
    """d tanh / dz = 1 - tanh(z)^2; never above 1 (equal at z = 0)."""
    return 1.0 - np.tanh(z) ** 2


class ActivationFunction(NamedTuple):
    """One entry of ``FUNCTIONS``: f(z, alpha, beta), f'(z, y, alpha, beta) with y = f(z),
    and the default alpha and beta (None: the function takes no such parameter)."""

    f: Callable[[Array, Any, Any], Array]
    df: Callable[[Array, Array, Any, Any], Array]
    alpha: float | None
    beta: float | None


def _one(z: Array) -> Array:
    return np.ones_like(z)


FUNCTIONS: dict[str, ActivationFunction] = {
    "Relu": ActivationFunction(
        lambda z, a, b: np.maximum(z, 0.0),
        lambda z, y, a, b: (z > 0).astype(z.dtype), None, None),
    "Tanh": ActivationFunction(
        lambda z, a, b: np.tanh(z),
        lambda z, y, a, b: 1.0 - y**2, None, None),
    "Sigmoid": ActivationFunction(
        lambda z, a, b: sigmoid(z),
        lambda z, y, a, b: y * (1.0 - y), None, None),
    "Affine": ActivationFunction(
        lambda z, a, b: a * z + b,
        lambda z, y, a, b: np.full_like(z, a), 1.0, 0.0),
    "LeakyRelu": ActivationFunction(
        lambda z, a, b: np.where(z >= 0, z, a * z),
        lambda z, y, a, b: np.where(z >= 0, 1.0, a).astype(z.dtype), 0.01, None),
    "ThresholdedRelu": ActivationFunction(
        lambda z, a, b: np.where(z >= a, z, 0.0).astype(z.dtype),
        lambda z, y, a, b: (z >= a).astype(z.dtype), 1.0, None),
    "ScaledTanh": ActivationFunction(
        lambda z, a, b: a * np.tanh(b * z),
        lambda z, y, a, b: a * b * (1.0 - np.tanh(b * z) ** 2), 1.0, 1.0),
    "HardSigmoid": ActivationFunction(
        lambda z, a, b: np.clip(a * z + b, 0.0, 1.0),
        lambda z, y, a, b: np.where((a * z + b > 0) & (a * z + b < 1), a, 0.0).astype(z.dtype),
        0.2, 0.5),
    "Elu": ActivationFunction(
        lambda z, a, b: np.where(z >= 0, z, a * np.expm1(np.minimum(z, 0.0))),
        lambda z, y, a, b: np.where(z >= 0, 1.0, a * np.exp(np.minimum(z, 0.0))).astype(
            z.dtype), 1.0, None),
    "Softsign": ActivationFunction(
        lambda z, a, b: z / (1.0 + np.abs(z)),
        lambda z, y, a, b: 1.0 / (1.0 + np.abs(z)) ** 2, None, None),
    "Softplus": ActivationFunction(
        lambda z, a, b: np.logaddexp(0.0, z),
        lambda z, y, a, b: sigmoid(z), None, None),
    "Identity": ActivationFunction(
        lambda z, a, b: z,
        lambda z, y, a, b: _one(z), None, None),
}

# lower-cased name -> (canonical name, alpha, beta): ONNX's names without regard to case;
# Keras' underscore spellings with Keras' own defaults
_ALIASES: dict[str, tuple[str, float | None, float | None]] = {
    **{name.lower(): (name, None, None) for name in FUNCTIONS},
    "linear": ("Identity", None, None),
    "hard_sigmoid": ("HardSigmoid", 1.0 / 6.0, 0.5),
    "leaky_relu": ("LeakyRelu", 0.2, None),
}

NAMES = tuple(FUNCTIONS)  # the canonical names


@dataclass(frozen=True)
class Activation:
    """A function of ``FUNCTIONS`` with its parameters: ``Activation("LeakyRelu", alpha=0.1)``.

    ``name`` is matched without regard to case (see the module's docstring for the names and
    Keras' spellings); a parameter left None takes the function's default, and a parameter the
    function does not take must stay None. The instance holds the canonical name and the
    resolved parameters, so two spellings of the same function compare equal.
    ``act(z)`` is the function, ``act.derivative(z, y)`` its derivative (y = act(z)).
    """

    name: str
    alpha: float | None = None
    beta: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise TypeError(f"an activation is named by a string, got {self.name!r}")
        key = self.name.lower()
        if key not in _ALIASES:
            raise ValueError(
                f"unknown activation {self.name!r}; expected one of {', '.join(NAMES)} "
                "(any case), or Keras' 'linear', 'hard_sigmoid', 'leaky_relu'"
            )
        canonical, keras_alpha, keras_beta = _ALIASES[key]
        entry = FUNCTIONS[canonical]
        resolved = []
        for what, given, keras, default in (("alpha", self.alpha, keras_alpha, entry.alpha),
                                            ("beta", self.beta, keras_beta, entry.beta)):
            if given is None:
                resolved.append(keras if keras is not None else default)
                continue
            if default is None:
                raise ValueError(f"{canonical} takes no {what}, got {what}={given!r}")
            if isinstance(given, bool) or not isinstance(given, (int, float, np.number)):
                raise TypeError(f"{canonical}'s {what} must be a real number, got {given!r}")
            if not np.isfinite(given):
                raise ValueError(f"{canonical}'s {what} must be finite, got {given!r}")
            resolved.append(float(given))
        object.__setattr__(self, "name", canonical)
        object.__setattr__(self, "alpha", resolved[0])
        object.__setattr__(self, "beta", resolved[1])

    @property
    def parameters(self) -> tuple[str, ...]:
        """The parameters this function takes: (), ("alpha",) or ("alpha", "beta")."""
        entry = FUNCTIONS[self.name]
        return tuple(n for n, d in (("alpha", entry.alpha), ("beta", entry.beta))
                     if d is not None)

    def __call__(self, z: Array) -> Array:
        return FUNCTIONS[self.name].f(z, self.alpha, self.beta)

    def derivative(self, z: Array, y: Array) -> Array:
        """f'(z), given y = f(z) (Sigmoid and Tanh read y only)."""
        return FUNCTIONS[self.name].df(z, y, self.alpha, self.beta)

    def __str__(self) -> str:
        params = ", ".join(f"{n}={getattr(self, n):g}" for n in self.parameters)
        return f"{self.name}({params})" if params else self.name

    def to_config(self) -> dict[str, Any]:
        """A JSON-able description that ``Activation(**config)`` turns back into this one."""
        return {"name": self.name, **{n: getattr(self, n) for n in self.parameters}}


TANH = Activation("Tanh")
SIGMOID = Activation("Sigmoid")
RELU = Activation("Relu")
IDENTITY = Activation("Identity")


def get(spec: Any, alpha: float | None = None, beta: float | None = None) -> Activation:
    """An ``Activation`` from a name, an ``Activation`` or a config dict (``to_config``)."""
    if isinstance(spec, Activation):
        if alpha is not None or beta is not None:
            raise ValueError(f"{spec} already holds its parameters; pass alpha/beta with a name")
        return spec
    if isinstance(spec, dict):
        return Activation(**spec)
    if isinstance(spec, str):
        return Activation(spec, alpha, beta)
    raise TypeError(
        f"an activation must be a name such as 'tanh', an lstmkit.Activation or a dict, "
        f"got {type(spec).__name__} {spec!r}"
    )


def resolve_functions(
    specs: Sequence[Any], alphas: Sequence[float] | None, betas: Sequence[float] | None,
    what: Sequence[str],
) -> tuple[Activation, ...]:
    """The activations of one layer from its arguments, with ONNX's ``activation_alpha`` /
    ``activation_beta`` convention: the lists are consumed in the order of ``specs`` (ONNX's
    f, g, h), each function that takes an alpha (beta) taking the next value, as ONNX Runtime
    does; a function left without one gets its default. ``what`` names the arguments in errors.
    """
    lists = {"alpha": list(alphas or ()), "beta": list(betas or ())}
    if any(lists.values()) and not all(isinstance(s, str) for s in specs):
        raise ValueError(
            "activation_alpha / activation_beta apply to activations given by name; "
            "an lstmkit.Activation holds its own parameters"
        )
    result = []
    for spec, arg in zip(specs, what):
        try:
            act = get(spec)
        except (TypeError, ValueError) as error:
            raise type(error)(f"{arg}: {error}") from None
        if any(lists.values()):
            params = {n: lists[n].pop(0) for n in act.parameters if lists[n]}
            act = Activation(act.name, **{n: params.get(n, getattr(act, n))
                                          for n in act.parameters})
        result.append(act)
    for n, left in lists.items():
        if left:
            raise ValueError(
                f"activation_{n} has {len(left)} value(s) more than the functions "
                f"{', '.join(str(a) for a in result)} take"
            )
    return tuple(result)


def clip_gradient(z: Array, clip: float | None) -> Array | None:
    """The mask d clip(z) / dz (1 inside [-clip, clip], 0 outside), or None without a clip."""
    return None if clip is None else (np.abs(z) <= clip)


def clip_preactivation(z: Array, clip: float | None) -> Array:
    """ONNX's cell clip: z bounded to [-clip, clip] (z itself when ``clip`` is None)."""
    return z if clip is None else np.clip(z, -clip, clip)


__all__ = ["FUNCTIONS", "IDENTITY", "NAMES", "RELU", "SIGMOID", "SIGMOID_DERIVATIVE_MAX", "TANH",
           "Activation", "ActivationFunction", "clip_gradient", "clip_preactivation", "get",
           "resolve_functions", "sigmoid", "sigmoid_derivative", "tanh_derivative"]
