"""The cost of each cell option: a training call with one option against the plain LSTM.

Issue 20's target: a training step (forward and backward of one layer) with any one option
within 1.3x of the plain LSTM's on the same shape. Each option and the plain layer run in the
same process, alternating, ``--rounds`` times; each round times ``--reps`` calls of each and
keeps the best; the ratio printed is the median over rounds of option / plain (the plan that
ran is printed too). Record the CPU with the numbers (printed first).

    python benchmarks/bench_options.py [--layer LSTM|GRU|RNN] [--shape 50,16,64,128]
        [--threads 1] [--only SUBSTRING] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import time

import numpy as np

import lstmkit
from lstmkit.layers import RecurrentLayer

OPTIONS: dict[str, dict[str, dict]] = {"LSTM": {
    "activation=relu": {"activation": "relu"},
    "recurrent_activation=hard_sigmoid": {"recurrent_activation": "hard_sigmoid"},
    "output_activation=identity (NOAF)": {"output_activation": "identity"},
    "activation=identity (NIAF)": {"activation": "identity", "output_activation": "tanh"},
    "activation=softsign": {"activation": "softsign"},
    "clip=3": {"clip": 3.0},
    "full_gate_recurrence": {"full_gate_recurrence": True},
    "proj_size=H/2": {"proj_size": -1},  # replaced by H // 2
    "recurrent_dropout=0.25": {"recurrent_dropout": 0.25},
    "zoneout=0.1": {"zoneout": 0.1},
    "zoneout=0.1, zoneout_c=0.1": {"zoneout": 0.1, "zoneout_c": 0.1},
    "weight_drop=0.3": {"weight_drop": 0.3},
    "layer_norm": {"layer_norm": True},
}, "GRU": {
    "activation=relu": {"activation": "relu"},
    "recurrent_activation=hard_sigmoid": {"recurrent_activation": "hard_sigmoid"},
    "clip=3": {"clip": 3.0},
    "linear_before_reset=False": {"linear_before_reset": False},
}, "RNN": {
    "activation=softsign": {"activation": "softsign"},
    "clip=3": {"clip": 3.0},
}}


def cpu() -> str:
    """lscpu's model name and vector flags."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor()
    name = next((line.split(":", 1)[1].strip() for line in text.splitlines()
                 if line.startswith("Model name")), "unknown")
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines()
                  if line.startswith("Flags")), [])
    vector = [f for f in ("avx2", "fma", "avx512f") if f in flags]
    return f"{name} ({' '.join(vector)})"


def best_call(layer: RecurrentLayer, x: np.ndarray, d_out: np.ndarray, reps: int) -> float:
    """The best of ``reps`` training calls (forward and backward), seconds."""
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        layer(x)
        layer.backward(d_out)
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layer", default="LSTM", choices=sorted(OPTIONS))
    parser.add_argument("--shape", default="50,16,64,128", help="T,B,D,H")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--only", default=None, help="a substring of the options to run")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    T, B, D, H = (int(v) for v in args.shape.split(","))
    lstmkit.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, D)).astype(np.float32)
    print(f"CPU: {cpu()}; {args.layer}, shape (T, B, D, H) = {(T, B, D, H)}; "
          f"{args.threads} thread(s)")
    Layer = getattr(lstmkit, args.layer)
    plain = Layer(D, H, seed=0)
    plain.train()
    d_plain = np.ones((T, B, H), np.float32)
    results = {}
    for name, options in OPTIONS[args.layer].items():
        if args.only and args.only not in name:
            continue
        options = {k: (H // 2 if v == -1 else v) for k, v in options.items()}
        layer = Layer(D, H, seed=0, **options)
        layer.train()
        d_out = np.ones((T, B, options.get("proj_size") or H), np.float32)
        best_call(layer, x, d_out, 2)  # compile and warm up
        best_call(plain, x, d_plain, 2)
        ratios, times = [], []
        for _ in range(args.rounds):
            t_option = best_call(layer, x, d_out, args.reps)
            t_plain = best_call(plain, x, d_plain, args.reps)
            ratios.append(t_option / t_plain)
            times.append((t_option, t_plain))
        plan = str(layer.last_plans.get("l0", "?"))
        ratio = statistics.median(ratios)
        results[name] = {"ratio": ratio, "ratios": ratios, "plan": plan,
                         "ms": [[1e3 * a, 1e3 * b] for a, b in times]}
        ms_option = 1e3 * statistics.median(t for t, _ in times)
        ms_plain = 1e3 * statistics.median(t for _, t in times)
        print(f"{name:40s} {ratio:5.2f}x  (option {ms_option:6.2f} ms, plain {ms_plain:6.2f} ms)"
              f"  plan: {plan}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"cpu": cpu(), "layer": args.layer, "shape": [T, B, D, H],
                       "threads": args.threads,
                       "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
