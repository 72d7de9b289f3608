"""The packet pipeline with fake sockets and a fake TUN (no root needed)."""

from __future__ import annotations

import ipaddress

import pytest

from pyipsec.dataplane.pipeline import Acquire, InboundPipeline, OutboundPipeline
from pyipsec.dataplane.static import SaConfig, parse_policy
from pyipsec.dataplane.workers import ChildSelectors
from pyipsec.ipsec import Lifetime
from pyipsec.ipsec.spd import Spd
from pyipsec.wire.ip import parse_flow

A4, B4 = "10.99.1.1", "10.99.1.2"
A6, B6 = "fd99:1::1", "fd99:1::2"


class FakeSender:
    def __init__(self) -> None:
        self.ip: list[tuple[int, str, bytes]] = []
        self.udp: list[tuple[int, tuple[str, int], list[bytes]]] = []

    def send_ip(self, packets, version, dst):
        self.ip.extend((version, dst, p) for p in packets)

    def send_udp(self, datagrams, version, addr):
        self.udp.append((version, addr, list(datagrams)))


class FakeTun:
    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write_batch(self, packets):
        self.written.extend(packets)


def _csum(data: bytes) -> int:
    s = sum(int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def udp4(src=A4, dst=B4, sport=1000, dport=2000, payload=b"x" * 100) -> bytes:
    n = 20 + 8 + len(payload)
    hdr = bytearray(
        bytes([0x45, 0]) + n.to_bytes(2, "big") + b"\0\1\x40\0\x40\x11\0\0"
        + ipaddress.IPv4Address(src).packed + ipaddress.IPv4Address(dst).packed
    )  # fmt: skip
    hdr[10:12] = _csum(bytes(hdr)).to_bytes(2, "big")
    udp = (
        sport.to_bytes(2, "big")
        + dport.to_bytes(2, "big")
        + (8 + len(payload)).to_bytes(2, "big")
        + b"\0\0"
    )
    return bytes(hdr) + udp + payload


def udp6(src=A6, dst=B6, sport=1000, dport=2000, payload=b"y" * 100) -> bytes:
    n = 8 + len(payload)
    udp = sport.to_bytes(2, "big") + dport.to_bytes(2, "big") + n.to_bytes(2, "big")
    pseudo = (
        ipaddress.IPv6Address(src).packed + ipaddress.IPv6Address(dst).packed
        + n.to_bytes(4, "big") + b"\0\0\0\x11"
    )  # fmt: skip
    body = udp + b"\0\0" + payload
    csum = _csum(pseudo + body + b"\0" * (len(body) % 2)) or 0xFFFF
    udp = udp + csum.to_bytes(2, "big") + payload
    hdr = (
        (6 << 28).to_bytes(4, "big") + len(udp).to_bytes(2, "big") + bytes([17, 64])
        + ipaddress.IPv6Address(src).packed + ipaddress.IPv6Address(dst).packed
    )  # fmt: skip
    return hdr + udp


def sa_cfg(direction, *, spi=0x1001, v=4, protocol="esp", mode="transport", alg="aes128gcm16",
           encap=None, child="ab", lifetime=None) -> SaConfig:  # fmt: skip
    from pyipsec.crypto.esp_algorithms import get_algorithm

    src, dst = (A4, B4) if v == 4 else (A6, B6)
    if direction == "in":
        src, dst = dst, src
    key = bytes(range(get_algorithm(alg, protocol).key_len))
    return SaConfig(spi=spi, src=src, dst=dst, protocol=protocol, mode=mode, algorithm=alg,
                    direction=direction, child=child, key=key, encap=encap,
                    lifetime=lifetime)  # fmt: skip


def policies(local=A4, remote=B4, **kw):
    return [parse_policy({"name": "ab", "local": local, "remote": remote, "action": "protect",
                          **kw})]  # fmt: skip


def out_pipe(pols, **kw):
    spd = Spd()
    for p in pols:
        spd.add(p.entry)
    sender = FakeSender()
    acquires: list[Acquire] = []
    return OutboundPipeline(spd, sender, on_acquire=acquires.append, **kw), sender, acquires


def in_pipe(pols):
    """Inbound pipeline on the peer (B): its SA's selectors are the mirrored policies."""
    tun = FakeTun()
    table: dict = {}
    for p in pols:
        table.setdefault(p.entry.template.child, []).append(p.entry.selector.mirror())
    return InboundPipeline(tun), tun, table


def pair(v=4, **kw):
    """Outbound pipeline on A and inbound pipeline on B sharing one SA's keys."""
    pols = policies(*((A4, B4) if v == 4 else (A6, B6)))
    out, sender, acq = out_pipe(pols)
    inn, tun, table = in_pipe(pols)
    cfg_out = sa_cfg("out", v=v, **kw)
    # B sees the same SA as inbound (src A, dst B)
    out.add_sa(cfg_out, cfg_out.build(), 0.0)
    inn.add_sa(cfg_out, cfg_out.build(selectors=ChildSelectors(table, "ab")))
    return out, sender, inn, tun


def strip_ipv6(packet: bytes) -> tuple[bytes, str, str]:
    return (
        packet[40:],
        str(ipaddress.IPv6Address(packet[8:24])),
        str(ipaddress.IPv6Address(packet[24:40])),
    )


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"alg": "chacha20poly1305", "mode": "tunnel"},
        {"alg": "aes128-sha256"},
        {"protocol": "ah", "alg": "sha256"},
        {"protocol": "ah", "alg": "sha256", "mode": "tunnel"},
    ],
)
def test_ipv4_round_trip_raw(kw):
    out, sender, inn, tun = pair(4, **kw)
    pkts = [udp4(payload=bytes([i]) * (50 + i)) for i in range(5)]
    out.process(pkts, 1.0)
    assert [d for _, d, _ in sender.ip] == [B4] * 5
    inn.process_ip4([p for _, _, p in sender.ip], 1.0)
    assert tun.written == pkts
    assert out.statistics().packets_sent == 5
    assert inn.statistics().packets_delivered == 5 and not inn.errors


