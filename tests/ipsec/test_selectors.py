"""Tests of pyipsec.ipsec.selectors: parsers, error paths, matching, mirror, string form."""

from __future__ import annotations

import ipaddress
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyipsec.errors import ConfigError, SelectorMismatch
from pyipsec.ipsec import SecurityAssociation
from pyipsec.ipsec.selectors import (
    AddressRange,
    PortRange,
    Selector,
    SelectorList,
    format_protocol,
    parse_protocol,
)
from pyipsec.wire.flow import Flow
from pyipsec.wire.ip import Ipv4Header, push_ipv4


def ip(text: str) -> int:
    return int(ipaddress.ip_address(text))


def flow4(src: str, dst: str, proto: int = 6, sport: int = 0, dport: int = 0) -> Flow:
    return Flow(4, ip(src), ip(dst), proto, sport, dport)


def flow6(src: str, dst: str, proto: int = 6, sport: int = 0, dport: int = 0) -> Flow:
    return Flow(6, ip(src), ip(dst), proto, sport, dport)


def udp(src: str, dst: str, sport: int, dport: int) -> bytes:
    hdr = Ipv4Header(ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed, 17)
    body = sport.to_bytes(2, "big") + dport.to_bytes(2, "big") + (12).to_bytes(2, "big")
    return push_ipv4(hdr, 12) + body + b"\0\0abcd"


# --------------------------------------------------------------------------- AddressRange


@pytest.mark.parametrize(
    ("text", "version", "start", "end"),
    [
        ("10.0.0.0/24", 4, ip("10.0.0.0"), ip("10.0.0.255")),
        ("10.0.0.7", 4, ip("10.0.0.7"), ip("10.0.0.7")),
        ("10.0.0.7/32", 4, ip("10.0.0.7"), ip("10.0.0.7")),
        ("10.0.0.1-10.0.0.9", 4, ip("10.0.0.1"), ip("10.0.0.9")),
        (" 10.0.0.1 - 10.0.0.9 ", 4, ip("10.0.0.1"), ip("10.0.0.9")),
        ("0.0.0.0/0", 4, 0, 2**32 - 1),
        ("2001:db8::/64", 6, ip("2001:db8::"), ip("2001:db8::ffff:ffff:ffff:ffff")),
        ("2001:db8::5", 6, ip("2001:db8::5"), ip("2001:db8::5")),
        ("2001:db8::1-2001:db8::1:0", 6, ip("2001:db8::1"), ip("2001:db8::1:0")),
        ("::/0", 6, 0, 2**128 - 1),
        ("any", 0, 0, 2**128 - 1),
        ("%any", 0, 0, 2**128 - 1),
        ("ANY", 0, 0, 2**128 - 1),
    ],
)
def test_address_parse(text: str, version: int, start: int, end: int) -> None:
    r = AddressRange.parse(text)
    assert (r.version, r.start, r.end) == (version, start, end)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("10.0.0.256", "not an address"),
        ("10.0.0.1/24", "host bits"),
        ("10.0.0.0/33", "not an address"),
        ("10.0.0.9-10.0.0.1", "ends before it starts"),
        ("10.0.0.1-2001:db8::1", "mixes IPv4 and IPv6"),
        ("10.0.0.1-", "not an address"),
        ("hostname.example", "not an address"),
        ("2001:db8::/129", "not an address"),
    ],
)
def test_address_parse_errors_name_the_field(text: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        AddressRange.parse(text, key="local")
    assert info.value.key == "local"
    assert fragment in str(info.value)
    assert str(info.value).startswith("local: ")


def test_address_parse_rejects_non_strings() -> None:
    with pytest.raises(ConfigError) as info:
        AddressRange.parse(10, key="remote")  # type: ignore[arg-type]
    assert info.value.key == "remote"


@pytest.mark.parametrize(
    ("version", "start", "end"),
    [(5, 0, 0), (4, 2, 1), (4, 0, 2**32), (6, -1, 3), (0, 0, 5)],
)
def test_address_constructor_validates(version: int, start: int, end: int) -> None:
    with pytest.raises(ConfigError):
        AddressRange(version, start, end)


def test_address_prefix_length_and_cover() -> None:
    assert AddressRange.parse("10.0.0.0/24").prefix_length == 24
    assert AddressRange.parse("10.0.0.5").prefix_length == 32
    assert AddressRange.parse("::/0").prefix_length == 0
    odd = AddressRange.parse("10.0.0.1-10.0.0.9")
    assert odd.prefix_length is None
    assert odd.cover() == (28, ip("10.0.0.0") >> 4)
    assert AddressRange.parse("10.0.0.4-10.0.0.7").prefix_length == 30
    assert AddressRange.parse("10.0.0.2-10.0.0.5").prefix_length is None


@pytest.mark.parametrize(
    "text",
    ["10.0.0.0/24", "10.0.0.7/32", "10.0.0.1-10.0.0.9", "2001:db8::/64", "2001:db8::1-2001:db8::3"],
)
def test_address_str_round_trips(text: str) -> None:
    r = AddressRange.parse(text)
    assert AddressRange.parse(str(r)) == r
    assert str(r) == text


def test_address_any_str_and_contains() -> None:
    assert str(AddressRange.ANY) == "%any"
    assert AddressRange.ANY.contains(4, ip("1.2.3.4"))
    assert AddressRange.ANY.contains(6, ip("::1"))
    v4 = AddressRange.parse("10.0.0.0/8")
    assert v4.contains(4, ip("10.1.2.3"))
    assert not v4.contains(6, ip("10.1.2.3"))  # same integer, other family
    assert not v4.contains(4, ip("11.0.0.0"))
    assert AddressRange.full(6).is_any and not v4.is_any


@given(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))
def test_cover_contains_range(a: int, b: int) -> None:
    lo, hi = min(a, b), max(a, b)
    r = AddressRange(4, lo, hi)
    length, net = r.cover()
    assert net << (32 - length) <= lo and hi < (net + 1) << (32 - length)
    if length < 32:  # and it is the smallest such prefix
        half = 31 - length
        assert (lo >> half) != (hi >> half)


