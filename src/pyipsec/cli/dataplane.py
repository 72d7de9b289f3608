"""``pyipsec dataplane|sa|policy-entry|flush``: the user-space data plane and manual keying.

``pyipsec dataplane --static FILE`` runs the data plane in the foreground. The other
commands talk to the running data plane of the current network namespace through its
control socket (``/run/pyipsec/dataplane.<netns>.sock``, 0600), so ``sa add`` takes effect
at once, like ``ip xfrm state add``. ``flush`` works without a running data plane (after a
crash) and removes everything pyipsec installed.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

import click

from pyipsec.control.client import ControlClient
from pyipsec.control.protocol import ControlError

control_option = click.option(
    "--control",
    "control_path",
    default=None,
    envvar="PYIPSEC_DATAPLANE_SOCKET",
    help="control socket of the data plane (default: per network namespace)",
)
json_option = click.option("--json", "as_json", is_flag=True, help="print JSON")


def _client(path: str | None) -> ControlClient:
    from pyipsec.dataplane.service import default_control_path

    return ControlClient(path or default_control_path())


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True))


@click.command("dataplane")
@click.option("--static", "static_file", required=True, type=click.Path(dir_okay=False),
              help="YAML file of static SAs and SPD entries")  # fmt: skip
@control_option
@click.option("--no-gso", is_flag=True, help="send ESP-in-UDP one datagram per call")
@click.option("--no-offload", is_flag=True, help="no TUN offloads (IFF_VNET_HDR, GSO writes)")
@click.option("--tso", is_flag=True, help="also read TSO super-packets, segmented in Python")
@click.option("-v", "--verbose", is_flag=True, help="log at INFO level")
def dataplane(
    static_file: str,
    control_path: str | None,
    no_gso: bool,
    no_offload: bool,
    tso: bool,
    verbose: bool,
) -> None:
    """Run the user-space data plane with the SAs and policies of FILE (foreground)."""
    from pyipsec.dataplane.service import is_local_factory, run_service
    from pyipsec.dataplane.static import load_static_file

    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="pyipsec-dataplane: %(levelname)s %(message)s",
    )
    static = load_static_file(static_file, is_local=is_local_factory())
    sys.exit(
        run_service(
            static, control_path=control_path, gso=not no_gso, offload=not no_offload, tso=tso
        )
    )


# --------------------------------------------------------------------------- sa


@click.group("sa")
def sa() -> None:
    """Manually keyed SAs of the running data plane (like ip xfrm state)."""


@sa.command("add")
@control_option
@click.option("--spi", required=True, help="SPI, decimal or 0x-hex")
@click.option("--src", required=True, help="outer source address")
@click.option("--dst", required=True, help="outer destination address")
@click.option("--protocol", default="esp", show_default=True, type=click.Choice(["esp", "ah"]))
@click.option("--mode", default="transport", show_default=True,
              type=click.Choice(["transport", "tunnel"]))  # fmt: skip
@click.option("--algorithm", required=True, help="e.g. aes128gcm16, chacha20poly1305")
@click.option("--key", default=None, help="key in hex, or - to read it from stdin")
@click.option("--key-file", default=None, help="file holding the key in hex (0600)")
@click.option("--encap", default=None, type=click.Choice(["udp"]), help="ESP in UDP 4500")
@click.option("--child", required=True, help="child name of the PROTECT policies it serves")
@click.option("--direction", default=None, type=click.Choice(["in", "out"]),
              help="default: out if src is local, in if dst is")  # fmt: skip
@click.option("--replay-window", default=64, show_default=True, type=int)
@click.option("--esn", is_flag=True)
def sa_add(control_path: str | None, key: str | None, **fields: Any) -> None:
    """Add an SA to the running data plane."""
    if key == "-":
        key = sys.stdin.readline().strip()
    args = {k: v for k, v in fields.items() if v is not None}
    if key is not None:
        args["key"] = key
    result = _client(control_path).call("sa-add", sa=args)
    click.echo(f"added {result['direction']} {result['protocol']} SA spi {result['spi']}")


@sa.command("del")
@control_option
@click.option("--spi", required=True)
@click.option("--protocol", default="esp", show_default=True, type=click.Choice(["esp", "ah"]))
@click.option("--direction", default=None, type=click.Choice(["in", "out"]))
def sa_del(control_path: str | None, spi: str, protocol: str, direction: str | None) -> None:
    """Delete an SA from the running data plane."""
    result = _client(control_path).call("sa-del", spi=spi, protocol=protocol, direction=direction)
    click.echo(f"deleted {result['direction']} {result['protocol']} SA spi {result['spi']}")


@sa.command("list")
@control_option
@json_option
@click.option("--show-keys", is_flag=True, help="include key material (hex)")
def sa_list(control_path: str | None, as_json: bool, show_keys: bool) -> None:
    """List SAs with their statistics (keys only with --show-keys)."""
    result = _client(control_path).call("sa-list", show_keys=show_keys)
    if as_json:
        _echo_json(result)
        return
    for item in result:
        s, st = item["sa"], item["statistics"]
        line = (
            f"{s['direction']:3} {s['protocol']} spi {s['spi']} {s['src']} -> {s['dst']} "
            f"{s['mode']} {s['algorithm']}{' udp' if s['encap'] else ''} child {s['child']}"
        )
        click.echo(line)
        counts = " ".join(f"{k}={v}" for k, v in sorted(st.items()) if isinstance(v, int) and v)
        click.echo(f"    {counts or 'no traffic'}")
        if show_keys and "key" in s:
            click.echo(f"    key {s['key']}")


@sa.command("stats")
@control_option
@json_option
def sa_stats(control_path: str | None, as_json: bool) -> None:
    """Data plane counters: packets, drops by reason (unknown SPI, replay, ICV...),
    acquires, TUN and kernel rule counters."""
    result = _client(control_path).call("stats")
    if as_json:
        _echo_json(result)
        return
    for name in ("outbound", "inbound"):
        pipe = dict(result[name]["pipeline"])
        errors = dict(pipe.pop("errors", []))
        line = " ".join(f"{k}={v}" for k, v in pipe.items())
        click.echo(f"{name}: {line}")
        if errors:
            click.echo("    drops: " + " ".join(f"{k}={v}" for k, v in sorted(errors.items())))
        tun = result[name].get("tun") or {}
        click.echo("    tun: " + " ".join(f"{k}={v}" for k, v in tun.items() if v))
    for rule, (packets, nbytes) in sorted(result.get("kernel", {}).items()):
        click.echo(f"kernel {rule}: {packets} packets {nbytes} bytes")


# --------------------------------------------------------------------------- policies


@click.group("policy-entry")
def policy_entry() -> None:
    """SPD entries of the running data plane (compiled into nftables at once)."""


@policy_entry.command("add")
@control_option
@click.option("--name", required=True)
@click.option("--local", default="any", show_default=True)
@click.option("--remote", default="any", show_default=True)
@click.option("--protocol", default=None, help="tcp, udp, icmp, ... or a number")
@click.option("--local-ports", default=None)
@click.option("--remote-ports", default=None)
@click.option("--action", required=True, type=click.Choice(["protect", "bypass", "discard"]))
@click.option("--priority", default=None, type=int)
@click.option("--child", default=None)
@click.option("--direction", default=None, type=click.Choice(["both", "in", "out"]))
def policy_add(control_path: str | None, **fields: Any) -> None:
    """Add an SPD entry."""
    args = {k: v for k, v in fields.items() if v is not None}
    result = _client(control_path).call("policy-add", policy=args)
    click.echo(f"added policy {result['name']}")


@policy_entry.command("del")
@control_option
@click.option("--name", required=True)
def policy_del(control_path: str | None, name: str) -> None:
    """Delete an SPD entry."""
    _client(control_path).call("policy-del", name=name)
    click.echo(f"deleted policy {name}")


@policy_entry.command("list")
@control_option
@json_option
def policy_list(control_path: str | None, as_json: bool) -> None:
    """List SPD entries in order, with the packets the kernel rules counted."""
    result = _client(control_path).call("policy-list")
    if as_json:
        _echo_json(result)
        return
    for p in result:
        extra = f" child {p['child']}" if p.get("child") else ""
        click.echo(
            f"{p['name']}: {p['action']} {p['selector']} prio {p.get('priority', 100)}"
            f"{extra} (kernel drops/marks: {p['kernel_packets']})"
        )


# --------------------------------------------------------------------------- flush


@click.command("flush")
@control_option
def flush(control_path: str | None) -> None:
    """Stop the data plane if running and remove all pyipsec kernel state."""
    from pyipsec.dataplane.service import flush as do_flush

    try:
        _client(control_path).call("shutdown")
        click.echo("asked the running data plane to stop")
        import time

        time.sleep(1.0)
    except ControlError:
        pass
    removed = do_flush()
    click.echo("removed: " + (", ".join(removed) if removed else "nothing"))


commands = [dataplane, sa, policy_entry, flush]
