"""The Security Policy Database (RFC 4301 section 4.4.1), indexed by address and protocol.

An :class:`Spd` holds ordered :class:`SpdEntry` objects. Order is what RFC 4301 calls the
ordered SPD (decorrelation is not done): a packet gets the *first* entry that matches, in
``(priority, insertion order)`` order, lower priority values first. ``replace`` keeps an
entry's place among entries of equal priority.

Lookup does not scan the entries. Per direction and address family, every entry is filed
under the prefix of its local range and the prefix of its remote range (for a range that
is not a prefix, the smallest prefix covering it, shortened to a multiple of 8 bits for
IPv4 and 16 for IPv6 so that odd ranges add few groups; such entries are checked exactly).
Entries with the same pair of prefix lengths form a *group*: a hash table keyed by
``(local >> host_bits, remote >> host_bits)`` whose buckets are split by protocol (one
list per protocol number plus one for "any"), each list sorted by order. A lookup probes
each group once, and groups are visited by the lowest order they contain so the search
stops as soon as no remaining group can beat the best match found. The cost therefore
depends on the number of distinct prefix-length pairs in use (a handful in practice:
/32-/32 host pairs, a few subnet sizes, /0 wildcards) and on bucket sizes, not on the
number of entries. ``bench/spd_bench.py`` measures it.

Results may be cached per flow (``cache_size``); every change to the SPD empties the
cache, so a cached answer is always the answer a fresh lookup would give.
"""

from __future__ import annotations

import enum
import ipaddress
from bisect import insort
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from pyipsec.crypto.esp_algorithms import get_algorithm
from pyipsec.errors import ConfigError
from pyipsec.ipsec.lifetime import Lifetime
from pyipsec.ipsec.selectors import AddressRange, Selector
from pyipsec.wire.flow import Flow

__all__ = ["Action", "SaTemplate", "Spd", "SpdEntry", "SpdStatistics"]

_DIRECTIONS = ("out", "in")


class Action(enum.Enum):
    """What the SPD does with a packet (RFC 4301 section 4.4.1)."""

    PROTECT = "protect"  #: apply IPsec with the entry's SA template
    BYPASS = "bypass"  #: let the packet pass in clear
    DISCARD = "discard"  #: drop the packet

    @classmethod
    def parse(cls, text: str | Action, *, key: str = "action") -> Action:
        """Parse an action; the Windows filter-action words are accepted too.

        ``negotiate`` / ``require`` mean PROTECT, ``permit`` / ``allow`` BYPASS,
        ``block`` / ``drop`` DISCARD.
        """
        if isinstance(text, Action):
            return text
        word = str(text).strip().lower()
        for action, words in _ACTION_WORDS.items():
            if word in words:
                return action
        raise ConfigError(f"unknown action {text!r} (protect, bypass or discard)", key=key)


_ACTION_WORDS = {
    Action.PROTECT: ("protect", "negotiate", "require", "ipsec"),
    Action.BYPASS: ("bypass", "permit", "allow", "pass", "none"),
    Action.DISCARD: ("discard", "block", "drop", "deny"),
}


