"""``pyipsec policy check|explain|plan|compile|show-builtin`` through the real command."""

from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner

from pyipsec.cli import policy as policy_cli
from pyipsec.cli.main import cli

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "policies")
WEB = os.path.join(EXAMPLES, "web-app-encrypt.yaml")
SECURE = os.path.join(EXAMPLES, "secure-server-require-security.yaml")
A, B = "10.77.0.1", "10.77.0.2"


def _run(*args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(cli, ["policy", *args])


def test_registered_with_the_store_commands() -> None:
    result = _run("--help")
    assert result.exit_code == 0
    for name in ("check", "explain", "plan", "compile", "show-builtin"):
        assert name in result.output


def test_check() -> None:
    result = _run("check", WEB, "--me", A)
    assert result.exit_code == 0, result.output
    assert "OK: policy 'Web App Encrypt', 1 rule(s)" in result.output
    assert "1 SPD entries, 1 connection(s)" in result.output
    third = _run("check", WEB, "--me", "10.77.0.3")
    assert "not applicable: Web - DB" in third.output
    secure = _run("check", SECURE, "--me", A)
    assert secure.exit_code == 0, secure.output
    assert "OK: policy 'Secure Server (Require Security)'" in secure.output


def test_check_bad_file_names_line_and_key(tmp_path: os.PathLike[str]) -> None:
    path = os.path.join(tmp_path, "bad.yaml")
    with open(path, "w") as handle:
        handle.write("name: Bad\nrules:\n  R:\n    filter_list: Nope\n    filter_action: Block\n")
    result = _run("check", path)
    assert result.exit_code != 0
    assert f"{path}:4: rules.R.filter_list: no filter list named 'Nope'" in str(result.exception)


def test_explain_text_and_json() -> None:
    args = ["explain", WEB, "--me", B, "--src", A, "--dst", B, "--proto", "tcp",
            "--dport", "5432"]  # fmt: skip
    result = _run(*args)
    assert result.exit_code == 0, result.output
    assert "rule:    'Web - DB'" in result.output and "protected with ESP" in result.output
    data = json.loads(_run(*args, "--json").output)
    assert data["action"] == "protect" and data["direction"] == "in"
    assert data["connection"] == f"web-db-{A}"
    other = json.loads(
        _run("explain", WEB, "--me", A, "--src", A, "--dst", "10.77.0.3", "--json").output
    )
    assert other["action"] == "none"


def test_plan_against_current(tmp_path: os.PathLike[str]) -> None:
    result = _run("plan", WEB, "--me", A)
    assert result.exit_code == 0, result.output
    assert "+ spd" in result.output and "+ firewall   output:" in result.output
    current = os.path.join(tmp_path, "current.yaml")
    with open(WEB) as src, open(current, "w") as dst:
        dst.write(src.read().replace(B, "10.77.0.9"))
    data = json.loads(_run("plan", WEB, "--me", A, "--current", current, "--json").output)
    kinds = {(c["kind"], c["what"]) for c in data["changes"]}
    expected = {(k, w) for k in ("add", "remove") for w in ("spd", "connection", "firewall")}
    assert kinds == expected
    same = _run("plan", WEB, "--me", A, "--current", WEB)
    assert "no changes" in same.output


def test_compile_outputs(tmp_path: os.PathLike[str]) -> None:
    result = _run("compile", WEB, "--me", A, "--secrets", "/etc/s.yaml")
    assert result.exit_code == 0, result.output
    assert "secrets: /etc/s.yaml" in result.output and f"web-db-{B}:" in result.output
    assert "# SPD web-db.1.1:" in result.output
    data = json.loads(_run("compile", WEB, "--me", A, "--json").output)
    assert data["psk_refs"] == {f"web-db-{B}": "web-db"}
    assert data["spd"][0]["action"] == "protect"


def test_show_builtin() -> None:
    listing = _run("show-builtin")
    assert "Web App Encrypt" in listing.output and "Require Security (Strict)" in listing.output
    text = _run("show-builtin", "Web App Encrypt", "--set", "server_a=192.0.2.1").output
    assert "source: 192.0.2.1" in text
    bad = _run("show-builtin", "Web App Encrypt", "--set", "oops")
    assert bad.exit_code != 0 and "KEY=VALUE" in str(bad.exception)


def test_dns_names_go_through_the_system_resolver(
    tmp_path: os.PathLike[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[str] = []

    def fake(name: str) -> list[str]:
        asked.append(name)
        return [B]

    monkeypatch.setattr(policy_cli, "system_resolver", fake)
    path = os.path.join(tmp_path, "dns.yaml")
    with open(WEB) as src, open(path, "w") as dst:
        dst.write(src.read().replace(f"destination: {B}", "destination: db.example.test"))
    result = _run("compile", path, "--me", A, "--json")
    assert result.exit_code == 0, result.output
    assert asked == ["db.example.test"]
    assert f"web-db-{B}" in json.loads(result.output)["daemon"]["connections"]


def test_explain_secure_server_with_any_host() -> None:
    args = ["explain", SECURE, "--me", A, "--cert", "/c.pem", "--key", "/k.pem", "--src", A]
    icmp = _run(*args, "--dst", "192.0.2.1", "--proto", "icmp")
    assert icmp.exit_code == 0, icmp.output
    assert "passes in clear" in icmp.output and "All ICMP Traffic" in icmp.output
    assert "lacks" not in icmp.output  # today's daemon negotiates with any host
    tcp = json.loads(_run(*args, "--dst", "192.0.2.1", "--proto", "tcp", "--json").output)
    assert tcp["daemon_cannot_yet"] == []
    older = _run(*args, "--dst", "192.0.2.1", "--proto", "tcp", "--assume", "spd")
    assert older.exit_code == 0 and "lacks" not in older.output
