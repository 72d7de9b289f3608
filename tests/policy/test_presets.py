"""Built-in filter actions, filter lists and example policies (and their files)."""

from __future__ import annotations

import os

import pytest

from pyipsec.errors import ConfigError
from pyipsec.policy.loader import load_policy_file
from pyipsec.policy.presets import (
    EXAMPLES,
    FILTER_ACTIONS,
    FILTER_LISTS,
    example_policy,
    example_yaml,
)

EXAMPLE_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "policies")


def test_preset_filter_actions() -> None:
    assert set(FILTER_ACTIONS) == {
        "Integrity and Encryption", "Integrity only", "Require Security (Strict)",
        "Request Security", "Permit", "Block",
    }  # fmt: skip
    strict = FILTER_ACTIONS["Require Security (Strict)"]
    assert strict.action == "negotiate"
    assert not strict.accept_unsecured and not strict.allow_unsecured_fallback
    request = FILTER_ACTIONS["Request Security"]
    assert request.accept_unsecured and request.allow_unsecured_fallback
    integrity = FILTER_ACTIONS["Integrity only"]
    assert [m.esp for m in integrity.methods] == ["null-sha256", "aes128gmac"]
    assert all(m.kilobytes == 100_000 and m.seconds == 3600 for m in integrity.methods)
    assert FILTER_ACTIONS["Permit"].action == "permit" and not FILTER_ACTIONS["Permit"].methods
    assert FILTER_ACTIONS["Block"].action == "block"


def test_preset_filter_lists() -> None:
    (ip,) = FILTER_LISTS["All IP Traffic"].filters
    (icmp,) = FILTER_LISTS["All ICMP Traffic"].filters
    assert ip.source.kind == "me" and ip.destination.kind == "any" and ip.mirrored
    assert ip.protocol is None and icmp.protocol == 1


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_example_files_equal_the_builtins(name: str) -> None:
    _, _, stem = EXAMPLES[name]
    path = os.path.join(EXAMPLE_DIR, stem + ".yaml")
    with open(path) as handle:
        assert handle.read() == example_yaml(name)
    assert load_policy_file(path) == example_policy(name)


def test_web_app_encrypt_is_parametrised() -> None:
    p = example_policy("Web App Encrypt", server_a="192.0.2.10", server_b="192.0.2.20")
    (f,) = p.filter_lists["Web - DB traffic"].filters
    assert (f.source.text, f.destination.text, f.mirrored, f.protocol) == (
        "192.0.2.10", "192.0.2.20", True, None,
    )  # fmt: skip
    (rule,) = p.rules
    assert rule.name == "Web - DB" and rule.filter_action == "Require Security (Strict)"
    assert rule.tunnel is None and rule.authentication[0].psk_ref == "web-db"
    cert = example_policy("Web App Encrypt", auth="certificate: {ca: /etc/ca.pem}")
    assert cert.rules[0].authentication[0].ca == "/etc/ca.pem"


def test_example_roles() -> None:
    client = example_policy("Client (Respond Only)")
    assert client.rules == () and client.default_response
    server = example_policy("Server (Request Security)")
    assert {r.filter_action for r in server.rules} == {"Request Security", "Permit"}
    secure = example_policy("Secure Server (Require Security)")
    assert {r.filter_action for r in secure.rules} == {"Require Security (Strict)", "Permit"}
    assert not secure.default_response


def test_unknown_example_or_parameter() -> None:
    with pytest.raises(ConfigError, match="no built-in policy"):
        example_yaml("Nope")
    with pytest.raises(ConfigError, match="unknown parameter") as info:
        example_yaml("Web App Encrypt", server_c="10.0.0.3")
    assert info.value.key == "server_c"
    with pytest.raises(ConfigError) as bad:
        example_policy("Web App Encrypt", server_a="not an address!")
    assert bad.value.key == "filter_lists.Web - DB traffic.filters.0.source"
