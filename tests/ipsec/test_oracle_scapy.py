"""scapy as an independent implementation: our packets decrypt there, its packets here.

Covers every algorithm scapy implements (all of ours except the truncated-ICV GCM
variants, whose tags scapy's AEAD path cannot shorten: those are checked against a raw
``cryptography`` GCM computation in test_esp.py), ESP and AH, transport and tunnel mode,
IPv4 and IPv6, with and without ESN, and ESP-in-UDP.
"""

from __future__ import annotations

import os

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrHopByHop, IPv6ExtHdrRouting
from scapy.layers.ipsec import AH, ESP
from scapy.layers.ipsec import SecurityAssociation as ScapySA
from scapy.packet import Raw

from pyipsec.crypto.esp_algorithms import ALGORITHMS
from pyipsec.ipsec import SecurityAssociation

SCAPY_AUTH = {
    "sha1": "HMAC-SHA1-96",
    "sha256": "SHA2-256-128",
    "sha384": "SHA2-384-192",
    "sha512": "SHA2-512-256",
}


def scapy_names(name: str) -> tuple[str | None, str | None]:
    alg = ALGORITHMS[name]
    if alg.kind == "aead":
        return ("CHACHA20-POLY1305" if name.startswith("chacha") else "AES-GCM"), None
    if alg.kind == "gmac":
        return "AES-NULL-GMAC", None
    if alg.kind == "ah":
        return None, SCAPY_AUTH[name]
    cipher, h = name.split("-")
    crypt = {"null": "NULL", "3des": "3DES"}.get(cipher, "AES-CBC")
    return crypt, SCAPY_AUTH[h]


# every canonical keyword scapy can speak
NAMES = sorted({a.name for a in ALGORITHMS.values() if not (a.kind == "aead" and a.icv_len != 16)})

INNER4 = IP(src="10.0.0.1", dst="10.0.0.2", ttl=33) / TCP(sport=1234, dport=80) / Raw(b"A" * 61)
INNER6 = (
    IPv6(src="fd00::1", dst="fd00::2", hlim=9)
    / IPv6ExtHdrHopByHop()
    / UDP(sport=999, dport=53)
    / Raw(b"B" * 45)
)


def make(name: str, mode: str, family: int, esn: bool, encap: bool):
    alg = ALGORITHMS[name]
    key = os.urandom(alg.key_len)
    enc_len = alg.encr_key_len + alg.salt_len
    kw = {}
    tunnel_header = None
    if mode == "tunnel":
        if family == 4:
            kw = {"tunnel_src": "192.0.2.1", "tunnel_dst": "192.0.2.2"}
            tunnel_header = IP(src="192.0.2.1", dst="192.0.2.2")
        else:
            kw = {"tunnel_src": "2001:db8::1", "tunnel_dst": "2001:db8::2"}
            tunnel_header = IPv6(src="2001:db8::1", dst="2001:db8::2")
    ours = SecurityAssociation(
        0x1234,
        protocol=alg.protocol,
        mode=mode,
        algorithm=name,
        key=key,
        esn=esn,
        encap="udp" if encap else None,
        **kw,
    )
    crypt, auth = scapy_names(name)
    skw = {}
    if alg.protocol == "esp":
        skw.update(crypt_algo=crypt, crypt_key=key[:enc_len])
        if auth:
            skw.update(auth_algo=auth, auth_key=key[enc_len:])
    else:
        skw.update(auth_algo=auth, auth_key=key)
    theirs = ScapySA(
        ESP if alg.protocol == "esp" else AH,
        spi=0x1234,
        tunnel_header=tunnel_header,
        nat_t_header=UDP(sport=4500, dport=4500) if encap else None,
        esn_en=esn,
        **skw,
    )
    return ours, theirs


CASES = [
    (name, mode, fam, esn)
    for name in NAMES
    for mode in ("transport", "tunnel")
    for fam in (4, 6)
    for esn in (False, True)
]


