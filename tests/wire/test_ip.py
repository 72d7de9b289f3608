"""Tests of pyipsec.wire.ip: checksums, header codecs, extension headers, parse_flow."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import (
    ICMPv6EchoRequest,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.packet import Raw

from pyipsec.errors import MalformedPacket
from pyipsec.wire.flow import Flow
from pyipsec.wire.ip import (
    Ipv4Header,
    Ipv6Header,
    check_ip_packet,
    internet_checksum,
    ipv4_header_checksum,
    ipv6_transport_split,
    ones_complement_sum,
    parse_flow,
    pseudo_header_sum,
    pull_ipv4,
    pull_ipv6,
    push_ipv4,
    push_ipv6,
)


def naive_sum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    s = 0
    for (w,) in struct.iter_unpack("!H", data):
        s += w
        s = (s & 0xFFFF) + (s >> 16)
    return s


@given(st.binary(max_size=300))
def test_ones_complement_sum_matches_word_sum(data: bytes) -> None:
    got = ones_complement_sum(data)
    want = naive_sum(data)
    # 0x0000 and 0xFFFF are both "zero" in ones' complement; the fast sum only yields
    # 0 for all-zero data
    assert got == want or (want == 0 and got == 0xFFFF) or (want == 0xFFFF and got == 0)
    assert (got == 0) == (not any(data))


def test_ipv4_checksum_matches_scapy() -> None:
    raw = bytes(IP(src="10.1.2.3", dst="192.168.7.9", ttl=17, id=999) / TCP())
    hdr = bytearray(raw[:20])
    want = struct.unpack("!H", hdr[10:12])[0]
    hdr[10:12] = b"\0\0"
    assert ipv4_header_checksum(hdr) == want
    assert internet_checksum(bytes(hdr)) == want


def test_udp_checksum_via_pseudo_header_matches_scapy() -> None:
    for pkt in (
        IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=5, dport=7) / Raw(b"abcde"),
        IPv6(src="fd00::1", dst="fd00::2") / UDP(sport=5, dport=7) / Raw(b"abcdef"),
    ):
        raw = bytes(pkt)
        off = 20 if raw[0] >> 4 == 4 else 40
        src, dst = (raw[12:16], raw[16:20]) if off == 20 else (raw[8:24], raw[24:40])
        seg = bytearray(raw[off:])
        want = struct.unpack("!H", seg[6:8])[0]
        seg[6:8] = b"\0\0"
        assert internet_checksum(seg, pseudo_header_sum(src, dst, 17, len(seg))) == want


def test_ipv4_pull_push_round_trip() -> None:
    raw = bytes(IP(src="1.2.3.4", dst="5.6.7.8", tos=0x28, ttl=9, id=77, flags="DF") / UDP())
    h = pull_ipv4(raw)
    assert h.src == bytes([1, 2, 3, 4]) and h.protocol == 17 and h.ttl == 9 and h.tos == 0x28
    assert push_ipv4(h) == raw[:20]
    h2 = Ipv4Header(src=b"\x01\x01\x01\x01", dst=b"\x02\x02\x02\x02", protocol=6)
    assert bytes(IP(push_ipv4(h2, payload_length=0)))[:20] == push_ipv4(h2, 0)
    with pytest.raises(MalformedPacket):
        pull_ipv4(raw[:19])
    with pytest.raises(MalformedPacket):
        pull_ipv4(raw[:-1])  # total length exceeds the buffer


def test_ipv6_pull_push_round_trip() -> None:
    raw = bytes(IPv6(src="fd00::1", dst="fd00::2", tc=5, fl=0x12345, hlim=3) / UDP())
    h = pull_ipv6(raw)
    assert (h.traffic_class, h.flow_label, h.hop_limit, h.next_header) == (5, 0x12345, 3, 17)
    assert push_ipv6(h) == raw[:40]
    assert push_ipv6(Ipv6Header(h.src, h.dst, 6), 0)[6] == 6
    with pytest.raises(MalformedPacket):
        pull_ipv6(raw[:39])


def test_parse_flow_ipv4_tcp_udp_icmp() -> None:
    f = parse_flow(bytes(IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=1234, dport=80)))
    assert f == Flow(4, 0x0A000001, 0x0A000002, 6, 1234, 80)
    f = parse_flow(bytes(IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=53, dport=999)))
    assert (f.protocol, f.sport, f.dport) == (17, 53, 999)
    f = parse_flow(bytes(IP(src="10.0.0.1", dst="10.0.0.2") / ICMP(type=8, code=3)))
    assert (f.protocol, f.sport, f.dport) == (1, 8, 3)
    # non-first fragment: no ports (RFC 4301 OPAQUE)
    f = parse_flow(bytes(IP(src="10.0.0.1", dst="10.0.0.2", frag=10, proto=6) / Raw(b"x" * 8)))
    assert (f.protocol, f.sport, f.dport) == (6, 0, 0)


def test_parse_flow_ipv6_walks_extension_headers() -> None:
    pkt = (
        IPv6(src="fd00::1", dst="fd00::2")
        / IPv6ExtHdrHopByHop()
        / IPv6ExtHdrRouting(addresses=["fd00::9"], segleft=0)
        / IPv6ExtHdrDestOpt()
        / IPv6ExtHdrFragment(offset=0, m=1)
        / TCP(sport=4000, dport=443)
    )
    f = parse_flow(bytes(pkt))
    assert (f.version, f.protocol, f.sport, f.dport) == (6, 6, 4000, 443)
    assert f.src == 0xFD00 << 112 | 1
    f = parse_flow(bytes(IPv6(src="fd00::1", dst="fd00::2") / ICMPv6EchoRequest()))
    assert (f.protocol, f.sport, f.dport) == (58, 128, 0)
    frag = IPv6(src="fd00::1", dst="fd00::2") / IPv6ExtHdrFragment(offset=3, nh=17) / Raw(b"x" * 8)
    assert parse_flow(bytes(frag)) == Flow(6, f.src, f.dst, 17, 0, 0)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x45" * 10,
        b"\x75" + bytes(30),
        bytes(IP() / TCP())[:22],  # TCP header truncated
        bytes(IPv6() / IPv6ExtHdrHopByHop() / TCP())[:44],  # extension header truncated
    ],
)
def test_parse_flow_malformed(raw: bytes) -> None:
    with pytest.raises(MalformedPacket):
        parse_flow(raw)


def test_ipv6_transport_split_follows_linux_placement() -> None:
    base = IPv6(src="fd00::1", dst="fd00::2")
    raw = bytes(base / TCP())
    assert ipv6_transport_split(raw) == (6, 40)
    raw = bytes(base / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt() / TCP())
    assert ipv6_transport_split(raw) == (48, 56)  # dest opts without routing stay in front
    raw = bytes(
        base
        / IPv6ExtHdrHopByHop()
        / IPv6ExtHdrRouting(addresses=["fd00::3"])
        / IPv6ExtHdrDestOpt()
        / TCP()
    )
    nh_off, end = ipv6_transport_split(raw)
    assert end == 40 + 8 + 24 and raw[end] == 6 and raw[nh_off] == 60  # dest opts go inside
    raw = bytes(base / IPv6ExtHdrFragment(m=1) / UDP())
    assert ipv6_transport_split(raw) == (40, 48)


def test_check_ip_packet() -> None:
    assert check_ip_packet(bytes(IP() / UDP())) == 4
    assert check_ip_packet(bytes(IPv6() / UDP())) == 6
    with pytest.raises(MalformedPacket):
        check_ip_packet(bytes(IP() / UDP()) + b"x")
    with pytest.raises(MalformedPacket):
        check_ip_packet(bytes(IPv6() / UDP())[:-1])


@given(st.binary(max_size=120))
def test_fuzz_parse_flow(data: bytes) -> None:
    try:
        f = parse_flow(data)
    except MalformedPacket:
        return
    assert f.version in (4, 6) and 0 <= f.protocol <= 255


def test_parse_flow_builds_ordinary_frozen_flows() -> None:
    f = parse_flow(bytes(IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=7, dport=8)))
    g = Flow(4, 0x0A000001, 0x0A000002, 6, 7, 8)
    assert f == g and hash(f) == hash(g) and {g: 1}[f] == 1 and type(f) is Flow
    with pytest.raises(AttributeError):
        f.sport = 9  # type: ignore[misc]
    assert f.reversed() == Flow(4, 0x0A000002, 0x0A000001, 6, 8, 7)
