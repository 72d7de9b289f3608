"""Tests of SKF fragmentation and reassembly (RFC 7383)."""

from __future__ import annotations

import random

import pytest

from pyipsec.errors import ConfigError, IntegrityError, MalformedPacket, ProtocolError
from pyipsec.wire.iana import CertEncoding, ExchangeType, IdType, NotifyType, PayloadType
from pyipsec.wire.ike import (
    FLAG_INITIATOR,
    FLAG_RESPONSE,
    CertPayload,
    IdPayload,
    Message,
    NoncePayload,
    Reassembler,
    fragment_message,
    pull_header,
    pull_message,
    push_message,
)
from pyipsec.wire.ike.header import push_generic_header
from pyipsec.wire.ike.payloads import EncryptedFragmentPayload

SPI_I = bytes.fromhex("0102030405060708")
SPI_R = bytes.fromhex("1112131415161718")


def big_message(message_id: int = 1, size: int = 3000, flags: int = FLAG_INITIATOR) -> Message:
    return Message(
        SPI_I,
        SPI_R,
        ExchangeType.IKE_AUTH,
        flags,
        message_id,
        [
            IdPayload(IdType.FQDN, b"initiator.example", True),
            CertPayload(CertEncoding.X509_SIG, bytes(random.Random(size).randbytes(size))),
            NoncePayload(bytes(32)),
        ],
    )


def test_fragments_respect_size_and_layout(cipher_pair):
    tx, rx = cipher_pair
    msg = big_message()
    frags = fragment_message(msg, tx, 500)
    assert len(frags) > 6
    for number, raw in enumerate(frags, start=1):
        assert len(raw) <= 500
        h = pull_header(raw)
        assert h.next_payload == PayloadType.SKF and h.length == len(raw)
        assert h.message_id == 1 and h.exchange_type == ExchangeType.IKE_AUTH
        (skf,) = pull_message(raw).payloads
        assert isinstance(skf, EncryptedFragmentPayload)
        assert (skf.fragment_number, skf.total_fragments) == (number, len(frags))
        assert skf.first_payload_type == (PayloadType.IDi if number == 1 else 0)
    r = Reassembler()
    results = [r.add(f, rx) for f in frags]
    assert results[:-1] == [None] * (len(frags) - 1)
    assert results[-1] == msg
    s = r.statistics()
    assert s.messages_reassembled == 1 and s.fragments_accepted == len(frags)
    assert s.pending_messages == 0 and s.pending_bytes == 0


def test_single_fragment(cipher_pair):
    tx, rx = cipher_pair
    msg = Message(SPI_I, SPI_R, 37, 0, 4, [NoncePayload(bytes(16))])
    (frag,) = fragment_message(msg, tx, 1280)
    assert Reassembler().add(frag, rx) == msg


def test_reorder_duplicates_loss(cipher_pair):
    tx, rx = cipher_pair
    msg = big_message()
    frags = fragment_message(msg, tx, 400)
    rng = random.Random(7)
    order = list(range(len(frags)))
    rng.shuffle(order)
    lost = order.pop()  # withheld until the end
    r = Reassembler()
    for i in order:
        assert r.add(frags[i], rx) is None
        assert r.add(frags[i], rx) is None  # duplicate
    assert r.statistics().fragments_duplicate == len(order)
    assert r.statistics().pending_messages == 1
    assert r.add(frags[lost], rx) == msg
    assert r.add(frags[lost], rx) is None  # late duplicate starts a new, harmless entry
    r.discard(1)
    assert r.statistics().pending_messages == 0


def test_refragmented_retransmission(cipher_pair):
    """RFC 7383 2.6.2: a larger Total Fragments replaces the old set, a smaller is stale."""
    tx, rx = cipher_pair
    msg = big_message()
    coarse = fragment_message(msg, tx, 1000)
    fine = fragment_message(msg, tx, 400)
    assert len(fine) > len(coarse)
    r = Reassembler()
    assert r.add(coarse[0], rx) is None
    assert r.add(fine[0], rx) is None  # restarts with the finer fragmentation
    assert r.add(coarse[1], rx) is None  # stale now
    assert r.statistics().fragments_stale == 1
    got = [r.add(f, rx) for f in fine[1:]]
    assert got[-1] == msg


