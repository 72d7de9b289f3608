"""IKE_SA_INIT (RFC 7296 section 1.2): proposals, key exchange, nonces, and the notifies
that ride on it: COOKIE (2.6), INVALID_KE_PAYLOAD (1.2), NAT_DETECTION_*_IP (2.23),
IKEV2_FRAGMENTATION_SUPPORTED (RFC 7383), SIGNATURE_HASH_ALGORITHMS (RFC 7427),
INTERMEDIATE_EXCHANGE_SUPPORTED (RFC 9242).

The initiator side is :class:`IkeSaInitTask`; the responder side is :func:`respond`, called
by the endpoint for a new request (the responder keeps no state before it decides to answer
with its own SA, KE and nonce: cookie and INVALID_KE answers are stateless).
"""

from __future__ import annotations

import functools
import ipaddress
import struct
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives import hashes

from pyipsec.crypto.ike_ciphers import sk_cipher
from pyipsec.crypto.ike_keys import derive_ike_keys
from pyipsec.crypto.ke import ke_by_id
from pyipsec.errors import ProtocolError, PyipsecError
from pyipsec.ike.events import NegotiationFailed
from pyipsec.ike.exchanges import Task, error_notify, get_notify, has_notify, notify
from pyipsec.ike.proposals import (
    Chosen,
    check_chosen,
    child_key_sizes,
    chosen_from_response,
    chosen_sa_payload,
    from_sa_payload,
    prefer_ke,
    select_proposal,
    to_sa_payload,
)
from pyipsec.wire.iana import ExchangeType, HashAlgorithm, NotifyType, TransformType
from pyipsec.wire.ike import KePayload, Message, NoncePayload, SaPayload, push_message
from pyipsec.wire.ike.header import FLAG_RESPONSE

if TYPE_CHECKING:
    from pyipsec.ike.endpoint import IkeEndpoint
    from pyipsec.ike.ike_sa import IkeSa

NONCE_SIZE = 32
MAX_RETRIES = 3  # COOKIE / INVALID_KE_PAYLOAD round trips before giving up
HASH_ALGS = (
    HashAlgorithm.SHA2_256,
    HashAlgorithm.SHA2_384,
    HashAlgorithm.SHA2_512,
    HashAlgorithm.IDENTITY,
)


def nat_hash(spi_i: bytes, spi_r: bytes, addr: tuple[str, int]) -> bytes:
    """SHA-1(SPIi | SPIr | IP | Port) (RFC 7296 section 2.23)."""
    h = hashes.Hash(hashes.SHA1())  # noqa: S303 - mandated by RFC 7296 2.23
    h.update(spi_i + spi_r + _packed(addr[0]) + struct.pack("!H", addr[1]))
    return h.finalize()


@functools.lru_cache(maxsize=4096)
def _packed(ip: str) -> bytes:
    return ipaddress.ip_address(ip).packed


def _forced_encap(sa: IkeSa) -> bool:
    return sa.peer is not None and sa.peer.force_encap


def common_notifies(sa: IkeSa, spi_r: bytes, want_intermediate: bool) -> list[Any]:
    """NAT-D, fragmentation, signature hash and intermediate support notifies.

    Without a known own address (wildcard socket, nothing configured) no source hash is
    sent: a wrong one would make the peer believe we are behind a NAT."""
    out = []
    if _forced_encap(sa):
        # RFC 7296 2.23 lets a host pretend to be behind a NAT: a source hash that cannot
        # match makes both sides float to port 4500 and put ESP in UDP (strongSwan's
        # encap=yes), for paths that only let UDP through.
        out.append(notify(NotifyType.NAT_DETECTION_SOURCE_IP, sa.endpoint._randbytes(20)))
        sa.nat_local = True
    elif sa.local_addr[0] not in ("0.0.0.0", "::"):
        src = nat_hash(sa.spi_i, spi_r, sa.local_addr)
        out.append(notify(NotifyType.NAT_DETECTION_SOURCE_IP, src))
    out.append(
        notify(NotifyType.NAT_DETECTION_DESTINATION_IP, nat_hash(sa.spi_i, spi_r, sa.remote_addr))
    )
    if sa.peer is not None and sa.peer.fragment_size:
        out.append(notify(NotifyType.IKEV2_FRAGMENTATION_SUPPORTED))
    out.append(
        notify(
            NotifyType.SIGNATURE_HASH_ALGORITHMS, b"".join(struct.pack("!H", h) for h in HASH_ALGS)
        )
    )
    if want_intermediate:
        out.append(notify(NotifyType.INTERMEDIATE_EXCHANGE_SUPPORTED))
    return out


