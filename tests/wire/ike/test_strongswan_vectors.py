"""Real IKEv2 messages from strongSwan 5.9.8 (tests/vectors/ike/strongswan_*.json, captured by
tests/vectors/ike/capture_strongswan.py between two charons, with the SK keys charon logged).

Plaintext IKE_SA_INIT messages are decoded and must re-encode byte for byte; IKE_AUTH and
INFORMATIONAL (SK) are decrypted with test ciphers built from the logged keys; the fragmented
IKE_AUTH (RFC 7383, SKF) is reassembled. If pyipsec.crypto's SK ciphers are present they must
open the same messages.
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest

from pyipsec.wire.iana import (
    AuthMethod,
    EncrId,
    ExchangeType,
    IdType,
    IntegId,
    KeId,
    NotifyType,
    PayloadType,
    PrfId,
    ProtocolId,
    TransformType,
)
from pyipsec.wire.ike import (
    AuthPayload,
    DeletePayload,
    IdPayload,
    KePayload,
    NoncePayload,
    Reassembler,
    SaPayload,
    Transform,
    TsPayload,
    decrypt_message,
    encrypt_message,
    pull_header,
    pull_message,
    push_message,
)

VECTORS = Path(__file__).resolve().parents[2] / "vectors" / "ike"


def load(name: str) -> tuple[dict, list[tuple[str, bytes]]]:
    record = json.loads((VECTORS / f"strongswan_{name}.json").read_text())
    return record, [(d["from"], bytes.fromhex(d["hex"])) for d in record["datagrams"]]


def test_ike_sa_init_decodes_and_reencodes_identically():
    for name, group in (("gcm_fragmented", KeId.CURVE25519), ("cbc_sha256", KeId.ECP256)):
        _, datagrams = load(name)
        (_, req), (_, resp) = datagrams[:2]
        for raw, is_response in ((req, False), (resp, True)):
            msg = pull_message(raw)
            assert msg.exchange_type == ExchangeType.IKE_SA_INIT
            assert msg.response is is_response and msg.initiator is not is_response
            assert push_message(msg) == raw
            ke = msg.find(KePayload)
            assert ke.group == group
            assert len(ke.data) == (32 if group == KeId.CURVE25519 else 64)
            assert 16 <= len(msg.find(NoncePayload).data) <= 256
            notifies = {n.notify_type for n in msg.notifies()}
            assert NotifyType.NAT_DETECTION_SOURCE_IP in notifies
            assert NotifyType.IKEV2_FRAGMENTATION_SUPPORTED in notifies
            assert NotifyType.SIGNATURE_HASH_ALGORITHMS in notifies
            (proposal,) = msg.find(SaPayload).proposals
            assert proposal.protocol_id == ProtocolId.IKE and proposal.spi == b""
            assert Transform(TransformType.KE, group) in proposal.transforms
        assert pull_header(resp).spi_r != bytes(8)


def test_gcm_ike_sa_init_proposal_contents():
    _, datagrams = load("gcm_fragmented")
    (proposal,) = pull_message(datagrams[0][1]).find(SaPayload).proposals
    assert proposal.transforms == [
        Transform(TransformType.ENCR, EncrId.AES_GCM_16, 128),
        Transform(TransformType.PRF, PrfId.HMAC_SHA2_256),
        Transform(TransformType.KE, KeId.CURVE25519),
    ]


def _test_ciphers(record: dict, factory):
    keys = {k: bytes.fromhex(v) for k, v in record["keys"].items()}
    return {
        "initiator": factory(keys["sk_ei"], keys.get("sk_ai", b"")),
        "responder": factory(keys["sk_er"], keys.get("sk_ar", b"")),
    }


def _check_ike_auth(msg, initiator: bool) -> None:
    assert msg.exchange_type == ExchangeType.IKE_AUTH
    ident = msg.find(IdPayload)
    assert ident.initiator is initiator and ident.id_type == IdType.FQDN
    assert ident.data == (b"a.pyi" if initiator else b"b.pyi")
    assert msg.find(AuthPayload).method == AuthMethod.SHARED_KEY_MIC
    (proposal,) = msg.find(SaPayload).proposals
    assert proposal.protocol_id == ProtocolId.ESP and len(proposal.spi) == 4
    tsi, tsr = msg.find_all(TsPayload)
    assert (tsi.initiator, tsr.initiator) == (True, False)
    assert tsi.traffic_selectors[0].networks() == [ipaddress.ip_network("10.97.1.1/32")]
    assert tsr.traffic_selectors[0].networks() == [ipaddress.ip_network("10.97.2.1/32")]


def _check_delete(datagrams, ciphers) -> None:
    (who_q, req), (who_r, resp) = datagrams[-2:]
    delete = decrypt_message(req, ciphers[who_q])
    assert delete.exchange_type == ExchangeType.INFORMATIONAL
    assert delete.payloads == [DeletePayload(ProtocolId.IKE, 0, [])]
    empty = decrypt_message(resp, ciphers[who_r])
    assert empty.response and empty.payloads == []
    for raw in (req, resp):
        assert push_message(pull_message(raw)) == raw


def _gcm_factory(test_cipher):
    return lambda ek, _ak: test_cipher(key=ek[:16], salt=ek[16:])


def test_gcm_fragmented_ike_auth_and_delete(aead_cipher):
    record, datagrams = load("gcm_fragmented")
    ciphers = _test_ciphers(record, _gcm_factory(aead_cipher))
    fragments = datagrams[2:-2]
    assert all(pull_header(raw).next_payload == PayloadType.SKF for _, raw in fragments)
    reassembler = Reassembler()
    done = []
    for who, raw in fragments:
        assert push_message(pull_message(raw)) == raw
        msg = reassembler.add(raw, ciphers[who])
        if msg is not None:
            done.append((who, msg))
    assert [who for who, _ in done] == ["initiator", "responder"]
    _check_ike_auth(done[0][1], initiator=True)
    _check_ike_auth(done[1][1], initiator=False)
    assert reassembler.statistics().messages_reassembled == 2
    _check_delete(datagrams, ciphers)


def test_cbc_ike_auth_and_delete(cbc_cipher):
    record, datagrams = load("cbc_sha256")
    ciphers = _test_ciphers(record, lambda ek, ak: cbc_cipher(key=ek, mac_key=ak))
    (_, req), (_, resp) = datagrams[2:4]
    _check_ike_auth(decrypt_message(req, ciphers["initiator"]), initiator=True)
    _check_ike_auth(decrypt_message(resp, ciphers["responder"]), initiator=False)
    _check_delete(datagrams, ciphers)
    # Our own encryption of the decrypted message opens again with the same keys.
    msg = decrypt_message(req, ciphers["initiator"])
    assert decrypt_message(encrypt_message(msg, ciphers["initiator"]), ciphers["initiator"]) == msg


@pytest.mark.parametrize("name", ["gcm_fragmented", "cbc_sha256"])
def test_with_pyipsec_crypto_sk_ciphers(name):
    ike_ciphers = pytest.importorskip("pyipsec.crypto.ike_ciphers")
    record, datagrams = load(name)
    if name == "gcm_fragmented":
        factory = lambda ek, _ak: ike_ciphers.sk_cipher(  # noqa: E731
            EncrId.AES_GCM_16, 128, IntegId.NONE, ek
        )
    else:
        factory = lambda ek, ak: ike_ciphers.sk_cipher(  # noqa: E731
            EncrId.AES_CBC, 128, IntegId.HMAC_SHA2_256_128, ek, ak
        )
    ciphers = _test_ciphers(record, factory)
    reassembler = Reassembler()
    auths = []
    for who, raw in datagrams[2:-2]:
        if pull_header(raw).next_payload == PayloadType.SKF:
            msg = reassembler.add(raw, ciphers[who])
        else:
            msg = decrypt_message(raw, ciphers[who])
        if msg is not None:
            auths.append(msg)
    _check_ike_auth(auths[0], initiator=True)
    _check_ike_auth(auths[1], initiator=False)
    _check_delete(datagrams, ciphers)
