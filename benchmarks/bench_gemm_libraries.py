"""The per-step recurrent product on one core: lstmkit's packed micro-kernel against maintained
GEMMs (Intel MKL's packed, JIT and plain sgemm, oneDNN's sgemm, OpenBLAS) and AVX-512 variants
of the micro-kernel (``benchmarks/packed_wide.py``, a prototype).

For each shape (T, B, D, H) of the grid and G = 4 gates, two products run once per time step:
forward ``C (M=4H, B) += W_hh (4H, H) h^T (H, B)`` and backward ``C (H, B) += W_hh^T (H, 4H)
dZ^T (4H, B)``. Each candidate runs the product n times in a row on the same (pre-packed) A,
as a time loop does, inside one compiled Numba loop (the C libraries are called through their
function pointers, so the time includes the call overhead a Numba kernel would pay; NumPy's
``matmul`` runs in a Python loop, ``C = A X``). Before timing, every candidate's result is
checked against NumPy (float64). Candidates alternate within each round (the order rotating
from round to round), each timed by the CPU time of the thread (``time.thread_time``: on a busy
machine the time the scheduler gives to other processes is not counted, what they do to the
caches still is); reported: the median over the rounds of each candidate's time per call,
as the speed-up over lstmkit's kernel as shipped (> 1: the candidate is faster) and, for
lstmkit, GFLOP/s. The process is pinned to one CPU, so that no library's thread pool can use
a second core (MKL is also asked for its sequential layer, OpenBLAS for one thread).

Run from the repository root (MKL and oneDNN are optional: ``pip install mkl onednn``; a
library that is not installed is left out, and said so):

    python benchmarks/bench_gemm_libraries.py [--rounds 25] [--shapes "100,32,64,128"]
        [--only lstmkit,mkl-packed] [--json out.json] [--misalign 16]

Library settings that change the code path are read from the environment, so compare, e.g.,
``OPENBLAS_CORETYPE=Haswell`` (OpenBLAS's AVX2 kernels) or ``MKL_ENABLE_INSTRUCTIONS=AVX2``
by running the script again with them set.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np
import packed_wide
from numba import njit
from threadpoolctl import threadpool_info, threadpool_limits

from lstmkit.benchmark import GRID, parse_shapes
from lstmkit.engine.kernels import packed
from lstmkit.engine.kernels.blas import gemm as openblas_gemm

G = 4
TARGET_S = 0.002  # each timed run: about this long for lstmkit's kernel (short: on a busy
# machine a long run is more often cut by the scheduler)
# CBLAS / MKL enum values (mkl_cblas.h, mkl_types.h)
ROW_MAJOR, NO_TRANS, A_MATRIX, PACKED = 101, 111, 161, 151
# the AVX-512 variants of the micro-kernel (packed_wide.py): name -> (tile, gemm)
WIDE = {
    # the shipped layout (16-row tiles), one 16-float vector per tile row, <= 24 columns
    "zmm-16": lambda: packed_wide.variant(16, 1, 24, 8),
    # 32-row tiles, two vectors, <= 8 columns
    "zmm-32": lambda: packed_wide.variant(16, 2, 8, 4),
    # the shipped 16-row tiles, vectors along the batch: 8 rows x <= 48 columns
    "bvec-8": lambda: packed_wide.bvec_variant(8, 3),
}

Run = Callable[[int], None]
Setup = Callable[[np.ndarray, np.ndarray, np.ndarray], Run]


# ---------------------------------------------------------------- the libraries, via ctypes

def _library(names: list[str], preload: tuple[str, ...] = ()) -> tuple[ctypes.CDLL | None, str]:
    """The first of ``names`` that loads from this environment's lib/ (where the ``mkl`` and
    ``onednn`` wheels put them) or the system's, after its dependencies ``preload``."""
    libdir = os.path.join(sys.prefix, "lib")
    for dep in preload:
        try:
            ctypes.CDLL(os.path.join(libdir, dep), mode=ctypes.RTLD_GLOBAL)
        except OSError:
            pass
    errors = []
    for name in names:
        for path in (os.path.join(libdir, name), ctypes.util.find_library(name.split(".")[0][3:])):
            if not path:
                continue
            try:
                return ctypes.CDLL(path), path
            except OSError as exc:
                errors.append(str(exc))
    return None, "; ".join(errors) or "not found"


