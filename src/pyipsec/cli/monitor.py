"""``pyipsec status|stats|up|down|rekey|reload|events``: the monitor and SA control.

Every command talks to the daemon only through the control socket; ``--json`` prints
exactly what the control API returned, so scripts and the tables agree.
"""

from __future__ import annotations

import json
import time
from typing import Any

import click

from pyipsec.cli.tables import human_seconds, main_mode_table, quick_mode_table, stats_table
from pyipsec.control.client import ControlClient
from pyipsec.control.protocol import DEFAULT_SOCKET

socket_option = click.option(
    "--socket",
    "socket_path",
    default=DEFAULT_SOCKET,
    show_default=True,
    envvar="PYIPSEC_SOCKET",
    help="control socket of the daemon",
)
json_option = click.option("--json", "as_json", is_flag=True, help="print JSON")
watch_option = click.option(
    "--watch", type=float, default=None, metavar="SECONDS", help="refresh every SECONDS"
)


def _print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True))


def _repeat(watch: float | None, show: Any) -> None:
    if watch is None:
        show()
        return
    try:
        while True:
            click.clear()
            click.echo(time.strftime("%Y-%m-%d %H:%M:%S"))
            show()
            time.sleep(max(watch, 0.2))
    except KeyboardInterrupt:
        pass


@click.command()
@socket_option
@json_option
@watch_option
def status(socket_path: str, as_json: bool, watch: float | None) -> None:
    """Show IKE SAs (Main Mode) and Child SAs (Quick Mode)."""
    client = ControlClient(socket_path)

    def show() -> None:
        result = client.call("status")
        if as_json:
            _print_json(result)
            return
        click.echo(f"Main Mode (IKE SAs): {len(result.get('ike_sas', []))}")
        click.echo(main_mode_table(result.get("ike_sas", [])))
        click.echo("")
        click.echo(f"Quick Mode (Child SAs): {len(result.get('child_sas', []))}")
        click.echo(quick_mode_table(result.get("child_sas", [])))
        _show_policy(result.get("policy"))
        fallbacks = result.get("fallbacks") or []
        if fallbacks:
            click.echo("")
            click.echo(f"In clear after unsecured fallback (no IPsec answer): {len(fallbacks)}")
            for item in fallbacks:
                click.echo(
                    f"  {item.get('remote', '')} ({item.get('connection', '')}/"
                    f"{item.get('child', '')}) for {human_seconds(item.get('for'))}"
                )
        failures = result.get("recent_failures") or []
        if failures:
            click.echo("")
            click.echo("Recent failures:")
            for failure in failures:
                click.echo(
                    f"  {failure.get('when', '')} {failure.get('peer', '')}: "
                    f"{failure.get('reason', '')}"
                )

    _repeat(watch, show)


def _show_policy(policy: dict[str, Any] | None) -> None:
    """The applied policy (daemons with a ``policy:`` section): name, version, source."""
    if not policy:
        return
    click.echo("")
    if policy.get("name"):
        version = f" version {policy['version']}" if policy.get("version") is not None else ""
        applied = policy.get("applied_at")
        when = time.strftime(" (applied %H:%M:%S)", time.localtime(applied)) if applied else ""
        click.echo(f"Policy: {policy['name']!r}{version} from {policy.get('source')}{when}")
    else:
        click.echo(f"Policy: none applied (source {policy.get('source')})")
    if policy.get("last_error"):
        click.echo(f"  last policy error: {policy['last_error']}")


@click.command()
@socket_option
@json_option
@watch_option
def stats(socket_path: str, as_json: bool, watch: float | None) -> None:
    """Show IPsec statistics (SAs, key exchanges, bad packets, bytes)."""
    client = ControlClient(socket_path)

    def show() -> None:
        result = client.call("statistics")
        if as_json:
            _print_json(result)
        else:
            click.echo(stats_table(result))

    _repeat(watch, show)


def _action(command: str, help_text: str) -> click.Command:
    @click.command(name=command, help=help_text)
    @click.argument("name")
    @socket_option
    @json_option
    def run(name: str, socket_path: str, as_json: bool) -> None:
        result = ControlClient(socket_path).call(command, name=name)
        if as_json:
            _print_json(result)
        else:
            click.echo(result.get("message", "ok") if isinstance(result, dict) else result)

    return run


up = _action("up", "Initiate the connection or child NAME now.")
down = _action("down", "Delete the SAs of connection or child NAME.")
rekey = _action("rekey", "Rekey the connection or child NAME now.")


@click.command()
@socket_option
@json_option
def reload(socket_path: str, as_json: bool) -> None:
    """Re-read the configuration; SAs whose configuration did not change stay up."""
    result = ControlClient(socket_path).call("reload")
    if as_json:
        _print_json(result)
    else:
        click.echo(result.get("message", "reloaded") if isinstance(result, dict) else result)


@click.command()
@socket_option
def events(socket_path: str) -> None:
    """Follow SA up/down events (one JSON object per line) until interrupted."""
    try:
        for event in ControlClient(socket_path).events():
            click.echo(json.dumps(event, sort_keys=True))
    except KeyboardInterrupt:
        pass


commands = [status, stats, up, down, rekey, reload, events]
