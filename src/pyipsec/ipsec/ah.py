"""AH processing (RFC 4302): transport and tunnel mode, IPv4 and IPv6.

The ICV (truncated HMAC, RFC 2404 / RFC 4868) covers the IP header(s) in front of AH with
mutable fields zeroed (:mod:`pyipsec.wire.ah`), the AH header with a zero ICV field and
everything after it; with ESN the high 32 bits of the sequence number are appended to the
ICV input and never sent (RFC 4302 section 3.3.3.2). Like :mod:`pyipsec.ipsec.esp`, this
module holds no sequence or replay state.
"""

from __future__ import annotations

import struct

from pyipsec.crypto.esp_algorithms import EspAlgorithm, make_ah_mac
from pyipsec.errors import MalformedPacket
from pyipsec.ipsec.esp import _is_fragment
from pyipsec.wire.ah import AH_HEADER, ah_length, zero_ipv4_mutable, zero_ipv6_mutable
from pyipsec.wire.ip import (
    IPV4_HEADER,
    IPV6_HEADER,
    PROTO_AH,
    PROTO_DSTOPTS,
    PROTO_FRAGMENT,
    PROTO_HOPOPT,
    PROTO_IPIP,
    PROTO_IPV6,
    PROTO_ROUTING,
    ipv4_header_checksum,
    ipv6_ext_length,
    ipv6_transport_split,
)

_H = struct.Struct("!H")
_I = struct.Struct("!I")
_M32 = 0xFFFFFFFF
_WALK6 = frozenset((PROTO_HOPOPT, PROTO_ROUTING, PROTO_DSTOPTS))


