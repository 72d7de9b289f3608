"""ESP and AH through SecurityAssociation: round trips, tamper detection, malformed input.

Property tests (hypothesis): every algorithm x mode x family x ESN x NAT-T round-trips;
any single flipped bit of the protected part is rejected with a typed error, counted, and
leaves the SA's state (replay window, traffic counters) unchanged.
"""

from __future__ import annotations

import os
import struct

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6

from pyipsec.crypto.esp_algorithms import ALGORITHMS
from pyipsec.errors import (
    DecryptionError,
    IntegrityError,
    MalformedPacket,
    PacketError,
    ReplayedPacket,
    UnknownSpi,
)
from pyipsec.ipsec import SecurityAssociation

CANONICAL = sorted({a.name for a in ALGORITHMS.values()})
ESP_ALGS = [n for n in CANONICAL if ALGORITHMS[n].protocol == "esp"]


def make_pair(name: str, mode: str, family: int, esn: bool = False, encap: bool = False, **extra):
    alg = ALGORITHMS[name]
    key = os.urandom(alg.key_len)
    kw = dict(
        protocol=alg.protocol,
        mode=mode,
        algorithm=name,
        key=key,
        esn=esn,
        encap="udp" if encap and alg.protocol == "esp" else None,
        **extra,
    )
    if mode == "tunnel":
        if family == 4:
            kw.update(tunnel_src="192.0.2.1", tunnel_dst="192.0.2.2")
        else:
            kw.update(tunnel_src="2001:db8::1", tunnel_dst="2001:db8::2")
    return SecurityAssociation(0x4242, **kw), SecurityAssociation(0x4242, **kw)


def packet(family: int, payload: bytes, proto: str = "udp") -> bytes:
    l4 = UDP(sport=1111, dport=2222) if proto == "udp" else TCP(sport=1111, dport=2222)
    if family == 4:
        return bytes(IP(src="10.0.0.1", dst="10.0.0.2") / l4 / payload)
    return bytes(IPv6(src="fd00::1", dst="fd00::2") / l4 / payload)


def snapshot(sa: SecurityAssociation):
    s = sa.statistics()
    return (s.packets_in, s.bytes_in, s.replay_top, s.packets_out, s.sequence_out)


configs = st.tuples(
    st.sampled_from(CANONICAL),
    st.sampled_from(["transport", "tunnel"]),
    st.sampled_from([4, 6]),
    st.booleans(),
    st.booleans(),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cfg=configs, payloads=st.lists(st.binary(max_size=300), min_size=1, max_size=4))
def test_round_trip(cfg, payloads) -> None:
    name, mode, family, esn, encap = cfg
    tx, rx = make_pair(name, mode, family, esn, encap)
    total = 0
    for p in payloads:
        pkt = packet(family, p)
        out = tx.encapsulate(pkt)
        assert len(out) - len(pkt) <= tx.overhead
        assert rx.decapsulate(out) == pkt
        total += len(pkt)
        if ALGORITHMS[name].confidential and len(p) >= 16:
            assert p not in out  # the payload does not travel in clear
    st_rx = rx.statistics()
    assert st_rx.packets_in == len(payloads) and st_rx.bytes_in == total
    assert st_rx.authenticated_bytes_in == total
    assert st_rx.confidential_bytes_in == (total if ALGORITHMS[name].confidential else 0)
    assert tx.statistics().packets_out == len(payloads) and st_rx.errors == 0


def immutable_positions(sa: SecurityAssociation, wire: bytes) -> range | list[int]:
    """Byte positions the ICV (or a structural check) must protect."""
    off, _, _ = sa._proc.locate(wire)
    if sa.protocol == "esp":
        return range(off, len(wire))  # the ESP message: SPI .. ICV
    if wire[0] >> 4 == 4:
        mutable = {1, 6, 7, 8, 10, 11}  # TOS, flags/fragment, TTL, checksum
    else:
        mutable = {0, 1, 2, 3, 7}  # traffic class, flow label, hop limit
    return [i for i in range(len(wire)) if i not in mutable]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cfg=configs, payload=st.binary(max_size=100), data=st.data())
