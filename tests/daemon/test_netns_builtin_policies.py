"""The three built-in example policies, end to end, the way a Windows IPsec administrator
expects them to behave.

Namespaces (Topology tag "bi"): pyi-abi (10.99.1.1) <-> pyi-bbi (10.99.1.2 / 10.99.2.2) <->
pyi-cbi (10.99.2.3). The host in the middle is the server in both tests, so it reaches the
two others directly; it forwards between them where a test needs the outer hosts to talk.

* "Server (Request Security)" on the server S (pyi-bbi), "Client (Respond Only)" on the
  client C (pyi-abi), no IPsec at all on N (pyi-cbi): C's first SYN goes out in clear, S
  accepts it but answers only through IPsec (S negotiates with C, opportunistically, C
  answers with its default response rule); N gets clear text from S after the unsecured
  fallback; ICMP stays in clear; when C's SAs go, C's dynamic SPD entries go with them.
* "Secure Server (Require Security)" on S1 (pyi-bbi) and S2 (pyi-abi), N (pyi-cbi) without
  IPsec: S1 <-> S2 ESP only (the first SYN waits for the SA), N can ping S1 but its TCP is
  dropped, and S1 never falls back to clear text towards N.

Everything is real: daemons applying the built-in policy from a local file, certificates
from a throwaway CA (tests/pki.py), the TUN data plane, nftables, tcpdump.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import serialization

from netns import Host, Topology, ip_of_frame, start_transfer
from netns_daemons import MARKER, DaemonRun
from pyipsec.policy.presets import example_yaml

pytestmark = [pytest.mark.netns]

TAG = "bi"  # pyi-abi, pyi-bbi, pyi-cbi ("b" would give pyi-bb, which bench/ uses)
CLIENT = "Client (Respond Only)"
SERVER = "Server (Request Security)"
SECURE = "Secure Server (Require Security)"

_CONNECT = r"""
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])).close()
    print("connected")
except OSError as exc:
    print(f"failed {exc}")
"""

_LISTEN = r"""
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(8)
print("ready", flush=True)
while True:
    s.accept()[0].close()
"""


# --------------------------------------------------------------------------- set-up


def _write_certs(root: Path, hosts: dict[str, list[str]]) -> tuple[str, dict[str, tuple[str, str]]]:
    """A CA file (root + intermediate) and, per host, its machine certificate (with the
    intermediate) and its key (0600), with the host's addresses as subjectAltNames."""
    from pki import Pki

    pki = Pki(now=dt.datetime.now(dt.UTC))
    pem = serialization.Encoding.PEM
    ca = root / "ca.pem"
    ca.write_bytes(pki.root.cert.public_bytes(pem) + pki.intermediate.cert.public_bytes(pem))
    out: dict[str, tuple[str, str]] = {}
    for name, ips in hosts.items():
        ee = pki.issue("p256", ips=ips)
        cert, key = root / f"{name}.crt", root / f"{name}.key"
        cert.write_bytes(ee.cert.public_bytes(pem) + pki.intermediate.cert.public_bytes(pem))
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(ee.key.private_bytes(
                pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ))  # fmt: skip
        out[name] = (str(cert), str(key))
    return str(ca), out


def _start_daemon(
    host: Host, root: Path, name: str, policy: str, ca: str, ident: tuple[str, str]
) -> DaemonRun:
    """A daemon on ``host`` applying the built-in ``policy`` from a local file."""
    directory = root / f"d-{name}"
    directory.mkdir()
    policy_file = directory / "policy.yaml"
    policy_file.write_text(example_yaml(policy, ca=ca))
    sock = str(directory / "control.sock")
    config = {
        "control_socket": sock,
        "log_level": "info",
        "policy": {
            "file": str(policy_file),
            "cert": ident[0],
            "key": ident[1],
            "secrets_file": str(directory / "policy-secrets.yaml"),
        },
    }
    path = directory / "pyipsec.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    run = DaemonRun(host, str(directory), str(path), sock, str(directory / "log"))
    run.start(timeout=40)
    applied = run.call("status")["policy"]
    assert applied["name"] == policy and applied["last_error"] is None, (
        f"{applied}\n{run.read_log()}"
    )
    return run


def _logs(*runs: DaemonRun) -> str:
    return "\n".join(f"===== {r.host.ns} =====\n{r.read_log()}" for r in runs)


# --------------------------------------------------------------------------- probes