# --------------------------------------------------------------------------- ports


@pytest.mark.parametrize(
    ("text", "start", "end"),
    [
        ("any", 0, 65535),
        ("", 0, 65535),
        ("5432", 5432, 5432),
        ("1000-2000", 1000, 2000),
        (" 0 - 65535 ", 0, 65535),
        (80, 80, 80),
    ],
)
def test_port_parse(text: str | int, start: int, end: int) -> None:
    assert PortRange.parse(text) == PortRange(start, end)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("65536", "outside"),
        ("http", "not a port"),
        ("10-5", "ends before"),
        ("-5", "not a port"),
        ("1-2-3", "not a port"),
        ("\u00b2", "not a port"),  # superscript two: isdigit() but not a number
        ("1-\u00b2", "not a port"),
        (70000, "outside"),
        (-1, "outside"),
        (True, "not a port"),
        (1.5, "must be"),
    ],
)
def test_port_parse_errors(text: object, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        PortRange.parse(text, key="remote_ports")  # type: ignore[arg-type]
    assert info.value.key == "remote_ports"
    assert fragment in str(info.value)


def test_port_constructor_and_str() -> None:
    with pytest.raises(ConfigError):
        PortRange(5, 4)
    with pytest.raises(ConfigError):
        PortRange(0, 65536)
    assert str(PortRange.ANY) == "any"
    assert str(PortRange(80, 80)) == "80"
    assert str(PortRange(1, 2)) == "1-2"
    assert PortRange(1, 2).contains(2) and not PortRange(1, 2).contains(3)


# --------------------------------------------------------------------------- protocols


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("tcp", 6),
        ("UDP", 17),
        ("icmp", 1),
        ("ipv6-icmp", 58),
        ("icmpv6", 58),
        ("any", None),
        ("%any", None),
        (None, None),
        ("50", 50),
        (132, 132),
        ("sctp", 132),
        ("0", 0),
    ],
)
def test_protocol_parse(text: str | int | None, number: int | None) -> None:
    assert parse_protocol(text) == number


@pytest.mark.parametrize("text", ["tpc", "256", -1, 300, True, "6x", "\u00b2", "\u0661"])
def test_protocol_parse_errors(text: str | int) -> None:
    with pytest.raises(ConfigError) as info:
        parse_protocol(text, key="filters[0].protocol")
    assert info.value.key == "filters[0].protocol"


def test_protocol_format() -> None:
    assert format_protocol(None) == "any"
    assert format_protocol(6) == "tcp"
    assert format_protocol(58) == "ipv6-icmp"
    assert format_protocol(99) == "99"
    assert parse_protocol(format_protocol(58)) == 58


# --------------------------------------------------------------------------- Selector