@pytest.mark.parametrize("kw", [{}, {"protocol": "ah", "alg": "sha256"}, {"mode": "tunnel"}])
def test_ipv6_round_trip_without_outer_header(kw):
    """IPv6 raw sockets give the payload only: ESP via decapsulate_esp, AH by rebuilding."""
    out, sender, inn, tun = pair(6, **kw)
    pkts = [udp6(payload=b"z" * n) for n in (10, 200, 1300)]
    out.process(pkts, 1.0)
    proto = 51 if kw.get("protocol") == "ah" else 50
    inn.process_payloads([strip_ipv6(p) for _, _, p in sender.ip], proto, 1.0)
    assert tun.written == pkts, inn.errors


def test_udp_encapsulation_batches_per_sa():
    out, sender, inn, tun = pair(4, encap="udp", mode="tunnel")
    pkts = [udp4(payload=b"q" * 1000) for _ in range(10)]
    out.process(pkts, 1.0)
    assert len(sender.udp) == 1  # one batch for the SA: the socket layer groups it for GSO
    version, addr, dgrams = sender.udp[0]
    assert (version, addr, len(dgrams)) == (4, (B4, 4500), 10)
    items = [(d, A4, B4) for d in dgrams]
    items.insert(3, (b"\xff", A4, B4))  # NAT keepalive
    items.insert(5, (b"\0\0\0\0" + b"ike", A4, B4))  # non-ESP marker: IKE
    seen: list[tuple] = []
    inn.on_ike = lambda *args: seen.append(args)
    inn.process_payloads(items, 50, 1.0, udp=True)
    assert tun.written == pkts
    st = inn.statistics()
    assert (st.nat_keepalives, st.non_esp) == (1, 1)
    assert seen == [(b"\0\0\0\0ike", A4, B4, 4500)]  # no ports given: the NAT-T port
    inn.process_payloads([(b"\0\0\0\0" + b"ike2", A4, B4)], 50, 1.0, udp=True, ports=[31000])
    assert seen[-1] == (b"\0\0\0\0ike2", A4, B4, 31000)


