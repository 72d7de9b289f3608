"""Child SA negotiation (IKE_AUTH and CREATE_CHILD_SA, RFC 7296 sections 1.3, 2.8, 2.17)
and IKE SA rekeying (1.3.2, 2.18).

* new Child SA: SA, Ni, [KEi], TSi, TSr (+ USE_TRANSPORT_MODE);
* Child SA rekey: the same plus N(REKEY_SA) naming the SA (our inbound SPI); the initiator
  of the rekey deletes the old SA once the new one is installed. Simultaneous rekeying of one
  SA by both peers (2.8.1): both new SAs get installed; the one whose exchange carried the
  lowest nonce is redundant and deleted by the peer that initiated it, so neither side is
  ever left without an outbound SA;
* IKE SA rekey: SA (protocol IKE, new SPI), Ni, KEi; the Child SAs move to the new IKE SA,
  whose initiator is the initiator of the rekey; it then deletes the old IKE SA.
"""

from __future__ import annotations

import functools
import struct
from typing import TYPE_CHECKING, Any

from pyipsec.crypto.ke import ke_by_id
from pyipsec.errors import ProtocolError
from pyipsec.ike.child_sa import ChildSa, derive_child_keys, lifetimes
from pyipsec.ike.config import ChildConfig
from pyipsec.ike.events import NegotiationFailed
from pyipsec.ike.exchanges import Task, error_notify, get_notify, has_notify, notify
from pyipsec.ike.proposals import (
    check_chosen,
    chosen_from_response,
    chosen_sa_payload,
    from_sa_payload,
    prefer_ke,
    select_proposal,
    to_sa_payload,
    without_ke,
)
from pyipsec.ike.state import ChildState
from pyipsec.ike.ts import TsRange, check_subset, narrow, resolve
from pyipsec.wire.iana import ExchangeType, NotifyType, ProtocolId, TransformType
from pyipsec.wire.ike import (
    KePayload,
    Message,
    NoncePayload,
    SaPayload,
    TrafficSelector,
    TsPayload,
)

if TYPE_CHECKING:
    from pyipsec.ike.ike_sa import IkeSa

NONCE_SIZE = 32


def ts_payload(ranges: list[TsRange] | tuple[TsRange, ...], initiator: bool) -> TsPayload:
    """TSi/TSr payload for our selectors (cached: the same selectors recur)."""
    return _ts_payload(tuple(ranges), initiator)


@functools.lru_cache(maxsize=1024)
def _ts_payload(ranges: tuple[TsRange, ...], initiator: bool) -> TsPayload:
    sel = [
        TrafficSelector.from_range(
            t.start_addr, t.end_addr, t.ip_protocol, t.start_port, t.end_port
        )
        for t in ranges
    ]
    return TsPayload(sel, initiator)


def ts_ranges(p: TsPayload | None) -> list[TsRange]:
    if p is None:
        raise ProtocolError("traffic selectors missing", notify=NotifyType.INVALID_SYNTAX)
    out = []
    for t in p.traffic_selectors:
        if t.start_port > t.end_port:  # OPAQUE ports: not supported, skip
            continue
        out.append(TsRange(t.start_ip, t.end_ip, t.ip_protocol, t.start_port, t.end_port))
    return out


def _ts_pair(msg: Message) -> tuple[list[TsRange], list[TsRange]]:
    tsi = next((p for p in msg.find_all(TsPayload) if p.initiator), None)
    tsr = next((p for p in msg.find_all(TsPayload) if not p.initiator), None)
    return ts_ranges(tsi), ts_ranges(tsr)


