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

    from pyipsec.dataplane.workers import _split_ike

    events = EventSink()
    w = OutboundWorker(FakeConn([]), FakeTun(), SocketSender(None, None, None, None), POL,
                       events)  # fmt: skip
    src, dst = ipaddress.IPv4Address("10.99.1.1").packed, ipaddress.IPv4Address("10.99.1.2").packed
    udp = b"\x03\xe8\x07\xd0\x00\x0c\x00\x00abcd"
    hdr = bytes([0x45, 0, 0, 20 + len(udp), 0, 0, 0, 0, 64, 17, 0, 0]) + src + dst
    w.pipe.process([hdr + udp], 0.0)  # no SA yet: held, acquire reported
    assert events.events == [("acquire", "ab", "ab", "10.99.1.1", "10.99.1.2")]
    ike = b"\0\0\0\0" + b"IKE message"
    rest = _split_ike([(ike, dst, src), (b"\0\0\x10\x01esp...", dst, src)], events)
    assert rest == [(b"\0\0\x10\x01esp...", dst, src)]
    assert events.events[-1] == ("ike", ike, ("10.99.1.2", 4500), ("10.99.1.1", 4500))