class AhProcessor:
    """Stateless AH framing and ICV of one SA."""

    def __init__(
        self,
        spi: int,
        alg: EspAlgorithm,
        key: bytes,
        *,
        tunnel: bool,
        esn: bool,
        tunnel_src: bytes | None,
        tunnel_dst: bytes | None,
    ) -> None:
        self.spi = spi
        self.alg = alg
        self.tunnel = tunnel
        self.esn = esn
        self._mac = make_ah_mac(alg, key)
        self._icv = alg.icv_len
        self._src = tunnel_src
        self._dst = tunnel_dst
        self._v6 = tunnel_src is not None and len(tunnel_src) == 16

    def overhead(self) -> int:
        """Worst-case bytes encapsulate adds to a packet."""
        n = ah_length(self._icv, True)
        if self.tunnel:
            n += 40 if self._v6 else 20
        return n

    def _sign(self, zeroed: bytes | bytearray, ah: bytes, rest: bytes, seq: int) -> bytes:
        if self.esn:
            return self._mac.compute(zeroed, ah, rest, _I.pack(seq >> 32))
        return self._mac.compute(zeroed, ah, rest)

    # ------------------------------------------------------------------ outbound

    def encapsulate(self, packet: bytes, seq: int) -> bytes:
        """The whole AH-protected packet for the IP packet ``packet``."""
        n = len(packet)
        if n < 20:
            raise MalformedPacket(f"packet of {n} bytes is too short")
        v = packet[0] >> 4
        if v == 4:
            ihl = (packet[0] & 0x0F) * 4
            if ihl < 20 or ihl > n or _H.unpack_from(packet, 2)[0] != n:
                raise MalformedPacket("IPv4 length fields do not match the packet")
        elif v == 6:
            if n < 40 or _H.unpack_from(packet, 4)[0] + 40 != n:
                raise MalformedPacket("IPv6 payload length does not match the packet")
        else:
            raise MalformedPacket(f"IP version {v}")
        if self.tunnel:
            nh = PROTO_IPIP if v == 4 else PROTO_IPV6
            rest = packet
            ipv6 = self._v6
            alen = ah_length(self._icv, ipv6)
            if ipv6:
                ip = bytearray(
                    IPV6_HEADER.pack(0x60000000, alen + n, PROTO_AH, 64, self._src, self._dst)
                )
            else:
                ip = bytearray(
                    IPV4_HEADER.pack(
                        0x45,
                        0,
                        20 + alen + n,
                        seq & 0xFFFF,
                        0,
                        64,
                        PROTO_AH,
                        0,
                        self._src,
                        self._dst,
                    )
                )
                _H.pack_into(ip, 10, ipv4_header_checksum(ip))
        elif v == 4:
            if _H.unpack_from(packet, 6)[0] & 0x3FFF:
                raise MalformedPacket("transport mode cannot protect an IPv4 fragment")
            nh = packet[9]
            rest = packet[ihl:]
            ipv6 = False
            alen = ah_length(self._icv, False)
            ip = bytearray(packet[:ihl])
            ip[9] = PROTO_AH
            _H.pack_into(ip, 2, n + alen)
            ip[10] = ip[11] = 0
            _H.pack_into(ip, 10, ipv4_header_checksum(ip))
        else:
            nh_off, end = ipv6_transport_split(packet)
            if _is_fragment(packet, end):
                raise MalformedPacket("transport mode cannot protect an IPv6 fragment")
            nh = packet[nh_off]
            rest = packet[end:]
            ipv6 = True
            alen = ah_length(self._icv, True)
            ip = bytearray(packet[:end])
            ip[nh_off] = PROTO_AH
            _H.pack_into(ip, 4, n - 40 + alen)
        head = AH_HEADER.pack(nh, alen // 4 - 2, 0, self.spi, seq & _M32)
        pad = bytes(alen - 12 - self._icv)
        zeroed = zero_ipv6_mutable(ip, True) if ipv6 else zero_ipv4_mutable(ip)
        icv = self._sign(zeroed, head + bytes(self._icv) + pad, rest, seq)
        return b"".join((ip, head, icv, pad, rest))

    # ------------------------------------------------------------------ inbound

    def locate(self, packet: bytes) -> tuple[int, int, int]:
        """(AH offset, AH offset, offset of the Next Header field pointing at AH)."""
        n = len(packet)
        if n < 20:
            raise MalformedPacket(f"packet of {n} bytes is too short")
        v = packet[0] >> 4
        if v == 4:
            ihl = (packet[0] & 0x0F) * 4
            if ihl < 20 or ihl > n or _H.unpack_from(packet, 2)[0] != n:
                raise MalformedPacket("IPv4 length fields do not match the packet")
            if _H.unpack_from(packet, 6)[0] & 0x3FFF:
                raise MalformedPacket("IPv4 fragment: reassemble before AH processing")
            proto, off, nh_off = packet[9], ihl, 9
        elif v == 6:
            if n < 40 or _H.unpack_from(packet, 4)[0] + 40 != n:
                raise MalformedPacket("IPv6 payload length does not match the packet")
            proto, off, nh_off = packet[6], 40, 6
            while proto in _WALK6 or proto == PROTO_FRAGMENT:
                ln = ipv6_ext_length(packet, off, proto)
                if proto == PROTO_FRAGMENT and _H.unpack_from(packet, off + 2)[0] & 0xFFF9:
                    raise MalformedPacket("IPv6 fragment: reassemble before AH processing")
                nh_off = off
                proto = packet[off]
                off += ln
        else:
            raise MalformedPacket(f"IP version {v}")
        if proto != PROTO_AH:
            raise MalformedPacket(f"protocol {proto} is not AH")
        if n < off + 12:
            raise MalformedPacket("truncated AH header")
        alen = (packet[off + 1] + 2) * 4
        if alen != ah_length(self._icv, v == 6) or off + alen > n:
            raise MalformedPacket(f"AH length {alen} does not fit {self.alg.name}")
        return off, off, nh_off

    def open(self, packet: bytes, off: int, end: int, nh_off: int, seq: int) -> bytes:
        """Verify the ICV of the AH packet; the whole inner packet."""
        v6 = packet[0] >> 4 == 6
        alen = (packet[off + 1] + 2) * 4
        icv_end = off + 12 + self._icv
        prefix = packet[:off]
        zeroed = zero_ipv6_mutable(prefix, False) if v6 else zero_ipv4_mutable(prefix)
        mv = memoryview(packet)
        ah0 = b"".join((mv[off : off + 12], bytes(self._icv), mv[icv_end : off + alen]))
        rest = mv[off + alen :]
        self._mac.verify(
            mv[off + 12 : icv_end], zeroed, ah0, rest, *((_I.pack(seq >> 32),) if self.esn else ())
        )
        nh = packet[off]
        if self.tunnel:
            return _inner(bytes(rest), nh)
        ip = bytearray(prefix)
        ip[nh_off] = nh
        if v6:
            _H.pack_into(ip, 4, len(packet) - alen - 40)
        else:
            _H.pack_into(ip, 2, len(packet) - alen)
            ip[10] = ip[11] = 0
            _H.pack_into(ip, 10, ipv4_header_checksum(ip))
        return b"".join((ip, rest))


def _inner(rest: bytes, nh: int) -> bytes:
    n = len(rest)
    if nh == PROTO_IPIP:
        if n < 20 or rest[0] >> 4 != 4 or _H.unpack_from(rest, 2)[0] != n:
            raise MalformedPacket("tunnel payload is not an IPv4 packet")
    elif nh == PROTO_IPV6:
        if n < 40 or rest[0] >> 4 != 6 or _H.unpack_from(rest, 4)[0] + 40 != n:
            raise MalformedPacket("tunnel payload is not an IPv6 packet")
    else:
        raise MalformedPacket(f"tunnel mode next header {nh} is not IP")
    return rest