class ChildRequest:
    """Initiator-side state of one Child SA negotiation."""

    def __init__(
        self, sa: IkeSa, cfg: ChildConfig, ni: bytes, *, pfs: bool, rekey_of: ChildSa | None = None
    ) -> None:
        self.sa = sa
        self.cfg = cfg
        self.ni = ni
        self.rekey_of = rekey_of
        self.spi = sa.endpoint._alloc_spi()
        specs = cfg.proposals()
        self.specs = specs if pfs else [without_ke(s) for s in specs]
        # the PFS group: pfs_group, or (strongSwan style) a KE group named in the proposal
        # keyword itself, e.g. "aes256gcm16-ecp256": offering a KE transform without the
        # KE payload makes peers answer INVALID_KE_PAYLOAD (found against strongSwan)
        first_ke = next((i for s in self.specs for i, _ in s.algs(TransformType.KE)), None)
        self.ke_id = (cfg.pfs_ke or first_ke) if pfs else None
        self.kx: Any = ke_by_id(self.ke_id).new() if self.ke_id else None
        if rekey_of is not None:
            self.tsi, self.tsr = list(rekey_of.local_ts), list(rekey_of.remote_ts)
        else:
            self.tsi = resolve(cfg.local_selectors(), sa.local_addr[0])
            self.tsr = resolve(cfg.remote_selectors(), sa.remote_addr[0])

    def payloads(self) -> list[Any]:
        out: list[Any] = [to_sa_payload(self.specs, struct.pack("!I", self.spi))]
        out += [ts_payload(self.tsi, True), ts_payload(self.tsr, False)]
        if self.cfg.mode == "transport":
            out.append(notify(NotifyType.USE_TRANSPORT_MODE))
        return out

    def release(self) -> None:
        self.sa.endpoint._release_spi(self.spi)


def _install(
    sa: IkeSa,
    cfg: ChildConfig,
    chosen: Any,
    inbound: int,
    outbound: int,
    mode: str,
    tsl: list[TsRange],
    tsr: list[TsRange],
    ni: bytes,
    nr: bytes,
    shared: bytes | None,
    initiated: bool,
    now: float,
    rekey_of: ChildSa | None,
) -> ChildSa:
    assert sa.keys is not None and sa.chosen is not None
    key_in, key_out = derive_child_keys(
        sa.chosen.prf, sa.keys.sk_d, chosen, ni, nr, initiated, shared
    )
    rekey_at, expire_at = lifetimes(cfg, now, sa.endpoint._jitter())
    child = ChildSa(
        cfg,
        sa.role,
        inbound,
        outbound,
        chosen,
        mode,
        tuple(tsl),
        tuple(tsr),
        key_in,
        key_out,
        now,
        rekey_at,
        expire_at,
        initiated,
        (ni, nr),
    )
    child.in_use = rekey_of is None  # a successor carries traffic once announced
    sa.children.append(child)
    sa.endpoint.stats["child_sas_installed"] += 1
    sa.emit(
        child.installed_event(
            sa.handle,
            encap_udp=sa.nat_local or sa.nat_remote or sa.endpoint._force_encap(sa),
            local_addr=_own_address(sa, tsl),
            remote_addr=sa.remote_addr[0],
            rekeyed_from=rekey_of.outbound_spi if rekey_of else None,
            remote_port=sa.remote_addr[1],  # the NAT's mapping of the peer's 4500
            local_port=sa.local_addr[1],
        )
    )
    if rekey_of is not None:
        _rekeyed(sa, rekey_of, child, now)
    return child


def _own_address(sa: IkeSa, local_ts: list[TsRange]) -> str:
    """Our address for the data plane; when the socket layer never told us (wildcard), the
    negotiated host selector of a transport-mode SA names it."""
    ip = sa.local_addr[0]
    if (
        ip in ("0.0.0.0", "::")
        and len(local_ts) == 1
        and local_ts[0].start_addr == local_ts[0].end_addr
    ):
        return str(local_ts[0].start_addr)
    return ip


def _rekeyed(sa: IkeSa, old: ChildSa, new: ChildSa, now: float) -> None:
    """``new`` replaces ``old``; resolve a simultaneous rekey (RFC 7296 2.8.1).

    Outbound switching (ChildSaRekeyed) happens only once the peer is known to hold the
    new SA: at once when we initiated the exchange (the peer answered, so it installed it);
    for an SA we created as responder, when the peer deletes the old SA (see
    IkeSa.remove_child). With a collision, the SA of the exchange with the lowest nonce is
    redundant: its initiator deletes it, the other initiator deletes the old SA.
    """
    from pyipsec.ike.exchanges.informational import DeleteChildTask

    new.predecessor = old
    rival = old.replaced_by
    if old.state in (ChildState.INSTALLED, ChildState.REKEYING):
        old.transition("rekeyed")
    if rival is None or rival not in sa.children:
        old.replaced_by = new
        if new.initiated:
            sa.announce(old, new)
            sa.queue(DeleteChildTask([old]), now)
        return
    sa.endpoint.stats["rekey_collisions"] += 1
    loser = min((rival, new), key=lambda c: min(c.nonces))
    winner = new if loser is rival else rival
    old.replaced_by = winner
    if loser.initiated:
        if loser.state in (ChildState.INSTALLED, ChildState.REKEYING):
            loser.transition("rekeyed")
        loser.replaced_by = winner
        sa.queue(DeleteChildTask([loser]), now, first=True)
    if winner.initiated:
        current = next((c for c in (old, loser) if c.in_use), None)
        if current is not None:
            sa.announce(current, winner)
        sa.queue(DeleteChildTask([old]), now)


