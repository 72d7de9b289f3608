"""Compile the SPD into the kernel: the nftables table ``inet pyipsec`` (JSON for ``nft -j``).

Chains (SPD order is rule order; the first matching rule decides, as in the SPD)::

    output      type route hook output priority mangle    (locally generated packets)
        meta mark SOCKET_MARK accept        the data plane's own ESP/AH/UDP packets
        oifname "lo" accept                 host-local traffic is never IPsec's business
        icmpv6 ND/MLD accept                neighbour discovery stays plain (also on input)
        PROTECT out-selector -> meta mark set MARK accept   (re-routed into pyipsec0)
        BYPASS  out-selector -> accept
        DISCARD out-selector -> counter drop
    prerouting  type filter hook prerouting priority mangle (forwarded traffic, gateways)
        iifname pyipsec0 accept; PROTECT out-selector -> meta mark set MARK
    input / forward   type filter, priority filter     (arriving packets)
        iifname pyipsec0 accept             decapsulated: the SA checked its selectors
        meta l4proto {esp, ah} accept; udp dport {500, 4500} accept
        nfproto ipv6 frag nexthdr {esp, ah} accept   (IPv6 reassembles after this hook)
        PROTECT in-selector -> counter drop  (plaintext that should have been protected)
        BYPASS  in-selector -> accept
        DISCARD in-selector -> counter drop
    postrouting type filter hook postrouting priority filter
        meta mark MARK oifname != pyipsec0 counter drop    FAIL CLOSED: a protected packet
                                                           never leaves by another interface
        oifname pyipsec0 tcp SYN -> maxseg set rt mtu      (MSS clamp to the TUN MTU)

"out-selector": saddr in local, daddr in remote, sport in local ports; "in-selector" the
mirror. Every rule carrying a counter has a comment ``<entry>/<chain>`` so that
``rule_counters`` can attribute drops to SPD entries.

This module is pure (no I/O): :func:`compile_ruleset` returns the command list that
:func:`pyipsec.platform.linux.nft.replace_table` applies.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

from pyipsec.ipsec.selectors import AddressRange, PortRange, Selector
from pyipsec.ipsec.spd import Action, SpdEntry
from pyipsec.platform.linux.nft import TableRef
from pyipsec.platform.linux.routing import RoutingConfig

Expr = dict[str, Any]

TABLE = TableRef("inet", "pyipsec")
#: ICMPv6 types exempt from IPsec: MLD (130-132, 143) and ND (133-137), RFC 4301 4.4.1
ND_TYPES = (130, 131, 132, 133, 134, 135, 136, 137, 143)


def _match(left: Expr, right: Any, op: str = "==") -> Expr:
    return {"match": {"op": op, "left": left, "right": right}}


def _meta(key: str) -> Expr:
    return {"meta": {"key": key}}


def _payload(proto: str, field: str) -> Expr:
    return {"payload": {"protocol": proto, "field": field}}


def _addr_value(r: AddressRange) -> Any:
    """nft right-hand side for an address range: single address, prefix, or range."""
    ctor = ipaddress.IPv4Address if r.version == 4 else ipaddress.IPv6Address
    if r.start == r.end:
        return str(ctor(r.start))
    plen = r.prefix_length
    if plen is not None:
        return {"prefix": {"addr": str(ctor(r.start)), "len": plen}}
    return {"range": [str(ctor(r.start)), str(ctor(r.end))]}


def _port_value(p: PortRange) -> Any:
    return p.start if p.start == p.end else {"range": [p.start, p.end]}


def selector_exprs(sel: Selector, direction: str) -> list[list[Expr]]:
    """Match expressions for ``sel`` seen in ``direction`` ("out": local = source).

    Returns one expression list per address family the selector covers (a selector of
    version 0 with a protocol but no addresses yields one family-less list).
    """
    src_key, dst_key = ("saddr", "daddr") if direction == "out" else ("daddr", "saddr")
    sport_key, dport_key = ("sport", "dport") if direction == "out" else ("dport", "sport")
    versions = [sel.version] if sel.version else [0]
    out: list[list[Expr]] = []
    for version in versions:
        exprs: list[Expr] = []
        fam = "ip" if version == 4 else "ip6"
        if version:
            exprs.append(_match(_meta("nfproto"), "ipv4" if version == 4 else "ipv6"))
        if version and not sel.local.is_any:
            exprs.append(_match(_payload(fam, src_key), _addr_value(sel.local)))
        if version and not sel.remote.is_any:
            exprs.append(_match(_payload(fam, dst_key), _addr_value(sel.remote)))
        if sel.protocol is not None:
            exprs.append(_match(_meta("l4proto"), sel.protocol))
            if sel.is_icmp:
                icmp = "icmp" if sel.protocol == 1 else "icmpv6"
                if not sel.local_ports.is_any:  # ICMP type: never swapped
                    exprs.append(_match(_payload(icmp, "type"), _port_value(sel.local_ports)))
                if not sel.remote_ports.is_any:
                    exprs.append(_match(_payload(icmp, "code"), _port_value(sel.remote_ports)))
            else:
                if not sel.local_ports.is_any:
                    exprs.append(_match(_payload("th", sport_key), _port_value(sel.local_ports)))
                if not sel.remote_ports.is_any:
                    exprs.append(_match(_payload("th", dport_key), _port_value(sel.remote_ports)))
        out.append(exprs)
    return out


def _rule(chain: str, expr: list[Expr], comment: str | None = None) -> dict[str, Any]:
    rule: dict[str, Any] = {"family": TABLE.family, "table": TABLE.name, "chain": chain}
    rule["expr"] = expr
    if comment:
        rule["comment"] = comment[:128]
    return {"add": {"rule": rule}}


def _chain(name: str, kind: str, hook: str, prio: int) -> dict[str, Any]:
    return {
        "add": {
            "chain": {
                "family": TABLE.family, "table": TABLE.name, "name": name,
                "type": kind, "hook": hook, "prio": prio, "policy": "accept",
            }
        }
    }  # fmt: skip


ACCEPT: Expr = {"accept": None}
DROP: Expr = {"drop": None}
COUNTER: Expr = {"counter": None}


def compile_ruleset(entries: Iterable[SpdEntry], cfg: RoutingConfig) -> list[dict[str, Any]]:
    """The chains and rules (without the table add/delete) for the SPD ``entries``.

    ``entries`` must be in SPD order (``Spd.entries()``); rule order follows it.
    """
    entries = list(entries)
    tun = cfg.ifname
    body: list[dict[str, Any]] = [
        _chain("output", "route", "output", -150),
        _chain("prerouting", "filter", "prerouting", -150),
        _chain("input", "filter", "input", 0),
        _chain("forward", "filter", "forward", 0),
        _chain("postrouting", "filter", "postrouting", 0),
        _rule("output", [_match(_meta("mark"), cfg.socket_mark), ACCEPT]),
        _rule("output", [_match(_meta("oifname"), "lo"), ACCEPT]),
        _rule("prerouting", [_match(_meta("iifname"), tun), ACCEPT]),
    ]
    # IPv6 neighbour discovery and MLD never go through IPsec (they resolve the very
    # addresses the ESP packets are sent to); accepted before any SPD entry.
    nd = [
        _match(_meta("l4proto"), 58),
        _match(_payload("icmpv6", "type"), {"set": list(ND_TYPES)}),
        ACCEPT,
    ]
    body.append(_rule("output", nd))
    ipsec_protos = {"set": [50, 51]}
    for chain in ("input", "forward"):
        body.append(_rule(chain, [_match(_meta("iifname"), tun), ACCEPT]))
        body.append(_rule(chain, [_match(_meta("l4proto"), ipsec_protos), ACCEPT]))
        # IPv6 reassembles after the input hook: fragments of an ESP/AH packet (their
        # fragment header names ESP/AH) are accepted here and reassembled into it
        frag = {"exthdr": {"name": "frag", "field": "nexthdr"}}
        v6 = _match(_meta("nfproto"), "ipv6")
        body.append(_rule(chain, [v6, _match(frag, ipsec_protos), ACCEPT]))
        body.append(_rule(chain, nd))
        body.append(
            _rule(
                chain,
                [
                    _match(_meta("l4proto"), 17),
                    _match(_payload("udp", "dport"), {"set": [500, 4500]}),
                    ACCEPT,
                ],
            )
        )
    for e in entries:
        outs = selector_exprs(e.selector, "out")
        ins = selector_exprs(e.selector, "in")
        if e.applies_to("out"):
            for m in outs:
                if e.action is Action.PROTECT:
                    mark = {"mangle": {"key": _meta("mark"), "value": cfg.mark}}
                    body.append(_rule("output", [*m, COUNTER, mark, ACCEPT], f"{e.name}/out"))
                    body.append(_rule("prerouting", [*m, mark], f"{e.name}/pre"))
                elif e.action is Action.BYPASS:
                    body.append(_rule("output", [*m, ACCEPT]))
                else:
                    body.append(_rule("output", [*m, COUNTER, DROP], f"{e.name}/out"))
                    body.append(_rule("forward", [*m, COUNTER, DROP], f"{e.name}/fwd-out"))
        if e.applies_to("in"):
            for m in ins:
                if e.action is Action.BYPASS:
                    body.append(_rule("input", [*m, ACCEPT]))
                    body.append(_rule("forward", [*m, ACCEPT]))
                else:  # PROTECT: plaintext that did not come through the TUN; DISCARD
                    body.append(_rule("input", [*m, COUNTER, DROP], f"{e.name}/in"))
                    body.append(_rule("forward", [*m, COUNTER, DROP], f"{e.name}/fwd-in"))
    body.append(
        _rule(
            "postrouting",
            [
                _match(_meta("mark"), cfg.mark),
                _match(_meta("oifname"), tun, "!="),
                COUNTER,
                DROP,
            ],
            "fail-closed",
        )
    )
    body.append(
        _rule(
            "postrouting",
            [
                _match(_meta("oifname"), tun),
                _match(_meta("l4proto"), 6),
                _match({"&": [_payload("tcp", "flags"), ["syn", "rst"]]}, "syn"),
                {
                    "mangle": {
                        "key": {"tcp option": {"name": "maxseg", "field": "size"}},
                        "value": {"rt": {"key": "mtu"}},
                    }
                },
            ],
        )
    )
    return body
