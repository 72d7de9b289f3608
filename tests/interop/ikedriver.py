"""Run pyipsec's sans-I/O IkeEndpoint on real UDP sockets inside a network namespace.

The interop tests (issue 6) and bench/tunnel_bench.py (``mixed``) put charon in one
namespace and pyipsec's IKE engine in the other. The engine runs in the test process
itself, on a background thread: its sockets are opened *inside* the namespace by switching
the calling thread's network namespace with setns(2) just for the ``socket()``/``bind()``
calls (a socket belongs to the namespace it was created in, for its whole life), then
switching back. So the test reads events and statistics directly, with no subprocess
protocol in between.

* UDP 500 and 4500 on the local address (IPv4 or IPv6); on 4500 IKE messages carry the
  4-byte non-ESP marker (RFC 3948 2.2); datagrams without it are ESP in UDP (counted,
  dropped: this driver has no data plane), a lone 0xFF is a NAT-T keepalive.
* ``now`` is ``time.time()``; the loop sleeps until the next datagram or the endpoint's
  timer.
* Commands run on the loop thread: ``driver.call(lambda ep, now: ep.initiate(...))``.
* ``drop_in``/``drop_out`` hooks lose chosen datagrams (retransmission tests).
* :meth:`IkeDriver.kill` stops the loop without sending anything: to charon it is
  indistinguishable from a crashed pyipsec (no DELETE, no more answers).
* Every event and datagram is logged (never keys: events' key fields are left out) for the
  results folder (:meth:`IkeDriver.save_artifacts`).
* Handing a negotiated Child SA to pyipsec's data plane without the daemon:
  :meth:`IkeDriver.release_nat_t_port` closes UDP 4500 so that ``pyipsec dataplane
  --static`` can bind it for ESP in UDP (the IKE SA gets no more messages on 4500 after
  that: fine for tests that stop there), and :func:`static_sa_yaml` /
  :func:`write_secret_file` write that data plane's SA file from the
  :class:`~pyipsec.ike.events.ChildSaInstalled` event.

Use::

    with IkeDriver("pyi-bi", "10.98.0.2", EndpointConfig(...)) as drv:
        handle = drv.call(lambda ep, now: ep.initiate(peer, child, now))
        up = drv.wait_event(IkeSaUp)
"""

from __future__ import annotations

import ctypes
import os
import selectors
import socket
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

from pyipsec.ike import EndpointConfig, IkeEndpoint
from pyipsec.ike.events import ChildSaInstalled, IkeEvent
from pyipsec.wire.esp import NON_ESP_MARKER

CLONE_NEWNET = 0x40000000

