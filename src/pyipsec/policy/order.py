"""Resolving filters for one host, and the "most specific filter wins" order.

Administrators do not order rules; the most specific filter decides. A filter is more
specific than another when, in this order of comparison:

1. its smaller address set is smaller (the size of the more specific side: a /32 beats a
   /24, a two-address range beats a /30), then its larger address set is smaller;
2. it names a protocol (over ``any``);
3. its smaller port range is smaller, then its larger port range;
4. it is not mirrored (a one-way filter matches a subset of its mirrored twin).

Each step is monotone under set inclusion, so a filter whose traffic is a strict subset of
another's always comes first (the property test in ``tests/policy/test_order.py`` checks
it for random filters). Filters of equal specificity are ordered by rule, list and
position, which makes the order total; but two such filters that *overlap* (some packet
matches both) and lead to different outcomes are an error naming both: the administrator
must say which one wins by making it more specific.

Address sets are resolved per host: ``me`` is the host's own addresses, ``any`` every
IPv4 and IPv6 address, a DNS name what the injectable resolver returns for it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from pyipsec.errors import ConfigError
from pyipsec.ipsec.selectors import PORT_PROTOCOLS, AddressRange, PortRange
from pyipsec.policy.model import Endpoint, Filter, Rule
from pyipsec.wire.flow import Flow

__all__ = [
    "Resolver",
    "ResolvedFilter",
    "check_ties",
    "host_ranges",
    "order_filters",
    "resolve_endpoint",
    "resolve_filter",
]

#: DNS name -> its addresses (strings). Raise OSError or ValueError when it fails.
Resolver = Callable[[str], Sequence[str]]

_ANY_SIZE = (1 << 32) + (1 << 128)  # "any": every IPv4 and every IPv6 address


def host_ranges(addresses: Iterable[str]) -> tuple[AddressRange, ...]:
    """Single-address ranges for address strings (ValueError if one is not an address)."""
    out: list[AddressRange] = []
    for text in addresses:
        ip = ipaddress.ip_address(text.strip())
        r = AddressRange.host(ip.version, int(ip))
        if r not in out:
            out.append(r)
    return tuple(out)


def resolve_endpoint(
    endpoint: Endpoint,
    me: tuple[AddressRange, ...],
    resolver: Resolver | None,
    filt: Filter,
    key: str,
) -> tuple[AddressRange, ...]:
    """The address ranges ``endpoint`` stands for on the host whose addresses are ``me``."""
    if endpoint.kind == "me":
        return me
    if endpoint.kind == "dns":
        if resolver is None:
            raise filt.where.error(f"DNS name {endpoint.text!r} but no resolver given", key)
        try:
            addresses = list(resolver(endpoint.text))
        except (OSError, ValueError, ConfigError) as exc:
            raise filt.where.error(f"cannot resolve {endpoint.text!r}: {exc}", key) from None
        if not addresses:
            raise filt.where.error(f"{endpoint.text!r} resolves to no address", key)
        try:
            return host_ranges(addresses)
        except ValueError as exc:
            raise filt.where.error(
                f"resolver gave a bad address for {endpoint.text!r}: {exc}", key
            ) from None
    assert endpoint.range is not None
    return (endpoint.range,)


def _size(ranges: tuple[AddressRange, ...]) -> int:
    return sum(_ANY_SIZE if r.version == 0 else r.end - r.start + 1 for r in ranges)


def _ranges_meet(a: tuple[AddressRange, ...], b: tuple[AddressRange, ...]) -> bool:
    return any(
        (x.version == 0 or y.version == 0 or x.version == y.version)
        and x.start <= y.end
        and y.start <= x.end
        for x in a
        for y in b
    )


def _ports_meet(a: PortRange, b: PortRange) -> bool:
    return a.start <= b.end and b.start <= a.end


def _in(ranges: tuple[AddressRange, ...], version: int, address: int) -> bool:
    return any(r.contains(version, address) for r in ranges)


@dataclass(frozen=True)
class ResolvedFilter:
    """A filter of a rule with its address sets resolved for one host."""

    rule: Rule  #: the rule whose filter list holds the filter
    filter: Filter  #: the filter as written
    source: tuple[AddressRange, ...]  #: resolved source addresses
    destination: tuple[AddressRange, ...]  #: resolved destination addresses
    outcome: tuple[object, ...] = ()  #: what the rule does (equal outcome: no conflict)

    def orientations(
        self,
    ) -> list[tuple[tuple[AddressRange, ...], tuple[AddressRange, ...], PortRange, PortRange]]:
        """(sources, destinations, source ports, destination ports) the filter matches."""
        f = self.filter
        out = [(self.source, self.destination, f.source_ports, f.destination_ports)]
        if f.mirrored:
            out.append((self.destination, self.source, f.destination_ports, f.source_ports))
        return out

    def specificity(self) -> tuple[int, ...]:
        """Smaller is more specific (see the module docstring)."""
        f = self.filter
        sizes = sorted((_size(self.source), _size(self.destination)))
        if f.protocol is None:
            ports = [65536, 65536]
        else:
            ports = sorted(
                (
                    f.source_ports.end - f.source_ports.start + 1,
                    f.destination_ports.end - f.destination_ports.start + 1,
                )
            )
        return (
            sizes[0],
            sizes[1],
            0 if f.protocol is not None else 1,
            ports[0],
            ports[1],
            1 if f.mirrored else 0,
        )

    def sort_key(self) -> tuple[object, ...]:
        """Specificity, then rule name, list name and position: a total order."""
        f = self.filter
        return (self.specificity(), self.rule.name, f.list_name, f.index)

    def overlaps(self, other: ResolvedFilter) -> bool:
        """Whether some packet matches both filters."""
        a, b = self.filter, other.filter
        if a.protocol is not None and b.protocol is not None and a.protocol != b.protocol:
            return False
        return any(
            _ranges_meet(s1, s2)
            and _ranges_meet(d1, d2)
            and _ports_meet(sp1, sp2)
            and _ports_meet(dp1, dp2)
            for s1, d1, sp1, dp1 in self.orientations()
            for s2, d2, sp2, dp2 in other.orientations()
        )

    def matches(self, flow: Flow) -> bool:
        """Whether a packet (source -> destination) matches the filter."""
        f = self.filter
        if f.protocol is not None and flow.protocol != f.protocol:
            return False
        with_ports = f.protocol in PORT_PROTOCOLS
        for srcs, dsts, sports, dports in self.orientations():
            if not (_in(srcs, flow.version, flow.src) and _in(dsts, flow.version, flow.dst)):
                continue
            if with_ports and not (sports.contains(flow.sport) and dports.contains(flow.dport)):
                continue
            return True
        return False

    def label(self) -> str:
        """``rule 'X', filter 'List' #1 (description) at file:line``."""
        return f"rule {self.rule.name!r}, filter {self.filter.label} at {self.filter.where}"


