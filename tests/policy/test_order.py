"""Specificity order, ties and filter resolution (DNS through a fake resolver)."""

from __future__ import annotations

import ipaddress
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyipsec.errors import ConfigError
from pyipsec.ipsec.selectors import PortRange
from pyipsec.policy.loader import parse_endpoint
from pyipsec.policy.model import Filter, Rule, Where
from pyipsec.policy.order import (
    ResolvedFilter,
    check_ties,
    host_ranges,
    order_filters,
    resolve_endpoint,
    resolve_filter,
)
from pyipsec.wire.flow import Flow

ME = host_ranges(["10.0.0.1"])


def _filter(src: str, dst: str, proto: int | None = None, sport: str = "any",
            dport: str = "any", mirrored: bool = True, index: int = 0) -> Filter:  # fmt: skip
    return Filter(
        parse_endpoint(src),
        parse_endpoint(dst),
        proto,
        PortRange.parse(sport),
        PortRange.parse(dport),
        mirrored,
        list_name="L",
        index=index,
        where=Where("p.yaml", 10 + index, f"filter_lists.L.filters.{index}"),
    )


def _rf(f: Filter, rule: str = "R", outcome: str = "a") -> ResolvedFilter:
    return resolve_filter(Rule(rule, "L", outcome), f, ME, None, (outcome,))


def _flow(src: str, dst: str, proto: int = 6, sport: int = 0, dport: int = 0) -> Flow:
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    return Flow(s.version, int(s), int(d), proto, sport, dport)


def test_longest_prefix_on_the_more_specific_side_wins() -> None:
    host = _rf(_filter("me", "10.0.0.9"))
    subnet = _rf(_filter("me", "10.0.0.0/24"))
    anyf = _rf(_filter("me", "any"))
    rng = _rf(_filter("me", "10.0.0.8-10.0.0.9"))
    assert order_filters([anyf, subnet, host, rng]) == [host, rng, subnet, anyf]


def test_protocol_then_ports_then_one_way() -> None:
    plain = _rf(_filter("me", "10.0.0.9"))
    tcp = _rf(_filter("me", "10.0.0.9", 6))
    port = _rf(_filter("me", "10.0.0.9", 6, dport="5432"))
    ports = _rf(_filter("me", "10.0.0.9", 6, dport="5000-6000"))
    oneway = _rf(_filter("me", "10.0.0.9", 6, dport="5432", mirrored=False))
    assert order_filters([plain, ports, tcp, port, oneway]) == [oneway, port, ports, tcp, plain]


def test_tie_with_different_outcomes_names_both_filters() -> None:
    a = _rf(_filter("me", "10.0.0.0/24", index=0), "Allow", "permit")
    b = _rf(_filter("10.0.0.0/24", "me", index=1), "Deny", "block")
    with pytest.raises(ConfigError) as info:
        order_filters([a, b])
    text = str(info.value)
    assert "p.yaml:10" in text and "p.yaml:11" in text
    assert "'Allow'" in text and "'Deny'" in text and "tie" in text


def test_equal_specificity_without_overlap_or_with_same_outcome_is_fine() -> None:
    a = _rf(_filter("me", "10.0.0.8", index=0), "A", "permit")
    b = _rf(_filter("me", "10.0.0.9", index=1), "B", "block")
    c = _rf(_filter("10.0.0.9", "me", index=2), "C", "block")
    assert order_filters([b, a, c])[0] is a  # by rule name among equals
    check_ties([b, c])  # same outcome
    tcp = _rf(_filter("me", "10.0.0.9", 6, index=3), "T", "permit")
    udp = _rf(_filter("me", "10.0.0.9", 17, index=4), "U", "block")
    check_ties([tcp, udp])


def test_mirrored_match_and_ports() -> None:
    f = _rf(_filter("me", "10.0.0.9", 6, dport="5432"))
    assert f.matches(_flow("10.0.0.1", "10.0.0.9", 6, 40000, 5432))
    assert f.matches(_flow("10.0.0.9", "10.0.0.1", 6, 5432, 40000))  # the reply
    assert not f.matches(_flow("10.0.0.9", "10.0.0.1", 6, 40000, 5432))
    assert not f.matches(_flow("10.0.0.1", "10.0.0.9", 17, 40000, 5432))
    one = _rf(_filter("me", "10.0.0.9", mirrored=False))
    assert one.matches(_flow("10.0.0.1", "10.0.0.9"))
    assert not one.matches(_flow("10.0.0.9", "10.0.0.1"))


