"""IKE_AUTH (RFC 7296 section 1.2): identities, authentication, the first Child SA.

Initiator sends IDi, [CERT], [CERTREQ], [IDr], AUTH, [N(INITIAL_CONTACT)], SA, TSi, TSr,
[N(USE_TRANSPORT_MODE)]; the responder verifies, answers IDr, [CERT], AUTH and the Child SA
(or an error notify for the Child SA only: the IKE SA still comes up, RFC 7296 2.21.1).
A failed authentication yields AUTHENTICATION_FAILED on both sides and nothing installed:
the responder answers only that notify; an initiator that rejects the responder sends an
INFORMATIONAL AUTHENTICATION_FAILED notification and drops the SA.

Several authentication methods (PeerConfig.auth_alternatives): the responder verifies with
the pair matching the AUTH payload's method and answers with that pair's local method
(pyipsec.ike.auth.verify_initiator); an initiator whose authentication failed (rejected,
or the responder's AUTH did not verify) starts over with a new IKE SA and the next pair
(PeerConfig.next_auth), until the last one failed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pyipsec.errors import ProtocolError
from pyipsec.ike.auth import (
    auth_pair,
    certreq_payloads,
    local_auth_payloads,
    verify_initiator,
    verify_peer,
)
from pyipsec.ike.events import AuthenticationFailed, IkeSaUp, NegotiationFailed
from pyipsec.ike.exchanges import Task, error_notify, has_notify, notify
from pyipsec.ike.exchanges.create_child_sa import (
    ChildRequest,
    complete_initiator_child,
    respond_child,
)
from pyipsec.ike.proposals import describe
from pyipsec.wire.iana import ExchangeType, NotifyType
from pyipsec.wire.ike import AuthPayload, CertPayload, IdPayload, Message, SaPayload

if TYPE_CHECKING:
    from pyipsec.ike.ike_sa import IkeSa


def established(sa: IkeSa, now: float) -> None:
    """Bookkeeping shared by both roles once IKE_AUTH succeeded."""
    assert sa.peer is not None
    sa.established_at = now
    sa.half_open_deadline = None
    jitter = sa.peer.jitter * sa.endpoint._jitter()
    sa.rekey_at = now + sa.peer.rekey_time - jitter
    sa.expire_at = now + sa.peer.hard_life
    sa.endpoint._established(sa)
    sa.emit(
        IkeSaUp(
            sa.handle,
            sa.peer.name,
            sa.local_identity,
            sa.remote_identity,
            sa.local_addr,
            sa.remote_addr,
            sa.initiator,
            sa.spi_i.hex(),
            sa.spi_r.hex(),
            describe(sa.chosen) if sa.chosen else "",
            auth_pair(sa)[0].method,
        )
    )


def _split(
    msg: Message, initiator_ids: bool
) -> tuple[IdPayload | None, list[CertPayload], AuthPayload | None]:
    ids = [p for p in msg.find_all(IdPayload) if p.initiator == initiator_ids]
    return (ids[0] if ids else None), msg.find_all(CertPayload), msg.find(AuthPayload)


class IkeAuthTask(Task):
    """Initiator side of IKE_AUTH."""

    exchange = ExchangeType.IKE_AUTH
    name = "ike_auth"

    def __init__(self) -> None:
        self.child: ChildRequest | None = None

    def build(self, sa: IkeSa, now: float) -> list[Any]:
        assert sa.peer is not None
        sa.transition("send_auth")
        sa.ctx["auth_mid"] = sa.next_request_id
        idp, certs, auth = local_auth_payloads(sa, True)
        payloads: list[Any] = [idp, *certs, *certreq_payloads(auth_pair(sa)[1])]
        if sa.peer.remote_id:
            from pyipsec.ike.config import Identity

            want = Identity.parse(sa.peer.remote_id)
            payloads.append(IdPayload(want.id_type, want.data, False))
        payloads.append(auth)
        if sa.peer.send_initial_contact and sa.endpoint._first_contact(sa):
            payloads.append(notify(NotifyType.INITIAL_CONTACT))
        cfg = sa.ctx.pop("first_child", None)
        if cfg is not None:
            self.child = ChildRequest(sa, cfg, sa.ni, pfs=False)
            payloads += self.child.payloads()
        return payloads

    def process(self, sa: IkeSa, msg: Message, now: float) -> None:
        err = error_notify(msg)
        idp, certs, auth = _split(msg, False)
        try:
            if err is not None and err.notify_type == NotifyType.AUTHENTICATION_FAILED:
                raise ProtocolError(
                    "peer rejected our authentication", notify=NotifyType.AUTHENTICATION_FAILED
                )
            if idp is None or auth is None:
                code = err.notify_type if err is not None else NotifyType.INVALID_SYNTAX
                raise ProtocolError(f"IKE_AUTH failed (notify {code})", notify=code)
            sa.remote_identity = verify_peer(sa, idp, certs, auth, now)
        except ProtocolError as exc:
            if self.child is not None:
                self.child.release()
            retry = 0
            if exc.notify == NotifyType.AUTHENTICATION_FAILED:
                sa.endpoint.stats["auth_failures"] += 1
                reason, retry = self.retry(sa, str(exc), now)
                sa.emit(
                    AuthenticationFailed(sa.handle, sa.peer_name, sa.remote_addr, reason, retry)
                )
                if idp is not None:  # they accepted us, we reject them: tell them
                    sa.send_oneway(
                        ExchangeType.INFORMATIONAL, [notify(NotifyType.AUTHENTICATION_FAILED)]
                    )
            else:
                sa.emit(NegotiationFailed(sa.handle, sa.peer_name, exc.notify or 0, str(exc)))
            sa.close("failed", now, event=not retry)
            return
        sa.transition("recv_auth_response")
        established(sa, now)
        if self.child is not None:
            if msg.find(SaPayload) is None:
                self.child.release()
                code = err.notify_type if err is not None else NotifyType.NO_PROPOSAL_CHOSEN
                sa.emit(
                    NegotiationFailed(
                        sa.handle, sa.peer_name, code, "first Child SA refused", self.child.cfg.name
                    )
                )
            else:
                complete_initiator_child(sa, self.child, msg, sa.nr, None, now)
        sa.endpoint._start_children(sa, now)

    def retry(self, sa: IkeSa, reason: str, now: float) -> tuple[str, int]:
        """After a failed authentication: start over with the peer's next authentication
        pair (a new IKE SA, the same first Child SA). Returns the failure's reason (saying
        what comes next) and the new SA's handle (0: no pair left)."""
        assert sa.peer is not None
        following = sa.peer.next_auth()
        if following is None:
            return reason, 0
        child = self.child.cfg if self.child is not None else None
        handle = sa.endpoint.initiate(following, child, now)
        sa.endpoint.stats["auth_retries"] += 1
        return (
            f"{reason}; trying the next authentication method ({following.local_auth.method})",
            handle,
        )

    def abort(self, sa: IkeSa, now: float) -> None:
        if self.child is not None:
            self.child.release()