def test_selector_matches_outbound_and_inbound() -> None:
    sel = Selector.parse("10.0.0.0/24[tcp]", "10.0.1.5[tcp/5432]")
    out = flow4("10.0.0.9", "10.0.1.5", 6, 40000, 5432)
    assert sel.matches(out, "out")
    assert not sel.matches(out, "in")  # as an inbound packet local would be 10.0.1.5
    reply = out.reversed()
    assert sel.matches(reply, "in")
    assert sel.matches(reply)  # default direction is inbound (SA check after decapsulation)
    assert not sel.matches(reply, "out")
    assert not sel.matches(flow4("10.0.0.9", "10.0.1.5", 17, 40000, 5432), "out")
    assert not sel.matches(flow4("10.0.0.9", "10.0.1.5", 6, 40000, 5433), "out")
    assert not sel.matches(flow4("10.0.2.9", "10.0.1.5", 6, 40000, 5432), "out")
    assert not sel.matches(flow4("10.0.0.9", "10.0.1.6", 6, 40000, 5432), "out")


def test_selector_bad_direction() -> None:
    sel = Selector.parse("any", "any")
    with pytest.raises(ValueError):
        sel.matches(flow4("1.1.1.1", "2.2.2.2"), "sideways")


def test_selector_range_not_prefix() -> None:
    sel = Selector.parse("10.0.0.3-10.0.0.5", "any")
    assert [sel.matches(flow4(f"10.0.0.{i}", "8.8.8.8"), "out") for i in range(2, 7)] == [
        False,
        True,
        True,
        True,
        False,
    ]


def test_selector_version_handling() -> None:
    v6 = Selector.parse("2001:db8::/64", "2001:db8:1::/64[udp/53]")
    f = flow6("2001:db8::1", "2001:db8:1::2", 17, 3333, 53)
    assert v6.matches(f, "out") and v6.version == 6
    # the same integers in an IPv4 flow do not match an IPv6 selector
    assert not v6.matches(Flow(4, f.src, f.dst, 17, 3333, 53), "out")
    both = Selector.parse("any", "any")
    assert both.version == 0
    assert both.matches(f, "out") and both.matches(flow4("1.2.3.4", "5.6.7.8"), "in")
    half = Selector.parse("any", "10.0.0.0/8")
    assert half.version == 4
    assert half.matches(flow4("1.2.3.4", "10.9.9.9"), "out")
    assert not half.matches(f, "out")


