"""``lstmkit import``, ``lstmkit import-torch`` and ``lstmkit export-layer``: weights in from
ONNX, Keras and PyTorch files, out to ONNX.

``import`` converts the recurrent layer of a file into a layer file pair; the kind of file is
told by its suffix (``--format`` overrides it):

    .onnx            a graph with one ONNX LSTM, GRU or RNN node (``lstmkit.from_onnx``)
    .keras           a Keras 3 model holding one LSTM, GRU, SimpleRNN or Bidirectional
                     (``lstmkit.from_keras``; read as JSON and HDF5, nothing in it is run)
    anything else    a ``torch.save(module.state_dict())`` file of a torch.nn.LSTM, GRU or RNN,
                     read with torch.load(weights_only=True) (``import-torch`` is this case)

It writes:

    OUT.safetensors   the weights, lstmkit's (= PyTorch's) state-dict names and layouts
    OUT.json          {"format": "lstmkit.layer", "version": 1, "mode": "LSTM",
                       "config": {"input_size": ..., "hidden_size": ..., ...},
                       "source": {"format": "onnx", "file": "model.onnx"}}

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
    if layer.reverse:
        config["reverse"] = True
    if layer.stateful:
        config["stateful"] = True
    return {"format": LAYER_FORMAT, "version": LAYER_FORMAT_VERSION, "mode": layer.mode,
            "config": config}


def save_layer(layer: Any, weights: Path, force: bool,
               source: dict[str, str] | None = None) -> Path:
    """Write ``weights`` (safetensors) and its JSON sidecar, each atomically; existing files
    are kept unless ``force``. ``source`` (the file it came from) is recorded in the sidecar.
    Returns the sidecar's path."""
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
        description = layer_config(layer)
        if source is not None:
            description["source"] = source
        write_atomic(meta, (json.dumps(description, indent=2) + "\n").encode(),
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
            raise click.FileError(str(path), hint="expected the files `lstmkit import` (or "
                                                  "import-torch) writes: WEIGHTS.safetensors "
                                                  "and WEIGHTS.json")
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


_FORMATS = {".onnx": "onnx", ".keras": "keras"}  # any other suffix: a PyTorch state_dict


def _torch_options(command: Any) -> Any:
    """The options that say what a PyTorch state_dict does not record."""
    for option in reversed([
        click.option("--mode", type=click.Choice(["lstm", "gru", "rnn"], case_sensitive=False),
                     default=None, help="PyTorch: the layer type; inferred from the weight "
                     "shapes if left out."),
        click.option("--prefix", default="", show_default=True,
                     help="PyTorch: key prefix of the recurrent module inside a larger "
                     "state_dict."),
        click.option("--nonlinearity", type=click.Choice(["tanh", "relu"]), default=None,
                     help="PyTorch: an RNN's nonlinearity (not recorded in a state_dict; "
                     "default tanh)."),
        click.option("--batch-first", is_flag=True,
                     help="PyTorch: inputs are (B, T, D) (not recorded either)."),
    ]):
        command = option(command)
    return command


def _read_torch(path: Path, mode: str | None, prefix: str, nonlinearity: str | None,
                batch_first: bool) -> Any:
    from lstmkit.interop.torch_convert import TORCH_REQUIREMENT, load_torch_state_dict

    try:
        import torch  # noqa: F401
    except ImportError as error:
        raise click.ClickException(
            f"importing {path} (a PyTorch file) needs PyTorch, which is not installed: "
            f"pip install {TORCH_REQUIREMENT}"
        ) from error
    return load_torch_state_dict(path, mode, prefix=prefix, batch_first=batch_first,
                                 nonlinearity=nonlinearity or "tanh")


def _read_layer(path: Path, file_format: str, name: str | None) -> tuple[Any, list[str]]:
    """The lstmkit layer of an .onnx or .keras file, with its notes for the user."""
    notes = []
    if file_format == "onnx":
        from lstmkit.interop.onnx_import import read_onnx

        found = read_onnx(path, node=name)
        if found.initial_state is not None or found.sequence_lens is not None:
            fixed = " and ".join(n for n, v in (("the initial state", found.initial_state),
                                               ("sequence_lens", found.sequence_lens))
                                 if v is not None)
            notes.append(f"note: the graph fixes {fixed} as constants; the layer file holds "
                         "the weights only (lstmkit.interop.read_onnx reads them)")
        return found.layer, notes
    from lstmkit.interop.keras_import import from_keras

    return from_keras(path, name=name), notes


@click.command("import")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(path_type=Path),
              help="Weights file to write (OUT.safetensors); OUT.json gets the config.")
