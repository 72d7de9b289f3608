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
