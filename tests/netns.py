"""Network-namespace test fixtures: three hosts joined by veths, commands run inside.

Topology (names take an optional ``tag`` so concurrent runs never collide)::

    pyi-a{tag}  veth "eth0"  <->  "eth0" veth  pyi-b{tag}  "eth1" <-> "eth0"  pyi-c{tag}
    10.99.1.1/24, fd99:1::1/64    10.99.1.2, fd99:1::2   10.99.2.2, fd99:2::2   10.99.2.3, fd99:2::3

The veth pairs are created directly inside the namespaces, so nothing is ever named in the
root namespace. IPv6 addresses use ``nodad`` so they are usable at once. Every namespace and
every background process started through this module is removed (by pid / by name) in
:meth:`Topology.close`, which runs from ``finally`` in the fixture and from ``atexit``.

Use::

    with Topology(tag="x1") as topo:
        topo.a.run("ping", "-c1", topo.b.addr4)
        proc = topo.b.spawn(["iperf3", "-s"])
        cap = topo.capture(topo.b, "eth0")
        ...
        packets = cap.stop()          # scapy packets

Only addresses inside the namespaces (10.99.x.x, fd99::) and loopback are ever used.
"""

from __future__ import annotations

import atexit
import os
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

_LIVE: list[Topology] = []


def _sh(argv: Sequence[str], *, check: bool = True, timeout: float = 30) -> str:
    res = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({res.returncode}): {res.stderr.strip()}")
    return res.stdout


@dataclass
class Host:
    """One network namespace acting as a host."""

    ns: str
    addr4: str
    addr6: str
    procs: list[subprocess.Popen] = field(default_factory=list)

    def argv(self, cmd: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns, *cmd]

    def run(
        self,
        *cmd: str,
        check: bool = True,
        timeout: float = 60,
        input: bytes | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess:
        """Run ``cmd`` inside the namespace; raise RuntimeError on failure if ``check``."""
        res = subprocess.run(
            self.argv(cmd),
            capture_output=True,
            timeout=timeout,
            input=input,
            env=None if env is None else {**os.environ, **env},
        )
        if check and res.returncode != 0:
            raise RuntimeError(
                f"[{self.ns}] {' '.join(cmd)} failed ({res.returncode}): "
                f"{res.stderr.decode(errors='replace').strip()[-2000:]}"
            )
        return res

    def spawn(
        self,
        cmd: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        stdout: int | None = subprocess.PIPE,
        stderr: int | None = subprocess.PIPE,
    ) -> subprocess.Popen:
        """Start a background process in the namespace; it is killed at cleanup by pid."""
        proc = subprocess.Popen(
            self.argv(cmd),
            stdout=stdout,
            stderr=stderr,
            env=None if env is None else {**os.environ, **env},
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 10) -> int:
        """Send ``sig`` to ``proc`` (by pid) and wait; SIGKILL if it does not exit."""
        if proc.poll() is None:
            try:
                os.kill(proc.pid, sig)
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=timeout)
            except ProcessLookupError:
                pass
        if proc in self.procs:
            self.procs.remove(proc)
        return proc.returncode

    def ping(self, addr: str, count: int = 1, timeout: int = 2) -> bool:
        """True if ``count`` echo replies came back from ``addr``."""
        res = self.run(
            "ping", "-n", "-q", "-c", str(count), "-i", "0.2", "-W", str(timeout), addr,
            check=False, timeout=timeout * count + 10,
        )  # fmt: skip
        return res.returncode == 0

    def cleanup(self) -> None:
        for proc in list(self.procs):
            self.stop(proc, signal.SIGKILL, timeout=5)


class Capture:
    """A tcpdump capture on one interface of a host, written to a temporary pcap file."""

    def __init__(
        self, host: Host, iface: str, bpf: str = "not arp and not icmp6", snaplen: int = 0
    ) -> None:
        fd, self.path = tempfile.mkstemp(prefix="pyi-cap-", suffix=".pcap")
        os.close(fd)
        self.host = host
        self.proc = host.spawn(
            [
                "tcpdump",
                "-n",
                "-U",
                "--immediate-mode",
                "-s",
                str(snaplen),
                "-i",
                iface,
                "-w",
                self.path,
                bpf,
            ],
            stdout=subprocess.DEVNULL,
        )
        # tcpdump announces itself on stderr once the socket is bound
        assert self.proc.stderr is not None
        deadline = time.monotonic() + 10
        line = b""
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if b"listening on" in line or not line:
                break
        if b"listening on" not in line:
            raise RuntimeError(f"tcpdump did not start: {line!r}")
        time.sleep(0.2)

    def stop_raw(self) -> list[bytes]:
        """Stop tcpdump and return the captured frames as bytes (fast, no dissection)."""
        time.sleep(0.3)
        self.host.stop(self.proc, signal.SIGINT)
        try:
            return read_pcap(self.path)
        finally:
            os.unlink(self.path)

    def stop(self) -> list:
        """Stop tcpdump and return the captured packets (scapy objects)."""
        time.sleep(0.3)
        self.host.stop(self.proc, signal.SIGINT)
        import scapy.layers.all  # noqa: F401 - registers Ether/IP/IPv6 dissectors
        from scapy.utils import rdpcap

        try:
            return list(rdpcap(self.path))
        finally:
            os.unlink(self.path)


