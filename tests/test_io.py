"""Tests for lstmkit.io: checkpoints, array files, rotation, RNG state, and crash safety."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import lstmkit
from lstmkit.io import (
    CheckpointError,
    CheckpointManager,
    CheckpointWarning,
    load_arrays,
    load_checkpoint,
    rng_from_json,
    rng_state_from_json,
    rng_state_to_json,
    rng_to_json,
    save_arrays,
    save_checkpoint,
)

REPO_ROOT = Path(lstmkit.__file__).resolve().parent.parent


def sample_tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {
        "weight_ih_l0": rng.standard_normal((8, 3)).astype(np.float32),
        "adam.m.weight_ih_l0": rng.standard_normal((8, 3)),  # float64
        "token_counts": rng.integers(-(2**62), 2**62, size=5, dtype=np.int64),
        "scalar": np.array(3.5, dtype=np.float64),
        "empty": np.zeros((0, 4), dtype=np.float32),
        "mask": np.array([True, False, True]),
        "strided": np.arange(20, dtype=np.int64).reshape(4, 5)[:, ::2],  # not contiguous
    }


def sample_meta() -> dict:
    return {
        "config": {"hidden_size": 128, "num_layers": 2, "dropout": 0.25, "peepholes": False},
        "vocabulary": {"kind": "characters", "chars": list("\n 。映画😀")},
        "optimizer": {"name": "adam", "lr": 2e-3, "step": 1200, "betas": [0.9, 0.999]},
        "step": 1200,
        "best_val_loss": float("inf"),
        "huge": 2**100 + 1,
        "note": None,
    }


def assert_same_arrays(loaded: dict, saved: dict) -> None:
    assert list(loaded) == list(saved)
    for name, array in saved.items():
        assert loaded[name].dtype == array.dtype, name
        assert loaded[name].shape == array.shape, name
        assert np.array_equal(loaded[name], array), name


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    return save_checkpoint(tmp_path / "ckpt", sample_tensors(), sample_meta())


# ----------------------------------------------------------------------------------------------
# Round trips


def test_checkpoint_round_trip(checkpoint: Path):
    assert sorted(os.listdir(checkpoint)) == ["checkpoint.json", "model.safetensors"]
    tensors, meta = load_checkpoint(checkpoint)
    assert_same_arrays(tensors, sample_tensors())
    assert meta == sample_meta()
    assert meta["huge"] == 2**100 + 1
    assert all(array.flags.writeable for array in tensors.values())
    tensors["weight_ih_l0"] += 1.0  # loaded arrays are ordinary, writable arrays


def test_checkpoint_json_is_readable(checkpoint: Path):
    record = json.loads((checkpoint / "checkpoint.json").read_text(encoding="utf-8"))
    assert record["format"] == "lstmkit-checkpoint"
    assert record["format_version"] == 1
    assert record["tensors"]["weight_ih_l0"] == {"dtype": "float32", "shape": [8, 3]}
    assert record["tensors_bytes"] == (checkpoint / "model.safetensors").stat().st_size
    # Non-ASCII text is stored as itself, not as \\u escapes.
    text = (checkpoint / "checkpoint.json").read_text(encoding="utf-8")
    assert '"映"' in text and '"😀"' in text


def test_numpy_scalars_in_meta_are_stored_as_json_numbers(tmp_path: Path):
    meta = {"lr": np.float32(0.5), "step": np.int64(3), "flag": np.bool_(True)}
    save_checkpoint(tmp_path / "c", {}, meta)
    _, loaded = load_checkpoint(tmp_path / "c")
    assert loaded == {"lr": 0.5, "step": 3, "flag": True}
    assert type(loaded["step"]) is int and type(loaded["flag"]) is bool


@pytest.mark.parametrize(
    ("meta", "match"),
    [
        ({"rng": np.zeros(3)}, r"meta\['rng'\] is a ndarray.*put arrays in `tensors`"),
        ({"shape": (2, 3)}, r"meta\['shape'\] is a tuple.*pass a list"),
        ({"layers": {1: "a"}}, r"meta\['layers'\] has the key 1 \(int\); JSON object keys"),
        ({"f": print}, r"meta\['f'\] is a builtin_function_or_method"),
        ({"xs": [1, {2, 3}]}, r"meta\['xs'\]\[1\] is a set"),
    ],
)
def test_meta_that_json_cannot_hold_exactly_is_refused(tmp_path: Path, meta, match):
    with pytest.raises(TypeError, match=match):
        save_checkpoint(tmp_path / "c", {}, meta)
    assert not (tmp_path / "c").exists()  # checked before anything is written


@pytest.mark.parametrize(
    ("tensors", "error", "match"),
    [
        ({"w": [1.0, 2.0]}, TypeError, r"tensors\['w'\] is a list; expected a numpy.ndarray"),
        ({"w": np.array([object()])}, TypeError, r"tensors\['w'\] has dtype object"),
        ({"w": np.zeros(2, dtype=np.complex128)}, TypeError, "has dtype complex128"),
        ({"__metadata__": np.zeros(2)}, ValueError, "safetensors reserves"),
        ({"": np.zeros(2)}, TypeError, "non-empty string names"),
        ([np.zeros(2)], TypeError, "expected a dict name -> ndarray"),
    ],
)
def test_bad_tensors_are_refused(tmp_path: Path, tensors, error, match):
    with pytest.raises(error, match=match):
        save_checkpoint(tmp_path / "c", tensors, {})
    assert not (tmp_path / "c").exists()


@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    hnp.arrays(
        dtype=st.sampled_from(
            ["bool", "int8", "uint16", "int32", "uint64", "int64", "float16", "float32", "float64"]
        ),
        shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5),
    )
)
def test_any_supported_array_round_trips_bit_exactly(array):
    with tempfile.TemporaryDirectory() as directory:
        path = save_arrays(Path(directory) / "a.safetensors", {"x": array})
        loaded = load_arrays(path)["x"]
    assert loaded.dtype == array.dtype and loaded.shape == array.shape
    assert loaded.tobytes() == np.ascontiguousarray(array).tobytes()  # NaN payloads included


def test_big_endian_arrays_are_stored_little_endian(tmp_path: Path):
    array = np.arange(6, dtype=">f8").reshape(2, 3)
    loaded = load_arrays(save_arrays(tmp_path / "be.safetensors", {"x": array}))["x"]
    assert loaded.dtype == np.float64 and np.array_equal(loaded, array)


# ----------------------------------------------------------------------------------------------
# Damaged checkpoints


def _rewrite_tensors(checkpoint: Path, data: bytes, *, fix_hash: bool = False) -> None:
    """Replace model.safetensors; with fix_hash, also make checkpoint.json vouch for it."""
    (checkpoint / "model.safetensors").write_bytes(data)
    if fix_hash:
        record = json.loads((checkpoint / "checkpoint.json").read_text(encoding="utf-8"))
        record["tensors_sha256"] = hashlib.sha256(data).hexdigest()
        record["tensors_bytes"] = len(data)
        (checkpoint / "checkpoint.json").write_text(json.dumps(record), encoding="utf-8")


def _edit_record(checkpoint: Path, edit) -> None:
    path = checkpoint / "checkpoint.json"
    record = json.loads(path.read_text(encoding="utf-8"))
    edit(record)
    path.write_text(json.dumps(record), encoding="utf-8")


class _Marker:
    """Unpickling this creates a file: proof of code execution if it ever happens."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def _malicious_pickle(marker: Path) -> bytes:
    return pickle.dumps({"weight": _Marker(marker)}, protocol=4)


