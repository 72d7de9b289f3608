"""The ``pyipsec`` command.

Sub-command groups live in their own modules under :mod:`pyipsec.cli` and are
registered here, so that each can be developed and tested on its own.
"""

from __future__ import annotations

import importlib
import sys

import click

from pyipsec import __version__
from pyipsec.errors import PyipsecError

# module name -> attribute holding a click command or group
_SUBCOMMANDS: list[tuple[str, str]] = [
    ("pyipsec.cli.dataplane", "commands"),
    ("pyipsec.cli.monitor", "commands"),
    ("pyipsec.cli.daemon", "commands"),
    ("pyipsec.cli.policy", "commands"),
    ("pyipsec.cli.central", "commands"),
    ("pyipsec.cli.web", "commands"),
]


@click.group()
@click.version_option(__version__, prog_name="pyipsec")
def cli() -> None:
    """pyipsec: IPsec (IKEv2, ESP, AH) for Linux."""


def _register() -> None:
    for module_name, attr in _SUBCOMMANDS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue
            raise
        for command in getattr(module, attr):
            cli.add_command(command)


_register()


def main() -> None:
    """Entry point: user errors are one clear line, not a traceback."""
    try:
        cli(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(1)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except PyipsecError as exc:
        click.echo(f"pyipsec: error: {exc}", err=True)
        sys.exit(1)
    except PermissionError as exc:
        click.echo(f"pyipsec: permission denied: {exc}", err=True)
        sys.exit(1)
