"""IPv6 reassembly and fragmentation around transport mode, with scapy as the oracle."""

from __future__ import annotations

import random

import pytest
from scapy.layers.inet import UDP
from scapy.layers.inet6 import (
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.layers.inet6 import (
    fragment6 as scapy_fragment6,
)
from scapy.packet import Raw

from pyipsec.dataplane.fragments import (
    REASSEMBLY_TIMEOUT,
    Reassembler,
    fragment4,
    fragment6,
    fragment_header_offset,
)
from pyipsec.wire.ip import ipv4_header_checksum

A, B = "fd99:1::1", "fd99:1::2"


def datagram(size: int, *ext) -> bytes:
    pkt = IPv6(src=A, dst=B)
    for e in ext:
        pkt = pkt / e
    body = (bytes(range(256)) * (size // 256 + 1))[:size]
    return bytes(pkt / UDP(sport=1000, dport=2000) / Raw(load=body))


def scapy_frags(size: int, mtu: int, ident: int = 0x1234, pre=(), post=()) -> list[bytes]:
    """Fragments of ``datagram(size, *pre, *post)`` as the Linux kernel hands them over:
    the fragment header after ``pre`` (hop-by-hop / routing), scapy's fragment6."""
    pkt = IPv6(src=A, dst=B)
    for e in (*pre, IPv6ExtHdrFragment(id=ident), *post):
        pkt = pkt / e
    body = (bytes(range(256)) * (size // 256 + 1))[:size]
    pkt = pkt / UDP(sport=1000, dport=2000) / Raw(load=body)
    return [bytes(f) for f in scapy_fragment6(pkt, mtu)]


@pytest.mark.parametrize(
    "pre,post",
    [((), ()), ((), (IPv6ExtHdrDestOpt(),)), ((IPv6ExtHdrHopByHop(),), ()),
     ((IPv6ExtHdrHopByHop(),), (IPv6ExtHdrDestOpt(),))],
    ids=["plain", "dstopts", "hopopts", "hop+dst"],
)  # fmt: skip
def test_reassembles_scapy_fragments_in_any_order(pre, post):
    pkt = datagram(4000, *pre, *post)
    frags = scapy_frags(4000, 1400, pre=pre, post=post)
    assert len(frags) == 3 and all(fragment_header_offset(f) > 0 for f in frags)
    for order in ([0, 1, 2], [2, 0, 1], [1, 2, 0]):
        r = Reassembler()
        got = [r.add(frags[i], 0.0) for i in order]
        assert got[:2] == [None, None] and got[2] == pkt
        st = r.statistics()
        assert (st.fragments, st.reassembled, st.pending, st.dropped) == (3, 1, 0, 0)


def test_fragment6_matches_what_scapy_reassembles():
    from scapy.layers.inet6 import defragment6

    for ext in ((), (IPv6ExtHdrHopByHop(),), (IPv6ExtHdrRouting(addresses=[]),
                                               IPv6ExtHdrDestOpt())):  # fmt: skip
        pkt = datagram(5000, *ext)
        frags = fragment6(pkt, 1280, 0xABCD)
        assert all(len(f) <= 1280 for f in frags) and len(frags) == 5
        parsed = [IPv6(f) for f in frags]
        assert all(p[IPv6ExtHdrFragment].id == 0xABCD for p in parsed)
        # the extension headers stay in front of the fragment header in every fragment
        for p in parsed:
            layer = p.payload
            for e in ext:
                assert type(layer) is type(e)
                layer = layer.payload
            assert isinstance(layer, IPv6ExtHdrFragment) and layer.nh == 17
        whole = defragment6(parsed)
        assert bytes(whole[UDP]) == bytes(IPv6(pkt)[UDP])
        # and our own reassembler gives back the exact packet
        r = Reassembler()
        out = [r.add(f, 1.0) for f in reversed(frags)]
        assert out[-1] == pkt
    small = datagram(100)
    assert fragment6(small, 1280, 1) == [small]


def test_overlap_timeout_table_limit_and_malformed_are_dropped_and_counted():
    frags = scapy_frags(3000, 1400)
    r = Reassembler()
    assert r.add(frags[0], 0.0) is None
    # an overlapping copy of the first fragment (RFC 5722): the datagram is dropped
    assert r.add(frags[0], 0.0) is None
    assert r.statistics().dropped == 1 and r.statistics().pending == 0
    # timeout
    assert r.add(frags[0], 0.0) is None
    assert r.add(frags[1], REASSEMBLY_TIMEOUT + 1) is None  # the first is gone by then
    assert r.statistics().dropped == 2
    # table limit: the oldest partial datagram makes room
    r = Reassembler(max_datagrams=2)
    for ident in (1, 2, 3):
        r.add(scapy_frags(3000, 1400, ident)[0], 0.0)
    st = r.statistics()
    assert st.pending == 2 and st.dropped == 1
    # malformed: cut, or a non-last fragment whose length is not a multiple of 8
    r = Reassembler()
    assert r.add(frags[0][:60], 0.0) is None
    bad = bytearray(frags[0][:-3])
    bad[4:6] = (len(bad) - 40).to_bytes(2, "big")
    assert r.add(bytes(bad), 0.0) is None
    assert r.statistics().malformed == 2 and r.statistics().pending == 0


def test_random_sizes_round_trip():
    rnd = random.Random(7)
    r = Reassembler()
    for ident in range(40):
        pkt = datagram(rnd.randrange(1600, 9000))
        frags = fragment6(pkt, rnd.choice([1280, 1400, 1500]), ident)
        rnd.shuffle(frags)
        out = [r.add(f, float(ident)) for f in frags]
        assert out[-1] == pkt and not any(out[:-1])
    assert r.statistics().pending == 0


def test_ipv4_reassembly_and_fragmentation_with_scapy():
    from scapy.layers.inet import IP, IPOption_Router_Alert, defragment, fragment

    body = (bytes(range(256)) * 20)[:4000]
    pkt = IP(src="10.99.1.1", dst="10.99.1.2", id=77) / UDP(sport=1, dport=2) / Raw(body)
    whole = bytes(IP(bytes(pkt)))
    frags = [bytes(f) for f in fragment(IP(whole), 1400)]
    assert len(frags) == 3
    r = Reassembler()
    out = [r.add(f, 0.0) for f in (frags[2], frags[0], frags[1])]
    assert out[:2] == [None, None] and out[2] == whole
    # ours, read back by scapy and by our reassembler
    mine = fragment4(whole, 1280)
    assert all(len(f) <= 1280 for f in mine) and len(mine) == 4
    assert bytes(defragment([IP(f) for f in mine])[0]) == whole
    assert [r.add(f, 1.0) for f in mine][-1] == whole
    # options: the copied router alert goes into every fragment, the header stays valid
    opt = bytes(IP(src="10.99.1.1", dst="10.99.1.2", id=5, options=[IPOption_Router_Alert()])
                / UDP(sport=1, dport=2) / Raw(body))  # fmt: skip
    parts = fragment4(opt, 1500)
    assert [(p[0] & 15) * 4 for p in parts] == [24, 24, 24]
    for p in parts:
        h = bytearray(p[:24])
        stored, h[10:12] = bytes(h[10:12]), b"\0\0"
        assert ipv4_header_checksum(h).to_bytes(2, "big") == stored
        assert p[20:24] == opt[20:24]  # the router alert (copied flag) in every fragment
    assert r.add(parts[0], 2.0) is None and r.add(parts[2], 2.0) is None
    assert r.add(parts[1], 2.0) == opt
    with pytest.raises(ValueError):
        fragment4(bytes(IP(whole, flags="DF")), 1280)
