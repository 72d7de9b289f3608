"""AH (RFC 4302): the ICV survives what routers change and catches everything else."""

from __future__ import annotations

import os

import pytest
from scapy.layers.inet import IP, UDP, IPOption_Router_Alert, IPOption_RR
from scapy.layers.inet6 import HBHOptUnknown, IPv6, IPv6ExtHdrHopByHop
from scapy.layers.ipsec import AH
from scapy.layers.ipsec import SecurityAssociation as ScapySA

from pyipsec.errors import IntegrityError, MalformedPacket
from pyipsec.ipsec import SecurityAssociation


def pair(name: str = "sha256", **kw):
    key = os.urandom({"sha1": 20, "sha256": 32, "sha384": 48, "sha512": 64}[name])
    base = dict(protocol="ah", algorithm=name, key=key)
    base.update(kw)
    return (SecurityAssociation(0x3333, **base), SecurityAssociation(0x3333, **base), key)


def ipv4_with_options() -> bytes:
    return bytes(
        IP(
            src="10.0.0.1",
            dst="10.0.0.2",
            ttl=20,
            tos=0x10,
            options=[IPOption_Router_Alert(), IPOption_RR(routers=["0.0.0.0", "0.0.0.0"])],
        )
        / UDP(sport=1, dport=2)
        / b"options test"
    )


def router_hop_v4(raw: bytes) -> bytes:
    """What routers may do: TTL, TOS/ECN, DF, record their address, fix the checksum."""
    p = IP(raw)
    p.ttl -= 3
    p.tos = 0x13
    p.flags = "DF"
    for o in p.options:
        if isinstance(o, IPOption_RR):
            o.routers = ["192.0.2.99", "0.0.0.0"]
            o.pointer = 8
    del p.chksum
    return bytes(p)


@pytest.mark.parametrize("mode", ["transport", "tunnel"])
def test_ipv4_mutable_fields_and_options(mode: str) -> None:
    kw = dict(tunnel_src="192.0.2.1", tunnel_dst="192.0.2.2") if mode == "tunnel" else {}
    tx, rx, _ = pair(mode=mode, **kw)
    raw = ipv4_with_options()
    out = tx.encapsulate(raw)
    if mode == "transport":
        assert IP(out).options[0].option == 20  # router alert kept in front of AH
    moved = router_hop_v4(out)
    got = rx.decapsulate(moved)
    if mode == "tunnel":
        assert got == raw
    else:
        assert IP(got)[UDP].load == b"options test" and IP(got).ttl == 17
    # an immutable option (router alert value) changed en route is caught
    if mode == "transport":
        p = IP(tx.encapsulate(raw))
        p.options[0].alert = 1
        del p.chksum
        with pytest.raises(IntegrityError):
            rx.decapsulate(bytes(p))


def test_ipv4_options_interop_with_scapy() -> None:
    tx, rx, key = pair("sha256")
    theirs = ScapySA(AH, spi=0x3333, auth_algo="SHA2-256-128", auth_key=key)
    raw = ipv4_with_options()
    assert bytes(theirs.decrypt(IP(router_hop_v4(tx.encapsulate(raw))))) != b""
    enc = theirs.encrypt(IP(raw), seq_num=50)
    assert IP(rx.decapsulate(router_hop_v4(bytes(enc))))[UDP].load == b"options test"


def test_ipv6_mutable_option_data_and_header_fields() -> None:
    tx, rx, _ = pair("sha512")
    mutable = HBHOptUnknown(otype=0x3E, optdata=b"\x01\x02\x03\x04")  # 0x20 bit: may change
    fixed = HBHOptUnknown(otype=0x1E, optdata=b"\x05\x06")
    raw = bytes(
        IPv6(src="fd00::1", dst="fd00::2", tc=4, fl=77, hlim=30)
        / IPv6ExtHdrHopByHop(options=[mutable, fixed])
        / UDP(sport=1, dport=2)
        / b"v6"
    )
    out = tx.encapsulate(raw)
    p = IPv6(out)
    assert p[IPv6ExtHdrHopByHop].nh == 51
    p.hlim, p.tc, p.fl = 1, 9, 12345
    p[IPv6ExtHdrHopByHop].options[0].optdata = b"\x09\x09\x09\x09"
    got = IPv6(rx.decapsulate(bytes(p)))
    assert got[UDP].load == b"v6" and got[IPv6ExtHdrHopByHop].nh == 17
    q = IPv6(tx.encapsulate(raw))
    q[IPv6ExtHdrHopByHop].options[1].optdata = b"\x07\x06"
    with pytest.raises(IntegrityError):
        rx.decapsulate(bytes(q))


def test_ah_icv_padding_and_length_checks() -> None:
    for name, v4_len, v6_len in (
        ("sha1", 24, 24),
        ("sha256", 28, 32),
        ("sha384", 36, 40),
        ("sha512", 44, 48),
    ):
        tx, rx, _ = pair(name)
        raw4 = bytes(IP(src="10.0.0.1", dst="10.0.0.2") / UDP() / b"x")
        raw6 = bytes(IPv6(src="fd00::1", dst="fd00::2") / UDP() / b"x")
        assert len(tx.encapsulate(raw4)) - len(raw4) == v4_len
        assert len(tx.encapsulate(raw6)) - len(raw6) == v6_len  # 64-bit aligned for IPv6
    tx, rx, _ = pair("sha256")
    out = bytearray(tx.encapsulate(raw4))
    out[21] += 1  # AH payload length no longer fits the transform
    with pytest.raises(MalformedPacket):
        rx.decapsulate(bytes(out))
    assert rx.statistics().malformed_packets == 1


def test_ah_tunnel_ipv6_outer_ipv4_inner_and_statistics() -> None:
    tx, rx, _ = pair("sha384", mode="tunnel", tunnel_src="2001:db8::1", tunnel_dst="2001:db8::2")
    raw = bytes(IP(src="10.0.0.1", dst="10.0.0.2") / UDP() / b"inner")
    out = tx.encapsulate(raw)
    assert out[6] == 51 and raw in out  # AH authenticates, does not encrypt
    assert rx.decapsulate(out) == raw
    s = rx.statistics()
    assert s.authenticated_bytes_in == len(raw) and s.confidential_bytes_in == 0
    assert s.protocol == "ah" and not s.weak and pair("sha1")[0].weak
