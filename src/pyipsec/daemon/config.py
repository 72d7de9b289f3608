"""The daemon's configuration file (YAML), compiled into IKE endpoint configuration.

This is the low-level layer: connections the way strongSwan's swanctl.conf describes
them. The policy layer (filter lists, filter actions, rules) compiles into it.

.. code-block:: yaml

    secrets: /etc/pyipsec/secrets.yaml      # 0600: psk: {web-db: "..."}
    control_socket: /run/pyipsec/control.sock
    connections:
      web-db:
        local_addrs: [10.1.0.1]
        remote_addrs: [10.1.0.2]
        proposals: [aes128gcm16-prfsha256-x25519]
        local: {auth: psk, id: 10.1.0.1}
        remote: {auth: psk, id: 10.1.0.2}
        # alternatives:                     # further methods, tried in order (no 'id':
        #   - local: {auth: pubkey, cert: host.crt, key: host.key}   # the connection's)
        #     remote: {auth: pubkey, cacerts: [ca.crt]}
        rekey_time: 4h
        dpd_delay: 30s
        children:
          db:
            local_ts: [dynamic]
            remote_ts: [dynamic]
            mode: transport
            esp_proposals: [aes128gcm16-esn]
            rekey_time: 1h
            start_action: trap
            # unsecured_fallback: 3s          # clear text with hosts that do not answer IKE
    spd:                                    # optional: ordered SPD entries (lower first)
      - {name: no-smtp, local: 10.1.0.1, remote: any, protocol: tcp,
         remote_ports: 25, action: discard, priority: 10}
      - {name: db, local: 10.1.0.1, remote: 10.1.0.2, action: protect,
         child: web-db/db, priority: 20}  # child: <connection>/<child>
    policy:                                 # optional: a policy applied by the daemon
      file: /etc/pyipsec/policy.yaml        #   a local policy, or
      server: {url: "https://policy:8443", ca: ca.crt, cert: host.crt, key: host.key}
      addresses: [10.1.0.1]                 #   "me" (default: the host's addresses)
      secrets: /etc/pyipsec/psk-store.yaml  #   0600, psk: {name: value} for psk: NAME
      secrets_file: /var/lib/pyipsec/policy-secrets.yaml  # written 0600 at apply time

Connections and SPD entries compiled from the policy (:mod:`pyipsec.daemon.policy`) are
merged with the ones written here; children without an SPD entry get PROTECT entries
derived from their traffic selectors (priority 100).

Every error names the file, the line and the key; nothing is returned half-built. Secrets
live in a separate file that must not be readable by group or others.
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat
from dataclasses import dataclass, field
from typing import Any

from pyipsec.crypto.files import load_certificates, load_private_key
from pyipsec.dataplane.static import PolicyConfig, parse_policy
from pyipsec.errors import ConfigError
from pyipsec.ike.config import AuthConfig, ChildConfig, EndpointConfig, Identity, PeerConfig
from pyipsec.util.configfile import Section, load_yaml_file, load_yaml_text

DEFAULT_CONFIG = "/etc/pyipsec/pyipsec.yaml"
DEFAULT_CONTROL_SOCKET = "/run/pyipsec/control.sock"

_DURATION = re.compile(r"^\s*(?:(\d+(?:\.\d+)?)\s*([smhd]?)\s*)+$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """``"90"``, ``"90s"``, ``"15m"``, ``"4h"``, ``"1h30m"``, ``"1d"`` -> seconds."""
    if not _DURATION.match(text):
        raise ValueError(f"not a duration: {text!r} (examples: 30s, 15m, 4h, 1h30m)")
    return sum(
        float(number) * _UNITS[unit]
        for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([smhd]?)", text)
    )


def parse_size(text: str) -> int:
    """``"1000"``, ``"100k"``, ``"50M"``, ``"2G"`` -> bytes (binary units)."""
    match = re.fullmatch(r"\s*(\d+)\s*([kKmMgG]?)[bB]?\s*", text)
    if not match:
        raise ValueError(f"not a size: {text!r} (examples: 100k, 50M, 2G)")
    factor = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[match.group(2).lower()]
    return int(match.group(1)) * factor


@dataclass(frozen=True)
class ConnectionInfo:
    """What the daemon needs beyond the IKE configuration, per connection."""

    name: str
    local_addrs: tuple[str, ...]
    remote_addrs: tuple[str, ...]
    encap: bool = False  #: force ESP-in-UDP (NAT-T) even without NAT
    start_actions: dict[str, str] = field(default_factory=dict)  #: child name -> action
    #: child name -> seconds of failed negotiation before traffic with that host goes in
    #: clear (``unsecured_fallback``; policies' allow_unsecured_fallback)
    fallbacks: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class PolicyServerSettings:
    """``policy.server``: where the daemon pulls its policy from (mutual TLS)."""

    url: str  #: https://NAME:PORT (NAME in the server's certificate)
    ca: str  #: CA certificate: trust anchor for TLS and for the signed envelopes
    cert: str  #: this host's machine certificate (also used for IKE certificate auth)
    key: str  #: its private key
    cache: str  #: last good envelope (written 0600)
    crl: str | None = None  #: optional CRL of the CA
    poll_interval: float | None = None  #: seconds; None: the policy's polling interval
    timeout: float = 10.0  #: seconds per request


@dataclass(frozen=True)
class PolicySettings:
    """``policy:``: a policy the daemon compiles for this host and applies."""

    file: str | None  #: a local policy file (exclusive with ``server``)
    server: PolicyServerSettings | None  #: or a policy server
    addresses: tuple[str, ...] = ()  #: this host's addresses ("me"); empty: discovered
    cert: str | None = None  #: machine certificate for certificate auth (default: server's)
    key: str | None = None  #: its key
    secrets: str | None = None  #: local secrets store (0600): psk: {name: value}
    secrets_file: str = "/var/lib/pyipsec/policy-secrets.yaml"  #: written 0600 on apply

    @property
    def source(self) -> str:
        return self.server.url if self.server is not None else str(self.file)


@dataclass(frozen=True)
class CompiledPart:
    """What a compiled policy adds to the file's configuration.

    ``connections``: the compiled daemon document's ``connections`` section; ``secrets``:
    pre-shared keys by connection name (never shown); ``spd``: SPD entries in the
    ``spd:`` format, in lookup order; ``source``: e.g. ``policy 'Web App Encrypt' v3``.
    """

    connections: Section
    secrets: dict[str, bytes] = field(repr=False)
    spd: tuple[dict[str, Any], ...]
    source: str


@dataclass(frozen=True)
class DaemonConfig:
    """The whole daemon configuration, validated."""

    endpoint: EndpointConfig
    connections: dict[str, ConnectionInfo]
    control_socket: str = DEFAULT_CONTROL_SOCKET
    tun_name: str = "pyipsec0"
    log_level: str = "info"
    source: str = "<string>"
    #: explicit SPD entries (from ``spd:`` and the applied policy), in lookup order
    spd: tuple[PolicyConfig, ...] = ()
    policy: PolicySettings | None = None  #: the ``policy:`` section, if any
    #: connections that came from the applied policy
    policy_connections: frozenset[str] = frozenset()

    def peer(self, name: str) -> PeerConfig:
        peer = self.endpoint.peer(name)
        if peer is None:
            raise ConfigError(f"no connection named {name!r}")
        return peer


def _duration(section: Section, key: str, default: float | None) -> Any:
    if key not in section:
        return default
    value = section.value(key)
    raw = value.raw()
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        if raw < 0:
            raise value.error("must not be negative")
        return float(raw)
    return section.get_converted(key, parse_duration)


def _size(section: Section, key: str, default: int) -> int:
    if key not in section:
        return default
    raw = section.value(key).raw()
    if isinstance(raw, int) and not isinstance(raw, bool):
        return section.get_int(key, minimum=0)
    return section.get_converted(key, parse_size)


# dataclass field names (in ConfigError.key) -> the YAML keys an administrator wrote
_FIELD_TO_KEY = {
    "ike_proposals": "proposals",
    "local_auth": "local",
    "remote_auth": "remote",
    "local_id": "local",
    "remote_id": "remote",
    "local_addr": "local_addrs",
    "auth_alternatives": "alternatives",
}


def _located(section: Section, key: str | None, exc: ConfigError) -> ConfigError:
    """Re-locate a ConfigError raised by a dataclass validator at ``section``."""
    inner = exc.key.split(".")[1] if exc.key and "." in exc.key else exc.key
    inner = _FIELD_TO_KEY.get(inner or "", inner)
    if inner is not None and inner in section:
        return section.error(exc.reason, inner)
    return section.error(exc.reason, key)


def _read_secrets(path: str, *, config_file: str) -> dict[str, bytes]:
    """Read ``psk: {connection: secret}`` from a 0600 file."""
    try:
        info = os.stat(path)
    except OSError as exc:
        raise ConfigError(f"cannot read secrets file: {exc.strerror}", file=path) from None
    if stat.S_IMODE(info.st_mode) & 0o077:
        raise ConfigError(
            "secrets file must not be readable by group or others (chmod 600)", file=path
        )
    doc = load_yaml_file(path)
    doc.check_keys(["psk"])
    secrets: dict[str, bytes] = {}
    psk = doc.section("psk")
    for name in psk.keys():
        value = psk.value(name)
        text = value.as_str()
        if text.startswith("0x"):
            try:
                secrets[name] = bytes.fromhex(text[2:])
            except ValueError:
                raise value.error("hex secret is not valid hex") from None
        else:
            secrets[name] = text.encode()
        if len(secrets[name]) < 8:
            raise value.error("pre-shared key too short (8 bytes at least)")
    return secrets


def _load_pem_objects(section: Section, key: str, kind: str) -> tuple[Any, ...]:
    """The key (``kind`` "key") or certificates named at ``key`` (a path or a list)."""
    objects: list[Any] = []
    top = section.value(key)
    for value in top.as_list() if isinstance(top.raw(), list) else [top]:
        try:
            if kind == "key":
                objects.append(load_private_key(value.as_str()))
            else:
                objects.extend(load_certificates(value.as_str()))
        except ConfigError as exc:
            raise value.error(f"{value.as_str()}: {exc.reason}") from None
    return tuple(objects)


def _auth(
    side: Section, *, local: bool, psk: bytes | None, conn: str, ids: bool = True
) -> AuthConfig:
    """One side's method; ``ids``: whether ``id`` may be given (not in alternatives)."""
    keys = ["auth", "cert", "certs", "key", "cacerts", "send_cert"]
    side.check_keys([*keys, "id"] if ids else keys)
    method = side.get_choice("auth", ("psk", "pubkey"), "psk")
    if method == "psk":
        if psk is None:
            raise side.error(f"no pre-shared key for {conn!r} in the secrets file", "auth")
        return AuthConfig(method="psk", psk=psk)
    if local:
        if "key" not in side or ("cert" not in side and "certs" not in side):
            raise side.error("pubkey authentication needs 'key' and 'cert'", "auth")
        key = _load_pem_objects(side, "key", "key")[0]
        chain = _load_pem_objects(side, "cert" if "cert" in side else "certs", "certificate")
        cas = _load_pem_objects(side, "cacerts", "certificate") if "cacerts" in side else ()
        return AuthConfig(
            method="pubkey",
            private_key=key,
            cert_chain=chain,
            trusted_cas=cas,
            send_cert=side.get_bool("send_cert", True),
        )
    if "cacerts" not in side:
        raise side.error("pubkey authentication of the peer needs 'cacerts'", "auth")
    return AuthConfig(
        method="pubkey", trusted_cas=_load_pem_objects(side, "cacerts", "certificate")
    )


