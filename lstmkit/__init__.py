"""lstmkit: Long Short-Term Memory networks as the literature defines them.

Exact (PyTorch parity), fast on the CPU, and easy to look inside.
"""

import lstmkit._openblas  # noqa: F401  (first: SciPy's OpenBLAS with a short idle wait)
from lstmkit.activations import Activation
from lstmkit.clip import clip_grad_norm, clip_grad_value
from lstmkit.engine import Plan, get_num_threads, set_num_threads
from lstmkit.grad_mode import is_grad_enabled, no_grad
from lstmkit.interop import export_onnx, from_keras, from_onnx, from_torch, to_torch
from lstmkit.layers import GRU, LSTM, RNN
from lstmkit.models import CharLM, SequenceModel
from lstmkit.step import GRUCell, LSTMCell, RNNCell

__version__ = "0.1.0"

__all__ = [
    "Activation",
    "GRU",
    "GRUCell",
    "LSTM",
    "LSTMCell",
    "RNN",
    "RNNCell",
    "CharLM",
    "Plan",
    "SequenceModel",
    "clip_grad_norm",
    "clip_grad_value",
    "export_onnx",
    "get_num_threads",
    "from_keras",
    "from_onnx",
    "from_torch",
    "to_torch",
    "is_grad_enabled",
    "no_grad",
    "set_num_threads",
]