def test_selector_icmp_type_code() -> None:
    # ICMP echo request (type 8, code 0) only; type/code do not swap with direction
    sel = Selector.from_fields("10.0.0.1", "10.0.0.2", "icmp", icmp_type=8, icmp_code=0)
    assert sel.local_ports == PortRange(8, 8) and sel.remote_ports == PortRange(0, 0)
    echo_out = flow4("10.0.0.1", "10.0.0.2", 1, 8, 0)
    echo_in = flow4("10.0.0.2", "10.0.0.1", 1, 8, 0)
    assert sel.matches(echo_out, "out")
    assert sel.matches(echo_in, "in")
    assert not sel.matches(flow4("10.0.0.1", "10.0.0.2", 1, 0, 0), "out")  # echo reply
    assert not sel.matches(flow4("10.0.0.2", "10.0.0.1", 1, 0, 8), "in")
    mirrored = sel.mirror()
    assert mirrored.local_ports == PortRange(8, 8) and mirrored.remote_ports == PortRange(0, 0)
    assert mirrored.matches(echo_in, "out")
    unreachable = Selector.from_fields("any", "any", "icmp", "3", "0-15")
    assert unreachable.matches(flow4("1.1.1.1", "2.2.2.2", 1, 3, 4), "in")
    assert not unreachable.matches(flow4("1.1.1.1", "2.2.2.2", 1, 3, 16), "in")
    v6 = Selector.parse("2001:db8::/64[ipv6-icmp/128]", "::/0[ipv6-icmp/0]")
    assert v6.matches(flow6("2001:db8::1", "2001:db8:9::1", 58, 128, 0), "out")


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"local": "10.0.0.0/8", "remote": "2001:db8::/32"}, "remote"),
        ({"local": "10.0.0.300"}, "local"),
        ({"remote": "x"}, "remote"),
        ({"protocol": "foo"}, "protocol"),
        ({"protocol": "tcp", "local_ports": "70000"}, "local_ports"),
        ({"protocol": "tcp", "remote_ports": "9-8"}, "remote_ports"),
        ({"local_ports": "80"}, "local_ports"),  # ports without a protocol
        ({"protocol": "esp", "remote_ports": "80"}, "remote_ports"),  # ESP has no ports
        ({"protocol": "icmp", "local_ports": "256"}, "local_ports"),  # ICMP type > 255
        ({"protocol": "icmp", "remote_ports": "0-300"}, "remote_ports"),
        ({"protocol": "icmp", "local": "2001:db8::1"}, "protocol"),
        ({"protocol": "ipv6-icmp", "remote": "10.0.0.1"}, "protocol"),
        ({"protocol": "tcp", "icmp_type": 8}, "icmp_type"),
        ({"protocol": "icmp", "icmp_code": 300}, "icmp_code"),
        ({"protocol": "icmp", "icmp_type": 8, "local_ports": "8"}, "local_ports"),
    ],
)
def test_selector_from_fields_errors(kwargs: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        Selector.from_fields(**kwargs)  # type: ignore[arg-type]
    assert info.value.key == key


@pytest.mark.parametrize(
    ("local", "remote", "key"),
    [
        ("10.0.0.0/24[tcp", "any", "local"),
        ("10.0.0.0/24[tcp/5432]", "10.0.1.0/24[udp]", "remote.protocol"),
        ("10.0.0.0/24[bogus]", "any", "local.protocol"),
        ("10.0.0.0/24", "10.0.1.0/24[tcp/x]", "remote.ports"),
        ("10.0.0.0/24[/80]", "any", "local_ports"),
        (5, "any", "local"),
    ],
)
def test_selector_parse_errors(local: str, remote: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        Selector.parse(local, remote)
    assert info.value.key == key


def test_selector_constructor_type_checks() -> None:
    r = AddressRange.parse("10.0.0.0/8")
    with pytest.raises(ConfigError):
        Selector("10.0.0.0/8", r)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        Selector(r, "x")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        Selector(r, r, 256)
    with pytest.raises(ConfigError):
        Selector(r, r, 6, "80")  # type: ignore[arg-type]


def test_selector_str_strongswan_notation_and_round_trip() -> None:
    sel = Selector.parse("10.0.0.0/24[tcp/5432]", "10.0.1.1-10.0.1.9")
    assert str(sel) == "10.0.0.0/24[tcp/5432] === 10.0.1.1-10.0.1.9[tcp]"
    assert Selector.parse(str(sel)) == sel
    assert str(Selector.parse("any", "2001:db8::/48")) == "%any === 2001:db8::/48"
    icmp = Selector.from_fields("10.0.0.1", "any", "icmp", icmp_type=3)
    assert str(icmp) == "10.0.0.1/32[icmp/3] === %any[icmp]"
    assert Selector.parse(str(icmp)) == icmp


def test_selector_mirror() -> None:
    sel = Selector.parse("10.0.0.0/24[tcp/1000-2000]", "10.0.1.5[tcp/5432]")
    m = sel.mirror()
    assert m.local == sel.remote and m.remote == sel.local
    assert m.local_ports == PortRange(5432, 5432) and m.remote_ports == PortRange(1000, 2000)
    assert m.mirror() == sel
    f = flow4("10.0.0.9", "10.0.1.5", 6, 1500, 5432)
    assert sel.matches(f, "out") and m.matches(f, "in")


def test_selector_is_frozen_and_hashable() -> None:
    sel = Selector.parse("10.0.0.0/24", "any")
    with pytest.raises(AttributeError):
        sel.protocol = 6  # type: ignore[misc]
    assert len({sel, Selector.parse("10.0.0.0/24", "any")}) == 1


flows = st.builds(
    Flow,
    st.just(4),
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**32 - 1),
    st.sampled_from([1, 6, 17, 50]),
    st.integers(0, 65535),
    st.integers(0, 65535),
)


@given(flows)
def test_mirror_in_equals_out(flow: Flow) -> None:
    """A flow matches a selector outbound exactly when its mirror matches it inbound."""
    for sel in (
        Selector.parse("0.0.0.0/1[tcp/0-30000]", "128.0.0.0/1[tcp/20000-65535]"),
        Selector.parse("any", "0.0.0.0/2"),
        Selector.from_fields("any", "any", "icmp", "0-100", "0-7"),
    ):
        assert sel.matches(flow, "out") == sel.mirror().matches(flow, "in")


def test_selector_as_sa_selectors() -> None:
    """H1's SecurityAssociation checks decapsulated packets with ``matches(flow)``."""

    key = os.urandom(20)
    # we (10.0.0.2) accept from the peer 10.0.0.1 only DNS replies to our ports 1024-65535
    ours = Selector.parse("10.0.0.2[udp/1024-65535]", "10.0.0.1[udp/53]")
    receiver = SecurityAssociation(0x100, key=key, selectors=ours)
    sender = SecurityAssociation(0x100, key=key)
    good = udp("10.0.0.1", "10.0.0.2", 53, 40000)
    assert receiver.decapsulate(sender.encapsulate(good)) == good
    with pytest.raises(SelectorMismatch):
        receiver.decapsulate(sender.encapsulate(udp("10.0.0.1", "10.0.0.2", 54, 40000)))
    with pytest.raises(SelectorMismatch):
        receiver.decapsulate(sender.encapsulate(udp("10.0.0.3", "10.0.0.2", 53, 40000)))
    assert receiver.statistics().selector_mismatch_packets == 2


def test_selector_list() -> None:
    a = AddressRange.parse
    lst = SelectorList.product(
        [(a("10.0.0.1"), 6, PortRange.ANY), (a("2001:db8::1"), None, PortRange.ANY)],
        [
            (a("10.0.1.0/24"), 6, PortRange(5432, 5432)),
            (a("10.0.2.0/24"), None, PortRange.ANY),
            (a("2001:db8:1::/64"), 17, PortRange(53, 53)),
        ],
    )
    # the IPv4 local pairs with both IPv4 remotes, the IPv6 local with the IPv6 remote
    assert len(lst.selectors) == 3
    assert lst.matches(flow4("10.0.1.9", "10.0.0.1", 6, 5432, 999))
    assert lst.matches(flow4("10.0.2.9", "10.0.0.1", 6, 1, 2))
    assert not lst.matches(flow4("10.0.2.9", "10.0.0.1", 17, 1, 2))  # TCP only (local side)
    assert lst.matches(flow6("2001:db8::1", "2001:db8:1::5", 17, 999, 53), "out")
    assert not lst.matches(flow4("10.0.3.9", "10.0.0.1", 6, 1, 2))
    assert "===" in str(lst) and ", " in str(lst)
    with pytest.raises(ConfigError):
        SelectorList(())
    with pytest.raises(ConfigError):
        SelectorList(("10.0.0.0/8",))  # type: ignore[arg-type]
    with pytest.raises(ConfigError) as info:
        SelectorList.product(
            [(a("10.0.0.1"), 6, PortRange.ANY)], [(a("10.0.0.2"), 17, PortRange.ANY)]
        )
    assert info.value.key == "selectors"


def test_selector_list_as_sa_selectors() -> None:
    key = os.urandom(20)
    both = SelectorList(
        (Selector.parse("10.0.0.2", "10.0.0.1[udp/53]"), Selector.parse("10.0.0.2", "10.0.0.3"))
    )
    receiver = SecurityAssociation(0x200, key=key, selectors=both)
    sender = SecurityAssociation(0x200, key=key)
    for pkt in (udp("10.0.0.1", "10.0.0.2", 53, 4000), udp("10.0.0.3", "10.0.0.2", 1, 2)):
        assert receiver.decapsulate(sender.encapsulate(pkt)) == pkt
    with pytest.raises(SelectorMismatch):
        receiver.decapsulate(sender.encapsulate(udp("10.0.0.1", "10.0.0.2", 54, 4000)))


@settings(max_examples=300)
@given(
    st.one_of(
        st.text(max_size=60),
        st.text(alphabet="0123456789abcdefx:./-[]%=* tcpuny\u00b2\u0661", max_size=40),
    )
)
def test_parsers_raise_only_config_errors(text: str) -> None:
    """Whatever the administrator writes, the parsers answer with a value or a ConfigError."""
    for parse in (AddressRange.parse, PortRange.parse, parse_protocol):
        try:
            parse(text)
        except ConfigError as exc:
            assert exc.key is not None
    try:
        Selector.parse(text, text)
    except ConfigError as exc:
        assert exc.key is not None


@st.composite
def any_selectors(draw: st.DrawFn) -> Selector:
    version = draw(st.sampled_from([4, 6, 0]))

    def side() -> AddressRange:
        if version == 0:
            return AddressRange.ANY
        top = 2**32 - 1 if version == 4 else 2**128 - 1
        a, b = sorted((draw(st.integers(0, top)), draw(st.integers(0, top))))
        return AddressRange(version, a, b)

    protos = (
        [None, 6, 17, 50, 99, 132] + ([1] if version != 6 else []) + ([58] if version != 4 else [])
    )
    proto = draw(st.sampled_from(protos))
    high = 255 if proto in (1, 58) else 65535
    if proto in (1, 6, 17, 58, 132):
        ports = [
            PortRange(*sorted((draw(st.integers(0, high)), draw(st.integers(0, high)))))
            for _ in range(2)
        ]
        ports = [p if draw(st.booleans()) else PortRange.ANY for p in ports]
        return Selector(side(), side(), proto, *ports)
    return Selector(side(), side(), proto)


@given(any_selectors())
def test_str_parse_round_trip(sel: Selector) -> None:
    assert Selector.parse(str(sel)) == sel
    assert sel.mirror().mirror() == sel