def _select_peer_by_identity(sa: IkeSa, idp: IdPayload) -> None:
    """Several configured peers may match the address (e.g. %any): switch to the first one
    whose remote_id equals IDi and whose IKE proposals cover what IKE_SA_INIT chose."""
    from pyipsec.ike.config import Identity
    from pyipsec.ike.proposals import check_chosen

    def matches(peer: Any) -> bool:
        if peer.remote_id is None:
            return False
        want = Identity.parse(peer.remote_id)
        return want.matches(idp.id_type, idp.data)

    if sa.peer is None or matches(sa.peer) or sa.chosen is None:
        return
    for peer in sa.endpoint.config.peers:
        if peer is sa.peer or not peer.matches_addr(sa.remote_addr[0]) or not matches(peer):
            continue
        try:
            check_chosen(peer.proposals(), sa.chosen)
        except ProtocolError:
            continue
        sa.peer = peer
        return


def respond(sa: IkeSa, msg: Message, now: float) -> list[Any] | None:
    """Responder side of IKE_AUTH."""
    if not sa.allows("recv_auth_request"):
        from pyipsec.errors import StateError

        raise StateError(role=sa.role, state=sa.state.value, event="recv_auth_request")
    idp, certs, auth = _split(msg, True)
    if idp is None or auth is None:
        raise ProtocolError("IKE_AUTH without IDi or AUTH", notify=NotifyType.INVALID_SYNTAX)
    sa.ctx["auth_mid"] = msg.message_id
    _select_peer_by_identity(sa, idp)
    try:
        sa.remote_identity = verify_initiator(sa, idp, certs, auth, now)
    except ProtocolError as exc:
        sa.endpoint.stats["auth_failures"] += 1
        sa.emit(AuthenticationFailed(sa.handle, sa.peer_name, sa.remote_addr, str(exc)))
        sa.ctx["after_response"] = lambda t: sa.close("failed", t, event=False)
        return [notify(NotifyType.AUTHENTICATION_FAILED)]
    own_id, own_certs, own_auth = local_auth_payloads(sa, False)
    payloads: list[Any] = [own_id, *own_certs, own_auth]
    sa.transition("recv_auth_request")
    if has_notify(msg, NotifyType.INITIAL_CONTACT):
        sa.endpoint._initial_contact(sa, now)
    established(sa, now)
    if msg.find(SaPayload) is not None:
        try:
            payloads += respond_child(sa, msg, sa.ni, sa.nr, now, pfs=False)
        except ProtocolError as exc:
            code = exc.notify or NotifyType.NO_PROPOSAL_CHOSEN
            sa.emit(NegotiationFailed(sa.handle, sa.peer_name, code, str(exc)))
            payloads.append(notify(code))
    return payloads


def auth_failed_notification(sa: IkeSa, now: float) -> None:
    """The initiator told us it rejects our AUTH: drop the SA."""
    sa.endpoint.stats["auth_failures"] += 1
    sa.emit(
        AuthenticationFailed(
            sa.handle, sa.peer_name, sa.remote_addr, "peer rejected our authentication"
        )
    )
    sa.close("failed", now)
