"""IKE_INTERMEDIATE carrying additional key exchanges (RFC 9242, RFC 9370 section 2.2.2).

After IKE_SA_INIT, one IKE_INTERMEDIATE exchange per negotiated ADDKEn transform: the
initiator sends KE(ADDKEn group; for ML-KEM the encapsulation key), the responder answers
KE(its share; for ML-KEM the ciphertext). Both sides then update all SK_* keys:
SKEYSEED(n) = prf(SK_d(n-1), SK(n) | Ni | Nr). Each exchange's messages are bound into the
IKE_AUTH signature through the IntAuth chain (RFC 9242 section 3.3.2):
IntAuth_i(n) = prf(SK_pi(n), IntAuth_i(n-1) | A | P), where A is the IKE header and the
SK payload header and P the plaintext inner payloads, with lengths counted as if IV,
padding and ICV were absent; computed with the keys that protect that exchange.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pyipsec.crypto.ike_keys import update_ike_keys_intermediate
from pyipsec.crypto.ke import ke_by_id
from pyipsec.crypto.prf import Prf
from pyipsec.errors import ProtocolError
from pyipsec.ike.events import NegotiationFailed
from pyipsec.ike.exchanges import Task, error_notify
from pyipsec.ike.proposals import child_key_sizes
from pyipsec.wire.iana import ExchangeType, NotifyType, PayloadType
from pyipsec.wire.ike import IKE_HEADER_SIZE, IkeHeader, KePayload, Message, push_header
from pyipsec.wire.ike.header import FLAG_INITIATOR, FLAG_RESPONSE, push_generic_header
from pyipsec.wire.ike.payloads import push_payload_chain

if TYPE_CHECKING:
    from pyipsec.ike.ike_sa import IkeSa


def int_auth_octets(sa: IkeSa, flags: int, message_id: int, payloads: list[Any]) -> bytes:
    """A | P of one IKE_INTERMEDIATE message (RFC 9242 section 3.3.2)."""
    inner = push_payload_chain(payloads)
    first = payloads[0].payload_type if payloads else PayloadType.NONE
    length = IKE_HEADER_SIZE + 4 + len(inner)
    header = IkeHeader(
        sa.spi_i,
        sa.spi_r,
        PayloadType.SK,
        2,
        0,
        ExchangeType.IKE_INTERMEDIATE,
        flags,
        message_id,
        length,
    )
    return push_header(header) + push_generic_header(first, len(inner)) + inner


def _chain(sa: IkeSa, from_initiator: bool, flags: int, mid: int, payloads: list[Any]) -> None:
    assert sa.keys is not None and sa.chosen is not None
    prf = Prf.from_id(sa.chosen.prf)
    octets = int_auth_octets(sa, flags, mid, payloads)
    if from_initiator:
        sa.int_auth_i = prf.prf(sa.keys.sk_pi, sa.int_auth_i + octets)
    else:
        sa.int_auth_r = prf.prf(sa.keys.sk_pr, sa.int_auth_r + octets)
    sa.ctx["intermediate"] = True
    if from_initiator:
        sa.endpoint.stats["intermediate_exchanges"] += 1


def _update_keys(sa: IkeSa, shared: bytes) -> None:
    from pyipsec.crypto.ike_ciphers import sk_cipher

    assert sa.keys is not None and sa.chosen is not None
    enc_len, integ_len = child_key_sizes(sa.chosen)
    keys = update_ike_keys_intermediate(
        sa.chosen.prf, sa.keys, shared, sa.ni, sa.nr, sa.spi_i, sa.spi_r, enc_len, integ_len
    )
    encr = sa.chosen.encr
    assert encr is not None
    integ = sa.chosen.integ
    sa.set_keys(keys, lambda ek, ak: sk_cipher(encr[0], encr[1], integ, ek, ak))


class IntermediateTask(Task):
    """Initiator: one additional key exchange."""

    exchange = ExchangeType.IKE_INTERMEDIATE
    name = "ike_intermediate"

    def __init__(self, transform_type: int, ke_id: int) -> None:
        self.transform_type = transform_type
        self.ke_id = ke_id
        self.kx: Any = None

    def build(self, sa: IkeSa, now: float) -> list[Any]:
        sa.transition("send_intermediate")
        self.kx = ke_by_id(self.ke_id).new()
        payloads = [KePayload(self.ke_id, self.kx.public_value())]
        _chain(sa, True, FLAG_INITIATOR, sa.next_request_id, payloads)
        return payloads

    def process(self, sa: IkeSa, msg: Message, now: float) -> None:
        try:
            err = error_notify(msg)
            if err is not None:
                raise ProtocolError(
                    f"peer refused IKE_INTERMEDIATE: {err.notify_type}", notify=err.notify_type
                )
            ke = msg.find(KePayload)
            if ke is None or ke.group != self.ke_id:
                raise ProtocolError(
                    "IKE_INTERMEDIATE response without matching KE",
                    notify=NotifyType.INVALID_SYNTAX,
                )
            _chain(sa, False, FLAG_RESPONSE, msg.message_id, list(msg.payloads))
            shared = self.kx.complete(ke.data)
            _update_keys(sa, shared)
        except ProtocolError as exc:
            sa.emit(NegotiationFailed(sa.handle, sa.peer_name, exc.notify or 0, str(exc)))
            sa.close("failed", now)


def respond(sa: IkeSa, msg: Message, now: float) -> list[Any] | None:
    """Responder: answer the next additional key exchange."""
    sa.transition("recv_intermediate_request")
    assert sa.chosen is not None
    pending = sa.chosen.additional_kes()
    index = sa.ctx.get("addke_index", 0)
    ke = msg.find(KePayload)
    if index >= len(pending) or ke is None or ke.group != pending[index][1]:
        raise ProtocolError(
            "unexpected IKE_INTERMEDIATE key exchange", notify=NotifyType.INVALID_SYNTAX
        )
    _chain(sa, True, FLAG_INITIATOR, msg.message_id, list(msg.payloads))
    value, shared = ke_by_id(ke.group).respond(ke.data)
    payloads = [KePayload(ke.group, value)]
    _chain(sa, False, FLAG_RESPONSE, msg.message_id, payloads)
    sa.ctx["addke_index"] = index + 1
    sa.ctx["after_response"] = lambda _now: _update_keys(sa, shared)
    return payloads
