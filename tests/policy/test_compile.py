"""Compiling policies for one host: SPD entries, daemon connections, unsupported features."""

from __future__ import annotations

import ipaddress
import os
import textwrap

import pytest
import yaml

from pyipsec.daemon.config import load_config
from pyipsec.errors import ConfigError
from pyipsec.ipsec.spd import Action, Spd
from pyipsec.policy.compile import (
    ALL_CAPABILITIES,
    HostContext,
    compile_policy,
)
from pyipsec.policy.loader import load_policy_text
from pyipsec.policy.presets import example_policy
from pyipsec.wire.flow import Flow

A, B, C = "10.77.0.1", "10.77.0.2", "10.77.0.3"
CERT = HostContext(("10.0.0.5",), certificate="/etc/pyipsec/host.pem",
                   private_key="/etc/pyipsec/host.key")  # fmt: skip


def _flow(src: str, dst: str, proto: int = 6, sport: int = 40000, dport: int = 80) -> Flow:
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    return Flow(s.version, int(s), int(d), proto, sport, dport)


def _lookup(compiled, flow: Flow, direction: str):  # type: ignore[no-untyped-def]
    return Spd(list(compiled.spd)).lookup(flow, direction)


def _policy(body: str, **kw: str):  # type: ignore[no-untyped-def]
    return load_policy_text(textwrap.dedent(body).format(**kw), file="p.yaml")


# ------------------------------------------------------------------ Web App Encrypt


@pytest.mark.parametrize(("me", "peer"), [(A, B), (B, A)])
def test_web_app_encrypt_on_both_servers(me: str, peer: str) -> None:
    c = compile_policy(example_policy("Web App Encrypt"), HostContext((me,)))
    (entry,) = c.spd
    assert entry.action is Action.PROTECT and entry.direction == "both"
    assert str(entry.selector) == f"{me}/32 === {peer}/32"
    assert entry.template is not None and entry.template.mode == "transport"
    assert entry.template.algorithms == ("aes128gcm16", "aes256gcm16", "aes256-sha256")
    assert entry.template.lifetime is not None
    assert entry.template.lifetime.soft_seconds == 3600
    conn_name = f"web-db-{peer}"
    assert entry.template.connection == conn_name
    conn = c.daemon["connections"][conn_name]
    assert conn["local_addrs"] == [me] and conn["remote_addrs"] == [peer]
    assert conn["proposals"] == ["aes128gcm16-prfsha256-x25519", "aes256gcm16-prfsha384-ecp384"]
    assert conn["local"] == {"auth": "psk", "id": me}
    ((child_name, child),) = conn["children"].items()
    assert child_name == entry.template.child
    assert child["local_ts"] == [f"{me}/32"] and child["remote_ts"] == [f"{peer}/32"]
    assert child["start_action"] == "trap" and child["mode"] == "transport"
    assert c.psk_refs == {conn_name: "web-db"}
    assert c.origins[entry.name].rule == "Web - DB"
    # traffic to the peer is protected both ways; anything else matches nothing
    assert _lookup(c, _flow(me, peer), "out") is entry
    assert _lookup(c, _flow(peer, me), "in") is entry
    assert _lookup(c, _flow(me, C), "out") is None


def test_web_app_encrypt_leaves_a_third_host_alone() -> None:
    c = compile_policy(example_policy("Web App Encrypt"), HostContext((C,)))
    assert c.spd == () and c.daemon == {"connections": {}}
    assert c.skipped == ("Web - DB: no filter names this host",)


def test_compiled_daemon_config_loads_in_the_daemon(tmp_path: os.PathLike[str]) -> None:
    secrets_path = os.path.join(tmp_path, "secrets.yaml")
    c = compile_policy(
        example_policy("Web App Encrypt"), HostContext((A,), secrets_file=secrets_path)
    )
    fd = os.open(secrets_path, os.O_WRONLY | os.O_CREAT, 0o600)
    with os.fdopen(fd, "w") as handle:
        yaml.safe_dump(c.secrets_file({"web-db": "correct horse battery"}), handle)
    config_path = os.path.join(tmp_path, "pyipsec.yaml")
    with open(config_path, "w") as handle:
        handle.write(c.daemon_yaml())
    config = load_config(config_path)
    peer = config.peer(f"web-db-{B}")
    assert peer.remote_addrs == (B,) and peer.local_auth.psk == b"correct horse battery"
    (child,) = peer.children
    assert child.start_action == "trap" and child.esp_proposals[0] == "aes128gcm16"
    assert "correct horse" not in c.daemon_yaml()


