"""Learning-rate schedules with ``torch.optim.lr_scheduler``'s semantics.

A schedule holds an optimizer from :mod:`lstmkit.optim` and sets its ``lr`` attribute on
every :meth:`step` (once per epoch, or per batch, as the caller decides). As in PyTorch,
constructing a schedule counts as epoch 0 and leaves the learning rate at its starting value,
and the epoch-based schedules use PyTorch's recursive ("chainable") formulas, so that the
learning rates equal PyTorch's to the last bit.

``state_dict()`` returns plain Python numbers and strings only (JSON; ReduceLROnPlateau's
``best`` starts at +-inf, which Python's ``json`` writes as ``Infinity``), and
``load_state_dict`` restores them; the optimizer's own ``lr`` is saved with the optimizer.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any, Literal

from lstmkit.optim import Optimizer

__all__ = ["CosineAnnealingLR", "LRSchedule", "ReduceLROnPlateau", "StepLR"]


class LRSchedule:
    """Base class: the optimizer, its starting ``base_lr`` and the epoch counter ``last_epoch``.

    Subclasses list their saved attributes in ``_STATE`` and implement ``_next_lr()``, the
    learning rate for the new ``last_epoch`` given the optimizer's current one.
    """

    _STATE: tuple[str, ...] = ("base_lr", "last_epoch")

    def __init__(self, optimizer: Optimizer) -> None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(
                f"a schedule needs an lstmkit.optim optimizer, got {type(optimizer).__name__}"
            )
        self.optimizer = optimizer
        self.base_lr = float(optimizer.lr)
        self.last_epoch = 0

    def step(self) -> None:
        """Advance one epoch and set the optimizer's ``lr``."""
        self.last_epoch += 1
        self.optimizer.lr = self._next_lr()

    def _next_lr(self) -> float:
        raise NotImplementedError(f"{type(self).__name__} does not define _next_lr()")

    def get_last_lr(self) -> float:
        """The learning rate the last step set (the optimizer's current ``lr``)."""
        return float(self.optimizer.lr)

    def state_dict(self) -> dict[str, Any]:
        """Return the schedule's settings and counters as plain Python numbers."""
        return {key: getattr(self, key) for key in self._STATE}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned.

        Raises:
            KeyError: if the names differ from this schedule's (another schedule's state).
        """
        if set(state_dict) != set(self._STATE):
            raise KeyError(
                f"{type(self).__name__}.load_state_dict expects keys {sorted(self._STATE)}, "
                f"got {sorted(state_dict)}"
            )
        for key in self._STATE:
            setattr(self, key, state_dict[key])

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v}" for k, v in self.state_dict().items())
        return f"{type(self).__name__}({fields})"


class StepLR(LRSchedule):
    r"""Multiply the learning rate by ``gamma`` every ``step_size`` epochs.

    .. math::
        \gamma_e = \gamma_{e-1} \cdot \text{gamma} \ \text{if } e \bmod \text{step\_size} = 0,
        \quad \text{else } \gamma_{e-1}

    i.e. :math:`\gamma_e = \gamma_0 \cdot \text{gamma}^{\lfloor e / \text{step\_size} \rfloor}`
    when nothing else changes the learning rate.
    """

    _STATE = ("base_lr", "last_epoch", "step_size", "gamma")

    def __init__(self, optimizer: Optimizer, step_size: int, gamma: float = 0.1) -> None:
        super().__init__(optimizer)
        if isinstance(step_size, bool) or not isinstance(step_size, int) or step_size <= 0:
            raise ValueError(f"step_size must be a positive int, got {step_size!r}")
        self.step_size = step_size
        self.gamma = _positive("gamma", gamma)

    def _next_lr(self) -> float:
        lr = float(self.optimizer.lr)
        if self.last_epoch % self.step_size != 0:
            return lr
        return lr * self.gamma


class CosineAnnealingLR(LRSchedule):
    r"""Anneal the learning rate from ``base_lr`` to ``eta_min`` along a half cosine.

    .. math::
        \gamma_e = \eta_{min} + \tfrac{1}{2} (\gamma_0 - \eta_{min})
            \left(1 + \cos \frac{\pi e}{T_{max}}\right)

    computed, as PyTorch does, recursively from the current learning rate,

    .. math::
        \gamma_e = \eta_{min} + (\gamma_{e-1} - \eta_{min})
            \frac{1 + \cos(\pi e / T_{max})}{1 + \cos(\pi (e - 1) / T_{max})},

    with the step out of the minimum, where the ratio would divide by zero, taken as
    :math:`\gamma_e = \gamma_{e-1} + (\gamma_0 - \eta_{min})(1 - \cos(\pi / T_{max})) / 2`.
    Past ``T_max`` the rate climbs back (the cosine continues), as in PyTorch without restarts.
    """

    _STATE = ("base_lr", "last_epoch", "T_max", "eta_min")

    def __init__(self, optimizer: Optimizer, T_max: int, eta_min: float = 0.0) -> None:
        super().__init__(optimizer)
        if isinstance(T_max, bool) or not isinstance(T_max, int) or T_max <= 0:
            raise ValueError(f"T_max must be a positive int, got {T_max!r}")
        self.T_max = T_max
        self.eta_min = _nonnegative("eta_min", eta_min)

    def _next_lr(self) -> float:
        lr = float(self.optimizer.lr)
        e, t_max, eta_min = self.last_epoch, self.T_max, self.eta_min
        if (e - 1 - t_max) % (2 * t_max) == 0:
            return lr + (self.base_lr - eta_min) * (1 - math.cos(math.pi / t_max)) / 2
        return (1 + math.cos(math.pi * e / t_max)) / (1 + math.cos(math.pi * (e - 1) / t_max)) * (
            lr - eta_min
        ) + eta_min


class ReduceLROnPlateau(LRSchedule):
    r"""Divide the learning rate when a metric has stopped improving, as PyTorch's.

    Each :meth:`step` takes the epoch's metric :math:`a`. It is an improvement over the best
    so far when (``mode="min"``) :math:`a < \text{best}\,(1 - \text{threshold})`
    (``threshold_mode="rel"``) or :math:`a < \text{best} - \text{threshold}` (``"abs"``);
    ``mode="max"`` mirrors these. After more than ``patience`` epochs without improvement,
    :math:`\gamma \leftarrow \max(\gamma \cdot \text{factor}, \text{min\_lr})` (skipped when
    the change would be at most ``eps``), followed by ``cooldown`` epochs in which bad epochs
    are not counted.
    """

    _STATE = (
        "base_lr",
        "last_epoch",
        "mode",
        "factor",
        "patience",
        "threshold",
        "threshold_mode",
        "cooldown",
        "min_lr",
        "eps",
        "best",
        "num_bad_epochs",
        "cooldown_counter",
    )

    def __init__(
        self,
        optimizer: Optimizer,
        mode: Literal["min", "max"] = "min",
        factor: float = 0.1,
        patience: int = 10,
        threshold: float = 1e-4,
        threshold_mode: Literal["rel", "abs"] = "rel",
        cooldown: int = 0,
        min_lr: float = 0.0,
        eps: float = 1e-8,
    ) -> None:
        super().__init__(optimizer)
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        if threshold_mode not in ("rel", "abs"):
            raise ValueError(f"threshold_mode must be 'rel' or 'abs', got {threshold_mode!r}")
        factor = _positive("factor", factor)
        if factor >= 1.0:
            raise ValueError(f"factor must be in (0, 1), got {factor}")
        for name, value in (("patience", patience), ("cooldown", cooldown)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an int >= 0, got {value!r}")
        self.mode = mode
        self.factor = factor
        self.patience = patience
        self.threshold = _nonnegative("threshold", threshold)
        self.threshold_mode = threshold_mode
        self.cooldown = cooldown
        self.min_lr = _nonnegative("min_lr", min_lr)
        self.eps = _nonnegative("eps", eps)
        self.best = math.inf if mode == "min" else -math.inf
        self.num_bad_epochs = 0
        self.cooldown_counter = 0

    def step(self, metric: float) -> None:  # type: ignore[override]
        """Record this epoch's ``metric`` (e.g. validation loss) and reduce ``lr`` if due."""
        current = float(metric)
        self.last_epoch += 1
        if self._is_better(current):
            self.best = current
            self.num_bad_epochs = 0
        else:
            self.num_bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0
        if self.num_bad_epochs > self.patience:
            old_lr = float(self.optimizer.lr)
            new_lr = max(old_lr * self.factor, self.min_lr)
            if old_lr - new_lr > self.eps:
                self.optimizer.lr = new_lr
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0

    def _is_better(self, current: float) -> bool:
        if self.mode == "min":
            if self.threshold_mode == "rel":
                return current < self.best * (1.0 - self.threshold)
            return current < self.best - self.threshold
        if self.threshold_mode == "rel":
            return current > self.best * (self.threshold + 1.0)
        return current > self.best + self.threshold


def _nonnegative(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return float(value)


def _positive(name: str, value: Any) -> float:
    value = _nonnegative(name, value)
    if value == 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return value
