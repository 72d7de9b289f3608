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


# --------------------------------------------------------------------------- sendmmsg

_RAW_SEND = r"""
import json, socket, struct, sys
from pyipsec.platform.linux import sockets as sk

family = socket.AF_INET6 if sys.argv[1] == "6" else socket.AF_INET
mode = sys.argv[2]  # "mmsg" or "sendto" (the fallback forced)
addr = "::1" if family == socket.AF_INET6 else "127.0.0.1"
# lo with a 1500-byte MTU: a header-included packet above it is refused (EMSGSIZE)
import subprocess
subprocess.run(["ip", "link", "set", "lo", "mtu", "1500"], check=True)
rx = socket.socket(family, socket.SOCK_RAW, 253)
rx.settimeout(2)
tx = sk.open_raw_sender(family, 0x42)
packed = socket.inet_pton(family, addr)

def packet(i, size):
    body = bytes([i]) * size
    if family == socket.AF_INET6:
        return struct.pack("!IHBB16s16s", 6 << 28, size, 253, 64, packed, packed) + body
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + size, i, 0, 64, 253, 0,
                       packed, packed) + body

sizes = [3000, 100, 200, 300, 400, 500, 3000, 600, 700, 800, 900]  # 2 too big
pkts = [packet(i, n) for i, n in enumerate(sizes)]
b = sk.RawBatchSender(tx, 4)
if mode == "sendto":
    b._fn = None
errors = b.send(pkts, addr)
small = b.send(pkts[1:3], addr)  # fewer than MMSG_MIN: sendto
got = []
try:
    while True:
        got.append(rx.recv(65535))
except socket.timeout:
    pass
bodies = [g[20:] if family == socket.AF_INET else g for g in got]
print(json.dumps({"errors": errors, "small": small, "calls": b.calls, "batched": b.batched,
                  "too_big": [p[0] >> 4 and len(p) for p in b.too_big],
                  "got": [[d[0], len(d)] for d in bodies]}))
"""


@pytest.mark.netns
@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("mode", ["mmsg", "sendto"])
def test_raw_batch_sender_real_socket(version, mode):
    """Header-included packets through sendmmsg (batches of 4) arrive whole and in order
    on a raw receiver; the two packets above the MTU are refused, handed back once each
    (``too_big``), and cost no other packet (one refused first in its call, one in the
    middle of a call)."""
    import json

    from netns import run_in_netns

    code = f"import sys; sys.argv = ['x', '{version}', '{mode}']\n" + _RAW_SEND
    res = json.loads(run_in_netns(code).strip().splitlines()[-1])
    sizes = [100, 200, 300, 400, 500, 600, 700, 800, 900]
    want = [[i, n] for i, n in zip([1, 2, 3, 4, 5, 7, 8, 9, 10], sizes)] + [[1, 100], [2, 200]]
    # IPv6 raw sockets deliver the payload only; IPv4 ones the header too (cut above)
    assert res["got"] == want
    # refused as too big (EMSGSIZE): handed back for fragmenting, not counted as errors
    assert res["errors"] == 0 and res["small"] == 0
    assert res["too_big"] == [3000 + (20 if version == 4 else 40)] * 2
    assert res["batched"] is (mode == "mmsg")
    if mode == "mmsg":
        # 11 packets in calls of at most 4: 0 refused (the call fails), 1-4 sent,
        # 5 sent and 6 refused (the call says 1), 6 refused alone, 7-10; then 2 sendto
        assert res["calls"] == 5 + 2, res
    else:
        assert res["calls"] == 11 + 2


def test_raw_batch_sender_sendto_fallback_for_other_objects():
    """Objects other than ``bytes`` (no known buffer layout) go out with sendto."""

    class Sock:
        family = socket.AF_INET

        def __init__(self):
            self.sent = []

        def fileno(self):
            return -1

        def sendto(self, data, addr):
            if len(data) > 5:
                raise OSError(101, "unreachable")
            self.sent.append((bytes(data), addr))

    s = Sock()
    b = sk.RawBatchSender(s, 4)  # type: ignore[arg-type]
    pkts = [bytearray(b"ab"), b"cd", b"toolong", b"ef", b"gh"]
    assert b.send(pkts, "10.0.0.1") == 1
    assert s.sent == [(b"ab", ("10.0.0.1", 0)), (b"cd", ("10.0.0.1", 0)),
                      (b"ef", ("10.0.0.1", 0)), (b"gh", ("10.0.0.1", 0))]  # fmt: skip
    assert b.calls == 5


_AH6_RECV = r"""
import select, socket, struct
from pyipsec.platform.linux import sockets as sk

rx = sk.open_raw_receiver(socket.AF_INET6, sk.IPPROTO_AH, 0)
tx = sk.open_raw_sender(socket.AF_INET6, 0)
lo = socket.inet_pton(socket.AF_INET6, "::1")
ah = struct.pack("!BBHII", 17, 4, 0, 0x1234, 7) + bytes(range(12)) + b"payload!" * 4
hop = bytes([60, 0, 1, 4, 0, 0, 0, 0])           # hop-by-hop: PadN, next: dst options
# destination options, next AH: an experimental option (RFC 4727, type 0x1E: skipped
# when unknown) carrying 12 bytes; Linux drops PadN longer than 7 bytes or not zero
dst = bytes([51, 1, 0x1E, 12]) + bytes(range(1, 13))
cases = [(51, b""), (60, dst), (0, hop + dst)]
got = []
for nh, exts in cases:
    body = exts + ah
    pkt = struct.pack("!IHBB16s16s", 6 << 28, len(body), nh, 64, lo, lo) + body
    tx.sendto(pkt, ("::1", 0))
    select.select([rx], [], [], 2)
    got += [(r == pkt, len(r)) for r in sk.recv_ah6(rx, 8)]
print(got)
"""


@pytest.mark.netns
def test_recv_ah6_rebuilds_the_headers_in_front_of_ah():
    """The IPv6 raw AH socket gives the bytes from AH on; recv_ah6 puts the fixed header
    and the hop-by-hop / destination options headers (ancillary data) back in front,
    byte for byte what was sent (traffic class and flow label 0, hop limit 64)."""
    from netns import run_in_netns

    out = run_in_netns(_AH6_RECV).strip().splitlines()[-1]
    assert out == "[(True, 96), (True, 112), (True, 120)]"


def test_raw_batch_sender_hands_unparsable_destinations_to_sendto():
    """A scoped IPv6 address (or a name) is left to sendto, which knows how to parse it."""
    real = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        b = sk.RawBatchSender(real, 8)
        sent = []
        b.sock = type("S", (), {"sendto": lambda self, d, a: sent.append(a)})()
        assert b.send([b"x"] * 5, "fe80::1%lo") == 0
        assert sent == [("fe80::1%lo", 0)] * 5 and b._dst is None
    finally:
        real.close()