def test_truncated_tensors(checkpoint: Path):
    data = (checkpoint / "model.safetensors").read_bytes()
    _rewrite_tensors(checkpoint, data[: len(data) // 2])
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(checkpoint)
    message = str(caught.value)
    assert str(checkpoint / "model.safetensors") in message
    assert f"expected {len(data)} bytes" in message and "truncated" in message


def test_flipped_byte(checkpoint: Path):
    data = bytearray((checkpoint / "model.safetensors").read_bytes())
    data[-5] ^= 0x01
    _rewrite_tensors(checkpoint, bytes(data))
    with pytest.raises(CheckpointError, match="with other values; the file is corrupt"):
        load_checkpoint(checkpoint)


def test_empty_tensor_file(checkpoint: Path):
    _rewrite_tensors(checkpoint, b"")
    with pytest.raises(CheckpointError, match="found 0 bytes: the file is truncated"):
        load_checkpoint(checkpoint)


def test_empty_tensor_file_even_if_the_json_vouches_for_it(checkpoint: Path):
    _rewrite_tensors(checkpoint, b"", fix_hash=True)
    with pytest.raises(CheckpointError, match="0 bytes long, too short for a safetensors file"):
        load_checkpoint(checkpoint)


def test_random_bytes(checkpoint: Path):
    size = (checkpoint / "model.safetensors").stat().st_size
    _rewrite_tensors(checkpoint, np.random.default_rng(3).bytes(size))
    with pytest.raises(CheckpointError, match="does not match .*checkpoint.json.*is corrupt"):
        load_checkpoint(checkpoint)


def test_random_bytes_vouched_for_by_the_json(checkpoint: Path):
    _rewrite_tensors(checkpoint, np.random.default_rng(3).bytes(1000), fix_hash=True)
    with pytest.raises(CheckpointError, match="is not a valid safetensors file"):
        load_checkpoint(checkpoint)


@pytest.mark.parametrize("fix_hash", [False, True], ids=["plain", "json-vouches"])
def test_pickle_renamed_as_safetensors_is_never_unpickled(checkpoint: Path, fix_hash: bool):
    marker = checkpoint.parent / "pwned"
    _rewrite_tensors(checkpoint, _malicious_pickle(marker), fix_hash=fix_hash)
    with pytest.raises(CheckpointError, match="a Python pickle") as caught:
        load_checkpoint(checkpoint)
    assert "model.safetensors" in str(caught.value)
    assert not marker.exists()


def test_tensors_of_another_checkpoint(tmp_path: Path, checkpoint: Path):
    other = save_checkpoint(tmp_path / "other", {"w": np.ones(3)}, {})
    _rewrite_tensors(checkpoint, (other / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="belongs to another checkpoint"):
        load_checkpoint(checkpoint)


def test_missing_json(checkpoint: Path):
    (checkpoint / "checkpoint.json").unlink()
    with pytest.raises(CheckpointError, match="has arrays but no checkpoint.json"):
        load_checkpoint(checkpoint)


def test_missing_tensors(checkpoint: Path):
    (checkpoint / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"model.safetensors is missing; expected the arrays"):
        load_checkpoint(checkpoint)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda r: r.update(format_version=2), "format version 2, written by a newer lstmkit"),
        (lambda r: r.update(format_version="1"), "format_version '1'; expected the integer 1"),
        (lambda r: r.update(format_version=1.0), "format_version 1.0; expected the integer 1"),
        (lambda r: r.pop("format_version"), "format_version None"),
        (lambda r: r.update(format="something-else"), "'format' is 'something-else'"),
        (lambda r: r.pop("tensors_sha256"), "wrong keys \\(missing 'tensors_sha256'\\)"),
        (lambda r: r.pop("meta"), "missing 'meta'"),
        (lambda r: r.update(extra=1), "unexpected 'extra'"),
        (lambda r: r.update(tensors_sha256="abc"), "expected 64 lowercase hexadecimal digits"),
        (lambda r: r.update(tensors_bytes=-1), "'tensors_bytes' is -1"),
        (lambda r: r.update(meta=[1]), "'meta' is not a JSON object"),
        (lambda r: r["tensors"].update(scalar={"dtype": "float64"}), r"'tensors'\['scalar'\]"),
        (lambda r: r["tensors"].pop("mask"), "lists"),  # the hash matches, the manifest does not
        (
            lambda r: r["tensors"]["scalar"].update(shape=[1]),
            r"array 'scalar' is float64 \[\], but .* says float64 \[1\]",
        ),
    ],
)
def test_bad_json(checkpoint: Path, edit, match):
    _edit_record(checkpoint, edit)
    with pytest.raises(CheckpointError, match=match) as caught:
        load_checkpoint(checkpoint)
    assert str(checkpoint) in str(caught.value)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"", "is not valid JSON"),
        (b'{"format": "lstmkit-checkpoint", "form', "is not valid JSON .* line 1, column"),
        (b"[1, 2]", "holds a JSON list"),
        (b"\xff\xfe{}", "is not UTF-8 text"),
    ],
)
def test_unparsable_json(checkpoint: Path, content: bytes, match: str):
    (checkpoint / "checkpoint.json").write_bytes(content)
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(checkpoint)


