"""The control server and client talking over a real Unix socket."""

from __future__ import annotations

import os
import socket
import stat
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from controlthread import ServerThread
from pyipsec.control.client import ControlClient
from pyipsec.control.protocol import ControlError
from pyipsec.errors import ConfigError


@pytest.fixture
def running(tmp_path) -> Iterator[ServerThread]:
    async def status(args: dict[str, Any]) -> Any:
        return {"ike_sas": 1, "echo": args}

    async def bad(args: dict[str, Any]) -> Any:
        raise ConfigError("is not a valid mode", key="children.web.mode", file="a.yaml", line=3)

    async def crash(args: dict[str, Any]) -> Any:
        raise RuntimeError("secret-key-material")

    path = str(tmp_path / "run" / "control.sock")
    with ServerThread(path, {"status": status, "bad": bad, "crash": crash}) as thread:
        yield thread


def test_call_returns_result(running: ServerThread) -> None:
    client = ControlClient(running.server.path)
    assert client.call("status", verbose=True) == {"ike_sas": 1, "echo": {"verbose": True}}


def test_socket_is_private(running: ServerThread) -> None:
    mode = os.stat(running.server.path).st_mode
    assert stat.S_IMODE(mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(running.server.path)).st_mode) == 0o700


def test_typed_errors_cross_the_socket(running: ServerThread) -> None:
    client = ControlClient(running.server.path)
    with pytest.raises(ControlError) as info:
        client.call("bad")
    assert info.value.error_type == "ConfigError"
    assert "a.yaml:3: children.web.mode" in str(info.value)
    with pytest.raises(ControlError, match="unknown command"):
        client.call("nope")


def test_handler_crash_is_contained_and_hides_details(running: ServerThread) -> None:
    client = ControlClient(running.server.path)
    with pytest.raises(ControlError) as info:
        client.call("crash")
    assert info.value.error_type == "InternalError"
    assert "secret" not in str(info.value)
    assert client.call("status")["ike_sas"] == 1  # still serving
    assert running.server.errors == 1


def test_malformed_request_gets_error_response(running: ServerThread) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(running.server.path)
    sock.sendall(b"this is not json\n[1,2]\n")
    data = b""
    while data.count(b"\n") < 2:
        data += sock.recv(4096)
    sock.close()
    lines = data.splitlines()
    assert all(b'"ok":false' in line for line in lines)


def test_watch_streams_events(running: ServerThread) -> None:
    client = ControlClient(running.server.path, timeout=5)
    events = client.events()
    received: list[dict[str, Any]] = []

    def consume() -> None:
        for event in events:
            received.append(event)
            if len(received) == 2:
                break

    thread = threading.Thread(target=consume)
    thread.start()
    for _ in range(200):
        if running.server._watchers:
            break
        threading.Event().wait(0.01)
    running.publish({"type": "child-up", "name": "web-db"})
    running.publish({"type": "child-down", "name": "web-db"})
    thread.join(5)
    assert [e["type"] for e in received] == ["child-up", "child-down"]


def test_daemon_not_running(tmp_path) -> None:
    with pytest.raises(ControlError, match="not running"):
        ControlClient(str(tmp_path / "none.sock")).call("status")
