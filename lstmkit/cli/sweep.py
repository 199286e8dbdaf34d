"""``lstmkit sweep EXPERIMENT --out DIR``: an experiment's trials as Ray tasks, on this machine's
cores or on a cluster.

Examples::

    lstmkit sweep adding --quick --seeds 8 --out sweeps/adding
    lstmkit sweep variants --quick --seeds 20 --out sweeps/greff
    lstmkit sweep adding --quick --grid lr=0.01,0.003,0.001 --grid hidden=16,32 --out sweeps/lr
    lstmkit sweep adding --quick --grid lr=0.0003..0.03:log --grid hidden=16..64 --samples 10 \\
        --out sweeps/random
    lstmkit sweep variants --seeds 20 --out sweeps/greff --address head-node:6379
"""

from __future__ import annotations

import click

from lstmkit.cli.experiment import _parse_settings
from lstmkit.experiments import EXPERIMENTS
from lstmkit.experiments.common import stopwatch


@click.command()
@click.argument("experiment", type=click.Choice(list(EXPERIMENTS)))
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="The sweep's folder: one JSON per trial, reports, summary.json/.md, plots. "
                   "Running the same sweep again skips the finished trials.")
@click.option("--seeds", type=click.IntRange(min=1), default=None,
              help="Seeds per settings (seed, seed+1, ...); default: the experiment's own.")
@click.option("--seed", type=int, default=0, show_default=True, help="The first seed.")
@click.option("--grid", multiple=True, metavar="NAME=V1,V2,...",
              help="Values of one setting to sweep (repeatable; the trials cross all grids); "
                   "with --samples also a range NAME=LOW..HIGH or NAME=LOW..HIGH:log.")
@click.option("--samples", type=click.IntRange(min=1), default=None,
              help="Run this many settings drawn at random from the grid (its values and "
                   "ranges; reproducibly from --seed) instead of all its combinations.")
@click.option("--set", "settings", multiple=True, metavar="NAME=VALUE",
              help="A setting every trial shares (repeatable), as in lstmkit experiment.")
@click.option("--quick", is_flag=True, help="The experiment's short version.")
@click.option("--tiny", is_flag=True, hidden=True, help="Seconds-long trials (for tests).")
@click.option("--address", default=None, metavar="ADDR",
              help="Join the Ray cluster at ADDR (host:port of its head node, as `ray start "
                   "--head` prints) [default: start Ray on this machine's cores].")
@click.option("--cpus-per-trial", type=click.IntRange(min=1), default=1, show_default=True,
              help="CPUs Ray reserves for each trial; the trial runs on as many threads.")
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="Show a progress bar of finished trials.")
def sweep(experiment: str, out: str, seeds: int | None, seed: int, grid: tuple[str, ...],
          samples: int | None, settings: tuple[str, ...], quick: bool, tiny: bool,
          address: str | None, cpus_per_trial: int, progress: bool) -> None:
    """Run the trials of EXPERIMENT (each seed with each settings) as Ray tasks.

    Each trial's numbers equal those of `lstmkit experiment EXPERIMENT --seed S --seeds 1
    --threads K` with the same settings (K = --cpus-per-trial). Needs Ray:
    pip install "lstmkit[sweep]".
    """
    from lstmkit.experiments.sweep import SweepError, run_sweep

    mode = "tiny" if tiny else "quick" if quick else "full"
    with stopwatch() as timing:
        try:
            result = run_sweep(experiment, out, mode=mode, seeds=seeds, seed=seed, grid=grid,
                               samples=samples, fixed=_parse_settings(settings),
                               address=address, cpus_per_trial=cpus_per_trial,
                               show_progress=progress, echo=click.echo)
        except SweepError as error:
            raise click.UsageError(str(error)) from error
    click.echo(result.table)
    click.echo(f"Summary: {result.out_dir}/summary.md, summary.json; trials in "
               f"{result.out_dir}/trials ({result.ran} run now, {result.skipped} finished "
               f"before, {timing['seconds']:.0f} s)")
    if result.failed:
        for trial in result.failed:
            click.echo(f"  failed: {trial['path']}: {trial.get('error')}", err=True)
        raise click.ClickException(f"{len(result.failed)} of {len(result.plan.trials)} trials "
                                   "failed (their errors are in their JSON and summary.md); "
                                   "run the same command again to retry them")


COMMANDS = [sweep]