@pytest.fixture(scope="module")
def small_checkpoint_files(tmp_path_factory) -> dict[str, bytes]:
    """The files of a small valid checkpoint, to copy without paying for a save's fsyncs."""
    checkpoint = save_checkpoint(tmp_path_factory.mktemp("small") / "c", {"w": np.ones(2)}, {})
    return {path.name: path.read_bytes() for path in checkpoint.iterdir()}


@settings(max_examples=100, deadline=None, derandomize=True)
@given(st.binary(max_size=300), st.booleans())
def test_random_bytes_never_crash_the_loader(small_checkpoint_files, data: bytes, vouch: bool):
    with tempfile.TemporaryDirectory() as directory:
        checkpoint = Path(directory) / "c"
        checkpoint.mkdir()
        for name, content in small_checkpoint_files.items():
            (checkpoint / name).write_bytes(content)
        _rewrite_tensors(checkpoint, data, fix_hash=vouch)
        with pytest.raises(CheckpointError):
            load_checkpoint(checkpoint)
        (checkpoint / "checkpoint.json").write_bytes(data)
        with pytest.raises(CheckpointError):
            load_checkpoint(checkpoint)
        path = Path(directory) / "x.safetensors"
        path.write_bytes(data)
        try:
            load_arrays(path)
        except CheckpointError:
            pass  # a few random byte strings are valid (empty) safetensors files


@settings(max_examples=100, deadline=None, derandomize=True)
@given(st.data())
def test_damaged_valid_files_only_raise_checkpoint_error(data):
    original = safetensors.numpy.save(
        {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array([1, 2], np.int64)}
    )
    damaged = bytearray(original)
    for _ in range(data.draw(st.integers(1, 3))):
        position = data.draw(st.integers(0, len(damaged) - 1))
        damaged[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(damaged)))
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "x.safetensors"
        path.write_bytes(bytes(damaged[:cut]))
        try:
            arrays = load_arrays(path)
        except CheckpointError:
            return
        assert all(isinstance(array, np.ndarray) for array in arrays.values())


def test_load_checkpoint_path_errors(tmp_path: Path):
    with pytest.raises(CheckpointError, match="does not exist; expected a checkpoint directory"):
        load_checkpoint(tmp_path / "missing")
    (tmp_path / "model.pt").write_bytes(_malicious_pickle(tmp_path / "pwned"))
    with pytest.raises(CheckpointError, match=r"is a file.*never loads \.pt files"):
        load_checkpoint(tmp_path / "model.pt")
    assert not (tmp_path / "pwned").exists()
    checkpoint = save_checkpoint(tmp_path / "c", {}, {})
    with pytest.raises(CheckpointError, match="pass its directory"):
        load_checkpoint(checkpoint / "checkpoint.json")
    with pytest.raises(CheckpointError, match="load_arrays"):
        load_checkpoint(checkpoint / "model.safetensors")
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "notes.txt").write_text("hi")
    with pytest.raises(CheckpointError, match="neither a checkpoint directory .* nor a checkpoint"):
        load_checkpoint(tmp_path / "plain")


