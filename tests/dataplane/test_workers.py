"""Direction workers: control commands and the socket sender, with fakes (no root)."""

from __future__ import annotations

from pyipsec.dataplane.static import SaConfig, parse_policy
from pyipsec.dataplane.workers import InboundWorker, OutboundWorker, SocketSender
from pyipsec.platform.linux.tun import TunStatistics


def sa_cfg(direction: str) -> SaConfig:
    src, dst = ("10.99.1.1", "10.99.1.2") if direction == "out" else ("10.99.1.2", "10.99.1.1")
    return SaConfig(spi=0x1001, src=src, dst=dst, protocol="esp", mode="transport",
                    algorithm="aes128gcm16", direction=direction, child="ab",
                    key=bytes(range(20)))  # fmt: skip


class FakeConn:
    def __init__(self, msgs):
        self.msgs = list(msgs)
        self.sent = []

    def poll(self):
        return bool(self.msgs)

    def recv(self):
        return self.msgs.pop(0)

    def send(self, reply):
        self.sent.append(reply)


class FakeTun:
    def __init__(self):
        self.written = []

    def write_batch(self, packets):
        self.written.extend(packets)

    def statistics(self):
        return TunStatistics(0, 0, len(self.written), 0, 0, 0, 0, 0)


class FakeSock:
    def __init__(self, fail=False):
        self.sent = []
        self.fail = fail

    def sendto(self, data, addr):
        if self.fail:
            raise OSError(101, "unreachable")
        self.sent.append((data, addr))

    def sendmsg(self, bufs, anc, flags, addr):
        self.sent.append((b"".join(bufs), addr))


POL = [parse_policy({"name": "ab", "local": "10.99.1.1", "remote": "10.99.1.2",
                     "action": "protect"})]  # fmt: skip


def test_outbound_worker_commands():
    raw4 = FakeSock()
    sender = SocketSender(raw4, FakeSock(), FakeSock(), None)
    cfg = sa_cfg("out")
    conn = FakeConn([("add_sa", cfg), ("stats",), ("del_sa", "esp", cfg.spi), ("nope",),
                     ("policies", []), ("stop",)])  # fmt: skip
    w = OutboundWorker(conn, FakeTun(), sender, POL)
    w.handle_control()
    add, stats, delete, unknown, pols, stop = conn.sent
    assert add == {"ok": True} and delete == {"ok": True} and pols == {"ok": True}
    assert stats["sas"][0]["sa"]["spi"] == f"0x{cfg.spi:08x}" and "key" not in stats["sas"][0]["sa"]
    assert stats["spd"]["entries"] == 1
    assert "unknown command" in unknown["error"] and not w.running and stop == {"ok": True}
    assert len(w.spd) == 0


def test_bad_command_is_reported_not_fatal():
    conn = FakeConn([("del_sa",)])  # missing arguments
    w = InboundWorker(conn, FakeTun(), [])
    w.handle_control()
    assert "error" in conn.sent[0] and w.running


def test_inbound_worker_sa_uses_policy_selectors():
    conn = FakeConn([("policies", POL), ("add_sa", sa_cfg("in"))])
    w = InboundWorker(conn, FakeTun(), [])
    w.handle_control()
    assert conn.sent == [{"ok": True}, {"ok": True}]
    ((cfg, sa),) = w.pipe.sas.values()
    assert sa.selectors.child == "ab" and w.selectors["ab"] == [POL[0].entry.selector]


def test_socket_sender_routes_and_counts_errors():
    raw4, udp4 = FakeSock(), FakeSock()
    s = SocketSender(raw4, FakeSock(fail=True), udp4, None)
    s.send_ip([b"a", b"b"], 4, "10.0.0.1")
    s.send_ip([b"c"], 6, "fd00::1")  # the IPv6 raw socket fails: counted
    s.send_udp([b"x" * 10, b"y" * 10], 4, ("10.0.0.1", 4500))
    s.send_udp([b"z"], 6, ("fd00::1", 4500))  # no IPv6 UDP socket: counted
    assert raw4.sent == [(b"a", ("10.0.0.1", 0)), (b"b", ("10.0.0.1", 0))]
    # equal-size datagrams go out in one GSO sendmsg
    assert udp4.sent == [(b"x" * 10 + b"y" * 10, ("10.0.0.1", 4500))]
    assert s.send_errors == 2


class EventSink:
    def __init__(self):
        self.events = []

    def send(self, event):
        self.events.append(event)


