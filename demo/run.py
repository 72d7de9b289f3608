"""``make demo``: the reference scenario, end to end, on one machine (run as root).

server-a runs a web application whose database is PostgreSQL on server-b; client is another
host on the same LAN. All three are network namespaces (see :mod:`demolab`).

Phase 1, no IPsec: pages are fetched from client and from server-a, and a capture on
server-b's cable shows the SQL text and the rows crossing between A and B in clear.

Phase 2: ``pyipsec daemon`` runs on both servers with a transport-mode, PSK, trap-on-first-
packet connection between A and B only. The same pages are fetched again; ``pyipsec
status`` is shown on both servers; the capture between A and B must hold only ESP and IKE
(no SQL text, no row data), while client <-> server-a stays plain HTTP and still works.

The run ends with PASS/FAIL lines and exits 0 only if every check passed. Everything it
created (namespaces, processes by pid, the PostgreSQL cluster, temporary files) is removed
on success, failure, Ctrl-C or SIGTERM; leftovers of a run killed with SIGKILL are removed
by the next run.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import string
import subprocess
import sys
import time
import traceback
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from demodb import Database  # noqa: E402
from demolab import Lab, LabError, Packet, signals_ignored, signals_raise  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
WEB_PORT = 8080
PRINTABLE = set(string.printable.encode()) - set(b"\t\n\r\x0b\x0c")


def pyipsec_argv() -> list[str]:
    """The ``pyipsec`` command of the running interpreter's environment (the venv)."""
    script = os.path.join(os.path.dirname(sys.executable), "pyipsec")
    return [script] if os.access(script, os.X_OK) else [sys.executable, "-m", "pyipsec"]


@dataclass
class Checks:
    """The PASS/FAIL lines of the summary."""

    results: list[tuple[str, bool, str]] = field(default_factory=list)

    def add(self, name: str, ok: bool, detail: str = "") -> bool:
        self.results.append((name, ok, detail))
        say(f"  [{'PASS' if ok else 'FAIL'}] {name}" + (f": {detail}" if detail else ""))
        return ok

    @property
    def passed(self) -> bool:
        return bool(self.results) and all(ok for _, ok, _ in self.results)

    def summary(self) -> str:
        lines = [f"{'PASS' if ok else 'FAIL'}  {name}" for name, ok, _ in self.results]
        total = sum(ok for _, ok, _ in self.results)
        lines.append(f"{total}/{len(self.results)} checks passed")
        return "\n".join(lines)


def say(text: str = "") -> None:
    print(text, flush=True)


def snippet(data: bytes, needle: bytes, width: int = 70) -> str:
    """Printable text around ``needle`` in ``data`` (other bytes shown as '.')."""
    at = data.find(needle)
    if at < 0:
        return ""
    chunk = data[at : at + width]
    return "".join(chr(b) if b in PRINTABLE else "." for b in chunk)


@dataclass
class Fetch:
    status: int
    body: str
    error: str = ""


