"""Policy YAML parsing and validation: every error names file, line and key."""

from __future__ import annotations

import os
import textwrap

import pytest

from pyipsec.errors import ConfigError
from pyipsec.ipsec.selectors import AddressRange, PortRange
from pyipsec.policy.loader import (
    load_policy_file,
    load_policy_text,
    parse_duration,
    parse_endpoint,
)

GOOD = """\
name: Test
description: a test
  policy
polling_interval: 30m
key_exchange:
  lifetime: 4h
  master_key_pfs: false
  methods: [aes128gcm16-prfsha256-x25519]
filter_lists:
  DB:
    description: database
    filters:
      - source: me
        destination: 10.0.0.0/24
        protocol: tcp
        destination_port: 5432
        description: postgres
      - source: db.example.test
        destination: 10.0.1.1-10.0.1.9
        protocol: udp
        source_port: 1000-2000
        mirrored: false
filter_actions:
  Encrypt:
    action: negotiate
    methods:
      - {esp: aes256gcm16, kilobytes: 50000, seconds: 30m}
      - {esp: null-sha256}
    accept_unsecured: true
    allow_unsecured_fallback: true
    fallback_seconds: 5
    pfs: true
  Drop:
    action: block
rules:
  DB rule:
    filter_list: DB
    filter_action: Encrypt
    authentication:
      - psk: db-key
    tunnel: 192.0.2.1
  ICMP:
    filter_list: All ICMP Traffic
    filter_action: Permit
"""


def test_good_policy_parses_every_field() -> None:
    p = load_policy_text(GOOD, file="good.yaml")
    assert p.name == "Test" and p.description == "a test policy"
    assert p.polling_interval == 1800
    assert p.key_exchange.lifetime == 4 * 3600
    assert p.key_exchange.methods == ("aes128gcm16-prfsha256-x25519",)
    f0, f1 = p.filter_lists["DB"].filters
    assert f0.source.kind == "me" and f0.destination.range == AddressRange.parse("10.0.0.0/24")
    assert f0.protocol == 6 and f0.destination_ports == PortRange(5432, 5432)
    assert f0.mirrored and f0.description == "postgres"
    assert f0.where.file == "good.yaml" and f0.where.line == 13
    assert f1.source.kind == "dns" and f1.source.text == "db.example.test"
    assert f1.source_ports == PortRange(1000, 2000) and not f1.mirrored
    enc = p.filter_actions["Encrypt"]
    assert [m.esp for m in enc.methods] == ["aes256gcm16", "null-sha256"]
    assert enc.methods[0].kilobytes == 50000 and enc.methods[0].seconds == 1800
    assert enc.methods[1].kilobytes == 100_000 and enc.methods[1].seconds == 3600
    assert enc.accept_unsecured and enc.allow_unsecured_fallback and enc.pfs
    assert enc.fallback_seconds == 5
    assert p.filter_actions["Drop"].action == "block"
    assert "Permit" in p.filter_actions and "All IP Traffic" in p.filter_lists
    rule = p.rule("DB rule")
    assert rule.tunnel == "192.0.2.1" and rule.authentication[0].psk_ref == "db-key"
    assert rule.where.line == 36 and rule.where.key == "rules.DB rule"
    assert p.rule("ICMP").authentication == ()
    with pytest.raises(ConfigError):
        p.rule("nope")


def _replace(old: str, new: str) -> str:
    assert old in GOOD, old
    return GOOD.replace(old, new)


