"""The two direction workers: one process each, so both cores encrypt/decrypt at once.

The service (:mod:`pyipsec.dataplane.service`) opens the TUN queue and the sockets, then
forks both workers; each keeps only the descriptors it uses:

* outbound: reads the TUN queue, owns the outbound SAs (sequence numbers are never shared),
  sends through the raw IPPROTO_RAW sockets and the UDP 4500 sockets (GSO).
* inbound: reads the raw ESP/AH sockets and the UDP 4500 sockets (GRO), owns the inbound
  SAs, writes into the TUN queue.

Each worker talks to the service over a ``multiprocessing`` pipe with small tuples:
``("add_sa", SaConfig)``, ``("del_sa", protocol, spi)``, ``("policies", [PolicyConfig])``,
``("stats",)`` (answered with a dict), ``("stop",)``. When the daemon hosts the data plane,
each worker also gets a one-way *events* pipe for what the daemon must act on:
``("acquire", child, policy, src, dst)`` (first packet of a flow without an SA),
``("sa_event", kind, direction, protocol, spi)`` (lifetimes) and, from the inbound worker,
``("ike", data, (src, port), (dst, port))`` for IKE messages (non-ESP marker) that arrived
on the UDP 4500 socket the data plane owns (``port``: the real source port, a NAT's
mapping of the peer's 4500) and ``("nat_mapping", protocol, spi, child, addr, port)`` when
authenticated ESP-in-UDP of an inbound SA came from a new (address, port) (RFC 7296 2.23;
the outbound worker's ``("set_peer", protocol, spi, addr, port)`` redirects an outbound
SA's ESP-in-UDP there). Workers die with the service
(PR_SET_PDEATHSIG), so a crash of the service never leaves a worker encrypting alone.
This module is the I/O boundary: it reads the clock and passes ``now`` to the pipeline.
"""

from __future__ import annotations

import ctypes
import ipaddress
import logging
import os
import select
import signal
import socket
import time
from dataclasses import asdict
from typing import Any

from pyipsec.dataplane.fragments import (
    Reassembler,
    fragment4,
    fragment6,
    fragment_header_offset,
)
from pyipsec.dataplane.pipeline import InboundPipeline, OutboundPipeline
from pyipsec.errors import MalformedPacket
from pyipsec.ipsec.spd import Spd
from pyipsec.platform.linux import sockets as sk
from pyipsec.platform.linux.tun import Tun
from pyipsec.wire.esp import NATT_PORT
from pyipsec.wire.ip import parse_flow

log = logging.getLogger("pyipsec.dataplane")

BATCH = 64
ROUNDS = 16  #: batches drained per wake-up before the control pipe is looked at again
PR_SET_PDEATHSIG = 1
_V6_EXT = frozenset((0, 43, 44, 60))  #: Next Header values that may lead to a fragment header


class ChildSelectors:
    """The selectors an inbound SA checks: every PROTECT policy naming its child.

    Looked up at match time so that policy changes apply to existing SAs. ``generation``
    changes whenever the table does (the worker bumps the shared counter), which lets the
    SA cache answers per flow (:meth:`pyipsec.ipsec.sa.SecurityAssociation._selected`).
    """

    __slots__ = ("table", "child", "_gen")

    def __init__(
        self, table: dict[str, list[Any]], child: str, gen: list[int] | None = None
    ) -> None:
        self.table = table
        self.child = child
        self._gen = gen if gen is not None else [0]

    @property
    def generation(self) -> int:
        return self._gen[0]

    def matches(self, flow: Any) -> bool:
        for sel in self.table.get(self.child, ()):
            if sel.matches(flow, "in"):
                return True
        return False