def test_responses_and_requests_kept_apart(cipher_pair):
    tx, rx = cipher_pair
    req = fragment_message(big_message(flags=FLAG_INITIATOR), tx, 600)
    resp = fragment_message(big_message(flags=FLAG_RESPONSE, size=2000), tx, 600)
    r = Reassembler()
    out = []
    for a, b in zip(req, resp + [None] * len(req)):
        out.append(r.add(a, rx))
        if b is not None:
            out.append(r.add(b, rx))
    done = [m for m in out if m is not None]
    assert len(done) == 2
    assert {m.response for m in done} == {True, False}


def test_forged_fragment_rejected_and_state_unchanged(cipher_pair, aead_cipher):
    tx, rx = cipher_pair
    frags = fragment_message(big_message(), tx, 500)
    r = Reassembler()
    r.add(frags[0], rx)
    before = r.statistics()
    bad = bytearray(frags[1])
    bad[-1] ^= 0xFF
    with pytest.raises(IntegrityError):
        r.add(bytes(bad), rx)
    s = r.statistics()
    assert s.fragments_not_authenticated == 1
    assert (s.pending_bytes, s.fragments_accepted) == (before.pending_bytes, 1)
    # the genuine fragment is still accepted afterwards
    results = [r.add(f, rx) for f in frags[1:]]
    assert results[-1] is not None


def test_malformed_fragments(cipher_pair):
    tx, rx = cipher_pair
    frag = fragment_message(big_message(), tx, 500)[0]
    r = Reassembler(max_fragments=8)
    cases = [
        frag[:30],  # truncated
        frag[:32] + b"\x00\x09\x00\x08" + frag[36:],  # fragment 9 of 8
        frag[:32] + b"\x00\x01\x00\x09" + frag[36:],  # 9 fragments, above the limit
    ]
    for raw in cases:
        with pytest.raises(MalformedPacket):
            r.add(raw, rx)
    assert r.statistics().fragments_malformed == 3
    assert r.statistics().pending_messages == 0


def test_skf_with_other_payloads_rejected(cipher_pair):
    tx, rx = cipher_pair
    frag = fragment_message(big_message(), tx, 500)[0]
    nonce = push_generic_header(PayloadType.SKF, 16) + bytes(16)
    length = len(frag) + len(nonce)
    raw = (
        frag[:16] + bytes([PayloadType.NONCE]) + frag[17:24] + length.to_bytes(4, "big")
        + nonce + frag[28:]
    )  # fmt: skip
    with pytest.raises(MalformedPacket):
        Reassembler().add(raw, rx)


def test_memory_bounds(cipher_pair):
    tx, rx = cipher_pair
    r = Reassembler(max_messages=2, max_bytes=100_000)
    for mid in range(1, 6):
        r.add(fragment_message(big_message(mid), tx, 500)[0], rx)
    s = r.statistics()
    assert s.pending_messages == 2 and s.messages_evicted == 3
    small = Reassembler(max_bytes=1000)
    frags = fragment_message(big_message(9, size=5000), tx, 500)
    for f in frags[:-1]:
        assert small.add(f, rx) is None
    assert small.statistics().pending_bytes <= 1000
    assert small.statistics().messages_evicted >= 1


def test_bad_inner_chain_after_reassembly(cipher_pair):
    tx, rx = cipher_pair
    # A chain announcing a Nonce that is only 4 bytes long: fragments authenticate,
    # the reassembled content fails to parse.
    msg = Message(SPI_I, SPI_R, 37, 0, 2, [NoncePayload(bytes(16))])

    class Corrupting:
        iv_size, icv_size, block_size = tx.iv_size, tx.icv_size, tx.block_size

        def seal(self, aad, plaintext):
            return tx.seal(aad, b"\x00\x00\x00\x05" + plaintext[4:])

        def open(self, aad, body):
            return rx.open(aad, body)

    frags = fragment_message(msg, Corrupting(), 200)
    r = Reassembler()
    with pytest.raises(ProtocolError) as exc:
        for f in frags:
            r.add(f, Corrupting())
    assert exc.value.notify == NotifyType.INVALID_SYNTAX
    assert r.statistics().messages_invalid == 1


def test_fragment_size_too_small(cipher_pair):
    tx, _ = cipher_pair
    with pytest.raises(ConfigError):
        fragment_message(big_message(), tx, 60)


def test_closed_fragment_reencodes_identically(cipher_pair):
    tx, _ = cipher_pair
    for raw in fragment_message(big_message(), tx, 500)[:2]:
        assert push_message(pull_message(raw)) == raw
