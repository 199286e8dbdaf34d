"""Benchmark of the fused recurrences against PyTorch on the CPU (``lstmkit bench``).

Protocol (everything in one process, so both frameworks see the same machine state):

- Threads: NumPy's and SciPy's OpenBLAS, Numba and ``torch.set_num_threads`` are all set to
  the same count (``--threads``, default: every core).
- Time: for each shape, lstmkit and PyTorch alternate in blocks: a 0.2 s pause, one untimed
  run, then 3 timed runs of one framework, then of the other, and so on until each has
  ``reps`` timed runs (at least). Blocks keep a framework's worker threads warm, as in a
  training loop; the pause lets the other framework's BLAS and OpenMP threads (which spin
  for up to ~0.1 s after a call) go idle rather than compete for the cores; the untimed run
  absorbs the cold start. Reported: the median (and the minimum) of the timed runs;
  ratio = torch time / lstmkit time (> 1: lstmkit is faster).
  The load average at the start and the end of the run is recorded: on a shared machine,
  compare runs made under similar load only.
- Training step = forward + backward of the layer (d_output given, input gradient computed,
  weight gradients accumulated), float32. Inference = forward under ``lstmkit.no_grad()``
  vs ``torch.no_grad()``.
- FLOP convention: a forward pass is its GEMMs, ``2 * T * B * (D + H) * G * H`` (G = 4 gates
  for the LSTM, 3 for the GRU, 1 for the RNN; the element-wise work is not counted); a
  training step is 3x that (forward, the gradient with respect to the inputs and states,
  and the one with respect to the weights). GFLOP/s = that count / median time.
- Peak: a 1024^3 float32 matmul in NumPy (median of 9 runs), in the same run and thread
  count, at its start and its end (the higher is used); "% peak" = achieved GFLOP/s / that.
  The peak of the BLAS the kernels call (SciPy's OpenBLAS) is reported too.
  The same matmul also takes its turn in each shape's alternation (a third "framework"), so
  that each shape has a peak measured at the same moments as its times: "% along" =
  achieved GFLOP/s / that one's median (on a machine whose speed drifts by tens of percent
  within minutes, the peak of the run's start or end can be far from the shape's moment).
- Memory: a fresh subprocess per framework and shape (same threads, same malloc settings:
  ``MALLOC_MMAP_THRESHOLD_`` fixed so that large blocks go back to the system when freed,
  for both): build the layer and the input, run a 2-step warm-up training step (loads the
  code, allocates the weight gradients), then reset the kernel's resident-set high-water mark
  (``/proc/self/clear_refs``), run two full training steps and report VmHWM - VmRSS before
  them: the extra resident memory training needs at its peak, including whatever one step
  keeps alive into the next (lstmkit's layer holds its last forward cache), in bytes the
  operating system really handed out. For lstmkit the peak of NumPy's traced allocations
  (``tracemalloc``) over two steps is reported as well.
- First call: a subprocess imports lstmkit and times its first training step of a small LSTM
  (Numba loads the compiled kernels from its on-disk cache) and a second one, then the first
  training step of a (10, 32, 64, 128) layer, whose steps are split over the threads (with 2
  or more: the kernels' threaded variant, compiled separately); another subprocess does the
  same with an empty cache directory (``NUMBA_CACHE_DIR``): the one-time compilation cost on a
  new machine. PyTorch's first calls are timed the same way.

Results are printed as a table and returned (and written with ``--json``) as a dict.
"""

from __future__ import annotations

import ctypes
import glob
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

