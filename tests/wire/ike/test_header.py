"""Tests of the IKE header and generic payload header codec (RFC 7296 3.1, 3.2)."""

from __future__ import annotations

import pytest

from pyipsec.errors import MalformedPacket, ProtocolError
from pyipsec.wire.iana import ExchangeType, NotifyType, PayloadType
from pyipsec.wire.ike.header import (
    FLAG_INITIATOR,
    FLAG_RESPONSE,
    IkeHeader,
    pull_generic_header,
    pull_header,
    push_generic_header,
    push_header,
)

# Built by hand from the RFC 7296 3.1 layout: SPIi 0102..08, SPIr zero, next SA (33),
# version 2.0, IKE_SA_INIT (34), flags I (0x08), message id 0, length 28.
KNOWN = bytes.fromhex("0102030405060708000000000000000021202208000000000000001c")


def test_pull_known_bytes():
    h = pull_header(KNOWN)
    assert h.spi_i == bytes(range(1, 9))
    assert h.spi_r == bytes(8)
    assert h.next_payload == PayloadType.SA
    assert (h.major, h.minor) == (2, 0)
    assert h.exchange_type == ExchangeType.IKE_SA_INIT
    assert h.initiator and not h.response and not h.version
    assert h.message_id == 0 and h.length == 28


def test_round_trip():
    h = IkeHeader(
        b"A" * 8, b"B" * 8, PayloadType.SK, 2, 0, ExchangeType.IKE_AUTH,
        FLAG_INITIATOR | FLAG_RESPONSE, 0xFFFFFFFF, 28,
    )  # fmt: skip
    assert push_header(h) == push_header(pull_header(push_header(h)))
    assert pull_header(push_header(h)) == h


def test_push_known_bytes():
    h = IkeHeader(bytes(range(1, 9)), bytes(8), 33, 2, 0, 34, FLAG_INITIATOR, 0, 28)
    assert push_header(h) == KNOWN


@pytest.mark.parametrize("n", [0, 1, 27])
def test_too_short(n):
    with pytest.raises(MalformedPacket):
        pull_header(KNOWN[:n])


def test_length_field_out_of_range():
    with pytest.raises(MalformedPacket):
        pull_header(KNOWN[:24] + (27).to_bytes(4, "big"))
    with pytest.raises(MalformedPacket):
        pull_header(KNOWN[:24] + (29).to_bytes(4, "big"))


def test_generic_header():
    raw = push_generic_header(PayloadType.KE, 10, critical=True) + bytes(10)
    assert raw[:4] == bytes.fromhex("2280000e")
    assert pull_generic_header(raw, 0, len(raw)) == (PayloadType.KE, True, 14)


@pytest.mark.parametrize(
    "raw",
    [bytes.fromhex("000000"), bytes.fromhex("00000003"), bytes.fromhex("00000009") + bytes(4)],
)
def test_generic_header_errors(raw):
    with pytest.raises(ProtocolError) as exc:
        pull_generic_header(raw, 0, len(raw))
    assert exc.value.notify == NotifyType.INVALID_SYNTAX
