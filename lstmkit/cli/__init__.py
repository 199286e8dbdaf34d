"""The ``lstmkit`` command line: one click group, one module per command."""

from __future__ import annotations

import click

from lstmkit import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lstmkit")
def main() -> None:
    """lstmkit: exact, fast, inspectable LSTM networks on the CPU."""


def _register() -> None:
    """Attach every command module's commands to the group.

    Each module under ``lstmkit/cli/`` defines its commands and is listed here once.
    """
    from importlib import import_module

    for name in _COMMAND_MODULES:
        module = import_module(f"lstmkit.cli.{name}")
        for command in module.COMMANDS:
            main.add_command(command)


_COMMAND_MODULES: list[str] = [
    "demo", "interop", "charlm", "gates", "explore", "experiment", "export", "bench",
    "figures", "sweep",
]
_register()
