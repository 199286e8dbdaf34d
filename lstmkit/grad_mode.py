"""Whether forward passes keep what backward needs (PyTorch's ``torch.no_grad`` idea)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

_state = threading.local()


def is_grad_enabled() -> bool:
    """True unless inside ``no_grad()``: forward passes then keep their caches for backward."""
    return getattr(_state, "enabled", True)


@contextlib.contextmanager
def no_grad() -> Iterator[None]:
    """Run forward passes without keeping caches: less memory, faster, no backward."""
    previous = is_grad_enabled()
    _state.enabled = False
    try:
        yield
    finally:
        _state.enabled = previous
