"""The daemon applies policies: file or policy server -> compile -> merge -> apply, atomically.

Real pieces throughout (the policy compiler, the daemon core with its IKE endpoint, the
HTTPS policy server on 127.0.0.1 with its SQLite store, real TLS and signatures); only the
data plane and the IKE network are the in-memory fakes, so nothing needs root.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import stat
import textwrap
import time

import pytest

from centralkit import Central, StaticTlsServer, policy_text
from daemonfakes import FakeDataplane, FakeNetwork
from pyipsec.daemon.config import load_config
from pyipsec.daemon.core import Daemon
from pyipsec.daemon.policy import PolicyApplier, PolicyApplyError, PolicyRunner, spd_dicts
from pyipsec.ipsec.spd import Action

A, B = "10.77.0.1", "10.77.0.2"
PSK = "the web-db shared secret"
PSK_HEX = "0x" + PSK.encode().hex()  # as the secrets file holds it

BLOCK_5432 = """\
  No DB port:
    filter_list: DB port
    filter_action: Block
"""
DB_PORT_LIST = """\
  DB port:
    filters:
      - {source: 10.77.0.1, destination: 10.77.0.2, protocol: tcp, destination_port: 5432}
"""


def with_block(text: str) -> str:
    """The policy plus a more specific block rule for TCP 5432 between A and B."""
    text = text.replace("rules:\n", "rules:\n" + BLOCK_5432)
    return text.replace("filter_lists:\n", "filter_lists:\n" + DB_PORT_LIST)


def write_host(tmp_path, me: str, policy: str, *, hand: bool = False) -> str:
    """A host directory: secrets store (0600), daemon config with a policy section."""
    directory = tmp_path / me
    directory.mkdir(exist_ok=True)
    store = directory / "psk-store.yaml"
    store.write_text(f'psk:\n  web-db: "{PSK}"\n')
    os.chmod(store, 0o600)
    hand_text = ""
    if hand:
        secrets = directory / "secrets.yaml"
        secrets.write_text('psk:\n  manual: "a hand-written secret"\n')
        os.chmod(secrets, 0o600)
        hand_text = textwrap.dedent("""\
        secrets: secrets.yaml
        connections:
          manual:
            local_addrs: [10.77.0.1]
            remote_addrs: [10.77.0.9]
            local: {auth: psk, id: 10.77.0.1}
            remote: {auth: psk, id: 10.77.0.9}
            children: {x: {start_action: trap}}
        """)
    path = directory / "pyipsec.yaml"
    path.write_text(
        hand_text
        + f"control_socket: {directory}/control.sock\n"
        + "policy:\n"
        + textwrap.indent(policy, "  ")
        + f"\n  addresses: [{me}]\n  secrets: psk-store.yaml\n"
        + "  secrets_file: policy-secrets.yaml\n"
    )
    return str(path)


def file_host(tmp_path, me: str = A, text: str | None = None, **kw):
    tmp_path.mkdir(parents=True, exist_ok=True)
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(text or policy_text(a=A, b=B))
    path = write_host(tmp_path, me, f"file: {policy_file}", **kw)
    return path, policy_file


def applier_for(path: str, **kw) -> PolicyApplier:
    config = load_config(path)
    return PolicyApplier(path, config.policy, resolver=None, **kw)


class Loop:
    """One event loop, an in-memory IKE network, daemons with fake data planes."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.net = FakeNetwork(self.loop)
        self.daemons: list[Daemon] = []

    def daemon(self, me: str, config) -> Daemon:
        daemon = Daemon(config, self.net.port(me), FakeDataplane(), clock=self.loop.time,
                        loop=self.loop)  # fmt: skip
        self.net.hosts[me] = daemon.datagram
        self.daemons.append(daemon)
        return daemon

    def run(self, coro):
        return self.loop.run_until_complete(coro)

    def until(self, predicate, timeout: float = 5.0) -> bool:
        async def wait() -> bool:
            deadline = self.loop.time() + timeout
            while self.loop.time() < deadline:
                if predicate():
                    return True
                await asyncio.sleep(0.01)
            return predicate()

        return self.run(wait())

    def close(self) -> None:
        for daemon in self.daemons:
            daemon.close()
        self.loop.close()