def test_any_flipped_bit_is_rejected_counted_and_changes_nothing(cfg, payload, data) -> None:
    name, mode, family, esn, encap = cfg
    tx, rx = make_pair(name, mode, family, esn, encap)
    first = tx.encapsulate(packet(family, payload))
    assert rx.decapsulate(first)
    wire = tx.encapsulate(packet(family, payload + b"!"))
    positions = immutable_positions(rx, wire)
    pos = data.draw(st.sampled_from(list(positions)))
    bit = data.draw(st.integers(0, 7))
    bad = bytearray(wire)
    bad[pos] ^= 1 << bit
    before = snapshot(rx)
    errors_before = rx.statistics().errors
    with pytest.raises(PacketError) as exc:
        rx.decapsulate(bytes(bad))
    assert snapshot(rx) == before
    stats = rx.statistics()
    assert stats.errors == errors_before + 1
    assert getattr(stats, exc.value.counter) >= 1
    # the window did not move: the genuine packet is still accepted, the replay refused
    assert rx.decapsulate(wire) == packet(family, payload + b"!")
    with pytest.raises(ReplayedPacket):
        rx.decapsulate(first)


def test_replay_window_through_sa() -> None:
    tx, rx = make_pair("aes128gcm16", "tunnel", 4, replay_window=32)
    pkts = [tx.encapsulate(packet(4, bytes([i]))) for i in range(60)]
    assert rx.decapsulate(pkts[10])
    assert rx.decapsulate(pkts[5])  # out of order, inside the window
    with pytest.raises(ReplayedPacket):
        rx.decapsulate(pkts[5])
    assert rx.decapsulate(pkts[59])
    with pytest.raises(ReplayedPacket):
        rx.decapsulate(pkts[20])  # 21 + 32 <= 60: left of the window
    s = rx.statistics()
    assert s.replayed_packets == 2 and s.packets_in == 3 and s.replay_top == 60


def test_wrong_spi_counts_bad_spi() -> None:
    tx, _ = make_pair("aes128gcm16", "tunnel", 4)
    _, other = make_pair("aes128gcm16", "tunnel", 4)
    wire = bytearray(tx.encapsulate(packet(4, b"x")))
    wire[20:24] = struct.pack("!I", 0x999)
    with pytest.raises(UnknownSpi):
        other.decapsulate(bytes(wire))
    assert other.statistics().bad_spi_packets == 1


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x45",
        bytes(20),
        bytes(IP(src="1.1.1.1", dst="2.2.2.2", proto=50) / (b"\x00" * 4)),  # short ESP
        bytes(IP(src="1.1.1.1", dst="2.2.2.2") / TCP(sport=9, dport=9) / b"hello world!"),
        bytes(IP(src="1.1.1.1", dst="2.2.2.2", proto=50, flags="MF") / (b"\x01" * 40)),
        bytes(IP(src="1.1.1.1", dst="2.2.2.2", proto=50) / (b"\x01" * 40)) + b"trailing",
        bytes(IPv6(src="::1", dst="::2", nh=50) / (b"\x01" * 40))[:-3],
        bytes(IPv6(src="::1", dst="::2", nh=6) / (b"\x01" * 40)),
    ],
)
def test_malformed_outer_packets(raw: bytes) -> None:
    _, rx = make_pair("aes128gcm16", "tunnel", 4)
    with pytest.raises(MalformedPacket):
        rx.decapsulate(raw)
    assert rx.statistics().malformed_packets == 1 and rx.statistics().packets_in == 0