def _alternatives(
    section: Section, psk: bytes | None, conn: str
) -> tuple[tuple[AuthConfig, AuthConfig], ...]:
    """``alternatives``: further (local, remote) methods after the primary one, in order.
    Identities stay the connection's; one pre-shared key per connection, so at most one
    method (the primary included) may use it."""
    if "alternatives" not in section:
        return ()
    pairs: list[tuple[AuthConfig, AuthConfig]] = []
    psk_used = "psk" in [section.section(k).get_str("auth", "psk") for k in ("local", "remote")]
    for value in section.get_list("alternatives"):
        alt = value.as_section()
        alt.check_keys(["local", "remote"])
        local, remote = alt.section("local", required=True), alt.section("remote", required=True)
        pair = (
            _auth(local, local=True, psk=psk, conn=conn, ids=False),
            _auth(remote, local=False, psk=psk, conn=conn, ids=False),
        )
        if "psk" in (pair[0].method, pair[1].method):
            if psk_used:
                raise value.error(
                    "a second pre-shared key method: a connection has one pre-shared key "
                    "(its entry in the secrets file); keep one"
                )
            psk_used = True
        pairs.append(pair)
    return tuple(pairs)


_CHILD_KEYS = [
    "local_ts",
    "remote_ts",
    "mode",
    "esp_proposals",
    "ah_proposals",
    "rekey_time",
    "rekey_bytes",
    "rekey_packets",
    "life_time",
    "jitter",
    "pfs_group",
    "start_action",
    "unsecured_fallback",
]
_CONN_KEYS = [
    "local_addrs",
    "remote_addrs",
    "remote_port",
    "proposals",
    "local",
    "remote",
    "rekey_time",
    "over_time",
    "jitter",
    "dpd_delay",
    "retransmit_tries",
    "retransmit_timeout",
    "retransmit_base",
    "fragment_size",
    "encap",
    "children",
    "alternatives",
]


