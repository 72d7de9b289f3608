"""The 5-tuple of an IP packet, as the SPD and SA selector checks see it."""

from __future__ import annotations

from typing import NamedTuple


class Flow(NamedTuple):
    """Selector-relevant fields of one IP packet (RFC 4301 section 4.4.1.1).

    Addresses are integers (IPv4: 32 bits, IPv6: 128 bits). For protocols without ports
    both ports are 0. For ICMP and ICMPv6, as RFC 4301 does, ``sport`` carries the
    message type and ``dport`` the code. ``protocol`` is the next-layer protocol found
    after walking IPv6 extension headers.

    A NamedTuple: one is built per packet on the data plane's hot path, and a tuple is
    much cheaper to build than a frozen dataclass.
    """

    version: int  #: 4 or 6
    src: int  #: source address
    dst: int  #: destination address
    protocol: int  #: next-layer protocol number (6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6, ...)
    sport: int = 0  #: source port, or ICMP type
    dport: int = 0  #: destination port, or ICMP code

    def reversed(self) -> Flow:
        """The same flow seen from the other direction."""
        return Flow(self.version, self.dst, self.src, self.protocol, self.dport, self.sport)
