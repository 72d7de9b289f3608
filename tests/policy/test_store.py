"""The policy store on SQLite (and once on a throwaway PostgreSQL cluster)."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from centralkit import policy_text
from pyipsec.errors import ConfigError
from pyipsec.policy.store import PolicyStore, StoreError, sha256_text

P1 = policy_text("one")
P2 = policy_text("two")
OTHER = policy_text("other", name="Other")


@pytest.fixture()
def store(tmp_path):
    s = PolicyStore(tmp_path / "db" / "policy.db")
    yield s
    s.close()


def exercise(store: PolicyStore) -> None:
    """The same scenario on every back end."""
    v1 = store.create_policy("web", P1, author="alice", comment="first", now=100.0)
    assert (v1.version, v1.sha256, v1.author, v1.comment) == (1, sha256_text(P1), "alice", "first")
    v2, new = store.edit_policy("web", P2, author="bob", comment="second", now=200.0)
    assert new and v2.version == 2
    same, new = store.edit_policy("web", P2, author="bob", now=300.0)
    assert not new and same.version == 2  # unchanged text: no version
    assert [v.version for v in store.history("web")] == [1, 2]
    assert store.get_policy("web").text == P2
    assert store.get_policy("web", 1).text == P1
    with pytest.raises(ConfigError, match="no version 7"):
        store.get_policy("web", 7)
    with pytest.raises(ConfigError, match="exists"):
        store.create_policy("web", P1, author="a", now=1.0)

    store.create_group("webdb", description="web and db", now=1.0)
    assert store.add_host("webdb", "hosta", now=1.0)
    assert store.add_host("webdb", "hostb", now=1.0)
    assert not store.add_host("webdb", "hosta", now=2.0)
    assert store.policy_for_host("hosta") is None  # no assignment yet
    assert store.assign("web", "webdb", now=5.0)
    assert not store.assign("web", "webdb", now=6.0)
    got = store.policy_for_host("hosta")
    assert got is not None and (got.name, got.version) == ("web", 2)
    assert store.policy_for_host("hostc") is None
    v3, _ = store.edit_policy("web", P1, author="carol", now=400.0)
    assert store.policy_for_host("hostb").version == 3  # always the latest

    # a host in two groups carrying different policies is a conflict, named
    store.create_policy("other", OTHER, author="a", now=1.0)
    store.create_group("ops", now=1.0)
    store.add_host("ops", "hosta", now=1.0)
    store.assign("other", "ops", now=1.0)
    with pytest.raises(ConfigError, match="conflicting"):
        store.policy_for_host("hosta")
    with pytest.raises(ConfigError, match="already has policy"):
        store.assign("web", "ops", now=1.0)
    store.unassign("other", "ops")
    with pytest.raises(ConfigError, match="not assigned"):
        store.unassign("other", "ops")
    assert store.policy_for_host("hosta").name == "web"

    (summary_other, summary_web) = store.list_policies()
    assert summary_web.name == "web" and summary_web.latest_version == 3
    assert summary_web.groups == ("webdb",)
    groups = {g.name: g for g in store.list_groups()}
    assert groups["webdb"].hosts == ("hosta", "hostb") and groups["webdb"].policy == "web"
    assert groups["ops"].policy is None

    with pytest.raises(ConfigError, match="assigned to webdb"):
        store.delete_policy("web")
    store.delete_policy("other")
    with pytest.raises(ConfigError, match="no policy"):
        store.get_policy("other")

    store.record_applied("hosta", "web", 2, v2.sha256, status="applied", now=500.0)
    store.record_applied("hosta", "web", 3, v3.sha256, status="stored", detail="ok", now=600.0)
    store.record_applied("hostb", "web", 3, v3.sha256, status="failed", detail="x", now=550.0)
    with pytest.raises(ConfigError, match="status"):
        store.record_applied("hostb", "web", 3, v3.sha256, status="bogus", now=1.0)
    with pytest.raises(ConfigError, match="sha256"):
        store.record_applied("hostb", "web", 3, "abc", status="applied", now=1.0)
    log = store.applied("hosta")
    assert [(r.version, r.status) for r in log] == [(3, "stored"), (2, "applied")]
    status = dict(store.host_status())
    assert status["hosta"].version == 3 and status["hostb"].status == "failed"

    store.remove_host("webdb", "hostb")
    with pytest.raises(ConfigError, match="not a member"):
        store.remove_host("webdb", "hostb")
    assert store.policy_for_host("hostb") is None
    stats = store.statistics()
    assert (stats.policies, stats.versions, stats.groups, stats.applied_records) == (1, 3, 2, 3)
    assert stats.refused >= 8


def test_sqlite_store(store, tmp_path):
    exercise(store)
    assert stat.S_IMODE(os.stat(tmp_path / "db" / "policy.db").st_mode) == 0o600
    # persistent: reopening sees the same data
    again = PolicyStore(tmp_path / "db" / "policy.db")
    assert again.get_policy("web").version == 3
    again.close()


def test_invalid_text_refused_and_nothing_stored(store):
    with pytest.raises(ConfigError) as info:
        store.create_policy("bad", "name: [unclosed\n", author="a", now=1.0)
    assert info.value.line is not None
    with pytest.raises(ConfigError):
        store.create_policy("bad", "- a list\n", author="a", now=1.0)
    assert store.list_policies() == []
    store.create_policy("good", P1, author="a", now=1.0)
    with pytest.raises(ConfigError):
        store.edit_policy("good", "a: 1\na: 2\n", author="a", now=2.0)  # duplicate key
    assert [v.version for v in store.history("good")] == [1]
    assert store.statistics().refused == 3


def test_policy_semantics_validated_by_the_loader(store):
    """With the policy loader present, a well-formed YAML that is a bad policy is refused."""
    pytest.importorskip("pyipsec.policy.loader")
    store.create_policy("good", P1, author="a", now=1.0)
    broken = P1.replace("Web - DB traffic\n    filter_action", "Nope\n    filter_action")
    with pytest.raises(ConfigError, match="rules"):
        store.edit_policy("good", broken, author="a", now=2.0)
    with pytest.raises(ConfigError, match="no rules"):
        store.create_policy("empty", "name: empty\n", author="a", now=2.0)
    assert [v.version for v in store.history("good")] == [1]
    assert [p.name for p in store.list_policies()] == ["good"]


def test_bad_names_refused(store):
    for bad in ("", " ", "x" * 201, "a\nb"):
        with pytest.raises(ConfigError):
            store.create_group(bad, now=1.0)
    with pytest.raises(ConfigError, match="no group"):
        store.add_host("nogroup", "h", now=1.0)
    assert store.list_groups() == []


def test_import_creates_then_versions(store):
    v, new = store.import_policy("p", P1, author="a", now=1.0)
    assert new and v.version == 1
    v, new = store.import_policy("p", P1, author="a", now=2.0)
    assert not new and v.version == 1
    v, new = store.import_policy("p", P2, author="a", now=3.0)
    assert new and v.version == 2


def test_unreachable_database_is_typed_error(tmp_path):
    with pytest.raises(StoreError, match="cannot open"):
        PolicyStore("postgresql+psycopg://nobody@/nodb?host=" + str(tmp_path) + "&port=1")


# --------------------------------------------------------------------------- PostgreSQL


def _pg_bin() -> Path | None:
    base = Path("/usr/lib/postgresql")
    if not base.is_dir():
        return None
    versions = sorted(base.iterdir(), key=lambda p: int(p.name) if p.name.isdigit() else 0)
    return versions[-1] / "bin" if versions else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_postgresql_store():
    bindir = _pg_bin()
    if bindir is None or os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL (Debian postgresql) and root are needed in CI")
        pytest.skip("needs root and the Debian postgresql package")
    tmp = Path(tempfile.mkdtemp(prefix="pyi-pg-"))
    data, sock = tmp / "data", tmp / "sock"
    sock.mkdir()
    shutil.chown(tmp, "postgres")
    shutil.chown(sock, "postgres")
    port = _free_port()

    def as_pg(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["runuser", "-u", "postgres", "--", *args],
            check=True,
            capture_output=True,
            text=True,
            timeout=120,
        )

    started = False
    try:
        as_pg(
            str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"
        )
        opts = f"-k {sock} -p {port} -h 127.0.0.1 -c fsync=off"
        as_pg(
            str(bindir / "pg_ctl"),
            "-D",
            str(data),
            "-o",
            opts,
            "-w",
            "-l",
            str(tmp / "log"),
            "start",
        )
        started = True
        as_pg(str(bindir / "createdb"), "-h", str(sock), "-p", str(port), "pyipsec")
        store = PolicyStore(f"postgresql+psycopg://postgres@/pyipsec?host={sock}&port={port}")
        try:
            exercise(store)
            assert "@" not in store.location
        finally:
            store.close()
    finally:
        if started:
            subprocess.run(
                [
                    "runuser",
                    "-u",
                    "postgres",
                    "--",
                    str(bindir / "pg_ctl"),
                    "-D",
                    str(data),
                    "-m",
                    "immediate",
                    "-w",
                    "stop",
                ],
                capture_output=True,
                timeout=60,
            )
        shutil.rmtree(tmp, ignore_errors=True)