def test_secrets_file_names_a_missing_secret_not_a_value() -> None:
    c = compile_policy(example_policy("Web App Encrypt"), HostContext((A,)))
    with pytest.raises(ConfigError, match="no secret named 'web-db'"):
        c.secrets_file({"other": "s3cret-value"})
    assert c.secrets_file({"web-db": b"\x01\x02"}) == {"psk": {f"web-db-{B}": "0x0102"}}


def test_compile_is_pure_and_repeatable() -> None:
    policy = example_policy("Web App Encrypt")
    assert compile_policy(policy, HostContext((A,))) == compile_policy(policy, HostContext((A,)))
    assert policy == example_policy("Web App Encrypt")


# ------------------------------------------------------------------ example roles


def test_secure_server_orders_icmp_permit_before_protection() -> None:
    policy = example_policy("Secure Server (Require Security)")
    older = frozenset({"spd"})  # a daemon that cannot negotiate with every host yet
    with pytest.raises(ConfigError, match="not supported yet.*subnet") as info:
        compile_policy(policy, CERT, capabilities=older)
    assert info.value.key == "rules.All IP Traffic.filter_list"
    c = compile_policy(policy, CERT, capabilities=ALL_CAPABILITIES)
    assert c.requires == {"opportunistic", "spd"}
    assert [(e.action, e.direction) for e in c.spd] == [
        (Action.BYPASS, "both"), (Action.PROTECT, "both"),
    ]  # fmt: skip
    icmp, ip = c.spd
    assert str(icmp.selector) == "10.0.0.5/32[icmp] === %any[icmp]"
    assert _lookup(c, _flow("10.0.0.5", "192.0.2.9", proto=1, sport=8, dport=0), "out") is icmp
    assert _lookup(c, _flow("192.0.2.9", "10.0.0.5", proto=6), "in") is ip
    conn = c.daemon["connections"]["all-ip-traffic-any"]
    assert conn["remote_addrs"] == ["%any"]
    assert conn["local"]["auth"] == "pubkey" and conn["local"]["cert"] == CERT.certificate
    assert conn["remote"] == {"auth": "pubkey", "cacerts": ["/etc/pyipsec/ca.pem"]}
    assert conn["children"]["all-ip-traffic-any-1"]["remote_ts"] == ["0.0.0.0/0"]
    assert "unsecured_fallback" not in conn["children"]["all-ip-traffic-any-1"]
    assert compile_policy(policy, CERT) == c  # today's daemon can do it all


def test_server_request_security_accepts_clear_text_and_falls_back() -> None:
    policy = example_policy("Server (Request Security)")
    with pytest.raises(ConfigError, match="fall back") as info:
        compile_policy(policy, CERT, capabilities=frozenset({"opportunistic", "respond_only"}))
    assert info.value.key == "rules.All IP Traffic.filter_action"
    c = compile_policy(policy, CERT, capabilities=ALL_CAPABILITIES)
    assert c.requires == ALL_CAPABILITIES
    names = [(e.name, e.action, e.direction) for e in c.spd]
    assert names == [
        ("all-icmp-traffic.1.1", Action.BYPASS, "both"),
        ("all-ip-traffic.2.1-out", Action.PROTECT, "out"),
        ("all-ip-traffic.2.1-in", Action.BYPASS, "in"),
    ]
    assert [(f.entry, f.seconds) for f in c.fallbacks] == [("all-ip-traffic.2.1-out", 3.0)]
    assert "default-response" in c.daemon["connections"]
    child = c.daemon["connections"]["all-ip-traffic-any"]["children"]["all-ip-traffic-any-1"]
    assert child["unsecured_fallback"] == 3.0 and child["start_action"] == "trap"


def test_client_respond_only() -> None:
    policy = example_policy("Client (Respond Only)")
    with pytest.raises(ConfigError, match="default response") as info:
        compile_policy(policy, CERT, capabilities=frozenset({"spd"}))
    assert info.value.key == "default_response"
    c = compile_policy(policy, CERT, capabilities=frozenset({"respond_only"}))
    assert c.spd == ()
    (conn,) = c.daemon["connections"].values()
    assert conn["remote_addrs"] == ["%any"]
    assert conn["children"]["default-response"]["start_action"] == "none"


