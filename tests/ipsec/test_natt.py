"""NAT traversal (RFC 3948): ESP in UDP, the non-ESP marker, NAT keepalives, and the
transport-mode checksum fix after NAT."""

from __future__ import annotations

import os

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6

from pyipsec.errors import MalformedPacket
from pyipsec.ipsec import NatKeepalive, NonEspPacket, SecurityAssociation
from pyipsec.ipsec.natt import check_esp_payload, classify, keepalive, udp_header

KEY = os.urandom(20)


def sa(**kw) -> SecurityAssociation:
    base = dict(algorithm="aes128gcm16", key=KEY, encap="udp")
    base.update(kw)
    return SecurityAssociation(0x5555, **base)


def test_classify_and_keepalive() -> None:
    assert keepalive() == b"\xff"
    assert classify(b"\xff") == "keepalive"
    assert classify(b"\x00\x00\x00\x00" + b"ike message") == "ike"
    assert classify(b"\x00\x00\x55\x55\x00\x00\x00\x01") == "esp"
    with pytest.raises(MalformedPacket):
        classify(b"\x01\x02")
    with pytest.raises(NatKeepalive):
        check_esp_payload(b"\xff")
    with pytest.raises(NonEspPacket):
        check_esp_payload(bytes(4) + b"x" * 30)


def test_keepalive_and_ike_on_port_4500_are_counted_not_processed() -> None:
    rx = sa()
    ka = bytes(IP(src="198.51.100.1", dst="192.0.2.2") / UDP(sport=4500, dport=4500) / b"\xff")
    ike = bytes(
        IP(src="198.51.100.1", dst="192.0.2.2")
        / UDP(sport=4500, dport=4500)
        / (bytes(4) + os.urandom(40))
    )
    with pytest.raises(NatKeepalive):
        rx.decapsulate(ka)
    with pytest.raises(NonEspPacket):
        rx.decapsulate(ike)
    with pytest.raises(NatKeepalive):
        rx.decapsulate_esp(b"\xff", "198.51.100.1", "192.0.2.2")
    s = rx.statistics()
    assert s.nat_keepalive_packets == 2 and s.non_esp_packets == 1
    assert s.packets_in == 0 and s.replay_top == 0


@pytest.mark.parametrize("family", [4, 6])
def test_udp_header_and_ports(family: int) -> None:
    kw = (
        dict(tunnel_src="192.0.2.1", tunnel_dst="192.0.2.2")
        if family == 4
        else dict(tunnel_src="2001:db8::1", tunnel_dst="2001:db8::2")
    )
    tx = sa(mode="tunnel", encap_sport=4501, encap_dport=31000, **kw)
    rx = sa(mode="tunnel", **kw)
    inner = bytes(IP(src="10.0.0.1", dst="10.0.0.2") / UDP() / b"hello")
    out = tx.encapsulate(inner)
    p = (IP if family == 4 else IPv6)(out)
    assert (p[UDP].sport, p[UDP].dport) == (4501, 31000)
    assert p[UDP].len == len(out) - (20 if family == 4 else 40)
    if family == 6:
        ref = p.copy()
        del ref[UDP].chksum
        assert IPv6(bytes(ref))[UDP].chksum == p[UDP].chksum != 0
    else:
        assert p[UDP].chksum == 0  # RFC 3948 section 2.1 for IPv4
    assert rx.decapsulate(out) == inner
    # a UDP-encapsulating receiver accepts plain ESP as well (RFC 3948 section 3.2)
    plain = sa(mode="tunnel", encap=None, **kw)
    assert sa(mode="tunnel", **kw).decapsulate(plain.encapsulate(inner)) == inner


def test_udp_header_checksum_ipv6_function() -> None:
    src, dst = bytes(15) + b"\x01", bytes(15) + b"\x02"
    payload = os.urandom(33)
    h = udp_header(4500, 4500, payload, src, dst)
    ref = IPv6(src="::1", dst="::2") / UDP(sport=4500, dport=4500) / payload
    assert h == bytes(ref)[40:48]
    assert udp_header(4500, 4500, payload)[6:] == b"\x00\x00"


@pytest.mark.parametrize("family", [4, 6])
def test_transport_mode_behind_nat_fixes_tcp_checksum(family: int) -> None:
    """The sender's TCP checksum used its private address; after NAT the receiver
    rebuilds the packet with the public address and recomputes the checksum
    (RFC 3948 section 3.1.2)."""
    if family == 4:
        inner = IP(src="10.0.0.1", dst="192.0.2.2") / TCP(sport=1000, dport=5432) / (b"q" * 30)
        public, local = "198.51.100.7", "192.0.2.2"
    else:
        inner = IPv6(src="fd00::1", dst="2001:db8::2") / TCP(sport=1000, dport=5432) / (b"q" * 30)
        public, local = "2001:db8:1::7", "2001:db8::2"
    tx, rx = sa(mode="transport"), sa(mode="transport")
    msg = tx.encapsulate_esp(bytes(inner))
    out = rx.decapsulate_esp(msg, public, local)
    p = (IP if family == 4 else IPv6)(out)
    assert p.src == public and p[TCP].dport == 5432 and bytes(p[TCP].payload) == b"q" * 30
    ref = p.copy()
    del ref[TCP].chksum
    assert (IP if family == 4 else IPv6)(bytes(ref))[TCP].chksum == p[TCP].chksum


def test_whole_packet_transport_natt_round_trip() -> None:
    tx, rx = sa(mode="transport"), sa(mode="transport")
    inner = bytes(IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=5, dport=6) / b"abc")
    out = tx.encapsulate(inner)
    assert IP(out)[UDP].dport == 4500
    back = IP(rx.decapsulate(out))
    assert back[UDP].dport == 6 and bytes(back[UDP].payload) == b"abc"