# (old text, new text, expected key, expected line, words in the message)
ERRORS = [
    ("name: Test\n", "", "name", 1, "required"),
    ("name: Test\n", "name: Test\nbogus: 1\n", "bogus", 2, "unknown key"),
    ("polling_interval: 30m", "polling_interval: soon", "polling_interval", 4, "duration"),
    ("polling_interval: 30m", "polling_interval: 5", "polling_interval", 4, "at least 60"),
    ("  lifetime: 4h", "  lifetime: 1m", "key_exchange.lifetime", 6, "at least 300"),
    (
        "[aes128gcm16-prfsha256-x25519]",
        "[aes128gcm16-prfsha256-nope]",
        "key_exchange.methods.0",
        8,
        "nope",
    ),
    (
        "  master_key_pfs: false",
        "  master_key_pfs: maybe",
        "key_exchange.master_key_pfs",
        7,
        "true or false",
    ),
    (
        "      - source: me\n",
        "      - source: 10.0.0.300\n",
        "filter_lists.DB.filters.0.source",
        13,
        "10.0.0.300",
    ),
    (
        "      - source: me\n",
        "      - source: bad_-.name..x\n",
        "filter_lists.DB.filters.0.source",
        13,
        "DNS",
    ),
    (
        "        destination: 10.0.0.0/24",
        "        destination: 10.0.0.1/24",
        "filter_lists.DB.filters.0.destination",
        14,
        "host bits",
    ),
    (
        "        destination: 10.0.0.0/24",
        "        destination: me",
        "filter_lists.DB.filters.0.destination",
        14,
        "both be 'me'",
    ),
    (
        "        destination: 10.0.0.0/24",
        "        destination: 2001:db8::/64\n        source: 10.0.0.1",
        "filter_lists.DB.filters.0.source",
        15,
        "duplicate",
    ),
    (
        "        protocol: tcp\n        destination_port: 5432",
        "        protocol: tcpp",
        "filter_lists.DB.filters.0.protocol",
        15,
        "unknown protocol",
    ),
    (
        "        protocol: tcp\n",
        "        protocol: icmp\n",
        "filter_lists.DB.filters.0.destination_port",
        16,
        "ports need",
    ),
    (
        "destination_port: 5432",
        "destination_port: 70000",
        "filter_lists.DB.filters.0.destination_port",
        16,
        "65535",
    ),
    (
        "source_port: 1000-2000",
        "source_port: 2000-1000",
        "filter_lists.DB.filters.1.source_port",
        21,
        "ends before",
    ),
    (
        "        mirrored: false",
        "        mirrored: nah",
        "filter_lists.DB.filters.1.mirrored",
        22,
        "true or false",
    ),
    (
        "    description: database\n    filters:",
        "    filters: []\n    x:",
        "filter_lists.DB.x",
        12,
        "unknown key",
    ),
    (
        "  Drop:\n    action: block",
        "  Permit:\n    action: block",
        "filter_actions.Permit",
        33,
        "shadows",
    ),
    ("  DB:\n", "  All IP Traffic:\n", "filter_lists.All IP Traffic", 10, "shadows"),
    ("    action: block", "    action: deny", "filter_actions.Drop.action", 34, "must be one"),
    (
        "    action: block",
        "    action: block\n    pfs: true",
        "filter_actions.Drop.pfs",
        35,
        "only a negotiate",
    ),
    (
        "      - {esp: null-sha256}",
        "      - {esp: rot13}",
        "filter_actions.Encrypt.methods.1.esp",
        28,
        "rot13",
    ),
    (
        "      - {esp: null-sha256}",
        "      - {ah: aes128gcm16}",
        "filter_actions.Encrypt.methods.1.ah",
        28,
        "unknown ah",
    ),
    (
        "      - {esp: null-sha256}",
        "      - {kilobytes: 5}",
        "filter_actions.Encrypt.methods.1",
        28,
        "needs 'esp'",
    ),
    (
        "      - {esp: null-sha256}",
        "      - {esp: null-sha256, seconds: 10}",
        "filter_actions.Encrypt.methods.1.seconds",
        28,
        "at least 60",
    ),
    (
        "kilobytes: 50000",
        "kilobytes: 0",
        "filter_actions.Encrypt.methods.0.kilobytes",
        27,
        "at least 1",
    ),
    (
        "    allow_unsecured_fallback: true\n",
        "",
        "filter_actions.Encrypt.fallback_seconds",
        30,
        "needs allow_unsecured",
    ),
    (
        "    methods:\n      - {esp: aes256gcm16, kilobytes: 50000, seconds: 30m}\n"
        "      - {esp: null-sha256}\n",
        "    methods: []\n",
        "filter_actions.Encrypt.methods",
        26,
        "at least one security method",
    ),
    (
        "    filter_list: DB\n",
        "    filter_list: DBX\n",
        "rules.DB rule.filter_list",
        37,
        "no filter list",
    ),
    (
        "    filter_action: Encrypt",
        "    filter_action: Encrypted",
        "rules.DB rule.filter_action",
        38,
        "no filter action",
    ),
    (
        "      - psk: db-key",
        "      - psk: 'has space'",
        "rules.DB rule.authentication.0.psk",
        40,
        "names a secret",
    ),
    (
        "      - psk: db-key",
        "      - kerberos: {}",
        "rules.DB rule.authentication.0.kerberos",
        40,
        "not supported yet",
    ),
    (
        "      - psk: db-key",
        "      - {psk: a, certificate: {ca: x}}",
        "rules.DB rule.authentication.0",
        40,
        "one of",
    ),
    (
        "      - psk: db-key",
        "      - certificate: {}",
        "rules.DB rule.authentication.0.certificate.ca",
        40,
        "required",
    ),
    (
        "    authentication:\n      - psk: db-key\n",
        "",
        "rules.DB rule.authentication",
        37,
        "needs authentication",
    ),
    (
        "    tunnel: 192.0.2.1",
        "    tunnel: gateway",
        "rules.DB rule.tunnel",
        41,
        "does not appear to be",
    ),
    (
        "    filter_action: Permit",
        "    filter_action: Permit\n    tunnel: 192.0.2.1",
        "rules.ICMP.tunnel",
        45,
        "only applies to negotiate",
    ),
    (
        "    filter_action: Permit",
        "    filter_action: Permit\n    authentication: []",
        "rules.ICMP.authentication",
        45,
        "only applies to negotiate",
    ),
    (
        "    tunnel: 192.0.2.1",
        "    connection_type: wifi",
        "rules.DB rule.connection_type",
        41,
        "must be one of",
    ),
    (
        "name: Test\n",
        "name: Test\ndefault_response: true\n",
        "default_response",
        2,
        "needs authentication",
    ),
    ("name: Test\n", "name: ' '\n", "name", 1, "must not be empty"),
    ("name: Test\n", "name: Test\nname: Again\n", "name", 2, "duplicate key"),
]


