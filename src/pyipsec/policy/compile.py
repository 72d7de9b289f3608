"""Compile a policy for one host: daemon connections/children and ordered SPD entries.

:func:`compile_policy` is a pure function of (policy, host, resolver, capabilities): it
either returns a complete :class:`CompiledPolicy` or raises a ConfigError naming file,
line and key, before producing anything.

What a host gets:

* The filters that apply to it (one side contains one of its addresses; tunnel rules apply
  to every host except the tunnel endpoint itself), most specific first
  (:mod:`pyipsec.policy.order`); each becomes SPD entries in that order: ``permit`` ->
  BYPASS, ``block`` -> DISCARD, ``negotiate`` -> PROTECT. Selectors are seen from the host:
  local = its own addresses (transport mode) or the filter's source (tunnel mode). A
  mirrored filter gives entries for both directions; a one-way filter an ``out`` entry
  where the host is the source and an ``in`` entry where it is the destination.
  ``accept_unsecured`` splits a PROTECT entry into PROTECT ``out`` + BYPASS ``in``.
* For ``negotiate`` rules, daemon connections (the YAML format of
  :mod:`pyipsec.daemon.config`): one per (rule, peer), one child per filter direction
  (Child SAs are bidirectional, so a mirrored filter needs one child), ESP/AH proposals
  from the security methods in order, lifetimes (the shortest of the methods: the daemon
  has one lifetime per child), PFS group (the first key exchange method's), start action
  ``trap``. A pre-shared key is named, not copied: :attr:`CompiledPolicy.psk_refs` says
  which secret each connection needs (:meth:`CompiledPolicy.secrets_file`). A rule's
  authentication methods keep their order: the first is the connection's ``local`` and
  ``remote``, the others its ``alternatives`` (one pre-shared key per connection; a
  certificate method on a host without certificate is left out, with a note).

Whatever the daemon cannot do yet is a ConfigError, never silently dropped. Features the
daemon learned one by one are *capabilities* (:data:`ALL_CAPABILITIES`); compiling for
the daemon of today uses :data:`DAEMON_CAPABILITIES` (all of them); a smaller set
compiles for an older daemon, which refuses what it cannot do:

* ``opportunistic``: negotiate in transport mode with every host of a subnet / ``any``
  (IKE towards each packet's destination);
* ``unsecured_fallback``: ``allow_unsecured_fallback`` (clear text after failed IKE);
* ``respond_only``: the default response rule (answer IKE from any host).
* ``spd``: install the compiled SPD as it is (BYPASS and DISCARD entries from permit and
  block rules, one-way entries, ``accept_unsecured``, overlapping entries whose order
  matters). Without it the compiled SPD must equal what the daemon derives from its
  connections: non-overlapping PROTECT entries for both directions.

Never supported here yet: AH with ESP (SA bundles), connection types lan/remote,
master-key PFS.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from pyipsec.errors import ConfigError
from pyipsec.ike.config import ChildConfig
from pyipsec.ike.proposals import KE_KEYWORDS
from pyipsec.ipsec.lifetime import Lifetime
from pyipsec.ipsec.selectors import AddressRange, Selector
from pyipsec.ipsec.spd import Action, SaTemplate, SpdEntry
from pyipsec.policy.hostview import View, host_views, range_pairs, selectors_overlap, ts_strings
from pyipsec.policy.model import AuthMethod, FilterAction, Policy, Rule
from pyipsec.policy.order import ResolvedFilter, Resolver, host_ranges, order_filters
from pyipsec.policy.order import resolve_filter as _resolve_filter
from pyipsec.policy.presets import FILTER_ACTIONS

__all__ = [
    "ALL_CAPABILITIES",
    "DAEMON_CAPABILITIES",
    "CompiledPolicy",
    "Fallback",
    "HostContext",
    "Origin",
    "compile_policy",
]

ALL_CAPABILITIES = frozenset({"opportunistic", "unsecured_fallback", "respond_only", "spd"})
#: what ``pyipsec daemon`` can do today: all of them
DAEMON_CAPABILITIES: frozenset[str] = ALL_CAPABILITIES

_WHY = {
    "opportunistic": "the daemon cannot negotiate with every host of a subnet in transport "
    "mode yet (its connections name one peer address); name the peer hosts or use a tunnel",
    "unsecured_fallback": "the daemon cannot fall back to clear text after failed "
    "negotiation yet; use accept_unsecured or a stricter filter action",
    "respond_only": "the daemon cannot answer IKE from arbitrary hosts (default response rule) yet",
    "spd": "the daemon derives its SPD from its connections (PROTECT entries for both "
    "directions, in no particular order) and cannot install this policy's SPD yet",
}


@dataclass(frozen=True)
class HostContext:
    """The host a policy is compiled for.

    ``addresses``: its own addresses (what ``me`` is); ``certificate``/``private_key``: its
    machine certificate and key (PEM files) for certificate authentication;
    ``secrets_file``: where the daemon's 0600 secrets file lives.
    """

    addresses: tuple[str, ...]
    certificate: str | None = None
    private_key: str | None = None
    secrets_file: str = "/etc/pyipsec/secrets.yaml"

    def __post_init__(self) -> None:
        if isinstance(self.addresses, str):
            object.__setattr__(self, "addresses", (self.addresses,))
        if not self.addresses:
            raise ConfigError("the host needs at least one address", key="me")
        try:
            normal = tuple(str(ipaddress.ip_address(a.strip())) for a in self.addresses)
        except ValueError as exc:
            raise ConfigError(f"not an address: {exc}", key="me") from None
        object.__setattr__(self, "addresses", normal)


@dataclass(frozen=True)
class Origin:
    """Where an SPD entry comes from, for explanations."""

    rule: str  #: rule name
    filter: ResolvedFilter  #: the filter, resolved for this host
    filter_action: FilterAction  #: what the rule does
    rank: int  #: position in the specificity order (0: most specific)
    connection: str | None = None  #: daemon connection (negotiate)
    peer: str | None = None  #: peer address (negotiate; "%any" for opportunistic)


@dataclass(frozen=True)
class Fallback:
    """A PROTECT entry that turns into clear text after ``seconds`` of failed IKE."""

    entry: str  #: SPD entry name
    seconds: float  #: how long negotiation may fail before falling back


@dataclass(frozen=True)
class CompiledPolicy:
    """Everything one host needs to enforce a policy. Treat the mappings as read-only."""

    policy: str  #: policy name
    addresses: tuple[str, ...]  #: the host's addresses
    ordered: tuple[ResolvedFilter, ...]  #: applicable filters, most specific first
    spd: tuple[SpdEntry, ...]  #: SPD entries in lookup order
    origins: Mapping[str, Origin]  #: SPD entry name -> where it comes from
    daemon: Mapping[str, Any]  #: daemon configuration (YAML-compatible)
    psk_refs: Mapping[str, str]  #: connection name -> name of its pre-shared key
    fallbacks: tuple[Fallback, ...] = ()  #: entries with unsecured fallback
    requires: frozenset[str] = frozenset()  #: capabilities the result depends on
    skipped: tuple[str, ...] = ()  #: rules that do not apply here, with the reason
    polling_interval: int = 10800  #: seconds between policy-server polls
    notes: tuple[str, ...] = field(default=())  #: decisions worth telling the administrator

    def daemon_yaml(self) -> str:
        """The daemon configuration as YAML text (no secrets in it)."""
        header = f"# compiled from policy {self.policy!r} for {', '.join(self.addresses)}\n"
        return header + yaml.safe_dump(dict(self.daemon), sort_keys=False)

    def secrets_file(self, secrets: Mapping[str, str | bytes]) -> dict[str, Any]:
        """The content of the daemon's secrets file: ``{"psk": {connection: secret}}``.

        ``secrets`` maps secret names (``psk: NAME`` in the policy) to their values; a
        missing one is a ConfigError naming it (never its value).
        """
        out: dict[str, str] = {}
        for conn, ref in self.psk_refs.items():
            if ref not in secrets:
                raise ConfigError(f"no secret named {ref!r} (needed by {conn!r})", key="psk")
            value = secrets[ref]
            out[conn] = "0x" + value.hex() if isinstance(value, bytes) else str(value)
        return {"psk": out}


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "rule"


def _pfs_group(methods: tuple[str, ...]) -> str:
    for token in methods[0].split("-"):
        if token in KE_KEYWORDS:
            return token
    return "x25519"


def _auth(methods: tuple[AuthMethod, ...], host: HostContext, local: str, peer: str,
          notes: list[str]) -> dict[str, Any]:  # fmt: skip
    """A connection's ``local``, ``remote`` and ``alternatives`` from a rule's methods."""
    psk = [m for m in methods if m.kind == "psk"]
    if len(psk) > 1:
        raise psk[1].where.error(
            "a second pre-shared key method: the daemon keeps one pre-shared key per "
            "connection; keep one"
        )
    pairs: list[dict[str, Any]] = []
    for m in methods:
        if m.kind == "psk":
            pairs.append({"local": {"auth": "psk"}, "remote": {"auth": "psk"}})
        elif host.certificate is not None and host.private_key is not None:
            pairs.append({
                "local": {"auth": "pubkey", "cert": host.certificate, "key": host.private_key,
                          "cacerts": [m.ca]},
                "remote": {"auth": "pubkey", "cacerts": [m.ca]},
            })  # fmt: skip
        elif len(methods) > 1:
            notes.append(f"this host has no certificate: {m.describe()} is left out")
    if not pairs:
        raise methods[0].where.error(
            "certificate authentication needs this host's certificate and private key "
            "(HostContext certificate/private_key, CLI --cert/--key)"
        )
    out = dict(pairs[0])
    if psk:  # identities of the connection (pre-shared keys are bound to them)
        out["local"] = {**out["local"], "id": local}
        if peer != "%any":
            out["remote"] = {**out["remote"], "id": peer}
    if pairs[1:]:
        out["alternatives"] = pairs[1:]
    return out


class _Compiler:
    def __init__(self, policy: Policy, host: HostContext, resolver: Resolver | None,
                 capabilities: frozenset[str]) -> None:  # fmt: skip
        self.policy = policy
        self.host = host
        self.me = host_ranges(host.addresses)
        self.resolver = resolver
        self.capabilities = capabilities
        self.requires: set[str] = set()
        self.connections: dict[str, dict[str, Any]] = {}
        self.psk_refs: dict[str, str] = {}
        self.entries: list[SpdEntry] = []
        self.origins: dict[str, Origin] = {}
        self.fallbacks: list[Fallback] = []
        self.skipped: list[str] = []
        self.notes: list[str] = []

    def need(self, capability: str, where: Any, key: str | None = None) -> None:
        if capability not in self.capabilities:
            raise where.error(f"not supported yet: {_WHY[capability]}", key)
        self.requires.add(capability)

    def check_rule(self, rule: Rule, action: FilterAction) -> None:
        if rule.connection_type != "all":
            raise rule.where.error(
                f"connection type {rule.connection_type!r} is not supported yet (the daemon "
                "does not tell LAN from remote-access interfaces); use 'all'",
                "connection_type",
            )
        if action.action != "negotiate":
            return
        builtin = action.where.line is None  # a preset: point at the rule using it
        kinds = {m.kind for m in action.methods}
        for m in action.methods:
            if m.kind == "ah+esp":
                raise m.where.error("AH with ESP (an SA bundle) is not supported yet")
        if len(kinds) > 1:
            raise (rule.where if builtin else action.where).error(
                "mixing ESP and AH methods in one filter action is not supported yet (a "
                "Child SA proposes one protocol)",
                "methods",
            )
        if action.allow_unsecured_fallback:
            self.need(
                "unsecured_fallback",
                rule.where if builtin else action.where,
                "filter_action" if builtin else "allow_unsecured_fallback",
            )
        if self.policy.key_exchange.master_key_pfs:
            raise self.policy.key_exchange.where.error(
                "master-key PFS is not supported yet (IKEv2 has no re-authentication per Child SA)",
                "master_key_pfs",
            )

    def resolve(self) -> list[ResolvedFilter]:
        applicable: list[ResolvedFilter] = []
        for rule in self.policy.rules:
            action = self.policy.filter_actions[rule.filter_action]
            self.check_rule(rule, action)
            if rule.tunnel is not None and any(
                h.start == int(ipaddress.ip_address(rule.tunnel)) for h in self.me
            ):
                self.skipped.append(f"{rule.name}: this host is its tunnel endpoint")
                continue
            outcome = (rule.filter_action, rule.authentication, rule.tunnel)
            found = False
            for filt in self.policy.filter_lists[rule.filter_list].filters:
                rf = _resolve_filter(rule, filt, self.me, self.resolver, outcome)
                if rule.tunnel is None and not host_views(rf, self.me, False):
                    continue
                applicable.append(rf)
                found = True
            if not found:
                self.skipped.append(f"{rule.name}: no filter names this host")
        return order_filters(applicable)

    def connection(self, rule: Rule, action: FilterAction, peer: str, local: str) -> str:
        name = f"{_slug(rule.name)}-{peer.replace('%', '')}"
        if name in self.connections:
            return name
        ke = self.policy.key_exchange
        self.connections[name] = {
            "local_addrs": [local],
            "remote_addrs": [peer],
            "proposals": list(ke.methods),
            "rekey_time": ke.lifetime,
            **_auth(rule.authentication, self.host, local, peer, self.notes),
            "children": {},
        }
        self.psk_ref(name, rule.authentication)
        return name

    def psk_ref(self, conn: str, methods: tuple[AuthMethod, ...]) -> None:
        for m in methods:
            if m.kind == "psk":
                assert m.psk_ref is not None
                self.psk_refs[conn] = m.psk_ref

    def child(self, conn: str, rule: Rule, action: FilterAction, local_ts: list[str],
              remote_ts: list[str]) -> str:  # fmt: skip
        children = self.connections[conn]["children"]
        name = f"{conn}-{len(children) + 1}"
        seconds = min(m.seconds for m in action.methods)
        kilobytes = min(m.kilobytes for m in action.methods)
        proposals = [m.ah or m.esp for m in action.methods]
        child: dict[str, Any] = {
            "local_ts": local_ts,
            "remote_ts": remote_ts,
            "mode": "tunnel" if rule.tunnel else "transport",
            ("ah_proposals" if action.methods[0].ah else "esp_proposals"): proposals,
            "rekey_time": seconds,
            "rekey_bytes": kilobytes * 1024,
            "start_action": "trap",
        }
        if action.pfs:
            child["pfs_group"] = _pfs_group(self.policy.key_exchange.methods)
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in child.items()}
        if action.allow_unsecured_fallback:
            child["unsecured_fallback"] = action.fallback_seconds  # the daemon's, not IKE's
        if "ah_proposals" in kwargs:
            kwargs["esp_proposals"] = ()
        try:
            ChildConfig(name=name, **kwargs)
        except ConfigError as exc:
            raise action.where.error(f"cannot become a daemon child: {exc.reason}") from None
        if len({m.seconds for m in action.methods}) > 1:
            self.notes.append(
                f"{rule.filter_action}: the methods' lifetimes differ; the shortest "
                f"({seconds} s, {kilobytes} KB) applies to every Child SA"
            )
        children[name] = child
        return name

    def local_for(self, peer: str, rf: ResolvedFilter) -> str:
        version = ipaddress.ip_address(peer).version if peer != "%any" else None
        for h in self.me:
            if version is None or h.version == version:
                return str(ipaddress.ip_address(h.start))
        raise rf.rule.where.error(f"this host has no IPv{version} address to reach {peer}")

    def add(self, rank: int, rf: ResolvedFilter) -> None:
        rule, f = rf.rule, rf.filter
        action = self.policy.filter_actions[rule.filter_action]
        views = host_views(rf, self.me, rule.tunnel is not None)
        base = f"{_slug(rule.name)}.{rank + 1}"
        count = 0
        for view in views:
            pairs = range_pairs(view, f.protocol)
            if not pairs:
                raise f.where.error("its source and destination share no address family here")
            for local, remote in pairs:
                count += 1
                name = f"{base}.{count}"
                try:
                    selector = Selector(local, remote, f.protocol, view.lports, view.rports)
                except ConfigError as exc:
                    raise f.where.error(f"cannot become an SPD selector: {exc.reason}") from None
                if action.action != "negotiate":
                    verdict = Action.BYPASS if action.action == "permit" else Action.DISCARD
                    self.emit(
                        SpdEntry(name, selector, verdict, rank, None, view.direction),
                        Origin(rule.name, rf, action, rank),
                    )
                    continue
                self.protect(rank, rf, action, view, local, remote, name, selector)

    def protect(self, rank: int, rf: ResolvedFilter, action: FilterAction, view: View,
                local: AddressRange, remote: AddressRange, name: str,
                selector: Selector) -> None:  # fmt: skip
        rule, f = rf.rule, rf.filter
        if rule.tunnel is not None:
            peer = rule.tunnel
        elif remote.version and remote.start == remote.end:
            peer = str(ipaddress.ip_address(remote.start))
        else:
            builtin = f.where.line is None  # a built-in filter list: point at the rule
            self.need(
                "opportunistic",
                rule.where if builtin else f.where,
                "filter_list" if builtin else "destination",
            )
            peer = "%any"
        local_addr = self.local_for(peer, rf)
        conn = self.connection(rule, action, peer, local_addr)
        child = self.child(
            conn, rule, action,
            ts_strings(local, f.protocol, view.lports, remote),
            ts_strings(remote, f.protocol, view.rports, local),
        )  # fmt: skip
        seconds = min(m.seconds for m in action.methods)
        kilobytes = min(m.kilobytes for m in action.methods)
        template = SaTemplate(
            child=child,
            protocol="ah" if action.methods[0].ah else "esp",
            mode="tunnel" if rule.tunnel else "transport",
            tunnel_local=local_addr if rule.tunnel else None,
            tunnel_remote=rule.tunnel,
            algorithms=tuple(m.ah or m.esp or "" for m in action.methods),
            lifetime=Lifetime(
                soft_bytes=kilobytes * 1024, soft_seconds=seconds, hard_seconds=seconds * 1.1
            ),
            connection=conn,
        )
        origin = Origin(rule.name, rf, action, rank, conn, peer)
        protect: str | None = name
        if action.accept_unsecured and view.direction != "out":
            protect = name + "-out" if view.direction == "both" else None
            if protect is not None:
                self.emit(SpdEntry(protect, selector, Action.PROTECT, rank, template, "out"),
                          origin)  # fmt: skip
            self.emit(SpdEntry(name + "-in", selector, Action.BYPASS, rank, None, "in"), origin)
        else:
            self.emit(SpdEntry(name, selector, Action.PROTECT, rank, template, view.direction),
                      origin)  # fmt: skip
        if action.allow_unsecured_fallback and protect is not None:
            self.fallbacks.append(Fallback(protect, action.fallback_seconds))

    def check_daemon_spd(self) -> None:
        """Without the ``spd`` capability the SPD must be what the daemon derives itself:
        PROTECT entries for both directions that do not overlap (so order is moot)."""
        for i, entry in enumerate(self.entries):
            origin = self.origins[entry.name]
            why = None
            if entry.action is not Action.PROTECT:
                why = f"a {entry.action.value.upper()} entry ({origin.filter_action.name!r})"
            elif entry.direction != "both":
                why = f"a one-way ({entry.direction}) PROTECT entry"
            else:
                for other in self.entries[:i]:
                    if selectors_overlap(other.selector, entry.selector):
                        why = f"PROTECT entries that overlap ({other.name}, {entry.name})"
                        break
            if why is None:
                continue
            if "spd" not in self.capabilities:
                f, rule = origin.filter.filter, origin.filter.rule
                where, key = (
                    (rule.where, "filter_list") if f.where.line is None else (f.where, None)
                )
                raise where.error(f"not supported yet: this needs {why}; {_WHY['spd']}", key)
            self.requires.add("spd")

    def emit(self, entry: SpdEntry, origin: Origin) -> None:
        self.entries.append(entry)
        self.origins[entry.name] = origin

    def default_response(self) -> None:
        policy = self.policy
        if not policy.default_response:
            return
        self.need("respond_only", policy.where, "default_response")
        auth = policy.default_response_auth
        local = str(ipaddress.ip_address(self.me[0].start))
        methods = FILTER_ACTIONS["Integrity and Encryption"].methods
        self.connections["default-response"] = {
            "local_addrs": [local],
            "remote_addrs": ["%any"],
            "proposals": list(policy.key_exchange.methods),
            "rekey_time": policy.key_exchange.lifetime,
            **_auth(auth, self.host, local, "%any", self.notes),
            "children": {
                "default-response": {
                    "local_ts": ["dynamic"],
                    "remote_ts": ["dynamic"],
                    "mode": "transport",
                    "esp_proposals": [m.esp for m in methods],
                    "rekey_time": min(m.seconds for m in methods),
                    "start_action": "none",
                }
            },
        }
        self.psk_ref("default-response", auth)

    def run(self) -> CompiledPolicy:
        ordered = self.resolve()
        for rank, rf in enumerate(ordered):
            self.add(rank, rf)
        self.default_response()
        self.check_daemon_spd()
        daemon: dict[str, Any] = {}
        if self.psk_refs:
            daemon["secrets"] = self.host.secrets_file
        daemon["connections"] = self.connections
        return CompiledPolicy(
            policy=self.policy.name,
            addresses=self.host.addresses,
            ordered=tuple(ordered),
            spd=tuple(self.entries),
            origins=self.origins,
            daemon=daemon,
            psk_refs=self.psk_refs,
            fallbacks=tuple(self.fallbacks),
            requires=frozenset(self.requires),
            skipped=tuple(self.skipped),
            polling_interval=self.policy.polling_interval,
            notes=tuple(dict.fromkeys(self.notes)),
        )


def compile_policy(
    policy: Policy,
    host: HostContext,
    *,
    resolver: Resolver | None = None,
    capabilities: frozenset[str] = DAEMON_CAPABILITIES,
) -> CompiledPolicy:
    """Compile ``policy`` for ``host``; raises ConfigError before producing anything."""
    unknown = set(capabilities) - ALL_CAPABILITIES
    if unknown:
        raise ConfigError(f"unknown capabilities: {', '.join(sorted(unknown))}", key="capabilities")
    return _Compiler(policy, host, resolver, frozenset(capabilities)).run()
