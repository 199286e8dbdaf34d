"""The compiled plans ("rows", "batch-inner") of ``lstmkit.engine``: buffers and arguments.

This module runs the plan it is given (``lstmkit.engine.plan`` chose it): it prepares the
buffers and arguments (NumPy) and calls the Numba kernels of ``kernels.lstm``, ``lstm_t``,
``gru`` and ``rnn``; the arithmetic lives there. The cache it returns is a dict of the buffers
the forward pass filled, with the plan; ``backward`` reads it without changing it (so backward
may be called more than once on one forward pass, as with the reference).
"""

from __future__ import annotations

import functools
import sys
import threading
from typing import Any, NamedTuple

import numpy as np

from lstmkit.activations import RELU, SIGMOID, TANH, Activation
from lstmkit.cells import GRUCell, LayerNormLSTMCell, LSTMCell, RNNCell
from lstmkit.cells.layernorm_lstm import EPS as _LN_EPS
from lstmkit.engine.kernels import activate, packed, threads
from lstmkit.engine.kernels import gru as _gru
from lstmkit.engine.kernels import lstm as _lstm
from lstmkit.engine.kernels import lstm_t as _lstm_t
from lstmkit.engine.kernels import rnn as _rnn
from lstmkit.engine.plan import Plan

Array = np.ndarray
State = tuple[Array, ...]

_NO_MASK = np.ones((1, 1), dtype=np.bool_)


def _c(a: Array, dtype: np.dtype) -> Array:
    """Contiguous, of this dtype, and writeable: Numba compiles separate code for read-only
    arrays, so one is copied rather than paying a second compilation."""
    a = np.ascontiguousarray(a, dtype=dtype)
    return a if a.flags.writeable else a.copy()


def _mask_args(mask: Array | None) -> tuple[Array, bool]:
    if mask is None:
        return _NO_MASK, False
    return np.ascontiguousarray(mask, dtype=np.bool_), True


def _bias(cell: Any, p: dict[str, Array], size: int, dtype: np.dtype) -> Array:
    if cell.bias:
        return _c(p["bias_ih"], dtype) + _c(p["bias_hh"], dtype)
    return np.zeros(size, dtype=dtype)


_work_arrays = threading.local()


def _work(name: str, shape: tuple[int, ...], dtype: np.dtype) -> Array:
    """An array for a kernel to overwrite that no result or cache shares (a backward pass's
    gate gradients): kept per thread and name from call to call, so that a large buffer is
    not fresh memory at every call (each fresh page is a page fault: on the development VM a
    layer-normalised LSTM's training call spent 1.1 ms of 8 in them)."""
    pool = getattr(_work_arrays, "pool", None)
    if pool is None:
        pool = _work_arrays.pool = {}
    size = int(np.prod(shape))
    key = (name, np.dtype(dtype).str)
    flat = pool.get(key)
    if flat is None or flat.size < size:
        flat = pool[key] = np.empty(size, dtype=dtype)
    return flat[:size].reshape(shape)


class _Recycled:
    """Arrays of forward caches that nothing holds any more, handed to later forward passes
    of the same shapes: a layer's cache lives until its next call, so in a training loop
    every call would otherwise fill fresh memory (page faults: on the development VM 0.5-1.1
    ms of a 4-8 ms call). Thread-safe; at most ``cap`` bytes are kept."""

    min_bytes = 1 << 16  # smaller arrays come from malloc's own free lists anyway
    cap = 256 << 20

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.arrays: dict[tuple[tuple[int, ...], str], list[Array]] = {}
        self.nbytes = 0

    def get(self, shape: tuple[int, ...], dtype: np.dtype) -> Array:
        key = (tuple(shape), np.dtype(dtype).str)
        with self.lock:
            free = self.arrays.get(key)
            if free:
                a = free.pop()
                self.nbytes -= a.nbytes
                return a
        return np.empty(shape, dtype=dtype)

    def give(self, a: Array) -> None:
        if a.nbytes < self.min_bytes:
            return
        with self.lock:
            if self.nbytes + a.nbytes <= self.cap:
                self.arrays.setdefault((a.shape, a.dtype.str), []).append(a)
                self.nbytes += a.nbytes


_RECYCLED = _Recycled()


def _new(keep: bool) -> Any:
    """``new(shape, dtype)``: an array for the kernel to write, from ``_RECYCLED`` when it goes
    into a cache (``keep``), else fresh."""
    if keep:
        return _RECYCLED.get
    return lambda shape, dtype: np.empty(shape, dtype=dtype)


class _Cache(dict):
    """A forward pass's cache. When it is dropped (the layer's next call replaces it), the
    arrays named in ``owned`` (made by ``_new``, or tuples of them) that nothing else holds
    (no view, no other reference: their reference count says so) go back to ``_RECYCLED``."""

    def __init__(self, owned: tuple[str, ...], **entries: Any) -> None:
        super().__init__(**entries)
        self.owned = owned

    def __del__(self) -> None:
        try:
            found: dict[int, list[Any]] = {}  # id -> [array, references from this cache]
            for name in self.owned:
                value = self[name]
                for a in value if isinstance(value, tuple) else (value,):
                    if isinstance(a, np.ndarray) and a.base is None:
                        found.setdefault(id(a), [a, 0])[1] += 1
            for a, n in found.values():
                # the cache's n references, the list in `found`, `a` and the argument: no more
                if sys.getrefcount(a) == n + 3:
                    _RECYCLED.give(a)
        except Exception:  # noqa: BLE001  (interpreter shutdown: nothing to recycle)
            pass


def _dummy(dtype: np.dtype, ndim: int, parts: int = 1) -> Array:
    """An unused argument of ``ndim`` dimensions (``parts`` along the first, for a kernel that
    indexes it by part)."""
    return np.zeros((parts,) + (1,) * (ndim - 1), dtype=dtype)


def _rows_apart(a: Array, axis: int, parts: int, Bp: int) -> Array:
    """A per-sequence array (its batch of B sequences on ``axis``) cut into ``parts`` runs of
    Bp sequences along a new leading axis, (parts, ..., Bp, ...), the last run padded with
    zeros (a sequence of zeros, masked at every step where there is a mask); the array
    itself, viewed so, when there is one part of the whole batch."""
    B = a.shape[axis]
    if parts == 1 and B == Bp:
        return a[None]
    out = np.zeros((parts, *a.shape[:axis], Bp, *a.shape[axis + 1:]), dtype=a.dtype)
    lead = (slice(None),) * axis
    for k in range(parts):
        b0, b1 = k * Bp, min(B, (k + 1) * Bp)
        out[k][lead + (slice(0, b1 - b0),)] = a[lead + (slice(b0, b1),)]
    return out


