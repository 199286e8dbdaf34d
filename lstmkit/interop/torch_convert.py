"""Convert between lstmkit layers and ``torch.nn.LSTM`` / ``GRU`` / ``RNN``.

lstmkit uses PyTorch's state-dict names, shapes and gate order, so the weights travel
unchanged; what this module adds is the configuration (sizes, stacking, directions, bias,
dropout, batch_first, nonlinearity, dtype) and the checks that the two sides can express the
same network:

- ``from_torch(module)``: a ``torch.nn.LSTM``/``GRU``/``RNN`` -> the equal lstmkit layer
  (``proj_size != 0`` is refused: lstmkit has no projection).
- ``to_torch(layer)``: an lstmkit layer -> the equal torch module (peepholes and the LSTM
  variant switches are refused: PyTorch has none of them).
- ``load_torch_state_dict(path)``: a state_dict saved with ``torch.save`` -> an lstmkit layer,
  read with ``torch.load(weights_only=True)`` only, so a file cannot run code when opened.

``torch`` is imported on first use; without it these functions raise an ImportError that says
``pip install torch==2.13.0``.
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np

TORCH_REQUIREMENT = "torch==2.13.0"
_MODES = ("LSTM", "GRU", "RNN")
_GATE_ROWS = {"LSTM": 4, "GRU": 3, "RNN": 1}  # rows of weight_ih per hidden unit
_VARIANT_DEFAULTS = {  # LSTM switches torch.nn.LSTM cannot express, with its fixed value
    "peepholes": False,
    "forget_gate": True,
    "input_gate": True,
    "output_gate": True,
    "coupled_input_forget": False,
}
# cell options (``layer.cell_options``) torch.nn.LSTM/GRU/RNN compute only at these values
_TORCH_OPTIONS = {
    "LSTM": {"recurrent_activation": "Sigmoid", "activation": "Tanh", "output_activation": None,
             "clip": None, "full_gate_recurrence": False},
    "GRU": {"recurrent_activation": "Sigmoid", "activation": "Tanh", "clip": None,
            "linear_before_reset": True},
    "RNN": {"activation": None, "clip": None},
}


def _import_torch() -> Any:
    """``torch``, or an ImportError saying how to install it."""
    try:
        import torch
    except ImportError as error:
        raise ImportError(
            f"PyTorch conversion needs PyTorch, which is not installed: pip install "
            f"{TORCH_REQUIREMENT}"
        ) from error
    return torch


def _torch_dtype_name(torch: Any, dtype: Any) -> str:
    names = {torch.float32: "float32", torch.float64: "float64"}
    if dtype not in names:
        raise TypeError(
            f"the torch module has dtype {dtype}; lstmkit layers are float32 or float64: "
            "convert it first with module.float() or module.double()"
        )
    return names[dtype]


def _to_numpy(value: Any) -> np.ndarray:
    return value.detach().cpu().numpy().copy()


def from_torch(module: Any) -> Any:
    """The lstmkit layer equal to a ``torch.nn.LSTM``, ``GRU`` or ``RNN`` module.

    Carries over input_size, hidden_size, num_layers, bias, batch_first, dropout,
    bidirectional, nonlinearity (RNN), the dtype (float32 or float64), the weights (copied) and
    the training/eval mode.
    """
    torch = _import_torch()
    import lstmkit

    kinds = {torch.nn.LSTM: "LSTM", torch.nn.GRU: "GRU", torch.nn.RNN: "RNN"}
    mode = next((m for cls, m in kinds.items() if isinstance(module, cls)), None)
    if mode is None:
        raise TypeError(
            f"expected a torch.nn.LSTM, torch.nn.GRU or torch.nn.RNN, got {type(module).__name__}"
        )
    if getattr(module, "proj_size", 0) != 0:
        raise ValueError(
            f"the torch LSTM has proj_size={module.proj_size}; lstmkit LSTMs have no projection, "
            "expected proj_size=0"
        )
    dtype = _torch_dtype_name(torch, next(module.parameters()).dtype)
    kwargs: dict[str, Any] = {
        "num_layers": module.num_layers,
        "bias": module.bias,
        "batch_first": module.batch_first,
        "dropout": float(module.dropout),
        "bidirectional": module.bidirectional,
        "dtype": dtype,
    }
    if mode == "RNN":
        kwargs["nonlinearity"] = module.nonlinearity
    layer = getattr(lstmkit, mode)(module.input_size, module.hidden_size, **kwargs)
    layer.load_state_dict({name: _to_numpy(t) for name, t in module.state_dict().items()})
    layer.train(module.training)
    return layer


def to_torch(layer: Any) -> Any:
    """The ``torch.nn.LSTM``/``GRU``/``RNN`` equal to an lstmkit layer (weights copied).

    Refuses what PyTorch cannot compute: peepholes, and the LSTM variant switches
    (forget_gate, input_gate, output_gate, coupled_input_forget).
    """
    torch = _import_torch()
    from lstmkit.layers import GRU, LSTM, RNN

    if not isinstance(layer, (LSTM, GRU, RNN)):
        raise TypeError(f"expected an lstmkit.LSTM, GRU or RNN, got {type(layer).__name__}")
    if layer.mode == "LSTM":
        unsupported = [
            f"{name}={layer.cell_options[name]}"
            for name, default in _VARIANT_DEFAULTS.items()
            if layer.cell_options[name] != default
        ]
        if unsupported:
            raise ValueError(
                f"torch.nn.LSTM cannot express this lstmkit LSTM's {', '.join(unsupported)}; "
                "expected a plain LSTM (peepholes=False, forget_gate=True, input_gate=True, "
                "output_gate=True, coupled_input_forget=False). Export it with "
                "lstmkit.interop.export_onnx instead"
            )
    options = {**getattr(layer, "cell_options", {}), "merge_mode": layer.merge_mode,
               "go_backwards": layer.go_backwards, "reverse": layer.reverse}
    unsupported = [f"{name}={options[name]!r}"
                   for name, value in {**_TORCH_OPTIONS[layer.mode], "merge_mode": "concat",
                                       "go_backwards": False, "reverse": False}.items()
                   if name in options and options[name] != value]
    if unsupported:
        raise ValueError(
            f"torch.nn.{layer.mode} cannot express this lstmkit {layer.mode}'s "
            f"{', '.join(unsupported)}; export it with lstmkit.interop.export_onnx instead"
        )
    kwargs: dict[str, Any] = {
        "num_layers": layer.num_layers,
        "bias": layer.bias,
        "batch_first": layer.batch_first,
        "dropout": layer.dropout,
        "bidirectional": layer.bidirectional,
        "dtype": getattr(torch, layer.dtype.name),
    }
    if layer.mode == "RNN":
        kwargs["nonlinearity"] = layer.nonlinearity
    module = getattr(torch.nn, layer.mode)(layer.input_size, layer.hidden_size, **kwargs)
    module.load_state_dict(
        {name: torch.from_numpy(value.copy()) for name, value in layer.params.items()}
    )
    module.train(layer.training)
    return module


# -- state_dict files ---------------------------------------------------------------------------

_KEY = re.compile(r"^(weight_ih|weight_hh|bias_ih|bias_hh|weight_hr)_l(\d+)(_reverse)?$")


def _read_state_dict_file(path: Path) -> dict[str, Any]:
    torch = _import_torch()
    if not path.exists():
        raise FileNotFoundError(f"no state_dict file at {path}; expected a file from torch.save")
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory; expected a file from torch.save")
    try:
        # weights_only=True: tensors and plain containers only, never arbitrary pickled code.
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ValueError(
            f"{path} is corrupt or holds more than tensors: torch.load(weights_only=True) "
            f"refused it ({_unpickler_reason(error)}), so nothing in it was run; expected a "
            "file saved with torch.save(module.state_dict())"
        ) from error
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, AttributeError) as error:
        raise ValueError(
            f"{path} is not a readable PyTorch file (corrupt or another format); expected a "
            f"file saved with torch.save(module.state_dict()): {_first_line(error)}"
        ) from error
    if not isinstance(loaded, dict):
        raise ValueError(
            f"{path} holds a {type(loaded).__name__}; expected a state_dict (a dict of name -> "
            "tensor) saved with torch.save(module.state_dict())"
        )
    return loaded


def _unpickler_reason(error: BaseException) -> str:
    """The line of torch's long weights_only message that says what was refused."""
    lines = [line.strip() for line in str(error).splitlines()]
    for line in lines:
        if "GLOBAL" in line or "nsupported" in line:
            return line
    return lines[0] if lines and lines[0] else type(error).__name__


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _select(loaded: dict[str, Any], prefix: str, path: Path) -> dict[str, np.ndarray]:
    """The entries under ``prefix`` (without it), as arrays; the keys must be a recurrent
    layer's."""
    torch = _import_torch()
    selected = {k[len(prefix):]: v for k, v in loaded.items()
                if isinstance(k, str) and k.startswith(prefix)}
    if "weight_ih_l0" not in selected:
        hint = ""
        found = [k for k in loaded if isinstance(k, str) and k.endswith("weight_ih_l0")]
        if found:
            hint = f" (found {found[0]!r}: pass prefix={found[0][: -len('weight_ih_l0')]!r})"
        raise KeyError(
            f"{path} has no {prefix + 'weight_ih_l0'!r}; expected the state_dict of a "
            f"torch.nn.LSTM, GRU or RNN{hint}; its keys: {sorted(map(str, loaded))[:8]}"
        )
    arrays = {}
    for key, value in selected.items():
        match = _KEY.match(key)
        if match is None:
            raise KeyError(
                f"{path}: unexpected key {prefix + key!r}; expected only weight_ih_l<k>, "
                "weight_hh_l<k>, bias_ih_l<k>, bias_hh_l<k> (with _reverse)"
            )
        if match.group(1) == "weight_hr":
            raise ValueError(
                f"{path} is an LSTM with a projection ({prefix + key!r}, proj_size != 0); "
                "lstmkit LSTMs have no projection, expected proj_size=0"
            )
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"{path}: {prefix + key!r} is a {type(value).__name__}, "
                             "expected a tensor")
        if value.dtype not in (torch.float32, torch.float64):
            raise TypeError(
                f"{path}: {prefix + key!r} has dtype {value.dtype}; expected float32 or "
                "float64 (convert the module with .float() or .double() before saving)"
            )
        arrays[key] = _to_numpy(value)
    return arrays


