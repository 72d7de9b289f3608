"""A harness that runs real strongSwan charons inside network namespaces.

strongSwan is the peer nobody here wrote: the interop tests (issue 6) and the tunnel
benchmark (bench/tunnel_bench.py) use it as the reference. This module knows how to make
several charons coexist on one machine (facts in DESIGN.md, "Real components"):

* charon's pid file is fixed at /var/run/charon.pid, so each charon runs in its own mount
  namespace with a private directory bind-mounted over /run
  (``ip netns exec NS unshare --mount --propagation private sh -c 'mount --bind DIR /run
  && exec charon'``); since ``unshare`` and ``sh`` exec, the pid we hold is charon's own.
* plugins are listed explicitly (``load_modular = no``), kernel-libipsec before
  kernel-netlink, because the kernels here have no XFRM ESP: strongSwan's user-space data
  plane (a TUN device, tunnel mode and ESP-in-UDP only) carries the traffic.
* ``socket-default.fwmark = 0x42`` and ``kernel-netlink.fwmark = !0x42``, so charon's own
  IKE/ESP packets are never routed into its TUN; ``allow_peer_ts = yes`` for host-to-host.
* every charon has its own vici socket in its directory; ``swanctl --uri`` loads config,
  and a small vici client of our own (tests/vici_client.py) lists SAs as dictionaries.
* :class:`NetnsPair` (IPv4, optionally IPv6) holds a lock named after its namespaces, so
  two test runs at once wait for each other instead of deleting each other's namespaces.

Public API::

    with NetnsPair("pyi-s1", "pyi-s2", ...) as net:          # two namespaces + a veth
        conn = Connection(name="t", local_addrs=[...], remote_addrs=[...], ...)
        with Charon("pyi-s1", [conn], psks=[...]) as charon:  # config, start, load
            charon.initiate("t-child"); charon.wait_established("t-child")
            charon.list_sas(); charon.log_text(); charon.terminate(ike="t")

:class:`Charon` needs only a namespace name, so it also runs in the hosts of
tests/netns.py's ``Topology`` (whose ``start_transfer`` does hash-checked TCP transfers).
Configuration objects live in tests/swanctl_conf.py, the vici client in
tests/vici_client.py; tests/pki.py makes CAs and certificates.

Everything is cleaned up (processes by pid, namespaces, temp dirs) on exit, even on
failure; :func:`cleanup_all` is also registered with atexit.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

CHARON = "/usr/lib/ipsec/charon"
SWANCTL = "swanctl"


#: Credential directories swanctl --load-all reads (made empty, so it does not complain).
SWANCTL_SUBDIRS = (
    "x509", "x509ca", "x509ocsp", "x509aa", "x509ac", "x509crl", "pubkey", "private",
    "rsa", "ecdsa", "bliss", "pkcs8", "pkcs12",
)  # fmt: skip

sys.path.insert(0, str(Path(__file__).resolve().parent))
from swanctl_conf import (  # noqa: E402
    FAST_RETRANSMIT,
    PLUGINS,
    SOCKET_FWMARK,
    Child,
    Connection,
    Psk,
    Retransmit,
    render_strongswan_conf,
    render_swanctl_conf,
)
from vici_client import ViciClient  # noqa: E402

__all__ = [
    "CHARON", "FAST_RETRANSMIT", "PLUGINS", "SOCKET_FWMARK", "Charon", "Child", "Connection",
    "NetnsPair", "Psk", "Retransmit", "cleanup_all", "render_strongswan_conf",
    "render_swanctl_conf", "run", "start_capture", "stop_process",
]  # fmt: skip

_CLEANUPS: list = []


def _register_cleanup(obj) -> None:
    _CLEANUPS.append(obj)


def cleanup_all() -> None:
    """Stop every charon and remove every namespace this module created (atexit)."""
    while _CLEANUPS:
        obj = _CLEANUPS.pop()
        try:
            obj.close()
        except Exception:  # noqa: BLE001 - best effort at exit
            pass


atexit.register(cleanup_all)


# --------------------------------------------------------------------------- shell helpers


def run(
    cmd: Sequence[str], *, ns: str | None = None, check: bool = True, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` (inside namespace ``ns`` if given) and return the completed process."""
    full = (["ip", "netns", "exec", ns] if ns else []) + list(cmd)
    proc = subprocess.run(full, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(full)} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout}"
        )
    return proc


