"""The daemon applies a policy: a local file or the policy server, compiled for this host.

With a ``policy:`` section in the daemon configuration (:class:`PolicySettings`), the
daemon enforces a policy written in the administrator's vocabulary (filter lists, filter
actions, rules) instead of, or next to, connections written by hand. An update runs in
two steps so that it is atomic:

1. :meth:`PolicyApplier.prepare` (blocking; the daemon runs it off its event loop): get
   the policy (``file``: read and validate it; ``server``: :class:`PolicyClient` fetches
   the signed envelope over mutual TLS, verifies the signature and validates the text),
   compile it for this host (:func:`compile_policy`: its addresses, machine certificate,
   the ``spd`` capability), look up the pre-shared keys it names in the local secrets
   store, and build the *whole* new daemon configuration (the file's connections merged
   with the compiled ones, the compiled SPD as explicit entries) through the same
   validator as the configuration file. Nothing on the host has changed yet; any error
   is raised here.
2. :meth:`PolicyRunner.update` then, on the event loop: writes the secrets file (0600,
   written to a temporary file and renamed) and reloads the daemon with the new
   configuration. If the reload fails, the previous configuration and secrets file are
   put back.

On any error the previous policy and configuration stay, the failure is logged and
counted (``policy_failures``) and the status shows it. A server that cannot be reached
at start leaves the daemon with the last good envelope from the client's cache (if any).
What was applied (or why a verified policy could not be) is reported to the server
(``POST /v1/applied``).
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pyipsec.daemon.config import (
    CompiledPart,
    DaemonConfig,
    PolicySettings,
    _read_secrets,
    load_config,
)
from pyipsec.errors import ConfigError, PyipsecError
from pyipsec.ipsec.spd import SpdEntry
from pyipsec.policy.compile import DAEMON_CAPABILITIES, CompiledPolicy, HostContext
from pyipsec.policy.compile import compile_policy as _compile_policy
from pyipsec.util.configfile import load_yaml_text

log = logging.getLogger("pyipsec.daemon.policy")

__all__ = [
    "PolicyApplier",
    "PolicyApplyError",
    "PolicyRunner",
    "PolicyStatistics",
    "Prepared",
    "host_addresses",
    "spd_dicts",
]


class PolicyApplyError(PyipsecError):
    """A policy update was refused; the current policy (``kept``, a label) stays."""

    def __init__(self, reason: str, kept: str | None) -> None:
        self.reason = reason
        self.kept = kept
        tail = f"keeping current policy {kept}" if kept else "no policy in effect"
        super().__init__(f"{reason}; {tail}")


@dataclass(frozen=True)
class PolicyStatistics:
    """Counters of policy updates on this host."""

    applies: int  #: policies (or new versions) applied
    unchanged: int  #: updates that found the current policy current
    policy_failures: int  #: updates refused (fetch, signature, compile, apply)
    polls: int  #: scheduled polls of the policy server
    reports: int  #: reports the server accepted
    report_failures: int  #: reports that could not be delivered


@dataclass(frozen=True)
class Prepared:
    """A policy compiled and merged into a validated configuration; not applied yet."""

    config: DaemonConfig  #: the complete new daemon configuration
    compiled: CompiledPolicy  #: the policy compiled for this host
    name: str  #: policy name
    version: int | None  #: version from the server (None for a local file)
    sha256: str  #: of the policy text
    source: str  #: file path or server URL
    changed: bool  #: a different policy text than the one applied
    plan_text: str  #: what changes on this host (pyipsec.policy.plan)
    envelope: Any = None  #: the signed envelope (server only)
    warning: str | None = None  #: e.g. the server was unreachable, cached policy used
    secrets: dict[str, str] = field(default_factory=dict, repr=False)  #: secrets file psk

    @property
    def label(self) -> str:
        version = f" version {self.version}" if self.version is not None else ""
        return f"{self.name!r}{version}"


def host_addresses() -> tuple[str, ...]:
    """This host's own unicast addresses (no loopback, no link-local), sorted."""
    from pyipsec.platform.linux.routing import local_addresses

    out = []
    for text in local_addresses():
        addr = ipaddress.ip_address(text)
        if addr.is_loopback or addr.is_link_local or addr.is_multicast:
            continue
        out.append(addr)
    return tuple(str(a) for a in sorted(out, key=lambda a: (a.version, int(a))))


