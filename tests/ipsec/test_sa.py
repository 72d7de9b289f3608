"""SecurityAssociation: configuration, lifetimes, sequence exhaustion, selectors, events,
statistics and secrecy of keys."""

from __future__ import annotations

import os

import pytest
from scapy.layers.inet import IP, TCP, UDP

from pyipsec.errors import ConfigError, LifetimeExpired, SelectorMismatch
from pyipsec.ipsec import (
    HardLifetimeExpired,
    Lifetime,
    SecurityAssociation,
    SequenceExhausted,
    SoftLifetimeExpired,
)
from pyipsec.wire.flow import Flow

KEY = os.urandom(20)
PKT = bytes(IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1, dport=2) / (b"z" * 72))  # 100 B


def pair(**kw):
    base = dict(
        mode="tunnel",
        algorithm="aes128gcm16",
        key=KEY,
        tunnel_src="192.0.2.1",
        tunnel_dst="192.0.2.2",
    )
    base.update(kw)
    return SecurityAssociation(0x777, **base), SecurityAssociation(0x777, **base)


def events(sa: SecurityAssociation) -> list:
    out = []
    while (e := sa.next_event()) is not None:
        out.append(e)
    return out


def test_soft_and_hard_packet_limits() -> None:
    tx, rx = pair(lifetime=Lifetime(soft_packets=3, hard_packets=5))
    wires = [tx.encapsulate(PKT) for _ in range(2)]
    assert events(tx) == []
    wires.append(tx.encapsulate(PKT))
    assert events(tx) == [SoftLifetimeExpired(0x777, "packets", 0.0)]
    wires += [tx.encapsulate(PKT) for _ in range(2)]
    assert events(tx) == [HardLifetimeExpired(0x777, "packets", 0.0)]
    with pytest.raises(LifetimeExpired):
        tx.encapsulate(PKT)
    assert tx.statistics().expired_sa_packets == 1
    assert tx.statistics().hard_expired and tx.statistics().soft_expired
    assert tx.statistics().packets_out == 5
    # the receiver counts its own packets
    for w in wires:
        rx.decapsulate(w)
    assert [type(e) for e in events(rx)] == [SoftLifetimeExpired, HardLifetimeExpired]
    with pytest.raises(LifetimeExpired):
        rx.decapsulate(wires[0])
    assert rx.statistics().expired_sa_packets == 1 and rx.statistics().packets_in == 5


def test_byte_limits_count_inner_bytes() -> None:
    tx, _ = pair(lifetime=Lifetime(soft_bytes=250, hard_bytes=400))
    tx.encapsulate(PKT, now=1.0)
    tx.encapsulate(PKT, now=2.0)
    assert events(tx) == []
    tx.encapsulate(PKT, now=3.0)  # 300 bytes
    assert events(tx) == [SoftLifetimeExpired(0x777, "bytes", 3.0)]
    tx.encapsulate(PKT, now=4.0)  # 400 bytes
    assert events(tx) == [HardLifetimeExpired(0x777, "bytes", 4.0)]
    with pytest.raises(LifetimeExpired):
        tx.encapsulate(PKT, now=5.0)


def test_soft_and_hard_together() -> None:
    tx, _ = pair(lifetime=Lifetime(soft_packets=1, hard_packets=1))
    tx.encapsulate(PKT)
    assert [type(e) for e in events(tx)] == [SoftLifetimeExpired, HardLifetimeExpired]


def test_time_limits_from_creation_time() -> None:
    tx, rx = pair(lifetime=Lifetime(soft_seconds=10, hard_seconds=20), now=100.0)
    tx.check_lifetime(105.0)
    assert events(tx) == []
    w = tx.encapsulate(PKT, now=109.0)
    tx.check_lifetime(110.0)
    assert events(tx) == [SoftLifetimeExpired(0x777, "seconds", 110.0)]
    tx.check_lifetime(111.0)
    assert events(tx) == []  # reported once
    assert rx.decapsulate(w, now=115.0) == PKT
    # hard limit noticed by traffic itself, without a check_lifetime call
    with pytest.raises(LifetimeExpired):
        tx.encapsulate(PKT, now=120.0)
    assert [type(e) for e in events(tx)] == [HardLifetimeExpired]
    with pytest.raises(LifetimeExpired):
        rx.decapsulate(w, now=121.0)
    assert rx.statistics().expired_sa_packets == 1


