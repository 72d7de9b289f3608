"""Tests of the payload codecs and the payload chain (RFC 7296 section 3)."""

from __future__ import annotations

import pytest

from pyipsec.errors import ProtocolError
from pyipsec.wire.iana import (
    AuthMethod,
    CertEncoding,
    IdType,
    KeId,
    NotifyType,
    PayloadType,
    ProtocolId,
)
from pyipsec.wire.ike.payloads import (
    AuthPayload,
    CertPayload,
    CertReqPayload,
    DeletePayload,
    EncryptedFragmentPayload,
    EncryptedPayload,
    IdPayload,
    KePayload,
    NoncePayload,
    NotifyPayload,
    UnknownPayload,
    UnsupportedCriticalPayload,
    VendorIdPayload,
    pull_payload_body,
    pull_payload_chain,
    push_payload_body,
    push_payload_chain,
)
from pyipsec.wire.ike.sa_payload import Proposal, SaPayload, Transform
from pyipsec.wire.ike.ts import TrafficSelector, TsPayload

SAMPLES = [
    KePayload(KeId.CURVE25519, bytes(range(32))),
    IdPayload(IdType.FQDN, b"a.example", True),
    IdPayload(IdType.IPV4_ADDR, bytes([10, 0, 0, 1]), False),
    IdPayload(IdType.IPV6_ADDR, bytes(16), True),
    IdPayload(IdType.RFC822_ADDR, b"me@example.org", True),
    IdPayload(IdType.DER_ASN1_DN, b"\x30\x00", False),
    IdPayload(IdType.KEY_ID, b"\x01\x02", True),
    CertPayload(CertEncoding.X509_SIG, b"\x30\x82\x01\x00"),
    CertReqPayload(CertEncoding.X509_SIG, bytes(40)),
    AuthPayload(AuthMethod.SHARED_KEY_MIC, bytes(32)),
    NoncePayload(bytes(16)),
    NoncePayload(bytes(256)),
    NotifyPayload(notify_type=NotifyType.INITIAL_CONTACT),
    NotifyPayload(ProtocolId.ESP, b"\x00\x00\x12\x34", NotifyType.REKEY_SA),
    NotifyPayload(notify_type=NotifyType.NAT_DETECTION_SOURCE_IP, data=bytes(20)),
    DeletePayload(ProtocolId.IKE),
    DeletePayload(ProtocolId.ESP, 4, [b"\x00\x00\x00\x01", b"\xff\xff\xff\xff"]),
    VendorIdPayload(b"strongSwan"),
    UnknownPayload(200, b"opaque"),
    SaPayload([Proposal(1, ProtocolId.IKE, b"", [Transform(1, 20, 256)])]),
    TsPayload([TrafficSelector.from_network("10.0.0.0/8")], False),
]


@pytest.mark.parametrize("payload", SAMPLES, ids=lambda p: type(p).__name__)
def test_round_trip(payload):
    body = push_payload_body(payload)
    assert pull_payload_body(payload.payload_type, body) == payload


def test_chain_round_trip():
    raw = push_payload_chain(SAMPLES)
    got, end = pull_payload_chain(raw, SAMPLES[0].payload_type, 0, len(raw), allow_encrypted=True)
    assert got == SAMPLES
    assert end == len(raw)


def test_known_ke_bytes():
    # RFC 7296 3.4 layout: group 31 (0x001f), reserved, data.
    assert push_payload_body(KePayload(31, b"\xaa\xbb")) == bytes.fromhex("001f0000aabb")


def test_known_notify_bytes():
    # RFC 7296 3.10: protocol ESP (3), SPI size 4, REKEY_SA (16393 = 0x4009), SPI.
    raw = bytes.fromhex("03044009deadbeef")
    p = pull_payload_body(PayloadType.NOTIFY, raw)
    assert p == NotifyPayload(3, bytes.fromhex("deadbeef"), NotifyType.REKEY_SA, b"")
    assert not p.is_error


def test_known_delete_bytes():
    raw = bytes.fromhex("030400020000000100000002")
    p = pull_payload_body(PayloadType.DELETE, raw)
    assert p.spis == [b"\x00\x00\x00\x01", b"\x00\x00\x00\x02"]


def test_known_id_bytes():
    raw = bytes.fromhex("01000000c0000201")
    p = pull_payload_body(PayloadType.IDr, raw)
    assert p == IdPayload(IdType.IPV4_ADDR, bytes([192, 0, 2, 1]), False)
    assert p.payload_type == PayloadType.IDr


def test_certreq_hashes():
    p = CertReqPayload(4, bytes(20) + b"\x01" * 20)
    assert p.ca_hashes == [bytes(20), b"\x01" * 20]