def system_resolver(name: str) -> list[str]:
    """Addresses of a DNS name in a filter, resolved when the policy is applied."""
    infos = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _range_text(r: Any) -> str:
    return "any" if r.version == 0 else str(r)


def spd_dicts(compiled: CompiledPolicy) -> tuple[dict[str, Any], ...]:
    """The compiled SPD in the daemon's ``spd:`` format, in lookup order.

    Priorities are the compiled specificity ranks (0: most specific); PROTECT entries
    name their child as ``<connection>/<child>``, the data plane's child names.
    """
    out = []
    for entry in compiled.spd:
        out.append(_spd_dict(entry))
    return tuple(out)


def _spd_dict(entry: SpdEntry) -> dict[str, Any]:
    sel = entry.selector
    data: dict[str, Any] = {
        "name": entry.name,
        "local": _range_text(sel.local),
        "remote": _range_text(sel.remote),
        "action": entry.action.value,
        "priority": entry.priority,
        "direction": entry.direction,
    }
    if sel.protocol is not None:
        data["protocol"] = sel.protocol
        data["local_ports"] = str(sel.local_ports)
        data["remote_ports"] = str(sel.remote_ports)
    if entry.template is not None:
        conn = entry.template.connection
        data["child"] = f"{conn}/{entry.template.child}" if conn else entry.template.child
    return data


