"""Tests of pyipsec.ipsec.sad: inbound by SPI, outbound slots, rekey, statistics."""

from __future__ import annotations

import os

import pytest

from pyipsec.errors import (
    ConfigError,
    IntegrityError,
    MalformedPacket,
    NoSaError,
    StateError,
    UnknownSpi,
)
from pyipsec.ipsec import SecurityAssociation
from pyipsec.ipsec.sad import OutboundSlots, Sad
from pyipsec.wire.ip import Ipv4Header, push_ipv4


def packet(payload: bytes = b"x" * 40) -> bytes:
    hdr = Ipv4Header(bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]), 17)
    udp = (1000).to_bytes(2, "big") + (2000).to_bytes(2, "big")
    udp += (8 + len(payload)).to_bytes(2, "big") + b"\0\0"
    return push_ipv4(hdr, 8 + len(payload)) + udp + payload


def sa_pair(spi: int, protocol: str = "esp") -> tuple[SecurityAssociation, SecurityAssociation]:
    """Two ends of one SA: the sender's copy and the receiver's copy."""
    if protocol == "esp":
        key = os.urandom(20)
        return (SecurityAssociation(spi, key=key), SecurityAssociation(spi, key=key))
    key = os.urandom(32)
    return (
        SecurityAssociation(spi, protocol="ah", algorithm="sha256", key=key),
        SecurityAssociation(spi, protocol="ah", algorithm="sha256", key=key),
    )


def test_inbound_lookup_by_spi_and_protocol() -> None:
    sad = Sad()
    _, esp_in = sa_pair(0x1000)
    _, ah_in = sa_pair(0x1000, "ah")  # same SPI number, other protocol
    sad.add_inbound(esp_in)
    sad.add_inbound(ah_in)
    assert sad.lookup_inbound(0x1000, "esp") is esp_in
    assert sad.lookup_inbound(0x1000, 50) is esp_in
    assert sad.lookup_inbound(0x1000, "ah") is ah_in
    assert sad.lookup_inbound(0x1000, 51) is ah_in
    with pytest.raises(UnknownSpi):
        sad.lookup_inbound(0x1001, "esp")
    with pytest.raises(UnknownSpi):
        sad.lookup_inbound(0x1000, 17)
    s = sad.statistics()
    assert s.inbound_lookups == 6 and s.unknown_spi_lookups == 2
    assert s.totals.bad_spi_packets == 2
    assert s.inbound_sas == 2 and s.installed == 2


def test_inbound_destination_preferred_over_any() -> None:
    sad = Sad()
    _, general = sa_pair(0x2000)
    _, specific = sa_pair(0x2000)
    sad.add_inbound(general)
    sad.add_inbound(specific, dst="192.0.2.7")
    assert sad.lookup_inbound(0x2000, "esp", bytes([192, 0, 2, 7])) is specific
    assert sad.lookup_inbound(0x2000, "esp", "192.0.2.7") is specific
    assert sad.lookup_inbound(0x2000, "esp", "192.0.2.8") is general
    assert sad.lookup_inbound(0x2000, "esp") is general
    with pytest.raises(ConfigError) as info:
        sad.add_inbound(sa_pair(0x2000)[1], dst="192.0.2.7")
    assert info.value.key == "spi"
    with pytest.raises(MalformedPacket):
        sad.lookup_inbound(0x2000, "esp", b"\x01\x02\x03")
    assert sad.statistics().totals.malformed_packets == 1
    sad.remove_inbound(0x2000, "esp")
    assert sad.lookup_inbound(0x2000, "esp", "192.0.2.7") is specific
    with pytest.raises(UnknownSpi):
        sad.lookup_inbound(0x2000, "esp", "192.0.2.8")


def test_bad_arguments() -> None:
    sad = Sad()
    _, sa = sa_pair(0x3000)
    with pytest.raises(ConfigError):
        sad.add_inbound(sa, dst="not-an-address")
    with pytest.raises(ConfigError):
        sad.install_outbound("", sa)
    with pytest.raises(ConfigError):
        sad.remove_inbound(0x3000, "gre")
    with pytest.raises(UnknownSpi):
        sad.remove_inbound(0x3000, "esp")
    with pytest.raises(UnknownSpi):
        sad.remove_outbound("web-db", 0x3000)
    with pytest.raises(StateError):
        sad.activate_next("web-db")
    s = sad.statistics()
    assert s.inbound_sas == 0 and s.installed == 0 and s.unknown_spi_lookups == 0


def test_outbound_lookup_and_no_sa() -> None:
    sad = Sad()
    with pytest.raises(NoSaError):
        sad.lookup_outbound("web-db")
    out, _ = sa_pair(0x4000)
    sad.install_outbound("web-db", out)
    assert sad.lookup_outbound("web-db") is out
    assert sad.outbound_slots("web-db") == OutboundSlots("web-db", out, None, None)
    assert sad.outbound_slots("other") == OutboundSlots("other")
    with pytest.raises(ConfigError):
        sad.install_outbound("web-db", out)  # same SA twice
    s = sad.statistics()
    assert s.no_sa_lookups == 1 and s.totals.no_sa_packets == 1
    assert s.outbound_lookups == 2 and s.children == 1 and s.outbound_sas == 1


