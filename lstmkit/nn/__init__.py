"""The layers a model needs around its recurrent core, and the losses.

Every layer follows :class:`lstmkit.nn.Module`: live ``params`` and accumulated ``grads``
dicts under PyTorch's names, ``forward`` / ``backward``, ``train()`` / ``eval()`` and
``state_dict()`` / ``load_state_dict()``.
"""

from lstmkit.nn.dropout import Dropout
from lstmkit.nn.embedding import Embedding
from lstmkit.nn.linear import Linear
from lstmkit.nn.loss import mse_loss, softmax_cross_entropy
from lstmkit.nn.module import Module

__all__ = ["Dropout", "Embedding", "Linear", "Module", "mse_loss", "softmax_cross_entropy"]
