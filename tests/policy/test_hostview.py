"""A filter seen from one host: views, pairs, selector strings, overlap."""

from __future__ import annotations

from pyipsec.ipsec.selectors import AddressRange, PortRange, Selector
from pyipsec.policy.hostview import View, host_views, range_pairs, selectors_overlap, ts_strings
from pyipsec.policy.loader import load_policy_text
from pyipsec.policy.order import host_ranges, resolve_filter

POLICY = """\
name: p
filter_lists:
  l:
    filters:
      - {source: 10.0.0.1, destination: 10.0.0.0/24, protocol: tcp, destination_port: 5432}
      - {source: any, destination: 10.0.0.1, mirrored: false}
rules:
  r:
    filter_list: l
    filter_action: Permit
"""


def _resolved(me: str):
    policy = load_policy_text(POLICY, file="p.yaml")
    rule = policy.rules[0]
    mine = host_ranges((me,))
    return mine, [
        resolve_filter(rule, f, mine, None, ("Permit", (), None))
        for f in policy.filter_lists["l"].filters
    ]


def test_views_from_the_source_the_destination_and_both() -> None:
    me, (db, inbound) = _resolved("10.0.0.1")
    (view,) = host_views(db, me, False)  # source side, mirrored: both directions
    assert view.direction == "both" and view.rports == PortRange(5432, 5432)
    assert [str(r) for r in view.remote] == ["10.0.0.0/24"]
    (view,) = host_views(inbound, me, False)  # one-way filter toward me: inbound only
    assert view.direction == "in" and view.remote[0].is_any
    me2, (db2, _) = _resolved("10.0.0.7")  # a database host: the mirror image
    (view,) = host_views(db2, me2, False)
    assert view.direction == "both" and view.lports == PortRange(5432, 5432)
    assert [str(r) for r in view.remote] == ["10.0.0.1/32"]


def test_pairs_keep_one_family_and_icmp_its_own() -> None:
    v4, v6 = AddressRange.parse("10.0.0.1"), AddressRange.parse("fd00::1")
    view = View((v4, v6), (AddressRange.ANY,), PortRange.ANY, PortRange.ANY, "both")
    assert range_pairs(view, None) == [(v4, AddressRange.ANY), (v6, AddressRange.ANY)]
    assert range_pairs(view, 1) == [(v4, AddressRange.ANY)]  # ICMP is IPv4's
    assert range_pairs(view, 58) == [(v6, AddressRange.ANY)]
    mixed = View((v4,), (v6,), PortRange.ANY, PortRange.ANY, "both")
    assert range_pairs(mixed, None) == []


def test_ts_strings_and_overlap() -> None:
    v4 = AddressRange.parse("10.0.0.1")
    assert ts_strings(AddressRange.ANY, None, PortRange.ANY, v4) == ["0.0.0.0/0"]
    assert ts_strings(AddressRange.ANY, None, PortRange.ANY, AddressRange.ANY) == [
        "0.0.0.0/0", "::/0",
    ]  # fmt: skip
    assert ts_strings(v4, 6, PortRange(80, 80), AddressRange.ANY) == ["10.0.0.1/32[6/80]"]
    a = Selector(v4, AddressRange.parse("10.0.0.0/24"), 6)
    b = Selector(v4, AddressRange.parse("10.0.0.9"), None)
    c = Selector(v4, AddressRange.parse("10.0.0.9"), 17)
    assert selectors_overlap(a, b) and selectors_overlap(b, c) and not selectors_overlap(a, c)