def test_acquire_and_ike_events_reach_the_daemon_pipe():
    import ipaddress

    events = EventSink()
    w = OutboundWorker(FakeConn([]), FakeTun(), SocketSender(None, None, None, None), POL,
                       events)  # fmt: skip
    src, dst = ipaddress.IPv4Address("10.99.1.1").packed, ipaddress.IPv4Address("10.99.1.2").packed
    udp = b"\x03\xe8\x07\xd0\x00\x0c\x00\x00abcd"
    hdr = bytes([0x45, 0, 0, 20 + len(udp), 0, 0, 0, 0, 64, 17, 0, 0]) + src + dst
    w.pipe.process([hdr + udp], 0.0)  # no SA yet: held, acquire reported
    assert events.events == [("acquire", "ab", "ab", "10.99.1.1", "10.99.1.2")]
    ike = b"\0\0\0\0" + b"IKE message"
    esp = b"\0\0\x10\x01esp..."
    w_in = InboundWorker(FakeConn([]), FakeTun(), [], events)
    w_in.pipe.process_payloads([(ike, dst, src), (esp, dst, src)], 50, 0.0, udp=True)
    assert events.events[-1] == ("ike", ike, ("10.99.1.2", 4500), ("10.99.1.1", 4500))
    assert dict(w_in.pipe.errors) == {"bad_spi_packets": 1}


def test_inbound_worker_forwards_ike_with_the_real_source_port():
    """IKE behind a NAT arrives from the NAT's port, not 4500: the event says so, so the
    IKE SA answers there (RFC 7296 2.23); ESP and keepalives go on through the pipeline."""
    import ipaddress

    events = EventSink()
    w = InboundWorker(FakeConn([]), FakeTun(), [], events)
    nat = ipaddress.IPv4Address("192.0.2.9").packed
    me = ipaddress.IPv4Address("192.0.2.2").packed
    v6a = ipaddress.IPv6Address("2001:db8::9").packed
    v6b = ipaddress.IPv6Address("2001:db8::2").packed
    esp1, esp2 = b"\0\0\x10\x01" + b"a" * 20, b"\0\0\x10\x01" + b"b" * 20
    items = [(esp1, nat, me), (b"\0\0\0\0ike-1", nat, me), (b"\xff", nat, me),
             (b"\0\0\0\0ike-2" * 3, v6a, v6b), (esp2, nat, me), (b"\0\0\0\0", nat, me)]  # fmt: skip
    w.pipe.process_payloads(items, 50, 0.0, udp=True,
                            ports=[31000, 31001, 31002, 40000, 31003, 31004])  # fmt: skip
    assert events.events == [
        ("ike", b"\0\0\0\0ike-1", ("192.0.2.9", 31001), ("192.0.2.2", 4500)),
        ("ike", b"\0\0\0\0ike-2" * 3, ("2001:db8::9", 40000), ("2001:db8::2", 4500)),
    ]
    st = w.pipe.statistics()
    assert (st.non_esp, st.nat_keepalives) == (3, 1)
    assert dict(st.errors) == {"bad_spi_packets": 2}


def test_inbound_udp_handler_forwards_ike_with_its_port():
    """The inbound worker's UDP drain over a real socket: IKE goes to the events pipe with
    the sender's port and the socket's bound port; ESP goes on to the pipeline."""
    import select
    import socket

    from pyipsec.platform.linux import sockets as sk

    events = EventSink()
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        rx.bind(("127.0.0.1", 0))
        rx.setsockopt(socket.IPPROTO_IP, sk.IP_PKTINFO, 1)
        tx.bind(("127.0.0.1", 0))
        w = InboundWorker(FakeConn([]), FakeTun(), [("udp", rx)], events)
        drain = w._handler("udp", rx)
        tx.sendto(b"\0\0\0\0" + b"IKE", rx.getsockname())
        tx.sendto(b"\0\0\x10\x01" + bytes(40), rx.getsockname())
        got = False
        for _ in range(50):
            select.select([rx], [], [], 0.1)
            got = drain() or got
            if w.pipe.statistics().packets_received >= 2:
                break
        assert got
        assert events.events == [
            ("ike", b"\0\0\0\0IKE", ("127.0.0.1", tx.getsockname()[1]),
             ("127.0.0.1", rx.getsockname()[1])),
        ]  # fmt: skip
        st = w.pipe.statistics()
        # both datagrams were read; the IKE one went to the daemon
        assert (st.packets_received, st.non_esp) == (2, 1)
        assert dict(st.errors) == {"bad_spi_packets": 1}
        assert drain() is False
    finally:
        rx.close()
        tx.close()


