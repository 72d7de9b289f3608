"""Fragments around transport mode: reassembly before the SA, fragmentation after.

Transport mode SAs do not carry fragments (RFC 4301 section 7): IPsec applies to whole
datagrams, and a receiver reassembles before AH/ESP processing (RFC 4302 3.4.1, RFC 4303
3.4.1). The Linux kernel fragments a datagram larger than the TUN's MTU *before* it reaches
the data plane (IPv6 always, IPv4 when DF is clear), so the outbound worker reassembles
those fragments (:class:`Reassembler`) before the SA sees them, and the protected packet,
now larger than the link's MTU, is fragmented again after the SA (:func:`fragment6`: the
fragment header right in front of AH/ESP; :func:`fragment4`). The peer's kernel
reassembles before its AH/ESP processing; the ICV never covers a fragment header, and for
IPv4 the flags and offset are mutable (zeroed) fields (RFC 4302 3.3.3.1).

Pure functions of bytes and ``now``: no sockets, no clock.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from pyipsec.wire.ip import ipv4_header_checksum

_H = struct.Struct("!H")
_FRAG = struct.Struct("!BBHI")
PROTO_HOPOPT = 0
PROTO_ROUTING = 43
PROTO_FRAGMENT = 44
PROTO_DSTOPTS = 60
_EXT = (PROTO_HOPOPT, PROTO_ROUTING, PROTO_DSTOPTS)
REASSEMBLY_TIMEOUT = 60.0  #: seconds a partial datagram is kept (RFC 8200 section 4.5)
MAX_DATAGRAMS = 64  #: partial datagrams kept at once (the oldest is dropped beyond)
MAX_SIZE = 65535  #: largest reassembled payload (no jumbograms)


def fragment_header_offset(packet: bytes) -> int:
    """Offset of the fragment header of an IPv6 packet, -1 if it has none (or is cut)."""
    nh = packet[6]
    off = 40
    n = len(packet)
    while nh in _EXT:
        if off + 2 > n:
            return -1
        nh = packet[off]
        off += (packet[off + 1] + 1) * 8
    return off if nh == PROTO_FRAGMENT and off + 8 <= n else -1


@dataclass(frozen=True, slots=True)
class ReassemblyStatistics:
    fragments: int  #: IPv6 fragments taken in
    reassembled: int  #: whole datagrams rebuilt from them
    pending: int  #: partial datagrams waiting for more fragments
    dropped: int  #: partial datagrams given up (timeout, table full, overlap, too large)
    malformed: int  #: fragments that could not be parsed (dropped alone)


class _Partial:
    __slots__ = ("unfrag", "nh_off", "pieces", "total", "first_nh", "deadline")

    def __init__(self, deadline: float) -> None:
        self.unfrag: bytes | None = None  #: headers in front of the fragment header
        self.nh_off = 6  #: offset (in ``unfrag``) of the Next Header naming the fragment
        self.pieces: dict[int, bytes] = {}  #: offset -> data
        self.total = -1  #: fragmentable length, known from the last fragment
        self.first_nh = 0
        self.deadline = deadline


class Reassembler:
    """Rebuilds IPv4 and IPv6 datagrams from their fragments (RFC 791 3.2, RFC 8200 4.5).

    Keyed by (source, destination, identification[, protocol for IPv4]). Overlapping
    fragments drop the whole datagram (RFC 5722); partial datagrams expire after
    :data:`REASSEMBLY_TIMEOUT` seconds and at most ``max_datagrams`` are kept.
    """

    def __init__(self, max_datagrams: int = MAX_DATAGRAMS) -> None:
        self.max_datagrams = max_datagrams
        self._partial: dict[tuple[Any, ...], _Partial] = {}
        self._fragments = self._reassembled = self._dropped = self._malformed = 0

    def add(self, packet: bytes, now: float) -> bytes | None:
        """Take one fragment (an IPv4 fragment, or an IPv6 packet with a fragment
        header); the whole datagram when this fragment completes it, else None."""
        self._fragments += 1
        parsed = _parse4(packet) if packet[0] >> 4 == 4 else _parse6(packet)
        if parsed is None:
            self._malformed += 1
            return None
        key, start, more, data, head, nh_off, nh = parsed
        end = start + len(data)
        if (more and len(data) % 8) or not data or end > MAX_SIZE:
            self._malformed += 1
            return None
        self.expire(now)
        p = self._partial.get(key)
        if p is None:
            if len(self._partial) >= self.max_datagrams:
                del self._partial[next(iter(self._partial))]  # the oldest
                self._dropped += 1
            p = self._partial[key] = _Partial(now + REASSEMBLY_TIMEOUT)
        for s, d in p.pieces.items():  # RFC 5722: overlaps end the datagram
            if start < s + len(d) and s < end:
                del self._partial[key]
                self._dropped += 1
                return None
        if not more:
            if p.total >= 0 or any(s + len(d) > end for s, d in p.pieces.items()):
                del self._partial[key]
                self._dropped += 1
                return None
            p.total = end
        elif p.total >= 0 and end > p.total:
            del self._partial[key]
            self._dropped += 1
            return None
        if start == 0:
            p.unfrag = head
            p.first_nh = nh
            p.nh_off = nh_off
        p.pieces[start] = data
        if p.total < 0 or p.unfrag is None or sum(map(len, p.pieces.values())) != p.total:
            return None
        del self._partial[key]
        body = b"".join(p.pieces[s] for s in sorted(p.pieces))
        head = bytearray(p.unfrag)
        if head[0] >> 4 == 4:
            _H.pack_into(head, 2, len(head) + len(body))
            head[6] = head[7] = head[10] = head[11] = 0  # no MF, offset 0, checksum anew
            _H.pack_into(head, 10, ipv4_header_checksum(head))
        else:
            head[p.nh_off] = p.first_nh
            _H.pack_into(head, 4, len(head) - 40 + len(body))
        self._reassembled += 1
        return bytes(head) + body

    def expire(self, now: float) -> None:
        """Drop partial datagrams whose time is up (they are kept in arrival order)."""
        while self._partial:
            key = next(iter(self._partial))
            if self._partial[key].deadline > now:
                return
            del self._partial[key]
            self._dropped += 1

    def statistics(self) -> ReassemblyStatistics:
        return ReassemblyStatistics(
            self._fragments, self._reassembled, len(self._partial), self._dropped,
            self._malformed,
        )  # fmt: skip


def _parse6(packet: bytes) -> tuple[Any, ...] | None:
    """(key, offset, more, data, headers in front, Next Header offset, next header)."""
    off = fragment_header_offset(packet) if len(packet) >= 48 else -1
    if off < 0 or _H.unpack_from(packet, 4)[0] + 40 != len(packet):
        return None
    nh, _res, field, ident = _FRAG.unpack_from(packet, off)
    key = (packet[8:24], packet[24:40], ident)
    return key, field & 0xFFF8, field & 1, packet[off + 8 :], packet[:off], _nh_offset(
        packet, off), nh  # fmt: skip


def _parse4(packet: bytes) -> tuple[Any, ...] | None:
    n = len(packet)
    ihl = (packet[0] & 0x0F) * 4 if n >= 20 else 0
    if ihl < 20 or ihl >= n or _H.unpack_from(packet, 2)[0] != n:
        return None
    field = _H.unpack_from(packet, 6)[0]
    key = (packet[12:16], packet[16:20], packet[4:6], packet[9])
    more = 1 if field & 0x2000 else 0
    return key, (field & 0x1FFF) * 8, more, packet[ihl:], packet[:ihl], 9, packet[9]


def _nh_offset(packet: bytes, end: int) -> int:
    """Offset of the Next Header field that names the header at ``end``."""
    nh_off = 6
    off = 40
    while off < end:
        nh_off = off
        off += (packet[off + 1] + 1) * 8
    return nh_off


def fragment6(packet: bytes, mtu: int, ident: int) -> list[bytes]:
    """``packet`` (an ESP/AH packet) cut into IPv6 fragments of at most ``mtu`` bytes.

    Every extension header in front of ESP/AH (hop-by-hop, routing, destination options
    in front of AH) is repeated in every fragment, and the fragment header goes right
    before ESP/AH, so each fragment's header names ESP/AH: the peer's firewall sees IPv6
    fragments one by one (reassembly runs after the input hook) and can accept exactly
    those. RFC 8200 4.5 would leave a destination options header without a routing
    header in the fragmentable part; receivers accept either order (RFC 8200 4.1) and
    the ICV never covers the fragment header. The rest is cut into multiples of 8
    bytes. A packet that fits is returned alone."""
    if len(packet) <= mtu:
        return [packet]
    nh = packet[6]
    off = 40
    unfrag_end, unfrag_nh = 40, 6
    while nh in _EXT and off + 2 <= len(packet):
        ln = (packet[off + 1] + 1) * 8
        unfrag_end, unfrag_nh = off + ln, off
        nh = packet[off]
        off += ln
    first_nh = packet[unfrag_nh]
    head = bytearray(packet[:unfrag_end])
    head[unfrag_nh] = PROTO_FRAGMENT
    step = (mtu - unfrag_end - 8) & ~7
    if step < 8:
        raise ValueError(f"MTU {mtu} leaves no room for a fragment")
    body = memoryview(packet)[unfrag_end:]
    out = []
    for start in range(0, len(body), step):
        chunk = body[start : start + step]
        more = 1 if start + step < len(body) else 0
        _H.pack_into(head, 4, unfrag_end - 40 + 8 + len(chunk))
        out.append(b"".join((head, _FRAG.pack(first_nh, 0, start | more, ident), chunk)))
    return out


def fragment4(packet: bytes, mtu: int) -> list[bytes]:
    """``packet`` (an IPv4 ESP/AH packet without DF) cut into fragments of at most
    ``mtu`` bytes (RFC 791 3.2): the first keeps the whole header, the others only the
    options whose copied flag is set; data cut into multiples of 8 bytes. ValueError
    when DF is set (the kernel would have refused such a datagram) or no room."""
    if len(packet) <= mtu:
        return [packet]
    ihl = (packet[0] & 0x0F) * 4
    if _H.unpack_from(packet, 6)[0] & 0x4000:
        raise ValueError("DF is set")
    first = bytearray(packet[:ihl])
    rest = bytearray(first[:20]) + _copied_options(bytes(first[20:]))
    body = memoryview(packet)[ihl:]
    out = []
    start = 0
    head = first
    while start < len(body):
        step = (mtu - len(head)) & ~7
        if step < 8:
            raise ValueError(f"MTU {mtu} leaves no room for a fragment")
        chunk = body[start : start + step]
        more = 0x2000 if start + step < len(body) else 0
        h = bytearray(head)
        h[0] = 0x40 | len(h) // 4
        _H.pack_into(h, 2, len(h) + len(chunk))
        _H.pack_into(h, 6, more | (start // 8))
        h[10] = h[11] = 0
        _H.pack_into(h, 10, ipv4_header_checksum(h))
        out.append(b"".join((h, chunk)))
        start += step
        head = rest
    return out


def _copied_options(opts: bytes) -> bytes:
    """The IPv4 options with the copied flag (type bit 0x80), padded to 4 bytes."""
    out = bytearray()
    i = 0
    while i < len(opts):
        t = opts[i]
        if t == 0:  # end of options list
            break
        if t == 1:  # no operation
            i += 1
            continue
        ln = opts[i + 1] if i + 1 < len(opts) else 0
        if ln < 2:
            break
        if t & 0x80:
            out += opts[i : i + ln]
        i += ln
    out += bytes(-len(out) % 4)
    return bytes(out)
