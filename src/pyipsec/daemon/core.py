"""The daemon core: drives the sans-I/O IKE endpoint and the data plane.

The core is a thin adapter, in the manner of aioquic's asyncio layer:

* datagrams from the IKE sockets go into ``IkeEndpoint.receive_datagram``; after every
  input (datagram, timer, command) the core *pumps*: it sends what the endpoint wants to
  send, handles every queued event, and re-arms the one timer the endpoint asks for;
* events become data-plane actions (install / remove SAs), rows of the SA tables the
  monitor shows, counters, and messages for ``watch`` clients;
* acquires from the data plane (the first packet of a trapped flow without an SA)
  start the matching connection;
* duplicate IKE SAs of a simultaneous initiation are resolved to one per peer
  (the rule is in :mod:`pyipsec.daemon.duplicates`).

Both boundaries are small protocols (:class:`IkeNetwork`, :class:`Dataplane`) with
real implementations in :mod:`pyipsec.daemon.io` and fakes in the tests, so two
daemons run end to end in one event loop without root.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from pyipsec.daemon.commands import Commands
from pyipsec.daemon.config import DaemonConfig
from pyipsec.daemon.duplicates import Duplicates, preferred
from pyipsec.daemon.dynamic import Fallbacks, is_dynamic, narrow_child, peer_for
from pyipsec.daemon.housekeeping import Housekeeping, Pending
from pyipsec.daemon.tables import ChildSaRow, Counters, Failure, IkeSaRow
from pyipsec.errors import PyipsecError
from pyipsec.ike.config import ChildConfig, PeerConfig
from pyipsec.ike.endpoint import IkeEndpoint
from pyipsec.ike.events import (
    AuthenticationFailed,
    ChildSaDeleted,
    ChildSaInstalled,
    ChildSaRekeyed,
    IkeEvent,
    IkeSaDown,
    IkeSaRekeyed,
    IkeSaUp,
    NegotiationFailed,
)
from pyipsec.wire.iana import NotifyType

log = logging.getLogger("pyipsec.daemon")

NAT_KEEPALIVE_INTERVAL = 20.0  #: seconds between NAT keepalives (RFC 3948 suggests 20)


class IkeNetwork(Protocol):
    """Where IKE datagrams go out; incoming ones are handed to ``Daemon.datagram``."""

    def send(self, data: bytes, remote: tuple[str, int], local_port: int) -> None: ...

    def close(self) -> None: ...


class Dataplane(Protocol):
    """What the daemon needs from the packet layer."""

    def install(self, child: ChildSaInstalled) -> None:
        """Install the inbound SA, then the outbound one (switching traffic to it)."""

    def remove(self, child: ChildSaDeleted) -> None:
        """Remove both SAs of a Child SA."""

    def set_policies(self, config: DaemonConfig) -> None:
        """Install the SPD of all connections (trap policies route first packets to us)."""

    def add_bypass(self, child: str, remote: str) -> None:
        """Let ``child``'s traffic with host ``remote`` pass in clear (unsecured fallback)."""

    def remove_bypass(self, child: str, remote: str) -> None:
        """End the unsecured fallback of ``child`` with ``remote``."""

    def sa_statistics(self) -> dict[int, dict[str, int]]:
        """Counters per SPI (bytes/packets in or out)."""

    def statistics(self) -> dict[str, int]:
        """Global data-plane counters (bad SPI, replay, ...)."""

    def close(self) -> None: ...