# ----------------------------------------------------------------------------------------------
# Refusing to overwrite


def test_overwrite_is_refused_without_force(checkpoint: Path):
    before = {name: (checkpoint / name).read_bytes() for name in os.listdir(checkpoint)}
    with pytest.raises(CheckpointError, match="already holds a checkpoint; pass force=True"):
        save_checkpoint(checkpoint, {"w": np.zeros(1)}, {"new": True})
    assert {name: (checkpoint / name).read_bytes() for name in os.listdir(checkpoint)} == before
    save_checkpoint(checkpoint, {"w": np.zeros(1)}, {"new": True}, force=True)
    tensors, meta = load_checkpoint(checkpoint)
    assert list(tensors) == ["w"] and meta == {"new": True}
    assert sorted(os.listdir(checkpoint)) == ["checkpoint.json", "model.safetensors"]


def test_non_checkpoint_directory_is_refused_without_force(tmp_path: Path):
    directory = tmp_path / "results"
    directory.mkdir()
    (directory / "notes.txt").write_text("my notes")
    with pytest.raises(CheckpointError, match=r"not a checkpoint \(it holds notes.txt\)"):
        save_checkpoint(directory, {}, {})
    assert os.listdir(directory) == ["notes.txt"]
    save_checkpoint(directory, {"w": np.ones(2)}, {}, force=True)
    assert (directory / "notes.txt").read_text() == "my notes"
    assert list(load_checkpoint(directory)[0]) == ["w"]


def test_empty_directory_and_new_parents_are_fine(tmp_path: Path):
    (tmp_path / "empty").mkdir()
    save_checkpoint(tmp_path / "empty", {}, {"a": 1})
    save_checkpoint(tmp_path / "new" / "deep" / "ckpt", {}, {"b": 2})
    assert load_checkpoint(tmp_path / "empty")[1] == {"a": 1}
    assert load_checkpoint(tmp_path / "new" / "deep" / "ckpt")[1] == {"b": 2}


def test_file_and_checkpoint_root_are_refused(tmp_path: Path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="exists and is not a directory"):
        save_checkpoint(tmp_path / "file", {}, {}, force=True)
    CheckpointManager(tmp_path / "run").save(1, {}, {})
    with pytest.raises(CheckpointError, match="is a checkpoint root"):
        save_checkpoint(tmp_path / "run", {}, {}, force=True)


def test_save_and_load_arrays(tmp_path: Path):
    arrays = sample_tensors()
    path = save_arrays(tmp_path / "weights.safetensors", arrays)
    assert_same_arrays(load_arrays(path), dict(sorted(arrays.items())))  # sorted by name
    with pytest.raises(CheckpointError, match="already exists; pass force=True"):
        save_arrays(path, {"w": np.zeros(1)})
    assert set(load_arrays(path)) == set(arrays)
    save_arrays(path, {"w": np.zeros(1)}, force=True)
    assert list(load_arrays(path)) == ["w"]
    assert [p.name for p in tmp_path.iterdir()] == ["weights.safetensors"]  # no temporary left
    with pytest.raises(CheckpointError, match=r"does not end in \.safetensors"):
        save_arrays(tmp_path / "weights.npz", arrays)
    with pytest.raises(CheckpointError, match="is missing; expected a safetensors file"):
        load_arrays(tmp_path / "nope.safetensors")
    with pytest.raises(CheckpointError, match="is a directory"):
        load_arrays(tmp_path)