def test_invalid_lifetimes() -> None:
    with pytest.raises(ConfigError):
        Lifetime(soft_packets=10, hard_packets=5)
    with pytest.raises(ConfigError):
        Lifetime(hard_seconds=0)


@pytest.mark.parametrize("esn", [False, True])
def test_sequence_number_never_wraps(esn: bool) -> None:
    tx, rx = pair(esn=esn)
    top = (1 << 64) - 1 if esn else (1 << 32) - 1
    tx._seq = top - 2
    rx._replay.update(top - 3)
    rx.decapsulate(tx.encapsulate(PKT))
    assert events(tx) == []
    last = tx.encapsulate(PKT)  # sequence number 2^32-1 (2^64-1) is still sent
    assert events(tx) == [SequenceExhausted(0x777, 0.0)]
    assert rx.decapsulate(last) == PKT
    with pytest.raises(LifetimeExpired):
        tx.encapsulate(PKT)
    s = tx.statistics()
    assert s.sequence_out == top and s.hard_expired and s.expired_sa_packets == 1


class PortSelector:
    """Duck-typed selector: remote port 1 only (inbound: the packet's source port)."""

    def __init__(self) -> None:
        self.seen: list[Flow] = []

    def matches(self, flow: Flow) -> bool:
        self.seen.append(flow)
        return flow.sport == 1


@pytest.mark.parametrize("mode", ["transport", "tunnel"])
def test_selector_mismatch_is_counted_and_changes_nothing(mode: str) -> None:
    sel = PortSelector()
    tx, rx = pair(mode=mode, selectors=sel)
    ok = tx.encapsulate(PKT)
    bad_inner = bytes(IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=5, dport=2))
    bad = tx.encapsulate(bad_inner)
    with pytest.raises(SelectorMismatch):
        rx.decapsulate(bad)
    s = rx.statistics()
    assert s.selector_mismatch_packets == 1 and s.packets_in == 0 and s.replay_top == 0
    assert rx.decapsulate(ok) == PKT
    assert sel.seen[-1] == Flow(4, 0x0A000001, 0x0A000002, 17, 1, 2)
    with pytest.raises(SelectorMismatch):  # still refused, still not replay-marked
        rx.decapsulate(bad)
    assert rx.statistics().replayed_packets == 0


def test_selector_from_the_policy_layer() -> None:
    """The SA only duck-types ``matches(flow)``; H2's Selector checks inbound flows with
    local = destination, remote = source by default."""
    sel_mod = pytest.importorskip("pyipsec.ipsec.selectors")
    sel = sel_mod.Selector.parse("10.0.0.2/32[udp]", "10.0.0.1/32[udp/1]")
    tx, rx = pair(selectors=sel)
    assert rx.decapsulate(tx.encapsulate(PKT)) == PKT
    other = bytes(IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=7, dport=2))
    with pytest.raises(SelectorMismatch):
        rx.decapsulate(tx.encapsulate(other))


def test_config_errors() -> None:
    bad = [
        dict(spi=1),
        dict(protocol="gre"),
        dict(mode="beet"),
        dict(algorithm="rot13"),
        dict(algorithm="sha256"),  # AH keyword for ESP
        dict(key=KEY[:-1]),
        dict(tunnel_src=None),
        dict(tunnel_src="2001:db8::1"),  # family mismatch
        dict(tunnel_src="not-an-address"),
        dict(mode="transport", tfc_padding=100, tunnel_src=None, tunnel_dst=None),
        dict(encap="tcp"),
        dict(protocol="ah", algorithm="sha256", key=os.urandom(32), encap="udp"),
        dict(replay_window=16),
    ]
    for b in bad:
        kw = dict(
            mode="tunnel",
            algorithm="aes128gcm16",
            key=KEY,
            tunnel_src="192.0.2.1",
            tunnel_dst="192.0.2.2",
        )
        spi = b.pop("spi", 0x777)
        kw.update(b)
        with pytest.raises(ConfigError):
            SecurityAssociation(spi, **kw)


def test_key_never_in_repr_or_errors() -> None:
    key = bytes.fromhex("deadbeef" * 5)
    sa = SecurityAssociation(0x777, algorithm="aes128gcm16", key=key)
    assert "deadbeef" not in repr(sa) and "deadbeef" not in str(sa.statistics())
    assert "\\xde\\xad" not in repr(sa)
    with pytest.raises(ConfigError) as e:
        SecurityAssociation(0x777, algorithm="aes128gcm16", key=key + b"\x00")
    assert "deadbeef" not in str(e.value)


