"""GlobalCounters / GlobalStatistics: sums of SA snapshots plus drops outside any SA."""

from __future__ import annotations

import os

import pytest
from scapy.layers.inet import IP, UDP

from pyipsec.errors import MalformedPacket, NoSaError, UnknownSpi
from pyipsec.ipsec import GlobalCounters, SecurityAssociation


def test_global_statistics_sum_sas_and_own_counters() -> None:
    key = os.urandom(44)
    a = SecurityAssociation(0x100, algorithm="3des-sha1", key=key)
    b = SecurityAssociation(0x100, algorithm="3des-sha1", key=key)
    c = SecurityAssociation(0x200, algorithm="aes128gcm16", key=os.urandom(20))
    pkt = bytes(IP(src="10.0.0.1", dst="10.0.0.2") / UDP() / (b"x" * 10))
    b.decapsulate(a.encapsulate(pkt))
    with pytest.raises(MalformedPacket):
        c.decapsulate(b"junk")
    g = GlobalCounters()
    g.count(UnknownSpi("no SA for SPI 0x300"))
    g.count(NoSaError("acquire"))
    s = g.snapshot([a.statistics(), b.statistics(), c.statistics()])
    assert (s.sas, s.weak_sas) == (3, 2)
    assert s.packets_out == 1 and s.packets_in == 1 and s.bytes_in == len(pkt)
    assert s.confidential_bytes_in == len(pkt) == s.authenticated_bytes_out
    assert s.malformed_packets == 1 and s.bad_spi_packets == 1 and s.no_sa_packets == 1
    assert a.statistics().errors == 0 and c.statistics().errors == 1
