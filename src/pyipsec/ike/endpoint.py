"""IkeEndpoint: the sans-I/O IKEv2 engine for one local identity/socket.

Bytes and time go in, bytes, timers and events come out (the aioquic/h11 pattern)::

    ep = IkeEndpoint(EndpointConfig(peers=(...,)))
    handle = ep.initiate(peer_config, child_config, now)
    for data, addr in ep.datagrams_to_send(now): sock.sendto(data, addr)
    ep.receive_datagram(data, addr, now)             # from the socket
    ep.handle_timer(now) once now >= ep.get_timer()
    while (event := ep.next_event()) is not None: ...

``now`` is wall-clock seconds (time.time()): only differences matter, except that
certificate validity is checked against it. Datagrams for the NAT-T port 4500 get no
non-ESP marker here; a datagram received with the 4-byte marker has it stripped.

IKE SAs are named by a *handle* (an int) that stays the same when the IKE SA is rekeyed.
Child SA commands take the handle and either the child's name or its inbound SPI.
"""

from __future__ import annotations

import os
import random
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass
from typing import Any

from pyipsec.errors import ConfigError, ProtocolError, PyipsecError
from pyipsec.ike.child_sa import ChildSa, ChildSaStatistics
from pyipsec.ike.config import ChildConfig, EndpointConfig, PeerConfig
from pyipsec.ike.cookies import CookieJar
from pyipsec.ike.events import IkeEvent
from pyipsec.ike.ike_sa import IkeSa, IkeSaStatistics
from pyipsec.ike.state import ChildState, IkeState
from pyipsec.wire.esp import NON_ESP_MARKER
from pyipsec.wire.iana import ExchangeType, NotifyType
from pyipsec.wire.ike import pull_header, pull_message


def _specified(ip: str) -> bool:
    return ip not in ("", "0.0.0.0", "::")


CLOSED_RESPONSE_TTL = 60.0  #: seconds a closed IKE SA's last response is kept
CLOSED_RESPONSES = 256  #: closed IKE SAs whose last response is kept at most


@dataclass(frozen=True, slots=True)
class _ClosedResponse:
    until: float  #: forget after this time
    message_id: int  #: the request it answers
    packets: list[bytes]  #: the response as sent (fragments, if it was fragmented)
    remote: tuple[str, int]
    local: tuple[str, int] | None


@dataclass(frozen=True, slots=True)
class EndpointStatistics:
    """Snapshot of an endpoint: SA counts and the counters (name, value), sorted by name.

    Counters include datagrams_in/out, malformed, packets_not_authenticated,
    invalid_message_ids, unexpected_responses, retransmits, retransmitted_requests,
    timeouts, cookies_sent, auth_failures, handshakes, child_sas_installed, ike_rekeys,
    rekey_collisions, dpd_sent, fragmented_messages, unknown_spi, answered_after_close
    (a retransmitted request to an IKE SA we closed, answered from its last response).
    """

    ike_sas: int
    half_open: int
    established: int
    child_sas: int
    counters: tuple[tuple[str, int], ...]

    def counter(self, name: str) -> int:
        return dict(self.counters).get(name, 0)