def test_attributes_weak_flag_and_overhead() -> None:
    sa = SecurityAssociation(
        0x777,
        mode="tunnel",
        algorithm="3des-sha1",
        key=os.urandom(44),
        tunnel_src="192.0.2.1",
        tunnel_dst="192.0.2.2",
        encap="udp",
    )
    assert sa.weak and sa.statistics().weak
    assert (sa.spi, sa.protocol, sa.mode, sa.algorithm, sa.encap) == (
        0x777,
        "esp",
        "tunnel",
        "3des-sha1",
        "udp",
    )
    assert sa.tunnel_src == "192.0.2.1" and not sa.esn
    assert not SecurityAssociation(0x777, algorithm="aes128gcm16", key=KEY).weak
    for name, klen in (("aes128gcm16", 20), ("aes256-sha512", 96), ("3des-sha1", 44)):
        for mode in ("transport", "tunnel"):
            kw = dict(tunnel_src="192.0.2.1", tunnel_dst="192.0.2.2") if mode == "tunnel" else {}
            s = SecurityAssociation(0x777, mode=mode, algorithm=name, key=os.urandom(klen), **kw)
            growth = set()
            for n in range(0, 40):
                p = bytes(IP(src="10.0.0.1", dst="10.0.0.2") / UDP() / bytes(n))
                growth.add(len(s.encapsulate(p)) - len(p))
            assert max(growth) == s.overhead  # worst case reached, never exceeded


def test_statistics_snapshot_is_frozen() -> None:
    tx, _ = pair()
    s = tx.statistics()
    with pytest.raises(AttributeError):
        s.packets_out = 5  # type: ignore[misc]
    tx.encapsulate(PKT)
    assert s.packets_out == 0 and tx.statistics().packets_out == 1


def test_time_limits_noticed_by_traffic_alone() -> None:
    tx, rx = pair(lifetime=Lifetime(soft_seconds=10, hard_seconds=20), now=0.0)
    w = tx.encapsulate(PKT, now=12.0)  # past the soft limit: event, packet still sent
    assert events(tx) == [SoftLifetimeExpired(0x777, "seconds", 12.0)]
    assert rx.decapsulate(w, now=13.0) == PKT
    assert events(rx) == [SoftLifetimeExpired(0x777, "seconds", 13.0)]
    w2 = tx.encapsulate(PKT, now=19.0)
    with pytest.raises(LifetimeExpired):
        rx.decapsulate(w2, now=20.0)
    assert events(rx) == [HardLifetimeExpired(0x777, "seconds", 20.0)]
    assert rx.statistics().packets_in == 1 and rx.statistics().replay_top == 1


def test_weak_algorithm_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="pyipsec.ipsec.sa"):
        SecurityAssociation(0x777, algorithm="3des-sha1", key=os.urandom(44))
        SecurityAssociation(0x778, algorithm="aes128gcm16", key=KEY)
    msgs = [r.getMessage() for r in caplog.records]
    assert len(msgs) == 1 and "3des-sha1" in msgs[0] and "0x00000777" in msgs[0]


@pytest.mark.parametrize("name", ["aes128gcm16", "aes128-sha256", "sha256", "aes128gmac"])
@pytest.mark.parametrize("mode", ["transport", "tunnel"])
@pytest.mark.parametrize("conv", [bytearray, memoryview])
def test_bytearray_and_memoryview_inputs(name: str, mode: str, conv) -> None:
    """The data plane reads into bytearrays and slices memoryviews out of GRO batches."""
    from pyipsec.crypto.esp_algorithms import ALGORITHMS

    alg = ALGORITHMS[name]
    kw = dict(protocol=alg.protocol, mode=mode, algorithm=name, key=os.urandom(alg.key_len))
    if mode == "tunnel":
        kw.update(tunnel_src="192.0.2.1", tunnel_dst="192.0.2.2")
    tx, rx = SecurityAssociation(0x900, **kw), SecurityAssociation(0x900, **kw)
    wire = tx.encapsulate(conv(PKT))
    assert bytes(rx.decapsulate(conv(wire))) == PKT
    if alg.protocol == "esp":
        msg = tx.encapsulate_esp(conv(PKT))
        assert rx.decapsulate_esp(conv(msg), "10.0.0.1", "10.0.0.2")[20:] == PKT[20:]