def complete_initiator_child(
    sa: IkeSa, req: ChildRequest, msg: Message, nr: bytes, shared: bytes | None, now: float
) -> ChildSa | None:
    """Install the Child SA the responder accepted; NegotiationFailed if it is unusable."""
    try:
        sa_p = msg.find(SaPayload)
        if sa_p is None:
            raise ProtocolError("no SA payload", notify=NotifyType.INVALID_SYNTAX)
        chosen = chosen_from_response(sa_p)
        check_chosen(req.specs, chosen)
        if len(chosen.spi) != 4:
            raise ProtocolError("bad Child SA SPI size", notify=NotifyType.INVALID_SYNTAX)
        tsi, tsr = _ts_pair(msg)
        check_subset(tsi, req.tsi)
        check_subset(tsr, req.tsr)
        transport = has_notify(msg, NotifyType.USE_TRANSPORT_MODE)
        mode = "transport" if transport else "tunnel"
        if mode != req.cfg.mode:
            raise ProtocolError(f"peer chose {mode} mode", notify=NotifyType.NO_PROPOSAL_CHOSEN)
    except ProtocolError as exc:
        req.release()
        sa.emit(NegotiationFailed(sa.handle, sa.peer_name, exc.notify or 0, str(exc), req.cfg.name))
        return None
    outbound = struct.unpack("!I", chosen.spi)[0]
    return _install(
        sa,
        req.cfg,
        chosen,
        req.spi,
        outbound,
        mode,
        tsi,
        tsr,
        req.ni,
        nr,
        shared,
        True,
        now,
        req.rekey_of,
    )


def respond_child(
    sa: IkeSa,
    msg: Message,
    ni: bytes,
    nr: bytes,
    now: float,
    *,
    pfs: bool,
    ke: KePayload | None = None,
    rekey_of: ChildSa | None = None,
) -> list[Any]:
    """Responder: pick a child config by selectors and proposals, install, answer.

    With ``ke`` (PFS) the chosen proposal must use its group (else INVALID_KE_PAYLOAD
    naming ours); the answer then carries our KE payload after the SA payload."""
    assert sa.peer is not None
    sa_p = msg.find(SaPayload)
    if sa_p is None:
        raise ProtocolError("no SA payload", notify=NotifyType.INVALID_SYNTAX)
    tsi, tsr = _ts_pair(msg)
    theirs = from_sa_payload(sa_p)
    configs = [rekey_of.config] if rekey_of else list(sa.peer.children)
    first_err: ProtocolError | None = None
    for cfg in configs:
        try:
            if rekey_of is not None:
                remote, local = list(rekey_of.remote_ts), list(rekey_of.local_ts)
            else:
                remote = resolve(cfg.remote_selectors(), sa.remote_addr[0])
                local = resolve(cfg.local_selectors(), sa.local_addr[0])
            tsi_n, tsr_n = narrow(tsi, remote), narrow(tsr, local)
            specs = cfg.proposals() if pfs else [without_ke(s) for s in cfg.proposals()]
            if ke is not None:
                specs = prefer_ke(specs, ke.group)
            chosen = select_proposal(specs, theirs)
        except ProtocolError as exc:
            first_err = first_err or exc
            continue
        if len(chosen.spi) != 4:
            raise ProtocolError("bad Child SA SPI size", notify=NotifyType.INVALID_SYNTAX)
        shared = None
        ke_reply: list[Any] = []
        if ke is not None:
            if chosen.ke != ke.group:
                raise _InvalidKe(chosen.ke or 0)
            value, shared = ke_by_id(ke.group).respond(ke.data)
            ke_reply = [KePayload(ke.group, value)]
        transport = cfg.mode == "transport" and has_notify(msg, NotifyType.USE_TRANSPORT_MODE)
        spi = sa.endpoint._alloc_spi()
        outbound = struct.unpack("!I", chosen.spi)[0]
        child_payloads = [
            chosen_sa_payload(chosen, struct.pack("!I", spi)),
            *ke_reply,
            ts_payload(tsi_n, True),
            ts_payload(tsr_n, False),
        ]
        if transport:
            child_payloads.append(notify(NotifyType.USE_TRANSPORT_MODE))
        _install(
            sa,
            cfg,
            chosen,
            spi,
            outbound,
            "transport" if transport else "tunnel",
            tsr_n,
            tsi_n,
            ni,
            nr,
            shared,
            False,
            now,
            rekey_of,
        )
        return child_payloads
    raise first_err or ProtocolError("no child config", notify=NotifyType.TS_UNACCEPTABLE)


