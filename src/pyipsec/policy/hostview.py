"""A filter seen from one host: views, selector pairs, IKE traffic selector strings.

Pure helpers of :mod:`pyipsec.policy.compile`: which side of a filter a host is on (its
own addresses are "local"), the (local, remote) address pairs of one family, the IKE
selector strings of one side, and whether two SPD selectors can match one packet.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyipsec.ipsec.selectors import AddressRange, PortRange, Selector
from pyipsec.policy.order import ResolvedFilter

__all__ = ["View", "host_views", "range_pairs", "selectors_overlap", "ts_strings"]


def selectors_overlap(a: Selector, b: Selector) -> bool:
    """Whether some packet matches both selectors (same local/remote orientation)."""
    if a.protocol is not None and b.protocol is not None and a.protocol != b.protocol:
        return False

    def meet(x: AddressRange, y: AddressRange) -> bool:
        same_family = not x.version or not y.version or x.version == y.version
        return same_family and x.start <= y.end and y.start <= x.end

    def ports(x: PortRange, y: PortRange) -> bool:
        return x.start <= y.end and y.start <= x.end

    return (
        meet(a.local, b.local)
        and meet(a.remote, b.remote)
        and ports(a.local_ports, b.local_ports)
        and ports(a.remote_ports, b.remote_ports)
    )


def ts_strings(
    r: AddressRange, protocol: int | None, ports: PortRange, other: AddressRange
) -> list[str]:
    """IKE traffic selector strings (pyipsec.ike.ts syntax) for one side."""
    if r.version == 0:
        versions = [other.version] if other.version else [4, 6]
        addrs = ["0.0.0.0/0" if v == 4 else "::/0" for v in versions]
    else:
        addrs = [str(r)]
    if protocol is None:
        return addrs
    suffix = f"[{protocol}]" if ports.is_any else f"[{protocol}/{ports}]"
    return [a + suffix for a in addrs]


@dataclass
class View:
    """A filter seen from one host: its own addresses (local), the other side, the
    ports in that orientation and the directions it applies to ("both", "out", "in")."""

    local: tuple[AddressRange, ...]
    remote: tuple[AddressRange, ...]
    lports: PortRange
    rports: PortRange
    direction: str


def host_views(rf: ResolvedFilter, me: tuple[AddressRange, ...], tunnel: bool) -> list[View]:
    """How the host with addresses ``me`` sees filter ``rf``: from its source side
    (outbound), from its destination side (inbound), merged into one "both" view when
    the two coincide (a mirrored filter); a tunnel rule's filter as written."""
    f = rf.filter
    if tunnel:
        return [
            View(rf.source, rf.destination, f.source_ports, f.destination_ports,
                  "both" if f.mirrored else "out")
        ]  # fmt: skip
    views: list[View] = []
    mine_src = tuple(h for h in me if any(r.contains(h.version, h.start) for r in rf.source))
    mine_dst = tuple(h for h in me if any(r.contains(h.version, h.start) for r in rf.destination))
    if mine_src and not all(r in me for r in rf.destination):  # not me -> me (loopback)
        views.append(
            View(mine_src, rf.destination, f.source_ports, f.destination_ports,
                  "both" if f.mirrored else "out")
        )  # fmt: skip
    if mine_dst and not all(r in me for r in rf.source):  # not me -> me (loopback)
        view = View(mine_dst, rf.source, f.destination_ports, f.source_ports,
                     "both" if f.mirrored else "in")  # fmt: skip
        for existing in views:
            same = (existing.local, existing.remote, existing.lports, existing.rports)
            if same == (view.local, view.remote, view.lports, view.rports):
                if existing.direction != view.direction:
                    existing.direction = "both"
                break
        else:
            views.append(view)
    return views


_ICMP_FAMILY = {1: 4, 58: 6}  # ICMP is IPv4's, ICMPv6 IPv6's


def range_pairs(view: View, protocol: int | None) -> list[tuple[AddressRange, AddressRange]]:
    """(local, remote) range pairs of one address family (ICMP: of its own family)."""
    out = []
    for lo in view.local:
        for re_ in view.remote:
            version = lo.version or re_.version
            if lo.version and re_.version and lo.version != re_.version:
                continue
            if protocol in _ICMP_FAMILY and version and version != _ICMP_FAMILY[protocol]:
                continue
            out.append((lo, re_))
    return out