def _child(name: str, section: Section) -> ChildConfig:
    section.check_keys(_CHILD_KEYS)
    kwargs: dict[str, Any] = {
        "name": name,
        "local_ts": tuple(section.get_str_list("local_ts", ["dynamic"])),
        "remote_ts": tuple(section.get_str_list("remote_ts", ["dynamic"])),
        "mode": section.get_choice("mode", ("transport", "tunnel"), "transport"),
        "rekey_time": _duration(section, "rekey_time", 3600.0),
        "rekey_bytes": _size(section, "rekey_bytes", 0),
        "rekey_packets": section.get_int("rekey_packets", 0, minimum=0),
        "life_time": _duration(section, "life_time", None),
        "jitter": _duration(section, "jitter", 0.0),
        "start_action": section.get_choice("start_action", ("none", "start", "trap"), "trap"),
    }
    if "ah_proposals" in section:
        kwargs["ah_proposals"] = tuple(section.get_str_list("ah_proposals"))
        kwargs["esp_proposals"] = ()
    if "esp_proposals" in section:
        kwargs["esp_proposals"] = tuple(section.get_str_list("esp_proposals"))
    if "pfs_group" in section:
        kwargs["pfs_group"] = section.get_str("pfs_group")
    try:
        return ChildConfig(**kwargs)
    except ConfigError as exc:
        raise _located(section, None, exc) from None


