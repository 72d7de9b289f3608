"""Traffic selector payloads TSi/TSr (RFC 7296 section 3.13)."""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field

from pyipsec.wire.iana import PayloadType, TsType
from pyipsec.wire.ike.header import syntax_error

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_TS_HEAD = struct.Struct("!BBHHH")
_PAYLOAD_HEAD = struct.Struct("!B3x")
_ADDR_LEN = {TsType.IPV4_ADDR_RANGE: 4, TsType.IPV6_ADDR_RANGE: 16}


# RFC 7296 section 3.13.1: traffic selector.
# |   TS Type     |IP Protocol ID*|       Selector Length         |
# |           Start Port*         |           End Port*           |
# ~                         Starting Address*                     ~
# ~                         Ending Address*                       ~
@dataclass(frozen=True, slots=True)
class TrafficSelector:
    """An address range, a protocol (0 = any) and a port range (0-65535 = any).

    Addresses are raw bytes (4 for IPV4_ADDR_RANGE, 16 for IPV6_ADDR_RANGE). OPAQUE ports are
    start_port=65535, end_port=0 (RFC 7296 section 3.13.1), so start > end is legal.
    """

    ts_type: int
    ip_protocol: int
    start_port: int
    end_port: int
    start_addr: bytes
    end_addr: bytes

    @classmethod
    def from_range(
        cls,
        start: IpAddress | str,
        end: IpAddress | str,
        ip_protocol: int = 0,
        start_port: int = 0,
        end_port: int = 65535,
    ) -> TrafficSelector:
        """Selector for the address range start..end (same family)."""
        a, b = ipaddress.ip_address(start), ipaddress.ip_address(end)
        if a.version != b.version:
            raise ValueError("traffic selector range mixes IPv4 and IPv6")
        ts_type = TsType.IPV4_ADDR_RANGE if a.version == 4 else TsType.IPV6_ADDR_RANGE
        return cls(ts_type, ip_protocol, start_port, end_port, a.packed, b.packed)

    @classmethod
    def from_network(
        cls,
        network: IpNetwork | str,
        ip_protocol: int = 0,
        start_port: int = 0,
        end_port: int = 65535,
    ) -> TrafficSelector:
        """Selector covering a whole prefix such as "10.0.0.0/24" or a host "10.0.0.1/32"."""
        net = ipaddress.ip_network(network, strict=False)
        return cls.from_range(
            net.network_address, net.broadcast_address, ip_protocol, start_port, end_port
        )

    @property
    def start_ip(self) -> IpAddress:
        """Starting address as an ipaddress object."""
        return ipaddress.ip_address(self.start_addr)

    @property
    def end_ip(self) -> IpAddress:
        """Ending address as an ipaddress object."""
        return ipaddress.ip_address(self.end_addr)

    def networks(self) -> list[IpNetwork]:
        """The smallest list of prefixes covering start..end (empty if start > end)."""
        a, b = self.start_ip, self.end_ip
        if a > b:
            return []
        return list(ipaddress.summarize_address_range(a, b))


# RFC 7296 section 3.13: traffic selector payload.
# | Number of TSs |                 RESERVED                      |
# ~                       <Traffic Selectors>                     ~
@dataclass(frozen=True, slots=True)
class TsPayload:
    """TSi (``initiator=True``) or TSr payload: a list of traffic selectors."""

    traffic_selectors: list[TrafficSelector] = field(default_factory=list)
    initiator: bool = True

    @property
    def payload_type(self) -> int:
        return PayloadType.TSi if self.initiator else PayloadType.TSr


def pull_ts(body: bytes, initiator: bool) -> TsPayload:
    """Decode the body of a TSi/TSr payload."""
    if len(body) < _PAYLOAD_HEAD.size:
        raise syntax_error("truncated TS payload")
    (count,) = _PAYLOAD_HEAD.unpack_from(body, 0)
    if count == 0:
        raise syntax_error("TS payload without traffic selectors")
    pos = _PAYLOAD_HEAD.size
    selectors: list[TrafficSelector] = []
    for _ in range(count):
        if len(body) - pos < _TS_HEAD.size:
            raise syntax_error("truncated traffic selector")
        ts_type, proto, length, sport, eport = _TS_HEAD.unpack_from(body, pos)
        alen = _ADDR_LEN.get(ts_type)
        if alen is None:
            raise syntax_error(f"unsupported traffic selector type {ts_type}")
        if length != _TS_HEAD.size + 2 * alen:
            raise syntax_error(f"selector length {length} wrong for TS type {ts_type}")
        if pos + length > len(body):
            raise syntax_error("traffic selector exceeds the payload")
        a = pos + _TS_HEAD.size
        selectors.append(
            TrafficSelector(
                ts_type,
                proto,
                sport,
                eport,
                bytes(body[a : a + alen]),
                bytes(body[a + alen : a + 2 * alen]),
            )
        )
        pos += length
    if pos != len(body):
        raise syntax_error(f"{len(body) - pos} bytes after the announced {count} selectors")
    return TsPayload(selectors, initiator)


def push_ts(p: TsPayload) -> bytes:
    """Encode the body of a TSi/TSr payload."""
    if not 1 <= len(p.traffic_selectors) <= 255:
        raise ValueError("a TS payload holds 1 to 255 traffic selectors")
    out = bytearray(_PAYLOAD_HEAD.pack(len(p.traffic_selectors)))
    for ts in p.traffic_selectors:
        alen = _ADDR_LEN.get(ts.ts_type)
        if alen is None or len(ts.start_addr) != alen or len(ts.end_addr) != alen:
            raise ValueError(f"address lengths do not match TS type {ts.ts_type}")
        out += _TS_HEAD.pack(
            ts.ts_type, ts.ip_protocol, _TS_HEAD.size + 2 * alen, ts.start_port, ts.end_port
        )
        out += ts.start_addr + ts.end_addr
    return bytes(out)
