"""Events an :class:`~pyipsec.ike.endpoint.IkeEndpoint` emits (``next_event()``).

Frozen dataclasses, one per event; the daemon turns :class:`ChildSaInstalled` into
``pyipsec.ipsec.SecurityAssociation`` objects (one inbound, one outbound) and removes them on
:class:`ChildSaDeleted`. Key material is excluded from repr().
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pyipsec.ike.ts import TsRange
from pyipsec.wire.esp import NATT_PORT


@dataclass(frozen=True, slots=True)
class IkeEvent:
    """Base class of all IKE events."""


@dataclass(frozen=True, slots=True)
class IkeSaUp(IkeEvent):
    """An IKE SA was authenticated and is established.

    ike_sa: the endpoint's handle of the SA (stable across rekeying).
    peer: the PeerConfig name. local_id/remote_id: authenticated identities (text).
    local_addr/remote_addr: (address, port) of the IKE SA. initiator: our role.
    spi_i/spi_r: IKE SPIs (hex). proposal: negotiated IKE transforms (strongSwan keywords).
    auth: our authentication method on this SA ("psk" or "pubkey"; a peer may list several).
    """

    ike_sa: int
    peer: str
    local_id: str
    remote_id: str
    local_addr: tuple[str, int]
    remote_addr: tuple[str, int]
    initiator: bool
    spi_i: str
    spi_r: str
    proposal: str
    auth: str = ""


@dataclass(frozen=True, slots=True)
class IkeSaRekeyed(IkeEvent):
    """The IKE SA was rekeyed (RFC 7296 2.18): new SPIs, same handle and Child SAs.

    ike_sa: handle. old_spi_i/old_spi_r and new_spi_i/new_spi_r: SPIs in hex.
    """

    ike_sa: int
    old_spi_i: str
    old_spi_r: str
    new_spi_i: str
    new_spi_r: str


@dataclass(frozen=True, slots=True)
class IkeSaDown(IkeEvent):
    """The IKE SA is gone; its Child SAs were reported deleted before this event.

    ike_sa: handle. peer: PeerConfig name (or "" when unknown). reason: "deleted"
    (by us), "deleted by peer", "dead peer" (DPD/retransmission timeout), "expired",
    "failed" (negotiation/authentication failure), "replaced".
    """

    ike_sa: int
    peer: str
    reason: str


@dataclass(frozen=True, slots=True)
class ChildSaInstalled(IkeEvent):
    """A Child SA pair is ready: install the inbound SA, then the outbound one.

    Outbound switching rule (what keeps traffic flowing through rekeys, RFC 7296 2.8):
    a new Child SA (``rekeyed_from`` None) carries outbound traffic at once; a rekey
    successor (``rekeyed_from`` set) is installed now but carries outbound traffic only
    from the :class:`ChildSaRekeyed` event that names it, which comes once the peer is
    known to hold it (and, for a simultaneous rekey, only for the surviving SA).

    ike_sa: handle of the IKE SA. child: ChildConfig name. protocol: "esp" or "ah".
    mode: "transport" or "tunnel". inbound_spi/outbound_spi: 32-bit SPIs (we receive with
    inbound_spi, we send with outbound_spi). algorithm: SecurityAssociation keyword, e.g.
    "aes128gcm16", "aes128-sha256", AH "sha256". inbound_key/outbound_key: encryption key
    (incl. salt) followed by integrity key, taken from KEYMAT in RFC 7296 2.17 order.
    esn: extended sequence numbers. local_ts/remote_ts: negotiated selectors.
    rekey_time: seconds until we rekey (jitter applied); life_time: hard lifetime in seconds;
    rekey_bytes/rekey_packets: soft volume limits (0 = none). encap_udp: NAT detected,
    ESP in UDP 4500. local_addr/remote_addr: the IKE SA's IP addresses (tunnel endpoints).
    rekeyed_from: outbound SPI of the SA this one replaces (None for a new Child SA).
    remote_port/local_port: the IKE SA's current UDP ports when the Child SA was installed.
    With ``encap_udp`` the outbound ESP-in-UDP goes to ``remote_port`` (from
    ``local_port``): behind a NAT the peer's port 4500 is mapped elsewhere, and ESP must
    follow its IKE there (RFC 3948 2.1, RFC 7296 2.23). Defaults: 4500, the NAT-T port.
    """

    ike_sa: int
    child: str
    protocol: str
    mode: str
    inbound_spi: int
    outbound_spi: int
    algorithm: str
    inbound_key: bytes = field(repr=False)
    outbound_key: bytes = field(repr=False)
    esn: bool
    local_ts: tuple[TsRange, ...]
    remote_ts: tuple[TsRange, ...]
    rekey_time: float
    life_time: float
    rekey_bytes: int
    rekey_packets: int
    encap_udp: bool
    local_addr: str
    remote_addr: str
    rekeyed_from: int | None = None
    remote_port: int = NATT_PORT
    local_port: int = NATT_PORT


@dataclass(frozen=True, slots=True)
class ChildSaRekeyed(IkeEvent):
    """Switch outbound traffic of a Child SA to another (already installed) pair.

    old_inbound_spi/old_outbound_spi: the pair used so far (a ChildSaDeleted for it follows
    when it is removed). new_inbound_spi/new_outbound_spi: the pair to send on from now.
    """

    ike_sa: int
    child: str
    old_inbound_spi: int
    old_outbound_spi: int
    new_inbound_spi: int
    new_outbound_spi: int


@dataclass(frozen=True, slots=True)
class ChildSaDeleted(IkeEvent):
    """A Child SA pair was removed: uninstall both SAs.

    reason: "deleted", "deleted by peer", "rekeyed", "expired", "ike sa down".
    """

    ike_sa: int
    child: str
    protocol: str
    inbound_spi: int
    outbound_spi: int
    reason: str


@dataclass(frozen=True, slots=True)
class AuthenticationFailed(IkeEvent):
    """Authentication failed (either side's AUTH, certificate or identity).

    ike_sa: handle. peer: PeerConfig name ("" if none matched). remote_addr: peer address.
    reason: why, never containing a secret. retry: an initiator whose peer lists another
    authentication method starts over with it: the handle of that new IKE SA (the failed
    one then goes without an IkeSaDown); 0 when nothing follows.
    """

    ike_sa: int
    peer: str
    remote_addr: tuple[str, int]
    reason: str
    retry: int = 0


@dataclass(frozen=True, slots=True)
class NegotiationFailed(IkeEvent):
    """An exchange failed without an authentication problem.

    ike_sa: handle (0 when a responder refused an IKE_SA_INIT before any IKE SA existed,
    e.g. no acceptable proposal from a configured peer). peer: PeerConfig name. notify:
    the Notify type (e.g.
    NO_PROPOSAL_CHOSEN=14, TS_UNACCEPTABLE=38) sent or received, 0 if none (timeout).
    reason: text. child: ChildConfig name if a Child SA negotiation failed.
    """

    ike_sa: int
    peer: str
    notify: int
    reason: str
    child: str | None = None
