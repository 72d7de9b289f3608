"""Child SA bookkeeping: the negotiated pair, its keys, lifetimes and the install event.

A :class:`ChildSa` is the local view of one ESP/AH SA pair created by IKE_AUTH or
CREATE_CHILD_SA. Keys come from KEYMAT (RFC 7296 section 2.17): the initiator-to-responder
keys (encryption then integrity) first, then the responder-to-initiator keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pyipsec.crypto.ike_keys import child_keymat, split_child_keymat
from pyipsec.ike.config import ChildConfig
from pyipsec.ike.events import ChildSaInstalled
from pyipsec.ike.proposals import Chosen, child_key_sizes, esp_algorithm_keyword
from pyipsec.ike.state import ChildState, child_transition
from pyipsec.ike.ts import TsRange
from pyipsec.wire.esp import NATT_PORT
from pyipsec.wire.iana import ProtocolId


@dataclass(frozen=True, slots=True)
class ChildSaStatistics:
    """Snapshot of one Child SA: name, state, SPIs (inbound/outbound), algorithm, times."""

    name: str
    state: str
    protocol: str
    mode: str
    inbound_spi: int
    outbound_spi: int
    algorithm: str
    esn: bool
    local_ts: tuple[str, ...]
    remote_ts: tuple[str, ...]
    installed_at: float
    rekey_at: float
    expire_at: float


@dataclass(eq=False)
class ChildSa:
    """One Child SA pair. ``initiated``: we initiated the exchange that created it;
    ``nonces``: (Ni, Nr) of that exchange, for simultaneous-rekey resolution."""

    config: ChildConfig
    role: str
    inbound_spi: int
    outbound_spi: int
    chosen: Chosen
    mode: str
    local_ts: tuple[TsRange, ...]
    remote_ts: tuple[TsRange, ...]
    inbound_key: bytes = field(repr=False)
    outbound_key: bytes = field(repr=False)
    installed_at: float
    rekey_at: float
    expire_at: float
    initiated: bool
    nonces: tuple[bytes, bytes]
    state: ChildState = ChildState.INSTALLED
    replaced_by: ChildSa | None = None  # successor (after a rekey)
    predecessor: ChildSa | None = None  # the SA this one rekeyed
    in_use: bool = True  # the pair the daemon sends on (per the events it saw)

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def protocol(self) -> str:
        return "ah" if self.chosen.protocol == ProtocolId.AH else "esp"

    @property
    def algorithm(self) -> str:
        return esp_algorithm_keyword(self.chosen)

    def transition(self, event: str) -> None:
        self.state = child_transition(self.role, self.state, event)

    def installed_event(
        self,
        handle: int,
        *,
        encap_udp: bool,
        local_addr: str,
        remote_addr: str,
        rekeyed_from: int | None = None,
        remote_port: int = NATT_PORT,
        local_port: int = NATT_PORT,
    ) -> ChildSaInstalled:
        return ChildSaInstalled(
            ike_sa=handle,
            child=self.name,
            protocol=self.protocol,
            mode=self.mode,
            inbound_spi=self.inbound_spi,
            outbound_spi=self.outbound_spi,
            algorithm=self.algorithm,
            inbound_key=self.inbound_key,
            outbound_key=self.outbound_key,
            esn=self.chosen.esn,
            local_ts=self.local_ts,
            remote_ts=self.remote_ts,
            rekey_time=self.rekey_at - self.installed_at,
            life_time=self.expire_at - self.installed_at,
            rekey_bytes=self.config.rekey_bytes,
            rekey_packets=self.config.rekey_packets,
            encap_udp=encap_udp,
            local_addr=local_addr,
            remote_addr=remote_addr,
            rekeyed_from=rekeyed_from,
            remote_port=remote_port,
            local_port=local_port,
        )

    def statistics(self) -> ChildSaStatistics:
        return ChildSaStatistics(
            self.name,
            self.state.value,
            self.protocol,
            self.mode,
            self.inbound_spi,
            self.outbound_spi,
            self.algorithm,
            self.chosen.esn,
            tuple(str(t) for t in self.local_ts),
            tuple(str(t) for t in self.remote_ts),
            self.installed_at,
            self.rekey_at,
            self.expire_at,
        )


def derive_child_keys(
    prf: int,
    sk_d: bytes,
    chosen: Chosen,
    ni: bytes,
    nr: bytes,
    we_are_initiator: bool,
    shared_secret: bytes | None = None,
) -> tuple[bytes, bytes]:
    """(inbound key, outbound key), each encryption key (incl. salt) || integrity key.

    ``we_are_initiator`` refers to the exchange that creates the SA (RFC 7296 2.17).
    """
    ek, ak = child_key_sizes(chosen)
    keymat = child_keymat(prf, sk_d, ni, nr, 2 * (ek + ak), shared_secret=shared_secret)
    keys = split_child_keymat(keymat, ek, ak)
    i_to_r = keys.encr_i + keys.integ_i
    r_to_i = keys.encr_r + keys.integ_r
    return (r_to_i, i_to_r) if we_are_initiator else (i_to_r, r_to_i)


def lifetimes(config: ChildConfig, now: float, jitter_fraction: float) -> tuple[float, float]:
    """(rekey_at, expire_at): rekey earlier by up to ``config.jitter`` seconds."""
    rekey = now + config.rekey_time - config.jitter * jitter_fraction
    return rekey, now + config.hard_life