@pytest.mark.parametrize("name", ["aes128gcm16", "aes128-sha256", "sha256"])
def test_malformed_inner_packets_on_encapsulate(name: str) -> None:
    for mode in ("transport", "tunnel"):
        tx, _ = make_pair(name, mode, 4)
        for raw in (b"", b"\x45" * 19, bytes(IP() / UDP())[:-1] + b"", b"\x75" + bytes(40)):
            with pytest.raises(MalformedPacket):
                tx.encapsulate(raw)
        if mode == "transport":
            with pytest.raises(MalformedPacket):
                tx.encapsulate(bytes(IP(flags="MF") / UDP()))
        assert tx.statistics().sequence_out == 0  # no sequence number consumed
        assert tx.statistics().malformed_packets >= 4


def craft(sa: SecurityAssociation, plaintext: bytes, seq: int) -> bytes:
    """An ESP message with a valid ICV around arbitrary decrypted bytes."""
    hdr = struct.pack("!II", sa.spi, seq)
    a, b = sa._proc._t.seal(seq, hdr, plaintext)
    return hdr + a + b


def outer4(msg: bytes) -> bytes:
    return bytes(IP(src="192.0.2.1", dst="192.0.2.2", proto=50) / msg)


@pytest.mark.parametrize("name", ["aes128gcm16", "aes256-sha256", "chacha20poly1305"])
def test_bad_padding_after_valid_icv_is_not_decrypted(name: str) -> None:
    _, rx = make_pair(name, "tunnel", 4)
    inner = packet(4, b"data")
    bs = max(ALGORITHMS[name].block_size, 4)
    pad = -(len(inner) + 2) % bs or bs
    wrong = inner + bytes([9] * pad) + bytes([pad, 4])  # padding must be 1, 2, 3, ...
    with pytest.raises(DecryptionError):
        rx.decapsulate(outer4(craft(rx, wrong, 1)))
    filler = bytes(-(len(inner) + 2) % bs)
    too_long = inner + filler + bytes([255, 4])  # pad length beyond the payload
    with pytest.raises(DecryptionError):
        rx.decapsulate(outer4(craft(rx, too_long, 2)))
    s = rx.statistics()
    assert s.packets_not_decrypted == 2 and s.replay_top == 0
    # a correct packet with the same sequence numbers is still accepted
    good = inner + bytes(range(1, pad + 1)) + bytes([pad, 4])
    assert rx.decapsulate(outer4(craft(rx, good, 1))) == inner


def test_dummy_packet_next_header_59_gives_nothing() -> None:
    _, rx = make_pair("aes128gcm16", "tunnel", 4)
    assert rx.decapsulate(outer4(craft(rx, b"\x01\x02\x02\x3b", 1))) == b""
    with pytest.raises(MalformedPacket):  # next header 6 is not IP in tunnel mode
        rx.decapsulate(outer4(craft(rx, packet(4, b"x") + b"\x01\x02\x02\x06", 2)))


def test_tfc_padding_hides_the_length() -> None:
    tx, rx = make_pair("aes128gcm16", "tunnel", 4, tfc_padding=300)
    sizes = set()
    for n in (1, 50, 200):
        pkt = packet(4, bytes(n))
        out = tx.encapsulate(pkt)
        sizes.add(len(out))
        assert rx.decapsulate(out) == pkt
    assert len(sizes) == 1
    big = packet(4, bytes(400))
    assert rx.decapsulate(tx.encapsulate(big)) == big


