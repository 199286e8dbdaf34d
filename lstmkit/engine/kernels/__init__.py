"""The compiled (Numba) kernels: the recurrences' time loops and the dense fast paths.

The recurrences (``lstm``, ``lstm_t``, ``gru``, ``rnn``) run the same math as the readable
cells (``lstmkit.cells``), much faster: the input projection of many steps is one GEMM, each
step one product on weights packed once per pass (``packed``) and one fused, vectorised pass
for the gates (``gates``), the whole time loop one compiled function, and backward's weight
gradients and dX three large GEMMs over all steps. Which of them runs, how, is the plan's
(``lstmkit.engine.plan``); ``lstmkit.engine.fused`` prepares their buffers.

The dense kernels (``linear``, ``softmax``, ``adam``, ``norms``) are reached through
``fast_path``. The kernels are compiled on first use and cached on disk (``cache=True``).

``set_enabled(False)`` (or the environment variable ``LSTMKIT_KERNELS=0`` at import) runs
every layer on the reference loop and the dense operations in NumPy.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

Array = np.ndarray


def vector_width() -> int:
    """Floats per vector register the packed micro-kernels are written for: 16 where the CPU
    has AVX-512 (its 32 registers of 16 floats), else 8 (AVX2's 16 registers of 8 floats; on a
    CPU without them LLVM splits the vectors: slower, still correct). ``LSTMKIT_VECTOR_WIDTH``
    (8 or 16) overrides the detection, e.g. to test the other width (either runs on any x86
    CPU)."""
    forced = os.environ.get("LSTMKIT_VECTOR_WIDTH", "").strip()
    if forced in ("8", "16"):
        return int(forced)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return 16 if "avx512f" in line.split() else 8
    except OSError:
        pass
    return 8


def _drop_stale_compiled_kernels() -> None:
    """Delete Numba's cached machine code when any kernel source changed.

    Numba checks only the source file of each cached function itself; a kernel compiled with
    an older ``gates.py`` (inlined into it) would otherwise be loaded as is. A digest of the
    modules that define compiled functions (not of the Python around them), and of the vector
    width they are generated for (``vector_width``), is kept next to the cache, and the cache is
    dropped when it differs.
    """
    import glob
    import hashlib

    here = os.path.dirname(os.path.abspath(__file__))
    try:
        digest = hashlib.sha256(f"vector width {vector_width()}\0".encode())
        for path in sorted(glob.glob(os.path.join(here, "*.py"))):
            with open(path, "rb") as f:
                source = f.read()
            if b"njit" in source or b"intrinsic" in source:  # a module of compiled kernels
                digest.update(os.path.basename(path).encode() + b"\0" + source)
        cache_dir = os.environ.get("NUMBA_CACHE_DIR")
        if cache_dir:  # Numba mirrors the source directory under it
            cache_dir = os.path.join(cache_dir, os.path.splitdrive(here)[1].lstrip(os.sep))
        else:
            cache_dir = os.path.join(here, "__pycache__")
        stamp = os.path.join(cache_dir, "lstmkit-kernels.sha256")
        try:
            with open(stamp) as f:
                if f.read().strip() == digest.hexdigest():
                    return
        except OSError:
            pass
        for path in glob.glob(os.path.join(cache_dir, "*.nb[ic]")):
            os.remove(path)
        os.makedirs(cache_dir, exist_ok=True)
        with open(stamp, "w") as f:
            f.write(digest.hexdigest())
    except OSError:  # a read-only installation: nothing to do
        pass


_drop_stale_compiled_kernels()
_enabled = os.environ.get("LSTMKIT_KERNELS", "1").strip().lower() not in ("0", "false", "no", "off")


def set_enabled(enabled: bool) -> None:
    """Turn the compiled kernels on or off for every layer and dense operation."""
    global _enabled
    _enabled = bool(enabled)


def is_enabled() -> bool:
    """Whether layers built with ``fast=True`` (the default) use the fused kernels."""
    return _enabled


def fast_path(name: str, *arrays: Array | None) -> Any:
    """The kernel module ``lstmkit.engine.kernels.<name>`` (``linear``, ``softmax``, ``adam``,
    ``norms``) when the kernels are on and its ``supports(*arrays)`` accepts these operands,
    else None: the caller then runs its readable NumPy definition."""
    if not _enabled:
        return None
    import importlib

    module = importlib.import_module(f"lstmkit.engine.kernels.{name}")
    return module if module.supports(*arrays) else None


__all__ = ["fast_path", "is_enabled", "set_enabled", "vector_width"]