@click.option("--format", "file_format", type=click.Choice(["onnx", "keras", "torch"]),
              default=None, help="The kind of FILE; told by its suffix if left out "
              "(.onnx, .keras, anything else: PyTorch).")
@click.option("--name", default=None,
              help="ONNX / Keras: the recurrent node or layer to read, when FILE holds several.")
@_torch_options
@click.option("--force", is_flag=True, help="Replace existing output files.")
def import_layer(file: Path, out: Path, file_format: str | None, name: str | None,
                 mode: str | None, prefix: str, nonlinearity: str | None, batch_first: bool,
                 force: bool) -> None:
    """Convert the recurrent layer of an ONNX, Keras or PyTorch file into lstmkit's
    safetensors + JSON.

    Nothing in FILE is run: ONNX and Keras files are parsed, PyTorch files read with
    torch.load(weights_only=True).
    """
    file_format = file_format or _FORMATS.get(file.suffix.lower(), "torch")
    if file_format != "torch":
        given = [flag for flag, value in (("--mode", mode), ("--prefix", prefix),
                                          ("--nonlinearity", nonlinearity),
                                          ("--batch-first", batch_first)) if value]
        if given:
            raise click.UsageError(f"{', '.join(given)}: for PyTorch files only; {file} is "
                                   f"read as {file_format} (its layout and nonlinearity are "
                                   "in the file)")
    elif name is not None:
        raise click.UsageError("--name applies to ONNX and Keras files; for a PyTorch "
                               "state_dict use --prefix")
    _refuse_existing([out, sidecar_path(out)], force)
    notes: list[str] = []
    try:
        if file_format == "torch":
            layer = _read_torch(file, mode, prefix, nonlinearity, batch_first)
        else:
            layer, notes = _read_layer(file, file_format, name)
    except ImportError as error:
        raise click.ClickException(str(error)) from error
    except (OSError, ValueError, TypeError, KeyError) as error:
        raise click.ClickException(str(error).strip("'\"")) from error
    meta = save_layer(layer, out, force, source={"format": file_format, "file": file.name})
    for note in notes:
        click.echo(note)
    click.echo(f"wrote {out} and {meta}: {layer!r}")


@click.command("import-torch")
@click.argument("state_dict_file", type=click.Path(path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(path_type=Path),
              help="Weights file to write (OUT.safetensors); OUT.json gets the config.")
@_torch_options
@click.option("--force", is_flag=True, help="Replace existing output files.")
def import_torch(state_dict_file: Path, out: Path, mode: str | None, prefix: str,
                 nonlinearity: str | None, batch_first: bool, force: bool) -> None:
    """`lstmkit import FILE --format torch`: a PyTorch LSTM/GRU/RNN state_dict file into
    lstmkit's safetensors + JSON.

    The file is read with torch.load(weights_only=True): tensors only, no pickled code.
    """
    ctx = click.get_current_context()
    ctx.invoke(import_layer, file=state_dict_file, out=out, file_format="torch", name=None,
               mode=mode, prefix=prefix, nonlinearity=nonlinearity, batch_first=batch_first,
               force=force)


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
    """Export a layer written by `lstmkit import` (WEIGHTS.safetensors + .json) to ONNX."""
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


COMMANDS = [import_layer, import_torch, export_layer]
