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
from pyipsec.ipsec.sad import OutboundSlots, Sad, SadStatistics
from pyipsec.ipsec.selectors import AddressRange, PortRange, Selector, SelectorList
from pyipsec.ipsec.spd import Action, SaTemplate, Spd, SpdEntry, SpdStatistics
from pyipsec.ipsec.stats import GlobalCounters, GlobalStatistics, SaStatistics

__all__ = [
    "Action",
    "AddressRange",
    "OutboundSlots",
    "PortRange",
    "SaTemplate",
    "Sad",
    "SadStatistics",
    "Selector",
    "SelectorList",
    "Spd",
    "SpdEntry",
    "SpdStatistics",
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