class Scenario:
    """Set-up, the two phases and the cleanup; every step prints what it does."""

    def __init__(self, tag: str = "", *, keep_logs: str | None = None) -> None:
        self.lab = Lab(tag=tag)
        self.marker = f"PYI-MARKER-{secrets.token_hex(4).upper()}"
        self.keep_logs = keep_logs
        self.db: Database | None = None
        self.webapp: subprocess.Popen[bytes] | None = None
        self.daemons: dict[str, subprocess.Popen[bytes]] = {}
        self.sockets: dict[str, str] = {}
        self.status_json: dict[str, str] = {}

    @property
    def a(self) -> str:
        return self.lab.hosts["server-a"].addr

    @property
    def b(self) -> str:
        return self.lab.hosts["server-b"].addr

    @property
    def c(self) -> str:
        return self.lab.hosts["client"].addr

    # ------------------------------------------------------------------ set-up

    def setup(self) -> None:
        say("== Set-up ==")
        stale = self.lab.build()
        if stale:
            say(f"  removed leftovers of an earlier run: {', '.join(stale)}")
        for host in self.lab.hosts.values():
            say(f"  {host.label:<9} namespace {host.ns:<14} {host.addr}/24")
        say(f"  switch    namespace {self.lab.lan_ns:<14} bridge br0")
        self.db = Database(self.lab, self.lab.hosts["server-b"], self.a, self.marker)
        t0 = time.monotonic()
        self.db.create()
        self.db.start()
        self.db.seed()
        say(
            f"  server-b: PostgreSQL ({self.db.bindir.split('/')[4]}) on {self.b}:5432, "
            f"database 'orders' ({time.monotonic() - t0:.1f}s); rows carry {self.marker}"
        )
        self.start_webapp()
        say(f"  server-a: web application on {self.a}:{WEB_PORT} (psycopg {self._psycopg()})")

    @staticmethod
    def _psycopg() -> str:
        import psycopg

        return psycopg.__version__

    def start_webapp(self) -> None:
        assert self.db is not None
        env = {**os.environ, "PGPASSWORD": self.db.password, "PYTHONUNBUFFERED": "1"}
        log = self.lab.path("webapp.log")
        self.webapp = self.lab.spawn(
            self.lab.hosts["server-a"].ns,
            [sys.executable, os.path.join(HERE, "webapp.py"), "--port", str(WEB_PORT),
             "--dsn", self.db.dsn()],
            log=log,
            env=env,
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.webapp.poll() is not None:
                raise LabError(f"the web application exited: {self.lab.tail(log)}")
            if self.fetch("server-a", "/health", timeout=2).status == 200:
                return
            time.sleep(0.2)
        raise LabError(f"the web application did not answer: {self.lab.tail(log)}")

    def fetch(self, host: str, path: str = "/orders", timeout: float = 30) -> Fetch:
        """GET http://server-a:8080/path from ``host`` with curl."""
        url = f"http://{self.a}:{WEB_PORT}{path}"
        res = self.lab.run(
            self.lab.hosts[host].ns,
            ["curl", "-sS", "-m", str(int(timeout)), "-o", "-", "-w", "\n%{http_code}", url],
            check=False,
            timeout=timeout + 10,
        )
        body, _, code = res.stdout.rpartition("\n")
        status = int(code) if code.isdigit() else 0
        return Fetch(status, body, res.stderr.strip())

    def fetch_check(self, checks: Checks, phase: str, host: str, attempts: int = 1) -> None:
        """GET /orders from ``host``; a retry (if allowed) is reported, never hidden."""
        notes = []
        for attempt in range(1, attempts + 1):
            got = self.fetch(host)
            ok = got.status == 200 and self.marker in got.body
            detail = f"HTTP {got.status}, {got.body.count(self.marker)} orders"
            if not got.status:
                detail = got.error or "no answer"
            elif not ok:
                detail += f" ({got.body.strip()[:160]})"
            if ok or attempt == attempts:
                break
            notes.append(f"attempt {attempt}: {detail}")
            time.sleep(1)
        if notes:
            detail += f" (after {'; '.join(notes)})"
        checks.add(f"{phase}: {host} gets /orders from server-a", ok, detail)

    # ------------------------------------------------------------------ evidence

    def look(self, packets: list[Packet], x: str, y: str) -> tuple[list[Packet], dict[str, str]]:
        """Packets between ``x`` and ``y``; SQL text and marker found in them, with snippets."""
        flow = [p for p in packets if p.between(x, y)]
        found: dict[str, str] = {}
        for label, needle in (("SQL", b"SELECT"), ("marker", self.marker.encode())):
            for p in flow:
                if needle in p.data:
                    found[label] = f"{p.describe()}  {snippet(p.data, needle)!r}"
                    break
        return flow, found

    @staticmethod
    def kinds(flow: list[Packet]) -> str:
        """'44 ESP, 4 IKE (UDP 500)': what a flow is made of."""

        def kind(p: Packet) -> str:
            if p.proto == 17 and {p.sport, p.dport} & {500, 4500}:
                return f"IKE (UDP {min({p.sport, p.dport} & {500, 4500})})"
            return p.describe().split(" ")[-1]

        counts = Counter(kind(p) for p in flow)
        return ", ".join(f"{n} {k}" for k, n in counts.most_common()) or "no packets"

    # ------------------------------------------------------------------ phase 1

    def phase1(self, checks: Checks) -> None:
        say()
        say("== Phase 1: no IPsec ==")
        cap_b = self.lab.capture("server-b", "phase1-b")
        cap_c = self.lab.capture("client", "phase1-c")
        self.fetch_check(checks, "phase 1", "client")
        self.fetch_check(checks, "phase 1", "server-a")
        ab, found = self.look(cap_b.stop(), self.a, self.b)
        ca, found_c = self.look(cap_c.stop(), self.c, self.a)
        say(f"  capture on server-b's cable, A <-> B: {self.kinds(ab)}")
        for label, text in found.items():
            say(f"    {label} in clear: {text}")
        checks.add("phase 1: SQL text crosses A <-> B in clear", "SQL" in found)
        checks.add("phase 1: row data (marker) crosses A <-> B in clear", "marker" in found)
        say(f"  capture on client's cable, client <-> A: {self.kinds(ca)}")
        if "marker" in found_c:
            say(f"    page in clear (plain HTTP): {found_c['marker']}")

    # ------------------------------------------------------------------ phase 2

    def daemon_available(self) -> str:
        """'' if ``pyipsec daemon`` is a command in this tree, else why not."""
        res = subprocess.run(
            [*pyipsec_argv(), "daemon", "--help"], capture_output=True, text=True, timeout=60
        )
        if res.returncode != 0:
            err = (res.stderr or res.stdout).strip().splitlines()
            return err[-1] if err else f"exit {res.returncode}"
        return ""

    def write_config(self, label: str, local: str, remote: str, psk: str) -> str:
        """The daemon configuration of one server and its 0600 secrets file."""
        base = self.lab.path(f"ipsec-{label}")
        os.mkdir(base, 0o700)
        secrets_path = os.path.join(base, "secrets.yaml")
        fd = os.open(secrets_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(f'psk:\n  web-db: "{psk}"\n')
        self.sockets[label] = os.path.join(base, "run", "control.sock")
        config = f"""\
# pyipsec daemon configuration for {label} (written by the demo)
secrets: {secrets_path}
control_socket: {self.sockets[label]}
log_level: info
connections:
  web-db:
    local_addrs: [{local}]
    remote_addrs: [{remote}]
    proposals: [aes128gcm16-prfsha256-x25519]
    local: {{auth: psk, id: {local}}}
    remote: {{auth: psk, id: {remote}}}
    children:
      db:
        local_ts: [dynamic]
        remote_ts: [dynamic]
        mode: transport
        esp_proposals: [aes128gcm16-esn]
        start_action: trap
"""
        path = os.path.join(base, "pyipsec.yaml")
        with open(path, "w") as handle:
            handle.write(config)
        return path

    def start_daemon(self, label: str, config: str) -> None:
        log = self.lab.path(f"daemon-{label}.log")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.daemons[label] = self.lab.spawn(
            self.lab.hosts[label].ns, [*pyipsec_argv(), "daemon", "--config", config], log=log,
            env=env,
        )  # fmt: skip

    def wait_ready(self, label: str, timeout: float = 20) -> str:
        """'' once the daemon answers on its control socket, else why not."""
        from pyipsec.control.client import ControlClient
        from pyipsec.errors import PyipsecError

        proc = self.daemons[label]
        deadline = time.monotonic() + timeout
        why = "no control socket"
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return f"daemon exited ({proc.returncode})"
            if os.path.exists(self.sockets[label]):
                try:
                    ControlClient(self.sockets[label], timeout=2).call("version")
                    return ""
                except (OSError, PyipsecError) as exc:
                    why = str(exc)
            time.sleep(0.2)
        return f"not ready after {timeout:.0f}s: {why}"

    def pyipsec(self, label: str, *args: str) -> subprocess.CompletedProcess[str]:
        """Run ``pyipsec ARGS --socket S`` inside ``label``'s namespace."""
        return self.lab.run(
            self.lab.hosts[label].ns,
            [*pyipsec_argv(), *args, "--socket", self.sockets[label]],
            check=False,
            timeout=30,
        )

    def phase2(self, checks: Checks) -> None:
        say()
        say("== Phase 2: pyipsec between server-a and server-b ==")
        why = self.daemon_available()
        if why:
            checks.add(
                "phase 2: `pyipsec daemon` is available",
                False,
                f"not in this tree yet ({why}); phase 2 cannot run",
            )
            return
        psk = secrets.token_hex(24)
        for label, local, remote in (("server-a", self.a, self.b), ("server-b", self.b, self.a)):
            self.start_daemon(label, self.write_config(label, local, remote, psk))
        for label in ("server-a", "server-b"):
            why = self.wait_ready(label)
            if not checks.add(f"phase 2: daemon on {label} ready", not why, why):
                self.show_logs()
                return
        say(f"  configuration of server-a ({self.lab.path('ipsec-server-a/pyipsec.yaml')}):")
        with open(self.lab.path("ipsec-server-a/pyipsec.yaml")) as handle:
            for line in handle.read().splitlines()[1:]:
                say(f"    {line}")
        say("  the PSK is in a 0600 secrets file; server-b's configuration mirrors this one")
        cap_b = self.lab.capture("server-b", "phase2-b")
        cap_c = self.lab.capture("client", "phase2-c")
        # the first packet to B is held while IKE runs (trap); one retry is allowed and shown
        self.fetch_check(checks, "phase 2", "server-a", attempts=2)
        self.fetch_check(checks, "phase 2", "client")
        ab, found = self.look(cap_b.stop(), self.a, self.b)
        ca, found_c = self.look(cap_c.stop(), self.c, self.a)

        for label in ("server-a", "server-b"):
            say()
            say(f"  $ pyipsec status   (on {label})")
            res = self.pyipsec(label, "status")
            for line in (res.stdout + res.stderr).rstrip().splitlines():
                say(f"    {line}".rstrip())
        say()
        for label in ("server-a", "server-b"):
            self.check_status(checks, label)

        say(f"  capture on server-b's cable, A <-> B: {self.kinds(ab)}")
        allowed = [
            p for p in ab if p.proto == 50 or (p.proto == 17 and {p.sport, p.dport} & {500, 4500})
        ]
        others = [p for p in ab if p not in allowed]
        esp = [p for p in ab if p.proto == 50 or (p.proto == 17 and 4500 in (p.sport, p.dport))]
        checks.add(
            "phase 2: A <-> B carries only ESP and IKE",
            bool(esp) and not others,
            f"{len(esp)} ESP packets"
            + (
                f"; not protected: {others[0].describe()} and {len(others) - 1} more"
                if others
                else ""
            ),
        )
        checks.add("phase 2: no SQL text between A and B", "SQL" not in found, found.get("SQL", ""))
        checks.add(
            "phase 2: no row data (marker) between A and B",
            "marker" not in found,
            found.get("marker", ""),
        )
        say(f"  capture on client's cable, client <-> A: {self.kinds(ca)}")
        checks.add(
            "phase 2: client <-> server-a is left alone (plain HTTP)",
            "marker" in found_c and not any(p.proto in (50, 51) for p in ca),
            found_c.get("marker", "no plain HTTP seen"),
        )
        for label in ("server-a", "server-b"):
            code = self.lab.stop(self.daemons.pop(label), signal.SIGTERM, wait=15)
            checks.add(
                f"phase 2: daemon on {label} stops cleanly on SIGTERM", code == 0, f"exit {code}"
            )
        self.check_no_secret(checks, psk)

    def check_no_secret(self, checks: Checks, psk: str) -> None:
        """The PSK is in no daemon log and in no ``pyipsec status --json`` output."""
        where = []
        for label in ("server-a", "server-b"):
            with open(self.lab.path(f"daemon-{label}.log"), errors="replace") as handle:
                if psk in handle.read():
                    where.append(f"daemon log of {label}")
            if psk in self.status_json.get(label, ""):
                where.append(f"status of {label}")
        checks.add(
            "phase 2: the PSK appears in no log or status output", not where, ", ".join(where)
        )

    def check_status(self, checks: Checks, label: str) -> None:
        """An established IKE SA and an installed transport Child SA that carried traffic."""
        res = self.pyipsec(label, "status", "--json")
        self.status_json[label] = res.stdout
        try:
            status = json.loads(res.stdout)
        except ValueError:
            checks.add(f"phase 2: SAs on {label}", False, (res.stderr or res.stdout).strip()[:200])
            return
        peer = self.b if label == "server-a" else self.a
        ike = [
            s
            for s in status.get("ike_sas", [])
            if s.get("state") == "ESTABLISHED" and s.get("remote_addr") == peer
        ]
        child = [
            s
            for s in status.get("child_sas", [])
            if s.get("state") == "INSTALLED" and s.get("mode") == "transport"
        ]
        traffic = sum(s.get("packets_in", 0) + s.get("packets_out", 0) for s in child)
        checks.add(
            f"phase 2: {label} has IKE SA + transport Child SA with traffic",
            bool(ike) and bool(child) and traffic > 0,
            f"{len(ike)} IKE SA, {len(child)} Child SA, {traffic} packets",
        )

    def show_logs(self) -> None:
        for label in self.daemons:
            say(f"  --- daemon log, {label} (last lines) ---")
            for line in self.lab.tail(self.lab.path(f"daemon-{label}.log")).splitlines():
                say(f"    {line}")

    # ------------------------------------------------------------------ cleanup

    def close(self) -> None:
        if self.keep_logs and self.lab.workdir:
            os.makedirs(self.keep_logs, exist_ok=True)
            for name in os.listdir(self.lab.workdir):
                if name.endswith((".log", ".pcap")):
                    shutil.copy(self.lab.path(name), self.keep_logs)
        for label, proc in list(self.daemons.items()):
            self.lab.stop(proc, signal.SIGTERM, wait=10)
            del self.daemons[label]
        if self.webapp is not None:
            self.lab.stop(self.webapp, signal.SIGTERM, wait=5)
            self.webapp = None
        if self.db is not None:
            self.db.stop()
        self.lab.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--tag", default="", help="suffix for namespace names (parallel runs)")
    parser.add_argument(
        "--phase1-only", action="store_true", help="set-up, plain-text phase and cleanup only"
    )
    parser.add_argument("--keep-logs", metavar="DIR", help="copy logs and captures to DIR")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        say("demo: needs root (it creates network namespaces); run it as root: sudo make demo")
        return 2
    for tool in ("ip", "tcpdump", "curl", "runuser", "setpriv"):
        if shutil.which(tool) is None:
            say(f"demo: the command {tool!r} is missing (run scripts/bootstrap.sh as root)")
            return 2
    try:
        import psycopg  # noqa: F401 - the web application's driver
    except ImportError:
        say("demo: the PostgreSQL driver psycopg is missing (run: make bootstrap)")
        return 2
    checks = Checks()
    scenario = Scenario(args.tag, keep_logs=args.keep_logs)
    started = time.monotonic()
    code = 1
    with signals_raise():
        try:
            scenario.setup()
            scenario.phase1(checks)
            if not args.phase1_only:
                scenario.phase2(checks)
            code = 0 if checks.passed else 1
        except KeyboardInterrupt:
            say("\ninterrupted: cleaning up")
            checks.add("demo ran to the end", False, "interrupted")
            code = 130
        except LabError as exc:
            checks.add("demo set-up", False, str(exc))
            code = 1
        except Exception as exc:  # a bug in the demo: show it, still clean up
            traceback.print_exc()
            checks.add("demo ran to the end", False, f"{type(exc).__name__}: {exc}")
            code = 1
        finally:
            with signals_ignored():
                scenario.close()
    left = scenario.lab.leftovers()
    checks.add("cleanup: namespaces, processes and files removed", not left, ", ".join(left))
    if left and code == 0:
        code = 1
    say()
    say("== Summary ==")
    say(scenario_summary(checks, time.monotonic() - started))
    return code


def scenario_summary(checks: Checks, seconds: float) -> str:
    verdict = "demo PASSED" if checks.passed else "demo FAILED"
    return f"{checks.summary()}\n{verdict} in {seconds:.0f}s"


if __name__ == "__main__":
    sys.exit(main())
