"""IKE SA rekeying with CREATE_CHILD_SA (RFC 7296 sections 1.3.2 and 2.18).

The initiator sends SA (protocol IKE, its new SPI), Ni, KEi; the responder answers SA (its
new SPI), Nr, KEr. The new IKE SA's keys: SKEYSEED = prf(SK_d (old), g^ir (new) | Ni | Nr);
its "original initiator" is the initiator of the rekey. The Child SAs move to the new IKE
SA; the initiator of the rekey then deletes the old IKE SA. With additional key exchanges
negotiated (RFC 9370 2.2.4) the responder answers N(ADDITIONAL_KEY_EXCHANGE) and the
initiator runs one IKE_FOLLOWUP_KE per ADDKE on the old SA before the new one exists:
SKEYSEED = prf(SK_d (old), SK(0) | Ni | Nr | SK(1) | ... | SK(n)).

Simultaneous rekeying (RFC 7296 2.8.2, 2.25.2): a request colliding with our own rekey is
answered as usual; of the two new IKE SAs the one whose exchange carried the lowest nonce
is redundant and deleted by its initiator, the Child SAs end up on the survivor, and the
initiator of the survivor deletes the old SA. (A collision with a hybrid rekey still in its
IKE_FOLLOWUP_KE exchanges is refused with TEMPORARY_FAILURE and retried later.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pyipsec.crypto.ike_ciphers import sk_cipher
from pyipsec.crypto.ike_keys import rekey_ike_keys
from pyipsec.crypto.ke import ke_by_id
from pyipsec.errors import ProtocolError
from pyipsec.ike.events import IkeSaRekeyed, NegotiationFailed
from pyipsec.ike.exchanges import Task, error_notify, get_notify, notify
from pyipsec.ike.exchanges.create_child_sa import NONCE_SIZE, _InvalidKe
from pyipsec.ike.proposals import (
    check_chosen,
    child_key_sizes,
    chosen_from_response,
    chosen_sa_payload,
    prefer_ke,
    select_proposal,
    to_sa_payload,
)
from pyipsec.wire.iana import ExchangeType, NotifyType, ProtocolId, TransformType
from pyipsec.wire.ike import KePayload, Message, NoncePayload, SaPayload

if TYPE_CHECKING:
    from pyipsec.ike.ike_sa import IkeSa


class RekeyIkeTask(Task):
    """Initiator: rekey the IKE SA."""

    exchange = ExchangeType.CREATE_CHILD_SA
    name = "rekey_ike"

    def __init__(self, ke_id: int | None = None) -> None:
        self.requested_ke = ke_id  # after INVALID_KE_PAYLOAD

    def build(self, sa: IkeSa, now: float) -> list[Any] | None:
        assert sa.peer is not None and sa.chosen is not None
        retry = self.requested_ke is not None and sa.state.value == "rekeying"
        if not retry and (not sa.allows("rekey_ike") or sa.state.value != "established"):
            sa.rekey_queued = False
            return None
        if not retry:
            sa.transition("rekey_ike")
        self.spi = sa.endpoint._new_ike_spi()
        self.ni = sa.rand(NONCE_SIZE)
        self.ke_id = self.requested_ke or sa.chosen.ke or sa.peer.default_ke
        self.kx = ke_by_id(self.ke_id).new()
        self.specs = prefer_ke(sa.peer.proposals(), self.ke_id)
        return [
            to_sa_payload(self.specs, self.spi),
            NoncePayload(self.ni),
            KePayload(self.ke_id, self.kx.public_value()),
        ]

    def process(self, sa: IkeSa, msg: Message, now: float) -> None:
        err = error_notify(msg)
        sa_p, nonce, ke = msg.find(SaPayload), msg.find(NoncePayload), msg.find(KePayload)
        if (
            err is not None
            and err.notify_type == NotifyType.INVALID_KE_PAYLOAD
            and self.requested_ke is None
            and len(err.data) == 2
        ):
            group = int.from_bytes(err.data, "big")
            if any((group, None) in spec.algs(TransformType.KE) for spec in self.specs):
                sa.endpoint.stats["invalid_ke_retries"] += 1
                sa.queue(RekeyIkeTask(group), now, first=True)
                return
        try:
            if err is not None:
                raise ProtocolError(f"IKE rekey refused: {err.notify_type}", notify=err.notify_type)
            if sa_p is None or nonce is None or ke is None or ke.group != self.ke_id:
                raise ProtocolError("bad IKE rekey response", notify=NotifyType.INVALID_SYNTAX)
            chosen = chosen_from_response(sa_p)
            check_chosen(self.specs, chosen)
            if chosen.protocol != ProtocolId.IKE or len(chosen.spi) != 8:
                raise ProtocolError("bad IKE rekey proposal", notify=NotifyType.INVALID_SYNTAX)
            shared = self.kx.complete(ke.data)
        except ProtocolError as exc:
            _rekey_failed(sa, now, exc.notify or 0, str(exc))
            return
        state = _Followup(self.spi, chosen, self.ni, nonce.data, shared)
        state.pending = [k for _, k in chosen.additional_kes()]
        if state.pending:  # RFC 9370 2.2.4: the additional exchanges follow on this SA
            link = get_notify(msg, NotifyType.ADDITIONAL_KEY_EXCHANGE)
            if link is None:
                _rekey_failed(sa, now, NotifyType.INVALID_SYNTAX, "ADDITIONAL_KEY_EXCHANGE missing")
                return
            state.link = link.data
            sa.queue(FollowupKeTask(state), now, first=True)
            return
        _finish_initiator(sa, state, now)


def _rekey_failed(sa: IkeSa, now: float, notify_type: int, reason: str) -> None:
    """Our IKE rekey failed: back to ESTABLISHED (unless the peer's rekey already replaced
    this SA) and retry after a random 2-10 s."""
    successor = sa.ctx.get("successor")
    if (successor is None or successor[0].state.value == "closed") and sa.state.value == "rekeying":
        sa.transition("rekey_failed")
        sa.rekey_queued = False
        sa.rekey_at = now + 2 + 8 * sa.endpoint._jitter()
    sa.emit(NegotiationFailed(sa.handle, sa.peer_name, notify_type, reason))


class _Followup:
    """An IKE rekey whose additional key exchanges are still running."""

    def __init__(self, spi: bytes, chosen: Any, ni: bytes, nr: bytes, shared: bytes) -> None:
        self.spi, self.chosen, self.ni, self.nr, self.shared = spi, chosen, ni, nr, shared
        self.pending: list[int] = []
        self.secrets: list[bytes] = []
        self.link = b""
        self.theirs_spi = chosen.spi


def _finish_initiator(sa: IkeSa, st: _Followup, now: float) -> None:
    new = make_rekeyed_sa(
        sa,
        True,
        st.spi,
        st.theirs_spi,
        st.chosen,
        st.ni,
        st.nr,
        st.shared,
        now,
        additional=st.secrets,
    )
    new.kick(now)


class FollowupKeTask(Task):
    """Initiator: one IKE_FOLLOWUP_KE exchange (RFC 9370 section 2.2.4)."""

    exchange = ExchangeType.IKE_FOLLOWUP_KE
    name = "ike_followup_ke"

    def __init__(self, state: _Followup) -> None:
        self.st = state

    def build(self, sa: IkeSa, now: float) -> list[Any] | None:
        self.group = self.st.pending[0]
        self.kx = ke_by_id(self.group).new()
        return [
            KePayload(self.group, self.kx.public_value()),
            notify(NotifyType.ADDITIONAL_KEY_EXCHANGE, self.st.link),
        ]

    def process(self, sa: IkeSa, msg: Message, now: float) -> None:
        ke = msg.find(KePayload)
        err = error_notify(msg)
        try:
            if err is not None or ke is None or ke.group != self.group:
                raise ProtocolError(
                    "IKE_FOLLOWUP_KE failed",
                    notify=err.notify_type if err else NotifyType.INVALID_SYNTAX,
                )
            self.st.secrets.append(self.kx.complete(ke.data))
        except ProtocolError as exc:
            _rekey_failed(sa, now, exc.notify or 0, str(exc))
            return
        self.st.pending.pop(0)
        sa.endpoint.stats["followup_ke_exchanges"] += 1
        if self.st.pending:
            link = get_notify(msg, NotifyType.ADDITIONAL_KEY_EXCHANGE)
            self.st.link = link.data if link is not None else self.st.link
            sa.queue(FollowupKeTask(self.st), now, first=True)
            return
        _finish_initiator(sa, self.st, now)

    def abort(self, sa: IkeSa, now: float) -> None:
        pass


def make_rekeyed_sa(
    old: IkeSa,
    initiator: bool,
    spi_ours: bytes,
    spi_theirs: bytes,
    chosen: Any,
    ni: bytes,
    nr: bytes,
    shared: bytes,
    now: float,
    additional: list[bytes] | tuple[bytes, ...] = (),
) -> IkeSa:
    """Create the successor IKE SA (RFC 7296 2.18) and move the Child SAs to it.

    ``additional``: shared secrets of IKE_FOLLOWUP_KE exchanges (RFC 9370 2.2.4)."""
    from pyipsec.ike.ike_sa import IkeSa

    assert old.keys is not None and old.chosen is not None and old.peer is not None
    spi_i, spi_r = (spi_ours, spi_theirs) if initiator else (spi_theirs, spi_ours)
    new = IkeSa(
        old.endpoint,
        old.handle,
        initiator,
        spi_i,
        spi_r,
        old.peer,
        old.local_addr,
        old.remote_addr,
        now,
    )
    enc_len, integ_len = child_key_sizes(chosen)
    keys = rekey_ike_keys(
        chosen.prf,
        old.keys.sk_d,
        shared,
        ni,
        nr,
        spi_i,
        spi_r,
        enc_len,
        integ_len,
        old_prf=old.chosen.prf,
        additional_shared_secrets=tuple(additional),
    )
    encr = chosen.encr
    new.chosen = chosen
    new.ni, new.nr = ni, nr
    new.set_keys(keys, lambda ek, ak: sk_cipher(encr[0], encr[1], chosen.integ, ek, ak))
    new.local_identity, new.remote_identity = old.local_identity, old.remote_identity
    new.peer_fragmentation, new.peer_hash_algs = old.peer_fragmentation, old.peer_hash_algs
    new.nat_local, new.nat_remote = old.nat_local, old.nat_remote
    new.transition("established_by_rekey")
    new.established_at = now
    new.rekey_at = now + old.peer.rekey_time - old.peer.jitter * old.endpoint._jitter()
    new.expire_at = now + old.peer.hard_life
    new.ctx["predecessor"] = old
    old.endpoint._register(new)
    old.endpoint.stats["ike_rekeys"] += 1
    _adopt(old, new, initiator, min(ni, nr), now)
    return new


def _move(src: IkeSa, dst: IkeSa) -> None:
    """Children and the handle go from ``src`` to ``dst`` (IkeSaRekeyed)."""
    for child in src.children:
        child.role = dst.role
    dst.children, src.children = dst.children + src.children, []
    src.endpoint._replace(src, dst)
    dst.emit(
        IkeSaRekeyed(src.handle, src.spi_i.hex(), src.spi_r.hex(), dst.spi_i.hex(), dst.spi_r.hex())
    )


def _delete_old(old: IkeSa, now: float) -> None:
    from pyipsec.ike.exchanges.informational import DeleteIkeTask

    if not old.ctx.get("delete_queued"):
        old.ctx["delete_queued"] = True
        old.queue(DeleteIkeTask(rekeyed=True), now)


#: seconds a redundant successor the peer initiated may wait for the peer's own Delete
REDUNDANT_WAIT = 10.0


def drop_redundant(old: IkeSa, now: float) -> None:
    """``old`` is going away: successors that lost a rekey collision and are still here
    go too. One we initiated is deleted now. One the peer initiated is the peer's to
    delete (RFC 7296 2.8.2), and its Delete is usually on the way: deleting it ourselves
    at the same moment would leave the peer's request unanswered (it retransmits to an
    SA we forgot), so it only expires after :data:`REDUNDANT_WAIT` seconds, for a peer
    that never saw our answer (e.g. ``old`` was deleted while its request was in flight)."""
    from pyipsec.ike.exchanges.informational import DeleteIkeTask

    keep = old.ctx.get("successor")
    for sa in old.ctx.get("successors", []):
        if (
            (keep is None or sa is not keep[0])
            and sa.state.value == "established"
            and not sa.children
            and not sa.ctx.get("delete_queued")
        ):
            old.endpoint.stats["redundant_ike_sas_deleted"] += 1
            if sa.initiator:
                sa.ctx["delete_queued"] = True
                sa.queue(DeleteIkeTask(rekeyed=True), now)
            else:
                sa.expire_at = min(sa.expire_at or now + REDUNDANT_WAIT, now + REDUNDANT_WAIT)


def _adopt(old: IkeSa, new: IkeSa, initiated: bool, nonce: bytes, now: float) -> None:
    """Make ``new`` the successor of ``old``; resolve simultaneous rekeys (RFC 7296 2.8.2):
    of two successors, the one whose exchange had the lowest nonce is redundant and is
    deleted by its initiator; the initiator of the survivor deletes the old IKE SA."""
    from pyipsec.ike.exchanges.informational import DeleteIkeTask

    old.ctx.setdefault("successors", []).append(new)
    rival = old.ctx.get("successor")
    if rival is None or rival[0].state.value == "closed":
        old.ctx["successor"] = (new, nonce, initiated)
        _move(old, new)
        if initiated:
            _delete_old(old, now)
        return
    old.endpoint.stats["ike_rekey_collisions"] += 1
    rival_sa, rival_nonce, rival_initiated = rival
    if nonce < rival_nonce:  # the new one is redundant
        loser, loser_ours, winner_ours = new, initiated, rival_initiated
    else:
        loser, loser_ours, winner_ours = rival_sa, rival_initiated, initiated
        old.ctx["successor"] = (new, nonce, initiated)
        _move(rival_sa, new)
    if loser_ours:
        loser.ctx["delete_queued"] = True
        loser.queue(DeleteIkeTask(rekeyed=True), now)
    if winner_ours:
        _delete_old(old, now)


def respond_rekey_ike(
    sa: IkeSa,
    msg: Message,
    props: list[Any],
    ni: bytes,
    nr: bytes,
    ke: KePayload | None,
    now: float,
) -> list[Any]:
    assert sa.peer is not None
    ours_running = sa.pending is not None and sa.pending.name in ("rekey_ike", "ike_followup_ke")
    if sa.state.value != "established" and not (
        sa.state.value == "rekeying" and (ours_running or sa.ctx.get("successor"))
    ):
        raise ProtocolError("IKE SA busy", notify=NotifyType.TEMPORARY_FAILURE)
    if ours_running and sa.pending is not None and sa.pending.name == "ike_followup_ke":
        raise ProtocolError("simultaneous hybrid rekey", notify=NotifyType.TEMPORARY_FAILURE)
    if ke is None:
        raise ProtocolError("IKE rekey without KE", notify=NotifyType.INVALID_SYNTAX)
    chosen = select_proposal(prefer_ke(sa.peer.proposals(), ke.group), props)
    if chosen.ke != ke.group:
        raise _InvalidKe(chosen.ke or 0)
    if len(chosen.spi) != 8:
        raise ProtocolError("bad IKE SPI", notify=NotifyType.INVALID_SYNTAX)
    value, shared = ke_by_id(ke.group).respond(ke.data)
    spi = sa.endpoint._new_ike_spi()
    sa.transition("recv_rekey_ike")
    payloads = [chosen_sa_payload(chosen, spi), NoncePayload(nr), KePayload(ke.group, value)]
    pending = [k for _, k in chosen.additional_kes()]
    if pending:  # RFC 9370 2.2.4: wait for the IKE_FOLLOWUP_KE exchanges
        st = _Followup(spi, chosen, ni, nr, shared)
        st.pending, st.link = pending, sa.rand(8)
        sa.ctx["followup"] = st
        return [*payloads, notify(NotifyType.ADDITIONAL_KEY_EXCHANGE, st.link)]
    sa.ctx["after_response"] = lambda t: make_rekeyed_sa(
        sa, False, spi, chosen.spi, chosen, ni, nr, shared, t
    )
    return payloads


def respond_followup(sa: IkeSa, msg: Message, now: float) -> list[Any] | None:
    """Responder side of IKE_FOLLOWUP_KE (RFC 9370 section 2.2.4)."""
    st: _Followup | None = sa.ctx.get("followup")
    link = get_notify(msg, NotifyType.ADDITIONAL_KEY_EXCHANGE)
    ke = msg.find(KePayload)
    if st is None or link is None or link.data != st.link:
        raise ProtocolError("unknown IKE_FOLLOWUP_KE", notify=NotifyType.STATE_NOT_FOUND)
    if ke is None or ke.group != st.pending[0]:
        raise ProtocolError("unexpected key exchange", notify=NotifyType.INVALID_SYNTAX)
    value, secret = ke_by_id(ke.group).respond(ke.data)
    st.secrets.append(secret)
    st.pending.pop(0)
    sa.endpoint.stats["followup_ke_exchanges"] += 1
    payloads: list[Any] = [KePayload(ke.group, value)]
    if st.pending:
        st.link = sa.rand(8)
        payloads.append(notify(NotifyType.ADDITIONAL_KEY_EXCHANGE, st.link))
        return payloads
    del sa.ctx["followup"]
    sa.ctx["after_response"] = lambda t: make_rekeyed_sa(
        sa,
        False,
        st.spi,
        st.theirs_spi,
        st.chosen,
        st.ni,
        st.nr,
        st.shared,
        t,
        additional=st.secrets,
    )
    return payloads
