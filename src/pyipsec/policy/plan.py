"""What applying a policy would change on a host, before anything changes.

``pyipsec policy plan FILE --me ADDR [--current FILE]`` compiles the new policy (and the
current one, if given) for the host and compares the results:

* SPD entries, keyed by (selector, direction): added, removed, changed (action, SA
  template or place in the order);
* daemon connections, keyed by name: added, removed, changed (which settings);
* firewall rules (the nftables rules the data plane would install): added and removed.

The firewall compiler lives above this layer (the data plane), so it is passed in as a
function ``entries -> nft JSON commands``; without one the firewall part is left out and
the plan says so.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pyipsec.ipsec.spd import SpdEntry
from pyipsec.policy.compile import CompiledPolicy

__all__ = ["Change", "Plan", "plan", "render_nft_rule"]

Firewall = Callable[[Sequence[SpdEntry]], list[dict[str, Any]]]


@dataclass(frozen=True)
class Change:
    """One difference: ``kind`` "add", "remove" or "change", with a one-line ``detail``."""

    kind: str  #: "add", "remove" or "change"
    what: str  #: "spd", "connection" or "firewall"
    name: str  #: SPD selector + direction, connection name, or rendered firewall rule
    detail: str = ""  #: what is (or was, or becomes) there


@dataclass(frozen=True)
class Plan:
    """The changes, in the order they would be shown."""

    policy: str  #: the new policy's name
    current: str | None  #: the current policy's name (None: nothing applied)
    host: tuple[str, ...]  #: the host's addresses
    changes: tuple[Change, ...]  #: every difference
    firewall_included: bool  #: False when no firewall compiler was given
    secrets_needed: tuple[str, ...] = ()  #: names of the PSKs the new policy needs
    requires: tuple[str, ...] = ()  #: daemon capabilities the new policy relies on
    notes: tuple[str, ...] = field(default=())  #: compile notes of the new policy

    @property
    def empty(self) -> bool:
        """Whether applying would change nothing."""
        return not self.changes

    def count(self, what: str, kind: str) -> int:
        return sum(1 for c in self.changes if c.what == what and c.kind == kind)

    def summary(self) -> str:
        parts = []
        for what in ("spd", "connection", "firewall"):
            if what == "firewall" and not self.firewall_included:
                continue
            counts = [f"{self.count(what, k)} {k}" for k in ("add", "change", "remove")]
            label = {"spd": "SPD entries", "connection": "connections", "firewall": "firewall"}
            parts.append(f"{label[what]}: {', '.join(counts)}")
        return "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "current": self.current,
            "host": list(self.host),
            "empty": self.empty,
            "changes": [c.__dict__ for c in self.changes],
            "firewall_included": self.firewall_included,
            "secrets_needed": list(self.secrets_needed),
            "requires": list(self.requires),
            "notes": list(self.notes),
        }

    def text(self) -> str:
        was = f"policy {self.current!r}" if self.current else "nothing applied"
        lines = [f"plan for {', '.join(self.host)}: {was} -> policy {self.policy!r}"]
        if self.empty:
            lines.append("  no changes")
        sign = {"add": "+", "remove": "-", "change": "~"}
        for c in self.changes:
            lines.append(f"  {sign[c.kind]} {c.what:<10} {c.name}" + (
                f"\n      {c.detail}" if c.detail else ""))  # fmt: skip
        lines.append(f"summary: {self.summary()}")
        if not self.firewall_included:
            lines.append("firewall rules: not computed (no firewall compiler)")
        if self.secrets_needed:
            lines.append("pre-shared keys needed: " + ", ".join(self.secrets_needed))
        if self.requires:
            lines.append("uses daemon capabilities: " + ", ".join(self.requires))
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)


def _entry_detail(e: SpdEntry, position: int) -> str:
    text = f"#{position + 1} {e.action.value}"
    t = e.template
    if t is not None:
        tunnel = f" {t.tunnel_local}->{t.tunnel_remote}" if t.mode == "tunnel" else ""
        text += (
            f" {t.protocol} {t.mode}{tunnel} [{', '.join(t.algorithms)}] "
            f"child {t.child} of {t.connection}"
        )
    return text


def _spd_changes(new: Sequence[SpdEntry], old: Sequence[SpdEntry]) -> list[Change]:
    def index(entries: Sequence[SpdEntry]) -> dict[str, tuple[int, SpdEntry]]:
        return {f"{e.selector} [{e.direction}]": (i, e) for i, e in enumerate(entries)}

    new_i, old_i = index(new), index(old)
    changes: list[Change] = []
    for key, (pos, e) in new_i.items():
        if key not in old_i:
            changes.append(Change("add", "spd", key, _entry_detail(e, pos)))
            continue
        old_pos, o = old_i[key]
        before, after = _entry_detail(o, old_pos), _entry_detail(e, pos)
        same_place = [k for k in new_i if k in old_i].index(key) == [
            k for k in old_i if k in new_i
        ].index(key)
        if (o.action, o.template) != (e.action, e.template) or not same_place:
            changes.append(Change("change", "spd", key, f"{before}  =>  {after}"))
    for key, (pos, o) in old_i.items():
        if key not in new_i:
            changes.append(Change("remove", "spd", key, _entry_detail(o, pos)))
    return changes


def _diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for k in list(dict.fromkeys([*b, *a])):
            if k not in a or k not in b:
                out.append(f"{prefix}{k}")
            else:
                out.extend(_diff_keys(a[k], b[k], f"{prefix}{k}."))
        return out
    return [] if a == b else [prefix.rstrip(".") or "value"]


def _connection_changes(new: dict[str, Any], old: dict[str, Any]) -> list[Change]:
    changes: list[Change] = []
    for name, conn in new.items():
        peer = ", ".join(conn["remote_addrs"])
        children = ", ".join(conn["children"])
        auth = " then ".join(
            pair["local"].get("auth", "psk") for pair in [conn, *conn.get("alternatives", [])]
        )
        if name not in old:
            detail = f"peer {peer}, children {children}, authentication {auth}"
            changes.append(Change("add", "connection", name, detail))
        elif old[name] != conn:
            fields = ", ".join(_diff_keys(old[name], conn))
            changes.append(Change("change", "connection", name, f"changed: {fields}"))
    for name, conn in old.items():
        if name not in new:
            changes.append(
                Change("remove", "connection", name, f"peer {', '.join(conn['remote_addrs'])}")
            )
    return changes


def _value(v: Any) -> str:
    if isinstance(v, dict):
        if "prefix" in v:
            return f"{v['prefix']['addr']}/{v['prefix']['len']}"
        if "range" in v:
            return f"{v['range'][0]}-{v['range'][1]}"
        if "set" in v:
            return "{ " + ", ".join(_value(x) for x in v["set"]) + " }"
        if "payload" in v:
            return f"{v['payload']['protocol']} {v['payload']['field']}"
        if "meta" in v:
            return f"meta {v['meta']['key']}"
    if isinstance(v, int) and v > 0xFFFF:
        return hex(v)
    return json.dumps(v) if not isinstance(v, (str, int)) else str(v)


def render_nft_rule(command: dict[str, Any]) -> str | None:
    """One ``{"add": {"rule": ...}}`` command in nft-like text; None for other commands."""
    rule = command.get("add", {}).get("rule")
    if rule is None:
        return None
    words: list[str] = []
    for expr in rule.get("expr", []):
        if "match" in expr:
            m = expr["match"]
            op = "" if m["op"] == "==" else f"{m['op']} "
            words.append(f"{_value(m['left'])} {op}{_value(m['right'])}")
        elif "mangle" in expr:
            words.append(f"{_value(expr['mangle']['key'])} set {_value(expr['mangle']['value'])}")
        elif len(expr) == 1:
            words.append(next(iter(expr)))
        else:
            words.append(json.dumps(expr, sort_keys=True))
    comment = f' comment "{rule["comment"]}"' if rule.get("comment") else ""
    return f"{rule['chain']}: {' '.join(words)}{comment}"


def _firewall_changes(
    new: Sequence[SpdEntry], old: Sequence[SpdEntry], firewall: Firewall
) -> list[Change]:
    def rules(entries: Sequence[SpdEntry]) -> Counter[str]:
        return Counter(
            text for text in (render_nft_rule(c) for c in firewall(entries)) if text is not None
        )

    new_rules, old_rules = rules(new), rules(old)
    changes = [Change("add", "firewall", r) for r in (new_rules - old_rules).elements()]
    changes += [Change("remove", "firewall", r) for r in (old_rules - new_rules).elements()]
    return changes


def plan(
    new: CompiledPolicy,
    current: CompiledPolicy | None = None,
    *,
    firewall: Firewall | None = None,
) -> Plan:
    """Compare ``new`` with ``current`` (None: nothing applied yet) for the same host."""
    old_spd = current.spd if current is not None else ()
    old_conns = dict(current.daemon.get("connections", {})) if current is not None else {}
    changes = _spd_changes(new.spd, old_spd)
    changes += _connection_changes(dict(new.daemon.get("connections", {})), old_conns)
    if firewall is not None:
        changes += _firewall_changes(new.spd, old_spd, firewall)
    return Plan(
        policy=new.policy,
        current=current.policy if current is not None else None,
        host=new.addresses,
        changes=tuple(changes),
        firewall_included=firewall is not None,
        secrets_needed=tuple(dict.fromkeys(new.psk_refs.values())),
        requires=tuple(sorted(new.requires)),
        notes=new.notes,
    )
