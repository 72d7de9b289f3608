"""Compilation of SPD entries into the nftables JSON of table ``inet pyipsec``."""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid

import pytest

from pyipsec.dataplane.kernel import ND_TYPES, TABLE, compile_ruleset, selector_exprs
from pyipsec.dataplane.static import parse_policy
from pyipsec.ipsec.selectors import Selector
from pyipsec.platform.linux.routing import RoutingConfig

CFG = RoutingConfig()


def pol(name, action, **kw):
    return parse_policy({"name": name, "action": action, **kw}).entry


def rules(body, chain):
    return [
        c["add"]["rule"] for c in body if "rule" in c["add"] and c["add"]["rule"]["chain"] == chain
    ]


def matches(rule):
    return [e["match"] for e in rule["expr"] if "match" in e]


def test_chains_hooks_and_fixed_rules():
    body = compile_ruleset([], CFG)
    chains = {c["add"]["chain"]["name"]: c["add"]["chain"] for c in body if "chain" in c["add"]}
    assert chains["output"]["type"] == "route" and chains["output"]["hook"] == "output"
    assert {chains[n]["hook"] for n in ("input", "forward", "postrouting", "prerouting")} == {
        "input", "forward", "postrouting", "prerouting"}  # fmt: skip
    out = rules(body, "output")
    # own sockets first, then loopback, then ND
    assert matches(out[0]) == [{"op": "==", "left": {"meta": {"key": "mark"}},
                                "right": CFG.socket_mark}]  # fmt: skip
    assert matches(out[1])[0]["right"] == "lo"
    assert matches(out[2])[1]["right"] == {"set": list(ND_TYPES)}
    post = rules(body, "postrouting")
    fail_closed = post[0]
    assert fail_closed["comment"] == "fail-closed"
    assert {"drop": None} in fail_closed["expr"]
    assert matches(fail_closed) == [
        {"op": "==", "left": {"meta": {"key": "mark"}}, "right": CFG.mark},
        {"op": "!=", "left": {"meta": {"key": "oifname"}}, "right": CFG.ifname},
    ]
    for chain in ("input", "forward"):
        r = rules(body, chain)
        assert matches(r[0])[0]["right"] == CFG.ifname and {"accept": None} in r[0]["expr"]
        assert matches(r[1])[0]["right"] == {"set": [50, 51]}


def test_protect_marks_output_and_drops_plain_input_in_spd_order():
    entries = [
        pol("web", "protect", local="10.0.0.1", remote="10.0.1.0/24", protocol="tcp",
            remote_ports="5432"),
        pol("byp", "bypass", local="any", remote="10.0.1.9"),
        pol("blk", "discard", local="10.0.0.0-10.0.0.9", remote="any", protocol="icmp",
            icmp_type=8, priority=1),
    ]  # fmt: skip
    entries.sort(key=lambda e: e.priority)
    body = compile_ruleset(entries, CFG)
    out = [r for r in rules(body, "output") if r.get("comment") or len(r["expr"]) > 2][1:]
    names = [r.get("comment", "bypass") for r in out]
    assert names == ["blk/out", "web/out", "bypass"]
    web = out[1]
    assert {"mangle": {"key": {"meta": {"key": "mark"}}, "value": CFG.mark}} in web["expr"]
    m = matches(web)
    assert {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}},
            "right": "10.0.0.1"} in m  # fmt: skip
    assert {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}},
            "right": {"prefix": {"addr": "10.0.1.0", "len": 24}}} in m  # fmt: skip
    assert {"op": "==", "left": {"payload": {"protocol": "th", "field": "dport"}},
            "right": 5432} in m  # fmt: skip
    blk = out[0]
    assert {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}},
            "right": {"range": ["10.0.0.0", "10.0.0.9"]}} in matches(blk)  # fmt: skip
    assert {"op": "==", "left": {"payload": {"protocol": "icmp", "field": "type"}},
            "right": 8} in matches(blk)  # fmt: skip
    inp = {r.get("comment"): r for r in rules(body, "input")}
    # inbound plaintext for the PROTECT entry is dropped, selector mirrored
    m = matches(inp["web/in"])
    assert {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}},
            "right": {"prefix": {"addr": "10.0.1.0", "len": 24}}} in m  # fmt: skip
    assert {"op": "==", "left": {"payload": {"protocol": "th", "field": "sport"}},
            "right": 5432} in m  # fmt: skip
    assert {"drop": None} in inp["web/in"]["expr"] and {"drop": None} in inp["blk/in"]["expr"]
    assert "blk/fwd-out" in {r.get("comment") for r in rules(body, "forward")}
    assert any("web/pre" == r.get("comment") for r in rules(body, "prerouting"))


def test_direction_restricted_entries():
    body = compile_ruleset([pol("o", "discard", remote="10.0.0.1", direction="out")], CFG)
    comments = {r.get("comment") for c in ("output", "input") for r in rules(body, c)}
    assert "o/out" in comments and "o/in" not in comments


def test_ipv6_and_any_family_selectors():
    sel = Selector.from_fields("fd00::/64", "fd00:1::5-fd00:1::9", "udp", "53")
    (exprs,) = selector_exprs(sel, "out")
    assert exprs[0]["match"]["right"] == "ipv6"
    assert exprs[1]["match"]["left"] == {"payload": {"protocol": "ip6", "field": "saddr"}}
    assert exprs[2]["match"]["right"] == {"range": ["fd00:1::5", "fd00:1::9"]}
    assert exprs[-1]["match"] == {"op": "==", "left": {"payload": {"protocol": "th",
                                  "field": "sport"}}, "right": 53}  # fmt: skip
    (anyfam,) = selector_exprs(Selector.from_fields("any", "any", "tcp"), "in")
    assert anyfam == [{"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": 6}}]


@pytest.mark.netns
def test_nft_accepts_the_json(tmp_path):
    """``nft --check`` (in a throwaway namespace) parses every rule we generate."""
    if not shutil.which("nft"):
        pytest.skip("nft not installed")
    entries = [
        pol("a", "protect", local="10.0.0.1", remote="10.0.1.0/24", protocol="tcp",
            remote_ports="1000-2000"),
        pol("b", "discard", local="fd00::/64", remote="fd00:1::5-fd00:1::9",
            protocol="ipv6-icmp", icmp_type=128, icmp_code=0),
        pol("c", "bypass", protocol="udp", local_ports="53"),
    ]  # fmt: skip
    doc = {"nftables": [{"add": {"table": TABLE.obj()}}, *compile_ruleset(entries, CFG)]}
    ns = "pyi-nft" + uuid.uuid4().hex[:6]
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        res = subprocess.run(["ip", "netns", "exec", ns, "nft", "-c", "-j", "-f", "-"],
                             input=json.dumps(doc), capture_output=True, text=True)  # fmt: skip
        assert res.returncode == 0, res.stderr
    finally:
        subprocess.run(["ip", "netns", "del", ns])