def _connect(host: Host, addr: str, port: int, timeout: float) -> str:
    res = host.run(sys.executable, "-c", _CONNECT, addr, str(port), str(timeout),
                   timeout=timeout + 30)  # fmt: skip
    return res.stdout.decode().strip()


def _listen(host: Host, addr: str, port: int) -> None:
    """A TCP listener on ``host`` that accepts and closes (killed at cleanup)."""
    proc = host.spawn([sys.executable, "-c", _LISTEN, addr, str(port)])
    assert proc.stdout is not None and b"ready" in proc.stdout.readline()


def _flows(frames: list[bytes], x: str, y: str) -> Counter[tuple[str, str, int]]:
    """Packets between ``x`` and ``y`` counted by (source, destination, IP protocol)."""
    seen: Counter[tuple[str, str, int]] = Counter()
    for frame in frames:
        parsed = ip_of_frame(frame)
        if parsed is not None and {parsed[1], parsed[2]} == {x, y}:
            seen[(parsed[1], parsed[2], parsed[3])] += 1
    return seen


def _marker_between(frames: list[bytes], x: str, y: str) -> bool:
    needle = MARKER.encode()
    for frame in frames:
        parsed = ip_of_frame(frame)
        if parsed is not None and {parsed[1], parsed[2]} == {x, y} and needle in frame:
            return True
    return False


def _nft_rules(host: Host) -> list[dict[str, Any]]:
    """The rules of the daemon's nftables table in ``host`` (its SPD, as the kernel has it)."""
    res = host.run("nft", "-j", "list", "table", "inet", "pyipsec", check=False)
    if res.returncode != 0:
        return []
    items = json.loads(res.stdout)["nftables"]
    return [item["rule"] for item in items if "rule" in item]


def _input_drops(host: Host) -> int:
    """Packets the kernel side of the data plane dropped on input (clear text that an SPD
    entry requires to arrive protected)."""
    total = 0
    for rule in _nft_rules(host):
        if rule.get("chain") != "input" or not str(rule.get("comment", "")).endswith("/in"):
            continue
        for expr in rule["expr"]:
            if "counter" in expr:
                total += expr["counter"]["packets"]
    return total


def _mentions(rules: list[dict[str, Any]], addr: str) -> list[str]:
    """Comments of the rules whose expressions name ``addr``."""
    return [str(r.get("comment")) for r in rules if addr in json.dumps(r["expr"])]


def _wait(predicate: Any, timeout: float, what: str, runs: tuple[DaemonRun, ...]) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} (after {timeout} s)\n{_logs(*runs)}")
        time.sleep(0.2)