def test_bad_packets_counted_and_flow_continues():
    out, sender, inn, tun = pair(4)
    out.process([udp4(payload=bytes([i]) * 64) for i in range(4)], 1.0)
    wire = [p for _, _, p in sender.ip]
    corrupt = bytearray(wire[1])
    corrupt[-1] ^= 1
    unknown = bytearray(wire[2])
    unknown[20:24] = b"\0\0\x99\x99"
    inn.process_ip4([wire[0], bytes(corrupt), wire[0], bytes(unknown), b"\x45" * 10], 1.0)
    inn.process_ip4(wire[1:], 1.0)
    assert len(tun.written) == 4
    assert inn.errors == {
        "packets_not_authenticated": 1,
        "replayed_packets": 1,
        "bad_spi_packets": 1,
        "malformed_packets": 1,
    }


def test_selector_mismatch_is_counted():
    out, sender, inn, tun = pair(4)
    # A sends a packet of another flow through the SA (e.g. a misbehaving peer)
    out.spd.replace(policies(A4, "10.99.0.0/16")[0].entry)
    out.process([udp4(dst="10.99.7.7")], 1.0)
    inn.process_ip4([p for _, _, p in sender.ip], 1.0)
    assert tun.written == [] and inn.errors == {"selector_mismatch_packets": 1}


def test_no_sa_holds_bounded_and_reports_acquire_once():
    out, sender, acquires = out_pipe(policies(), hold_per_queue=4)
    pkts = [udp4(payload=bytes([i]) * 20) for i in range(10)]
    out.process(pkts, 1.0)
    assert len(acquires) == 1 and acquires[0].child == "ab"
    assert acquires[0].flow == parse_flow(pkts[0])
    st = out.statistics()
    assert (st.held, st.held_dropped, st.acquires, st.packets_sent) == (4, 6, 1, 0)
    cfg = sa_cfg("out")
    out.add_sa(cfg, cfg.build(), 2.0)  # the held packets (the newest four) go out now
    assert len(sender.ip) == 4 and out.statistics().held == 0
    inn, tun, table = in_pipe(policies())
    inn.add_sa(cfg, cfg.build())
    inn.process_ip4([p for _, _, p in sender.ip], 2.0)
    assert tun.written == pkts[6:]


def test_hold_queue_count_is_bounded():
    out, sender, acquires = out_pipe(policies(A4, "10.99.0.0/16"), hold_per_queue=2, hold_queues=3)
    out.process([udp4(dst=f"10.99.5.{i}") for i in range(10)], 1.0)
    st = out.statistics()
    assert (st.held, st.held_dropped, st.acquires) == (3, 7, 3)


def test_unprotected_packets_in_tun_are_dropped_and_counted():
    pols = policies() + [
        parse_policy({"name": "byp", "local": A4, "remote": "10.99.3.0/24", "action": "bypass"}),
        parse_policy({"name": "drop", "local": A4, "remote": "10.99.4.0/24",
                      "action": "discard"}),
    ]  # fmt: skip
    out, sender, _ = out_pipe(pols)
    out.process([udp4(dst="10.99.3.1"), udp4(dst="10.99.4.1"), udp4(dst="10.98.0.1"), b"\x45"], 0)
    st = out.statistics()
    assert (st.not_protect, st.no_policy, dict(st.errors)) == (2, 1, {"malformed_packets": 1})
    assert sender.ip == []


def test_remove_sa_falls_back_to_older_sa_of_child():
    out, sender, _ = out_pipe(policies())
    old, new = sa_cfg("out", spi=0x2001), sa_cfg("out", spi=0x2002)
    out.add_sa(old, old.build(), 0)
    out.add_sa(new, new.build(), 0)
    out.process([udp4()], 0)
    assert int.from_bytes(sender.ip[-1][2][20:24], "big") == 0x2002
    assert out.remove_sa("esp", 0x2002) and not out.remove_sa("esp", 0x2002)
    out.process([udp4()], 0)
    assert int.from_bytes(sender.ip[-1][2][20:24], "big") == 0x2001
    out.remove_sa("esp", 0x2001)
    out.process([udp4()], 0)
    assert out.statistics().held == 1


