"""AH packet codec (RFC 4302) and the mutable-field zeroing its ICV needs.

The ICV covers the IP header with every field a router may change set to zero
(RFC 4302 section 3.3.3.1), the AH header with its ICV field zeroed, and the payload.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from pyipsec.errors import MalformedPacket
from pyipsec.wire.ip import PROTO_DSTOPTS, PROTO_HOPOPT, PROTO_ROUTING

# RFC 4302 section 2: Next Header (8), Payload Len (8, AH length in 32-bit words minus 2),
# Reserved (16), SPI (32), Sequence Number (32), ICV (variable, padded to 32 bits for
# IPv4 and 64 bits for IPv6).
AH_HEADER = struct.Struct("!BBHII")
AH_FIXED_LEN = 12

# RFC 4302 Appendix A.1: IPv4 options that are immutable (included in the ICV as they
# are); every other option is zeroed entirely. Loose/strict source route are zeroed: the
# predictable destination rewriting of section 3.3.3.1.1.1 is not supported.
IMMUTABLE_IPV4_OPTIONS = frozenset((0, 1, 130, 133, 134, 148, 149))


@dataclass(frozen=True, slots=True)
class AhHeader:
    """An AH header (RFC 4302 section 2)."""

    next_header: int
    spi: int
    seq: int
    icv: bytes  #: the ICV including any alignment padding


def ah_length(icv_len: int, ipv6: bool) -> int:
    """Total AH length for an ICV of ``icv_len`` bytes (RFC 4302 section 2.2)."""
    n = AH_FIXED_LEN + icv_len
    return n + (-n % (8 if ipv6 else 4))


def pull_ah_header(buf: bytes, offset: int = 0) -> AhHeader:
    """Parse the AH header at ``offset``."""
    if len(buf) < offset + AH_FIXED_LEN:
        raise MalformedPacket("truncated AH header")
    nh, plen, _, spi, seq = AH_HEADER.unpack_from(buf, offset)
    total = (plen + 2) * 4
    if total < AH_FIXED_LEN or offset + total > len(buf):
        raise MalformedPacket(f"bad AH payload length {plen}")
    return AhHeader(nh, spi, seq, bytes(buf[offset + AH_FIXED_LEN : offset + total]))


def push_ah_header(h: AhHeader) -> bytes:
    total = AH_FIXED_LEN + len(h.icv)
    if total % 4:
        raise MalformedPacket("AH length must be a multiple of 4")
    return AH_HEADER.pack(h.next_header, total // 4 - 2, 0, h.spi, h.seq & 0xFFFFFFFF) + h.icv


def zero_ipv4_mutable(header: bytes | bytearray) -> bytearray:
    """Copy of an IPv4 header (with options) with the mutable fields zeroed.

    RFC 4302 section 3.3.3.1.1: TOS, flags, fragment offset, TTL and header checksum
    are zeroed; options not in :data:`IMMUTABLE_IPV4_OPTIONS` are zeroed whole.
    """
    h = bytearray(header)
    h[1] = 0  # TOS / DSCP+ECN
    h[6] = h[7] = 0  # flags + fragment offset
    h[8] = 0  # TTL
    h[10] = h[11] = 0  # checksum
    off, end = 20, len(h)
    while off < end:
        t = h[off]
        if t == 0:  # end of option list: the rest is padding
            break
        if t == 1:
            off += 1
            continue
        if off + 1 >= end or h[off + 1] < 2 or off + h[off + 1] > end:
            raise MalformedPacket("bad IPv4 option length")
        n = h[off + 1]
        if t not in IMMUTABLE_IPV4_OPTIONS:
            h[off : off + n] = bytes(n)
        off += n
    return h


def _zero_tlv_options(h: bytearray, start: int, end: int) -> None:
    """Zero the data of IPv6 options whose type has the "may change en route" bit
    (0x20, RFC 8200 section 4.2)."""
    off = start
    while off < end:
        t = h[off]
        if t == 0:  # Pad1
            off += 1
            continue
        if off + 1 >= end:
            raise MalformedPacket("truncated IPv6 option")
        n = h[off + 1]
        if off + 2 + n > end:
            raise MalformedPacket("bad IPv6 option length")
        if t & 0x20:
            h[off + 2 : off + 2 + n] = bytes(n)
        off += 2 + n


def zero_ipv6_mutable(prefix: bytes | bytearray, sending: bool) -> bytearray:
    """Copy of the IPv6 header and extension headers in front of AH, mutable parts zeroed.

    RFC 4302 section 3.3.3.1.2: traffic class, flow label and hop limit are zeroed;
    hop-by-hop and destination options with the mutable bit have their data zeroed; a
    routing header is included as the receiver will see it: when sending a type 0/2
    header with segments left, the final address moves into the destination field and
    the segments are rotated the way the last hop leaves them.
    """
    h = bytearray(prefix)
    h[0] = 0x60
    h[1] = h[2] = h[3] = 0
    h[7] = 0
    nh = h[6]
    off = 40
    end = len(h)
    while off < end:
        if off + 2 > end:
            raise MalformedPacket("truncated IPv6 extension header")
        n = (h[off + 1] + 1) * 8
        if off + n > end:
            raise MalformedPacket("truncated IPv6 extension header")
        if nh == PROTO_HOPOPT or nh == PROTO_DSTOPTS:
            _zero_tlv_options(h, off + 2, off + n)
        elif nh == PROTO_ROUTING and sending and h[off + 2] in (0, 2) and h[off + 3]:
            addrs = [bytes(h[a : a + 16]) for a in range(off + 8, off + n, 16)]
            if addrs:
                final = addrs.pop()
                addrs.insert(0, bytes(h[24:40]))
                h[24:40] = final
                h[off + 8 : off + 8 + 16 * len(addrs)] = b"".join(addrs)
                h[off + 3] = 0
        elif nh != PROTO_ROUTING:
            # the fragment header (44) never precedes AH on the sender; others end the walk
            n = 8 if nh == 44 else n
        nh = h[off]
        off += n
    return h
