"""Tests of the vici message codec (tests/vici_client.py); the live client is exercised
by tests/interop/test_strongswan_harness.py against a real charon."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vici_client import decode_vici_message, encode_vici_message  # noqa: E402


def test_vici_message_roundtrip() -> None:
    msg = {
        "child": "t-c",
        "timeout": 5,
        "list": ["a", "b c"],
        "sec": {"inner": {"k": "v"}, "x": "1"},
    }
    decoded = decode_vici_message(encode_vici_message(msg))
    assert decoded == {
        "child": "t-c",
        "timeout": "5",
        "list": ["a", "b c"],
        "sec": {"inner": {"k": "v"}, "x": "1"},
    }


def test_vici_decode_rejects_bad_element() -> None:
    with pytest.raises(ValueError, match="bad vici element"):
        decode_vici_message(b"\x09abc")
