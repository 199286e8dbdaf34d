"""lstmkit sweep: trials on a local Ray (2 CPUs), records, resume, failures, errors."""

from __future__ import annotations

import json
import shutil
import sys
import threading

import pytest
from click.testing import CliRunner

from lstmkit.cli import main
from lstmkit.experiments import run_experiment
from lstmkit.experiments.ray_session import RaySession
from lstmkit.experiments.sweep import (
    INSTALL_HINT,
    SweepError,
    Trial,
    parse_grid,
    plan_sweep,
    prepare_sweep_dir,
    read_record,
    run_sweep,
)
from lstmkit.experiments.trial import limit_threads

ray = pytest.importorskip("ray")

SWEEP = ["sweep", "adding", "--tiny", "--seeds", "2", "--grid", "lr=0.01,0.001",
         "--set", "models=lstm", "--no-progress"]


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def finished_sweep(local_ray, tmp_path_factory):
    """A finished sweep of 4 trials: 2 learning rates x seeds 0, 1 (adding, tiny, LSTM only)."""
    out = tmp_path_factory.mktemp("sweep") / "adding"
    result = CliRunner().invoke(main, [*SWEEP, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "4 trials (2 settings x 2 seeds): 0 finished before, 4 to run" in result.output
    return out


def numbers(runs):
    """Every number of the runs but their wall time."""
    return [{k: v for k, v in run.items() if k != "seconds"} for run in runs]


def test_a_trial_equals_a_lone_run_with_the_same_seed_settings_and_threads(finished_sweep,
                                                                          tmp_path):
    args = ["experiment", "adding", "--tiny", "--seeds", "2", "--set", "lr=0.001",
            "--set", "models=lstm", "--no-progress"]
    result = CliRunner().invoke(main, [*args, "--threads", "1", "--out", str(tmp_path / "a")])
    assert result.exit_code == 0, result.output
    lone = json.loads((tmp_path / "a" / "results.json").read_text())
    result = CliRunner().invoke(main, [*args, "--parallel", "--out", str(tmp_path / "b")])
    assert result.exit_code == 0, result.output
    on_ray = json.loads((tmp_path / "b" / "results.json").read_text())
    assert numbers(on_ray["runs"]) == numbers(lone["runs"])
    assert on_ray["seeds"] == [0, 1] and (tmp_path / "b" / "results.md").exists()
    for seed in (0, 1):
        record = json.loads((finished_sweep / "trials" / "lr=0.001,models=lstm"
                             / f"seed-{seed}.json").read_text())
        assert record["status"] == "ok" and record["seed"] == seed and record["threads"] == 1
        assert record["settings"] == {"lr": "0.001", "models": "lstm"}
        assert record["host"] and record["seconds"] > 0
        mine = [run for run in lone["runs"] if run["seed"] == seed]
        assert numbers(record["runs"]) == numbers(mine)
    other = json.loads((finished_sweep / "trials" / "lr=0.01,models=lstm" / "seed-0.json")
                       .read_text())
    assert numbers(other["runs"]) != numbers([r for r in lone["runs"] if r["seed"] == 0])


@pytest.mark.parametrize("name", ["clipping", "forget-gate", "peepholes", "temporal-order",
                                  "variants"])
def test_every_experiments_trials_equal_its_lone_run(name, local_ray, tmp_path):
    run_sweep(name, tmp_path / "sweep", mode="tiny", seeds=2, show_progress=False)
    with limit_threads(1):
        run_experiment(name, mode="tiny", seeds=2, out=tmp_path / "lone", show_progress=False)
    lone = json.loads((tmp_path / "lone" / "results.json").read_text())
    lone_runs = lone.get("runs") or lone["explode_runs"] + lone["learn_runs"]
    for seed in (0, 1):
        record = json.loads((tmp_path / "sweep" / "trials" / "default" / f"seed-{seed}.json")
                            .read_text())
        mine = [run for run in lone_runs if run["seed"] == seed]
        assert sorted(map(json.dumps, numbers(record["runs"]))) == \
            sorted(map(json.dumps, numbers(mine)))


def test_summary_report_and_plots(finished_sweep):
    summary = json.loads((finished_sweep / "summary.json").read_text())
    assert summary["trials_total"] == 4 and summary["trials_ok"] == 4
    assert [g["slug"] for g in summary["groups"]] == ["lr=0.01,models=lstm",
                                                      "lr=0.001,models=lstm"]
    assert all(len(g["metrics"]["final_mse"]["values"]) == 2 for g in summary["groups"])
    markdown = (finished_sweep / "summary.md").read_text()
    assert "| settings | group | seeds | final_accuracy |" in markdown
    for name in ("box_plots.png", "learning_curves.png",
                 "reports/lr=0.001,models=lstm/results.md"):
        assert (finished_sweep / name).exists()


def test_rerun_skips_finished_trials_and_reruns_partial_ones(finished_sweep, tmp_path):
    out = tmp_path / "adding"
    shutil.copytree(finished_sweep, out)
    trials = out / "trials" / "lr=0.01,models=lstm"
    kept = json.loads((trials / "seed-0.json").read_text())
    kept["runs"][0]["final_mse"] = 123.0  # a finished record is read, never recomputed
    (trials / "seed-0.json").write_text(json.dumps(kept))
    good = (trials / "seed-1.json").read_text()
    (trials / "seed-1.json").write_text(good[: len(good) // 2])  # a partly written record
    (trials / ".seed-1.json.0123456789ab.tmp").write_text("{")  # a killed write's leftover
    result = CliRunner().invoke(main, [*SWEEP, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "4 trials (2 settings x 2 seeds): 3 finished before, 1 to run" in result.output
    assert json.loads((trials / "seed-0.json").read_text())["runs"][0]["final_mse"] == 123.0
    rerun = json.loads((trials / "seed-1.json").read_text())
    assert numbers(rerun["runs"]) == numbers(json.loads(good)["runs"])
    assert not (trials / ".seed-1.json.0123456789ab.tmp").exists()


def test_a_failing_trial_is_recorded_and_the_others_finish(local_ray, tmp_path):
    args = ["sweep", "adding", "--tiny", "--seeds", "1", "--grid", "models=lstm,gru",
            "--out", str(tmp_path), "--no-progress"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1
    assert "1 of 2 trials failed" in result.output
    failed = json.loads((tmp_path / "trials" / "models=gru" / "seed-0.json").read_text())
    assert failed["status"] == "error" and "unknown model 'gru'" in failed["error"]
    assert "Traceback" in failed["traceback"]
    ok = json.loads((tmp_path / "trials" / "models=lstm" / "seed-0.json").read_text())
    assert ok["status"] == "ok"
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["trials_ok"] == 1
    assert "unknown model 'gru'" in (tmp_path / "summary.md").read_text()
    again = CliRunner().invoke(main, args)  # a failed trial runs again; a finished one not
    assert "1 finished before, 1 to run" in again.output


def test_a_trial_whose_worker_dies_is_recorded_and_the_others_finish(local_ray, tmp_path,
                                                                    monkeypatch):
    from lstmkit.experiments import sweep

    real = sweep.run_trial

    def dies_on_seed_1(experiment, mode, settings, seed, index, threads):
        if seed == 1:
            import os

            os._exit(1)  # the worker process dies mid-trial
        return real(experiment, mode, settings, seed, index, threads)

    monkeypatch.setattr(sweep, "run_trial", dies_on_seed_1)
    result = CliRunner().invoke(main, ["sweep", "adding", "--tiny", "--seeds", "2",
                                       "--out", str(tmp_path), "--no-progress"])
    assert result.exit_code == 1 and "1 of 2 trials failed" in result.output
    died = json.loads((tmp_path / "trials" / "default" / "seed-1.json").read_text())
    assert died["status"] == "error" and "WorkerCrashedError" in died["error"]
    ok = json.loads((tmp_path / "trials" / "default" / "seed-0.json").read_text())
    assert ok["status"] == "ok"


def test_cpus_per_trial_is_the_trials_thread_count(local_ray, tmp_path):
    import numba

    result = CliRunner().invoke(main, ["sweep", "adding", "--tiny", "--out", str(tmp_path),
                                       "--cpus-per-trial", "2", "--no-progress"])
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "trials" / "default" / "seed-0.json").read_text())
    assert record["threads"] == min(2, numba.config.NUMBA_NUM_THREADS)


@pytest.mark.parametrize("item, message", [
    ("lr", "expects NAME=V1,V2"),
    ("=0.1,0.2", "expects NAME=V1,V2"),
    ("lr=", "none of them empty"),
    ("lr=0.1,,0.2", "none of them empty"),
    ("lr=0.1,0.1", "repeats a value"),
])
def test_grid_errors_say_what_was_expected(item, message):
    with pytest.raises(SweepError, match=message):
        parse_grid([item])


def test_grid_and_plan_errors():
    with pytest.raises(SweepError, match="names 'lr' twice"):
        parse_grid(["lr=0.1", "lr=0.2"])
    with pytest.raises(SweepError, match=r"unknown setting\(s\) \['lrr'\]"):
        plan_sweep("adding", "tiny", grid=["lrr=0.1,0.2"])
    with pytest.raises(SweepError, match="expected a float"):
        plan_sweep("adding", "tiny", grid=["lr=0.1,fast"])
    with pytest.raises(SweepError, match="both by --set and by --grid"):
        plan_sweep("adding", "tiny", grid=["lr=0.1,0.2"], fixed={"lr": "0.3"})
    with pytest.raises(SweepError, match="add a --grid"):
        plan_sweep("adding", "tiny", samples=2)
    with pytest.raises(SweepError, match="more settings than the grid's 2"):
        plan_sweep("adding", "tiny", grid=["lr=0.1,0.2"], samples=3)
    result = CliRunner().invoke(main, ["sweep", "adding", "--grid", "lr", "--out", "x"])
    assert result.exit_code == 2 and "expects NAME=V1,V2" in result.output


def test_plan_crosses_grids_and_seeds_and_samples_reproducibly():
    plan = plan_sweep("adding", "tiny", seeds=3, seed=5, grid=["lr=0.1,0.2", "T=5,6"])
    assert len(plan.trials) == 12 and plan.seeds == [5, 6, 7]
    assert plan.settings[0] == {"T": "5", "lr": "0.1"}
    assert [(t.seed, t.index) for t in plan.trials[:3]] == [(5, 0), (6, 1), (7, 2)]
    assert plan_sweep("adding", "tiny", grid=["lr=0.1,0.2"]).seeds == [0]  # the preset's 1
    grid = ["lr=0.1,0.2,0.3", "T=5,6,7"]
    one = plan_sweep("adding", "tiny", grid=grid, samples=4, seed=1).settings
    assert one == plan_sweep("adding", "tiny", grid=grid, samples=4, seed=1).settings
    assert len({tuple(sorted(s.items())) for s in one}) == 4
    assert one != plan_sweep("adding", "tiny", grid=grid, samples=4, seed=3).settings


def test_samples_draw_from_ranges_within_their_bounds():
    grid = ["lr=0.0001..0.1:log", "hidden=8..64", "T=5,6"]
    plan = plan_sweep("adding", "tiny", grid=grid, samples=20, seed=4)
    assert plan.settings == plan_sweep("adding", "tiny", grid=grid, samples=20, seed=4).settings
    assert len({tuple(s.items()) for s in plan.settings}) == 20
    lrs = [float(s["lr"]) for s in plan.settings]
    assert all(1e-4 <= lr <= 0.1 for lr in lrs) and min(lrs) < 1e-3 < max(lrs)  # log-uniform
    assert all(8 <= int(s["hidden"]) <= 64 for s in plan.settings)  # whole numbers
    assert {s["T"] for s in plan.settings} == {"5", "6"}
    assert parse_grid(["x=1..2"])["x"].integer and not parse_grid(["x=1.0..2"])["x"].integer


@pytest.mark.parametrize("grid, samples, message", [
    (["lr=0.1..0.01"], 2, "needs LOW < HIGH"),
    (["lr=0..0.1:log"], 2, "log range needs LOW > 0"),
    (["lr=a..b"], 2, "two numbers"),
    (["lr=0.01..0.1"], None, "add --samples N"),
    (["T=5..6"], 3, "only 2 distinct settings"),
])
def test_range_errors(grid, samples, message):
    with pytest.raises(SweepError, match=message):
        plan_sweep("adding", "tiny", grid=grid, samples=samples)


def test_a_folder_of_another_sweep_or_of_other_files_is_refused(tmp_path):
    prepare_sweep_dir(tmp_path / "a", "adding", "tiny")
    with pytest.raises(SweepError, match="holds a sweep of 'adding'"):
        prepare_sweep_dir(tmp_path / "a", "variants", "tiny")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "notes.txt").write_text("mine")
    with pytest.raises(SweepError, match="already holds files"):
        prepare_sweep_dir(tmp_path / "b", "adding", "tiny")
    trial = Trial({"lr": "0.1"}, 0, 0)
    path = trial.path(tmp_path / "a")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"experiment": "adding", "mode": "tiny", "settings": {},
                                "seed": 0, "index": 0, "status": "ok", "runs": []}))
    with pytest.raises(SweepError, match="holds the record of another trial"):
        read_record(path, "adding", "tiny", trial)


def test_without_ray_the_command_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    result = CliRunner().invoke(main, ["sweep", "adding", "--tiny", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert INSTALL_HINT.split(";")[0] in result.output
    assert 'pip install "lstmkit[sweep]"' in result.output


def test_address_is_passed_to_ray_init(tmp_path, monkeypatch):
    calls = []

    def init(**kwargs):
        calls.append(kwargs)
        raise ConnectionError("no Ray cluster there")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", init)
    result = CliRunner().invoke(main, ["sweep", "adding", "--tiny", "--out", str(tmp_path),
                                       "--address", "10.0.0.1:6379"])
    assert calls and calls[0]["address"] == "10.0.0.1:6379"
    assert result.exit_code == 2
    assert "could not join the Ray cluster at '10.0.0.1:6379'" in result.output


def test_limit_threads_sets_and_restores_the_kernels_threads():
    import numba

    before = numba.get_num_threads()
    with limit_threads(1) as used:
        assert used == 1 and numba.get_num_threads() == 1
    assert numba.get_num_threads() == before
    with limit_threads(None) as used:
        assert used is None and numba.get_num_threads() == before
    with pytest.raises(ValueError, match="threads must be >= 1"), limit_threads(0):
        pass


class FakeRay:
    """``ray.init`` / ``ray.shutdown`` recorded; a shutdown outside the main thread waits
    until ``release`` is set (one in the main thread returns at once, recorded as such)."""

    def __init__(self, initialised: bool = False) -> None:
        self.initialised = initialised
        self.calls: list[tuple] = []
        self.release = threading.Event()

    def is_initialized(self) -> bool:
        return self.initialised

    def init(self, **options) -> None:
        self.calls.append(("init", options))
        self.initialised = True

    def shutdown(self) -> None:
        in_main = threading.current_thread() is threading.main_thread()
        self.calls.append(("shutdown", "main thread" if in_main else "background"))
        if not in_main:
            self.release.wait()
        self.calls.append(("stopped",))
        self.initialised = False


def test_a_session_stops_ray_in_the_background_and_close_waits_for_it():
    fake = FakeRay()
    session = RaySession(fake, address=None, num_cpus=2)
    assert session.owned and fake.calls == [("init", {"address": None, "num_cpus": 2})]
    session.stop_in_background()
    session.stop_in_background()  # once only
    assert ("stopped",) not in fake.calls  # returned while ray.shutdown still runs
    fake.release.set()
    session.close()
    assert fake.calls[1:] == [("shutdown", "background"), ("stopped",)]


def test_a_session_without_a_background_stop_stops_ray_in_close():
    fake = FakeRay()
    session = RaySession(fake)
    session.close()
    assert fake.calls == [("init", {}), ("shutdown", "main thread"), ("stopped",)]


def test_a_session_leaves_a_ray_it_did_not_start_running():
    fake = FakeRay(initialised=True)
    session = RaySession(fake, address="auto")
    session.stop_in_background()
    session.close()
    assert not session.owned and fake.calls == [] and fake.initialised


def test_ray_stops_while_the_summaries_are_written(local_ray, tmp_path, monkeypatch):
    from lstmkit.experiments import sweep

    fake = FakeRay()  # stands for the Ray the sweep starts; its tasks run on local_ray
    for name in ("is_initialized", "init", "shutdown"):
        monkeypatch.setattr(ray, name, getattr(fake, name))
    real = sweep.summarize

    def summarize(*args):
        fake.calls.append(("summarize",))
        try:
            return real(*args)
        finally:
            fake.release.set()  # the background shutdown may end now

    monkeypatch.setattr(sweep, "summarize", summarize)
    result = run_sweep("adding", tmp_path, mode="tiny", seeds=2, show_progress=False)
    assert result.ran == 2 and (tmp_path / "summary.json").exists()
    assert fake.calls[0][0] == "init"
    assert sorted(fake.calls[1:3]) == [("shutdown", "background"), ("summarize",)]
    assert fake.calls[3:] == [("stopped",)]  # and run_sweep returned only once Ray had stopped
