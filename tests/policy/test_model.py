"""The policy dataclasses: locations, labels and descriptions used in messages."""

from __future__ import annotations

import pytest

from pyipsec.errors import ConfigError
from pyipsec.ipsec.selectors import PortRange
from pyipsec.policy.loader import parse_endpoint
from pyipsec.policy.model import AuthMethod, Filter, Policy, Rule, SecurityMethod, Where


def test_where_errors_carry_file_line_and_key() -> None:
    where = Where("p.yaml", 12, "rules.R")
    err = where.error("bad", "tunnel")
    assert (err.file, err.line, err.key) == ("p.yaml", 12, "rules.R.tunnel")
    assert str(err) == "p.yaml:12: rules.R.tunnel: bad"
    assert where.error("bad").key == "rules.R"
    assert Where().error("x", "k").key == "k"
    assert str(where) == "p.yaml:12 (rules.R)" and str(Where()) == "<builtin>"


def test_filter_label_and_description() -> None:
    f = Filter(parse_endpoint("me"), parse_endpoint("10.0.0.0/24"), 6, PortRange.ANY,
               PortRange(5432, 5432), True, "db", "DB list", 2)  # fmt: skip
    assert f.label == "'DB list' #3 (db)"
    assert f.describe() == "me <-> 10.0.0.0/24 tcp dport 5432"
    one = Filter(parse_endpoint("any"), parse_endpoint("me"), None, mirrored=False)
    assert one.describe() == "any -> me any"
    # locations do not take part in equality: the same filter from two files is equal
    assert Filter(parse_endpoint("me"), parse_endpoint("any"), where=Where("a", 1)) == Filter(
        parse_endpoint("me"), parse_endpoint("any"), where=Where("b", 2)
    )


def test_methods_and_auth_descriptions() -> None:
    assert SecurityMethod(esp="aes128gcm16").kind == "esp"
    assert SecurityMethod(ah="sha256").kind == "ah"
    both = SecurityMethod(esp="aes128gcm16", ah="sha256", kilobytes=5, seconds=60)
    assert both.kind == "ah+esp" and both.describe() == "AH sha256 + ESP aes128gcm16 (5 KB / 60 s)"
    assert AuthMethod("psk", psk_ref="k").describe() == "pre-shared key 'k'"
    assert AuthMethod("certificate", ca="/ca.pem").describe() == "certificate issued by /ca.pem"
    assert "secret" not in repr(AuthMethod("psk", psk_ref="k"))


def test_policy_rule_lookup() -> None:
    p = Policy("P", (Rule("R", "L", "Permit"),), {}, {})
    assert p.rule("R").filter_action == "Permit"
    with pytest.raises(ConfigError, match="no rule named"):
        p.rule("S")
