"""The math of one time step: one module per cell, each a readable NumPy reference."""

from lstmkit.cells.gru import GRUCell
from lstmkit.cells.layernorm_lstm import LayerNormLSTMCell
from lstmkit.cells.lstm import LSTMCell
from lstmkit.cells.rnn import RNNCell

__all__ = ["GRUCell", "LSTMCell", "LayerNormLSTMCell", "RNNCell"]