GRID = [
    (100, 32, 64, 128),
    (100, 64, 128, 256),
    (50, 64, 256, 512),
    (35, 20, 650, 650),
    (200, 1, 32, 128),
    (25, 128, 128, 128),
    (400, 16, 16, 64),
]
# shapes whose GEMMs are large enough that the 80%-of-peak target applies
LARGE = {(100, 64, 128, 256), (50, 64, 256, 512), (35, 20, 650, 650)}
GATES = {"lstm": 4, "gru": 3, "rnn": 1}
MODES = {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN"}


# -- threads -----------------------------------------------------------------------------------


def _openblas_libraries() -> list[str]:
    """Paths of the OpenBLAS builds loaded in this process (NumPy's and SciPy's)."""
    paths = set()
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.split()[-1]
                if "openblas" in os.path.basename(path).lower() and path.endswith(".so"):
                    paths.add(path)
    except OSError:  # not Linux: look next to the packages
        import numpy
        import scipy

        for pkg in (numpy, scipy):
            libs = os.path.join(os.path.dirname(os.path.dirname(pkg.__file__)),
                                pkg.__name__ + ".libs")
            paths.update(glob.glob(os.path.join(libs, "*openblas*")))
    return sorted(paths)


def set_threads(n: int) -> dict[str, Any]:
    """Give NumPy's and SciPy's OpenBLAS, Numba and PyTorch (if present) ``n`` threads."""
    import scipy.linalg.cython_blas  # noqa: F401  (load SciPy's BLAS, the kernels' BLAS)

    torch = _torch()  # imported before Numba's OpenMP pool starts (see threads.py)

    done: dict[str, Any] = {}
    for path in _openblas_libraries():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for symbol in ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
                       "openblas_set_num_threads64_", "openblas_set_num_threads"):
            fn = getattr(lib, symbol, None)
            if fn is not None:
                fn(ctypes.c_int(n))
                done[os.path.basename(path)] = n
                break
    import lstmkit

    lstmkit.set_num_threads(n)
    done["numba"] = lstmkit.get_num_threads()
    if torch is not None:
        torch.set_num_threads(n)
        done["torch"] = torch.get_num_threads()
    return done


def _torch() -> Any:
    if os.environ.get("LSTMKIT_BENCH_NO_TORCH"):
        return None
    try:
        import torch
    except ImportError:
        return None
    return torch


# -- timing ------------------------------------------------------------------------------------


@dataclass
class Timing:
    runs: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return float(np.median(self.runs))

    @property
    def best(self) -> float:
        return float(np.min(self.runs))


BLOCK = 3  # timed runs in a row per framework, after a pause and one untimed run
PAUSE_S = 0.2  # OpenBLAS worker threads spin for ~0.1 s after their last call


