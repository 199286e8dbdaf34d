"""LSTM training and inference: lstmkit's fused kernels against PyTorch, on this CPU.

    python benchmarks/bench_lstm.py                       # the full grid
    python benchmarks/bench_lstm.py --quick --json out.json
    python benchmarks/bench_lstm.py --reference           # the reference path (the baseline)

Same options as ``lstmkit bench`` (this script calls it); without ``--json`` the results go to
``benchmarks/bench_lstm_results/latest.json``. The protocol -- one process, lstmkit and
PyTorch alternating with the same thread count, medians, the FLOP convention (forward = GEMM
FLOPs 2*T*B*(D+H)*4H, training = 3x), the sgemm peak measured in the same run, peak memory as
the resident-set high-water mark in a fresh subprocess per framework and shape, and the
first-call (compile / cache load) cost -- is documented in ``lstmkit/benchmark.py``.
"""

from __future__ import annotations

import os
import sys

from lstmkit.cli.bench import bench

if __name__ == "__main__":
    args = sys.argv[1:]
    if "--json" not in args and not any(a.startswith("--json=") for a in args) \
            and not {"-h", "--help"} & set(args):
        folder = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench_lstm_results")
        os.makedirs(folder, exist_ok=True)
        args += ["--json", os.path.join(folder, "latest.json")]
    sys.exit(bench.main(args=args, prog_name="bench_lstm.py"))
