"""Explanations: which rule and filter decide a packet, the outcome and the losers."""

from __future__ import annotations

import textwrap

import pytest

from pyipsec.errors import ConfigError
from pyipsec.policy.compile import ALL_CAPABILITIES, HostContext, compile_policy
from pyipsec.policy.explain import explain, make_flow
from pyipsec.policy.loader import load_policy_text
from pyipsec.policy.presets import example_policy

A, B = "10.77.0.1", "10.77.0.2"

LAYERED = textwrap.dedent(
    """\
    name: Layered
    filter_lists:
      DB port:
        filters:
          - {source: me, destination: 10.77.0.2, protocol: tcp, destination_port: 5432,
             description: postgres}
      Subnet:
        filters:
          - {source: me, destination: 10.77.0.0/24}
      Ssh in:
        filters:
          - {source: 10.77.0.0/24, destination: me, protocol: tcp, destination_port: 22,
             mirrored: false}
    filter_actions:
      Lenient:
        action: negotiate
        methods: [{esp: aes128gcm16}]
        accept_unsecured: true
    rules:
      DB: {filter_list: DB port, filter_action: Require Security (Strict),
           authentication: [{psk: db}]}
      Subnet: {filter_list: Subnet, filter_action: Block}
      Ssh: {filter_list: Ssh in, filter_action: Permit}
      Lenient: {filter_list: Lenient list, filter_action: Lenient,
                authentication: [{psk: len}]}
    """
).replace(
    "  Ssh in:\n",
    "  Lenient list:\n    filters:\n      - {source: me, destination: 10.77.0.5}\n  Ssh in:\n",
)


def _compiled(me: str = A):  # type: ignore[no-untyped-def]
    return compile_policy(
        load_policy_text(LAYERED, file="l.yaml"), HostContext((me,)), capabilities=ALL_CAPABILITIES
    )


def test_protected_flow_names_rule_filter_and_losers() -> None:
    result = explain(_compiled(), make_flow(A, B, "tcp", 40000, 5432))
    assert result.direction == "out" and result.action == "protect"
    assert result.origin is not None and result.origin.rule == "DB"
    assert "ESP (aes128gcm16" in result.outcome and "pre-shared key 'db'" in result.outcome
    assert [(rf.rule.name, why) for rf, why in result.losers] == [
        ("Subnet", "less specific: its larger address set is larger (256 against 1)")
    ]
    text = result.text()
    assert "rule:    'DB'" in text and "l.yaml:5" in text and "loses:   rule 'Subnet'" in text
    data = result.to_dict()
    assert data["rule"] == "DB" and data["action"] == "protect"
    assert data["filter"]["description"] == "postgres" and data["filter"]["index"] == 1
    assert data["also_matching"][0]["rule"] == "Subnet"


def test_reply_direction_and_inbound_enforcement() -> None:
    result = explain(_compiled(), make_flow(B, A, "tcp", 5432, 40000))
    assert result.direction == "in" and result.action == "protect"
    assert "clear text arriving from the peer is dropped" in result.outcome


def test_block_permit_and_one_way() -> None:
    blocked = explain(_compiled(), make_flow(A, B, "tcp", 40000, 80))
    assert blocked.action == "discard" and blocked.origin.rule == "Subnet"  # type: ignore[union-attr]
    assert "dropped" in blocked.outcome
    ssh = explain(_compiled(), make_flow(B, A, "tcp", 50000, 22))
    assert ssh.action == "bypass" and ssh.origin.rule == "Ssh"  # type: ignore[union-attr]
    assert "passes in clear" in ssh.outcome
    # the one-way filter does not cover A's ssh to B: the subnet block does
    out = explain(_compiled(), make_flow(A, B, "tcp", 50000, 22))
    assert out.origin.rule == "Subnet"  # type: ignore[union-attr]


def test_accept_unsecured_inbound_is_bypass() -> None:
    inbound = explain(_compiled(), make_flow("10.77.0.5", A, "udp", 53, 40000))
    assert inbound.action == "bypass" and "accept_unsecured" in inbound.outcome
    outbound = explain(_compiled(), make_flow(A, "10.77.0.5", "udp", 40000, 53))
    assert outbound.action == "protect"


def test_no_match_local_and_forwarded() -> None:
    none = explain(_compiled(), make_flow(A, "192.0.2.1", "tcp", 1, 2))
    assert none.action == "none" and none.origin is None
    assert "passes in clear" in none.outcome and "rule:" not in none.text()
    local = explain(_compiled(), make_flow(A, A))
    assert local.direction == "local" and local.action == "none"
    forward = explain(_compiled(), make_flow("192.0.2.1", "192.0.2.2"))
    assert forward.direction == "forward" and forward.action == "none"


def test_fallback_is_explained() -> None:
    c = compile_policy(
        example_policy("Server (Request Security)"),
        HostContext(("10.0.0.5",), certificate="/c", private_key="/k"),
        capabilities=ALL_CAPABILITIES,
    )
    result = explain(c, make_flow("10.0.0.5", "192.0.2.7", "tcp", 1000, 80))
    assert result.action == "protect" and "in clear if the peer does not answer" in result.outcome
    ping = explain(c, make_flow("10.0.0.5", "192.0.2.7", "icmp", 8, 0))
    assert ping.action == "bypass" and ping.origin.rule == "All ICMP Traffic"  # type: ignore[union-attr]
    assert ping.losers[0][0].rule.name == "All IP Traffic"
    assert "it matches any protocol" in ping.losers[0][1]


@pytest.mark.parametrize(
    ("args", "key"),
    [
        (("10.0.0.x", B), "src"),
        ((A, "nope"), "dst"),
        ((A, "2001:db8::1"), "dst"),
        ((A, B, None, 0, 80), "proto"),
        ((A, B, "tcp", 0, 70000), "dport"),
        ((A, B, "gre", 0, 5), "dport"),
        ((A, B, "tcpx"), "proto"),
    ],
)
def test_make_flow_errors(args: tuple, key: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ConfigError) as info:
        make_flow(*args)
    assert info.value.key == key


def test_protected_flow_lists_the_authentication_methods_in_order() -> None:
    from pyipsec.policy.presets import example_yaml

    text = example_yaml("Web App Encrypt").replace(
        "      - psk: web-db\n", "      - certificate: {ca: /etc/ca.pem}\n      - psk: web-db\n"
    )
    host = HostContext((A,), certificate="/h.crt", private_key="/h.key")
    result = explain(compile_policy(load_policy_text(text), host), make_flow(A, B, "tcp", 1, 2))
    assert result.action == "protect"
    assert (
        "authenticated by certificate issued by /etc/ca.pem, else pre-shared key 'web-db'"
        in result.outcome
    )


def test_request_security_names_each_host_as_peer_and_the_fallback() -> None:
    host = HostContext((A,), certificate="/c.pem", private_key="/k.pem")
    compiled = compile_policy(example_policy("Server (Request Security)"), host)
    tcp = explain(compiled, make_flow(A, "192.0.2.7", "tcp", 0, 443)).text()
    assert "the other host of each packet as peer (one IKE SA per host)" in tcp
    assert "in clear if the peer does not answer within 3 s" in tcp
    assert "the most specific of the 1 filter(s) matching this packet (number 2" in tcp
    icmp = explain(compiled, make_flow(A, "192.0.2.7", "icmp", 8, 0)).text()
    assert "the most specific of the 2 filter(s) matching this packet (number 1" in icmp