def test_rekey_slots_and_traffic() -> None:
    """Rekey: old inbound keeps working until deleted; outbound switches at once."""
    sad = Sad()
    old_out, peer_old_in = sa_pair(0x5001)  # we send with old_out
    peer_old_out, old_in = sa_pair(0x5002)  # the peer sends to old_in
    sad.add("web-db", old_in, old_out)
    with pytest.raises(StateError):
        sad.add("web-db", *reversed(sa_pair(0x5003)))

    p = packet()
    assert peer_old_in.decapsulate(sad.lookup_outbound("web-db").encapsulate(p)) == p
    in_flight = peer_old_out.encapsulate(p)  # sent by the peer before the rekey

    new_out, peer_new_in = sa_pair(0x6001)
    peer_new_out, new_in = sa_pair(0x6002)
    sad.replace("web-db", new_in, new_out)
    slots = sad.outbound_slots("web-db")
    assert (slots.current, slots.previous, slots.next) == (new_out, old_out, None)
    assert sad.lookup_outbound("web-db") is new_out
    assert peer_new_in.decapsulate(sad.lookup_outbound("web-db").encapsulate(p)) == p

    # both inbound SAs are there: the in-flight packet under the old SPI still decrypts
    assert sad.lookup_inbound(0x5002, "esp").decapsulate(in_flight) == p
    assert sad.lookup_inbound(0x6002, "esp").decapsulate(peer_new_out.encapsulate(p)) == p

    before = sad.statistics().totals
    assert before.packets_out == 2 and before.packets_in == 2
    # IKE deletes the old pair
    assert sad.remove_inbound(0x5002, "esp") is old_in
    assert sad.remove_outbound("web-db", 0x5001) is old_out
    with pytest.raises(UnknownSpi):
        sad.lookup_inbound(0x5002, "esp")
    after = sad.statistics()
    # counters of removed SAs are kept: totals never go down
    assert after.totals.packets_out == 2 and after.totals.packets_in == 2
    assert after.totals.bytes_out == before.bytes_out
    assert after.totals.sas == 2 and after.removed == 2 and after.installed == 4
    assert after.unknown_spi_lookups == 1
    assert sad.outbound_slots("web-db") == OutboundSlots("web-db", new_out, None, None)


def test_replace_is_atomic_on_error() -> None:
    sad = Sad()
    out1, _ = sa_pair(0x7001)
    _, in1 = sa_pair(0x7002)
    sad.add("c", in1, out1)
    out2, _ = sa_pair(0x7003)
    _, dup_in = sa_pair(0x7002)  # SPI clash with in1
    with pytest.raises(ConfigError):
        sad.replace("c", dup_in, out2)
    assert sad.lookup_outbound("c") is out1
    assert sad.outbound_slots("c").previous is None
    with pytest.raises(ConfigError):
        sad.replace("c", sa_pair(0x7004)[1], out1)  # outbound already installed
    with pytest.raises(UnknownSpi):
        sad.lookup_inbound(0x7004, "esp")
    assert sad.statistics().installed == 2


def test_next_slot_and_activation() -> None:
    sad = Sad()
    a, _ = sa_pair(0x8001)
    b, _ = sa_pair(0x8002)
    c, _ = sa_pair(0x8003)
    sad.install_outbound("c", a)
    sad.install_outbound("c", b, activate=False)
    assert sad.lookup_outbound("c") is a
    assert sad.outbound_slots("c") == OutboundSlots("c", a, None, b)
    assert sad.activate_next("c") is b
    assert sad.outbound_slots("c") == OutboundSlots("c", b, a, None)
    # a second rekey drops the SA still in previous from the SAD
    sad.install_outbound("c", c)
    assert sad.outbound_slots("c") == OutboundSlots("c", c, b, None)
    assert sad.statistics().removed == 1
    assert set(map(id, sad.all_sas())) == {id(b), id(c)}
    sad.remove_outbound("c", 0x8003)
    assert sad.outbound_slots("c") == OutboundSlots("c", None, b, None)
    with pytest.raises(NoSaError):
        sad.lookup_outbound("c")
    sad.remove_outbound("c", 0x8002)
    assert sad.children() == []


def test_remove_child_removes_everything() -> None:
    sad = Sad()
    o1, _ = sa_pair(0x9001)
    _, i1 = sa_pair(0x9002)
    o2, _ = sa_pair(0x9003)
    _, i2 = sa_pair(0x9004)
    _, other = sa_pair(0x9005)
    sad.add("c", i1, o1)
    sad.replace("c", i2, o2)
    sad.add_inbound(other, child="d")
    removed = sad.remove_child("c")
    assert {id(x) for x in removed} == {id(o1), id(i1), id(o2), id(i2)}
    assert list(sad.inbound_sas()) == [other]
    assert sad.children() == []
    s = sad.statistics()
    assert s.inbound_sas == 1 and s.outbound_sas == 0 and s.removed == 4
    assert s.totals.sas == 1


def test_statistics_aggregate_sa_errors() -> None:
    sad = Sad()
    peer_out, ours_in = sa_pair(0xA001)
    sad.add_inbound(ours_in)
    protected = bytearray(peer_out.encapsulate(packet()))
    protected[-1] ^= 1  # break the ICV
    with pytest.raises(IntegrityError):
        sad.lookup_inbound(0xA001, "esp").decapsulate(bytes(protected))
    s = sad.statistics()
    assert s.totals.packets_not_authenticated == 1
    assert s.totals.packets_in == 0
