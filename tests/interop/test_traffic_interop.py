"""Traffic between the pyipsec daemon and strongSwan's charon 5.9.8 (issue 6).

charon runs in pyi-ai (outer 10.99.1.1, inner 10.99.11.1), ``pyipsec daemon`` with its
Linux data plane in pyi-bi (outer 10.99.1.2, inner 10.99.12.1). The Child SA is tunnel
mode with ESP in UDP 4500 (charon's kernel-libipsec supports nothing else; ``encap``
is forced on both sides) between the inner addresses, which each side has on its
loopback and routes to the other through the veth. For each ESP algorithm and each
initiator: a ping and a 20 MB TCP transfer (SHA-256 checked) between the inner
addresses, the peers' packet counters, and the wire holding only ESP-in-UDP between the
hosts, never the transfer's plaintext marker. Traffic also keeps flowing across Child SA
and IKE SA rekeys initiated by either side.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import strongswan  # noqa: E402
from netns import Host, Topology, ip_of_frame, read_pcap, start_transfer  # noqa: E402
from strongswan import Charon, Child, Connection, Psk  # noqa: E402

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(not os.path.exists(strongswan.CHARON), reason="strongSwan not installed"),
]

A, B = "10.99.1.1", "10.99.1.2"  # outer: charon (pyi-ai), pyipsec (pyi-bi)
INNER_A, INNER_B = "10.99.11.1", "10.99.12.1"
CHARON_ID, PY_ID = "charon@pyi", "py@pyi"
SIDES = ["pyipsec", "charon"]
SIZE = 20 * 1024 * 1024
MARKER = "PYI-PLAINTEXT-MARKER"


@pytest.fixture(scope="module")
def topo():
    with Topology(tag="i") as t:
        for host, inner, peer_inner, gw in (
            (t.a, INNER_A, INNER_B, B),
            (t.b, INNER_B, INNER_A, A),
        ):
            host.run("ip", "addr", "add", f"{inner}/32", "dev", "lo")
            host.run("ip", "route", "add", f"{peer_inner}/32", "via", gw)
        yield t


class Daemon:
    """``pyipsec daemon`` in a namespace, configured for one tunnel to charon."""

    def __init__(self, host: Host, connection: dict[str, Any], secret: bytes) -> None:
        self.host = host
        self.dir = Path(tempfile.mkdtemp(prefix="pyi-interop-daemon-"))
        self.socket = str(self.dir / "control.sock")
        self.log_path = self.dir / "daemon.log"
        secrets = self.dir / "secrets.yaml"
        fd = os.open(secrets, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(f'psk:\n  t: "0x{secret.hex()}"\n')
        doc = {
            "secrets": str(secrets),
            "control_socket": self.socket,
            "log_level": "debug",
            "connections": {"t": connection},
        }
        self.config = self.dir / "pyipsec.yaml"
        self.config.write_text(yaml.safe_dump(doc, sort_keys=False))
        self.proc: subprocess.Popen | None = None
        self.ns = host.ns

    def start(self, timeout: float = 15.0) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.proc = self.host.spawn(
            [sys.executable, "-m", "pyipsec", "daemon", "--config", str(self.config)],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited {self.proc.returncode}:\n{self.log_text()}")
            if os.path.exists(self.socket):
                try:
                    self.call("version")
                    return
                except Exception:  # noqa: BLE001 - not ready yet
                    pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"daemon did not come up:\n{self.log_text()}")
            time.sleep(0.1)

    def call(self, command: str, **args: Any) -> Any:
        from pyipsec.control.client import ControlClient

        return ControlClient(self.socket, timeout=10).call(command, **args)

    def child_sas(self) -> list[dict[str, Any]]:
        return self.call("status")["child_sas"]

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def save_artifacts(self, directory: Path | str) -> None:
        target = Path(directory)
        target.mkdir(parents=True, exist_ok=True)
        (target / f"{self.ns}-pyipsec-daemon.log").write_text(self.log_text())
        shutil.copy(self.config, target / f"{self.ns}-pyipsec.yaml")  # secrets are elsewhere

    def close(self) -> None:
        if self.proc is not None:
            self.host.stop(self.proc)
            self.proc = None
        subprocess.run(
            ["ip", "netns", "exec", self.ns, sys.executable, "-m", "pyipsec", "flush"],
            capture_output=True, timeout=30,
        )  # fmt: skip
        shutil.rmtree(self.dir, ignore_errors=True)


def setup(interop, topo, esp: str, *, child_kw: dict | None = None,
          conn_kw: dict | None = None, py_child: dict | None = None,
          py_conn: dict | None = None, charon_secret: bytes | None = None,
          retransmit: strongswan.Retransmit | None = None) -> tuple[Charon, Daemon]:  # fmt: skip
    secret = os.urandom(32)
    child = Child("t-c", [f"{INNER_A}/32"], [f"{INNER_B}/32"], esp_proposals=[esp],
                  **(child_kw or {}))  # fmt: skip
    conn = Connection("t", [A], [B], CHARON_ID, PY_ID, [child], encap=True, **(conn_kw or {}))
    psks = [Psk((CHARON_ID, PY_ID), charon_secret or secret)]
    charon = interop.charon(Charon(topo.a.ns, [conn], psks, retransmit=retransmit))
    charon.start()
    connection = {
        "local_addrs": [B],
        "remote_addrs": [A],
        "proposals": ["aes128gcm16-prfsha256-x25519"],
        "local": {"auth": "psk", "id": PY_ID},
        "remote": {"auth": "psk", "id": CHARON_ID},
        "encap": True,
        "retransmit_timeout": "1s",
        "retransmit_tries": 3,
        **(py_conn or {}),
        "children": {
            "t-c": {
                "local_ts": [f"{INNER_B}/32"],
                "remote_ts": [f"{INNER_A}/32"],
                "mode": "tunnel",
                "esp_proposals": [esp],
                **(py_child or {}),
            }
        },
    }
    daemon = interop.daemon(Daemon(topo.b, connection, secret))
    daemon.start()
    return charon, daemon


def bring_up(side: str, charon: Charon, daemon: Daemon) -> dict:
    if side == "pyipsec":
        daemon.call("up", name="t-c")
    else:
        charon.initiate("t-c")
    sa = charon.wait_established("t-c")
    deadline = time.monotonic() + 15
    while not daemon.child_sas():
        assert time.monotonic() < deadline, daemon.log_text()[-4000:]
        time.sleep(0.1)
    return sa


def ping(topo, count: int = 3) -> subprocess.CompletedProcess:
    return topo.b.run("ping", "-n", "-c", str(count), "-i", "0.2", "-W", "2", "-I", INNER_B,
                      INNER_A, check=False, timeout=30)  # fmt: skip


ESP = ["aes128gcm16", "aes256gcm16", "chacha20poly1305", "aes128-sha256", "aes256-sha512"]


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("esp", ESP)
def test_traffic(esp: str, side: str, topo, interop) -> None:
    charon, daemon = setup(interop, topo, esp)
    sa = bring_up(side, charon, daemon)
    res = ping(topo)
    assert res.returncode == 0, res.stdout.decode() + daemon.log_text()[-4000:]
    transfer = start_transfer(topo.a, topo.b, INNER_A, SIZE, marker=MARKER, source=INNER_B)
    sent, received = transfer.wait(timeout=120)
    assert sent == received and sent[0] == SIZE
    (after,) = charon.child_sas("t-c", block=True)
    assert after["spi-in"] == sa["spi-in"]
    assert int(after["packets-in"]) >= 3 + SIZE // 65536  # the pings + the data
    assert int(after["bytes-in"]) >= SIZE
    (ours,) = daemon.child_sas()
    assert int(ours["spi_out"], 16) == int(sa["spi-in"], 16), ours
    check_wire(interop)


def check_wire(interop, min_packets: int = SIZE // 65536) -> None:
    """Between the hosts only IKE and ESP in UDP 4500; the marker never appears."""
    pcap = interop.stop_capture()
    if pcap is None:
        pytest.skip("tcpdump not available")
    esp = 0
    for frame in read_pcap(str(pcap)):
        parsed = ip_of_frame(frame)
        if parsed is None:
            continue
        _version, src, dst, proto, dport, _packet = parsed
        if {src, dst} != {A, B}:
            continue
        assert MARKER.encode() not in frame
        assert proto == 17 and dport in (500, 4500), (proto, dport)
        esp += dport == 4500
    assert esp >= min_packets, esp


def vici_rekey(charon: Charon, **what: str) -> None:
    from vici_client import ViciClient

    client = ViciClient(charon.vici_path)
    try:
        reply = client.request("rekey", what)
    finally:
        client.close()
    assert reply.get("success") == "yes", reply


@pytest.mark.parametrize("side", SIDES)
def test_traffic_across_rekeys(side: str, topo, interop) -> None:
    """A 20 MB transfer paced over about 8 s while the Child SA is rekeyed by charon, then
    by pyipsec, and the IKE SA by charon, then by pyipsec: not one byte is lost or
    changed, and the Child SA in use at the end is a new one on both sides."""
    charon, daemon = setup(interop, topo, "aes128gcm16")
    first = bring_up(side, charon, daemon)
    transfer = start_transfer(topo.a, topo.b, INNER_A, SIZE, marker=MARKER, source=INNER_B,
                              rate=SIZE / 8)  # fmt: skip
    (ike_before,) = charon.list_sas(block=True).values()
    steps = [
        lambda: vici_rekey(charon, child="t-c"),
        lambda: daemon.call("rekey", name="t-c"),
        lambda: vici_rekey(charon, ike="t"),
        lambda: daemon.call("rekey", name="t"),
    ]
    for step in steps:
        time.sleep(1.5)
        step()
    sent, received = transfer.wait(timeout=120)
    assert sent == received and sent[0] == SIZE
    (child,) = [sa for sa in charon.child_sas("t-c", block=True) if sa["state"] == "INSTALLED"]
    assert child["spi-in"] != first["spi-in"]
    (ike_after,) = charon.list_sas(block=True).values()
    assert ike_after["initiator-spi"] != ike_before["initiator-spi"]
    assert int(child["uniqueid"]) >= 3  # t-c{1}, rekeyed by charon, then by pyipsec
    assert int(ike_after["uniqueid"]) >= 3  # IKE SA t[1], rekeyed twice
    (ours,) = daemon.child_sas()
    assert int(ours["spi_out"], 16) == int(child["spi-in"], 16), ours
    res = ping(topo, count=2)
    assert res.returncode == 0, res.stdout.decode()
    check_wire(interop)


# --------------------------------------------------------------------------- daemon-level failures

#: problem -> (charon settings, pyipsec settings, notify the daemon reports, charon's log
#: line when pyipsec initiates, when charon initiates)
PROBLEMS = {
    "psk": ("AUTHENTICATION_FAILED", "MAC mismatched", "AUTHENTICATION_FAILED notify"),
    "proposal": ("NO_PROPOSAL_CHOSEN", "received proposals unacceptable",
                 "received NO_PROPOSAL_CHOSEN notify error"),
    "selectors": ("TS_UNACCEPTABLE", "unacceptable", "received TS_UNACCEPTABLE notify"),
}  # fmt: skip


def status_json(daemon: Daemon) -> dict:
    """What an administrator sees: ``pyipsec status --json`` through the control socket."""
    import json

    res = subprocess.run(
        [sys.executable, "-m", "pyipsec", "status", "--json", "--socket", daemon.socket],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("problem", list(PROBLEMS))
def test_daemon_reports_failure(problem: str, side: str, topo, interop) -> None:
    """A negotiation that cannot succeed fails cleanly on both sides, and each says why:
    ``pyipsec status`` lists the failure with its notify, charon's log has the reason."""
    py_child: dict = {}
    py_conn: dict = {}
    conn_kw: dict = {}
    if problem == "proposal":
        py_conn = {"proposals": ["aes256-sha256-modp2048"]}
        conn_kw = {"ike_proposals": ["aes256gcm16-prfsha384-ecp384"]}
    elif problem == "selectors":
        py_child = {"local_ts": ["10.77.0.0/16"], "remote_ts": ["10.78.0.0/16"]}
    charon, daemon = setup(
        interop, topo, "aes128gcm16", py_child=py_child, py_conn=py_conn, conn_kw=conn_kw,
        charon_secret=os.urandom(32) if problem == "psk" else None,
        retransmit=strongswan.FAST_RETRANSMIT,
    )  # fmt: skip
    notify, log_ours, log_theirs = PROBLEMS[problem]
    if side == "pyipsec":
        daemon.call("up", name="t-c")
    else:
        with pytest.raises(RuntimeError):
            charon.initiate("t-c", timeout=6)
    deadline = time.monotonic() + 20
    while True:
        failures = status_json(daemon)["recent_failures"]
        if failures:
            break
        assert time.monotonic() < deadline, daemon.log_text()[-4000:]
        time.sleep(0.2)
    assert failures[0]["notify"] == notify, failures
    assert failures[0]["reason"], failures
    charon.wait_for_log(log_ours if side == "pyipsec" else log_theirs)
    assert daemon.child_sas() == [] and charon.child_sas(block=True) == []


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("killed", ["charon", "pyipsec"])
def test_daemon_dpd(killed: str, side: str, topo, interop) -> None:
    """A crashed peer (SIGKILL: no DELETE) is noticed by the survivor's DPD, which removes
    the SAs."""
    charon, daemon = setup(interop, topo, "aes128gcm16", conn_kw={"dpd_delay": "1s"},
                           py_conn={"dpd_delay": "1s", "retransmit_timeout": "0.5s",
                                    "retransmit_tries": 2},
                           retransmit=strongswan.FAST_RETRANSMIT)  # fmt: skip
    bring_up(side, charon, daemon)
    assert ping(topo, count=2).returncode == 0
    if killed == "charon":
        charon.kill()
        deadline = time.monotonic() + 25
        while status_json(daemon)["ike_sas"]:
            assert time.monotonic() < deadline, daemon.log_text()[-4000:]
            time.sleep(0.3)
        assert daemon.child_sas() == []
    else:
        assert daemon.proc is not None
        topo.b.stop(daemon.proc, signal.SIGKILL)
        daemon.proc = None
        charon.wait_for_log("giving up after", timeout=25)
        deadline = time.monotonic() + 10
        while charon.list_sas(block=True):
            assert time.monotonic() < deadline, charon.log_text()[-3000:]
            time.sleep(0.2)


