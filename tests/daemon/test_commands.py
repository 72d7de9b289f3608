"""The daemon's commands on a daemon with fake boundaries (no root, no network)."""

from __future__ import annotations

import asyncio
import os
import textwrap

import pytest

from daemonfakes import FakeDataplane, FakeNetwork
from pyipsec.daemon.config import load_config
from pyipsec.daemon.core import Daemon
from pyipsec.errors import ConfigError

ME = "10.1.0.10"


def _config(tmp_path, name: str, fallback: str = "0.2"):
    secrets = tmp_path / "secrets.yaml"
    secrets.write_text(f'psk:\n  {name}: "shared secret key"\n')
    os.chmod(secrets, 0o600)
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        textwrap.dedent(f"""\
        secrets: secrets.yaml
        connections:
          {name}:
            local_addrs: [{ME}]
            remote_addrs: ["%any"]
            local: {{auth: psk, id: {ME}}}
            remote: {{auth: psk}}
            retransmit_timeout: 0.2
            retransmit_tries: 1
            children:
              all: {{local_ts: [{ME}], remote_ts: [0.0.0.0/0], unsecured_fallback: {fallback}}}
        """)
    )
    return load_config(str(path))


@pytest.fixture
def daemon(tmp_path):
    loop = asyncio.new_event_loop()
    d = Daemon(_config(tmp_path, "any"), FakeNetwork(loop).port(ME), FakeDataplane(),
               clock=loop.time, loop=loop)  # fmt: skip
    d.start()
    yield loop, d
    d.close()
    loop.close()


def _wait(loop: asyncio.AbstractEventLoop, predicate, timeout: float = 5.0) -> bool:
    async def wait() -> bool:
        end = loop.time() + timeout
        while loop.time() < end and not predicate():
            await asyncio.sleep(0.01)
        return bool(predicate())

    return loop.run_until_complete(wait())


def test_status_and_statistics_show_fallbacks(daemon) -> None:
    loop, d = daemon
    d.acquire(ME, "192.0.2.7", "any/all")
    assert _wait(loop, lambda: d.dataplane.bypasses)
    status = d.status()
    assert [f["remote"] for f in status["fallbacks"]] == ["192.0.2.7"]
    stats = d.statistics()
    assert stats["unsecured_fallbacks"] == 1 and stats["active_fallbacks"] == 1


def test_reload_without_the_connection_ends_its_fallbacks(daemon, tmp_path) -> None:
    loop, d = daemon
    d.acquire(ME, "192.0.2.7", "any/all")
    assert _wait(loop, lambda: d.dataplane.bypasses)
    result = d.reload(_config(tmp_path, "renamed"))
    assert result["removed"] == ["any"] and result["added"] == ["renamed"]
    assert d.dataplane.bypasses == set() and d.status()["fallbacks"] == []


def test_commands_name_unknown_things(daemon) -> None:
    _, d = daemon
    with pytest.raises(ConfigError, match="no connection or child named"):
        d.command_up("nope")
    with pytest.raises(ConfigError, match="no SA named"):
        d.command_down("any")
    with pytest.raises(ConfigError, match="no SA named"):
        d.command_rekey("any")
