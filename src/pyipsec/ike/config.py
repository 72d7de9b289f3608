"""IKEv2 configuration: plain validated frozen dataclasses filled in by the daemon/policy.

* :class:`EndpointConfig`: one local endpoint (socket/identity) and the peers it knows.
* :class:`PeerConfig`: one IKE peer: addresses, IKE proposals, authentication, identities,
  lifetimes, liveness (DPD), retransmission, fragmentation, and its Child SA configs.
* :class:`ChildConfig`: one Child SA: selectors, mode, ESP/AH proposals, lifetimes, PFS.
* :class:`AuthConfig`: one authentication round (PSK or certificate).

A peer's authentication is an ordered list of (local, remote) :class:`AuthConfig` pairs:
the primary ``local_auth``/``remote_auth`` and then ``auth_alternatives``. An initiator
uses the first pair and, when authentication fails, starts over with the next one
(:meth:`PeerConfig.next_auth`); a responder verifies with the pair whose remote method
matches the peer's AUTH payload and answers with that pair's local method.

Validation happens in ``__post_init__`` and raises pyipsec.errors.ConfigError naming the key.
Secrets (PSK, private keys) are excluded from repr().
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
from dataclasses import dataclass, field
from typing import Any

from pyipsec.errors import ConfigError
from pyipsec.ike.proposals import KE_KEYWORDS, ProposalSpec, parse_proposal, with_pfs
from pyipsec.ike.ts import TsRange, parse_ts
from pyipsec.wire.iana import IdType, KeId, ProtocolId


@dataclass(frozen=True, slots=True)
class Identity:
    """An IKE identity (RFC 7296 3.5): ID type and its encoded data."""

    id_type: IdType
    data: bytes

    @classmethod
    def parse(cls, text: str, *, key: str = "id") -> Identity:
        """strongSwan-like syntax: an IP address, ``user@host`` (RFC822), ``@fqdn`` or a bare
        name (FQDN), ``C=.., O=.., CN=..`` (DER_ASN1_DN), ``keyid:hex`` (KEY_ID). Cached."""
        return _parse_identity(cls, text, key)

    @classmethod
    def _parse(cls, text: str, key: str) -> Identity:
        text = text.strip()
        if not text:
            raise ConfigError("empty identity", key=key)
        try:
            ip = ipaddress.ip_address(text)
        except ValueError:
            pass
        else:
            t = IdType.IPV4_ADDR if ip.version == 4 else IdType.IPV6_ADDR
            return cls(t, ip.packed)
        if text.startswith("keyid:"):
            try:
                return cls(IdType.KEY_ID, bytes.fromhex(text[6:]))
            except ValueError as exc:
                raise ConfigError(f"bad keyid identity {text!r}", key=key) from exc
        if "=" in text:
            from cryptography import x509

            try:
                name = x509.Name.from_rfc4514_string(
                    ",".join(reversed([p.strip() for p in text.split(",")]))
                )
            except ValueError as exc:
                raise ConfigError(f"bad DN identity {text!r}", key=key) from exc
            return cls(IdType.DER_ASN1_DN, name.public_bytes())
        if text.startswith("@"):
            return cls(IdType.FQDN, text[1:].encode())
        if "@" in text:
            return cls(IdType.RFC822_ADDR, text.encode())
        return cls(IdType.FQDN, text.encode())

    def matches(self, id_type: int, data: bytes) -> bool:
        """True if an ID payload (type, data) names this identity: the same bytes, or for
        distinguished names the same DN in another string encoding (strongSwan sends
        PrintableString where we write UTF8String)."""
        if (self.id_type, self.data) == (id_type, data):
            return True
        if self.id_type == IdType.DER_ASN1_DN and id_type == IdType.DER_ASN1_DN:
            from pyipsec.crypto.certs import dn_equal

            return dn_equal(self.data, data)
        return False

    def __str__(self) -> str:
        if self.id_type in (IdType.IPV4_ADDR, IdType.IPV6_ADDR):
            try:
                return str(ipaddress.ip_address(self.data))
            except ValueError:
                return self.data.hex()
        if self.id_type in (IdType.FQDN, IdType.RFC822_ADDR):
            return self.data.decode("utf-8", "replace")
        if self.id_type == IdType.DER_ASN1_DN:
            return "dn:" + self.data.hex()
        return "keyid:" + self.data.hex()


@functools.lru_cache(maxsize=1024)
def _parse_identity(cls: type[Identity], text: str, key: str) -> Identity:
    return cls._parse(text, key)


@functools.lru_cache(maxsize=4096)
def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """One authentication round.

    ``method``: ``"psk"`` (RFC 7296 2.15, ``psk`` holds the secret) or ``"pubkey"``
    (RFC 7427 digital signature; local side: ``private_key`` and ``cert_chain`` (end entity
    first); remote side: ``trusted_cas``).
    """

    method: str = "psk"
    psk: bytes | None = field(default=None, repr=False)
    private_key: Any = field(default=None, repr=False)
    cert_chain: tuple[Any, ...] = ()
    trusted_cas: tuple[Any, ...] = ()
    send_cert: bool = True

    def __post_init__(self) -> None:
        if self.method not in ("psk", "pubkey"):
            raise ConfigError(f"unknown auth method {self.method!r}", key="auth.method")
        if self.psk is not None and not isinstance(self.psk, bytes):
            raise ConfigError("psk must be bytes", key="auth.psk")
        if self.method == "psk" and self.psk is not None and len(self.psk) < 1:
            raise ConfigError("psk must not be empty", key="auth.psk")


def _check_pair(local: AuthConfig, remote: AuthConfig, where: str) -> None:
    """A usable (local, remote) pair: secrets, key and certificate, trusted CAs present."""
    if local.method == "psk" and local.psk is None:
        raise ConfigError("psk auth needs a secret", key=f"{where}.local_auth.psk")
    if remote.method == "psk" and remote.psk is None:
        raise ConfigError("psk auth needs a secret", key=f"{where}.remote_auth.psk")
    if local.method == "pubkey" and (local.private_key is None or not local.cert_chain):
        raise ConfigError("pubkey auth needs a key and certificate", key=f"{where}.local_auth")
    if remote.method == "pubkey" and not remote.trusted_cas:
        raise ConfigError("pubkey auth needs trusted CAs", key=f"{where}.remote_auth")


def _positive(value: float, key: str, *, zero_ok: bool = False) -> None:
    if value < 0 or (value == 0 and not zero_ok):
        raise ConfigError(f"must be {'>= 0' if zero_ok else '> 0'}, got {value}", key=key)


@dataclass(frozen=True, slots=True)
class ChildConfig:
    """One Child SA. Selectors as strings (see pyipsec.ike.ts), ``"dynamic"`` = own address.

    Lifetimes: rekey after ``rekey_time`` minus up to ``jitter`` seconds (random), or after
    ``rekey_bytes``/``rekey_packets`` (0 = off, enforced by the data plane's SA); the SA dies
    at ``life_time`` (default rekey_time * 1.1). ``pfs_group`` (e.g. "x25519") adds a KE to
    CREATE_CHILD_SA. ``start_action``: "none", "start" (initiate with the IKE SA), "trap".
    """

    name: str
    local_ts: tuple[str, ...] = ("dynamic",)
    remote_ts: tuple[str, ...] = ("dynamic",)
    mode: str = "transport"
    esp_proposals: tuple[str, ...] = ("aes128gcm16-esn", "aes128gcm16")
    ah_proposals: tuple[str, ...] = ()
    rekey_time: float = 3600.0
    rekey_bytes: int = 0
    rekey_packets: int = 0
    life_time: float | None = None
    jitter: float = 0.0
    pfs_group: str | None = None
    start_action: str = "none"

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigError("child name must not be empty", key="child.name")
        if self.mode not in ("transport", "tunnel"):
            raise ConfigError(f"unknown mode {self.mode!r}", key="child.mode")
        if not self.esp_proposals and not self.ah_proposals:
            raise ConfigError("no ESP or AH proposals", key="child.esp_proposals")
        if self.esp_proposals and self.ah_proposals:
            raise ConfigError("use either ESP or AH, not both", key="child.ah_proposals")
        for k in ("local_ts", "remote_ts"):
            if not getattr(self, k):
                raise ConfigError("at least one selector needed", key=f"child.{k}")
        _positive(self.rekey_time, "child.rekey_time")
        _positive(self.jitter, "child.jitter", zero_ok=True)
        if self.jitter >= self.rekey_time:
            raise ConfigError("jitter must be below rekey_time", key="child.jitter")
        if self.life_time is not None and self.life_time <= self.rekey_time:
            raise ConfigError("life_time must exceed rekey_time", key="child.life_time")
        if self.rekey_bytes < 0 or self.rekey_packets < 0:
            raise ConfigError("must be >= 0", key="child.rekey_bytes")
        if self.pfs_group is not None and self.pfs_group not in KE_KEYWORDS:
            raise ConfigError(f"unknown group {self.pfs_group!r}", key="child.pfs_group")
        if self.start_action not in ("none", "start", "trap"):
            raise ConfigError(f"unknown {self.start_action!r}", key="child.start_action")
        self.proposals()
        self.local_selectors()
        self.remote_selectors()

    @property
    def protocol(self) -> ProtocolId:
        return ProtocolId.AH if self.ah_proposals else ProtocolId.ESP

    @property
    def pfs_ke(self) -> int | None:
        return int(KE_KEYWORDS[self.pfs_group]) if self.pfs_group else None

    def proposals(self) -> list[ProposalSpec]:
        """Parsed ESP or AH proposals; the PFS group is added to each (RFC 7296 1.3)."""
        if self.ah_proposals:
            specs = [
                parse_proposal(p, ProtocolId.AH, key="child.ah_proposals")
                for p in self.ah_proposals
            ]
        else:
            specs = [
                parse_proposal(p, ProtocolId.ESP, key="child.esp_proposals")
                for p in self.esp_proposals
            ]
        return [with_pfs(s, self.pfs_ke) for s in specs]

    def local_selectors(self) -> tuple[TsRange | None, ...]:
        return tuple(parse_ts(t, key="child.local_ts") for t in self.local_ts)

    def remote_selectors(self) -> tuple[TsRange | None, ...]:
        return tuple(parse_ts(t, key="child.remote_ts") for t in self.remote_ts)

    @property
    def hard_life(self) -> float:
        return self.life_time if self.life_time is not None else self.rekey_time * 1.1


@dataclass(frozen=True, slots=True)
class PeerConfig:
    """One IKE peer.

    ``remote_addrs``: addresses the peer may use (``"%any"`` matches any as responder);
    the first is where ``initiate`` sends. ``remote_id`` None accepts any identity that
    authenticates. Retransmission: timeout * base**n for n in 0..tries-1, then give up
    (strongSwan's defaults 4 s, 1.8, 5 tries). ``dpd_delay``: liveness check after that many
    idle seconds (0 = off). ``rekey_time``/``jitter``: IKE SA rekeying, hard life
    ``over_time`` after it. ``fragment_size``: IKE fragmentation (RFC 7383) of messages
    larger than this (0 = never fragment). ``force_encap``: pretend to be behind a NAT
    (RFC 7296 2.23) so ESP runs in UDP 4500 even on a direct path (strongSwan's encap=yes).
    ``auth_alternatives``: (local, remote) authentication pairs after ``local_auth``/
    ``remote_auth``, in order (see the module docstring); identities stay the peer's.
    """

    name: str
    remote_addrs: tuple[str, ...] = ("%any",)
    local_addr: str | None = None
    remote_port: int = 500
    ike_proposals: tuple[str, ...] = ("aes128gcm16-prfsha256-x25519",)
    local_auth: AuthConfig = field(default_factory=AuthConfig)
    remote_auth: AuthConfig = field(default_factory=AuthConfig)
    local_id: str | None = None
    remote_id: str | None = None
    rekey_time: float = 14400.0
    jitter: float = 0.0
    over_time: float | None = None
    dpd_delay: float = 0.0
    retransmit_tries: int = 5
    retransmit_timeout: float = 4.0
    retransmit_base: float = 1.8
    fragment_size: int = 1280
    children: tuple[ChildConfig, ...] = ()
    send_initial_contact: bool = True
    force_encap: bool = False
    #: further (local, remote) authentication pairs, tried in order after the primary one
    auth_alternatives: tuple[tuple[AuthConfig, AuthConfig], ...] = ()

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigError("peer name must not be empty", key="peer.name")
        if not self.remote_addrs:
            raise ConfigError("at least one remote address", key="peer.remote_addrs")
        for a in self.remote_addrs:
            if a != "%any":
                try:
                    ipaddress.ip_address(a)
                except ValueError as exc:
                    raise ConfigError(f"bad address {a!r}", key="peer.remote_addrs") from exc
        if not 0 < self.remote_port < 65536:
            raise ConfigError("bad port", key="peer.remote_port")
        if not self.ike_proposals:
            raise ConfigError("no IKE proposals", key="peer.ike_proposals")
        self.proposals()
        for k in ("local_id", "remote_id"):
            v = getattr(self, k)
            if v is not None:
                Identity.parse(v, key=f"peer.{k}")
        _check_pair(self.local_auth, self.remote_auth, "peer")
        for i, pair in enumerate(self.auth_alternatives):
            if (
                not isinstance(pair, tuple)
                or len(pair) != 2
                or not all(isinstance(a, AuthConfig) for a in pair)
            ):
                raise ConfigError(
                    "must be a (local, remote) pair of AuthConfig",
                    key=f"peer.auth_alternatives.{i}",
                )
            _check_pair(pair[0], pair[1], f"peer.auth_alternatives.{i}")
        _positive(self.rekey_time, "peer.rekey_time")
        _positive(self.jitter, "peer.jitter", zero_ok=True)
        if self.jitter >= self.rekey_time:
            raise ConfigError("jitter must be below rekey_time", key="peer.jitter")
        _positive(self.dpd_delay, "peer.dpd_delay", zero_ok=True)
        if self.retransmit_tries < 1:
            raise ConfigError("must be >= 1", key="peer.retransmit_tries")
        _positive(self.retransmit_timeout, "peer.retransmit_timeout")
        if self.retransmit_base < 1:
            raise ConfigError("must be >= 1", key="peer.retransmit_base")
        if self.fragment_size and self.fragment_size < 576:
            raise ConfigError("must be 0 or >= 576", key="peer.fragment_size")
        names = [c.name for c in self.children]
        if len(set(names)) != len(names):
            raise ConfigError("duplicate child names", key="peer.children")

    def proposals(self) -> list[ProposalSpec]:
        return [
            parse_proposal(p, ProtocolId.IKE, key="peer.ike_proposals") for p in self.ike_proposals
        ]

    def auth_pairs(self) -> tuple[tuple[AuthConfig, AuthConfig], ...]:
        """Every (local, remote) authentication pair, primary first."""
        return ((self.local_auth, self.remote_auth), *self.auth_alternatives)

    def next_auth(self) -> PeerConfig | None:
        """This peer with its first alternative as primary authentication (the others
        after it), for an initiator that starts over after a failed authentication; None
        when no alternative is left. Same name, so events map to the same connection."""
        if not self.auth_alternatives:
            return None
        (local, remote), *rest = self.auth_alternatives
        return dataclasses.replace(
            self, local_auth=local, remote_auth=remote, auth_alternatives=tuple(rest)
        )

    @property
    def default_ke(self) -> KeId:
        from pyipsec.wire.iana import TransformType

        return KeId(self.proposals()[0].algs(TransformType.KE)[0][0])

    @property
    def hard_life(self) -> float:
        return self.rekey_time + (
            self.over_time if self.over_time is not None else self.rekey_time * 0.1
        )

    def child(self, name: str) -> ChildConfig | None:
        return next((c for c in self.children if c.name == name), None)

    def matches_addr(self, addr: str) -> bool:
        return "%any" in self.remote_addrs or any(_ip(a) == _ip(addr) for a in self.remote_addrs)


@dataclass(frozen=True, slots=True)
class EndpointConfig:
    """One local endpoint. ``peers`` are matched, for incoming IKE_SA_INIT, by address
    (first match; with several candidates the one whose remote_id fits IDi at IKE_AUTH).

    ``cookie_threshold``: half-open IKE SAs above which IKE_SA_INIT requests must return a
    COOKIE (RFC 7296 2.6). ``half_open_timeout``: a responder forgets a half-open SA after
    it. ``cookie_secret_lifetime``: the cookie secret changes this often (old one accepted
    once more).
    """

    peers: tuple[PeerConfig, ...] = ()
    local_addr: str = "0.0.0.0"
    port: int = 500
    cookie_threshold: int = 10
    half_open_timeout: float = 30.0
    cookie_secret_lifetime: float = 120.0
    max_ike_sas: int = 100000

    def __post_init__(self) -> None:
        try:
            ipaddress.ip_address(self.local_addr)
        except ValueError as exc:
            raise ConfigError(f"bad address {self.local_addr!r}", key="local_addr") from exc
        if self.cookie_threshold < 0:
            raise ConfigError("must be >= 0", key="cookie_threshold")
        _positive(self.half_open_timeout, "half_open_timeout")
        _positive(self.cookie_secret_lifetime, "cookie_secret_lifetime")
        names = [p.name for p in self.peers]
        if len(set(names)) != len(names):
            raise ConfigError("duplicate peer names", key="peers")

    def peer(self, name: str) -> PeerConfig | None:
        return next((p for p in self.peers if p.name == name), None)
