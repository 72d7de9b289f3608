"""Hypothesis fuzzing of every IKE parser: random and mutated input only ever raises
pyipsec.errors.PyipsecError subclasses, and whatever parses re-encodes to the same message."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyipsec.errors import PyipsecError
from pyipsec.wire.iana import (
    AuthMethod,
    ExchangeType,
    IdType,
    KeId,
    NotifyType,
    PayloadType,
    ProtocolId,
)
from pyipsec.wire.ike import (
    FLAG_INITIATOR,
    AuthPayload,
    CertReqPayload,
    DeletePayload,
    IdPayload,
    KePayload,
    Message,
    NoncePayload,
    NotifyPayload,
    Proposal,
    Reassembler,
    SaPayload,
    TrafficSelector,
    Transform,
    TsPayload,
    UnknownPayload,
    VendorIdPayload,
    decrypt_message,
    encrypt_message,
    fragment_message,
    pull_header,
    pull_message,
    pull_payload_body,
    push_message,
)

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class NullCipher:
    """No encryption, no ICV: lets mutations reach the inner payload parser."""

    iv_size = 0
    icv_size = 0
    block_size = 4

    def seal(self, aad: bytes, plaintext: bytes) -> bytes:
        return plaintext

    def open(self, aad: bytes, body: bytes) -> bytes:
        return body


SAMPLE = Message(
    bytes.fromhex("0102030405060708"),
    bytes.fromhex("1112131415161718"),
    ExchangeType.IKE_AUTH,
    FLAG_INITIATOR,
    1,
    [
        IdPayload(IdType.IPV4_ADDR, bytes([10, 0, 0, 1]), True),
        AuthPayload(AuthMethod.SHARED_KEY_MIC, bytes(32)),
        SaPayload(
            [
                Proposal(1, ProtocolId.ESP, b"\x01\x02\x03\x04", [Transform(1, 20, 128)]),
                Proposal(2, ProtocolId.IKE, bytes(8), [Transform(4, 31), Transform(2, 5)]),
            ]
        ),
        TsPayload([TrafficSelector.from_network("10.0.0.0/24", 6, 80, 80)], True),
        TsPayload([TrafficSelector.from_network("2001:db8::/64")], False),
        NotifyPayload(ProtocolId.ESP, b"\x00\x00\x00\x01", NotifyType.REKEY_SA),
        DeletePayload(ProtocolId.ESP, 4, [b"\x00\x00\x00\x02"]),
        KePayload(KeId.CURVE25519, bytes(32)),
        NoncePayload(bytes(16)),
        CertReqPayload(4, bytes(20)),
        VendorIdPayload(b"pyipsec"),
        UnknownPayload(150, b"zz"),
    ],
)
PLAIN = push_message(SAMPLE)
SEALED = encrypt_message(SAMPLE, NullCipher())
FRAGMENTS = fragment_message(SAMPLE, NullCipher(), 120)


def _parse_all(data: bytes) -> None:
    """Feed data to every entry point; only typed errors may escape."""
    for fn in (pull_header, pull_message):
        try:
            fn(data)
        except PyipsecError:
            pass
    try:
        decrypt_message(data, NullCipher())
    except PyipsecError:
        pass
    try:
        Reassembler().add(data, NullCipher())
    except PyipsecError:
        pass


def _check_reencode(data: bytes) -> None:
    """Whatever parses as plaintext re-encodes to something that parses identically."""
    try:
        msg = pull_message(data)
    except PyipsecError:
        return
    assert pull_message(push_message(msg)) == msg


mutation = st.tuples(st.integers(0, 10_000), st.integers(0, 255), st.sampled_from("xdit"))


def _mutate(data: bytes, muts: list[tuple[int, int, str]]) -> bytes:
    buf = bytearray(data)
    for pos, val, kind in muts:
        if not buf:
            break
        i = pos % len(buf)
        if kind == "x":
            buf[i] ^= val or 1
        elif kind == "d":
            del buf[i]
        elif kind == "i":
            buf.insert(i, val)
        else:
            del buf[i:]
    return bytes(buf)


@FUZZ
@given(st.binary(max_size=400))
def test_random_bytes(data):
    _parse_all(data)
    _check_reencode(data)


@FUZZ
@given(st.binary(max_size=200))
def test_random_after_valid_header(tail):
    # A valid header with a matching Length so the payload chain parser sees random input.
    for first in (PayloadType.SA, PayloadType.TSi, PayloadType.SK, PayloadType.SKF, 200):
        data = PLAIN[:16] + bytes([first]) + PLAIN[17:24] + (28 + len(tail)).to_bytes(4, "big")
        _parse_all(data + tail)
        _check_reencode(data + tail)


@FUZZ
@given(st.sampled_from([PLAIN, SEALED, *FRAGMENTS]), st.lists(mutation, min_size=1, max_size=6))
def test_mutated_messages(base, muts):
    data = _mutate(base, muts)
    _parse_all(data)
    _check_reencode(data)


@FUZZ
@given(st.lists(mutation, min_size=1, max_size=4), st.booleans())
def test_mutated_messages_with_fixed_length(muts, plain):
    # Keep the header's Length right so mutations go past the header check.
    data = bytearray(_mutate(PLAIN if plain else SEALED, muts))
    if len(data) >= 28:
        data[24:28] = len(data).to_bytes(4, "big")
    _parse_all(bytes(data))
    _check_reencode(bytes(data))


@FUZZ
@given(st.lists(st.sampled_from(FRAGMENTS + [FRAGMENTS[0][:-1]]), max_size=40))
def test_reassembler_random_fragment_streams(stream):
    r = Reassembler(max_messages=2, max_fragments=64)
    for frag in stream:
        try:
            got = r.add(frag, NullCipher())
        except PyipsecError:
            continue
        if got is not None:
            assert got == SAMPLE
    s = r.statistics()
    assert s.fragments_received == len(stream)


@pytest.mark.parametrize("ptype", [*range(33, 49), PayloadType.SKF, 0, 255])
@FUZZ
@given(body=st.binary(max_size=120))
def test_payload_bodies(ptype, body):
    try:
        pull_payload_body(ptype, body, critical=True)
    except PyipsecError:
        pass


def _real_ciphers():
    """pyipsec.crypto SK ciphers (AES-GCM-16, AES-CBC+HMAC-SHA256) when that module exists."""
    ike_ciphers = pytest.importorskip("pyipsec.crypto.ike_ciphers")
    return [
        ike_ciphers.sk_cipher(20, 128, 0, bytes(range(20))),
        ike_ciphers.sk_cipher(12, 128, 12, bytes(range(16)), bytes(range(32))),
    ]


@FUZZ
@given(st.integers(0, 1), st.lists(mutation, min_size=1, max_size=4), st.booleans())
def test_mutated_messages_with_real_ciphers(which, muts, fix_length):
    cipher = _real_ciphers()[which]
    base = [encrypt_message(SAMPLE, cipher), *fragment_message(SAMPLE, cipher, 200)]
    for raw in base:
        data = bytearray(_mutate(raw, muts))
        if fix_length and len(data) >= 28:
            data[24:28] = len(data).to_bytes(4, "big")
        _parse_all_with(bytes(data), cipher)


def _parse_all_with(data: bytes, cipher) -> None:
    try:
        decrypt_message(data, cipher)
    except PyipsecError:
        pass
    try:
        Reassembler().add(data, cipher)
    except PyipsecError:
        pass
