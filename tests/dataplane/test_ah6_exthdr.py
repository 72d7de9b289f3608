"""Transport mode with IPv6 extension headers and fragments, end to end (needs root).

A and B (tests/netns.py) run ``pyipsec dataplane --static`` with one AH transport SA each
way (HMAC-SHA-256; ESP AES-GCM as well) over IPv6. From A, a UDP sender emits datagrams
that make the kernel add extension headers: two larger than the TUN MTU (a fragment
header on every piece the TUN hands over; one also with destination options), one with
a destination options header and one with a hop-by-hop options header (sticky socket
options). B's receiver must get every datagram intact, neither data plane may count an
error, B's firewall must drop nothing, and on the wire between A and B only AH (ESP) may
carry the datagrams (a capture: no frame between them reaches UDP without passing AH).
The same for IPv4 datagrams larger than the TUN MTU (fragments without DF).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import pytest
import yaml

from netns import Topology, ip_of_frame
from pyipsec.control.client import ControlClient
from pyipsec.crypto.esp_algorithms import get_algorithm

pytestmark = pytest.mark.netns

PYIPSEC = os.path.join(os.path.dirname(sys.executable), "pyipsec")
PORT = 40321

_RECEIVER = r"""
import hashlib, socket, sys
n = int(sys.argv[1])
v6 = sys.argv[3] == "6"
s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("::" if v6 else "0.0.0.0", int(sys.argv[2])))
s.settimeout(15)
print("ready", flush=True)
for _ in range(n):
    data = s.recv(65535)
    print(len(data), hashlib.sha256(data).hexdigest(), flush=True)
"""

# (label, datagram size, sticky option to set or None); the options are valid TLVs:
# PadN fills the header to a multiple of 8 bytes (RFC 8200 4.2)
_SENDER = r"""
import socket, sys, time
dst, port = sys.argv[1], int(sys.argv[2])
IPV6_HOPOPTS, IPV6_DSTOPTS = 54, 59
padn6 = bytes([0, 0, 1, 4, 0, 0, 0, 0])  # next header / length set by the kernel
cases = [(3000, None), (300, IPV6_DSTOPTS), (200, IPV6_HOPOPTS), (4000, IPV6_DSTOPTS)]
for i, (size, opt) in enumerate(cases):
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    if opt is not None:
        s.setsockopt(socket.IPPROTO_IPV6, opt, padn6)
    s.sendto(bytes([65 + i]) * size, (dst, port))
    s.close()
    time.sleep(0.2)
