"""ESP processing (RFC 4303): transport and tunnel mode, IPv4 and IPv6, ESP-in-UDP.

Per outbound packet (one :meth:`EspProcessor.encapsulate` call): validate the IP
framing, pick the trailer from a per-SA cache, ``seal`` with the cipher object built once
for the SA (counter IV for AEAD/GMAC, chained random block for CBC), build the outer
header from a precomputed partial checksum, one ``b"".join``. (The most common AEAD cases
are also inlined in :class:`~pyipsec.ipsec.sa.SecurityAssociation`; see its docstring.)

Per inbound packet: :meth:`locate` finds the ESP header (after the IP header, its IPv6
extension headers or the NAT-T UDP header) without copying; the SA checks SPI and replay
window; :meth:`open` verifies the ICV, decrypts, checks the padding and rebuilds the inner
packet. This module holds no sequence or replay state: the SA does.

Tunnel mode TFC padding (RFC 4303 section 2.7): zero bytes appended to short inner packets
up to ``tfc`` bytes; the receiver cuts the inner packet at its own IP length. A next
header of 59 (dummy packet, section 2.6) decapsulates to ``b""``.
"""

from __future__ import annotations

import struct

from pyipsec.crypto.esp_algorithms import EspAlgorithm, make_transform
from pyipsec.errors import MalformedPacket
from pyipsec.ipsec.natt import check_esp_payload, udp_header
from pyipsec.wire.esp import ESP_HEADER, NATT_PORT, pull_trailer
from pyipsec.wire.ip import (
    IPV4_HEADER,
    IPV6_HEADER,
    PROTO_DSTOPTS,
    PROTO_ESP,
    PROTO_FRAGMENT,
    PROTO_HOPOPT,
    PROTO_IPIP,
    PROTO_IPV6,
    PROTO_NONE,
    PROTO_ROUTING,
    PROTO_UDP,
    internet_checksum,
    ipv4_header_checksum,
    ipv6_ext_length,
    ipv6_transport_split,
    pseudo_header_sum,
)

_H = struct.Struct("!H")
_M32 = 0xFFFFFFFF
_PAD = bytes(range(1, 256))
_WALK6 = frozenset((PROTO_HOPOPT, PROTO_ROUTING, PROTO_DSTOPTS))


def fix_l4_checksum(packet: bytes) -> bytes:
    """Recompute the TCP or UDP checksum of a whole IPv4/IPv6 packet.

    Used after transport-mode NAT-T decapsulation (RFC 3948 section 3.1.2): the sender
    computed it with its own, pre-NAT addresses. A zero IPv4 UDP checksum stays zero.
    """
    if packet[0] >> 4 == 4:
        off = (packet[0] & 0x0F) * 4
        proto = packet[9]
        src, dst = packet[12:16], packet[16:20]
    else:
        proto = packet[6]
        off = 40
        while proto in _WALK6 or proto == PROTO_FRAGMENT:
            ln = ipv6_ext_length(packet, off, proto)
            proto = packet[off]
            off += ln
        src, dst = packet[8:24], packet[24:40]
    if proto == 6:
        pos = off + 16
    elif proto == 17:
        pos = off + 6
        if len(src) == 4 and _H.unpack_from(packet, pos)[0] == 0:
            return packet
    else:
        return packet
    if pos + 2 > len(packet):
        return packet
    buf = bytearray(packet)
    buf[pos] = buf[pos + 1] = 0
    seg = memoryview(buf)[off:]
    csum = internet_checksum(seg, pseudo_header_sum(bytes(src), bytes(dst), proto, len(seg)))
    if proto == 17 and csum == 0:
        csum = 0xFFFF
    _H.pack_into(buf, pos, csum)
    return bytes(buf)


def _is_fragment(packet: bytes, end: int) -> bool:
    """Whether the IPv6 headers before ``end`` hold a fragment header of a real
    (non-atomic) fragment."""
    nh = packet[6]
    off = 40
    while off < end:
        ln = ipv6_ext_length(packet, off, nh)
        if nh == PROTO_FRAGMENT and _H.unpack_from(packet, off + 2)[0] & 0xFFF9:
            return True
        nh = packet[off]
        off += ln
    return False


