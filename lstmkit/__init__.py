"""lstmkit: Long Short-Term Memory networks as the literature defines them.

Exact (PyTorch parity), fast on the CPU, and easy to look inside.
"""

from lstmkit.clip import clip_grad_norm, clip_grad_value
from lstmkit.grad_mode import is_grad_enabled, no_grad
from lstmkit.layers import GRU, LSTM, RNN

__version__ = "0.1.0"

__all__ = [
    "GRU",
    "LSTM",
    "RNN",
    "clip_grad_norm",
    "clip_grad_value",
    "is_grad_enabled",
    "no_grad",
]
