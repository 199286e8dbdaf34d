"""How many threads the fused kernels use, and keeping BLAS single-threaded meanwhile.

The kernels split each step over ``parts`` threads themselves (Numba ``prange``; the LSTM's
time loop as one region per pass, see ``sync.py``), each thread computing its own rows (with
the packed micro-kernels or a BLAS call); BLAS's own thread pool must then stay out of the
way (two pools spinning on two cores would fight). ``blas_single_threaded()`` sets the
OpenBLAS that the kernels call (SciPy's, through Numba) to one thread for the duration of a
kernel call.

The thread count is Numba's for the calling thread (``lstmkit.set_num_threads``, which every
thread takes, ``numba.set_num_threads`` or ``NUMBA_NUM_THREADS``); how many parts a
recurrence's step is split into is its plan's (``lstmkit.engine.plan``), a dense kernel's
``parts_for_flops``'s: both depend on the thread count and the size of the work only, never
on what else runs on the machine.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np

from lstmkit._openblas import scipy_openblas_paths

_blas_handle: Any = None
_searched = False


def _scipy_openblas() -> Any:
    """ctypes handle on the OpenBLAS that scipy.linalg.cython_blas uses, or None."""
    global _blas_handle, _searched
    if _searched:
        return _blas_handle
    _searched = True
    import scipy.linalg.cython_blas  # noqa: F401  (loads the library)

    candidates = scipy_openblas_paths()
    if candidates is None:
        return None
    for path in candidates:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for setter, getter in (("scipy_openblas_set_num_threads",
                                "scipy_openblas_get_num_threads"),
                               ("openblas_set_num_threads", "openblas_get_num_threads")):
            if hasattr(lib, setter) and hasattr(lib, getter):
                _blas_handle = (getattr(lib, setter), getattr(lib, getter))
                _blas_lib.append(lib)
                return _blas_handle
    return None


_blas_lib: list[Any] = []
# OpenBLAS cores with small-matrix kernels for sgemm/dgemm (its SMALL_MATRIX_OPT builds)
_SMALL_KERNEL_CORES = ("skylakex", "cooperlake", "sapphirerapids")


def blas_core() -> str:
    """The kernel set the kernels' OpenBLAS runs on (``openblas_get_corename``, e.g.
    "SkylakeX", "Haswell", "Zen"), or "" if unknown."""
    if _scipy_openblas() is None or not _blas_lib:
        return ""
    for name in ("scipy_openblas_get_corename", "openblas_get_corename"):
        getter = getattr(_blas_lib[0], name, None)
        if getter is not None:
            getter.restype = ctypes.c_char_p
            return (getter() or b"").decode(errors="replace")
    return ""


_small: list[bool] = []


def blas_small_kernels() -> bool:
    """Whether the BLAS has small-matrix kernels that a per-step product of few rows gains
    from (``kernels.blas.gemm_blocks``): OpenBLAS on its AVX-512 cores. Asked once."""
    if not _small:
        _small.append(blas_core().lower() in _SMALL_KERNEL_CORES)
    return _small[0]


@contextlib.contextmanager
def blas_threads(n: int) -> Iterator[None]:
    """Run the block with the kernels' BLAS on ``n`` threads (restored afterwards)."""
    handle = _scipy_openblas()
    if handle is None:
        yield
        return
    setter, getter = handle
    previous = int(getter())
    if previous != n:
        setter(ctypes.c_int(n))
    try:
        yield
    finally:
        if previous != n:
            setter(ctypes.c_int(previous))


def blas_single_threaded() -> contextlib.AbstractContextManager[None]:
    """Run the block with the kernels' BLAS on one thread (restored afterwards)."""
    return blas_threads(1)


