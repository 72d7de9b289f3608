"""The Security Association Database (RFC 4301 section 4.4.2).

Inbound SAs are found by what an arriving packet carries: the SPI and the protocol (ESP
or AH), and optionally the destination address. RFC 4301 section 4.1 lets a receiver
use the SPI alone for unicast SAs (the SPI is chosen by the receiver, so it is unique
there) and the destination as well where several SAs share an SPI (multicast); here an
SA registered with a destination is preferred for packets to that destination, and an
SA registered without one answers for any destination.

Outbound SAs are found by the name of the Child SA (``SaTemplate.child`` of the SPD
entry that said PROTECT). Each child has three slots, as wireguard-go's keypairs do:

* ``current``: the SA outbound packets use;
* ``previous``: the SA that was current before the last rekey, kept (for its counters
  and so that the daemon can delete it by SPI) until removed;
* ``next``: an SA installed but not yet used (``install_outbound(..., activate=False)``),
  promoted by :meth:`Sad.activate_next`.

A rekey (:meth:`Sad.replace`) adds the new inbound SA next to the old one (the old one
keeps receiving the packets still in flight until the daemon deletes it) and switches
outbound to the new SA in one assignment, so no packet ever sees a child without SA.

SAs are duck-typed: anything with ``spi``, ``protocol`` and ``statistics()`` (returning a
:class:`pyipsec.ipsec.stats.SaStatistics`) works; in practice
:class:`pyipsec.ipsec.SecurityAssociation`. Counters of removed SAs are kept, so the
totals of :meth:`Sad.statistics` never go down on a rekey.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import Any

from pyipsec.errors import ConfigError, MalformedPacket, NoSaError, StateError, UnknownSpi
from pyipsec.ipsec.stats import GlobalCounters, GlobalStatistics

__all__ = ["OutboundSlots", "Sad", "SadStatistics"]

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

_PROTOCOLS: dict[object, str] = {"esp": "esp", "ah": "ah", 50: "esp", 51: "ah"}
_SUMMED = tuple(
    f.name for f in fields(GlobalStatistics) if f.name not in ("sas", "weak_sas", "no_sa_packets")
)


def _protocol(value: object) -> str:
    name = _PROTOCOLS.get(value)
    if name is None or isinstance(value, bool):
        raise ConfigError(f"protocol must be esp/ah or 50/51, not {value!r}", key="protocol")
    return name


def _address(value: object, *, packet: bool = False) -> Address | None:
    """Normalise a destination given as str, bytes (4 or 16) or ipaddress object."""
    if value is None:
        return None
    try:
        return ipaddress.ip_address(value)  # type: ignore[arg-type]
    except ValueError:
        if packet:
            raise MalformedPacket(f"bad destination address {value!r}") from None
        raise ConfigError(f"not an IP address: {value!r}", key="dst") from None


@dataclass(frozen=True)
class OutboundSlots:
    """The outbound SAs of one Child SA (a snapshot)."""

    child: str  #: the Child SA name
    current: Any = None  #: the SA outbound packets use, or None
    previous: Any = None  #: the SA current before the last rekey, until removed
    next: Any = None  #: installed, not yet used; see :meth:`Sad.activate_next`


@dataclass(frozen=True)
class SadStatistics:
    """A snapshot of the SAD: sizes, lookup counters, and the sum of all SA counters."""

    inbound_sas: int  #: inbound SAs installed
    outbound_sas: int  #: outbound SAs in any slot
    children: int  #: Child SA names with outbound slots
    inbound_lookups: int  #: lookups by SPI
    outbound_lookups: int  #: lookups by child name
    unknown_spi_lookups: int  #: inbound lookups that found no SA (bad SPI packets)
    no_sa_lookups: int  #: outbound lookups for a child without a current SA
    installed: int  #: SAs added since creation
    removed: int  #: SAs removed since creation
    #: counters of the installed SAs plus removed ones plus drops that reached no SA;
    #: ``totals.sas`` / ``totals.weak_sas`` count installed SAs only
    totals: GlobalStatistics


class _Slots:
    __slots__ = ("current", "previous", "next")

    def __init__(self) -> None:
        self.current: Any = None
        self.previous: Any = None
        self.next: Any = None

    def sas(self) -> list[Any]:
        return [sa for sa in (self.current, self.previous, self.next) if sa is not None]


class Sad:
    """Inbound SAs by (SPI, protocol[, destination]); outbound SAs by child name."""

    def __init__(self) -> None:
        #: (spi, protocol) -> {destination or None: sa}
        self._inbound: dict[tuple[int, str], dict[Address | None, Any]] = {}
        #: (spi, protocol, destination) -> child name (or None)
        self._inbound_child: dict[tuple[int, str, Address | None], str | None] = {}
        self._outbound: dict[str, _Slots] = {}
        self._counters = GlobalCounters()
        self._retired = dict.fromkeys(_SUMMED, 0)
        self._in_lookups = 0
        self._out_lookups = 0
        self._installed = 0
        self._removed = 0

    # ------------------------------------------------------------------ inbound

    def add_inbound(self, sa: Any, *, child: str | None = None, dst: object = None) -> None:
        """Install an inbound SA; ``dst`` restricts it to packets for that address.

        Raises ConfigError if an SA with the same SPI, protocol and destination exists.
        """
        proto = _protocol(sa.protocol)
        addr = _address(dst)
        slots = self._inbound.get((sa.spi, proto))
        if slots is not None and addr in slots:
            raise ConfigError(f"an inbound {proto} SA with SPI {sa.spi:#010x} exists", key="spi")
        self._inbound.setdefault((sa.spi, proto), {})[addr] = sa
        self._inbound_child[(sa.spi, proto, addr)] = child
        self._installed += 1

    def lookup_inbound(self, spi: int, protocol: object, dst: object = None) -> Any:
        """The inbound SA for a packet's SPI and protocol (and destination).

        Raises :class:`UnknownSpi` (counted as a bad-SPI packet) when there is none.
        ``dst`` may be the packet's destination as bytes, str or ipaddress object; an SA
        registered for that destination wins over one registered for any.
        """
        self._in_lookups += 1
        proto = _PROTOCOLS.get(protocol)
        slots = self._inbound.get((spi, proto)) if proto is not None else None  # type: ignore[arg-type]
        sa = None
        if slots is not None:
            if dst is not None:
                try:
                    addr = _address(dst, packet=True)
                except MalformedPacket as exc:
                    self._counters.count(exc)
                    raise
                sa = slots.get(addr)
            if sa is None:
                sa = slots.get(None)
        if sa is None:
            err = UnknownSpi(f"no inbound SA for SPI {spi:#010x} protocol {protocol}")
            self._counters.count(err)
            raise err
        return sa

    def remove_inbound(self, spi: int, protocol: object, dst: object = None) -> Any:
        """Remove and return an inbound SA (e.g. on an IKE Delete).

        Raises :class:`UnknownSpi` if there is none (not counted: no packet involved).
        """
        proto = _protocol(protocol)
        addr = _address(dst)
        slots = self._inbound.get((spi, proto))
        if slots is None or addr not in slots:
            raise UnknownSpi(f"no inbound SA for SPI {spi:#010x} protocol {proto} to remove")
        sa = slots.pop(addr)
        if not slots:
            del self._inbound[(spi, proto)]
        del self._inbound_child[(spi, proto, addr)]
        self._retire(sa)
        return sa

    def inbound_sas(self) -> Iterator[Any]:
        """Every installed inbound SA."""
        for slots in self._inbound.values():
            yield from slots.values()

    # ------------------------------------------------------------------ outbound

    def install_outbound(self, child: str, sa: Any, *, activate: bool = True) -> None:
        """Install an outbound SA for ``child``.

        With ``activate`` it becomes current at once (the old current moves to previous,
        and an SA still in previous is dropped from the SAD); without, it waits in next.
        """
        if not isinstance(child, str) or not child:
            raise ConfigError("an outbound SA needs a child name", key="child")
        _protocol(sa.protocol)
        slots = self._outbound.setdefault(child, _Slots())
        if any(s is sa for s in slots.sas()):
            raise ConfigError(f"SA {sa.spi:#010x} is already installed for {child!r}", key="spi")
        self._installed += 1
        if activate:
            self._promote(slots, sa)
        else:
            if slots.next is not None:
                self._retire(slots.next)
            slots.next = sa

    def _promote(self, slots: _Slots, sa: Any) -> None:
        old_previous = slots.previous
        # one assignment each; lookups never see an empty current during a rekey
        slots.previous, slots.current = slots.current, sa
        if slots.next is sa:
            slots.next = None
        if old_previous is not None:
            self._retire(old_previous)

    def activate_next(self, child: str) -> Any:
        """Make the SA waiting in ``next`` current; returns it."""
        slots = self._outbound.get(child)
        if slots is None or slots.next is None:
            raise StateError(role="SAD", state=f"no next SA for {child!r}", event="activate")
        sa = slots.next
        self._promote(slots, sa)
        return sa

    def lookup_outbound(self, child: str) -> Any:
        """The current outbound SA of ``child``.

        Raises :class:`NoSaError` (counted) when there is none: the daemon then holds the
        packet and starts IKE for the child (acquire).
        """
        self._out_lookups += 1
        slots = self._outbound.get(child)
        if slots is None or slots.current is None:
            err = NoSaError(f"no outbound SA for {child!r}")
            self._counters.count(err)
            raise err
        return slots.current

    def outbound_slots(self, child: str) -> OutboundSlots:
        """A snapshot of ``child``'s current/previous/next outbound SAs."""
        slots = self._outbound.get(child)
        if slots is None:
            return OutboundSlots(child)
        return OutboundSlots(child, slots.current, slots.previous, slots.next)

    def remove_outbound(self, child: str, spi: int) -> Any:
        """Remove the outbound SA with ``spi`` from whichever slot of ``child`` holds it."""
        slots = self._outbound.get(child)
        if slots is not None:
            for name in ("current", "previous", "next"):
                sa = getattr(slots, name)
                if sa is not None and sa.spi == spi:
                    setattr(slots, name, None)
                    if not slots.sas():
                        del self._outbound[child]
                    self._retire(sa)
                    return sa
        raise UnknownSpi(f"no outbound SA {spi:#010x} for {child!r} to remove")

    def children(self) -> list[str]:
        """Names of the children with outbound SAs."""
        return list(self._outbound)

    # ------------------------------------------------------------------ pairs

    def add(self, child: str, inbound: Any, outbound: Any, *, dst: object = None) -> None:
        """Install a new Child SA pair; the child must not have outbound SAs yet."""
        if child in self._outbound:
            raise StateError(role="SAD", state=f"child {child!r} installed", event="add")
        self.replace(child, inbound, outbound, dst=dst)

    def replace(self, child: str, inbound: Any, outbound: Any, *, dst: object = None) -> None:
        """Rekey ``child``: add the new inbound SA beside the old one (which stays until
        removed) and switch outbound to the new SA atomically (old current -> previous).

        Nothing changes if the new inbound SA cannot be installed.
        """
        if not isinstance(child, str) or not child:
            raise ConfigError("a Child SA pair needs a child name", key="child")
        _protocol(outbound.protocol)
        slots = self._outbound.get(child)
        if slots is not None and any(s is outbound for s in slots.sas()):
            raise ConfigError(
                f"SA {outbound.spi:#010x} is already installed for {child!r}", key="spi"
            )
        self.add_inbound(inbound, child=child, dst=dst)
        self.install_outbound(child, outbound)

    def remove_child(self, child: str) -> list[Any]:
        """Remove every SA of ``child``, inbound and outbound; returns them."""
        removed = []
        slots = self._outbound.pop(child, None)
        if slots is not None:
            for sa in slots.sas():
                self._retire(sa)
                removed.append(sa)
        for (spi, proto, addr), owner in list(self._inbound_child.items()):
            if owner == child:
                removed.append(self.remove_inbound(spi, proto, addr))
        return removed

    def all_sas(self) -> list[Any]:
        """Every installed SA once (for lifetime checks and event polling)."""
        seen: dict[int, Any] = {}
        for sa in self.inbound_sas():
            seen[id(sa)] = sa
        for slots in self._outbound.values():
            for sa in slots.sas():
                seen[id(sa)] = sa
        return list(seen.values())

    # ------------------------------------------------------------------ statistics

    def _retire(self, sa: Any) -> None:
        self._removed += 1
        stats = sa.statistics()
        for name in _SUMMED:
            self._retired[name] += getattr(stats, name)

    def statistics(self) -> SadStatistics:
        """Sizes, lookup counters and the sum of every SA's counters."""
        live = self.all_sas()
        snap = self._counters.snapshot(sa.statistics() for sa in live)
        totals = GlobalStatistics(
            sas=snap.sas,
            weak_sas=snap.weak_sas,
            no_sa_packets=snap.no_sa_packets,
            **{name: getattr(snap, name) + self._retired[name] for name in _SUMMED},
        )
        return SadStatistics(
            inbound_sas=len(self._inbound_child),
            outbound_sas=sum(len(s.sas()) for s in self._outbound.values()),
            children=len(self._outbound),
            inbound_lookups=self._in_lookups,
            outbound_lookups=self._out_lookups,
            unknown_spi_lookups=self._counters.counts["bad_spi_packets"],
            no_sa_lookups=self._counters.counts["no_sa_packets"],
            installed=self._installed,
            removed=self._removed,
            totals=totals,
        )