@pytest.fixture
def env():
    loop = Loop()
    yield loop
    loop.close()


def start(env: Loop, path: str, me: str, **kw) -> PolicyRunner:
    applier = applier_for(path, **kw)
    runner = PolicyRunner(applier, None, env.loop)
    config = runner.initial_config(load_config(path))
    runner.daemon = env.daemon(me, config)
    runner.daemon.start()
    return runner


# ------------------------------------------------------------------ prepare


def test_file_policy_compiles_into_a_merged_validated_config(tmp_path) -> None:
    path, _ = file_host(tmp_path, hand=True)
    prepared = applier_for(path).prepare(time.time())
    assert prepared is not None and prepared.name == "Web App Encrypt" and prepared.changed
    config = prepared.config
    conn = f"web-db-{B}"
    assert set(config.connections) == {"manual", conn}
    assert config.policy_connections == frozenset({conn})
    assert config.peer(conn).local_auth.psk == PSK.encode()
    (entry,) = config.spd
    assert entry.entry.action is Action.PROTECT and entry.entry.template.child == f"{conn}/{conn}-1"
    assert "+ spd" in prepared.plan_text and f"+ connection {conn}" in prepared.plan_text
    assert PSK not in repr(prepared) and PSK not in prepared.plan_text
    assert prepared.secrets == {conn: PSK_HEX} and PSK_HEX not in repr(prepared)


def test_block_rules_become_ordered_discard_entries(tmp_path) -> None:
    path, _ = file_host(tmp_path, text=with_block(policy_text(a=A, b=B)))
    prepared = applier_for(path).prepare(time.time())
    actions = [(p.entry.action, p.entry.priority) for p in prepared.config.spd]
    assert actions[0] == (Action.DISCARD, 0)  # most specific first
    assert all(a is Action.PROTECT for a, _ in actions[1:])
    assert spd_dicts(prepared.compiled)[0]["remote_ports"] == "5432"


# ------------------------------------------------------------------ apply, atomically