def _connection(
    name: str, section: Section, secrets: dict[str, bytes]
) -> tuple[PeerConfig, ConnectionInfo]:
    section.check_keys(_CONN_KEYS)
    local_addrs = tuple(section.get_str_list("local_addrs", []))
    remote_addrs = tuple(section.get_str_list("remote_addrs", ["%any"]))
    if len(local_addrs) > 1:
        raise section.error("one local address per connection", "local_addrs")
    local = section.section("local")
    remote = section.section("remote")
    children_section = section.section("children")
    children = tuple(_child(child, cs) for child, cs in children_section.items())
    fallbacks = {
        child: _duration(cs, "unsecured_fallback", None)
        for child, cs in children_section.items()
        if "unsecured_fallback" in cs
    }
    for child, seconds in fallbacks.items():
        cs = children_section.section(child)
        if not 0 < seconds <= 300:
            raise cs.error("must be between 0 and 5 minutes", "unsecured_fallback")
        if cs.get_choice("start_action", ("none", "start", "trap"), "trap") != "trap":
            raise cs.error("an unsecured fallback needs start_action: trap", "unsecured_fallback")
    for side, key in ((local, "local"), (remote, "remote")):
        if "id" in side:
            side.get_converted("id", lambda text, k=key: Identity.parse(text, key=f"{k}.id"))
    kwargs: dict[str, Any] = {
        "name": name,
        "remote_addrs": remote_addrs,
        "local_addr": local_addrs[0] if local_addrs else None,
        "remote_port": section.get_int("remote_port", 500, minimum=1, maximum=65535),
        "ike_proposals": tuple(section.get_str_list("proposals", ["aes128gcm16-prfsha256-x25519"])),
        "local_auth": _auth(local, local=True, psk=secrets.get(name), conn=name),
        "remote_auth": _auth(remote, local=False, psk=secrets.get(name), conn=name),
        "auth_alternatives": _alternatives(section, secrets.get(name), name),
        "local_id": local.get_str("id", None),
        "remote_id": remote.get_str("id", None),
        "rekey_time": _duration(section, "rekey_time", 14400.0),
        "over_time": _duration(section, "over_time", None),
        "jitter": _duration(section, "jitter", 0.0),
        "dpd_delay": _duration(section, "dpd_delay", 30.0),
        "retransmit_tries": section.get_int("retransmit_tries", 5, minimum=1, maximum=20),
        "retransmit_timeout": _duration(section, "retransmit_timeout", 4.0),
        "retransmit_base": float(section.get_converted("retransmit_base", float, 1.8)),
        "fragment_size": section.get_int("fragment_size", 1280, minimum=0, maximum=65535),
        "children": children,
        "force_encap": section.get_bool("encap", False),
    }
    try:
        peer = PeerConfig(**kwargs)
    except ConfigError as exc:
        raise _located(section, None, exc) from None
    info = ConnectionInfo(
        name=name,
        local_addrs=local_addrs,
        remote_addrs=remote_addrs,
        encap=section.get_bool("encap", False),
        start_actions={child.name: child.start_action for child in children},
        fallbacks=fallbacks,
    )
    return peer, info


