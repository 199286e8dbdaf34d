"""Rebuild the bundled Japanese model (``lstmkit/data/pretrained/neko``) from neko.txt.

    python benchmarks/train_neko_model.py prepare NEKO_TXT WORK_DIR   # 1. strip the readings
    python benchmarks/train_neko_model.py train WORK_DIR              # 2. lstmkit train (~25 min)
    python benchmarks/train_neko_model.py export WORK_DIR OUT_DIR     # 3. float16 copy + scores

1. ``prepare`` writes ``WORK_DIR/neko.txt``: 吾輩は猫である with the readings that follow a kanji
   in full-width parentheses removed (``吾輩（わがはい）は`` -> ``吾輩は``; only parentheses
   that hold nothing but kana directly after a kanji or 々〆ヵヶ: the other parentheses of the
   book stay), and ``WORK_DIR/held_out.txt``: its last 10%, the part training holds out.
2. ``train`` runs the ``lstmkit train`` command it prints (the model card quotes it).
3. ``export`` copies the best checkpoint's weights as float16 (the model, not the optimizer)
   with its settings, vocabulary and history into ``OUT_DIR`` (an ordinary checkpoint
   directory, which ``load_charlm`` reads back as float32), then scores that copy on
   ``held_out.txt`` as ``lstmkit eval`` does and writes ``OUT_DIR/scores.json``.
"""

from __future__ import annotations

import json
import math
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np

# A reading: kana (and the long-vowel mark) in full-width parentheses right after a kanji.
READING = re.compile(r"(?<=[一-龥々〆ヵヶ])（[ぁ-ゖゝゞァ-ヺー]+）")

TRAIN_OPTIONS = [
    "--preset", "neko", "--layers", "2", "--hidden", "256", "--min-count", "2",
    "--time-limit", "25", "--eval-every", "500", "--sample-every", "2000", "--seed", "0",
]


def prepare(source: Path, work: Path) -> None:
    from lstmkit.text import held_out_start, read_text

    text = read_text(source)
    stripped, removed = READING.subn("", text)
    work.mkdir(parents=True, exist_ok=True)
    (work / "neko.txt").write_text(stripped, encoding="utf-8")
    start = held_out_start(len(stripped), 0.1)
    (work / "held_out.txt").write_text(stripped[start:], encoding="utf-8")
    print(f"{source}: {len(text):,} characters; {removed:,} readings removed -> "
          f"{len(stripped):,} characters ({len(set(stripped)):,} distinct); held out: the last "
          f"{len(stripped) - start:,}")


def train(work: Path) -> None:
    command = ["lstmkit", "train", str(work / "neko.txt"), "--out", str(work / "run"),
               *TRAIN_OPTIONS]
    print("+", shlex.join(command), flush=True)
    runner = [sys.executable, "-c", "from lstmkit.cli import main; main()", *command[1:]]
    subprocess.run(runner, check=True)


def export(work: Path, out: Path) -> None:
    from lstmkit.io import CheckpointManager, save_checkpoint
    from lstmkit.text import read_text
    from lstmkit.train import evaluate_text, load_charlm

    tensors, meta = CheckpointManager(work / "run").load_best()
    weights = {name: array.astype(np.float16) for name, array in tensors.items()
               if name.startswith("model.")}
    kept = {key: meta[key] for key in ("format", "format_version", "model", "vocabulary", "train",
                                       "data", "progress", "history", "status")}
    kept["data"] = {**kept["data"], "path": "neko.txt (readings removed)"}
    kept["storage"] = "float16 weights, read back as float32"
    save_checkpoint(out, weights, kept, force=out.exists())
    model, vocab, _ = load_charlm(out)
    held_out = read_text(work / "held_out.txt")
    shipped = evaluate_text(model, vocab, held_out)
    full, _, _ = load_charlm(work / "run")
    unrounded = evaluate_text(full, vocab, held_out)
    scores = {
        "held_out": shipped.to_json(),
        "held_out_float32_weights": unrounded.loss,
        "best_step": meta["progress"]["best_step"],
        "steps": meta["progress"]["step"],
        "parameters": int(sum(a.size for a in weights.values())),
        "bytes": (out / "model.safetensors").stat().st_size,
    }
    (out / "scores.json").write_text(json.dumps(scores, ensure_ascii=False, indent=1) + "\n",
                                     encoding="utf-8")
    print(f"held-out loss {shipped.loss:.4f} nats/char ({shipped.loss / math.log(2):.4f} bpc; "
          f"float32 weights: {unrounded.loss:.4f}); {shipped.unknown_count} unknown characters "
          f"({shipped.unknown_share:.2%}); {scores['parameters']:,} parameters, "
          f"{scores['bytes']:,} bytes")


def main() -> None:
    if len(sys.argv) < 3 or sys.argv[1] not in ("prepare", "train", "export"):
        sys.exit(__doc__)
    stage, *paths = sys.argv[1:]
    {"prepare": prepare, "train": train, "export": export}[stage](*map(Path, paths))


if __name__ == "__main__":
    main()