def test_apply_then_every_failure_keeps_the_current_policy(env, tmp_path, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    path, policy_file = file_host(tmp_path)
    runner = start(env, path, A)
    daemon, applier = runner.daemon, runner.applier
    secrets = tmp_path / A / "policy-secrets.yaml"
    assert stat.S_IMODE(os.stat(secrets).st_mode) == 0o600
    assert load_config(path).connections == {}  # the file itself stays as written
    assert PSK_HEX in secrets.read_text()
    applied = daemon.config
    assert applier.status()["name"] == "Web App Encrypt" and applier.status()["last_error"] is None
    plane = daemon.dataplane
    assert plane.policies[-1] is applied

    # unchanged: nothing happens
    result = env.run(runner.update())
    assert result["applied"] is False and "is current" in result["message"]

    # 1. an invalid policy: refused, located, everything stays
    policy_file.write_text(policy_text(a=A, b=B).replace("filter_action:", "filter_actoin:"))
    with pytest.raises(PolicyApplyError, match="keeping current policy 'Web App Encrypt'") as info:
        env.run(runner.update())
    assert "policy.yaml" in str(info.value)
    assert daemon.config is applied and len(plane.policies) == 1

    # 2. a secret the store does not hold: named, never its value
    policy_file.write_text(policy_text(a=A, b=B).replace("psk: web-db", "psk: other"))
    with pytest.raises(PolicyApplyError, match="no secret named 'other'"):
        env.run(runner.update())
    assert daemon.config is applied

    # 3. the data plane fails while applying: the previous config and secrets come back
    policy_file.write_text(with_block(policy_text(a=A, b=B)))
    before = secrets.read_bytes()

    def broken(config) -> None:
        plane.policies.append(config)
        if config is not applied:
            raise OSError("nft: table busy")

    plane.set_policies = broken
    with pytest.raises(PolicyApplyError, match="applying failed"):
        env.run(runner.update())
    assert daemon.config is applied and plane.policies[-1] is applied
    assert secrets.read_bytes() == before
    stats = applier.statistics()
    assert stats.policy_failures == 3 and stats.applies == 1 and stats.unchanged == 1
    assert "applying failed" in applier.status()["last_error"]

    # the data plane recovers: the new version applies, with its DISCARD entry
    del plane.set_policies
    result = env.run(runner.update())
    assert result["applied"] and "+ spd" in result["plan"]
    assert daemon.config.spd[0].entry.action is Action.DISCARD
    assert applier.status()["last_error"] is None
    logs = caplog.text + json.dumps(applier.status()) + repr(applier) + json.dumps(result)
    assert PSK not in logs and PSK_HEX not in logs and PSK.encode().hex() not in logs


def test_compiled_policies_bring_up_the_child_they_name(env, tmp_path) -> None:
    runners = [start(env, file_host(tmp_path / me, me)[0], me) for me in (A, B)]
    a, b = (r.daemon for r in runners)
    child = a.config.spd[0].entry.template.child
    a.acquire(A, B, child)  # as the data plane reports it
    assert env.until(lambda: a.child_sas and b.child_sas)
    assert [c.name for c in a.child_sas.values()] == [child.split("/")[1]]


def test_reload_rebuilds_from_the_edited_file(env, tmp_path) -> None:
    path, _ = file_host(tmp_path)
    runner = start(env, path, A)
    with open(path) as handle:
        text = handle.read()
    with open(path, "w") as handle:
        handle.write("log_level: debug\n" + text)
    result = env.run(runner.update(rebuild=True, reason="reload"))
    assert result["applied"] and not result["changed"] and "re-applied" in result["message"]
    assert runner.daemon.config.log_level == "debug"
    with open(path, "w") as handle:
        handle.write("log_level: loud\n" + text)
    with pytest.raises(PolicyApplyError, match="log_level"):
        env.run(runner.update(rebuild=True, reason="reload"))
    assert runner.daemon.config.log_level == "debug"


# ------------------------------------------------------------------ the policy server


@pytest.fixture
def central(tmp_path):
    c = Central(tmp_path / "central")
    now = time.time()
    c.store.create_policy("Web App Encrypt", policy_text(a=A, b=B), author="admin", now=now)
    c.store.create_group("webdb", now=now)
    c.store.assign("Web App Encrypt", "webdb", now=now)
    c.store.add_host("webdb", "hosta", now=now)
    yield c
    c.close()


def server_host(tmp_path, central, url: str | None = None, interval: str = "1h") -> str:
    ident = central.host("hosta", ips=[A])
    section = textwrap.dedent(f"""\
    server:
      url: {url or central.url}
      ca: {central.ca.cert_path}
      cert: {ident.cert}
      key: {ident.key}
      cache: {tmp_path}/cache/envelope.json
      poll_interval: {interval}
      timeout: 3s""")
    return write_host(tmp_path, A, section)


def test_server_policy_is_pulled_applied_reported_and_polled(env, tmp_path, central) -> None:
    path = server_host(tmp_path, central)
    runner = start(env, path, A)
    runner.report_started()
    status = runner.applier.status()
    assert (status["name"], status["version"], status["mode"]) == ("Web App Encrypt", 1, "server")
    assert [(r.status, r.version) for r in central.store.applied("hosta")] == [("applied", 1)]

    # a new version on the server reaches the host at the next poll
    central.store.edit_policy(
        "Web App Encrypt", with_block(policy_text(a=A, b=B)), author="admin", now=time.time()
    )
    sleeps: list[float] = []

    async def one_poll(delay: float) -> None:
        sleeps.append(delay)
        if len(sleeps) > 1:
            raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        env.run(runner.poll_forever(sleep=one_poll))
    assert 3590 < sleeps[0] <= 3600  # the configured interval after the start-up pull
    assert runner.applier.status()["version"] == 2
    assert runner.daemon.config.spd[0].entry.action is Action.DISCARD
    assert [r.version for r in central.store.applied("hosta")][:2] in ([2, 1], [1, 2])
    stats = runner.applier.statistics()
    assert (stats.polls, stats.applies, stats.reports) == (1, 2, 2)


def test_tampered_envelope_is_refused_and_the_policy_stays(env, tmp_path, central) -> None:
    path = server_host(tmp_path, central)
    runner = start(env, path, A)
    applied = runner.daemon.config
    good = runner.applier.current.envelope
    evil = dataclasses.replace(good, text=policy_text(a=A, b="10.77.0.66"), version=9)
    fake = StaticTlsServer(central.server_id, central.ca.cert_path, evil.to_json())
    try:
        runner.applier.client().config = dataclasses.replace(
            runner.applier.client().config, server=fake.url
        )
        runner.applier.client()._port = int(fake.url.rsplit(":", 1)[1])
        with pytest.raises(PolicyApplyError, match="refused") as info:
            env.run(runner.update(force=True))
    finally:
        fake.close()
    assert "keeping current policy 'Web App Encrypt' version 1" in str(info.value)
    assert runner.daemon.config is applied and runner.applier.status()["version"] == 1
    assert runner.applier.statistics().policy_failures == 1


def test_unreachable_server_at_start_uses_the_cached_policy(env, tmp_path, central) -> None:
    path = server_host(tmp_path, central)
    first = applier_for(path)
    assert first.prepare(time.time()) is not None  # fetched and cached
    central.server.shutdown()
    runner = start(env, path, A)
    status = runner.applier.status()
    assert status["name"] == "Web App Encrypt" and "unreachable" in status["last_error"]
    assert runner.daemon.config.policy_connections == frozenset({f"web-db-{B}"})
    # and later updates say so, keeping it
    with pytest.raises(PolicyApplyError, match="unreachable.*keeping current policy"):
        env.run(runner.update(force=True))
    # a reload (edited file) still applies, on the cached policy, and says so
    with open(path) as handle:
        text = handle.read()
    with open(path, "w") as handle:
        handle.write("log_level: warning\n" + text)
    result = env.run(runner.update(rebuild=True, reason="reload"))
    assert result["applied"] and "using the cached policy" in result["message"]
    assert runner.daemon.config.log_level == "warning"
    assert runner.daemon.config.policy_connections == frozenset({f"web-db-{B}"})


def test_no_policy_at_all_leaves_the_daemon_running_without_one(env, tmp_path, central) -> None:
    central.store.remove_host("webdb", "hosta")
    runner = start(env, server_host(tmp_path, central), A)
    assert runner.daemon.config.connections == {}
    status = runner.applier.status()
    assert status["name"] is None and status["last_error"]
    assert runner.applier.statistics().policy_failures == 1


def test_a_verified_policy_that_cannot_apply_here_is_reported_failed(env, tmp_path, central):
    runner = start(env, server_host(tmp_path, central), A)
    central.store.edit_policy(
        "Web App Encrypt",
        policy_text(a=A, b=B).replace("psk: web-db", "psk: not-in-store"),
        author="admin",
        now=time.time(),
    )
    with pytest.raises(PolicyApplyError, match="no secret named 'not-in-store'"):
        env.run(runner.update())
    records = central.store.applied("hosta")
    failed = [r for r in records if r.status == "failed"]
    assert [r.version for r in failed] == [2] and "not-in-store" in failed[0].detail
    assert runner.applier.status()["version"] == 1  # v1 stays in effect