def _path(base_dir: str, path: str) -> str:
    return path if os.path.isabs(path) else os.path.join(base_dir, path)


def _policy_settings(section: Section, base_dir: str) -> PolicySettings:
    section.check_keys(["file", "server", "addresses", "cert", "key", "secrets", "secrets_file"])
    if ("file" in section) == ("server" in section):
        raise section.error("give exactly one of 'file' (a local policy) or 'server'")
    server = None
    if "server" in section:
        srv = section.section("server")
        srv.check_keys(["url", "ca", "cert", "key", "crl", "poll_interval", "cache", "timeout"])
        url = srv.get_str("url")
        if not url.startswith("https://"):
            raise srv.error("must be an https:// URL", "url")
        server = PolicyServerSettings(
            url=url,
            ca=_path(base_dir, srv.get_str("ca")),
            cert=_path(base_dir, srv.get_str("cert")),
            key=_path(base_dir, srv.get_str("key")),
            cache=_path(base_dir, srv.get_str("cache", "/var/lib/pyipsec/policy-envelope.json")),
            crl=_path(base_dir, srv.get_str("crl")) if "crl" in srv else None,
            poll_interval=_duration(srv, "poll_interval", None),
            timeout=_duration(srv, "timeout", 10.0),
        )
        if server.poll_interval is not None and server.poll_interval < 1:
            raise srv.error("must be at least 1 second", "poll_interval")
    addresses = tuple(section.get_str_list("addresses", []))
    for text in addresses:
        try:
            ipaddress.ip_address(text)
        except ValueError:
            raise section.error(f"not an IP address: {text!r}", "addresses") from None

    def opt(key: str) -> str | None:
        return _path(base_dir, section.get_str(key)) if key in section else None

    return PolicySettings(
        file=opt("file"),
        server=server,
        addresses=addresses,
        cert=opt("cert") or (server.cert if server else None),
        key=opt("key") or (server.key if server else None),
        secrets=opt("secrets"),
        secrets_file=opt("secrets_file") or "/var/lib/pyipsec/policy-secrets.yaml",
    )