_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def sockets_in_netns(ns: str, binds: list[tuple[str, int]]) -> list[socket.socket]:
    """UDP sockets bound to ``binds`` created inside network namespace ``ns``.

    Only the calling thread switches namespace, and it switches back before returning
    (even on error)."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/var/run/netns/{ns}", os.O_RDONLY)
    socks: list[socket.socket] = []
    try:
        _setns(target)
        try:
            for addr, port in binds:
                family = socket.AF_INET6 if ":" in addr else socket.AF_INET
                s = socket.socket(family, socket.SOCK_DGRAM)
                socks.append(s)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((addr, port))
                s.setblocking(False)
        finally:
            _setns(own)
    except BaseException:
        for s in socks:
            s.close()
        raise
    finally:
        os.close(own)
        os.close(target)
    return socks


def describe_event(ev: IkeEvent) -> str:
    """One log line for an event: its type and every non-key field."""
    parts = [f"{f.name}={getattr(ev, f.name)!r}" for f in fields(ev) if "key" not in f.name]  # type: ignore[arg-type]
    return f"{type(ev).__name__}(" + ", ".join(parts) + ")"


class IkeDriver:
    """An IkeEndpoint on UDP 500/4500 of ``local_addr`` in namespace ``ns``."""

    def __init__(self, ns: str, local_addr: str, config: EndpointConfig) -> None:
        self.ns = ns
        self.local_addr = local_addr
        self.endpoint = IkeEndpoint(config)
        self.events: list[IkeEvent] = []
        self.log: list[str] = []
        self.esp_dropped = 0
        #: loss injection: called with (IKE message bytes without marker, (addr, port));
        #: returning True drops that datagram (counted in :attr:`dropped`)
        self.drop_in: Callable[[bytes, tuple[str, int]], bool] | None = None
        self.drop_out: Callable[[bytes, tuple[str, int]], bool] | None = None
        self.dropped = 0
        self.error: str | None = None
        self._cond = threading.Condition()
        self._commands: list[tuple[Callable[[IkeEndpoint, float], Any], list]] = []
        self._stop = False
        self._sent_anything = True
        self._thread: threading.Thread | None = None
        self._socks: dict[int, socket.socket] = {}
        self._sel: selectors.BaseSelector | None = None
        self._wake_r, self._wake_w = os.pipe()
        self._t0 = time.time()

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> IkeDriver:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        s500, s4500 = sockets_in_netns(self.ns, [(self.local_addr, 500), (self.local_addr, 4500)])
        self._socks = {500: s500, 4500: s4500}
        self._thread = threading.Thread(target=self._run, name=f"ike-{self.ns}", daemon=True)
        self._thread.start()

    def kill(self) -> None:
        """Stop at once: no DELETE, no further answers (a crashed pyipsec, as charon sees
        it). Sockets are closed, so charon's retransmits find nobody."""
        self._halt()

    def close(self) -> None:
        self._halt()
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass

    def _halt(self) -> None:
        with self._cond:
            self._stop = True
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        for s in self._socks.values():
            s.close()
        self._socks = {}

    def release_nat_t_port(self) -> None:
        """Send what is pending, then close UDP 4500 so that a data plane can bind it.

        From then on the endpoint gets no messages on 4500, and what it would send from
        there is dropped (and logged)."""
        self.call(lambda ep, now: self._close_port(4500, now))

    def _close_port(self, port: int, now: float) -> None:
        self._flush(now)
        sock = self._socks.pop(port, None)
        if sock is not None:
            if self._sel is not None:
                self._sel.unregister(sock)
            sock.close()
            self._note(f"closed :{port}")

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # ------------------------------------------------------------------ commands and events
    def call(self, fn: Callable[[IkeEndpoint, float], Any], timeout: float = 10.0) -> Any:
        """Run ``fn(endpoint, now)`` on the loop thread; return its result (or raise)."""
        box: list = []
        with self._cond:
            if self._stop:
                raise RuntimeError("driver stopped")
            self._commands.append((fn, box))
        self._wake()
        deadline = time.monotonic() + timeout
        with self._cond:
            while not box:
                left = deadline - time.monotonic()
                if left <= 0 or not self.alive:
                    raise TimeoutError(f"command not run (driver error: {self.error})")
                self._cond.wait(left)
        ok, value = box[0]
        if not ok:
            raise value
        return value

    def wait_event(
        self,
        kind: type[IkeEvent] | tuple[type[IkeEvent], ...],
        predicate: Callable[[Any], bool] = lambda ev: True,
        timeout: float = 20.0,
        after: int = 0,
    ) -> Any:
        """First event (from index ``after`` of :attr:`events`) of ``kind`` that fits
        ``predicate``; waits up to ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for ev in self.events[after:]:
                    if isinstance(ev, kind) and predicate(ev):
                        return ev
                left = deadline - time.monotonic()
                if left <= 0:
                    names = kind.__name__ if isinstance(kind, type) else kind
                    raise TimeoutError(
                        f"no {names} from pyipsec after {timeout}s; events: "
                        + "; ".join(describe_event(e) for e in self.events[-8:])
                        + (f"; driver error: {self.error}" if self.error else "")
                    )
                self._cond.wait(min(left, 0.2))

    def events_of(self, kind: type[IkeEvent]) -> list[Any]:
        with self._cond:
            return [e for e in self.events if isinstance(e, kind)]

    def log_text(self) -> str:
        with self._cond:
            return "\n".join(self.log) + "\n"

    def save_artifacts(self, directory: Path | str) -> None:
        """Write pyipsec's event/datagram log and endpoint statistics into ``directory``."""
        target = Path(directory)
        target.mkdir(parents=True, exist_ok=True)
        text = self.log_text()
        try:
            stats = self.endpoint.statistics()
            text += f"\nstatistics: {stats}\n"
        except Exception as exc:  # noqa: BLE001 - artifacts are best effort
            text += f"\nstatistics unavailable: {exc!r}\n"
        (target / f"{self.ns}-pyipsec.log").write_text(text)

    # ------------------------------------------------------------------ loop
    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    def _note(self, line: str) -> None:
        self.log.append(f"{time.time() - self._t0:8.3f} {line}")

    def _run(self) -> None:
        sel = self._sel = selectors.DefaultSelector()
        for port, s in self._socks.items():
            sel.register(s, selectors.EVENT_READ, port)
        sel.register(self._wake_r, selectors.EVENT_READ, None)
        ep = self.endpoint
        try:
            while True:
                with self._cond:
                    if self._stop:
                        return
                    commands, self._commands = self._commands, []
                now = time.time()
                for fn, box in commands:
                    try:
                        box.append((True, fn(ep, now)))
                    except Exception as exc:  # noqa: BLE001 - handed back to the caller
                        box.append((False, exc))
                if commands:
                    with self._cond:
                        self._cond.notify_all()
                timer = ep.get_timer()
                if timer is not None and timer <= now:
                    ep.handle_timer(now)
                self._flush(now)
                timer = ep.get_timer()
                wait = 1.0 if timer is None else max(0.0, min(1.0, timer - time.time()))
                for key, _ in sel.select(wait):
                    if key.data is None:
                        os.read(self._wake_r, 4096)
                        continue
                    self._receive(key.fileobj, key.data)  # type: ignore[arg-type]
                self._flush(time.time())
        except Exception:  # noqa: BLE001 - reported through self.error
            self.error = traceback.format_exc()
            with self._cond:
                self.log.append("driver crashed:\n" + self.error)
        finally:
            sel.close()
            self._sel = None
            with self._cond:
                self._cond.notify_all()

    def _receive(self, sock: socket.socket, port: int) -> None:
        for _ in range(64):
            try:
                data, addr = sock.recvfrom(65535)
                addr = addr[:2]  # IPv6: (address, port, flowinfo, scope id)
            except BlockingIOError:
                return
            except OSError as exc:  # ICMP errors surface here (ECONNREFUSED)
                self._note(f"recv error on {port}: {exc}")
                return
            now = time.time()
            if port == 4500:
                if data == b"\xff":
                    self._note(f"keepalive from {addr}")
                    continue
                if data[:4] != NON_ESP_MARKER:
                    self.esp_dropped += 1
                    continue
                data = data[4:]
            if self.drop_in is not None and self.drop_in(data, addr):
                self.dropped += 1
                self._note(f"<- {addr[0]}:{addr[1]} to :{port} {len(data)} bytes DROPPED")
                continue
            self._note(f"<- {addr[0]}:{addr[1]} to :{port} {len(data)} bytes")
            self.endpoint.receive_datagram(data, addr, now, (self.local_addr, port))

    def _flush(self, now: float) -> None:
        ep = self.endpoint
        for data, dst, local in ep.datagrams_to_send_from(now):
            port = local[1] if local is not None else (4500 if dst[1] == 4500 else 500)
            sock = self._socks.get(4500 if port == 4500 else 500)
            if sock is None:  # 4500 released to a data plane
                self._note(f"-> {dst[0]}:{dst[1]} from :{port} {len(data)} bytes NO SOCKET")
                continue
            if self.drop_out is not None and self.drop_out(data, dst):
                self.dropped += 1
                self._note(f"-> {dst[0]}:{dst[1]} from :{port} {len(data)} bytes DROPPED")
                continue
            payload = NON_ESP_MARKER + data if port == 4500 else data
            try:
                sock.sendto(payload, dst)
            except OSError as exc:
                self._note(f"send error to {dst}: {exc}")
                continue
            self._note(f"-> {dst[0]}:{dst[1]} from :{port} {len(data)} bytes")
        new = False
        while (ev := ep.next_event()) is not None:
            with self._cond:
                self.events.append(ev)
                self._note(describe_event(ev))
            new = True
        if new:
            with self._cond:
                self._cond.notify_all()


