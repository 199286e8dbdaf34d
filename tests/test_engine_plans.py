"""The engine's one seam: how a plan is chosen, recorded, pinned, and that it does not depend
on the machine's load. (That every plan equals the reference: tests/test_kernels.py.)"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest

import lstmkit
from lstmkit.cells import GRUCell, LSTMCell, RNNCell
from lstmkit.engine import Plan, candidate_plans, choose_plan, fused_supports, plan
from lstmkit.engine.plan import Thresholds

CELLS = [LSTMCell(6, 16), LSTMCell(6, 16, peepholes=True, coupled_input_forget=True),
         LSTMCell(6, 130, forget_gate=False), GRUCell(6, 16), RNNCell(6, 16, nonlinearity="relu")]


def _shape(p: Plan) -> tuple:
    return p.kernel, p.parts, p.projection, p.backward_panels, p.blas_products


@pytest.mark.parametrize("cell", CELLS, ids=lambda c: type(c).__name__)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_chosen_plan_is_among_the_candidates(cell, dtype):
    """The exactness tests enumerate ``candidate_plans``: whatever the chooser returns, for any
    batch, thread count, gradients or not, folding or not, thresholds, is one of them."""
    th_all = [Thresholds(), Thresholds(parallel_min_flops=0.0, direct_max_floats=0,
                                       backward_panels_min_gh=1, backward_panels_min_b=1),
              Thresholds(blas_products_min_b=2)]
    for T, B, threads, keep, fold, th in np.ndindex(3, 4, 3, 2, 2, 3):
        T, B = (1, 7, 40)[T], (1, 2, 16, 64)[B]
        V = 5 if fold else None
        chosen = choose_plan(cell, dtype, T, B, keep=bool(keep), threads=threads + 1,
                             fold_rows=V, thresholds=th_all[th])
        plans = candidate_plans(cell, dtype, T, B, keep=bool(keep), fold_rows=V)
        assert _shape(chosen) in {_shape(p) for p in plans}, (chosen, T, B, threads, keep)
        plan.check_plan(chosen, cell, dtype, T, B, V)


def test_the_plan_follows_shape_dtype_and_threads_only():
    cell = LSTMCell(64, 256)
    big = choose_plan(cell, np.float32, 50, 64, keep=True, threads=2, thresholds=Thresholds())
    assert big == Plan("batch-inner", 2, "direct", True, big.chunk_steps)
    # where BLAS's products win (from 64 sequences with 16-float kernels): the panel projection
    blas = choose_plan(cell, np.float32, 50, 64, keep=True, threads=2,
                       thresholds=Thresholds(blas_products_min_b=64))
    assert blas == Plan("batch-inner", 2, "panel", False, big.chunk_steps, blas_products=True)
    assert choose_plan(cell, np.float32, 50, 32, keep=True, threads=2,
                       thresholds=Thresholds(blas_products_min_b=64)).blas_products is False
    assert choose_plan(cell, np.float32, 50, 64, keep=True, threads=1).parts == 1
    assert choose_plan(cell, np.float64, 50, 64, keep=True, threads=2).kernel == "rows"
    assert choose_plan(cell, np.float32, 50, 64, keep=True, threads=2, enabled=False) == Plan()
    assert choose_plan(GRUCell(4, 8), np.float32, 5, 2, keep=False, threads=2) == Plan(
        "rows", chunk_steps=0)  # all 5 steps fit one chunk
    assert choose_plan(cell, np.float32, 50, 64, keep=True, threads=2, fold_rows=70,
                       ).projection == "folded"
    assert choose_plan(cell, np.float32, 1, 2, keep=True, threads=2, fold_rows=70,
                       ).projection != "folded"  # V >= T * B: the table does not pay


def test_a_switch_no_kernel_implements_runs_on_the_reference(monkeypatch):
    """The fallback is decided from every switch of the cell, not only its type."""
    assert fused_supports(LSTMCell(3, 4, peepholes=True), np.float32)
    without = {LSTMCell: plan._FUSED_SWITCHES[LSTMCell] - {"peepholes"},
               GRUCell: plan._FUSED_SWITCHES[GRUCell], RNNCell: plan._FUSED_SWITCHES[RNNCell]}
    monkeypatch.setattr(plan, "_FUSED_SWITCHES", without)
    assert not fused_supports(LSTMCell(3, 4, peepholes=True), np.float32)
    assert fused_supports(LSTMCell(3, 4), np.float32)  # the switch at its default
    layer = lstmkit.LSTM(3, 4, peepholes=True, seed=0)
    layer(np.zeros((2, 3, 3), np.float32))
    assert layer.last_plans == {"l0": Plan("reference")}
    assert candidate_plans(LSTMCell(3, 4, peepholes=True), np.float32, 2, 3,
                           keep=True) == [Plan("reference")]
    assert not fused_supports(LSTMCell(3, 4), np.float16)


def test_the_layer_records_and_pins_its_plans():
    x = np.random.default_rng(0).standard_normal((5, 4, 3)).astype(np.float32)
    layer = lstmkit.LSTM(3, 8, num_layers=2, bidirectional=True, seed=0)
    out, _ = layer(x)
    assert set(layer.last_plans) == {"l0", "l0_reverse", "l1", "l1_reverse"}
    assert layer.last_plans["l0"].kernel == "batch-inner"
    layer.pin_plan("reference")
    out_ref, _ = layer(x)
    assert set(layer.last_plans.values()) == {Plan("reference")}
    np.testing.assert_allclose(out, out_ref, rtol=1e-5, atol=1e-6)
    layer.pin_plan({"kernel": "rows", "projection": "panel"})
    layer(x)
    assert {p.kernel for p in layer.last_plans.values()} == {"rows"}
    layer.pin_plan(Plan("batch-inner", 3, "panel", True, 2))
    layer(x)
    assert set(layer.last_plans.values()) == {Plan("batch-inner", 3, "panel", True, 2)}
    layer.pin_plan(None)
    layer(x)
    assert layer.last_plans["l0"].kernel == "batch-inner"


def test_a_pinned_plan_that_cannot_run_says_why():
    gru = lstmkit.GRU(3, 4, seed=0)
    gru.pin_plan({"kernel": "batch-inner"})
    with pytest.raises(ValueError, match="batch-inner kernels are the float32 LSTM's"):
        gru(np.zeros((2, 1, 3), np.float32))
    lstm = lstmkit.LSTM(3, 4, dtype="float64", seed=0)
    lstm.pin_plan({"kernel": "batch-inner"})
    with pytest.raises(ValueError, match="float32 LSTM"):
        lstm(np.zeros((2, 2, 3)))
    lstm = lstmkit.LSTM(3, 4, seed=0)
    lstm.pin_plan({"parts": 9})
    with pytest.raises(ValueError, match="parts must be at most hidden_size = 4"):
        lstm(np.zeros((2, 2, 3), np.float32))
    lstm.pin_plan({"projection": "folded"})
    with pytest.raises(ValueError, match="rows_of"):
        lstm(np.zeros((2, 2, 3), np.float32))
    lstm.pin_plan({"kernel": "batch-inner", "projection": "direct", "blas_products": True})
    with pytest.raises(ValueError, match="blas_products runs with the panel projection"):
        lstm(np.zeros((2, 2, 3), np.float32))
    lstm.pin_plan({"kernel": "rows", "blas_products": True})
    with pytest.raises(ValueError, match="the row kernels always call BLAS"):
        lstm(np.zeros((2, 2, 3), np.float32))
    with pytest.raises(ValueError, match="unknown plan field"):
        lstm.pin_plan({"threads": 2})
        lstm(np.zeros((2, 2, 3), np.float32))
    with pytest.raises(TypeError, match="plan must be"):
        lstm.pin_plan(3)
    with pytest.raises(ValueError, match="'reference'"):
        lstm.pin_plan("fast")


def test_calibrated_thresholds_are_read_once_per_cpu_model(tmp_path, monkeypatch):
    monkeypatch.setenv("LSTMKIT_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(plan, "_loaded", [])
    assert plan.load_thresholds() == plan.host_thresholds()
    monkeypatch.setattr(plan, "_loaded", [])
    path = plan.calibration_path()
    assert path.startswith(str(tmp_path))
    with open(path, "w") as f:
        json.dump({"cpu": plan.cpu_model(), "thresholds": {"direct_max_floats": 7,
                                                             "not_a_threshold": 1}}, f)
    th = plan.load_thresholds()
    assert th == dataclasses.replace(plan.host_thresholds(), direct_max_floats=7)
    assert choose_plan(LSTMCell(16, 64), np.float32, 10, 16, keep=True, threads=1,
                       thresholds=th).projection == "panel"


_BUSY = "import time\nend = time.time() + 60\nwhile time.time() < end: pass\n"

_RUN = r"""
import hashlib, sys, numpy as np, numba, lstmkit
numba.set_num_threads(2)
rng = np.random.default_rng(0)
layer = lstmkit.LSTM(32, 128, seed=0)
x = rng.standard_normal((20, 16, 32)).astype(np.float32)
digest = hashlib.sha256()
for _ in range(3):
    out, (h, c) = layer(x)
    dx, _ = layer.backward(np.tanh(out))
    for a in (out, h, c, dx, *layer.grads.values()):
        digest.update(np.ascontiguousarray(a).tobytes())
