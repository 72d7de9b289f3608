"""IPv6 fragments around transport mode: reassembly before, fragmentation after.

Transport mode SAs do not carry fragments (RFC 4301 section 7): IPsec applies to whole
datagrams, and a receiver reassembles before AH/ESP processing (RFC 4302 3.4.1, RFC 4303
3.4.1). The Linux kernel fragments a datagram larger than the TUN's MTU *before* it reaches
the data plane, so the outbound worker reassembles those IPv6 fragments
(:class:`Reassembler6`) before the SA sees them, and the protected packet, now larger
than the link's MTU, is fragmented again (:func:`fragment6`) after the SA: the fragment
header then sits right in front of AH/ESP, and the peer's kernel reassembles before its
AH/ESP processing (the ICV never covers a fragment header, RFC 4302 3.3.3.1.2).

Pure functions of bytes and ``now``: no sockets, no clock.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

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


class Reassembler6:
    """Rebuilds IPv6 datagrams from their fragments (RFC 8200 section 4.5).

    Keyed by (source, destination, identification). Overlapping fragments drop the
    whole datagram (RFC 5722); partial datagrams expire after
    :data:`REASSEMBLY_TIMEOUT` seconds and at most ``max_datagrams`` are kept.
    """

    def __init__(self, max_datagrams: int = MAX_DATAGRAMS) -> None:
        self.max_datagrams = max_datagrams
        self._partial: dict[tuple[bytes, bytes, int], _Partial] = {}
        self._fragments = self._reassembled = self._dropped = self._malformed = 0

    def add(self, packet: bytes, now: float) -> bytes | None:
        """Take one fragment (an IPv6 packet with a fragment header); the whole datagram
        when this fragment completes it, else None."""
        self._fragments += 1
        off = fragment_header_offset(packet) if len(packet) >= 48 else -1
        if off < 0 or _H.unpack_from(packet, 4)[0] + 40 != len(packet):
            self._malformed += 1
            return None
        nh, _res, field, ident = _FRAG.unpack_from(packet, off)
        start = field & 0xFFF8
        more = field & 1
        data = packet[off + 8 :]
        end = start + len(data)
        if (more and len(data) % 8) or not data or end > MAX_SIZE:
            self._malformed += 1
            return None
        self.expire(now)
        key = (packet[8:24], packet[24:40], ident)
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
            p.unfrag = packet[:off]
            p.first_nh = nh
            p.nh_off = _nh_offset(packet, off)
        p.pieces[start] = data
        if p.total < 0 or p.unfrag is None or sum(map(len, p.pieces.values())) != p.total:
            return None
        del self._partial[key]
        body = b"".join(p.pieces[s] for s in sorted(p.pieces))
        head = bytearray(p.unfrag)
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
