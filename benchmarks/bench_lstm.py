"""LSTM training and inference: lstmkit's fused kernels against PyTorch, on this CPU.

    python benchmarks/bench_lstm.py                       # the full grid, JSON next to it
    python benchmarks/bench_lstm.py --quick --json out.json
    python benchmarks/bench_lstm.py --reference           # the reference path (the baseline)

Same options as ``lstmkit bench`` (this script calls it). The protocol -- one process,
alternating lstmkit and PyTorch runs with the same thread count, medians, the FLOP
convention (forward = GEMM FLOPs 2*T*B*(D+H)*4H, training = 3x), the sgemm peak measured in the
same run, peak memory as the resident-set high-water mark in a fresh subprocess per framework
and shape, and the first-call (compile / cache load) cost -- is documented in
``lstmkit/kernels/benchmark.py``.
"""

from __future__ import annotations

import sys

from lstmkit.cli.bench import bench

if __name__ == "__main__":
    sys.exit(bench.main(prog_name="bench_lstm.py"))
