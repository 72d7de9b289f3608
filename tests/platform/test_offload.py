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
@pytest.mark.parametrize("size", [1, 1000, 5000, 2800])
def test_tso_split_matches_per_segment_packets(v, size):
    payload = bytes((i * 7) & 0xFF for i in range(size))
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