def test_load_arrays_refuses_pickle_based_formats(tmp_path: Path):
    npy = tmp_path / "objects.npy"
    np.save(npy, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(CheckpointError, match=r"is a NumPy \.npy file.*never loads pickle"):
        load_arrays(npy)
    npz = tmp_path / "arrays.npz"
    np.savez(npz, w=np.ones(3))
    with pytest.raises(CheckpointError, match="is a ZIP archive"):
        load_arrays(npz)
    marker = tmp_path / "pwned"
    pkl = tmp_path / "model.safetensors"
    pkl.write_bytes(_malicious_pickle(marker))
    with pytest.raises(CheckpointError, match="is a Python pickle, not a safetensors file"):
        load_arrays(pkl)
    assert not marker.exists()


# ----------------------------------------------------------------------------------------------
# Rotation


def _versioned_tensors(k: int, rows: int = 512) -> dict[str, np.ndarray]:
    """Arrays whose every value says which version k they belong to (as _WRITER makes them)."""
    return {
        "w": np.full((rows, 1024), k, np.float32),
        "m": np.full((rows // 2, 1024), -k, np.float64),
        "k": np.array(k, np.int64),
    }


def _small(k: int) -> dict[str, np.ndarray]:
    """Versioned arrays of a few kilobytes, for tests that do not need slow saves."""
    return _versioned_tensors(k, rows=4)


def _step_names(root: Path) -> list[str]:
    return sorted(name for name in os.listdir(root) if name.startswith("step-"))


def test_rotation_keeps_newest_and_best(tmp_path: Path):
    root = tmp_path / "run"
    manager = CheckpointManager(root, keep=2)
    for step in range(1, 7):
        manager.save(step * 100, _small(step), {"step": step * 100}, is_best=step == 2)
    assert _step_names(root) == ["step-000200", "step-000500", "step-000600"]
    assert manager.latest_path() == root / "step-000600"
    assert manager.best_path() == root / "step-000200"
    assert [p.name for p in manager.checkpoints()] == _step_names(root)
    assert manager.load_latest()[1] == {"step": 600}
    assert manager.load_best()[1] == {"step": 200}
    assert load_checkpoint(root)[1] == {"step": 600}  # a root means its latest checkpoint
    pointer = json.loads((root / "latest.json").read_text())
    assert pointer == {
        "format": "lstmkit-checkpoint-pointer",
        "format_version": 1,
        "checkpoint": "step-000600",
        "step": 600,
        "newest_step": 600,
    }
    best = json.loads((root / "best.json").read_text())
    assert (best["checkpoint"], best["step"], "newest_step" in best) == ("step-000200", 200, False)
    manager.save(700, _small(7), {"step": 700}, is_best=True)
    assert _step_names(root) == ["step-000600", "step-000700"]  # the old best is now free to go


def test_rotation_never_deletes_latest_even_if_older(tmp_path: Path):
    root = tmp_path / "run"
    manager = CheckpointManager(root, keep=1)
    manager.save(500, _small(5), {"step": 500})
    manager.save(100, _small(1), {"step": 100})  # e.g. a restarted run writing low steps
    assert _step_names(root) == ["step-000100", "step-000500"]
    assert manager.load_latest()[1] == {"step": 100}
    # Step 500 is newer than latest.json's checkpoint but was a completed save: protected.
    with pytest.raises(CheckpointError, match="already holds the checkpoint of step 500"):
        manager.save(500, _small(6), {"step": 500, "again": True})
    assert load_checkpoint(root / "step-000500")[1] == {"step": 500}


def test_rotation_leaves_other_files_alone(tmp_path: Path):
    root = tmp_path / "run"
    root.mkdir()
    (root / "train.log").write_text("log")
    (root / "step-000001").mkdir()
    (root / "step-000001" / "mine.txt").write_text("user data in a step-like directory")
    manager = CheckpointManager(root, keep=1)
    for step in range(2, 6):
        manager.save(step, _small(step), {})
    assert (root / "train.log").read_text() == "log"
    assert (root / "step-000001" / "mine.txt").exists()
    assert _step_names(root) == ["step-000001", "step-000005"]


def test_existing_step_is_refused_without_force(tmp_path: Path):
    manager = CheckpointManager(tmp_path / "run")
    manager.save(10, _small(1), {"v": 1})
    with pytest.raises(CheckpointError, match="already holds the checkpoint of step 10"):
        manager.save(10, _small(2), {"v": 2})
    assert manager.load_latest()[1] == {"v": 1}
    manager.save(10, _small(2), {"v": 2}, force=True)
    assert manager.load_latest()[1] == {"v": 2}


def test_a_save_killed_before_updating_latest_is_replaced_without_force(tmp_path: Path):
    root = tmp_path / "run"
    manager = CheckpointManager(root, keep=3)
    for step in (1, 2):
        manager.save(step, _small(step), {"step": step})
    # As if the save of step 3 was killed after writing its checkpoint, before latest.json:
    save_checkpoint(root / "step-000003", _small(3), {"step": 3, "run": "killed"})
    assert manager.load_latest()[1] == {"step": 2}  # latest.json is the commit
    manager.save(3, _small(3), {"step": 3, "run": "resumed"})
    assert manager.load_latest()[1] == {"step": 3, "run": "resumed"}
    with pytest.raises(CheckpointError, match="already holds the checkpoint of step 2"):
        manager.save(2, _small(2), {"step": 2})  # committed history stays protected


def test_latest_pointing_to_a_damaged_checkpoint_falls_back(tmp_path: Path):
    root = tmp_path / "run"
    manager = CheckpointManager(root, keep=3)
    for step in (1, 2, 3):
        manager.save(step, _small(step), {"step": step})
    (root / "step-000003" / "model.safetensors").write_bytes(b"garbage")
    with pytest.warns(CheckpointWarning, match=r"loaded .*step-000002 instead.*step-000003"):
        tensors, meta = load_checkpoint(root)
    assert meta == {"step": 2} and np.all(tensors["w"] == 2)


def test_damaged_or_missing_latest_pointer_falls_back(tmp_path: Path):
    root = tmp_path / "run"
    manager = CheckpointManager(root, keep=3)
    for step in (1, 2):
        manager.save(step, _small(step), {"step": step})
    (root / "latest.json").write_text('{"format": "lstmkit-checkpoint-pointer", "form')
    with pytest.warns(CheckpointWarning, match="latest.json is not valid JSON"):
        assert manager.load_latest()[1] == {"step": 2}
    (root / "latest.json").write_text(
        json.dumps(
            {
                "format": "lstmkit-checkpoint-pointer",
                "format_version": 1,
                "checkpoint": "../../etc",
                "step": 1,
                "newest_step": 1,
            }
        )
    )
    with pytest.warns(CheckpointWarning, match="expected a name like step-000100"):
        assert manager.load_latest()[1] == {"step": 2}
    (root / "latest.json").unlink()
    with pytest.warns(CheckpointWarning, match="latest.json is missing"):
        assert manager.load_latest()[1] == {"step": 2}


def test_no_intact_checkpoint_lists_every_problem(tmp_path: Path):
    root = tmp_path / "run"
    manager = CheckpointManager(root, keep=3)
    for step in (1, 2):
        manager.save(step, _small(step), {"step": step})
    (root / "step-000001" / "model.safetensors").unlink()
    (root / "step-000002" / "checkpoint.json").write_text("{}")
    with pytest.raises(CheckpointError) as caught:
        manager.load_latest()
    message = str(caught.value)
    assert "holds no intact checkpoint" in message
    assert "step-000002/checkpoint.json is not an lstmkit file" in message
    assert "step-000001/model.safetensors is missing" in message
    with pytest.raises(CheckpointError, match="best.json is missing"):
        manager.load_best()


def test_manager_argument_checks(tmp_path: Path):
    with pytest.raises(ValueError, match="keep is 0"):
        CheckpointManager(tmp_path / "run", keep=0)
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        (tmp_path / "empty").mkdir()
        CheckpointManager(tmp_path / "empty").load_latest()
    single = save_checkpoint(tmp_path / "single", {}, {})
    with pytest.raises(CheckpointError, match="is a single checkpoint, not a checkpoint root"):
        CheckpointManager(single)
    with pytest.raises(ValueError, match="step is -1"):
        CheckpointManager(tmp_path / "run").save(-1, {}, {})


def test_leftovers_of_killed_saves_are_cleaned_up(tmp_path: Path):
    root = tmp_path / "run"
    manager = CheckpointManager(root, keep=2)
    manager.save(1, _small(1), {})
    (root / ".step-000000.0123456789ab.trash").mkdir()
    (root / ".step-000000.0123456789ab.trash" / "model.safetensors").write_bytes(b"x")
    (root / ".latest.json.0123456789ab.tmp").write_text("{")
    (root / "step-000002").mkdir()  # a save killed before its commit
    (root / "step-000002" / "model.safetensors.pending").write_bytes(b"x")
    (root / "step-000002" / ".checkpoint.json.0123456789ab.tmp").write_bytes(b"x")
    (root / "step-000001" / ".model.safetensors.pending.0123456789ab.tmp").write_bytes(b"x")
    (root / ".keep-me.0123456789ab.tmp").write_text("not ours")
    manager.save(3, _small(3), {})
    assert sorted(os.listdir(root)) == [
        ".keep-me.0123456789ab.tmp",
        "latest.json",
        "step-000001",
        "step-000003",
    ]
    # Leftovers inside an existing checkpoint are cleaned by the next save into that directory.
    manager.save(1, _small(1), {}, force=True)
    assert sorted(os.listdir(root / "step-000001")) == ["checkpoint.json", "model.safetensors"]


# ----------------------------------------------------------------------------------------------
# A save interrupted between its commit and its last rename


def test_interrupted_after_commit_loads_new_and_next_save_completes(tmp_path: Path, monkeypatch):
    directory = save_checkpoint(tmp_path / "c", _small(1), {"v": 1})
    real_replace = os.replace

    def replace_that_dies_on_the_last_rename(src, dst):
        if Path(src).name == "model.safetensors.pending":
            raise KeyboardInterrupt  # as if the process stopped here
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace_that_dies_on_the_last_rename)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(directory, _small(2), {"v": 2}, force=True)
    monkeypatch.setattr(os, "replace", real_replace)

    assert (directory / "model.safetensors.pending").exists()
    tensors, meta = load_checkpoint(directory)  # committed: the new version, from .pending
    assert meta == {"v": 2} and np.all(tensors["w"] == 2)
    save_checkpoint(directory, _small(3), {"v": 3}, force=True)
    tensors, meta = load_checkpoint(directory)
    assert meta == {"v": 3} and np.all(tensors["w"] == 3)
    assert sorted(os.listdir(directory)) == ["checkpoint.json", "model.safetensors"]


# ----------------------------------------------------------------------------------------------
# RNG state


@pytest.mark.parametrize("name", ["PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64"])
def test_rng_state_round_trips_exactly_through_json_text(name: str):
    rng = np.random.Generator(getattr(np.random, name)(12345))
    rng.standard_normal(1001)
    rng.integers(0, 2**32, size=3, dtype=np.uint32)  # leaves a buffered 32-bit half
    text = json.dumps(rng_to_json(rng))
    restored = rng_from_json(json.loads(text))
    assert type(restored.bit_generator) is type(rng.bit_generator)
    assert np.array_equal(restored.integers(0, 2**63, size=50), rng.integers(0, 2**63, size=50))
    assert np.array_equal(restored.random(10), rng.random(10))

    def largest_number(value) -> int:
        if isinstance(value, dict):
            return max((largest_number(v) for v in value.values()), default=0)
        if isinstance(value, list):
            return max((largest_number(v) for v in value), default=0)
        return abs(value) if isinstance(value, int) else 0

    # Every number in the JSON is exact for readers that use doubles, not only Python's.
    assert largest_number(json.loads(text)) < 2**53


def test_rng_state_helpers_on_raw_state_and_in_a_checkpoint(tmp_path: Path):
    rng = np.random.default_rng(99)
    rng.random(7)
    state = rng.bit_generator.state
    assert rng_state_from_json(json.loads(json.dumps(rng_state_to_json(state)))) == state
    save_checkpoint(tmp_path / "c", {}, {"rng": rng_to_json(rng)})
    restored = rng_from_json(load_checkpoint(tmp_path / "c")[1]["rng"])
    assert restored.random() == rng.random()


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"bit_generator": "Mystery", "state": {}}, "names the bit generator 'Mystery'"),
        ({"bit_generator": "PCG64", "state": {"state": 1}}, "not a valid PCG64 state"),
        ({"bit_generator": "PCG64", "state": {"__int__": "12x"}}, "decimal digits"),
        (
            {
                "bit_generator": "MT19937",
                "state": {"key": {"__ndarray__": [1], "dtype": "float32", "shape": [1]}, "pos": 0},
            },
            "expected an integer dtype",
        ),
        ([1, 2], "expected a JSON object"),
    ],
)
def test_bad_rng_json(data, match):
    with pytest.raises(CheckpointError, match=match):
        rng_from_json(data)