def test_hard_lifetime_event_and_refusal():
    out, sender, _ = out_pipe(policies())
    cfg = sa_cfg("out", lifetime={"hard_packets": 3})
    out.add_sa(cfg, cfg.build(), 0)
    out.process([udp4() for _ in range(5)], 0)
    assert len(sender.ip) == 3
    assert dict(out.statistics().errors) == {"expired_sa_packets": 2}
    reports = out.tick(1.0)
    assert [type(r.event).__name__ for r in reports] == ["HardLifetimeExpired"]
    assert reports[0].spi == cfg.spi and reports[0].direction == "out"
    assert Lifetime  # the SA used the Lifetime built from the mapping


def test_child_selectors_follow_policy_changes():
    table: dict = {}
    sel = ChildSelectors(table, "ab")
    flow = parse_flow(udp4(src=B4, dst=A4))
    assert not sel.matches(flow)
    table["ab"] = [policies()[0].entry.selector]
    assert sel.matches(flow)


def test_flow_cache_within_a_batch_never_misclassifies():
    """Consecutive packets reuse the SPD answer only when their 5-tuple bytes are equal."""
    pols = [
        parse_policy({"name": "web", "local": A4, "remote": B4, "protocol": "udp",
                      "remote_ports": 2000, "action": "protect", "child": "ab"}),
        parse_policy({"name": "drop", "local": A4, "remote": B4, "action": "discard"}),
    ]  # fmt: skip
    out, sender, _ = out_pipe(pols)
    cfg = sa_cfg("out", mode="tunnel")  # transport mode refuses fragments (RFC 4303)
    out.add_sa(cfg, cfg.build(), 0)

    def frag(field: bytes) -> bytes:
        p = bytearray(udp4(dport=2000))
        p[6:8] = field
        p[10:12] = b"\0\0"
        p[10:12] = _csum(bytes(p[:20])).to_bytes(2, "big")
        return bytes(p)

    first = frag(b"\x20\x00")  # MF: first fragment, ports present -> protected
    later = frag(b"\x00\x10")  # a non-first fragment whose payload starts like the ports
    batch = [udp4(dport=2000), udp4(dport=2000), udp4(dport=2001), udp4(dport=2000),
             first, later, udp4(src=B4, dst=A4, dport=2000)]  # fmt: skip
    out.process(batch, 0)
    st = out.statistics()
    # protected: 3 x port 2000 + the first fragment; not: 2001, the later fragment (no
    # ports: only the DISCARD entry matches it), and the reversed flow (no policy)
    assert (st.packets_sent, st.not_protect, st.no_policy, st.errors) == (4, 2, 1, ())


def _nat_pair(encap_sport=31000):
    """A -> B ESP-in-UDP where B's inbound SA expects A behind a NAT at 198.51.100.7."""
    import dataclasses

    from pyipsec.dataplane.pipeline import NatMapping

    pols = policies()
    out, sender, _ = out_pipe(pols)
    tun = FakeTun()
    table: dict = {}
    for p in pols:
        table.setdefault(p.entry.template.child, []).append(p.entry.selector.mirror())
    reports: list[NatMapping] = []
    inn = InboundPipeline(tun, on_mapping=reports.append)
    cfg = sa_cfg("out", encap="udp", mode="tunnel")
    out.add_sa(cfg, cfg.build(), 0.0)
    cfg_in = dataclasses.replace(cfg, src="198.51.100.7", encap_sport=encap_sport)
    inn.add_sa(cfg_in, cfg_in.build(selectors=ChildSelectors(table, "ab")))
    return out, sender, inn, tun, reports


def _wire(out, sender, n, now=1.0):
    sender.udp.clear()
    pkts = [udp4(payload=bytes([i]) * 300) for i in range(n)]
    out.process(pkts, now)
    return pkts, [d for _, _, batch in sender.udp for d in batch]


