"""Save and load lstmkit state: arrays in safetensors, everything else in JSON, never pickle.

Unpickling a file (``torch.load``, ``np.load(allow_pickle=True)``, ``pickle.load``) runs whatever
code its author put in it, so lstmkit neither writes nor reads pickles. Arrays go into
safetensors files (a JSON header followed by raw little-endian bytes, read here with
``safetensors.numpy``); everything else goes into plain JSON.

Layout
------
A **checkpoint** is a directory::

    ckpt/
        model.safetensors   every array (weights, optimizer moments, ...): a flat name -> array map
        checkpoint.json     everything else, and the SHA-256 of model.safetensors

``checkpoint.json`` has exactly these keys::

    {
      "format": "lstmkit-checkpoint",
      "format_version": 1,
      "tensors_sha256": "3a7bd3e2360a3d29eea436fcfb7e44c735d117c42d1c1835420b6b9942dd4f1b",
      "tensors_bytes": 1048712,
      "tensors": {"weight_ih_l0": {"dtype": "float32", "shape": [512, 65]}, ...},
      "meta": {...}
    }

``meta`` is the caller's JSON object: model configuration, vocabulary, optimizer scalars,
RNG state (see :func:`rng_to_json`), step and epoch counters. A checkpoint is valid if and only if
``checkpoint.json`` exists, is well formed, and the SHA-256 it records matches the arrays, so a
torn, truncated, corrupted or mismatched pair of files is always detected.

A **checkpoint root** is the directory a training run writes through :class:`CheckpointManager`::

    runs/exp1/
        step-000100/    a checkpoint as above, one per save
        step-000200/
        step-000300/
        latest.json     {"format": "lstmkit-checkpoint-pointer", "format_version": 1,
                         "checkpoint": "step-000300", "step": 300, "newest_step": 300}
        best.json       the same without "newest_step"; names the last checkpoint saved with
                        is_best=True

``latest.json`` names the checkpoint to resume from; ``newest_step`` is the highest step that
any completed save in this root has used (usually the same step, unless the run went back to an
earlier step, as a restarted run does).

The pointers are small JSON files, not symlinks, so they work on every file system and are
replaced atomically. The manager keeps the newest ``keep`` checkpoints plus the ones the two
pointers name; it deletes nothing but older ``step-*`` checkpoints and its own temporary files,
so other files in the root (logs, plots) are safe.

**The checkpoint path** a user gives (to :func:`load_checkpoint`, or to resume training) is either
a checkpoint directory, which is loaded as it is, or a checkpoint root, from which the checkpoint
``latest.json`` names is loaded -- or, if that one is damaged, the newest intact one, with a
:class:`CheckpointWarning`.

Crash safety
------------
Every file is written under a temporary name in its final directory (``.NAME.<random>.tmp``),
flushed and fsynced, then renamed over its final name with ``os.replace``, which is atomic; the
directory is fsynced after each rename so that the renames reach the disk in order. A checkpoint
is saved in three such steps:

1. write the new arrays to ``model.safetensors.pending``;
2. write ``checkpoint.json``, whose hash names the new arrays -- this rename is the commit;
3. rename ``model.safetensors.pending`` over ``model.safetensors``.

Killed before step 2, the directory still holds the previous checkpoint (``checkpoint.json`` and
``model.safetensors`` still agree). Killed between steps 2 and 3, the loader finds the arrays
``checkpoint.json`` names in ``model.safetensors.pending``, and the next save into the directory
completes the rename before it writes anything. The manager writes each save into a new
``step-*`` directory and rewrites ``latest.json`` only after it, so ``latest.json`` always names a
complete checkpoint; rewriting ``latest.json`` is the manager's commit. A checkpoint with a step
above ``newest_step`` is therefore a save killed before its commit: training resumed from
``latest.json`` saves that step again, and that save replaces it without needing ``force``.
Temporary files left by a killed save are removed by the next save into the same place. One
process at a time may write to a directory.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import safetensors
import safetensors.numpy

__all__ = [
    "CheckpointError",
    "CheckpointManager",
    "CheckpointWarning",
    "load_arrays",
    "load_checkpoint",
    "rng_from_json",
    "rng_state_from_json",
    "rng_state_to_json",
    "rng_to_json",
    "save_arrays",
    "save_checkpoint",
]

FORMAT = "lstmkit-checkpoint"
POINTER_FORMAT = "lstmkit-checkpoint-pointer"
FORMAT_VERSION = 1

TENSORS_FILE = "model.safetensors"
PENDING_TENSORS_FILE = "model.safetensors.pending"
META_FILE = "checkpoint.json"
LATEST_FILE = "latest.json"
BEST_FILE = "best.json"

_RECORD_KEYS = ("format", "format_version", "tensors_sha256", "tensors_bytes", "tensors", "meta")
_POINTER_KEYS = ("format", "format_version", "checkpoint", "step")
_LATEST_KEYS = (*_POINTER_KEYS, "newest_step")

# The dtypes that both safetensors and NumPy represent exactly.
_DTYPES = (
    "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
    "float16", "float32", "float64",
)  # fmt: skip

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_STEP_DIR = re.compile(r"^step-(\d+)$")
# Names this module gives to its temporary files; only these are ever cleaned up.
_CHECKPOINT_LEFTOVER = re.compile(
    r"^\.(?:model\.safetensors\.pending|checkpoint\.json)\.[0-9a-f]{12}\.tmp$"
)
_ROOT_LEFTOVER = re.compile(
    r"^\.(?:(?:latest|best)\.json\.[0-9a-f]{12}\.tmp|step-\d+\.[0-9a-f]{12}\.trash)$"
)

_PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".bin", ".npy", ".npz", ".ckpt", ".joblib")


class CheckpointError(ValueError):
    """A checkpoint or array file is missing, damaged, of the wrong kind, or may not be written.

    The message names the path and says what was expected there.
    """


class CheckpointWarning(UserWarning):
    """A damaged checkpoint or pointer was skipped and an intact checkpoint loaded instead."""


# ----------------------------------------------------------------------------------------------
# Writing files atomically


def _temporary_name(final: Path, kind: str = "tmp") -> Path:
    """A fresh hidden name beside ``final``: ``.NAME.<12 hex digits>.<kind>``."""
    return final.with_name(f".{final.name}.{secrets.token_hex(6)}.{kind}")


def _fsync_directory(directory: Path) -> None:
    """Make the renames in ``directory`` durable (POSIX only: Windows cannot open directories)."""
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that ``path`` holds its old content or all of ``data``."""
    temporary = _temporary_name(path)
    try:
        # os.open, unlike tempfile.mkstemp, honours the umask (mkstemp always makes 0600 files).
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    _fsync_directory(path.parent)


