"""Helpers for the daemon's namespace tests: write configurations, run ``pyipsec daemon``
in pyi-a / pyi-b, query it through its control socket, check captures."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import yaml
from cryptography.hazmat.primitives import serialization

from netns import Host, Topology, ip_of_frame

MARKER = "PYI-PLAINTEXT-MARKER"


@dataclass
class DaemonRun:
    """One daemon process in a namespace."""

    host: Host
    directory: str
    config: str
    socket: str
    log: str
    proc: subprocess.Popen | None = None
    logs: list[str] = field(default_factory=list)

    def start(self, timeout: float = 15) -> None:
        log = open(self.log, "ab")
        self.proc = self.host.spawn(
            [sys.executable, "-m", "pyipsec", "daemon", "--config", self.config],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited {self.proc.returncode}:\n{self.read_log()}")
            if os.path.exists(self.socket):
                try:
                    self.call("version")
                    return
                except Exception:
                    pass
            time.sleep(0.1)
        raise RuntimeError(f"daemon did not come up:\n{self.read_log()}")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        code = self.host.stop(self.proc, sig, timeout=15)
        self.proc = None
        return code

    def read_log(self) -> str:
        try:
            with open(self.log, errors="replace") as handle:
                return handle.read()[-6000:]
        except OSError:
            return ""

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        res = subprocess.run(
            [sys.executable, "-m", "pyipsec", *args, "--socket", self.socket],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        if check and res.returncode != 0:
            raise RuntimeError(f"pyipsec {' '.join(args)} failed: {res.stderr}")
        return res

    def call(self, command: str, **args: Any) -> Any:
        from pyipsec.control.client import ControlClient

        return ControlClient(self.socket, timeout=10).call(command, **args)

    def status(self) -> dict[str, Any]:
        return json.loads(self.cli("status", "--json").stdout)

    def wait_child(self, count: int = 1, timeout: float = 20, exclude: set[str] = frozenset()
                   ) -> list[dict[str, Any]]:  # fmt: skip
        deadline = time.monotonic() + timeout
        children: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            children = [c for c in self.call("status")["child_sas"] if c["spi_in"] not in exclude]
            if len(children) >= count:
                return children
            time.sleep(0.1)
        raise AssertionError(f"no Child SA after {timeout}s:\n{self.read_log()}")


def write_pair(
    topo: Topology,
    *,
    family: int = 4,
    mode: str = "transport",
    auth: str = "psk",
    psk_a: str = "a shared secret for A and B",
    psk_b: str = "a shared secret for A and B",
    child_extra: dict[str, Any] | None = None,
    conn_extra: dict[str, Any] | None = None,
    start_a: str = "trap",
    start_b: str = "trap",
) -> tuple[DaemonRun, DaemonRun]:
    """Configurations for daemons on A and B protecting all traffic between them."""
    root = tempfile.mkdtemp(prefix="pyi-daemon-")
    addr = {
        "a": topo.a.addr4 if family == 4 else topo.a.addr6,
        "b": topo.b.addr4 if family == 4 else topo.b.addr6,
    }
    certs: dict[str, tuple[str, str, str]] = {}
    if auth != "psk":
        from pki import Pki

        pki = Pki(now=dt.datetime.now(dt.UTC))
        ca_path = os.path.join(root, "ca.pem")
        with open(ca_path, "wb") as handle:
            handle.write(pki.root.cert.public_bytes(serialization.Encoding.PEM))
            handle.write(pki.intermediate.cert.public_bytes(serialization.Encoding.PEM))
        for side in ("a", "b"):
            ee = pki.issue(auth, ips=[addr[side]])
            cert_path = os.path.join(root, f"{side}.pem")
            key_path = os.path.join(root, f"{side}.key")
            with open(cert_path, "wb") as handle:
                handle.write(ee.cert.public_bytes(serialization.Encoding.PEM))
                handle.write(pki.intermediate.cert.public_bytes(serialization.Encoding.PEM))
            fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(ee.key.private_bytes(
                    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                ))  # fmt: skip
            certs[side] = (cert_path, key_path, ca_path)
    runs = []
    for me, peer, psk, host, start in (
        ("a", "b", psk_a, topo.a, start_a),
        ("b", "a", psk_b, topo.b, start_b),
    ):
        directory = os.path.join(root, me)
        os.makedirs(directory)
        secrets = os.path.join(directory, "secrets.yaml")
        fd = os.open(secrets, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(f'psk:\n  web-db: "{psk}"\n')
        if auth == "psk":
            local: dict[str, Any] = {"auth": "psk", "id": addr[me]}
            remote: dict[str, Any] = {"auth": "psk", "id": addr[peer]}
        else:
            cert, key, ca = certs[me]
            local = {"auth": "pubkey", "id": addr[me], "cert": cert, "key": key}
            remote = {"auth": "pubkey", "id": addr[peer], "cacerts": [ca]}
        config = os.path.join(directory, "pyipsec.yaml")
        sock = os.path.join(directory, "control.sock")
        child = {"mode": mode, "start_action": start, **(child_extra or {})}
        connection = {
            "local_addrs": [addr[me]],
            "remote_addrs": [addr[peer]],
            "local": local,
            "remote": remote,
            "retransmit_timeout": "1s",
            "retransmit_tries": 3,
            **(conn_extra or {}),
            "children": {"db": child},
        }
        document = {
            "secrets": "secrets.yaml",
            "control_socket": sock,
            "log_level": "debug",
            "connections": {"web-db": connection},
        }
        with open(config, "w") as handle:
            yaml.safe_dump(document, handle, sort_keys=False)
        runs.append(DaemonRun(host, directory, config, sock, os.path.join(directory, "log")))
    return runs[0], runs[1]


def wire_summary(frames: list[bytes], a: str, b: str) -> tuple[set[int], bool]:
    """(IP protocols seen between a and b, marker seen anywhere in those packets)."""
    protos: set[int] = set()
    marker = False
    needle = MARKER.encode()
    for frame in frames:
        parsed = ip_of_frame(frame)
        if parsed is None:
            continue
        _version, src, dst, proto, dport, _packet = parsed
        if {src, dst} != {a, b}:
            continue
        protos.add(proto if not (proto == 17 and dport in (500, 4500)) else 17)
        if needle in frame:
            marker = True
    return protos, marker
