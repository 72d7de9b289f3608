"""IKEv2 exchanges as small tasks, the way strongSwan's libcharon composes them.

An initiator-side exchange is a :class:`Task`: ``build`` returns the request payloads,
``process`` consumes the response, ``abort`` runs when the peer never answered. The
responder side of each exchange is a function ``respond(sa, msg, now) -> payloads`` in the
exchange's module. The IKE SA (pyipsec.ike.ike_sa) owns message IDs, the window of one,
retransmission and encryption; tasks only deal with payloads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pyipsec.wire.ike import NotifyPayload

if TYPE_CHECKING:
    from pyipsec.ike.ike_sa import IkeSa
    from pyipsec.wire.ike import Message


class Task:
    """One request/response exchange we initiate."""

    exchange: int = 0
    name: str = "task"

    def build(self, sa: IkeSa, now: float) -> list[Any] | None:
        """Request payloads, or None to skip the task (no longer needed)."""
        raise NotImplementedError

    def process(self, sa: IkeSa, msg: Message, now: float) -> None:
        """Handle the (decrypted, authenticated) response."""
        raise NotImplementedError

    def abort(self, sa: IkeSa, now: float) -> None:
        """The request was never answered (the IKE SA is going down)."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__}>"


def notify(notify_type: int, data: bytes = b"", protocol_id: int = 0, spi: bytes = b"") -> Any:
    """A Notify payload."""
    return NotifyPayload(protocol_id=protocol_id, spi=spi, notify_type=notify_type, data=data)


def error_notify(msg: Message) -> NotifyPayload | None:
    """The first error Notify (type < 16384) of a message, if any."""
    for n in msg.notifies():
        if n.notify_type < 16384:
            return n
    return None


def has_notify(msg: Message, notify_type: int) -> bool:
    return next(msg.notifies(notify_type), None) is not None


def get_notify(msg: Message, notify_type: int) -> NotifyPayload | None:
    return next(msg.notifies(notify_type), None)
