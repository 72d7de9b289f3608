"""pyipsec.ipsec.sa_inbound: the receiving side of SecurityAssociation (decapsulate,
decapsulate_esp, the selector check and its per-flow cache), hot paths against the
general path, every rejection counted and harmless."""

from __future__ import annotations

import os
import struct

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6

from pyipsec.errors import (
    ConfigError,
    IntegrityError,
    PacketError,
    ReplayedPacket,
    SelectorMismatch,
    UnknownSpi,
)
from pyipsec.ipsec import SecurityAssociation
from pyipsec.ipsec.sa_inbound import InboundPaths, packed_addr
from pyipsec.wire.flow import Flow
from pyipsec.wire.ip import ipv4_header_checksum

KEY = os.urandom(20)
PKT = bytes(IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1, dport=2) / (b"z" * 72))  # 100 B
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
HOT_IDS = ["tunnel4", "tunnel4-udp", "tunnel6", "transport"]


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


def test_packed_addr() -> None:
    assert packed_addr("192.0.2.1", "src") == bytes([192, 0, 2, 1])
    assert packed_addr("2001:db8::1", "src") == bytes.fromhex("20010db8" + "00" * 11 + "01")
    assert packed_addr(b"\1\2\3\4", "src") == b"\1\2\3\4"
    assert packed_addr(None, "src") is None
    with pytest.raises(ConfigError) as e:
        packed_addr("192.0.2.300", "tunnel_dst")
    assert e.value.key == "tunnel_dst" and "192.0.2.300" in str(e.value)


def test_inbound_methods_are_the_sas_own() -> None:
    """The SA's inbound methods are these functions themselves, not wrappers around them:
    the hot paths pay no extra call."""
    assert issubclass(SecurityAssociation, InboundPaths)
    for name in ("decapsulate", "decapsulate_esp", "_selected", "_accept", "_tunnel_inner",
                 "_decapsulate_transport4", "_decapsulate_slow"):  # fmt: skip
        assert name not in vars(SecurityAssociation)
        assert getattr(SecurityAssociation, name) is vars(InboundPaths)[name]


def test_transport_hot_path_out_of_order_and_replays() -> None:
    """In-order packets take the transport hot path; an older one in the window takes the
    general path and is accepted once; its replay is refused and counted."""
    tx, rx = pair(mode="transport")
    wires = [tx.encapsulate(PKT) for _ in range(6)]
    for i in (0, 1, 4):
        inner = rx.decapsulate(wires[i])
        assert inner[20:] == PKT[20:] and inner[9] == 17 and inner[:2] == PKT[:2]
        assert ipv4_header_checksum(inner[:20]) == 0  # the rebuilt header's sum checks
    assert rx.decapsulate(wires[2])[20:] == PKT[20:]  # below the top: general path
    with pytest.raises(ReplayedPacket):
        rx.decapsulate(wires[2])
    with pytest.raises(ReplayedPacket):
        rx.decapsulate(wires[4])
    assert rx.decapsulate(wires[5])[20:] == PKT[20:]
    s = rx.statistics()
    assert s.packets_in == 5 and s.replayed_packets == 2 and s.errors == 2
    assert s.replay_top == 6 and s.bytes_in == 5 * len(PKT)


@pytest.mark.parametrize("esp_message", [False, True])
def test_hot_path_replay_window_equals_the_general_one(esp_message: bool) -> None:
    """The hot path sets replay bits inline within a 64-bit block and calls the window
    across blocks; after an in-order run with gaps filled later, its window holds exactly
    what the general path's holds."""
    tx, rx = pair(replay_window=128)
    _, rx_slow = pair(replay_window=128)
    rx_slow._fast_in = rx_slow._fast_esp = False
    enc = tx.encapsulate_esp if esp_message else tx.encapsulate
    msgs = [enc(PKT) for _ in range(300)]
    order = [i for i in range(300) if i % 5] + [i for i in range(200, 300) if i % 5 == 0]
    for sa in (rx, rx_slow):
        for i in order:
            if esp_message:
                assert sa.decapsulate_esp(msgs[i], "192.0.2.1", "192.0.2.2") == PKT
            else:
                assert sa.decapsulate(msgs[i]) == PKT
    assert rx._replay.top == rx_slow._replay.top == 300
    assert rx._replay._blocks == rx_slow._replay._blocks
    for i in (0, 199, 250, 299):
        for sa in (rx, rx_slow):
            with pytest.raises(ReplayedPacket):
                if esp_message:
                    sa.decapsulate_esp(msgs[i], "192.0.2.1", "192.0.2.2")
                else:
                    sa.decapsulate(msgs[i])
    assert rx.statistics() == rx_slow.statistics()