class Topology:
    """Namespaces pyi-a, pyi-b, pyi-c (with ``tag`` appended), veths, IPv4 and IPv6."""

    def __init__(self, tag: str = "") -> None:
        self.tag = tag
        self.a = Host(f"pyi-a{tag}", "10.99.1.1", "fd99:1::1")
        self.b = Host(f"pyi-b{tag}", "10.99.1.2", "fd99:1::2")
        self.c = Host(f"pyi-c{tag}", "10.99.2.3", "fd99:2::3")
        #: B's address facing C
        self.b_c4 = "10.99.2.2"
        self.b_c6 = "fd99:2::2"
        self.hosts = [self.a, self.b, self.c]
        self._made: list[str] = []
        _LIVE.append(self)
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def _build(self) -> None:
        for h in self.hosts:
            _sh(["ip", "netns", "del", h.ns], check=False)
            _sh(["ip", "netns", "add", h.ns])
            self._made.append(h.ns)
            h.run("ip", "link", "set", "lo", "up")
            h.run("sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0")
            h.run("sysctl", "-qw", "net.ipv6.conf.default.accept_dad=0")
        a, b, c = self.a, self.b, self.c
        _sh(["ip", "link", "add", "eth0", "netns", a.ns, "type", "veth",
             "peer", "name", "eth0", "netns", b.ns])  # fmt: skip
        _sh(["ip", "link", "add", "eth0", "netns", c.ns, "type", "veth",
             "peer", "name", "eth1", "netns", b.ns])  # fmt: skip
        plan = [
            (a, "eth0", a.addr4, a.addr6),
            (b, "eth0", b.addr4, b.addr6),
            (b, "eth1", self.b_c4, self.b_c6),
            (c, "eth0", c.addr4, c.addr6),
        ]
        for h, dev, v4, v6 in plan:
            h.run("ip", "addr", "add", f"{v4}/24", "dev", dev)
            h.run("ip", "-6", "addr", "add", f"{v6}/64", "dev", dev, "nodad")
            h.run("ip", "link", "set", dev, "up")
        # C reaches A's subnet through B (B forwards; used only by tests that want it)
        c.run("ip", "route", "add", "10.99.1.0/24", "via", self.b_c4)
        c.run("ip", "-6", "route", "add", "fd99:1::/64", "via", self.b_c6)
        a.run("ip", "route", "add", "10.99.2.0/24", "via", b.addr4)
        a.run("ip", "-6", "route", "add", "fd99:2::/64", "via", b.addr6)

    def capture(
        self, host: Host, iface: str, bpf: str = "not arp and not icmp6", snaplen: int = 0
    ) -> Capture:
        return Capture(host, iface, bpf, snaplen)

    def close(self) -> None:
        """Kill every process started here (by pid) and delete the namespaces."""
        for h in self.hosts:
            try:
                h.cleanup()
            except Exception:  # cleanup must go on
                pass
        for ns in self._made:
            _sh(["ip", "netns", "del", ns], check=False)
        self._made.clear()
        if self in _LIVE:
            _LIVE.remove(self)

    def __enter__(self) -> Topology:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_pcap(path: str) -> list[bytes]:
    """Frames of a classic pcap file (what ``tcpdump -w`` writes), as bytes."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 24:
        return []
    magic = data[:4]
    endian = "<" if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    rec = struct.Struct(endian + "IIII")
    out = []
    off = 24
    while off + 16 <= len(data):
        _s, _us, caplen, _len = rec.unpack_from(data, off)
        off += 16
        out.append(data[off : off + caplen])
        off += caplen
    return out


def ip_of_frame(frame: bytes) -> tuple[int, str, str, int, int, bytes] | None:
    """(version, src, dst, protocol, dport, ip_packet) of an Ethernet frame, None if not IP.

    ``dport`` is the UDP/TCP destination port or the ICMPv6 type (0 otherwise); the IPv6
    protocol is the first next-header (extension headers are not walked).
    """
    import ipaddress

    if len(frame) < 14:
        return None
    etype = int.from_bytes(frame[12:14], "big")
    ip = frame[14:]
    if etype == 0x0800 and len(ip) >= 20:
        ihl = (ip[0] & 15) * 4
        proto = ip[9]
        port = int.from_bytes(ip[ihl + 2 : ihl + 4], "big") if proto in (6, 17) else 0
        src, dst = ipaddress.IPv4Address(ip[12:16]), ipaddress.IPv4Address(ip[16:20])
        return 4, str(src), str(dst), proto, port, ip
    if etype == 0x86DD and len(ip) >= 40:
        proto = ip[6]
        if proto in (6, 17):
            port = int.from_bytes(ip[42:44], "big")
        elif proto == 58:
            port = ip[40]
        else:
            port = 0
        src, dst = ipaddress.IPv6Address(ip[8:24]), ipaddress.IPv6Address(ip[24:40])
        return 6, str(src), str(dst), proto, port, ip
    return None


# --------------------------------------------------------------------------- traffic

_RECEIVER = r"""
import hashlib, socket, sys
fam = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(fam, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(1)
print("ready", flush=True)
c, _ = s.accept()
c.settimeout(float(sys.argv[3]))
h = hashlib.sha256()
n = 0
while True:
    b = c.recv(1 << 16)
    if not b:
        break
    h.update(b)
    n += len(b)
print(n, h.hexdigest(), flush=True)
"""

_SENDER = r"""
import hashlib, os, socket, sys, time
addr, port, size, marker = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4].encode()
rate = float(sys.argv[5]) if len(sys.argv) > 5 else 0.0
fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
src = (sys.argv[7], 0) if len(sys.argv) > 7 and sys.argv[7] else None
s = socket.create_connection((addr, port), timeout=float(sys.argv[6]), source_address=src)
h = hashlib.sha256()
unit = b"".join(marker + os.urandom(64 - len(marker)) for _ in range(1024))
sent = 0
t0 = time.monotonic()
while sent < size:
    chunk = unit[: size - sent]
    s.sendall(chunk)
    h.update(chunk)
    sent += len(chunk)
    if rate:
        lag = sent / rate - (time.monotonic() - t0)
        if lag > 0:
            time.sleep(lag)