class IkeEndpoint:
    """All IKE SAs of one local endpoint. ``rng``: a random.Random-like object used for
    SPIs, nonces, cookie secrets and jitter (tests pass a seeded one); default os.urandom."""

    def __init__(self, local_config: EndpointConfig, rng: Any = None) -> None:
        self.config = local_config
        self._rng = rng
        self._jit = rng if rng is not None else random.SystemRandom()
        self.stats: Counter[str] = Counter()
        self.cookies = CookieJar(local_config.cookie_secret_lifetime, self._randbytes)
        self._by_spi: dict[bytes, IkeSa] = {}
        #: last responses of closed IKE SAs, for peers whose copy got lost (see _forget)
        self._closed: OrderedDict[tuple[bytes, bytes], _ClosedResponse] = OrderedDict()
        self._by_handle: dict[int, IkeSa] = {}
        self._half_open: dict[tuple[bytes, tuple[str, int]], IkeSa] = {}
        self._init_seen: dict[tuple[bytes, tuple[str, int]], IkeSa] = {}
        self._child_spis: set[int] = set()
        self._outbox: list[tuple[bytes, tuple[str, int], tuple[str, int] | None]] = []
        self._events: deque[IkeEvent] = deque()
        self._next_handle = 1

    def __repr__(self) -> str:
        return f"IkeEndpoint({len(self._by_handle)} IKE SAs)"

    # ------------------------------------------------------------------ sans-I/O interface
    def receive_datagram(
        self,
        data: bytes,
        addr: tuple[str, int],
        now: float,
        local_addr: tuple[str, int] | None = None,
    ) -> None:
        """Feed one UDP payload received from ``addr``. Bad input is counted and dropped."""
        self.stats["datagrams_in"] += 1
        if data == b"\xff":  # NAT-T keepalive
            self.stats["keepalives"] += 1
            return
        if data[:4] == NON_ESP_MARKER:
            data = data[4:]
        try:
            header = pull_header(data)
        except PyipsecError:
            self.stats["malformed"] += 1
            return
        if header.exchange_type == ExchangeType.IKE_SA_INIT:
            self._receive_init(data, header, addr, now, local_addr)
            return
        spi = header.spi_r if header.initiator else header.spi_i
        sa = self._by_spi.get(spi)
        if sa is None or (sa.spi_i, sa.spi_r) != (header.spi_i, header.spi_r):
            if not self._answer_closed(header, now):
                self.stats["unknown_spi"] += 1
            return
        sa.receive(data, header, addr, now, local_addr)

    def _receive_init(
        self,
        data: bytes,
        header: Any,
        addr: tuple[str, int],
        now: float,
        local_addr: tuple[str, int] | None,
    ) -> None:
        from pyipsec.ike.exchanges import ike_sa_init

        if header.response:
            sa = self._by_spi.get(header.spi_i)
            if sa is None or not sa.initiator or sa.state != IkeState.INIT_SENT:
                self.stats["unexpected_responses"] += 1
                return
            try:
                msg = pull_message(data)
            except PyipsecError:
                self.stats["malformed"] += 1
                return
            sa.receive_init_response(data, msg, now)
            return
        if header.spi_r != b"\0" * 8 or header.message_id != 0:
            self.stats["malformed"] += 1
            return
        seen = self._init_seen.get((header.spi_i, addr))
        if seen is not None:
            if data == seen.init_request and seen.last_response and seen.last_response[0] == 0:
                self.stats["retransmitted_requests"] += 1
                seen.send_packets(seen.last_response[1])
            else:
                self.stats["unexpected_messages"] += 1
            return
        try:
            msg = pull_message(data)
        except ProtocolError as exc:
            # unsupported critical payload, bad major version, syntax: a stateless error
            self.stats["malformed"] += 1
            if exc.notify in (
                NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD,
                NotifyType.INVALID_MAJOR_VERSION,
            ):
                from pyipsec.ike.exchanges import notify
                from pyipsec.ike.exchanges.ike_sa_init import plain_reply_to

                data_ = bytes([exc.payload_type]) if hasattr(exc, "payload_type") else b""
                plain_reply_to(self, header, addr, [notify(exc.notify, data_)])
            return
        except PyipsecError:
            self.stats["malformed"] += 1
            return
        local = self._local_for(local_addr, addr)
        ike_sa_init.respond(self, data, msg, addr, local, now)

    def _local_for(
        self, local_addr: tuple[str, int] | None, remote: tuple[str, int]
    ) -> tuple[str, int]:
        """Our address for a datagram from ``remote``: the one the socket layer gives, else
        the configured one; "" or a wildcard address means unknown (then NAT detection
        cannot tell whether we are behind a NAT, and "dynamic" selectors cannot resolve:
        pass the real destination address, e.g. from IP_PKTINFO)."""
        ip, port = local_addr if local_addr else (self.config.local_addr, self.config.port)
        if not _specified(ip):
            ip = self.config.local_addr
        if not _specified(ip):
            ip = "::" if ":" in remote[0] else "0.0.0.0"
        return (ip, port)

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, tuple[str, int]]]:
        """Datagrams produced since the last call, with their destination."""
        return [(d, dst) for d, dst, _ in self.datagrams_to_send_from(now)]

    def datagrams_to_send_from(
        self, now: float
    ) -> list[tuple[bytes, tuple[str, int], tuple[str, int] | None]]:
        """Like :meth:`datagrams_to_send` plus the local (address, port) to send from
        (port 4500 once NAT-T floated, RFC 7296 2.23, even when the peer's NAT-mapped port
        is not 4500); None for stateless answers (send from where the request came)."""
        out, self._outbox = self._outbox, []
        return out

    def get_timer(self) -> float | None:
        """Absolute time of the next timer, or None."""
        return min(
            (t for sa in self._by_spi.values() if (t := sa.next_timer()) is not None), default=None
        )

    def handle_timer(self, now: float) -> None:
        """Run everything due at ``now`` (retransmits, rekeys, expiries, DPD)."""
        for sa in list(self._by_spi.values()):
            t = sa.next_timer()
            if t is not None and t <= now:
                sa.handle_timer(now)

    def next_event(self) -> IkeEvent | None:
        return self._events.popleft() if self._events else None

    # ------------------------------------------------------------------ commands
    def initiate(self, peer: PeerConfig, child: ChildConfig | None, now: float) -> int:
        """Start IKE_SA_INIT with ``peer`` (and ``child`` in IKE_AUTH); returns the handle."""
        from pyipsec.ike.exchanges.ike_sa_init import IkeSaInitTask

        target = peer.remote_addrs[0]
        if target == "%any":
            raise ConfigError("cannot initiate to %any", key="peer.remote_addrs")
        local = (peer.local_addr or self.config.local_addr, self.config.port)
        sa = IkeSa(
            self,
            self._new_handle(),
            True,
            self._new_ike_spi(),
            b"\0" * 8,
            peer,
            local,
            (target, peer.remote_port),
            now,
        )
        sa.ctx["first_child"] = child
        self._register(sa)
        sa.transition("send_init")
        sa.queue(IkeSaInitTask(peer.default_ke), now)
        return sa.handle

    def _sa(self, ike_sa: int) -> IkeSa:
        sa = self._by_handle.get(ike_sa)
        if sa is None:
            raise ConfigError(f"no IKE SA {ike_sa}", key="ike_sa")
        return sa

    def _child(self, sa: IkeSa, child: str | int) -> ChildSa:
        for c in sa.children:
            if c.state in (ChildState.INSTALLED, ChildState.REKEYING) and (
                c.name == child or c.inbound_spi == child
            ):
                return c
        raise ConfigError(f"no Child SA {child!r}", key="child")

    def create_child(self, ike_sa: int, child: ChildConfig, now: float) -> None:
        """Negotiate an additional Child SA (after IKE_AUTH if still connecting)."""
        from pyipsec.ike.exchanges.create_child_sa import CreateChildTask

        sa = self._sa(ike_sa)
        if sa.state in (IkeState.ESTABLISHED, IkeState.REKEYING):
            sa.queue(CreateChildTask(child), now)
        else:
            sa.ctx.setdefault("more_children", []).append(child)

    def rekey_child(self, ike_sa: int, child: str | int, now: float) -> None:
        """Rekey a Child SA (by name or inbound SPI) now."""
        from pyipsec.ike.exchanges.create_child_sa import RekeyChildTask

        sa = self._sa(ike_sa)
        c = self._child(sa, child)
        if c.state == ChildState.INSTALLED:
            c.transition("rekey")
            sa.queue(RekeyChildTask(c), now)

    def rekey_ike(self, ike_sa: int, now: float) -> None:
        """Rekey the IKE SA now."""
        from pyipsec.ike.exchanges.rekey_ike import RekeyIkeTask

        sa = self._sa(ike_sa)
        if not sa.rekey_queued:
            sa.rekey_queued = True
            sa.queue(RekeyIkeTask(), now)

    def delete_child(self, ike_sa: int, child: str | int, now: float) -> None:
        """Delete a Child SA (by name or inbound SPI)."""
        from pyipsec.ike.exchanges.informational import DeleteChildTask

        sa = self._sa(ike_sa)
        sa.queue(DeleteChildTask([self._child(sa, child)]), now)

    def delete_ike(self, ike_sa: int, now: float) -> None:
        """Delete the IKE SA and all its Child SAs."""
        from pyipsec.ike.exchanges.informational import DeleteIkeTask

        sa = self._sa(ike_sa)
        if sa.state in (IkeState.ESTABLISHED, IkeState.REKEYING):
            sa.tasks.clear()
            sa.queue(DeleteIkeTask(), now)
        elif sa.state != IkeState.DELETING:
            sa.close("deleted", now)

    def traffic_seen(self, ike_sa: int, now: float) -> None:
        """Authenticated ESP/AH traffic arrived for this IKE SA's children: the peer is
        alive, so the liveness check (DPD) waits another ``dpd_delay`` (RFC 7296 2.4)."""
        sa = self._by_handle.get(ike_sa)
        if sa is not None:
            sa.last_recv = max(sa.last_recv, now)

    def peer_moved(self, ike_sa: int, addr: tuple[str, int], now: float) -> list[int]:
        """Authenticated, new (replay-checked) ESP-in-UDP of one of this IKE SA's Child SAs
        arrived from ``addr``: the peer's NAT changed its mapping (RFC 7296 2.23). A host
        that is not itself behind a NAT SHOULD then send everything there; so the IKE SA
        moves to ``addr`` and the outbound SPIs of its Child SAs are returned, for the
        data plane to redirect. Returns [] (and changes nothing) when we are behind a NAT
        ourselves, the SA runs no UDP encapsulation, is not established, or the address
        family would change."""
        sa = self._by_handle.get(ike_sa)
        if sa is None or sa.state not in (IkeState.ESTABLISHED, IkeState.REKEYING):
            return []
        if sa.nat_local or not (sa.nat_remote or self._force_encap(sa)):
            return []
        if (":" in addr[0]) != (":" in sa.remote_addr[0]) or not 0 < addr[1] < 65536:
            return []
        if sa.remote_addr != addr:
            sa.remote_addr = (addr[0], addr[1])
            self.stats["nat_mapping_updates"] += 1
        sa.last_recv = max(sa.last_recv, now)
        return [
            c.outbound_spi
            for c in sa.children
            if c.state in (ChildState.INSTALLED, ChildState.REKEYING)
        ]

    # ------------------------------------------------------------------ introspection
    def ike_sas(self) -> list[IkeSaStatistics]:
        return [sa.statistics() for sa in self._by_handle.values()]

    def child_sas(self, ike_sa: int) -> list[ChildSaStatistics]:
        return [c.statistics() for c in self._sa(ike_sa).children]

    def statistics(self) -> EndpointStatistics:
        sas = list(self._by_handle.values())
        return EndpointStatistics(
            ike_sas=len(sas),
            half_open=len(self._half_open),
            established=sum(sa.state == IkeState.ESTABLISHED for sa in sas),
            child_sas=sum(len(sa.children) for sa in sas),
            counters=tuple(sorted(self.stats.items())),
        )

    # ------------------------------------------------------------------ internal (IkeSa)
    def _emit(self, event: IkeEvent) -> None:
        self._events.append(event)

    def _send(
        self, data: bytes, addr: tuple[str, int], local: tuple[str, int] | None = None
    ) -> None:
        self.stats["datagrams_out"] += 1
        self._outbox.append((data, addr, local))

    def _randbytes(self, n: int) -> bytes:
        return self._rng.randbytes(n) if self._rng is not None else os.urandom(n)

    def _jitter(self) -> float:
        return self._jit.random()

    def _new_handle(self) -> int:
        h = self._next_handle
        self._next_handle += 1
        return h

    def _new_ike_spi(self) -> bytes:
        while True:
            spi = self._randbytes(8)
            if spi != b"\0" * 8 and spi not in self._by_spi:
                return spi

    def _alloc_spi(self) -> int:
        while True:
            spi = int.from_bytes(self._randbytes(4), "big")
            if spi >= 256 and spi not in self._child_spis:
                self._child_spis.add(spi)
                return spi

    def _release_spi(self, spi: int) -> None:
        self._child_spis.discard(spi)

    def _register(
        self, sa: IkeSa, half_open_key: tuple[bytes, tuple[str, int]] | None = None
    ) -> None:
        self._by_spi[sa.local_spi] = sa
        self._by_handle.setdefault(sa.handle, sa)
        if half_open_key is not None:
            self._half_open[half_open_key] = sa
            self._init_seen[half_open_key] = sa
            sa.ctx["half_open_key"] = half_open_key

    def _replace(self, old: IkeSa, new: IkeSa) -> None:
        self._by_handle[old.handle] = new

    def _answer_closed(self, header: Any, now: float) -> bool:
        """A retransmitted request to an IKE SA we closed: its cached response again."""
        closed = self._closed.get((header.spi_i, header.spi_r))
        if closed is None or header.response or header.message_id != closed.message_id:
            return False
        if now > closed.until:
            del self._closed[(header.spi_i, header.spi_r)]
            return False
        for packet in closed.packets:
            self._send(packet, closed.remote, closed.local)
        self.stats["answered_after_close"] += 1
        return True

    def _current(self, handle: int) -> IkeSa | None:
        return self._by_handle.get(handle)

    def _forget(self, sa: IkeSa) -> None:
        if self._by_spi.get(sa.local_spi) is sa:
            del self._by_spi[sa.local_spi]
            # The last request we answered was often a Delete; if our response is lost
            # the peer retransmits to an SA we no longer have and, unanswered, keeps its
            # side until it gives up (minutes). Keep the response a while to send again.
            if sa.last_response is not None:
                key = (sa.spi_i, sa.spi_r)
                self._closed[key] = _ClosedResponse(
                    sa.last_recv + CLOSED_RESPONSE_TTL, sa.last_response[0],
                    sa.last_response[1], sa.remote_addr, sa.local_addr,
                )  # fmt: skip
                self._closed.move_to_end(key)
                while len(self._closed) > CLOSED_RESPONSES:
                    self._closed.popitem(last=False)
        key = sa.ctx.get("half_open_key")
        if key is not None:
            self._half_open.pop(key, None)
            if self._init_seen.get(key) is sa:
                del self._init_seen[key]

    def _release_handle(self, handle: int, sa: IkeSa) -> None:
        if self._by_handle.get(handle) is sa:
            del self._by_handle[handle]

    def _established(self, sa: IkeSa) -> None:
        self.stats["handshakes"] += 1
        key = sa.ctx.get("half_open_key")
        if key is not None:
            self._half_open.pop(key, None)

    def _first_contact(self, sa: IkeSa) -> bool:
        return not any(
            o is not sa and o.peer is sa.peer and o.state == IkeState.ESTABLISHED
            for o in self._by_handle.values()
        )

    def _initial_contact(self, sa: IkeSa, now: float) -> None:
        """INITIAL_CONTACT: the peer lost its state; drop our older SAs with it (2.4)."""
        for other in list(self._by_handle.values()):
            if (
                other is not sa
                and other.peer is sa.peer
                and other.remote_identity == sa.remote_identity
                and other.state in (IkeState.ESTABLISHED, IkeState.REKEYING)
            ):
                self.stats["initial_contact_replaced"] += 1
                other.close("replaced", now)

    def _start_children(self, sa: IkeSa, now: float) -> None:
        from pyipsec.ike.exchanges.create_child_sa import CreateChildTask

        for child in sa.ctx.pop("more_children", []):
            sa.queue(CreateChildTask(child), now)

    def _force_encap(self, sa: IkeSa) -> bool:
        return sa.peer is not None and sa.peer.force_encap
