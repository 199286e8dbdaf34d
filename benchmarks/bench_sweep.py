"""lstmkit sweep against the same seeds run one after the other: time, identical numbers, resume.

With the command line only, as a user would run them (from the repository root):

1. ``lstmkit experiment adding --quick --seeds 8 --threads 1``: the seeds one after the other,
   one thread;
2. ``lstmkit sweep adding --quick --seeds 8``: the same seeds as Ray tasks on this machine's
   cores, one thread each;

and prints each command's whole wall time (Python's and Ray's start included), the speed-up,
and whether every seed's numbers (all but wall times) are identical in both. While each runs,
the machine's busy cores are read from /proc/stat, and before and after, how much two plain
CPU-bound processes gain from running side by side (2.00 on two idle cores), so that load from
other processes shows: no sweep can gain more than that.

With ``--kill``, a third sweep into a fresh folder is interrupted (SIGINT, as Ctrl-C) once
``--kill-after`` trials have finished, then run again: the rerun must run exactly the trials
whose records were not there, i.e. lose only the trials that were running.

    python benchmarks/bench_sweep.py [--seeds 8] [--mode quick] [--kill] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LSTMKIT = [sys.executable, "-c", "from lstmkit.cli import main; main()"]


def cpu_model() -> dict[str, str]:
    """lscpu's model name and whether the CPU has AVX2 / AVX-512F."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return {"model": platform.processor() or "?", "flags": "?"}
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    flags = fields.get("Flags", "").split()
    return {"model": fields.get("Model name", "?").strip(),
            "flags": " ".join(f for f in ("avx2", "avx512f") if f in flags) or "neither"}


