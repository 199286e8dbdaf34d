"""The small base class every lstmkit layer follows, and the argument helpers they share.

A module holds

* ``params``: ``dict[str, np.ndarray]``, the live parameters under PyTorch's names. Optimizers
  update these arrays in place, so every holder of an array sees the change.
* ``grads``: the same names and shapes; ``backward`` *adds* into these arrays and
  ``zero_grad()`` zeroes them in place (the arrays are never replaced).
* ``forward(...)`` (also ``__call__``), ``backward(...)``, ``train()`` / ``eval()`` with the
  ``training`` flag, and ``state_dict()`` / ``load_state_dict()``.

A module built from others registers them with :meth:`Module.add_module`: their parameters and
gradients then appear in the parent's dicts under ``"<child>.<name>"`` (the same array objects),
and ``train()`` / ``eval()`` reach the children.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

import numpy as np

__all__ = ["Module", "check_positive_int", "resolve_dtype", "resolve_rng"]

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

M = TypeVar("M", bound="Module")


def resolve_dtype(dtype: Any) -> np.dtype:
    """Return ``dtype`` as a NumPy float dtype, accepting ``"float32"``/``"float64"`` or types.

    Raises:
        ValueError: for anything other than float32 or float64.
    """
    message = f"dtype must be 'float32' or 'float64', got {dtype!r}"
    if dtype is None:  # np.dtype(None) would silently give float64
        raise ValueError(message)
    try:
        resolved = np.dtype(dtype)
    except TypeError as exc:
        raise ValueError(message) from exc
    if resolved not in _FLOAT_DTYPES:
        raise ValueError(message)
    return resolved


def resolve_rng(seed: int | np.random.Generator | None) -> np.random.Generator:
    """Return a Generator: ``seed`` itself if it is one, else ``np.random.default_rng(seed)``.

    Raises:
        TypeError: if ``seed`` is neither None, an int nor a ``np.random.Generator``.
    """
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is None or (isinstance(seed, (int, np.integer)) and not isinstance(seed, bool)):
        return np.random.default_rng(seed)
    raise TypeError(
        f"seed must be None, an int or a np.random.Generator, got {type(seed).__name__}"
    )


def check_positive_int(name: str, value: object) -> int:
    """Return ``value`` as an int if it is a positive integer, else raise a ValueError."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


class Module:
    """Base class: parameter and gradient dicts, train/eval mode, state dicts.

    Subclasses fill ``params`` and ``grads`` through :meth:`add_param` and implement
    ``forward`` and ``backward``.
    """

    params: dict[str, np.ndarray]
    grads: dict[str, np.ndarray]
    training: bool

    def __init__(self) -> None:
        self.params = {}
        self.grads = {}
        self.training = True
        self._modules: dict[str, Module] = {}

    def add_param(self, name: str, value: np.ndarray) -> np.ndarray:
        """Register ``value`` as parameter ``name`` with a zeroed gradient of the same shape."""
        if name in self.params:
            raise ValueError(f"{type(self).__name__} already has a parameter named {name!r}")
        self.params[name] = value
        self.grads[name] = np.zeros_like(value)
        return value

    def add_module(self, name: str, module: Module) -> Module:
        """Register ``module`` as child ``name``; its params/grads join ours as ``name.<key>``.

        The entries are the child's own arrays, so the parent's optimizer updates the child.
        Register a child after it is fully built (after weight tying, for instance).
        """
        if not isinstance(module, Module):
            raise TypeError(f"add_module expects a Module, got {type(module).__name__}")
        if not name or "." in name:
            raise ValueError(f"a child module name must be non-empty without '.', got {name!r}")
        if name in self._modules:
            raise ValueError(f"{type(self).__name__} already has a child named {name!r}")
        self._modules[name] = module
        for key, value in module.params.items():
            self.params[f"{name}.{key}"] = value
            self.grads[f"{name}.{key}"] = module.grads[key]
        return module

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Compute the output; subclasses define the arguments and cache what backward needs."""
        raise NotImplementedError(f"{type(self).__name__} does not define forward()")

    def backward(self, *args: Any, **kwargs: Any) -> Any:
        """Accumulate parameter gradients into ``grads`` and return the input gradient."""
        raise NotImplementedError(f"{type(self).__name__} does not define backward()")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.forward(*args, **kwargs)

    def train(self: M, mode: bool = True) -> M:
        """Set training mode (dropout active) on this module and its children; return self."""
        self.training = bool(mode)
        for child in self._modules.values():
            child.train(mode)
        return self

    def eval(self: M) -> M:
        """Set evaluation mode (dropout off); the same as ``train(False)``."""
        return self.train(False)

    def zero_grad(self) -> None:
        """Set every gradient array to zero in place."""
        for grad in self.grads.values():
            grad.fill(0)

    def state_dict(self) -> dict[str, np.ndarray]:
        """Return a copy of every parameter, keyed by its PyTorch name."""
        return {name: value.copy() for name, value in self.params.items()}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Copy ``state_dict`` into the existing parameter arrays (so other holders see it).

        Accepts ndarrays or anything ``np.asarray`` takes. The names must match exactly and
        each shape must equal the parameter's; values are cast to the module's dtype.

        Raises:
            KeyError: on missing or unexpected names (all of them are listed).
            ValueError: on a shape mismatch.
        """
        missing = [name for name in self.params if name not in state_dict]
        unexpected = [name for name in state_dict if name not in self.params]
        if missing or unexpected:
            raise KeyError(
                f"{type(self).__name__}.load_state_dict: missing keys {missing}, "
                f"unexpected keys {unexpected}; expected exactly {list(self.params)}"
            )
        arrays = {name: np.asarray(state_dict[name]) for name in self.params}
        for name, value in arrays.items():
            if value.shape != self.params[name].shape:
                raise ValueError(
                    f"{type(self).__name__}.load_state_dict: {name!r} has shape {value.shape}, "
                    f"expected {self.params[name].shape}"
                )
        for name, value in arrays.items():
            np.copyto(self.params[name], value, casting="unsafe")