BAD_BODIES = [
    (PayloadType.KE, b"\x00\x1f\x00"),
    (PayloadType.IDi, b"\x01\x00\x00"),
    (PayloadType.IDi, b"\x01\x00\x00\x00\x01\x02\x03"),  # IPv4 ID with 3 bytes
    (PayloadType.IDr, b"\x05\x00\x00\x00" + bytes(4)),  # IPv6 ID with 4 bytes
    (PayloadType.CERT, b""),
    (PayloadType.CERTREQ, b""),
    (PayloadType.AUTH, b"\x02\x00"),
    (PayloadType.NONCE, bytes(15)),
    (PayloadType.NONCE, bytes(257)),
    (PayloadType.NOTIFY, b"\x03\x04\x40"),
    (PayloadType.NOTIFY, b"\x03\x04\x40\x09\x00\x00"),  # SPI size beyond the body
    (PayloadType.DELETE, b"\x03\x04\x00"),
    (PayloadType.DELETE, b"\x03\x04\x00\x02" + bytes(7)),
    (PayloadType.DELETE, b"\x03\x08\x00\x01" + bytes(8)),  # ESP with 8-byte SPI
    (PayloadType.DELETE, b"\x01\x08\x00\x01" + bytes(8)),  # IKE with an SPI
    (PayloadType.DELETE, b"\x09\x00\x00\x01"),  # size 0 but one SPI announced
]


@pytest.mark.parametrize("ptype,body", BAD_BODIES)
def test_bad_bodies(ptype, body):
    with pytest.raises(ProtocolError) as exc:
        pull_payload_body(ptype, body)
    assert exc.value.notify == NotifyType.INVALID_SYNTAX


def test_unknown_noncritical_skipped():
    raw = bytes.fromhex("2800000800112233") + push_payload_chain([NoncePayload(bytes(16))])
    got, _ = pull_payload_chain(raw, 201, 0, len(raw), allow_encrypted=False)
    assert got == [UnknownPayload(201, b"\x00\x11\x22\x33", False), NoncePayload(bytes(16))]


def test_unknown_critical_rejected():
    raw = bytes.fromhex("0080000800112233")
    with pytest.raises(UnsupportedCriticalPayload) as exc:
        pull_payload_chain(raw, 201, 0, len(raw), allow_encrypted=False)
    assert exc.value.notify == NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD
    assert exc.value.payload_type == 201
    assert "201" in str(exc.value)


def test_critical_bit_ignored_for_known_types():
    body = push_payload_body(NoncePayload(bytes(16)))
    raw = bytes([0, 0x80, 0, 4 + len(body)]) + body
    got, _ = pull_payload_chain(raw, PayloadType.NONCE, 0, len(raw), allow_encrypted=False)
    assert got == [NoncePayload(bytes(16))]
    # CP (47) is defined in RFC 7296: kept, never rejected for its critical bit.
    raw = bytes([0, 0x80, 0, 8]) + bytes(4)
    got, _ = pull_payload_chain(raw, PayloadType.CP, 0, len(raw), allow_encrypted=False)
    assert got == [UnknownPayload(PayloadType.CP, bytes(4), True)]


def test_chain_errors():
    nonce = push_payload_chain([NoncePayload(bytes(16))])
    cases = [
        nonce[:-1],  # payload length beyond the data
        nonce + b"\x00",  # trailing byte after the last payload
        bytes([PayloadType.NONCE]) + nonce[1:],  # announces another payload, none follows
        nonce[:2] + b"\x00\x03" + nonce[4:],  # length below the generic header
    ]
    for raw in cases:
        with pytest.raises(ProtocolError) as exc:
            pull_payload_chain(raw, PayloadType.NONCE, 0, len(raw), allow_encrypted=False)
        assert exc.value.notify == NotifyType.INVALID_SYNTAX


def test_sk_must_be_last_and_not_nested():
    sk = bytes([PayloadType.NONCE, 0, 0, 8]) + bytes(4)
    got, off = pull_payload_chain(sk, PayloadType.SK, 0, len(sk), allow_encrypted=True)
    assert got == [EncryptedPayload(PayloadType.NONCE, bytes(4))] and off == 0
    with pytest.raises(ProtocolError):
        pull_payload_chain(sk, PayloadType.SK, 0, len(sk), allow_encrypted=False)
    with pytest.raises(ProtocolError):
        pull_payload_chain(sk + bytes(4), PayloadType.SK, 0, len(sk) + 4, allow_encrypted=True)


def test_skf_header():
    skf = bytes([PayloadType.IDi, 0, 0, 12]) + bytes.fromhex("00020003") + bytes(4)
    got, _ = pull_payload_chain(skf, PayloadType.SKF, 0, len(skf), allow_encrypted=True)
    # Next Payload is meaningful in fragment 1 only.
    assert got == [EncryptedFragmentPayload(0, 2, 3, bytes(4))]
    for numbers in ("00000003", "00010000", "00040003"):
        bad = skf[:4] + bytes.fromhex(numbers) + bytes(4)
        with pytest.raises(ProtocolError):
            pull_payload_chain(bad, PayloadType.SKF, 0, len(bad), allow_encrypted=True)


def test_push_rejects_inconsistent_delete():
    with pytest.raises(ValueError):
        push_payload_body(DeletePayload(ProtocolId.ESP, 4, [b"\x00"]))