def _cpu_times() -> tuple[float, float]:
    with open("/proc/stat") as f:
        values = [float(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]
    return sum(values), idle


BURN = "import time\nt = time.perf_counter()\ns = 0\nfor i in range(10_000_000):\n    s += i\n" \
       "print(time.perf_counter() - t)"


def parallel_capacity() -> float:
    """How much faster two copies of a CPU-bound Python loop finish side by side than one
    after the other, right now: 2.0 on two idle cores, 1.0 when a second process gains nothing
    (other jobs hold the cores; with the kernel's autogroup scheduling a session gets its share
    of the CPUs however many processes it runs)."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", BURN], check=True, capture_output=True)
    alone = time.perf_counter() - start
    start = time.perf_counter()
    pair = [subprocess.Popen([sys.executable, "-c", BURN], stdout=subprocess.DEVNULL)
            for _ in range(2)]
    for child in pair:
        child.wait()
    return 2.0 * alone / (time.perf_counter() - start)


def timed(command: list[str], mode_flag: list[str]) -> dict[str, object]:
    """Run a command; its wall time, output, and the machine's mean busy cores meanwhile."""
    total0, idle0 = _cpu_times()
    load0 = os.getloadavg()[0]
    start = time.perf_counter()
    done = subprocess.run(command + mode_flag, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    total1, idle1 = _cpu_times()
    busy = (1.0 - (idle1 - idle0) / max(total1 - total0, 1.0)) * (os.cpu_count() or 1)
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}")
    return {"seconds": seconds, "busy_cores": busy, "loadavg_before": load0,
            "loadavg_after": os.getloadavg()[0], "output": done.stdout}


def numbers(runs: list[dict]) -> list[dict]:
    return [{k: v for k, v in run.items() if k != "seconds"} for run in runs]


def compare(sequential: Path, sweep: Path, seeds: int) -> tuple[list[bool], list, list]:
    """Per seed: are the sweep trial's runs equal to the sequential run's, but wall times?
    And each seed's training seconds in both."""
    lone = json.loads((sequential / "results.json").read_text())["runs"]
    same, alone, in_sweep = [], [], []
    for seed in range(seeds):
        record = json.loads((sweep / "trials" / "default" / f"seed-{seed}.json").read_text())
        mine = [r for r in lone if r["seed"] == seed]
        same.append(numbers(record["runs"]) == numbers(mine))
        alone.append(round(sum(r["seconds"] for r in mine), 2))
        in_sweep.append(round(sum(r["seconds"] for r in record["runs"]), 2))
    return same, alone, in_sweep


def kill_and_resume(root: Path, experiment: str, mode_flag: list[str], seeds: int,
                    after: int) -> dict[str, object]:
    """Interrupt a sweep once ``after`` trials are finished; rerun it; what the rerun ran."""
    out = root / "killed"
    command = LSTMKIT + ["sweep", experiment, *mode_flag, "--seeds", str(seeds), "--out",
                         str(out), "--no-progress"]
    # Ctrl-C's SIGINT, delivered even when this script was started in the background (where
    # the shell makes its children ignore SIGINT)
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    trials = out / "trials" / "default"
    while child.poll() is None and len(list(trials.glob("seed-*.json"))) < after:
        time.sleep(0.2)
    child.send_signal(signal.SIGINT)
    child.communicate(timeout=120)
    finished = sorted(p.name for p in trials.glob("seed-*.json"))
    kept = {name: (trials / name).read_bytes() for name in finished}
    rerun = subprocess.run(command, capture_output=True, text=True)
    match = re.search(r"(\d+) finished before, (\d+) to run", rerun.stdout)
    if rerun.returncode != 0 or match is None:
        sys.exit(f"the rerun failed:\n{rerun.stdout}\n{rerun.stderr}")
    before, ran = int(match.group(1)), int(match.group(2))
    untouched = all((trials / name).read_bytes() == data for name, data in kept.items())
    return {"finished_when_killed": len(finished), "rerun_found_finished": before,
            "rerun_ran": ran, "finished_records_untouched": untouched,
            "lost_only_unfinished": before == len(finished) and ran == seeds - len(finished)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiment", default="adding")
    ap.add_argument("--mode", default="quick", choices=["tiny", "quick", "full"])
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--kill", action="store_true", help="also interrupt a sweep and resume it")
    ap.add_argument("--kill-after", type=int, default=3)
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    args = ap.parse_args()
    mode_flag = [] if args.mode == "full" else [f"--{args.mode}"]
    cpu = cpu_model()
    print(f"{cpu['model']} ({cpu['flags']}), {os.cpu_count()} CPUs; {args.experiment} "
          f"{args.mode}, {args.seeds} seeds")
    capacity_before = parallel_capacity()
    print(f"two processes side by side now run {capacity_before:.2f}x as fast as one after the "
          "other (2.00 on two idle cores)")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        sequential = timed(LSTMKIT + ["experiment", args.experiment, "--seeds", str(args.seeds),
                                      "--threads", "1", "--out", str(root / "sequential"),
                                      "--no-progress"], mode_flag)
        print(f"one after the other, 1 thread: {sequential['seconds']:.1f} s "
              f"(machine busy {sequential['busy_cores']:.2f} cores; ours ~1)")
        sweep = timed(LSTMKIT + ["sweep", args.experiment, "--seeds", str(args.seeds), "--out",
                                 str(root / "sweep"), "--no-progress"], mode_flag)
        print(f"lstmkit sweep:                 {sweep['seconds']:.1f} s "
              f"(machine busy {sweep['busy_cores']:.2f} cores)")
        same, alone, in_sweep = compare(root / "sequential", root / "sweep", args.seeds)
        speedup = sequential["seconds"] / sweep["seconds"]
        print(f"speed-up {speedup:.2f}x; per-seed numbers identical: {sum(same)}/{len(same)}")
        print(f"training seconds per seed, one after the other: {alone}")
        print(f"training seconds per seed, in the sweep:        {in_sweep}")
        concurrency = sum(in_sweep) / sweep["seconds"]
        print(f"trials running at once in the sweep, on average: {concurrency:.2f}")
        capacity_after = parallel_capacity()
        print(f"two processes side by side, after: {capacity_after:.2f}x")
        result = {"cpu": cpu, "cpus": os.cpu_count(), "experiment": args.experiment,
                  "parallel_capacity": [capacity_before, capacity_after],
                  "mode": args.mode, "seeds": args.seeds,
                  "sequential": {k: v for k, v in sequential.items() if k != "output"},
                  "sweep": {k: v for k, v in sweep.items() if k != "output"},
                  "speedup": speedup, "identical_seeds": sum(same),
                  "seed_seconds_sequential": alone, "seed_seconds_sweep": in_sweep,
                  "concurrency": concurrency}
        if args.kill:
            resumed = kill_and_resume(root, args.experiment, mode_flag, args.seeds,
                                      args.kill_after)
            print(f"killed after {resumed['finished_when_killed']} finished trials; the rerun "
                  f"found {resumed['rerun_found_finished']} and ran {resumed['rerun_ran']}; "
                  f"finished records untouched: {resumed['finished_records_untouched']}")
            result["kill"] = resumed
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
