"""Train lstmkit's character LM for a time budget and record (time, validation loss) points.

    python benchmarks/charlm_lstmkit.py --minutes 3 --json benchmarks/results/lstmkit.json
    python benchmarks/charlm_lstmkit.py --data ../shared/data/neko.txt --minutes 3 \\
        --prime 「ところで、とてもお腹が空いたから何か」 --json benchmarks/results/neko.json

The run is ``lstmkit.train.train`` itself (the CLI's loop) with the CLI defaults unless options
say otherwise; ``charlm_torch.py`` runs the same protocol in PyTorch. The JSON holds the
settings, every validation point (``train_seconds`` excludes validation, ``elapsed`` is wall
clock), the speed, the peak memory, the machine's load and an optional sample.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import charlm_common as common


def main() -> None:
    args = common.parser(__doc__.splitlines()[0]).parse_args()
    common.limit_threads(args.threads)  # before NumPy is imported

    from lstmkit.sampling import sample
    from lstmkit.train import load_charlm, train

    config = common.make_config(args)
    start_conditions = common.conditions(args.threads)
    with tempfile.TemporaryDirectory(prefix="charlm-bench-") as run_dir:
        started = time.perf_counter()
        result = train(Path(args.data), Path(run_dir) / "run", config, progress=False,
                       log=lambda line: print(line, file=sys.stderr, flush=True))
        wall = time.perf_counter() - started
        text = None
        if args.prime is not None:
            model, vocab, _ = load_charlm(Path(run_dir) / "run")
            text = args.prime + sample(model, vocab, args.sample_length, prime=args.prime,
                                       temperature=0.8, seed=0)
    train_seconds = result.history[-1]["train_seconds"] if result.history else 0.0
    output = {
        "framework": "lstmkit",
        "data": str(args.data),
        "config": config.to_json(),
        "status": result.status,
        "steps": result.step,
        "tokens": result.tokens,
        "wall_seconds": wall,
        "chars_per_second": result.tokens / train_seconds if train_seconds else None,
        "points": result.history,
        "best_val_loss": result.best_val_loss,
        "peak_rss_mib": common.peak_rss_mib(),
        "conditions_start": start_conditions,
        "conditions_end": common.conditions(args.threads),
        "sample": text,
    }
    common.write_result(args.json, output)
    print(f"lstmkit: {result.step} steps, {output['chars_per_second'] or 0:.0f} chars/s, "
          f"best val {result.best_val_loss}, peak {output['peak_rss_mib']:.0f} MiB")
    if text is not None:
        print(text)


if __name__ == "__main__":
    main()
