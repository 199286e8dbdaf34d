"""Which implementation runs a recurrence: the plan, chosen by one function and recorded.

A *plan* says how one layer and direction runs over a sequence::

    kernel           "reference" (the readable loop of ``engine.reference``), "rows" (the compiled
                     loop with a (B, G*H) block per step: any cell, float32 and float64) or
                     "batch-inner" (the float32 LSTM with (G*H, B) blocks, split over threads)
    parts            threads a call runs on: batch-inner splits each step's units over them;
                     rows gives each a contiguous part of the batch's sequences, which it runs
                     through every step on its own
    projection       where the input projection W_ih x + b comes from (batch-inner only):
                     "panel" (one GEMM per chunk of steps), "direct" (inside each step's packed
                     product, [W_ih | b | W_hh] [x_t; 1; h_prev]) or "folded" (a (G*H, V) table
                     W_ih E^T + b, for an input that is an embedding lookup E[ids])
    backward_panels  backward's per-step product reads the gate gradients as panels
    chunk_steps      steps whose input projection is computed at once
    small_products   the row kernels' per-step products in column blocks that BLAS's
                     small-matrix kernels take (OpenBLAS on AVX-512: 2-3x its general kernels
                     for a product of up to 32 rows; ``kernels.blas.gemm_blocks``)
    blas_products    the batch-inner kernels' per-step recurrent products (forward and
                     backward) by one BLAS call per part instead of the packed micro-kernels
                     (faster from about 64 sequences on AVX-512, see ``Thresholds``)

``choose_plan`` is the only place that decides; it looks at the cell and *every* one of its
switches, the dtype, the shape and the thread count, nothing else (not the machine's load), so
the same inputs and thread count always run the same plan and give the same numbers.
``candidate_plans`` lists every plan that can run a given problem, for the tests that prove each
equal to the reference, and a plan can be pinned (``RecurrentLayer.pin_plan``), e.g. by a
benchmark. The thresholds between plans are measured (``Thresholds``; ``lstmkit bench
--calibrate`` measures them on the machine in hand and caches them per CPU model).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from lstmkit.cells import GRUCell, LayerNormLSTMCell, LSTMCell, RNNCell

KERNELS = ("reference", "rows", "batch-inner")
PROJECTIONS = ("panel", "direct", "folded")

# the switches (cell fields) each compiled kernel implements; a cell that sets any other field
# away from its default runs on the reference
_FUSED_SWITCHES: dict[type, frozenset[str]] = {
    LSTMCell: frozenset({"bias", "peepholes", "forget_gate", "input_gate", "output_gate",
                         "coupled_input_forget", "recurrent_activation", "activation",
                         "output_activation", "clip", "zoneout", "zoneout_c", "proj_size",
                         "recurrent_dropout", "full_gate_recurrence"}),
    LayerNormLSTMCell: frozenset({"bias", "zoneout", "zoneout_c", "proj_size",
                                  "recurrent_dropout"}),
    GRUCell: frozenset({"bias", "recurrent_activation", "activation", "clip",
                        "linear_before_reset"}),
    RNNCell: frozenset({"bias", "nonlinearity", "activation", "clip"}),
}
_SHAPE_FIELDS = frozenset({"input_size", "hidden_size"})
# switches only the row kernels implement (the batch-inner plans refuse a cell that sets one)
_ROWS_ONLY = frozenset({"proj_size", "recurrent_dropout", "full_gate_recurrence"})


@dataclass(frozen=True)
class Plan:
    """How one layer and direction runs (see the module's docstring for each field)."""

    kernel: str = "reference"
    parts: int = 1
    projection: str = "panel"
    backward_panels: bool = False
    chunk_steps: int = 0  # 0: all T steps at once
    small_products: bool = False
    blas_products: bool = False

    def __str__(self) -> str:
        if self.kernel == "reference":
            return "reference"
        text = f"{self.kernel}, {self.parts} part{'s' if self.parts > 1 else ''}"
        if self.kernel == "batch-inner":
            text += f", {self.projection} projection"
            if self.backward_panels:
                text += ", backward panels"
            if self.blas_products:
                text += ", BLAS products"
        if self.small_products:
            text += ", small products"
        return text + f", chunks of {self.chunk_steps} steps" if self.chunk_steps else text


@dataclass(frozen=True)
class Thresholds:
    """Where ``choose_plan`` switches between plans. Defaults measured on a 2-core AMD EPYC
    (Zen 3, AVX2); ``lstmkit bench --calibrate`` measures them on the machine in hand.

    parallel_min_flops: a step is split over threads when its recurrent product has at least
        this many flops (with an OpenMP or TBB pool; Numba's workqueue pool costs ~100 us per
        parallel region, so it needs ``parallel_min_flops_workqueue``).
    direct_max_floats: the direct projection while one part's [W_ih | b | W_hh] has at most
        this many numbers (it then stays near the core at every step).
    backward_panels_min_gh, backward_panels_min_b: backward reads the gate gradients as
        panels from G*H rows and B columns on.
    chunk_bytes: the input projection of a pass without gradients (and the batch-inner panel)
        is computed in chunks of about this many bytes.
    rows_split_min_flops, rows_split_min_b: the row kernels split the batch over threads from
        this many flops per call (forward, the products with W_ih and W_hh) and this many
        sequences per part.
    small_products_max_b: the row kernels' products use BLAS's small-matrix kernels (where it
        has them) up to this many sequences per part.
    blas_products_min_b: the batch-inner kernels' per-step products are BLAS calls from this
        many sequences on (with the panel projection, which they need, then preferred to the
        direct one; no backward panels). Never by default; 64 where the packed kernels are 16
        floats wide (``host_thresholds``).
    """

    parallel_min_flops: float = 2.5e5
    parallel_min_flops_workqueue: float = 1.0e8
    direct_max_floats: int = 1 << 18
    backward_panels_min_gh: int = 1024
    backward_panels_min_b: int = 64
    chunk_bytes: int = 2 << 20
    rows_split_min_flops: float = 8.0e7
    rows_split_min_b: int = 4
    small_products_max_b: int = 32
    blas_products_min_b: int = 1 << 30


def host_thresholds() -> Thresholds:
    """The defaults for this host before any calibration: ``Thresholds()``, with BLAS's
    per-step products from 64 sequences where the packed kernels are 16 floats wide (measured on
    a 2-core AVX-512 Xeon: OpenBLAS 1.15-1.2x the 16-float packed kernel at B = 64 and 128,
    0.7-0.8x at B = 20 and 32; with AVX2, OpenBLAS was 0.91-0.94x the 8-float kernel at B = 64)."""
    from lstmkit.engine.kernels import vector_width

    return Thresholds(blas_products_min_b=64) if vector_width() >= 16 else Thresholds()


def fused_supports(cell: Any, dtype: Any) -> bool:
    """Whether a compiled kernel implements this cell, with every one of its switches, in this
    dtype (float32 or float64)."""
    implemented = _FUSED_SWITCHES.get(type(cell))
    if implemented is None or np.dtype(dtype) not in (np.float32, np.float64):
        return False
    for f in dataclasses.fields(cell):
        if f.name in _SHAPE_FIELDS or f.name in implemented:
            continue
        if getattr(cell, f.name) != f.default:
            return False
    return True


def _rows_only(cell: Any) -> bool:
    """Whether the cell (the layer-normalised LSTM's) or one of its switches only the row
    kernels implement."""
    return isinstance(cell, LayerNormLSTMCell) or any(getattr(cell, name, 0)
                                                      for name in _ROWS_ONLY)


def _gates(cell: Any) -> int:
    return len(cell.gates) if isinstance(cell, LSTMCell) else (3 if isinstance(cell, GRUCell)
                                                               else 1)


def _chunk_steps(T: int, B: int, width: int, itemsize: int, chunk_bytes: int) -> int:
    return int(min(T, max(1, chunk_bytes // max(1, B * width * itemsize))))


def _parts(B: int, H: int, G: int, threads: int, fast_pool: bool, th: Thresholds) -> int:
    """Threads a batch-inner step is split over: all of them once the step's recurrent product
    is large enough. A single sequence (B = 1) counts double: its step reads every weight of
    W_hh for 2 flops, so it is bound by the cache's bandwidth, and split over two cores each
    reads half of W_hh from its own L2. At least 8 units per part."""
    flops = 2.0 * B * G * H * H * (2 if B == 1 else 1)
    limit = th.parallel_min_flops if fast_pool else th.parallel_min_flops_workqueue
    if threads < 2 or flops < limit:
        return 1
    return max(1, min(threads, H // 8))


def choose_plan(cell: Any, dtype: Any, T: int, B: int, *, keep: bool, threads: int,
                fold_rows: int | None = None, enabled: bool = True, fast_pool: bool = True,
                small_kernels: bool = False, thresholds: Thresholds | None = None) -> Plan:
    """The plan for one layer and direction: ``cell`` over (T, B, cell.input_size) inputs.

    Args:
        keep: the pass keeps a cache for backward (gradients on).
        threads: the kernels' thread count (1 in a process forked after parallel kernels ran:
            GNU OpenMP cannot start again there).
        fold_rows: V if the input is a lookup in a (V, D) embedding the kernels may fold.
        enabled: False runs the reference (``LSTMKIT_KERNELS=0``, ``kernels.set_enabled``).
        fast_pool: whether Numba has an OpenMP or TBB pool (else parallel regions cost more).
        small_kernels: whether the BLAS has small-matrix kernels (``threads.blas_small_kernels``).
    """
    th = thresholds or load_thresholds()
    dtype = np.dtype(dtype)
    if not enabled or not fused_supports(cell, dtype):
        return Plan("reference")
    H, D, G = cell.hidden_size, cell.input_size, _gates(cell)
    if isinstance(cell, LSTMCell) and dtype == np.float32 and not _rows_only(cell):
        parts = _parts(B, H, G, threads, fast_pool, th)
        # B = 1 on one thread keeps the row layout, whose per-step gemv is BLAS's
        if B >= 2 or parts > 1:
            blas = False
            if fold_rows is not None and B >= 2 and fold_rows < T * B:
                projection = "folded"
            elif B >= th.blas_products_min_b:  # BLAS's products need the panel projection
                projection, blas = "panel", True
            elif B >= 2 and -(-G * H // parts) * (D + 1 + H) <= th.direct_max_floats:
                projection = "direct"
            else:
                projection = "panel"
            panels = (not blas and G * H >= th.backward_panels_min_gh
                      and B >= th.backward_panels_min_b)
            return Plan("batch-inner", parts, projection, panels,
                        _chunk_steps(T, B, G * H, dtype.itemsize, th.chunk_bytes),
                        blas_products=blas)
    chunk = 0 if keep else _chunk_steps(T, B, G * H, dtype.itemsize, th.chunk_bytes)
    parts = _row_parts(cell, T, B, threads, th)
    rows = -(-B // parts)  # a part's sequences: the rows of each step's products
    return Plan("rows", parts, chunk_steps=chunk if chunk < T else 0,
                small_products=small_kernels and 1 < rows <= th.small_products_max_b)


def _row_parts(cell: Any, T: int, B: int, threads: int, th: Thresholds) -> int:
    """Threads the row kernels split the batch over: as many as have ``rows_split_min_b``
    sequences each, once a call's products are large enough."""
    R = getattr(cell, "output_size", cell.hidden_size)
    flops = 2.0 * T * B * _gates(cell) * cell.hidden_size * (cell.input_size + R)
    if threads < 2 or flops < th.rows_split_min_flops:
        return 1
    return max(1, min(threads, B // th.rows_split_min_b))


def check_plan(plan: Plan, cell: Any, dtype: Any, T: int, B: int,
               fold_rows: int | None = None) -> None:
    """Raise ValueError (saying why) unless ``plan`` can run this problem."""
    def refuse(why: str) -> None:
        raise ValueError(f"plan {plan!r} cannot run {type(cell).__name__} in {np.dtype(dtype)} "
                         f"with B = {B}: {why}")

    if plan.kernel not in KERNELS:
        refuse(f"kernel must be one of {KERNELS}")
    if plan.projection not in PROJECTIONS:
        refuse(f"projection must be one of {PROJECTIONS}")
    if not isinstance(plan.parts, int) or plan.parts < 1:
        refuse("parts must be a positive integer")
    if not isinstance(plan.chunk_steps, int) or plan.chunk_steps < 0:
        refuse("chunk_steps must be 0 (all steps) or a positive integer")
    if plan.kernel == "reference":
        return
    if plan.small_products and plan.kernel != "rows":
        refuse("small_products is the row kernels' (their per-step BLAS products)")
    if plan.blas_products and plan.kernel != "batch-inner":
        refuse("blas_products is the batch-inner kernels' (the row kernels always call BLAS)")
    if plan.blas_products and (plan.projection != "panel" or plan.backward_panels):
        refuse("blas_products runs with the panel projection and without backward panels")
    if not fused_supports(cell, dtype):
        refuse("no compiled kernel implements this cell's switches or dtype (use 'reference')")
    if plan.kernel == "rows":
        if plan.projection != "panel" or plan.backward_panels:
            refuse("the row kernels run with the panel projection")
        if plan.parts > B:
            refuse(f"the row kernels split the batch: parts must be at most B = {B}")
        return
    if not (isinstance(cell, LSTMCell) and np.dtype(dtype) == np.float32):
        refuse("the batch-inner kernels are the float32 LSTM's")
    if _rows_only(cell):
        refuse(f"the batch-inner kernels do not implement the layer-normalised LSTM nor "
               f"{sorted(_ROWS_ONLY)} (use 'rows')")
    if plan.parts > cell.hidden_size:
        refuse(f"parts must be at most hidden_size = {cell.hidden_size}")
    if plan.projection == "folded" and (fold_rows is None or B < 2):
        refuse("the folded projection needs rows_of=(ids, E) and B >= 2")
    if plan.projection == "direct" and B < 2:
        refuse("the direct projection needs B >= 2")


def candidate_plans(cell: Any, dtype: Any, T: int, B: int, *, keep: bool, max_parts: int = 3,
                    fold_rows: int | None = None) -> list[Plan]:
    """Every plan that can run this problem, for up to ``max_parts`` threads: the plans
    ``choose_plan`` can return (for any thread count and thresholds) and the reference."""
    dtype = np.dtype(dtype)
    plans = [Plan("reference")]
    if not fused_supports(cell, dtype):
        return plans
    G, H = _gates(cell), cell.hidden_size
    plans.extend(Plan("rows", parts, chunk_steps=0 if keep else 1, small_products=small)
                 for parts in range(1, min(max_parts, B) + 1) for small in (False, True))
    if not (isinstance(cell, LSTMCell) and dtype == np.float32) or _rows_only(cell):
        return plans
    projections = ["panel"] + (["direct"] if B >= 2 else [])
    if fold_rows is not None and B >= 2:
        projections.append("folded")
    chunk = _chunk_steps(T, B, G * H, dtype.itemsize, Thresholds().chunk_bytes)
    for parts in range(1, min(max_parts, H) + 1):
        for projection in projections:
            for panels in (False, True):
                plans.append(Plan("batch-inner", parts, projection, panels, chunk))
        plans.append(Plan("batch-inner", parts, "panel", False, chunk, blas_products=True))
    return plans


def pinned(plan: Plan | str | dict[str, Any] | None, chosen: Plan) -> Plan:
    """The plan to run when the user pinned ``plan``: a Plan as is, "reference", or a dict of
    fields replacing those of the chosen plan (e.g. ``{"parts": 1}``)."""
    if plan is None:
        return chosen
    if isinstance(plan, Plan):
        return plan
    if plan == "reference":
        return Plan("reference")
    if isinstance(plan, dict):
        unknown = sorted(set(plan) - {f.name for f in dataclasses.fields(Plan)})
        if unknown:
            raise ValueError(f"unknown plan field(s) {unknown}; a plan has "
                             f"{[f.name for f in dataclasses.fields(Plan)]}")
        fields = dict(plan)
        kernel = fields.get("kernel", chosen.kernel)
        if kernel != "rows":  # the row kernels' own field
            fields.setdefault("small_products", False)
        if kernel != "batch-inner" or fields.get("projection", chosen.projection) != "panel" or (
                fields.get("backward_panels")):  # the batch-inner kernels' own field
            fields.setdefault("blas_products", False)
        return dataclasses.replace(chosen, **fields)
    raise TypeError(f"a pinned plan must be a Plan, 'reference', a dict of plan fields or None, "
                    f"got {plan!r}")


# -- thresholds measured on this machine ---------------------------------------------------------

_loaded: list[Thresholds] = []


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), and whether it has AVX-512 or AVX2."""
    name = "unknown CPU"
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and name == "unknown CPU":
                    name = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    vector = "avx512f" if "avx512f" in flags else ("avx2" if "avx2" in flags else "no avx2")
    return f"{name} ({vector})"


def calibration_path() -> str:
    """Where ``lstmkit bench --calibrate`` caches this CPU model's thresholds."""
    import hashlib

    root = os.environ.get("LSTMKIT_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "lstmkit")
    digest = hashlib.sha256(cpu_model().encode()).hexdigest()[:16]
    return os.path.join(root, f"thresholds-{digest}.json")


def load_thresholds() -> Thresholds:
    """This CPU model's measured thresholds if ``lstmkit bench --calibrate`` cached them, else
    the defaults. Read once per process, so a process runs the same plans throughout."""
    if not _loaded:
        import json

        th = host_thresholds()
        try:
            with open(calibration_path()) as f:
                stored = json.load(f)
            known = {f.name: f.type for f in dataclasses.fields(Thresholds)}
            th = dataclasses.replace(th, **{k: type(getattr(th, k))(v)
                                            for k, v in stored.get("thresholds", {}).items()
                                            if k in known})
        except (OSError, ValueError, TypeError):
            pass
        _loaded.append(th)
    return _loaded[0]
