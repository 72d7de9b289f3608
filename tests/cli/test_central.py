"""The central-management commands end to end: pki, policy store, groups, server, update."""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from centralkit import Identity, StaticTlsServer, policy_text
from pyipsec.cli.main import cli
from pyipsec.errors import ConfigError
from pyipsec.policy.client import BadSignature, ServerUnreachable


def run(*args: str, ok: bool = True, input: str | None = None):
    result = CliRunner().invoke(cli, list(args), input=input, catch_exceptions=True)
    if ok and result.exit_code != 0:
        raise AssertionError(
            f"{args}: exit {result.exit_code}\n{result.output}\n{result.exception!r}"
        )
    return result


@pytest.fixture()
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("PYIPSEC_STORE", str(tmp_path / "store.db"))
    monkeypatch.setenv("PYIPSEC_CA_DIR", str(tmp_path / "ca"))
    monkeypatch.setenv("PYIPSEC_SOCKET", str(tmp_path / "no-daemon.sock"))  # local updates
    return tmp_path


def _enroll(tmp: Path, name: str, *extra: str) -> Identity:
    key, csr, crt = tmp / f"{name}.key", tmp / f"{name}.csr", tmp / f"{name}.crt"
    out = run("pki", "enroll", "--name", name, "--key-out", str(key), "--csr-out", str(csr), *extra)
    assert "0600" in out.output
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    run("pki", "issue", "--csr", str(csr), "--out", str(crt), "--days", "30")
    return Identity(name, crt, key)


def test_policy_store_and_group_commands(env):
    f1, f2 = env / "p1.yaml", env / "p2.yaml"
    f1.write_text(policy_text("one"))
    f2.write_text(policy_text("two"))
    assert (
        "version 1 created" in run("policy", "create", "web", "-f", str(f1), "-m", "first").output
    )
    assert "version 2 stored (was 1)" in run("policy", "edit", "web", "-f", str(f2)).output
    assert "unchanged" in run("policy", "edit", "web", "-f", str(f2)).output
    bad = env / "bad.yaml"
    bad.write_text("name: x\nrules: [\n")
    res = run("policy", "edit", "web", "-f", str(bad), ok=False)
    assert isinstance(res.exception, ConfigError) and res.exception.line is not None
    shown = run("policy", "show", "web").output
    assert "version 2" in shown and "description: two" in shown
    assert "description: one" in run("policy", "show", "web", "--version", "1").output
    hist = run("policy", "show", "web", "--history").output
    assert re.search(r"^1\s+.*first$", hist, re.M) and re.search(r"^2\s", hist, re.M)
    exported = env / "out.yaml"
    run("policy", "export", "web", "-o", str(exported))
    assert exported.read_text() == policy_text("two")
    assert run("policy", "export", "web", "--version", "1").output == policy_text("one")
    # import takes the name from the document
    assert "'Web App Encrypt' version 1 stored" in run("policy", "import", str(f1)).output
    assert "unchanged" in run("policy", "import", str(f1)).output

    run("group", "create", "webdb", "-d", "web and database")
    out = run("group", "add-host", "webdb", "hosta", "hostb").output
    assert "'hosta' added" in out and "'hostb' added" in out
    assert "already in" in run("group", "add-host", "webdb", "hosta").output
    assert "assigned to 'webdb'" in run("policy", "assign", "web", "webdb").output
    groups = run("group", "list").output
    assert re.search(r"webdb\s+web\s+hosta, hostb\s+web and database", groups)
    listing = run("policy", "list").output
    assert re.search(r"^web\s+2\s+\S+ \S+\s+webdb$", listing, re.M)
    assert isinstance(run("policy", "delete", "web", ok=False).exception, ConfigError)
    run("group", "remove-host", "webdb", "hostb")
    run("policy", "unassign", "web", "webdb")
    assert "deleted" in run("policy", "delete", "web").output
    run("group", "delete", "webdb")
    assert "webdb" not in run("group", "list").output


def _start_server(env: Path, srv: Identity, ca: Path, crl: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pyipsec",
            "server",
            "--listen",
            "127.0.0.1",
            "--port",
            "0",
            "--cert",
            str(srv.cert),
            "--key",
            str(srv.key),
            "--ca",
            str(ca),
            "--crl",
            str(crl),
        ],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ},
    )
    line = proc.stderr.readline()
    match = re.search(r"https://127.0.0.1:(\d+)", line)
    assert match, line
    return proc, f"https://127.0.0.1:{match.group(1)}"