def _peer_features(sa: IkeSa, msg: Message) -> None:
    """Record what the peer announced; detect NATs on both sides."""
    ours = sa.peer is not None and bool(sa.peer.fragment_size)
    sa.peer_fragmentation = ours and has_notify(msg, NotifyType.IKEV2_FRAGMENTATION_SUPPORTED)
    sig = get_notify(msg, NotifyType.SIGNATURE_HASH_ALGORITHMS)
    if sig is not None:
        data = sig.data[: len(sig.data) // 2 * 2]
        sa.peer_hash_algs = tuple(struct.unpack(f"!{len(data) // 2}H", data))
    src = [n.data for n in msg.notifies(NotifyType.NAT_DETECTION_SOURCE_IP)]
    dst = [n.data for n in msg.notifies(NotifyType.NAT_DETECTION_DESTINATION_IP)]
    spi_r = b"\0" * 8 if not sa.initiator else sa.spi_r
    if src:
        sa.nat_remote = nat_hash(sa.spi_i, spi_r, sa.remote_addr) not in src
    if _forced_encap(sa):
        sa.nat_local = True
    elif dst:
        if sa.local_addr[0] not in ("0.0.0.0", "::"):  # unknown own address: cannot tell
            sa.nat_local = nat_hash(sa.spi_i, spi_r, sa.local_addr) not in dst


def install_keys(sa: IkeSa, chosen: Chosen, shared_secret: bytes) -> None:
    """Derive SKEYSEED and SK_* (RFC 7296 2.14) and build both SK ciphers."""
    enc_len, integ_len = child_key_sizes(chosen)
    keys = derive_ike_keys(
        chosen.prf, sa.ni, sa.nr, shared_secret, sa.spi_i, sa.spi_r, enc_len, integ_len
    )
    encr = chosen.encr
    assert encr is not None
    sa.set_keys(keys, lambda ek, ak: sk_cipher(encr[0], encr[1], chosen.integ, ek, ak))


class IkeSaInitTask(Task):
    """Initiator: send SA, KE, Ni (+ COOKIE when asked), process the responder's answer."""

    exchange = ExchangeType.IKE_SA_INIT
    name = "ike_sa_init"

    def __init__(self, ke_id: int, cookie: bytes = b"", retries: int = 0) -> None:
        self.ke_id = ke_id
        self.cookie = cookie
        self.retries = retries
        self.kx: Any = None

    def build(self, sa: IkeSa, now: float) -> list[Any]:
        assert sa.peer is not None
        specs = sa.peer.proposals()
        if not sa.ni:
            sa.ni = sa.rand(NONCE_SIZE)
        if self.kx is None:  # a COOKIE retry keeps every other payload unchanged (2.6)
            self.kx = ke_by_id(self.ke_id).new()
        payloads: list[Any] = []
        if self.cookie:
            payloads.append(notify(NotifyType.COOKIE, self.cookie))
        payloads += [
            to_sa_payload(prefer_ke(specs, self.ke_id)),
            KePayload(self.ke_id, self.kx.public_value()),
            NoncePayload(sa.ni),
        ]
        want_int = any(s.algs(TransformType.ADDKE1) for s in specs)
        payloads += common_notifies(sa, b"\0" * 8, want_int)
        return payloads

    def _retry(self, sa: IkeSa, now: float, ke_id: int, cookie: bytes) -> None:
        sa.transition("retry_init")
        task = IkeSaInitTask(ke_id, cookie, self.retries + 1)
        if ke_id == self.ke_id:
            task.kx = self.kx
        sa.send_request(task, task.build(sa, now), now, message_id=0)

    def process(self, sa: IkeSa, msg: Message, now: float) -> None:
        try:
            self._process(sa, msg, now)
        except ProtocolError as exc:
            sa.emit(NegotiationFailed(sa.handle, sa.peer_name, exc.notify or 0, str(exc)))
            sa.close("failed", now)

    def _process(self, sa: IkeSa, msg: Message, now: float) -> None:
        assert sa.peer is not None
        cookie = get_notify(msg, NotifyType.COOKIE)
        if cookie is not None:
            if self.retries >= MAX_RETRIES or not 1 <= len(cookie.data) <= 64:
                raise ProtocolError("cookie exchange did not converge", notify=NotifyType.COOKIE)
            sa.endpoint.stats["cookie_retries"] += 1
            self._retry(sa, now, self.ke_id, cookie.data)
            return
        invalid_ke = get_notify(msg, NotifyType.INVALID_KE_PAYLOAD)
        if invalid_ke is not None:
            group = struct.unpack("!H", invalid_ke.data)[0] if len(invalid_ke.data) == 2 else 0
            acceptable = {i for s in sa.peer.proposals() for i, _ in s.algs(TransformType.KE)}
            if group not in acceptable or group == self.ke_id or self.retries >= MAX_RETRIES:
                raise ProtocolError(
                    f"peer requests unacceptable group {group}",
                    notify=NotifyType.INVALID_KE_PAYLOAD,
                )
            sa.endpoint.stats["invalid_ke_retries"] += 1
            self._retry(sa, now, group, self.cookie)
            return
        err = error_notify(msg)
        if err is not None:
            raise ProtocolError(
                f"peer refused IKE_SA_INIT: notify {err.notify_type}", notify=err.notify_type
            )
        sa_p, ke, nonce = msg.find(SaPayload), msg.find(KePayload), msg.find(NoncePayload)
        if sa_p is None or ke is None or nonce is None:
            raise ProtocolError(
                "IKE_SA_INIT response lacks SA, KE or Nonce", notify=NotifyType.INVALID_SYNTAX
            )
        if not 16 <= len(nonce.data) <= 256 or msg.spi_r == b"\0" * 8:
            raise ProtocolError("bad nonce or responder SPI", notify=NotifyType.INVALID_SYNTAX)
        chosen = chosen_from_response(sa_p)
        check_chosen(sa.peer.proposals(), chosen)
        if chosen.ke != self.ke_id or ke.group != self.ke_id:
            raise ProtocolError(
                "responder chose another KE group", notify=NotifyType.INVALID_KE_PAYLOAD
            )
        if chosen.additional_kes() and not has_notify(
            msg, NotifyType.INTERMEDIATE_EXCHANGE_SUPPORTED
        ):  # RFC 9370 2.2.1: additional key exchanges need IKE_INTERMEDIATE
            raise ProtocolError(
                "ADDKE chosen without IKE_INTERMEDIATE support", notify=NotifyType.INVALID_SYNTAX
            )
        shared = self.kx.complete(ke.data)
        sa.spi_r = msg.spi_r
        sa.nr = nonce.data
        sa.chosen = chosen
        sa.init_request = sa.ctx.pop("last_request")
        sa.init_response = sa.ctx.pop("raw_message")
        install_keys(sa, chosen, shared)
        _peer_features(sa, msg)
        if (sa.nat_local or sa.nat_remote) and sa.remote_addr[1] == 500:
            # RFC 7296 2.23: float to port 4500 from IKE_AUTH on
            sa.remote_addr = (sa.remote_addr[0], 4500)
            sa.local_addr = (sa.local_addr[0], 4500)
            sa.endpoint.stats["nat_t_float"] += 1
        sa.transition("recv_init_response")
        from pyipsec.ike.exchanges.ike_auth import IkeAuthTask
        from pyipsec.ike.exchanges.ike_intermediate import IntermediateTask

        tasks: list[Task] = [IntermediateTask(t, k) for t, k in chosen.additional_kes()]
        tasks.append(IkeAuthTask())
        sa.tasks.extendleft(reversed(tasks))  # started by the caller's kick()


def plain_reply_to(
    endpoint: IkeEndpoint, header: Any, addr: tuple[str, int], payloads: list[Any]
) -> None:
    """A stateless answer to an IKE_SA_INIT request whose payloads could not be read."""
    reply = Message(header.spi_i, b"\0" * 8, ExchangeType.IKE_SA_INIT, FLAG_RESPONSE, 0, payloads)
    endpoint._send(push_message(reply), addr)


def _plain_reply(
    endpoint: IkeEndpoint, msg: Message, addr: tuple[str, int], payloads: list[Any]
) -> None:
    """A stateless IKE_SA_INIT answer (error or COOKIE request)."""
    reply = Message(msg.spi_i, b"\0" * 8, ExchangeType.IKE_SA_INIT, FLAG_RESPONSE, 0, payloads)
    endpoint._send(push_message(reply), addr)


def respond(
    endpoint: IkeEndpoint,
    data: bytes,
    msg: Message,
    addr: tuple[str, int],
    local: tuple[str, int],
    now: float,
) -> IkeSa | None:
    """Responder: answer a new IKE_SA_INIT request; returns the new half-open IKE SA."""
    from pyipsec.ike.ike_sa import IkeSa

    stats = endpoint.stats
    sa_p, ke, nonce = msg.find(SaPayload), msg.find(KePayload), msg.find(NoncePayload)
    if sa_p is None or ke is None or nonce is None or not 16 <= len(nonce.data) <= 256:
        stats["malformed"] += 1
        _plain_reply(endpoint, msg, addr, [notify(NotifyType.INVALID_SYNTAX)])
        return None
    if len(endpoint._by_handle) >= endpoint.config.max_ike_sas:
        stats["too_many_ike_sas"] += 1
        _plain_reply(endpoint, msg, addr, [notify(NotifyType.TEMPORARY_FAILURE)])
        return None
    if len(endpoint._half_open) >= endpoint.config.cookie_threshold:
        cookie = get_notify(msg, NotifyType.COOKIE)
        jar = endpoint.cookies
        if cookie is None or not jar.verify(cookie.data, nonce.data, addr[0], msg.spi_i, now):
            stats["cookies_sent"] += 1
            token = jar.make(nonce.data, addr[0], msg.spi_i, now)
            _plain_reply(endpoint, msg, addr, [notify(NotifyType.COOKIE, token)])
            return None
    candidates = [p for p in endpoint.config.peers if p.matches_addr(addr[0])]
    theirs = from_sa_payload(sa_p)
    chosen = peer = None
    for cand in candidates:
        try:
            chosen = select_proposal(prefer_ke(cand.proposals(), ke.group), theirs)
        except ProtocolError:
            continue
        peer = cand
        break
    if chosen is None or peer is None:
        stats["no_proposal_chosen"] += 1
        _plain_reply(endpoint, msg, addr, [notify(NotifyType.NO_PROPOSAL_CHOSEN)])
        if candidates:  # a configured peer offered nothing we accept: tell the admin why
            reason = f"no acceptable IKE proposal among {len(theirs)} offered by {addr[0]}"
            endpoint._emit(
                NegotiationFailed(0, candidates[0].name, NotifyType.NO_PROPOSAL_CHOSEN, reason)
            )
        return None
    if chosen.ke != ke.group:
        stats["invalid_ke_sent"] += 1
        _plain_reply(
            endpoint,
            msg,
            addr,
            [notify(NotifyType.INVALID_KE_PAYLOAD, struct.pack("!H", chosen.ke or 0))],
        )
        return None
    try:
        ke_value, shared = ke_by_id(ke.group).respond(ke.data)
    except PyipsecError:
        stats["malformed"] += 1
        _plain_reply(endpoint, msg, addr, [notify(NotifyType.INVALID_SYNTAX)])
        return None
    if local[0] in ("0.0.0.0", "::") and peer.local_addr:
        local = (peer.local_addr, local[1])
    sa = IkeSa(
        endpoint,
        endpoint._new_handle(),
        False,
        msg.spi_i,
        endpoint._new_ike_spi(),
        peer,
        local,
        addr,
        now,
    )
    sa.ni, sa.nr, sa.chosen = nonce.data, sa.rand(NONCE_SIZE), chosen
    sa.transition("recv_init_request")
    payloads = [chosen_sa_payload(chosen), KePayload(ke.group, ke_value), NoncePayload(sa.nr)]
    payloads += common_notifies(sa, sa.spi_r, bool(chosen.additional_kes()))
    _peer_features(sa, msg)
    sa.init_request = data
    packets = sa.encode(ExchangeType.IKE_SA_INIT, 0, payloads, response=True)
    sa.init_response = packets[0]
    sa.last_response = (0, packets)
    sa.expected_request_id = 1
    install_keys(sa, chosen, shared)
    sa.half_open_deadline = now + endpoint.config.half_open_timeout
    endpoint._register(sa, half_open_key=(msg.spi_i, addr))
    sa.send_packets(packets)
    return sa
