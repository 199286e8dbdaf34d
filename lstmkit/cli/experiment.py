"""``lstmkit experiment NAME``: rerun one of the classic LSTM experiments and write its results.

Examples::

    lstmkit experiment adding --quick
    lstmkit experiment clipping --seeds 5 --out results/clipping-5
    lstmkit experiment adding --set budget=200000 --set T=50
    lstmkit experiment all --quick
"""

from __future__ import annotations

import click

from lstmkit.experiments import EXPERIMENTS, TITLES, run_experiment
from lstmkit.experiments.common import stopwatch
from lstmkit.experiments.trial import limit_threads


def _parse_settings(settings: tuple[str, ...]) -> dict[str, str]:
    parsed = {}
    for item in settings:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected NAME=VALUE, got {item!r}", param_hint="--set")
        parsed[key.strip().replace("-", "_")] = value.strip()
    return parsed


@click.command()
@click.argument("name", type=click.Choice([*EXPERIMENTS, "all"]))
@click.option("--quick", is_flag=True, help="The short version (under about a minute).")
@click.option("--tiny", is_flag=True, hidden=True, help="Seconds-long smoke run (for tests).")
@click.option("--seeds", type=click.IntRange(min=1), default=None,
              help="Number of seeds (runs seed, seed+1, ...); default: the experiment's own.")
@click.option("--seed", type=int, default=0, show_default=True, help="The first seed.")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Results folder [default: results/NAME/; a timestamped subfolder if it "
                   "already holds results].")
@click.option("--force", is_flag=True, help="Write over the results already in --out.")
@click.option("--set", "settings", multiple=True, metavar="NAME=VALUE",
              help="Change one setting of the experiment (repeatable), e.g. budget=200000.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Threads for the kernels and BLAS [default: Numba's, every core]. Runs "
                   "with the same seed, settings and threads give the same numbers.")
@click.option("--parallel", is_flag=True,
              help="Run the seeds side by side as Ray tasks on this machine's cores, one "
                   "thread each (the numbers of --threads 1); needs Ray: "
                   'pip install "lstmkit[sweep]".')
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="Show a progress bar.")
def experiment(name: str, quick: bool, tiny: bool, seeds: int | None, seed: int,
               out: str | None, force: bool, settings: tuple[str, ...], threads: int | None,
               parallel: bool, progress: bool) -> None:
    """Run experiment NAME and write results.json, results.md and plots.

    NAME is one of: adding, clipping, forget-gate, peepholes, temporal-order, variants
    (or all, each into its own folder under --out).
    """
    mode = "tiny" if tiny else "quick" if quick else "full"
    overrides = _parse_settings(settings)
    names = list(EXPERIMENTS) if name == "all" else [name]
    if name == "all" and overrides:
        raise click.UsageError("--set applies to one experiment; name it instead of 'all'")
    if parallel and threads not in (None, 1):
        raise click.UsageError("--parallel runs each seed on one thread; leave out --threads")
    if parallel:
        from lstmkit.experiments.sweep import run_seeds_on_ray as run
    else:
        run = run_experiment
    for each in names:
        target = out if name != "all" or out is None else f"{out}/{each}"
        click.echo(f"== {TITLES[each]} ({mode} mode)")
        with stopwatch() as timing, limit_threads(threads):
            try:
                result = run(each, mode=mode, seeds=seeds, seed=seed, out=target, force=force,
                             show_progress=progress, **overrides)
            except ValueError as error:
                raise click.UsageError(str(error)) from error
        click.echo(result.table)
        for line in result.data.get("summary", []) + result.data.get("checks", []):
            click.echo(f"  {line}")
        click.echo(f"Results: {result.out_dir}/results.md, results.json"
                   + "".join(f", {p.name}" for p in result.plots)
                   + f" ({timing['seconds']:.0f} s)\n")


COMMANDS = [experiment]
