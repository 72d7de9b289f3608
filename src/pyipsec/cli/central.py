"""Central management commands: the policy store, host groups, the policy server, the PKI.

* ``pyipsec policy create|edit|show|list|delete|export|import|assign|unassign`` work on the
  store (``--store``, default ``$PYIPSEC_STORE`` or /var/lib/pyipsec/policy.db; a
  ``postgresql+psycopg://`` URL selects PostgreSQL). They are attached to the ``policy`` group
  of :mod:`pyipsec.cli.policy` when that module exists (explain/plan/check live there).
* ``pyipsec policy update [--force]`` runs on a host: the running daemon pulls, verifies and
  applies the assigned policy now (like ``gpupdate /force``) and the plan is printed; with
  no daemon the policy is verified and stored locally and the diff printed.
* ``pyipsec group create|delete|add-host|remove-host|list``.
* ``pyipsec server`` runs the HTTPS policy server; ``pyipsec server hosts`` shows which host
  applied which version when.
* ``pyipsec pki init|enroll|issue|revoke|list|crl``: the machine-certificate CA
  (:mod:`pyipsec.cli.pki`, registered through this module).
"""

from __future__ import annotations

import datetime as _dt
import difflib
import getpass
import importlib
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

import click
import yaml

from pyipsec.cli.pki import pki
from pyipsec.errors import ConfigError

DEFAULT_STORE = "/var/lib/pyipsec/policy.db"

