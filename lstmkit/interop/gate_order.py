"""How each framework stacks a recurrent cell's gate blocks, in lstmkit's gate letters.

A stacked weight holds one (H, ...) block per gate. lstmkit (= PyTorch) stacks i, f, g, o for
the LSTM and r, z, n for the GRU (``LSTMCell.gates``, ``GRUCell.gates``); the other formats
name the same gates differently and stack them in another order. Each tuple below lists, for
block j of that format, the lstmkit gate it holds; converters reorder blocks by these names
(``blocks``), never by position arithmetic.

    ONNX LSTM  W = [W_i, W_o, W_f, W_c]   (its "c" is our cell input g)
    ONNX GRU   W = [W_z, W_r, W_h]        (its "h" is our candidate n)
    ONNX P     = [P_i, P_o, P_f]          (peepholes: i and f see c_prev, o sees the new c)
    Keras LSTM kernel columns [i, f, c, o]   (PyTorch's order)
    Keras GRU  kernel columns [z, r, h]      (ONNX's order)
"""

from __future__ import annotations

import numpy as np

Array = np.ndarray

ONNX_LSTM_GATES = ("i", "o", "f", "g")
ONNX_GRU_GATES = ("z", "r", "n")
ONNX_PEEPHOLE_GATES = ("i", "o", "f")
KERAS_LSTM_GATES = ("i", "f", "g", "o")
KERAS_GRU_GATES = ("z", "r", "n")


def blocks(array: Array, gates: tuple[str, ...], H: int) -> dict[str, Array]:
    """Split a stacked (G*H, ...) weight or (G*H,) bias into its gate blocks by name.

    ``gates`` names the blocks in the array's order; block j is rows [j*H, (j+1)*H).
    """
    if array.shape[0] != len(gates) * H:
        raise ValueError(
            f"a stack of the gates {gates} with hidden size {H} has {len(gates) * H} rows, "
            f"got shape {array.shape}"
        )
    return {gate: array[j * H : (j + 1) * H] for j, gate in enumerate(gates)}


def restack(array: Array, source: tuple[str, ...], target: tuple[str, ...], H: int) -> Array:
    """The blocks of ``array`` (stacked in ``source`` order) stacked in ``target`` order.

    ``target`` may be a subset of ``source`` (the blocks of gates a variant removed are
    dropped). Returns a new array.
    """
    by_gate = blocks(array, source, H)
    return np.concatenate([by_gate[gate] for gate in target])


__all__ = [
    "KERAS_GRU_GATES",
    "KERAS_LSTM_GATES",
    "ONNX_GRU_GATES",
    "ONNX_LSTM_GATES",
    "ONNX_PEEPHOLE_GATES",
    "blocks",
    "restack",
]
