"""Tests of the SA payload codec: proposals, transforms, attributes (RFC 7296 3.3)."""

from __future__ import annotations

import pytest

from pyipsec.errors import ProtocolError
from pyipsec.wire.iana import (
    EncrId,
    EsnId,
    IntegId,
    KeId,
    NotifyType,
    PrfId,
    ProtocolId,
    TransformType,
)
from pyipsec.wire.ike.sa_payload import Proposal, SaPayload, Transform, pull_sa, push_sa

# One IKE proposal, built by hand from RFC 7296 3.3.1/3.3.2/3.3.5:
# proposal: last(0) res length=44 num=1 proto=IKE(1) spisize=0 ntrans=4
#   ENCR AES-CBC (12) with Key Length 128 (TV attr 0x800e 0x0080): length 12, more (3)
#   PRF HMAC-SHA2-256 (5), INTEG HMAC-SHA2-256-128 (12), KE 31: length 8 each
KNOWN_IKE = bytes.fromhex(
    "0000002c010100040300000c0100000c800e00800300000802000005030000080300000c000000080400001f"
)


def test_pull_known_ike_proposal():
    sa = pull_sa(KNOWN_IKE)
    assert sa == SaPayload(
        [
            Proposal(
                1,
                ProtocolId.IKE,
                b"",
                [
                    Transform(TransformType.ENCR, EncrId.AES_CBC, 128),
                    Transform(TransformType.PRF, PrfId.HMAC_SHA2_256),
                    Transform(TransformType.INTEG, IntegId.HMAC_SHA2_256_128),
                    Transform(TransformType.KE, KeId.CURVE25519),
                ],
            )
        ]
    )
    assert push_sa(sa) == KNOWN_IKE


def test_round_trip_several_proposals():
    sa = SaPayload(
        [
            Proposal(1, ProtocolId.ESP, b"\x01\x02\x03\x04", [
                Transform(TransformType.ENCR, EncrId.AES_GCM_16, 256),
                Transform(TransformType.ESN, EsnId.ESN),
                Transform(TransformType.ESN, EsnId.NO_ESN),
            ]),
            Proposal(2, ProtocolId.AH, b"\x05\x06\x07\x08", [
                Transform(TransformType.INTEG, IntegId.HMAC_SHA2_256_128),
            ]),
            Proposal(3, ProtocolId.IKE, bytes(range(8)), [
                Transform(TransformType.ENCR, EncrId.CHACHA20_POLY1305),
                Transform(TransformType.ADDKE1, KeId.ML_KEM_768),
                Transform(1, 99, None, ((20, True, b"\x00\x07"), (21, False, b"xyz"))),
            ]),
        ]
    )  # fmt: skip
    assert pull_sa(push_sa(sa)) == sa


def _bad(raw: bytes) -> None:
    with pytest.raises(ProtocolError) as exc:
        pull_sa(raw)
    assert exc.value.notify == NotifyType.INVALID_SYNTAX


def _with(offset: int, value: bytes) -> bytes:
    return KNOWN_IKE[:offset] + value + KNOWN_IKE[offset + len(value) :]


def test_syntax_errors():
    _bad(b"")  # no proposal
    _bad(KNOWN_IKE[:7])  # truncated proposal header
    _bad(KNOWN_IKE[:-1])  # proposal length beyond the payload
    _bad(_with(0, b"\x02"))  # last proposal marked "more"
    _bad(_with(0, b"\x01"))  # Last Substruc neither 0 nor 2
    _bad(_with(7, b"\x05"))  # five transforms announced, four present
    _bad(_with(6, b"\x04"))  # IKE proposal with a 4-byte SPI
    _bad(_with(8, b"\x02"))  # transform Last Substruc 2
    _bad(_with(36, b"\x03"))  # last transform marked "more"
    _bad(_with(8 + 2, b"\x00\x07"))  # transform length below 8
    _bad(_with(8 + 2, b"\x00\x40"))  # transform length beyond the proposal
    _bad(_with(16, b"\x00\x0e"))  # Key Length as TLV: format error
    _bad(KNOWN_IKE + KNOWN_IKE)  # data after the last proposal


def test_esp_spi_size():
    raw = push_sa(SaPayload([Proposal(1, ProtocolId.ESP, b"\x00\x00\x00\x01", [])]))
    assert pull_sa(raw).proposals[0].spi == b"\x00\x00\x00\x01"
    _bad(raw[:6] + b"\x03" + raw[7:8] + b"\x00\x00\x00")  # SPI size 3 for ESP
    # unknown protocol: any SPI size is syntax-valid
    raw = push_sa(SaPayload([Proposal(1, 200, b"\x01\x02", [])]))
    assert pull_sa(raw).proposals[0].spi == b"\x01\x02"


def test_attribute_errors():
    # duplicate key length
    t = bytes.fromhex("000000100100000c800e0080800e0100")
    _bad(bytes.fromhex("0000001801010001") + t)
    # truncated attribute header
    t = bytes.fromhex("0000000a0100000c800e")
    _bad(bytes.fromhex("0000001201010001") + t)
    # TLV attribute longer than the transform
    t = bytes.fromhex("0000000c0100000c00140005")
    _bad(bytes.fromhex("0000001401010001") + t)