class Daemon(Commands, Housekeeping):
    """One host's IPsec daemon, independent of the real sockets and data plane."""

    def __init__(
        self,
        config: DaemonConfig,
        network: IkeNetwork,
        dataplane: Dataplane,
        *,
        clock: Callable[[], float] = time.time,
        wall_clock: Callable[[], float] = time.time,
        loop: asyncio.AbstractEventLoop | None = None,
        publish: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.config = config
        self.network = network
        self.dataplane = dataplane
        self.clock = clock
        self.wall_clock = wall_clock
        self.loop = loop or asyncio.get_event_loop()
        self.publish = publish or (lambda event: None)
        self.endpoint = IkeEndpoint(config.endpoint)
        self.started = clock()
        self.counters = Counters()
        self.ike_sas: dict[int, IkeSaRow] = {}
        self.child_sas: dict[int, ChildSaRow] = {}  # by inbound SPI
        self.failures: deque[Failure] = deque(maxlen=20)
        self._timer: asyncio.TimerHandle | None = None
        self._keepalive_timer: asyncio.TimerHandle | None = None
        #: (connection, child, remote or "") being brought up
        self._pending: dict[tuple[str, str, str], Pending] = {}
        self.fallbacks = Fallbacks()
        self._attempts: dict[int, str] = {}  #: IKE SA handle -> host, dynamic initiations
        self._fallback_timer: asyncio.TimerHandle | None = None
        self.duplicates = Duplicates()
        self._duplicate_timer: asyncio.TimerHandle | None = None
        self._duplicate_at: float | None = None
        self.closed = False

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Install policies and bring up connections whose children say start."""
        self.dataplane.set_policies(self.config)
        for peer in self.config.endpoint.peers:
            for child in peer.children:
                if child.start_action == "start":
                    self.initiate(peer.name, child.name)
        self._pump()
        self._keepalive_timer = self.loop.call_later(NAT_KEEPALIVE_INTERVAL, self._keepalive)

    def _keepalive(self) -> None:
        """NAT keepalives (RFC 3948 section 2.3): one 0xFF byte from port 4500 to every
        peer whose Child SAs run in UDP, so NAT mappings on the path do not expire."""
        if self.closed:
            return
        send = getattr(self.network, "send_keepalive", None)
        if send is not None:
            peers = {
                self.ike_sas[c.ike_sa].remote_addr
                for c in self.child_sas.values()
                if c.encap and c.ike_sa in self.ike_sas
            }
            for remote in sorted(peers):
                try:
                    send((remote, 4500))
                    self.counters.nat_keepalives_sent += 1
                except OSError as exc:
                    log.debug("NAT keepalive to %s failed: %s", remote, exc.strerror)
        self._keepalive_timer = self.loop.call_later(NAT_KEEPALIVE_INTERVAL, self._keepalive)

    def close(self) -> None:
        """Delete every IKE SA (best effort: one Delete each), then stop."""
        if self.closed:
            return
        now = self.clock()
        for handle in list(self.ike_sas):
            try:
                self.endpoint.delete_ike(handle, now)
            except PyipsecError:
                pass
        self._flush_output(now)
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
        if self._keepalive_timer is not None:
            self._keepalive_timer.cancel()
        if self._fallback_timer is not None:
            self._fallback_timer.cancel()
        if self._duplicate_timer is not None:
            self._duplicate_timer.cancel()

    # ------------------------------------------------------------------ inputs

    def datagram(self, data: bytes, remote: tuple[str, int], local: tuple[str, int]) -> None:
        """An IKE datagram arrived (non-ESP marker already removed on port 4500)."""
        if self.closed:
            return
        self.endpoint.receive_datagram(data, remote, self.clock(), local_addr=local)
        self._pump()

    def peer_moved(self, inbound_spi: int, addr: tuple[str, int]) -> list[int]:
        """Authenticated ESP of a Child SA came from a new NAT mapping (RFC 7296 2.23):
        the outbound SPIs to redirect there ([] when the IKE layer refuses)."""
        row = self.child_sas.get(inbound_spi)
        if row is None or self.closed:
            return []
        spis = self.endpoint.peer_moved(row.ike_sa, addr, self.clock())
        if spis:
            log.info("IKE SA %d: peer moved to %s:%d (NAT mapping)", row.ike_sa, *addr)
        self._pump()
        return spis

    def acquire(self, src: str, dst: str, child: str | None = None) -> None:
        """The data plane holds a packet from ``src`` to ``dst`` with no SA: negotiate.

        ``child`` is the SPD entry's ``<connection>/<child>``: that child comes up (with
        ``dst`` as the peer when the connection covers many hosts). Without it (or when
        it names nothing configured), the first trap child of the first connection to
        ``dst``.
        """
        self.counters.acquires += 1
        if child and "/" in child:
            conn_name, _, child_name = child.partition("/")
            peer = self.config.endpoint.peer(conn_name)
            if peer is not None and peer.child(child_name) is not None:
                if is_dynamic(peer):
                    self.initiate_to(peer.name, child_name, src, dst)
                else:
                    self.initiate(peer.name, child_name)
                self._pump()
                return
        for peer in self.config.endpoint.peers:
            if peer.matches_addr(dst) and any(c.start_action == "trap" for c in peer.children):
                child = next(c for c in peer.children if c.start_action == "trap")
                self.initiate(peer.name, child.name)
                self._pump()
                return
        log.info("acquire for %s -> %s matches no connection", src, dst)

    def initiate(self, peer_name: str, child_name: str | None = None) -> None:
        """Start the connection (IKE SA with its first child) unless it is up or coming."""
        peer = self.config.peer(peer_name)
        child = (
            peer.child(child_name) if child_name else (peer.children[0] if peer.children else None)
        )
        self._bring_up(peer, child, "", self.clock())

    def initiate_to(self, peer_name: str, child_name: str, local: str, remote: str) -> None:
        """Bring up ``child_name`` of a connection toward many hosts with the one host
        ``remote`` (selectors narrowed to ``local`` <-> ``remote``), unless it is up or
        coming; starts the unsecured-fallback clock when the child has one."""
        peer = self.config.peer(peer_name)
        configured = peer.child(child_name)
        child = narrow_child(configured, local, remote) if configured is not None else None
        if child is None:
            log.info("acquire %s -> %s is outside %s/%s", local, remote, peer_name, child_name)
            return
        now = self.clock()
        info = self.config.connections.get(peer_name)
        seconds = info.fallbacks.get(child_name) if info is not None else None
        if seconds is not None:
            self.fallbacks.negotiating(peer_name, child_name, local, remote, seconds, now)
            self._arm_fallbacks(now)
        self._bring_up(peer, child, remote, now)

    def _bring_up(self, peer: PeerConfig, child: ChildConfig | None, remote: str,
                  now: float) -> None:  # fmt: skip
        """Unless ``child`` is up or coming (30 s): negotiate it inside the connection's
        preferred IKE SA (with host ``remote`` for a connection toward many hosts, ""
        otherwise), or start a new IKE SA with it."""
        key = (peer.name, child.name if child else "", remote)
        pending = self._pending.get(key)
        if pending is not None and now - pending.since < 30:
            return
        ike = [
            h
            for h, r in self.ike_sas.items()
            if r.name == peer.name and (not remote or r.remote_addr == remote)
        ]
        if child is not None and any(
            c.name == child.name and c.ike_sa in ike for c in self.child_sas.values()
        ):
            return
        established = preferred(self.ike_sas, ike)
        if established is not None and child is not None:
            self.endpoint.create_child(established, child, now)
        elif remote:
            self._attempts[self.endpoint.initiate(peer_for(peer, remote), child, now)] = remote
        else:
            self.endpoint.initiate(peer, child, now)
        self._pending[key] = Pending(peer.name, key[1], now, remote)

    # ------------------------------------------------------------------ the pump

    def _pump(self) -> None:
        now = self.clock()
        self._flush_output(now)
        while (event := self.endpoint.next_event()) is not None:
            try:
                self._handle_event(event, now)
            except Exception:  # one bad event must not stop the daemon
                log.exception("handling %s failed", type(event).__name__)
        self._flush_output(now)
        self._arm_timer(now)

    def _flush_output(self, now: float) -> None:
        for data, addr, local in self.endpoint.datagrams_to_send_from(now):
            port = local[1] if local is not None else (4500 if addr[1] == 4500 else 500)
            try:
                self.network.send(data, addr, 4500 if port == 4500 else 500)
            except OSError as exc:
                log.warning("sending IKE to %s failed: %s", addr[0], exc.strerror)

    def _arm_timer(self, now: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        when = self.endpoint.get_timer()
        if when is None or self.closed:
            return
        delay = max(0.0, when - now)
        self._timer = self.loop.call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self.closed:
            return
        self.endpoint.handle_timer(self.clock())
        self._pump()

    # ------------------------------------------------------------------ events

    def _handle_event(self, event: IkeEvent, now: float) -> None:
        handler = _EVENT_HANDLERS.get(type(event))
        if handler is not None:
            handler(self, event, now)

    def _ike_up(self, event: IkeSaUp, now: float) -> None:
        self._attempts.pop(event.ike_sa, None)
        peer = self.config.endpoint.peer(event.peer)
        self.counters.ike_sa_additions += 1
        rekey_at = now + peer.rekey_time if peer is not None else None
        self.ike_sas[event.ike_sa] = IkeSaRow(
            handle=event.ike_sa,
            name=event.peer,
            local_addr=event.local_addr[0],
            remote_addr=event.remote_addr[0],
            remote_port=event.remote_addr[1],
            local_id=event.local_id,
            remote_id=event.remote_id,
            auth=event.auth or (peer.local_auth.method if peer is not None else "?"),
            proposal=event.proposal,
            initiator=event.initiator,
            spi_i=event.spi_i,
            spi_r=event.spi_r,
            established=now,
            rekey_at=rekey_at,
        )
        log.info(
            "IKE SA %s[%d] up: %s <-> %s (%s), %s",
            event.peer,
            event.ike_sa,
            event.local_addr[0],
            event.remote_addr[0],
            event.remote_id,
            event.proposal,
        )
        self._emit("ike-up", name=event.peer, ike_sa=event.ike_sa, remote=event.remote_addr[0])
        if self.duplicates.has_duplicate(self.ike_sas, event.ike_sa):
            log.info(
                "IKE SA %s[%d] duplicates another IKE SA with %s (both sides initiated)",
                event.peer,
                event.ike_sa,
                event.remote_addr[0],
            )
            self._arm_duplicates(now + self.duplicates.grace, now)

    def _ike_rekeyed(self, event: IkeSaRekeyed, now: float) -> None:
        self.counters.ike_rekeys += 1
        row = self.ike_sas.get(event.ike_sa)
        if row is not None:
            row.spi_i, row.spi_r = event.new_spi_i, event.new_spi_r
            peer = self.config.endpoint.peer(row.name)
            row.rekey_at = now + peer.rekey_time if peer is not None else None
        log.info(
            "IKE SA [%d] rekeyed: new SPIs %s_i %s_r",
            event.ike_sa,
            event.new_spi_i,
            event.new_spi_r,
        )
        self._emit("ike-rekeyed", ike_sa=event.ike_sa)

    def _ike_down(self, event: IkeSaDown, now: float) -> None:
        row = self.ike_sas.pop(event.ike_sa, None)
        if row is not None:
            self.counters.ike_sa_deletions += 1
        for spi, child in list(self.child_sas.items()):
            if child.ike_sa == event.ike_sa:
                # the endpoint reports children first; this is a safety net
                del self.child_sas[spi]
        self._forget_pending(event.peer, self._remote_of(event.ike_sa, row))
        log.info("IKE SA %s[%d] down: %s", event.peer, event.ike_sa, event.reason)
        self._emit("ike-down", name=event.peer, ike_sa=event.ike_sa, reason=event.reason)
        if event.reason in ("dead peer", "deleted by peer", "expired", "replaced"):
            self._restart_if_wanted(event.peer)

    def _restart_if_wanted(self, peer_name: str) -> None:
        """Connections with start_action start come back by themselves (trap: on traffic)."""
        peer = self.config.endpoint.peer(peer_name)
        if peer is None or self.closed:
            return
        for child in peer.children:
            if child.start_action == "start":
                self.initiate(peer.name, child.name)
                return

    def _remote_of(self, handle: int, row: IkeSaRow | None) -> str | None:
        """The host of IKE SA ``handle`` if known (its row, or a dynamic initiation)."""
        remote = self._attempts.pop(handle, None)
        return row.remote_addr if row is not None else remote

    def _forget_pending(self, peer: str, remote: str | None) -> None:
        """Attempts of ``peer`` (toward ``remote`` only, for dynamic connections) ended."""
        for key in list(self._pending):
            if key[0] == peer and (remote is None or key[2] in ("", remote)):
                del self._pending[key]

    def _child_installed(self, event: ChildSaInstalled, now: float) -> None:
        self.dataplane.install(event)
        row = self.ike_sas.get(event.ike_sa)
        conn = row.name if row is not None else ""
        if self.fallbacks.protected(conn, event.child, event.remote_addr):
            self.dataplane.remove_bypass(f"{conn}/{event.child}", event.remote_addr)
        self.counters.child_sa_additions += 1
        self.child_sas[event.inbound_spi] = ChildSaRow(
            ike_sa=event.ike_sa,
            name=event.child,
            protocol=event.protocol,
            mode=event.mode,
            spi_in=event.inbound_spi,
            spi_out=event.outbound_spi,
            algorithm=event.algorithm,
            esn=event.esn,
            encap=event.encap_udp,
            local_ts=[str(ts) for ts in event.local_ts],
            remote_ts=[str(ts) for ts in event.remote_ts],
            installed=now,
            rekey_at=now + event.rekey_time,
        )
        if self._duplicate_at is not None:
            self._arm_duplicates(now, now)  # a child moved into a keeper: look again now
        if row is not None:
            self._pending.pop((row.name, event.child, ""), None)
            self._pending.pop((row.name, event.child, event.remote_addr), None)
        else:
            for key in [k for k in self._pending if k[1] == event.child]:
                del self._pending[key]
        log.info(
            "Child SA %s installed: %s %s %s, SPIs %08x_i %08x_o, %s === %s",
            event.child,
            event.protocol,
            event.mode,
            event.algorithm,
            event.inbound_spi,
            event.outbound_spi,
            ",".join(map(str, event.local_ts)),
            ",".join(map(str, event.remote_ts)),
        )
        self._emit(
            "child-up",
            name=event.child,
            ike_sa=event.ike_sa,
            spi_in=f"{event.inbound_spi:08x}",
            spi_out=f"{event.outbound_spi:08x}",
        )

    def _child_rekeyed(self, event: ChildSaRekeyed, now: float) -> None:
        self.counters.child_rekeys += 1
        activate = getattr(self.dataplane, "activate", None)
        if activate is not None:
            activate(event.new_inbound_spi)
        log.info(
            "Child SA %s rekeyed: %08x_i -> %08x_i",
            event.child,
            event.old_inbound_spi,
            event.new_inbound_spi,
        )
        self._emit(
            "child-rekeyed",
            name=event.child,
            old_spi_in=f"{event.old_inbound_spi:08x}",
            new_spi_in=f"{event.new_inbound_spi:08x}",
        )

    def _child_deleted(self, event: ChildSaDeleted, now: float) -> None:
        self.dataplane.remove(event)
        if self.child_sas.pop(event.inbound_spi, None) is not None:
            self.counters.child_sa_deletions += 1
        log.info(
            "Child SA %s deleted (%s): %08x_i %08x_o",
            event.child,
            event.reason,
            event.inbound_spi,
            event.outbound_spi,
        )
        self._emit(
            "child-down", name=event.child, reason=event.reason, spi_in=f"{event.inbound_spi:08x}"
        )

    def _auth_failed(self, event: AuthenticationFailed, now: float) -> None:
        self.counters.authentication_failures += 1
        self.failures.append(
            Failure(
                self.wall_clock(),
                event.peer or event.remote_addr[0],
                f"authentication failed: {event.reason}",
                "AUTHENTICATION_FAILED",
            )
        )
        if event.retry:  # the IKE layer starts over with the connection's next auth method
            if event.ike_sa in self._attempts:
                self._attempts[event.retry] = self._attempts.pop(event.ike_sa)
        else:
            self._forget_pending(event.peer, event.remote_addr[0])
        log.warning(
            "authentication with %s (%s) failed: %s",
            event.peer or "?",
            event.remote_addr[0],
            event.reason,
        )
        self._emit("auth-failed", name=event.peer, remote=event.remote_addr[0], reason=event.reason)

    def _negotiation_failed(self, event: NegotiationFailed, now: float) -> None:
        self.counters.negotiation_failures += 1
        try:
            notify = NotifyType(event.notify).name if event.notify else None
        except ValueError:
            notify = str(event.notify)
        self.failures.append(Failure(self.wall_clock(), event.peer, event.reason, notify))
        self._forget_pending(
            event.peer, self._remote_of(event.ike_sa, self.ike_sas.get(event.ike_sa))
        )
        log.warning(
            "negotiation with %s failed: %s%s",
            event.peer,
            event.reason,
            f" ({notify})" if notify else "",
        )
        self._emit("negotiation-failed", name=event.peer, reason=event.reason, notify=notify)

    def _emit(self, kind: str, **fields: Any) -> None:
        self.publish({"type": kind, "time": self.wall_clock(), **fields})


_EVENT_HANDLERS: dict[type, Callable[[Daemon, Any, float], None]] = {
    IkeSaUp: Daemon._ike_up,
    IkeSaRekeyed: Daemon._ike_rekeyed,
    IkeSaDown: Daemon._ike_down,
    ChildSaInstalled: Daemon._child_installed,
    ChildSaRekeyed: Daemon._child_rekeyed,
    ChildSaDeleted: Daemon._child_deleted,
    AuthenticationFailed: Daemon._auth_failed,
    NegotiationFailed: Daemon._negotiation_failed,
}
