"""Tunnel throughput: pyipsec against strongSwan's user-space data plane (issue 4).

Builds two namespaces pyi-ba / pyi-bb joined by a veth (pyi-bv0 / pyi-bv1) and runs
iperf3 TCP from A to B (``--duration`` seconds, ``--runs`` times, median) through:

1. the plain veth (baseline);
2. strongSwan 5.9.8 kernel-libipsec: IKEv2 PSK, tunnel mode, forced ESP-in-UDP,
   aes128gcm16, one charon per namespace (tests/strongswan.py starts them);
3. pyipsec tunnel mode, ESP-in-UDP, aes128gcm16, manual keys
   (``pyipsec dataplane --static FILE`` in each namespace);
4. pyipsec transport mode, raw ESP, aes128gcm16, manual keys;
5. (``mixed``, only when named) pyipsec's IKEv2 and data plane in A against charon in B;
6. (``daemon``, only when named) ``pyipsec daemon`` on both sides, keyed by IKEv2.

Tunnel variants carry traffic between inner addresses on each side's loopback
(10.97.1.1 <-> 10.97.2.1); the outer addresses are the veth ones (10.97.0.1/.2). Each
variant gets fresh namespaces. A variant counts only if the tunnel device really carried
the bytes (its TX counter reaches 90 % of what iperf3 sent), so a routing mistake cannot
pass plaintext off as a tunnel figure. A variant that cannot run prints why and gives no
figure. The last line is always ``tunnel tcp pyipsec/strongswan ratio: X.XX`` (or n/a).

Everything started here (namespaces, charons, data planes, iperf3) is stopped by pid and
removed on exit, Ctrl-C or failure.

Usage: ``.venv/bin/python bench/tunnel_bench.py [--duration 10] [--runs 3]
[--parallel N] [--variants plain,strongswan,pyipsec-tunnel,pyipsec-transport] [--keep DIR]``
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "tests" / "interop"))  # ikedriver (mixed)

from strongswan import Charon, Child, Connection, NetnsPair, Psk, run, stop_process  # noqa: E402

NS_A, NS_B = "pyi-ba", "pyi-bb"
VETH_A, VETH_B = "pyi-bv0", "pyi-bv1"
OUTER_A, OUTER_B = "10.97.0.1", "10.97.0.2"
INNER_A, INNER_B = "10.97.1.1", "10.97.2.1"
PYIPSEC = str(REPO / ".venv" / "bin" / "pyipsec")

VARIANTS = ("plain", "strongswan", "pyipsec-tunnel", "pyipsec-transport")
LABELS = {
    "plain": "plain veth (no tunnel)",
    "strongswan": "strongSwan libipsec tunnel ESP-in-UDP aes128gcm16",
    "pyipsec-tunnel": "pyipsec tunnel ESP-in-UDP aes128gcm16",
    "pyipsec-transport": "pyipsec transport raw ESP aes128gcm16",
    "mixed": "pyipsec (IKE + data plane) A <-> strongSwan B, tunnel",
    "daemon": "pyipsec daemon <-> pyipsec daemon (IKEv2), tunnel",
}
OPTIONAL = ("mixed", "daemon")  #: run only when named in --variants


LOCK_PATH = "/run/pyi-tunnel-bench.lock"


@contextlib.contextmanager
def bench_lock(wait: float = 900.0) -> Iterator[None]:
    """Hold the lock that keeps two runs (this bench, bench/dataplane_profile.py) from
    using the namespaces pyi-ba / pyi-bb at the same time; wait for it up to ``wait`` s."""
    import fcntl

    fd = os.open(LOCK_PATH, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            print(f"another tunnel bench/profile holds {LOCK_PATH} (pid {holder}): waiting",
                  flush=True)  # fmt: skip
            deadline = time.monotonic() + wait
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        msg = f"gave up waiting for {LOCK_PATH} after {wait:.0f} s"
                        raise SystemExit(msg) from None
                    time.sleep(1.0)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


class Skip(Exception):
    """A variant cannot run here; the message says why."""


@dataclass
class Result:
    name: str
    runs: list[float] = field(default_factory=list)  # Mbit/s
    cpu: list[float] = field(default_factory=list)  # tunnel CPU seconds per GB carried
    skipped: str | None = None
    note: str | None = None  # printed under the table (e.g. what was really negotiated)

    @property
    def median(self) -> float | None:
        return statistics.median(self.runs) if self.runs else None

    @property
    def cpu_median(self) -> float | None:
        return statistics.median(self.cpu) if self.cpu else None


# --------------------------------------------------------------------------- helpers


def tun_tx_bytes(ns: str, dev: str) -> int:
    out = run(["ip", "-s", "-j", "link", "show", dev], ns=ns).stdout
    return int(json.loads(out)[0]["stats64"]["tx"]["bytes"])


def wait_ping(ns: str, src: str, dst: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if run(["ping", "-c1", "-W1", "-I", src, dst], ns=ns, check=False).returncode == 0:
            return
    raise Skip(f"no ping from {src} to {dst} within {timeout:.0f}s")


def iperf3_run(src: str, dst: str, duration: int, parallel: int = 1) -> tuple[float, int]:
    """One iperf3 TCP run from A (bound to src) to B's server at dst: (Mbit/s, bytes)."""
    proc = run(
        ["iperf3", "-c", dst, "-B", src, "-t", str(duration), "-P", str(parallel), "-J"],
        ns=NS_A,
        check=False,
        timeout=duration + 30,
    )
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        raise Skip(f"iperf3 gave no report: {proc.stderr.strip()[:300]}") from exc
    if "error" in report:
        raise Skip(f"iperf3: {report['error']}")
    end = report["end"]
    return end["sum_received"]["bits_per_second"] / 1e6, int(end["sum_sent"]["bytes"])