@pytest.mark.parametrize("cfg", HOT_CONFIGS, ids=HOT_IDS)
def test_dummy_packets_decapsulate_to_nothing(cfg: dict) -> None:
    """Next header 59 (RFC 4303 section 2.6): the hot path hands it to the general path,
    which returns b"" and counts the packet, without a selector check."""
    sel = _CountingSelectors("10.0.0.2")
    tx = SecurityAssociation(0x903, algorithm="aes128gcm16", key=KEY, **cfg)
    rx = SecurityAssociation(0x903, algorithm="aes128gcm16", key=KEY, selectors=sel, **cfg)
    esp = tx._proc.seal(b"", 59, 1)
    if cfg.get("encap"):
        wire = bytes(IP(src="192.0.2.1", dst="192.0.2.2") / UDP(sport=4501, dport=4502) / esp)
    elif "2001" in cfg.get("tunnel_src", ""):
        wire = bytes(IPv6(src="2001:db8::1", dst="2001:db8::2", nh=50) / esp)
    else:
        wire = bytes(IP(src="192.0.2.1", dst="192.0.2.2", proto=50) / esp)
    assert rx.decapsulate(wire) == b""
    s = rx.statistics()
    assert s.packets_in == 1 and s.bytes_in == 0 and s.replay_top == 1 and s.errors == 0
    assert sel.calls == 0
    if cfg["mode"] == "tunnel":
        assert rx.decapsulate_esp(tx._proc.seal(b"", 59, 2), "192.0.2.1", "192.0.2.2") == b""
        assert rx.statistics().packets_in == 2


def test_udp_encapsulated_packet_with_a_wrong_udp_length_is_refused() -> None:
    tx, rx = pair(encap="udp")
    wire = bytearray(tx.encapsulate(PKT))
    struct.pack_into("!H", wire, 24, struct.unpack_from("!H", wire, 24)[0] - 4)
    with pytest.raises(PacketError):
        rx.decapsulate(bytes(wire))
    s = rx.statistics()
    assert s.errors == 1 and s.packets_in == 0 and s.replay_top == 0
    assert rx.decapsulate(tx.encapsulate(PKT)) == PKT


def test_unknown_spi_and_wrong_protocol() -> None:
    tx, rx = pair()
    other = SecurityAssociation(0x778, mode="tunnel", algorithm="aes128gcm16", key=KEY,
                                tunnel_src="192.0.2.1", tunnel_dst="192.0.2.2")  # fmt: skip
    with pytest.raises(UnknownSpi):
        rx.decapsulate(other.encapsulate(PKT))
    assert rx.statistics().bad_spi_packets == 1 and rx.statistics().replay_top == 0
    ah = SecurityAssociation(0x779, protocol="ah", algorithm="sha256", key=os.urandom(32))
    with pytest.raises(ConfigError):
        ah.decapsulate_esp(tx.encapsulate_esp(PKT), "192.0.2.1", "192.0.2.2")


FUZZ_SAS = [
    dict(
        algorithm="aes128gcm16",
        key=KEY,
        mode="tunnel",
        tunnel_src="192.0.2.1",
        tunnel_dst="192.0.2.2",
    ),
    dict(algorithm="aes128-sha256", key=os.urandom(48), encap="udp"),
    dict(protocol="ah", algorithm="sha256", key=os.urandom(32)),
    dict(
        algorithm="chacha20poly1305",
        key=os.urandom(36),
        esn=True,
        mode="tunnel",
        tunnel_src="2001:db8::1",
        tunnel_dst="2001:db8::2",
    ),
]


