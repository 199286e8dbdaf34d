"""Read a Keras 3 ``LSTM``, ``GRU`` or ``SimpleRNN`` (or a ``Bidirectional`` around one) into
the equal lstmkit layer.

``from_keras(layer_or_path)`` takes a Keras layer or model object, or a ``.keras`` file, and
returns an ``lstmkit.LSTM`` / ``GRU`` / ``RNN`` with ``batch_first=True`` (Keras' layout)::

    layer = lstmkit.from_keras("model.keras")
    output, state = layer(x)      # x (B, T, D); output (B, T, nd * H)

``output`` is what the Keras layer returns with ``return_sequences=True``. A Keras layer with
``return_sequences=False`` returns the last state instead: lstmkit's ``h_n`` (``h_n[0]`` for one
direction; for ``Bidirectional``, ``h_n[0]`` and ``h_n[1]`` merged as ``merge_mode`` says, e.g.
concatenated).

A ``.keras`` file is a zip archive of ``config.json`` (the architecture) and
``model.weights.h5`` (the weights). lstmkit reads both directly, as JSON and HDF5 (h5py,
which Keras itself depends on): no Keras object is rebuilt and nothing in the file is run, and
Keras need not be installed. A file holding a ``Lambda`` layer (Python code), a layer class that
is not Keras' own (a custom or registered layer), or a nested model is refused, as is a
recurrent layer whose activation is not one of Keras' named functions.

What the conversion bridges (gate orders in ``lstmkit.interop.gate_order``):

- LSTM: ``kernel`` (D, 4H) and ``recurrent_kernel`` (H, 4H), columns i, f, c, o (PyTorch's
  order), transposed into ``weight_ih`` / ``weight_hh``; the one ``bias`` (4H,) goes to
  ``bias_ih`` and ``bias_hh`` is zero. ``unit_forget_bias`` only initialises that bias.
- GRU: columns z, r, h reordered to r, z, n. ``reset_after=True`` (Keras 3's default) is
  PyTorch's GRU, ``linear_before_reset=True``, with ``bias`` (2, 3H) = [input bias, recurrent
  bias]; ``reset_after=False`` is ``linear_before_reset=False`` with the one bias (3H,) in
  ``bias_ih``.
- ``activation`` and ``recurrent_activation`` by Keras' names (``lstmkit.activations``:
  "hard_sigmoid" is Keras 3's relu6(x + 3) / 6); a custom function is refused.
- ``go_backwards``: ``go_backwards`` (the input read from its end, the output sequence in
  that order, as Keras returns it); ``Bidirectional``'s ``merge_mode`` (concat, sum, mul, ave,
  or None: the pair (forward, backward)): ``bidirectional=True, merge_mode=...``. The two
  directions must be configured alike (lstmkit's layer has one configuration).
- ``use_bias=False``: ``bias=False``; ``stateful=True``: ``stateful=True``.
- ``dropout`` and ``recurrent_dropout`` act only while training and are not carried over.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lstmkit.cells import GRUCell, LSTMCell
from lstmkit.interop.gate_order import KERAS_GRU_GATES, KERAS_LSTM_GATES, restack

Array = np.ndarray

RECURRENT_CLASSES = {"LSTM": "LSTM", "GRU": "GRU", "SimpleRNN": "RNN"}  # Keras -> lstmkit
# The group of a layer in model.weights.h5: Keras names it after its class in snake case,
# numbered per class in the model's layer order (lstm, lstm_1, ...), not after the layer's name.
_H5_NAMES = {"LSTM": "lstm", "GRU": "gru", "SimpleRNN": "simple_rnn",
             "Bidirectional": "bidirectional"}
_MAX_CONFIG_BYTES = 64 * 2**20


@dataclass
class KerasRecurrent:
    """A Keras recurrent layer as read from a file or an object, before conversion.

    ``class_name`` is "LSTM", "GRU" or "SimpleRNN"; ``config`` its Keras config (the forward
    layer's inside a ``Bidirectional``); ``weights`` one list per direction of [kernel,
    recurrent_kernel, bias?]; for a ``Bidirectional``, ``backward_config`` is its backward
    layer's config and ``merge_mode`` its merge mode (None: Keras returns both outputs).
    """

    class_name: str
    config: dict[str, Any]
    weights: list[list[Array]]
    name: str
    merge_mode: str | None = None
    backward_config: dict[str, Any] | None = field(default=None)


def _h5py() -> Any:
    try:
        import h5py
    except ImportError as error:
        raise ImportError(
            "reading .keras files needs h5py: pip install 'lstmkit[keras]' (or pip install h5py)"
        ) from error
    return h5py


def from_keras(layer_or_path: Any, name: str | None = None) -> Any:
    """The lstmkit layer equal to a Keras 3 ``LSTM``, ``GRU``, ``SimpleRNN`` or a
    ``Bidirectional`` around one.

    ``layer_or_path``: such a Keras layer, a Keras model holding one (pick it with ``name``
    if it holds several), or the path of a ``.keras`` file (read without Keras: see the
    module docstring). Returns a ``batch_first`` layer whose ``output`` equals the Keras
    layer's ``return_sequences=True`` output.
    """
    if isinstance(layer_or_path, (str, os.PathLike)):
        found = read_keras_file(layer_or_path, name)
    else:
        found = _read_keras_object(layer_or_path, name)
    return _to_layer(found)


# -- reading a .keras file ----------------------------------------------------------------------


def read_keras_file(path: str | os.PathLike[str], name: str | None = None) -> KerasRecurrent:
    """The recurrent layer of a ``.keras`` file, read as JSON and HDF5 (nothing is run)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no .keras file at {path}")
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as error:
        raise ValueError(
            f"{path} is not a .keras file (not a zip archive); expected a file written by "
            "Keras 3's model.save('NAME.keras')"
        ) from error
    with archive:
        members = set(archive.namelist())
        missing = {"config.json", "model.weights.h5"} - members
        if missing:
            raise ValueError(
                f"{path} lacks {sorted(missing)}; expected a Keras 3 .keras archive "
                "(config.json and model.weights.h5)"
            )
        info = archive.getinfo("config.json")
        if info.file_size > _MAX_CONFIG_BYTES:
            raise ValueError(f"{path}: config.json is {info.file_size} bytes; expected at most "
                             f"{_MAX_CONFIG_BYTES}")
        try:
            config = json.loads(archive.read("config.json"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"{path}: config.json is not JSON ({error})") from error
        weights_bytes = archive.read("model.weights.h5")
    layers = _model_layers(config, path)
    chosen, group = _choose(layers, name, path)
    h5py = _h5py()
    with h5py.File(io.BytesIO(weights_bytes), "r") as h5:
        if chosen["class_name"] == "Bidirectional":
            inner = chosen["config"]
            forward = _check_layer_config(inner.get("layer"), path)
            backward = inner.get("backward_layer")
            backward = forward if backward is None else _check_layer_config(backward, path)
            weights = [_h5_vars(h5, f"layers/{group}/{part}/cell/vars", path)
                       for part in ("forward_layer", "backward_layer")]
            return KerasRecurrent(forward["class_name"], forward["config"], weights,
                                  chosen["config"].get("name", group),
                                  inner.get("merge_mode", "concat"), backward["config"])
        weights = [_h5_vars(h5, f"layers/{group}/cell/vars", path)]
        return KerasRecurrent(chosen["class_name"], chosen["config"], weights,
                              chosen["config"].get("name", group))


def _model_layers(config: Any, path: Path) -> list[dict[str, Any]]:
    """The checked layer configs of a saved Sequential or Functional model."""
    if not isinstance(config, dict) or not isinstance(config.get("config"), dict):
        raise ValueError(f"{path}: config.json is not a Keras model config")
    if config.get("class_name") not in ("Sequential", "Functional", "Model"):
        raise ValueError(
            f"{path} holds a {config.get('class_name')!r}; expected a Sequential or Functional "
            "model (lstmkit does not rebuild subclassed models, whose code is not in the file)"
        )
    layers = config["config"].get("layers")
    if not isinstance(layers, list):
        raise ValueError(f"{path}: the model config has no list of layers")
    for layer in layers:
        _check_layer_config(layer, path)
    return layers


def _check_layer_config(layer: Any, path: Path | str) -> dict[str, Any]:
    """Refuse a layer whose behaviour is code (Lambda, custom or registered classes, nested
    models); return it otherwise."""
    if not isinstance(layer, dict) or not isinstance(layer.get("config"), dict):
        raise ValueError(f"{path}: a layer entry is not a Keras layer config: {layer!r:.200}")
    class_name = layer.get("class_name")
    module = layer.get("module") or ""
    if class_name == "Lambda":
        raise ValueError(
            f"{path} holds a Lambda layer ({layer['config'].get('name')!r}), whose function is "
            "Python code stored in the file; lstmkit never runs code from a file, so it does "
            "not read this model. Save the recurrent layer in a model without the Lambda"
        )
    if layer.get("registered_name") or not (module == "keras.layers"
                                            or module.startswith("keras.src.layers")):
        raise ValueError(
            f"{path} holds the layer class {class_name!r} from module {module!r}, which is not "
            "one of Keras' own layers (a custom layer's code is not in the file); lstmkit "
            "reads only models built from keras.layers"
        )
    if class_name in ("Sequential", "Functional", "Model"):
        raise ValueError(f"{path} nests a model ({layer['config'].get('name')!r}); expected "
                         "a flat Sequential or Functional model")
    return layer


def _choose(layers: list[dict[str, Any]], name: str | None,
            path: Path | str) -> tuple[dict[str, Any], str]:
    """The one recurrent layer (or the one named ``name``) and its group in the weights."""
    counts: dict[str, int] = {}
    candidates = []
    for layer in layers:
        class_name = layer["class_name"]
        if class_name not in _H5_NAMES:
            continue
        n = counts.get(class_name, 0)
        counts[class_name] = n + 1
        group = _H5_NAMES[class_name] + (f"_{n}" if n else "")
        candidates.append((layer, group))
    names = [layer["config"].get("name") for layer, _ in candidates]
    if name is not None:
        candidates = [c for c in candidates if c[0]["config"].get("name") == name]
        if not candidates:
            raise ValueError(f"{path} has no LSTM, GRU, SimpleRNN or Bidirectional layer "
                             f"named {name!r}; its recurrent layers: {names}")
    if not candidates:
        raise ValueError(f"{path} holds no LSTM, GRU, SimpleRNN or Bidirectional layer; "
                         f"expected one, its layers: {[x['class_name'] for x in layers]}")
    if len(candidates) > 1:
        raise ValueError(f"{path} holds {len(candidates)} recurrent layers {names}; pick one "
                         "with name=NAME (--name in the CLI)")
    return candidates[0]


def _h5_vars(h5: Any, group: str, path: Path) -> list[Array]:
    """The datasets 0, 1, ... of an HDF5 group (a cell's kernel, recurrent_kernel, bias).

    Only objects stored in the file itself are read: a soft or external link, or a dataset
    whose data lives in another file (external storage, virtual datasets), is refused, so a
    crafted file cannot make lstmkit read other files on this machine into the weights.
    """
    node = _inside(h5, group, path)
    arrays = []
    for j in range(len(node)):
        dataset = _inside(node, str(j), path, f"{group}/{j}")
        if dataset.external or dataset.is_virtual:
            raise ValueError(f"{path}: model.weights.h5 keeps {group}/{j} in another file; "
                             "lstmkit reads only data stored inside the .keras archive")
        arrays.append(np.asarray(dataset[()]))
    return arrays


def _inside(root: Any, relative: str, path: Path, label: str | None = None) -> Any:
    """The group or dataset at ``relative`` under ``root``, reached through hard links only."""
    h5py = _h5py()
    node = root
    for part in relative.split("/"):
        link = node.get(part, getlink=True) if isinstance(node, h5py.Group) else None
        if link is None:
            raise ValueError(f"{path}: model.weights.h5 has no {label or relative!r}; expected "
                             "the weights Keras 3 saves for this layer")
        if not isinstance(link, h5py.HardLink):
            raise ValueError(f"{path}: model.weights.h5 links {label or relative!r} elsewhere "
                             f"({type(link).__name__}); lstmkit reads only data stored inside "
                             "the .keras archive")
        node = node[part]
    return node


# -- reading a Keras object ---------------------------------------------------------------------


def _read_keras_object(obj: Any, name: str | None) -> KerasRecurrent:
    """The recurrent layer of a Keras layer or model object (its config and weights)."""
    label = f"the Keras {type(obj).__name__}"
    if not hasattr(obj, "get_config"):
        raise TypeError(
            f"expected a Keras layer or model, or the path of a .keras file; got "
            f"{type(obj).__name__}"
        )
    kind = _object_class(obj)
    if kind not in _H5_NAMES:
        layers = getattr(obj, "layers", None)
        if layers is None:
            raise ValueError(f"{label} is not an LSTM, GRU, SimpleRNN or Bidirectional layer "
                             "(nor a model holding one)")
        chosen = [layer for layer in layers if _object_class(layer) in _H5_NAMES]
        names = [layer.name for layer in chosen]
        if name is not None:
            chosen = [layer for layer in chosen if layer.name == name]
        if len(chosen) != 1:
            raise ValueError(f"{label} holds the recurrent layers {names}; expected one "
                             f"{'named ' + repr(name) if name else '(pick it with name=NAME)'}")
        obj, kind = chosen[0], _object_class(chosen[0])
    if kind == "Bidirectional":
        forward, backward = obj.forward_layer, obj.backward_layer
        return KerasRecurrent(_object_class(forward), forward.get_config(),
                              [_object_weights(forward), _object_weights(backward)], obj.name,
                              obj.merge_mode, backward.get_config())
    return KerasRecurrent(kind, obj.get_config(), [_object_weights(obj)], obj.name)


def _object_class(obj: Any) -> str:
    """A Keras layer's class name if it is Keras' own class (not a subclass), else ''."""
    cls = type(obj)
    return cls.__name__ if cls.__module__.startswith("keras.") else ""


def _object_weights(layer: Any) -> list[Array]:
    weights = [np.asarray(w) for w in layer.get_weights()]
    if not weights:
        raise ValueError(f"the Keras layer {layer.name!r} has no weights yet; call it on an "
                         "input (or build it) first")
    return weights


# -- conversion ---------------------------------------------------------------------------------


def _activation(config: dict[str, Any], key: str, default: str, label: str) -> Any:
    """A Keras activation named in ``config`` as an ``lstmkit.Activation``."""
    from lstmkit.activations import get

    value = config.get(key, default)
    if not isinstance(value, str):
        raise ValueError(f"{label} has a custom {key} function ({value!r:.100}); lstmkit reads "
                         "only Keras' named activations")
    try:
        return get(value)
    except ValueError as error:
        raise ValueError(f"{label} has {key}={value!r}, which lstmkit does not compute: "
                         f"{error}") from None


def _to_layer(found: KerasRecurrent) -> Any:
    import lstmkit

    cls, config = found.class_name, found.config
    if cls not in RECURRENT_CLASSES:
        raise ValueError(f"the Keras layer {found.name!r} wraps a {cls!r}; expected an LSTM, "
                         "GRU or SimpleRNN")
    mode = RECURRENT_CLASSES[cls]
    label = f"the Keras {cls} {found.name!r}"
    bidirectional = found.backward_config is not None
    if bidirectional:
        _check_bidirectional(found, label)
    policy = config.get("dtype")
    if isinstance(policy, dict):  # a DTypePolicy: {"class_name": ..., "config": {"name": ...}}
        policy = (policy.get("config") or {}).get("name")
    if isinstance(policy, str) and policy not in ("float32", "float64"):
        raise ValueError(f"{label} computes with the dtype policy {policy!r}; lstmkit computes "
                         "in its weights' float32 or float64: save the layer with "
                         "dtype='float32' (or 'float64')")
    use_bias = bool(config.get("use_bias", True))
    units = int(config["units"])
    options: dict[str, Any] = {"bias": use_bias, "batch_first": True,
                               "bidirectional": bidirectional,
                               "stateful": bool(config.get("stateful", False)),
                               "activation": _activation(config, "activation", "tanh", label)}
    if bidirectional:
        options["merge_mode"] = found.merge_mode
    else:
        options["go_backwards"] = bool(config.get("go_backwards", False))
    if mode != "RNN":
        options["recurrent_activation"] = _activation(config, "recurrent_activation",
                                                      "sigmoid", label)
    reset_after = bool(config.get("reset_after", True))
    if mode == "GRU":
        options["linear_before_reset"] = reset_after
    states = {}
    dtype = None
    for d, weights in enumerate(found.weights):
        sfx = "_reverse" if d else ""
        tensors, dtype = _direction(weights, mode, units, use_bias, reset_after, label)
        states.update({f"{key}_l0{sfx}": value for key, value in tensors.items()})
    D = states["weight_ih_l0"].shape[1]
    layer = getattr(lstmkit, mode)(D, units, dtype=dtype, **options)
    layer.load_state_dict(states)
    return layer


def _check_bidirectional(found: KerasRecurrent, label: str) -> None:
    forward, backward = found.config, found.backward_config or {}
    if forward.get("go_backwards", False) or not backward.get("go_backwards", True):
        raise ValueError(f"the Bidirectional around {label} runs its forward layer backwards; "
                         "expected go_backwards=False forward and True backward")
    ignored = {"name", "go_backwards", "seed", "trainable"}
    differ = sorted(key for key in set(forward) | set(backward)
                    if key not in ignored and "initializer" not in key
                    and forward.get(key) != backward.get(key))
    if differ:
        raise ValueError(f"the Bidirectional around {label} has a backward layer configured "
                         f"differently ({differ}); an lstmkit layer has one configuration for "
                         "both directions")


def _direction(weights: list[Array], mode: str, H: int, use_bias: bool, reset_after: bool,
               label: str) -> tuple[dict[str, Array], np.dtype]:
    """One direction's kernel, recurrent_kernel (and bias) as lstmkit's short-named tensors."""
    n = 3 if use_bias else 2
    if len(weights) != n:
        raise ValueError(f"{label} has {len(weights)} weight tensors; expected {n} (kernel, "
                         f"recurrent_kernel{', bias' if use_bias else ''})")
    kernel, recurrent = weights[0], weights[1]
    G = {"LSTM": 4, "GRU": 3, "RNN": 1}[mode]
    if kernel.ndim != 2 or kernel.shape[1] != G * H or recurrent.shape != (H, G * H):
        raise ValueError(f"{label}: kernel {kernel.shape} and recurrent_kernel "
                         f"{recurrent.shape}; expected (input_size, {G * H}) and "
                         f"({H}, {G * H})")
    dtype = kernel.dtype
    if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise TypeError(f"{label} has {dtype} weights; lstmkit layers are float32 or float64")
    source, target = {"LSTM": (KERAS_LSTM_GATES, LSTMCell.all_gates),
                      "GRU": (KERAS_GRU_GATES, GRUCell.gates),
                      "RNN": (("h",), ("h",))}[mode]

    def ours(stacked: Array) -> Array:
        return restack(stacked, source, target, H).astype(dtype)

    tensors = {"weight_ih": ours(kernel.T), "weight_hh": ours(recurrent.T)}
    if use_bias:
        bias = weights[2]
        if mode == "GRU" and reset_after:  # (2, 3H) = [input bias, recurrent bias]
            if bias.shape != (2, G * H):
                raise ValueError(f"{label}: bias has shape {bias.shape}; expected (2, {G * H}) "
                                 "(reset_after=True)")
            tensors["bias_ih"], tensors["bias_hh"] = ours(bias[0]), ours(bias[1])
        else:
            if bias.shape != (G * H,):
                raise ValueError(f"{label}: bias has shape {bias.shape}; expected ({G * H},)")
            tensors["bias_ih"] = ours(bias)
            tensors["bias_hh"] = np.zeros(G * H, dtype=dtype)
    return tensors, dtype


__all__ = ["KerasRecurrent", "from_keras", "read_keras_file"]