class EspProcessor:
    """Stateless ESP framing and crypto of one SA (its cipher objects live here)."""

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
        encap: bool,
        encap_sport: int = NATT_PORT,
        encap_dport: int = NATT_PORT,
        tfc: int = 0,
    ) -> None:
        self.spi = spi
        self.alg = alg
        self.tunnel = tunnel
        self.encap = encap
        self.sport = encap_sport
        self.dport = encap_dport
        self.tfc = tfc
        self._t = make_transform(alg, key, esn)
        self._align = max(alg.block_size, 4)
        self._trailers: dict[int, bytes] = {}
        self._src = tunnel_src
        self._dst = tunnel_dst
        self._outer_proto = PROTO_UDP if encap else PROTO_ESP
        self._v6 = tunnel_src is not None and len(tunnel_src) == 16
        # Fast path: AEAD with a full 16-byte ICV, no ESN, plain ESP, tunnel mode (the data
        # plane's configuration): one struct call packs outer header, ESP header and IV.
        t = self._t
        self.fast = alg.kind == "aead" and alg.icv_len == 16 and not esn
        if self.fast:
            self.aead_encrypt = t._aead.encrypt
            self.aead_decrypt = t._aead.decrypt
            self.salt = t._salt
            self._tr4 = [_PAD[:p] + bytes((p, PROTO_IPIP)) for p in range(4)]
            self._tr6 = [_PAD[:p] + bytes((p, PROTO_IPV6)) for p in range(4)]
            if tunnel and not encap and tunnel_src is not None and len(tunnel_src) == 4:
                self.encapsulate = self._encapsulate_fast4  # type: ignore[method-assign]
        if tunnel and not self._v6 and tunnel_src is not None:
            base = IPV4_HEADER.pack(
                0x45, 0, 0, 0, 0, 64, self._outer_proto, 0, tunnel_src, tunnel_dst
            )
            self._csum_base = int.from_bytes(base, "big") % 0xFFFF

    # ------------------------------------------------------------------ sizes

    def overhead(self) -> int:
        """Worst-case bytes encapsulate adds to a packet."""
        a = self.alg
        n = 8 + a.iv_len + (self._align - 1) + 2 + a.icv_len
        if self.encap:
            n += 8
        if self.tunnel:
            n += 40 if self._v6 else 20
        return n

    # ------------------------------------------------------------------ outbound

    def _trailer(self, n: int, nh: int) -> bytes:
        pad = -(n + 2) % self._align
        k = pad << 8 | nh
        t = self._trailers.get(k)
        if t is None:
            t = self._trailers[k] = _PAD[:pad] + bytes((pad, nh))
        return t

    def _inner_split(self, packet: bytes) -> tuple[int, int, int]:
        """(version, header end, next header) of a transport-mode packet."""
        n = len(packet)
        if n < 20:
            raise MalformedPacket(f"packet of {n} bytes is too short")
        b0 = packet[0]
        if b0 >> 4 == 4:
            ihl = (b0 & 0x0F) * 4
            if ihl < 20 or ihl > n or _H.unpack_from(packet, 2)[0] != n:
                raise MalformedPacket("IPv4 length fields do not match the packet")
            if _H.unpack_from(packet, 6)[0] & 0x3FFF:
                raise MalformedPacket("transport mode cannot protect an IPv4 fragment")
            return 4, ihl, packet[9]
        if b0 >> 4 == 6:
            if n < 40 or _H.unpack_from(packet, 4)[0] + 40 != n:
                raise MalformedPacket("IPv6 payload length does not match the packet")
            nh_off, end = ipv6_transport_split(packet)
            if _is_fragment(packet, end):
                raise MalformedPacket("transport mode cannot protect an IPv6 fragment")
            return 6, end, packet[nh_off]
        raise MalformedPacket(f"IP version {b0 >> 4}")

    def seal(self, payload: bytes, nh: int, seq: int) -> bytes:
        """The ESP message (SPI .. ICV) carrying ``payload`` with next header ``nh``."""
        hdr = ESP_HEADER.pack(self.spi, seq & _M32)
        a, b = self._t.seal(seq, hdr, payload + self._trailer(len(payload), nh))
        return b"".join((hdr, a, b))

    def _encapsulate_fast4(self, packet: bytes, seq: int) -> bytes:
        """:meth:`encapsulate` for AEAD, no ESN, tunnel mode over IPv4 (the hot path)."""
        n = len(packet)
        if n < 20:
            raise MalformedPacket(f"packet of {n} bytes is too short")
        b0 = packet[0]
        if b0 >> 4 == 4:
            if _H.unpack_from(packet, 2)[0] != n or b0 < 0x45:
                raise MalformedPacket("IPv4 length fields do not match the packet")
            tos = packet[1]
            tr = self._tr4
        elif b0 >> 4 == 6:
            if n < 40 or _H.unpack_from(packet, 4)[0] + 40 != n:
                raise MalformedPacket("IPv6 payload length does not match the packet")
            tos = (b0 & 0x0F) << 4 | packet[1] >> 4
            tr = self._tr6
        else:
            raise MalformedPacket(f"IP version {b0 >> 4}")
        if self.tfc > n:
            packet = packet + bytes(self.tfc - n)
            n = self.tfc
        pad = -(n + 2) & 3
        total = n + pad + 54  # outer 20 + ESP 8 + IV 8 + trailer 2 + ICV 16
        ident = seq & 0xFFFF
        s = (self._csum_base + tos + total + ident) % 0xFFFF
        head = _HEAD4.pack(
            0x45,
            tos,
            total,
            ident,
            0,
            64,
            PROTO_ESP,
            (~s & 0xFFFF) if s else 0,
            self._src,
            self._dst,
            self.spi,
            seq,
            seq,
        )
        return head + self.aead_encrypt(self.salt + head[28:36], packet + tr[pad], head[20:28])

    def encapsulate(self, packet: bytes, seq: int) -> bytes:
        """The whole protected packet for the IP packet ``packet``."""
        if self.tunnel:
            n = len(packet)
            if n < 20:
                raise MalformedPacket(f"packet of {n} bytes is too short")
            b0 = packet[0]
            if b0 >> 4 == 4:
                if _H.unpack_from(packet, 2)[0] != n or (b0 & 0x0F) < 5:
                    raise MalformedPacket("IPv4 length fields do not match the packet")
                nh = PROTO_IPIP
                tos = packet[1]
            elif b0 >> 4 == 6:
                if n < 40 or _H.unpack_from(packet, 4)[0] + 40 != n:
                    raise MalformedPacket("IPv6 payload length does not match the packet")
                nh = PROTO_IPV6
                tos = (b0 & 0x0F) << 4 | packet[1] >> 4
            else:
                raise MalformedPacket(f"IP version {b0 >> 4}")
            if self.tfc > n:
                packet = packet + bytes(self.tfc - n)
                n = self.tfc
            hdr = ESP_HEADER.pack(self.spi, seq & _M32)
            a, b = self._t.seal(seq, hdr, packet + self._trailer(n, nh))
            esp_len = 8 + len(a) + len(b)
            if self._v6:
                if self.encap:
                    u = udp_header(
                        self.sport, self.dport, b"".join((hdr, a, b)), self._src, self._dst
                    )
                    return b"".join(
                        (
                            IPV6_HEADER.pack(
                                0x60000000 | tos << 20, esp_len + 8, 17, 64, self._src, self._dst
                            ),
                            u,
                            hdr,
                            a,
                            b,
                        )
                    )
                return b"".join(
                    (
                        IPV6_HEADER.pack(
                            0x60000000 | tos << 20, esp_len, 50, 64, self._src, self._dst
                        ),
                        hdr,
                        a,
                        b,
                    )
                )
            total = 20 + esp_len + (8 if self.encap else 0)
            ident = seq & 0xFFFF
            s = (self._csum_base + tos + total + ident) % 0xFFFF
            outer = IPV4_HEADER.pack(
                0x45,
                tos,
                total,
                ident,
                0,
                64,
                self._outer_proto,
                (~s & 0xFFFF) if s else 0,
                self._src,
                self._dst,
            )
            if self.encap:
                u = _UDP.pack(self.sport, self.dport, esp_len + 8, 0)
                return b"".join((outer, u, hdr, a, b))
            return b"".join((outer, hdr, a, b))
        # transport mode: ESP goes between the IP header(s) and the upper-layer payload
        v, end, nh = self._inner_split(packet)
        payload = packet[end:]
        hdr = ESP_HEADER.pack(self.spi, seq & _M32)
        a, b = self._t.seal(seq, hdr, payload + self._trailer(len(payload), nh))
        esp_len = 8 + len(a) + len(b)
        ip = bytearray(packet[:end])
        if v == 4:
            ip[9] = self._outer_proto
            _H.pack_into(ip, 2, end + esp_len + (8 if self.encap else 0))
            ip[10] = ip[11] = 0
            _H.pack_into(ip, 10, ipv4_header_checksum(ip))
            if self.encap:
                return b"".join((ip, _UDP.pack(self.sport, self.dport, esp_len + 8, 0), hdr, a, b))
            return b"".join((ip, hdr, a, b))
        nh_off, _ = ipv6_transport_split(packet)
        ip[nh_off] = self._outer_proto
        extra = 8 if self.encap else 0
        _H.pack_into(ip, 4, end - 40 + esp_len + extra)
        if self.encap:
            msg = b"".join((hdr, a, b))
            return b"".join(
                (ip, udp_header(self.sport, self.dport, msg, packet[8:24], packet[24:40]), msg)
            )
        return b"".join((ip, hdr, a, b))

    def encapsulate_esp(self, packet: bytes, seq: int) -> bytes:
        """Only the ESP message for ``packet`` (the kernel adds IP and UDP headers)."""
        if self.tunnel:
            n = len(packet)
            v = packet[0] >> 4 if n else 0
            if v == 4:
                if n < 20 or _H.unpack_from(packet, 2)[0] != n:
                    raise MalformedPacket("IPv4 length fields do not match the packet")
                nh = PROTO_IPIP
            elif v == 6:
                if n < 40 or _H.unpack_from(packet, 4)[0] + 40 != n:
                    raise MalformedPacket("IPv6 payload length does not match the packet")
                nh = PROTO_IPV6
            else:
                raise MalformedPacket(f"IP version {v}")
            if self.tfc > n:
                packet = packet + bytes(self.tfc - n)
            return self.seal(packet, nh, seq)
        v, end, nh = self._inner_split(packet)
        return self.seal(packet[end:], nh, seq)

    # ------------------------------------------------------------------ inbound

    def locate(self, packet: bytes) -> tuple[int, int, int]:
        """(ESP offset, IP headers end, offset of the Next Header field to restore).

        Accepts plain ESP (protocol 50) and ESP-in-UDP (protocol 17) whatever ``encap``
        says (RFC 3948 section 3.2 lets a receiver accept both).
        """
        n = len(packet)
        if n < 20:
            raise MalformedPacket(f"packet of {n} bytes is too short")
        b0 = packet[0]
        if b0 >> 4 == 4:
            ihl = (b0 & 0x0F) * 4
            if ihl < 20 or ihl > n or _H.unpack_from(packet, 2)[0] != n:
                raise MalformedPacket("IPv4 length fields do not match the packet")
            if _H.unpack_from(packet, 6)[0] & 0x3FFF:
                raise MalformedPacket("IPv4 fragment: reassemble before ESP processing")
            proto = packet[9]
            end = ihl
            nh_off = 9
        elif b0 >> 4 == 6:
            if n < 40 or _H.unpack_from(packet, 4)[0] + 40 != n:
                raise MalformedPacket("IPv6 payload length does not match the packet")
            proto = packet[6]
            nh_off = 6
            end = 40
            while proto in _WALK6 or proto == PROTO_FRAGMENT:
                ln = ipv6_ext_length(packet, end, proto)
                if proto == PROTO_FRAGMENT and _H.unpack_from(packet, end + 2)[0] & 0xFFF9:
                    # only an atomic fragment (offset 0, M 0; RFC 6946) is a whole packet
                    raise MalformedPacket("IPv6 fragment: reassemble before ESP processing")
                nh_off = end
                proto = packet[end]
                end += ln
        else:
            raise MalformedPacket(f"IP version {b0 >> 4}")
        if proto == PROTO_ESP:
            if n < end + 8:
                raise MalformedPacket("truncated ESP header")
            return end, end, nh_off
        if proto == PROTO_UDP:
            if n < end + 8 or _H.unpack_from(packet, end + 4)[0] != n - end:
                raise MalformedPacket("UDP length does not match the packet")
            check_esp_payload(memoryview(packet)[end + 8 :])
            return end + 8, end, nh_off
        raise MalformedPacket(f"protocol {proto} is not ESP")

    def _inner(self, pt: bytes, end: int, nh: int) -> bytes:
        """Tunnel mode: the inner packet from the decrypted payload."""
        if nh == PROTO_IPIP:
            if end < 20 or pt[0] >> 4 != 4:
                raise MalformedPacket("tunnel payload is not an IPv4 packet")
            ln = _H.unpack_from(pt, 2)[0]
        elif nh == PROTO_IPV6:
            if end < 40 or pt[0] >> 4 != 6:
                raise MalformedPacket("tunnel payload is not an IPv6 packet")
            ln = _H.unpack_from(pt, 4)[0] + 40
        elif nh == PROTO_NONE:
            return b""  # dummy packet (RFC 4303 section 2.6)
        else:
            raise MalformedPacket(f"tunnel mode next header {nh} is not IP")
        if ln > end:
            raise MalformedPacket("inner packet longer than the ESP payload")
        return pt[:ln] if ln != len(pt) else pt

    def open(self, packet: bytes, off: int, end: int, nh_off: int, seq: int) -> bytes:
        """Verify and decrypt the ESP message at ``off``; the whole inner packet."""
        pt = self._t.open(seq, memoryview(packet)[off:])
        pend, nh = pull_trailer(pt)
        if self.tunnel:
            return self._inner(pt, pend, nh)
        if nh == PROTO_NONE:
            return b""
        ip = bytearray(packet[:end])
        if packet[0] >> 4 == 4:
            ip[9] = nh
            _H.pack_into(ip, 2, end + pend)
            ip[10] = ip[11] = 0
            _H.pack_into(ip, 10, ipv4_header_checksum(ip))
        else:
            ip[nh_off] = nh
            _H.pack_into(ip, 4, end - 40 + pend)
        out = b"".join((ip, memoryview(pt)[:pend]))
        return fix_l4_checksum(out) if off != end else out

    def open_esp(self, msg: bytes, seq: int, src: bytes, dst: bytes) -> bytes:
        """Verify and decrypt a bare ESP message; the whole inner packet.

        In transport mode the IP header is rebuilt from ``src``/``dst`` (TTL/hop limit
        64) and the TCP/UDP checksum recomputed for the post-NAT addresses.
        """
        pt = self._t.open(seq, msg)
        pend, nh = pull_trailer(pt)
        if self.tunnel:
            return self._inner(pt, pend, nh)
        if nh == PROTO_NONE:
            return b""
        if len(src) == 4:
            total = 20 + pend
            h = bytearray(IPV4_HEADER.pack(0x45, 0, total, 0, 0, 64, nh, 0, src, dst))
            _H.pack_into(h, 10, ipv4_header_checksum(h))
        else:
            h = IPV6_HEADER.pack(0x60000000, pend, nh, 64, src, dst)
        return fix_l4_checksum(b"".join((h, memoryview(pt)[:pend])))


_UDP = struct.Struct("!HHHH")
# outer IPv4 header, ESP header (SPI, low sequence), 8-byte counter IV (RFC 4106 3.1)
_HEAD4 = struct.Struct("!BBHHHBBH4s4sIIQ")