DEFAULT_CACHE = "/var/lib/pyipsec/policy-envelope.json"
DEFAULT_OUT = "/etc/pyipsec/policy.yaml"


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return _dt.datetime.fromtimestamp(ts, tz=_dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    for line in [headers, *rows]:
        click.echo("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip())


def _author(author: str | None) -> str:
    if author:
        return author
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _policy_group() -> click.Group:
    """The ``policy`` group of pyipsec.cli.policy when it exists, else our own."""
    try:
        module = importlib.import_module("pyipsec.cli.policy")
    except ModuleNotFoundError as exc:
        if exc.name != "pyipsec.cli.policy":
            raise
    else:
        for command in getattr(module, "commands", ()):
            if isinstance(command, click.Group) and command.name == "policy":
                return command
    return click.Group("policy", help="IPsec policies: author, store, assign, pull.")


policy_group = _policy_group()

store_option = click.option(
    "--store",
    "store_url",
    envvar="PYIPSEC_STORE",
    default=DEFAULT_STORE,
    show_default=True,
    help="policy store: SQLite file or postgresql+psycopg:// URL",
)


def _open_store(url: str) -> Any:
    from pyipsec.policy.store import PolicyStore

    return PolicyStore(url)


def _read_text(path: str) -> str:
    try:
        with click.open_file(path, encoding="utf-8") as handle:
            return handle.read()
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", file=path) from None
    except UnicodeDecodeError:
        raise ConfigError("not UTF-8 text", file=path) from None


# --------------------------------------------------------------------------- policy (store)


@policy_group.command("create")
@click.argument("name")
@click.option("--file", "-f", "path", required=True, help="policy YAML ('-' for stdin)")
@click.option("--comment", "-m", default="", help="why (kept with the version)")
@click.option("--author", default=None, help="default: the current user")
@store_option
def policy_create(name: str, path: str, comment: str, author: str | None, store_url: str) -> None:
    """Store a new policy NAME (version 1) after validating it."""
    store = _open_store(store_url)
    v = store.create_policy(
        name, _read_text(path), author=_author(author), comment=comment, now=time.time()
    )
    click.echo(f"policy {name!r} version {v.version} created (sha256 {v.sha256[:16]})")


@policy_group.command("edit")
@click.argument("name")
@click.option("--file", "-f", "path", default=None, help="new text (default: open $EDITOR)")
@click.option("--comment", "-m", default="", help="why (kept with the version)")
@click.option("--author", default=None, help="default: the current user")
@store_option
def policy_edit(
    name: str, path: str | None, comment: str, author: str | None, store_url: str
) -> None:
    """Store a new version of NAME (an unchanged text makes none)."""
    store = _open_store(store_url)
    current = store.get_policy(name)
    if path is None:
        text = click.edit(current.text, extension=".yaml", require_save=True)
        if text is None:
            click.echo(f"policy {name!r} unchanged (version {current.version})")
            return
    else:
        text = _read_text(path)
    v, new = store.edit_policy(name, text, author=_author(author), comment=comment, now=time.time())
    if new:
        click.echo(f"policy {name!r} version {v.version} stored (was {current.version})")
    else:
        click.echo(f"policy {name!r} unchanged (version {v.version})")


@policy_group.command("show")
@click.argument("name")
@click.option("--version", "version", type=int, default=None, help="a given version")
@click.option("--history", is_flag=True, help="list every version instead")
@store_option
def policy_show(name: str, version: int | None, history: bool, store_url: str) -> None:
    """Show a stored policy (its latest version) or its history."""
    store = _open_store(store_url)
    if history:
        _table(
            ["VERSION", "WHEN", "AUTHOR", "SHA256", "COMMENT"],
            [
                [str(v.version), _when(v.created_at), v.author, v.sha256[:16], v.comment]
                for v in store.history(name)
            ],
        )
        return
    v = store.get_policy(name, version)
    click.echo(f"# policy {v.name!r} version {v.version}, {_when(v.created_at)} by {v.author}")
    click.echo(f"# sha256 {v.sha256}" + (f"; {v.comment}" if v.comment else ""))
    click.echo(v.text, nl=not v.text.endswith("\n"))


@policy_group.command("list")
@store_option
def policy_list(store_url: str) -> None:
    """List stored policies with their latest version and groups."""
    rows = [
        [p.name, str(p.latest_version), _when(p.updated_at), ", ".join(p.groups) or "-"]
        for p in _open_store(store_url).list_policies()
    ]
    _table(["NAME", "VERSION", "UPDATED", "GROUPS"], rows)


@policy_group.command("delete")
@click.argument("name")
@click.option("--force", is_flag=True, help="also remove its assignments")
@store_option
def policy_delete(name: str, force: bool, store_url: str) -> None:
    """Delete a policy and its history (refused while assigned, unless --force)."""
    _open_store(store_url).delete_policy(name, force=force)
    click.echo(f"policy {name!r} deleted")


@policy_group.command("export")
@click.argument("name")
@click.option("--version", "version", type=int, default=None)
@click.option("--output", "-o", default="-", help="file (default: stdout)")
@store_option
def policy_export(name: str, version: int | None, output: str, store_url: str) -> None:
    """Write a policy's text, exactly as stored."""
    v = _open_store(store_url).get_policy(name, version)
    with click.open_file(output, "w", encoding="utf-8", atomic=output != "-") as handle:
        handle.write(v.text)


@policy_group.command("import")
@click.argument("path")
@click.option("--name", default=None, help="store name (default: the document's `name`)")
@click.option("--comment", "-m", default="imported")
@click.option("--author", default=None)
@store_option
def policy_import(
    path: str, name: str | None, comment: str, author: str | None, store_url: str
) -> None:
    """Create a policy from a file, or add a version when it exists."""
    text = _read_text(path)
    if name is None:
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError:
            doc = None
        if not isinstance(doc, dict) or not isinstance(doc.get("name"), str):
            raise ConfigError("no `name` in the document; give --name", file=path, key="name")
        name = doc["name"]
    v, new = _open_store(store_url).import_policy(
        name, text, author=_author(author), comment=comment, now=time.time()
    )
    state = "stored" if new else "unchanged"
    click.echo(f"policy {name!r} version {v.version} {state}")


@policy_group.command("assign")
@click.argument("policy")
@click.argument("group")
@store_option
def policy_assign(policy: str, group: str, store_url: str) -> None:
    """Link POLICY to host GROUP (its hosts get it on their next pull)."""
    new = _open_store(store_url).assign(policy, group, now=time.time())
    click.echo(f"policy {policy!r} {'assigned to' if new else 'already assigned to'} {group!r}")


@policy_group.command("unassign")
@click.argument("policy")
@click.argument("group")
@store_option
def policy_unassign(policy: str, group: str, store_url: str) -> None:
    """Remove the link of POLICY to GROUP."""
    _open_store(store_url).unassign(policy, group)
    click.echo(f"policy {policy!r} unassigned from {group!r}")


def _daemon_update(socket_path: str, force: bool) -> bool:
    """Ask the running daemon to pull and apply now; False when no daemon answers (or it
    has no policy section), so the caller falls back to a local update."""
    from pyipsec.control.client import ControlClient
    from pyipsec.control.protocol import ControlError

    try:
        result = ControlClient(socket_path, timeout=120).call("policy-update", force=force)
    except ControlError as exc:
        if exc.error_type == "ControlError" and (
            "not running" in str(exc) or "cannot reach" in str(exc)
        ):
            click.echo(f"{exc}: verifying and storing the policy locally", err=True)
            return False
        if exc.error_type == "ConfigError" and "no policy section" in str(exc):
            click.echo(
                f"the daemon applies no policy ({exc}): verifying and storing it locally",
                err=True,
            )
            return False
        raise click.ClickException(str(exc)) from None
    click.echo(result.get("message", ""))
    if result.get("plan"):
        click.echo(result["plan"])
    return True


@policy_group.command("update")
@click.option("--force", is_flag=True, help="apply (or rewrite) and report even when unchanged")
@click.option(
    "--socket",
    "socket_path",
    envvar="PYIPSEC_SOCKET",
    default="/run/pyipsec/control.sock",
    show_default=True,
    help="control socket of the running daemon",
)
@click.option(
    "--local",
    "local_only",
    is_flag=True,
    help="do not ask the daemon: only verify and store the policy locally",
)
@click.option(
    "--server",
    envvar="PYIPSEC_POLICY_SERVER",
    default=None,
    help="https://NAME:PORT of the policy server (local update)",
)
@click.option("--ca", default="/etc/pyipsec/ca.crt", show_default=True, type=Path)
@click.option("--cert", default="/etc/pyipsec/host.crt", show_default=True, type=Path)
@click.option("--key", default="/etc/pyipsec/host.key", show_default=True, type=Path)
@click.option("--crl", default=None, type=Path, help="CA's CRL (checked for the signer)")
@click.option(
    "--cache",
    default=DEFAULT_CACHE,
    show_default=True,
    type=Path,
    help="last good signed envelope (0600)",
)
@click.option(
    "--out",
    default=DEFAULT_OUT,
    show_default=True,
    type=Path,
    help="where the verified policy text is written",
)
def policy_update(
    force: bool,
    socket_path: str,
    local_only: bool,
    server: str | None,
    ca: Path,
    cert: Path,
    key: Path,
    crl: Path | None,
    cache: Path,
    out: Path,
) -> None:
    """Pull this host's policy now (like gpupdate /force).

    With a running daemon (control socket): the daemon fetches, verifies, compiles and
    applies the policy now; prints what changed (the plan) or why it kept the current
    policy. Without one: fetch, verify and store the policy locally, printing the diff.

    On a bad signature, an invalid policy or an unreachable server the current policy
    stays in place and the command fails saying so.
    """
    from pyipsec.policy.client import ClientConfig, PolicyClient, PolicyUpdateError

    if not local_only and _daemon_update(socket_path, force):
        return
    if server is None:
        raise click.UsageError("--server is needed when no daemon applies the policy")

    client = PolicyClient(
        ClientConfig(server=server, ca=ca, cert=cert, key=key, cache=cache, crl=crl)
    )
    result = client.fetch(time.time())
    env, prev = result.envelope, result.previous
    try:
        on_disk = out.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        on_disk = None
    rewrite = result.changed or force or on_disk != env.text
    if rewrite:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(env.text, encoding="utf-8")
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    if result.changed:
        was = f"{prev.name!r} version {prev.version}" if prev else "none"
        click.echo(f"policy {env.name!r} version {env.version} (was {was}), written to {out}")
        diff = difflib.unified_diff(
            (prev.text if prev else "").splitlines(keepends=True),
            env.text.splitlines(keepends=True),
            fromfile=f"{prev.name} v{prev.version}" if prev else "/dev/null",
            tofile=f"{env.name} v{env.version}",
        )
        click.echo("".join(diff), nl=False)
    elif rewrite:
        click.echo(f"policy {env.name!r} version {env.version} unchanged, rewritten to {out}")
    else:
        click.echo(f"policy {env.name!r} version {env.version} is current")
    if rewrite:
        try:
            client.report(env, "stored", f"written to {out}")
        except PolicyUpdateError as exc:
            click.echo(f"warning: {exc.reason}", err=True)


# --------------------------------------------------------------------------- groups


@click.group("group")
def group() -> None:
    """Host groups: the unit policies are assigned to."""


@group.command("create")
@click.argument("name")
@click.option("--description", "-d", default="")
@store_option
def group_create(name: str, description: str, store_url: str) -> None:
    _open_store(store_url).create_group(name, description=description, now=time.time())
    click.echo(f"group {name!r} created")


@group.command("delete")
@click.argument("name")
@store_option
def group_delete(name: str, store_url: str) -> None:
    _open_store(store_url).delete_group(name)
    click.echo(f"group {name!r} deleted")


@group.command("add-host")
@click.argument("group_name", metavar="GROUP")
@click.argument("hosts", nargs=-1, required=True)
@store_option
def group_add_host(group_name: str, hosts: tuple[str, ...], store_url: str) -> None:
    """Add HOSTS (machine-certificate common names) to GROUP."""
    store = _open_store(store_url)
    for host in hosts:
        new = store.add_host(group_name, host, now=time.time())
        click.echo(f"host {host!r} {'added to' if new else 'already in'} {group_name!r}")


@group.command("remove-host")
@click.argument("group_name", metavar="GROUP")
@click.argument("host")
@store_option
def group_remove_host(group_name: str, host: str, store_url: str) -> None:
    _open_store(store_url).remove_host(group_name, host)
    click.echo(f"host {host!r} removed from {group_name!r}")


@group.command("list")
@store_option
def group_list(store_url: str) -> None:
    rows = [
        [g.name, g.policy or "-", ", ".join(g.hosts) or "-", g.description]
        for g in _open_store(store_url).list_groups()
    ]
    _table(["GROUP", "POLICY", "HOSTS", "DESCRIPTION"], rows)


# --------------------------------------------------------------------------- server


def _show_hosts(store_url: str, host: str | None) -> None:
    store = _open_store(store_url)
    if host is not None:
        rows = [
            [_when(r.at), r.policy, str(r.version), r.status, r.sha256[:16], r.detail]
            for r in store.applied(host)
        ]
        _table(["WHEN", "POLICY", "VERSION", "STATUS", "SHA256", "DETAIL"], rows)
        return
    rows = []
    for name, rec in store.host_status():
        try:
            assigned = store.policy_for_host(name)
            target = f"{assigned.name} v{assigned.version}" if assigned else "-"
        except ConfigError:
            assigned, target = None, "conflict"
        if rec is None:
            rows.append([name, target, "-", "never", "-"])
            continue
        applied = f"{rec.policy} v{rec.version}"
        state = rec.status
        if (
            assigned is not None
            and rec.status in ("applied", "stored")
            and (rec.policy != assigned.name or rec.sha256 != assigned.sha256)
        ):
            state += " (behind)"
        rows.append([name, target, applied, state, _when(rec.at)])
    _table(["HOST", "ASSIGNED", "APPLIED", "STATUS", "WHEN"], rows)


@click.group("server", invoke_without_command=True)
@click.option("--hosts", "show_hosts", is_flag=True, help="show hosts' applied policies and exit")
@store_option
@click.option("--cert", default="/etc/pyipsec/server.crt", show_default=True, type=Path)
@click.option("--key", default="/etc/pyipsec/server.key", show_default=True, type=Path)
@click.option("--ca", default="/etc/pyipsec/ca.crt", show_default=True, type=Path)
@click.option("--crl", default=None, type=Path, help="CA's CRL, re-read when it changes")
@click.option("--listen", default="0.0.0.0", show_default=True)
@click.option("--port", default=8443, show_default=True, type=int)
@click.pass_context
def server(
    ctx: click.Context,
    show_hosts: bool,
    store_url: str,
    cert: Path,
    key: Path,
    ca: Path,
    crl: Path | None,
    listen: str,
    port: int,
) -> None:
    """Run the HTTPS policy server (mutual TLS with machine certificates)."""
    if ctx.invoked_subcommand is not None:
        return
    if show_hosts:
        _show_hosts(store_url, None)
        return
    from pyipsec.policy.server import PolicyServer

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    srv = PolicyServer(
        _open_store(store_url), cert=cert, key=key, ca=ca, crl=crl, listen=listen, port=port
    )

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    click.echo(f"policy server on https://{listen}:{srv.address[1]}", err=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        srv.shutdown()


@server.command("hosts")
@click.option("--host", default=None, help="the full applied-log of one host")
@store_option
def server_hosts(host: str | None, store_url: str) -> None:
    """Which host applied which policy version, when."""
    _show_hosts(store_url, host)


commands = [policy_group, group, server, pki]
