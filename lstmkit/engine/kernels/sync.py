"""Step-by-step work sharing between the threads of one parallel region.

A recurrence split over threads needs every part of step t finished before any part of step
t + 1 starts. Opening a Numba ``prange`` region per step costs ~1.6 us on two threads (GNU
OpenMP fork and join), as much as a small step's work. The kernels instead open one region
per pass, in which every worker w runs the same sequence of steps and does part w of each:

    for w in prange(parts):              # every worker runs the whole time loop
        for each step (slot) s:
            for k in range(parts):
                p = claim(claimed, s, w, k, parts)   # k = 0: its own part w
                if p >= 0:
                    ... part p of step s ...
                    finish(finished, s)
            wait(finished, s, parts)     # until every part of step s is done

Each worker keeps its own part (and so its rows of the weights stay in its core's cache).
A part is done by whoever claims it first, and a worker takes another worker's part when
that one has not claimed it after a while (``PATIENCE``): nothing deadlocks when the workers
do not all run at the same time (fewer threads than parts, or a thread descheduled), the
work is then done by those that run. Between two steps a worker only spins until the others
finish (~0.2 us when they run). The counters are atomic (LLVM ``atomicrmw`` / ``load
atomic``): the increment after a part publishes its writes (sequentially consistent), the
acquiring load in ``wait`` makes them visible to the waiting worker. Counters are int64
arrays of zeros (``claimed``: slots * parts, ``finished``: slots), each slot used once.
"""

from __future__ import annotations

from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

_OPTS = {"cache": True, "nogil": True}


def _counter_op(emit):
    """An intrinsic ``op(counters, slot) -> int64`` on an int64 array: ``emit(builder, ptr)``
    writes the LLVM instruction on the address of counters[slot] and returns its value."""

    @intrinsic
    def op(typingctx, counters, slot):
        if not (isinstance(counters, types.Array) and counters.dtype == types.int64):
            return None

        def codegen(context, builder, signature, args):
            data = cgutils.create_struct_proxy(signature.args[0])(context, builder,
                                                                  value=args[0]).data
            index = context.cast(builder, args[1], signature.args[1], types.int64)
            return emit(builder, builder.gep(data, [index]))

        return types.int64(counters, slot), codegen

    return op


# counters[slot] += 1, atomically, returning the value before; counters[slot] read atomically
_fetch_add = _counter_op(
    lambda builder, ptr: builder.atomic_rmw("add", ptr, ir.Constant(ir.IntType(64), 1),
                                            "seq_cst"))
_load_acquire = _counter_op(lambda builder, ptr: builder.load_atomic(ptr, "acquire", 8))


PATIENCE = 100_000  # spins (~30 us on Zen 3) to wait for a part's own worker before taking it


@njit(**_OPTS)
def claim(claimed, slot, w, k, parts):
    """Part (w + k) % parts of this slot's work if the calling thread (worker w) gets it,
    else -1. k = 0 is the worker's own part; another worker's part (k > 0) is taken only if
    that worker has not claimed it within ``PATIENCE`` spins (it runs late, or not at all).
    ``claimed``: (slots * parts,) counters."""
    p = (w + k) % parts
    at = slot * parts + p
    if k > 0:
        spins = 0
        while _load_acquire(claimed, at) == 0 and spins < PATIENCE:
            spins += 1
    return p if _fetch_add(claimed, at) == 0 else -1


@njit(**_OPTS)
def finish(finished, slot):
    """Record that one part of this slot's work is done (publishes the part's writes)."""
    _fetch_add(finished, slot)


@njit(**_OPTS)
def wait(finished, slot, parts):
    """Spin until all ``parts`` parts of this slot's work are done."""
    while _load_acquire(finished, slot) < parts:
        pass
