"""Traffic selectors: configuration syntax, intersection and narrowing (RFC 7296 section 2.9).

A :class:`TsRange` is one IKEv2 traffic selector (address range, IP protocol, port range).
Configuration strings: ``"10.0.0.0/24"``, ``"10.0.0.1"``, ``"10.0.0.1-10.0.0.9"``, ``"::/0"``,
optionally followed by ``[proto/port]`` such as ``"10.0.0.0/24[tcp/80]"``,
``"10.0.0.1[udp/1000-2000]"``, ``"[6]"``; and ``"dynamic"``, which stands for the IKE SA's
own address on that side (transport mode, host-to-host).

Narrowing: the responder intersects each proposed selector with its configured ones; the
result must be a subset of both (RFC 7296 2.9). Empty result: TS_UNACCEPTABLE.
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass

from pyipsec.errors import ConfigError, ProtocolError
from pyipsec.wire.iana import NotifyType, TsType

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_PROTOS = {"tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58, "ipv6-icmp": 58, "sctp": 132, "any": 0}


@dataclass(frozen=True, slots=True)
class TsRange:
    """One traffic selector: addresses start..end inclusive, protocol (0 any), ports."""

    start_addr: IPAddress
    end_addr: IPAddress
    ip_protocol: int = 0
    start_port: int = 0
    end_port: int = 65535

    @property
    def ts_type(self) -> TsType:
        return TsType.IPV4_ADDR_RANGE if self.start_addr.version == 4 else TsType.IPV6_ADDR_RANGE

    def __str__(self) -> str:
        if self.start_addr == self.end_addr:
            addr = str(self.start_addr)
        else:
            nets = list(ipaddress.summarize_address_range(self.start_addr, self.end_addr))
            addr = str(nets[0]) if len(nets) == 1 else f"{self.start_addr}-{self.end_addr}"
        if self.ip_protocol == 0 and (self.start_port, self.end_port) == (0, 65535):
            return addr
        ports = (
            ""
            if (self.start_port, self.end_port) == (0, 65535)
            else f"/{self.start_port}"
            + ("" if self.start_port == self.end_port else f"-{self.end_port}")
        )
        return f"{addr}[{self.ip_protocol}{ports}]"

    def contains(self, other: TsRange) -> bool:
        """True if ``other`` is a subset of this selector."""
        return intersect(self, other) == other


def _full(version: int) -> tuple[IPAddress, IPAddress]:
    if version == 4:
        return ipaddress.IPv4Address(0), ipaddress.IPv4Address(2**32 - 1)
    return ipaddress.IPv6Address(0), ipaddress.IPv6Address(2**128 - 1)


def parse_ts(text: str, *, key: str = "ts") -> TsRange | None:
    """Parse one selector string; ``None`` for ``"dynamic"``. ConfigError(key) if invalid.

    Cached: configurations are parsed on every negotiation."""
    return _parse_ts(text, key)


@functools.lru_cache(maxsize=4096)
def _parse_ts(text: str, key: str) -> TsRange | None:
    text = text.strip()
    proto, sport, eport = 0, 0, 65535
    if "[" in text:
        if not text.endswith("]"):
            raise ConfigError(f"bad selector {text!r}", key=key)
        text, spec = text[:-1].split("[", 1)
        pname, _, ports = spec.partition("/")
        pname = pname.lower()
        if pname in _PROTOS:
            proto = _PROTOS[pname]
        elif pname.isdigit() and int(pname) < 256:
            proto = int(pname)
        else:
            raise ConfigError(f"bad protocol in selector {spec!r}", key=key)
        if ports:
            lo, _, hi = ports.partition("-")
            if not lo.isdigit() or (hi and not hi.isdigit()):
                raise ConfigError(f"bad ports in selector {spec!r}", key=key)
            sport, eport = int(lo), int(hi or lo)
            if not 0 <= sport <= eport <= 65535:
                raise ConfigError(f"bad port range in selector {spec!r}", key=key)
    if text in ("dynamic", "%dynamic", ""):
        if text == "" or proto or (sport, eport) != (0, 65535):
            raise ConfigError("protocol/ports on 'dynamic' are not supported", key=key)
        return None
    try:
        if "-" in text:
            lo, hi = text.split("-", 1)
            start, end = ipaddress.ip_address(lo), ipaddress.ip_address(hi)
            if start.version != end.version or start > end:
                raise ValueError("range")
        else:
            net = ipaddress.ip_network(text, strict=False)
            start, end = net.network_address, net.broadcast_address
    except ValueError as exc:
        raise ConfigError(f"bad selector address {text!r}", key=key) from exc
    return TsRange(start, end, proto, sport, eport)


@functools.lru_cache(maxsize=4096)
def host_ts(addr: str | IPAddress) -> TsRange:
    """The selector covering exactly one host (what ``dynamic`` becomes)."""
    ip = ipaddress.ip_address(addr)
    return TsRange(ip, ip)


def resolve(configured: tuple[TsRange | None, ...], own_addr: str) -> list[TsRange]:
    """Replace ``None`` (dynamic) by the host selector of ``own_addr``.

    An unknown address (``0.0.0.0``/``::``, e.g. a socket bound to the wildcard) becomes
    "any address of that family": as initiator the responder narrows it to the address it
    sees, as responder it accepts the address the initiator proposes for us."""
    if own_addr in ("0.0.0.0", "::", ""):
        wild = any_ts(6 if own_addr == "::" else 4)
        return [wild if ts is None else ts for ts in configured]
    return [host_ts(own_addr) if ts is None else ts for ts in configured]


def intersect(a: TsRange, b: TsRange) -> TsRange | None:
    """The largest selector contained in both, or None."""
    if a.start_addr.version != b.start_addr.version:
        return None
    if a.ip_protocol and b.ip_protocol and a.ip_protocol != b.ip_protocol:
        return None
    proto = a.ip_protocol or b.ip_protocol
    start = max(a.start_addr, b.start_addr)
    end = min(a.end_addr, b.end_addr)
    sport, eport = max(a.start_port, b.start_port), min(a.end_port, b.end_port)
    if start > end or sport > eport:
        return None
    return TsRange(start, end, proto, sport, eport)


def narrow(proposed: list[TsRange], configured: list[TsRange]) -> list[TsRange]:
    """Responder-side narrowing: all non-empty intersections, without duplicates.

    Raises ProtocolError(TS_UNACCEPTABLE) if nothing remains.
    """
    out: list[TsRange] = []
    for c in configured:
        for p in proposed:
            got = intersect(p, c)
            if got is not None and got not in out:
                out.append(got)
    if not out:
        raise ProtocolError("traffic selectors unacceptable", notify=NotifyType.TS_UNACCEPTABLE)
    return out


def check_subset(narrowed: list[TsRange], proposed: list[TsRange]) -> None:
    """Initiator side: every returned selector must lie within one we proposed."""
    if not narrowed:
        raise ProtocolError("empty traffic selectors", notify=NotifyType.TS_UNACCEPTABLE)
    for n in narrowed:
        if not any(p.contains(n) for p in proposed):
            raise ProtocolError(
                f"responder widened selector {n}", notify=NotifyType.TS_UNACCEPTABLE
            )


def any_ts(version: int) -> TsRange:
    """All addresses of one IP version, all protocols and ports."""
    start, end = _full(version)
    return TsRange(start, end)
