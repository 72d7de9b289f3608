"""Policy routing for the data plane, through pyroute2 (netlink).

What is installed (IPv4 and IPv6 alike)::

    ip rule add fwmark MARK lookup TABLE priority PRIO
    ip route add default dev pyipsec0 table TABLE metric 1
    ip route add blackhole default table TABLE metric 4294967294

The nftables output chain marks packets that match a PROTECT policy with MARK; the rule
sends them to TABLE whose default route leads into the TUN device. The blackhole route is
the fail-closed backstop: when the TUN device disappears (the data plane crashed), its route
goes with it and marked packets would otherwise fall through to the main table and leave in
plaintext; the blackhole keeps them in TABLE and drops them. :func:`remove_routing` removes
all of it (``pyipsec flush``).
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

FAMILIES = (socket.AF_INET, socket.AF_INET6)
_DEFAULT = {socket.AF_INET: "0.0.0.0/0", socket.AF_INET6: "::/0"}
BLACKHOLE_METRIC = 4294967294


@dataclass(frozen=True, slots=True)
class RoutingConfig:
    """The numbers pyipsec uses in the kernel's routing tables."""

    table: int = 0x5049  #: routing table holding the route into the TUN
    mark: int = 0x50490001  #: fwmark nftables sets on packets that need protection
    socket_mark: int = 0x50490002  #: SO_MARK of the data plane's own sockets
    priority: int = 0x5049  #: priority of the ip rule
    ifname: str = "pyipsec0"


def _ignore(exc: NetlinkError, *codes: int) -> None:
    if exc.code not in codes:
        raise exc


def configure_link(ifname: str, mtu: int) -> int:
    """Set the MTU of ``ifname`` and bring it up; returns its ifindex."""
    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=ifname)
        if not idx:
            raise FileNotFoundError(f"no interface {ifname}")
        ipr.link("set", index=idx[0], mtu=mtu, state="up")
        return idx[0]


def add_address(ifname: str, address: str, prefixlen: int) -> None:
    """Add ``address/prefixlen`` (scope link) to ``ifname`` unless present."""
    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=ifname)[0]
        try:
            ipr.addr("add", index=idx, address=address, prefixlen=prefixlen, scope=253)
        except NetlinkError as exc:
            _ignore(exc, 17)


def install_routing(cfg: RoutingConfig) -> None:
    """Install the rules and routes above (idempotent: existing entries are replaced)."""
    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=cfg.ifname)
        if not idx:
            raise FileNotFoundError(f"no interface {cfg.ifname}")
        for family in FAMILIES:
            ipr.route(
                "replace", family=family, dst=_DEFAULT[family], table=cfg.table,
                type="blackhole", priority=BLACKHOLE_METRIC,
            )  # fmt: skip
            ipr.route(
                "replace", family=family, dst=_DEFAULT[family], table=cfg.table,
                oif=idx[0], priority=1,
            )  # fmt: skip
            try:
                ipr.rule(
                    "add", family=family, table=cfg.table, priority=cfg.priority,
                    fwmark=cfg.mark, fwmask=0xFFFFFFFF,
                )  # fmt: skip
            except NetlinkError as exc:
                _ignore(exc, 17)  # EEXIST


def remove_routing(cfg: RoutingConfig) -> list[str]:
    """Remove the rules, the table's routes and the TUN link; returns what was removed."""
    removed: list[str] = []
    with IPRoute() as ipr:
        for family in FAMILIES:
            for rule in ipr.get_rules(family=family):
                if rule.get("priority") == cfg.priority or rule.get("table") == cfg.table:
                    try:
                        ipr.rule("del", family=family, priority=rule.get("priority"),
                                 table=rule.get("table"),
                                 fwmark=rule.get_attr("FRA_FWMARK"))  # fmt: skip
                        removed.append(f"rule v{4 if family == socket.AF_INET else 6}")
                    except NetlinkError as exc:
                        _ignore(exc, 2, 3)
            try:
                routes = ipr.get_routes(family=family, table=cfg.table)
            except NetlinkError:
                routes = []
            for route in routes:
                if route.get_attr("RTA_TABLE") != cfg.table:
                    continue
                try:
                    ipr.route("del", **_route_key(route, family))
                    removed.append(f"route v{4 if family == socket.AF_INET else 6}")
                except NetlinkError as exc:
                    _ignore(exc, 2, 3)
        idx = ipr.link_lookup(ifname=cfg.ifname)
        if idx:
            ipr.link("del", index=idx[0])
            removed.append(f"link {cfg.ifname}")
    return removed


def _route_key(route, family: int) -> dict:
    key = {
        "family": family,
        "table": route.get_attr("RTA_TABLE"),
        "dst": _DEFAULT[family] if route["dst_len"] == 0 else
        f"{route.get_attr('RTA_DST')}/{route['dst_len']}",
        "type": route["type"],
    }  # fmt: skip
    prio = route.get_attr("RTA_PRIORITY")
    if prio is not None:
        key["priority"] = prio
    oif = route.get_attr("RTA_OIF")
    if oif is not None:
        key["oif"] = oif
    return key


def local_addresses() -> set[str]:
    """Every address configured on this host (compressed text form)."""
    with IPRoute() as ipr:
        out = set()
        for msg in ipr.get_addr():
            addr = msg.get_attr("IFA_ADDRESS") or msg.get_attr("IFA_LOCAL")
            if addr:
                out.add(str(ipaddress.ip_address(addr)))
        return out


def path_mtu(dst: str) -> int:
    """MTU of the interface the main table uses to reach ``dst`` (1500 if unknown)."""
    with IPRoute() as ipr:
        try:
            routes = ipr.route("get", dst=dst)
        except NetlinkError:
            return 1500
        for route in routes:
            oif = route.get_attr("RTA_OIF")
            if oif is None:
                continue
            links = ipr.get_links(oif)
            if links:
                return int(links[0].get_attr("IFLA_MTU") or 1500)
    return 1500