def test_certificate_auth_needs_the_host_credentials() -> None:
    policy = example_policy("Web App Encrypt", auth="certificate: {ca: /etc/ca.pem}")
    with pytest.raises(ConfigError, match="certificate and private key") as info:
        compile_policy(policy, HostContext((A,)), capabilities=ALL_CAPABILITIES)
    assert info.value.key == "rules.Web - DB.authentication.0"
    c = compile_policy(policy, HostContext((A,), certificate="/c.pem", private_key="/k.pem"))
    assert c.psk_refs == {} and "secrets" not in c.daemon


# ------------------------------------------------------------------ semantics

MIXED = """\
name: Mixed
filter_lists:
  DB:
    filters:
      - {{source: me, destination: {db}, protocol: tcp, destination_port: 5432}}
  Subnet:
    filters:
      - {{source: me, destination: 10.77.0.0/24}}
  Out only:
    filters:
      - {{source: 10.77.0.1, destination: 10.77.0.9, mirrored: false}}
filter_actions:
  DB encrypt:
    action: negotiate
    methods:
      - {{esp: aes256gcm16, kilobytes: 1000, seconds: 600}}
      - {{esp: chacha20poly1305}}
    pfs: true
rules:
  Database:
    filter_list: DB
    filter_action: DB encrypt
    authentication: [{{psk: db}}]
  Local subnet:
    filter_list: Subnet
    filter_action: Block
  One way:
    filter_list: Out only
    filter_action: Permit
"""


def test_specificity_decides_not_the_author() -> None:
    c = compile_policy(_policy(MIXED, db=B), HostContext((A,)), capabilities=ALL_CAPABILITIES)
    assert [e.name for e in c.spd] == ["database.1.1", "one-way.2.1", "local-subnet.3.1"]
    db, one_way, block = c.spd
    assert one_way.direction == "out" and one_way.action is Action.BYPASS
    assert db.action is Action.PROTECT and str(db.selector) == f"{A}/32[tcp] === {B}/32[tcp/5432]"
    assert block.action is Action.DISCARD
    assert _lookup(c, _flow(A, B, dport=5432), "out") is db
    assert _lookup(c, _flow(B, A, sport=5432, dport=40000), "in") is db
    assert _lookup(c, _flow(A, B, dport=22), "out") is block
    assert _lookup(c, _flow(A, "10.77.0.9"), "out") is one_way
    assert _lookup(c, _flow("10.77.0.9", A), "in") is block  # one way only
    child = c.daemon["connections"][f"database-{B}"]["children"][f"database-{B}-1"]
    assert child["local_ts"] == [f"{A}/32[6]"] and child["remote_ts"] == [f"{B}/32[6/5432]"]
    assert child["esp_proposals"] == ["aes256gcm16", "chacha20poly1305"]
    assert child["rekey_time"] == 600 and child["rekey_bytes"] == 1000 * 1024
    assert child["pfs_group"] == "x25519"
    assert any("shortest" in note for note in c.notes)


def test_one_way_filter_seen_from_the_destination() -> None:
    c = compile_policy(
        _policy(MIXED, db=B), HostContext(("10.77.0.9",)), capabilities=ALL_CAPABILITIES
    )
    (one_way,) = [e for e in c.spd if c.origins[e.name].rule == "One way"]
    assert one_way.name == "one-way.2.1" and one_way.direction == "in"
    assert str(one_way.selector) == f"10.77.0.9/32 === {A}/32"
    # 10.77.0.9 is in the subnet of the block rule's destination: blocked both ways with A
    assert _lookup(c, _flow("10.77.0.9", A), "out").action is Action.DISCARD


def test_dns_names_resolve_to_one_connection_per_address() -> None:
    policy = _policy(MIXED, db="db.example.test")
    resolver = {"db.example.test": ["10.77.0.2", "10.77.0.4"]}.__getitem__
    c = compile_policy(policy, HostContext((A,)), resolver=resolver, capabilities=ALL_CAPABILITIES)
    assert {"database-10.77.0.2", "database-10.77.0.4"} <= set(c.daemon["connections"])
    with pytest.raises(ConfigError, match="no resolver"):
        compile_policy(policy, HostContext((A,)), capabilities=ALL_CAPABILITIES)


def test_ties_between_rules_are_errors() -> None:
    body = MIXED.replace("destination: 10.77.0.0/24", "destination: {db}").replace(
        "protocol: tcp, destination_port: 5432", ""
    )
    with pytest.raises(ConfigError, match="tie between") as info:
        compile_policy(_policy(body, db=B), HostContext((A,)))
    assert "'Database'" in str(info.value) and "'Local subnet'" in str(info.value)