@contextlib.contextmanager
def numpy_blas_single_threaded() -> Iterator[None]:
    """Run the block with NumPy's BLAS (and every other BLAS in the process) on one thread.

    For training loops that mix the kernels with NumPy code: after each multi-threaded call,
    OpenBLAS's idle worker threads spin for about 0.1 s before they sleep, and on a machine
    with few cores they take those cores from the kernels' own threads (measured on 2 cores:
    a char-LM training step took 267 ms instead of 135 ms). The kernels and
    ``lstmkit.nn.Linear`` split their work over Numba's thread pool themselves, so nothing
    that lstmkit runs needs a second pool. Uses ``threadpoolctl``; the limits are restored
    afterwards.
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        yield


_openmp_guarded = False


def keep_torch_openmp_apart() -> None:
    """Load PyTorch's own OpenMP runtime, if PyTorch is installed but not yet imported, before
    Numba starts its OpenMP thread pool.

    Numba's pool loads the system's ``libgomp.so.1``. PyTorch's Linux wheels ship their own
    copy under the same name; if the system copy is already loaded when ``import torch`` runs,
    the loader hands PyTorch that one instead, and PyTorch's native GRU and RNN (not its LSTM)
    then run 25-80x slower (measured with torch 2.13). Loading PyTorch's copy first (without
    importing torch: ``ctypes``, local symbols) keeps the two runtimes apart, as they are when
    torch is imported first. Then loads Numba's pool with a short idle spin
    (``_load_openmp_with_short_spin``).
    """
    global _openmp_guarded
    if _openmp_guarded:
        return
    _openmp_guarded = True
    if "torch" not in sys.modules and sys.platform.startswith("linux"):
        try:
            import importlib.util

            spec = importlib.util.find_spec("torch")
            for folder in (spec.submodule_search_locations or []) if spec else []:
                path = os.path.join(folder, "lib", "libgomp.so.1")
                if os.path.exists(path):
                    ctypes.CDLL(path, mode=os.RTLD_LOCAL)
                    break
        except (ImportError, OSError, ValueError):
            pass
    _load_openmp_with_short_spin()


# GNU OpenMP's idle threads spin GOMP_SPINCOUNT times after a parallel region before they sleep
# (300,000 by default, milliseconds); lstmkit's own time loops spin in their own barriers
# (sync.py), so a shorter wait between regions costs them nothing measurable
_OPENMP_SPINCOUNT = "30000"


def _load_openmp_with_short_spin() -> None:
    """Load Numba's OpenMP pool (and with it the system's ``libgomp``, which reads its
    settings once, when loaded) with ``GOMP_SPINCOUNT`` = 30000 unless the user set it or
    ``OMP_WAIT_POLICY``; the variable is removed again, so that no other runtime (PyTorch's,
    a child process's) sees it.

    Without it, Numba's idle OpenMP threads keep spinning for milliseconds after a parallel
    region, on cores that the next call's own threads need: a row kernel split over Python
    threads right after a batch-inner call ran 1.6x slower (measured on a 2-core Xeon,
    docs/performance.md).
    """
    import numba

    layer = str(numba.config.THREADING_LAYER).lower()
    if layer in ("tbb", "workqueue", "safe") or "OMP_WAIT_POLICY" in os.environ or (
            "GOMP_SPINCOUNT" in os.environ):
        return
    os.environ["GOMP_SPINCOUNT"] = _OPENMP_SPINCOUNT
    try:
        import numba.np.ufunc.omppool  # noqa: F401  (links libgomp)
    except ImportError:  # no OpenMP layer: Numba uses TBB or its workqueue
        pass
    finally:
        del os.environ["GOMP_SPINCOUNT"]


_chosen_threads: list[int] = []  # [n, generation]: lstmkit.set_num_threads's last call
_applied = threading.local()  # .generation: the last choice this thread took


def choose_kernel_threads(n: int) -> None:
    """Make ``n`` (at most NUMBA_NUM_THREADS) the kernels' thread count in every thread."""
    keep_torch_openmp_apart()
    import numba

    generation = _chosen_threads[1] + 1 if _chosen_threads else 1
    _chosen_threads[:] = [min(int(n), int(numba.config.NUMBA_NUM_THREADS)), generation]
    numba.set_num_threads(_chosen_threads[0])
    _applied.generation = generation


def kernel_threads() -> int:
    """The kernels' thread count: Numba's for the calling thread. Numba's count is per thread
    (a new thread starts with NUMBA_NUM_THREADS), so a thread takes ``lstmkit.set_num_threads``'s
    last choice at its first call after it; ``numba.set_num_threads`` in that thread afterwards
    still decides for it."""
    keep_torch_openmp_apart()
    import numba

    if _chosen_threads and getattr(_applied, "generation", 0) != _chosen_threads[1]:
        numba.set_num_threads(_chosen_threads[0])
        _applied.generation = _chosen_threads[1]
    return int(numba.get_num_threads())


_fast_pool: bool | None = None


def has_fast_pool() -> bool:
    """Whether Numba can use an OpenMP or TBB thread pool (not only its slow workqueue)."""
    global _fast_pool
    if _fast_pool is None:
        keep_torch_openmp_apart()
        import numba

        layer = str(numba.config.THREADING_LAYER).lower()
        if layer == "workqueue":
            _fast_pool = False
        else:
            _fast_pool = False
            for module in ("numba.np.ufunc.omppool", "numba.np.ufunc.tbbpool"):
                try:
                    __import__(module)
                    _fast_pool = True
                    break
                except ImportError:
                    continue
    return _fast_pool


_parallel_pid: int | None = None


def usable_threads() -> int:
    """The kernels' thread count (Numba's), or 1 in a process forked from one that already ran
    parallel kernels: GNU OpenMP cannot be used again after a fork (Numba would abort the
    child), so such children run serially."""
    if _parallel_pid is not None and _parallel_pid != os.getpid():
        return 1
    return kernel_threads()


def starting_parallel() -> None:
    """Call before a kernel runs a parallel region: keeps PyTorch's OpenMP runtime apart (see
    ``keep_torch_openmp_apart``) and notes that this process's OpenMP pool is started."""
    global _parallel_pid
    keep_torch_openmp_apart()
    if _parallel_pid is None:
        _parallel_pid = os.getpid()


def parts_for_flops(flops: float) -> int:
    """How many threads split a dense kernel's work of ``flops`` floating-point operations (the
    recurrences' split is their plan's, ``lstmkit.engine.plan``): 1 when it is too small to be
    worth a parallel region, else every usable thread. Depends on the thread count only, never
    on the machine's load, so results do not change with what else runs."""
    from lstmkit.engine.plan import load_thresholds

    threads = usable_threads()
    th = load_thresholds()
    limit = th.parallel_min_flops if has_fast_pool() else th.parallel_min_flops_workqueue
    if threads < 2 or flops < limit:
        return 1
    return threads


def run_parts(parallel: Any, serial: Any, parts: int, *args: Any) -> Any:
    """Call a kernel's twins with ``(*args, parts)``: the ``prange`` one when ``parts > 1``
    (after ``keep_torch_openmp_apart``, as it may start Numba's OpenMP pool), else the serial
    one."""
    if parts > 1:
        starting_parallel()
        return parallel(*args, parts)
    return serial(*args, parts)


def unit_bounds(H: int, parts: int) -> np.ndarray:
    """Split H units into ``parts`` contiguous ranges (multiples of 8 where possible)."""
    if parts <= 1:
        return np.array([0, H], dtype=np.int64)
    cuts = [0]
    for p in range(1, parts):
        cut = int(round(H * p / parts / 8.0)) * 8
        cuts.append(min(max(cut, cuts[-1] + 1), H - (parts - p)))
    cuts.append(H)
    return np.array(cuts, dtype=np.int64)


def row_permutation(G: int, H: int, bounds: np.ndarray) -> np.ndarray | None:
    """Rows of a (G*H, ...) gate matrix so that each part's G gate blocks are contiguous:
    part p, gate k, unit u (in the part's range) comes from row k * H + u. None if one part."""
    if bounds.shape[0] <= 2:
        return None
    rows = [np.arange(k * H + bounds[p], k * H + bounds[p + 1])
            for p in range(bounds.shape[0] - 1) for k in range(G)]
    return np.concatenate(rows).astype(np.int64)