def test_verified_esp_from_a_new_nat_mapping_is_reported_once():
    out, sender, inn, tun, reports = _nat_pair()
    nat = ipaddress.IPv4Address("198.51.100.7").packed
    me = ipaddress.IPv4Address(B4).packed
    pkts, dgrams = _wire(out, sender, 4)
    # from the known mapping: delivered, nothing reported
    inn.process_payloads([(d, nat, me) for d in dgrams[:2]], 50, 1.0, udp=True,
                         ports=[31000, 31000])  # fmt: skip
    assert reports == [] and tun.written == pkts[:2]
    # the NAT moved A to port 31077: reported once, with text address and port
    inn.process_payloads([(d, nat, me) for d in dgrams[2:]], 50, 1.0, udp=True,
                         ports=[31077, 31077])  # fmt: skip
    assert tun.written == pkts
    assert [(r.spi, r.child, r.addr, r.port) for r in reports] == [
        (0x1001, "ab", "198.51.100.7", 31077)
    ]
    pkts2, dgrams2 = _wire(out, sender, 3)
    inn.process_payloads([(d, nat, me) for d in dgrams2], 50, 1.0, udp=True, ports=[31077] * 3)
    assert len(reports) == 1 and inn.statistics().nat_mappings == 1
    # without ports (raw sockets, static data planes) nothing is looked at
    pkts3, dgrams3 = _wire(out, sender, 1)
    inn.process_payloads([(d, nat, me) for d in dgrams3], 50, 1.0, udp=True)
    assert len(reports) == 1 and tun.written[-1] == pkts3[0]


def test_unverified_or_replayed_esp_never_moves_the_mapping():
    """A forged packet (bad ICV) or a replayed one from a new port is no evidence."""
    out, sender, inn, tun, reports = _nat_pair()
    nat = ipaddress.IPv4Address("198.51.100.7").packed
    other = ipaddress.IPv4Address("203.0.113.66").packed
    me = ipaddress.IPv4Address(B4).packed
    pkts, dgrams = _wire(out, sender, 3)
    inn.process_payloads([(d, nat, me) for d in dgrams[:2]], 50, 1.0, udp=True,
                         ports=[31000] * 2)  # fmt: skip
    forged = bytearray(dgrams[2])
    forged[-1] ^= 1
    inn.process_payloads([(dgrams[0], other, me), (bytes(forged), other, me)], 50, 1.0,
                         udp=True, ports=[40000, 40000])  # fmt: skip
    assert reports == [] and tun.written == pkts[:2]
    assert inn.errors == {"replayed_packets": 1, "packets_not_authenticated": 1}
    assert inn.statistics().nat_mappings == 0
    # a forged packet from a new port right behind a genuine one (one run of the SPI):
    # the genuine one verifies, but says nothing about the new port
    pkts2, dgrams2 = _wire(out, sender, 2)
    forged = bytearray(dgrams2[1])
    forged[-1] ^= 1
    inn.process_payloads([(dgrams2[0], nat, me), (bytes(forged), other, me)], 50, 1.0,
                         udp=True, ports=[31000, 40000])  # fmt: skip
    assert tun.written == pkts[:2] + pkts2[:1] and reports == []
    # genuine packets from the new mapping, mixed in one run with old ones: the run is
    # no evidence either way; a run wholly from the new mapping is
    pkts3, dgrams3 = _wire(out, sender, 3)
    inn.process_payloads([(dgrams3[0], nat, me), (dgrams3[1], other, me)], 50, 1.0,
                         udp=True, ports=[31000, 40000])  # fmt: skip
    assert reports == []
    inn.process_payloads([(dgrams3[2], other, me)], 50, 1.0, udp=True, ports=[40000])
    assert [(r.addr, r.port) for r in reports] == [("203.0.113.66", 40000)]


def test_mapping_with_text_addresses_compares_by_value():
    out, sender, inn, tun, reports = _nat_pair()
    _pkts, dgrams = _wire(out, sender, 2)
    inn.process_payloads([(dgrams[0], "198.51.100.7", B4)], 50, 1.0, udp=True, ports=[31000])
    assert reports == []
    inn.process_payloads([(dgrams[1], "198.51.100.8", B4)], 50, 1.0, udp=True, ports=[31000])
    assert [(r.addr, r.port) for r in reports] == [("198.51.100.8", 31000)]


