"""Explain what a compiled policy does with one packet: which rule and filter, and why.

``pyipsec policy explain FILE --me ADDR --src A --dst B --proto tcp --dport 5432`` answers
"what happens to this traffic on this host": the SPD entry that the data plane would
consult (the real :class:`~pyipsec.ipsec.spd.Spd` lookup, in the packet's direction),
the rule and filter it comes from, the outcome (protected how, passed in clear, dropped),
and the other filters that match the packet too but lose because they are less specific.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from pyipsec.errors import ConfigError
from pyipsec.ipsec.selectors import PORT_PROTOCOLS, format_protocol, parse_protocol
from pyipsec.ipsec.spd import Action, Spd, SpdEntry
from pyipsec.policy.compile import CompiledPolicy, Origin
from pyipsec.policy.order import ResolvedFilter
from pyipsec.wire.flow import Flow

__all__ = ["Explanation", "explain", "make_flow"]

_REASONS = (
    "its smaller address set is larger",
    "its larger address set is larger",
    "it matches any protocol",
    "its smaller port range is wider",
    "its larger port range is wider",
    "it is mirrored (matches both directions)",
)


def make_flow(
    src: str, dst: str, protocol: str | int | None = None, sport: int = 0, dport: int = 0
) -> Flow:
    """A packet from ``src`` to ``dst``; ConfigError naming the bad argument."""
    try:
        s = ipaddress.ip_address(src.strip())
    except ValueError:
        raise ConfigError(f"not an address: {src!r}", key="src") from None
    try:
        d = ipaddress.ip_address(dst.strip())
    except ValueError:
        raise ConfigError(f"not an address: {dst!r}", key="dst") from None
    if s.version != d.version:
        raise ConfigError("source and destination of different address families", key="dst")
    proto = parse_protocol(protocol, key="proto")
    if proto is None:
        proto = 0
        if sport or dport:
            raise ConfigError("ports need --proto (tcp, udp...)", key="proto")
    for key, port in (("sport", sport), ("dport", dport)):
        if not 0 <= port <= 65535:
            raise ConfigError(f"port {port} outside 0-65535", key=key)
        if port and proto not in PORT_PROTOCOLS and proto not in (1, 58):
            raise ConfigError(f"{format_protocol(proto)} has no ports", key=key)
    return Flow(s.version, int(s), int(d), proto, sport, dport)


def _flow_text(flow: Flow) -> str:
    cls = ipaddress.IPv4Address if flow.version == 4 else ipaddress.IPv6Address
    text = f"{cls(flow.src)} -> {cls(flow.dst)} {format_protocol(flow.protocol or None)}"
    if flow.protocol in PORT_PROTOCOLS:
        text += f" sport {flow.sport} dport {flow.dport}"
    return text


def _outcome(entry: SpdEntry | None, origin: Origin | None, direction: str) -> str:
    if entry is None or origin is None:
        if direction == "local":
            return "host-local traffic: never IPsec's business (passes on loopback)"
        return "no rule matches: the traffic passes in clear (no SPD entry covers it)"
    action = origin.filter_action
    if entry.action is Action.DISCARD:
        return f"dropped (filter action {action.name!r}: block)"
    if entry.action is Action.BYPASS:
        if action.action == "negotiate":
            return (
                f"accepted in clear as it arrives (filter action {action.name!r}: "
                "accept_unsecured); replies are protected with IPsec"
            )
        return f"passes in clear (filter action {action.name!r}: permit)"
    template = entry.template
    assert template is not None
    rule_auth = origin.filter.rule.authentication
    # the methods in the administrator's order: an initiator tries them one after the other
    auth = ", else ".join(m.describe() for m in rule_auth) or "?"
    mode = (
        f"tunnel mode to {template.tunnel_remote}"
        if template.mode == "tunnel"
        else "transport mode"
    )
    peer = (
        "the other host of each packet as peer (one IKE SA per host)"
        if origin.peer == "%any"
        else f"peer {origin.peer}"
    )
    text = (
        f"protected with {template.protocol.upper()} ({' or '.join(template.algorithms)}) in "
        f"{mode}: Child SA {template.child!r} of connection {origin.connection!r} with "
        f"{peer}, authenticated by {auth}; negotiated on the first packet"
    )
    if direction == "in":
        text += "; clear text arriving from the peer is dropped (only what its SA decrypts passes)"
    if action.allow_unsecured_fallback:
        text += f"; in clear if the peer does not answer within {action.fallback_seconds:g} s"
    return text


@dataclass(frozen=True)
class Explanation:
    """What a policy does with one packet on one host."""

    policy: str  #: policy name
    host: tuple[str, ...]  #: the host's addresses
    flow: Flow  #: the packet
    direction: str  #: "out" (host sends), "in" (host receives), "forward" or "local"
    entry: SpdEntry | None  #: the SPD entry that decides, None when none matches
    origin: Origin | None  #: its rule and filter
    outcome: str  #: what happens, in words
    losers: tuple[tuple[ResolvedFilter, str], ...]  #: other matching filters, why they lose

    @property
    def action(self) -> str:
        """``protect``, ``bypass``, ``discard``, or ``none`` (no entry: clear text)."""
        return self.entry.action.value if self.entry is not None else "none"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``--json``)."""
        origin = self.origin
        return {
            "policy": self.policy,
            "host": list(self.host),
            "flow": _flow_text(self.flow),
            "direction": self.direction,
            "action": self.action,
            "outcome": self.outcome,
            "spd_entry": self.entry.name if self.entry else None,
            "selector": str(self.entry.selector) if self.entry else None,
            "rule": origin.rule if origin else None,
            "filter": (
                {
                    "list": origin.filter.filter.list_name,
                    "index": origin.filter.filter.index + 1,
                    "text": origin.filter.filter.describe(),
                    "description": origin.filter.filter.description,
                    "where": str(origin.filter.filter.where),
                }
                if origin
                else None
            ),
            "filter_action": origin.filter_action.name if origin else None,
            "connection": origin.connection if origin else None,
            "also_matching": [
                {"rule": rf.rule.name, "filter": rf.filter.label, "why_not": why}
                for rf, why in self.losers
            ],
        }

    def text(self) -> str:
        """Human-readable explanation."""
        lines = [f"{_flow_text(self.flow)} on {', '.join(self.host)} ({self.direction})"]
        if self.origin is not None and self.entry is not None:
            f = self.origin.filter
            lines.append(f"  rule:    {self.origin.rule!r} (filter action "
                         f"{self.origin.filter_action.name!r})")  # fmt: skip
            lines.append(f"  filter:  {f.filter.label}: {f.filter.describe()}")
            lines.append(f"           at {f.filter.where}")
            lines.append(f"  SPD:     {self.entry.name}: {self.entry.selector} "
                         f"[{self.entry.direction}] -> {self.action}")  # fmt: skip
        lines.append(f"  result:  {self.outcome}")
        if self.origin is not None:
            lines.append(
                f"  why:     the most specific of the {len(self.losers) + 1} filter(s) matching "
                f"this packet (number {self.origin.rank + 1} in this host's order)"
            )
        for rf, why in self.losers:
            lines.append(f"  loses:   rule {rf.rule.name!r}, filter {rf.filter.label}: {why}")
        return "\n".join(lines)