@dataclass(frozen=True)
class SaTemplate:
    """How a PROTECT entry's traffic is protected: what the daemon negotiates or installs.

    ``child`` is the name under which the daemon finds the Child SA in the SAD
    (``Sad.lookup_outbound(child)``) or, when there is none, starts IKE for it.
    """

    child: str  #: Child SA name: the SAD key for the outbound SA and the IKE config name
    protocol: str = "esp"  #: "esp" or "ah"
    mode: str = "transport"  #: "transport" or "tunnel"
    tunnel_local: str | None = None  #: tunnel mode: this host's outer address
    tunnel_remote: str | None = None  #: tunnel mode: the peer's outer address
    #: acceptable SA algorithms, most preferred first: the keywords SecurityAssociation takes
    #: (checked against the registry); key-exchange groups for PFS belong to the IKE config
    algorithms: tuple[str, ...] = ("aes128gcm16",)
    lifetime: Lifetime | None = None  #: soft/hard limits of the SAs, ``None`` for none
    encap: str | None = None  #: ``None`` or ``"udp"`` (ESP in UDP, RFC 3948)
    connection: str | None = None  #: the IKE connection the child belongs to, if named

    def __post_init__(self) -> None:
        if not isinstance(self.child, str) or not self.child:
            raise ConfigError("the SA template needs a child name", key="template.child")
        if self.protocol not in ("esp", "ah"):
            raise ConfigError(
                f"protocol must be esp or ah, not {self.protocol!r}", key="template.protocol"
            )
        if self.mode not in ("transport", "tunnel"):
            raise ConfigError(
                f"mode must be transport or tunnel, not {self.mode!r}", key="template.mode"
            )
        if isinstance(self.algorithms, str):
            object.__setattr__(self, "algorithms", (self.algorithms,))
        else:
            object.__setattr__(self, "algorithms", tuple(self.algorithms))
        if not self.algorithms or not all(isinstance(a, str) and a for a in self.algorithms):
            raise ConfigError("at least one algorithm keyword is needed", key="template.algorithms")
        for name in self.algorithms:
            try:
                get_algorithm(name, self.protocol)
            except ConfigError as exc:
                raise ConfigError(exc.reason, key="template.algorithms") from None
        if self.lifetime is not None and not isinstance(self.lifetime, Lifetime):
            raise ConfigError("lifetime must be a Lifetime or None", key="template.lifetime")
        if self.encap not in (None, "udp"):
            raise ConfigError(
                f"encap must be None or 'udp', not {self.encap!r}", key="template.encap"
            )
        if self.encap == "udp" and self.protocol == "ah":
            raise ConfigError(
                "AH cannot be UDP-encapsulated (RFC 3948 covers ESP only)", key="template.encap"
            )
        if self.mode == "tunnel":
            versions = []
            for name in ("tunnel_local", "tunnel_remote"):
                value = getattr(self, name)
                if value is None:
                    raise ConfigError(
                        "tunnel mode needs both tunnel endpoints", key=f"template.{name}"
                    )
                try:
                    versions.append(ipaddress.ip_address(value).version)
                except ValueError:
                    raise ConfigError(
                        f"not an IP address: {value!r}", key=f"template.{name}"
                    ) from None
            if versions[0] != versions[1]:
                raise ConfigError(
                    "tunnel endpoints mix IPv4 and IPv6", key="template.tunnel_remote"
                )
        elif self.tunnel_local is not None or self.tunnel_remote is not None:
            raise ConfigError(
                "tunnel endpoints are only for tunnel mode", key="template.tunnel_local"
            )


@dataclass(frozen=True)
class SpdEntry:
    """One SPD entry: a named selector with its action (and SA template for PROTECT).

    ``direction`` restricts the entry to outbound (``"out"``) or inbound (``"in"``)
    traffic; ``"both"`` (the default) applies it to both, with the selector read from
    this host's side in both cases.
    """

    name: str  #: unique name (add/remove/replace go by name)
    selector: Selector  #: which traffic the entry covers
    action: Action  #: PROTECT, BYPASS or DISCARD
    priority: int = 0  #: lower values are consulted first; ties by insertion order
    template: SaTemplate | None = None  #: required for PROTECT, forbidden otherwise
    direction: str = "both"  #: "both", "out" or "in"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError("an SPD entry needs a name", key="name")
        if not isinstance(self.selector, Selector):
            raise ConfigError("selector must be a Selector", key="selector")
        object.__setattr__(self, "action", Action.parse(self.action))
        if isinstance(self.priority, bool) or not isinstance(self.priority, int):
            raise ConfigError(f"priority must be an integer, not {self.priority!r}", key="priority")
        if self.action is Action.PROTECT:
            if not isinstance(self.template, SaTemplate):
                raise ConfigError("a PROTECT entry needs an SA template", key="template")
        elif self.template is not None:
            raise ConfigError(
                f"a {self.action.value.upper()} entry takes no SA template", key="template"
            )
        if self.direction not in ("both", "out", "in"):
            raise ConfigError(
                f"direction must be both, out or in, not {self.direction!r}", key="direction"
            )

    def applies_to(self, direction: str) -> bool:
        """Whether the entry takes part in lookups of ``direction`` ("in" / "out")."""
        return self.direction == "both" or self.direction == direction


