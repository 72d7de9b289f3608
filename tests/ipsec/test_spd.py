"""Tests of pyipsec.ipsec.spd: order semantics, the index against a linear scan, the cache."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyipsec.errors import ConfigError
from pyipsec.ipsec import Lifetime
from pyipsec.ipsec.selectors import AddressRange, PortRange, Selector
from pyipsec.ipsec.spd import Action, SaTemplate, Spd, SpdEntry, SpdStatistics
from pyipsec.wire.flow import Flow

T = SaTemplate(child="db", algorithms=("aes128gcm16",))


def ip(text: str) -> int:
    return int(ipaddress.ip_address(text))


def f4(src: str, dst: str, proto: int = 6, sport: int = 1000, dport: int = 5432) -> Flow:
    return Flow(4, ip(src), ip(dst), proto, sport, dport)


def entry(
    name: str, local: str, remote: str, action: str = "protect", prio: int = 0, **kw: object
) -> SpdEntry:
    act = Action.parse(action)
    return SpdEntry(
        name, Selector.parse(local, remote), act, prio, T if act is Action.PROTECT else None, **kw
    )  # type: ignore[arg-type]


# --------------------------------------------------------------------------- semantics


def test_first_match_by_priority_then_insertion() -> None:
    spd = Spd()
    spd.add(entry("late-general", "10.0.0.0/8", "any", "discard", prio=10))
    spd.add(entry("host", "10.0.0.1", "10.0.1.1[tcp/5432]", "protect", prio=5))
    spd.add(entry("tie-first", "10.0.0.0/24", "10.0.1.0/24", "bypass", prio=7))
    spd.add(entry("tie-second", "10.0.0.0/24", "10.0.1.0/24", "discard", prio=7))
    assert spd.lookup(f4("10.0.0.1", "10.0.1.1")).name == "host"
    assert spd.lookup(f4("10.0.0.1", "10.0.1.1", dport=80)).name == "tie-first"
    assert spd.lookup(f4("10.0.0.2", "10.0.1.1", dport=80)).name == "tie-first"
    assert spd.lookup(f4("10.0.5.2", "10.0.1.1")).name == "late-general"
    assert spd.lookup(f4("11.0.0.1", "10.0.1.1")) is None
    assert [e.name for e in spd] == ["host", "tie-first", "tie-second", "late-general"]
    spd.remove("tie-first")
    assert spd.lookup(f4("10.0.0.2", "10.0.1.1", dport=80)).name == "tie-second"


def test_lower_priority_value_wins_even_if_less_specific() -> None:
    spd = Spd(
        [
            entry("wild", "any", "any", "bypass", prio=-1),
            entry("host", "10.0.0.1", "10.0.1.1", prio=0),
        ]
    )
    assert spd.lookup(f4("10.0.0.1", "10.0.1.1")).name == "wild"


def test_directions() -> None:
    spd = Spd(
        [
            entry("web", "10.0.0.1[tcp/443]", "10.0.1.0/24[tcp]", "protect", prio=1),
            entry("in-only", "10.0.0.1", "10.0.2.0/24", "discard", prio=2, direction="in"),
            entry("out-only", "10.0.0.1", "10.0.2.0/24", "bypass", prio=3, direction="out"),
        ]
    )
    out = f4("10.0.0.1", "10.0.1.7", 6, 443, 50000)
    assert spd.lookup(out, "out").name == "web"
    assert spd.lookup(out, "in") is None  # inbound, local would be 10.0.1.7
    assert spd.lookup(out.reversed(), "in").name == "web"
    assert spd.lookup(f4("10.0.0.1", "10.0.2.3"), "out").name == "out-only"
    assert spd.lookup(f4("10.0.2.3", "10.0.0.1"), "in").name == "in-only"
    with pytest.raises(ValueError):
        spd.lookup(out, "up")
    assert spd.statistics().lookups == 5  # the bad call counted nothing


def test_ipv6_and_any_family() -> None:
    spd = Spd(
        [
            entry("v6net", "2001:db8::/64", "2001:db8:1::/64[udp/53]", "protect", prio=1),
            entry("anyfam", "any", "any[icmp]", "bypass", prio=2),
            entry("v6all", "::/0", "::/0", "discard", prio=3),
        ]
    )
    dns = Flow(6, ip("2001:db8::5"), ip("2001:db8:1::1"), 17, 3000, 53)
    assert spd.lookup(dns).name == "v6net"
    assert spd.lookup(Flow(6, dns.src, dns.dst, 17, 3000, 54)).name == "v6all"
    assert spd.lookup(f4("1.1.1.1", "2.2.2.2", 1, 8, 0)).name == "anyfam"
    assert spd.lookup(f4("1.1.1.1", "2.2.2.2", 6)) is None
    # an IPv4 flow with the same integers as the IPv6 prefix does not match it
    assert spd.lookup(Flow(4, 5, 7, 17, 3000, 53)) is None


def test_ranges_that_are_not_prefixes_and_ports() -> None:
    spd = Spd(
        [
            entry("range", "10.0.0.3-10.0.0.200[tcp/1000-1999]", "10.9.0.0-10.9.1.5", prio=1),
            entry("fallback", "10.0.0.0/24", "10.9.0.0/16", "bypass", prio=2),
        ]
    )
    assert spd.lookup(f4("10.0.0.3", "10.9.1.5", 6, 1000, 1)).name == "range"
    assert spd.lookup(f4("10.0.0.200", "10.9.0.0", 6, 1999, 1)).name == "range"
    assert spd.lookup(f4("10.0.0.2", "10.9.0.0", 6, 1000, 1)).name == "fallback"
    assert spd.lookup(f4("10.0.0.201", "10.9.0.0", 6, 1000, 1)).name == "fallback"
    assert spd.lookup(f4("10.0.0.3", "10.9.1.6", 6, 1000, 1)).name == "fallback"
    assert spd.lookup(f4("10.0.0.3", "10.9.1.5", 6, 2000, 1)).name == "fallback"
    assert spd.lookup(f4("10.0.0.3", "10.9.1.5", 17, 1000, 1)).name == "fallback"


def test_icmp_type_code_lookup_both_directions() -> None:
    echo = Selector.from_fields("10.0.0.1", "10.0.0.2", "icmp", icmp_type=8, icmp_code=0)
    spd = Spd(
        [
            SpdEntry("echo", echo, Action.BYPASS, 1),
            SpdEntry("rest", Selector.parse("10.0.0.1", "10.0.0.2"), Action.PROTECT, 2, T),
        ]
    )
    assert spd.lookup(f4("10.0.0.1", "10.0.0.2", 1, 8, 0), "out").name == "echo"
    assert spd.lookup(f4("10.0.0.2", "10.0.0.1", 1, 8, 0), "in").name == "echo"
    assert spd.lookup(f4("10.0.0.1", "10.0.0.2", 1, 0, 0), "out").name == "rest"
    assert spd.lookup(f4("10.0.0.2", "10.0.0.1", 1, 0, 8), "in").name == "rest"


# --------------------------------------------------------------------------- changes


def test_add_remove_replace_by_name() -> None:
    spd = Spd()
    a = entry("a", "10.0.0.1", "10.0.0.2", prio=5)
    b = entry("b", "10.0.0.0/24", "10.0.0.0/24", "bypass", prio=5)
    spd.add(a)
    spd.add(b)
    with pytest.raises(ConfigError) as info:
        spd.add(entry("a", "any", "any", "discard"))
    assert info.value.key == "name" and len(spd) == 2
    flow = f4("10.0.0.1", "10.0.0.2")
    assert spd.lookup(flow) is a
    # replace keeps "a" ahead of "b" (same priority, earlier insertion)
    a2 = entry("a", "10.0.0.1", "10.0.0.2", "discard", prio=5)
    assert spd.replace(a2) is a
    assert spd.lookup(flow) is a2
    assert [e.name for e in spd] == ["a", "b"]
    # a replacement with another priority moves
    spd.replace(entry("a", "10.0.0.1", "10.0.0.2", "discard", prio=6))
    assert spd.lookup(flow) is b
    assert [e.name for e in spd] == ["b", "a"]
    with pytest.raises(ConfigError):
        spd.replace(entry("zzz", "any", "any", "discard"))
    with pytest.raises(ConfigError):
        spd.remove("zzz")
    with pytest.raises(ConfigError):
        spd.add("not an entry")  # type: ignore[arg-type]
    assert spd.statistics().rejected_changes == 4
    assert spd.statistics().changes == 4  # refused changes changed nothing
    assert spd.remove("b") is b
    assert "b" not in spd and "a" in spd and spd.get("b") is None
    assert spd.get("a").action is Action.DISCARD
    spd.clear()
    assert len(spd) == 0 and spd.lookup(flow) is None


def test_cache_invalidated_on_every_change() -> None:
    spd = Spd(cache_size=16)
    flow = f4("10.0.0.1", "10.0.0.2")
    assert spd.lookup(flow) is None
    assert spd.lookup(flow) is None
    assert spd.statistics().cache_hits == 1
    spd.add(entry("a", "10.0.0.1", "10.0.0.2", "bypass", prio=5))
    assert spd.lookup(flow).name == "a"  # not the cached None
    assert spd.lookup(flow).name == "a"
    spd.add(entry("b", "any", "any", "discard", prio=1))
    assert spd.lookup(flow).name == "b"
    spd.replace(entry("b", "any", "any", "discard", prio=9))
    assert spd.lookup(flow).name == "a"
    spd.remove("a")
    assert spd.lookup(flow).name == "b"
    spd.clear()
    assert spd.lookup(flow) is None
    stats = spd.statistics()
    assert stats.cache_hits == 2 and stats.lookups == 8


def test_cache_bounded() -> None:
    spd = Spd([entry("all", "any", "any", "bypass")], cache_size=4)
    for i in range(20):
        spd.lookup(f4(f"10.0.0.{i}", "10.0.1.1"))
        spd.lookup(f4("10.0.1.1", f"10.0.0.{i}"), "in")
    assert all(len(c) <= 4 for c in spd._cache.values())
    assert spd.statistics().bypass == 40


def test_statistics() -> None:
    spd = Spd(
        [
            entry("p", "10.0.0.1", "10.0.0.2", "protect", prio=1),
            entry("b", "10.0.0.0/24", "any", "bypass", prio=2),
            entry("d", "any", "any", "discard", prio=3, direction="in"),
        ],
        cache_size=0,
    )
    spd.lookup(f4("10.0.0.1", "10.0.0.2"))
    spd.lookup(f4("10.0.0.1", "10.0.0.2"))
    spd.lookup(f4("10.0.0.9", "10.0.0.2"))
    spd.lookup(f4("10.0.0.2", "10.9.9.9"), "in")  # local 10.9.9.9: only "d"
    spd.lookup(f4("10.0.9.9", "10.0.0.2"), "out")  # "d" is inbound only: no match
    s = spd.statistics()
    assert s == SpdStatistics(
        entries=3,
        lookups=5,
        protect=2,
        bypass=1,
        discard=1,
        no_match=1,
        cache_hits=0,
        changes=3,
        rejected_changes=0,
        entry_hits=(("p", 2), ("b", 1), ("d", 1)),
    )
    with pytest.raises(AttributeError):
        s.lookups = 0  # type: ignore[misc]
    # a replaced entry keeps its counter; the per-action totals keep the past
    spd.replace(entry("p", "10.0.0.1", "10.0.0.2", "discard", prio=1))
    s2 = spd.statistics()
    assert s2.entry_hits[0] == ("p", 2) and s2.protect == 2 and s2.discard == 1
    spd.remove("p")
    assert spd.statistics().protect == 2


def test_entries_are_easy_to_compile() -> None:
    """What a data-plane compiler reads: ints, versions, protocol, port ranges."""
    spd = Spd([entry("db", "10.0.0.1[tcp/5432]", "10.0.1.0/24", prio=3)])
    (e,) = list(spd)
    sel = e.selector
    assert (sel.version, sel.local.start, sel.local.end) == (4, ip("10.0.0.1"), ip("10.0.0.1"))
    assert (sel.remote.start, sel.remote.end) == (ip("10.0.1.0"), ip("10.0.1.255"))
    assert sel.protocol == 6 and sel.local_ports == PortRange(5432, 5432)
    assert sel.remote_ports.is_any and e.template.child == "db"


# --------------------------------------------------------------------------- validation


def test_action_parse() -> None:
    assert Action.parse("negotiate") is Action.PROTECT
    assert Action.parse("permit") is Action.BYPASS
    assert Action.parse("BLOCK") is Action.DISCARD
    assert Action.parse(Action.BYPASS) is Action.BYPASS
    with pytest.raises(ConfigError) as info:
        Action.parse("maybe", key="rules[2].action")
    assert info.value.key == "rules[2].action"


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"child": ""}, "template.child"),
        ({"protocol": "gre"}, "template.protocol"),
        ({"mode": "beet"}, "template.mode"),
        ({"algorithms": ()}, "template.algorithms"),
        ({"algorithms": ("aes128gcm16", "")}, "template.algorithms"),
        ({"encap": "tcp"}, "template.encap"),
        ({"protocol": "ah", "algorithms": ("sha256",), "encap": "udp"}, "template.encap"),
        ({"mode": "tunnel", "tunnel_local": "192.0.2.1"}, "template.tunnel_remote"),
        (
            {"mode": "tunnel", "tunnel_local": "x", "tunnel_remote": "192.0.2.2"},
            "template.tunnel_local",
        ),
        (
            {"mode": "tunnel", "tunnel_local": "192.0.2.1", "tunnel_remote": "2001:db8::1"},
            "template.tunnel_remote",
        ),
        ({"tunnel_local": "192.0.2.1"}, "template.tunnel_local"),
        ({"algorithms": ("aes128gcm",)}, "template.algorithms"),  # typo
        ({"protocol": "ah", "algorithms": ("aes128gcm16",)}, "template.algorithms"),
        ({"algorithms": ("sha256",)}, "template.algorithms"),  # AH-only keyword for ESP
        ({"lifetime": 3600}, "template.lifetime"),
    ],
)
def test_template_errors(kwargs: dict[str, object], key: str) -> None:
    args: dict[str, object] = {"child": "c"}
    args.update(kwargs)
    with pytest.raises(ConfigError) as info:
        SaTemplate(**args)  # type: ignore[arg-type]
    assert info.value.key == key


def test_template_valid_forms() -> None:
    t = SaTemplate(
        "c",
        mode="tunnel",
        tunnel_local="192.0.2.1",
        tunnel_remote="192.0.2.2",
        algorithms=["aes256gcm16", "aes128-sha256"],
        encap="udp",
    )
    assert t.algorithms == ("aes256gcm16", "aes128-sha256")
    assert SaTemplate("c", algorithms="chacha20poly1305").algorithms == ("chacha20poly1305",)
    life = Lifetime(soft_seconds=3000, hard_seconds=3600)
    ah = SaTemplate("c", protocol="ah", algorithms=("sha256", "sha512"), lifetime=life)
    assert ah.lifetime is life


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"name": ""}, "name"),
        ({"selector": "10.0.0.0/8"}, "selector"),
        ({"action": "perhaps"}, "action"),
        ({"priority": "1"}, "priority"),
        ({"priority": True}, "priority"),
        ({"template": None}, "template"),
        ({"action": "bypass", "template": T}, "template"),
        ({"direction": "up"}, "direction"),
    ],
)
def test_entry_errors(kwargs: dict[str, object], key: str) -> None:
    args: dict[str, object] = {
        "name": "e",
        "selector": Selector.parse("any", "any"),
        "action": "protect",
        "priority": 0,
        "template": T,
    }
    args.update(kwargs)
    with pytest.raises(ConfigError) as info:
        SpdEntry(**args)  # type: ignore[arg-type]
    assert info.value.key == key


# --------------------------------------------------------------------------- property

V4 = ip("10.0.0.0")
V6 = ip("2001:db8::")
SPAN = 64  # addresses per family used by the generated policies and flows


@st.composite
def address_ranges(draw: st.DrawFn, version: int) -> AddressRange:
    if version == 0:
        return AddressRange.ANY
    base = V4 if version == 4 else V6
    kind = draw(st.sampled_from(["host", "prefix", "range", "full"]))
    if kind == "full":
        return AddressRange.full(version)
    if kind == "host":
        return AddressRange.host(version, base + draw(st.integers(0, SPAN - 1)))
    if kind == "prefix":
        size = 1 << draw(st.integers(1, 6))
        start = base + draw(st.integers(0, SPAN - 1)) // size * size
        return AddressRange(version, start, start + size - 1)
    a = draw(st.integers(0, SPAN - 1))
    b = draw(st.integers(a, SPAN + 8))
    return AddressRange(version, base + a, base + b)


def port_ranges(high: int) -> st.SearchStrategy[PortRange]:
    return st.one_of(
        st.just(PortRange.ANY),
        st.tuples(st.integers(0, high), st.integers(0, high)).map(
            lambda t: PortRange(min(t), max(t))
        ),
    )


@st.composite
def selectors(draw: st.DrawFn) -> Selector:
    lversion = draw(st.sampled_from([4, 4, 6, 6, 0]))
    rversion = draw(st.sampled_from([lversion, 0]))
    local = draw(address_ranges(lversion))
    remote = draw(address_ranges(rversion))
    family = lversion or rversion
    protos: list[int | None] = [None, 6, 17, 50]
    if family != 6:
        protos.append(1)
    if family != 4:
        protos.append(58)
    proto = draw(st.sampled_from(protos))
    if proto in (6, 17, 1, 58):
        return Selector(local, remote, proto, draw(port_ranges(6)), draw(port_ranges(6)))
    return Selector(local, remote, proto)


@st.composite
def entries(draw: st.DrawFn, name: str) -> SpdEntry:
    action = draw(st.sampled_from(list(Action)))
    return SpdEntry(
        name,
        draw(selectors()),
        action,
        draw(st.integers(0, 3)),
        T if action is Action.PROTECT else None,
        draw(st.sampled_from(["both", "both", "in", "out"])),
    )


flows = st.builds(
    lambda v, s, d, p, sp, dp: Flow(
        v, (V4 if v == 4 else V6) + s, (V4 if v == 4 else V6) + d, p, sp, dp
    ),
    st.sampled_from([4, 6]),
    st.integers(0, SPAN + 10),
    st.integers(0, SPAN + 10),
    st.sampled_from([6, 17, 1, 58, 50]),
    st.integers(0, 7),
    st.integers(0, 7),
)


def linear_lookup(model: list[tuple[int, SpdEntry]], flow: Flow, direction: str) -> SpdEntry | None:
    """The reference: scan every entry in (priority, insertion) order."""
    for _, e in sorted(model, key=lambda t: (t[1].priority, t[0])):
        if e.applies_to(direction) and e.selector.matches(flow, direction):
            return e
    return None


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_index_agrees_with_linear_scan(data: st.DataObject) -> None:
    """Random policies, adds/removes/replaces and flows: the index answers what a linear
    scan in SPD order answers, before and after each change, with the flow cache on."""
    spd = Spd(cache_size=data.draw(st.sampled_from([0, 3, 4096])))
    model: list[tuple[int, SpdEntry]] = []  # (insertion seq, entry); replace keeps seq
    seq = 0
    probe = data.draw(st.lists(flows, min_size=5, max_size=25))
    for step in range(data.draw(st.integers(1, 25))):
        op = data.draw(st.sampled_from(["add", "add", "add", "remove", "replace"]))
        if op == "add" or not model:
            seq += 1
            e = data.draw(entries(f"e{step}"))
            spd.add(e)
            model.append((seq, e))
        else:
            i = data.draw(st.integers(0, len(model) - 1))
            old_seq, old = model[i]
            if op == "remove":
                assert spd.remove(old.name) is old
                del model[i]
            else:
                new = data.draw(entries(old.name))
                assert spd.replace(new) is old
                model[i] = (old_seq, new)
        for flow in probe + data.draw(st.lists(flows, max_size=5)):
            for direction in ("out", "in"):
                assert spd.lookup(flow, direction) is linear_lookup(model, flow, direction)
    assert [e for e in spd] == [e for _, e in sorted(model, key=lambda t: (t[1].priority, t[0]))]