TUNNEL = """\
name: Tunnel
filter_lists:
  Branch:
    filters:
      - {source: 192.168.1.0/24, destination: 192.168.2.0/24}
rules:
  To branch:
    filter_list: Branch
    filter_action: Integrity and Encryption
    authentication: [{psk: branch}]
    tunnel: 198.51.100.2
"""


def test_tunnel_rule() -> None:
    policy = load_policy_text(TUNNEL)
    c = compile_policy(policy, HostContext(("198.51.100.1",)))
    (entry,) = c.spd
    assert entry.template is not None and entry.template.mode == "tunnel"
    assert (entry.template.tunnel_local, entry.template.tunnel_remote) == (
        "198.51.100.1", "198.51.100.2",
    )  # fmt: skip
    assert str(entry.selector) == "192.168.1.0/24 === 192.168.2.0/24"
    conn = c.daemon["connections"]["to-branch-198.51.100.2"]
    child = next(iter(conn["children"].values()))
    assert child["mode"] == "tunnel" and child["local_ts"] == ["192.168.1.0/24"]
    on_endpoint = compile_policy(policy, HostContext(("198.51.100.2",)))
    assert on_endpoint.spd == () and "tunnel endpoint" in on_endpoint.skipped[0]
    with pytest.raises(ConfigError, match="no IPv4 address"):
        compile_policy(policy, HostContext(("2001:db8::1",)))


def test_ipv6_host_and_ah() -> None:
    body = """\
    name: V6
    filter_lists:
      L: {{filters: [{{source: me, destination: "2001:db8::2"}}]}}
    filter_actions:
      Auth only: {{action: negotiate, methods: [{{ah: sha256}}]}}
    rules:
      R: {{filter_list: L, filter_action: Auth only, authentication: [{{psk: k}}]}}
    """
    c = compile_policy(_policy(body), HostContext(("10.0.0.1", "2001:db8::1")))
    (entry,) = c.spd
    assert entry.template is not None and entry.template.protocol == "ah"
    assert str(entry.selector) == "2001:db8::1/128 === 2001:db8::2/128"
    child = c.daemon["connections"]["r-2001:db8::2"]["children"]["r-2001:db8::2-1"]
    assert child["ah_proposals"] == ["sha256"] and "esp_proposals" not in child


UNSUPPORTED = [
    (
        "    methods:\n      - {{esp: aes256gcm16, kilobytes: 1000, seconds: 600}}",
        "    methods:\n      - {{esp: aes256gcm16, ah: sha256}}",
        "SA bundle",
    ),
    ("      - {{esp: chacha20poly1305}}", "      - {{ah: sha256}}", "mixing ESP and AH"),
    (
        "authentication: [{{psk: db}}]",
        "authentication: [{{psk: db}}, {{psk: db2}}]",
        "one pre-shared key per connection",
    ),
    (
        "    filter_action: Block",
        "    filter_action: Block\n    connection_type: lan",
        "connection type 'lan'",
    ),
    ("name: Mixed", "name: Mixed\nkey_exchange: {{master_key_pfs: true}}", "master-key PFS"),
]


@pytest.mark.parametrize(("old", "new", "words"), UNSUPPORTED)
def test_what_the_daemon_cannot_do_is_an_error(old: str, new: str, words: str) -> None:
    assert old in MIXED
    policy = _policy(MIXED.replace(old, new), db=B)
    with pytest.raises(ConfigError, match=words) as info:
        compile_policy(policy, HostContext((A,)), capabilities=ALL_CAPABILITIES)
    assert info.value.file == "p.yaml" and info.value.line is not None


def test_host_context_validation() -> None:
    with pytest.raises(ConfigError, match="at least one address"):
        HostContext(())
    with pytest.raises(ConfigError, match="not an address"):
        HostContext(("server-a",))
    assert HostContext(A).addresses == (A,)
    with pytest.raises(ConfigError, match="unknown capabilities"):
        compile_policy(example_policy("Web App Encrypt"), HostContext(A),
                       capabilities=frozenset({"telepathy"}))  # fmt: skip


def test_dual_stack_host_icmp_only_on_ipv4() -> None:
    host = HostContext(("10.0.0.5", "2001:db8::5"), certificate="/c", private_key="/k")
    policy = example_policy("Secure Server (Require Security)")
    c = compile_policy(policy, host, capabilities=ALL_CAPABILITIES)
    assert [str(e.selector) for e in c.spd] == [
        "10.0.0.5/32[icmp] === %any[icmp]",
        "10.0.0.5/32 === %any",
        "2001:db8::5/128 === %any",
    ]
    conn = c.daemon["connections"]["all-ip-traffic-any"]
    remote_ts = [child["remote_ts"] for child in conn["children"].values()]
    assert remote_ts == [["0.0.0.0/0"], ["::/0"]]


