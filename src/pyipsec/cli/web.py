"""``pyipsec web``, ``pyipsec web-token`` and ``pyipsec metrics``.

``web`` runs the web monitor (:mod:`pyipsec.web.app`) in the foreground until
interrupted; ``metrics`` prints one Prometheus scrape of the daemon (for a textfile
collector or a quick look); ``web-token`` creates the 0600 token file that ``web``
requires before it listens on a non-loopback address.
"""

from __future__ import annotations

import click

from pyipsec.control.metrics import DaemonCollector, exposition
from pyipsec.control.protocol import DEFAULT_SOCKET
from pyipsec.web.app import DEFAULT_LISTEN, WebMonitor, create_token_file

socket_option = click.option(
    "--socket",
    "socket_path",
    default=DEFAULT_SOCKET,
    show_default=True,
    envvar="PYIPSEC_SOCKET",
    help="control socket of the daemon",
)


@click.command()
@click.option(
    "--listen",
    default=DEFAULT_LISTEN,
    show_default=True,
    metavar="ADDR:PORT",
    help="address to serve on ([v6]:port for IPv6; port 0 picks one)",
)
@socket_option
@click.option(
    "--token-file",
    type=click.Path(dir_okay=False),
    default=None,
    help="0600 file with the HTTP Basic password; required off loopback",
)
@click.option(
    "--tls-cert",
    type=click.Path(dir_okay=False),
    default=None,
    help="PEM certificate (chain): serve HTTPS",
)
@click.option(
    "--tls-key", type=click.Path(dir_okay=False), default=None, help="PEM key (0600) of --tls-cert"
)
@click.option(
    "--refresh",
    type=click.IntRange(0, 3600),
    default=5,
    show_default=True,
    help="seconds between page reloads (0: never)",
)
def web(
    listen: str,
    socket_path: str,
    token_file: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    refresh: int,
) -> None:
    """Serve the SA monitor page, /api/status, /api/statistics and /metrics."""
    monitor = WebMonitor(
        listen,
        socket_path=socket_path,
        token_file=token_file,
        tls_cert=tls_cert,
        tls_key=tls_key,
        refresh=refresh,
    )
    monitor.start()
    click.echo(f"pyipsec web monitor on {monitor.url} (Ctrl-C stops)")
    try:
        monitor.wait()
    except KeyboardInterrupt:
        pass
    finally:
        monitor.close()


@click.command(name="web-token")
@click.argument("path", type=click.Path(dir_okay=False))
def web_token(path: str) -> None:
    """Create PATH (0600) holding a new random token for `pyipsec web --token-file`."""
    create_token_file(path)
    click.echo(f"token written to {path} (user name: any, password: the file's content)")


@click.command()
@socket_option
def metrics(socket_path: str) -> None:
    """Print one Prometheus scrape of the daemon (pyipsec_up 0 when it is down)."""
    click.echo(exposition(DaemonCollector(socket_path)).decode(), nl=False)


commands = [web, web_token, metrics]