class SocketSender:
    """:class:`pyipsec.dataplane.pipeline.Sender` over the real sockets.

    Whole packets (raw ESP/AH, transport and tunnel mode without UDP) go out through
    :class:`pyipsec.platform.linux.sockets.RawBatchSender`: one ``sendmmsg`` per batch of
    one SA instead of one ``sendto`` per packet (``mmsg=False``, or a socket that is not a
    real ``socket.socket`` as in tests, sends packet by packet). A packet the kernel
    refuses counts in ``send_errors`` and never costs the others of its batch.
    """

    def __init__(
        self,
        raw4: Any,
        raw6: Any,
        udp4: Any,
        udp6: Any,
        *,
        gso: bool = True,
        mmsg: bool = True,
        mark: int = 0,
    ) -> None:
        self.raw = {4: raw4, 6: raw6}
        self.udp = {4: udp4, 6: udp6}
        self.gso = gso
        self.mmsg = mmsg
        self.send_errors = 0
        self.fragmented = 0  #: packets sent as fragments (above the route's MTU)
        self.mark = mark
        self._frag_id = int.from_bytes(os.urandom(4), "big")
        self._batchers: dict[int, Any] = {}

    def _batcher(self, version: int) -> Any:
        sock = self.raw[version]
        if self.mmsg and isinstance(sock, socket.socket):
            b = sk.RawBatchSender(sock, BATCH)
        else:
            b = _EachSender(sock)
        self._batchers[version] = b
        return b

    def send_ip(self, packets: list[bytes], version: int, dst: str) -> None:
        b = self._batchers.get(version) or self._batcher(version)
        self.send_errors += b.send(packets, dst)
        if b.too_big:
            self._too_big(b, version, dst)

    def _too_big(self, b: Any, version: int, dst: str) -> None:
        """Packets above the route's MTU (a transport mode datagram reassembled from the
        TUN's fragments, now with AH/ESP) go out as fragments (IPv4: only without DF,
        which such a datagram never has); anything else that big is an error."""
        big, b.too_big = b.too_big, []
        mtu = sk.route_mtu(dst, self.mark)
        for p in big:
            self._frag_id = (self._frag_id + 1) & 0xFFFFFFFF
            try:
                frags = fragment6(p, mtu, self._frag_id) if version == 6 else fragment4(p, mtu)
            except ValueError:  # IPv4 with DF set: the kernel would not fragment it either
                self.send_errors += 1
                continue
            self.fragmented += 1
            self.send_errors += b.send(frags, dst) + len(b.too_big)
            b.too_big = []

    def send_udp(self, datagrams: list[bytes], version: int, addr: tuple[str, int]) -> None:
        sock = self.udp[version]
        if sock is None:
            self.send_errors += len(datagrams)
            return
        try:
            sk.send_gso(sock, datagrams, addr, gso=self.gso)
        except OSError:
            self.send_errors += 1


class _EachSender:
    """One ``sendto`` per packet (the path without ``sendmmsg``); returns the errors."""

    def __init__(self, sock: Any) -> None:
        self.sock = sock
        self.too_big: list[bytes] = []

    def send(self, packets: list[bytes], dst: str) -> int:
        return sk.send_each(self.sock, packets, dst, self.too_big)


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def _stats_dict(pipe: Any, extra: dict[str, Any]) -> dict[str, Any]:
    sas = []
    for cfg, st in pipe.sa_statistics():
        sas.append({"sa": cfg.to_dict(), "statistics": asdict(st)})
    return {"pipeline": asdict(pipe.statistics()), "sas": sas, **extra}


def _build_sa(
    cfg: Any, selectors: dict[str, list[Any]] | None, now: float, gen: list[int] | None = None
) -> Any:
    if selectors is None:  # outbound: selectors are checked on decapsulation only
        return cfg.build(now=now)
    return cfg.build(selectors=ChildSelectors(selectors, cfg.child, gen), now=now)


def _selector_table(policies: list[Any]) -> dict[str, list[Any]]:
    table: dict[str, list[Any]] = {}
    for p in policies:
        if p.entry.template is not None:
            table.setdefault(p.entry.template.child, []).append(p.entry.selector)
    return table


class _Worker:
    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.running = True
        self.events = 0

    def handle_control(self) -> None:
        while self.conn.poll():
            try:
                msg = self.conn.recv()
            except EOFError:
                self.running = False
                return
            try:
                reply = self.command(msg)
            except Exception as exc:  # report to the service, never die on a bad command
                reply = {"error": f"{type(exc).__name__}: {exc}"}
            if reply is not None:
                self.conn.send(reply)

    def command(self, msg: tuple) -> Any:  # pragma: no cover - overridden
        raise NotImplementedError


def _send_event(events: Any, event: tuple[Any, ...]) -> None:
    if events is None:
        return
    try:
        events.send(event)
    except (OSError, ValueError, BrokenPipeError):
        pass  # the daemon is gone; the worker dies with it (PR_SET_PDEATHSIG)


def _report_events(events: Any, reports: list[Any]) -> None:
    for rep in reports:
        log.warning("SA event %s", rep)
        _send_event(events, ("sa_event", type(rep.event).__name__, rep.direction,
                             rep.protocol, rep.spi))  # fmt: skip


