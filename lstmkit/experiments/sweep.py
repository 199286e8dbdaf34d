"""Sweeps: an experiment's trials (seeds crossed with settings) run as Ray tasks.

A trial is one seed of one experiment with one settings dict (:mod:`lstmkit.experiments.trial`).
Ray runs each as a task of ``cpus_per_trial`` CPUs, with as many threads, on this machine's
cores or on a cluster whose address is given; the results folder is written here::

    DIR/
        sweep.json                      the experiment and mode this folder holds
        trials/SETTINGS/seed-S.json     one record per trial, written atomically as it finishes
        reports/SETTINGS/               the experiment's own results.md, results.json and plots,
                                        over the seeds of one settings dict
        summary.json, summary.md        every trial's status and the numbers the experiment's
                                        ``MEASURES`` name, mean ± std per settings and group
        box_plots.png, learning_curves.png

SETTINGS names the trial's settings ("hidden=8,lr=0.01"), "default" when there are none.
Running the same sweep again skips the trials whose record is there and "ok": a killed sweep
resumes, losing only the trials that were running. Failed, missing and unreadable (partly
written) records run again. The reports and summaries are rewritten from the records each time.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import random
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from lstmkit.experiments import MODULES, TITLES
from lstmkit.experiments.common import (
    Measures,
    PathLike,
    from_jsonable,
    markdown_table,
    mean_std,
    new_figure,
    prepare_out_dir,
    progress_bar,
    save_figure,
    seed_list,
    to_jsonable,
)
from lstmkit.experiments.ray_session import RaySession
from lstmkit.experiments.trial import run_trial
from lstmkit.io import _dump_json, _remove_leftovers, _write_atomic

INSTALL_HINT = ('lstmkit sweep runs its trials on Ray, which is not installed here; install it '
                'with: pip install "lstmkit[sweep]"')
MANIFEST = "sweep.json"
SLUG_LENGTH = 80
_LEFTOVER = re.compile(r"^\..+\.[0-9a-f]{12}\.tmp$")  # lstmkit.io's temporary names


class SweepError(ValueError):
    """A sweep that cannot run as asked; the message says what was given and what to do."""


# -- what to run ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Range:
    """Values to draw from at random (``--grid KEY=LOW..HIGH`` with ``--samples``): uniform
    between ``low`` and ``high``, or log-uniform (``LOW..HIGH:log``); whole numbers if both
    ends are."""

    low: float
    high: float
    log: bool = False
    integer: bool = False

    def draw(self, rng: random.Random) -> str:
        """One value, as the command line would give it (floats to 4 significant digits)."""
        if self.log:
            value = math.exp(rng.uniform(math.log(self.low), math.log(self.high)))
        else:
            value = rng.uniform(self.low, self.high)
        return str(round(value)) if self.integer else f"{value:.4g}"


_RANGE = re.compile(r"^(?P<low>[^,]+?)\.\.(?P<high>[^,:]+)(?P<log>:log)?$")


def _parse_range(item: str, key: str, match: re.Match[str]) -> Range:
    try:
        low, high = float(match["low"]), float(match["high"])
    except ValueError:
        raise SweepError(f"--grid {item!r}: a range is LOW..HIGH (or LOW..HIGH:log) of two "
                         f"numbers, e.g. {key}=0.0001..0.1:log") from None
    if not low < high:
        raise SweepError(f"--grid {item!r}: a range needs LOW < HIGH")
    if match["log"] and low <= 0:
        raise SweepError(f"--grid {item!r}: a log range needs LOW > 0")
    integer = all(re.fullmatch(r"[+-]?\d+", match[end]) for end in ("low", "high"))
    return Range(low, high, bool(match["log"]), integer)


def parse_grid(items: Sequence[str]) -> dict[str, list[str] | Range]:
    """``["lr=0.01,0.001", "hidden=8..64"]`` -> ``{"lr": ["0.01", "0.001"], "hidden":
    Range(8, 64, integer=True)}``.

    Listed values stay strings; the experiment converts them to its settings' types. A range
    (``LOW..HIGH``, ``LOW..HIGH:log``) can only be sampled (``--samples``).
    """
    grid: dict[str, list[str] | Range] = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise SweepError(f"--grid expects NAME=V1,V2,... or NAME=LOW..HIGH (e.g. "
                             f"lr=0.01,0.001), got {item!r}")
        if key in grid:
            raise SweepError(f"--grid names {key!r} twice; give all its values in one "
                             f"--grid {key}=V1,V2,...")
        match = _RANGE.match(values.strip())
        if match:
            grid[key] = _parse_range(item, key, match)
            continue
        choices = [value.strip() for value in values.split(",")]
        if any(not value for value in choices):
            raise SweepError(f"--grid {item!r}: expected values separated by commas after "
                             f"'{key}=', none of them empty (e.g. {key}=V1,V2)")
        if len(set(choices)) != len(choices):
            raise SweepError(f"--grid {item!r} repeats a value")
        grid[key] = choices
    return grid


def grid_settings(grid: Mapping[str, list[str] | Range]) -> list[dict[str, str]]:
    """Every combination of the grid's values (keys sorted), one settings dict each."""
    ranges = sorted(k for k, v in grid.items() if isinstance(v, Range))
    if ranges:
        raise SweepError(f"--grid {ranges[0]}=LOW..HIGH is a range, whose values can only be "
                         "drawn at random: add --samples N")
    keys = sorted(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


def sample_settings(grid: Mapping[str, list[str] | Range], samples: int,
                    seed: int) -> list[dict[str, str]]:
    """``samples`` distinct settings drawn at random (reproducibly from ``seed``): with listed
    values only, combinations of the grid in grid order; with ranges, each key's value drawn
    on its own (a listed one uniformly), in the order drawn."""
    rng = random.Random(seed)
    if not any(isinstance(v, Range) for v in grid.values()):
        combos = grid_settings(grid)
        if samples > len(combos):
            raise SweepError(f"--samples {samples} asks for more settings than the grid's "
                             f"{len(combos)} combinations; give fewer samples or more values")
        return [combos[k] for k in sorted(rng.sample(range(len(combos)), samples))]
    drawn: dict[tuple[tuple[str, str], ...], dict[str, str]] = {}
    for _ in range(100 * samples):
        settings = {k: _draw(grid[k], rng) for k in sorted(grid)}
        drawn.setdefault(tuple(settings.items()), settings)
        if len(drawn) == samples:
            return list(drawn.values())
    raise SweepError(f"--samples {samples}: only {len(drawn)} distinct settings could be "
                     "drawn from the grid; give fewer samples or wider ranges")


def _draw(values: list[str] | Range, rng: random.Random) -> str:
    return values.draw(rng) if isinstance(values, Range) else rng.choice(values)


def settings_slug(settings: Mapping[str, Any]) -> str:
    """A folder name for a settings dict: "hidden=8,lr=0.01" ("default" for none); long ones
    end in a hash of the whole."""
    if not settings:
        return "default"
    text = ",".join(f"{k}={settings[k]}" for k in sorted(settings))
    slug = re.sub(r"[^\w.,=+-]", "_", text)
    if len(slug) > SLUG_LENGTH or slug != text:
        digest = hashlib.sha1(text.encode()).hexdigest()[:10]
        slug = f"{slug[: SLUG_LENGTH - 11]}-{digest}"
    return slug


@dataclass(frozen=True, eq=False)
class Trial:
    """One seed of the experiment with one settings dict; ``index``: the seed's place among
    the sweep's seeds. Each trial of a plan is its own object (hashed by identity)."""

    settings: dict[str, str]
    seed: int
    index: int

    @property
    def slug(self) -> str:
        return settings_slug(self.settings)

    def path(self, out: Path) -> Path:
        return out / "trials" / self.slug / f"seed-{self.seed}.json"


@dataclass
class SweepPlan:
    """The trials of a sweep, and how they were chosen."""

    experiment: str
    mode: str
    seeds: list[int]
    settings: list[dict[str, str]]
    trials: list[Trial] = field(default_factory=list)


def plan_sweep(experiment: str, mode: str = "full", seeds: int | None = None, seed: int = 0,
               grid: Sequence[str] = (), samples: int | None = None,
               fixed: Mapping[str, str] | None = None) -> SweepPlan:
    """The trials of a sweep: every settings dict (the grid's combinations, or ``samples`` of
    them at random, each with the ``fixed`` settings) crossed with ``seeds`` seeds from
    ``seed`` (default: the experiment's own number of seeds). Every settings dict is checked
    by the experiment first, so a typo fails here, before anything runs."""
    if experiment not in MODULES:
        raise SweepError(f"unknown experiment {experiment!r}; choose among {sorted(MODULES)}")
    module = MODULES[experiment]
    fixed = dict(fixed or {})
    parsed = parse_grid(grid)
    both = sorted(set(parsed) & set(fixed))
    if both:
        raise SweepError(f"{both} given both by --set and by --grid; keep one")
    if samples is not None:
        if not parsed:
            raise SweepError("--samples draws settings from the grid's values; add a --grid")
        combos = sample_settings(parsed, samples, seed)
    else:
        combos = grid_settings(parsed)
    settings = [{**fixed, **combo} for combo in combos]
    configs = []
    for each in settings:
        try:
            configs.append(module.configure(mode, dict(each)))
        except ValueError as error:
            where = f" (settings {settings_slug(each)})" if each else ""
            raise SweepError(f"{experiment}{where}: {error}") from error
    run_seeds = seed_list(seed, seeds if seeds is not None else configs[0].seeds)
    trials = [Trial(each, s, k) for each in settings for k, s in enumerate(run_seeds)]
    return SweepPlan(experiment, mode, run_seeds, settings, trials)


# -- records on disk -----------------------------------------------------------------------------


def prepare_sweep_dir(out: PathLike, experiment: str, mode: str) -> Path:
    """The sweep's folder, created, holding this sweep (``sweep.json``) and no other files.

    A folder that holds another sweep or files of its own is refused, so nothing in it is
    written over.
    """
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise SweepError(f"--out {path} exists and is not a folder")
    manifest = path / MANIFEST
    wanted = {"format": "lstmkit-sweep", "experiment": experiment, "mode": mode}
    if manifest.exists():
        try:
            held = json.loads(manifest.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise SweepError(f"{manifest} cannot be read ({error}); use another --out") from None
        if {k: held.get(k) for k in wanted} != wanted:
            raise SweepError(f"--out {path} holds a sweep of {held.get('experiment')!r} "
                             f"({held.get('mode')} mode), not of {experiment!r} ({mode} mode); "
                             "use another --out")
    elif path.exists() and any(path.iterdir()):
        raise SweepError(f"--out {path} already holds files and is not a sweep's folder; "
                         "use a new or empty folder")
    path.mkdir(parents=True, exist_ok=True)
    if not manifest.exists():
        _write_atomic(manifest, _dump_json(wanted))
    return path


def read_record(path: Path, experiment: str, mode: str, trial: Trial) -> dict[str, Any] | None:
    """The finished record of ``trial`` at ``path``, or None when the trial must run: no file,
    an unreadable or partly written one, or a failed trial. A record of another trial there
    is an error (nothing is written over it)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):  # missing, or partly written
        return None
    identity = {"experiment": experiment, "mode": mode, "settings": trial.settings,
                "seed": trial.seed, "index": trial.index}
    if not isinstance(record, dict) or not set(identity) <= set(record):
        return None
    held = {k: record[k] for k in identity}
    if held != identity:
        raise SweepError(f"{path} holds the record of another trial ({held}), not of {identity}; "
                         "use another --out, or remove the file to run the trial again")
    if record.get("status") != "ok" or not isinstance(record.get("runs"), list):
        return None
    return record


def write_record(path: Path, record: Mapping[str, Any]) -> None:
    """Write a trial's record atomically (the old file or the whole new one, never a part)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(path, _dump_json(to_jsonable(record)))


def _failed_record(experiment: str, mode: str, trial: Trial, error: BaseException) -> dict:
    """The record of a trial whose task never returned (its worker died, say)."""
    return {"experiment": experiment, "mode": mode, "settings": trial.settings,
            "seed": trial.seed, "index": trial.index, "status": "error",
            "error": f"{type(error).__name__}: {error}",
            "finished": datetime.now().isoformat(timespec="seconds")}


# -- running on Ray -------------------------------------------------------------------------------


def import_ray() -> Any:
    """The ``ray`` module, or a SweepError saying how to install it."""
    try:
        import ray
    except ImportError as error:
        raise SweepError(INSTALL_HINT) from error
    return ray


@contextmanager
def ray_session(address: str | None = None) -> Iterator[RaySession]:
    """Ray for the block: started on this machine's cores (no ``address``) or joined at a
    cluster's ``address``, and stopped when the block ends; the block may start stopping it
    earlier, to write its results meanwhile (``session.stop_in_background()``). A Ray already
    initialised in this process (a notebook's, a test's) is used as it is and left running."""
    ray = import_ray()
    # Ray starts its workers at nice 15 to keep its own processes responsive; a trial is the
    # user's foreground work, as `lstmkit experiment` is, and at nice 15 on a machine shared
    # with other jobs it gets only what they leave (docs/sweep.md). A cluster's nodes set
    # their own (RAY_worker_niceness=0 in `ray start`'s environment).
    local = {} if address else {"_system_config": {"worker_niceness": 0}}
    try:
        session = RaySession(ray, address=address, include_dashboard=False,
                             log_to_driver=False, logging_level=logging.WARNING, **local)
    except (ConnectionError, RuntimeError, ValueError) as error:
        where = f"join the Ray cluster at {address!r}" if address else "start Ray on this machine"
        raise SweepError(f"could not {where}: {error}") from error
    try:
        yield session
    finally:
        session.close()


def run_trials(ray: Any, experiment: str, mode: str, trials: Sequence[Trial], cpus: int,
               done: Callable[[Trial, dict[str, Any]], None]) -> None:
    """Run ``trials`` as Ray tasks of ``cpus`` CPUs (and threads) each; call ``done(trial,
    record)`` as each finishes, in the order they finish."""
    task = ray.remote(num_cpus=cpus, max_retries=0)(run_trial)
    pending = {task.remote(experiment, mode, t.settings, t.seed, t.index, cpus): t
               for t in trials}
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        for ref in ready:
            trial = pending.pop(ref)
            try:
                record = ray.get(ref)
            except ray.exceptions.RayError as error:  # the worker died or the task was lost
                record = _failed_record(experiment, mode, trial, error)
            done(trial, record)


@dataclass
class SweepResult:
    """What ``run_sweep`` did and wrote."""

    out_dir: Path
    plan: SweepPlan
    skipped: int
    ran: int
    failed: list[dict[str, Any]]
    summary: dict[str, Any]
    table: str


def run_sweep(experiment: str, out: PathLike, mode: str = "full", seeds: int | None = None,
              seed: int = 0, grid: Sequence[str] = (), samples: int | None = None,
              fixed: Mapping[str, str] | None = None, address: str | None = None,
              cpus_per_trial: int = 1, show_progress: bool = True,
              echo: Callable[[str], None] = lambda line: None) -> SweepResult:
    """Run the sweep's unfinished trials on Ray, write each record as it finishes, then the
    reports and summaries; see the module docstring for the folder."""
    if cpus_per_trial < 1:
        raise SweepError(f"--cpus-per-trial must be >= 1, got {cpus_per_trial}")
    plan = plan_sweep(experiment, mode, seeds, seed, grid, samples, fixed)
    out_dir = prepare_sweep_dir(out, experiment, mode)
    for folder in [out_dir / "trials", *(out_dir / "trials").glob("*")]:
        if folder.is_dir():
            _remove_leftovers(folder, _LEFTOVER)  # temporary files of a killed sweep
    records: dict[Trial, dict[str, Any]] = {}
    todo = []
    for trial in plan.trials:
        record = read_record(trial.path(out_dir), experiment, mode, trial)
        if record is None:
            todo.append(trial)
        else:
            records[trial] = record
    echo(f"{len(plan.trials)} trials ({len(plan.settings)} settings x {len(plan.seeds)} seeds): "
         f"{len(records)} finished before, {len(todo)} to run, {cpus_per_trial} CPU(s) each")
    with ExitStack() as stack:
        if todo:
            session = stack.enter_context(ray_session(address))
            with progress_bar(len(plan.trials), f"{experiment} trials", show_progress) as bar:
                bar.update(len(records))

                def done(trial: Trial, record: dict[str, Any]) -> None:
                    write_record(trial.path(out_dir), record)
                    records[trial] = record
                    bar.update(1)

                run_trials(session.ray, experiment, mode, todo, cpus_per_trial, done)
            session.stop_in_background()  # Ray stops while the summaries are written
        summary, table = summarize(out_dir, plan, [records[t] for t in plan.trials])
    failed = [r for r in summary["trials"] if r["status"] != "ok"]
    return SweepResult(out_dir, plan, len(plan.trials) - len(todo), len(todo), failed, summary,
                       table)


def run_seeds_on_ray(experiment: str, mode: str = "full", seeds: int | None = None,
                     seed: int = 0, out: PathLike | None = None, force: bool = False,
                     show_progress: bool = True, address: str | None = None,
                     **overrides: Any) -> Any:
    """``lstmkit experiment``'s run with its seeds as Ray tasks (one CPU and one thread each):
    the same results folder as the experiment's ``run``, with the numbers of a run on one
    thread. Raises ``SweepError`` if a seed fails."""
    module = MODULES[experiment]
    config = module.configure(mode, dict(overrides))
    run_seeds = seed_list(seed, seeds if seeds is not None else config.seeds)
    out_dir = prepare_out_dir(experiment, out, force)
    trials = [Trial(dict(overrides), s, k) for k, s in enumerate(run_seeds)]
    records: dict[Trial, dict[str, Any]] = {}
    with ray_session(address) as session:
        with progress_bar(len(trials), f"{experiment} seeds", show_progress) as bar:

            def done(trial: Trial, record: dict[str, Any]) -> None:
                records[trial] = record
                bar.update(1)

            run_trials(session.ray, experiment, mode, trials, 1, done)
        session.stop_in_background()  # Ray stops while the results are written
        failed = [records[t] for t in trials if records[t]["status"] != "ok"]
        if failed:
            raise SweepError("; ".join(f"seed {r['seed']} failed: {r['error']}"
                                       for r in failed))
        runs = [from_jsonable(run) for t in trials for run in records[t]["runs"]]
        return module.report(config, mode, run_seeds, runs, out_dir)


# -- summaries ------------------------------------------------------------------------------------


def _group_label(run: Mapping[str, Any], keys: Sequence[str]) -> str:
    if len(keys) == 1:
        return str(run[keys[0]])
    return ", ".join(f"{k}={run[k]}" for k in keys)


def _number(value: Any) -> float | None:
    """A measured number as a float (True -> 1.0, "nan" -> nan); None if it is not one."""
    value = from_jsonable(value)
    return float(value) if isinstance(value, (bool, int, float)) else None


def _groups(runs: Sequence[Mapping[str, Any]], measures: Measures) -> list[dict[str, Any]]:
    """The runs of one settings dict by group (``measures.group``): their seeds, each metric's
    values (one per run, None where a run lacks it) with mean and sample std, and curves."""
    groups = []
    labels = dict.fromkeys(_group_label(run, measures.group) for run in runs)
    for label in labels:
        members = [run for run in runs if _group_label(run, measures.group) == label]
        metrics = {}
        for metric in measures.metrics:
            values = [_number(run.get(metric)) for run in members]
            finite = [v for v in values if v is not None and np.isfinite(v)]
            if any(v is not None for v in values):
                metrics[metric] = {
                    "mean": float(np.mean(finite)) if finite else None,
                    "std": float(np.std(finite, ddof=1)) if len(finite) > 1 else None,
                    "n": len(finite), "values": values}
        x, y = measures.curve
        curves = [[(point[x], _number(point.get(y))) for point in run.get("curve", [])]
                  for run in members]
        groups.append({"group": label, "seeds": [run["seed"] for run in members],
                       "metrics": metrics, "curves": curves})
    return groups


def summarize(out_dir: Path, plan: SweepPlan,
              records: Sequence[Mapping[str, Any]]) -> tuple[dict[str, Any], str]:
    """Write the experiment's report per settings dict, ``summary.json``, ``summary.md`` and the
    plots; return the summary and its table (Markdown)."""
    module = MODULES[plan.experiment]
    measures = module.MEASURES
    groups: list[dict[str, Any]] = []
    reports = []
    for settings in plan.settings:
        mine = [r for r in records if r["settings"] == settings and r["status"] == "ok"]
        if not mine:
            continue
        runs = [from_jsonable(run) for record in mine for run in record["runs"]]
        slug = settings_slug(settings)
        report_dir = out_dir / "reports" / slug
        report_dir.mkdir(parents=True, exist_ok=True)
        module.report(module.configure(plan.mode, dict(settings)), plan.mode,
                      [r["seed"] for r in mine], runs, report_dir)
        reports.append(report_dir / "results.md")
        groups += [{"settings": settings, "slug": slug, **group}
                   for group in _groups(runs, measures)]
    trials = [{"settings": r["settings"], "seed": r["seed"], "status": r["status"],
               "seconds": r.get("seconds"), "host": r.get("host"), "threads": r.get("threads"),
               "path": str(Trial(r["settings"], r["seed"], r["index"]).path(out_dir)
                           .relative_to(out_dir)),
               **({"error": r.get("error")} if r["status"] != "ok" else {})} for r in records]
    table = _table(plan, groups, measures.metrics)
    plots = _plots(out_dir, plan, groups, measures)
    summary = {
        "experiment": plan.experiment, "title": TITLES[plan.experiment], "mode": plan.mode,
        "seeds": plan.seeds, "settings": plan.settings, "group_by": list(measures.group),
        "metrics": list(measures.metrics),
        "trials_total": len(records), "trials_ok": sum(r["status"] == "ok" for r in trials),
        "trial_seconds": sum(r["seconds"] or 0.0 for r in trials),
        "hosts": sorted({r["host"] for r in trials if r["host"]}),
        "groups": [{k: v for k, v in g.items() if k != "curves"} for g in groups],
        "trials": trials, "reports": [str(p.relative_to(out_dir)) for p in reports],
        "plots": [p.name for p in plots],
        "written": datetime.now().isoformat(timespec="seconds"),
    }
    _write_atomic(out_dir / "summary.json", _dump_json(to_jsonable(summary)))
    _write_atomic(out_dir / "summary.md",
                  _markdown(summary, table, reports, plots, out_dir).encode("utf-8"))
    return summary, table


def _table(plan: SweepPlan, groups: Sequence[Mapping[str, Any]], metrics: Sequence[str]) -> str:
    several = len(plan.settings) > 1
    headers = (["settings"] if several else []) + ["group", "seeds"] + list(metrics)
    rows = []
    for g in groups:
        cells = [mean_std(g["metrics"][m]["values"], ".4g") if m in g["metrics"] else "-"
                 for m in metrics]
        rows.append(([g["slug"]] if several else []) + [g["group"], len(g["seeds"])] + cells)
    return markdown_table(headers, rows)


def _markdown(summary: Mapping[str, Any], table: str, reports: Sequence[Path],
              plots: Sequence[Path], out_dir: Path) -> str:
    failed = [t for t in summary["trials"] if t["status"] != "ok"]
    parts = [f"# Sweep: {summary['title']}", "",
             f"{summary['mode']} mode; {summary['trials_ok']} of {summary['trials_total']} trials "
             f"finished; seeds {summary['seeds'][0]}..{summary['seeds'][-1]}; "
             f"{summary['trial_seconds']:.0f} s of trial time on "
             f"{', '.join(summary['hosts']) or '-'}. Values are mean ± std over seeds.", "",
             table, ""]
    if failed:
        parts += ["## Failed trials", ""] + [
            f"- {t['path']}: {t.get('error')}" for t in failed] + [""]
    if reports:
        parts += ["## Reports per settings", ""] + [
            f"- [{p.parent.name}]({p.relative_to(out_dir)})" for p in reports] + [""]
    if plots:
        parts += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots] + [""]
    return "\n".join(parts)


def _plots(out_dir: Path, plan: SweepPlan, groups: Sequence[Mapping[str, Any]],
           measures: Measures) -> list[Path]:
    if not groups:
        return []
    several = len(plan.settings) > 1
    labels = [f"{g['slug']}: {g['group']}" if several else g["group"] for g in groups]
    shown = [m for m in measures.metrics if any(m in g["metrics"] for g in groups)][:3]
    fig, axes = new_figure(9.0, (0.3 * len(groups) + 1.2) * len(shown), nrows=len(shown))
    for (ax,), metric in zip(axes, shown):
        data = [[v for v in g["metrics"].get(metric, {}).get("values", [])
                 if v is not None and np.isfinite(v)] for g in groups]
        data = [d if d else [np.nan] for d in data]
        try:
            ax.boxplot(data, orientation="horizontal", showmeans=True)
        except TypeError:  # matplotlib < 3.10
            ax.boxplot(data, vert=False, showmeans=True)
        ax.set_yticks(range(1, len(labels) + 1), labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_title(metric)
        ax.grid(True, axis="x", alpha=0.3)
    fig.suptitle(f"{plan.experiment}: one point per seed")
    box = save_figure(fig, out_dir / "box_plots.png")

    fig, axes = new_figure(8.0, 4.8)
    ax = axes[0][0]
    for label, g in zip(labels, groups):
        by_x: dict[float, list[float]] = {}
        for curve in g["curves"]:
            for x, y in curve:
                if y is not None and np.isfinite(y):
                    by_x.setdefault(float(x), []).append(y)
        if not by_x:
            continue
        xs = sorted(by_x)
        mean = np.array([np.mean(by_x[x]) for x in xs])
        std = np.array([np.std(by_x[x]) for x in xs])
        (line,) = ax.plot(xs, mean, lw=1.4, label=label)
        ax.fill_between(xs, mean - std, mean + std, color=line.get_color(), alpha=0.15)
    ax.set_xlabel(measures.curve[0])
    ax.set_ylabel(measures.curve[1])
    ax.set_title(f"{plan.experiment}: mean ± std over seeds")
    ax.grid(True, alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=8)
    curves = save_figure(fig, out_dir / "learning_curves.png")
    return [box, curves]