def test_set_peer_redirects_udp_sa_only():
    out, sender, inn, tun, _ = _nat_pair()
    _wire(out, sender, 1)
    assert sender.udp[0][1] == (B4, 4500)
    assert out.set_peer("esp", 0x1001, B4, 31077) is True
    _wire(out, sender, 2)
    assert [a for _, a, _ in sender.udp] == [(B4, 31077)]
    assert dict(out.sa_statistics()[0][0].to_dict())["encap_dport"] == 31077
    assert out.set_peer("esp", 0x9999, B4, 31077) is False  # unknown SA
    assert out.set_peer("esp", 0x1001, "fd99:1::2", 31077) is False  # family change
    assert out.set_peer("esp", 0x1001, "not an address", 31077) is False
    assert out.set_peer("esp", 0x1001, B4, 0) is False
    raw, rsender, _ = out_pipe(policies())
    cfg = sa_cfg("out", spi=0x2002)
    raw.add_sa(cfg, cfg.build(), 0.0)
    assert raw.set_peer("esp", 0x2002, B4, 31077) is False  # raw ESP has no port


def test_a_per_host_child_releases_what_its_connection_held_for_that_host():
    """Connections toward many hosts: packets wait under the connection's child; the SA
    of the per-host child ``<child>@<host>`` releases the packets to that host only."""
    pols = [
        parse_policy({"name": "host", "local": A4, "remote": B4, "action": "protect",
                      "child": f"ab@{B4}", "priority": 10}),
        parse_policy({"name": "any", "local": A4, "remote": "10.99.0.0/16",
                      "action": "protect", "child": "ab"}),
    ]  # fmt: skip
    out, sender, acquires = out_pipe(pols[1:])
    out.process([udp4(dst=B4), udp4(dst="10.99.5.5")], 1.0)
    assert sorted(a.flow.dst for a in acquires) == sorted(
        int(ipaddress.ip_address(x)) for x in (B4, "10.99.5.5")
    )
    out.spd.add(pols[0].entry)  # the daemon adds the host's entry, then its SA
    cfg = SaConfig(spi=0x7777, src=A4, dst=B4, protocol="esp", mode="transport",
                   algorithm="aes128gcm16", key=bytes(20), child=f"ab@{B4}",
                   direction="out")  # fmt: skip
    out.add_sa(cfg, cfg.build(), 2.0)
    assert [dst for _, dst, _ in sender.ip] == [B4]  # the other host's packet still waits
    assert out.statistics().held == 1


def test_ipv6_ah_whole_packets_with_extension_headers():
    """process_ip6: whole IPv6 AH packets (headers rebuilt by sockets.recv_ah6) verify
    with a destination options header in front of AH; bad ones are counted."""
    out, sender, inn, tun = pair(6, protocol="ah", alg="sha256")
    plain = udp6(payload=b"d" * 300)
    # IPv6 | destination options (PadN) | UDP, as a sticky IPV6_DSTOPTS socket sends it
    dst_opts = bytes([17, 0, 1, 4, 0, 0, 0, 0])
    with_opts = bytearray(plain[:40] + dst_opts + plain[40:])
    with_opts[6] = 60
    with_opts[4:6] = (len(with_opts) - 40).to_bytes(2, "big")
    pkts = [plain, bytes(with_opts)]
    out.process([*pkts, bytes(with_opts)], 1.0)
    sent = [p for _, _, p in sender.ip]
    assert sent[1][6] == 60 and sent[1][40] == 51  # AH after the options
    inn.process_ip6(sent[:2], 1.0)
    assert tun.written == pkts and not inn.errors
    tampered = bytearray(sent[2])
    tampered[44] ^= 1  # the option data is immutable (PadN): covered by the ICV
    unknown = bytearray(sent[0])
    unknown[44:48] = b"\0\0\x99\x99"  # another SPI
    inn.process_ip6([bytes(tampered), bytes(unknown), sent[0][:44]], 1.0)
    assert tun.written == pkts
    assert dict(inn.errors) == {"packets_not_authenticated": 1, "bad_spi_packets": 1,
                                "malformed_packets": 1}  # fmt: skip
