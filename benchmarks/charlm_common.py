"""What the character-LM benchmark scripts share: options, thread limits, settings, results.

``charlm_lstmkit.py`` and ``charlm_torch.py`` take the same options and build the same
:class:`lstmkit.train.TrainConfig` from them, so the two runs differ only in the framework:
same text and 90/10 split, same batches (:class:`lstmkit.text.StreamBatcher`), same model,
optimizer, schedule, clipping and dropout, same validation windows
(:func:`lstmkit.train.validation_batches`), same rule for fitting the cosine to a time budget.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                    "NUMBA_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")

# Options that map one-to-one onto TrainConfig fields.
CONFIG_OPTIONS = {
    "layers": ("num_layers", int), "hidden": ("hidden_size", int),
    "embedding": ("embedding_dim", int), "dropout": ("dropout", float),
    "seq_len": ("seq_len", int), "batch": ("batch_size", int), "lr": ("lr", float),
    "min_lr": ("min_lr", float), "clip": ("clip", float), "eval_every": ("eval_every", int),
    "seed": ("seed", int), "val_fraction": ("val_fraction", float),
}


def limit_threads(threads: int) -> None:
    """Cap the BLAS / OpenMP / Numba pools; must run before NumPy or torch is imported."""
    for name in THREAD_VARIABLES:
        os.environ[name] = str(threads)


def parser(description: str) -> argparse.ArgumentParser:
    """The options both framework scripts take."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--data", type=Path, default=SHARED_DATA / "tinyshakespeare.txt",
                   help="UTF-8 text; the last --val-fraction is held out")
    p.add_argument("--minutes", type=float, default=3.0, help="wall-clock budget")
    p.add_argument("--steps", type=int, default=None, help="step budget instead of/with time")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--preset", default=None, help="an lstmkit.train.PRESETS name")
    for option, (_, kind) in CONFIG_OPTIONS.items():
        p.add_argument(f"--{option.replace('_', '-')}", type=kind, default=None)
    p.add_argument("--json", type=Path, required=True, help="where to write the result")
    p.add_argument("--prime", default=None, help="sample after training, primed with this")
    p.add_argument("--sample-length", type=int, default=300)
    return p


def make_config(args: argparse.Namespace) -> Any:
    """The TrainConfig of a benchmark run: defaults < preset < explicit options."""
    from lstmkit.train import PRESETS, TrainConfig

    settings: dict[str, Any] = dict(PRESETS[args.preset]) if args.preset else {}
    for option, (name, _) in CONFIG_OPTIONS.items():
        value = getattr(args, option)
        if value is not None:
            settings[name] = value
    settings.update(time_limit=args.minutes * 60 if args.minutes else None, steps=args.steps,
                    sample_every=0, patience=0)
    return TrainConfig(**{**TrainConfig().to_json(), **settings}).validate()


def peak_rss_mib() -> float:
    """This process's peak resident memory."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def conditions(threads: int) -> dict[str, Any]:
    """What the machine was like: cores, load (other work running), Python and platform."""
    return {"cpus": os.cpu_count(), "threads": threads, "loadavg": list(os.getloadavg()),
            "python": platform.python_version(), "machine": platform.machine()}


def write_result(path: Path, result: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def first_reaching(points: list[dict[str, Any]], target: float) -> dict[str, Any] | None:
    """The first validation point whose loss is at most ``target``."""
    return next((p for p in points if p["val_loss"] is not None and p["val_loss"] <= target),
                None)
