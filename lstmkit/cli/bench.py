"""``lstmkit bench``: time the fused recurrences against PyTorch on this machine.

Examples::

    lstmkit bench --quick
    lstmkit bench --json bench.json --threads 2
    lstmkit bench --shapes "100,32,64,128;200,1,32,128" --cell gru
    lstmkit bench --reference --no-memory      # the readable reference path, for comparison

Without PyTorch installed it reports lstmkit alone. The protocol (alternating runs, medians,
FLOP convention, memory and first-call measurement) is documented in
``lstmkit.benchmark``.
"""

from __future__ import annotations

import click

from lstmkit import benchmark


@click.command()
@click.option("--quick", is_flag=True,
              help="Fewer repetitions, no memory or first-call subprocesses (about a minute).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Write every measurement to this JSON file.")
@click.option("--shapes", default=None, metavar="T,B,D,H;...",
              help="Shapes to time [default: the standard grid of 7].")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Threads for every library (BLAS, Numba, PyTorch) [default: all cores].")
@click.option("--reps", type=click.IntRange(min=1), default=None,
              help="Timed rounds per shape [default: 7, 3 with --quick].")
@click.option("--cell", type=click.Choice(["lstm", "gru", "rnn"]), default="lstm",
              show_default=True, help="Which layer to time.")
@click.option("--memory/--no-memory", default=None,
              help="Measure peak memory in subprocesses [default: on, off with --quick].")
@click.option("--first-call/--no-first-call", "first", default=None,
              help="Measure the first-call (compile/load) cost [default: on, off with --quick].")
@click.option("--reference", is_flag=True,
              help="Time the readable reference path instead of the fused kernels.")
@click.option("--calibrate", is_flag=True,
              help="Instead of the comparison: measure where the engine should switch plans "
                   "on this CPU and cache it for this CPU model (lstmkit.calibrate).")
def bench(quick: bool, json_path: str | None, shapes: str | None, threads: int | None,
          reps: int | None, cell: str, memory: bool | None, first: bool | None,
          reference: bool, calibrate: bool) -> None:
    """Time lstmkit's training step and inference against PyTorch, shape by shape."""
    if calibrate:
        from lstmkit.calibrate import calibrate as run_calibration

        if threads:
            benchmark.set_threads(threads)
        record = run_calibration(quick=quick, rounds=reps or (3 if quick else 7),
                                 threads=threads, echo=click.echo)
        if json_path:
            benchmark.save(record, json_path)
        return
    try:
        grid = benchmark.parse_shapes(shapes) if shapes else None
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--shapes") from error
    report = benchmark.run(
        shapes=grid, cell=cell, threads=threads, reps=reps or (3 if quick else 7),
        memory=(not quick) if memory is None else memory,
        first=(not quick) if first is None else first, fast=not reference, echo=click.echo,
    )
    if json_path:
        benchmark.save(report, json_path)
        click.echo(f"results written to {json_path}")


COMMANDS = [bench]
