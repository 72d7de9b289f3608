"""The daemon configuration file: happy paths and every class of error, located."""

from __future__ import annotations

import os
import textwrap

import pytest

from pyipsec.daemon.config import (
    load_config,
    load_config_text,
    parse_duration,
    parse_size,
)
from pyipsec.errors import ConfigError

BASE = """\
secrets: secrets.yaml
connections:
  web-db:
    local_addrs: [10.1.0.1]
    remote_addrs: [10.1.0.2]
    proposals: [aes128gcm16-prfsha256-x25519]
    local: {auth: psk, id: 10.1.0.1}
    remote: {auth: psk, id: 10.1.0.2}
    rekey_time: 4h
    dpd_delay: 30s
    children:
      db:
        mode: transport
        esp_proposals: [aes128gcm16-esn]
        rekey_time: 1h
        rekey_bytes: 500M
        start_action: trap
"""


@pytest.fixture
def confdir(tmp_path):
    secrets = tmp_path / "secrets.yaml"
    secrets.write_text('psk:\n  web-db: "a very secret key"\n')
    os.chmod(secrets, 0o600)
    return tmp_path


def write(confdir, text: str) -> str:
    path = confdir / "pyipsec.yaml"
    path.write_text(textwrap.dedent(text))
    return str(path)


def test_durations_and_sizes() -> None:
    assert parse_duration("90") == 90
    assert parse_duration("1h30m") == 5400
    assert parse_duration("2d") == 172800
    assert parse_size("500M") == 500 << 20
    assert parse_size("1000") == 1000
    with pytest.raises(ValueError):
        parse_duration("soon")
    with pytest.raises(ValueError):
        parse_size("lots")


def test_valid_config_builds_endpoint(confdir) -> None:
    config = load_config(write(confdir, BASE))
    peer = config.peer("web-db")
    assert peer.remote_addrs == ("10.1.0.2",)
    assert peer.local_auth.psk == b"a very secret key"
    assert peer.rekey_time == 14400 and peer.dpd_delay == 30
    child = peer.children[0]
    assert (child.name, child.mode, child.rekey_time) == ("db", "transport", 3600)
    assert child.rekey_bytes == 500 << 20
    assert config.connections["web-db"].start_actions == {"db": "trap"}
    assert "very secret" not in repr(config)


@pytest.mark.parametrize(
    ("replace", "with_", "line", "key", "message"),
    [
        (
            "mode: transport",
            "mode: tunel",
            13,
            "connections.web-db.children.db.mode",
            "must be one of transport, tunnel",
        ),
        (
            "rekey_time: 1h",
            "rekey_time: soon",
            15,
            "connections.web-db.children.db.rekey_time",
            "not a duration",
        ),
        ("dpd_delay: 30s", "dpd_delay_: 30s", 10, "connections.web-db.dpd_delay_", "unknown key"),
        (
            "[aes128gcm16-prfsha256-x25519]",
            "[aes999-prfsha256-x25519]",
            6,
            "connections.web-db.proposals",
            "",
        ),
        (
            "remote: {auth: psk, id: 10.1.0.2}",
            "remote: {auth: magic, id: 10.1.0.2}",
            8,
            "connections.web-db.remote.auth",
            "must be one of psk, pubkey",
        ),
    ],
)
def test_errors_name_file_line_and_key(confdir, replace, with_, line, key, message) -> None:
    path = write(confdir, BASE.replace(replace, with_))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    err = info.value
    assert err.file == path
    assert err.key == key
    assert err.line == line
    assert message in str(err)


