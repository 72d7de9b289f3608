"""Segmentation of TUN TSO super-packets and completion of partial checksums."""

from __future__ import annotations

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6

from pyipsec.errors import MalformedPacket
from pyipsec.platform.linux import offload
from pyipsec.wire.ip import pseudo_header_sum


def vnet(flags, gso_type, gso_size, csum_start, csum_offset) -> bytes:
    return offload.VNET_HDR.pack(flags, gso_type, 0, gso_size, csum_start, csum_offset)


def partial(pkt: bytes, l4: int, proto: int, off: int) -> bytes:
    """The packet as the kernel hands it with NEEDS_CSUM: pseudo-header sum in the field."""
    b = bytearray(pkt)
    v4 = b[0] >> 4 == 4
    src, dst = (b[12:16], b[16:20]) if v4 else (b[8:24], b[24:40])
    b[l4 + off : l4 + off + 2] = pseudo_header_sum(bytes(src), bytes(dst), proto,
                                                   len(b) - l4).to_bytes(2, "big")  # fmt: skip
    return bytes(b)


@pytest.mark.parametrize("v", [4, 6])
@pytest.mark.parametrize("size", [1, 1000, 5001, 2800, 4333])
def test_tso_split_matches_per_segment_packets(v, size):
    payload = bytes((i * 7 + 1) & 0xFF for i in range(size))
    mss = 1400
    if v == 4:
        ip = IP(src="10.0.0.1", dst="10.0.0.2", id=100, flags="DF")
        gso, l4 = offload.GSO_TCPV4, 20
    else:
        ip = IPv6(src="fd00::1", dst="fd00::2")
        gso, l4 = offload.GSO_TCPV6, 40
    tcp = TCP(sport=1234, dport=80, seq=4_294_967_000, flags="PAFC", options=[("NOP", None)] * 4)
    sup = partial(bytes(ip / tcp / payload), l4, 6, 16)
    segs = offload.split(vnet(offload.F_NEEDS_CSUM, gso, mss, l4, 16) + sup)
    assert len(segs) == max(1, -(-size // mss))
    data = b""
    for i, seg in enumerate(segs):
        p = IP(seg) if v == 4 else IPv6(seg)
        t = p[TCP]
        # checksums: scapy recomputes them when deleted; they must equal ours
        ref = p.copy()
        del ref[TCP].chksum
        if v == 4:
            del ref.chksum
            ref = IP(bytes(ref))
            assert p.chksum == ref.chksum and p.id == (100 + i) and p.len == len(seg)
        else:
            ref = IPv6(bytes(ref))
            assert p.plen == len(seg) - 40
        assert t.chksum == ref[TCP].chksum
        assert t.seq == (4_294_967_000 + i * mss) & 0xFFFFFFFF
        last = i == len(segs) - 1
        assert bool(t.flags.F) == last and bool(t.flags.P) == last
        assert bool(t.flags.C) == (i == 0)
        data += bytes(t.payload)
    assert data == payload


@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_needs_csum_without_gso(proto):
    l4 = 20
    layer = UDP(sport=5, dport=6) if proto == "udp" else TCP(sport=5, dport=6)
    pkt = bytes(IP(src="10.0.0.1", dst="10.0.0.2") / layer / b"hello world")
    off = 6 if proto == "udp" else 16
    (out,) = offload.split(vnet(offload.F_NEEDS_CSUM, 0, 0, l4, off) +
                           partial(pkt, l4, 17 if proto == "udp" else 6, off))  # fmt: skip
    assert out == pkt  # scapy computed the full checksum the same way


def test_plain_and_malformed():
    pkt = bytes(IP(src="10.0.0.1", dst="10.0.0.2") / UDP() / b"x")
    assert offload.split(vnet(0, 0, 0, 0, 0) + pkt) == [pkt]
    with pytest.raises(MalformedPacket):
        offload.split(b"\0" * 12)
    with pytest.raises(MalformedPacket):
        offload.split(vnet(0, 3, 1400, 20, 6) + pkt)  # UDP GSO: not offered to the kernel
    with pytest.raises(MalformedPacket):
        offload.split(vnet(1, 0, 0, 200, 6) + pkt)
    with pytest.raises(MalformedPacket):
        offload.split(vnet(1, offload.GSO_TCPV4, 1400, 25, 16) + pkt)


def tcp_segments(v, n, *, mss=1000, seq=1000, last_len=None, psh_last=True, ip_id=7):
    out = []
    for i in range(n):
        ln = last_len if (last_len is not None and i == n - 1) else mss
        flags = "PA" if (psh_last and i == n - 1) else "A"
        tcp = TCP(sport=80, dport=999, seq=seq + i * mss, ack=55, flags=flags, window=500,
                  options=[("Timestamp", (1, 2))])  # fmt: skip
        ip = (IP(src="10.0.0.1", dst="10.0.0.2", id=ip_id + i, flags="DF") if v == 4
              else IPv6(src="fd00::1", dst="fd00::2"))  # fmt: skip
        out.append(bytes(ip / tcp / (bytes([i & 0xFF]) * ln)))
    return out


@pytest.mark.parametrize("v", [4, 6])
def test_coalesce_merges_a_run_and_split_restores_it(v):
    segs = tcp_segments(v, 20, last_len=300)
    (buf,) = offload.coalesce(segs)
    flags, gso_type, hdr_len, gso_size, start, off = offload.VNET_HDR.unpack_from(buf)
    l4 = 20 if v == 4 else 40
    assert (flags, gso_type, gso_size, start, off) == (
        offload.F_NEEDS_CSUM,
        offload.GSO_TCPV4 if v == 4 else offload.GSO_TCPV6,
        1000,
        l4,
        16,
    )
    assert hdr_len == l4 + 32 and len(buf) == 10 + hdr_len + 19 * 1000 + 300
    assert offload.split(buf) == segs  # what the kernel's segmentation would give back


def test_coalesce_leaves_what_it_cannot_merge():
    run = tcp_segments(4, 3, psh_last=False)
    other = tcp_segments(4, 1, seq=50_000, ip_id=99)[0]
    gap = tcp_segments(4, 2, seq=1000 + 5000, ip_id=20, psh_last=False)
    syn = bytes(IP(src="10.0.0.1", dst="10.0.0.2") / TCP(flags="S"))
    udp = bytes(IP(src="10.0.0.1", dst="10.0.0.2") / UDP() / b"x")
    frag = bytes(IP(src="10.0.0.1", dst="10.0.0.2", flags="MF") / TCP(flags="A") / (b"y" * 10))
    opts = bytes(IP(src="10.0.0.1", dst="10.0.0.2", options=b"\x01\x01\x01\x00") /
                 TCP(flags="A") / (b"z" * 10))  # fmt: skip
    short_mid = tcp_segments(6, 3, mss=1000, psh_last=False)
    short_mid[1] = tcp_segments(6, 1, mss=500, seq=2000, psh_last=False)[0]
    bufs = offload.coalesce([*run, other, *gap, syn, udp, frag, opts, *short_mid])
    w = offload.WRITE_HEADER
    kinds = [b[1] if not b.startswith(w) else 0 for b in bufs]
    # run -> 1 merged; other alone; gap pair merged; syn/udp/frag/opts alone;
    # short_mid: first + shorter second merged (a shorter segment ends a run), third alone
    assert kinds == [1, 0, 1, 0, 0, 0, 0, 4, 0]
    assert bufs[1] == w + other and bufs[3] == w + syn and bufs[8] == w + short_mid[2]
    assert offload.split(bufs[0]) == [p for p in run]


@pytest.mark.parametrize("v", [4, 6])
@pytest.mark.parametrize("field", ["ack", "window", "ttl", "tsval", "dport", "none"])
def test_coalesce_run_ends_when_a_fixed_header_field_differs(v, field):
    """Within a run only lengths, IPv4 ID, checksums, sequence number and PSH may vary;
    any other header difference starts a new write. The writev buffers (payloads as
    memoryviews) are the joined bytes coalesce() returns."""
    segs = tcp_segments(v, 4, psh_last=False)
    for k in (2, 3):  # the last two segments differ from the first two in ``field``
        pkt = IP(segs[k]) if v == 4 else IPv6(segs[k])
        tcp = pkt[TCP]
        if field == "ack":
            tcp.ack = 56
        elif field == "window":
            tcp.window = 501
        elif field == "ttl":
            if v == 4:
                pkt.ttl = 63
            else:
                pkt.hlim = 63
        elif field == "tsval":
            tcp.options = [("Timestamp", (2, 2))]
        elif field == "dport":
            tcp.dport = 1000
        tcp.chksum = None
        if v == 4:
            pkt.chksum = None
        segs[k] = bytes(pkt)
    iovs = offload.coalesce_iov(segs)
    assert [b"".join(i) for i in iovs] == offload.coalesce(segs)
    if field == "none":
        assert len(iovs) == 1 and offload.split(b"".join(iovs[0])) == segs
    else:
        assert len(iovs) == 2 and offload.split(b"".join(iovs[0])) == segs[:2]
        assert offload.split(b"".join(iovs[1])) == segs[2:]
        assert all(isinstance(b, memoryview) for b in iovs[0][1:])