# --------------------------------------------------------------------------- tasks


class CreateChildTask(Task):
    """Initiator: a new Child SA, or (``rekey_of``) the replacement of an existing one."""

    exchange = ExchangeType.CREATE_CHILD_SA
    name = "create_child_sa"

    def __init__(
        self, cfg: ChildConfig, rekey_of: ChildSa | None = None, ke_override: int | None = None
    ) -> None:
        self.cfg = cfg
        self.rekey_of = rekey_of
        self.req: ChildRequest | None = None
        self.ke_override = ke_override

    def build(self, sa: IkeSa, now: float) -> list[Any] | None:
        if self.rekey_of is not None and (
            self.rekey_of not in sa.children or self.rekey_of.state != ChildState.REKEYING
        ):
            return None  # deleted or already replaced meanwhile
        sa.transition("rekey_child" if self.rekey_of else "create_child")
        req = ChildRequest(sa, self.cfg, sa.rand(NONCE_SIZE), pfs=True, rekey_of=self.rekey_of)
        if self.ke_override is not None and req.ke_id is not None:
            req.ke_id = self.ke_override
            req.kx = ke_by_id(self.ke_override).new()
            req.specs = prefer_ke(req.specs, self.ke_override)
        self.req = req
        payloads: list[Any] = []
        if self.rekey_of is not None:
            proto = ProtocolId.AH if self.rekey_of.protocol == "ah" else ProtocolId.ESP
            payloads.append(
                notify(
                    NotifyType.REKEY_SA,
                    protocol_id=proto,
                    spi=struct.pack("!I", self.rekey_of.inbound_spi),
                )
            )
        body = req.payloads()
        payloads += body[:1] + [NoncePayload(req.ni)]
        if req.kx is not None:
            payloads.append(KePayload(req.ke_id, req.kx.public_value()))
        return payloads + body[1:]

    def process(self, sa: IkeSa, msg: Message, now: float) -> None:
        req = self.req
        assert req is not None
        err = error_notify(msg)
        if err is not None:
            req.release()
            if (
                err.notify_type == NotifyType.INVALID_KE_PAYLOAD
                and self.ke_override is None
                and len(err.data) == 2
            ):
                group = struct.unpack("!H", err.data)[0]
                offered = {i for s in req.specs for i, _ in s.algs(TransformType.KE)}
                if group in offered:
                    sa.endpoint.stats["invalid_ke_retries"] += 1
                    sa.queue(CreateChildTask(self.cfg, self.rekey_of, group), now, first=True)
                    return
            if self.rekey_of is not None and self.rekey_of.replaced_by is not None:
                return  # the peer's simultaneous rekey replaced it already (2.8.1)
            if self.rekey_of is not None and self.rekey_of.state == ChildState.REKEYING:
                _rekey_failed(sa, self.rekey_of, now, err.notify_type)
            sa.emit(
                NegotiationFailed(
                    sa.handle,
                    sa.peer_name,
                    err.notify_type,
                    f"CREATE_CHILD_SA refused: {err.notify_type}",
                    self.cfg.name,
                )
            )
            return
        nonce = msg.find(NoncePayload)
        shared = None
        try:
            if nonce is None:
                raise ProtocolError("no nonce", notify=NotifyType.INVALID_SYNTAX)
            if req.kx is not None:
                ke = msg.find(KePayload)
                if ke is None or ke.group != req.ke_id:
                    raise ProtocolError("PFS KE missing", notify=NotifyType.INVALID_KE_PAYLOAD)
                shared = req.kx.complete(ke.data)
        except ProtocolError as exc:
            req.release()
            if self.rekey_of is not None and self.rekey_of.state == ChildState.REKEYING:
                _rekey_failed(sa, self.rekey_of, now, exc.notify or 0)
            sa.emit(
                NegotiationFailed(sa.handle, sa.peer_name, exc.notify or 0, str(exc), self.cfg.name)
            )
            return
        child = complete_initiator_child(sa, req, msg, nonce.data, shared, now)
        if child is None and self.rekey_of is not None and self.rekey_of in sa.children:
            if self.rekey_of.state == ChildState.REKEYING:
                _rekey_failed(sa, self.rekey_of, now, 0)

    def abort(self, sa: IkeSa, now: float) -> None:
        if self.req is not None:
            self.req.release()