"""


def _payloads() -> list[bytes]:
    return [bytes([65 + i]) * n for i, n in enumerate((3000, 300, 200, 4000))]


def _statics(topo: Topology, protocol: str, version: int = 6) -> tuple[dict, dict]:
    alg = "sha256" if protocol == "ah" else "aes128gcm16"
    n = get_algorithm(alg, protocol).key_len
    a, b = (topo.a.addr6, topo.b.addr6) if version == 6 else (topo.a.addr4, topo.b.addr4)
    sas = []
    for spi, src, dst in ((0x2101, a, b), (0x2102, b, a)):
        key = bytes((spi * 7 + i) & 0xFF for i in range(n)).hex()
        sas.append({"spi": spi, "src": src, "dst": dst, "protocol": protocol, "mode": "transport",
                    "algorithm": alg, "key": key, "child": "ab"})  # fmt: skip
    files = []
    for local, remote in ((a, b), (b, a)):
        pol = {"name": "ab", "local": local, "remote": remote, "action": "protect",
               "priority": 1000}  # fmt: skip
        files.append({"sas": sas, "policies": [pol]})
    return files[0], files[1]


@pytest.fixture
def topo():
    t = Topology(tag="-x" + uuid.uuid4().hex[:3])
    try:
        yield t
    finally:
        t.close()


def _start(host, static: dict, tmp: str) -> tuple[subprocess.Popen, str]:
    path = os.path.join(tmp, f"{host.ns}.yaml")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump(static, f)
    control = f"/run/pyipsec/test-{host.ns}.sock"
    proc = host.spawn([PYIPSEC, "dataplane", "--static", path, "--control", control])
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"data plane exited: {proc.stderr.read().decode()}")
        try:
            ControlClient(control, timeout=2).call("status")
            return proc, control
        except Exception:
            time.sleep(0.1)
    raise RuntimeError("data plane did not come up")


def _upper(ip: bytes) -> int | None:
    """The protocol after the IPv6 extension headers (AH ends the walk); None for a
    non-first fragment (its payload's protocol is not visible)."""
    nh, off = ip[6], 40
    while nh in (0, 43, 44, 60) and off + 8 <= len(ip):
        if nh == 44 and int.from_bytes(ip[off + 2 : off + 4], "big") & 0xFFF8:
            return None
        ln = 8 if nh == 44 else (ip[off + 1] + 1) * 8
        nh, off = ip[off], off + ln
    return nh


@pytest.mark.parametrize("protocol", ["ah", "esp"])
def test_transport_v6_with_extension_headers(topo, tmp_path, protocol):
    """AH is the case that failed (fragments refused, headers in front of AH lost on
    receipt); ESP transport mode shares the fragment handling."""
    started = []
    try:
        fa, fb = _statics(topo, protocol)
        started.append((topo.a, *_start(topo.a, fa, str(tmp_path))))
        started.append((topo.b, *_start(topo.b, fb, str(tmp_path))))
        _a, _pa, ctl_a = started[0]
        _b, _pb, ctl_b = started[1]
        cap = topo.capture(topo.b, "eth0", "ip6 and not icmp6")
        rx = topo.b.spawn([sys.executable, "-c", _RECEIVER, "4", str(PORT), "6"])
        assert rx.stdout is not None and b"ready" in rx.stdout.readline()
        topo.a.run(sys.executable, "-c", _SENDER, topo.b.addr6, str(PORT))
        out, err = rx.communicate(timeout=30)
        frames = cap.stop_raw()
        import hashlib

        want = [f"{len(p)} {hashlib.sha256(p).hexdigest()}" for p in _payloads()]
        got = out.decode().split("\n")[:-1]
        stats_b = ControlClient(ctl_b).call("stats")
        stats_a = ControlClient(ctl_a).call("stats")
        out_a = {k: stats_a["outbound"][k] for k in ("pipeline", "send_errors", "fragmented",
                                                    "reassembly")}  # fmt: skip
        detail = (err.decode()[-500:], out_a, stats_b["inbound"]["pipeline"], stats_b["kernel"])
        assert got == want, detail
        assert not dict(stats_b["inbound"]["pipeline"]["errors"]), detail
        assert not dict(stats_a["outbound"]["pipeline"]["errors"]), detail
        assert stats_a["outbound"]["send_errors"] == 0, detail
        # the two large datagrams: reassembled from the TUN's fragments, sent fragmented
        assert out_a["reassembly"]["reassembled"] == 2 and out_a["fragmented"] == 2, detail
        assert stats_b["kernel"]["ab/in"][0] == 0, detail  # nothing dropped as plaintext
        # between A and B the datagrams travelled inside AH/ESP only
        uppers = [_upper(info[5]) for f in frames if (info := ip_of_frame(f)) and info[0] == 6]
        assert uppers.count(51 if protocol == "ah" else 50) >= 4, uppers
        assert 17 not in uppers, "plain UDP on the wire"
    finally:
        for host, proc, control in started:
            host.stop(proc, signal.SIGTERM)
            host.run(PYIPSEC, "flush", "--control", control, check=False)


_SENDER4 = r"""
import socket, sys, time
for i, size in enumerate((3000, 200, 4000)):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.sendto(bytes([65 + i]) * size, (sys.argv[1], int(sys.argv[2])))
    s.close()
    time.sleep(0.2)
"""


@pytest.mark.parametrize("protocol", ["ah", "esp"])
def test_transport_v4_fragmented_datagrams(topo, tmp_path, protocol):
    """IPv4 datagrams larger than the TUN MTU reach the TUN as fragments (no DF): the
    outbound worker reassembles them for the transport SA and sends the protected
    packet fragmented; B's kernel reassembles it before its raw socket."""
    import hashlib

    started = []
    try:
        fa, fb = _statics(topo, protocol, 4)
        started.append((topo.a, *_start(topo.a, fa, str(tmp_path))))
        started.append((topo.b, *_start(topo.b, fb, str(tmp_path))))
        ctl_a, ctl_b = started[0][2], started[1][2]
        rx = topo.b.spawn([sys.executable, "-c", _RECEIVER, "3", str(PORT), "4"])
        assert rx.stdout is not None and b"ready" in rx.stdout.readline()
        topo.a.run(sys.executable, "-c", _SENDER4, topo.b.addr4, str(PORT))
        out, err = rx.communicate(timeout=30)
        sizes = (3000, 200, 4000)
        want = [f"{n} {hashlib.sha256(bytes([65 + i]) * n).hexdigest()}"
                for i, n in enumerate(sizes)]  # fmt: skip
        stats_a = ControlClient(ctl_a).call("stats")["outbound"]
        stats_b = ControlClient(ctl_b).call("stats")
        detail = (err.decode()[-300:], stats_a, stats_b["inbound"]["pipeline"])
        assert out.decode().split("\n")[:-1] == want, detail
        assert not stats_a["pipeline"]["errors"] and stats_a["send_errors"] == 0, detail
        assert stats_a["reassembly"]["reassembled"] == 2 and stats_a["fragmented"] == 2, detail
        assert not stats_b["inbound"]["pipeline"]["errors"], detail
        assert stats_b["kernel"]["ab/in"][0] == 0, detail
    finally:
        for host, proc, control in started:
            host.stop(proc, signal.SIGTERM)
            host.run(PYIPSEC, "flush", "--control", control, check=False)