def _write_private(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically, mode 0600 from the start."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


ClientFactory = Callable[[PolicySettings], Any]


def _default_client(settings: PolicySettings) -> Any:
    from pyipsec.policy.client import ClientConfig, PolicyClient

    srv = settings.server
    assert srv is not None
    return PolicyClient(
        ClientConfig(
            server=srv.url,
            ca=Path(srv.ca),
            cert=Path(srv.cert),
            key=Path(srv.key),
            cache=Path(srv.cache),
            crl=Path(srv.crl) if srv.crl else None,
            timeout=srv.timeout,
        )
    )


class PolicyApplier:
    """Prepares policy updates for one host and remembers what is applied (no I/O loop).

    ``config_path``: the daemon configuration file (re-read on every update, so hand
    edits and the policy merge together); ``client_factory``/``addresses``/``resolver``
    are the boundaries (policy server, the host's addresses, DNS), replaced in tests.
    """

    def __init__(
        self,
        config_path: str,
        settings: PolicySettings,
        *,
        client_factory: ClientFactory = _default_client,
        addresses: Callable[[], Sequence[str]] = host_addresses,
        resolver: Callable[[str], Sequence[str]] | None = system_resolver,
    ) -> None:
        self.config_path = config_path
        self.settings = settings
        self._client_factory = client_factory
        self._addresses = addresses
        self._resolver = resolver
        self._client: Any = None
        self.current: Prepared | None = None
        self.applied_at: float | None = None
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.last_poll: float | None = None
        self._counts = dict.fromkeys(PolicyStatistics.__dataclass_fields__, 0)

    def __repr__(self) -> str:
        return f"PolicyApplier({self.settings.source!r}, current={self.label()!r})"

    def label(self) -> str | None:
        return self.current.label if self.current is not None else None

    def statistics(self) -> PolicyStatistics:
        return PolicyStatistics(**self._counts)

    def count(self, name: str) -> None:
        self._counts[name] += 1

    # ------------------------------------------------------------------ obtaining

    def client(self) -> Any:
        if self._client is None:
            self._client = self._client_factory(self.settings)
        return self._client

    def _from_file(self) -> tuple[Any, str, str, str]:
        from pyipsec.policy.loader import load_policy_text

        path = str(self.settings.file)
        try:
            with open(path, encoding="utf-8") as handle:
                text = handle.read()
        except OSError as exc:
            raise ConfigError(f"cannot read policy: {exc.strerror}", file=path) from None
        base = os.path.dirname(os.path.abspath(path))
        policy = load_policy_text(text, file=path, base_dir=base)
        return policy, text, path, hashlib.sha256(text.encode()).hexdigest()

    def _from_server(self, now: float, fallback: bool) -> tuple[Any, Any, bool, str | None]:
        """(policy, envelope, changed, warning) from the server; raises when refused.

        ``fallback`` (starting, or rebuilding on reload): when the server cannot be
        reached or its answer is refused, the last good envelope is used, with a warning.
        """
        from pyipsec.policy.client import PolicyUpdateError
        from pyipsec.policy.loader import load_policy_text

        client = self.client()
        warning = None
        try:
            result = client.fetch(now)
            envelope, changed, policy = result.envelope, result.changed, result.policy
        except PolicyUpdateError as exc:
            if not fallback or exc.kept is None:
                raise
            # the last good envelope (verified again) stands in for the server
            envelope, changed, policy = exc.kept, True, None
            warning = f"{exc.reason}; using the cached policy"
        if policy is None or not hasattr(policy, "rules"):
            policy = load_policy_text(envelope.text, file=f"{envelope.name} v{envelope.version}")
        return policy, envelope, changed, warning

    # ------------------------------------------------------------------ prepare

    def prepare(self, now: float, *, force: bool = False, rebuild: bool = False) -> Prepared | None:
        """Obtain, compile and validate the policy; None when it is current (no ``force``,
        no ``rebuild``). Raises PyipsecError with nothing changed."""
        from pyipsec.policy.plan import plan

        first = self.current is None
        envelope = None
        warning = None
        if self.settings.server is not None:
            policy, envelope, _fresh, warning = self._from_server(now, first or rebuild)
            text_sha, version, source = envelope.sha256, envelope.version, self.settings.source
        else:
            policy, _text, source, text_sha = self._from_file()
            version = None
        changed = first or self.current is None or self.current.sha256 != text_sha
        if not (changed or force or rebuild):
            return None
        try:
            compiled, config, secrets = self.build(policy, version)
        except PyipsecError as exc:
            if envelope is not None:
                self._report(envelope, "failed", str(exc))
            raise
        old = self.current.compiled if self.current is not None else None
        return Prepared(
            config=config,
            compiled=compiled,
            name=compiled.policy,
            version=version,
            sha256=text_sha,
            source=source,
            changed=changed,
            plan_text=plan(compiled, old, firewall=_firewall).text(),
            envelope=envelope,
            warning=warning,
            secrets=secrets,
        )

    def build(
        self, policy: Any, version: int | None
    ) -> tuple[CompiledPolicy, DaemonConfig, dict[str, str]]:
        """Compile ``policy`` for this host and merge it into the configuration file."""
        settings = self.settings
        addresses = tuple(settings.addresses) or tuple(self._addresses())
        host = HostContext(
            addresses,
            certificate=settings.cert,
            private_key=settings.key,
            secrets_file=settings.secrets_file,
        )
        compiled = _compile_policy(
            policy, host, resolver=self._resolver, capabilities=DAEMON_CAPABILITIES
        )
        store: dict[str, bytes] = {}
        if compiled.psk_refs:
            if settings.secrets is None:
                raise ConfigError(
                    "the policy uses pre-shared keys but policy.secrets names no secrets store",
                    key="policy.secrets",
                )
            store = _read_secrets(settings.secrets, config_file=self.config_path)
        secrets_doc = compiled.secrets_file(store)["psk"]
        secrets = {conn: store[ref] for conn, ref in compiled.psk_refs.items()}
        label = f"policy {compiled.policy!r}" + (f" v{version}" if version is not None else "")
        connections = load_yaml_text(
            yaml.safe_dump({"connections": dict(compiled.daemon.get("connections", {}))}),
            file=f"<{label}>",
        ).section("connections")
        part = CompiledPart(
            connections=connections, secrets=secrets, spd=spd_dicts(compiled), source=label
        )
        config = load_config(self.config_path, compiled=part)
        return compiled, config, secrets_doc

    # ------------------------------------------------------------------ bookkeeping

    def write_secrets(self, prepared: Prepared) -> bytes | None:
        """Write the secrets file for ``prepared`` (0600); returns the previous content."""
        path = self.settings.secrets_file
        try:
            with open(path, "rb") as handle:
                previous: bytes | None = handle.read()
        except OSError:
            previous = None
        if prepared.secrets or previous is not None:
            body = yaml.safe_dump({"psk": dict(prepared.secrets)}, sort_keys=True)
            _write_private(path, body.encode())
        return previous

    def restore_secrets(self, previous: bytes | None) -> None:
        path = self.settings.secrets_file
        if previous is None:
            try:
                os.unlink(path)
            except OSError:
                pass
        else:
            _write_private(path, previous)

    def committed(self, prepared: Prepared, now: float) -> None:
        self.current = prepared
        self.applied_at = now
        self.last_error = None if prepared.warning is None else prepared.warning
        self.last_error_at = None if prepared.warning is None else now
        self.count("applies")

    def failed(self, reason: str, now: float) -> None:
        self.last_error = reason
        self.last_error_at = now
        self.count("policy_failures")

    def report_applied(self, prepared: Prepared) -> None:
        if prepared.envelope is not None:
            addresses = ", ".join(prepared.compiled.addresses)
            self._report(prepared.envelope, "applied", f"applied on {addresses}")

    def _report(self, envelope: Any, status: str, detail: str) -> None:
        if self.settings.server is None:
            return
        from pyipsec.policy.client import PolicyUpdateError

        try:
            self.client().report(envelope, status, detail[:500])
            self.count("reports")
        except (PolicyUpdateError, OSError) as exc:
            self.count("report_failures")
            log.warning("cannot report to the policy server: %s", exc)

    # ------------------------------------------------------------------ polling

    def poll_interval(self) -> float | None:
        """Seconds between polls: the configured one, else the policy's (server only)."""
        srv = self.settings.server
        if srv is None:
            return None
        if srv.poll_interval is not None:
            return srv.poll_interval
        if self.current is not None:
            return float(self.current.compiled.polling_interval)
        return 60.0  # nothing applied yet: try again soon

    def next_poll_at(self, now: float) -> float | None:
        from pyipsec.policy.client import next_poll

        interval = self.poll_interval()
        if interval is None:
            return None
        return next_poll(now, self.last_poll, interval)

    def status(self) -> dict[str, Any]:
        cur = self.current
        return {
            "name": cur.name if cur else None,
            "version": cur.version if cur else None,
            "sha256": cur.sha256 if cur else None,
            "source": self.settings.source,
            "mode": "server" if self.settings.server is not None else "file",
            "applied_at": self.applied_at,
            "connections": sorted(cur.config.policy_connections) if cur else [],
            "spd_entries": len(cur.compiled.spd) if cur else 0,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
            "last_poll": self.last_poll,
            "poll_interval": self.poll_interval(),
        }


def _firewall(entries: Any) -> list[dict[str, Any]]:
    from pyipsec.dataplane.kernel import compile_ruleset
    from pyipsec.platform.linux.routing import RoutingConfig

    return compile_ruleset(entries, RoutingConfig())


class PolicyRunner:
    """Runs policy updates for a running daemon on its event loop, one at a time."""

    def __init__(
        self,
        applier: PolicyApplier,
        daemon: Any,
        loop: asyncio.AbstractEventLoop,
        *,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.applier = applier
        self.daemon = daemon
        self.loop = loop
        self.wall_clock = wall_clock
        self._lock = asyncio.Lock()

    async def update(
        self, *, force: bool = False, rebuild: bool = False, reason: str = "update"
    ) -> dict[str, Any]:
        """Fetch/compile off the loop, then apply atomically; raises PolicyApplyError."""
        async with self._lock:
            applier = self.applier
            now = self.wall_clock()
            try:
                prepared = await self.loop.run_in_executor(
                    None, lambda: applier.prepare(now, force=force, rebuild=rebuild)
                )
            except PyipsecError as exc:
                applier.failed(str(exc), now)
                # a client error says what it keeps itself; we say it once, below
                reason_text = exc.reason if hasattr(exc, "kept") else str(exc)
                log.error("policy %s refused: %s", reason, exc)
                raise PolicyApplyError(
                    f"policy {reason} refused: {reason_text}", applier.label()
                ) from None
            if prepared is None:
                applier.count("unchanged")
                label = applier.label()
                return {"applied": False, "changed": False, "policy": label,
                        "message": f"policy {label} is current"}  # fmt: skip
            self._apply(prepared, now, reason)
            await self.loop.run_in_executor(None, applier.report_applied, prepared)
            verb = "applied" if prepared.changed else "re-applied"
            message = f"policy {prepared.label} {verb} from {prepared.source}"
            if prepared.warning:
                message += f" ({prepared.warning})"
            return {
                "applied": True,
                "changed": prepared.changed,
                "policy": prepared.label,
                "message": message,
                "plan": prepared.plan_text,
            }

    def _apply(self, prepared: Prepared, now: float, reason: str) -> None:
        applier = self.applier
        old = self.daemon.config
        try:
            previous = applier.write_secrets(prepared)
        except OSError as exc:
            applier.failed(f"cannot write the secrets file: {exc.strerror}", now)
            raise PolicyApplyError(
                f"policy {reason} refused: cannot write the secrets file ({exc.strerror})",
                applier.label(),
            ) from None
        try:
            self.daemon.reload(prepared.config)
        except Exception as exc:  # put everything back as it was
            log.exception("applying policy %s failed; restoring the previous one", prepared.label)
            try:
                self.daemon.reload(old)
            finally:
                applier.restore_secrets(previous)
            applier.failed(f"applying failed: {exc}", now)
            raise PolicyApplyError(
                f"policy {reason} refused: applying failed ({type(exc).__name__}: {exc})",
                applier.label(),
            ) from None
        applier.committed(prepared, now)
        log.info("policy %s applied from %s (%s)", prepared.label, prepared.source, reason)

    async def poll_forever(self, sleep: Callable[[float], Any] = asyncio.sleep) -> None:
        """Poll the policy server at its interval; apply new versions (server mode only)."""
        while True:
            now = self.wall_clock()
            when = self.applier.next_poll_at(now)
            if when is None:
                return
            await sleep(max(0.0, when - now))
            self.applier.last_poll = self.wall_clock()
            self.applier.count("polls")
            try:
                await self.update(reason="poll")
            except PolicyApplyError:
                pass  # logged and counted; the current policy stays

    def initial_config(self, base: DaemonConfig) -> DaemonConfig:
        """Prepare the first policy before the daemon starts (blocking): the merged
        configuration, or ``base`` when no policy could be obtained (counted, shown)."""
        applier = self.applier
        now = self.wall_clock()
        applier.last_poll = now if applier.settings.server is not None else None
        try:
            prepared = applier.prepare(now, rebuild=True)
            assert prepared is not None
            applier.write_secrets(prepared)
        except (PyipsecError, OSError) as exc:
            applier.failed(str(exc), now)
            log.error("no policy applied at start: %s", exc)
            return base
        applier.committed(prepared, now)
        self._started = prepared
        log.info("policy %s applied from %s (start)", prepared.label, prepared.source)
        return prepared.config

    def report_started(self) -> None:
        started = getattr(self, "_started", None)
        if started is not None:
            self.applier.report_applied(started)