@dataclass(frozen=True)
class SpdStatistics:
    """A snapshot of SPD counters."""

    entries: int  #: number of entries
    lookups: int  #: lookups done (cached or not)
    protect: int  #: lookups answered by a PROTECT entry
    bypass: int  #: lookups answered by a BYPASS entry
    discard: int  #: lookups answered by a DISCARD entry
    no_match: int  #: lookups no entry matched
    cache_hits: int  #: lookups answered from the flow cache
    changes: int  #: adds, removes and replaces since creation
    rejected_changes: int  #: adds, removes and replaces refused (nothing changed)
    #: per entry, in SPD order: (name, lookups it answered)
    entry_hits: tuple[tuple[str, int], ...] = field(default=())


# --------------------------------------------------------------------------- index


_ACTION_INDEX = {Action.PROTECT: 0, Action.BYPASS: 1, Action.DISCARD: 2}


class _Compiled:
    """An entry flattened for matching: plain ints in slots, no method calls."""

    __slots__ = (
        "entry",
        "key",
        "ls",
        "le",
        "rs",
        "re",
        "lps",
        "lpe",
        "rps",
        "rpe",
        "proto",
        "action",
        "hits",
    )

    def __init__(self, entry: SpdEntry, seq: int) -> None:
        sel = entry.selector
        self.entry = entry
        self.key = (entry.priority, seq)
        self.ls, self.le = sel.local.start, sel.local.end
        self.rs, self.re = sel.remote.start, sel.remote.end
        self.lps, self.lpe = sel.local_ports.start, sel.local_ports.end
        self.rps, self.rpe = sel.remote_ports.start, sel.remote_ports.end
        self.proto = sel.protocol
        self.action = _ACTION_INDEX[entry.action]  # a list index: Enum hashing is slow
        self.hits = 0  # lookups this entry answered


#: The covering prefix of a range that is not itself a prefix is rounded down to these
#: strides (IPv4: 0/8/16/24/32, IPv6: every 16 bits), so that arbitrary ranges, which are
#: rare, add few prefix-length groups; they are matched exactly inside the bucket.
_STRIDE = {4: 8, 6: 16}


def _cover(addr: AddressRange) -> tuple[int, int]:
    """The bucket prefix of a range: ``(length, start >> host_bits)``."""
    if addr.version == 0:
        return 0, 0
    length, net = addr.cover()
    if addr.prefix_length is None:
        length -= length % _STRIDE[addr.version]
        net = addr.start >> ((32 if addr.version == 4 else 128) - length)
    return length, net


class _Group:
    """All entries of one table whose covering prefixes have the same two lengths."""

    __slots__ = ("lshift", "rshift", "buckets", "min_key", "count")

    def __init__(self, lshift: int, rshift: int) -> None:
        self.lshift = lshift
        self.rshift = rshift
        #: (local >> lshift, remote >> rshift) -> {protocol or None: [compiled, sorted]}
        self.buckets: dict[tuple[int, int], dict[int | None, list[_Compiled]]] = {}
        self.min_key: tuple[int, int] | None = None  # a lower bound of the keys inside
        self.count = 0