class OutboundWorker(_Worker):
    def __init__(
        self, conn: Any, tun: Tun, sender: SocketSender, policies: list[Any], events: Any = None
    ) -> None:
        super().__init__(conn)
        self.events = events
        self.tun = tun
        self.spd = Spd()
        for p in policies:
            self.spd.add(p.entry)
        self.sender = sender
        self.pipe = OutboundPipeline(self.spd, sender, on_acquire=self._acquire)
        self.reassembly = Reassembler()

    def whole(self, batch: list[bytes], now: float) -> list[bytes]:
        """``batch`` with the fragments bound for a transport mode SA (raw ESP/AH)
        replaced by their reassembled datagrams, once complete: transport mode does not
        carry fragments (RFC 4301 section 7), and the kernel fragments a datagram larger
        than the TUN's MTU before the data plane sees it. The SA's packet goes out
        fragmented again (:meth:`SocketSender.send_ip`). Tunnel mode carries fragments
        as they are."""
        try:  # the common case, no fragment: two byte tests per packet (~0.13 us)
            for p in batch:
                if p[0] < 0x60:
                    if p[6] & 0x3F or p[7]:  # IPv4 MF or fragment offset
                        break
                elif p[6] in _V6_EXT:
                    break
            else:
                return batch
        except IndexError:
            pass  # a runt: the checked loop below
        out = []
        for p in batch:
            if len(p) < 20:
                frag = False  # the pipeline counts what is malformed
            elif p[0] >> 4 == 4:
                frag = p[6] & 0x3F or p[7]
            else:
                frag = p[6] in _V6_EXT and fragment_header_offset(p) > 0
            if frag and self._to_transport(p):
                done = self.reassembly.add(p, now)
                if done is not None:
                    out.append(done)
            else:
                out.append(p)
        return out

    def _to_transport(self, packet: bytes) -> bool:
        try:
            flow = parse_flow(packet)
        except MalformedPacket:
            return False
        entry = self.spd.lookup(flow, "out")
        if entry is None or entry.template is None:
            return False
        out = self.pipe.by_child.get(entry.template.child)
        return out is not None and not out.udp and out.cfg.mode == "transport"

    def _acquire(self, acq: Any) -> None:
        log.info("acquire: child %s policy %s", acq.child, acq.policy)
        flow = acq.flow
        make = ipaddress.IPv6Address if flow.version == 6 else ipaddress.IPv4Address
        src, dst = str(make(flow.src)), str(make(flow.dst))
        _send_event(self.events, ("acquire", acq.child, acq.policy, src, dst))

    def command(self, msg: tuple) -> Any:
        op = msg[0]
        if op == "add_sa":
            self.pipe.add_sa(msg[1], _build_sa(msg[1], None, time.monotonic()), time.monotonic())
            return {"ok": True}
        if op == "del_sa":
            return {"ok": self.pipe.remove_sa(msg[1], msg[2])}
        if op == "set_peer":  # ("set_peer", protocol, spi, addr, port): NAT mapping moved
            return {"ok": self.pipe.set_peer(msg[1], msg[2], msg[3], int(msg[4]))}
        if op == "policies":
            self.spd.clear()
            for p in msg[1]:
                self.spd.add(p.entry)
            return {"ok": True}
        if op == "stats":
            extra = {"tun": asdict(self.tun.statistics()),
                     "send_errors": self.sender.send_errors,
                     "fragmented": self.sender.fragmented,
                     "reassembly": asdict(self.reassembly.statistics()),
                     "spd": asdict(self.spd.statistics())}  # fmt: skip
            return _stats_dict(self.pipe, extra)
        if op == "stop":
            self.running = False
            return {"ok": True}
        return {"error": f"unknown command {op!r}"}

    def run(self) -> None:
        ep = select.epoll()
        ep.register(self.tun.fd, select.EPOLLIN)
        ctl = self.conn.fileno()
        ep.register(ctl, select.EPOLLIN)
        read_batch = self.tun.read_batch
        process = self.pipe.process
        whole = self.whole
        next_tick = time.monotonic() + 1.0
        while self.running:
            for fd, _ev in ep.poll(1.0):
                if fd == ctl:
                    self.handle_control()
                    continue
                for _ in range(ROUNDS):
                    batch = read_batch(BATCH)
                    if not batch:
                        break
                    now = time.monotonic()
                    process(whole(batch, now), now)
            now = time.monotonic()
            if now >= next_tick:
                next_tick = now + 1.0
                _report_events(self.events, self.pipe.tick(now))