def _fn(lib: ctypes.CDLL, name: str, restype, argtypes: list) -> Callable:
    fn = getattr(lib, name)
    fn.restype, fn.argtypes = restype, argtypes
    return fn


I32, F32, I64, I8 = ctypes.c_int, ctypes.c_float, ctypes.c_int64, ctypes.c_int8
PTR = ctypes.c_void_p


def mkl_candidates() -> tuple[dict[str, Setup], str]:
    """MKL's packed GEMM (``cblas_sgemm_pack`` once, ``cblas_sgemm_compute`` per call), its
    JIT GEMM (a kernel generated for the product's sizes, called through its pointer) and
    plain ``cblas_sgemm``, or none and why."""
    os.environ.setdefault("MKL_THREADING_LAYER", "SEQUENTIAL")
    lib, where = _library(["libmkl_rt.so.3", "libmkl_rt.so.2", "libmkl_rt.so"])
    if lib is None:
        return {}, f"MKL not available ({where}): pip install mkl"
    _fn(lib, "MKL_Set_Num_Threads", None, [I32])(1)
    text = ctypes.create_string_buffer(256)
    _fn(lib, "mkl_get_version_string", None, [ctypes.c_char_p, I32])(text, 256)
    get_size = _fn(lib, "cblas_sgemm_pack_get_size", ctypes.c_size_t, [I32] * 4)
    pack = _fn(lib, "cblas_sgemm_pack", None, [I32] * 6 + [F32, PTR, I32, PTR])
    compute = _fn(lib, "cblas_sgemm_compute", None,
                  [I32] * 6 + [PTR, I32, PTR, I32, F32, PTR, I32])
    sgemm = _fn(lib, "cblas_sgemm", None, [I32] * 6 + [F32, PTR, I32, PTR, I32, F32, PTR, I32])
    jit_create = _fn(lib, "mkl_cblas_jit_create_sgemm", I32,
                     [ctypes.POINTER(PTR)] + [I32] * 6 + [F32, I32, I32, F32, I32])
    jit_kernel = _fn(lib, "mkl_jit_get_sgemm_ptr", PTR, [PTR])
    kernel_type = ctypes.CFUNCTYPE(None, PTR, PTR, PTR, PTR)

    @njit(nogil=True)
    def packed_loop(n, ap, M, X, C):
        K, B = X.shape
        for _ in range(n):
            compute(ROW_MAJOR, PACKED, NO_TRANS, M, B, K, ap.ctypes.data, K, X.ctypes.data, B,
                    1.0, C.ctypes.data, B)

    @njit(nogil=True)
    def sgemm_loop(n, A, X, C):
        M, K = A.shape
        B = X.shape[1]
        for _ in range(n):
            sgemm(ROW_MAJOR, NO_TRANS, NO_TRANS, M, B, K, 1.0, A.ctypes.data, K,
                  X.ctypes.data, B, 1.0, C.ctypes.data, B)

    def setup_packed(A, X, C):
        M, K = A.shape
        B = X.shape[1]
        ap = np.empty(-(-get_size(A_MATRIX, M, B, K) // 4), dtype=np.float32)
        pack(ROW_MAJOR, A_MATRIX, NO_TRANS, M, B, K, 1.0, A.ctypes.data, K, ap.ctypes.data)
        return lambda n: packed_loop(n, ap, M, X, C)

    def setup_jit(A, X, C):
        M, K = A.shape
        B = X.shape[1]
        jitter = PTR()
        status = jit_create(ctypes.byref(jitter), ROW_MAJOR, NO_TRANS, NO_TRANS, M, B, K, 1.0,
                            K, B, 1.0, B)
        if status != 0:  # MKL_JIT_SUCCESS; otherwise MKL would call its plain sgemm
            return None
        kernel = kernel_type(jit_kernel(jitter))
        handle = jitter.value

        @njit(nogil=True)
        def jit_loop(n, A, X, C):
            for _ in range(n):
                kernel(handle, A.ctypes.data, X.ctypes.data, C.ctypes.data)

        return lambda n: jit_loop(n, A, X, C)

    def once_costs(M, K, B) -> dict[str, float]:
        """Seconds to pack an (M, K) A for B columns, and to generate the JIT kernel."""
        A = np.ones((M, K), dtype=np.float32)
        ap = np.empty(-(-get_size(A_MATRIX, M, B, K) // 4), dtype=np.float32)
        t0 = time.perf_counter()
        pack(ROW_MAJOR, A_MATRIX, NO_TRANS, M, B, K, 1.0, A.ctypes.data, K, ap.ctypes.data)
        t1 = time.perf_counter()
        jit_create(ctypes.byref(PTR()), ROW_MAJOR, NO_TRANS, NO_TRANS, M, B, K, 1.0, K, B, 1.0, B)
        t2 = time.perf_counter()
        return {"mkl pack": t1 - t0, "mkl jit create": t2 - t1,
                "mkl packed bytes": float(get_size(A_MATRIX, M, B, K))}

    setups = {"mkl-packed": setup_packed, "mkl-jit": setup_jit,
              "mkl-sgemm": lambda A, X, C: (lambda n: sgemm_loop(n, A, X, C))}
    setups["once"] = once_costs
    return setups, f"{text.value.decode().strip()} ({where})"


def onednn_candidates() -> tuple[dict[str, Setup], str]:
    """oneDNN's ``dnnl_sgemm`` (row-major, no packing), or none and why."""
    lib, where = _library(["libdnnl.so.3", "libdnnl.so"], preload=(
        "libintlc.so.5", "libimf.so", "libsvml.so", "libtbb.so.12", "libsycl.so.9"))
    if lib is None:
        return {}, f"oneDNN not available ({where}): pip install onednn"

    class Version(ctypes.Structure):
        _fields_ = [("major", I32), ("minor", I32), ("patch", I32), ("hash", ctypes.c_char_p),
                    ("cpu_runtime", ctypes.c_uint), ("gpu_runtime", ctypes.c_uint)]

    version = _fn(lib, "dnnl_version", ctypes.POINTER(Version), [])().contents
    sgemm = _fn(lib, "dnnl_sgemm", I32, [I8, I8, I64, I64, I64, F32, PTR, I64, PTR, I64, F32,
                                         PTR, I64])

    @njit(nogil=True)
    def loop(n, A, X, C):
        M, K = A.shape
        B = X.shape[1]
        for _ in range(n):
            sgemm(78, 78, M, B, K, 1.0, A.ctypes.data, K, X.ctypes.data, B, 1.0,
                  C.ctypes.data, B)  # 78: 'N'

    return ({"onednn-sgemm": lambda A, X, C: (lambda n: loop(n, A, X, C))},
            f"oneDNN {version.major}.{version.minor}.{version.patch} ({where})")


# ---------------------------------------------------------------- lstmkit and OpenBLAS

@njit(nogil=True)
def _lstmkit_loop(n, a, M, X, C):
    for _ in range(n):
        packed.packed_gemm(a, 0, M, X, C, True)


@njit(nogil=True)
def _openblas_loop(n, A, X, C):
    for _ in range(n):
        openblas_gemm(False, False, 1.0, A, X, 1.0, C)


def _numpy_setup(A, X, C):
    def run(n):
        for _ in range(n):
            np.matmul(A, X, out=C)
    return run


def _lstmkit_setup(misalign: int) -> Setup:
    """The shipped kernel on A packed by ``packed.pack``, the packed copy placed ``misalign``
    bytes past a 64-byte boundary (16: where NumPy's allocator puts most arrays, so where the
    layers' packed weights are; 0: one tile row a cache line)."""
    def setup(A, X, C):
        a = packed_wide.placed(packed.pack(A), misalign)
        return lambda n: _lstmkit_loop(n, a, A.shape[0], X, C)
    return setup


def _wide_setup(make: Callable, misalign: int = 0) -> Setup:
    tile, gemm = make()

    @njit(nogil=True)
    def loop(n, a, M, X, C):
        for _ in range(n):
            gemm(a, M, X, C, True)

    def setup(A, X, C):
        a = packed_wide.pack(A, tile, misalign)
        return lambda n: loop(n, a, A.shape[0], X, C)
    setup.gemm = gemm  # for the register check
    return setup


def vector_registers(dispatcher) -> str:
    """Which registers the compiled code's multiply-adds use: 'N on ymm, M on zmm'."""
    asm = "\n".join(dispatcher.inspect_asm().values())
    fmas = re.findall(r"vfmadd\w+\s+[^\n]*", asm)
    counts = {reg: sum(f"%{reg}" in line for line in fmas) for reg in ("xmm", "ymm", "zmm")}
    return ", ".join(f"{n} on {reg}" for reg, n in counts.items() if n)


def _shipped_micro_kernels():
    """A fresh (uncached: Numba shows no code it loaded from its cache) compile of the shipped
    16 x 6 micro-kernel and the B = 1 kernel, for ``vector_registers``."""
    @njit(nogil=True)
    def both(a, x, c):
        packed._micro6(a, 0, x, 0, 6, x.shape[0] // 6, c, 0, 6, 16, True)
        packed._column(a, 0, x.shape[0], x, c, 0, True)

    a = np.zeros(packed.packed_size(64, 72), dtype=np.float32)
    both(a, np.zeros(72, dtype=np.float32), np.zeros(96, dtype=np.float32))
    return both


# ---------------------------------------------------------------- the protocol

OVERHEAD = "one tile, 16 x 16 x 1"


def products(shapes) -> list[tuple[str, int, int, int]]:
    """(label, M, K, B) of each shape's forward and backward per-step product, and a product
    so small that its time is the call's overhead."""
    out = [(OVERHEAD, 16, 16, 1)]
    for T, B, D, H in shapes:
        out.append((f"{(T, B, D, H)} fwd", G * H, H, B))
        out.append((f"{(T, B, D, H)} bwd", H, G * H, B))
    return out


def check(name: str, run: Run, A, X, C, accumulates: bool) -> None:
    """One call of ``run`` against NumPy in float64 (float32 rounding allowed)."""
    C0 = C.copy()
    run(1)
    want = A.astype(np.float64) @ X + (C0 if accumulates else 0.0)
    err = np.abs(C - want).max() / max(np.abs(want).max(), 1e-30)
    if not err < 1e-5:
        raise SystemExit(f"{name}: wrong result on ({A.shape} x {X.shape}): relative error "
                         f"{err:.2e}, expected < 1e-5")


def measure(label, M, K, B, candidates: dict[str, Setup], rounds: int, rng) -> dict:
    A = rng.standard_normal((M, K)).astype(np.float32)
    X = rng.standard_normal((K, B)).astype(np.float32)
    runs, outs = {}, {}
    for name, setup in candidates.items():
        C = rng.standard_normal((M, B)).astype(np.float32)
        run = setup(A, X, C)
        if run is None:
            continue
        check(name, run, A, X, C, accumulates=name != "numpy")
        runs[name], outs[name] = run, C
    ref = runs["lstmkit"]
    t0 = time.perf_counter()
    ref(1)
    n = max(1, int(TARGET_S / max(time.perf_counter() - t0, 1e-7)))
    t0 = time.perf_counter()
    ref(n)
    n = max(1, int(n * TARGET_S / (time.perf_counter() - t0)))
    names = list(runs)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            outs[name][:] = 0.0  # the sums stay small whatever n is
            t0 = time.thread_time()
            runs[name](n)
            times[name].append((time.thread_time() - t0) / n)
    per_call = {name: statistics.median(ts) for name, ts in times.items()}
    return {"label": label, "M": M, "K": K, "B": B, "calls": n, "per_call_s": per_call,
            "min_per_call_s": {name: min(ts) for name, ts in times.items()},
            "gflops": {name: 2.0 * M * K * B / t / 1e9 for name, t in per_call.items()}}


def machine() -> dict:
    info = {"cpu": platform.processor(), "flags": []}
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = line.split(":", 1)[1].split()
                    info["flags"] = [f for f in ("avx2", "fma", "avx512f") if f in flags]
                    break
    except OSError:
        pass
    info["OPENBLAS_CORETYPE"] = os.environ.get("OPENBLAS_CORETYPE")
    info["MKL_ENABLE_INSTRUCTIONS"] = os.environ.get("MKL_ENABLE_INSTRUCTIONS")
    info["openblas"] = [f"{i['filepath'].rsplit('/', 1)[-1]}: {i.get('architecture')}"
                        for i in threadpool_info() if i.get("internal_api") == "openblas"]
    info["loadavg_start"] = os.getloadavg()
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=25)
    ap.add_argument("--shapes", default=None, help="T,B,D,H;... (default: the standard grid)")
    ap.add_argument("--only", default=None, help="comma-separated candidates (lstmkit is "
                    "always run: the ratios are to it)")
    ap.add_argument("--json", default=None, help="also write the results there")
    ap.add_argument("--misalign", type=int, default=0, help="bytes past a cache line where the "
                    "AVX-512 variants' packed weights start (default 0; NumPy's usual: 16)")
    args = ap.parse_args()
    shapes = parse_shapes(args.shapes) if args.shapes else GRID
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})

    candidates: dict[str, Setup] = {"lstmkit": _lstmkit_setup(16),
                                    "lstmkit-64": _lstmkit_setup(0)}
    candidates.update({name: _wide_setup(make, args.misalign) for name, make in WIDE.items()})
    notes = {}
    once = None
    for loader in (mkl_candidates, onednn_candidates):
        found, note = loader()
        once = found.pop("once", once)
        candidates.update(found)
        notes[loader.__name__.split("_")[0]] = note
    candidates["openblas"] = lambda A, X, C: (lambda n: _openblas_loop(n, A, X, C))
    candidates["numpy"] = _numpy_setup
    if args.only:
        wanted = {"lstmkit", *args.only.split(",")}
        unknown = wanted - set(candidates)
        if unknown:
            raise SystemExit(f"--only: unknown or unavailable {sorted(unknown)}; "
                             f"available: {sorted(candidates)}")
        candidates = {k: v for k, v in candidates.items() if k in wanted}

    info = machine()
    print(f"CPU: {info['cpu']} (flags: {' '.join(info['flags'])}); one core, load average "
          f"{info['loadavg_start'][0]:.1f}")
    print(f"OPENBLAS_CORETYPE={info['OPENBLAS_CORETYPE']}, OpenBLAS kernels: "
          f"{'; '.join(info['openblas'])}; MKL_ENABLE_INSTRUCTIONS="
          f"{info['MKL_ENABLE_INSTRUCTIONS']}")
    for lib, note in notes.items():
        print(f"{lib}: {note}")
    rng = np.random.default_rng(0)
    results = []
    with threadpool_limits(1):
        for label, M, K, B in products(shapes):
            results.append(measure(label, M, K, B, candidates, args.rounds, rng))
            print(f"  {label}: done", file=sys.stderr, flush=True)
    registers = {"lstmkit": vector_registers(_shipped_micro_kernels())}
    registers.update({name: vector_registers(candidates[name].gemm)
                      for name in WIDE if name in candidates})
    print("multiply-adds compiled: " + "; ".join(f"{k}: {v}" for k, v in registers.items()))
    names = [name for name in candidates if name in results[0]["per_call_s"]]
    print(f"\nspeed-up over lstmkit's kernel (median of {args.rounds} rounds; > 1: faster)\n")
    print("| product | M x K x B | lstmkit GFLOP/s | " + " | ".join(names[1:]) + " |")
    print("|---|---|---:|" + "---:|" * (len(names) - 1))
    for res in results[1:]:
        t = res["per_call_s"]
        cells = [f"{t['lstmkit'] / t[n]:.2f}" if n in t else "-" for n in names[1:]]
        print(f"| {res['label']} | {res['M']} x {res['K']} x {res['B']} | "
              f"{res['gflops']['lstmkit']:.0f} | " + " | ".join(cells) + " |")
    geo = {n: float(np.exp(np.mean([np.log(r["per_call_s"]["lstmkit"] / r["per_call_s"][n])
                                    for r in results[1:] if n in r["per_call_s"]])))
           for n in names[1:]}
    print("| geometric mean | | | " + " | ".join(f"{geo[n]:.2f}" for n in names[1:]) + " |")
    print(f"\ntime per call, {OVERHEAD}: " + ", ".join(
        f"{n} {t * 1e9:.0f} ns" for n, t in results[0]["per_call_s"].items()))
    if once is not None:  # the one-off costs, on the largest forward product
        M, K, B = max((p[1:] for p in products(shapes) if p[0].endswith("fwd")),
                      key=lambda p: p[0] * p[1])
        a = np.ones((M, K), dtype=np.float32)
        packed.pack(a)  # loads the code
        t0 = time.perf_counter()
        packed.pack(a)
        costs = {"lstmkit pack": time.perf_counter() - t0, **once(M, K, B)}
        print(f"once per pass, {M} x {K} x {B}: " + ", ".join(
            f"{k} {v / 1e6:.1f} MB" if "bytes" in k else f"{k} {v * 1e6:.0f} us"
            for k, v in costs.items()) + f" (A itself: {4 * M * K / 1e6:.1f} MB)")
    info["loadavg_end"] = os.getloadavg()
    print(f"\nload average at the end: {info['loadavg_end'][0]:.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "notes": notes, "registers": registers,
                       "rounds": args.rounds, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
