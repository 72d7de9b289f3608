"""Central management end to end: a policy server, hosts that pull, apply and protect.

Namespaces (Topology tag "p"): pyi-ap (server A, 10.99.1.1) and pyi-bp (database B,
10.99.1.2) are in group ``webdb``; pyi-cp (10.99.2.3, behind B, which forwards) runs the
policy server and a daemon of a host in no group. Everything is real: ``pyipsec pki``
(keys generated on each host, CSRs signed by the CA), the policy store (SQLite, or
PostgreSQL started by the test), ``pyipsec server`` (mutual TLS, signed envelopes),
``pyipsec daemon`` processes that pull, compile and apply the policy (IKEv2 with machine
certificates, the TUN data plane, nftables), ``pyipsec policy update --force``, tcpdump.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from netns import Host, Topology, start_transfer
from netns_daemons import MARKER, DaemonRun, wire_summary

pytestmark = [pytest.mark.netns]

PORT = 8443

POLICY = """\
name: Web App Encrypt
description: every packet between web server A and its database B, encrypted
polling_interval: 1h
filter_lists:
{lists}rules:
{rules}"""
WEB_DB_LIST = """\
  Web - DB traffic:
    filters:
      - {source: 10.99.1.1, destination: 10.99.1.2, description: A <-> B (mirrored)}
"""
WEB_DB_RULE = """\
  Web - DB:
    filter_list: Web - DB traffic
    filter_action: Require Security (Strict)
    authentication:
      - certificate: {{ca: {ca}}}
"""
DB_PORT_LIST = """\
  Database port:
    filters:
      - {source: 10.99.1.1, destination: 10.99.1.2, protocol: tcp, destination_port: 5432}
"""
BLOCK_RULE = """\
  No direct database access:
    filter_list: Database port
    filter_action: Block
"""

_TAMPERING_SERVER = r"""
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from pyipsec.policy.server import tls_server_context

cert, key, ca, addr, port, body_path = sys.argv[1:]
body = Path(body_path).read_bytes()

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

httpd = HTTPServer((addr, int(port)), Handler)
httpd.socket = tls_server_context(Path(cert), Path(key), Path(ca)).wrap_socket(
    httpd.socket, server_side=True)
print("ready", flush=True)
httpd.serve_forever()
"""

_CONNECT = r"""
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3).close()
    print("connected")
except OSError as exc:
    print(f"refused {exc}")
"""

_LISTEN = r"""
import socket, sys
socks = []
for port in sys.argv[2:]:
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((sys.argv[1], int(port))); s.listen(8); socks.append(s)
print("ready", flush=True)
import select
while True:
    for s in select.select(socks, [], [])[0]:
        s.accept()[0].close()