def test_dns_names_through_a_fake_resolver() -> None:
    calls: list[str] = []

    def resolver(name: str) -> list[str]:
        calls.append(name)
        return {"db.example.test": ["10.0.0.7", "10.0.0.8", "10.0.0.7"]}[name]

    f = _filter("me", "db.example.test")
    rf = resolve_filter(Rule("R", "L", "a"), f, ME, resolver)
    assert [str(r) for r in rf.destination] == ["10.0.0.7/32", "10.0.0.8/32"]
    assert calls == ["db.example.test"]
    assert rf.specificity()[:2] == (1, 2)

    def broken(name: str) -> list[str]:
        raise OSError("Name or service not known")

    for res, words in ((broken, "cannot resolve"), (lambda n: [], "no address"),
                       (lambda n: ["nonsense"], "bad address"), (None, "no resolver")):  # fmt: skip
        with pytest.raises(ConfigError, match=words) as info:
            resolve_endpoint(f.destination, ME, res, f, "destination")
        assert info.value.file == "p.yaml" and info.value.line == 10
        assert info.value.key == "filter_lists.L.filters.0.destination"


# ---------------------------------------------------------------- property test
# Filters over a small universe: addresses 10.0.0.0-7 or any, protocols any/tcp/udp,
# ports within 0-4 or any. Representative packets stand for every equivalence class
# (an address outside 10.0.0.0/29, a port above 4, another protocol), so inclusion of
# the match sets over them is inclusion over all packets.

_ADDRS = [f"10.0.0.{i}" for i in range(8)] + ["192.0.2.1"]
_PORTS = [0, 1, 2, 3, 4, 1000]
_PROTOS = [6, 17, 1]


@st.composite
def _side(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["host", "prefix", "range", "any", "me"]))
    if kind == "host":
        return f"10.0.0.{draw(st.integers(0, 7))}"
    if kind == "prefix":
        length = draw(st.integers(29, 31))
        size = 1 << (32 - length)
        return f"10.0.0.{draw(st.integers(0, 8 // size - 1)) * size}/{length}"
    if kind == "range":
        a, b = sorted(draw(st.lists(st.integers(0, 7), min_size=2, max_size=2)))
        return f"10.0.0.{a}-10.0.0.{b}"
    return kind


@st.composite
def _ports(draw: st.DrawFn) -> str:
    if draw(st.booleans()):
        return "any"
    a, b = sorted(draw(st.lists(st.integers(0, 4), min_size=2, max_size=2)))
    return f"{a}-{b}"


@st.composite
def _filters(draw: st.DrawFn) -> list[ResolvedFilter]:
    out = []
    for i in range(draw(st.integers(2, 6))):
        src, dst = draw(_side()), draw(_side())
        if src == dst == "me":
            dst = "any"
        proto = draw(st.sampled_from([None, 6, 17]))
        sport, dport = (draw(_ports()), draw(_ports())) if proto else ("any", "any")
        f = _filter(src, dst, proto, sport, dport, draw(st.booleans()), index=i)
        out.append(_rf(f, rule=f"R{i}", outcome=f"o{i}"))
    return out


_FLOWS = [_flow(*p) for p in itertools.product(_ADDRS, _ADDRS, _PROTOS, _PORTS, _PORTS)]


def _match_set(rf: ResolvedFilter) -> frozenset[Flow]:
    return frozenset(filter(rf.matches, _FLOWS))


@settings(max_examples=40, deadline=None)
@given(_filters())
def test_order_is_total_and_consistent_with_inclusion(filters: list[ResolvedFilter]) -> None:
    ordered = sorted(filters, key=ResolvedFilter.sort_key)
    keys = [rf.sort_key() for rf in ordered]
    assert len(set(keys)) == len(keys)  # total: no two filters compare equal
    assert sorted(reversed(filters), key=ResolvedFilter.sort_key) == ordered  # input order
    sets = [_match_set(rf) for rf in ordered]
    for i, j in itertools.combinations(range(len(ordered)), 2):
        # j comes after i: j's traffic is never a strict subset of i's
        assert not sets[j] < sets[i], (ordered[i].filter.describe(), ordered[j].filter.describe())
        if sets[i] & sets[j]:
            assert ordered[i].overlaps(ordered[j])
        else:
            assert not ordered[i].overlaps(ordered[j])
