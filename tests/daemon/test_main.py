"""The daemon process wiring: two ``run()`` loops with fake boundaries, driven through
the real control socket with the real client (as the CLI does)."""

from __future__ import annotations

import asyncio
import os
import textwrap

import pytest

from daemonfakes import FakeDataplane, FakeNetwork
from pyipsec.control.client import ControlClient
from pyipsec.control.protocol import ControlError
from pyipsec.daemon.main import run

A, B = "10.2.0.1", "10.2.0.2"


def write_config(directory, me: str, peer: str, *, start: str = "trap") -> str:
    directory.mkdir(exist_ok=True)
    secrets = directory / "secrets.yaml"
    secrets.write_text('psk:\n  web-db: "shared secret key"\n')
    os.chmod(secrets, 0o600)
    path = directory / "pyipsec.yaml"
    path.write_text(
        textwrap.dedent(f"""\
        secrets: secrets.yaml
        control_socket: {directory}/control.sock
        connections:
          web-db:
            local_addrs: [{me}]
            remote_addrs: [{peer}]
            local: {{auth: psk, id: {me}}}
            remote: {{auth: psk, id: {peer}}}
            children:
              db:
                mode: transport
                start_action: {start}
        """)
    )
    return str(path)


@pytest.fixture
def two_daemons(tmp_path):
    loop = asyncio.new_event_loop()
    net = FakeNetwork(loop)
    paths = {
        A: write_config(tmp_path / "a", A, B, start="start"),
        B: write_config(tmp_path / "b", B, A),
    }
    planes = {A: FakeDataplane(), B: FakeDataplane()}
    ready = {A: asyncio.Event(), B: asyncio.Event()}
    tasks = []

    async def start() -> None:
        for me in (A, B):

            def network_factory(receiver, me=me):
                net.hosts[me] = receiver
                return net.port(me)

            tasks.append(
                loop.create_task(
                    run(
                        paths[me],
                        dataplane_factory=lambda cfg, lp, hooks, me=me: planes[me],
                        network_factory=network_factory,
                        ready=ready[me].set,
                    )
                )
            )
        await asyncio.wait_for(asyncio.gather(ready[A].wait(), ready[B].wait()), 5)

    loop.run_until_complete(start())
    yield loop, paths, planes, tasks
    for task in tasks:
        task.cancel()
    loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
    loop.close()


def call(loop, path: str, command: str, **args):
    client = ControlClient(os.path.join(os.path.dirname(path), "control.sock"), timeout=5)
    return loop.run_until_complete(loop.run_in_executor(None, lambda: client.call(command, **args)))


def wait_for(loop, predicate, timeout: float = 5.0) -> bool:
    async def poll() -> bool:
        for _ in range(int(timeout / 0.02)):
            if predicate():
                return True
            await asyncio.sleep(0.02)
        return False

    return loop.run_until_complete(poll())


def test_start_action_start_and_status_over_the_socket(two_daemons) -> None:
    loop, paths, planes, _ = two_daemons
    assert wait_for(loop, lambda: planes[A].installed and planes[B].installed)
    status = call(loop, paths[A], "status")
    assert status["ike_sas"][0]["name"] == "web-db"
    assert status["child_sas"][0]["mode"] == "transport"
    listed = call(loop, paths[A], "list-child-sas")
    moving = ("installed_for", "rekey_in", "established_for")
    assert [{k: v for k, v in c.items() if k not in moving} for c in listed] == [
        {k: v for k, v in c.items() if k not in moving} for c in status["child_sas"]
    ]
    stats = call(loop, paths[B], "statistics")
    assert stats["active_child_sas"] == 1
    assert call(loop, paths[A], "version")["version"]


def test_bad_reload_is_refused_and_sas_stay(two_daemons) -> None:
    loop, paths, planes, _ = two_daemons
    assert wait_for(loop, lambda: planes[A].installed and planes[B].installed)
    before = set(planes[A].installed)
    with open(paths[A]) as handle:
        good = handle.read()
    with open(paths[A], "w") as handle:
        handle.write(good.replace("mode: transport", "mode: tunel"))
    with pytest.raises(ControlError) as info:
        call(loop, paths[A], "reload")
    assert info.value.error_type == "ConfigError"
    assert "children.db.mode" in str(info.value) and ":11:" in str(info.value)
    assert set(planes[A].installed) == before
    assert call(loop, paths[A], "statistics")["failed_reloads"] == 1
    with open(paths[A], "w") as handle:
        handle.write(good)
    result = call(loop, paths[A], "reload")
    assert result["kept"] == ["web-db"]
    assert set(planes[A].installed) == before


def test_down_and_up_by_name(two_daemons) -> None:
    loop, paths, planes, _ = two_daemons
    assert wait_for(loop, lambda: planes[A].installed and planes[B].installed)
    call(loop, paths[A], "down", name="web-db")
    assert wait_for(loop, lambda: not planes[A].installed and not planes[B].installed)
    call(loop, paths[B], "up", name="db")
    assert wait_for(loop, lambda: planes[A].installed and planes[B].installed)
    with pytest.raises(ControlError, match="name is required"):
        call(loop, paths[B], "up")


def test_policy_update_and_reload_over_the_socket(tmp_path) -> None:
    """A daemon whose configuration has a policy section: the control API applies it."""
    from centralkit import policy_text

    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(policy_text(a=A, b=B))
    store = tmp_path / "store.yaml"
    store.write_text('psk:\n  web-db: "the shared secret"\n')
    os.chmod(store, 0o600)
    path = tmp_path / "pyipsec.yaml"
    path.write_text(
        textwrap.dedent(f"""\
        control_socket: {tmp_path}/control.sock
        policy:
          file: {policy_file}
          addresses: [{A}]
          secrets: {store}
          secrets_file: {tmp_path}/policy-secrets.yaml
        """)
    )
    loop = asyncio.new_event_loop()
    net = FakeNetwork(loop)
    plane = FakeDataplane()
    ready = asyncio.Event()

    def network_factory(receiver):
        net.hosts[A] = receiver
        return net.port(A)

    task = loop.create_task(
        run(str(path), dataplane_factory=lambda cfg, lp, hooks: plane,
            network_factory=network_factory, ready=ready.set)
    )  # fmt: skip
    try:
        loop.run_until_complete(asyncio.wait_for(ready.wait(), 5))
        status = call(loop, str(path), "status")
        assert status["policy"]["name"] == "Web App Encrypt"
        assert status["policy"]["connections"] == [f"web-db-{B}"]
        assert plane.policies[-1].spd[0].entry.template.child.startswith(f"web-db-{B}/")
        result = call(loop, str(path), "policy-update")
        assert result["applied"] is False and "is current" in result["message"]
        policy_file.write_text(policy_text("two", a=A, b=B).replace("Strict)", "Strict)\n    x: 1"))
        with pytest.raises(ControlError, match="keeping current policy") as info:
            call(loop, str(path), "policy-update", force=True)
        assert info.value.error_type == "PolicyApplyError"
        assert call(loop, str(path), "statistics")["policy_failures"] == 1
        policy_file.write_text(policy_text("two", a=A, b=B))
        result = call(loop, str(path), "policy-update", force=True)
        assert result["applied"] and result["changed"] and "plan for 10.2.0.1" in result["plan"]
        result = call(loop, str(path), "reload")
        assert result["applied"] and "re-applied" in result["message"]
        assert call(loop, str(path), "status")["policy"]["last_error"] is None
    finally:
        task.cancel()
        loop.run_until_complete(asyncio.gather(task, return_exceptions=True))
        loop.close()
