"""``pyipsec pki``: init, enroll, issue, revoke, list, crl through the command line."""

from __future__ import annotations

import json
import os
import re
import stat

import pytest
from click.testing import CliRunner

from pyipsec.cli.main import cli
from pyipsec.errors import ConfigError


def run(*args: str, ok: bool = True):
    result = CliRunner().invoke(cli, list(args), catch_exceptions=True)
    if ok and result.exit_code != 0:
        raise AssertionError(
            f"{args}: exit {result.exit_code}\n{result.output}\n{result.exception!r}"
        )
    return result


@pytest.fixture()
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("PYIPSEC_CA_DIR", str(tmp_path / "ca"))
    return tmp_path


def _enroll(tmp, name, *extra):
    key, csr, crt = tmp / f"{name}.key", tmp / f"{name}.csr", tmp / f"{name}.crt"
    out = run("pki", "enroll", "--name", name, "--key-out", str(key), "--csr-out", str(csr), *extra)
    assert "0600" in out.output
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    assert "refusing to overwrite" in str(
        run(
            "pki", "enroll", "--name", name, "--key-out", str(key), "--csr-out", str(csr), ok=False
        ).exception
    )
    run("pki", "issue", "--csr", str(csr), "--out", str(crt), "--days", "30")
    return crt


def test_pki_commands(env):
    out = run("pki", "init", "--name", "Example CA").output
    assert "created" in out and stat.S_IMODE(os.stat(env / "ca" / "ca.key").st_mode) == 0o600
    assert run("pki", "init", "--name", "again", ok=False).exit_code != 0
    a = _enroll(env, "hosta", "--ip", "10.77.0.1")
    _enroll(env, "hostb", "--dns", "hostb.example")
    listing = json.loads(run("pki", "list", "--json").output)
    assert [c["subject"] for c in listing] == ["hosta", "hostb"]
    assert listing[0]["sans"] == ["ip:10.77.0.1"] and listing[0]["status"] == "valid"
    serial = listing[0]["serial"]
    out = run("pki", "revoke", serial, "--reason", "key-compromise").output
    assert "revoked" in out and "hosta" in out
    table = run("pki", "list").output
    assert re.search(rf"{serial}\s+hosta\s+ip:10.77.0.1\s+\S+ \S+\s+revoked", table)
    bad = run("pki", "revoke", "zz", ok=False)
    assert isinstance(bad.exception, ConfigError)
    assert "CRL with 1 entries" in run("pki", "crl").output
    # issuing to stdout
    csr = env / "c.csr"
    run("pki", "enroll", "--name", "hostc", "--key-out", str(env / "c.key"), "--csr-out", str(csr))
    assert "BEGIN CERTIFICATE" in run("pki", "issue", "--csr", str(csr)).output
    assert "PRIVATE" not in table + out
    assert a.exists()