def _why_not(winner: ResolvedFilter | None, loser: ResolvedFilter) -> str:
    if winner is None:
        return "its traffic is not this host's (no SPD entry here)"
    a, b = winner.specificity(), loser.specificity()
    for reason, x, y in zip(_REASONS, a, b, strict=True):
        if x != y:
            return f"less specific: {reason} ({y} against {x})"
    return "equally specific, same outcome; ordered by rule name"


def explain(compiled: CompiledPolicy, flow: Flow) -> Explanation:
    """Explain what ``compiled`` does with ``flow`` on its host."""
    mine = {int(ipaddress.ip_address(a)) for a in compiled.addresses}
    versions = {ipaddress.ip_address(a).version for a in compiled.addresses}
    from_me = flow.src in mine and flow.version in versions
    to_me = flow.dst in mine and flow.version in versions
    if from_me and to_me:
        direction = "local"
    elif from_me:
        direction = "out"
    elif to_me:
        direction = "in"
    else:
        direction = "forward"
    entry: SpdEntry | None = None
    if direction != "local":
        spd = Spd(list(compiled.spd), cache_size=0)
        entry = spd.lookup(flow, "in" if direction == "in" else "out")
    origin = compiled.origins.get(entry.name) if entry is not None else None
    winner = origin.filter if origin is not None else None
    losers = tuple(
        (rf, _why_not(winner, rf))
        for rf in compiled.ordered
        if rf is not winner and rf.matches(flow) and direction != "local"
    )
    return Explanation(
        policy=compiled.policy,
        host=compiled.addresses,
        flow=flow,
        direction=direction,
        entry=entry,
        origin=origin,
        outcome=_outcome(entry, origin, direction),
        losers=losers,
    )