def _rekey_failed(sa: IkeSa, child: ChildSa, now: float, notify_type: int) -> None:
    """A rekey of ``child`` failed: it stays installed and is rekeyed again later, not at
    once (its rekey time has passed: retrying at once would loop against a peer that keeps
    refusing, as seen against strongSwan). TEMPORARY_FAILURE asks for a quick retry."""
    child.transition("rekey_failed")
    if notify_type == NotifyType.TEMPORARY_FAILURE:
        child.rekey_at = now + 2 + 8 * sa.endpoint._jitter()
    else:
        child.rekey_at = now + 10 + 20 * sa.endpoint._jitter()


def RekeyChildTask(child: ChildSa) -> CreateChildTask:  # noqa: N802 - task factory
    """Rekey ``child`` (its state must be REKEYING)."""
    return CreateChildTask(child.config, rekey_of=child)


# --------------------------------------------------------------------------- responder


def respond(sa: IkeSa, msg: Message, now: float) -> list[Any] | None:
    """Responder side of CREATE_CHILD_SA: IKE rekey, Child SA rekey or new Child SA."""
    sa_p, nonce = msg.find(SaPayload), msg.find(NoncePayload)
    if sa_p is None or nonce is None:
        raise ProtocolError("CREATE_CHILD_SA without SA or Nonce", notify=NotifyType.INVALID_SYNTAX)
    props = from_sa_payload(sa_p)
    ke = msg.find(KePayload)
    nr = sa.rand(NONCE_SIZE)
    if props and props[0][1] == ProtocolId.IKE:
        from pyipsec.ike.exchanges.rekey_ike import respond_rekey_ike

        return respond_rekey_ike(sa, msg, props, nonce.data, nr, ke, now)
    if not sa.allows("recv_create_child"):
        raise ProtocolError("not established", notify=NotifyType.TEMPORARY_FAILURE)
    if sa.state.value != "established":
        raise ProtocolError("IKE SA is being rekeyed", notify=NotifyType.TEMPORARY_FAILURE)
    rekey_of = None
    rekey = get_notify(msg, NotifyType.REKEY_SA)
    if rekey is not None:
        spi = struct.unpack("!I", rekey.spi)[0] if len(rekey.spi) == 4 else -1
        rekey_of = sa.child_by_outbound(spi)
        if rekey_of is None or rekey_of.state in (ChildState.DELETING, ChildState.DELETED):
            raise ProtocolError("no such Child SA", notify=NotifyType.CHILD_SA_NOT_FOUND)
    child_payloads = respond_child(
        sa, msg, nonce.data, nr, now, pfs=ke is not None, ke=ke, rekey_of=rekey_of
    )
    return child_payloads[:1] + [NoncePayload(nr)] + child_payloads[1:]


class _InvalidKe(ProtocolError):
    def __init__(self, group: int) -> None:
        super().__init__(f"use group {group}", notify=NotifyType.INVALID_KE_PAYLOAD)
        self.group = group
        self.notify_data = struct.pack("!H", group)