def resolve_filter(
    rule: Rule,
    filt: Filter,
    me: tuple[AddressRange, ...],
    resolver: Resolver | None,
    outcome: tuple[object, ...] = (),
) -> ResolvedFilter:
    """Resolve both sides of ``filt`` for the host whose addresses are ``me``."""
    return ResolvedFilter(
        rule=rule,
        filter=filt,
        source=resolve_endpoint(filt.source, me, resolver, filt, "source"),
        destination=resolve_endpoint(filt.destination, me, resolver, filt, "destination"),
        outcome=outcome,
    )


def check_ties(filters: Sequence[ResolvedFilter]) -> None:
    """Raise a ConfigError naming both filters of the first conflicting tie.

    A tie: equal specificity, overlapping traffic, different outcomes.
    """
    groups: dict[tuple[int, ...], list[ResolvedFilter]] = {}
    for rf in filters:
        groups.setdefault(rf.specificity(), []).append(rf)
    for group in groups.values():
        for i, a in enumerate(group):
            for b in group[i + 1 :]:
                if a.outcome != b.outcome and a.overlaps(b):
                    raise a.filter.where.error(
                        f"tie between {a.label()} and {b.label()}: they overlap with equal "
                        f"specificity but rules {a.rule.name!r} and {b.rule.name!r} do "
                        "different things; make one filter more specific"
                    )


def order_filters(filters: Iterable[ResolvedFilter]) -> list[ResolvedFilter]:
    """Most specific first; raises on a conflicting tie (see :func:`check_ties`)."""
    ordered = sorted(filters, key=ResolvedFilter.sort_key)
    check_ties(ordered)
    return ordered
