"""TUN offloads (IFF_VNET_HDR): split TSO super-packets, finish partial checksums.

With ``TUNSETOFFLOAD(TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6)`` the kernel hands the TUN
reader TCP "super-packets" of up to 64 KB, each after a 10-byte ``virtio_net_hdr``::

    u8 flags (1 NEEDS_CSUM, 2 DATA_VALID)   u8 gso_type (0 none, 1 TCPv4, 4 TCPv6, 0x80 ECN)
    le16 hdr_len   le16 gso_size   le16 csum_start   le16 csum_offset

One read then replaces up to 45 reads, and the local TCP stack works per super-packet
instead of per segment. The price is ours to pay here: cut the payload into ``gso_size``
segments with their own IP/TCP headers, and compute the full TCP checksum (the kernel left
only the pseudo-header sum: NEEDS_CSUM), because the peer decrypts a packet that must be
complete. Checksums use the ``int.from_bytes(...) % 0xFFFF`` ones'-complement sum
(:mod:`pyipsec.wire.ip`), 3.3 us per 1448-byte segment: more than the read it saves, so the
data plane reads without TSO by default (``Tun.open(tso=False)``; bench/README.md has the
figures) and this path serves ``pyipsec dataplane --tso``.

Packets written to the TUN carry a header too; :data:`WRITE_HEADER` says "no offload,
checksum already verified" (DATA_VALID: the packet was authenticated by ESP/AH), and
:func:`coalesce_iov` merges runs of one TCP flow into GSO super-packets (the kernel accepts
them whatever offloads the device announces for its own transmissions).
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
    return _split_tcp(buf, kind == GSO_TCPV4, gso_size, csum_start)


def _split_tcp(buf: bytes, v4: bool, mss: int, l4: int) -> list[bytes]:
    """Segment a TCP super-packet (``buf`` starts with the virtio header); ``l4`` is the
    TCP header offset (csum_start) within the packet.

    Per segment: one payload slice, one ones'-complement sum over it (the header words
    are summed apart: both parts start at even offsets), one concatenation.
    """
    base = VNET_HDR_LEN
    n = len(buf)
    t = base + l4
    if t + 20 > n:
        raise MalformedPacket("TSO packet without a TCP header")
    thl = (buf[t + 12] >> 4) * 4
    h = t + thl
    if thl < 20 or h > n:
        raise MalformedPacket("bad TCP header length in a TSO packet")
    ip = bytearray(buf[base:t])
    th = bytearray(buf[t:h])
    seq0 = _I.unpack_from(th, 4)[0]
    flags0 = th[13]
    th[16] = th[17] = 0
    ip_id = _H.unpack_from(ip, 4)[0] if v4 else 0
    if v4:
        ip[10] = ip[11] = 0
        addr_sum = int.from_bytes(ip[12:20], "big") + 6
    else:
        addr_sum = int.from_bytes(ip[8:40], "big") + 6
    ext = l4 - 40  # IPv6 extension headers before TCP
    pack_h = _H.pack_into
    pack_i = _I.pack_into
    from_bytes = int.from_bytes
    out: list[bytes] = []
    off = h
    i = 0
    while off < n:
        seg = buf[off : off + mss]
        ln = len(seg)
        last = off + mss >= n
        if v4:
            pack_h(ip, 2, l4 + thl + ln)
            pack_h(ip, 4, (ip_id + i) & 0xFFFF)
            pack_h(ip, 10, 0)
            s = from_bytes(ip, "big") % 0xFFFF
            pack_h(ip, 10, ~s & 0xFFFF if s else 0)
        else:
            pack_h(ip, 4, ext + thl + ln)
        pack_i(th, 4, (seq0 + off - h) & 0xFFFFFFFF)
        f = flags0
        if not last:
            f &= ~0x09  # FIN, PSH only on the last segment
        if i:
            f &= ~0x80  # CWR only on the first
        th[13] = f
        th[16] = th[17] = 0
        body = from_bytes(seg + b"\0", "big") if ln & 1 else from_bytes(seg, "big")
        s = (body + from_bytes(th, "big") + addr_sum + thl + ln) % 0xFFFF
        pack_h(th, 16, ~s & 0xFFFF if s else 0)
        out.append(bytes(ip) + th + seg)
        off += mss
        i += 1
    return out


# --------------------------------------------------------------------------- coalescing

MAX_COALESCED = 65535 - 128  #: payload bytes of one coalesced super-packet at most
MAX_SEGMENTS = 64


def _mask(l4: int, hl: int) -> int:
    """An AND mask over a packet's first ``hl`` bytes keeping what must be equal within one
    merged run: every header byte except the IP lengths, IPv4 identification and header
    checksum, the TCP sequence number, the PSH flag and the TCP checksum."""
    m = bytearray(b"\xff" * hl)
    blank = [(2, 6), (10, 12)] if l4 == 20 else [(4, 6)]
    blank += [(l4 + 4, l4 + 8), (l4 + 16, l4 + 18)]
    for a, b in blank:
        m[a:b] = bytes(b - a)
    m[l4 + 13] &= ~0x08
    return int.from_bytes(m, "big")


_MASK4 = {20 + thl: _mask(20, 20 + thl) for thl in range(20, 64, 4)}
_MASK6 = {40 + thl: _mask(40, 40 + thl) for thl in range(20, 64, 4)}


def coalesce(packets: list[bytes]) -> list[bytes]:
    """TUN writes (virtio header included) for decapsulated packets: see
    :func:`coalesce_iov`, each write joined into one buffer."""
    return [b"".join(iov) for iov in coalesce_iov(packets)]


def coalesce_iov(packets: list[bytes]) -> list[list[bytes | memoryview]]:
    """TUN writes for decapsulated packets, each a list of buffers for one ``writev``
    (virtio header first), merging runs of consecutive in-order TCP segments of one flow
    into one GSO super-packet.

    The kernel's TCP then handles one large packet where it would handle up to 64 (the
    receive-side counterpart of TSO, as GRO does for a NIC). A segment may join a run
    (IPv4 without options or fragments, IPv6 without extension headers, TCP with only
    ACK/PSH set and some payload) when its headers equal the first segment's except for
    lengths, IPv4 identification, checksums, sequence number and PSH (one masked integer
    comparison), its sequence number continues the run and it is not longer than the
    first; a shorter segment or PSH ends the run. Anything else is written alone
    (``WRITE_HEADER``). The merged packet carries the pseudo-header sum in its checksum
    field and NEEDS_CSUM, as TSO packets do; payloads are passed as memoryviews (no copy).
    """
    out: list[list[bytes | memoryview]] = []
    append = out.append
    run: list[bytes] = []
    run_key = seg = nxt = total = hl0 = 0
    ended = True
    from_bytes = int.from_bytes
    unpack_i = _I.unpack_from
    for p in packets:
        n = len(p)
        b0 = p[0]
        if b0 == 0x45:
            if n < 40 or p[9] != 6 or (p[6] & 0x3F) or p[7]:  # MF or fragment offset
                key = 0
            else:
                l4 = 20
                masks = _MASK4
                key = 1
        elif b0 >> 4 == 6 and n >= 60 and p[6] == 6:
            l4 = 40
            masks = _MASK6
            key = 1
        else:
            key = 0
        if key:
            flags = p[l4 + 13]
            hl = l4 + (p[l4 + 12] >> 4) * 4
            mask = masks.get(hl)
            if mask is None or hl >= n or flags & ~0x18 or not flags & 0x10:
                key = 0
            else:
                key = from_bytes(p[:hl], "big") & mask
        if not key:
            if run:
                append(_merged(run, seg, total, hl0) if len(run) > 1 else [WRITE_HEADER, run[0]])
                run = []
            ended = True
            append([WRITE_HEADER, p])
            continue
        plen = n - hl
        seq = unpack_i(p, l4 + 4)[0]
        if (
            not ended
            and key == run_key
            and seq == nxt
            and plen <= seg
            and total + plen <= MAX_COALESCED
            and len(run) < MAX_SEGMENTS
        ):
            run.append(p)
            total += plen
            nxt = (seq + plen) & 0xFFFFFFFF
            ended = plen < seg or flags & 0x08
            continue
        if run:
            append(_merged(run, seg, total, hl0) if len(run) > 1 else [WRITE_HEADER, run[0]])
        run = [p]
        run_key, seg, total, hl0 = key, plen, plen, hl
        nxt = (seq + plen) & 0xFFFFFFFF
        ended = flags & 0x08
    if run:
        append(_merged(run, seg, total, hl0) if len(run) > 1 else [WRITE_HEADER, run[0]])
    return out


def _merged(run: list[bytes], seg: int, total: int, hl: int) -> list[bytes | memoryview]:
    first = run[0]
    v4 = first[0] == 0x45
    l4 = 20 if v4 else 40
    thl = hl - l4
    ip = bytearray(first[:l4])
    if v4:
        _H.pack_into(ip, 2, hl + total)
        ip[10] = ip[11] = 0
        s = int.from_bytes(ip, "big") % 0xFFFF
        _H.pack_into(ip, 10, ~s & 0xFFFF if s else 0)
    else:
        _H.pack_into(ip, 4, thl + total)
    th = bytearray(first[l4:hl])
    th[13] |= run[-1][l4 + 13] & 0x08  # PSH of the last segment
    psum = _pseudo(ip, v4, thl + total) % 0xFFFF
    _H.pack_into(th, 16, psum or 0xFFFF)
    gso = GSO_TCPV4 if v4 else GSO_TCPV6
    vh = VNET_HDR.pack(F_NEEDS_CSUM, gso, hl, seg, l4, 16)
    iov: list[bytes | memoryview] = [vh + ip + th]
    iov += [memoryview(p)[hl:] for p in run]
    return iov
