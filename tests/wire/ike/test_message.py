"""Tests of whole-message encoding: plaintext, SK protection (RFC 7296 1.2, 3.1, 3.14)."""

from __future__ import annotations

import pytest

from pyipsec.errors import IntegrityError, MalformedPacket, PacketError, ProtocolError
from pyipsec.wire.iana import (
    AuthMethod,
    EncrId,
    ExchangeType,
    IdType,
    KeId,
    NotifyType,
    PayloadType,
    PrfId,
    ProtocolId,
    TransformType,
)
from pyipsec.wire.ike import (
    FLAG_INITIATOR,
    FLAG_RESPONSE,
    AuthPayload,
    EncryptedPayload,
    IdPayload,
    KePayload,
    Message,
    NoncePayload,
    NotifyPayload,
    Proposal,
    SaPayload,
    TrafficSelector,
    Transform,
    TsPayload,
    UnknownPayload,
    UnsupportedCriticalPayload,
    VendorIdPayload,
    decrypt_message,
    encrypt_message,
    pull_header,
    pull_message,
    push_header,
    push_message,
)
from pyipsec.wire.ike.header import push_generic_header
from pyipsec.wire.ike.payloads import push_payload_chain

SPI_I = bytes.fromhex("a1a2a3a4a5a6a7a8")
SPI_R = bytes.fromhex("b1b2b3b4b5b6b7b8")


def sa_init_request() -> Message:
    return Message(
        spi_i=SPI_I,
        spi_r=bytes(8),
        exchange_type=ExchangeType.IKE_SA_INIT,
        flags=FLAG_INITIATOR,
        message_id=0,
        payloads=[
            SaPayload([
                Proposal(1, ProtocolId.IKE, b"", [
                    Transform(TransformType.ENCR, EncrId.AES_GCM_16, 128),
                    Transform(TransformType.PRF, PrfId.HMAC_SHA2_256),
                    Transform(TransformType.KE, KeId.CURVE25519),
                ])
            ]),
            KePayload(KeId.CURVE25519, bytes(range(32))),
            NoncePayload(bytes(range(32))),
            NotifyPayload(notify_type=NotifyType.NAT_DETECTION_SOURCE_IP, data=bytes(20)),
            NotifyPayload(notify_type=NotifyType.NAT_DETECTION_DESTINATION_IP, data=bytes(20)),
            NotifyPayload(notify_type=NotifyType.IKEV2_FRAGMENTATION_SUPPORTED),
        ],
    )  # fmt: skip


def auth_request() -> Message:
    return Message(
        SPI_I,
        SPI_R,
        ExchangeType.IKE_AUTH,
        FLAG_INITIATOR,
        1,
        [
            IdPayload(IdType.FQDN, b"a.example", True),
            NotifyPayload(notify_type=NotifyType.INITIAL_CONTACT),
            AuthPayload(AuthMethod.SHARED_KEY_MIC, bytes(32)),
            SaPayload([Proposal(1, ProtocolId.ESP, b"\x11\x22\x33\x44", [Transform(1, 20, 256)])]),
            TsPayload([TrafficSelector.from_network("10.1.0.0/16")], True),
            TsPayload([TrafficSelector.from_network("10.2.0.0/16")], False),
        ],
    )


def test_plain_round_trip():
    msg = sa_init_request()
    raw = push_message(msg)
    h = pull_header(raw)
    assert h.next_payload == PayloadType.SA and h.length == len(raw)
    assert h.initiator and not h.response
    got = pull_message(raw)
    assert got == msg
    assert got.find(KePayload).group == KeId.CURVE25519
    assert got.find(AuthPayload) is None
    assert len(got.find_all(NotifyPayload)) == 3
    assert [n.notify_type for n in got.notifies(NotifyType.IKEV2_FRAGMENTATION_SUPPORTED)] == [
        NotifyType.IKEV2_FRAGMENTATION_SUPPORTED
    ]


def test_empty_informational():
    msg = Message(SPI_I, SPI_R, ExchangeType.INFORMATIONAL, FLAG_RESPONSE, 7, [])
    raw = push_message(msg)
    assert len(raw) == 28
    assert pull_message(raw) == msg


def test_known_bytes():
    # RFC 7296 3.1 + 3.9 by hand: header (next = Nonce 40, INFORMATIONAL 37, flags R,
    # id 5, length 48) followed by one Nonce payload of 16 bytes.
    raw = (
        SPI_I + SPI_R + bytes.fromhex("28202520" "00000005" "00000030")
        + bytes.fromhex("00000014") + bytes(range(16))
    )  # fmt: skip
    msg = pull_message(raw)
    assert msg.response and not msg.initiator and msg.message_id == 5
    assert msg.payloads == [NoncePayload(bytes(range(16)))]
    assert push_message(msg) == raw


def test_header_length_mismatch_is_malformed():
    raw = push_message(sa_init_request())
    with pytest.raises(MalformedPacket):
        pull_message(raw + b"\x00")
    with pytest.raises(MalformedPacket):
        pull_message(raw[:-1])
    with pytest.raises(MalformedPacket):
        pull_message(raw[:20])


def test_major_version():
    raw = bytearray(push_message(sa_init_request()))
    raw[17] = 0x30
    with pytest.raises(ProtocolError) as exc:
        pull_message(bytes(raw))
    assert exc.value.notify == NotifyType.INVALID_MAJOR_VERSION
    raw[17] = 0x21  # minor versions are accepted
    assert pull_message(bytes(raw)).minor == 1