def test_rng_to_json_argument_check():
    with pytest.raises(TypeError, match="expected a numpy.random.Generator"):
        rng_to_json(np.random.RandomState(0))


# ----------------------------------------------------------------------------------------------
# Crash safety, tested by killing writer processes with SIGKILL

# The writer: a subprocess that imports lstmkit once and then, for every line "k" it reads,
# forks a child that saves versions k, k + 1, ... in a loop until the test SIGKILLs it. (Forking
# saves the interpreter start-up for every kill; the children are ordinary processes.)
_WRITER = textwrap.dedent(
    """
    import os, sys
    import numpy as np
    from lstmkit.io import CheckpointManager, save_checkpoint

    single, root = sys.argv[1], sys.argv[2]

    def say(*words):
        # One write(2) per line: the writer and its children share the pipe, and a pipe write
        # of at most PIPE_BUF bytes is atomic, so lines never interleave (print's may).
        os.write(1, (" ".join(map(str, words)) + "\\n").encode())

    def write_forever(k):
        manager = CheckpointManager(root, keep=2)
        while True:
            # About 4 MB per save, so that a save takes long enough to be killed in the middle.
            tensors = {"w": np.full((512, 1024), k, np.float32),
                       "m": np.full((256, 1024), -k, np.float64),
                       "k": np.array(k, np.int64)}
            say("begin single", k)
            save_checkpoint(single, tensors, {"k": k}, force=True)
            say("saved single", k)
            say("begin manager", k)
            manager.save(k, tensors, {"k": k})
            say("saved manager", k)
            k += 1

    say("ready")
    while line := sys.stdin.readline():
        pid = os.fork()
        if pid == 0:
            try:
                write_forever(int(line))
            finally:
                os._exit(1)
        say("writer", pid)
        _, status = os.waitpid(pid, 0)
        say("ended", os.waitstatus_to_exitcode(status))
    """
)

