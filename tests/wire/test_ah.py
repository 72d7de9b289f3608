"""AH codec and mutable-field zeroing (RFC 4302 sections 2 and 3.3.3.1)."""

from __future__ import annotations

import pytest
from scapy.layers.inet import IP, UDP, IPOption_Router_Alert, IPOption_RR
from scapy.layers.inet6 import HBHOptUnknown, IPv6, IPv6ExtHdrHopByHop, IPv6ExtHdrRouting

from pyipsec.errors import MalformedPacket
from pyipsec.wire.ah import (
    AhHeader,
    ah_length,
    pull_ah_header,
    push_ah_header,
    zero_ipv4_mutable,
    zero_ipv6_mutable,
)


def test_header_round_trip_and_lengths() -> None:
    h = AhHeader(17, 0x1234, 9, bytes(range(16)))
    raw = push_ah_header(h)
    assert raw[1] == 28 // 4 - 2 and pull_ah_header(raw) == h
    assert (ah_length(12, False), ah_length(16, False), ah_length(16, True)) == (24, 28, 32)
    with pytest.raises(MalformedPacket):
        pull_ah_header(raw[:20])
    with pytest.raises(MalformedPacket):
        push_ah_header(AhHeader(17, 1, 1, b"abc"))


def test_ipv4_zeroing() -> None:
    p = (
        IP(
            src="1.2.3.4",
            dst="5.6.7.8",
            tos=0xB8,
            ttl=9,
            flags="DF",
            frag=0,
            options=[IPOption_Router_Alert(), IPOption_RR(routers=["9.9.9.9"])],
        )
        / UDP()
    )
    raw = bytes(p)
    hdr = raw[: (raw[0] & 15) * 4]
    z = zero_ipv4_mutable(hdr)
    assert z[1] == 0 and z[6:9] == b"\x00\x00\x00" and z[10:12] == b"\x00\x00"
    assert z[12:20] == hdr[12:20] and z[9] == hdr[9] and z[2:4] == hdr[2:4]
    assert z[20:24] == hdr[20:24]  # router alert: immutable
    assert z[24:31] == bytes(7)  # record route: zeroed whole
    with pytest.raises(MalformedPacket):
        zero_ipv4_mutable(hdr[:20] + b"\x07\x09\x04")  # option longer than the header


def test_ipv6_zeroing_options_and_routing() -> None:
    p = (
        IPv6(src="fd00::1", dst="fd00::5", tc=7, fl=99, hlim=3)
        / IPv6ExtHdrHopByHop(
            options=[
                HBHOptUnknown(otype=0x3E, optdata=b"\xaa\xbb"),
                HBHOptUnknown(otype=0x1E, optdata=b"\xcc"),
            ]
        )
        / IPv6ExtHdrRouting(addresses=["fd00::7", "fd00::9"], segleft=2)
        / UDP()
    )
    raw = bytes(p)
    rh = 40 + (raw[41] + 1) * 8  # routing header offset
    prefix = raw[: rh + (raw[rh + 1] + 1) * 8]
    z = zero_ipv6_mutable(prefix, sending=False)
    assert z[0] == 0x60 and z[1:4] == b"\x00\x00\x00" and z[7] == 0
    assert b"\xaa\xbb" not in z and b"\xcc" in z
    assert z[24:40] == raw[24:40]  # receiving: taken as it is
    s = zero_ipv6_mutable(prefix, sending=True)
    # sending: as the final destination will see it
    assert s[24:40] == bytes(IPv6(dst="fd00::9"))[24:40]
    assert s[rh + 3] == 0  # segments left
    assert s[rh + 8 : rh + 24] == raw[24:40]  # the original destination comes first
    assert s[rh + 24 : rh + 40] == raw[rh + 8 : rh + 24]
