"""TUN offloads (IFF_VNET_HDR): split TSO super-packets, finish partial checksums.

With ``TUNSETOFFLOAD(TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6)`` the kernel hands the TUN
reader TCP "super-packets" of up to 64 KB, each after a 10-byte ``virtio_net_hdr``::

    u8 flags (1 NEEDS_CSUM, 2 DATA_VALID)   u8 gso_type (0 none, 1 TCPv4, 4 TCPv6, 0x80 ECN)
    le16 hdr_len   le16 gso_size   le16 csum_start   le16 csum_offset

One read then replaces up to 45 reads, and the local TCP stack works per super-packet
instead of per segment, the largest gain DESIGN.md measured. The price is ours to pay
here: cut the payload into ``gso_size`` segments with their own IP/TCP headers, and compute
the full TCP checksum (the kernel left only the pseudo-header sum: NEEDS_CSUM), because
the peer decrypts a packet that must be complete. Checksums use the
``int.from_bytes(...) % 0xFFFF`` ones'-complement sum (:mod:`pyipsec.wire.ip`).

Packets written to the TUN carry a header too; :data:`WRITE_HEADER` says "no offload,
checksum already verified" (DATA_VALID: the packet was authenticated by ESP/AH).
"""

from __future__ import annotations

import struct

from pyipsec.errors import MalformedPacket
from pyipsec.wire.ip import ones_complement_sum

VNET_HDR = struct.Struct("<BBHHHH")
VNET_HDR_LEN = 10
F_NEEDS_CSUM = 1
F_DATA_VALID = 2
GSO_NONE = 0
GSO_TCPV4 = 1
GSO_TCPV6 = 4
GSO_ECN = 0x80
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_TSO_ECN = 0x08

WRITE_HEADER = VNET_HDR.pack(F_DATA_VALID, GSO_NONE, 0, 0, 0, 0)
_H = struct.Struct("!H")
_I = struct.Struct("!I")


def _pseudo(pkt: bytes | bytearray, v4: bool, length: int) -> int:
    if v4:
        return int.from_bytes(pkt[12:20], "big") + 6 + length
    return int.from_bytes(pkt[8:40], "big") + 6 + length


def _finish_csum(pkt: bytearray, start: int, offset: int) -> None:
    """Complete a CHECKSUM_PARTIAL packet: the field holds the pseudo-header sum."""
    s = ones_complement_sum(memoryview(pkt)[start:])
    csum = ~s & 0xFFFF
    if csum == 0 and pkt[9 if pkt[0] >> 4 == 4 else 6] == 17:
        csum = 0xFFFF  # UDP: zero means "no checksum"
    _H.pack_into(pkt, start + offset, csum)


def split(buf: bytes) -> list[bytes]:
    """Plain IP packets from one TUN read with a virtio_net_hdr in front."""
    if len(buf) < VNET_HDR_LEN + 20:
        raise MalformedPacket("TUN read shorter than its virtio header")
    flags, gso_type, _hdr_len, gso_size, csum_start, csum_offset = VNET_HDR.unpack_from(buf)
    kind = gso_type & ~GSO_ECN
    if kind == GSO_NONE:
        if not flags & F_NEEDS_CSUM:
            return [buf[VNET_HDR_LEN:]]
        pkt = bytearray(buf[VNET_HDR_LEN:])
        if csum_start + csum_offset + 2 > len(pkt):
            raise MalformedPacket("checksum offsets beyond the packet")
        _finish_csum(pkt, csum_start, csum_offset)
        return [bytes(pkt)]
    if kind not in (GSO_TCPV4, GSO_TCPV6) or not gso_size:
        raise MalformedPacket(f"unsupported GSO type {gso_type}")
    return _split_tcp(memoryview(buf)[VNET_HDR_LEN:], kind == GSO_TCPV4, gso_size, csum_start)


def _split_tcp(pkt: memoryview, v4: bool, mss: int, l4: int) -> list[bytes]:
    """Segment a TCP super-packet; ``l4`` is the TCP header offset (csum_start)."""
    n = len(pkt)
    if l4 + 20 > n:
        raise MalformedPacket("TSO packet without a TCP header")
    thl = (pkt[l4 + 12] >> 4) * 4
    hl = l4 + thl
    if thl < 20 or hl > n:
        raise MalformedPacket("bad TCP header length in a TSO packet")
    iph = bytes(pkt[:l4])
    tcph = bytes(pkt[l4:hl])
    seq0 = _I.unpack_from(tcph, 4)[0]
    flags0 = tcph[13]
    ip_id = _H.unpack_from(iph, 4)[0] if v4 else 0
    ext = l4 - 40  # IPv6 extension headers before TCP
    out: list[bytes] = []
    total = n - hl
    off = 0
    i = 0
    while off < total:
        seg = pkt[hl + off : hl + off + mss]
        last = off + mss >= total
        ln = len(seg)
        ip = bytearray(iph)
        if v4:
            _H.pack_into(ip, 2, l4 + thl + ln)
            _H.pack_into(ip, 4, (ip_id + i) & 0xFFFF)
            ip[10] = ip[11] = 0
            s = int.from_bytes(ip, "big") % 0xFFFF
            _H.pack_into(ip, 10, ~s & 0xFFFF if s else 0)
        else:
            _H.pack_into(ip, 4, ext + thl + ln)
        th = bytearray(tcph)
        _I.pack_into(th, 4, (seq0 + off) & 0xFFFFFFFF)
        f = flags0
        if not last:
            f &= ~0x09  # FIN, PSH only on the last segment
        if i:
            f &= ~0x80  # CWR only on the first
        th[13] = f
        th[16] = th[17] = 0
        s = ones_complement_sum(bytes(th) + seg, _pseudo(ip, v4, thl + ln) % 0xFFFF)
        _H.pack_into(th, 16, ~s & 0xFFFF)
        out.append(bytes(ip) + bytes(th) + bytes(seg))
        off += mss
        i += 1
    return out