def _mutations():
    from hypothesis import strategies as st

    base = [
        SecurityAssociation(0x777, **kw).encapsulate(p)
        for kw in FUZZ_SAS
        for p in (PKT, bytes(IP(src="10.0.0.1", dst="10.0.0.2") / TCP()))
    ]
    return st.one_of(
        st.binary(max_size=200),
        st.tuples(st.sampled_from(base), st.integers(0, 300), st.binary(max_size=8)).map(
            lambda t: t[0][: t[1]] + t[2] + t[0][t[1] + len(t[2]) :]
        ),
        st.tuples(st.sampled_from(base), st.integers(0, 300)).map(lambda t: t[0][: t[1]]),
    )


def test_fuzz_decapsulate_raises_only_packet_errors() -> None:
    from hypothesis import given, settings

    from pyipsec.errors import PacketError

    sas = [SecurityAssociation(0x777, **kw) for kw in FUZZ_SAS]

    @settings(max_examples=400, deadline=None)
    @given(data=_mutations())
    def run(data: bytes) -> None:
        for sa in sas:
            before = sa.statistics()
            try:
                sa.decapsulate(data)
            except PacketError:
                after = sa.statistics()
                assert after.errors == before.errors + 1
                assert after.replay_top == before.replay_top
            if sa.protocol == "esp":
                try:
                    sa.decapsulate_esp(data, "192.0.2.1", "192.0.2.2")
                except PacketError:
                    pass

    run()


@pytest.mark.parametrize("inner_v", [4, 6])
def test_tunnel_next_header_must_match_inner_version(inner_v: int) -> None:
    """A valid ICV around an IPv6 packet labelled next header 4 (or the reverse) is
    refused on the hot path and the general path alike."""
    from scapy.layers.inet6 import IPv6

    _, rx = pair()
    inner = bytes(IPv6(src="fd00::1", dst="fd00::2") / UDP() / b"abcd") if inner_v == 6 else PKT
    wrong_nh = 4 if inner_v == 6 else 41
    pad = -(len(inner) + 2) % 4
    pt = inner + bytes(range(1, pad + 1)) + bytes([pad, wrong_nh])
    import struct as _s

    hdr = _s.pack("!II", rx.spi, 1)
    a, b = rx._proc._t.seal(1, hdr, pt)
    wire = bytes(IP(src="192.0.2.1", dst="192.0.2.2", proto=50) / (hdr + a + b))
    with pytest.raises(Exception) as e:
        rx.decapsulate(wire)
    assert type(e.value).__name__ == "MalformedPacket"
    assert rx.statistics().packets_in == 0 and rx.statistics().malformed_packets == 1


@pytest.mark.parametrize("cfg", HOT_CONFIGS, ids=["tunnel4", "tunnel4-udp", "tunnel6", "transport"])
def test_hot_path_every_flipped_byte_rejected(cfg: dict) -> None:
    key = os.urandom(20)
    tx = SecurityAssociation(0x902, algorithm="aes128gcm16", key=key, **cfg)
    rx = SecurityAssociation(0x902, algorithm="aes128gcm16", key=key, **cfg)
    pkt = bytes(IP(src="10.0.0.1", dst="10.0.0.2") / UDP() / b"hot path")
    wire = tx.encapsulate(pkt)
    off, _, _ = rx._proc.locate(wire)
    from pyipsec.errors import PacketError

    for i in range(off, len(wire)):
        bad = bytearray(wire)
        bad[i] ^= 0x04
        with pytest.raises(PacketError):
            rx.decapsulate(bytes(bad))
    s = rx.statistics()
    assert s.errors == len(wire) - off and s.packets_in == 0 and s.replay_top == 0
    assert rx.decapsulate(wire)[-8:] == b"hot path"


