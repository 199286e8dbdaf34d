"""lstmkit against PyTorch on the CPU: validation loss against training time, one plot.

    python benchmarks/charlm_compare.py --minutes 3 --threads 1
    python benchmarks/charlm_compare.py --minutes 15 --out benchmarks/results/15min

Runs ``charlm_lstmkit.py`` and then ``charlm_torch.py`` (one after the other, never at the same
time) as separate processes with the same options and the same thread limits
(``OMP_NUM_THREADS`` and friends, ``torch.set_num_threads``), on ``--data`` (default: Tiny
Shakespeare, 90/10 split). Writes ``<out>/compare.json`` (both runs, the machine's load, the
time each reached ``--target``) and ``<out>/compare.png`` (validation loss against training
time, which leaves out the validation passes and, for lstmkit, the checkpoint writes).
Extra options (``--hidden 512`` ...) are passed to both scripts.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import charlm_common as common

HERE = Path(__file__).resolve().parent


def run(script: str, json_path: Path, args: argparse.Namespace, extra: list[str]) -> None:
    command = [sys.executable, str(HERE / script), "--data", str(args.data),
               "--minutes", str(args.minutes), "--threads", str(args.threads),
               "--eval-every", str(args.eval_every), "--json", str(json_path), *extra]
    env = {**os.environ, **{name: str(args.threads) for name in common.THREAD_VARIABLES}}
    print("$", " ".join(command), flush=True)
    subprocess.run(command, env=env, check=True)


def plot(runs: dict[str, dict[str, Any]], target: float, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, result in runs.items():
        xs = [p["train_seconds"] for p in result["points"]]
        ys = [p["val_loss"] for p in result["points"]]
        speed = result["chars_per_second"] or 0
        ax.plot(xs, ys, marker="o", markersize=3, label=f"{name} ({speed / 1000:.1f}k chars/s)")
    ax.axhline(target, color="gray", linestyle="--", linewidth=1, label=f"target {target}")
    ax.set_xlabel("training time (s, validation excluded)")
    ax.set_ylabel("validation loss (nats/char)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=common.SHARED_DATA / "tinyshakespeare.txt")
    p.add_argument("--minutes", type=float, default=3.0, help="budget of each run")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--target", type=float, default=1.6, help="report the time to this loss")
    p.add_argument("--frameworks", default="lstmkit,torch")
    p.add_argument("--out", type=Path, default=HERE / "results" / "charlm_compare")
    args, extra = p.parse_known_args()
    args.out.mkdir(parents=True, exist_ok=True)

    runs: dict[str, dict[str, Any]] = {}
    for name in args.frameworks.split(","):
        json_path = args.out / f"{name}.json"
        run(f"charlm_{name}.py", json_path, args, extra)
        runs[name] = json.loads(json_path.read_text(encoding="utf-8"))

    reached = {}
    for name, result in runs.items():
        point = common.first_reaching(result["points"], args.target)
        reached[name] = None if point is None else {
            "train_seconds": point["train_seconds"], "elapsed": point["elapsed"],
            "step": point["step"],
        }
    load = [round(r["conditions_start"]["loadavg"][0], 2) for r in runs.values()]
    title = (f"{args.data.name}: {args.minutes:g} min each, {args.threads} thread(s), "
             f"{os.cpu_count()} CPUs, load at start {load}")
    plot(runs, args.target, args.out / "compare.png", title)
    summary = {"data": str(args.data), "minutes": args.minutes, "threads": args.threads,
               "target": args.target, "time_to_target": reached,
               "best_val_loss": {n: r["best_val_loss"] for n, r in runs.items()},
               "chars_per_second": {n: r["chars_per_second"] for n, r in runs.items()},
               "runs": runs}
    (args.out / "compare.json").write_text(json.dumps(summary, indent=2) + "\n",
                                           encoding="utf-8")
    for name in runs:
        print(f"{name}: best val {summary['best_val_loss'][name]:.4f}, "
              f"{(summary['chars_per_second'][name] or 0):.0f} chars/s, "
              f"time to {args.target}: {reached[name]}")
    print(f"wrote {args.out / 'compare.json'} and {args.out / 'compare.png'}")


if __name__ == "__main__":
    main()
