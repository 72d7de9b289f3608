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

# SPD, selectors and SAD (RFC 4301 4.4.1 / 4.4.2)
from pyipsec.ipsec.sad import OutboundSlots, Sad, SadStatistics  # noqa: E402
from pyipsec.ipsec.selectors import AddressRange, PortRange, Selector, SelectorList  # noqa: E402
from pyipsec.ipsec.spd import Action, SaTemplate, Spd, SpdEntry, SpdStatistics  # noqa: E402

__all__ += ["Action", "AddressRange", "OutboundSlots", "PortRange", "SaTemplate", "Sad"]
__all__ += ["SadStatistics", "Selector", "SelectorList", "Spd", "SpdEntry", "SpdStatistics"]
