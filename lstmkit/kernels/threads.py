"""How many threads the fused kernels use, and keeping BLAS single-threaded meanwhile.

The kernels split each step over ``parts`` threads themselves (Numba ``prange``; the LSTM's
time loop as one region per pass, see ``sync.py``), each thread computing its own rows (with
the packed micro-kernels or a BLAS call); BLAS's own thread pool must then stay out of the
way (two pools spinning on two cores would fight). ``blas_single_threaded()`` sets the
OpenBLAS that the kernels call (SciPy's, through Numba) to one thread for the duration of a
kernel call.

The thread count is Numba's (``numba.set_num_threads`` or ``NUMBA_NUM_THREADS``); a layer
runs single-threaded when a step is too small to be worth splitting (see ``parts_for``).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np

# a step is split over threads when its recurrent GEMM has at least this many flops (with an
# OpenMP or TBB thread pool: a parallel region costs a few microseconds; Numba's fallback
# "workqueue" pool costs ~100 us per region, so steps must then be much larger)
PARALLEL_MIN_FLOPS = 2.5e5
PARALLEL_MIN_FLOPS_WORKQUEUE = 1.0e8

_blas_handle: Any = None
_searched = False


def _scipy_openblas() -> Any:
    """ctypes handle on the OpenBLAS that scipy.linalg.cython_blas uses, or None."""
    global _blas_handle, _searched
    if _searched:
        return _blas_handle
    _searched = True
    import scipy.linalg.cython_blas  # noqa: F401  (loads the library)

    candidates = []
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.split()[-1]
                name = os.path.basename(path).lower()
                if "openblas" in name and "scipy" in path and "numpy" not in path:
                    candidates.append(path)
    except OSError:
        return None
    for path in dict.fromkeys(candidates):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for setter, getter in (("scipy_openblas_set_num_threads",
                                "scipy_openblas_get_num_threads"),
                               ("openblas_set_num_threads", "openblas_get_num_threads")):
            if hasattr(lib, setter) and hasattr(lib, getter):
                _blas_handle = (getattr(lib, setter), getattr(lib, getter))
                return _blas_handle
    return None


@contextlib.contextmanager
def blas_single_threaded() -> Iterator[None]:
    """Run the block with the kernels' BLAS on one thread (restored afterwards)."""
    handle = _scipy_openblas()
    if handle is None:
        yield
        return
    setter, getter = handle
    previous = int(getter())
    if previous != 1:
        setter(ctypes.c_int(1))
    try:
        yield
    finally:
        if previous != 1:
            setter(ctypes.c_int(previous))


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
    torch is imported first. Nothing happens without PyTorch.
    """
    global _openmp_guarded
    if _openmp_guarded:
        return
    _openmp_guarded = True
    if "torch" in sys.modules or not sys.platform.startswith("linux"):
        return
    try:
        import importlib.util

        spec = importlib.util.find_spec("torch")
        for folder in (spec.submodule_search_locations or []) if spec else []:
            path = os.path.join(folder, "lib", "libgomp.so.1")
            if os.path.exists(path):
                ctypes.CDLL(path, mode=os.RTLD_LOCAL)
                return
    except (ImportError, OSError, ValueError):
        pass


def kernel_threads() -> int:
    keep_torch_openmp_apart()
    import numba

    return int(numba.get_num_threads())


_fast_pool: bool | None = None


def _has_fast_pool() -> bool:
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
# look at how many other threads are running before splitting a step (see busy_elsewhere)
ADAPT_TO_LOAD = True


def busy_elsewhere() -> int:
    """How many threads of other processes are running right now (Linux; 0 if unknown).

    A step split over threads waits at its end for every thread; if another process holds one
    of the cores, the thread that lost its core stalls the step (for a scheduler time slice, or
    for ``sync.PATIENCE`` spins in the LSTM's time loop, after which its share is taken over),
    so a parallel loop ends up slower than a serial one. Counting the running threads
    (runnable threads in /proc/loadavg, less this process's own) before a call avoids that.
    """
    try:
        with open("/proc/loadavg", "rb") as f:
            running = int(f.read().split()[3].split(b"/")[0])
        if running <= 1:  # only the thread reading the file
            return 0
        own = 0
        for task in os.listdir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{task}/stat", "rb") as f:
                    state = f.read().rsplit(b")", 1)[1].split()[0]
            except (OSError, IndexError):
                continue
            own += state == b"R"
        return max(0, running - max(own, 1))
    except (OSError, ValueError, IndexError):
        return 0


_busy_cache = [-1.0, 0, 0]


def _busy_recently(max_age: float = 0.25) -> int:
    """``busy_elsewhere()``, re-read at most every ``max_age`` seconds (reading /proc costs
    tens of microseconds, as much as a small step, and 0.2-0.5 ms right after a kernel call has
    pushed the interpreter out of the caches), and the smaller of the last two readings:
    a kernel thread or a short process that happens to be running at one reading does not
    switch the kernels to serial."""
    import time

    now = time.monotonic()
    if now - _busy_cache[0] > max_age:
        _busy_cache[0] = now
        _busy_cache[2] = _busy_cache[1]
        _busy_cache[1] = busy_elsewhere()
    return int(min(_busy_cache[1], _busy_cache[2]))


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def parts_for(B: int, H: int, G: int) -> int:
    """How many threads split a step: 1 unless the step's recurrent GEMM is large enough.

    A single sequence (B = 1) counts double: its step reads every weight of W_hh for 2 flops,
    so it is bound by the cache's bandwidth rather than by arithmetic, and split over two cores
    each reads half of W_hh from its own L2 (measured, LSTM, B = 1: H = 128 1.2-1.3x faster
    split in two, H = 96 and 64 slower).

    Also 1 in a process forked from one that already ran parallel kernels: GNU OpenMP cannot
    be used again after a fork (Numba would abort the child), so such children run serially.
    """
    flops = 2.0 * B * G * H * H * (2 if B == 1 else 1)
    return min(parts_for_flops(flops), max(1, H // 8))


def parts_for_flops(flops: float) -> int:
    """How many threads split a piece of work of ``flops`` floating-point operations: 1 when
    it is too small to be worth a parallel region (see ``PARALLEL_MIN_FLOPS``), in a forked
    child (see ``parts_for``), or when other processes hold the cores; else the kernel threads.
    """
    global _parallel_pid
    threads = kernel_threads()
    limit = PARALLEL_MIN_FLOPS if _has_fast_pool() else PARALLEL_MIN_FLOPS_WORKQUEUE
    if threads < 2 or flops < limit:
        return 1
    if _parallel_pid is not None and _parallel_pid != os.getpid():
        return 1
    if ADAPT_TO_LOAD:
        threads = min(threads, _cpus() - _busy_recently())
    parts = max(1, threads)
    if parts > 1 and _parallel_pid is None:
        _parallel_pid = os.getpid()
    return parts


def run_parts(parallel: Any, serial: Any, parts: int, *args: Any) -> Any:
    """Call a kernel's twins with ``(*args, parts)``: the ``prange`` one when ``parts > 1``
    (after ``keep_torch_openmp_apart``, as it may start Numba's OpenMP pool), else the serial
    one."""
    if parts > 1:
        keep_torch_openmp_apart()
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
