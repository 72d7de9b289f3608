"""The demo's little network: three hosts as namespaces on one switch, processes, captures.

Topology (``tag`` is appended to every namespace name so a test can run beside ``make demo``)::

    pyi-server-a  eth0 10.77.0.10 ──┐
    pyi-server-b  eth0 10.77.0.20 ──┼── br0 in pyi-lan (ports port-a, port-b, port-c)
    pyi-client    eth0 10.77.0.30 ──┘

The switch lives in its own namespace, ``pyi-lan``, so nothing is created in the root
namespace and a capture on a switch port sees exactly what is on that host's cable (like a
mirror port). Only addresses inside 10.77.0.0/24 and loopback are used.

Everything the lab creates is recorded: processes (stopped by pid), namespaces, the work
directory. :meth:`Lab.close` removes it all and is safe to call twice; a state file under
/run remembers the work directory so that a run killed with SIGKILL is cleaned up by the
next run (:func:`remove_stale`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO

SUBNET = "10.77.0"
STATE_DIR = "/run"


class LabError(RuntimeError):
    """A step of the demo's set-up failed; the message says which and why."""


@dataclass
class Host:
    """One network namespace acting as a host with one interface, ``eth0``."""

    label: str  #: what the demo prints: server-a, server-b, client
    ns: str  #: namespace name (pyi-...)
    addr: str  #: IPv4 address on eth0
    port: str  #: the switch port (in the lan namespace) this host's cable plugs into

    def argv(self, cmd: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns, *cmd]