def stop_process(proc: subprocess.Popen, timeout: float = 5.0) -> None:
    """SIGTERM the process by pid, then SIGKILL if it does not exit within ``timeout``."""
    if proc.poll() is not None:
        return
    try:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=timeout)
    except ProcessLookupError:
        pass


def start_capture(ns: str, dev: str, path: Path | str, *, snaplen: int = 0) -> subprocess.Popen:
    """Start tcpdump on ``dev`` in ``ns`` writing ``path``; return once it listens.
    ``snaplen`` > 0 keeps only that many bytes of each packet (long transfers).

    ``--immediate-mode`` matters: without it packets still in the capture ring buffer
    are lost when the capture is stopped right after the traffic. Stop it with
    :func:`stop_process`.
    """
    proc = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            ns,
            "tcpdump",
            "-Z",
            "root",
            "-i",
            dev,
            "-nn",
            "-U",
            "--immediate-mode",
            *(["-s", str(snaplen)] if snaplen > 0 else []),
            "-w",
            str(path),
        ],  # fmt: skip
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert proc.stderr is not None
    line = proc.stderr.readline()  # "listening on ..." once the capture runs
    if b"listening" not in line:
        stop_process(proc)
        raise RuntimeError(f"tcpdump in {ns} did not start: {line!r}")
    return proc


class NetnsPair:
    """Two namespaces joined by a veth pair, with IPv4 addresses and optional inner hosts.

    ``inner_a``/``inner_b`` (e.g. "10.96.1.1") are put on the loopback interface of each
    side (the kernel here has no dummy module) and routed to the other side through the
    veth, so a tunnel between them has something to carry; without one they talk in
    plaintext. ``addr6_*``/``inner6_*`` add IPv6 the same way (/64 on the veth, ``nodad``).
    """

    def __init__(
        self,
        ns_a: str,
        ns_b: str,
        *,
        veth_a: str,
        veth_b: str,
        addr_a: str,
        addr_b: str,
        prefix: int = 24,
        inner_a: str | None = None,
        inner_b: str | None = None,
        addr6_a: str | None = None,
        addr6_b: str | None = None,
        inner6_a: str | None = None,
        inner6_b: str | None = None,
    ) -> None:
        for name in (ns_a, ns_b, veth_a, veth_b):
            if not name.startswith("pyi-"):
                raise ValueError(f"namespace/interface names must start with pyi-: {name}")
        self.ns_a, self.ns_b = ns_a, ns_b
        self.veth_a, self.veth_b = veth_a, veth_b
        self.addr_a, self.addr_b, self.prefix = addr_a, addr_b, prefix
        self.inner_a, self.inner_b = inner_a, inner_b
        self.addr6_a, self.addr6_b = addr6_a, addr6_b
        self.inner6_a, self.inner6_b = inner6_a, inner6_b
        self._up = False
        self._lock_fd = -1

    def __enter__(self) -> NetnsPair:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _lock(self, timeout: float = 600.0) -> None:
        """Serialise users of these namespace names across processes (two test runs at
        once would tear down each other's namespaces): flock a file named after them."""
        import fcntl

        path = f"/run/pyi-netns-{self.ns_a}-{self.ns_b}.lock"
        self._lock_fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(self._lock_fd)
                    self._lock_fd = -1
                    raise TimeoutError(f"{path} still held after {timeout:.0f} s") from None
                time.sleep(0.5)

    def open(self) -> None:
        if self._lock_fd < 0:
            self._lock()
        self.close(unlock=False)  # leftovers of an earlier crashed run
        _register_cleanup(self)
        self._up = True
        run(["ip", "netns", "add", self.ns_a])
        run(["ip", "netns", "add", self.ns_b])
        run(["ip", "link", "add", self.veth_a, "netns", self.ns_a, "type", "veth",
             "peer", "name", self.veth_b, "netns", self.ns_b])  # fmt: skip
        for ns, dev, addr in ((self.ns_a, self.veth_a, self.addr_a),
                              (self.ns_b, self.veth_b, self.addr_b)):  # fmt: skip
            run(["ip", "link", "set", "lo", "up"], ns=ns)
            run(["ip", "addr", "add", f"{addr}/{self.prefix}", "dev", dev], ns=ns)
            run(["ip", "link", "set", dev, "up"], ns=ns)
        if self.addr6_a and self.addr6_b:  # nodad: usable at once
            for ns, dev, addr in ((self.ns_a, self.veth_a, self.addr6_a),
                                  (self.ns_b, self.veth_b, self.addr6_b)):  # fmt: skip
                run(["ip", "-6", "addr", "add", f"{addr}/64", "dev", dev, "nodad"], ns=ns)
        for inner_a, inner_b, gw_a, gw_b, plen in (
            (self.inner_a, self.inner_b, self.addr_b, self.addr_a, 32),
            (self.inner6_a, self.inner6_b, self.addr6_b, self.addr6_a, 128),
        ):
            if not (inner_a and inner_b and gw_a and gw_b):
                continue
            for ns, inner, peer_inner, gw in (
                (self.ns_a, inner_a, inner_b, gw_a),
                (self.ns_b, inner_b, inner_a, gw_b),
            ):
                run(["ip", "addr", "add", f"{inner}/{plen}", "dev", "lo"], ns=ns)
                run(["ip", "route", "add", f"{peer_inner}/{plen}", "via", gw], ns=ns)

    def close(self, *, unlock: bool = True) -> None:
        for ns in (self.ns_a, self.ns_b):
            run(["ip", "netns", "del", ns], check=False)
        if self in _CLEANUPS:
            _CLEANUPS.remove(self)
        self._up = False
        if unlock and self._lock_fd >= 0:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = -1