def test_server_and_policy_update(env):
    run("pki", "init", "--name", "Example CA")
    ca, crl = env / "ca" / "ca.crt", env / "ca" / "crl.pem"
    srv = _enroll(env, "policy-server", "--ip", "127.0.0.1")
    hosta = _enroll(env, "hosta")
    f = env / "p.yaml"
    f.write_text(policy_text("one"))
    run("policy", "create", "web", "-f", str(f))
    run("group", "create", "webdb")
    run("group", "add-host", "webdb", "hosta", "hostb")
    run("policy", "assign", "web", "webdb")
    proc, url = _start_server(env, srv, ca, crl)
    out_path = env / "host" / "policy.yaml"
    client = [
        "--server",
        url,
        "--ca",
        str(ca),
        "--cert",
        str(hosta.cert),
        "--key",
        str(hosta.key),
        "--cache",
        str(env / "host" / "cache.json"),
        "--out",
        str(out_path),
    ]
    try:
        first = run("policy", "update", *client).output
        assert "version 1 (was none)" in first and "+description: one" in first
        assert out_path.read_text() == policy_text("one")
        assert stat.S_IMODE(os.stat(env / "host" / "cache.json").st_mode) == 0o600
        assert "is current" in run("policy", "update", *client).output
        assert "rewritten" in run("policy", "update", "--force", *client).output

        f.write_text(policy_text("two"))
        run("policy", "edit", "web", "-f", str(f))
        second = run("policy", "update", *client).output
        assert "version 2 (was 'web' version 1)" in second
        assert "-description: one" in second and "+description: two" in second
        assert out_path.read_text() == policy_text("two")

        hosts = run("server", "hosts").output
        assert re.search(r"^hosta\s+web v2\s+web v2\s+stored\s", hosts, re.M)
        assert re.search(r"^hostb\s+web v2\s+-\s+never", hosts, re.M)
        assert run("server", "--hosts").output == hosts
        log = run("server", "hosts", "--host", "hosta").output
        assert len(re.findall(r"stored", log)) == 3  # first, forced, second

        # a tampering server: refused, the local policy stays
        tampered = json.loads((env / "host" / "cache.json").read_text())
        tampered["text"] = policy_text("evil")
        fake = StaticTlsServer(srv, ca, json.dumps(tampered).encode())
        try:
            bad = run("policy", "update", *[fake.url if c == url else c for c in client], ok=False)
        finally:
            fake.close()
        assert isinstance(bad.exception, BadSignature)
        assert "keeping current policy 'web' version 2" in str(bad.exception)
        assert out_path.read_text() == policy_text("two")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
    # server gone: unreachable, the local policy stays
    res = run("policy", "update", *client, ok=False)
    assert isinstance(res.exception, ServerUnreachable)
    assert "keeping current policy 'web' version 2" in str(res.exception)
    assert out_path.read_text() == policy_text("two")


def test_policy_update_asks_the_running_daemon(env, tmp_path):
    """With a daemon on the control socket the CLI asks it to pull and apply (the daemon's
    side is tested in tests/daemon/test_policy.py); its refusals fail the command."""
    from controlthread import ServerThread
    from pyipsec.daemon.policy import PolicyApplyError

    calls = []
    outcome = {"error": None}

    async def policy_update(args):
        calls.append(args)
        if outcome["error"] is not None:
            raise outcome["error"]
        return {"applied": True, "changed": True, "policy": "'web' version 2",
                "message": "policy 'web' version 2 applied from https://x:8443",
                "plan": "plan for 10.0.0.1: policy 'web' -> policy 'web'\n  + spd  x"}  # fmt: skip

    sock = str(tmp_path / "control.sock")
    with ServerThread(sock, {"policy-update": policy_update}):
        out = run("policy", "update", "--force", "--socket", sock).output
        assert "version 2 applied" in out and "+ spd" in out
        assert calls == [{"force": True}]
        outcome["error"] = PolicyApplyError("policy update refused: bad signature", "'web' v1")
        bad = run("policy", "update", "--socket", sock, ok=False)
        assert bad.exit_code == 1 and calls[-1] == {"force": False}
        assert "bad signature; keeping current policy 'web' v1" in bad.output
    # no daemon: the local update, which needs --server, says so
    res = run("policy", "update", "--socket", sock, ok=False)
    assert "not running" in res.output and "verifying and storing the policy locally" in res.output
    assert "--server is needed" in res.output