# ------------------------------------------------------------------ with the real daemon


def test_compiled_configs_bring_up_a_child_sa_between_two_daemons(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Both servers' compiled configs, run by two daemon cores over an in-memory network:
    the first packet (acquire) brings up one Child SA with the filter's selectors."""
    import asyncio

    from daemonfakes import FakeDataplane, FakeNetwork
    from pyipsec.daemon.core import Daemon

    loop = asyncio.new_event_loop()
    net = FakeNetwork(loop)
    daemons = {}
    try:
        for me in (A, B):
            directory = tmp_path / me
            directory.mkdir()
            secrets = str(directory / "secrets.yaml")
            c = compile_policy(
                example_policy("Web App Encrypt"), HostContext((me,), secrets_file=secrets)
            )
            fd = os.open(secrets, os.O_WRONLY | os.O_CREAT, 0o600)
            with os.fdopen(fd, "w") as handle:
                yaml.safe_dump(c.secrets_file({"web-db": "a shared secret for A and B"}), handle)
            (directory / "pyipsec.yaml").write_text(c.daemon_yaml())
            config = load_config(str(directory / "pyipsec.yaml"))
            daemon = Daemon(config, net.port(me), FakeDataplane(), clock=loop.time, loop=loop)
            net.hosts[me] = daemon.datagram
            daemons[me] = daemon
        for daemon in daemons.values():
            daemon.start()
        daemons[A].acquire(A, B)

        async def wait() -> bool:
            for _ in range(500):
                if all(d.dataplane.installed for d in daemons.values()):
                    return True
                await asyncio.sleep(0.01)
            return False

        assert loop.run_until_complete(wait())
        (sa_a,) = daemons[A].dataplane.installed.values()
        (sa_b,) = daemons[B].dataplane.installed.values()
        assert sa_a.inbound_spi == sa_b.outbound_spi and sa_a.mode == "transport"
        assert [str(t) for t in sa_a.local_ts] == [A] and [str(t) for t in sa_a.remote_ts] == [B]
        assert [str(t) for t in sa_b.local_ts] == [B] and [str(t) for t in sa_b.remote_ts] == [A]
    finally:
        for daemon in daemons.values():
            daemon.close()
        loop.close()


PROTECT_ONLY = """\
name: Two databases
filter_lists:
  DB1: {{filters: [{{source: me, destination: 10.77.0.2, protocol: tcp, destination_port: 5432}}]}}
  DB2: {{filters: [{{source: me, destination: 10.77.0.3}}]}}
rules:
  One: {{filter_list: DB1, filter_action: Integrity only, authentication: [{{psk: one}}]}}
  Two: {{filter_list: DB2, filter_action: Integrity and Encryption,
        authentication: [{{psk: two}}]}}
"""


def test_todays_daemon_gets_only_what_it_derives_itself() -> None:
    ok = compile_policy(_policy(PROTECT_ONLY), HostContext((A,)))
    assert ok.requires == frozenset() and len(ok.spd) == 2
    assert set(ok.daemon["connections"]) == {"one-10.77.0.2", "two-10.77.0.3"}
    cases = [
        (MIXED.format(db=B), "BYPASS entry \\('Permit'\\)"),  # permit (one way) ranks 2nd
        (PROTECT_ONLY.format().replace("10.77.0.3}]", "10.77.0.2}]"), "overlap"),
        (PROTECT_ONLY.format().replace("10.77.0.3}]", "10.77.0.3, mirrored: false}]"),
         "one-way \\(out\\)"),
    ]  # fmt: skip
    for text, words in cases:
        policy = load_policy_text(text, file="p.yaml")
        with pytest.raises(ConfigError, match=words) as info:
            compile_policy(policy, HostContext((A,)), capabilities=frozenset())
        assert info.value.file == "p.yaml" and info.value.line is not None
        assert "not supported yet" in str(info.value)
        # the daemon installs the compiled SPD itself now (the 'spd' capability)
        assert compile_policy(policy, HostContext((A,))).requires == frozenset({"spd"})


# ------------------------------------------------------------------ several methods

METHODS = """\
name: Methods
filter_lists:
  DB: {{filters: [{{source: me, destination: 10.77.0.2}}]}}
rules:
  DB:
    filter_list: DB
    filter_action: Require Security (Strict)
    authentication: [{methods}]
default_response: {{enabled: true, authentication: [{methods}]}}
"""


def _methods(methods: str):  # type: ignore[no-untyped-def]
    return load_policy_text(METHODS.format(methods=methods), file="m.yaml")


def test_methods_keep_their_order_first_one_primary() -> None:
    host = HostContext((A,), certificate="/h.crt", private_key="/h.key")
    c = compile_policy(_methods("{certificate: {ca: /ca.crt}}, {psk: db}"), host)
    for name, peer in ((f"db-{B}", B), ("default-response", "%any")):
        conn = c.daemon["connections"][name]
        assert conn["local"] == {"auth": "pubkey", "cert": "/h.crt", "key": "/h.key",
                                 "cacerts": ["/ca.crt"], "id": A}  # fmt: skip
        assert conn["remote"] == (
            {"auth": "pubkey", "cacerts": ["/ca.crt"]} | ({"id": B} if peer == B else {})
        )
        assert conn["alternatives"] == [{"local": {"auth": "psk"}, "remote": {"auth": "psk"}}]
    assert c.psk_refs == {f"db-{B}": "db", "default-response": "db"}
    c = compile_policy(
        _methods("{psk: db}, {certificate: {ca: /a.crt}}, {certificate: {ca: /b.crt}}"), host
    )
    conn = c.daemon["connections"][f"db-{B}"]
    assert conn["local"] == {"auth": "psk", "id": A} and conn["remote"] == {"auth": "psk", "id": B}
    assert [alt["remote"]["cacerts"] for alt in conn["alternatives"]] == [["/a.crt"], ["/b.crt"]]
    single = compile_policy(_methods("{certificate: {ca: /ca.crt}}"), host)
    conn = single.daemon["connections"][f"db-{B}"]
    assert "alternatives" not in conn and "id" not in conn["local"] and not single.psk_refs


def test_certificate_method_without_host_certificate_is_left_out() -> None:
    c = compile_policy(_methods("{certificate: {ca: /ca.crt}}, {psk: db}"), HostContext((A,)))
    conn = c.daemon["connections"][f"db-{B}"]
    assert conn["local"] == {"auth": "psk", "id": A} and "alternatives" not in conn
    assert any("no certificate" in note and "/ca.crt" in note for note in c.notes)
    with pytest.raises(ConfigError, match="certificate and private key") as info:
        compile_policy(_methods("{certificate: {ca: /ca.crt}}"), HostContext((A,)))
    assert info.value.key == "rules.DB.authentication.0"


def test_compiled_methods_load_in_the_daemon(tmp_path: os.PathLike[str]) -> None:
    """Certificate first, PSK second: the daemon's PeerConfig gets both, in order."""
    from cryptography.hazmat.primitives import serialization

    from pki import Pki

    pki = Pki()
    ee = pki.issue("p256", ips=[A])
    pem = serialization.Encoding.PEM
    files = {name: os.path.join(tmp_path, name) for name in ("h.crt", "h.key", "ca.crt")}
    with open(files["h.crt"], "wb") as handle:
        handle.write(ee.cert.public_bytes(pem))
    with open(files["h.key"], "wb") as handle:
        handle.write(ee.key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))  # fmt: skip
    with open(files["ca.crt"], "wb") as handle:
        handle.write(pki.root.cert.public_bytes(pem))
    secrets_path = os.path.join(tmp_path, "secrets.yaml")
    host = HostContext((A,), certificate=files["h.crt"], private_key=files["h.key"],
                       secrets_file=secrets_path)  # fmt: skip
    c = compile_policy(_methods(f"{{certificate: {{ca: {files['ca.crt']}}}}}, {{psk: db}}"), host)
    fd = os.open(secrets_path, os.O_WRONLY | os.O_CREAT, 0o600)
    with os.fdopen(fd, "w") as handle:
        yaml.safe_dump(c.secrets_file({"db": "correct horse battery"}), handle)
    config_path = os.path.join(tmp_path, "pyipsec.yaml")
    with open(config_path, "w") as handle:
        handle.write(c.daemon_yaml())
    for name in (f"db-{B}", "default-response"):
        peer = load_config(config_path).peer(name)
        assert (peer.local_auth.method, peer.remote_auth.method) == ("pubkey", "pubkey")
        ((local, remote),) = peer.auth_alternatives
        assert local.psk == remote.psk == b"correct horse battery"
    assert "correct horse" not in c.daemon_yaml()