@pytest.mark.parametrize(("old", "new", "key", "line", "words"), ERRORS)
def test_errors_name_file_line_and_key(
    old: str, new: str, key: str, line: int | None, words: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_policy_text(_replace(old, new), file="p.yaml")
    err = info.value
    assert err.file == "p.yaml"
    assert err.key == key, str(err)
    if line is not None:
        assert err.line == line, str(err)
    assert words in str(err), str(err)


def test_no_rules_and_no_default_response() -> None:
    with pytest.raises(ConfigError, match="no rules and no default response"):
        load_policy_text("name: Empty\n", file="e.yaml")


def test_default_response_forms() -> None:
    p = load_policy_text(
        "name: C\ndefault_response: {enabled: true, authentication: [{psk: dr}]}\n"
    )
    assert p.default_response and p.default_response_auth[0].psk_ref == "dr"
    off = load_policy_text(GOOD.replace("name: Test\n", "name: Test\ndefault_response: false\n"))
    assert not off.default_response
    off2 = load_policy_text(
        GOOD.replace("name: Test\n", "name: Test\ndefault_response: {enabled: false}\n")
    )
    assert not off2.default_response


def test_invalid_yaml_and_missing_file(tmp_path: os.PathLike[str]) -> None:
    with pytest.raises(ConfigError, match="invalid YAML") as info:
        load_policy_text("name: [unclosed\n", file="bad.yaml")
    assert info.value.file == "bad.yaml"
    with pytest.raises(ConfigError, match="cannot read"):
        load_policy_file(os.path.join(tmp_path, "missing.yaml"))


def test_file_relative_ca_path(tmp_path: os.PathLike[str]) -> None:
    path = os.path.join(tmp_path, "p.yaml")
    with open(path, "w") as handle:
        handle.write(
            textwrap.dedent(
                """\
                name: Cert
                rules:
                  All:
                    filter_list: All IP Traffic
                    filter_action: Integrity only
                    authentication:
                      - certificate: {ca: certs/ca.pem}
                """
            )
        )
    p = load_policy_file(path)
    assert p.rules[0].authentication[0].ca == os.path.join(tmp_path, "certs", "ca.pem")
    assert p.rules[0].where.file == path


def test_parse_endpoint_kinds() -> None:
    assert parse_endpoint("ME").kind == "me"
    assert parse_endpoint("any").range == AddressRange.ANY
    assert parse_endpoint("10.0.0.1-10.0.0.5").range == AddressRange.parse("10.0.0.1-10.0.0.5")
    assert parse_endpoint("2001:db8::/32").kind == "address"
    assert parse_endpoint("Server-B.example.test.").text == "server-b.example.test"
    with pytest.raises(ConfigError):
        parse_endpoint("-bad-.example")


def test_parse_duration() -> None:
    assert parse_duration("90") == 90
    assert parse_duration("1h30m") == 5400
    assert parse_duration("2d") == 172800
    for bad in ("", "h", "1x", "-5"):
        with pytest.raises(ValueError):
            parse_duration(bad)