# --------------------------------------------------------------------------- charon


class Charon:
    """One charon running in namespace ``ns``, configured from this object.

    Use as a context manager (or call :meth:`start` / :meth:`close`). The work directory
    (config, keys, log, vici socket, a private /run) is removed on close unless
    ``keep_dir`` is set; :meth:`log_text` gives the log before that.
    """

    def __init__(
        self,
        ns: str,
        connections: list[Connection],
        psks: list[Psk] | None = None,
        *,
        allow_peer_ts: bool = True,
        retransmit: Retransmit | None = None,
        extra_conf: str = "",
        keep_dir: bool = False,
    ) -> None:
        self.ns = ns
        self.connections = connections
        self.psks = psks or []
        self.allow_peer_ts = allow_peer_ts
        self.retransmit = retransmit or Retransmit()
        self.extra_conf = extra_conf
        self.keep_dir = keep_dir
        self.workdir = Path(tempfile.mkdtemp(prefix=f"{ns}-charon-"))
        self.swanctl_dir = self.workdir / "swanctl"
        for sub in SWANCTL_SUBDIRS:
            (self.swanctl_dir / sub).mkdir(parents=True)
        (self.workdir / "run").mkdir()
        self.proc: subprocess.Popen | None = None
        self._log_cache: str | None = None
        self._background: list[subprocess.Popen] = []
        _register_cleanup(self)  # the work directory goes even if start() is never reached

    # -- files

    @property
    def vici_path(self) -> str:
        return str(self.workdir / "charon.vici")

    @property
    def log_path(self) -> Path:
        return self.workdir / "charon.log"

    def add_cert(self, filename: str, pem: bytes, *, ca: bool = False) -> None:
        """Install a certificate: x509ca/ (trusted CA) or x509/ (own or peer cert).

        Add credentials before :meth:`start` (or call :meth:`load` again after)."""
        (self.swanctl_dir / ("x509ca" if ca else "x509") / filename).write_bytes(pem)

    def add_private_key(self, filename: str, pem: bytes) -> None:
        """Install a private key (PEM, any type) in private/, mode 0600."""
        path = self.swanctl_dir / "private" / filename
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)

    def add_identity(self, filename: str, cert, key, chain: Sequence = ()) -> None:
        """Install an own certificate (a ``cryptography`` x509.Certificate) in x509/, its
        private key in private/ (PKCS#8, 0600) and the intermediate CAs ``chain`` in
        x509ca/ (so charon can send them). tests/pki.py makes all of these."""
        from cryptography.hazmat.primitives import serialization

        pem = serialization.Encoding.PEM
        self.add_cert(filename, cert.public_bytes(pem))
        key_pem = key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        self.add_private_key(filename, key_pem)
        for index, ca in enumerate(chain):
            self.add_cert(f"{Path(filename).stem}-chain{index}.pem", ca.public_bytes(pem), ca=True)

    def write_config(self) -> None:
        """Write strongswan.conf and swanctl.conf (0600: it holds the PSKs)."""
        conf = render_strongswan_conf(
            self.workdir,
            allow_peer_ts=self.allow_peer_ts,
            extra=self.extra_conf,
            retransmit=self.retransmit,
        )
        (self.workdir / "strongswan.conf").write_text(conf)
        path = self.swanctl_dir / "swanctl.conf"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(render_swanctl_conf(self.connections, self.psks))

    # -- process

    def __enter__(self) -> Charon:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["STRONGSWAN_CONF"] = str(self.workdir / "strongswan.conf")
        env["SWANCTL_DIR"] = str(self.swanctl_dir)
        return env

    def start(self, *, load: bool = True, timeout: float = 10.0) -> None:
        """Write the config, start charon in the namespace, wait for vici, load config."""
        self.write_config()
        if os.path.exists(self.vici_path):  # left by a killed charon: wait for the new one
            os.unlink(self.vici_path)
        script = f'mount --bind "{self.workdir}/run" /run && exec "{CHARON}"'
        self.proc = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                self.ns,
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                script,
            ],  # fmt: skip
            env=self._env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=open(self.workdir / "charon.stderr", "wb"),  # noqa: SIM115
        )
        deadline = time.monotonic() + timeout
        while not os.path.exists(self.vici_path):
            if self.proc.poll() is not None:
                raise RuntimeError(f"charon in {self.ns} exited: {self._stderr_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"charon in {self.ns}: no vici socket after {timeout}s")
            time.sleep(0.05)
        if load:
            self.load()

    def _stderr_tail(self) -> str:
        try:
            return (self.workdir / "charon.stderr").read_text()[-2000:]
        except OSError:
            return ""

    def swanctl(self, *args: str, check: bool = True, timeout: float = 30) -> str:
        """Run ``swanctl --uri <this charon> ARGS`` and return its output."""
        cmd = [SWANCTL, *args, "--uri", f"unix://{self.vici_path}"]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=self._env(), timeout=timeout)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stdout}{proc.stderr}")
        return proc.stdout + proc.stderr

    def load(self) -> str:
        """(Re)write the config files and load them all (``swanctl --load-all``)."""
        self.write_config()
        return self.swanctl(
            "--load-all", "--noprompt", "--file", str(self.swanctl_dir / "swanctl.conf")
        )

    def initiate_background(self, child: str, *, timeout: int = 15) -> subprocess.Popen:
        """Start ``swanctl --initiate`` without waiting (the peer must be driven meanwhile,
        e.g. a pyipsec engine in this process); it ends by itself after ``timeout``."""
        cmd = [SWANCTL, "--initiate", "--child", child, "--timeout", str(timeout),
               "--uri", f"unix://{self.vici_path}"]  # fmt: skip
        proc = subprocess.Popen(
            cmd, env=self._env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self._background.append(proc)
        return proc

    def initiate(self, child: str, *, ike: str | None = None, timeout: int = 15) -> str:
        """Initiate Child SA ``child``; raise RuntimeError (with charon's output) on failure."""
        args = ["--initiate", "--child", child, "--timeout", str(timeout)]
        if ike:
            args += ["--ike", ike]
        return self.swanctl(*args, timeout=timeout + 10)

    def terminate(self, *, ike: str | None = None, child: str | None = None) -> str:
        args = ["--terminate"]
        args += ["--ike", ike] if ike else []
        args += ["--child", child] if child else []
        return self.swanctl(*args, "--timeout", "10", check=False)

    def rekey(self, *, ike: str | None = None, child: str | None = None) -> str:
        """Start a rekey of IKE SA ``ike`` or Child SA ``child`` (by config name)."""
        args = ["--rekey"]
        args += ["--ike", ike] if ike else []
        args += ["--child", child] if child else []
        return self.swanctl(*args)

    def list_sas(self, *, block: bool = False) -> dict[str, dict]:
        """IKE SAs by connection name, as vici gives them (``child-sas`` nested).

        By default (``noblock``) an IKE SA that one of charon's threads is working on at
        that moment is left out; ``block=True`` waits for it, which assertions about the
        state after an exchange need."""
        client = ViciClient(self.vici_path)
        try:
            msg = {} if block else {"noblock": "yes"}
            events = client.streamed("list-sas", "list-sa", msg)
        finally:
            client.close()
        result: dict[str, dict] = {}
        for event in events:
            result.update(event)
        return result

    def child_sas(self, name: str | None = None, *, block: bool = False) -> list[dict]:
        """Every Child SA (optionally only those of config ``name``), each a dict."""
        out = []
        for ike in self.list_sas(block=block).values():
            for child in ike.get("child-sas", {}).values():
                if name is None or child.get("name") == name:
                    out.append(child)
        return out

    def wait_established(self, child: str, timeout: float = 20.0) -> dict:
        """Wait until Child SA ``child`` is INSTALLED; return it."""
        deadline = time.monotonic() + timeout
        while True:
            for sa in self.child_sas(child):
                if sa.get("state") == "INSTALLED":
                    return sa
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"charon in {self.ns} is not running:\n{self.log_text()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{child} not established in {self.ns} after {timeout}s")
            time.sleep(0.1)

    def wait_for_log(self, text: str, timeout: float = 20.0) -> str:
        """Wait until charon's log contains ``text``; return the log."""
        deadline = time.monotonic() + timeout
        while True:
            log = self.log_text()
            if text in log:
                return log
            if time.monotonic() > deadline:
                raise TimeoutError(f"{text!r} not in charon's log ({self.ns}) after {timeout}s")
            time.sleep(0.1)

    def save_artifacts(self, directory: Path | str) -> None:
        """Copy charon's log and configuration (not the keys) into ``directory``, e.g. a
        results folder kept when an interop scenario fails."""
        target = Path(directory)
        target.mkdir(parents=True, exist_ok=True)
        (target / f"{self.ns}-charon.log").write_text(self.log_text())
        conf = self.workdir / "strongswan.conf"
        if conf.exists():
            shutil.copy(conf, target / f"{self.ns}-strongswan.conf")

    def log_text(self) -> str:
        """charon's log so far (kept after close)."""
        try:
            self._log_cache = self.log_path.read_text(errors="replace")
        except OSError:
            pass
        return self._log_cache or ""

    def stop(self) -> None:
        """Stop charon by pid (SIGTERM, then SIGKILL), and any swanctl still running."""
        for proc in self._background:
            stop_process(proc)
        self._background.clear()
        if self.proc is not None:
            stop_process(self.proc)

    def kill(self) -> None:
        """SIGKILL charon (a crashed peer: no DELETE is sent; DPD must notice)."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)

    def close(self) -> None:
        """Stop charon, keep its log in memory, remove its work directory."""
        self.stop()
        self.log_text()
        if self in _CLEANUPS:
            _CLEANUPS.remove(self)
        if not self.keep_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)