s.shutdown(socket.SHUT_WR)
s.recv(1)
print(sent, h.hexdigest(), flush=True)
"""


@dataclass
class Transfer:
    """A TCP transfer between two hosts; :meth:`wait` returns (sent, received) as
    ``(bytes, sha256)`` pairs."""

    receiver: subprocess.Popen
    sender: subprocess.Popen
    server: Host
    client: Host

    def wait(self, timeout: float = 120) -> tuple[tuple[int, str], tuple[int, str]]:
        out_s, err_s = self.sender.communicate(timeout=timeout)
        out_r, err_r = self.receiver.communicate(timeout=timeout)
        self.client.procs.remove(self.sender) if self.sender in self.client.procs else None
        self.server.procs.remove(self.receiver) if self.receiver in self.server.procs else None
        if self.sender.returncode or self.receiver.returncode:
            raise RuntimeError(
                f"transfer failed: sender {self.sender.returncode} {err_s.decode()[-500:]} "
                f"receiver {self.receiver.returncode} {err_r.decode()[-500:]}"
            )
        ls = out_s.decode().split()
        lr = out_r.decode().split()  # "ready" was read by start_transfer
        return (int(ls[0]), ls[1]), (int(lr[0]), lr[1])


def start_transfer(
    server: Host,
    client: Host,
    addr: str,
    size: int,
    *,
    port: int = 5001,
    marker: str = "PYI-PLAINTEXT-MARKER",
    rate: float = 0.0,
    timeout: float = 60.0,
    source: str = "",
) -> Transfer:
    """Start a receiver on ``server`` bound to ``addr`` and a sender on ``client`` sending
    ``size`` bytes made of 64-byte units that each start with ``marker``; ``rate`` limits
    the sender (bytes/s, 0 = as fast as possible); ``source`` binds the client's address."""
    rx = server.spawn([sys.executable, "-c", _RECEIVER, addr, str(port), str(timeout)])
    assert rx.stdout is not None
    line = rx.stdout.readline()
    if b"ready" not in line:
        raise RuntimeError(f"receiver did not start: {rx.stderr.read() if rx.stderr else ''}")
    tx = client.spawn(
        [sys.executable, "-c", _SENDER, addr, str(port), str(size), marker, str(rate),
         str(timeout), source]
    )  # fmt: skip
    return Transfer(rx, tx, server, client)


def run_in_netns(code: str, timeout: float = 60) -> str:
    """Execute Python ``code`` in a throwaway namespace ``pyi-p<hex>`` (removed afterwards);
    returns its stdout, raises AssertionError with its stderr on failure."""
    import textwrap
    import uuid

    ns = "pyi-p" + uuid.uuid4().hex[:6]
    _sh(["ip", "netns", "add", ns])
    try:
        _sh(["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"])
        res = subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, "-c", textwrap.dedent(code)],
            capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip
        assert res.returncode == 0, res.stderr[-3000:]
        return res.stdout
    finally:
        _sh(["ip", "netns", "del", ns], check=False)


@atexit.register
def _cleanup_all() -> None:
    for topo in list(_LIVE):
        topo.close()


def have_root() -> bool:
    return os.geteuid() == 0