@pytest.mark.parametrize("name,mode,family,esn", CASES)
def test_interop_with_scapy(name: str, mode: str, family: int, esn: bool) -> None:
    ours, theirs = make(name, mode, family, esn, encap=False)
    inner = INNER4 if family == 4 else INNER6
    raw = bytes(inner)
    hi = 7 if esn else 0
    if esn:
        ours._seq = (hi << 32) | 41  # start near a high sequence number
        ours._replay.update((hi << 32) | 1)
    for _ in range(2):
        # ours -> scapy
        out = ours.encapsulate(raw)
        pkt = (IP if family == 4 else IPv6)(out)
        back = theirs.decrypt(pkt, esn_en=esn, esn=hi)
        assert bytes(back) == raw
        # scapy -> ours
        seq = (ours._seq & 0xFFFFFFFF) + 100
        enc = theirs.encrypt((IP if family == 4 else IPv6)(raw), seq_num=seq, esn_en=esn, esn=hi)
        assert ours.decapsulate(bytes(enc)) == raw
    st = ours.statistics()
    assert st.packets_in == 2 and st.packets_out == 2 and st.errors == 0


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("mode", ["transport", "tunnel"])
@pytest.mark.parametrize("name", ["aes128gcm16", "aes256-sha256", "chacha20poly1305"])
def test_natt_interop_with_scapy(name: str, mode: str, family: int) -> None:
    ours, theirs = make(name, mode, family, False, encap=True)
    # no extension header here: scapy 2.6 drops IPv6 extension headers when it removes
    # the NAT-T UDP header in transport mode
    raw = bytes(INNER4 if family == 4 else IPv6(src="fd00::1", dst="fd00::2") / INNER6[UDP])
    out = ours.encapsulate(raw)
    pkt = (IP if family == 4 else IPv6)(out)
    assert pkt[UDP].dport == 4500 and pkt[UDP].sport == 4500
    if family == 6:  # the UDP checksum is computed and correct over IPv6
        ref = pkt.copy()
        del ref[UDP].chksum
        assert (IPv6(bytes(ref)))[UDP].chksum == pkt[UDP].chksum
    else:
        assert pkt[UDP].chksum == 0
    assert bytes(theirs.decrypt(pkt)) == raw
    enc = theirs.encrypt((IP if family == 4 else IPv6)(raw), seq_num=5)
    assert ours.decapsulate(bytes(enc)) == raw


def route_hop(raw: bytes) -> bytes:
    """What the router at the routing header's next address does: swap it into the
    destination and decrement segments left (RFC 8200 section 4.4, one segment)."""
    p = IPv6(raw)
    rh = p[IPv6ExtHdrRouting]
    nxt = rh.addresses[0]
    rh.addresses = [p.dst]
    rh.segleft = 0
    p.dst = nxt
    p.hlim -= 1
    return bytes(p)


def test_ipv6_transport_with_routing_and_dest_options_interop() -> None:
    # segments left 1: the AH sender must sign the packet as the final destination will
    # see it (RFC 4302 section 3.3.3.1.2), after the routing hop below rewrote it
    inner = (
        IPv6(src="fd00::1", dst="fd00::7")
        / IPv6ExtHdrHopByHop()
        / IPv6ExtHdrRouting(addresses=["fd00::2"], segleft=1)
        / IPv6ExtHdrDestOpt()
        / TCP(sport=1, dport=2)
        / Raw(b"payload")
    )
    raw = bytes(inner)
    for name in ("aes128gcm16", "sha256"):
        ours, theirs = make(name, "transport", 6, False, False)
        out = ours.encapsulate(raw)
        p = IPv6(out)
        # ESP/AH sits after the routing header and before the destination options
        assert p[IPv6ExtHdrRouting].nh == (50 if name.startswith("aes") else 51)
        assert bytes(theirs.decrypt(IPv6(route_hop(out)))) == route_hop(raw)
        enc = bytes(theirs.encrypt(IPv6(raw), seq_num=9))
        assert ours.decapsulate(route_hop(enc)) == route_hop(raw)