print(layer.last_plans["l0"].parts, digest.hexdigest())
"""


def test_results_do_not_depend_on_the_machines_load():
    """The same inputs and thread count give the same bits on a quiet machine and while two
    other processes keep both cores busy (the split of a step is the plan's, not the load's)."""
    quiet = subprocess.run([sys.executable, "-c", _RUN], capture_output=True, text=True,
                           check=True, timeout=600).stdout.split()
    busy = [subprocess.Popen([sys.executable, "-c", _BUSY]) for _ in range(2)]
    try:
        loaded = subprocess.run([sys.executable, "-c", _RUN], capture_output=True, text=True,
                                check=True, timeout=600).stdout.split()
    finally:
        for process in busy:
            process.kill()
            process.wait()
    assert quiet[0] == "2"  # the step really is split over two threads
    assert loaded == quiet


def test_bench_calibrate_writes_thresholds_the_chooser_reads(tmp_path, monkeypatch):
    """``lstmkit bench --calibrate`` times the alternatives (pinned plans) and caches the
    thresholds for this CPU model; the next process's ``load_thresholds`` returns them."""
    from click.testing import CliRunner

    from lstmkit.cli import main

    monkeypatch.setenv("LSTMKIT_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(plan, "_loaded", [])
    result = CliRunner().invoke(main, ["bench", "--calibrate", "--quick", "--reps", "1",
                                       "--json", str(tmp_path / "record.json")])
    assert result.exit_code == 0, result.output
    record = json.loads(open(plan.calibration_path()).read())
    assert record["cpu"] == plan.cpu_model()
    assert [m["D"] for m in record["measured"]["direct"]] == [64, 256]
    assert all(m["direct_over_panel"] > 0 for m in record["measured"]["direct"])
    assert [m["B"] for m in record["measured"]["blas_products"]] == [32, 128]
    assert all(m["blas_over_packed"] > 0 for m in record["measured"]["blas_products"])
    assert json.loads((tmp_path / "record.json").read_text())["thresholds"] == record[
        "thresholds"]
    monkeypatch.setattr(plan, "_loaded", [])  # as in the next process
    assert dataclasses.asdict(plan.load_thresholds()) == record["thresholds"]
    assert "written to" in result.output
