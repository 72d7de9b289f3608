"""IPv4 and IPv6 headers: pull/push codecs, checksums, extension-header walking, flows.

Everything here works on ``bytes``: the data plane calls :func:`parse_flow` and the
header helpers once per packet, so the hot functions avoid allocating objects beyond the
result. The dataclasses (:class:`Ipv4Header`, :class:`Ipv6Header`) are for tests, tools and
control code; the ESP/AH code uses the offset-based helpers.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from pyipsec.errors import MalformedPacket
from pyipsec.wire.flow import Flow

# IP protocol numbers used by this module (IANA "Assigned Internet Protocol Numbers").
PROTO_HOPOPT = 0
PROTO_ICMP = 1
PROTO_IPIP = 4
PROTO_TCP = 6
PROTO_UDP = 17
PROTO_IPV6 = 41
PROTO_ROUTING = 43
PROTO_FRAGMENT = 44
PROTO_ESP = 50
PROTO_AH = 51
PROTO_ICMPV6 = 58
PROTO_NONE = 59
PROTO_DSTOPTS = 60
PROTO_SCTP = 132
PROTO_UDPLITE = 136

_PORT_PROTOCOLS = frozenset((PROTO_TCP, PROTO_UDP, PROTO_SCTP, PROTO_UDPLITE, 33))
_ICMP_PROTOCOLS = frozenset((PROTO_ICMP, PROTO_ICMPV6))

_H = struct.Struct("!H")
_HH = struct.Struct("!HH")

# RFC 791 section 3.1: version/IHL, TOS, total length, identification, flags/fragment
# offset, TTL, protocol, header checksum, source, destination (options follow).
IPV4_HEADER = struct.Struct("!BBHHHBBH4s4s")
# RFC 8200 section 3: version/traffic class/flow label, payload length, next header,
# hop limit, source, destination.
IPV6_HEADER = struct.Struct("!IHBB16s16s")


# --------------------------------------------------------------------------- checksums


def ones_complement_sum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """The 16-bit ones'-complement sum of ``data`` (RFC 1071), not inverted.

    ``int.from_bytes(buf) % 0xFFFF`` equals the folded ones'-complement sum except that a
    sum of all ones comes out as 0 (both are the same value in ones'-complement
    arithmetic); it is about five times faster than summing 16-bit words in Python.
    Odd lengths are padded with a zero byte as RFC 1071 requires.
    """
    if len(data) & 1:
        data = bytes(data) + b"\x00"
    total = (int.from_bytes(data, "big") + initial) % 0xFFFF
    if total == 0 and (initial or any(data)):
        return 0xFFFF
    return total


def internet_checksum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """The Internet checksum (inverted ones'-complement sum) of ``data``."""
    return ~ones_complement_sum(data, initial) & 0xFFFF


def ipv4_header_checksum(header: bytes | bytearray | memoryview) -> int:
    """Checksum of an IPv4 header whose checksum field (bytes 10-11) is zero."""
    total = int.from_bytes(header, "big") % 0xFFFF
    return (~total & 0xFFFF) if total else 0  # a zero sum only for an all-zero header


def pseudo_header_sum(src: bytes, dst: bytes, protocol: int, length: int) -> int:
    """Ones'-complement sum of the TCP/UDP pseudo header (RFC 768, RFC 8200 section 8.1)."""
    if len(src) == 4:
        tail = struct.pack("!BBH", 0, protocol, length)
    else:
        tail = struct.pack("!IxxxB", length, protocol)
    return ones_complement_sum(src + dst + tail)


# --------------------------------------------------------------------------- IPv4


@dataclass(frozen=True, slots=True)
class Ipv4Header:
    """An IPv4 header (RFC 791 section 3.1). ``options`` is the raw option bytes."""

    src: bytes
    dst: bytes
    protocol: int
    total_length: int = 0
    tos: int = 0
    identification: int = 0
    flags_fragment: int = 0
    ttl: int = 64
    checksum: int = 0
    options: bytes = b""

    @property
    def header_length(self) -> int:
        return 20 + len(self.options)


def pull_ipv4(buf: bytes) -> Ipv4Header:
    """Parse the IPv4 header at the start of ``buf`` (RFC 791 section 3.1)."""
    if len(buf) < 20 or buf[0] >> 4 != 4:
        raise MalformedPacket("not an IPv4 header")
    ihl = (buf[0] & 0x0F) * 4
    if ihl < 20 or len(buf) < ihl:
        raise MalformedPacket(f"bad IPv4 header length {ihl}")
    _, tos, total, ident, frag, ttl, proto, csum, src, dst = IPV4_HEADER.unpack_from(buf)
    if total < ihl or total > len(buf):
        raise MalformedPacket(f"IPv4 total length {total} does not fit {len(buf)} bytes")
    return Ipv4Header(src, dst, proto, total, tos, ident, frag, ttl, csum, bytes(buf[20:ihl]))


def push_ipv4(h: Ipv4Header, payload_length: int | None = None) -> bytes:
    """Serialise ``h`` with a freshly computed checksum.

    ``payload_length`` overrides ``total_length`` (header + payload) when given.
    """
    if len(h.options) % 4:
        raise MalformedPacket("IPv4 options must be padded to 4 bytes")
    hl = 20 + len(h.options)
    total = h.total_length if payload_length is None else hl + payload_length
    hdr = bytearray(
        IPV4_HEADER.pack(
            0x40 | (hl // 4),
            h.tos,
            total,
            h.identification,
            h.flags_fragment,
            h.ttl,
            h.protocol,
            0,
            h.src,
            h.dst,
        )
        + h.options
    )
    _H.pack_into(hdr, 10, ipv4_header_checksum(hdr))
    return bytes(hdr)


# --------------------------------------------------------------------------- IPv6


@dataclass(frozen=True, slots=True)
class Ipv6Header:
    """The fixed IPv6 header (RFC 8200 section 3)."""

    src: bytes
    dst: bytes
    next_header: int
    payload_length: int = 0
    traffic_class: int = 0
    flow_label: int = 0
    hop_limit: int = 64


def pull_ipv6(buf: bytes) -> Ipv6Header:
    """Parse the fixed IPv6 header at the start of ``buf`` (RFC 8200 section 3)."""
    if len(buf) < 40 or buf[0] >> 4 != 6:
        raise MalformedPacket("not an IPv6 header")
    vtf, plen, nh, hlim, src, dst = IPV6_HEADER.unpack_from(buf)
    if 40 + plen > len(buf):
        raise MalformedPacket(f"IPv6 payload length {plen} does not fit {len(buf)} bytes")
    return Ipv6Header(src, dst, nh, plen, (vtf >> 20) & 0xFF, vtf & 0xFFFFF, hlim)


def push_ipv6(h: Ipv6Header, payload_length: int | None = None) -> bytes:
    """Serialise the fixed IPv6 header; ``payload_length`` overrides the stored one."""
    plen = h.payload_length if payload_length is None else payload_length
    vtf = (6 << 28) | (h.traffic_class << 20) | h.flow_label
    return IPV6_HEADER.pack(vtf, plen, h.next_header, h.hop_limit, h.src, h.dst)


# RFC 8200 section 4: extension headers with the generic (next header, hdr ext len) layout.
_EXT_8 = frozenset((PROTO_HOPOPT, PROTO_ROUTING, PROTO_DSTOPTS))


def ipv6_ext_length(buf: bytes, off: int, nh: int) -> int:
    """Length of the IPv6 extension header of type ``nh`` at ``off``."""
    if off + 2 > len(buf):
        raise MalformedPacket("truncated IPv6 extension header")
    if nh == PROTO_FRAGMENT:
        n = 8
    elif nh == PROTO_AH:
        n = (buf[off + 1] + 2) * 4
    else:
        n = (buf[off + 1] + 1) * 8
    if off + n > len(buf):
        raise MalformedPacket("truncated IPv6 extension header")
    return n


def ipv6_transport_split(buf: bytes) -> tuple[int, int]:
    """Where ESP/AH go in an IPv6 packet in transport mode (RFC 4303 section 3.1.1).

    Returns ``(nh_offset, insert_offset)``: the byte offset of the Next Header field to
    rewrite and the offset where the ESP/AH header is inserted. Hop-by-hop, routing and
    fragment headers stay in front; a destination options header stays in front when no
    routing header precedes it (then it is meant for every hop of the route) and goes
    inside when it follows a routing header (it is meant for the final destination), the
    rule Linux uses.
    """
    nh_off = 6
    nh = buf[6]
    off = 40
    seen_routing = False
    while nh in _EXT_8 or nh == PROTO_FRAGMENT:
        if nh == PROTO_DSTOPTS and seen_routing:
            break
        if nh == PROTO_ROUTING:
            seen_routing = True
        n = ipv6_ext_length(buf, off, nh)
        nh_off = off
        nh = buf[off]
        off += n
    return nh_off, off


# --------------------------------------------------------------------------- common


def check_ip_packet(packet: bytes) -> int:
    """Validate the basic IP framing of a whole packet; return its version.

    The stated length must equal the buffer length (the TUN device and raw sockets
    hand over exactly one packet).
    """
    n = len(packet)
    if n < 20:
        raise MalformedPacket(f"packet of {n} bytes is too short")
    v = packet[0] >> 4
    if v == 4:
        ihl = (packet[0] & 0x0F) * 4
        if ihl < 20 or _H.unpack_from(packet, 2)[0] != n or ihl > n:
            raise MalformedPacket("IPv4 length fields do not match the packet")
    elif v == 6:
        if n < 40 or _H.unpack_from(packet, 4)[0] + 40 != n:
            raise MalformedPacket("IPv6 payload length does not match the packet")
    else:
        raise MalformedPacket(f"IP version {v}")
    return v


_tuple_new = tuple.__new__


def _flow(v: int, src: int, dst: int, proto: int, sport: int, dport: int) -> Flow:
    """Build a Flow without the keyword handling of NamedTuple's ``__new__``."""
    return _tuple_new(Flow, (v, src, dst, proto, sport, dport))


def parse_flow(packet: bytes) -> Flow:
    """The selector 5-tuple of an IP packet (RFC 4301 section 4.4.1.1).

    IPv6 extension headers are walked to the upper-layer protocol. For ICMP/ICMPv6 the
    type goes into ``sport`` and the code into ``dport``. Non-first fragments carry no
    ports (RFC 4301 "OPAQUE"): both ports are 0.
    """
    n = len(packet)
    if n < 20:
        raise MalformedPacket(f"packet of {n} bytes is too short")
    b0 = packet[0]
    v = b0 >> 4
    if v == 4:
        off = (b0 & 0x0F) * 4
        proto = packet[9]
        src = int.from_bytes(packet[12:16], "big")
        dst = int.from_bytes(packet[16:20], "big")
        if off < 20 or off > n:
            raise MalformedPacket("bad IPv4 header length")
        if _H.unpack_from(packet, 6)[0] & 0x1FFF:
            return _flow(4, src, dst, proto, 0, 0)
    elif v == 6:
        if n < 40:
            raise MalformedPacket("IPv6 packet shorter than its header")
        proto = packet[6]
        src = int.from_bytes(packet[8:24], "big")
        dst = int.from_bytes(packet[24:40], "big")
        off = 40
        while proto in _EXT_8 or proto == PROTO_FRAGMENT or proto == PROTO_AH:
            ln = ipv6_ext_length(packet, off, proto)
            if proto == PROTO_FRAGMENT and _H.unpack_from(packet, off + 2)[0] & 0xFFF8:
                return _flow(6, src, dst, packet[off], 0, 0)
            proto = packet[off]
            off += ln
    else:
        raise MalformedPacket(f"IP version {v}")
    if proto in _PORT_PROTOCOLS:
        if off + 4 > n:
            raise MalformedPacket("truncated transport header")
        sport, dport = _HH.unpack_from(packet, off)
        return _flow(v, src, dst, proto, sport, dport)
    if proto in _ICMP_PROTOCOLS:
        if off + 2 > n:
            raise MalformedPacket("truncated ICMP header")
        return _flow(v, src, dst, proto, packet[off], packet[off + 1])
    return _flow(v, src, dst, proto, 0, 0)