def _dump_json(value: Any) -> bytes:
    return (json.dumps(value, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def _remove_leftovers(directory: Path, pattern: re.Pattern[str]) -> None:
    """Delete the temporary files and directories a killed save left in ``directory``."""
    for name in os.listdir(directory):
        if not pattern.match(name):
            continue
        path = directory / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


# ----------------------------------------------------------------------------------------------
# Reading and checking files


def _read_bytes(path: Path, expected: str) -> bytes:
    """Read a whole file; every failure becomes a CheckpointError that says what was expected."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing; expected {expected}") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path} is a directory; expected {expected}") from None
    except OSError as error:
        raise CheckpointError(
            f"{path} cannot be read ({error.strerror}); expected {expected}"
        ) from None


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _foreign_format(data: bytes) -> str | None:
    """Name the pickle-based format ``data`` is in, or None if it is none that we recognise."""
    if len(data) >= 2 and data[0] == 0x80 and 2 <= data[1] <= 5:
        return "a Python pickle"
    if data.startswith(b"PK\x03\x04"):
        return "a ZIP archive (PyTorch .pt/.pth and NumPy .npz files are ZIP archives of pickles)"
    if data.startswith(b"\x93NUMPY"):
        return "a NumPy .npy file (which may hold pickled object arrays)"
    return None


def _pickle_refusal(path: Path, kind: str) -> CheckpointError:
    return CheckpointError(
        f"{path} is {kind}, not a safetensors file. lstmkit never loads pickle-based files, "
        "because loading one can run arbitrary code; convert it to safetensors in an environment "
        "you trust (for example np.load(..., allow_pickle=False) then lstmkit.io.save_arrays)"
    )


def _decode_safetensors(data: bytes, path: Path) -> dict[str, np.ndarray]:
    """Parse safetensors bytes into writable NumPy arrays; never executes anything from the file."""
    kind = _foreign_format(data)
    if kind is not None:
        raise _pickle_refusal(path, kind)
    if len(data) < 8:
        raise CheckpointError(
            f"{path} is {len(data)} bytes long, too short for a safetensors file (8 bytes of "
            "header length, then a JSON header); it is empty or truncated"
        )
    try:
        arrays = safetensors.numpy.load(data)
    except KeyError as error:
        raise CheckpointError(
            f"{path} holds an array of dtype {error.args[0]}, which NumPy cannot represent; "
            f"expected one of {', '.join(_DTYPES)}"
        ) from None
    except (safetensors.SafetensorError, ValueError, TypeError) as error:
        raise CheckpointError(
            f"{path} is not a valid safetensors file ({error}); it is truncated or corrupt"
        ) from None
    return {name: a if a.flags.writeable else a.copy() for name, a in arrays.items()}


def _parse_json(data: bytes, path: Path, expected: str) -> Any:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise CheckpointError(
            f"{path} is not UTF-8 text (byte {data[error.start]:#04x} at offset {error.start}); "
            f"expected {expected}"
        ) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise CheckpointError(
            f"{path} is not valid JSON ({error.msg} at line {error.lineno}, column "
            f"{error.colno}); expected {expected}; the file is truncated or corrupt"
        ) from None
    except (ValueError, RecursionError) as error:
        raise CheckpointError(f"{path} cannot be parsed ({error}); expected {expected}") from None


def _check_format(record: Any, path: Path, fmt: str, keys: tuple[str, ...]) -> dict[str, Any]:
    """Check that a parsed JSON file is a ``fmt`` object of our version with exactly ``keys``."""
    if not isinstance(record, dict):
        raise CheckpointError(
            f"{path} holds a JSON {type(record).__name__}; expected an object with format {fmt!r}"
        )
    if record.get("format") != fmt:
        raise CheckpointError(
            f"{path} is not an lstmkit file of the right kind: its 'format' is "
            f"{record.get('format')!r}, expected {fmt!r}"
        )
    version = record.get("format_version")
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format version {version}, written by a newer lstmkit; this lstmkit reads "
            f"version {FORMAT_VERSION}: upgrade lstmkit to load it"
        )
    if not isinstance(version, int) or isinstance(version, bool) or version != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format_version {version!r}; expected the integer {FORMAT_VERSION}"
        )
    missing = [key for key in keys if key not in record]
    unexpected = sorted(key for key in record if key not in keys)
    if missing or unexpected:
        details = []
        if missing:
            details.append(f"missing {', '.join(map(repr, missing))}")
        if unexpected:
            details.append(f"unexpected {', '.join(map(repr, unexpected))}")
        raise CheckpointError(
            f"{path} has the wrong keys ({'; '.join(details)}); expected exactly "
            f"{', '.join(map(repr, keys))}"
        )
    return record


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _read_record(directory: Path) -> dict[str, Any]:
    """Read and validate ``checkpoint.json``; return it as a dict."""
    path = directory / META_FILE
    expected = "the checkpoint.json that lstmkit.io.save_checkpoint writes"
    record = _check_format(
        _parse_json(_read_bytes(path, expected), path, expected), path, FORMAT, _RECORD_KEYS
    )
    if not isinstance(record["tensors_sha256"], str) or not _SHA256.match(record["tensors_sha256"]):
        raise CheckpointError(
            f"{path}: 'tensors_sha256' is {record['tensors_sha256']!r}; expected 64 lowercase "
            "hexadecimal digits"
        )
    if not _is_count(record["tensors_bytes"]):
        raise CheckpointError(
            f"{path}: 'tensors_bytes' is {record['tensors_bytes']!r}; expected a byte count"
        )
    manifest = record["tensors"]
    if not isinstance(manifest, dict):
        raise CheckpointError(f"{path}: 'tensors' is not a JSON object; expected name -> spec")
    for name, spec in manifest.items():
        if (
            not isinstance(spec, dict)
            or set(spec) != {"dtype", "shape"}
            or spec["dtype"] not in _DTYPES
            or not isinstance(spec["shape"], list)
            or not all(_is_count(n) for n in spec["shape"])
        ):
            raise CheckpointError(
                f"{path}: 'tensors'[{name!r}] is {spec!r}; expected "
                '{"dtype": <a NumPy dtype name>, "shape": [<sizes>]}'
            )
    if not isinstance(record["meta"], dict):
        raise CheckpointError(f"{path}: 'meta' is not a JSON object")
    return record


def _describe_mismatch(path: Path, data: bytes, record: dict[str, Any]) -> str:
    """Say how a tensor file that fails its hash check differs from what the JSON describes."""
    message = (
        f"{path} does not match {path.parent / META_FILE}: expected {record['tensors_bytes']} "
        f"bytes with SHA-256 {record['tensors_sha256'][:16]}..., found {len(data)} bytes"
    )
    kind = _foreign_format(data)
    if kind is not None:
        return f"{message}; the file is {kind}, which lstmkit never loads"
    try:
        arrays = _decode_safetensors(data, path)
    except CheckpointError:
        if len(data) < record["tensors_bytes"]:
            return f"{message}: the file is truncated"
        return f"{message}: the file is corrupt"
    layout = {name: {"dtype": a.dtype.name, "shape": list(a.shape)} for name, a in arrays.items()}
    if layout == record["tensors"]:
        return (
            f"{message}: it holds the arrays {META_FILE} lists, with other values; the file is "
            "corrupt, or comes from another save"
        )
    return (
        f"{message}: it is a safetensors file with other arrays than {META_FILE} lists; it "
        "belongs to another checkpoint"
    )


def _committed_tensor_bytes(directory: Path, record: dict[str, Any]) -> tuple[bytes, Path]:
    """Find the tensor bytes whose hash ``checkpoint.json`` records (see "Crash safety")."""
    main = directory / TENSORS_FILE
    expected = record["tensors_sha256"]
    try:
        data: bytes | None = main.read_bytes()
    except FileNotFoundError:
        data = None
    except OSError as error:
        raise CheckpointError(f"{main} cannot be read ({error.strerror})") from None
    if data is not None and _sha256(data) == expected:
        return data, main

    # A save killed between its commit and its last rename leaves the committed arrays here.
    pending = directory / PENDING_TENSORS_FILE
    if pending.is_file():
        pending_data = _read_bytes(pending, "the arrays of an interrupted save")
        if _sha256(pending_data) == expected:
            return pending_data, pending

    if data is None:
        raise CheckpointError(
            f"{main} is missing; expected the arrays that {directory / META_FILE} describes"
        )
    raise CheckpointError(_describe_mismatch(main, data, record))


def _load_checkpoint_directory(directory: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    if not directory.is_dir():
        raise CheckpointError(f"{directory} is not a directory; expected a checkpoint directory")
    record = _read_record(directory)
    data, source = _committed_tensor_bytes(directory, record)
    arrays = _decode_safetensors(data, source)
    manifest: dict[str, Any] = record["tensors"]
    if set(arrays) != set(manifest):
        raise CheckpointError(
            f"{source} holds the arrays {sorted(arrays)}, but {directory / META_FILE} lists "
            f"{sorted(manifest)}"
        )
    for name, spec in manifest.items():
        if arrays[name].dtype.name != spec["dtype"] or list(arrays[name].shape) != spec["shape"]:
            raise CheckpointError(
                f"{source}: array {name!r} is {arrays[name].dtype.name} {list(arrays[name].shape)}"
                f", but {directory / META_FILE} says {spec['dtype']} {spec['shape']}"
            )
    return {name: arrays[name] for name in manifest}, record["meta"]


# ----------------------------------------------------------------------------------------------
# Checking what callers pass in


def _check_arrays(arrays: Any, argument: str) -> dict[str, np.ndarray]:
    """Validate a name -> array mapping; return it with every array C-contiguous."""
    if not isinstance(arrays, Mapping):
        raise TypeError(f"{argument} is a {type(arrays).__name__}; expected a dict name -> ndarray")
    checked: dict[str, np.ndarray] = {}
    for name, array in arrays.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"{argument} has the key {name!r}; expected non-empty string names")
        if name == "__metadata__":
            raise ValueError(f"{argument} uses the name '__metadata__', which safetensors reserves")
        if not isinstance(array, np.ndarray):
            raise TypeError(
                f"{argument}[{name!r}] is a {type(array).__name__}; expected a numpy.ndarray"
            )
        if array.dtype.name not in _DTYPES:
            raise TypeError(
                f"{argument}[{name!r}] has dtype {array.dtype}; expected one of "
                f"{', '.join(_DTYPES)}"
            )
        # safetensors.numpy reads the raw buffer, so a strided view must be copied first
        # (np.ascontiguousarray would also turn a 0-d array into a 1-d one).
        checked[name] = array if array.flags.c_contiguous else array.copy(order="C")
    return checked


def _check_json_value(value: Any, where: str) -> Any:
    """Return ``value`` as plain JSON types, or raise if JSON would not give it back unchanged."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, list):
        return [_check_json_value(item, f"{where}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, Mapping):
        result = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(
                    f"{where} has the key {key!r} ({type(key).__name__}); JSON object keys must be "
                    "strings, and any other key would come back as a string"
                )
            result[key] = _check_json_value(item, f"{where}[{key!r}]")
        return result
    if isinstance(value, np.ndarray):
        hint = "; put arrays in `tensors`, and NumPy RNG state through rng_to_json()"
    elif isinstance(value, tuple):
        hint = "; pass a list (JSON would give a tuple back as a list)"
    else:
        hint = ""
    raise TypeError(f"{where} is a {type(value).__name__}, which JSON cannot hold{hint}")


# ----------------------------------------------------------------------------------------------
# Single checkpoints


def _step_of(name: str) -> int:
    match = _STEP_DIR.match(name)
    assert match is not None, name
    return int(match.group(1))


def _is_checkpoint_root(directory: Path, entries: list[str]) -> bool:
    return (
        LATEST_FILE in entries
        or BEST_FILE in entries
        or any(_STEP_DIR.match(name) and (directory / name).is_dir() for name in entries)
    )


def _finish_interrupted_save(directory: Path) -> None:
    """Complete the last rename of a save killed after its commit (see "Crash safety").

    Must run before a new save overwrites ``model.safetensors.pending``, which may hold the only
    copy of the arrays that ``checkpoint.json`` names.
    """
    pending = directory / PENDING_TENSORS_FILE
    if not pending.is_file():
        return
    try:
        record = _read_record(directory)
        data, source = _committed_tensor_bytes(directory, record)
    except CheckpointError:
        return  # the checkpoint being replaced is damaged: there is nothing intact to keep
    if source == pending:
        os.replace(pending, directory / TENSORS_FILE)
        _fsync_directory(directory)


def _prepare_checkpoint_directory(directory: Path, force: bool) -> None:
    """Create ``directory`` or check that a checkpoint may be written into it."""
    if not directory.exists():
        directory.mkdir(parents=True)
        return
    if not directory.is_dir():
        raise CheckpointError(
            f"{directory} exists and is not a directory; expected a checkpoint directory or a "
            "path that does not exist yet"
        )
    entries = os.listdir(directory)
    if META_FILE in entries:
        if not force:
            raise CheckpointError(
                f"{directory} already holds a checkpoint; pass force=True to replace it, or use "
                "CheckpointManager to keep several"
            )
        _finish_interrupted_save(directory)
    elif _is_checkpoint_root(directory, entries):
        raise CheckpointError(
            f"{directory} is a checkpoint root (it holds {LATEST_FILE}, {BEST_FILE} or step-* "
            "directories); save into it with CheckpointManager(...).save(), or choose another path"
        )
    else:
        others = sorted(
            name
            for name in entries
            if name != PENDING_TENSORS_FILE and not _CHECKPOINT_LEFTOVER.match(name)
        )
        if others and not force:
            shown = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
            raise CheckpointError(
                f"{directory} is a directory that is not a checkpoint (it holds {shown}); choose a "
                "new or empty directory, or pass force=True to write the checkpoint beside them"
            )
    _remove_leftovers(directory, _CHECKPOINT_LEFTOVER)


def save_checkpoint(
    directory: str | os.PathLike[str],
    tensors: Mapping[str, np.ndarray],
    meta: Mapping[str, Any],
    *,
    force: bool = False,
) -> Path:
    """Save arrays and metadata as a checkpoint directory, atomically.

    Args:
        directory: the checkpoint directory; created (with its parents) if it does not exist.
            An empty directory is fine. A directory that already holds a checkpoint, or holds
            other files, is refused unless ``force`` is true. A checkpoint root (see the module
            docstring) is always refused: use :class:`CheckpointManager` for those.
        tensors: name -> ndarray, every array of the state (weights, optimizer moments, ...).
            Arrays may be bool, (u)int8-64 or float16/32/64, of any shape.
        meta: a JSON object with everything else: configuration, vocabulary, scalars, step
            counters, RNG state encoded with :func:`rng_to_json`. Keys must be strings and values
            JSON types (NumPy scalars are converted); anything JSON would not give back unchanged,
            such as an ndarray or a tuple, is refused. Non-finite floats are written as Python's
            JSON extensions ``NaN`` and ``Infinity``.
        force: replace an existing checkpoint, or write into a non-checkpoint directory (whose
            ``model.safetensors`` and ``checkpoint.json``, if any, are then replaced).

    Returns:
        The checkpoint directory.

    Raises:
        TypeError, ValueError: ``tensors`` or ``meta`` cannot be saved exactly.
        CheckpointError: the directory may not be written.

    If the process is killed at any moment, ``directory`` holds either the previous checkpoint
    or the new one, intact.
    """
    directory = Path(directory)
    arrays = _check_arrays(tensors, "tensors")
    if not isinstance(meta, Mapping):
        raise TypeError(f"meta is a {type(meta).__name__}; expected a dict (a JSON object)")
    meta_json = _check_json_value(meta, "meta")
    data = safetensors.numpy.save(arrays)
    record = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "tensors_sha256": _sha256(data),
        "tensors_bytes": len(data),
        "tensors": {
            name: {"dtype": array.dtype.name, "shape": list(array.shape)}
            for name, array in arrays.items()
        },
        "meta": meta_json,
    }
    record_bytes = _dump_json(record)

    _prepare_checkpoint_directory(directory, force)
    _write_atomic(directory / PENDING_TENSORS_FILE, data)
    _write_atomic(directory / META_FILE, record_bytes)  # the commit
    os.replace(directory / PENDING_TENSORS_FILE, directory / TENSORS_FILE)
    _fsync_directory(directory)
    return directory


def _file_given_hint(path: Path) -> str:
    if path.name == META_FILE:
        return f"pass its directory, {path.parent}"
    if path.suffix == ".safetensors":
        return "a plain .safetensors file is read with lstmkit.io.load_arrays()"
    if path.suffix in _PICKLE_SUFFIXES:
        return (
            f"lstmkit never loads {path.suffix} files, which may hold pickles that run code "
            "when loaded"
        )
    return "a checkpoint is a directory holding checkpoint.json and model.safetensors"


def load_checkpoint(
    path: str | os.PathLike[str],
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Load a checkpoint: ``(tensors, meta)``, as given to :func:`save_checkpoint`.

    Args:
        path: a checkpoint directory, or a checkpoint root written by :class:`CheckpointManager`
            (then the checkpoint ``latest.json`` names is loaded, or -- with a
            :class:`CheckpointWarning` -- the newest intact one if that is damaged).

    Returns:
        ``tensors`` (name -> writable ndarray, in the order they were saved) and ``meta``
        (the JSON object that was saved).

    Raises:
        CheckpointError: the path is missing or is not a checkpoint, a file is truncated or
            corrupt, the JSON has the wrong format, version or keys, or the arrays do not match
            the hash that ``checkpoint.json`` records. Nothing in the files is ever executed.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(
            f"{path} does not exist; expected a checkpoint directory or a checkpoint root"
        )
    if not path.is_dir():
        raise CheckpointError(
            f"{path} is a file; expected a checkpoint directory or a checkpoint root "
            f"({_file_given_hint(path)})"
        )
    entries = os.listdir(path)
    if META_FILE in entries:
        return _load_checkpoint_directory(path)
    if _is_checkpoint_root(path, entries):
        return CheckpointManager(path).load_latest()
    if TENSORS_FILE in entries or PENDING_TENSORS_FILE in entries:
        raise CheckpointError(
            f"{path} has arrays but no {META_FILE}: the save that wrote them did not finish, or "
            f"{META_FILE} was deleted; without it the checkpoint cannot be verified or loaded"
        )
    raise CheckpointError(
        f"{path} is neither a checkpoint directory (it has no {META_FILE}) nor a checkpoint root "
        f"(it has no {LATEST_FILE} and no step-* directories)"
    )


# ----------------------------------------------------------------------------------------------
# Plain array files


def save_arrays(
    path: str | os.PathLike[str], arrays: Mapping[str, np.ndarray], *, force: bool = False
) -> Path:
    """Write a name -> array dict to a ``.safetensors`` file, atomically.

    Args:
        path: the file to write; it must end in ``.safetensors``. Missing parent directories
            are created.
        arrays: name -> ndarray (bool, (u)int8-64 or float16/32/64, any shape).
        force: replace the file if it exists; without it an existing file is refused.

    Returns:
        The path written.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise CheckpointError(f"{path} does not end in .safetensors; expected a .safetensors path")
    checked = _check_arrays(arrays, "arrays")
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory; expected a .safetensors file path")
    if path.exists() and not force:
        raise CheckpointError(f"{path} already exists; pass force=True to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(path, safetensors.numpy.save(checked))
    return path


def load_arrays(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Read a ``.safetensors`` file into a name -> writable ndarray dict, sorted by name.

    Raises:
        CheckpointError: the file is missing, empty, truncated, corrupt, or a pickle-based
            format (``.pt``, ``.pkl``, ``.npy``, ...), which is refused without being parsed.
    """
    path = Path(path)
    arrays = _decode_safetensors(_read_bytes(path, "a safetensors file"), path)
    return dict(sorted(arrays.items()))


# ----------------------------------------------------------------------------------------------
# Rotation


class CheckpointManager:
    """Numbered checkpoints of a training run in one directory, with rotation.

    Each :meth:`save` writes a new checkpoint ``out_dir/step-NNNNNN/``, then points
    ``latest.json`` at it (and ``best.json`` too with ``is_best=True``), then deletes the oldest
    checkpoints beyond the newest ``keep`` -- never the ones ``latest.json`` or ``best.json``
    names. See the module docstring for the layout and the crash-safety argument.

    Example::

        manager = CheckpointManager("runs/exp1", keep=3)
        manager.save(step, tensors, {"step": step, "rng": rng_to_json(rng)}, is_best=improved)
        tensors, meta = manager.load_latest()

    Args:
        out_dir: the checkpoint root; created on the first save. It may hold other files,
            which are never touched. A single checkpoint directory is refused.
        keep: how many of the newest checkpoints to keep (at least 1).
    """

    def __init__(self, out_dir: str | os.PathLike[str], keep: int = 3) -> None:
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise ValueError(f"keep is {keep!r}; expected an integer >= 1")
        self.out_dir = Path(out_dir)
        self.keep = keep
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise CheckpointError(f"{self.out_dir} is a file; expected a checkpoint root directory")
        if (self.out_dir / META_FILE).exists():
            raise CheckpointError(
                f"{self.out_dir} is a single checkpoint, not a checkpoint root; load it with "
                "load_checkpoint() and give CheckpointManager a directory of its own"
            )

    def __repr__(self) -> str:
        return f"CheckpointManager({str(self.out_dir)!r}, keep={self.keep})"

    def checkpoints(self) -> list[Path]:
        """The complete checkpoint directories (``step-*`` with a checkpoint.json), oldest first.

        Completeness is judged by the presence of checkpoint.json; hashes are not checked here.
        """
        if not self.out_dir.is_dir():
            return []
        found = []
        for name in os.listdir(self.out_dir):
            if _STEP_DIR.match(name) and (self.out_dir / name / META_FILE).is_file():
                found.append((_step_of(name), name))
        return [self.out_dir / name for _, name in sorted(found)]

    def latest_path(self) -> Path | None:
        """The checkpoint ``latest.json`` names (not verified), or None without ``latest.json``."""
        name = self._read_pointer(LATEST_FILE)
        return None if name is None else self.out_dir / name

    def best_path(self) -> Path | None:
        """The checkpoint ``best.json`` names (not verified), or None without ``best.json``."""
        name = self._read_pointer(BEST_FILE)
        return None if name is None else self.out_dir / name

    def save(
        self,
        step: int,
        tensors: Mapping[str, np.ndarray],
        meta: Mapping[str, Any],
        *,
        is_best: bool = False,
        force: bool = False,
    ) -> Path:
        """Save ``out_dir/step-NNNNNN/``, update the pointers, and delete old checkpoints.

        Args:
            step: the training step (an integer >= 0); names the directory.
            tensors, meta: as for :func:`save_checkpoint`.
            is_best: also point ``best.json`` at this checkpoint.
            force: replace an existing checkpoint of the same step; without it that is refused,
                unless that checkpoint is newer than the one ``latest.json`` names (a save
                killed before it could update ``latest.json``; see the module docstring).

        Returns:
            The new checkpoint directory.
        """
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
            raise ValueError(f"step is {step!r}; expected an integer >= 0")
        step = int(step)
        target = self.out_dir / f"step-{step:06d}"
        replace = force
        if (target / META_FILE).exists() and not force:
            if not self._is_uncommitted(target):
                raise CheckpointError(
                    f"{target} already holds the checkpoint of step {step}; pass force=True to "
                    "replace it"
                )
            replace = True
        newest_step = max(step, self._newest_step())
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._remove_leftovers()
        save_checkpoint(target, tensors, meta, force=replace)
        self._write_pointer(LATEST_FILE, target.name, step, newest_step=newest_step)
        if is_best:
            self._write_pointer(BEST_FILE, target.name, step)
        self._rotate()
        return target

    def load_latest(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Load the checkpoint ``latest.json`` names; see :func:`load_checkpoint`.

        If ``latest.json`` is missing or damaged, or the checkpoint it names is, the newest intact
        checkpoint is loaded instead and a :class:`CheckpointWarning` says why.

        Raises:
            CheckpointError: no intact checkpoint exists; the message lists what was wrong
                with each one tried.
        """
        if not self.out_dir.is_dir():
            raise CheckpointError(f"{self.out_dir} is not a directory; expected a checkpoint root")
        problems: list[str] = []
        try:
            named = self._read_pointer(LATEST_FILE)
        except CheckpointError as error:
            named, problems = None, [str(error)]
        if named is None and not problems:
            problems.append(f"{self.out_dir / LATEST_FILE} is missing")
        candidates = [self.out_dir / named] if named is not None else []
        candidates += [path for path in reversed(self.checkpoints()) if path.name != named]
        for path in candidates:
            try:
                result = _load_checkpoint_directory(path)
            except CheckpointError as error:
                problems.append(str(error))
                continue
            if problems:
                warnings.warn(
                    f"loaded {path} instead of the latest checkpoint: {'; '.join(problems)}",
                    CheckpointWarning,
                    stacklevel=2,
                )
            return result
        if not candidates:
            raise CheckpointError(
                f"{self.out_dir} holds no checkpoint; expected step-NNNNNN directories and "
                f"{LATEST_FILE}, as CheckpointManager.save writes them"
            )
        raise CheckpointError(f"{self.out_dir} holds no intact checkpoint: {'; '.join(problems)}")

    def load_best(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Load the checkpoint ``best.json`` names; there is no fallback for this one.

        Raises:
            CheckpointError: there is no ``best.json``, or it or its checkpoint is damaged.
        """
        named = self._read_pointer(BEST_FILE)
        if named is None:
            raise CheckpointError(
                f"{self.out_dir / BEST_FILE} is missing; no checkpoint was saved with is_best=True"
            )
        return _load_checkpoint_directory(self.out_dir / named)

    def _is_uncommitted(self, checkpoint: Path) -> bool:
        """Whether ``checkpoint`` was written by a save killed before it updated ``latest.json``.

        Such a checkpoint is newer than the one ``latest.json`` names and is not the best one;
        training resumed from ``latest.json`` will save that step again and may replace it.
        """
        try:
            latest = self._read_pointer_record(LATEST_FILE)
            best = self._read_pointer(BEST_FILE)
        except CheckpointError:
            return False  # when in doubt, protect it
        if latest is None or checkpoint.name == best:
            return False
        return _step_of(checkpoint.name) > latest["newest_step"]

    def _newest_step(self) -> int:
        """The highest step used by a completed save (-1 if none); see the module docstring."""
        try:
            latest = self._read_pointer_record(LATEST_FILE)
        except CheckpointError:
            latest = None
        if latest is not None:
            return latest["newest_step"]
        # Without a readable latest.json, count every complete checkpoint as committed.
        return max((_step_of(path.name) for path in self.checkpoints()), default=-1)

    def _write_pointer(
        self, filename: str, name: str, step: int, *, newest_step: int | None = None
    ) -> None:
        pointer: dict[str, Any] = {
            "format": POINTER_FORMAT,
            "format_version": FORMAT_VERSION,
            "checkpoint": name,
            "step": step,
        }
        if newest_step is not None:
            pointer["newest_step"] = newest_step
        _write_atomic(self.out_dir / filename, _dump_json(pointer))

    def _read_pointer(self, filename: str) -> str | None:
        """The checkpoint name a pointer file holds, or None if there is no such file."""
        record = self._read_pointer_record(filename)
        return None if record is None else record["checkpoint"]

    def _read_pointer_record(self, filename: str) -> dict[str, Any] | None:
        """A validated pointer file as a dict, or None if there is no such file."""
        path = self.out_dir / filename
        if not path.exists():
            return None
        expected = "a pointer file that CheckpointManager writes"
        keys = _LATEST_KEYS if filename == LATEST_FILE else _POINTER_KEYS
        record = _check_format(
            _parse_json(_read_bytes(path, expected), path, expected), path, POINTER_FORMAT, keys
        )
        name = record["checkpoint"]
        # Only a plain step-* name: a pointer must never lead outside the root.
        if not isinstance(name, str) or not _STEP_DIR.match(name):
            raise CheckpointError(
                f"{path}: 'checkpoint' is {name!r}; expected a name like step-000100"
            )
        for key in keys[3:]:
            if not _is_count(record[key]):
                raise CheckpointError(f"{path}: {key!r} is {record[key]!r}; expected a step >= 0")
        return record

    def _rotate(self) -> None:
        try:
            protected = {self._read_pointer(LATEST_FILE), self._read_pointer(BEST_FILE)}
        except CheckpointError as error:
            warnings.warn(
                f"not deleting old checkpoints, because a pointer cannot be read: {error}",
                CheckpointWarning,
                stacklevel=3,
            )
            return
        checkpoints = self.checkpoints()
        keep = {path.name for path in checkpoints[-self.keep :]} | protected
        for path in checkpoints:
            if path.name not in keep:
                # Renamed first, so that a kill during the deletion leaves a hidden leftover
                # (removed by the next save) rather than a half-deleted checkpoint.
                trash = _temporary_name(path, "trash")
                os.replace(path, trash)
                _fsync_directory(self.out_dir)
                shutil.rmtree(trash)

    def _remove_leftovers(self) -> None:
        """Remove what killed saves left: temporary files and unfinished step directories."""
        _remove_leftovers(self.out_dir, _ROOT_LEFTOVER)
        for name in os.listdir(self.out_dir):
            directory = self.out_dir / name
            if not _STEP_DIR.match(name) or not directory.is_dir():
                continue
            entries = os.listdir(directory)
            if META_FILE in entries:
                continue
            if all(e == PENDING_TENSORS_FILE or _CHECKPOINT_LEFTOVER.match(e) for e in entries):
                for entry in entries:
                    (directory / entry).unlink()
                directory.rmdir()


# ----------------------------------------------------------------------------------------------
# NumPy RNG state as exact JSON

# Integers beyond 2**53 would be rounded by JSON readers that use doubles (JavaScript, jq), so
# they are written as decimal strings; Python's json alone would keep them, but files outlive tools.
_EXACT_JSON_INT = 2**53

_BIT_GENERATORS: dict[str, type[np.random.BitGenerator]] = {
    "PCG64": np.random.PCG64,
    "PCG64DXSM": np.random.PCG64DXSM,
    "MT19937": np.random.MT19937,
    "Philox": np.random.Philox,
    "SFC64": np.random.SFC64,
}


def _encode_exact(value: Any, where: str) -> Any:
    if isinstance(value, Mapping):
        encoded = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{where} has the key {key!r}; expected string keys")
            encoded[key] = _encode_exact(item, f"{where}[{key!r}]")
        return encoded
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "iu":
            raise TypeError(f"{where} is a {value.dtype} array; expected an integer array")
        return {
            "__ndarray__": [_encode_exact(item, where) for item in value.ravel().tolist()],
            "dtype": value.dtype.name,
            "shape": list(value.shape),
        }
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        value = int(value)
        return value if abs(value) < _EXACT_JSON_INT else {"__int__": str(value)}
    if value is None or isinstance(value, (str, float)):
        return value
    raise TypeError(f"{where} is a {type(value).__name__}; expected RNG state values")


def _decode_exact(value: Any, where: str) -> Any:
    if isinstance(value, list):
        return [_decode_exact(item, f"{where}[{i}]") for i, item in enumerate(value)]
    if not isinstance(value, dict):
        return value
    if set(value) == {"__int__"}:
        digits = value["__int__"]
        if not isinstance(digits, str) or not re.fullmatch(r"-?[0-9]{1,200}", digits):
            raise CheckpointError(
                f"{where} is {value!r}; expected {{'__int__': '<decimal digits>'}}"
            )
        return int(digits)
    if set(value) == {"__ndarray__", "dtype", "shape"}:
        dtype, shape, items = value["dtype"], value["shape"], value["__ndarray__"]
        if dtype not in {"int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"}:
            raise CheckpointError(f"{where} has dtype {dtype!r}; expected an integer dtype name")
        if not isinstance(items, list) or not isinstance(shape, list):
            raise CheckpointError(f"{where} is malformed; expected a list of items and a shape")
        try:
            numbers = [_decode_exact(item, where) for item in items]
            return np.array(numbers, dtype=dtype).reshape(shape)
        except (ValueError, TypeError, OverflowError) as error:
            raise CheckpointError(f"{where} is not a valid {dtype} array: {error}") from None
    return {key: _decode_exact(item, f"{where}[{key!r}]") for key, item in value.items()}


def rng_state_to_json(state: Mapping[str, Any]) -> dict[str, Any]:
    """Encode a bit generator's state (``rng.bit_generator.state``) as JSON that keeps it exactly.

    Integers of 2**53 or more in magnitude (PCG64's 128-bit state) become
    ``{"__int__": "<decimal>"}`` and arrays (MT19937's key, Philox's counter) become
    ``{"__ndarray__": [...], "dtype": ..., "shape": [...]}``, so every JSON reader, not only
    Python's, keeps every bit. :func:`rng_state_from_json` reverses it.
    """
    if not isinstance(state, Mapping) or "bit_generator" not in state:
        raise TypeError(
            f"state is a {type(state).__name__}; expected a bit generator state dict such as "
            "rng.bit_generator.state"
        )
    return _encode_exact(state, "state")


def rng_state_from_json(data: Mapping[str, Any]) -> dict[str, Any]:
    """Decode what :func:`rng_state_to_json` wrote back into a bit generator state dict."""
    if not isinstance(data, Mapping):
        raise CheckpointError(f"RNG state is a {type(data).__name__}; expected a JSON object")
    return _decode_exact(dict(data), "RNG state")


def rng_to_json(rng: np.random.Generator) -> dict[str, Any]:
    """Encode a ``np.random.Generator``'s state as exact JSON (see :func:`rng_state_to_json`)."""
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng is a {type(rng).__name__}; expected a numpy.random.Generator")
    return rng_state_to_json(rng.bit_generator.state)


def rng_from_json(data: Mapping[str, Any]) -> np.random.Generator:
    """Rebuild the ``np.random.Generator`` that :func:`rng_to_json` encoded, in the same state.

    Raises:
        CheckpointError: the data is not a valid state of a NumPy bit generator.
    """
    state = rng_state_from_json(data)
    name = state.get("bit_generator")
    if name not in _BIT_GENERATORS:
        raise CheckpointError(
            f"RNG state names the bit generator {name!r}; expected one of "
            f"{', '.join(_BIT_GENERATORS)}"
        )
    bit_generator = _BIT_GENERATORS[name]()
    try:
        bit_generator.state = state
    except (ValueError, TypeError, KeyError, OverflowError) as error:
        raise CheckpointError(f"RNG state is not a valid {name} state: {error!r}") from None
    return np.random.Generator(bit_generator)