def _alternate(fns: dict[str, Any], reps: int, block: int = BLOCK) -> dict[str, Timing]:
    """Time each function ``reps`` times (at least), in alternating blocks.

    A block is a pause, one untimed run, then ``block`` timed runs of the same function;
    blocks of the frameworks alternate (lstmkit, torch, lstmkit, ...) so that slow drifts of
    the machine hit both. Inside a block a framework's worker threads are warm, as in a
    training loop; the pause lets the other framework's BLAS and OpenMP threads, which spin
    for up to ~0.1 s after their last call, go idle instead of competing for the cores, and
    the untimed run absorbs the cold start after the pause.
    """
    timings = {name: Timing() for name in fns}
    rounds = -(-reps // block)
    for _ in range(rounds):
        for name, fn in fns.items():
            time.sleep(PAUSE_S)
            fn()
            for _ in range(block):
                start = time.perf_counter()
                fn()
                timings[name].runs.append(time.perf_counter() - start)
    return timings


def _sgemm_operands(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """a, b (n, n) float32 random (seed 0) and c (n, n) for an n^3 sgemm."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(np.float32)
    b = rng.standard_normal((n, n)).astype(np.float32)
    return a, b, np.empty((n, n), np.float32)


def sgemm_peak(reps: int = 9, n: int = 1024) -> dict[str, float]:
    """GFLOP/s of an n^3 float32 matmul: NumPy's BLAS and the kernels' BLAS (SciPy's OpenBLAS,
    which the kernels call through ``scipy.linalg.cython_blas``; here through its Python
    wrapper, on Fortran-ordered operands so that no copy is timed).

    Each is timed on its own (median of ``reps`` after two warm-up calls), with a pause in
    between so that the first library's idle threads have stopped spinning."""
    from scipy.linalg.blas import sgemm

    a, b, c = _sgemm_operands(n)
    af, bf, cf = np.asfortranarray(a), np.asfortranarray(b), np.asfortranarray(c)
    result = {}
    for name, fn in (("numpy", lambda: np.matmul(a, b, out=c)),
                     ("kernels", lambda: sgemm(1.0, af, bf, beta=0.0, c=cf, overwrite_c=True))):
        time.sleep(0.3)
        fn()
        fn()
        runs = []
        for _ in range(reps):
            start = time.perf_counter()
            fn()
            runs.append(time.perf_counter() - start)
        result[name] = 2.0 * n**3 / float(np.median(runs)) / 1e9
    return result


def _sgemm_call(n: int = 1024) -> tuple[Any, float]:
    """A NumPy n^3 float32 matmul to time beside a shape (``time_shape``), and its flop count."""
    a, b, c = _sgemm_operands(n)
    return (lambda: np.matmul(a, b, out=c)), 2.0 * n**3


def flops(cell: str, T: int, B: int, D: int, H: int, train: bool) -> float:
    forward = 2.0 * T * B * (D + H) * GATES[cell] * H
    return 3.0 * forward if train else forward


def _make(cell: str, D: int, H: int, fast: bool, torch: Any, seed: int = 0) -> tuple[Any, Any]:
    import lstmkit

    layer = getattr(lstmkit, MODES[cell])(D, H, seed=seed, fast=fast)
    module = None
    if torch is not None:
        torch.manual_seed(seed)
        module = getattr(torch.nn, MODES[cell])(D, H)
        layer.load_state_dict(module.state_dict())
    return layer, module


def time_shape(cell: str, shape: tuple[int, int, int, int], reps: int, fast: bool = True,
               train: bool = True, infer: bool = True,
               peak_alongside: bool = False) -> dict[str, Any]:
    """Time one shape (see the module docstring). ``peak_alongside``: a 1024^3 sgemm takes
    its turn in the alternation too, so that the peak it gives was measured at the same
    moments as the shape's times (``entry["sgemm_gflops"]``)."""
    import lstmkit

    torch = _torch()
    T, B, D, H = shape
    layer, module = _make(cell, D, H, fast, torch)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((T, B, D)).astype(np.float32)
    d_out = rng.standard_normal((T, B, H)).astype(np.float32)

    def lk_train() -> None:
        layer(x)
        layer.backward(d_out)

    def lk_infer() -> None:
        with lstmkit.no_grad():
            layer(x)

    fns_train: dict[str, Any] = {"lstmkit": lk_train}
    fns_infer: dict[str, Any] = {"lstmkit": lk_infer}
    if torch is not None:
        xt = torch.from_numpy(x).requires_grad_(True)
        dt = torch.from_numpy(d_out)

        def pt_train() -> None:
            out, _ = module(xt)
            out.backward(dt)

        def pt_infer() -> None:
            with torch.no_grad():
                module(xt)

        fns_train["torch"] = pt_train
        fns_infer["torch"] = pt_infer
    if peak_alongside:
        sgemm, sgemm_flops = _sgemm_call()
        fns_train["sgemm"] = fns_infer["sgemm"] = sgemm
    result: dict[str, Any] = {"shape": list(shape)}
    for mode, fns, on in (("train", fns_train, train), ("infer", fns_infer, infer)):
        if not on:
            continue
        timings = _alternate(fns, reps)
        count = flops(cell, T, B, D, H, mode == "train")
        entry: dict[str, Any] = {"flops": count}
        if "sgemm" in timings:
            entry["sgemm_gflops"] = sgemm_flops / timings.pop("sgemm").median / 1e9
        for name, t in timings.items():
            entry[name] = {"median_s": t.median, "min_s": t.best, "runs_s": t.runs,
                           "gflops": count / t.median / 1e9}
        if "torch" in timings:
            entry["ratio"] = timings["torch"].median / timings["lstmkit"].median
            entry["ratio_min"] = timings["torch"].best / timings["lstmkit"].best
        result[mode] = entry
    return result


# -- memory (subprocess per framework and shape) -----------------------------------------------

_MEMORY_CHILD = r"""
import gc, json, sys, time, tracemalloc
import numpy as np
cell, framework = sys.argv[1], sys.argv[2]
T, B, D, H, threads = map(int, sys.argv[3:8])
fast = sys.argv[8] == "1"
from lstmkit.benchmark import set_threads, MODES
set_threads(threads)

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0

rng = np.random.default_rng(1)
x = rng.standard_normal((T, B, D)).astype(np.float32)
d_out = rng.standard_normal((T, B, H)).astype(np.float32)
if framework == "lstmkit":
    import lstmkit
    layer = getattr(lstmkit, MODES[cell])(D, H, seed=0, fast=fast)
    def step(x, d_out):
        layer(x)
        layer.backward(d_out)
else:
    import torch
    module = getattr(torch.nn, MODES[cell])(D, H)
    def step(x, d_out):
        out, _ = module(torch.from_numpy(x).requires_grad_(True))
        out.backward(torch.from_numpy(d_out))
step(x[:2].copy(), d_out[:2].copy())  # loads the code, allocates the weight gradients
gc.collect()
before = status("VmRSS")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
step(x, d_out)
step(x, d_out)  # the second forward runs while what the first step kept is still alive
peak = status("VmHWM")
result = {"rss_peak_extra": peak - before, "rss_before": before}
if framework == "lstmkit":
    gc.collect()
    tracemalloc.start()
    step(x, d_out)
    step(x, d_out)
    result["tracemalloc_peak"] = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
print(json.dumps(result))
"""


def _child_env(threads: int, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "OMP_NUM_THREADS": str(threads), "OPENBLAS_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads), "MALLOC_MMAP_THRESHOLD_": "131072",
        "MALLOC_TRIM_THRESHOLD_": "131072",
    })
    if extra:
        env.update(extra)
    return env


def memory_shape(cell: str, shape: tuple[int, int, int, int], threads: int,
                 fast: bool = True) -> dict[str, Any]:
    result: dict[str, Any] = {}
    frameworks = ["lstmkit"] + (["torch"] if _torch() is not None else [])
    for framework in frameworks:
        args = [sys.executable, "-c", _MEMORY_CHILD, cell, framework, *map(str, shape),
                str(threads), "1" if fast else "0"]
        extra = {"LSTMKIT_BENCH_NO_TORCH": "1"} if framework == "lstmkit" else None
        try:
            out = subprocess.run(args, capture_output=True, text=True, check=True,
                                 env=_child_env(threads, extra), timeout=900)
            result[framework] = json.loads(out.stdout.strip().splitlines()[-1])
        except (subprocess.SubprocessError, ValueError, IndexError) as error:
            result[framework] = {"error": str(error)[-500:]}
    if "torch" in result and "rss_peak_extra" in result["torch"] \
            and "rss_peak_extra" in result["lstmkit"]:
        result["ratio"] = result["lstmkit"]["rss_peak_extra"] / max(
            1, result["torch"]["rss_peak_extra"])
    return result


# -- first-call (JIT) cost ---------------------------------------------------------------------

_FIRST_CALL_CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
framework = sys.argv[1]
import numpy as np
rng = np.random.default_rng(0)
x = rng.standard_normal((10, 4, 8)).astype(np.float32)
d = rng.standard_normal((10, 4, 16)).astype(np.float32)
xb = rng.standard_normal((10, 32, 64)).astype(np.float32)  # steps large enough to split
db = rng.standard_normal((10, 32, 128)).astype(np.float32)
if framework == "lstmkit":
    import lstmkit
    t_import = time.perf_counter() - t0
    layer = lstmkit.LSTM(8, 16, seed=0)
    big = lstmkit.LSTM(64, 128, seed=0)
    def train():
        layer(x); layer.backward(d)
    def train_big():
        big(xb); big.backward(db)
    def infer():
        with lstmkit.no_grad():
            layer(x)
else:
    import torch
    t_import = time.perf_counter() - t0
    module = torch.nn.LSTM(8, 16)
    big = torch.nn.LSTM(64, 128)
    xt = torch.from_numpy(x).requires_grad_(True)
    dt = torch.from_numpy(d)
    xbt = torch.from_numpy(xb).requires_grad_(True)
    dbt = torch.from_numpy(db)
    def train():
        out, _ = module(xt); out.backward(dt)
    def train_big():
        out, _ = big(xbt); out.backward(dbt)
    def infer():
        with torch.no_grad():
            module(xt)
times = {}
for name, fn in (("first_train", train), ("second_train", train), ("first_infer", infer),
                 ("second_infer", infer), ("first_train_big", train_big)):
    t = time.perf_counter(); fn(); times[name] = time.perf_counter() - t
times["import"] = t_import
print(json.dumps(times))
"""


def first_call(threads: int) -> dict[str, Any]:
    result: dict[str, Any] = {}
    runs = [("lstmkit_cached", "lstmkit", None), ("lstmkit_cold", "lstmkit", "cold")]
    if _torch() is not None:
        runs.append(("torch", "torch", None))
    for key, framework, cold in runs:
        with tempfile.TemporaryDirectory() as cache_dir:
            extra = {"NUMBA_CACHE_DIR": cache_dir} if cold else None
            try:
                if framework == "lstmkit" and not cold:  # make sure the disk cache is filled
                    subprocess.run([sys.executable, "-c", _FIRST_CALL_CHILD, framework],
                                   capture_output=True, text=True, check=True,
                                   env=_child_env(threads), timeout=900)
                out = subprocess.run([sys.executable, "-c", _FIRST_CALL_CHILD, framework],
                                     capture_output=True, text=True, check=True,
                                     env=_child_env(threads, extra), timeout=900)
                result[key] = json.loads(out.stdout.strip().splitlines()[-1])
            except (subprocess.SubprocessError, ValueError, IndexError) as error:
                result[key] = {"error": str(error)[-500:]}
    return result


# -- the whole run -----------------------------------------------------------------------------


def machine_info(threads: int) -> dict[str, Any]:
    import numba
    import scipy

    info: dict[str, Any] = {
        "python": platform.python_version(), "numpy": np.__version__,
        "scipy": scipy.__version__, "numba": numba.__version__, "threads": threads,
        "cpu_count": os.cpu_count(), "platform": platform.platform(),
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
    }
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name") and "cpu" not in info:
                    info["cpu"] = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and "vector_flags" not in info:
                    flags = line.split(":", 1)[1].split()
                    info["vector_flags"] = [f for f in ("avx2", "fma", "avx512f") if f in flags]
    except OSError:
        info["cpu"] = platform.processor()
    from lstmkit.engine.kernels import vector_width

    info["kernel_vector_width"] = vector_width()  # floats per vector of the micro-kernels
    torch = _torch()
    if torch is not None:
        info["torch"] = torch.__version__
    try:
        info["loadavg_start"] = os.getloadavg()
    except OSError:
        pass
    return info


def geomean(values: list[float]) -> float:
    return float(math.exp(sum(math.log(v) for v in values) / len(values))) if values else 0.0


def run(shapes: list[tuple[int, int, int, int]] | None = None, cell: str = "lstm",
        threads: int | None = None, reps: int = 7, memory: bool = True,
        first: bool = True, fast: bool = True, echo: Any = print) -> dict[str, Any]:
    """Run the benchmark; returns the results (see the module docstring for the protocol)."""
    shapes = list(shapes or GRID)
    threads = int(threads or os.cpu_count() or 1)
    threads_set = set_threads(threads)
    info = machine_info(threads)
    info["threads_set"] = threads_set
    info["path"] = "fused" if fast else "reference"
    torch = _torch()
    echo(f"lstmkit bench: {cell.upper()} float32, {threads} thread(s), {info.get('cpu', '?')} "
         f"({' '.join(info.get('vector_flags', [])) or 'no avx2'}; kernels' vectors of "
         f"{info['kernel_vector_width']} floats), {'fused kernels' if fast else 'reference path'}"
         + ("" if torch is not None else " (PyTorch not installed: lstmkit alone)"))
    peak = sgemm_peak()
    echo(f"sgemm peak (1024^3 float32): NumPy {peak['numpy']:.1f} GFLOP/s, "
         f"kernels' BLAS {peak['kernels']:.1f} GFLOP/s (measured again at the end)")
    results = []
    for shape in shapes:
        entry = time_shape(cell, shape, reps, fast=fast, peak_alongside=True)
        if memory:
            entry["memory"] = memory_shape(cell, shape, threads, fast=fast)
        results.append(entry)
        echo(_row(entry, peak["numpy"]))
    first_calls = first_call(threads) if first and fast else {}
    # a busy moment during one measurement would understate the peak (and overstate the % of
    # it): measure again and keep the higher of the two
    start_peak, end_peak = peak, sgemm_peak()
    peak = {name: max(start_peak[name], end_peak[name]) for name in start_peak}
    info["sgemm_peak_start"], info["sgemm_peak_end"] = start_peak, end_peak
    summary = _summary(results, peak["numpy"], torch is not None)
    report = {"machine": info, "cell": cell, "peak_gflops": peak, "results": results,
              "first_call": first_calls, "summary": summary,
              "flop_convention": "forward = 2*T*B*(D+H)*G*H (GEMMs only); training = 3x"}
    try:
        info["loadavg_end"] = os.getloadavg()
    except OSError:
        pass
    echo(format_table(report))
    return report


def _row(entry: dict[str, Any], peak: float) -> str:
    parts = [f"{tuple(entry['shape'])}"]
    for mode in ("train", "infer"):
        e = entry.get(mode)
        if e is None:
            continue
        lk = e["lstmkit"]
        s = f"{mode} {lk['median_s'] * 1e3:.2f} ms {lk['gflops']:.0f} GF/s"
        if "sgemm_gflops" in e:
            s += f" (sgemm alongside {e['sgemm_gflops']:.0f})"
        if "torch" in e:
            s += f" torch {e['torch']['median_s'] * 1e3:.2f} ms x{e['ratio']:.2f}"
        parts.append(s)
    return "  ".join(parts)


def _summary(results: list[dict[str, Any]], peak: float, with_torch: bool) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for mode in ("train", "infer"):
        entries = [r[mode] for r in results if mode in r]
        if not entries:
            continue
        s: dict[str, Any] = {}
        if with_torch:
            ratios = [e["ratio"] for e in entries]
            s["geomean_ratio"] = geomean(ratios)
            s["min_ratio"] = min(ratios)
            s["all_ratios_ge_1"] = all(r >= 1.0 for r in ratios)
            s["geomean_ge_1.3"] = s["geomean_ratio"] >= 1.3
        large = [r for r in results if tuple(r["shape"]) in LARGE and mode in r]
        if large:
            fractions = [r[mode]["lstmkit"]["gflops"] / peak for r in large]
            s["large_shapes_fraction_of_peak"] = fractions
            s["large_shapes_ge_80pct_peak"] = all(f >= 0.8 for f in fractions)
            if all("sgemm_gflops" in r[mode] for r in large):
                alongside = [r[mode]["lstmkit"]["gflops"] / r[mode]["sgemm_gflops"]
                             for r in large]
                s["large_shapes_fraction_of_peak_alongside"] = alongside
                s["large_shapes_ge_80pct_peak_alongside"] = all(f >= 0.8 for f in alongside)
        summary[mode] = s
    mem = [r["memory"].get("ratio") for r in results if "memory" in r]
    if mem and all(m is not None for m in mem):
        summary["memory_ratio_max"] = max(mem)
        summary["memory_le_torch"] = all(m <= 1.0 for m in mem)
    return summary


def _mb(n: float) -> str:
    return f"{n / 2**20:.1f}"


def format_table(report: dict[str, Any]) -> str:
    peak = report["peak_gflops"]["numpy"]
    with_torch = "torch" in report["machine"]
    lines = []
    head = f"{'shape (T,B,D,H)':<20}"
    for mode in ("train", "infer"):
        head += f" | {mode:>5}: lstmkit ms  GF/s  %peak %along"
        if with_torch:
            head += "   torch ms  GF/s  ratio"
    lines.append(head)
    lines.append("-" * len(head))
    for r in report["results"]:
        line = f"{str(tuple(r['shape'])):<20}"
        for mode in ("train", "infer"):
            e = r.get(mode)
            if e is None:
                continue
            lk = e["lstmkit"]
            along = (f"{100 * lk['gflops'] / e['sgemm_gflops']:6.0f}%" if "sgemm_gflops" in e
                     else f"{'-':>7}")
            line += (f" | {'':>5}  {lk['median_s'] * 1e3:10.2f} {lk['gflops']:5.0f} "
                     f"{100 * lk['gflops'] / peak:5.0f}%{along}")
            if with_torch:
                pt = e["torch"]
                line += f" {pt['median_s'] * 1e3:10.2f} {pt['gflops']:5.0f} {e['ratio']:6.2f}"
        lines.append(line)
    if any("memory" in r for r in report["results"]):
        lines.append("")
        lines.append(f"{'peak extra RSS, MiB':<20} | lstmkit (tracemalloc) | torch | ratio")
        for r in report["results"]:
            m = r.get("memory")
            if not m:
                continue
            lk, pt = m.get("lstmkit", {}), m.get("torch", {})
            line = f"{str(tuple(r['shape'])):<20} | "
            if "rss_peak_extra" in lk:
                line += f"{_mb(lk['rss_peak_extra']):>7} ({_mb(lk.get('tracemalloc_peak', 0))})"
            else:
                line += "error"
            if "rss_peak_extra" in pt:
                line += f" | {_mb(pt['rss_peak_extra']):>7} | {m.get('ratio', float('nan')):.2f}"
            lines.append(line)
    fc = report.get("first_call") or {}
    if fc:
        lines.append("")
        for key, v in fc.items():
            if "error" in v:
                lines.append(f"first call {key}: error {v['error'][:200]}")
                continue
            lines.append(
                f"first call {key:<15}: import {v['import']:.2f} s, first train step "
                f"{v['first_train']:.3f} s (second {v['second_train'] * 1e3:.1f} ms), first "
                f"inference {v['first_infer']:.3f} s (second {v['second_infer'] * 1e3:.1f} ms)"
                + (f"; then a (10, 32, 64, 128) layer's first train step "
                   f"{v['first_train_big']:.3f} s" if "first_train_big" in v else ""))
    s = report["summary"]
    lines.append("")
    for mode in ("train", "infer"):
        if mode not in s:
            continue
        m = s[mode]
        text = f"{mode}: "
        if "geomean_ratio" in m:
            text += (f"geomean ratio {m['geomean_ratio']:.2f} (target >= 1.3), min ratio "
                     f"{m['min_ratio']:.2f} (target >= 1.0); ")
        if "large_shapes_fraction_of_peak" in m:
            text += "large shapes % of peak: " + ", ".join(
                f"{100 * f:.0f}%" for f in m["large_shapes_fraction_of_peak"]) + " (target >= 80%)"
        if "large_shapes_fraction_of_peak_alongside" in m:
            text += "; of the sgemm timed alongside: " + ", ".join(
                f"{100 * f:.0f}%" for f in m["large_shapes_fraction_of_peak_alongside"])
        if text != f"{mode}: ":
            lines.append(text)
    if "memory_ratio_max" in s:
        lines.append(f"memory: max lstmkit/torch peak ratio {s['memory_ratio_max']:.2f} "
                     "(target <= 1.0)")
    return "\n".join(lines)


def parse_shapes(text: str) -> list[tuple[int, int, int, int]]:
    """"100,32,64,128;200,1,32,128" -> [(100, 32, 64, 128), (200, 1, 32, 128)]."""
    shapes = []
    for part in text.replace(" ", "").split(";"):
        if not part:
            continue
        values = tuple(int(v) for v in part.lower().replace("x", ",").split(","))
        if len(values) != 4 or min(values) < 1:
            raise ValueError(f"a shape is T,B,D,H (four positive integers), got {part!r}")
        shapes.append(values)
    return shapes


def save(report: dict[str, Any], path: str) -> None:
    with open(path, "w") as f:
        json.dump(report, f, indent=1)
