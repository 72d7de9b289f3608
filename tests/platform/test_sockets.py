"""UDP GSO sends and GRO receives (over loopback, no root) and their batching rules."""

from __future__ import annotations

import select
import socket

import pytest

from pyipsec.platform.linux import sockets as sk


class FakeSock:
    def __init__(self) -> None:
        self.calls: list[tuple[str, list[int], int]] = []

    def sendto(self, data, addr):
        self.calls.append(("sendto", [len(data)], 0))

    def sendmsg(self, bufs, anc, flags, addr):
        # one iovec per datagram: record the bytes the call gathers
        seg = int.from_bytes(anc[0][2], "little")
        self.calls.append(("sendmsg", [sum(len(b) for b in bufs)], seg))


def test_send_gso_groups_equal_sizes_with_shorter_last():
    s = FakeSock()
    sizes = [1400] * 5 + [800] + [1400] * 2 + [100]
    calls = sk.send_gso(s, [b"x" * n for n in sizes], ("127.0.0.1", 9))
    assert calls == 2
    assert s.calls == [("sendmsg", [1400 * 5 + 800], 1400), ("sendmsg", [1400 * 2 + 100], 1400)]


def test_send_gso_limits_segments_and_bytes():
    s = FakeSock()
    sk.send_gso(s, [b"x" * 100] * 150, ("127.0.0.1", 9))
    assert [c[1][0] // 100 for c in s.calls] == [64, 64, 22]
    s = FakeSock()
    sk.send_gso(s, [b"x" * 1500] * 50, ("127.0.0.1", 9))
    assert all(c[1][0] <= sk.GSO_MAX_BYTES for c in s.calls) and len(s.calls) == 2
    s = FakeSock()
    sk.send_gso(s, [b"x" * 10] * 3, ("127.0.0.1", 9), gso=False)
    assert [c[0] for c in s.calls] == ["sendto"] * 3


@pytest.mark.parametrize("family,addr", [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")])
def test_gso_to_gro_over_loopback(family, addr):
    rx = socket.socket(family, socket.SOCK_DGRAM)
    tx = socket.socket(family, socket.SOCK_DGRAM)
    try:
        rx.bind((addr, 0))
        opt = (socket.IPPROTO_IP, sk.IP_PKTINFO) if family == socket.AF_INET else (
            socket.IPPROTO_IPV6, sk.IPV6_RECVPKTINFO)  # fmt: skip
        rx.setsockopt(*opt, 1)
        try:
            rx.setsockopt(sk.SOL_UDP, sk.UDP_GRO, 1)
        except OSError:
            pytest.skip("kernel without UDP_GRO")
        port = rx.getsockname()[1]
        dgrams = [bytes([i]) * 1000 for i in range(20)] + [b"end" * 10]
        sk.send_gso(tx, dgrams, (addr, port))
        got: list[tuple[bytes, str, str]] = []
        ports: list[int] = []
        rx.settimeout(2)
        while len(got) < len(dgrams):
            rx.setblocking(True)
            first = rx.recvmsg(65535, sk._CMSG_SPACE)  # wait for data, then drain
            dst, seg = sk._pktinfo_dst(first[1], family)
            data = first[0]
            step = seg or len(data)
            src = socket.inet_pton(family, first[3][0])
            first_items = [(data[o : o + step], src, dst) for o in range(0, len(data), step)]
            got += first_items
            ports += [first[3][1]] * len(first_items)
            got += sk.recv_with_addrs(rx, 64, ports)
        assert [g[0] for g in got] == dgrams
        # one source port per item, index for index (GRO segments included)
        assert ports == [tx.getsockname()[1]] * len(dgrams)
        packed = socket.inet_pton(family, addr)
        assert {g[2] for g in got} == {packed} and {g[1] for g in got} == {packed}
    finally:
        rx.close()
        tx.close()


def test_recv_raw4_and_pktinfo_parsing_without_data():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    try:
        assert sk.recv_raw4(s, 8) == []
        assert sk.recv_with_addrs(s, 8) == []
    finally:
        s.close()
    assert sk._pktinfo_dst([], socket.AF_INET) == (None, 0)


@pytest.mark.parametrize("family,addr", [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")])
def test_recv_with_addrs_keeps_each_source_port(family, addr):
    """Datagrams from several source ports (a NAT maps each peer's 4500 elsewhere): every
    item's port is the one it came from, in order, and the items stay triples."""
    rx = socket.socket(family, socket.SOCK_DGRAM)
    txs = [socket.socket(family, socket.SOCK_DGRAM) for _ in range(3)]
    try:
        rx.bind((addr, 0))
        port = rx.getsockname()[1]
        sent = []
        for rnd in range(2):
            for i, tx in enumerate(txs):
                tx.sendto(bytes([rnd, i]) * 50, (addr, port))
                sent.append((bytes([rnd, i]) * 50, tx.getsockname()[1]))
        got: list[tuple[bytes, bytes, bytes]] = []
        ports: list[int] = []
        for _ in range(50):
            select.select([rx], [], [], 0.1)
            got += sk.recv_with_addrs(rx, 64, ports)
            if len(got) >= len(sent):
                break
        assert sorted(zip([g[0] for g in got], ports)) == sorted(sent)
        assert all(len(g) == 3 for g in got) and len(ports) == len(got)
        assert sk.recv_with_addrs(rx, 8, ports) == [] and len(ports) == len(got)
    finally:
        rx.close()
        for tx in txs:
            tx.close()