crash_tests = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs POSIX fork and SIGKILL")


def _loaded_version(path: Path) -> int:
    """Load strictly (a CheckpointWarning fails) and check that the arrays agree with the JSON."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", CheckpointWarning)
        tensors, meta = load_checkpoint(path)
    k = meta["k"]
    assert set(tensors) == {"w", "m", "k"}
    assert int(tensors["k"]) == k
    assert np.all(tensors["w"] == k) and np.all(tensors["m"] == -k)
    return k


def _assert_no_leftovers(directory: Path) -> None:
    for path in directory.rglob("*"):
        assert not path.name.startswith("."), path
        assert not path.name.endswith(".pending"), path


def _save_version(mode: str, single: Path, root: Path, k: int) -> None:
    tensors = _small(k)
    if mode == "single":
        save_checkpoint(single, tensors, {"k": k}, force=True)
    else:
        CheckpointManager(root, keep=1).save(k, tensors, {"k": k}, force=True)


_COUNTED_CALLS = ("replace", "fsync", "unlink", "rmdir", "mkdir")


def _save_in_a_child_killed_at(crash_at: int, mode: str, single: Path, root: Path, k: int):
    """Fork a child that saves version k and SIGKILLs itself just before its crash_at-th call
    to one of os.replace/fsync/unlink/rmdir/mkdir. Returns (wait status, calls it made)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: it must never return into pytest
        status = 1
        try:
            os.close(read_end)
            calls = 0

            def counted(function):
                def wrapper(*args, **kwargs):
                    nonlocal calls
                    calls += 1
                    if calls == crash_at:
                        os.kill(os.getpid(), signal.SIGKILL)
                    return function(*args, **kwargs)

                return wrapper

            for name in _COUNTED_CALLS:
                setattr(os, name, counted(getattr(os, name)))
            _save_version(mode, single, root, k)
            os.write(write_end, str(calls).encode())
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    _, status = os.waitpid(pid, 0)
    with os.fdopen(read_end, "rb") as report:
        calls = report.read()
    return status, int(calls) if calls else None


