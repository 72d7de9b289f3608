"""INFORMATIONAL (RFC 7296 section 1.4): Delete of Child SAs and IKE SAs, liveness checks,
error notifications.

* Child SA delete: the request names our inbound SPIs; the peer answers with its own inbound
  SPIs of the same pairs (1.4.1), and both sides remove the pairs.
* IKE SA delete: an empty answer, then both sides drop the IKE SA and its Child SAs.
* Liveness (DPD, 2.4): an empty request; no answer within the retransmission schedule means
  the peer is dead and everything is deleted.
* An INFORMATIONAL carrying AUTHENTICATION_FAILED from the initiator (2.21.2) tears down an
  IKE SA it refuses.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any

from pyipsec.errors import StateError
from pyipsec.ike.child_sa import ChildSa
from pyipsec.ike.exchanges import Task, has_notify
from pyipsec.ike.state import ChildState
from pyipsec.wire.iana import ExchangeType, NotifyType, ProtocolId
from pyipsec.wire.ike import DeletePayload, Message

if TYPE_CHECKING:
    from pyipsec.ike.ike_sa import IkeSa


def _reason(child: ChildSa, default: str) -> str:
    return "rekeyed" if child.replaced_by is not None else default


class DeleteChildTask(Task):
    """Delete Child SA pairs we hold (e.g. after rekeying them)."""

    exchange = ExchangeType.INFORMATIONAL
    name = "delete_child"

    def __init__(self, children: list[ChildSa]) -> None:
        self.children = children

    def build(self, sa: IkeSa, now: float) -> list[Any] | None:
        self.children = [
            c for c in self.children if c in sa.children and c.state != ChildState.DELETING
        ]
        if not self.children:
            return None
        sa.transition("delete_child")
        by_proto: dict[int, list[bytes]] = {}
        for c in self.children:
            c.transition("delete")
            proto = ProtocolId.AH if c.protocol == "ah" else ProtocolId.ESP
            by_proto.setdefault(proto, []).append(struct.pack("!I", c.inbound_spi))
        return [DeletePayload(p, 4, spis) for p, spis in by_proto.items()]

    def process(self, sa: IkeSa, msg: Message, now: float) -> None:
        for c in self.children:
            sa.remove_child(c, _reason(c, "deleted"))

    def abort(self, sa: IkeSa, now: float) -> None:
        pass


class DeleteSpisTask(Task):
    """Tell the peer about Child SAs already removed here (hard lifetime reached)."""

    exchange = ExchangeType.INFORMATIONAL
    name = "delete_spis"

    def __init__(self, protocol: int, spis: list[int]) -> None:
        self.protocol = protocol
        self.spis = spis

    def build(self, sa: IkeSa, now: float) -> list[Any] | None:
        if sa.state.value not in ("established", "rekeying"):
            return None
        sa.endpoint.stats["expiry_deletes"] += 1
        return [DeletePayload(self.protocol, 4, [struct.pack("!I", s) for s in self.spis])]

    def process(self, sa: IkeSa, msg: Message, now: float) -> None:
        pass


class DeleteIkeTask(Task):
    """Delete this IKE SA (``rekeyed``: it was replaced by a new one, no IkeSaDown)."""

    exchange = ExchangeType.INFORMATIONAL
    name = "delete_ike"

    def __init__(self, rekeyed: bool = False) -> None:
        self.rekeyed = rekeyed

    def build(self, sa: IkeSa, now: float) -> list[Any] | None:
        sa.transition("delete_ike")
        return [DeletePayload(ProtocolId.IKE, 0, [])]

    def process(self, sa: IkeSa, msg: Message, now: float) -> None:
        sa.close("deleted", now, children_reason="deleted")

    def abort(self, sa: IkeSa, now: float) -> None:
        pass


class DpdTask(Task):
    """Liveness check: an empty INFORMATIONAL request."""

    exchange = ExchangeType.INFORMATIONAL
    name = "dpd"

    def build(self, sa: IkeSa, now: float) -> list[Any] | None:
        if sa.state.value not in ("established", "rekeying"):
            return None
        sa.transition("dpd")
        sa.endpoint.stats["dpd_sent"] += 1
        return []

    def process(self, sa: IkeSa, msg: Message, now: float) -> None:
        sa.dpd_queued = False


def respond(sa: IkeSa, msg: Message, now: float) -> list[Any] | None:
    """Responder side of INFORMATIONAL."""
    if has_notify(msg, NotifyType.AUTHENTICATION_FAILED):
        from pyipsec.ike.exchanges.ike_auth import auth_failed_notification

        sa.ctx["after_response"] = lambda t: auth_failed_notification(sa, t)
        return []
    sa.transition("recv_informational")
    deletes = msg.find_all(DeletePayload)
    if any(d.protocol_id == ProtocolId.IKE for d in deletes):
        if not sa.allows("recv_delete_ike"):
            raise StateError(role=sa.role, state=sa.state.value, event="recv_delete_ike")
        # the SA goes to CLOSED once the (empty) answer is out
        sa.ctx["after_response"] = lambda t: sa.close(
            "deleted by peer", t, children_reason="deleted by peer"
        )
        return []
    out: dict[int, list[bytes]] = {}
    for d in deletes:
        if d.protocol_id not in (ProtocolId.ESP, ProtocolId.AH) or d.spi_size != 4:
            continue
        for raw in d.spis:
            (spi,) = struct.unpack("!I", raw)
            child = sa.child_by_outbound(spi)
            if child is None:
                continue  # unknown SPI: nothing to answer for it (RFC 7296 1.4.1)
            out.setdefault(d.protocol_id, []).append(struct.pack("!I", child.inbound_spi))
            sa.remove_child(child, _reason(child, "deleted by peer"))
    return [DeletePayload(p, 4, spis) for p, spis in out.items()]