def test_secrets_file_must_be_private(confdir) -> None:
    os.chmod(confdir / "secrets.yaml", 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_config(write(confdir, BASE))


def test_missing_psk_is_an_error_and_never_printed(confdir) -> None:
    (confdir / "secrets.yaml").write_text('psk:\n  other: "a very secret key"\n')
    with pytest.raises(ConfigError, match="no pre-shared key for 'web-db'") as info:
        load_config(write(confdir, BASE))
    assert "very secret" not in str(info.value)


def test_short_psk_rejected(confdir) -> None:
    (confdir / "secrets.yaml").write_text('psk:\n  web-db: "short"\n')
    with pytest.raises(ConfigError, match="too short") as info:
        load_config(write(confdir, BASE))
    assert 'short"' not in str(info.value) and info.value.line == 2


def test_no_connections(confdir) -> None:
    with pytest.raises(ConfigError, match="at least one connection"):
        load_config_text("control_socket: /tmp/x.sock\n")


def test_bad_identity_located(confdir) -> None:
    path = write(confdir, BASE.replace("id: 10.1.0.2}", "id: 'C=, =x'}"))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == "connections.web-db.remote.id"


SPD = """\
spd:
  - {name: no-smtp, local: 10.1.0.1, remote: any, protocol: tcp, remote_ports: 25,
     action: discard, priority: 5}
  - {name: db, local: 10.1.0.1, remote: 10.1.0.2, action: protect, child: web-db/db,
     priority: 10}
"""


def test_spd_section_keeps_order_priorities_and_actions(confdir) -> None:
    config = load_config(write(confdir, BASE + SPD))
    names = [(p.name, p.entry.action.value, p.entry.priority) for p in config.spd]
    assert names == [("no-smtp", "discard", 5), ("db", "protect", 10)]
    assert config.spd[1].entry.template.child == "web-db/db"


@pytest.mark.parametrize(
    ("entry", "line", "key", "message"),
    [
        ("{name: x, action: protect, child: web-db/nope}", 19, "spd.0.child", "not a <conn"),
        ("{name: x, action: protect, child: db}", 19, "spd.0.child", "not a <conn"),
        ("{name: x, action: allow-all}", 19, "spd.0.action", "must be one of"),
        ("{name: x, action: discard, remote: 10.1.0.300}", 19, "spd.0.remote", "not an address"),
        ("{name: x, action: bypass, child: web-db/db}", 19, "spd.0.child", "only protect"),
    ],
)
def test_spd_errors_are_located(confdir, entry, line, key, message) -> None:
    path = write(confdir, BASE + f"spd:\n  - {entry}\n")
    with pytest.raises(ConfigError, match=message) as info:
        load_config(path)
    assert (info.value.file, info.value.line, info.value.key) == (path, line, key)


def test_duplicate_spd_names_refused(confdir) -> None:
    text = BASE + "spd:\n  - {name: x, action: bypass}\n  - {name: x, action: discard}\n"
    with pytest.raises(ConfigError, match="duplicate SPD entry name 'x'") as info:
        load_config(write(confdir, text))
    assert info.value.line == 20


def test_policy_section_server_and_file(confdir) -> None:
    text = """\
    control_socket: /tmp/x.sock
    policy:
      server: {url: "https://10.9.0.1:8443", ca: ca.crt, cert: host.crt, key: host.key,
               poll_interval: 5m}
      addresses: [10.1.0.1]
      secrets: store.yaml
    """
    config = load_config(write(confdir, text))
    assert config.connections == {} and config.spd == ()
    pol = config.policy
    assert pol is not None and pol.file is None and pol.addresses == ("10.1.0.1",)
    assert pol.server.url == "https://10.9.0.1:8443" and pol.server.poll_interval == 300
    assert pol.server.ca == str(confdir / "ca.crt") and pol.cert == str(confdir / "host.crt")
    assert pol.secrets == str(confdir / "store.yaml") and pol.source == pol.server.url
    config = load_config(write(confdir, "policy: {file: /etc/p.yaml}\n"))
    assert config.policy.file == "/etc/p.yaml" and config.policy.server is None


@pytest.mark.parametrize(
    ("policy", "key", "message"),
    [
        ("{}", "policy", "exactly one of"),
        ("{file: a, server: {url: 'https://x'}}", "policy", "exactly one of"),
        ("{server: {url: 'http://x', ca: a, cert: b, key: c}}", "policy.server.url", "https"),
        ("{file: a, addresses: [me]}", "policy.addresses", "not an IP address"),
        ("{file: a, colour: red}", "policy.colour", "unknown key"),
        (
            "{server: {url: 'https://x', ca: a, cert: b, key: c, poll_interval: 0}}",
            "policy.server.poll_interval",
            "at least 1 second",
        ),
    ],
)
def test_policy_section_errors(confdir, policy, key, message) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        load_config(write(confdir, f"policy: {policy}\n"))
    assert info.value.key == key and info.value.line == 1


def test_compiled_part_merges_and_refuses_name_clashes(confdir) -> None:
    from pyipsec.daemon.config import CompiledPart
    from pyipsec.util.configfile import load_yaml_text

    conns = load_yaml_text(
        "connections:\n"
        "  pol-1:\n"
        "    local_addrs: [10.1.0.1]\n"
        "    remote_addrs: [10.1.0.3]\n"
        "    local: {auth: psk, id: 10.1.0.1}\n"
        "    remote: {auth: psk, id: 10.1.0.3}\n"
        "    children: {pol-1-1: {start_action: trap}}\n",
        file="<policy P v2>",
    ).section("connections")
    spd = ({"name": "p.1.1", "local": "10.1.0.1", "remote": "10.1.0.3", "action": "protect",
            "child": "pol-1/pol-1-1", "priority": 0},)  # fmt: skip
    part = CompiledPart(conns, {"pol-1": b"policy secret 123"}, spd, "policy 'P' v2")
    config = load_config(write(confdir, BASE), compiled=part)
    assert set(config.connections) == {"web-db", "pol-1"}
    assert config.policy_connections == frozenset({"pol-1"})
    assert config.peer("pol-1").local_auth.psk == b"policy secret 123"
    assert [p.name for p in config.spd] == ["p.1.1"]
    assert "policy secret" not in repr(part) + repr(config)
    clash = load_yaml_text(
        "connections:\n  web-db: {remote_addrs: [10.1.0.3]}\n", file="<p>"
    ).section("connections")
    with pytest.raises(ConfigError, match="also defined by policy 'P' v2"):
        load_config(write(confdir, BASE), compiled=CompiledPart(clash, {}, (), "policy 'P' v2"))
    bad = (dict(spd[0], child="pol-1/other"),)
    with pytest.raises(ConfigError, match="policy 'P' v2: spd.0") as info:
        load_config(
            write(confdir, BASE), compiled=CompiledPart(conns, part.secrets, bad, "policy 'P' v2")
        )
    assert "not a <connection>/<child>" in str(info.value)


def test_fallback_needs_a_trap_child(tmp_path) -> None:
    path = tmp_path / "bad.yaml"
    secrets = tmp_path / "secrets.yaml"
    secrets.write_text('psk:\n  any: "shared secret key"\n')
    os.chmod(secrets, 0o600)
    path.write_text(
        "secrets: secrets.yaml\nconnections:\n  any:\n    remote_addrs: ['%any']\n"
        "    children:\n      all: {start_action: none, unsecured_fallback: 3s}\n"
    )
    with pytest.raises(ConfigError, match="start_action: trap") as info:
        load_config(str(path))
    assert info.value.line == 6 and info.value.key.endswith("all.unsecured_fallback")
    path.write_text(path.read_text().replace("start_action: none, unsecured_fallback: 3s",
                                             "unsecured_fallback: 10m"))  # fmt: skip
    with pytest.raises(ConfigError, match="between 0 and 5 minutes"):
        load_config(str(path))


@pytest.fixture
def pem(confdir):
    """host.crt/host.key (end entity + intermediate) and ca.crt in the config directory;
    ``{d}`` in a configuration text names that directory (see :func:`write_d`)."""
    from cryptography.hazmat.primitives import serialization

    from pki import Pki

    pki = Pki()
    ee = pki.issue("p256", dns=["a.example"])
    der = serialization.Encoding.PEM
    (confdir / "host.crt").write_bytes(
        ee.cert.public_bytes(der) + pki.intermediate.cert.public_bytes(der)
    )
    key = ee.key.private_bytes(der, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    (confdir / "host.key").write_bytes(key)
    (confdir / "ca.crt").write_bytes(pki.root.cert.public_bytes(der))
    return pki


def write_d(confdir, text: str) -> str:
    return write(confdir, text.replace("{d}", str(confdir)))


CERT_PAIR = """\
      - local: {auth: pubkey, cert: {d}/host.crt, key: {d}/host.key}
        remote: {auth: pubkey, cacerts: [{d}/ca.crt]}
"""


def test_alternatives_after_the_primary_method(confdir, pem) -> None:
    text = BASE.replace(
        "    rekey_time: 4h\n", "    rekey_time: 4h\n    alternatives:\n" + CERT_PAIR
    )
    peer = load_config(write_d(confdir, text)).peer("web-db")
    assert (peer.local_auth.method, peer.remote_auth.method) == ("psk", "psk")
    ((local, remote),) = peer.auth_alternatives
    assert (local.method, remote.method) == ("pubkey", "pubkey")
    assert len(local.cert_chain) == 2 and remote.trusted_cas[0] == pem.root.cert
    assert peer.local_id == "10.1.0.1" and peer.remote_id == "10.1.0.2"
    # certificate first, the connection's PSK second
    swapped = (
        BASE.replace("local: {auth: psk, id: 10.1.0.1}",
                     "local: {auth: pubkey, cert: {d}/host.crt, key: {d}/host.key, id: 10.1.0.1}")
        .replace("remote: {auth: psk, id: 10.1.0.2}", "remote: {auth: pubkey, cacerts: {d}/ca.crt, "
                 "id: 10.1.0.2}")
        .replace("    rekey_time: 4h\n", "    rekey_time: 4h\n    alternatives:\n"
                 "      - {local: {auth: psk}, remote: {auth: psk}}\n")
    )  # fmt: skip
    peer = load_config(write_d(confdir, swapped)).peer("web-db")
    assert peer.local_auth.method == "pubkey"
    ((local, remote),) = peer.auth_alternatives
    assert local.psk == remote.psk == b"a very secret key"
    assert "very secret" not in repr(peer)
    assert load_config(write(confdir, BASE)).peer("web-db").auth_alternatives == ()


@pytest.mark.parametrize(
    ("alternatives", "line", "key", "message"),
    [
        ("      - {local: {auth: psk}, remote: {auth: psk}}\n", 11,
         "connections.web-db.alternatives.0", "one pre-shared key"),
        (CERT_PAIR + "      - {local: {auth: psk}, remote: {auth: pubkey, cacerts: {d}/ca.crt}}\n",
         13, "connections.web-db.alternatives.1", "one pre-shared key"),
        ("      - local: {auth: pubkey, cert: {d}/host.crt, key: {d}/host.key, id: a.example}\n"
         "        remote: {auth: pubkey, cacerts: [{d}/ca.crt]}\n", 11,
         "connections.web-db.alternatives.0.local.id", "unknown key"),
        ("      - {local: {auth: pubkey, cert: {d}/host.crt, key: {d}/host.key}}\n", 11,
         "connections.web-db.alternatives.0.remote", "is required"),
        ("      - local: {auth: pubkey, key: {d}/host.key}\n"
         "        remote: {auth: pubkey, cacerts: [{d}/ca.crt]}\n", 11,
         "connections.web-db.alternatives.0.local.auth", "needs 'key' and 'cert'"),
        ("      - local: {auth: pubkey, cert: {d}/host.crt, key: {d}/host.key}\n"
         "        remote: {auth: pubkey}\n", 12,
         "connections.web-db.alternatives.0.remote.auth", "needs 'cacerts'"),
        ("      - {local: {auth: kerberos}, remote: {auth: psk}}\n", 11,
         "connections.web-db.alternatives.0.local.auth", "must be one of psk, pubkey"),
        ("      - [psk]\n", 11, "connections.web-db.alternatives.0", "must be a mapping"),
        ("      - {local: {auth: psk}, remote: {auth: psk}, when: now}\n", 11,
         "connections.web-db.alternatives.0.when", "unknown key"),
    ],
)  # fmt: skip
def test_alternatives_errors_are_located(confdir, pem, alternatives, line, key, message) -> None:
    text = BASE.replace(
        "    rekey_time: 4h\n", "    rekey_time: 4h\n    alternatives:\n" + alternatives
    )
    path = write_d(confdir, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    err = info.value
    assert (err.file, err.key, err.line) == (path, key, line), str(err)
    assert message in str(err)


def test_psk_alternative_needs_the_connections_secret(confdir, pem) -> None:
    text = (
        BASE.replace("local: {auth: psk, id: 10.1.0.1}",
                     "local: {auth: pubkey, cert: {d}/host.crt, key: {d}/host.key}")
        .replace("remote: {auth: psk, id: 10.1.0.2}", "remote: {auth: pubkey, cacerts: {d}/ca.crt}")
        .replace("    rekey_time: 4h\n", "    rekey_time: 4h\n    alternatives:\n"
                 "      - {local: {auth: psk}, remote: {auth: psk}}\n")
        .replace("secrets: secrets.yaml\n", "")
    )  # fmt: skip
    with pytest.raises(ConfigError) as info:
        load_config(write_d(confdir, text))
    assert info.value.key == "connections.web-db.alternatives.0.local.auth"
    assert "no pre-shared key for 'web-db'" in str(info.value)