def _infer_config(arrays: dict[str, np.ndarray], mode: str | None, path: Path) -> dict[str, Any]:
    w_ih, w_hh = arrays["weight_ih_l0"], arrays.get("weight_hh_l0")
    if w_hh is None or w_ih.ndim != 2 or w_hh.ndim != 2:
        raise ValueError(f"{path}: expected 2-D weight_ih_l0 and weight_hh_l0 tensors")
    H = w_hh.shape[1]
    if H == 0 or w_ih.shape[0] % H:
        raise ValueError(
            f"{path}: weight_ih_l0 has shape {w_ih.shape} and weight_hh_l0 {w_hh.shape}; "
            "expected (G * hidden_size, input_size) and (G * hidden_size, hidden_size)"
        )
    rows = w_ih.shape[0] // H
    inferred = next((m for m, g in _GATE_ROWS.items() if g == rows), None)
    if mode is None:
        if inferred is None:
            raise ValueError(
                f"{path}: weight_ih_l0 has {rows} * hidden_size rows; expected 4 (LSTM), "
                "3 (GRU) or 1 (RNN)"
            )
        mode = inferred
    elif not isinstance(mode, str) or mode.upper() not in _MODES:
        raise ValueError(f"mode must be one of 'lstm', 'gru', 'rnn' or None, got {mode!r}")
    else:
        mode = mode.upper()
        if rows != _GATE_ROWS[mode]:
            raise ValueError(
                f"{path}: weight_ih_l0 has {rows} * hidden_size rows, but a {mode} has "
                f"{_GATE_ROWS[mode]}; expected mode={inferred and inferred.lower()!r}"
            )
    layers = {int(m.group(2)) for m in map(_KEY.match, arrays) if m is not None}
    num_layers = max(layers) + 1
    if layers != set(range(num_layers)):
        raise ValueError(f"{path}: layers {sorted(layers)} present; expected 0..{num_layers - 1}")
    dtypes = {a.dtype for a in arrays.values()}
    if len(dtypes) != 1:
        raise TypeError(f"{path}: tensors of dtypes {sorted(map(str, dtypes))}; expected one")
    return {
        "mode": mode,
        "input_size": int(w_ih.shape[1]),
        "hidden_size": int(H),
        "num_layers": num_layers,
        "bias": "bias_ih_l0" in arrays,
        "bidirectional": "weight_ih_l0_reverse" in arrays,
        "dtype": dtypes.pop().name,
    }


