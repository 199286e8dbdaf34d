"""The recurrent product of one LSTM step: OpenBLAS ``sgemm`` against the packed-weight kernel.

For each shape (T, B, D, H) of the standard grid, runs T steps of ``Z^T += W_hh h^T`` the way the
batch-inner LSTM kernels do (the rows split over the same parts as a layer uses, each part one
call per step), once with a BLAS call per part and step and once with
``lstmkit.engine.kernels.packed.packed_gemm`` on weights packed beforehand, alternating, and prints
the best of N rounds, GFLOP/s and the speed-up. Run from the repository root:

    python benchmarks/bench_packed.py [--rounds 21] [--shapes "100,16,128,256;35,20,650,650"]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from numba import njit, prange

from lstmkit.benchmark import GRID, parse_shapes
from lstmkit.cells import LSTMCell
from lstmkit.engine.kernels import threads
from lstmkit.engine.kernels.blas import gemm
from lstmkit.engine.kernels.packed import pack_rows, packed_gemm, packed_size
from lstmkit.engine.plan import choose_plan


@njit(parallel=True, nogil=True)
def blas_steps(W, hT, Z, T, row_bounds):
    for _ in range(T):
        for p in prange(row_bounds.shape[0] - 1):
            r0, r1 = row_bounds[p], row_bounds[p + 1]
            gemm(False, False, 1.0, W[r0:r1], hT, 1.0, Z[r0:r1])


@njit(parallel=True, nogil=True)
def packed_steps(Wp, w_off, hT, Z, T, row_bounds):
    for _ in range(T):
        for p in prange(row_bounds.shape[0] - 1):
            r0, r1 = row_bounds[p], row_bounds[p + 1]
            packed_gemm(Wp, w_off[p], r1 - r0, hT, Z[r0:r1], True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=21)
    ap.add_argument("--shapes", default=None, help="T,B,D,H;... (default: the standard grid)")
    args = ap.parse_args()
    shapes = parse_shapes(args.shapes) if args.shapes else GRID
    G = 4
    print("shape (T,B,D,H)      parts | BLAS ms  GF/s | packed ms  GF/s | speed-up")
    for T, B, D, H in shapes:
        rng = np.random.default_rng(0)
        parts = choose_plan(LSTMCell(D, H), np.float32, T, B, keep=True,
                            threads=threads.usable_threads()).parts
        rows = G * threads.unit_bounds(H, parts)
        W = rng.standard_normal((G * H, H)).astype(np.float32)
        hT = rng.standard_normal((H, B)).astype(np.float32)
        Z = np.zeros((G * H, B), dtype=np.float32)
        sizes = [packed_size(int(r1 - r0), H) for r0, r1 in zip(rows[:-1], rows[1:])]
        w_off = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        Wp = np.empty(sum(sizes), dtype=np.float32)
        order = np.arange(G * H)
        for p in range(parts):
            pack_rows(W, order, rows[p], rows[p + 1], Wp, w_off[p])
        blas, pk = [], []
        with threads.blas_single_threaded():
            blas_steps(W, hT, Z, T, rows)
            packed_steps(Wp, w_off, hT, Z, T, rows)
            for _ in range(args.rounds):
                t0 = time.perf_counter()
                blas_steps(W, hT, Z, T, rows)
                blas.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                packed_steps(Wp, w_off, hT, Z, T, rows)
                pk.append(time.perf_counter() - t0)
        flops = 2.0 * T * B * G * H * H
        b, k = min(blas), min(pk)
        print(f"{str((T, B, D, H)):20} {parts:5} | {b * 1e3:7.2f} {flops / b / 1e9:5.0f} | "
              f"{k * 1e3:9.2f} {flops / k / 1e9:5.0f} | {b / k:8.2f}")


if __name__ == "__main__":
    main()