def static_sa_yaml(
    sa: ChildSaInstalled, *, local_ts: str, remote_ts: str, child: str | None = None
) -> str:
    """The ``pyipsec dataplane --static`` file for a negotiated Child SA (both directions,
    one PROTECT policy ``local_ts`` <-> ``remote_ts``). Holds keys: write it 0600."""
    name = child or sa.child
    encap = "udp" if sa.encap_udp else "none"
    out = []
    for spi, src, dst, key, direction in (
        (sa.outbound_spi, sa.local_addr, sa.remote_addr, sa.outbound_key, "out"),
        (sa.inbound_spi, sa.remote_addr, sa.local_addr, sa.inbound_key, "in"),
    ):
        out.append(
            f"  - spi: {spi}\n    src: {src}\n    dst: {dst}\n    protocol: {sa.protocol}\n"
            f'    mode: {sa.mode}\n    algorithm: {sa.algorithm}\n    key: "{key.hex()}"\n'
            f"    encap: {encap}\n    esn: {'true' if sa.esn else 'false'}\n"
            f"    child: {name}\n    direction: {direction}\n"
        )
    policy = (
        f"  - name: {name}\n    local: {local_ts}\n    remote: {remote_ts}\n"
        f"    action: protect\n    child: {name}\n"
    )
    return "sas:\n" + "".join(out) + "policies:\n" + policy


def write_secret_file(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` created 0600 (it holds keys)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
