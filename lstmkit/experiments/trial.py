"""One trial: one seed of one experiment with one settings dict, run and recorded as JSON.

A trial is the unit of work of ``lstmkit sweep``: ``run_trial("adding", "quick", {"lr":
"0.01"}, seed=3)`` runs exactly the runs that ``lstmkit experiment adding --quick --set lr=0.01
--seed 3 --seeds 1`` runs (the experiment's ``run_seed``), on a given number of threads, and
returns a plain-JSON record of them::

    {"experiment": "adding", "mode": "quick", "settings": {"lr": "0.01"}, "seed": 3,
     "index": 0, "status": "ok", "config": {...}, "runs": [...every number measured...],
     "threads": 1, "seconds": 41.2, "host": "node-1", "finished": "2026-...", ...}

or, if the experiment raised, the same keys with ``"status": "error"`` and the error and its
traceback instead of ``runs``. The same seed, settings and thread count give the same numbers,
wherever the trial runs.
"""

from __future__ import annotations

import socket
import time
import traceback
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from lstmkit.experiments.common import to_jsonable


@contextmanager
def limit_threads(threads: int | None) -> Iterator[int | None]:
    """Run the block with ``threads`` threads for lstmkit's kernels (Numba's pool) and for
    every BLAS loaded in the process (threadpoolctl); both are restored afterwards.

    Yields the kernels' thread count in the block; ``None`` leaves everything as it is (and
    yields None). Results depend on how many threads share the work, so runs compared bit
    for bit must use the same count.
    """
    if threads is None:
        yield None
        return
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    import scipy.linalg.cython_blas  # noqa: F401  (load the kernels' BLAS so that it is limited too)
    from threadpoolctl import threadpool_limits

    import lstmkit

    previous = lstmkit.get_num_threads()
    lstmkit.set_num_threads(threads)  # keeps PyTorch's OpenMP apart, before Numba's pool starts
    try:
        with threadpool_limits(limits=threads):
            yield lstmkit.get_num_threads()
    finally:
        lstmkit.set_num_threads(previous)


def run_trial(experiment: str, mode: str, settings: Mapping[str, Any], seed: int,
              index: int = 0, threads: int | None = 1) -> dict[str, Any]:
    """Run one seed of ``experiment`` (its ``run_seed``) with ``settings`` (``--set`` values,
    by name) on ``threads`` threads, and return the trial's JSON-ready record.

    ``threads=None`` leaves the process's thread counts as they are (recorded as None).
    ``index`` is the seed's place among the seeds of the whole sweep (the ``clipping``
    experiment's second panel runs on the first seeds only). An exception raised by the
    experiment is caught and recorded (``status`` "error"); settings the experiment does not
    accept raise ``ValueError`` before anything runs.
    """
    from lstmkit.experiments import MODULES

    module = MODULES[experiment]
    config = module.configure(mode, dict(settings))
    record: dict[str, Any] = {
        "experiment": experiment, "mode": mode, "settings": dict(settings), "seed": seed,
        "index": index, "config": config,
    }
    start = time.perf_counter()
    try:
        with limit_threads(threads) as used:
            record["threads"] = used
            runs = module.run_seed(config, seed, index)
        record.update(status="ok", runs=runs)
    except Exception as error:  # a failing trial is recorded; the sweep goes on
        record.update(status="error", error=f"{type(error).__name__}: {error}",
                      traceback=traceback.format_exc())
    record.update(seconds=time.perf_counter() - start, host=socket.gethostname(),
                  finished=datetime.now().isoformat(timespec="seconds"))
    return to_jsonable(record)
