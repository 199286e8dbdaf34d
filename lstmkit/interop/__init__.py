"""Interoperability: ONNX export and import, Keras import, PyTorch conversion.

``onnx``, ``torch`` and ``h5py`` (for .keras files) are optional: each is imported only when
a function that needs it runs, and a clear ImportError says how to install it.
"""

from lstmkit.interop.charlm_onnx import (
    charlm_onnx_vocabulary,
    charlm_to_onnx_model,
    export_charlm_onnx,
    read_charlm_onnx_metadata,
)
from lstmkit.interop.keras_import import from_keras
from lstmkit.interop.onnx_export import (
    DEFAULT_OPSET,
    GraphBuilder,
    LayerOutputs,
    add_layer_nodes,
    export_onnx,
    to_onnx_model,
)
from lstmkit.interop.onnx_import import OnnxRecurrent, from_onnx, read_onnx
from lstmkit.interop.torch_convert import from_torch, load_torch_state_dict, to_torch

__all__ = [
    "DEFAULT_OPSET",
    "GraphBuilder",
    "LayerOutputs",
    "OnnxRecurrent",
    "add_layer_nodes",
    "charlm_onnx_vocabulary",
    "charlm_to_onnx_model",
    "export_charlm_onnx",
    "export_onnx",
    "from_keras",
    "from_onnx",
    "from_torch",
    "load_torch_state_dict",
    "read_charlm_onnx_metadata",
    "read_onnx",
    "to_onnx_model",
    "to_torch",
]
