"""Data generators for the classic LSTM experiments, generated as their papers describe.

Every generator draws only from the ``numpy.random.Generator`` passed as ``rng``, so a seeded
generator gives the same data every time. Sequences are time-major, (T, B, D), like PyTorch's
default; variable-length batches carry int64 ``lengths`` (B,) and are zero-padded after each
sequence's end. Float arrays are float32 unless ``dtype=numpy.float64`` is asked for.

* :mod:`~lstmkit.tasks.adding`: the adding problem (Hochreiter & Schmidhuber 1997; Pascanu,
  Mikolov & Bengio 2013).
* :mod:`~lstmkit.tasks.temporal_order`: the temporal order problem (Hochreiter & Schmidhuber
  1997, Task 6a).
* :mod:`~lstmkit.tasks.reber`: the Reber, embedded Reber and continual embedded Reber grammars
  (Gers, Schmidhuber & Cummins 2000).
* :mod:`~lstmkit.tasks.timing`: spike timing and periodic function generation (Gers,
  Schraudolph & Schmidhuber 2002).
"""

from lstmkit.tasks.adding import ADDING_TOLERANCE, hochreiter_adding, pascanu_adding
from lstmkit.tasks.batch import SequenceBatch
from lstmkit.tasks.reber import (
    REBER_SYMBOLS,
    ReberStream,
    chunk_stream,
    continual_embedded_reber,
    continual_embedded_reber_batch,
    embedded_reber_legal_next,
    embedded_reber_string,
    is_embedded_reber,
    is_reber,
    reber_legal_next,
    reber_multi_hot,
    reber_one_hot,
    reber_string,
)
from lstmkit.tasks.temporal_order import (
    TEMPORAL_ORDER_CLASSES,
    TEMPORAL_ORDER_SYMBOLS,
    TEMPORAL_ORDER_TOLERANCE,
    decode_temporal_order,
    temporal_order,
)
from lstmkit.tasks.timing import periodic_cosine, spike_delay_stream

__all__ = [
    "ADDING_TOLERANCE",
    "REBER_SYMBOLS",
    "TEMPORAL_ORDER_CLASSES",
    "TEMPORAL_ORDER_SYMBOLS",
    "TEMPORAL_ORDER_TOLERANCE",
    "ReberStream",
    "SequenceBatch",
    "chunk_stream",
    "continual_embedded_reber",
    "continual_embedded_reber_batch",
    "decode_temporal_order",
    "embedded_reber_legal_next",
    "embedded_reber_string",
    "hochreiter_adding",
    "is_embedded_reber",
    "is_reber",
    "pascanu_adding",
    "periodic_cosine",
    "reber_legal_next",
    "reber_multi_hot",
    "reber_one_hot",
    "reber_string",
    "spike_delay_stream",
    "temporal_order",
]
