"""One IKE SA: message IDs, window of one, retransmission, cached responses, SK protection,
fragments, the task queue, timers (rekey, expiry, DPD) and its Child SAs.

Exchanges live in pyipsec.ike.exchanges; this module only moves their payloads. Rules
applied here (RFC 7296 section 2.1-2.3): a request is answered only if its Message ID is the
next expected one; the previous one gets the cached response again (for a fragmented
request only on fragment 1, RFC 7383 2.6.1); anything else is dropped and counted. A
response is accepted only for the outstanding request. Messages that fail the ICV are
dropped without any state change.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

from pyipsec.errors import MalformedPacket, PacketError, ProtocolError, PyipsecError, StateError
from pyipsec.ike.child_sa import ChildSa
from pyipsec.ike.config import PeerConfig
from pyipsec.ike.events import (
    ChildSaDeleted,
    ChildSaRekeyed,
    IkeEvent,
    IkeSaDown,
    NegotiationFailed,
)
from pyipsec.ike.exchanges import Task, notify
from pyipsec.ike.retransmit import Retransmitter
from pyipsec.ike.state import IkeState, ike_allows, ike_transition
from pyipsec.ike.stats import IkeSaStatistics
from pyipsec.wire.iana import ExchangeType, NotifyType, ProtocolId
from pyipsec.wire.ike import (
    DeletePayload,
    EncryptedFragmentPayload,
    IkeHeader,
    Message,
    decrypt_message,
    encrypt_message,
    fragment_message,
    pull_message,
    push_message,
)
from pyipsec.wire.ike.header import FLAG_INITIATOR, FLAG_RESPONSE

if TYPE_CHECKING:
    from pyipsec.crypto.ike_keys import IkeKeys
    from pyipsec.ike.endpoint import IkeEndpoint
    from pyipsec.ike.proposals import Chosen

ROLE = {True: "initiator", False: "responder"}


class IkeSa:
    """State of one IKE SA. Created by the endpoint (initiate / IKE_SA_INIT request /
    IKE rekey); talks to the world only through the endpoint."""

    def __init__(
        self,
        endpoint: IkeEndpoint,
        handle: int,
        initiator: bool,
        spi_i: bytes,
        spi_r: bytes,
        peer: PeerConfig | None,
        local_addr: tuple[str, int],
        remote_addr: tuple[str, int],
        now: float,
    ) -> None:
        self.endpoint = endpoint
        self.handle = handle
        self.initiator = initiator
        self.spi_i = spi_i
        self.spi_r = spi_r
        self.peer = peer
        self.local_addr = local_addr
        self.remote_addr = remote_addr
        self.state = IkeState.IDLE
        self.created = now
        # negotiated
        self.chosen: Chosen | None = None
        self.keys: IkeKeys | None = None
        self.cipher_out: Any = None
        self.cipher_in: Any = None
        self.ni = b""
        self.nr = b""
        self.init_request = b""
        self.init_response = b""
        self.int_auth_i = b""  # RFC 9242 IntAuth chain values
        self.int_auth_r = b""
        self.local_identity = ""
        self.remote_identity = ""
        self.peer_fragmentation = False
        self.peer_hash_algs: tuple[int, ...] = ()
        self.nat_local = False  # we are behind a NAT
        self.nat_remote = False  # the peer is behind a NAT
        self.ctx: dict[str, Any] = {}  # per-exchange scratch space (IKE_SA_INIT/AUTH)
        # messages
        self.next_request_id = 0
        self.expected_request_id = 0
        self.pending: Task | None = None
        self.pending_id = -1
        self.tasks: deque[Task] = deque()
        self.last_response: tuple[int, list[bytes]] | None = None
        tries = peer.retransmit_tries if peer else 5
        self.retransmitter = Retransmitter(
            peer.retransmit_timeout if peer else 4.0, peer.retransmit_base if peer else 1.8, tries
        )
        self.reassembler: Any = None
        # children and timers
        self.children: list[ChildSa] = []
        self.established_at: float | None = None
        self.rekey_at: float | None = None
        self.expire_at: float | None = None
        self.half_open_deadline: float | None = None
        self.last_recv = now
        self.rekey_queued = False
        self.dpd_queued = False
        self.closing_reason = ""
        # counters
        self.messages_in = 0
        self.messages_out = 0
        self.dropped = 0

    # ----------------------------------------------------------------------- basics
    @property
    def role(self) -> str:
        return ROLE[self.initiator]

    @property
    def local_spi(self) -> bytes:
        return self.spi_i if self.initiator else self.spi_r

    @property
    def peer_name(self) -> str:
        return self.peer.name if self.peer else ""

    def __repr__(self) -> str:
        return (
            f"IkeSa(#{self.handle} {self.role} {self.state.value} "
            f"{self.spi_i.hex()}_i {self.spi_r.hex()}_r {self.remote_addr[0]})"
        )

    def transition(self, event: str) -> None:
        self.state = ike_transition(self.role, self.state, event)

    def allows(self, event: str) -> bool:
        return ike_allows(self.role, self.state, event)

    def emit(self, event: IkeEvent) -> None:
        self.endpoint._emit(event)

    def rand(self, n: int) -> bytes:
        return self.endpoint._randbytes(n)

    def set_keys(self, keys: IkeKeys, cipher_factory: Any) -> None:
        """Install IKE SA keys: our outbound cipher uses our direction's keys."""
        self.keys = keys
        me, peer = self.initiator, not self.initiator
        self.cipher_out = cipher_factory(keys.encryption_key(me), keys.integrity_key(me))
        self.cipher_in = cipher_factory(keys.encryption_key(peer), keys.integrity_key(peer))
        from pyipsec.wire.ike import Reassembler

        self.reassembler = Reassembler()

    # ----------------------------------------------------------------------- sending
    def encode(
        self, exchange: int, message_id: int, payloads: list[Any], response: bool
    ) -> list[bytes]:
        flags = (FLAG_INITIATOR if self.initiator else 0) | (FLAG_RESPONSE if response else 0)
        msg = Message(self.spi_i, self.spi_r, exchange, flags, message_id, payloads)
        if exchange == ExchangeType.IKE_SA_INIT or self.cipher_out is None:
            return [push_message(msg)]
        data = encrypt_message(msg, self.cipher_out)
        limit = self.peer.fragment_size if self.peer else 0
        if limit and self.peer_fragmentation and len(data) > limit:
            self.endpoint.stats["fragmented_messages"] += 1
            return fragment_message(msg, self.cipher_out, limit)
        return [data]

    def send_packets(self, packets: list[bytes]) -> None:
        for p in packets:
            self.endpoint._send(p, self.remote_addr, self.local_addr)
        self.messages_out += 1

    def queue(self, task: Task, now: float, *, first: bool = False) -> None:
        """Add an exchange to run when the window is free."""
        if first:
            self.tasks.appendleft(task)
        else:
            self.tasks.append(task)
        self.kick(now)

    def kick(self, now: float) -> None:
        """Start the next queued exchange if none is outstanding (window size 1)."""
        while self.pending is None and self.tasks and self.state != IkeState.CLOSED:
            task = self.tasks.popleft()
            payloads = task.build(self, now)
            if payloads is None:
                continue
            self.send_request(task, payloads, now)

    def send_request(
        self, task: Task, payloads: list[Any], now: float, message_id: int | None = None
    ) -> None:
        mid = self.next_request_id if message_id is None else message_id
        packets = self.encode(task.exchange, mid, payloads, response=False)
        if task.exchange == ExchangeType.IKE_SA_INIT:
            self.ctx["last_request"] = packets[0]
        self.pending = task
        self.pending_id = mid
        if message_id is None:
            self.next_request_id += 1
        self.retransmitter.start(packets, now)
        self.send_packets(packets)

    def send_oneway(self, exchange: int, payloads: list[Any]) -> None:
        """Send a request we will not wait for (AUTHENTICATION_FAILED notification)."""
        packets = self.encode(exchange, self.next_request_id, payloads, response=False)
        self.next_request_id += 1
        self.send_packets(packets)

    def respond(self, header: IkeHeader, payloads: list[Any]) -> None:
        packets = self.encode(header.exchange_type, header.message_id, payloads, response=True)
        self.last_response = (header.message_id, packets)
        self.send_packets(packets)

    # ----------------------------------------------------------------------- receiving
    def drop(self, counter: str) -> None:
        self.dropped += 1
        self.endpoint.stats[counter] += 1

    def receive(
        self,
        data: bytes,
        header: IkeHeader,
        addr: tuple[str, int],
        now: float,
        local_addr: tuple[str, int] | None = None,
    ) -> None:
        """An SK/SKF-protected message for this SA (IKE_SA_INIT is handled elsewhere)."""
        if self.cipher_in is None or self.state == IkeState.CLOSED:
            self.drop("unexpected_messages")
            return
        if header.response:
            if self.pending is None or header.message_id != self.pending_id:
                self.drop("unexpected_responses")
                return
        else:
            if header.message_id == self.expected_request_id - 1 and self.last_response:
                if self._first_fragment_or_whole(data):
                    self.endpoint.stats["retransmitted_requests"] += 1
                    self.send_packets(self.last_response[1])
                return
            if header.message_id != self.expected_request_id:
                self.drop("invalid_message_ids")
                return
        try:
            msg = self._open(data, header)
        except PacketError as exc:
            self.drop("malformed" if isinstance(exc, MalformedPacket) else exc.counter)
            return
        except ProtocolError as exc:
            # authenticated but malformed: answer a request with the error, drop a response
            self.drop("malformed")
            if not header.response:
                self.expected_request_id += 1
                extra = bytes([exc.payload_type]) if hasattr(exc, "payload_type") else b""
                self.respond(header, [notify(exc.notify or NotifyType.INVALID_SYNTAX, extra)])
            return
        if msg is None:  # more fragments needed
            return
        self.messages_in += 1
        self.last_recv = now
        self.dpd_queued = False
        known = local_addr is not None and local_addr[0] not in ("", "0.0.0.0", "::")
        if self.nat_local or self.nat_remote:
            # authenticated message from a new NAT mapping / on the NAT-T port (2.23)
            self.remote_addr = addr
            if local_addr is not None:
                ip = local_addr[0] if known else self.local_addr[0]
                self.local_addr = (ip, local_addr[1])
        elif known and self.local_addr[0] in ("0.0.0.0", "::") and local_addr is not None:
            self.local_addr = (local_addr[0], self.local_addr[1])  # learnt our address
        if header.response:
            task = self.pending
            self.pending = None
            self.retransmitter.stop()
            assert task is not None
            try:
                task.process(self, msg, now)
            except (ProtocolError, StateError) as exc:
                self.endpoint.stats["failed_exchanges"] += 1
                self.emit(
                    NegotiationFailed(
                        self.handle, self.peer_name, getattr(exc, "notify", None) or 0, str(exc)
                    )
                )
        else:
            self.expected_request_id += 1
            self._dispatch_request(header, msg, now)
        self.kick(now)

    def receive_init_response(self, data: bytes, msg: Message, now: float) -> None:
        """The (plaintext) IKE_SA_INIT response to our outstanding request."""
        if self.pending is None or self.pending.exchange != ExchangeType.IKE_SA_INIT:
            self.drop("unexpected_responses")
            return
        task = self.pending
        self.pending = None
        self.retransmitter.stop()
        self.messages_in += 1
        self.last_recv = now
        self.ctx["raw_message"] = data
        task.process(self, msg, now)
        self.kick(now)

    @staticmethod
    def _first_fragment_or_whole(data: bytes) -> bool:
        try:
            msg = pull_message(data)
        except PyipsecError:
            return False
        frag = msg.find(EncryptedFragmentPayload)
        return frag is None or frag.fragment_number == 1

    def _open(self, data: bytes, header: IkeHeader) -> Message | None:
        if header.next_payload == 53:  # SKF
            if not self.peer_fragmentation:
                raise ProtocolError(
                    "fragment without negotiated fragmentation", notify=NotifyType.INVALID_SYNTAX
                )
            return self.reassembler.add(data, self.cipher_in)
        return decrypt_message(data, self.cipher_in)

    def _dispatch_request(self, header: IkeHeader, msg: Message, now: float) -> None:
        from pyipsec.ike.exchanges import (
            create_child_sa,
            ike_auth,
            ike_intermediate,
            informational,
            rekey_ike,
        )

        handlers = {
            ExchangeType.IKE_AUTH: ike_auth.respond,
            ExchangeType.IKE_INTERMEDIATE: ike_intermediate.respond,
            ExchangeType.CREATE_CHILD_SA: create_child_sa.respond,
            ExchangeType.INFORMATIONAL: informational.respond,
            ExchangeType.IKE_FOLLOWUP_KE: rekey_ike.respond_followup,
        }
        handler = handlers.get(header.exchange_type)
        if handler is None:
            self.drop("unexpected_messages")
            self.respond(header, [notify(NotifyType.INVALID_SYNTAX)])
            return
        try:
            payloads = handler(self, msg, now)
        except StateError:
            self.drop("unexpected_messages")
            payloads = [notify(NotifyType.INVALID_SYNTAX)]
        except ProtocolError as exc:
            self.endpoint.stats["failed_exchanges"] += 1
            data = getattr(exc, "notify_data", b"")
            payloads = [notify(exc.notify or NotifyType.INVALID_SYNTAX, data)]
        if payloads is not None:
            self.respond(header, payloads)
        post = self.ctx.pop("after_response", None)
        if post is not None:
            post(now)

    # ----------------------------------------------------------------------- children
    def child_by_inbound(self, spi: int) -> ChildSa | None:
        return next((c for c in self.children if c.inbound_spi == spi), None)

    def child_by_outbound(self, spi: int) -> ChildSa | None:
        return next((c for c in self.children if c.outbound_spi == spi), None)

    def announce(self, old: ChildSa, new: ChildSa) -> None:
        """Tell the daemon to send on ``new`` instead of ``old`` (ChildSaRekeyed)."""
        if new.in_use and not old.in_use:
            return
        old.in_use, new.in_use = False, True
        self.emit(
            ChildSaRekeyed(
                self.handle,
                old.name,
                old.inbound_spi,
                old.outbound_spi,
                new.inbound_spi,
                new.outbound_spi,
            )
        )

    def remove_child(self, child: ChildSa, reason: str) -> None:
        if child in self.children and child.in_use:
            # never leave the daemon without an outbound SA while a successor exists
            succ = child.replaced_by
            if succ is None or succ not in self.children:
                pred = child.predecessor
                succ = pred.replaced_by if pred is not None else None
            if succ is not None and succ is not child and succ in self.children:
                self.announce(child, succ)
        if child in self.children:
            self.children.remove(child)
            self.endpoint._release_spi(child.inbound_spi)
            self.emit(
                ChildSaDeleted(
                    self.handle,
                    child.name,
                    child.protocol,
                    child.inbound_spi,
                    child.outbound_spi,
                    reason,
                )
            )

    # ----------------------------------------------------------------------- teardown
    def close(
        self, reason: str, now: float, *, children_reason: str = "ike sa down", event: bool = True
    ) -> None:
        """Remove the SA and everything under it; events for each Child SA, then IkeSaDown."""
        if self.state == IkeState.CLOSED:
            return
        pending, self.pending = self.pending, None
        if pending is not None:
            pending.abort(self, now)
        for task in list(self.tasks):
            task.abort(self, now)
        self.tasks.clear()
        self.retransmitter.stop()
        pred = self.ctx.get("predecessor")
        if pred is not None and pred.state != IkeState.CLOSED and reason == "deleted by peer":
            # a simultaneous rekey (RFC 7296 2.8.2) made this successor redundant before we
            # learnt about the collision: the Child SAs wait on the old SA for the survivor
            from pyipsec.ike.events import IkeSaRekeyed

            for child in self.children:
                child.role = pred.role
            pred.children, self.children = pred.children + self.children, []
            if self.endpoint._current(self.handle) is self:
                self.endpoint._replace(self, pred)
                self.emit(
                    IkeSaRekeyed(
                        self.handle,
                        self.spi_i.hex(),
                        self.spi_r.hex(),
                        pred.spi_i.hex(),
                        pred.spi_r.hex(),
                    )
                )
        for child in list(self.children):
            self.remove_child(child, children_reason)
        self.state = IkeState.CLOSED
        if self.ctx.get("successors"):
            from pyipsec.ike.exchanges.rekey_ike import drop_redundant

            drop_redundant(self, now)
        self.endpoint._forget(self)
        if self.endpoint._current(self.handle) in (self, None):
            if event:
                self.emit(IkeSaDown(self.handle, self.peer_name, reason))
            self.endpoint._release_handle(self.handle, self)

    # ----------------------------------------------------------------------- timers
    def next_timer(self) -> float | None:
        times = [self.retransmitter.next_time, self.half_open_deadline, self.expire_at]
        if self.state == IkeState.ESTABLISHED:
            if not self.rekey_queued:
                times.append(self.rekey_at)
            if self.peer and self.peer.dpd_delay and not self.dpd_queued and self.pending is None:
                times.append(self.last_recv + self.peer.dpd_delay)
            for c in self.children:
                times.append(c.expire_at)
                if c.state.value == "installed":
                    times.append(c.rekey_at)
        return min((t for t in times if t is not None), default=None)

    def handle_timer(self, now: float) -> None:
        from pyipsec.ike.exchanges.create_child_sa import RekeyChildTask
        from pyipsec.ike.exchanges.informational import DpdTask
        from pyipsec.ike.exchanges.rekey_ike import RekeyIkeTask

        if self.state == IkeState.CLOSED:
            return
        if self.half_open_deadline is not None and now >= self.half_open_deadline:
            if self.state not in (IkeState.ESTABLISHED, IkeState.REKEYING, IkeState.DELETING):
                self.endpoint.stats["half_open_timeouts"] += 1
                self.close("failed", now, event=self.initiator)
                return
            self.half_open_deadline = None
        out = self.retransmitter.on_timer(now)
        if out is None:
            self._give_up(now)
            return
        if out:
            self.endpoint.stats["retransmits"] += 1
            self.send_packets(out)
        if self.expire_at is not None and now >= self.expire_at:
            if self.state in (IkeState.ESTABLISHED, IkeState.REKEYING) and self.cipher_out:
                self._notify_delete([DeletePayload(ProtocolId.IKE, 0, [])])
            self.close("expired", now, children_reason="expired")
            return
        if self.state != IkeState.ESTABLISHED:
            return
        for c in list(self.children):
            if now >= c.expire_at:
                # hard lifetime: gone at once; tell the peer without waiting for it
                from pyipsec.ike.exchanges.informational import DeleteSpisTask

                proto = ProtocolId.AH if c.protocol == "ah" else ProtocolId.ESP
                self.remove_child(c, "expired")
                self.queue(DeleteSpisTask(proto, [c.inbound_spi]), now)
            elif c.state.value == "installed" and now >= c.rekey_at:
                c.transition("rekey")
                self.queue(RekeyChildTask(c), now)
        if self.rekey_at is not None and now >= self.rekey_at and not self.rekey_queued:
            self.rekey_queued = True
            self.queue(RekeyIkeTask(), now)
        if (
            self.peer
            and self.peer.dpd_delay
            and not self.dpd_queued
            and self.pending is None
            and now >= self.last_recv + self.peer.dpd_delay
        ):
            self.dpd_queued = True
            self.queue(DpdTask(), now)

    def _notify_delete(self, payloads: list[Any]) -> None:
        """A Delete request we do not wait for (the IKE SA is going away). Sent only when the
        window is free; otherwise the peer's own lifetime handling takes over."""
        if self.pending is None:
            self.send_oneway(ExchangeType.INFORMATIONAL, payloads)
            self.endpoint.stats["expiry_deletes"] += 1

    def _give_up(self, now: float) -> None:
        self.endpoint.stats["timeouts"] += 1
        if self.state in (IkeState.ESTABLISHED, IkeState.REKEYING, IkeState.DELETING):
            reason = "deleted" if self.state == IkeState.DELETING else "dead peer"
            self.close(reason, now)
        else:
            self.emit(
                NegotiationFailed(
                    self.handle, self.peer_name, 0, "peer did not answer (retransmission timeout)"
                )
            )
            self.close("failed", now)

    # ----------------------------------------------------------------------- stats
    def statistics(self) -> IkeSaStatistics:
        from pyipsec.ike.proposals import describe

        return IkeSaStatistics(
            self.handle,
            self.peer_name,
            self.state.value,
            self.initiator,
            self.spi_i.hex(),
            self.spi_r.hex(),
            self.local_addr,
            self.remote_addr,
            describe(self.chosen) if self.chosen else "",
            self.local_identity,
            self.remote_identity,
            self.established_at,
            self.rekey_at,
            self.expire_at,
            len(self.children),
            self.messages_in,
            self.messages_out,
            self.retransmitter.total,
            self.dropped,
        )
