"""The PyTorch (CPU) twin of ``charlm_lstmkit.py``: same model, data, optimizer and protocol.

    python benchmarks/charlm_torch.py --minutes 3 --threads 1 --json benchmarks/results/torch.json

Embedding -> ``nn.LSTM`` (or GRU/RNN; dropout between layers) -> Dropout -> Linear, Adam with
``CosineAnnealingLR`` to ``min_lr``, ``clip_grad_norm_``, contiguous streams from lstmkit's
``StreamBatcher`` with the state carried (detached) from batch to batch and reset when the
streams start over, validation every ``eval_every`` steps over lstmkit's
``validation_batches`` windows in eval mode under ``torch.no_grad``, and with only a time
budget the cosine's length fitted by lstmkit's own rule (``calibration_due``,
``remaining_steps``). It writes the same JSON as ``charlm_lstmkit.py`` (no checkpoints).
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import charlm_common as common


def main() -> None:
    args = common.parser(__doc__.splitlines()[0]).parse_args()
    common.limit_threads(args.threads)  # before NumPy and torch are imported

    import torch
    import torch.nn.functional as F
    from torch import nn

    from lstmkit.text import StreamBatcher, read_text
    from lstmkit.train import calibration_due, prepare_text, remaining_steps, validation_batches

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    config = common.make_config(args)
    torch.manual_seed(config.seed)
    start_conditions = common.conditions(args.threads)

    class TorchCharLM(nn.Module):
        def __init__(self, vocab_size: int) -> None:
            super().__init__()
            cell = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[config.cell]
            self.embedding = nn.Embedding(vocab_size, config.embedding_dim)
            self.rnn = cell(config.embedding_dim, config.hidden_size, config.num_layers,
                            dropout=config.dropout if config.num_layers > 1 else 0.0)
            self.drop = nn.Dropout(config.dropout)
            self.decoder = nn.Linear(config.hidden_size, vocab_size)

        def forward(self, ids: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
            out, state = self.rnn(self.embedding(ids), state)  # (T, B, H)
            return self.decoder(self.drop(out)), state  # (T, B, V)

    text = read_text(Path(args.data))
    vocab, train_ids, val_ids = prepare_text(text, config.val_fraction)
    V = len(vocab)
    model = TorchCharLM(V)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    schedule = None
    if config.steps is not None:
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=config.steps, eta_min=config.min_lr)
    batcher = StreamBatcher(train_ids, config.batch_size, config.seq_len)

    def detach(state: Any) -> Any:
        return tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()

    # As lstmkit's evaluate: held-out characters the training part lacks are not scored.
    unknown = vocab.unknown_id

    def evaluate() -> float:
        model.eval()
        total, count, state = 0.0, 0, None
        with torch.no_grad():
            for x, y in validation_batches(val_ids, config.eval_batch_size, config.eval_seq_len):
                logits, state = model(torch.from_numpy(x), state)
                total += F.cross_entropy(logits.reshape(-1, V), torch.from_numpy(y).reshape(-1),
                                         ignore_index=unknown, reduction="sum").item()
                count += int((y != unknown).sum())
        model.train()
        return total / count

    points: list[dict[str, Any]] = []
    losses: list[float] = []
    state: Any = None
    step, train_seconds, eval_seconds = 0, 0.0, None
    mark: tuple[int, float] | None = None
    started = time.perf_counter()
    model.train()

    def validate() -> None:
        nonlocal eval_seconds
        t0 = time.perf_counter()
        val_loss = evaluate()
        eval_seconds = time.perf_counter() - t0
        previous = points[-1]["step"] if points else 0
        points.append({
            "step": step, "tokens": step * config.batch_size * config.seq_len,
            "elapsed": time.perf_counter() - started, "train_seconds": train_seconds,
            "train_loss": float(sum(losses[previous:]) / max(len(losses[previous:]), 1)),
            "val_loss": val_loss, "lr": optimizer.param_groups[0]["lr"],
        })
        print(f"step {step} | val loss {val_loss:.4f} | {points[-1]['elapsed']:.0f} s",
              file=sys.stderr, flush=True)

    def plan(replan: bool = False) -> None:
        """lstmkit's rule: fit the cosine to the time budget, again after each validation."""
        nonlocal schedule, mark
        if config.steps is not None or config.time_limit is None:
            return
        if mark is None:
            if step >= 2:
                mark = (step, train_seconds)
            return
        if schedule is not None and not replan:
            return
        if not calibration_due(step - mark[0], train_seconds - mark[1], config.time_limit):
            return
        total = step + remaining_steps(
            config.time_limit - (time.perf_counter() - started),
            (train_seconds - mark[1]) / (step - mark[0]),
            config.batch_size * config.seq_len, val_ids.size, config.eval_every, eval_seconds,
        )
        if schedule is not None and total == schedule.T_max:
            return
        for group in optimizer.param_groups:
            group["lr"] = config.lr
            group["initial_lr"] = config.lr
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=total, eta_min=config.min_lr)
        with warnings.catch_warnings():  # advancing a new schedule to this step
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(step):
                schedule.step()

    while True:
        elapsed = time.perf_counter() - started
        if config.steps is not None and step >= config.steps:
            status = "completed"
            break
        if config.time_limit is not None and elapsed >= config.time_limit:
            status = "time_limit"
            break
        t0 = time.perf_counter()
        if batcher.at_epoch_start:
            state = None
        x, y = batcher.next_batch()
        logits, state = model(torch.from_numpy(x), state)
        loss = F.cross_entropy(logits.reshape(-1, V), torch.from_numpy(y).reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        if config.clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), config.clip)
        optimizer.step()
        if schedule is not None and schedule.last_epoch < schedule.T_max:
            schedule.step()
        state = detach(state)
        step += 1
        losses.append(loss.item())
        train_seconds += time.perf_counter() - t0
        if not math.isfinite(losses[-1]):
            status = "nonfinite"
            break
        if schedule is None:
            plan()
        if step % config.eval_every == 0:
            validate()
            plan(replan=True)
    if not points or points[-1]["step"] != step:
        validate()
    output = {
        "framework": "torch",
        "torch_version": torch.__version__,
        "data": str(args.data),
        "config": config.to_json(),
        "status": status,
        "steps": step,
        "tokens": step * config.batch_size * config.seq_len,
        "wall_seconds": time.perf_counter() - started,
        "chars_per_second": step * config.batch_size * config.seq_len / train_seconds
        if train_seconds else None,
        "points": points,
        "best_val_loss": min(p["val_loss"] for p in points),
        "peak_rss_mib": common.peak_rss_mib(),
        "conditions_start": start_conditions,
        "conditions_end": common.conditions(args.threads),
        "sample": None,
    }
    common.write_result(args.json, output)
    print(f"torch: {step} steps, {output['chars_per_second'] or 0:.0f} chars/s, "
          f"best val {output['best_val_loss']:.4f}, peak {output['peak_rss_mib']:.0f} MiB")


if __name__ == "__main__":
    main()
