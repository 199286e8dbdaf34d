"""Whole models built from the layers: a character language model and a sequence model.

``CharLM``: Embedding -> stacked LSTM / GRU / RNN -> Dropout -> Linear (optionally tied), the
char-rnn architecture. ``SequenceModel``: a recurrent layer over real-valued inputs with a linear
read-out, either at every step or at each sequence's own last step (the classic experiments).
Both keep the ``Module`` conventions: ``params``/``grads`` under dotted names
(``rnn.weight_ih_l0``, ``decoder.bias``...), ``forward``/``backward``, ``config()`` to rebuild.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lstmkit.layers import GRU, LSTM, RNN, RecurrentLayer
from lstmkit.nn import Dropout, Embedding, Linear, Module
from lstmkit.nn.module import resolve_rng

Array = np.ndarray

CELLS: dict[str, type[RecurrentLayer]] = {"lstm": LSTM, "gru": GRU, "rnn": RNN}


def make_recurrent(cell: str, input_size: int, hidden_size: int, **kwargs: Any) -> RecurrentLayer:
    """Build ``lstmkit.LSTM`` / ``GRU`` / ``RNN`` by name ("lstm", "gru", "rnn")."""
    if cell not in CELLS:
        raise ValueError(f"cell must be one of {sorted(CELLS)}, got {cell!r}")
    return CELLS[cell](input_size, hidden_size, **kwargs)


class CharLM(Module):
    """Character-level language model: ids (T, B) -> logits (T, B, V).

    Args:
        vocab_size: V, the number of distinct characters.
        hidden_size: H of every recurrent layer.
        num_layers: stacked recurrent layers.
        cell: "lstm", "gru" or "rnn".
        embedding_dim: E (default: H, or an LSTM's proj_size).
        dropout: between recurrent layers and before the decoder (training mode only).
        tie_weights: share the embedding matrix with the decoder (needs E == H, or E == P
            for an LSTM with ``proj_size`` P: the decoder reads the recurrent layer's output).
        dtype, seed: as for the layers.
        cell_options: passed to the recurrent layer (e.g. ``peepholes=True``, ``forget_bias``).
    """

    def __init__(
        self,
        vocab_size: int,
        hidden_size: int = 256,
        num_layers: int = 2,
        cell: str = "lstm",
        embedding_dim: int | None = None,
        dropout: float = 0.0,
        tie_weights: bool = False,
        dtype: Any = "float32",
        seed: int | np.random.Generator | None = None,
        **cell_options: Any,
    ) -> None:
        super().__init__()
        rng = resolve_rng(seed)
        out_size = cell_options.get("proj_size") or hidden_size  # the decoder's input
        embedding_dim = out_size if embedding_dim is None else embedding_dim
        if tie_weights and embedding_dim != out_size:
            raise ValueError(
                f"tie_weights needs embedding_dim == hidden_size (or proj_size), got "
                f"{embedding_dim} and {out_size}"
            )
        self._config = {
            "vocab_size": int(vocab_size), "hidden_size": int(hidden_size),
            "num_layers": int(num_layers), "cell": cell, "embedding_dim": int(embedding_dim),
            "dropout": float(dropout), "tie_weights": bool(tie_weights),
            "dtype": str(np.dtype(dtype)), **cell_options,
        }
        self.embedding = Embedding(vocab_size, embedding_dim, dtype=dtype, seed=rng)
        self.rnn = make_recurrent(cell, embedding_dim, hidden_size, num_layers=num_layers,
                                  dropout=dropout, dtype=dtype, seed=rng, **cell_options)
        self.drop = Dropout(dropout, seed=rng)
        self.decoder = Linear(self.rnn.output_size, vocab_size, dtype=dtype, seed=rng,
                              tied_to=self.embedding if tie_weights else None)
        self.add_module("embedding", self.embedding)
        self.add_module("rnn", self.rnn)
        self.add_module("drop", self.drop)
        self.add_module("decoder", self.decoder)

    def config(self) -> dict[str, Any]:
        """The constructor arguments (JSON-ready): ``CharLM(**model.config())`` rebuilds it."""
        return dict(self._config)

    @property
    def vocab_size(self) -> int:
        return self._config["vocab_size"]

    def forward(self, ids: Array, state: Any = None,
                return_gates: bool = False) -> tuple[Array, Any] | tuple[Array, Any, dict]:
        """ids (T, B) ints in [0, V) -> logits (T, B, V), the final state (and gates)."""
        ids = np.asarray(ids)
        if ids.ndim != 2:
            raise ValueError(f"ids must be 2-D (T, B) character indices, got shape {ids.shape}")
        emb = self.embedding(ids)  # (T, B, E)
        rows_of = None if self.embedding.padding_idx is not None else (ids, self.embedding.weight)
        # the first layer may take its input projection from W_ih E^T (see LSTM.forward)
        result = self.rnn(emb, state, return_gates=return_gates, rows_of=rows_of)
        hidden = self.drop(result[0])  # (T, B, H)
        logits = self.decoder(hidden)  # (T, B, V)
        return (logits, *result[1:])

    def backward(self, d_logits: Array) -> None:
        """Accumulate every parameter's gradient from dL/dlogits (T, B, V)."""
        d_hidden = self.drop.backward(self.decoder.backward(d_logits))
        folded = self.rnn.folds_rows
        d_emb, _ = self.rnn.backward(d_hidden)
        if folded:  # dL/dE directly
            self.embedding.grads["weight"] += d_emb
        else:
            self.embedding.backward(d_emb)


class SequenceModel(Module):
    """A recurrent layer with a linear read-out, for the classic sequence experiments.

    ``readout="last"``: x (T, B, D) -> y (B, K), read at each sequence's own last step (its
    ``lengths``); ``readout="all"``: y (T, B, K), one prediction per step.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        output_size: int,
        cell: str = "lstm",
        readout: str = "last",
        dtype: Any = "float32",
        seed: int | np.random.Generator | None = None,
        **layer_options: Any,
    ) -> None:
        super().__init__()
        if readout not in ("last", "all"):
            raise ValueError(f"readout must be 'last' or 'all', got {readout!r}")
        rng = resolve_rng(seed)
        self.readout = readout
        self._config = {
            "input_size": int(input_size), "hidden_size": int(hidden_size),
            "output_size": int(output_size), "cell": cell, "readout": readout,
            "dtype": str(np.dtype(dtype)), **layer_options,
        }
        self.rnn = make_recurrent(cell, input_size, hidden_size, dtype=dtype, seed=rng,
                                  **layer_options)
        out_features = self.rnn.num_directions * hidden_size
        self.head = Linear(out_features, output_size, dtype=dtype, seed=rng)
        self.add_module("rnn", self.rnn)
        self.add_module("head", self.head)
        self._last: tuple[Array, Array, tuple[int, ...]] | None = None

    def config(self) -> dict[str, Any]:
        """The constructor arguments: ``SequenceModel(**model.config())`` rebuilds it."""
        return dict(self._config)

    def forward(self, x: Array, state: Any = None, lengths: Any = None) -> tuple[Array, Any]:
        """x (T, B, D) -> (y, final state); y is (B, K) or (T, B, K) by ``readout``."""
        out, state_n = self.rnn(x, state, lengths=lengths)  # out (T, B, nd*H)
        if self.readout == "all":
            return self.head(out), state_n
        T, B = out.shape[:2]
        last = np.full(B, T - 1) if lengths is None else np.asarray(lengths) - 1
        self._last = (last, np.arange(B), out.shape)
        return self.head(out[last, np.arange(B)]), state_n

    def backward(self, dy: Array) -> None:
        """Accumulate every parameter's gradient from dL/dy."""
        d_read = self.head.backward(dy)
        if self.readout == "all":
            self.rnn.backward(d_read)
            return
        assert self._last is not None, "backward() needs a forward() first"
        last, batch, shape = self._last
        d_out = np.zeros(shape, dtype=d_read.dtype)
        d_out[last, batch] = d_read
        self.rnn.backward(d_out)