def sh(
    argv: Sequence[str],
    *,
    check: bool = True,
    timeout: float = 60,
    env: dict[str, str] | None = None,
    input_text: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command, capture its output; a failure is a :class:`LabError` naming it."""
    try:
        res = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            input=input_text,
        )
    except subprocess.TimeoutExpired:
        raise LabError(f"{' '.join(argv)}: no answer after {timeout:.0f}s") from None
    if check and res.returncode != 0:
        detail = (res.stderr or res.stdout).strip()[-1500:]
        raise LabError(f"{' '.join(argv)} failed (exit {res.returncode}): {detail}")
    return res


def _namespaces() -> set[str]:
    try:
        return set(os.listdir("/run/netns"))
    except FileNotFoundError:
        return set()


def _kill_namespace(ns: str) -> None:
    """Kill every process still inside ``ns`` (by pid), then delete the namespace."""
    if ns not in _namespaces():
        return
    pids = sh(["ip", "netns", "pids", ns], check=False).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)
    deadline = time.monotonic() + 5
    while pids and time.monotonic() < deadline:
        pids = [p for p in pids if os.path.exists(f"/proc/{p}")]
        time.sleep(0.05)
    sh(["ip", "netns", "del", ns], check=False)


def _state_path(tag: str) -> str:
    return os.path.join(STATE_DIR, f"pyi-demo{tag}.json")


def remove_stale(tag: str, names: Sequence[str]) -> list[str]:
    """Remove what an earlier run with the same ``tag`` left behind; returns what was removed."""
    removed = []
    path = _state_path(tag)
    try:
        with open(path) as handle:
            state = json.load(handle)
    except (OSError, ValueError):
        state = {}
    workdir = state.get("workdir")
    tmp = tempfile.gettempdir()
    if (
        isinstance(workdir, str)
        and os.path.basename(workdir).startswith("pyi-demo-")
        and os.path.dirname(workdir) == tmp
        and os.path.isdir(workdir)
    ):
        shutil.rmtree(workdir, ignore_errors=True)
        removed.append(workdir)
    for ns in names:
        if ns in _namespaces():
            _kill_namespace(ns)
            removed.append(ns)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    return removed


class Capture:
    """tcpdump on one switch port, written to a pcap file and read back by :meth:`stop`."""

    def __init__(self, lab: Lab, port: str, name: str) -> None:
        self.lab = lab
        self.path = os.path.join(lab.workdir, f"{name}.pcap")
        log = os.path.join(lab.workdir, f"{name}.tcpdump.log")
        self.proc = lab.spawn(
            lab.lan_ns,
            [
                "tcpdump",
                "-n",
                "-U",
                "--immediate-mode",
                "-s",
                "0",
                "-i",
                port,
                "-w",
                self.path,
                "ip",
            ],
            log=log,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with open(log, "rb") as handle:
                if b"listening on" in handle.read():
                    break
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        else:
            raise LabError(f"tcpdump on {port} did not start")
        if self.proc.poll() is not None:
            raise LabError(f"tcpdump on {port} failed: {lab.tail(log)}")

    def stop(self) -> list[Packet]:
        """Stop tcpdump (SIGINT flushes the file) and return the IPv4 packets captured."""
        time.sleep(0.2)
        self.lab.stop(self.proc, signal.SIGINT)
        with open(self.path, "rb") as handle:
            return read_pcap(handle.read())


@dataclass(frozen=True)
class Packet:
    """One captured IPv4 packet: addresses, protocol, ports (0 if none) and the IP bytes."""

    src: str
    dst: str
    proto: int
    sport: int
    dport: int
    data: bytes  #: the whole IP packet, to look for text anywhere in it

    def between(self, a: str, b: str) -> bool:
        return {self.src, self.dst} == {a, b}

    def describe(self) -> str:
        names = {1: "ICMP", 6: "TCP", 17: "UDP", 50: "ESP", 51: "AH"}
        kind = names.get(self.proto, f"proto {self.proto}")
        if self.proto in (6, 17):
            return f"{self.src}:{self.sport} > {self.dst}:{self.dport} {kind}"
        return f"{self.src} > {self.dst} {kind}"


def read_pcap(blob: bytes) -> list[Packet]:
    """Parse a classic pcap file (Ethernet link type) into IPv4 :class:`Packet` objects."""
    if len(blob) < 24:
        return []
    magic = blob[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        endian = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        endian = ">"
    else:
        raise LabError("capture file is not a pcap file")
    (linktype,) = struct.unpack_from(endian + "I", blob, 20)
    if linktype != 1:
        raise LabError(f"capture link type {linktype} is not Ethernet")
    packets = []
    offset = 24
    while offset + 16 <= len(blob):
        _sec, _usec, caplen, _length = struct.unpack_from(endian + "IIII", blob, offset)
        if offset + 16 + caplen > len(blob):
            break  # a record cut short (tcpdump killed mid-write): ignore it
        frame = blob[offset + 16 : offset + 16 + caplen]
        offset += 16 + caplen
        packet = _parse_frame(frame)
        if packet is not None:
            packets.append(packet)
    return packets


def _parse_frame(frame: bytes) -> Packet | None:
    if len(frame) < 34:
        return None
    ethertype = int.from_bytes(frame[12:14], "big")
    ip = frame[14:]
    if ethertype == 0x8100:  # one VLAN tag
        ethertype = int.from_bytes(frame[16:18], "big")
        ip = frame[18:]
    if ethertype != 0x0800 or len(ip) < 20 or ip[0] >> 4 != 4:
        return None
    ihl = (ip[0] & 0x0F) * 4
    total = int.from_bytes(ip[2:4], "big")
    ip = ip[: max(total, ihl)]
    proto = ip[9]
    src = ".".join(str(b) for b in ip[12:16])
    dst = ".".join(str(b) for b in ip[16:20])
    sport = dport = 0
    if proto in (6, 17) and len(ip) >= ihl + 4:
        sport, dport = struct.unpack_from("!HH", ip, ihl)
    return Packet(src, dst, proto, sport, dport, bytes(ip))


@dataclass
class Lab:
    """The three hosts, the switch, a work directory and every process started in them."""

    tag: str = ""
    hosts: dict[str, Host] = field(default_factory=dict)
    workdir: str = ""
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    made: list[str] = field(default_factory=list)
    #: everything ever created, for :meth:`leftovers` (pids, namespaces, directories)
    history: dict[str, list] = field(default_factory=lambda: {"pids": [], "dirs": []})

    def __post_init__(self) -> None:
        self._lock: IO[str] | None = None
        t = self.tag
        self.lan_ns = f"pyi-lan{t}"
        self.hosts = {
            "server-a": Host("server-a", f"pyi-server-a{t}", f"{SUBNET}.10", "port-a"),
            "server-b": Host("server-b", f"pyi-server-b{t}", f"{SUBNET}.20", "port-b"),
            "client": Host("client", f"pyi-client{t}", f"{SUBNET}.30", "port-c"),
        }

    def _lock_path(self) -> str:
        return os.path.join(STATE_DIR, f"pyi-demo{self.tag}.lock")

    @property
    def namespaces(self) -> list[str]:
        return [h.ns for h in self.hosts.values()] + [self.lan_ns]

    def build(self) -> list[str]:
        """Remove stale leftovers, then create the work directory, namespaces and links.

        Raises :class:`LabError` if another run with the same tag is in progress.
        """
        self._lock = open(self._lock_path(), "w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            self._lock = None
            raise LabError(
                f"another demo run with tag {self.tag!r} is in progress (use --tag=NAME)"
            ) from None
        stale = remove_stale(self.tag, self.namespaces)
        self.workdir = tempfile.mkdtemp(prefix="pyi-demo-")
        self.history["dirs"].append(self.workdir)
        os.chmod(self.workdir, 0o711)  # the postgres user must traverse into its data dir
        with open(_state_path(self.tag), "w") as handle:
            json.dump({"workdir": self.workdir, "namespaces": self.namespaces}, handle)
        for ns in self.namespaces:
            sh(["ip", "netns", "add", ns])
            self.made.append(ns)
            self.run(ns, ["ip", "link", "set", "lo", "up"])
        self.run(self.lan_ns, ["ip", "link", "add", "br0", "type", "bridge"])
        self.run(self.lan_ns, ["ip", "link", "set", "br0", "up"])
        for host in self.hosts.values():
            sh(["ip", "link", "add", "eth0", "netns", host.ns, "type", "veth",
                "peer", "name", host.port, "netns", self.lan_ns])  # fmt: skip
            self.run(self.lan_ns, ["ip", "link", "set", host.port, "master", "br0", "up"])
            self.run(host.ns, ["ip", "addr", "add", f"{host.addr}/24", "dev", "eth0"])
            self.run(host.ns, ["ip", "link", "set", "eth0", "up"])
        return stale

    # ------------------------------------------------------------------ processes

    def run(
        self,
        ns: str,
        cmd: Sequence[str],
        *,
        check: bool = True,
        timeout: float = 60,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` inside namespace ``ns`` and wait for it."""
        return sh(["ip", "netns", "exec", ns, *cmd], check=check, timeout=timeout, env=env)

    def spawn(
        self, ns: str, cmd: Sequence[str], *, log: str, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start ``cmd`` in ``ns`` in the background, output to ``log``; stopped by pid later."""
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", ns, *cmd],  # ip netns exec execs: proc.pid is cmd's pid
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # Ctrl-C reaches the driver only; it stops these
            )
        self.procs.append(proc)
        self.history["pids"].append(proc.pid)
        return proc

    def stop(
        self, proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, wait: float = 10
    ) -> int:
        """Send ``sig`` to ``proc`` by pid and wait; SIGKILL if it does not exit in time."""
        if proc.poll() is None:
            try:
                os.kill(proc.pid, sig)
                proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=wait)
            except ProcessLookupError:
                proc.wait(timeout=wait)
        if proc in self.procs:
            self.procs.remove(proc)
        return proc.returncode

    def capture(self, host: str, name: str) -> Capture:
        """Capture on the cable of ``host`` (its switch port)."""
        return Capture(self, self.hosts[host].port, name)

    def path(self, name: str) -> str:
        return os.path.join(self.workdir, name)

    @staticmethod
    def tail(path: str, lines: int = 15) -> str:
        try:
            with open(path, errors="replace") as handle:
                return "".join(handle.readlines()[-lines:]).rstrip()
        except OSError:
            return "(no log)"

    # ------------------------------------------------------------------ cleanup

    def close(self) -> None:
        """Stop every process (newest first), delete namespaces and the work directory."""
        for proc in reversed(list(self.procs)):
            with contextlib.suppress(Exception):
                self.stop(proc, signal.SIGTERM, wait=5)
        for ns in list(self.made):
            with contextlib.suppress(Exception):
                _kill_namespace(ns)
            self.made.remove(ns)
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = ""
            with contextlib.suppress(FileNotFoundError):
                os.unlink(_state_path(self.tag))
        if self._lock is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._lock_path())
            self._lock.close()  # releases the flock
            self._lock = None

    def leftovers(self) -> list[str]:
        """What still exists of everything this lab ever created (empty after :meth:`close`)."""
        left = [f"namespace {ns}" for ns in self.namespaces if ns in _namespaces()]
        left += [f"directory {d}" for d in self.history["dirs"] if os.path.exists(d)]
        for proc in self.procs:
            if proc.poll() is None:
                left.append(f"process {proc.pid}")
        if os.path.exists(_state_path(self.tag)):
            left.append(f"file {_state_path(self.tag)}")
        return left

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def signals_raise() -> Iterator[None]:
    """Turn SIGTERM and SIGHUP into KeyboardInterrupt so ``finally`` blocks clean up."""

    def handler(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    # started in the background by a non-interactive shell, SIGINT would be ignored
    old[signal.SIGINT] = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@contextlib.contextmanager
def signals_ignored() -> Iterator[None]:
    """Ignore SIGINT/SIGTERM/SIGHUP while cleaning up, so a second Ctrl-C cannot cut it short."""
    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    old = {s: signal.signal(s, signal.SIG_IGN) for s in sigs}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