def test_esp_message_hot_path_rejects_and_counts() -> None:
    """Flipped bytes, replays, an unknown SPI and an expired SA on the hot path: each
    raises, is counted, and leaves the replay window and counters alone."""
    from pyipsec.errors import PacketError, ReplayedPacket, UnknownSpi

    tx, rx = pair(encap="udp")
    a, b = b"\xc0\0\2\1", b"\xc0\0\2\2"
    msgs = [tx.encapsulate_esp(PKT) for _ in range(3)]
    for i in range(len(msgs[0])):
        bad = bytearray(msgs[0])
        bad[i] ^= 0x01
        with pytest.raises(PacketError):
            rx.decapsulate_esp(bytes(bad), a, b)
    assert rx.statistics().packets_in == 0 and rx.statistics().replay_top == 0
    flipped = rx.statistics().errors
    assert flipped == len(msgs[0])  # seq flipped to 0 counts as replayed, others as ICV
    assert rx.decapsulate_esp(msgs[1], a, b) == PKT
    with pytest.raises(ReplayedPacket):
        rx.decapsulate_esp(msgs[1], a, b)
    assert rx.decapsulate_esp(msgs[0], a, b) == PKT  # in the window, not seen: accepted
    assert rx.decapsulate_esp(msgs[2], a, b) == PKT
    other = SecurityAssociation(0x778, mode="tunnel", algorithm="aes128gcm16", key=KEY,
                                tunnel_src="192.0.2.1", tunnel_dst="192.0.2.2")  # fmt: skip
    with pytest.raises(UnknownSpi):
        rx.decapsulate_esp(other.encapsulate_esp(PKT), a, b)
    s = rx.statistics()
    assert s.packets_in == 3 and s.replay_top == 3 and s.errors == flipped + 2
    fresh = tx.encapsulate_esp(PKT)
    bad = bytearray(fresh)
    bad[-1] ^= 1
    with pytest.raises(IntegrityError):
        rx.decapsulate_esp(bytes(bad), a, b)
    assert rx.statistics().replay_top == 3


class _CountingSelectors:
    """Selectors with a generation: the SA may cache their answers per flow."""

    def __init__(self, allowed: str) -> None:
        self.allowed = allowed
        self.generation = 0
        self.calls = 0

    def matches(self, flow: Flow) -> bool:
        import ipaddress

        self.calls += 1
        return str(ipaddress.ip_address(flow.dst)) == self.allowed


def test_selector_answers_cached_per_flow_until_the_generation_changes() -> None:
    sel = _CountingSelectors("10.0.0.2")
    tx, _ = pair(encap="udp")
    kw = dict(tunnel_src="192.0.2.1", tunnel_dst="192.0.2.2", selectors=sel)
    rx = SecurityAssociation(0x777, mode="tunnel", algorithm="aes128gcm16", key=KEY, **kw)
    a = b"\0" * 4
    for _ in range(5):
        assert rx.decapsulate_esp(tx.encapsulate_esp(PKT), a, a) == PKT
    assert sel.calls == 1  # one flow: matched once
    other = bytes(IP(src="10.0.0.1", dst="10.0.0.3") / UDP(sport=1, dport=2) / b"x")
    with pytest.raises(SelectorMismatch):
        rx.decapsulate_esp(tx.encapsulate_esp(other), a, a)
    with pytest.raises(SelectorMismatch):
        rx.decapsulate_esp(tx.encapsulate_esp(other), a, a)
    assert sel.calls == 2 and rx.statistics().selector_mismatch_packets == 2
    sel.allowed = "10.0.0.3"  # the policy changed ...
    with pytest.raises(SelectorMismatch):  # ... but the generation did not: cached answer
        rx.decapsulate_esp(tx.encapsulate_esp(other), a, a)
    sel.generation += 1
    assert rx.decapsulate_esp(tx.encapsulate_esp(other), a, a) == other
    with pytest.raises(SelectorMismatch):
        rx.decapsulate_esp(tx.encapsulate_esp(PKT), a, a)
    s = rx.statistics()
    assert s.packets_in == 6 and s.selector_mismatch_packets == 4
    # ICMP has no cache key: matched on every packet
    ping = bytes(IP(src="10.0.0.1", dst="10.0.0.3") / b"\x08\0\0\0\0\0\0\0")
    calls = sel.calls
    rx.decapsulate_esp(tx.encapsulate_esp(ping), a, a)
    rx.decapsulate_esp(tx.encapsulate_esp(ping), a, a)
    assert sel.calls == calls + 2