@contextlib.contextmanager
def iperf3_server(bind: str) -> Iterator[None]:
    proc = subprocess.Popen(
        ["ip", "netns", "exec", NS_B, "iperf3", "-s", "-B", bind],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.3)
        if proc.poll() is not None:
            raise Skip("iperf3 server did not start")
        yield
    finally:
        stop_process(proc)


def tunnel_cpu_seconds() -> float:
    """User + system CPU seconds used so far by every process in both namespaces except
    iperf3: the tunnel's own cost (charons, data plane workers). Kernel work done in
    softirq context on their behalf is not all billed to them: a rough figure."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for ns in (NS_A, NS_B):
        for pid in run(["ip", "netns", "pids", ns], check=False).stdout.split():
            try:
                if Path(f"/proc/{pid}/comm").read_text().strip() == "iperf3":
                    continue
                fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue  # exited meanwhile
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


def measure(
    result: Result, src: str, dst: str, args: argparse.Namespace, tun: tuple[str, str] | None
) -> None:
    """Run iperf3 ``args.runs`` times; check the tunnel device (ns, dev) carried the bytes."""
    with iperf3_server(dst):
        for index in range(args.runs):
            before = tun_tx_bytes(*tun) if tun else 0
            cpu_before = tunnel_cpu_seconds() if tun else 0.0
            mbits, sent = iperf3_run(src, dst, args.duration, args.parallel)
            if tun:
                result.cpu.append((tunnel_cpu_seconds() - cpu_before) / (sent / 1e9))
                carried = tun_tx_bytes(*tun) - before
                if carried < 0.9 * sent:
                    raise Skip(
                        f"{tun[1]} carried {carried} of {sent} bytes: traffic bypassed the tunnel"
                    )
            result.runs.append(mbits)
            cpu = f", tunnel CPU {result.cpu[-1]:.1f} s/GB" if tun else ""
            print(f"  {result.name} run {index + 1}: {mbits:.0f} Mbit/s{cpu}", flush=True)


def netns_pair() -> NetnsPair:
    return NetnsPair(
        NS_A, NS_B, veth_a=VETH_A, veth_b=VETH_B, addr_a=OUTER_A, addr_b=OUTER_B,
        inner_a=INNER_A, inner_b=INNER_B,
    )  # fmt: skip


def kill_leftovers(ns: str) -> None:
    """Stop (by pid) any process still living in a namespace this bench created."""
    out = run(["ip", "netns", "pids", ns], check=False).stdout.split()
    for pid in out:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


# --------------------------------------------------------------------------- variants


def bench_plain(result: Result, args: argparse.Namespace, workdir: Path) -> None:
    with netns_pair():
        measure(result, OUTER_A, OUTER_B, args, None)


def bench_strongswan(result: Result, args: argparse.Namespace, workdir: Path) -> None:
    if not os.path.exists("/usr/lib/ipsec/charon"):
        raise Skip("strongSwan charon not installed")
    psks = [Psk(ids=("a@bench", "b@bench"), secret=os.urandom(32))]

    def conn(local: str, remote: str, lid: str, rid: str, lin: str, rin: str) -> Connection:
        child = Child("bench", [f"{lin}/32"], [f"{rin}/32"], esp_proposals=["aes128gcm16"])
        return Connection("bench", [local], [remote], lid, rid, [child], encap=True)

    keep = args.keep is not None
    with (
        netns_pair(),
        Charon(NS_A, [conn(OUTER_A, OUTER_B, "a@bench", "b@bench", INNER_A, INNER_B)],
               psks, keep_dir=keep) as charon_a,
        Charon(NS_B, [conn(OUTER_B, OUTER_A, "b@bench", "a@bench", INNER_B, INNER_A)],
               psks, keep_dir=keep) as charon_b,
    ):  # fmt: skip
        try:
            charon_a.initiate("bench")
            charon_a.wait_established("bench")
            charon_b.wait_established("bench")
            wait_ping(NS_A, INNER_A, INNER_B)
            measure(result, INNER_A, INNER_B, args, (NS_A, "ipsec0"))
        finally:
            if keep:
                for charon in (charon_a, charon_b):
                    shutil.copy(charon.log_path, Path(args.keep) / f"{charon.ns}-charon.log")


def pyipsec_static_yaml(side: str, mode: str, keys: dict[str, bytes]) -> str:
    """The static SA/SPD file (src/pyipsec/dataplane/static.py) for ``side`` "a" or "b".

    Tunnel mode protects INNER_A <-> INNER_B between the veth addresses, ESP in UDP 4500;
    transport mode protects OUTER_A <-> OUTER_B with raw ESP. One SA per direction.
    """
    me, peer = (OUTER_A, OUTER_B) if side == "a" else (OUTER_B, OUTER_A)
    if mode == "tunnel":
        local, remote = (INNER_A, INNER_B) if side == "a" else (INNER_B, INNER_A)
    else:
        local, remote = me, peer
    encap = "udp" if mode == "tunnel" else "none"
    sas = []
    for spi, src, dst, key in ((0x2001, OUTER_A, OUTER_B, keys["ab"]),
                               (0x2002, OUTER_B, OUTER_A, keys["ba"])):  # fmt: skip
        direction = "out" if src == me else "in"
        sas.append(
            f"  - spi: 0x{spi:x}\n    src: {src}\n    dst: {dst}\n    protocol: esp\n"
            f'    mode: {mode}\n    algorithm: aes128gcm16\n    key: "{key.hex()}"\n'
            f"    encap: {encap}\n    child: bench\n    direction: {direction}\n"
        )
    policy = (
        f"  - name: bench\n    local: {local}\n    remote: {remote}\n"
        f"    action: protect\n    child: bench\n"
    )
    return "sas:\n" + "".join(sas) + "policies:\n" + policy


def pyipsec_available() -> str | None:
    """None if ``pyipsec dataplane --static`` exists, else the reason it cannot run."""
    if not os.path.exists(PYIPSEC):
        return f"{PYIPSEC} not installed"
    proc = subprocess.run([PYIPSEC, "dataplane", "--help"], capture_output=True, text=True)
    if proc.returncode != 0 or "--static" not in proc.stdout:
        return "`pyipsec dataplane --static` does not exist yet (H6 is building it)"
    return None


def wait_dataplanes(procs: dict[str, subprocess.Popen], workdir: Path, mode: str) -> None:
    """Wait until every data plane runs and has made pyipsec0 (ping alone would also
    succeed in plaintext before the data plane has installed its rules)."""
    deadline = time.monotonic() + 20
    for ns, proc in procs.items():
        while run(["ip", "link", "show", "pyipsec0"], ns=ns, check=False).returncode != 0:
            if proc.poll() is not None or time.monotonic() > deadline:
                side = "a" if ns == NS_A else "b"
                log = (workdir / f"pyipsec-{mode}-{side}.log").read_text(errors="replace")
                state = "exited" if proc.poll() is not None else "has no pyipsec0 after 20 s"
                raise Skip(f"pyipsec dataplane in {ns} {state}: {log.strip()[-300:]}")
            time.sleep(0.1)
    time.sleep(0.3)  # measure() also checks pyipsec0 carried the bytes: no plaintext figure


def bench_pyipsec(mode: str) -> Callable[[Result, argparse.Namespace, Path], None]:
    def bench(result: Result, args: argparse.Namespace, workdir: Path) -> None:
        reason = pyipsec_available()
        if reason:
            raise Skip(reason)
        keys = {"ab": os.urandom(20), "ba": os.urandom(20)}  # AES-128 key + 4-byte salt
        procs: dict[str, subprocess.Popen] = {}
        with netns_pair(), contextlib.ExitStack() as stack:
            for side, ns in (("a", NS_A), ("b", NS_B)):
                path = workdir / f"static-{mode}-{side}.yaml"
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "w") as f:
                    f.write(pyipsec_static_yaml(side, mode, keys))
                log = open(workdir / f"pyipsec-{mode}-{side}.log", "wb")  # noqa: SIM115
                stack.callback(log.close)
                proc = subprocess.Popen(
                    [
                        "ip",
                        "netns",
                        "exec",
                        ns,
                        PYIPSEC,
                        "dataplane",
                        "-v",
                        *args.dataplane_args,
                        "--static",
                        str(path),
                    ],  # fmt: skip
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
                stack.callback(kill_leftovers, ns)
                stack.callback(stop_process, proc)
                procs[ns] = proc
            src, dst = (INNER_A, INNER_B) if mode == "tunnel" else (OUTER_A, OUTER_B)
            wait_dataplanes(procs, workdir, mode)
            wait_ping(NS_A, src, dst)
            measure(result, src, dst, args, (NS_A, "pyipsec0"))

    return bench


def bench_mixed(result: Result, args: argparse.Namespace, workdir: Path) -> None:
    """pyipsec in A (its IKEv2 in this process, then its data plane keyed with what IKE
    negotiated) against charon + kernel-libipsec in B: the interop path under load."""
    reason = pyipsec_available()
    if reason:
        raise Skip(reason)
    from ikedriver import IkeDriver, static_sa_yaml, write_secret_file

    from pyipsec.ike.config import AuthConfig, ChildConfig, EndpointConfig, PeerConfig
    from pyipsec.ike.events import ChildSaInstalled

    psk = os.urandom(32)
    child = ChildConfig(
        "bench", local_ts=(f"{INNER_A}/32",), remote_ts=(f"{INNER_B}/32",), mode="tunnel",
        esp_proposals=("aes128gcm16",),
    )  # fmt: skip
    peer = PeerConfig(
        "charon", remote_addrs=(OUTER_B,), local_addr=OUTER_A, local_auth=AuthConfig(psk=psk),
        remote_auth=AuthConfig(psk=psk), local_id="a@bench", remote_id="b@bench",
        children=(child,),
    )  # fmt: skip
    conn = Connection(
        "bench", [OUTER_B], [OUTER_A], "b@bench", "a@bench",
        [Child("bench", [f"{INNER_B}/32"], [f"{INNER_A}/32"])], encap=True,
    )  # fmt: skip
    with (
        netns_pair(),
        Charon(NS_B, [conn], [Psk(ids=("a@bench", "b@bench"), secret=psk)]) as charon,
        IkeDriver(NS_A, OUTER_A, EndpointConfig(peers=(peer,), local_addr=OUTER_A)) as ike,
        contextlib.ExitStack() as stack,
    ):
        ike.call(lambda ep, now: ep.initiate(peer, child, now))
        installed = ike.wait_event(ChildSaInstalled)
        charon.wait_established("bench")
        ike.release_nat_t_port()
        path = workdir / "static-mixed-a.yaml"
        write_secret_file(path, static_sa_yaml(installed, local_ts=INNER_A, remote_ts=INNER_B))
        log = open(workdir / "pyipsec-mixed-a.log", "wb")  # noqa: SIM115
        stack.callback(log.close)
        proc = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                NS_A,
                PYIPSEC,
                "dataplane",
                "-v",
                *args.dataplane_args,
                "--static",
                str(path),
            ],  # fmt: skip
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        stack.callback(kill_leftovers, NS_A)
        stack.callback(stop_process, proc)
        wait_dataplanes({NS_A: proc}, workdir, "mixed")
        wait_ping(NS_A, INNER_A, INNER_B)
        measure(result, INNER_A, INNER_B, args, (NS_A, "pyipsec0"))


def _daemon_config(side: str, workdir: Path, psk: bytes) -> tuple[Path, str]:
    """Config (and its control socket) of ``pyipsec daemon`` for ``side`` of the tunnel."""
    import yaml

    me, peer = (OUTER_A, OUTER_B) if side == "a" else (OUTER_B, OUTER_A)
    local, remote = (INNER_A, INNER_B) if side == "a" else (INNER_B, INNER_A)
    ids = {"a": "a@bench", "b": "b@bench"}
    secrets = workdir / f"daemon-{side}-secrets.yaml"
    fd = os.open(secrets, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f'psk:\n  bench: "0x{psk.hex()}"\n')
    sock = str(workdir / f"daemon-{side}.sock")
    doc = {
        "secrets": str(secrets),
        "control_socket": sock,
        "connections": {
            "bench": {
                "local_addrs": [me],
                "remote_addrs": [peer],
                "proposals": ["aes128gcm16-prfsha256-x25519"],
                "local": {"auth": "psk", "id": ids[side]},
                "remote": {"auth": "psk", "id": ids["b" if side == "a" else "a"]},
                "encap": True,
                "children": {
                    "bench": {
                        "local_ts": [f"{local}/32"],
                        "remote_ts": [f"{remote}/32"],
                        "mode": "tunnel",
                        "esp_proposals": ["aes128gcm16"],
                    }
                },
            }
        },
    }
    path = workdir / f"daemon-{side}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path, sock


def bench_daemon(result: Result, args: argparse.Namespace, workdir: Path) -> None:
    """pyipsec daemon in each namespace: IKEv2 between them, then their data planes."""
    from pyipsec.control.client import ControlClient

    psk = os.urandom(32)
    with netns_pair(), contextlib.ExitStack() as stack:
        socks: dict[str, str] = {}
        for side, ns in (("a", NS_A), ("b", NS_B)):
            config, sock = _daemon_config(side, workdir, psk)
            log = open(workdir / f"daemon-{side}.log", "wb")  # noqa: SIM115
            stack.callback(log.close)
            proc = subprocess.Popen(
                ["ip", "netns", "exec", ns, sys.executable, "-m", "pyipsec", "daemon",
                 "--config", str(config)],
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
            stack.callback(kill_leftovers, ns)
            stack.callback(stop_process, proc)
            deadline = time.monotonic() + 20
            while True:
                if proc.poll() is not None:
                    raise Skip(f"pyipsec daemon in {ns} exited {proc.returncode}")
                try:
                    ControlClient(sock, timeout=5).call("version")
                    break
                except Exception:  # noqa: BLE001 - not up yet
                    if time.monotonic() > deadline:
                        raise Skip(f"pyipsec daemon in {ns}: no control socket") from None
                    time.sleep(0.1)
            socks[side] = sock
        ControlClient(socks["a"], timeout=10).call("up", name="bench")
        deadline = time.monotonic() + 20
        while not all(ControlClient(s, timeout=5).call("status")["child_sas"] for s in
                      socks.values()):  # fmt: skip
            if time.monotonic() > deadline:
                raise Skip("the daemons did not establish the Child SA within 20 s")
            time.sleep(0.1)
        (child,) = ControlClient(socks["a"], timeout=5).call("status")["child_sas"]
        if not child.get("encap"):
            what = f"{child.get('mode')} {child.get('protocol')}"
            result.note = (
                f"daemon: the Child SA was negotiated as {what} without UDP encapsulation"
                " although the config says encap: true"
            )
            print(f"  {result.note}", flush=True)
        wait_ping(NS_A, INNER_A, INNER_B)
        measure(result, INNER_A, INNER_B, args, (NS_A, "pyipsec0"))


BENCHES: dict[str, Callable[[Result, argparse.Namespace, Path], None]] = {
    "plain": bench_plain,
    "strongswan": bench_strongswan,
    "pyipsec-tunnel": bench_pyipsec("tunnel"),
    "pyipsec-transport": bench_pyipsec("transport"),
    "mixed": bench_mixed,
    "daemon": bench_daemon,
}


# --------------------------------------------------------------------------- main


def print_table(results: list[Result], runs: int, flows: str) -> None:
    head = f"{'variant':<52}" + "".join(f"{'run ' + str(i + 1):>9}" for i in range(runs))
    print(head + f"{'median':>9}{'CPU s/GB':>10}   (Mbit/s, iperf3 TCP A->B, {flows})")
    for res in results:
        line = f"{LABELS[res.name]:<52}"
        if res.skipped is not None or res.median is None:
            print(line + f"  skipped: {res.skipped or 'interrupted'}")
            continue
        line += "".join(f"{v:>9.0f}" for v in res.runs) + " " * 9 * (runs - len(res.runs))
        cpu = f"{res.cpu_median:>10.1f}" if res.cpu_median is not None else f"{'-':>10}"
        print(line + f"{res.median:>9.0f}" + cpu)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per iperf3 run")
    parser.add_argument("--runs", type=int, default=3, help="runs per variant (median)")
    parser.add_argument("--parallel", type=int, default=1, help="iperf3 TCP flows (-P)")
    parser.add_argument(
        "--dataplane-args", default="", metavar="ARGS",
        help="extra options for `pyipsec dataplane` (e.g. --dataplane-args=--tso)",
    )  # fmt: skip
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated")
    parser.add_argument("--keep", metavar="DIR", help="keep logs and static files in DIR")
    args = parser.parse_args(argv)
    args.dataplane_args = args.dataplane_args.split()
    if os.geteuid() != 0:
        parser.error("needs root (network namespaces)")
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS + OPTIONAL)}")
    for tool in ("iperf3", "ip"):
        if shutil.which(tool) is None:
            parser.error(f"{tool} not installed")

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        with bench_lock():
            return run_variants(args, names)
    except KeyboardInterrupt:  # while waiting for the lock: nothing was started
        print("interrupted before any variant ran")
        print("tunnel tcp pyipsec/strongswan ratio: n/a")
        return 130


def run_variants(args: argparse.Namespace, names: list[str]) -> int:
    """Run the chosen variants (the caller holds the bench lock), print the table."""
    workdir = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="pyi-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    results: list[Result] = []
    interrupted = False
    try:
        for name in names:
            result = Result(name)
            results.append(result)
            print(f"== {LABELS[name]}", flush=True)
            try:
                BENCHES[name](result, args, workdir)
            except (Skip, RuntimeError, TimeoutError, subprocess.TimeoutExpired) as exc:
                result.runs.clear()
                result.skipped = str(exc).splitlines()[0][:200]
                print(f"  {name} could not run: {exc}", flush=True)
    except KeyboardInterrupt:
        print("interrupted: cleaned up; figures so far follow", flush=True)
        interrupted = True
    finally:
        for ns in (NS_A, NS_B):
            kill_leftovers(ns)
            run(["ip", "netns", "del", ns], check=False)
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    print()
    cc = Path("/proc/sys/net/ipv4/tcp_congestion_control").read_text().strip()
    print_table(results, args.runs, f"{args.parallel} flow(s), {cc}, {args.duration} s")
    for res in results:
        if res.note:
            print(f"note: {res.note}")
    by_name = {r.name: r for r in results}
    ours, theirs = by_name.get("pyipsec-tunnel"), by_name.get("strongswan")
    if ours and theirs and ours.median and theirs.median:
        print(f"tunnel tcp pyipsec/strongswan ratio: {ours.median / theirs.median:.2f}")
    else:
        missing = [
            f"{n}: {(by_name[n].skipped or 'interrupted') if n in by_name else 'not selected'}"
            for n in ("pyipsec-tunnel", "strongswan")
            if n not in by_name or by_name[n].median is None
        ]
        print("ratio not computed (" + "; ".join(missing) + ")")
        print("tunnel tcp pyipsec/strongswan ratio: n/a")
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
