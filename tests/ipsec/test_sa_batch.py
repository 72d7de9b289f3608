"""Batch hot paths of the SA: same bytes and the same counting as the single-packet path."""

from __future__ import annotations

import os

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6

from pyipsec.ipsec import Lifetime, SecurityAssociation

KEY = os.urandom(20)


def sa(**kw):
    base = dict(
        mode="tunnel",
        algorithm="aes128gcm16",
        key=KEY,
        tunnel_src="192.0.2.1",
        tunnel_dst="192.0.2.2",
        encap="udp",
    )
    base.update(kw)
    return SecurityAssociation(0x4242, **base)


def packets() -> list[bytes]:
    out = [bytes(IP(src="10.0.0.1", dst="10.0.0.2") / TCP() / bytes(n)) for n in (0, 1, 1400)]
    out.append(bytes(IPv6(src="fd00::1", dst="fd00::2") / UDP() / bytes(333)))
    out.append(bytes(IP(src="10.0.0.1", dst="10.0.0.2") / UDP() / b"x"))  # short: general path
    out.append(b"\x45" + bytes(50))  # malformed IPv4 lengths: counted, left out
    out.append(bytes(IP(src="10.0.0.1", dst="10.0.0.2") / TCP() / bytes(99)))
    return out


@pytest.mark.parametrize("alg", ["aes128gcm16", "chacha20poly1305", "aes128-sha256"])
def test_encapsulate_batch_equals_single_path(alg: str) -> None:
    key = os.urandom({"aes128gcm16": 20, "chacha20poly1305": 36, "aes128-sha256": 48}[alg])
    one, many, rx = sa(algorithm=alg, key=key), sa(algorithm=alg, key=key), None
    errors: dict[str, int] = {}
    batch = many.encapsulate_esp_batch(packets(), 1.0, errors)
    single = []
    for p in packets():
        try:
            single.append(one.encapsulate_esp(p, 1.0))
        except Exception as exc:
            assert type(exc).__name__ == "MalformedPacket"
    if alg != "aes128-sha256":  # CBC IVs are random: compare by decryption only
        assert batch == single
    assert errors == {"malformed_packets": 1}
    a, b = one.statistics(), many.statistics()
    assert (a.sequence_out, a.packets_out, a.bytes_out, a.malformed_packets) == (
        b.sequence_out, b.packets_out, b.bytes_out, b.malformed_packets,
    )  # fmt: skip
    rx = sa(algorithm=alg, key=key)
    out: list[bytes] = []
    rx.decapsulate_esp_batch([(m, b"\0" * 4, b"\0" * 4) for m in batch], 1.0, out, errors)
    expect = [p for p in packets() if p != b"\x45" + bytes(50)]
    assert out == expect and errors == {"malformed_packets": 1}
    assert rx.statistics().packets_in == len(expect) == rx.statistics().replay_top


def test_decapsulate_batch_counts_every_rejection() -> None:
    tx, rx = sa(), sa()
    msgs = tx.encapsulate_esp_batch(packets()[:4], 1.0, {})
    bad = bytearray(msgs[1])
    bad[-3] ^= 0x10
    other = sa().encapsulate_esp_batch(packets()[:1], 1.0, {})[0]
    other = b"\0\0\x99\x99" + other[4:]  # an SPI this SA does not have
    a = b"\0" * 4
    items = [(msgs[0], a, a), (bytes(bad), a, a), (msgs[0], a, a), (other, a, a)]
    items += [
        (msgs[2], a, a),
        (msgs[1], a, a),
        (msgs[3], a, a),
        ((0x4242).to_bytes(4, "big") + bytes([0, 0, 0, 9, 1]), a, a),
    ]
    out: list[bytes] = []
    errors: dict[str, int] = {}
    rx.decapsulate_esp_batch(items, 1.0, out, errors)
    assert out == [packets()[0], packets()[2], packets()[1], packets()[3]]
    assert errors == {
        "packets_not_authenticated": 1,
        "replayed_packets": 1,
        "bad_spi_packets": 1,
        "malformed_packets": 1,
    }
    s = rx.statistics()
    assert s.errors == 4 and s.packets_in == 4 and s.replay_top == 4


def test_decapsulate_batch_checks_selectors() -> None:
    class Sel:
        generation = 1

        def matches(self, flow) -> bool:
            return flow.dport != 99

    tx, rx = sa(), sa(selectors=Sel())
    pkts = [bytes(IP(src="10.0.0.1", dst="10.0.0.2") / UDP(dport=d) / b"abc") for d in (98, 99)]
    msgs = tx.encapsulate_esp_batch(pkts * 3, 1.0, {})
    out: list[bytes] = []
    errors: dict[str, int] = {}
    rx.decapsulate_esp_batch([(m, b"", b"") for m in msgs], 1.0, out, errors)
    assert out == [pkts[0]] * 3 and errors == {"selector_mismatch_packets": 3}
    assert rx.statistics().selector_mismatch_packets == 3 and rx.statistics().packets_in == 3


def test_lifetime_limits_inside_a_batch() -> None:
    life = Lifetime(soft_packets=3, hard_packets=5)
    tx, rx = sa(lifetime=life), sa(lifetime=life)
    pkt = packets()[2]
    errors: dict[str, int] = {}
    msgs = tx.encapsulate_esp_batch([pkt] * 7, 1.0, errors)
    assert len(msgs) == 5 and errors == {"expired_sa_packets": 2}
    assert tx.statistics().hard_expired
    # the receiver: its own limits, the rest of the batch refused once the hard one is hit
    more = sa().encapsulate_esp_batch([pkt] * 7, 1.0, {})
    out: list[bytes] = []
    errors = {}
    rx.decapsulate_esp_batch([(m, b"", b"") for m in more], 1.0, out, errors)
    assert len(out) == 5 and errors == {"expired_sa_packets": 2}
    kinds = []
    while (ev := rx.next_event()) is not None:
        kinds.append(type(ev).__name__)
    assert kinds == ["SoftLifetimeExpired", "HardLifetimeExpired"]


def test_time_limit_applies_to_the_whole_batch() -> None:
    tx = sa(lifetime=Lifetime(hard_seconds=10))
    errors: dict[str, int] = {}
    assert len(tx.encapsulate_esp_batch(packets()[:3], 5.0, errors)) == 3
    assert tx.encapsulate_esp_batch(packets()[:3], 11.0, errors) == []
    assert errors == {"expired_sa_packets": 3}
