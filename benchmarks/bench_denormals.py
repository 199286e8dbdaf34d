"""Does backward slow down when the gradient decays into denormal (subnormal) floats?

Three backward passes through the same forward pass of a float32 LSTM whose forget gates sit
near 0.97 (small weights, forget-gate bias logit(0.97)), differing only in the size of the
gradient injected at the last step:

    normal    dL/dh_T = 1:      the gradient decays to ~1e-7 over T steps, all normal floats
    denormal  dL/dh_T = 1e-37:  it enters the subnormal range (< 1.2e-38) within a few dozen
                                steps and stays there (23 binary orders at 0.97 per step is
                                ~500 steps) unless the backward pass flushes it to zero
    zero      dL/dh_T = 0:      what a flushing backward pass would see (exact zeros)

On x86 CPUs, arithmetic with subnormal operands or results takes a microcode assist (tens to
hundreds of cycles); "denormal" much slower per step than "normal" means the backward pass
needs flush-to-zero. The number of subnormal values left in dx is printed as well.

    python benchmarks/bench_denormals.py [--steps 500] [--batch 64] [--hidden 256]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import lstmkit


def forgetful_lstm(D: int, H: int, forget: float, seed: int) -> lstmkit.LSTM:
    """Small weights and a forget-gate bias of logit(forget): f ~ forget at every step."""
    layer = lstmkit.LSTM(D, H, seed=seed)
    for value in layer.params.values():
        value *= 0.05
    f = layer._cells[0].gates.index("f")
    layer.params["bias_ih_l0"][f * H : (f + 1) * H] = np.log(forget / (1.0 - forget))
    return layer


def subnormals(a: np.ndarray) -> int:
    magnitude = np.abs(a)
    return int(np.count_nonzero((magnitude > 0) & (magnitude < np.finfo(a.dtype).tiny)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=500, help="sequence length T")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--input", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--forget", type=float, default=0.97, help="forget gate value")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    T, B, D, H = args.steps, args.batch, args.input, args.hidden
    layer = forgetful_lstm(D, H, args.forget, seed=0)
    x = np.random.default_rng(0).standard_normal((T, B, D)).astype(np.float32)
    print(f"LSTM({D}, {H}) float32, T={T}, B={B}, forget gate ~{args.forget}, "
          f"recurrence: {getattr(layer.recurrence, 'name', type(layer.recurrence).__name__)}")
    print(f"{'case':<10}{'dL/dh_T':>10}{'us/step':>12}{'vs normal':>11}{'subnormals in dx':>18}")
    baseline = None
    for case, scale in (("normal", 1.0), ("denormal", 1e-37), ("zero", 0.0)):
        times, found = [], 0
        for _ in range(args.repeats):
            out, _ = layer(x)
            d_out = np.zeros_like(out)
            d_out[-1] = scale
            layer.zero_grad()
            start = time.perf_counter()
            dx, _ = layer.backward(d_out)
            times.append(time.perf_counter() - start)
            found = subnormals(dx)
        per_step = statistics.median(times) / T * 1e6
        baseline = baseline or per_step
        print(f"{case:<10}{scale:>10.0e}{per_step:>12.1f}{per_step / baseline:>10.2f}x"
              f"{found:>18}")


if __name__ == "__main__":
    main()