def _spd(
    items: list[tuple[Any, str]], infos: dict[str, ConnectionInfo], peers: list[PeerConfig]
) -> tuple[PolicyConfig, ...]:
    """Validate SPD entries; a PROTECT entry's child must be ``<connection>/<child>``."""
    children = {f"{p.name}/{c.name}" for p in peers for c in p.children}
    out: list[PolicyConfig] = []
    names: set[str] = set()
    for data, path in items:
        pol = parse_policy(data, path=path)
        where = data if isinstance(data, Section) else None
        if pol.name in names:
            message = f"duplicate SPD entry name {pol.name!r}"
            raise where.error(message, "name") if where else ConfigError(message, key=path)
        names.add(pol.name)
        template = pol.entry.template
        if template is not None and template.child not in children:
            message = (
                f"child {template.child!r} is not a <connection>/<child> of this "
                f"configuration (known: {', '.join(sorted(children)) or 'none'})"
            )
            raise where.error(message, "child") if where else ConfigError(message, key=path)
        out.append(pol)
    return tuple(out)


def parse_config(
    doc: Section,
    *,
    source: str,
    base_dir: str = ".",
    compiled: CompiledPart | None = None,
) -> DaemonConfig:
    """Validate a parsed document and build the daemon configuration.

    ``compiled``: connections, secrets and SPD entries of an applied policy, merged with
    the document's (a connection name defined in both is an error).
    """
    doc.check_keys(
        ["secrets", "control_socket", "tun", "log_level", "ike", "connections", "spd", "policy"]
    )
    secrets: dict[str, bytes] = {}
    if "secrets" in doc:
        path = _path(base_dir, doc.get_str("secrets"))
        secrets = _read_secrets(path, config_file=source)
    policy = _policy_settings(doc.section("policy"), base_dir) if "policy" in doc else None
    ike = doc.section("ike")
    ike.check_keys(["port", "cookie_threshold", "half_open_timeout"])
    connections = doc.section("connections")
    if not connections.keys() and policy is None:
        raise doc.error("at least one connection is needed", "connections")
    peers: list[PeerConfig] = []
    infos: dict[str, ConnectionInfo] = {}
    for name, section in connections.items():
        peer, info = _connection(name, section, secrets)
        peers.append(peer)
        infos[name] = info
    from_policy: set[str] = set()
    spd_items: list[tuple[Any, str]] = []
    if compiled is not None:
        for name, section in compiled.connections.items():
            if name in infos:
                raise connections.error(
                    f"connection {name!r} is also defined by {compiled.source}; rename one", name
                )
            peer, info = _connection(name, section, dict(compiled.secrets))
            peers.append(peer)
            infos[name] = info
            from_policy.add(name)
        spd_items += [(d, f"{compiled.source}: spd.{i}") for i, d in enumerate(compiled.spd)]
    if "spd" in doc:
        spd_items += [(v.as_section(), "") for v in doc.get_list("spd")]
    spd = _spd(spd_items, infos, peers)
    local_addrs = {info.local_addrs[0] for info in infos.values() if info.local_addrs}
    try:
        endpoint = EndpointConfig(
            peers=tuple(peers),
            local_addr=next(iter(local_addrs)) if len(local_addrs) == 1 else "0.0.0.0",
            port=ike.get_int("port", 500, minimum=1, maximum=65535),
            cookie_threshold=ike.get_int("cookie_threshold", 10, minimum=0),
            half_open_timeout=_duration(ike, "half_open_timeout", 30.0),
        )
    except ConfigError as exc:
        raise _located(ike, None, exc) from None
    return DaemonConfig(
        endpoint=endpoint,
        connections=infos,
        control_socket=doc.get_str("control_socket", DEFAULT_CONTROL_SOCKET),
        tun_name=doc.get_str("tun", "pyipsec0"),
        log_level=doc.get_choice("log_level", ("debug", "info", "warning", "error"), "info"),
        source=source,
        spd=spd,
        policy=policy,
        policy_connections=frozenset(from_policy),
    )


def load_config(path: str, *, compiled: CompiledPart | None = None) -> DaemonConfig:
    """Load and validate the configuration file at ``path`` (merged with ``compiled``)."""
    doc = load_yaml_file(path)
    return parse_config(
        doc, source=path, base_dir=os.path.dirname(os.path.abspath(path)), compiled=compiled
    )


def load_config_text(text: str, *, file: str = "<string>", base_dir: str = ".") -> DaemonConfig:
    return parse_config(load_yaml_text(text, file=file), source=file, base_dir=base_dir)