class _Table:
    """The index of one direction and address family."""

    __slots__ = ("bits", "groups", "ordered")

    def __init__(self, bits: int) -> None:
        self.bits = bits
        self.groups: dict[tuple[int, int], _Group] = {}
        self.ordered: list[tuple[tuple[int, int], int, int, Any]] | None = []

    def _place(self, c: _Compiled) -> tuple[_Group | None, tuple[int, int], tuple[int, int]]:
        sel = c.entry.selector
        llen, lnet = _cover(sel.local)
        rlen, rnet = _cover(sel.remote)
        return self.groups.get((llen, rlen)), (llen, rlen), (lnet, rnet)

    def add(self, c: _Compiled) -> None:
        group, lengths, nets = self._place(c)
        if group is None:
            group = _Group(self.bits - lengths[0], self.bits - lengths[1])
            self.groups[lengths] = group
        bucket = group.buckets.setdefault(nets, {})
        insort(bucket.setdefault(c.proto, []), c, key=_key)
        group.count += 1
        if group.min_key is None or c.key < group.min_key:
            group.min_key = c.key
            self.ordered = None  # re-sort groups lazily

    def remove(self, c: _Compiled) -> None:
        group, lengths, nets = self._place(c)
        assert group is not None
        bucket = group.buckets[nets]
        entries = bucket[c.proto]
        entries.remove(c)
        if not entries:
            del bucket[c.proto]
            if not bucket:
                del group.buckets[nets]
        group.count -= 1
        if not group.count:
            del self.groups[lengths]
            self.ordered = None
        # otherwise min_key stays a valid lower bound: removing never lowers the minimum

    def probes(self) -> list[tuple[tuple[int, int], int, int, Any]]:
        """``(min_key, lshift, rshift, buckets.get)`` per group, lowest ``min_key`` first:
        what the hot loop needs, without attribute lookups."""
        if self.ordered is None:
            groups = sorted(self.groups.values(), key=_min_key)
            self.ordered = [(g.min_key, g.lshift, g.rshift, g.buckets.get) for g in groups]
        return self.ordered


_UNCACHED = object()


def _key(c: _Compiled) -> tuple[int, int]:
    return c.key


def _min_key(g: _Group) -> tuple[int, int]:
    assert g.min_key is not None
    return g.min_key


