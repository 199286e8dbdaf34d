"""``lstmkit demo``: the study note's first claim, shown in a few seconds.

How much of a loss gradient at the last step of a sequence reaches its first input, for a
simple tanh RNN, an LSTM with a forget gate, and the 1997 LSTM whose carousel never forgets.
"""

from __future__ import annotations

import click
import numpy as np

import lstmkit


def gradient_reaching_first_step(layer: lstmkit.RNN | lstmkit.LSTM, T: int, seed: int) -> float:
    """||dL/dx_0|| where L = sum(h_T), for random inputs of length T (float64)."""
    x = np.random.default_rng(seed).standard_normal((T, 1, layer.input_size))
    out, _ = layer(x)
    d_out = np.zeros_like(out)
    d_out[-1] = 1.0
    dx, _ = layer.backward(d_out)
    return float(np.linalg.norm(dx[0]))


@click.command()
@click.option("--seed", default=0, show_default=True, help="Seed of the weights and inputs.")
def demo(seed: int) -> None:
    """Show the vanishing gradient of a simple RNN next to the LSTM's carousel."""
    models = {
        "RNN (tanh)": lstmkit.RNN(8, 32, dtype="float64", seed=seed),
        "LSTM": lstmkit.LSTM(8, 32, dtype="float64", seed=seed),
        "LSTM forget_gate=False": lstmkit.LSTM(8, 32, forget_gate=False, dtype="float64",
                                               seed=seed),
    }
    lengths = (5, 20, 50, 100)
    click.echo("||dL/dx_0|| for L = sum(h_T), at initialisation:")
    click.echo(f"{'model':<24}" + "".join(f"{'T=' + str(T):>12}" for T in lengths))
    for name, layer in models.items():
        norms = [gradient_reaching_first_step(layer, T, seed) for T in lengths]
        click.echo(f"{name:<24}" + "".join(f"{n:>12.3e}" for n in norms))


COMMANDS = [demo]
