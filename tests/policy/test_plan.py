"""Plans: SPD entries, connections and firewall rules added, removed and changed."""

from __future__ import annotations

from pyipsec.dataplane.kernel import compile_ruleset
from pyipsec.platform.linux.routing import RoutingConfig
from pyipsec.policy.compile import HostContext, compile_policy
from pyipsec.policy.loader import load_policy_text
from pyipsec.policy.plan import plan, render_nft_rule
from pyipsec.policy.presets import example_policy, example_yaml

A, B = "10.77.0.1", "10.77.0.2"
HOST = HostContext((A,))


def _fw(entries):  # type: ignore[no-untyped-def]
    return compile_ruleset(entries, RoutingConfig())


def _web(**params: str):  # type: ignore[no-untyped-def]
    return compile_policy(example_policy("Web App Encrypt", **params), HOST)


def test_first_apply_adds_everything() -> None:
    result = plan(_web(), None, firewall=_fw)
    assert result.current is None and not result.empty
    kinds = [(c.kind, c.what) for c in result.changes]
    assert kinds[:2] == [("add", "spd"), ("add", "connection")]
    assert result.count("firewall", "add") == 4 and result.count("firewall", "remove") == 0
    assert result.changes[0].name == f"{A}/32 === {B}/32 [both]"
    assert "protect esp transport" in result.changes[0].detail
    fw = [c.name for c in result.changes if c.what == "firewall"]
    assert any(r.startswith("output: ") and "mark set" in r and f"ip daddr {B}" in r for r in fw)
    assert any(r.startswith("input: ") and "drop" in r for r in fw)
    assert result.secrets_needed == ("web-db",)
    text = result.text()
    assert "nothing applied -> policy 'Web App Encrypt'" in text
    assert "SPD entries: 1 add, 0 change, 0 remove" in text
    assert "pre-shared keys needed: web-db" in text
    assert result.to_dict()["changes"][0]["kind"] == "add"


def test_same_policy_plans_no_change() -> None:
    result = plan(_web(), _web(), firewall=_fw)
    assert result.empty and "no changes" in result.text()


def test_changed_peer_and_changed_settings() -> None:
    moved = plan(_web(), _web(server_b="10.77.0.9"), firewall=_fw)
    assert moved.count("spd", "add") == 1 and moved.count("spd", "remove") == 1
    assert moved.count("connection", "add") == 1 and moved.count("connection", "remove") == 1
    assert moved.count("firewall", "add") == 4 and moved.count("firewall", "remove") == 4
    text = (
        example_yaml("Web App Encrypt")
        .replace("lifetime: 8h", "lifetime: 4h")
        .replace("Require Security (Strict)", "Integrity only")
    )
    changed = plan(compile_policy(load_policy_text(text), HOST), _web(), firewall=_fw)
    (spd,) = [c for c in changed.changes if c.what == "spd"]
    assert spd.kind == "change" and "null-sha256" in spd.detail and "=>" in spd.detail
    (conn,) = [c for c in changed.changes if c.what == "connection"]
    assert conn.kind == "change" and "rekey_time" in conn.detail
    assert "esp_proposals" in conn.detail
    assert changed.count("firewall", "add") == 0  # same selectors, same rules


def test_without_firewall_compiler() -> None:
    result = plan(_web())
    assert not result.firewall_included
    assert all(c.what != "firewall" for c in result.changes)
    assert "not computed" in result.text()


def test_render_nft_rule() -> None:
    rule = {
        "add": {
            "rule": {
                "family": "inet", "table": "pyipsec", "chain": "output",
                "expr": [
                    {"match": {"op": "==", "left": {"payload": {"protocol": "ip",
                     "field": "daddr"}}, "right": {"prefix": {"addr": "10.0.0.0", "len": 8}}}},
                    {"match": {"op": "!=", "left": {"meta": {"key": "oifname"}},
                     "right": "pyipsec0"}},
                    {"counter": None}, {"drop": None},
                ],
                "comment": "x/out",
            }
        }
    }  # fmt: skip
    assert render_nft_rule(rule) == (
        'output: ip daddr 10.0.0.0/8 meta oifname != pyipsec0 counter drop comment "x/out"'
    )
    assert render_nft_rule({"add": {"chain": {}}}) is None


def test_added_connection_names_its_authentication_methods() -> None:
    (added,) = [c for c in plan(_web(), None, firewall=_fw).changes if c.what == "connection"]
    assert added.detail.endswith("authentication psk")
    text = example_yaml("Web App Encrypt").replace(
        "      - psk: web-db\n", "      - certificate: {ca: /etc/ca.pem}\n      - psk: web-db\n"
    )
    host = HostContext((A,), certificate="/h.crt", private_key="/h.key")
    both = compile_policy(load_policy_text(text), host)
    (added,) = [c for c in plan(both, None, firewall=_fw).changes if c.what == "connection"]
    assert added.detail.endswith("authentication pubkey then psk")
    (changed,) = [c for c in plan(both, _web(), firewall=_fw).changes if c.what == "connection"]
    assert changed.kind == "change" and "alternatives" in changed.detail
