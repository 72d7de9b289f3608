"""``pyipsec policy``: check, explain, plan and compile policies; show the built-in ones.

The store and server commands (create, edit, assign, update...) attach themselves to this
same ``policy`` group from :mod:`pyipsec.cli.central`.

* ``pyipsec policy check FILE [--me ADDR]``: validate (and compile for a host).
* ``pyipsec policy explain FILE --me ADDR --src A --dst B [--proto tcp --dport 5432]``.
* ``pyipsec policy plan FILE --me ADDR [--current FILE]``.
* ``pyipsec policy compile FILE --me ADDR``: the daemon configuration it becomes.
* ``pyipsec policy show-builtin [NAME] [--set key=value]``.

DNS names in filters are resolved here, through the system resolver (the policy layer
itself takes the resolver as an argument and never touches the network).
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from typing import Any

import click

from pyipsec.errors import ConfigError
from pyipsec.policy.compile import (
    ALL_CAPABILITIES,
    DAEMON_CAPABILITIES,
    CompiledPolicy,
    HostContext,
    compile_policy,
)
from pyipsec.policy.loader import load_policy_file

__all__ = ["commands", "policy", "system_resolver"]


def system_resolver(name: str) -> list[str]:
    """Addresses of ``name`` from the system resolver (getaddrinfo), in its order."""
    infos = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


@click.group("policy")
def policy() -> None:
    """IPsec policies: check, explain, plan, compile; store and assign."""


def _host_options(func: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option("--me", "me", multiple=True, required=True,
                     help="this host's address (repeat for several)"),
        click.option("--cert", default=None, help="this host's certificate (PEM file)"),
        click.option("--key", default=None, help="this host's private key (PEM file)"),
        click.option("--secrets", "secrets", default="/etc/pyipsec/secrets.yaml",
                     show_default=True, help="the daemon's secrets file (0600)"),
        click.option("--assume", multiple=True, type=click.Choice(sorted(ALL_CAPABILITIES)),
                     help="compile for a daemon with this capability (not today's daemon)"),
    ]  # fmt: skip
    for option in reversed(options):
        func = option(func)
    return func


def _compile(path: str, me: tuple[str, ...], cert: str | None, key: str | None,
             secrets: str, assume: tuple[str, ...]) -> CompiledPolicy:  # fmt: skip
    host = HostContext(me, certificate=cert, private_key=key, secrets_file=secrets)
    return compile_policy(
        load_policy_file(path),
        host,
        resolver=system_resolver,
        capabilities=DAEMON_CAPABILITIES | frozenset(assume),
    )


@policy.command("check")
@click.argument("path", metavar="FILE")
@click.option("--me", multiple=True, help="also compile for this host address")
@click.option("--assume", multiple=True, type=click.Choice(sorted(ALL_CAPABILITIES)))
def check(path: str, me: tuple[str, ...], assume: tuple[str, ...]) -> None:
    """Validate a policy file (and compile it for --me, which also finds ties)."""
    pol = load_policy_file(path)
    lists = {r.filter_list for r in pol.rules}
    click.echo(
        f"{path}: OK: policy {pol.name!r}, {len(pol.rules)} rule(s), {len(lists)} filter "
        f"list(s), default response {'on' if pol.default_response else 'off'}"
    )
    if me:
        compiled = compile_policy(
            pol,
            HostContext(me, certificate="<host certificate>", private_key="<host key>"),
            resolver=system_resolver,
            capabilities=DAEMON_CAPABILITIES | frozenset(assume),
        )
        click.echo(
            f"for {', '.join(compiled.addresses)}: {len(compiled.spd)} SPD entries, "
            f"{len(compiled.daemon['connections'])} connection(s)"
        )
        for reason in compiled.skipped:
            click.echo(f"  not applicable: {reason}")


@policy.command("explain")
@click.argument("path", metavar="FILE")
@_host_options
@click.option("--src", required=True, help="packet source address")
@click.option("--dst", required=True, help="packet destination address")
@click.option("--proto", default=None, help="tcp, udp, icmp, or a number (default: any)")
@click.option("--sport", type=int, default=0, help="source port")
@click.option("--dport", type=int, default=0, help="destination port")
@click.option("--json", "as_json", is_flag=True, help="JSON output")
def explain_cmd(path: str, me: tuple[str, ...], cert: str | None, key: str | None,
                secrets: str, assume: tuple[str, ...], src: str, dst: str, proto: str | None,
                sport: int, dport: int, as_json: bool) -> None:  # fmt: skip
    """Which rule and filter match a packet, what happens to it and why."""
    from pyipsec.policy.explain import explain, make_flow

    flow = make_flow(src, dst, proto, sport, dport)
    # Explain what the policy means even where today's daemon cannot apply it yet
    # (unless --assume narrows the capabilities); say so when that is the case.
    compiled = _compile(path, me, cert, key, secrets, assume or tuple(ALL_CAPABILITIES))
    result = explain(compiled, flow)
    missing = sorted(compiled.requires - set(assume) - DAEMON_CAPABILITIES)
    if as_json:
        data = result.to_dict()
        data["daemon_cannot_yet"] = missing
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(result.text())
    if missing:
        click.echo(
            "note: applying this policy needs daemon capabilities today's daemon lacks: "
            + ", ".join(missing)
        )


def _firewall(entries: Any) -> list[dict[str, Any]]:
    from pyipsec.dataplane.kernel import compile_ruleset
    from pyipsec.platform.linux.routing import RoutingConfig

    return compile_ruleset(entries, RoutingConfig())


@policy.command("plan")
@click.argument("path", metavar="FILE")
@_host_options
@click.option("--current", default=None, help="the policy file applied now (default: none)")
@click.option("--json", "as_json", is_flag=True, help="JSON output")
def plan_cmd(path: str, me: tuple[str, ...], cert: str | None, key: str | None, secrets: str,
             assume: tuple[str, ...], current: str | None, as_json: bool) -> None:  # fmt: skip
    """What applying FILE would change on this host (nothing is changed)."""
    from pyipsec.policy.plan import plan

    new = _compile(path, me, cert, key, secrets, assume)
    old = _compile(current, me, cert, key, secrets, assume) if current else None
    result = plan(new, old, firewall=_firewall)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
    else:
        click.echo(result.text())


@policy.command("compile")
@click.argument("path", metavar="FILE")
@_host_options
@click.option("--json", "as_json", is_flag=True, help="daemon config and SPD as JSON")
def compile_cmd(path: str, me: tuple[str, ...], cert: str | None, key: str | None,
                secrets: str, assume: tuple[str, ...], as_json: bool) -> None:  # fmt: skip
    """Print the daemon configuration (YAML) FILE becomes on this host."""
    compiled = _compile(path, me, cert, key, secrets, assume)
    if as_json:
        spd = [
            {"name": e.name, "selector": str(e.selector), "action": e.action.value,
             "direction": e.direction, "priority": e.priority,
             "child": e.template.child if e.template else None}
            for e in compiled.spd
        ]  # fmt: skip
        click.echo(json.dumps({"daemon": compiled.daemon, "spd": spd,
                               "psk_refs": dict(compiled.psk_refs)}, indent=2))  # fmt: skip
        return
    click.echo(compiled.daemon_yaml(), nl=False)
    for e in compiled.spd:
        click.echo(f"# SPD {e.name}: {e.selector} [{e.direction}] {e.action.value}")


@policy.command("show-builtin")
@click.argument("name", required=False)
@click.option("--set", "params", multiple=True, metavar="KEY=VALUE",
              help="parameter of the example (e.g. server_a=10.0.0.1)")  # fmt: skip
def show_builtin(name: str | None, params: tuple[str, ...]) -> None:
    """List the built-in policies, filter actions and filter lists, or print one policy."""
    from pyipsec.policy.presets import EXAMPLES, FILTER_ACTIONS, FILTER_LISTS, example_yaml

    if name is None:
        click.echo("example policies (pyipsec policy show-builtin NAME):")
        for example, (_, defaults, _) in EXAMPLES.items():
            args = ", ".join(f"{k}={v}" for k, v in defaults.items())
            click.echo(f"  {example}  [{args}]")
        click.echo("filter actions:")
        for action in FILTER_ACTIONS.values():
            click.echo(f"  {action.name}: {action.description}")
        click.echo("filter lists:")
        for fl in FILTER_LISTS.values():
            click.echo(f"  {fl.name}: {fl.description}")
        return
    values: dict[str, str] = {}
    for item in params:
        k, sep, v = item.partition("=")
        if not sep:
            raise ConfigError(f"expected KEY=VALUE, not {item!r}", key="--set")
        values[k.strip()] = v.strip()
    click.echo(example_yaml(name, **values), nl=False)


commands = [policy]
