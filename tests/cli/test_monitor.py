"""The monitor commands against a control server on a real socket."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from click.testing import CliRunner

from controlthread import ServerThread
from pyipsec.cli.main import cli
from pyipsec.control.protocol import ControlError

STATUS = {
    "ike_sas": [
        {
            "name": "web-db",
            "state": "ESTABLISHED",
            "local_addr": "10.0.0.1",
            "remote_addr": "10.0.0.2",
            "auth": "psk",
            "encryption": "AES_GCM_16-128",
            "prf": "PRF_HMAC_SHA2_256",
            "ke": "CURVE_25519",
        }
    ],
    "child_sas": [
        {
            "name": "web-db",
            "spi_in": "c0ffee01",
            "spi_out": "c0ffee02",
            "mode": "transport",
            "protocol": "esp",
            "algorithm": "aes128gcm16",
            "bytes_in": 10,
            "bytes_out": 20,
        }
    ],
    "recent_failures": [
        {"when": "12:00:00", "peer": "10.0.0.3", "reason": "AUTHENTICATION_FAILED"}
    ],
    "fallbacks": [{"connection": "all-ip", "child": "all-ip-1", "remote": "10.0.0.9", "for": 75}],
}


@pytest.fixture
def daemon(tmp_path) -> Iterator[tuple[str, list[tuple[str, dict[str, Any]]]]]:
    calls: list[tuple[str, dict[str, Any]]] = []

    def handler(name: str, result: Any):
        async def handle(args: dict[str, Any]) -> Any:
            calls.append((name, args))
            if args.get("name") == "missing":
                raise ControlError("no connection named 'missing'")
            return result

        return handle

    handlers = {
        "status": handler("status", STATUS),
        "statistics": handler("statistics", {"bad_spi_packets": 2, "active_child_sas": 1}),
        "up": handler("up", {"message": "web-db established"}),
        "down": handler("down", {"message": "web-db deleted"}),
        "rekey": handler("rekey", {"message": "web-db rekeyed"}),
        "reload": handler("reload", {"message": "configuration reloaded"}),
    }
    path = str(tmp_path / "control.sock")
    with ServerThread(path, handlers):
        yield path, calls


def run(path: str, *args: str) -> Any:
    return CliRunner().invoke(cli, [*args, "--socket", path], catch_exceptions=False)


def test_status_tables_and_json_agree(daemon) -> None:
    path, _ = daemon
    result = run(path, "status")
    assert result.exit_code == 0
    assert "Main Mode (IKE SAs): 1" in result.output
    assert "Quick Mode (Child SAs): 1" in result.output
    assert "c0ffee01" in result.output and "AUTHENTICATION_FAILED" in result.output
    assert "In clear after unsecured fallback (no IPsec answer): 1" in result.output
    assert "10.0.0.9 (all-ip/all-ip-1) for 75s" in result.output
    as_json = json.loads(run(path, "status", "--json").output)
    assert as_json == STATUS


def test_stats(daemon) -> None:
    path, _ = daemon
    result = run(path, "stats")
    assert "Bad SPI packets" in result.output and "2" in result.output
    assert json.loads(run(path, "stats", "--json").output)["bad_spi_packets"] == 2


@pytest.mark.parametrize("command", ["up", "down", "rekey"])
def test_sa_actions_send_the_name(daemon, command: str) -> None:
    path, calls = daemon
    result = run(path, command, "web-db")
    assert result.exit_code == 0
    assert calls[-1] == (command, {"name": "web-db"})


def test_reload(daemon) -> None:
    path, calls = daemon
    assert "reloaded" in run(path, "reload").output
    assert calls[-1][0] == "reload"


def test_errors_are_one_line_not_a_traceback(daemon, capsys) -> None:
    import sys

    from pyipsec.cli import main as main_module

    path, _ = daemon
    argv = sys.argv
    sys.argv = ["pyipsec", "up", "missing", "--socket", path]
    try:
        with pytest.raises(SystemExit) as info:
            main_module.main()
    finally:
        sys.argv = argv
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert err.strip() == "pyipsec: error: no connection named 'missing'"


def test_daemon_not_running_is_a_clear_error(tmp_path, capsys) -> None:
    import sys

    from pyipsec.cli import main as main_module

    argv = sys.argv
    sys.argv = ["pyipsec", "status", "--socket", str(tmp_path / "nothing.sock")]
    try:
        with pytest.raises(SystemExit):
            main_module.main()
    finally:
        sys.argv = argv
    assert "the daemon is not running" in capsys.readouterr().err


def test_status_shows_the_applied_policy(tmp_path) -> None:
    policy = {
        "name": "Web App Encrypt",
        "version": 2,
        "source": "https://10.0.0.9:8443",
        "applied_at": 1780000000.0,
        "last_error": "policy refused: bad signature",
    }

    async def status(args: dict[str, Any]) -> Any:
        return {**STATUS, "policy": policy}

    path = str(tmp_path / "control.sock")
    with ServerThread(path, {"status": status}):
        out = run(path, "status").output
        assert "Policy: 'Web App Encrypt' version 2 from https://10.0.0.9:8443" in out
        assert "last policy error: policy refused: bad signature" in out
        policy.update(name=None, version=None)
        assert "Policy: none applied (source https://10.0.0.9:8443)" in run(path, "status").output
