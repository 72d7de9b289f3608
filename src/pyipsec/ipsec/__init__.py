"""The IPsec packet layer: SAs (ESP, AH, NAT-T), anti-replay, lifetimes, statistics."""

from pyipsec.ipsec.lifetime import (
    HardLifetimeExpired,
    Lifetime,
    SaEvent,
    SequenceExhausted,
    SoftLifetimeExpired,
)
from pyipsec.ipsec.natt import NatKeepalive, NonEspPacket
from pyipsec.ipsec.sa import SecurityAssociation
from pyipsec.ipsec.stats import GlobalCounters, GlobalStatistics, SaStatistics

__all__ = [
    "GlobalCounters",
    "GlobalStatistics",
    "HardLifetimeExpired",
    "Lifetime",
    "NatKeepalive",
    "NonEspPacket",
    "SaEvent",
    "SaStatistics",
    "SecurityAssociation",
    "SequenceExhausted",
    "SoftLifetimeExpired",
]