@pytest.mark.parametrize(
    "name", ["aes128gcm8", "aes192gcm12", "aes256gcm16", "chacha20poly1305", "aes256gmac"]
)
@pytest.mark.parametrize("esn", [False, True])
def test_aead_esp_bytes_match_an_independent_construction(name: str, esn: bool) -> None:
    """RFC 4106 / 7634 / 4543 built by hand with cryptography: counter IV = sequence
    number, AAD = SPI || [seq high] || seq low, GCM tag truncated to the ICV length."""
    alg = ALGORITHMS[name]
    key = os.urandom(alg.key_len)
    sa = SecurityAssociation(0x1234, algorithm=name, key=key, esn=esn)
    seq = (3 << 32) + 7 if esn else 7
    sa._seq = seq - 1
    inner = packet(4, b"independent")
    msg = sa.encapsulate_esp(inner)
    payload = inner[20:]
    pad = -(len(payload) + 2) % 4
    pt = payload + bytes(range(1, pad + 1)) + bytes([pad, 17])
    iv = struct.pack("!Q", seq)
    hdr = struct.pack("!II", 0x1234, seq & 0xFFFFFFFF)
    aad = hdr[:4] + struct.pack("!I", seq >> 32) + hdr[4:] if esn else hdr
    ek, salt = key[: alg.encr_key_len], key[alg.encr_key_len :]
    if alg.kind == "gmac":
        tag = AESGCM(ek).encrypt(salt + iv, b"", aad + iv + pt)
        want = hdr + iv + pt + tag
    else:
        aead = ChaCha20Poly1305(ek) if name.startswith("chacha") else AESGCM(ek)
        ct = aead.encrypt(salt + iv, pt, aad)
        want = hdr + iv + ct[: len(ct) - 16 + alg.icv_len]
    assert msg == want
    rx = SecurityAssociation(0x1234, algorithm=name, key=key, esn=esn)
    rx._replay.update(seq - 1)
    out = rx.decapsulate_esp(msg, "10.0.0.1", "10.0.0.2")
    assert out[20:] == inner[20:] and out[9] == 17 and out[12:20] == inner[12:20]


def test_cbc_iv_is_fresh_per_packet() -> None:
    tx, rx = make_pair("aes128-sha256", "tunnel", 4)
    pkt = packet(4, b"same payload" * 4)
    a, b = tx.encapsulate(pkt), tx.encapsulate(pkt)
    assert a[28:44] != b[28:44]  # IVs differ
    assert a[44:-16] != b[44:-16]  # so do the ciphertexts
    assert rx.decapsulate(b) == pkt and rx.decapsulate(a) == pkt  # order does not matter


def test_ipv6_transport_esp_keeps_extension_headers_in_front() -> None:
    from scapy.layers.inet6 import IPv6ExtHdrFragment, IPv6ExtHdrHopByHop

    tx, rx = make_pair("aes128gcm16", "transport", 6)
    pkt = bytes(IPv6(src="fd00::1", dst="fd00::2") / IPv6ExtHdrHopByHop() / UDP() / (b"x" * 9))
    out = tx.encapsulate(pkt)
    assert out[6] == 0 and out[40] == 50  # hop-by-hop, then ESP
    assert rx.decapsulate(out) == pkt
    # an atomic fragment (RFC 6946) is a whole packet: ESP goes after its header
    frag = bytes(IPv6(src="fd00::1", dst="fd00::2") / IPv6ExtHdrFragment(m=0) / UDP() / b"y")
    out = tx.encapsulate(frag)
    assert out[6] == 44 and out[40] == 50
    assert rx.decapsulate(out) == frag
    real = bytes(IPv6(src="fd00::1", dst="fd00::2") / IPv6ExtHdrFragment(m=1) / UDP() / b"y")
    with pytest.raises(MalformedPacket):
        tx.encapsulate(real)
    bad = bytearray(out)
    bad[43] |= 1  # M flag: now a real fragment, to be reassembled first
    with pytest.raises(MalformedPacket):
        rx.decapsulate(bytes(bad))


@pytest.mark.parametrize("name", ["aes128gcm16", "chacha20poly1305", "aes128-sha256", "sha256"])
@pytest.mark.parametrize("mode", ["transport", "tunnel"])
def test_flipped_icv_is_not_authenticated(name: str, mode: str) -> None:
    tx, rx = make_pair(name, mode, 4)
    wire = tx.encapsulate(packet(4, b"payload"))
    if ALGORITHMS[name].protocol == "esp":
        bad = wire[:-1] + bytes([wire[-1] ^ 0x80])  # last ICV byte
    else:
        bad = wire[:32] + bytes([wire[32] ^ 0x80]) + wire[33:]  # first ICV byte
    with pytest.raises(IntegrityError):
        rx.decapsulate(bad)
    s = rx.statistics()
    assert s.packets_not_authenticated == 1 and s.packets_in == 0 and s.replay_top == 0