@pytest.fixture
def root():
    path = Path(tempfile.mkdtemp(prefix="pyi-builtin-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------- tests


def test_request_security_server_respond_only_client_and_plain_host(root: Path) -> None:
    """Server (Request Security) on S, Client (Respond Only) on C, no IPsec on N."""
    with Topology(tag=TAG) as topo:
        client, server, plain = topo.a, topo.b, topo.c
        s_to_c, s_to_n = topo.b.addr4, topo.b_c4  # S's address on each link
        ca, ids = _write_certs(root, {"s": [s_to_c, s_to_n], "c": [client.addr4]})
        s = _start_daemon(server, root, "s", SERVER, ca, ids["s"])
        c = _start_daemon(client, root, "c", CLIENT, ca, ids["c"])
        runs = (s, c)
        assert plain.ping(s_to_n, count=2), "ping N -> S before anything\n" + _logs(*runs)

        # C -> S: C's first SYN in clear, S answers only through IPsec
        cap = topo.capture(client, "eth0")
        size = 3 * 1024 * 1024
        transfer = start_transfer(server, client, s_to_c, size, port=5001, marker=MARKER,
                                  timeout=20)  # fmt: skip
        try:
            sent, received = transfer.wait(timeout=60)
        except Exception as exc:
            cap.stop_raw()
            raise AssertionError(f"C -> S transfer: {exc}\n{_logs(*runs)}") from None
        frames = cap.stop_raw()
        assert sent == received and sent[0] == size
        flows = _flows(frames, client.addr4, s_to_c)
        assert flows[(s_to_c, client.addr4, 50)] and flows[(client.addr4, s_to_c, 50)], flows
        assert flows[(s_to_c, client.addr4, 6)] == 0, f"S sent clear TCP to C: {flows}"
        assert 1 <= flows[(client.addr4, s_to_c, 6)] <= 4, f"C's clear TCP to S: {flows}"
        assert not _marker_between(frames, client.addr4, s_to_c), "plaintext data on the wire"

        s_status, c_status = s.status(), c.status()
        (s_ike,) = [i for i in s_status["ike_sas"] if i["remote_addr"] == client.addr4]
        assert s_ike["name"].startswith("all-ip-traffic"), s_ike
        assert s_ike["initiator"] is True and s_ike["auth"] == "pubkey", s_ike
        s_children = [ch for ch in s_status["child_sas"]
                      if ch["ike_sa"].startswith(s_ike["name"])]  # fmt: skip
        assert s_children and s_children[0]["mode"] == "transport", s_status
        (c_ike,) = c_status["ike_sas"]
        assert c_ike["name"] == "default-response" and c_ike["remote_addr"] == s_to_c, c_ike
        assert c_ike["initiator"] is False, c_ike
        c_children = [ch for ch in c_status["child_sas"] if ch["name"] == "default-response"]
        assert len(c_children) == 1, c_status
        assert {c_children[0]["spi_in"], c_children[0]["spi_out"]} == {
            s_children[0]["spi_out"], s_children[0]["spi_in"]
        }, (c_children, s_children)  # fmt: skip
        assert c_children[0]["bytes_out"] >= size, c_children
        # the SPD: in nftables, and listed by the daemon's data plane (read-only)
        dynamic = _mentions(_nft_rules(client), s_to_c)
        assert dynamic and all("default-response" in d for d in dynamic), dynamic
        print("C's dynamic SPD rules:", dynamic)
        pyipsec = (sys.executable, "-m", "pyipsec")
        listed = json.loads(client.run(*pyipsec, "policy-entry", "list", "--json").stdout)
        (entry,) = [e for e in listed if e.get("child", "").startswith("default-response/")]
        assert entry["action"] == "protect" and s_to_c in entry["selector"], listed
        assert entry["child"] == f"default-response/default-response@{s_to_c}", entry
        assert entry["kernel_packets"] > 0, entry  # C's packets to S marked for IPsec
        refused = client.run(*pyipsec, "policy-entry", "del", "--name", entry["name"], check=False)
        assert refused.returncode != 0 and b"managed by the pyipsec daemon" in (
            refused.stderr + refused.stdout
        ), refused

        # N -> S: no answer to S's IKE; after the fallback delay, clear text both ways
        assert not _mentions(_nft_rules(server), plain.addr4), "S names N before any traffic"
        cap = topo.capture(server, "eth1")
        started = time.monotonic()
        transfer = start_transfer(server, plain, s_to_n, 256 * 1024, port=5002,
                                  marker=MARKER, timeout=25)  # fmt: skip
        time.sleep(0.5)  # S is negotiating with N (or waiting to fall back) now
        assert plain.ping(s_to_n, count=1, timeout=2), "ping N -> S while S negotiates"
        try:
            sent, received = transfer.wait(timeout=40)
        except Exception as exc:
            cap.stop_raw()
            raise AssertionError(f"N -> S transfer: {exc}\n{_logs(*runs)}") from None
        took = time.monotonic() - started
        frames = cap.stop_raw()
        assert sent == received and sent[0] == 256 * 1024
        flows = _flows(frames, plain.addr4, s_to_n)
        assert flows[(s_to_n, plain.addr4, 6)] and flows[(plain.addr4, s_to_n, 6)], flows
        assert not flows[(s_to_n, plain.addr4, 50)], f"S sent ESP to N: {flows}"
        assert flows[(s_to_n, plain.addr4, 1)], f"no clear echo reply from S: {flows}"
        stats = json.loads(s.cli("stats", "--json").stdout)
        assert stats["unsecured_fallbacks"] >= 1, f"{stats}\n{_logs(s)}"
        fallbacks = s.status()["fallbacks"]
        assert [f["remote"] for f in fallbacks] == [plain.addr4], fallbacks
        assert fallbacks[0]["connection"].startswith("all-ip-traffic"), fallbacks
        bypass = [
            r for r in _nft_rules(server)
            if r["chain"] == "output" and plain.addr4 in json.dumps(r["expr"])
            and {"accept": None} in r["expr"] and not any("mangle" in e for e in r["expr"])
        ]  # fmt: skip
        assert bypass, f"no BYPASS rule for N on S: {_nft_rules(server)}"
        assert plain.ping(s_to_n, count=2), "ping N -> S after the fallback"
        print(f"N -> S completed {took:.1f} s after the first SYN (fallback included)")

        # C's SAs go: so do its dynamic SPD entries; C still talks to N in clear
        server.run("sysctl", "-qw", "net.ipv4.ip_forward=1")  # C <-> N through S
        c.cli("down", "default-response")
        _wait(lambda: not c.call("status")["ike_sas"] and not c.call("status")["child_sas"],
              10, "C's SAs are still listed", runs)  # fmt: skip
        _wait(lambda: not _mentions(_nft_rules(client), s_to_c), 10,
              "C's dynamic SPD entries for S outlived its SAs", runs)  # fmt: skip
        _listen(plain, plain.addr4, 5003)
        cap = topo.capture(client, "eth0")
        assert client.ping(plain.addr4, count=2), "ping C -> N\n" + _logs(*runs)
        assert _connect(client, plain.addr4, 5003, 5) == "connected", _logs(*runs)
        frames = cap.stop_raw()
        flows = _flows(frames, client.addr4, plain.addr4)
        assert flows[(client.addr4, plain.addr4, 6)] and flows[(plain.addr4, client.addr4, 6)]
        assert not flows[(client.addr4, plain.addr4, 50)], flows

        for run in runs:
            assert run.stop() == 0, run.read_log()


def test_secure_servers_require_security(root: Path) -> None:
    """Secure Server (Require Security) on S1 and S2, no IPsec on N."""
    with Topology(tag=TAG) as topo:
        s1_host, s2_host, plain = topo.b, topo.a, topo.c
        s1_to_s2, s1_to_n = topo.b.addr4, topo.b_c4
        ca, ids = _write_certs(root, {"s1": [s1_to_s2, s1_to_n], "s2": [s2_host.addr4]})
        s1 = _start_daemon(s1_host, root, "s1", SECURE, ca, ids["s1"])
        s2 = _start_daemon(s2_host, root, "s2", SECURE, ca, ids["s2"])
        runs = (s1, s2)
        assert plain.ping(s1_to_n, count=2), "ping N -> S1\n" + _logs(*runs)

        # S1 -> S2: ESP only, the first SYN waits for the SA
        cap = topo.capture(s1_host, "eth0")
        size = 2 * 1024 * 1024
        transfer = start_transfer(s2_host, s1_host, s2_host.addr4, size, port=5001,
                                  marker=MARKER, timeout=20)  # fmt: skip
        try:
            sent, received = transfer.wait(timeout=60)
        except Exception as exc:
            cap.stop_raw()
            raise AssertionError(f"S1 -> S2 transfer: {exc}\n{_logs(*runs)}") from None
        frames = cap.stop_raw()
        assert sent == received and sent[0] == size
        flows = _flows(frames, s1_to_s2, s2_host.addr4)
        protos = {proto for (_src, _dst, proto) in flows}
        assert 50 in protos and 6 not in protos, f"between S1 and S2: {flows}"
        assert not _marker_between(frames, s1_to_s2, s2_host.addr4)
        (child,) = s1.wait_child()
        assert child["mode"] == "transport", child

        # N -> S1: clear text from an unprotected host is dropped; ICMP still passes
        _listen(s1_host, s1_to_n, 5002)
        before = _input_drops(s1_host)
        result = _connect(plain, s1_to_n, 5002, 4)
        assert result.startswith("failed") and "timed out" in result, result
        assert _input_drops(s1_host) > before, _nft_rules(s1_host)
        stats = json.loads(s1.cli("stats", "--json").stdout)
        assert stats["unprotected_packets_dropped"] > 0, stats  # counted by the daemon too
        assert plain.ping(s1_to_n, count=2), "ping N -> S1 after the refused TCP"

        # S1 -> N: IKE gets no answer and there is no fallback: no clear text ever
        _listen(plain, plain.addr4, 5003)
        cap = topo.capture(s1_host, "eth1")
        result = _connect(s1_host, plain.addr4, 5003, 6)
        frames = cap.stop_raw()
        assert result.startswith("failed"), result
        flows = _flows(frames, s1_to_n, plain.addr4)
        assert not flows[(s1_to_n, plain.addr4, 6)], f"S1 sent clear TCP to N: {flows}"
        stats = json.loads(s1.cli("stats", "--json").stdout)
        assert stats["unsecured_fallbacks"] == 0 and not s1.status()["fallbacks"], stats
        assert stats["acquires"] >= 2, stats  # S2 and N
        assert stats["held"] >= 1, stats  # S1's SYNs to N wait for an SA that never comes

        for run in runs:
            assert run.stop() == 0, run.read_log()
