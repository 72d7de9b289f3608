"""``pyipsec daemon --config FILE`` and ``pyipsec check-config FILE``."""

from __future__ import annotations

import sys

import click

from pyipsec.daemon.config import DEFAULT_CONFIG, load_config


@click.command()
@click.option(
    "--config",
    "config_path",
    default=DEFAULT_CONFIG,
    show_default=True,
    envvar="PYIPSEC_CONFIG",
    help="daemon configuration (YAML)",
)
def daemon(config_path: str) -> None:
    """Run the IPsec daemon in the foreground (logs to stdout)."""
    from pyipsec.daemon.main import main

    sys.exit(main(config_path))


@click.command(name="check-config")
@click.argument("config_path", default=DEFAULT_CONFIG)
def check_config(config_path: str) -> None:
    """Validate a daemon configuration without running anything."""
    config = load_config(config_path)
    children = sum(len(p.children) for p in config.endpoint.peers)
    click.echo(
        f"{config_path}: OK ({len(config.connections)} connection(s), {children} child(ren))"
    )


commands = [daemon, check_config]