def test_unknown_critical_in_message():
    msg = Message(SPI_I, SPI_R, 37, 0, 1, [UnknownPayload(222, b"x", critical=True)])
    with pytest.raises(UnsupportedCriticalPayload) as exc:
        pull_message(push_message(msg))
    assert exc.value.payload_type == 222
    ok = Message(SPI_I, SPI_R, 37, 0, 1, [UnknownPayload(222, b"x"), NoncePayload(bytes(16))])
    assert pull_message(push_message(ok)) == ok


# --------------------------------------------------------------------------- SK


def test_sk_round_trip(cipher_pair):
    tx, rx = cipher_pair
    msg = auth_request()
    raw = encrypt_message(msg, tx)
    h = pull_header(raw)
    assert h.next_payload == PayloadType.SK and h.length == len(raw)
    assert b"a.example" not in raw  # encrypted
    closed = pull_message(raw)
    assert closed.payloads == [EncryptedPayload(PayloadType.IDi, raw[32:])]
    assert decrypt_message(raw, rx) == msg


def test_sk_padding_alignment(cipher_pair):
    tx, rx = cipher_pair
    for n in range(16, 40):
        msg = Message(SPI_I, SPI_R, 37, 0, n, [NoncePayload(bytes(n))])
        raw = encrypt_message(msg, tx)
        ct_len = len(raw) - 32 - tx.iv_size - tx.icv_size
        assert ct_len % tx.block_size == 0
        assert decrypt_message(raw, rx) == msg


def test_sk_empty_informational(cipher_pair):
    tx, rx = cipher_pair
    msg = Message(SPI_I, SPI_R, ExchangeType.INFORMATIONAL, FLAG_INITIATOR, 3, [])
    raw = encrypt_message(msg, tx)
    assert pull_header(raw).length == len(raw)
    assert raw[28] == PayloadType.NONE  # SK next payload: nothing inside
    assert decrypt_message(raw, rx) == msg


def test_sk_tampering_detected(cipher_pair):
    tx, rx = cipher_pair
    raw = encrypt_message(auth_request(), tx)
    for pos in (0, 19, 27, 28, 33, len(raw) // 2, len(raw) - 1):
        bad = bytearray(raw)
        bad[pos] ^= 0x01
        with pytest.raises(PacketError):
            decrypt_message(bytes(bad), rx)


def test_sk_wrong_key(aead_cipher):
    raw = encrypt_message(auth_request(), aead_cipher())
    with pytest.raises(IntegrityError):
        decrypt_message(raw, aead_cipher(key=b"\x01" * 16))


def test_closed_sk_message_reencodes_identically(cipher_pair):
    tx, rx = cipher_pair
    raw = encrypt_message(auth_request(), tx)
    assert push_message(pull_message(raw)) == raw


def test_errors_after_authentication_are_protocol_errors(cipher_pair):
    """Inside a verified SK: unknown critical payload and bad syntax give ProtocolError."""
    tx, rx = cipher_pair
    msg = Message(SPI_I, SPI_R, 37, 0, 2, [UnknownPayload(222, b"x", critical=True)])
    with pytest.raises(UnsupportedCriticalPayload) as exc:
        decrypt_message(encrypt_message(msg, tx), rx)
    assert exc.value.payload_type == 222
    assert not isinstance(exc.value, PacketError)


def test_errors_before_authentication_are_packet_errors(cipher_pair):
    """A malformed unauthenticated part never asks for a reply: PacketError only."""
    tx, rx = cipher_pair
    raw = bytearray(encrypt_message(auth_request(), tx))
    raw[28 + 2 : 28 + 4] = (0xFFFF).to_bytes(2, "big")  # SK length beyond the message
    with pytest.raises(MalformedPacket):
        decrypt_message(bytes(raw), rx)
    plain = push_message(sa_init_request())
    with pytest.raises(MalformedPacket):  # no SK payload at all
        decrypt_message(plain, rx)
    short = push_message(Message(SPI_I, SPI_R, 37, 0, 2, []))
    short = short[:16] + bytes([PayloadType.SK]) + short[17:24] + (36).to_bytes(4, "big")
    with pytest.raises(MalformedPacket):  # SK body too short for IV and ICV
        decrypt_message(short + bytes([0, 0, 0, 8, 1, 2, 3, 4]), rx)


def test_unencrypted_payload_before_sk_is_authenticated(cipher_pair):
    """RFC 7296 3.14: the ICV (AEAD: the AAD) covers everything before the SK body."""
    tx, rx = cipher_pair
    vid = push_payload_chain([VendorIdPayload(b"outer")], last_next=PayloadType.SK)
    inner = push_payload_chain([NoncePayload(bytes(16))])
    pad = -(len(inner) + 1) % tx.block_size
    plaintext = inner + bytes(pad) + bytes([pad])
    body_len = tx.iv_size + len(plaintext) + tx.icv_size
    total = 28 + len(vid) + 4 + body_len
    msg = Message(SPI_I, SPI_R, 37, FLAG_INITIATOR, 9, [])
    aad = push_header(msg.header(PayloadType.VENDOR_ID, total)) + vid
    aad += push_generic_header(PayloadType.NONCE, body_len)
    raw = aad + tx.seal(aad, plaintext)
    got = decrypt_message(raw, rx)
    assert got.payloads == [VendorIdPayload(b"outer"), NoncePayload(bytes(16))]
    tampered = bytearray(raw)
    tampered[28 + 5] ^= 1  # inside the unencrypted Vendor ID
    with pytest.raises(IntegrityError):
        decrypt_message(bytes(tampered), rx)
