"""Export a character language model (:class:`lstmkit.models.CharLM`) as one ONNX model.

The graph is the model in evaluation mode (no dropout), built from standard ONNX operators so
that any ONNX runtime can run it::

    ids (T, B) int64 --Gather(embedding (V, E))--> (T, B, E)
        --stacked LSTM / GRU / RNN (add_layer_nodes)--> (T, B, H)
        --MatMul(decoder weight^T (H, V)) + Add(decoder bias (V,))--> logits (T, B, V)

``T`` and ``B`` are dynamic. With ``with_state=True`` (the default) the graph also takes the
initial state ``h_0`` (and ``c_0`` for an LSTM), each (num_layers, B, H), and returns the final
state ``h_n`` (and ``c_n``), so that generation can run one character at a time and carry the
state from call to call, exactly as ``model(ids, state)`` does (zeros for the first call).

Tied weights (``CharLM(tie_weights=True)``): the decoder's weight *is* the embedding matrix,
and the file stores it once: the decoder multiplies by ``Transpose(embedding)`` (a constant that
runtimes fold when they load the model).

The model's ``metadata_props`` carry what a deployment needs besides the weights, each value a
JSON string:

    lstmkit.format       "lstmkit-charlm-onnx"
    lstmkit.version      1 (the layout of this metadata)
    lstmkit.vocabulary   {"kind": "characters", "chars": [...]}: id k is chars[k]
                         (``lstmkit.text.Vocabulary.to_json``); only if a vocabulary was given
    lstmkit.model        the CharLM configuration (``CharLM(**config)`` rebuilds the model)
    lstmkit.io           the graph's inputs and outputs: names, shapes, element types

:func:`read_charlm_onnx_metadata` and :func:`charlm_onnx_vocabulary` read them back.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

# _onnx is the lazy import of the optional onnx package; reused, not duplicated.
from lstmkit.interop.onnx_export import (
    DEFAULT_OPSET,
    GraphBuilder,
    _onnx,
    add_layer_nodes,
    check_target,
    write_atomic,
)
from lstmkit.models import CharLM
from lstmkit.text import Vocabulary

__all__ = [
    "CHARLM_ONNX_FORMAT",
    "CHARLM_ONNX_VERSION",
    "charlm_onnx_vocabulary",
    "charlm_to_onnx_model",
    "export_charlm_onnx",
    "read_charlm_onnx_metadata",
]

CHARLM_ONNX_FORMAT = "lstmkit-charlm-onnx"
CHARLM_ONNX_VERSION = 1

_META_PREFIX = "lstmkit."


def _check_model(model: CharLM) -> None:
    """Refuse anything but a CharLM whose recurrent layer the graph can express."""
    if not isinstance(model, CharLM):
        raise TypeError(f"expected an lstmkit.models.CharLM, got {type(model).__name__}")
    rnn = model.rnn
    if rnn.batch_first or rnn.num_directions != 1:
        raise ValueError(
            "a CharLM's recurrent layer must be time-major and unidirectional to be exported, "
            f"got batch_first={rnn.batch_first}, bidirectional={rnn.bidirectional}"
        )


def _check_vocabulary(
    model: CharLM, vocab: Vocabulary | Sequence[str] | None
) -> dict[str, Any] | None:
    """The vocabulary's JSON form, checked against the model's size (None if not given)."""
    if vocab is None:
        return None
    if not isinstance(vocab, Vocabulary):
        vocab = Vocabulary(vocab)
    if len(vocab) != model.vocab_size:
        raise ValueError(
            f"the vocabulary has {len(vocab)} characters but the model predicts "
            f"{model.vocab_size}; use the vocabulary saved with the model"
        )
    return vocab.to_json()


def charlm_to_onnx_model(
    model: CharLM,
    *,
    vocab: Vocabulary | Sequence[str] | None = None,
    with_state: bool = True,
    opset: int = DEFAULT_OPSET,
    dtype: Any = np.float32,
) -> Any:
    """The ONNX model (an ``onnx.ModelProto``) of a :class:`~lstmkit.models.CharLM`.

    Args:
        model: the character language model; exported as in eval mode (dropout left out).
        vocab: its :class:`lstmkit.text.Vocabulary` (or the characters in id order), stored
            in the metadata as ``lstmkit.vocabulary``; must have ``model.vocab_size`` entries.
        with_state: add the graph inputs ``h_0`` (and ``c_0`` for an LSTM) and the outputs
            ``h_n`` (and ``c_n``), each (num_layers, B, hidden_size). Without it the initial
            state is zeros and only ``logits`` is returned.
        opset: the ONNX opset (default lstmkit's ``DEFAULT_OPSET``).
        dtype: the float type of the weights and of the state and logits (default float32:
            ONNX Runtime's CPU recurrent kernels run float32 only).

    Graph inputs: ``ids`` int64 (T, B) in [0, V), then ``h_0`` (, ``c_0``). Outputs:
    ``logits`` (T, B, V), then ``h_n`` (, ``c_n``). T and B are dynamic.
    """
    _check_model(model)
    vocab_json = _check_vocabulary(model, vocab)
    onnx = _onnx()
    builder = GraphBuilder(dtype, name="lstmkit_charlm")
    rnn = model.rnn
    mode = rnn.mode
    V, L, H = model.vocab_size, rnn.num_layers, rnn.hidden_size
    float_type = str(builder.dtype)

    ids = builder.add_input("ids", np.int64, ["T", "B"])
    state_names = ("h_0", "c_0") if mode == "LSTM" else ("h_0",)
    initial_state = (
        tuple(builder.add_input(name, builder.dtype, [L, "B", H]) for name in state_names)
        if with_state else None
    )

    table = builder.constant("embedding_weight", model.embedding.weight)  # (V, E)
    (x,) = builder.node("Gather", [table, ids], base="embedded", axis=0)  # (T, B, E)
    out = add_layer_nodes(builder, rnn, x, initial_state=initial_state)  # (T, B, H)

    decoder = model.decoder
    if decoder.tied:  # the decoder's weight is the embedding matrix: keep one copy in the file
        (w_t,) = builder.node("Transpose", [table], base="decoder_weight_t", perm=[1, 0])
    else:
        w_t = builder.constant("decoder_weight_t", np.asarray(decoder.weight).T)  # (H, V)
    (logits,) = builder.node("MatMul", [out.output, w_t], base="decoder_matmul")
    if decoder.bias is not None:
        bias = builder.constant("decoder_bias", decoder.bias)
        (logits,) = builder.node("Add", [logits, bias], base="decoder_add")
    builder.add_output(logits, ["T", "B", V], name="logits")

    io_inputs: list[dict[str, Any]] = [
        {"name": "ids", "shape": ["T", "B"], "type": "int64"}
    ]
    io_outputs: list[dict[str, Any]] = [
        {"name": "logits", "shape": ["T", "B", V], "type": float_type}
    ]
    if with_state:
        finals = [out.h_n, out.c_n] if mode == "LSTM" else [out.h_n]
        for name0, value in zip(state_names, finals):
            name_n = name0.replace("_0", "_n")
            assert value is not None
            builder.add_output(value, [L, "B", H], name=name_n)
            io_inputs.append({"name": name0, "shape": [L, "B", H], "type": float_type})
            io_outputs.append({"name": name_n, "shape": [L, "B", H], "type": float_type})

    proto = builder.model(
        opset=opset,
        doc_string=(f"lstmkit CharLM ({mode}, {L} layer(s), hidden {H}, vocabulary {V}) in "
                    "eval mode: ids (T, B) -> logits (T, B, V)"
                    + (", state h_0/c_0 -> h_n/c_n" if with_state else "")),
    )
    meta: dict[str, Any] = {
        "format": CHARLM_ONNX_FORMAT,
        "version": CHARLM_ONNX_VERSION,
        "model": model.config(),
        "io": {"inputs": io_inputs, "outputs": io_outputs},
    }
    if vocab_json is not None:
        meta["vocabulary"] = vocab_json
    onnx.helper.set_model_props(
        proto, {_META_PREFIX + key: json.dumps(value, ensure_ascii=False)
                for key, value in meta.items()}
    )
    return proto


def export_charlm_onnx(
    model: CharLM,
    path: str | os.PathLike[str],
    *,
    vocab: Vocabulary | Sequence[str] | None = None,
    force: bool = False,
    with_state: bool = True,
    opset: int = DEFAULT_OPSET,
    dtype: Any = np.float32,
) -> Path:
    """Write ``model`` (a :class:`~lstmkit.models.CharLM`) to ``path`` as an ONNX model.

    The graph and metadata are described in :func:`charlm_to_onnx_model`. An existing file is
    not replaced unless ``force=True``; the file is written under a temporary name next to
    ``path`` and moved into place (``write_atomic``), so a crash never leaves a half-written
    model. Returns the path.

    Raises:
        FileExistsError: ``path`` exists and ``force`` is False (nothing is written).
        IsADirectoryError: ``path`` is a directory.
        FileNotFoundError: ``path``'s directory does not exist.
        TypeError, ValueError: not an exportable CharLM, or a vocabulary of the wrong size.
    """
    target = check_target(path, force)
    proto = charlm_to_onnx_model(model, vocab=vocab, with_state=with_state, opset=opset,
                                 dtype=dtype)
    write_atomic(target, proto.SerializeToString(), overwrite=force)
    return target


def read_charlm_onnx_metadata(source: Any) -> dict[str, Any]:
    """The ``lstmkit.*`` metadata of an exported char LM, JSON-decoded, without the prefix.

    ``source``: a path to the ``.onnx`` file or an ``onnx.ModelProto``. Keys: ``format``,
    ``version``, ``model``, ``io`` and (if exported with one) ``vocabulary``.

    Raises:
        ValueError: the model is not an lstmkit char LM export (no or wrong ``lstmkit.format``)
            or a value is not valid JSON.
    """
    if isinstance(source, (str, os.PathLike)):
        source = _onnx().load(os.fspath(source), load_external_data=False)
    props = {prop.key: prop.value for prop in source.metadata_props}
    meta: dict[str, Any] = {}
    for key, value in props.items():
        if key.startswith(_META_PREFIX):
            try:
                meta[key[len(_META_PREFIX):]] = json.loads(value)
            except json.JSONDecodeError as error:
                raise ValueError(f"metadata {key!r} is not valid JSON: {error}") from None
    if meta.get("format") != CHARLM_ONNX_FORMAT:
        raise ValueError(
            f"not an lstmkit char LM export: metadata 'lstmkit.format' is "
            f"{meta.get('format')!r}, expected {CHARLM_ONNX_FORMAT!r}"
        )
    return meta


def charlm_onnx_vocabulary(source: Any) -> Vocabulary:
    """The :class:`lstmkit.text.Vocabulary` stored in an exported char LM (path or ModelProto).

    Raises:
        ValueError: not an lstmkit char LM export, or it was exported without a vocabulary.
    """
    meta = read_charlm_onnx_metadata(source)
    data = meta.get("vocabulary")
    if not isinstance(data, Mapping):
        raise ValueError("this char LM was exported without a vocabulary (no "
                         "'lstmkit.vocabulary' metadata)")
    return Vocabulary.from_json(data)