def _seed(single: Path, root: Path, k: int) -> None:
    """Start afresh: a single checkpoint and a root with one checkpoint, both of version k."""
    shutil.rmtree(single, ignore_errors=True)
    shutil.rmtree(root, ignore_errors=True)
    save_checkpoint(single, _small(k), {"k": k})
    CheckpointManager(root).save(k, _small(k), {"k": k})


@crash_tests
@pytest.mark.parametrize("mode", ["single", "manager"])
def test_kill_before_every_file_system_call_of_a_save(tmp_path: Path, mode: str):
    """Kill a save (forced over a checkpoint, or a rotating manager save that deletes the
    previous one) just before each of its file-system calls, so every window is covered."""
    single, root = tmp_path / "single", tmp_path / "run"
    target = single if mode == "single" else root

    _seed(single, root, 1)
    status, calls = _save_in_a_child_killed_at(0, mode, single, root, 2)
    assert os.waitstatus_to_exitcode(status) == 0
    assert _loaded_version(target) == 2
    assert calls >= 8  # two atomic writes of 3 calls each, the last rename, a directory fsync

    seen = []
    for crash_at in range(1, calls + 1):
        _seed(single, root, 1)
        status, _ = _save_in_a_child_killed_at(crash_at, mode, single, root, 2)
        assert os.waitstatus_to_exitcode(status) == -signal.SIGKILL, crash_at
        version = _loaded_version(target)
        assert version in (1, 2), crash_at
        seen.append(version)
        # The next save, as when training resumes, succeeds and cleans up after the killed one.
        _save_version(mode, single, root, 3)
        assert _loaded_version(target) == 3
        _assert_no_leftovers(target)
    # Killed before the commit the old version loads, after it the new one; never anything else.
    assert seen == sorted(seen) and seen[0] == 1 and seen[-1] == 2


@crash_tests
def test_sigkill_at_random_moments_never_loses_the_last_checkpoint(tmp_path: Path):
    """Ten writer processes saving ~4 MB checkpoints in a loop, each SIGKILLed at a seeded
    random moment; after every kill both the single checkpoint and the root must load intact,
    at the last version whose save finished or at the one being saved."""
    single, root = tmp_path / "single", tmp_path / "run"
    save_checkpoint(single, _versioned_tensors(0), {"k": 0})
    CheckpointManager(root).save(0, _versioned_tensors(0), {"k": 0})
    last = {"single": 0, "manager": 0}
    choose = random.Random(20240601)
    kills = kills_mid_save = saves_done = 0
    process = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(single), str(root)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    assert process.stdin is not None and process.stdout is not None

    def next_line() -> str:
        line = process.stdout.readline().decode()
        assert line, "the writer process ended unexpectedly"
        return line

    try:
        assert next_line() == "ready\n"
        for _ in range(10):
            process.stdin.write(f"{max(last.values()) + 1}\n".encode())
            process.stdin.flush()
            lines = []
            while not (line := next_line()).startswith("writer "):
                lines.append(line)
            time.sleep(choose.uniform(0.0, 0.4))
            os.kill(int(line.split()[1]), signal.SIGKILL)
            while not (line := next_line()).startswith("ended "):
                lines.append(line)
            assert line == f"ended {-signal.SIGKILL}\n"  # killed, not ended by an error
            kills += 1

            unfinished: dict[str, int] = {}
            for event, kind, k in (line.split() for line in lines):
                if event == "begin":
                    unfinished[kind] = int(k)
                else:
                    saves_done += 1
                    last[kind] = int(k)
                    del unfinished[kind]
            kills_mid_save += bool(unfinished)

            # A finished save is never lost; an unfinished one is either absent or complete.
            for kind, path in (("single", single), ("manager", root)):
                allowed = {last[kind], unfinished.get(kind, last[kind])}
                version = _loaded_version(path)
                assert version in allowed, (kind, version, allowed)
                last[kind] = version
        process.stdin.close()
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()
        if not process.stdin.closed:
            process.stdin.close()
        assert process.stderr is not None
        errors = process.stderr.read()
        process.stderr.close()
    assert not errors, errors.decode()

    # After the chaos, one ordinary save cleans up: two checkpoints (keep=2), no leftovers.
    CheckpointManager(root, keep=2).save(last["manager"] + 1, _versioned_tensors(99), {"k": 99})
    assert len(CheckpointManager(root).checkpoints()) == 2
    _assert_no_leftovers(root)
    assert _loaded_version(root) == 99

    # The kills must have hit the writers at work, or the test would prove nothing.
    assert kills == 10
    assert kills_mid_save >= 5
    assert saves_done >= 3
