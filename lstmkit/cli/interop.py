"""``lstmkit import-torch`` and ``lstmkit export-layer``: weights in from PyTorch, out to ONNX.

``import-torch`` converts a ``torch.save(module.state_dict())`` file of a torch.nn.LSTM, GRU
or RNN into a layer file pair:

    OUT.safetensors   the weights, lstmkit's (= PyTorch's) state-dict names and layouts
    OUT.json          {"format": "lstmkit.layer", "version": 1, "mode": "LSTM",
                       "config": {"input_size": ..., "hidden_size": ..., ...}}

``config`` holds exactly the keyword arguments of the layer's constructor, so in Python::

    meta = json.load(open("OUT.json"))
    layer = getattr(lstmkit, meta["mode"])(**meta["config"])
    layer.load_state_dict(safetensors.numpy.load_file("OUT.safetensors"))

``export-layer`` reads such a pair and writes the layer as an ONNX model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import numpy as np

LAYER_FORMAT = "lstmkit.layer"
LAYER_FORMAT_VERSION = 1


def sidecar_path(weights: Path) -> Path:
    """OUT.safetensors -> OUT.json (the layer's configuration next to its weights)."""
    return weights.with_suffix(".json")


def layer_config(layer: Any) -> dict[str, Any]:
    """The JSON description of a layer: mode and its constructor's keyword arguments."""
    config: dict[str, Any] = {
        "input_size": layer.input_size,
        "hidden_size": layer.hidden_size,
        "num_layers": layer.num_layers,
        "bias": layer.bias,
        "batch_first": layer.batch_first,
        "dropout": layer.dropout,
        "bidirectional": layer.bidirectional,
        "dtype": layer.dtype.name,
    }
    if layer.mode == "RNN":
        config["nonlinearity"] = layer.nonlinearity
    config.update(layer.cell_options)
    if layer.merge_mode != "concat":
        config["merge_mode"] = layer.merge_mode
    if layer.go_backwards:
        config["go_backwards"] = True
    return {"format": LAYER_FORMAT, "version": LAYER_FORMAT_VERSION, "mode": layer.mode,
            "config": config}


def save_layer(layer: Any, weights: Path, force: bool) -> Path:
    """Write ``weights`` (safetensors) and its JSON sidecar, each atomically; existing files
    are kept unless ``force``. Returns the sidecar's path."""
    from safetensors.numpy import save

    from lstmkit.interop.onnx_export import write_atomic

    meta = sidecar_path(weights)
    if weights.suffix == ".json":
        raise click.BadParameter(
            f"{weights} ends in .json, the name of its config sidecar; expected e.g. "
            "OUT.safetensors", param_hint="--out"
        )
    _refuse_existing([weights, meta], force)
    if not weights.parent.is_dir():
        raise click.BadParameter(f"the directory {weights.parent} does not exist",
                                 param_hint="--out")
    arrays = {name: np.ascontiguousarray(value) for name, value in layer.state_dict().items()}
    try:
        write_atomic(weights, save(arrays, metadata={"format": LAYER_FORMAT}), overwrite=force)
        write_atomic(meta, (json.dumps(layer_config(layer), indent=2) + "\n").encode(),
                     overwrite=force)
    except FileExistsError as error:
        raise click.ClickException(f"{error}; pass --force to replace it") from error
    return meta


def load_layer(weights: Path) -> Any:
    """The layer stored by ``save_layer`` (weights file and its JSON sidecar)."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    import lstmkit

    meta_path = sidecar_path(weights)
    for path in (weights, meta_path):
        if not path.is_file():
            raise click.FileError(str(path), hint="expected the files `lstmkit import-torch` "
                                                  "writes: WEIGHTS.safetensors and WEIGHTS.json")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise click.FileError(str(meta_path), hint=f"expected JSON: {error}") from error
    if not (isinstance(meta, dict) and meta.get("format") == LAYER_FORMAT
            and meta.get("mode") in ("LSTM", "GRU", "RNN")
            and isinstance(meta.get("config"), dict)):
        raise click.FileError(str(meta_path), hint=f"expected a {LAYER_FORMAT!r} description "
                                                   "with 'mode' and 'config'")
    if meta.get("version") != LAYER_FORMAT_VERSION:
        raise click.FileError(str(meta_path), hint=f"format version {meta.get('version')!r}; "
                                                   f"expected {LAYER_FORMAT_VERSION}")
    try:
        layer = getattr(lstmkit, meta["mode"])(**meta["config"])
        layer.load_state_dict(load_file(str(weights)))
    except (SafetensorError, OSError) as error:
        raise click.FileError(str(weights), hint=f"expected a safetensors file: {error}") from error
    except (TypeError, ValueError, KeyError) as error:
        raise click.ClickException(f"{weights} does not match {meta_path}: {error}") from error
    return layer


def _refuse_existing(paths: list[Path], force: bool) -> None:
    existing = [str(p) for p in paths if p.exists()]
    if existing and not force:
        raise click.ClickException(
            f"{' and '.join(existing)} already exist(s); pass --force to replace "
            "(nothing was written)"
        )


@click.command("import-torch")
@click.argument("state_dict_file", type=click.Path(path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(path_type=Path),
              help="Weights file to write (OUT.safetensors); OUT.json gets the config.")
@click.option("--mode", type=click.Choice(["lstm", "gru", "rnn"], case_sensitive=False),
              default=None, help="Layer type; inferred from the weight shapes if left out.")
@click.option("--prefix", default="", show_default=True,
              help="Key prefix of the recurrent module inside a larger state_dict.")
@click.option("--nonlinearity", type=click.Choice(["tanh", "relu"]), default="tanh",
              show_default=True, help="An RNN's nonlinearity (not recorded in a state_dict).")
@click.option("--batch-first", is_flag=True, help="Inputs are (B, T, D) (not recorded either).")
@click.option("--force", is_flag=True, help="Replace existing output files.")
def import_torch(state_dict_file: Path, out: Path, mode: str | None, prefix: str,
                 nonlinearity: str, batch_first: bool, force: bool) -> None:
    """Convert a PyTorch LSTM/GRU/RNN state_dict file into lstmkit's safetensors + JSON.

    The file is read with torch.load(weights_only=True): tensors only, no pickled code.
    """
    from lstmkit.interop.torch_convert import TORCH_REQUIREMENT, load_torch_state_dict

    try:
        import torch  # noqa: F401
    except ImportError as error:
        raise click.ClickException(
            f"import-torch needs PyTorch to read {state_dict_file}: pip install "
            f"{TORCH_REQUIREMENT}"
        ) from error
    _refuse_existing([out, sidecar_path(out)], force)
    try:
        layer = load_torch_state_dict(state_dict_file, mode, prefix=prefix,
                                      batch_first=batch_first, nonlinearity=nonlinearity)
    except (OSError, ValueError, TypeError, KeyError) as error:
        raise click.ClickException(str(error).strip("'\"")) from error
    meta = save_layer(layer, out, force)
    click.echo(f"wrote {out} and {meta}: {layer!r}")


@click.command("export-layer")
@click.argument("weights", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--opset", type=int, default=None, help="ONNX opset (default: lstmkit's).")
@click.option("--initial-state", is_flag=True, help="Add h_0 (and c_0) graph inputs.")
@click.option("--lengths", is_flag=True, help="Add an int32 'lengths' (B,) graph input.")
@click.option("--float32", "as_float32", is_flag=True,
              help="Write float32 weights (ONNX Runtime's CPU kernels need float32).")
@click.option("--force", is_flag=True, help="Replace an existing OUT.")
def export_layer(weights: Path, out: Path, opset: int | None, initial_state: bool,
                 lengths: bool, as_float32: bool, force: bool) -> None:
    """Export a layer written by `lstmkit import-torch` (WEIGHTS.safetensors + .json) to ONNX."""
    from lstmkit.interop.onnx_export import DEFAULT_OPSET, export_onnx

    layer = load_layer(weights)
    _refuse_existing([out], force)
    try:
        path = export_onnx(layer, out, opset=DEFAULT_OPSET if opset is None else opset,
                           force=force, initial_state=initial_state, lengths=lengths,
                           dtype="float32" if as_float32 else None)
    except ImportError as error:
        raise click.ClickException(str(error)) from error
    except (OSError, ValueError, TypeError) as error:
        raise click.ClickException(str(error)) from error
    click.echo(f"wrote {path}: {layer!r}")


COMMANDS = [import_torch, export_layer]
