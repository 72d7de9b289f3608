"""Tests of the traffic selector payloads (RFC 7296 3.13)."""

from __future__ import annotations

import ipaddress

import pytest

from pyipsec.errors import ProtocolError
from pyipsec.wire.iana import NotifyType, PayloadType, TsType
from pyipsec.wire.ike.ts import TrafficSelector, TsPayload, pull_ts, push_ts

# RFC 7296 3.13 / 3.13.1 by hand: one IPv4 range, TCP (6), ports 0-65535, 10.0.0.0-10.0.0.255.
KNOWN_V4 = bytes.fromhex("01000000070600100000ffff0a0000000a0000ff")


def test_known_ipv4():
    p = pull_ts(KNOWN_V4, True)
    ts = p.traffic_selectors[0]
    assert ts == TrafficSelector.from_network("10.0.0.0/24", ip_protocol=6)
    assert ts.start_ip == ipaddress.ip_address("10.0.0.0")
    assert ts.end_ip == ipaddress.ip_address("10.0.0.255")
    assert ts.networks() == [ipaddress.ip_network("10.0.0.0/24")]
    assert p.payload_type == PayloadType.TSi
    assert push_ts(p) == KNOWN_V4


def test_ipv6_and_mixed_round_trip():
    p = TsPayload(
        [
            TrafficSelector.from_network("2001:db8::/64", 17, 500, 500),
            TrafficSelector.from_range("192.0.2.1", "192.0.2.9"),
            TrafficSelector(TsType.IPV4_ADDR_RANGE, 0, 65535, 0, bytes(4), bytes(4)),  # OPAQUE
        ],
        initiator=False,
    )
    raw = push_ts(p)
    assert len(raw) == 4 + 40 + 16 + 16
    assert pull_ts(raw, False) == p
    assert p.payload_type == PayloadType.TSr
    assert p.traffic_selectors[0].ts_type == TsType.IPV6_ADDR_RANGE


def test_networks_of_a_range():
    ts = TrafficSelector.from_range("10.0.0.1", "10.0.0.6")
    assert [str(n) for n in ts.networks()] == [
        "10.0.0.1/32", "10.0.0.2/31", "10.0.0.4/31", "10.0.0.6/32",
    ]  # fmt: skip
    assert TrafficSelector.from_range("10.0.0.9", "10.0.0.1").networks() == []


def test_from_range_mixed_family():
    with pytest.raises(ValueError):
        TrafficSelector.from_range("10.0.0.1", "::1")


@pytest.mark.parametrize(
    "raw",
    [
        b"\x01\x00\x00",  # truncated payload header
        bytes.fromhex("00000000"),  # zero selectors
        KNOWN_V4[:-1],  # truncated selector
        bytes.fromhex("02000000") + KNOWN_V4[4:],  # two announced, one present
        KNOWN_V4 + b"\x00",  # trailing byte
        KNOWN_V4[:4] + b"\x08" + KNOWN_V4[5:],  # IPv6 type with IPv4 length
        KNOWN_V4[:6] + b"\x00\x28" + KNOWN_V4[8:],  # length 40 for IPv4
        KNOWN_V4[:4] + b"\x09" + KNOWN_V4[5:],  # unknown TS type
    ],
)
def test_syntax_errors(raw):
    with pytest.raises(ProtocolError) as exc:
        pull_ts(raw, True)
    assert exc.value.notify == NotifyType.INVALID_SYNTAX


def test_push_rejects_wrong_address_length():
    with pytest.raises(ValueError):
        push_ts(TsPayload([TrafficSelector(TsType.IPV6_ADDR_RANGE, 0, 0, 0, bytes(4), bytes(4))]))
