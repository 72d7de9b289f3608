"""Manual keying: static SAs and SPD entries (YAML file or ``pyipsec sa add`` arguments).

The file, loaded with ``pyipsec dataplane --static FILE``::

    sas:
      - spi: 0x1001            # int or "0x..." hex; 256 .. 2^32-1
        src: 10.99.1.1         # outer source (tunnel endpoint in tunnel mode)
        dst: 10.99.1.2         # outer destination
        protocol: esp          # esp | ah
        mode: transport        # transport | tunnel
        algorithm: aes128gcm16 # strongSwan keyword (see crypto.esp_algorithms)
        key: 0x00112233...     # hex: encryption key (+salt) then integrity key
        # key_file: /etc/pyipsec/k1.hex  (alternative to key: hex in a 0600 file)
        encap: udp             # optional: ESP in UDP 4500 (RFC 3948)
        child: ab              # PROTECT policies with this child use this SA
        direction: out         # optional: inferred (src local -> out, dst local -> in)
        replay_window: 64      # optional, 32..4096 packets (anti-replay is always on)
        esn: false             # optional
    policies:
      - name: ab
        local: 10.99.1.1       # address, prefix, range a-b, or any
        remote: 10.99.1.2
        protocol: tcp          # optional (any); local_ports / remote_ports optional
        action: protect        # protect | bypass | discard
        priority: 10           # optional, lower first
        child: ab              # protect only; default: the policy name

The same file can be installed on both hosts (``direction`` is inferred per host from its
addresses; policies are written from the host's point of view, so they differ).

Everything is validated before anything is applied; an error names the field
(``sas.0.key: ...``) and the file/line when read from a file. Keys never appear in
``repr()`` or error messages.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from pyipsec.errors import ConfigError
from pyipsec.ipsec.selectors import Selector
from pyipsec.ipsec.spd import Action, SaTemplate, SpdEntry
from pyipsec.util.configfile import Section, load_yaml_file, load_yaml_text

_SA_KEYS = (
    "name", "spi", "src", "dst", "protocol", "mode", "algorithm", "key", "key_file", "encap",
    "encap_sport", "encap_dport", "child", "direction", "replay_window", "esn", "lifetime",
)  # fmt: skip
_POLICY_KEYS = (
    "name", "local", "remote", "protocol", "local_ports", "remote_ports", "icmp_type",
    "icmp_code", "action", "priority", "child", "direction",
)  # fmt: skip
_LIFETIME_KEYS = (
    "soft_bytes", "hard_bytes", "soft_packets", "hard_packets", "soft_seconds", "hard_seconds",
)  # fmt: skip


@dataclass(frozen=True)
class SaConfig:
    """One manually keyed SA, validated. ``key`` is excluded from repr and comparisons."""

    spi: int
    src: str
    dst: str
    protocol: str
    mode: str
    algorithm: str
    direction: str  #: "in" or "out" on this host
    child: str
    key: bytes = field(repr=False, compare=False)
    encap: str | None = None
    encap_sport: int = 4500
    encap_dport: int = 4500
    replay_window: int = 64
    esn: bool = False
    lifetime: dict[str, int] | None = None
    name: str = ""

    @property
    def ident(self) -> tuple[str, str, int]:
        """Key of the SA in the data plane: (direction, protocol, spi)."""
        return (self.direction, self.protocol, self.spi)

    @property
    def version(self) -> int:
        return ipaddress.ip_address(self.src).version

    def build(self, *, selectors: Any = None, now: float = 0.0) -> Any:
        """The :class:`pyipsec.ipsec.SecurityAssociation` for this configuration."""
        from pyipsec.ipsec import Lifetime, SecurityAssociation

        tunnel = self.mode == "tunnel"
        return SecurityAssociation(
            self.spi,
            protocol=self.protocol,
            mode=self.mode,
            algorithm=self.algorithm,
            key=self.key,
            tunnel_src=self.src if tunnel else None,
            tunnel_dst=self.dst if tunnel else None,
            esn=self.esn,
            replay_window=self.replay_window,
            lifetime=Lifetime(**self.lifetime) if self.lifetime else None,
            encap=self.encap,
            encap_sport=self.encap_sport,
            encap_dport=self.encap_dport,
            selectors=selectors,
            now=now,
        )

    def to_dict(self, *, show_key: bool = False) -> dict[str, Any]:
        d: dict[str, Any] = {
            "name": self.name, "spi": f"0x{self.spi:08x}", "src": self.src, "dst": self.dst,
            "protocol": self.protocol, "mode": self.mode, "algorithm": self.algorithm,
            "direction": self.direction, "child": self.child, "encap": self.encap,
            "encap_sport": self.encap_sport, "encap_dport": self.encap_dport,
            "replay_window": self.replay_window, "esn": self.esn, "lifetime": self.lifetime,
        }  # fmt: skip
        if show_key:
            d["key"] = self.key.hex()
        return d


@dataclass(frozen=True)
class PolicyConfig:
    """One SPD entry as configured (kept to list it back and to send it to workers)."""

    entry: SpdEntry
    source: dict[str, Any]

    @property
    def name(self) -> str:
        return self.entry.name

    def to_dict(self) -> dict[str, Any]:
        return dict(self.source)


# --------------------------------------------------------------------------- sources


class _Src:
    """Uniform access to a YAML Section or a plain dict, with located errors."""

    def __init__(self, data: Section | dict[str, Any], path: str) -> None:
        self.data = data
        self.path = path

    def keys(self) -> list[str]:
        return list(self.data.keys())

    def get(self, key: str, default: Any = None) -> Any:
        if isinstance(self.data, Section):
            return self.data.value(key).raw() if key in self.data else default
        v = self.data.get(key, default)
        return default if v is None else v

    def error(self, message: str, key: str | None = None) -> ConfigError:
        if isinstance(self.data, Section):
            return self.data.error(message, key)
        full = f"{self.path}.{key}" if key and self.path else (key or self.path or None)
        return ConfigError(message, key=full)

    def check_keys(self, allowed: tuple[str, ...]) -> None:
        for k in self.keys():
            if k not in allowed:
                raise self.error(f"unknown key (known: {', '.join(sorted(allowed))})", k)

    def located(self, exc: ConfigError, prefix: str = "") -> ConfigError:
        """Re-raise a ConfigError from a constructor at the field it names."""
        key = exc.key or None
        if key and prefix:
            key = f"{prefix}.{key}"
        return self.error(exc.reason, key)


def _int(src: _Src, key: str, default: Any, lo: int, hi: int) -> int:
    value = src.get(key, default)
    if isinstance(value, str):
        try:
            value = int(value, 0)
        except ValueError:
            raise src.error(f"not an integer: {value!r}", key) from None
    if isinstance(value, bool) or not isinstance(value, int):
        raise src.error("must be an integer", key)
    if not lo <= value <= hi:
        raise src.error(f"must be between {lo} and {hi}", key)
    return value


def _choice(src: _Src, key: str, choices: tuple[str, ...], default: Any = None) -> str:
    value = src.get(key, default)
    if value is None:
        raise src.error("is required", key)
    value = str(value).lower()
    if value not in choices:
        raise src.error(f"must be one of {', '.join(choices)} (got {value!r})", key)
    return value


def _addr(src: _Src, key: str) -> str:
    value = src.get(key)
    if value is None:
        raise src.error("is required", key)
    try:
        return str(ipaddress.ip_address(str(value)))
    except ValueError:
        raise src.error(f"not an IP address: {value!r}", key) from None


def _key_bytes(src: _Src) -> bytes:
    text = src.get("key")
    path = src.get("key_file")
    if (text is None) == (path is None):
        raise src.error("give exactly one of key (hex) or key_file", "key")
    if path is not None:
        try:
            with open(str(path)) as f:
                text = f.read().strip()
        except OSError as exc:
            raise src.error(f"cannot read key file: {exc.strerror}", "key_file") from None
        where = "key_file"
    else:
        where = "key"
    if isinstance(text, int):  # YAML read 0x... as an int: its hex digits are the key
        raise src.error("write the key as a quoted hex string", where)
    hexstr = str(text).strip().replace(":", "").replace(" ", "")
    if hexstr[:2].lower() == "0x":
        hexstr = hexstr[2:]
    try:
        key = bytes.fromhex(hexstr)
    except ValueError:
        raise src.error("not a hexadecimal string", where) from None
    if not key:
        raise src.error("is empty", where)
    return key


def parse_sa(
    data: Section | dict[str, Any],
    *,
    path: str = "sa",
    is_local: Callable[[str], bool] | None = None,
    default_child: str | None = None,
) -> SaConfig:
    """Validate one SA mapping; the SA is built once to check algorithm and key length."""
    src = _Src(data, path)
    src.check_keys(_SA_KEYS)
    spi = _int(src, "spi", None, 256, 0xFFFFFFFF) if src.get("spi") is not None else None
    if spi is None:
        raise src.error("is required", "spi")
    s, d = _addr(src, "src"), _addr(src, "dst")
    if ipaddress.ip_address(s).version != ipaddress.ip_address(d).version:
        raise src.error("src and dst mix IPv4 and IPv6", "dst")
    protocol = _choice(src, "protocol", ("esp", "ah"), "esp")
    mode = _choice(src, "mode", ("transport", "tunnel"), "transport")
    algorithm = str(src.get("algorithm", "")) or None
    if algorithm is None:
        raise src.error("is required", "algorithm")
    encap = src.get("encap")
    if encap is not None:
        encap = _choice(src, "encap", ("udp", "none"))
        encap = None if encap == "none" else encap
    if encap and protocol == "ah":
        raise src.error("AH cannot be UDP-encapsulated (RFC 3948 covers ESP only)", "encap")
    direction = src.get("direction")
    if direction is not None:
        direction = _choice(src, "direction", ("in", "out"))
    elif is_local is not None:
        sl, dl = is_local(s), is_local(d)
        if sl == dl:
            raise src.error(
                "cannot infer: " + ("both" if sl else "neither") + " of src/dst is local; "
                "give direction: in|out",
                "direction",
            )
        direction = "out" if sl else "in"
    else:
        raise src.error("is required (in or out)", "direction")
    child = src.get("child", default_child)
    if not child:
        raise src.error("is required (the child name its PROTECT policies use)", "child")
    lifetime = src.get("lifetime")
    if lifetime is not None:
        if not isinstance(lifetime, dict) or any(k not in _LIFETIME_KEYS for k in lifetime):
            raise src.error(f"must be a mapping of {', '.join(_LIFETIME_KEYS)}", "lifetime")
    cfg = SaConfig(
        spi=spi, src=s, dst=d, protocol=protocol, mode=mode, algorithm=algorithm,
        direction=direction, child=str(child), key=_key_bytes(src), encap=encap,
        encap_sport=_int(src, "encap_sport", 4500, 1, 65535),
        encap_dport=_int(src, "encap_dport", 4500, 1, 65535),
        replay_window=_int(src, "replay_window", 64, 32, 4096),
        esn=bool(src.get("esn", False)), lifetime=lifetime,
        name=str(src.get("name", "") or f"{child}-{direction}-{spi:#x}"),
    )  # fmt: skip
    try:
        cfg.build()
    except ConfigError as exc:
        raise src.located(exc) from None
    except (ValueError, TypeError) as exc:
        # H1's SA names algorithm/key problems; never echo key material
        msg = str(exc)
        field_name = "algorithm" if "algorithm" in msg.lower() else "key"
        raise src.error(msg if field_name == "algorithm" else "invalid key", field_name) from None
    return cfg


def parse_policy(data: Section | dict[str, Any], *, path: str = "policy") -> PolicyConfig:
    """Validate one SPD entry mapping."""
    src = _Src(data, path)
    src.check_keys(_POLICY_KEYS)
    name = src.get("name")
    if not name:
        raise src.error("is required", "name")
    name = str(name)
    action = _choice(src, "action", ("protect", "bypass", "discard"))
    try:
        selector = Selector.from_fields(
            str(src.get("local", "any")),
            str(src.get("remote", "any")),
            src.get("protocol"),
            src.get("local_ports", "any"),
            src.get("remote_ports", "any"),
            icmp_type=src.get("icmp_type"),
            icmp_code=src.get("icmp_code"),
        )
    except ConfigError as exc:
        raise src.located(exc) from None
    template = None
    if action == "protect":
        template = SaTemplate(child=str(src.get("child", name)))
    elif src.get("child") is not None:
        raise src.error("only protect policies name a child", "child")
    direction = _choice(src, "direction", ("both", "in", "out"), "both")
    priority = _int(src, "priority", 100, -(2**31), 2**31 - 1)
    try:
        entry = SpdEntry(
            name, selector, Action.parse(action), priority=priority,
            template=template, direction=direction,
        )  # fmt: skip
    except ConfigError as exc:
        raise src.located(exc) from None
    source = {k: src.get(k) for k in _POLICY_KEYS if src.get(k) is not None}
    return PolicyConfig(entry, source)


@dataclass(frozen=True)
class StaticConfig:
    """A validated static file: SAs and SPD entries, in file order."""

    sas: tuple[SaConfig, ...]
    policies: tuple[PolicyConfig, ...]


def parse_static(
    doc: Section | dict[str, Any], *, is_local: Callable[[str], bool] | None = None
) -> StaticConfig:
    """Validate a whole static document (policies first: SAs may default their child)."""
    src = _Src(doc, "")
    src.check_keys(("sas", "policies"))
    policies: list[PolicyConfig] = []
    names: set[str] = set()
    for i, item in enumerate(_items(doc, "policies")):
        pol = parse_policy(item, path=f"policies.{i}")
        if pol.name in names:
            raise _Src(item, f"policies.{i}").error("duplicate policy name", "name")
        names.add(pol.name)
        policies.append(pol)
    children = sorted({p.entry.template.child for p in policies if p.entry.template})
    default_child = children[0] if len(children) == 1 else None
    sas: list[SaConfig] = []
    seen: set[tuple[str, str, int]] = set()
    for i, item in enumerate(_items(doc, "sas")):
        sa = parse_sa(item, path=f"sas.{i}", is_local=is_local, default_child=default_child)
        if sa.ident in seen:
            raise _Src(item, f"sas.{i}").error("duplicate SPI for this direction", "spi")
        seen.add(sa.ident)
        if sa.child not in children:
            raise _Src(item, f"sas.{i}").error(
                f"no protect policy names child {sa.child!r}", "child"
            )
        sas.append(sa)
    return StaticConfig(tuple(sas), tuple(policies))


def _items(doc: Section | dict[str, Any], key: str) -> list[Section | dict[str, Any]]:
    if isinstance(doc, Section):
        if key not in doc:
            return []
        out: list[Section | dict[str, Any]] = []
        for v in doc.value(key).as_list():
            out.append(v.as_section())
        return out
    items = doc.get(key) or []
    if not isinstance(items, list) or not all(isinstance(x, dict) for x in items):
        raise ConfigError("must be a list of mappings", key=key)
    return list(items)


def load_static_file(path: str, *, is_local: Callable[[str], bool] | None = None) -> StaticConfig:
    """Read and validate a static file. Warns (ConfigError) if it holds keys and is not 0600."""
    doc = load_yaml_file(path)
    cfg = parse_static(doc, is_local=is_local)
    if cfg.sas and os.stat(path).st_mode & 0o077:
        raise ConfigError(
            "holds key material but is readable by group/others (chmod 600)", file=path
        )
    return cfg


def load_static_text(text: str, *, is_local: Callable[[str], bool] | None = None) -> StaticConfig:
    return parse_static(load_yaml_text(text), is_local=is_local)


def with_direction(sa: SaConfig, direction: str) -> SaConfig:
    return replace(sa, direction=direction)