class Spd:
    """An ordered, indexed SPD.

    ``cache_size`` bounds the per-flow result cache (0 disables it); the cache is emptied
    on every change and when full.
    """

    def __init__(
        self, entries: list[SpdEntry] | tuple[SpdEntry, ...] = (), *, cache_size: int = 4096
    ) -> None:
        self._by_name: dict[str, _Compiled] = {}
        self._tables = {d: {4: _Table(32), 6: _Table(128)} for d in _DIRECTIONS}
        self._seq = 0
        self._sorted: list[SpdEntry] | None = []
        #: per direction: flow -> answer (None = no entry matched)
        self._cache: dict[str, dict[Flow, _Compiled | None]] = {d: {} for d in _DIRECTIONS}
        self._cache_size = cache_size
        self._lookups = 0
        self._no_match = 0
        self._cache_hits = 0
        self._changes = 0
        self._rejected = 0
        self._per_action = [0, 0, 0]  # by _ACTION_INDEX
        for entry in entries:
            self.add(entry)

    # ------------------------------------------------------------------ changes

    def _index(self, c: _Compiled) -> None:
        version = c.entry.selector.version
        for direction in _DIRECTIONS:
            if not c.entry.applies_to(direction):
                continue
            for v in (4, 6) if version == 0 else (version,):
                self._tables[direction][v].add(c)

    def _unindex(self, c: _Compiled) -> None:
        version = c.entry.selector.version
        for direction in _DIRECTIONS:
            if not c.entry.applies_to(direction):
                continue
            for v in (4, 6) if version == 0 else (version,):
                self._tables[direction][v].remove(c)

    def _changed(self) -> None:
        for cache in self._cache.values():
            cache.clear()
        self._sorted = None
        self._changes += 1

    def _reject(self, message: str, key: str) -> ConfigError:
        self._rejected += 1
        return ConfigError(message, key=key)

    def add(self, entry: SpdEntry) -> None:
        """Add an entry after all entries of the same priority."""
        if not isinstance(entry, SpdEntry):
            raise self._reject("not an SpdEntry", "entry")
        if entry.name in self._by_name:
            raise self._reject(f"an SPD entry named {entry.name!r} exists", "name")
        self._seq += 1
        c = _Compiled(entry, self._seq)
        self._index(c)
        self._by_name[entry.name] = c
        self._changed()

    def remove(self, name: str) -> SpdEntry:
        """Remove the entry called ``name`` and return it."""
        c = self._by_name.get(name)
        if c is None:
            raise self._reject(f"no SPD entry named {name!r}", "name")
        self._unindex(c)
        del self._by_name[name]
        self._changed()
        return c.entry

    def replace(self, entry: SpdEntry) -> SpdEntry:
        """Replace the entry of the same name, keeping its place among equal priorities.

        Returns the old entry.
        """
        if not isinstance(entry, SpdEntry):
            raise self._reject("not an SpdEntry", "entry")
        old = self._by_name.get(entry.name)
        if old is None:
            raise self._reject(f"no SPD entry named {entry.name!r}", "name")
        c = _Compiled(entry, old.key[1])
        c.hits = old.hits  # the entry keeps its counter across a replace
        self._unindex(old)
        self._index(c)
        self._by_name[entry.name] = c
        self._changed()
        return old.entry

    def clear(self) -> None:
        """Remove every entry."""
        for name in list(self._by_name):
            self.remove(name)

    # ------------------------------------------------------------------ queries

    def get(self, name: str) -> SpdEntry | None:
        """The entry called ``name``, if any."""
        c = self._by_name.get(name)
        return None if c is None else c.entry

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __len__(self) -> int:
        return len(self._by_name)

    def entries(self) -> list[SpdEntry]:
        """All entries in lookup order (priority, then insertion)."""
        if self._sorted is None:
            self._sorted = [c.entry for c in sorted(self._by_name.values(), key=_key)]
        return list(self._sorted)

    def __iter__(self) -> Iterator[SpdEntry]:
        return iter(self.entries())

    def lookup(self, flow: Flow, direction: str = "out") -> SpdEntry | None:
        """The first entry, in SPD order, whose selector matches ``flow``.

        ``direction`` ``"out"`` for a packet this host sends (local = source), ``"in"``
        for one it receives (local = destination). ``None`` when nothing matches (RFC
        4301 then wants the packet discarded; the caller decides).
        """
        cache = self._cache.get(direction)  # type: ignore[call-overload]
        if cache is None:
            raise ValueError(f"direction must be 'in' or 'out', not {direction!r}")
        self._lookups += 1
        if self._cache_size:
            found = cache.get(flow, _UNCACHED)
            if found is not _UNCACHED:
                self._cache_hits += 1
                return self._count(found)  # type: ignore[arg-type]
            found = self._search(flow, direction)
            if len(cache) >= self._cache_size:
                cache.clear()
            cache[flow] = found
            return self._count(found)
        return self._count(self._search(flow, direction))

    def _count(self, c: _Compiled | None) -> SpdEntry | None:
        if c is None:
            self._no_match += 1
            return None
        c.hits += 1
        self._per_action[c.action] += 1
        return c.entry

    def _search(self, flow: Flow, direction: str) -> _Compiled | None:
        # Hot path: plain locals and slot reads only.
        proto = flow.protocol
        if direction == "out":
            laddr, raddr, lport, rport = flow.src, flow.dst, flow.sport, flow.dport
        else:
            laddr, raddr, lport, rport = flow.dst, flow.src, flow.dport, flow.sport
        if proto == 1 or proto == 58:
            lport, rport = flow.sport, flow.dport  # ICMP type and code are not swapped
        tables = self._tables[direction]
        table = tables.get(flow.version)
        if table is None:
            return None
        best: _Compiled | None = None
        best_key: tuple[int, int] | None = None
        for min_key, lshift, rshift, get in table.ordered or table.probes():
            if best_key is not None and min_key >= best_key:
                break
            bucket = get((laddr >> lshift, raddr >> rshift))
            if bucket is None:
                continue
            for candidates in (bucket.get(proto), bucket.get(None)):
                if candidates is None:
                    continue
                for c in candidates:
                    if best_key is not None and c.key >= best_key:
                        break
                    if (
                        c.ls <= laddr <= c.le
                        and c.rs <= raddr <= c.re
                        and c.lps <= lport <= c.lpe
                        and c.rps <= rport <= c.rpe
                    ):
                        best, best_key = c, c.key
                        break
        return best

    def statistics(self) -> SpdStatistics:
        """A snapshot of the counters, with per-entry hits in SPD order."""
        return SpdStatistics(
            entries=len(self._by_name),
            lookups=self._lookups,
            protect=self._per_action[0],
            bypass=self._per_action[1],
            discard=self._per_action[2],
            no_match=self._no_match,
            cache_hits=self._cache_hits,
            changes=self._changes,
            rejected_changes=self._rejected,
            entry_hits=tuple(
                (c.entry.name, c.hits) for c in sorted(self._by_name.values(), key=_key)
            ),
        )