def _rows_together(a: Array, axis: int, B: int) -> Array:
    """The inverse of ``_rows_apart``: (parts, ..., Bp, ...) -> (..., B, ...), padding dropped
    (a view for one part, else a new array)."""
    if a.shape[0] == 1:
        return a[0][(slice(None),) * axis + (slice(0, B),)]
    moved = np.moveaxis(a, 0, axis)
    joined = moved.reshape(*moved.shape[:axis], -1, *moved.shape[axis + 2:])
    return joined[(slice(None),) * axis + (slice(0, B),)]


class _Accumulate:
    """A contiguous array to accumulate into, written back to ``target`` if it had to copy."""

    def __init__(self, target: Array | None, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.target = target
        if target is not None and target.flags.c_contiguous and target.dtype == dtype:
            self.array = target
        else:
            self.array = np.zeros(shape, dtype=dtype)

    def finish(self) -> None:
        if self.target is not None and self.array is not self.target:
            self.target += self.array


class _RowParts(NamedTuple):
    """A row plan's batch of B sequences cut into ``parts`` runs of Bp (``_rows_apart``)."""

    B: int
    parts: int
    Bp: int

    def apart(self, a: Array, axis: int = 0) -> Array:
        return _rows_apart(a, axis, self.parts, self.Bp)

    def together(self, a: Array, axis: int = 0) -> Array:
        return _rows_together(a, axis, self.B)

    def mask(self, mask: Array, has_mask: bool) -> Array:
        """The mask by parts (a padded sequence is masked at every step), or a dummy."""
        return self.apart(mask, 1) if has_mask else np.ones((self.parts, 1, 1), dtype=np.bool_)

    def sums(self, accs: list[_Accumulate]) -> list[Array]:
        """Where each part accumulates its gradients: the accumulators' own arrays for one
        part, else zeros with a leading parts axis (``add``)."""
        return [acc.array[None] if self.parts == 1 else
                np.zeros((self.parts, *acc.array.shape), dtype=acc.array.dtype) for acc in accs]

    def add(self, accs: list[_Accumulate], sums: list[Array]) -> None:
        """Add the parts' gradients into the accumulators, in the parts' order."""
        if self.parts > 1:
            for acc, part_sums in zip(accs, sums):
                for k in range(self.parts):
                    acc.array += part_sums[k]


def _row_parts(B: int, parts: int) -> _RowParts:
    return _RowParts(B, parts, -(-B // parts))


def _row_backward_operands(p: dict[str, Array], cache: Any, d_state: State) -> tuple:
    """What a row kernel's backward reads first: the cache's inputs by parts X (parts, T, Bp,
    D), its ``_RowParts``, W_ih and W_hh contiguous in X's dtype, the state's gradients copied
    and cut into parts (the kernels overwrite them with the gradient at the initial state),
    and room for dX by parts."""
    X = cache["x"]
    parts, T, Bp, D = X.shape
    rp = _row_parts(cache["B"], parts)
    d_state = tuple(rp.apart(np.array(s, dtype=X.dtype, order="C", copy=True)) for s in d_state)
    return (X, rp, _c(p["weight_ih"], X.dtype), _c(p["weight_hh"], X.dtype), d_state,
            np.empty((parts, T, Bp, D), dtype=X.dtype))


def _backward_operands(p: dict[str, Array], cache: Any, d_out: Array, d_state: State) -> tuple:
    """What every backward reads first: x (T, B, D), its dtype, T, B, D, W_ih and W_hh
    contiguous in that dtype, d_out contiguous, and copies of the state's gradients (the
    kernels overwrite them with the gradient at the initial state)."""
    x = cache["x"]
    dtype = x.dtype
    return (x, dtype, *x.shape, _c(p["weight_ih"], dtype), _c(p["weight_hh"], dtype),
            _c(d_out, dtype),
            tuple(np.array(s, dtype=dtype, order="C", copy=True) for s in d_state))


def _weight_gradients(grads: dict[str, Array], GH: int, D: int, H: int,
                      dtype: np.dtype) -> list[_Accumulate]:
    """Accumulators for dW_ih (GH, D), dW_hh (GH, H), db_ih and db_hh (GH,), in that order."""
    return [_Accumulate(grads.get(name), shape, dtype) for name, shape in
            (("weight_ih", (GH, D)), ("weight_hh", (GH, H)), ("bias_ih", (GH,)),
             ("bias_hh", (GH,)))]


def _finish(accs: list[_Accumulate], grads: dict[str, Array], gpeep: Array | None = None) -> None:
    """Write the accumulated gradients back, and the LSTM's peephole gradients (3, H) (i, f, o)
    into those of its peepholes that exist."""
    for acc in accs:
        acc.finish()
    if gpeep is not None:
        for k, gate in enumerate("ifo"):
            name = f"weight_c{gate}"
            if name in grads:
                grads[name] += gpeep[k]


def _row_chunk(T: int, keep: bool, plan: Plan) -> int:
    """Steps of the row kernels' input projection held at once: all of them for backward."""
    return T if keep or not plan.chunk_steps else min(T, plan.chunk_steps)


def _run_row_parts(rp: _RowParts, parallel: Any, serial: Any, *args: Any) -> None:
    """A row kernel's parts driver: the parallel one (its parts on the threads of one region)
    for more than one part, else the serial one. The BLAS the kernels call runs on one thread
    in each part of a split, and for a single sequence (a BLAS gemv per step is too small to
    split, and idle BLAS threads spin); else on the kernels' thread count
    (``lstmkit.set_num_threads``), which it may use for its larger products."""
    single = rp.parts > 1 or rp.B == 1
    with threads.blas_threads(1 if single else threads.usable_threads()):
        if rp.parts > 1:
            threads.starting_parallel()
            parallel(*args)
        else:
            serial(*args)


# -- LSTM --------------------------------------------------------------------------------------


class _Layout(NamedTuple):
    """How the batch-inner kernels split a layer of H units over ``parts`` threads."""

    bounds: Array  # (parts + 1,) the unit ranges (threads.unit_bounds)
    perm: Array | None  # the gate rows in the parts' order (threads.row_permutation)
    order: Array  # the same as int64 row indices (identity for one part)
    units: int  # the largest part's unit count
    w_off: Array  # forward: where each part's rows of W_hh start, packed (packed.pack_rows)
    w_size: int  # and the packed size
    wt_off: Array  # backward: the same for W_hh^T (packed.pack_columns)
    wt_size: int


def _packed_offsets(row_bounds: Array, K: int) -> tuple[Array, int]:
    """Where each part's rows start in a (rows, K) float32 matrix packed part by part (part p
    owns rows [row_bounds[p], row_bounds[p + 1])), and the total size."""
    sizes = [packed.packed_size(int(r1 - r0), K) for r0, r1 in zip(row_bounds[:-1],
                                                                   row_bounds[1:])]
    offsets = [0]
    for size in sizes[:-1]:
        offsets.append(offsets[-1] + size)
    return np.array(offsets, dtype=np.int64), sum(sizes)


@functools.lru_cache(maxsize=256)
def _parts_layout(G: int, H: int, parts: int) -> _Layout:
    """The layout for G gates of H units split over ``parts`` threads. Cached: a layer runs
    the same few layouts at every call (the arrays are never modified)."""
    bounds = threads.unit_bounds(H, parts)
    perm = threads.row_permutation(G, H, bounds)
    order = np.arange(G * H, dtype=np.int64) if perm is None else perm.astype(np.int64)
    return _Layout(bounds, perm, order, int(np.max(np.diff(bounds))),
                   *_packed_offsets(G * bounds, H), *_packed_offsets(bounds, G * H))


@functools.lru_cache(maxsize=256)
def _input_offsets(G: int, H: int, parts: int, K: int) -> tuple[Array, int]:
    """Where each part's rows of [W_ih | b | W_hh] (K = D + 1 + H columns) start, packed, and
    the size."""
    return _packed_offsets(G * _parts_layout(G, H, parts).bounds, K)


def _peephole_block(peep: Array, B: int) -> Array:
    """(3, H) peephole weights -> (3, H, B), each repeated over the batch."""
    wexp = np.empty((3, peep.shape[1], B), dtype=peep.dtype)
    wexp[...] = peep[:, :, None]
    return wexp


def _lstm_gate_layout(cell: LSTMCell) -> Array:
    gates = cell.gates
    return np.array([gates.index(g) if g in gates else -1 for g in "ifgo"], dtype=np.int64)


def _lstm_peep(cell: LSTMCell, p: dict[str, Array], H: int, dtype: np.dtype) -> Array:
    peep = np.zeros((3, H), dtype=dtype)
    for k, gate in enumerate("ifo"):
        name = f"weight_c{gate}"
        if name in p:
            peep[k] = p[name]
    return peep


def _options(functions: tuple[Activation, ...], defaults: tuple[Activation, ...],
             clip: float | None, dtype: np.dtype) -> Array:
    """A cell's functions and clip as the kernels read them (``kernels.activate.params``), or
    an empty array when they are the cell's ``defaults`` without a clip: its own kernels."""
    if functions == defaults and clip is None:
        return np.empty(0, dtype=dtype)
    return activate.params(functions, clip, dtype)


def _lstm_options(cell: LSTMCell, dtype: np.dtype) -> Array:
    functions = (cell.recurrent_activation, cell.activation, cell.output_activation)
    if cell.full_gate_recurrence:  # its gradients enter the options loops (kernels.lstm)
        return activate.params(functions, cell.clip, dtype)
    return _options(functions, (SIGMOID, TANH, TANH), cell.clip, dtype)


def _gate_recurrence(cell: LSTMCell, p: dict[str, Array], state0: State, steps: int, Bp: int,
                     parts: int, dtype: np.dtype, new: Any) -> tuple[Array, Array, Array, Array]:
    """Full gate recurrence's W_gg (3H, 3H), and by parts of Bp sequences: the gate state
    [i, f, o] (parts, Bp, 3H) (the initial one: the kernel leaves the final one), room for each
    step's a_prev (parts, steps, Bp, 3H) and work (parts, Bp, 3H); empty and dummies without
    it."""
    if not cell.full_gate_recurrence:
        return (np.zeros((0, 0), dtype=dtype), _dummy(dtype, 3, parts), _dummy(dtype, 4, parts),
                _dummy(dtype, 3, parts))
    H3 = 3 * cell.hidden_size
    state = np.ascontiguousarray(np.concatenate(state0[2:], axis=1), dtype=dtype)
    return (_c(p["weight_gg"], dtype), _rows_apart(state, 0, parts, Bp),
            new((parts, steps, Bp, H3), dtype), np.empty((parts, Bp, H3), dtype=dtype))


def _zoneout_masks(cell: LSTMCell, p: dict[str, Array], T: int, B: int,
                   dtype: np.dtype) -> tuple[Array, Array]:
    """The zoneout masks of h (T, B, R) and c (T, B, H): the layer's draws while training
    (``p["zoneout_mask"]``, ``p["zoneout_c_mask"]``), else the rates (evaluation uses the
    expectation, as the cell does); both empty (0, 1, 1) without zoneout."""
    if not (cell.zoneout or cell.zoneout_c):
        return (np.zeros((0, 1, 1), dtype=dtype),) * 2
    return tuple(_c(p[name], dtype) if name in p else np.full((T, B, size), rate, dtype=dtype)
                 for name, rate, size in (("zoneout_mask", cell.zoneout, cell.output_size),
                                          ("zoneout_c_mask", cell.zoneout_c, cell.hidden_size)))


def _recurrent_dropout_mask(cell: LSTMCell, p: dict[str, Array], dtype: np.dtype) -> Array:
    """The layer's recurrent-dropout masks (G, B, R) while training
    (``p["recurrent_dropout_mask"]``), else (0, 1, 1): none (dropout is the identity
    without them, as in the cell)."""
    if cell.recurrent_dropout and "recurrent_dropout_mask" in p:
        return _c(p["recurrent_dropout_mask"], dtype)
    return np.zeros((0, 1, 1), dtype=dtype)


def _weight_hr(cell: LSTMCell, p: dict[str, Array], dtype: np.dtype) -> Array:
    """W_hr (P, H), or (0, H) without a projection (``proj_size`` = 0)."""
    if not cell.proj_size:
        return np.zeros((0, cell.hidden_size), dtype=dtype)
    return _c(p["weight_hr"], dtype)


def _layer_norm(cell: LSTMCell, p: dict[str, Array], lead: tuple[int, ...], dtype: np.dtype,
                new: Any) -> tuple[Array, ...]:
    """The layer-normalised cell's gains LNG (2, G*H) (w_ln_ih, w_ln_hh) and LNC (2, H)
    (w_ln_c, b_ln_c), and room for what its steps keep (``lead`` = (parts, steps, Bp)):
    LN(W_ih x) and LN(W_hh h_prev) (*lead, G*H), LN(c) (*lead, H), the 1 / std (*lead, 3); for
    any other cell, empty gains and dummies."""
    if not isinstance(cell, LayerNormLSTMCell):
        return (np.zeros((0, 1), dtype=dtype), np.zeros((0, 1), dtype=dtype),
                *(_dummy(dtype, 4, lead[0]) for _ in range(4)))
    GH, H = len(cell.gates) * cell.hidden_size, cell.hidden_size
    LNG = np.stack([_c(p["weight_ln_ih"], dtype), _c(p["weight_ln_hh"], dtype)])
    LNC = np.stack([_c(p["weight_ln_c"], dtype), _c(p["bias_ln_c"], dtype)])
    return (LNG, LNC, new((*lead, GH), dtype), new((*lead, GH), dtype), new((*lead, H), dtype),
            new((*lead, 3), dtype))


def lstm_forward(cell: LSTMCell, p: dict[str, Array], x: Array, state0: State,
                 mask: Array | None, reverse: bool, keep: bool, plan: Plan,
                 rows_of: tuple[Array, Array] | None = None) -> tuple[Array, State, Any]:
    """``rows_of = (ids, E)``: the caller's promise that x[t, b] = E[ids[t, b]] (an
    embedding lookup), used by a "folded" plan (``plan.choose_plan``). The input projection
    W_ih x + b then comes from the (GH, V) table W_ih E^T + b, and backward returns dL/dE (V, D)
    instead of dL/dx: for a vocabulary smaller than T * B this replaces three (GH x D x T*B)
    products by three of (GH x D x V)."""
    dtype = x.dtype
    x = _c(x, dtype)
    T, B, D = x.shape
    H = cell.hidden_size
    G = len(cell.gates)
    wih, whh = _c(p["weight_ih"], dtype), _c(p["weight_hh"], dtype)
    bias = _bias(cell, p, G * H, dtype)
    peep = _lstm_peep(cell, p, H, dtype)
    gidx = _lstm_gate_layout(cell)
    mask_arr, has_mask = _mask_args(mask)
    h0, c0 = _c(state0[0], dtype), _c(state0[1], dtype)
    ZH, ZC = _zoneout_masks(cell, p, T, B, dtype)
    if plan.kernel == "batch-inner":
        return _lstm_forward_t(cell, x, wih, whh, bias, peep, gidx, mask_arr, has_mask, h0,
                               c0, reverse, keep, rows_of, plan, (ZH, ZC))
    return _lstm_forward_rows(cell, p, x, state0, mask_arr, has_mask, reverse, keep, plan, wih,
                              whh, bias, peep, gidx, h0, c0, ZH, ZC)


def _lstm_forward_rows(cell: LSTMCell, p: dict[str, Array], x: Array, state0: State,
                       mask: Array, has_mask: bool, reverse: bool, keep: bool, plan: Plan,
                       wih: Array, whh: Array, bias: Array, peep: Array, gidx: Array, h0: Array,
                       c0: Array, ZH: Array, ZC: Array) -> tuple[Array, State, Any]:
    """The row kernels: the batch cut into ``plan.parts`` runs of Bp sequences (every array
    of the sequences with a leading parts axis, ``_rows_apart``), each run through the whole
    sequence on its own thread (``kernels.lstm.lstm_forward_parts``)."""
    dtype = x.dtype
    T, B, D = x.shape
    H, G, R = cell.hidden_size, len(cell.gates), cell.output_size
    rp = _row_parts(B, plan.parts)
    parts, Bp, apart = rp.parts, rp.Bp, rp.apart
    steps = T if keep else 1

    def apart_or_none(a: Array) -> Array:  # a (T or G, B, n) mask, or (0, 1, 1): none
        return apart(a, 1) if a.shape[0] else np.zeros((parts, *a.shape), dtype=dtype)

    new = _new(keep)
    X = apart(x, 1)
    Z = new((parts, _row_chunk(T, keep, plan), Bp, G, H), dtype)
    out = new((parts, T, Bp, R), dtype)
    whr = _weight_hr(cell, p, dtype)
    M = new((parts, steps, Bp, H), dtype) if cell.proj_size else _dummy(dtype, 4, parts)
    C = new((parts, T if keep else 2, Bp, H), dtype)
    if keep and has_mask:
        HP = new((parts, T, Bp, R), dtype)
        CP = new((parts, T, Bp, H), dtype)
    else:
        HP = CP = _dummy(dtype, 4, parts)
    hs = np.empty((parts, Bp, R), dtype=dtype)
    cs = np.empty((parts, Bp, H), dtype=dtype)
    act = _lstm_options(cell, dtype)
    PRE = new(Z.shape, dtype) if act.size else _dummy(dtype, 5, parts)
    ZH, ZC = apart_or_none(ZH), apart_or_none(ZC)
    CS = new(C.shape, dtype) if ZH.size else C
    DROP = apart_or_none(_recurrent_dropout_mask(cell, p, dtype))
    mask = rp.mask(mask, has_mask)
    LN = _layer_norm(cell, p, (parts, steps, Bp), dtype, new)
    FGR = _gate_recurrence(cell, p, state0, steps, Bp, parts, dtype, new)
    h0, c0 = apart(h0), apart(c0)
    scratch = np.empty((parts, 5, H), dtype=dtype)
    big = np.full((4, H), _lstm.BIG, dtype=dtype)
    _run_row_parts(rp, _lstm.lstm_forward_parts, _lstm.lstm_forward_parts_serial,
                   X, wih, whh, whr, bias, cell.bias, peep, gidx, cell.coupled_input_forget,
                   act, ZH, ZC, DROP, *LN[:2], _LN_EPS, *LN[2:], *FGR, mask, has_mask,
                   reverse, keep, h0, c0, Z, PRE, out, M, C, CS, HP, CP, hs, cs,
                   np.empty((parts, Bp, R), dtype=dtype), scratch, big, plan.small_products)
    cache = None
    result = rp.together(out, 1)
    if keep:
        cache = _Cache(("Z", "PRE", "out", "C", "M", "LN", "CS", "HP", "CP", "AP"),
                       kind="lstm", plan=plan, B=B, x=X, Z=Z, PRE=PRE, out=out, C=C, M=M,
                       DROP=DROP, act=act, LN=LN, CS=CS, ZH=ZH, ZC=ZC, HP=HP, CP=CP, h0=h0,
                       c0=c0, AP=FGR[2], mask=mask, has_mask=has_mask, reverse=reverse,
                       gidx=gidx)
        if parts == 1:  # the cache keeps its own h sequence: the caller may modify `out`
            result = result.copy()
    return (np.ascontiguousarray(result),
            (rp.together(hs), rp.together(cs), *_gate_parts(cell, rp.together(FGR[1]))), cache)


def _gate_parts(cell: LSTMCell, a: Array) -> tuple[Array, ...]:
    """The gate state (B, 3H) as the state parts i, f, o (none without full gate
    recurrence)."""
    if not cell.full_gate_recurrence:
        return ()
    H = cell.hidden_size
    return tuple(np.ascontiguousarray(a[:, k * H:(k + 1) * H]) for k in range(3))


def _lstm_forward_t(cell: LSTMCell, x: Array, wih: Array, whh: Array, bias: Array,
                    peep: Array, gidx: Array, mask_arr: Array, has_mask: bool, h0: Array,
                    c0: Array, reverse: bool, keep: bool,
                    rows_of: tuple[Array, Array] | None, plan: Plan,
                    zoneout: tuple[Array, Array]) -> tuple[Array, State, Any]:
    """The batch-inner plans; ``zoneout``: the masks of h and c (``_zoneout_masks``)."""
    dtype = x.dtype
    T, B, D = x.shape
    H = cell.hidden_size
    G = len(cell.gates)
    GH = G * H
    parts = plan.parts
    fold = plan.projection == "folded"
    if fold:
        ids = np.ascontiguousarray(rows_of[0], dtype=np.int64)
        E = _c(rows_of[1], dtype)
        table = np.ascontiguousarray(wih @ E.T + bias[:, None], dtype=dtype)
    else:
        ids, E, table = np.zeros((1, 1), np.int64), _dummy(dtype, 2), _dummy(dtype, 2)
    layout = _parts_layout(G, H, parts)
    bounds, perm = layout.bounds, layout.perm
    direct = plan.projection == "direct"
    if direct:  # W_ih, b, W_hh in the layer's order (packed as [W_ih | b | W_hh] by the kernel)
        XT = np.empty((2, D + 1, B), dtype=dtype)
        XT[:, D, :] = 1.0
        wx_off, wx_size = _input_offsets(G, H, parts, D + 1 + H)
        Wxp = packed.empty_aligned(wx_size)
        P, Wp = _dummy(dtype, 3), _dummy(dtype, 1)
    else:
        XT, Wxp, wx_off = _dummy(dtype, 3), _dummy(dtype, 1), layout.w_off
        if perm is not None and not fold:  # folded, the table replaces W_ih and the bias
            wih, bias = np.take(wih, perm, axis=0), np.take(bias, perm)
        Tc = min(T, plan.chunk_steps or T)
        P = np.empty((GH, 1 if fold else Tc, B), dtype=dtype)
        Wp = packed.empty_aligned(layout.w_size)
    new = _new(keep)
    Z = new((T if keep else 1, GH, B), dtype)
    out = np.empty((T, B, H), dtype=dtype)
    # the cache's own h sequence (the caller may modify `out`), written by the kernel alongside
    out_kept = new((T, B, H), dtype) if keep else _dummy(dtype, 3)
    CT = new((T if keep else 2, H, B), dtype)
    if keep and has_mask:
        HP = new((T, B, H), dtype)
        CPT = new((T, H, B), dtype)
    else:
        HP = CPT = _dummy(dtype, 3)
    hT = np.empty((2, H, B), dtype=dtype)
    cT = np.empty((H, B), dtype=dtype)
    hnew = np.empty((H, B), dtype=dtype)
    hs = np.empty((B, H), dtype=dtype)
    cs = np.empty((B, H), dtype=dtype)
    wexp = _peephole_block(peep, B)
    act = _lstm_options(cell, dtype)
    PRE = new(Z.shape, dtype) if act.size else _dummy(dtype, 3)
    ZH, ZC = zoneout  # (T, B, H), transposed by each part at each step (lstm_t._mask_run)
    CST = new(CT.shape, dtype) if ZH.size else CT
    scratch = np.empty((parts, 6, layout.units * B), dtype=dtype)
    if parts > 1:
        threads.starting_parallel()
    run = _lstm_t.lstm_forward_t if parts > 1 else _lstm_t.lstm_forward_t_serial
    with threads.blas_single_threaded():
        run(x, wih, whh, layout.order, bias, cell.bias, wexp, gidx,
            cell.coupled_input_forget, act, ZH, ZC, mask_arr, has_mask, reverse, keep, h0, c0,
            P, Z, PRE, out, out_kept, CT, CST, HP, CPT, hT, cT, hnew, hs, cs, scratch, bounds, Wp,
            layout.w_off, fold, table, ids, direct, XT, Wxp, wx_off, plan.blas_products)
    cache = None
    if keep:
        cache = _Cache(("Z", "PRE", "out", "CS", "C", "HP", "CP"),
                       kind="lstm", plan=plan, x=x, Z=Z, PRE=PRE, act=act, out=out_kept, CS=CST,
                       ZH=ZH, ZC=ZC, C=CT, HP=HP, CP=CPT, h0=h0, c0=c0, mask=mask_arr,
                       has_mask=has_mask, reverse=reverse, gidx=gidx, parts=parts,
                       rows_of=(ids, E) if fold else None)
    return out, (hs, cs), cache


def _lstm_backward_t(cell: LSTMCell, cache: Any, wih: Array, whh: Array, peep: Array,
                     d_out: Array, dh: Array, dc: Array,
                     grads: dict[str, Array]) -> tuple[Array, State]:
    x, Z = cache["x"], cache["Z"]
    dtype = x.dtype
    T, B, D = x.shape
    H = cell.hidden_size
    G = len(cell.gates)
    GH = G * H
    plan = cache["plan"]
    parts = plan.parts
    layout = _parts_layout(G, H, parts)
    wexp = _peephole_block(peep, B)
    dZ = _work("dZ", (T, GH, 1) if B == 1 else (GH, T, B), dtype)  # see lstm_t
    dZs2 = _work("dZs2", (2, GH, B), dtype)
    dZP2 = np.empty((2, GH * B if plan.backward_panels else 0), dtype=dtype)
    dX = np.empty((T, B, D), dtype=dtype)  # not written (nor touched) when folding
    fold = cache["rows_of"] is not None
    if fold:
        ids, E = cache["rows_of"]
        ids = ids.reshape(T * B)
        S = np.empty((GH, E.shape[0]), dtype=dtype)
        dE = np.empty((parts, E.shape[0], D), dtype=dtype)
    else:
        ids, E, S, dE = np.zeros(1, np.int64), _dummy(dtype, 2), _dummy(dtype, 2), _dummy(dtype, 3)
    accs = _weight_gradients(grads, GH, D, H, dtype)
    g_arrays = [acc.array for acc in accs]
    gpeep = np.zeros((3, H), dtype=dtype)
    work = [np.empty((H, B), dtype=dtype) for _ in range(4)]
    ones = np.ones(max(T * B, H * B), dtype=dtype)
    scratch = np.empty((parts, 10, layout.units * B), dtype=dtype)
    if parts > 1:
        threads.starting_parallel()
    Wp = packed.empty_aligned(layout.wt_size)
    run = _lstm_t.lstm_backward_t if parts > 1 else _lstm_t.lstm_backward_t_serial
    with threads.blas_single_threaded():
        run(
            x, wih, whh, layout.order, cell.bias, wexp, cache["gidx"],
            cell.coupled_input_forget, cache["act"], cache["ZH"], cache["ZC"],
            cache["mask"], cache["has_mask"], cache["reverse"], cache["h0"], cache["c0"], Z,
            cache["PRE"], cache["out"], cache["C"], cache["CS"], cache["HP"], cache["CP"], d_out,
            dh, dc, dZs2, dZP2, dZ, dX,
            *g_arrays, gpeep, cell.peepholes, *work, ones, scratch, layout.bounds, Wp,
            layout.wt_off, fold, ids, E, S, dE, plan.blas_products)
    _finish(accs, grads, gpeep)
    return (dE.sum(axis=0) if fold else dX), (dh, dc)


def lstm_backward(cell: LSTMCell, p: dict[str, Array], cache: Any, d_out: Array,
                  d_state: State, grads: dict[str, Array]) -> tuple[Array, State]:
    if cache["plan"].kernel == "batch-inner":
        x, dtype, T, B, D, wih, whh, d_out, (dh, dc) = _backward_operands(p, cache, d_out,
                                                                          d_state)
        peep = _lstm_peep(cell, p, cell.hidden_size, dtype)
        return _lstm_backward_t(cell, cache, wih, whh, peep, d_out, dh, dc, grads)
    return _lstm_backward_rows(cell, p, cache, d_out, d_state, grads)


def _lstm_backward_rows(cell: LSTMCell, p: dict[str, Array], cache: Any, d_out: Array,
                        d_state: State, grads: dict[str, Array]) -> tuple[Array, State]:
    """Backward of ``_lstm_forward_rows``, part by part (``kernels.lstm.lstm_backward_parts``);
    each part accumulates its own parameter gradients, added in the parts' order (so the
    numbers depend on the plan, never on which thread finishes first)."""
    X, rp, wih, whh, (dh, dc, *d_gates), dX = _row_backward_operands(p, cache, d_state)
    parts, T, Bp, D = X.shape
    dtype = X.dtype
    H, G, R = cell.hidden_size, len(cell.gates), cell.output_size
    GH = G * H
    dOUT = rp.apart(_c(d_out, dtype), 1)
    peep = _lstm_peep(cell, p, H, dtype)
    Z = cache["Z"]
    LNG, LNC, AH, RH, CH, INV = cache["LN"]
    ln = LNG.size > 0
    # with layer normalisation the gate gradients are one step's (dA, dR hold every step's)
    dZ = _work("dZ", (parts, 1, *Z.shape[2:]) if ln else Z.shape, dtype)
    dA, dR = (_work("dA", Z.shape, dtype), _work("dR", Z.shape, dtype)) if ln else (dZ, dZ)
    whr = _weight_hr(cell, p, dtype)
    fgr = cell.full_gate_recurrence
    if fgr:
        Wgg, H3 = _c(p["weight_gg"], dtype), 3 * H
        DAS = np.concatenate(d_gates, axis=-1)  # (parts, Bp, 3H): i, f, o
        DZG = _work("DZG", (parts, T, Bp, H3), dtype)
        dGG = np.empty((parts, Bp, H3), dtype=dtype)
    else:
        Wgg, DAS, DZG, dGG = (np.zeros((0, 0), dtype=dtype), _dummy(dtype, 3, parts),
                              _dummy(dtype, 4, parts), _dummy(dtype, 3, parts))
    # what each part accumulates: dW_ih, dW_hh, db_ih, db_hh, dW_hr, dW_gg, the peepholes'
    # and the gains' gradients; straight into the caller's arrays for one part
    accs = [*_weight_gradients(grads, GH, D, R, dtype),
            _Accumulate(grads.get("weight_hr"), whr.shape, dtype),
            _Accumulate(grads.get("weight_gg"), Wgg.shape, dtype),
            *(_Accumulate(None, shape, dtype) for shape in ((3, H), LNG.shape, LNC.shape))]
    sums = rp.sums(accs)
    gWih, gWhh, gbih, gbhh, gWhr, gWgg, gpeep, gLNG, gLNC = sums
    _run_row_parts(rp, _lstm.lstm_backward_parts, _lstm.lstm_backward_parts_serial,
                   X, wih, whh, whr, cell.bias, peep, cell.peepholes, cache["gidx"],
                   cell.coupled_input_forget, cache["act"], cache["ZH"], cache["ZC"],
                   cache["DROP"], LNG, LNC, AH, RH, CH, INV, Wgg, cache["AP"], DAS, DZG, dGG,
                   gWgg, cache["mask"], cache["has_mask"], cache["reverse"], cache["h0"],
                   cache["c0"], Z, cache["PRE"], cache["out"], cache["M"], cache["C"],
                   cache["CS"], cache["HP"], cache["CP"], dOUT, dh, dc, dZ, dA,
                   dR, dX, _work("dHN", (parts, T if cell.proj_size else 1, Bp, R), dtype),
                   np.empty((parts, Bp, H), dtype=dtype), np.empty((parts, Bp, R), dtype=dtype),
                   gWih, gWhh, gWhr, gbih, gbhh, gpeep, gLNG, gLNC,
                   np.empty((parts, 7, H), dtype=dtype), np.ones(H, dtype=dtype),
                   cache["plan"].small_products)
    rp.add(accs, sums)
    _finish(accs[:6], grads, accs[6].array)
    if LNG.size:
        g_ln = (accs[7].array, accs[8].array)
        for name, gain in (("weight_ln_ih", g_ln[0][0]), ("weight_ln_hh", g_ln[0][1]),
                           ("weight_ln_c", g_ln[1][0]), ("bias_ln_c", g_ln[1][1])):
            if name in grads:
                grads[name] += gain
    return (np.ascontiguousarray(rp.together(dX, 1)),
            (rp.together(dh), rp.together(dc), *_gate_parts(cell, rp.together(DAS))))


def lstm_gate_sequences(cell: LSTMCell, cache: Any) -> dict[str, Array]:
    Z, gidx = cache["Z"], cache["gidx"]
    if cache["plan"].kernel == "batch-inner":  # (T, GH, B), rows permuted -> (T, B, G, H)
        T, GH, B = Z.shape
        perm = _parts_layout(len(cell.gates), cell.hidden_size, cache["plan"].parts).perm
        if perm is not None:
            unpermuted = np.empty_like(Z)
            unpermuted[:, perm] = Z
            Z = unpermuted
        Z = Z.reshape(T, len(cell.gates), cell.hidden_size, B).transpose(0, 3, 1, 2)
        cache = dict(cache, C=cache["C"].transpose(0, 2, 1), CS=cache["CS"].transpose(0, 2, 1))
    else:  # the row kernels' parts, (parts, T, Bp, ...) -> (T, B, ...)
        Z = _rows_together(Z, 1, cache["B"])
        cache = dict(cache, C=_rows_together(cache["C"], 1, cache["B"]),
                     CS=_rows_together(cache["CS"], 1, cache["B"]))
    result: dict[str, Array] = {}
    for k, name in enumerate("ifgo"):
        if gidx[k] >= 0:
            result[name] = np.ascontiguousarray(Z[:, :, gidx[k]])
        elif name == "f" and cell.coupled_input_forget:
            result[name] = 1.0 - result["i"]
        else:
            result[name] = np.ones(Z.shape[:2] + Z.shape[3:], dtype=Z.dtype)
    result["c"] = np.array(cache.get("CS", cache["C"]), order="C")  # the state, (T, B, H)
    return result


# -- GRU ---------------------------------------------------------------------------------------


def gru_forward(cell: GRUCell, p: dict[str, Array], x: Array, state0: State,
                mask: Array | None, reverse: bool, keep: bool,
                plan: Plan) -> tuple[Array, State, Any]:
    """The row kernels, the batch in ``plan.parts`` runs (as ``_lstm_forward_rows``)."""
    dtype = x.dtype
    x = _c(x, dtype)
    T, B, D = x.shape
    H = cell.hidden_size
    rp = _row_parts(B, plan.parts)
    parts, Bp = rp.parts, rp.Bp
    wih, whh = _c(p["weight_ih"], dtype), _c(p["weight_hh"], dtype)
    if cell.bias:
        bih, bhh = _c(p["bias_ih"], dtype), _c(p["bias_hh"], dtype)
    else:
        bih = bhh = np.zeros(3 * H, dtype=dtype)
    mask_arr, has_mask = _mask_args(mask)
    Tc = _row_chunk(T, keep, plan)
    Z = np.empty((parts, Tc, Bp, 3, H), dtype=dtype)
    HN = np.empty((parts, T if keep else 1, Bp, H), dtype=dtype)
    out = np.empty((parts, T, Bp, H), dtype=dtype)
    HP = (np.empty((parts, T, Bp, H), dtype=dtype) if keep and has_mask
          else _dummy(dtype, 4, parts))
    hs = np.empty((parts, Bp, H), dtype=dtype)
    # Cho et al.'s candidate (linear_before_reset=False) runs on the options' loops
    lbr = cell.linear_before_reset
    act = _options((cell.recurrent_activation, cell.activation), (SIGMOID, TANH) if lbr else (),
                   cell.clip, dtype)
    PRE = np.empty_like(Z) if act.size else _dummy(dtype, 5, parts)
    RH = (_dummy(dtype, 4, parts) if lbr
          else np.empty((parts, T if keep else 1, Bp, H), dtype=dtype))
    X, h0, mask_arr = rp.apart(x, 1), rp.apart(_c(state0[0], dtype)), rp.mask(mask_arr, has_mask)
    _run_row_parts(rp, _gru.gru_forward_parts, _gru.gru_forward_parts_serial, X, wih, whh,
                   bih, bhh, cell.bias, act, lbr, mask_arr, has_mask, reverse, keep, h0, Z, PRE,
                   HN, RH, out, HP, hs, np.empty((parts, Bp, 3, H), dtype=dtype),
                   plan.small_products)
    cache = None
    result = rp.together(out, 1)
    if keep:
        cache = {"kind": "gru", "plan": plan, "B": B, "x": X, "Z": Z, "PRE": PRE, "act": act,
                 "HN": HN, "RH": RH, "out": out, "HP": HP, "h0": h0, "mask": mask_arr,
                 "has_mask": has_mask, "reverse": reverse}
        if parts == 1:  # the cache keeps its own h sequence: the caller may modify `out`
            result = result.copy()
    return np.ascontiguousarray(result), (rp.together(hs),), cache


def gru_backward(cell: GRUCell, p: dict[str, Array], cache: Any, d_out: Array,
                 d_state: State, grads: dict[str, Array]) -> tuple[Array, State]:
    X, rp, wih, whh, (dh,), dX = _row_backward_operands(p, cache, d_state)
    parts, T, Bp, D = X.shape
    dtype, H = X.dtype, cell.hidden_size
    accs = _weight_gradients(grads, 3 * H, D, H, dtype)
    sums = rp.sums(accs)
    _run_row_parts(rp, _gru.gru_backward_parts, _gru.gru_backward_parts_serial, X, wih, whh,
                   cell.bias, cache["act"], cell.linear_before_reset, cache["mask"],
                   cache["has_mask"], cache["reverse"], cache["h0"], cache["Z"], cache["PRE"],
                   cache["HN"], cache["RH"], cache["out"], cache["HP"],
                   rp.apart(_c(d_out, dtype), 1), dh, np.empty((parts, Bp, H), dtype=dtype),
                   np.empty((parts, Bp, H), dtype=dtype),
                   _work("dZ", (parts, T, Bp, 3, H), dtype), _work("dNI", (parts, T, Bp, H), dtype),
                   dX, *sums, cache["plan"].small_products)
    rp.add(accs, sums)
    _finish(accs, grads)
    return np.ascontiguousarray(rp.together(dX, 1)), (rp.together(dh),)


def gru_gate_sequences(cell: GRUCell, cache: Any) -> dict[str, Array]:
    Z = _rows_together(cache["Z"], 1, cache["B"])
    return {name: np.ascontiguousarray(Z[:, :, k]) for k, name in enumerate(("r", "z", "n"))}


# -- RNN ---------------------------------------------------------------------------------------


def rnn_forward(cell: RNNCell, p: dict[str, Array], x: Array, state0: State,
                mask: Array | None, reverse: bool, keep: bool,
                plan: Plan) -> tuple[Array, State, Any]:
    """The row kernels, the batch in ``plan.parts`` runs (as ``_lstm_forward_rows``)."""
    dtype = x.dtype
    x = _c(x, dtype)
    T, B, D = x.shape
    H = cell.hidden_size
    rp = _row_parts(B, plan.parts)
    parts, Bp = rp.parts, rp.Bp
    wih, whh = _c(p["weight_ih"], dtype), _c(p["weight_hh"], dtype)
    bias = _bias(cell, p, H, dtype)
    mask_arr, has_mask = _mask_args(mask)
    A = np.empty((parts, T, Bp, H), dtype=dtype)  # the activations h of every step (masked too)
    out = np.empty((parts, T, Bp, H), dtype=dtype) if has_mask else A
    HP = (np.empty((parts, T, Bp, H), dtype=dtype) if keep and has_mask
          else _dummy(dtype, 4, parts))
    hs = np.empty((parts, Bp, H), dtype=dtype)
    relu = cell.nonlinearity == "relu"
    act = _options((cell.function,), (RELU if relu else TANH,), cell.clip, dtype)
    PRE = np.empty_like(A) if act.size else _dummy(dtype, 4, parts)
    X, h0, mask_arr = rp.apart(x, 1), rp.apart(_c(state0[0], dtype)), rp.mask(mask_arr, has_mask)
    _run_row_parts(rp, _rnn.rnn_forward_parts, _rnn.rnn_forward_parts_serial, X, wih, whh,
                   bias, cell.bias, relu, act, mask_arr, has_mask, reverse, keep, h0, A, PRE, out,
                   HP, hs, plan.small_products)
    cache = None
    result = rp.together(out, 1)
    if keep:
        cache = {"kind": "rnn", "plan": plan, "B": B, "x": X, "A": A, "PRE": PRE, "act": act,
                 "HP": HP, "h0": h0, "mask": mask_arr, "has_mask": has_mask, "reverse": reverse}
        if parts == 1 and out is A:  # the cache keeps its activations: the caller may modify
            result = result.copy()
    return np.ascontiguousarray(result), (rp.together(hs),), cache


def rnn_backward(cell: RNNCell, p: dict[str, Array], cache: Any, d_out: Array,
                 d_state: State, grads: dict[str, Array]) -> tuple[Array, State]:
    X, rp, wih, whh, (dh,), dX = _row_backward_operands(p, cache, d_state)
    parts, T, Bp, D = X.shape
    dtype, H = X.dtype, cell.hidden_size
    accs = _weight_gradients(grads, H, D, H, dtype)
    sums = rp.sums(accs)
    relu = cell.nonlinearity == "relu"
    _run_row_parts(rp, _rnn.rnn_backward_parts, _rnn.rnn_backward_parts_serial, X, wih, whh,
                   cell.bias, relu, cache["act"], cache["mask"], cache["has_mask"],
                   cache["reverse"], cache["h0"], cache["A"], cache["PRE"], cache["HP"],
                   rp.apart(_c(d_out, dtype), 1), dh, _work("dZ", (parts, T, Bp, H), dtype), dX,
                   *sums, cache["plan"].small_products)
    rp.add(accs, sums)
    _finish(accs, grads)
    return np.ascontiguousarray(rp.together(dX, 1)), (rp.together(dh),)


# -- dispatch ----------------------------------------------------------------------------------

_FORWARD = {LSTMCell: lstm_forward, GRUCell: gru_forward, RNNCell: rnn_forward}
_BACKWARD = {"lstm": lstm_backward, "gru": gru_backward, "rnn": rnn_backward}


def forward(cell: Any, p: dict[str, Array], x: Array, state0: State, mask: Array | None,
            reverse: bool, keep: bool, plan: Plan,
            rows_of: tuple[Array, Array] | None = None) -> tuple[Array, State, Any]:
    """Run ``plan`` (a "rows" or "batch-inner" plan that ``plan.check_plan`` accepted)."""
    if isinstance(cell, LSTMCell):  # LayerNormLSTMCell included
        return lstm_forward(cell, p, x, state0, mask, reverse, keep, plan, rows_of)
    return _FORWARD[type(cell)](cell, p, x, state0, mask, reverse, keep, plan)


def backward(cell: Any, p: dict[str, Array], cache: Any, d_out: Array, d_state: State,
             grads: dict[str, Array]) -> tuple[Array, State]:
    return _BACKWARD[cache["kind"]](cell, p, cache, d_out, d_state, grads)


def gate_sequences(cell: Any, cache: Any) -> dict[str, Array]:
    if cache["kind"] == "lstm":
        return lstm_gate_sequences(cell, cache)
    if cache["kind"] == "gru":
        return gru_gate_sequences(cell, cache)
    return {}