"""


def policy_text(ca: Path, *, block: bool = False) -> str:
    lists = WEB_DB_LIST + (DB_PORT_LIST if block else "")
    rules = WEB_DB_RULE.format(ca=ca) + (BLOCK_RULE if block else "")
    return POLICY.format(lists=lists, rules=rules)


def pyipsec(host: Host | None, *args: str, env: dict[str, str], check: bool = True):
    cmd = [sys.executable, "-m", "pyipsec", *args]
    if host is None:
        res = subprocess.run(cmd, capture_output=True, timeout=120, env={**os.environ, **env})
    else:
        res = host.run(*cmd, check=False, timeout=120, env=env)
    out = res.stdout.decode(errors="replace") + res.stderr.decode(errors="replace")
    if check and res.returncode != 0:
        raise AssertionError(f"pyipsec {' '.join(args)} failed ({res.returncode}):\n{out}")
    return res.returncode, out


class Scenario:
    """CA, store, policy server on C, and the three hosts' daemons configured to pull."""

    def __init__(self, topo: Topology, root: Path, store_url: str) -> None:
        self.topo = topo
        self.root = root
        self.env = {"PYIPSEC_STORE": store_url, "PYIPSEC_CA_DIR": str(root / "ca")}
        self.url = f"https://{topo.c.addr4}:{PORT}"
        self.server_proc: subprocess.Popen | None = None
        pyipsec(None, "pki", "init", "--name", "pyipsec e2e CA", env=self.env)
        self.ca = root / "ca" / "ca.crt"
        self.crl = root / "ca" / "crl.pem"
        self.idents: dict[str, tuple[Path, Path]] = {}
        for name, host, ip in (("policy-server", topo.c, topo.c.addr4), ("hosta", topo.a,
                               topo.a.addr4), ("hostb", topo.b, topo.b.addr4),
                               ("hostc", topo.c, topo.c.addr4)):  # fmt: skip
            self.idents[name] = self.enroll(name, host, ip)
        self.daemons: dict[str, DaemonRun] = {}

    def enroll(self, name: str, host: Host, ip: str) -> tuple[Path, Path]:
        """On the host: key (0600) + CSR; at the CA: the certificate."""
        directory = self.root / name
        directory.mkdir()
        key, csr, crt = directory / "host.key", directory / "host.csr", directory / "host.crt"
        pyipsec(host, "pki", "enroll", "--name", name, "--ip", ip, "--key-out", str(key),
                "--csr-out", str(csr), env=self.env)  # fmt: skip
        pyipsec(None, "pki", "issue", "--csr", str(csr), "--out", str(crt), env=self.env)
        assert os.stat(key).st_mode & 0o077 == 0
        return crt, key

    def admin(self, *args: str) -> str:
        return pyipsec(None, *args, env=self.env)[1]

    def start_server(self) -> None:
        crt, key = self.idents["policy-server"]
        log = open(self.root / "server.log", "ab")
        self.server_proc = self.topo.c.spawn(
            [sys.executable, "-m", "pyipsec", "server", "--cert", str(crt), "--key", str(key),
             "--ca", str(self.ca), "--crl", str(self.crl), "--listen", self.topo.c.addr4,
             "--port", str(PORT)],
            env=self.env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()
        self._wait_listening("policy server on")

    def _wait_listening(self, marker: str) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            res = self.topo.c.run(sys.executable, "-c", _CONNECT, self.topo.c.addr4, str(PORT),
                                  check=False)  # fmt: skip
            if b"connected" in res.stdout:
                return
            time.sleep(0.2)
        raise AssertionError("policy server did not listen:\n" + self.server_log())

    def server_log(self) -> str:
        return (self.root / "server.log").read_text(errors="replace")[-4000:]

    def stop_server(self) -> None:
        if self.server_proc is not None:
            self.topo.c.stop(self.server_proc)
            self.server_proc = None

    def daemon(self, name: str, host: Host) -> DaemonRun:
        crt, key = self.idents[name]
        directory = self.root / f"d-{name}"
        directory.mkdir()
        sock = str(directory / "control.sock")
        config = {
            "control_socket": sock,
            "log_level": "debug",
            "policy": {
                "server": {
                    "url": self.url,
                    "ca": str(self.ca),
                    "cert": str(crt),
                    "key": str(key),
                    "crl": str(self.crl),
                    "cache": str(directory / "envelope.json"),
                    "poll_interval": "1h",
                    "timeout": "5s",
                },  # fmt: skip
                "secrets_file": str(directory / "policy-secrets.yaml"),
            },
        }
        path = directory / "pyipsec.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        run = DaemonRun(host, str(directory), str(path), sock, str(directory / "log"))
        run.start(timeout=40)
        self.daemons[name] = run
        return run

    def policy_update(self, name: str, *, ok: bool = True) -> str:
        run = self.daemons[name]
        code, out = pyipsec(run.host, "policy", "update", "--force", "--socket", run.socket,
                            env=self.env, check=False)  # fmt: skip
        assert (code == 0) == ok, f"exit {code}:\n{out}\n{run.read_log()}"
        return out


def _connect(host: Host, addr: str, port: int) -> str:
    return host.run(sys.executable, "-c", _CONNECT, addr, str(port), timeout=30).stdout.decode()


def _check_only_esp(topo: Topology, size: int = 2 * 1024 * 1024) -> None:
    a, b = topo.a.addr4, topo.b.addr4
    cap = topo.capture(topo.b, "eth0")
    transfer = start_transfer(topo.b, topo.a, b, size, port=5001, marker=MARKER)
    sent, received = transfer.wait(timeout=120)
    frames = cap.stop_raw()
    assert sent == received and sent[0] == size
    protos, marker = wire_summary(frames, a, b)
    assert marker is False, "plaintext seen between A and B"
    assert 50 in protos and protos <= {50, 17}, f"protocols between A and B: {protos}"


@pytest.fixture
def scenario_root():
    root = Path(tempfile.mkdtemp(prefix="pyi-policy-e2e-"))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _assign(sc: Scenario) -> None:
    text = sc.root / "web-app-encrypt.yaml"
    text.write_text(policy_text(sc.ca))
    sc.admin("policy", "create", "Web App Encrypt", "-f", str(text), "-m", "reference scenario")
    sc.admin("group", "create", "webdb", "-d", "web server and database")
    sc.admin("group", "add-host", "webdb", "hosta", "hostb")
    sc.admin("policy", "assign", "Web App Encrypt", "webdb")


def _pulled_and_protected(sc: Scenario, version: int) -> None:
    topo = sc.topo
    a, b = sc.daemons["hosta"], sc.daemons["hostb"]
    for run in (a, b):
        policy = run.call("status")["policy"]
        assert (policy["name"], policy["version"]) == ("Web App Encrypt", version), policy
        assert policy["last_error"] is None and policy["spd_entries"] >= 1
    assert topo.a.ping(topo.b.addr4, count=5, timeout=3), a.read_log() + b.read_log()
    (child_a,) = a.wait_child()
    (child_b,) = b.wait_child()
    assert child_a["spi_in"] == child_b["spi_out"] and child_a["mode"] == "transport"
    ike = a.call("status")["ike_sas"][0]
    assert ike["auth"] == "pubkey" and ike["remote_addr"] == topo.b.addr4
    _check_only_esp(topo)


def test_policy_server_to_protected_traffic_update_and_tampering(scenario_root) -> None:
    with Topology(tag="p") as topo:
        topo.b.run("sysctl", "-qw", "net.ipv4.ip_forward=1")  # A <-> C through B
        sc = Scenario(topo, scenario_root, f"sqlite:///{scenario_root / 'store.db'}")
        _assign(sc)
        sc.start_server()
        a = sc.daemon("hosta", topo.a)
        b = sc.daemon("hostb", topo.b)
        c = sc.daemon("hostc", topo.c)
        _pulled_and_protected(sc, 1)

        # the host in no group: no policy, says why; its traffic to both stays plain
        pol_c = c.call("status")["policy"]
        assert pol_c["name"] is None and "no policy" in pol_c["last_error"].lower()
        cap = topo.capture(topo.b, "eth1")
        assert topo.c.ping(topo.a.addr4, count=2) and topo.c.ping(topo.b.addr4, count=2)
        time.sleep(1.5)  # tcpdump hands over its ring buffer about once a second
        frames = cap.stop_raw()
        protos, _ = wire_summary(frames, topo.c.addr4, topo.b.addr4)
        assert protos == {1}, protos  # ICMP in the clear, no ESP
        hosts = sc.admin("server", "hosts")
        assert "hosta" in hosts and "Web App Encrypt v1" in hosts and "applied" in hosts

        # a policy change on the server reaches both hosts through policy update --force
        listener = topo.b.spawn([sys.executable, "-c", _LISTEN, topo.b.addr4, "5432", "5433"])
        assert listener.stdout is not None and b"ready" in listener.stdout.readline()
        assert _connect(topo.a, topo.b.addr4, 5432).startswith("connected")
        new = sc.root / "v2.yaml"
        new.write_text(policy_text(sc.ca, block=True))
        sc.admin("policy", "edit", "Web App Encrypt", "-f", str(new), "-m", "block 5432")
        for name in ("hosta", "hostb"):
            out = sc.policy_update(name)
            assert "'Web App Encrypt' version 2 applied" in out, out
            assert "+ spd" in out and "discard" in out.lower(), out
        for run in (a, b):
            assert run.call("status")["policy"]["version"] == 2
        assert _connect(topo.a, topo.b.addr4, 5432).startswith("refused")
        assert _connect(topo.a, topo.b.addr4, 5433).startswith("connected")
        assert topo.a.ping(topo.b.addr4, count=2)
        log = sc.admin("server", "hosts", "--host", "hostb")
        assert log.count("applied") >= 2

        # a tampered envelope (policy text altered in transit) is refused; v2 stays
        envelope = json.loads((sc.root / "d-hosta" / "envelope.json").read_text())
        envelope["text"] = envelope["text"].replace("filter_action: Block", "filter_action: Permit")
        tampered = sc.root / "tampered.json"
        tampered.write_text(json.dumps(envelope))
        sc.stop_server()
        crt, key = sc.idents["policy-server"]
        evil = topo.c.spawn([sys.executable, "-c", _TAMPERING_SERVER, str(crt), str(key),
                             str(sc.ca), topo.c.addr4, str(PORT), str(tampered)])  # fmt: skip
        assert evil.stdout is not None and b"ready" in evil.stdout.readline()
        out = sc.policy_update("hosta", ok=False)
        assert "refused" in out and "keeping current policy 'Web App Encrypt' version 2" in out
        status = a.call("status")["policy"]
        assert status["version"] == 2 and "refused" in status["last_error"]
        assert a.call("statistics")["policy_failures"] == 1
        assert _connect(topo.a, topo.b.addr4, 5432).startswith("refused")
        # SIGHUP meanwhile: the daemon rebuilds on its cached (good) v2 and says why
        os.kill(a.proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + 20
        while "cached" not in (a.call("status")["policy"]["last_error"] or ""):
            assert time.monotonic() < deadline, a.read_log()
            time.sleep(0.2)
        assert a.call("status")["policy"]["version"] == 2 and a.call("statistics")["reloads"]
        _check_only_esp(topo)
        topo.c.stop(evil)
        for run in (a, b, c):
            assert run.stop() == 0, run.read_log()


def _pg_bin() -> Path | None:
    base = Path("/usr/lib/postgresql")
    if not base.is_dir():
        return None
    versions = sorted(base.iterdir(), key=lambda p: int(p.name) if p.name.isdigit() else 0)
    return versions[-1] / "bin" if versions else None


@pytest.mark.slow
def test_postgresql_store_end_to_end(scenario_root) -> None:
    """The same flow with the store in PostgreSQL (a throwaway cluster on a Unix socket,
    reachable from the server's namespace through the file system)."""
    bindir = _pg_bin()
    if bindir is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL (Debian postgresql) is needed in CI")
        pytest.skip("needs the Debian postgresql package")
    pg = scenario_root / "pg"
    pg.mkdir()
    sock = pg / "sock"
    sock.mkdir()
    shutil.chown(pg, "postgres")
    shutil.chown(sock, "postgres")
    os.chmod(scenario_root, 0o755)

    def as_pg(*args: str) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", *args], check=True,
                       capture_output=True, timeout=120)  # fmt: skip

    started = False
    try:
        as_pg(str(bindir / "initdb"), "-D", str(pg / "data"), "-U", "postgres", "--auth=trust")
        opts = f"-k {sock} -c listen_addresses='' -p 5439 -c fsync=off"
        as_pg(str(bindir / "pg_ctl"), "-D", str(pg / "data"), "-o", opts, "-w",
              "-l", str(pg / "log"), "start")  # fmt: skip
        started = True
        as_pg(str(bindir / "createdb"), "-h", str(sock), "-p", "5439", "pyipsec")
        url = f"postgresql+psycopg://postgres@/pyipsec?host={sock}&port=5439"
        with Topology(tag="p") as topo:
            topo.b.run("sysctl", "-qw", "net.ipv4.ip_forward=1")  # A <-> C through B
            sc = Scenario(topo, scenario_root, url)
            _assign(sc)
            sc.start_server()
            sc.daemon("hosta", topo.a)
            sc.daemon("hostb", topo.b)
            _pulled_and_protected(sc, 1)
            hosts = sc.admin("server", "hosts")
            assert "hostb" in hosts and "Web App Encrypt v1" in hosts
    finally:
        if started:
            subprocess.run(
                ["runuser", "-u", "postgres", "--", str(bindir / "pg_ctl"), "-D",
                 str(pg / "data"), "-m", "immediate", "-w", "stop"],
                capture_output=True, timeout=60,
            )  # fmt: skip
