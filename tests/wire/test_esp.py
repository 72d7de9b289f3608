"""ESP framing codec (RFC 4303 section 2) and the UDP header of RFC 3948."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyipsec.errors import DecryptionError, MalformedPacket
from pyipsec.wire.esp import (
    EspHeader,
    pad_length,
    pull_esp_header,
    pull_trailer,
    pull_udp_header,
    push_esp_header,
    push_trailer,
    push_udp_header,
)


def test_header_round_trip() -> None:
    raw = push_esp_header(EspHeader(0x01020304, 5))
    assert raw == bytes.fromhex("0102030400000005")
    assert pull_esp_header(raw) == EspHeader(0x01020304, 5)
    assert push_esp_header(EspHeader(1, (7 << 32) | 9))[4:] == b"\x00\x00\x00\x09"  # low half
    with pytest.raises(MalformedPacket):
        pull_esp_header(raw[:7])


@given(n=st.integers(0, 2000), align=st.sampled_from([4, 8, 16]), nh=st.integers(0, 255))
def test_trailer_round_trip(n: int, align: int, nh: int) -> None:
    t = push_trailer(n, align, nh)
    assert (n + len(t)) % align == 0 and len(t) - 2 == pad_length(n, align) < align
    assert t[:-2] == bytes(range(1, len(t) - 1))  # RFC 4303 default padding 1, 2, 3 ...
    assert pull_trailer(bytes(n) + t) == (n, nh)


@pytest.mark.parametrize(
    "data",
    [b"", b"\x04", b"\x05\x04", b"\x01\x09\x01\x04", b"xx\x02\x01\x02\x04"[:-3] + b"\x02\x04"],
)
def test_trailer_errors(data: bytes) -> None:
    with pytest.raises(DecryptionError):
        pull_trailer(data)


def test_udp_header() -> None:
    h = push_udp_header(4500, 4501, 100)
    assert pull_udp_header(h) == (4500, 4501, 108, 0)
    with pytest.raises(MalformedPacket):
        pull_udp_header(h[:7])