def load_torch_state_dict(
    path: str | os.PathLike[str],
    mode: str | None = None,
    *,
    prefix: str = "",
    batch_first: bool = False,
    nonlinearity: str = "tanh",
) -> Any:
    """Build an lstmkit layer from a ``torch.save(module.state_dict())`` file.

    Only ``torch.load(path, weights_only=True)`` reads the file: tensors and plain containers,
    never arbitrary pickled objects. Sizes, num_layers, bidirectional, bias and dtype are
    inferred from the tensors; ``mode`` ("lstm", "gru", "rnn") from the number of gate blocks
    if not given. What a state_dict does not record is passed in: ``batch_first``,
    ``nonlinearity`` (RNN). ``prefix`` selects a submodule's entries (e.g. "encoder.rnn.").
    """
    import lstmkit

    path = Path(path)
    arrays = _select(_read_state_dict_file(path), prefix, path)
    config = _infer_config(arrays, mode, path)
    mode = config.pop("mode")
    kwargs = dict(config, batch_first=batch_first)
    if mode == "RNN":
        kwargs["nonlinearity"] = nonlinearity
    layer = getattr(lstmkit, mode)(**kwargs)
    layer.load_state_dict(arrays)
    return layer


__all__ = ["TORCH_REQUIREMENT", "from_torch", "load_torch_state_dict", "to_torch"]
