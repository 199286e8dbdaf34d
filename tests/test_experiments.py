"""Every experiment runs end to end on tiny sizes and writes its results folder."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from lstmkit.cli import main
from lstmkit.experiments import EXPERIMENTS, run_experiment
from lstmkit.experiments.common import (
    bce_with_logits,
    markdown_table,
    pick_config,
    prepare_out_dir,
)

EXPECTED_KEYS = {
    "adding": {"runs", "summary", "paper"},
    "clipping": {"explode_runs", "learn_runs", "paper"},
    "forget-gate": {"runs", "checks", "paper"},
    "peepholes": {"runs", "paper"},
    "temporal-order": {"runs", "summary", "paper"},
    "variants": {"runs", "ranking", "paper"},
}


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_tiny_run_writes_results(name, tmp_path):
    result = run_experiment(name, mode="tiny", out=tmp_path / name, show_progress=False)
    assert result.out_dir == tmp_path / name
    data = json.loads((result.out_dir / "results.json").read_text())
    assert {"experiment", "config", "seeds", "mode", "plots"} | EXPECTED_KEYS[name] <= set(data)
    assert data["experiment"] == name and data["mode"] == "tiny"
    markdown = (result.out_dir / "results.md").read_text()
    assert result.table in markdown
    header = result.table.splitlines()[0]
    assert header.startswith("| ") and result.table.splitlines()[1].startswith("|---")
    # every row of the table has as many cells as the header (no stray '|' in a cell)
    widths = {line.count("|") for line in result.table.splitlines()}
    assert len(widths) == 1
    assert result.plots
    for plot in result.plots:
        assert plot.exists() and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert plot.name in data["plots"]


def test_runs_are_deterministic(tmp_path):
    first = run_experiment("clipping", mode="tiny", out=tmp_path / "a", show_progress=False)
    second = run_experiment("clipping", mode="tiny", out=tmp_path / "b", show_progress=False)
    norms = [r["grad_norms"] for r in first.data["explode_runs"]]
    assert norms == [r["grad_norms"] for r in second.data["explode_runs"]]


def test_existing_results_are_never_overwritten(tmp_path):
    out = tmp_path / "adding"
    first = run_experiment("adding", mode="tiny", out=out, show_progress=False)
    before = (out / "results.json").read_text()
    second = run_experiment("adding", mode="tiny", out=out, show_progress=False)
    assert second.out_dir.parent == out and second.out_dir != first.out_dir
    assert (out / "results.json").read_text() == before
    third = run_experiment("adding", mode="tiny", out=out, force=True, show_progress=False)
    assert third.out_dir == out


def test_seeds_and_overrides(tmp_path):
    result = run_experiment("adding", mode="tiny", seeds=2, seed=5, out=tmp_path,
                            show_progress=False, models=("lstm",), budget="16")
    assert result.data["seeds"] == [5, 6]
    assert [r["seed"] for r in result.data["runs"]] == [5, 6]
    assert all(r["sequences"] == 16 for r in result.data["runs"])


def test_unknown_setting_is_refused():
    from lstmkit.experiments.adding import PRESETS

    with pytest.raises(ValueError, match="unknown setting"):
        pick_config(PRESETS, "tiny", {"budgte": 3})
    with pytest.raises(ValueError, match="expected a int"):
        pick_config(PRESETS, "tiny", {"budget": "many"})


def test_prepare_out_dir_refuses_a_file(tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(FileExistsError):
        prepare_out_dir("adding", target)


def test_markdown_table():
    assert markdown_table(["a", "b"], [[1, 2]]) == "| a | b |\n|---|---|\n| 1 | 2 |"


def test_bce_with_logits_matches_finite_differences():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((3, 2, 4))
    y = (rng.random((3, 2, 4)) < 0.5).astype(np.float64)
    mask = np.array([1, 1, 0], dtype=bool)[:, None, None]
    loss, grad = bce_with_logits(z, y, mask)
    eps = 1e-6
    k = (1, 0, 2)
    zp, zm = z.copy(), z.copy()
    zp[k] += eps
    zm[k] -= eps
    numeric = (bce_with_logits(zp, y, mask)[0] - bce_with_logits(zm, y, mask)[0]) / (2 * eps)
    assert grad[k] == pytest.approx(numeric, rel=1e-5)
    assert np.all(grad[2] == 0)
    p = 1 / (1 + np.exp(-z[:2]))
    expected = -np.mean(y[:2] * np.log(p) + (1 - y[:2]) * np.log(1 - p))
    assert loss == pytest.approx(expected)


def test_unclipped_rnn_diverges_and_clipped_stays_finite():
    """The clipping experiment's claim on its own settings, for 30 updates of one seed."""
    from lstmkit.experiments import clipping

    config = clipping.PRESETS["full"]
    test = clipping.pascanu_adding(np.random.default_rng(50), 20, config.T)
    unclipped = clipping.train_one(config, config.radius, False, 30, 0, test)
    clipped = clipping.train_one(config, config.radius, True, 30, 0, test)
    assert unclipped["diverged_at"] is not None and unclipped["diverged_at"] <= 30
    assert clipped["diverged_at"] is None
    assert max(clipped["grad_norms"]) > config.max_norm  # clipping did act