HOT_CONFIGS = [
    dict(mode="tunnel", tunnel_src="192.0.2.1", tunnel_dst="192.0.2.2"),
    dict(
        mode="tunnel",
        tunnel_src="192.0.2.1",
        tunnel_dst="192.0.2.2",
        encap="udp",
        encap_sport=4501,
        encap_dport=4502,
    ),
    dict(mode="tunnel", tunnel_src="2001:db8::1", tunnel_dst="2001:db8::2"),
    dict(mode="transport"),
]


@pytest.mark.parametrize("cfg", HOT_CONFIGS, ids=["tunnel4", "tunnel4-udp", "tunnel6", "transport"])
@pytest.mark.parametrize("name", ["aes128gcm16", "aes256gcm16", "chacha20poly1305"])
def test_hot_path_output_equals_general_path(cfg: dict, name: str) -> None:
    """AEAD with a counter IV is deterministic: the inline hot path must produce exactly
    the bytes of the general EspProcessor code, and the general decapsulation must accept
    them (and the reverse)."""
    from pyipsec.ipsec.esp import EspProcessor

    key = os.urandom(36 if name != "aes128gcm16" else 20)
    tx = SecurityAssociation(0x901, algorithm=name, key=key, **cfg)
    rx = SecurityAssociation(0x901, algorithm=name, key=key, **cfg)
    rx_slow = SecurityAssociation(0x901, algorithm=name, key=key, **cfg)
    for size in (0, 1, 2, 3, 100, 1400):
        pkt = bytes(IP(src="10.0.0.1", dst="10.0.0.2", tos=0x2E) / UDP() / bytes(size))
        seq = tx.statistics().sequence_out + 1
        hot = tx.encapsulate(pkt)
        general = EspProcessor.encapsulate(tx._proc, pkt, seq)
        assert hot == general
        # the general decapsulation path and the hot path give the same inner packet
        slow = rx_slow._decapsulate_slow(hot, None)
        fast = rx.decapsulate(EspProcessor.encapsulate(tx._proc, pkt, seq + 10_000))
        assert slow == fast
        assert slow == pkt or (cfg["mode"] == "transport" and slow[20:] == pkt[20:])
    assert rx.statistics().errors == 0 == rx_slow.statistics().errors
    assert rx.statistics().packets_in == 6 == rx_slow.statistics().packets_in


TUNNEL_CONFIGS = [HOT_CONFIGS[1], HOT_CONFIGS[2]]


@pytest.mark.parametrize("cfg", TUNNEL_CONFIGS, ids=["tunnel4-udp", "tunnel6"])
@pytest.mark.parametrize("name", ["aes128gcm16", "chacha20poly1305"])
@pytest.mark.parametrize("inner_v", [4, 6])
def test_esp_message_hot_path_equals_general_path(cfg: dict, name: str, inner_v: int) -> None:
    """encapsulate_esp / decapsulate_esp (the UDP 4500 path) inline the AEAD tunnel case:
    same bytes as EspProcessor.encapsulate_esp, and the general path accepts them."""
    from scapy.layers.inet6 import IPv6

    from pyipsec.ipsec.esp import EspProcessor

    key = os.urandom(36 if name != "aes128gcm16" else 20)
    tx = SecurityAssociation(0x905, algorithm=name, key=key, **cfg)
    rx = SecurityAssociation(0x905, algorithm=name, key=key, **cfg)
    rx_slow = SecurityAssociation(0x905, algorithm=name, key=key, **cfg)
    assert tx._fast_esp
    for size in (0, 1, 2, 3, 100, 1400):
        if inner_v == 4:
            pkt = bytes(IP(src="10.0.0.1", dst="10.0.0.2", tos=0x2E) / UDP() / bytes(size))
        else:
            pkt = bytes(IPv6(src="fd00::1", dst="fd00::2") / UDP() / bytes(size))
        seq = tx.statistics().sequence_out + 1
        hot = tx.encapsulate_esp(pkt, 1.0)
        assert hot == EspProcessor.encapsulate_esp(tx._proc, pkt, seq)
        assert rx.decapsulate_esp(memoryview(hot), b"\0" * 4, b"\0" * 4, 1.0) == pkt
        rx_slow._fast_esp = False
        assert rx_slow.decapsulate_esp(hot, b"\0" * 4, b"\0" * 4, 1.0) == pkt
    s = rx.statistics()
    assert s.packets_in == 6 and s.errors == 0 and s.replay_top == 6
    assert tx.statistics().packets_out == 6 and tx.statistics().sequence_out == 6
