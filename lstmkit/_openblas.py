"""Loads the kernels' OpenBLAS (SciPy's) with a short idle wait; imported first by ``lstmkit``.

OpenBLAS's idle threads spin 2^OPENBLAS_THREAD_TIMEOUT cycles after each multi-threaded call
before they sleep: 2^28 by default, about 0.1 s, on the cores that the next call's own
threads need (on a 2-core Xeon a batch-inner training call right after a row-kernel call with
BLAS on 2 threads took 6.7 ms instead of 3.6, docs/performance.md). 2^20 cycles (~0.4 ms at
2-3 GHz) still keeps them awake between the steps of a row kernel. OpenBLAS reads the variable
once, when it is loaded, so this module sets it (unless the user did, or the library is
already loaded: SciPy imported before lstmkit), loads the library, and removes the variable
again, so that no other library or child process sees it. Nothing else is imported here:
``lstmkit``'s other modules import SciPy.
"""

from __future__ import annotations

import os
import sys

THREAD_TIMEOUT = "20"


def scipy_openblas_paths() -> list[str] | None:
    """The paths of SciPy's OpenBLAS among the libraries this process has loaded (NumPy's own
    copy, also named scipy_openblas, lives under numpy.libs and is left out), in load order
    without repeats; None where /proc/self/maps cannot be read."""
    try:
        with open("/proc/self/maps") as maps:
            paths = [line.split()[-1] for line in maps]
    except OSError:
        return None
    return list(dict.fromkeys(path for path in paths
                              if "openblas" in os.path.basename(path).lower()
                              and "scipy" in path and "numpy" not in path))


def load_with_short_wait() -> bool:
    """Load SciPy's OpenBLAS with ``OPENBLAS_THREAD_TIMEOUT`` = 20; False where it was left
    alone (the variable set by the user, or the library already loaded)."""
    if "OPENBLAS_THREAD_TIMEOUT" in os.environ or "scipy.linalg" in sys.modules:
        return False
    if scipy_openblas_paths():
        return False
    os.environ["OPENBLAS_THREAD_TIMEOUT"] = THREAD_TIMEOUT
    try:
        import scipy.linalg.cython_blas  # noqa: F401  (loads the library)
    except ImportError:
        return False
    finally:
        del os.environ["OPENBLAS_THREAD_TIMEOUT"]
    return True


load_with_short_wait()