def test_cli_runs_an_experiment(tmp_path):
    out = tmp_path / "peep"
    result = CliRunner().invoke(main, ["experiment", "peepholes", "--tiny", "--out", str(out),
                                       "--no-progress", "--seeds", "1",
                                       "--set", "tasks=spike:3:4"])
    assert result.exit_code == 0, result.output
    assert "| spike delay D = 3 (4 updates) | peepholes |" in result.output
    assert (out / "results.md").exists()
    assert json.loads((out / "results.json").read_text())["seeds"] == [0]


def test_cli_rejects_bad_settings(tmp_path):
    result = CliRunner().invoke(main, ["experiment", "adding", "--tiny", "--out",
                                       str(tmp_path), "--set", "nonsense"])
    assert result.exit_code != 0
    assert "NAME=VALUE" in result.output


def test_carousel_gradient_carries_errors_back_only_through_c(tmp_path):
    """The paper's truncation: dL/dh_{t-1} gets nothing through W_hh, dL/dc flows on; the
    weights of the last step get the same gradient as with full BPTT."""
    import lstmkit
    from lstmkit.experiments.forget_gate import CarouselGradient

    x = np.random.default_rng(0).standard_normal((6, 2, 3))
    d_out = np.zeros((6, 2, 4))
    d_out[-1] = 1.0
    full = lstmkit.LSTM(3, 4, forget_gate=False, dtype="float64", seed=0, fast=False)
    cut = lstmkit.LSTM(3, 4, forget_gate=False, dtype="float64", seed=0, fast=False)
    cut.recurrence = CarouselGradient()
    full(x)
    cut(x)
    dx_full, _ = full.backward(d_out)
    dx_cut, (dh0, dc0) = cut.backward(d_out)
    assert np.all(dh0 == 0) and np.abs(dc0).max() > 1e-3
    np.testing.assert_allclose(dx_cut[-1], dx_full[-1], rtol=1e-12)
    assert not np.allclose(dx_cut[:-1], dx_full[:-1])
    result = run_experiment("forget-gate", mode="tiny", out=tmp_path, show_progress=False,
                            gradient="carousel")
    assert "errors back in time only through c" in (tmp_path / "results.md").read_text()
    with pytest.raises(ValueError, match="gradient must be"):
        run_experiment("forget-gate", mode="tiny", out=tmp_path / "x", show_progress=False,
                       gradient="sideways")
    assert result.data["config"].gradient == "carousel"


def test_variants_compare_each_with_vanilla_by_welchs_t_test():
    from lstmkit.experiments.variants import _versus_vanilla

    assert _versus_vanilla([0.1, 0.2, 0.15], [0.8, 0.9, 0.85]).endswith("(worse)")
    assert _versus_vanilla([0.8, 0.9, 0.85], [0.1, 0.2, 0.15]).endswith("(better)")
    assert _versus_vanilla([0.9, 0.8, 0.85], [0.8, 0.9, 0.84]) == "0.94"
    assert _versus_vanilla([0.5], [0.4, 0.3]) == "-"  # one seed: no test
    assert _versus_vanilla([1.0, 1.0], [1.0, 1.0]) == "-"  # no spread: no p-value