class InboundWorker(_Worker):
    def __init__(
        self, conn: Any, tun: Tun, receivers: list[tuple[str, Any]], events: Any = None
    ) -> None:
        super().__init__(conn)
        self.events = events
        self.tun = tun
        self.receivers = receivers  # (kind, socket): kind raw4 | esp6 | ah6 | udp
        self.selectors: dict[str, list[Any]] = {}
        self.generation = [0]  #: bumped when ``selectors`` changes (SA selector caches)
        self.pipe = InboundPipeline(tun, on_mapping=self._mapping, on_ike=self._ike)
        self.local_port = NATT_PORT  #: the UDP socket's bound port (the "ike" event's local)

    def _ike(self, data: bytes, src: Any, dst: Any, port: int) -> None:
        """An IKE message on UDP 4500 (non-ESP marker kept) goes to the daemon with the
        peer's real (address, port): behind a NAT that is the NAT's mapping of the peer's
        4500, and the IKE SA must answer there (RFC 7296 2.23)."""
        family = socket.AF_INET6 if len(src) == 16 else socket.AF_INET
        remote = (socket.inet_ntop(family, src), port)
        local = (socket.inet_ntop(family, dst), self.local_port)
        _send_event(self.events, ("ike", data, remote, local))

    def _mapping(self, m: Any) -> None:
        log.info("SA %08x: authenticated ESP from a new NAT mapping %s:%d", m.spi, m.addr, m.port)
        _send_event(self.events, ("nat_mapping", m.protocol, m.spi, m.child, m.addr, m.port))

    def command(self, msg: tuple) -> Any:
        op = msg[0]
        if op == "add_sa":
            sa = _build_sa(msg[1], self.selectors, time.monotonic(), self.generation)
            self.pipe.add_sa(msg[1], sa)
            return {"ok": True}
        if op == "del_sa":
            return {"ok": self.pipe.remove_sa(msg[1], msg[2])}
        if op == "policies":
            self.selectors.clear()
            self.selectors.update(_selector_table(msg[1]))
            self.generation[0] += 1
            return {"ok": True}
        if op == "stats":
            return _stats_dict(self.pipe, {"tun": asdict(self.tun.statistics())})
        if op == "stop":
            self.running = False
            return {"ok": True}
        return {"error": f"unknown command {op!r}"}

    def _handler(self, kind: str, sock: socket.socket) -> Any:
        """A function draining one batch from ``sock``; returns False when it was empty."""
        pipe = self.pipe
        clock = time.monotonic
        if kind == "raw4":
            recv4 = sk.recv_raw4

            def drain4() -> bool:
                batch = recv4(sock, BATCH)
                if batch:
                    pipe.process_ip4(batch, clock())
                return bool(batch)

            return drain4
        if kind == "ah6":  # whole packets: AH's ICV covers the extension headers
            recv6 = sk.recv_ah6

            def drain_ah6() -> bool:
                batch = recv6(sock, BATCH)
                if batch:
                    pipe.process_ip6(batch, clock())
                return bool(batch)

            return drain_ah6
        proto = 50
        udp = kind == "udp"
        recv = sk.recv_with_addrs

        if udp and self.events is not None:
            self.local_port = _bound_port(sock)

            def drain_udp() -> bool:
                ports: list[int] = []
                items = recv(sock, BATCH, ports)
                if items:
                    pipe.process_payloads(items, proto, clock(), udp=True, ports=ports)
                return bool(items)

            return drain_udp

        def drain() -> bool:
            items = recv(sock, BATCH)
            if items:
                pipe.process_payloads(items, proto, clock(), udp=udp)
            return bool(items)

        return drain

    def run(self) -> None:
        ep = select.epoll()
        ctl = self.conn.fileno()
        ep.register(ctl, select.EPOLLIN)
        handlers = {}
        for kind, sock in self.receivers:
            ep.register(sock.fileno(), select.EPOLLIN)
            handlers[sock.fileno()] = self._handler(kind, sock)
        next_tick = time.monotonic() + 1.0
        while self.running:
            for fd, _ev in ep.poll(1.0):
                if fd == ctl:
                    self.handle_control()
                    continue
                handler = handlers[fd]
                for _ in range(ROUNDS):
                    if not handler():
                        break
            now = time.monotonic()
            if now >= next_tick:
                next_tick = now + 1.0
                _report_events(self.events, self.pipe.tick(now))


def _bound_port(sock: Any) -> int:
    """The local port ``sock`` is bound to (4500 for the NAT-T socket; 4500 if unknown)."""
    try:
        return int(sock.getsockname()[1]) or NATT_PORT
    except (OSError, AttributeError, IndexError, TypeError):
        return NATT_PORT


def outbound_main(
    conn: Any, tun: Tun, sender: SocketSender, policies: list[Any], events: Any = None
) -> None:
    """Process entry point of the outbound worker."""
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: _exit())
    OutboundWorker(conn, tun, sender, policies, events).run()


def inbound_main(
    conn: Any,
    tun: Tun,
    receivers: list[tuple[str, socket.socket]],
    policies: list[Any],
    events: Any = None,
) -> None:
    """Process entry point of the inbound worker."""
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: _exit())
    w = InboundWorker(conn, tun, receivers, events)
    w.selectors.update(_selector_table(policies))
    w.generation[0] += 1
    w.run()


def _exit() -> None:
    raise SystemExit(0)