def test_nat_mapping_event_and_set_peer_command():
    """ESP-in-UDP that verifies from another port than the SA's peer port becomes a
    ("nat_mapping", ...) event; ("set_peer", ...) sends an outbound SA's ESP there."""
    import dataclasses
    import ipaddress
    import select
    import socket

    from pyipsec.platform.linux import sockets as sk

    events = EventSink()
    base = dataclasses.replace(sa_cfg("in"), mode="tunnel", encap="udp", src="127.0.0.1",
                               dst="127.0.0.1", encap_sport=4500)  # fmt: skip
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        rx.bind(("127.0.0.1", 0))
        rx.setsockopt(socket.IPPROTO_IP, sk.IP_PKTINFO, 1)
        tx.bind(("127.0.0.1", 0))
        w = InboundWorker(FakeConn([("policies", POL), ("add_sa", base)]), FakeTun(),
                          [("udp", rx)], events)  # fmt: skip
        w.handle_control()
        peer = dataclasses.replace(base, direction="out")
        sa = peer.build(now=0.0)
        a, b = (ipaddress.IPv4Address(x).packed for x in ("10.99.1.2", "10.99.1.1"))
        udp = b"\x03\xe8\x07\xd0\x00\x0c\x00\x00abcd"
        inner = bytes([0x45, 0, 0, 20 + len(udp), 0, 0, 0, 0, 64, 17, 0, 0]) + a + b + udp
        for msg in sa.encapsulate_esp_batch([inner, inner], 0.0, {}):
            tx.sendto(msg, rx.getsockname())
        drain = w._handler("udp", rx)
        for _ in range(50):
            select.select([rx], [], [], 0.1)
            drain()
            if w.pipe.statistics().packets_received >= 2:
                break
        assert len(w.tun.written) == 2, w.pipe.errors
        assert events.events == [
            ("nat_mapping", "esp", base.spi, "ab", "127.0.0.1", tx.getsockname()[1])
        ]
    finally:
        rx.close()
        tx.close()
    udp_sock = FakeSock()
    out_cfg = dataclasses.replace(peer, src="10.99.1.1", dst="10.99.1.2")
    conn = FakeConn([("add_sa", out_cfg), ("set_peer", "esp", out_cfg.spi, "10.99.1.2", 31077),
                     ("set_peer", "esp", 0x7777, "10.99.1.2", 31077)])  # fmt: skip
    ow = OutboundWorker(conn, FakeTun(), SocketSender(None, None, udp_sock, None), POL)
    ow.handle_control()
    assert conn.sent == [{"ok": True}, {"ok": True}, {"ok": False}]
    src, dst = (ipaddress.IPv4Address(x).packed for x in ("10.99.1.1", "10.99.1.2"))
    plain = bytes([0x45, 0, 0, 20 + len(udp), 0, 0, 0, 0, 64, 17, 0, 0]) + src + dst + udp
    ow.pipe.process([plain], 1.0)
    assert [addr for _, addr in udp_sock.sent] == [("10.99.1.2", 31077)]


def test_socket_sender_batches_real_sockets_only():
    """A real socket gets the sendmmsg sender, a fake (or mmsg=False) one sendto per packet."""
    import socket

    from pyipsec.platform.linux.sockets import RawBatchSender

    real = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s = SocketSender(real, FakeSock(), None, None)
        assert isinstance(s._batcher(4), RawBatchSender)
        assert not isinstance(s._batcher(6), RawBatchSender)
        off = SocketSender(real, None, None, None, mmsg=False)
        assert not isinstance(off._batcher(4), RawBatchSender)
    finally:
        real.close()


def test_outbound_worker_reassembles_fragments_for_transport_sas_only():
    """Fragments the kernel cut for the TUN MTU become one datagram again before a
    transport mode SA (it cannot carry fragments); tunnel mode gets them as they are."""
    from dataclasses import replace

    from scapy.layers.inet import IP, UDP, fragment
    from scapy.packet import Raw

    whole = bytes(IP(src="10.99.1.1", dst="10.99.1.2", id=9) / UDP(sport=5, dport=6)
                  / Raw(b"f" * 3000))  # fmt: skip
    frags = [bytes(f) for f in fragment(IP(whole), 1400)]
    other = bytes(IP(src="10.99.1.1", dst="10.99.1.2") / UDP(sport=5, dport=6) / Raw(b"x"))
    for mode, want in (("transport", [other, whole]), ("tunnel", [*frags[:2], other, frags[2]])):
        cfg = replace(sa_cfg("out"), mode=mode)
        w = OutboundWorker(FakeConn([("add_sa", cfg)]), FakeTun(), SocketSender(*[None] * 4), POL)
        w.handle_control()
        assert w.whole([*frags[:2], other, frags[2]], 1.0) == want
        assert w.whole([b"\x45"], 1.0) == [b"\x45"]  # a runt passes on to be counted
        st = w.reassembly.statistics()
        assert (st.reassembled, st.pending) == ((1, 0) if mode == "transport" else (0, 0))