@pytest.mark.parametrize("side", ["pyipsec"])
def test_traffic_on_demand(side: str, topo, interop) -> None:
    """``start_action: trap`` on the daemon: the first packet between the inner addresses
    makes the data plane acquire, the daemon initiates IKE with charon, and the ping that
    triggered it gets through once the SAs are up. (charon's kernel-libipsec raises no
    acquires: its log says "could not find an outbound IPsec SA ... dropping packet", so
    there is no charon-initiates case.)"""
    charon, daemon = setup(interop, topo, "aes128gcm16", py_child={"start_action": "trap"})
    host, src, dst = topo.b, INNER_B, INNER_A
    assert charon.child_sas("t-c", block=True) == [] and daemon.child_sas() == []
    res = host.run("ping", "-n", "-c", "6", "-i", "0.3", "-W", "2", "-I", src, dst,
                   check=False, timeout=30)  # fmt: skip
    assert res.returncode == 0, res.stdout.decode() + daemon.log_text()[-3000:]
    sa = charon.wait_established("t-c")
    (ours,) = daemon.child_sas()
    assert int(ours["spi_out"], 16) == int(sa["spi-in"], 16)
    assert int(sa["packets-in"]) >= 3
    (ike,) = charon.list_sas(block=True).values()
    assert ike.get("initiator", "no") == ("yes" if side == "charon" else "no")


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("kind", ["p256", "rsa2048"])
def test_daemon_certificates(kind: str, side: str, topo, interop) -> None:
    """The daemon authenticates with a certificate and key from PEM files and checks
    charon's against a CA file (RSA chains go out in IKE fragments); traffic flows."""
    from cryptography.hazmat.primitives import serialization

    from pki import Pki, make_ee

    pki = Pki("rsa2048" if kind.startswith("rsa") else "p256")
    ids = {"charon": "charon.pyi.test", "py": "py.pyi.test"}
    ees = {s: make_ee(pki.intermediate, kind, cn=n, dns=[n]) for s, n in ids.items()}
    pem = serialization.Encoding.PEM
    child = Child("t-c", [f"{INNER_A}/32"], [f"{INNER_B}/32"], esp_proposals=["aes256gcm16"])
    conn = Connection("t", [A], [B], ids["charon"], ids["py"], [child], encap=True,
                      auth="pubkey", local_cert="charon.pem", send_cert="always",
                      fragmentation="yes",
                      ike_proposals=["aes256gcm16-prfsha384-ecp256"])  # fmt: skip
    charon = interop.charon(Charon(topo.a.ns, [conn]))
    charon.add_cert("root.pem", pki.root.cert.public_bytes(pem), ca=True)
    charon.add_identity("charon.pem", ees["charon"].cert, ees["charon"].key,
                        [pki.intermediate.cert])  # fmt: skip
    charon.start()
    files = Path(tempfile.mkdtemp(prefix="pyi-interop-certs-"))
    try:
        cert = files / "py.pem"
        cert.write_bytes(ees["py"].cert.public_bytes(pem) + pki.intermediate.cert.public_bytes(pem))
        key = files / "py.key"
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(ees["py"].key.private_bytes(
                pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))  # fmt: skip
        ca = files / "ca.pem"
        ca.write_bytes(pki.root.cert.public_bytes(pem))
        connection = {
            "local_addrs": [B], "remote_addrs": [A],
            "proposals": ["aes256gcm16-prfsha384-ecp256"],
            "local": {"auth": "pubkey", "id": ids["py"], "cert": str(cert), "key": str(key)},
            "remote": {"auth": "pubkey", "id": ids["charon"], "cacerts": [str(ca)]},
            "encap": True, "retransmit_timeout": "1s", "retransmit_tries": 3,
            "children": {"t-c": {"local_ts": [f"{INNER_B}/32"], "remote_ts": [f"{INNER_A}/32"],
                                 "mode": "tunnel", "esp_proposals": ["aes256gcm16"]}},
        }  # fmt: skip
        daemon = interop.daemon(Daemon(topo.b, connection, os.urandom(16)))
        daemon.start()
        sa = bring_up(side, charon, daemon)
        res = ping(topo)
        assert res.returncode == 0, res.stdout.decode() + daemon.log_text()[-3000:]
        (ike,) = charon.list_sas(block=True).values()
        assert ike["remote-id"] == ids["py"]
        assert int(daemon.child_sas()[0]["spi_out"], 16) == int(sa["spi-in"], 16)
        log = charon.log_text()
        assert f"authentication of '{ids['py']}' with" in log
        if kind.startswith("rsa"):
            assert "splitting IKE message" in log and "reassembled fragmented" in log
    finally:
        shutil.rmtree(files, ignore_errors=True)
