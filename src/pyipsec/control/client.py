"""Blocking client of the control socket, for the CLI, the web monitor and tests."""

from __future__ import annotations

import itertools
import socket
from collections.abc import Iterator
from typing import Any

from pyipsec.control.protocol import DEFAULT_SOCKET, ControlError, decode, encode


class ControlClient:
    """``ControlClient().call("status")`` returns the result or raises ControlError."""

    def __init__(self, path: str = DEFAULT_SOCKET, *, timeout: float = 30.0) -> None:
        self.path = path
        self.timeout = timeout
        self._ids = itertools.count(1)

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except FileNotFoundError:
            sock.close()
            raise ControlError(f"the daemon is not running (no socket at {self.path})") from None
        except PermissionError:
            sock.close()
            raise ControlError(f"permission denied on {self.path} (run as root)") from None
        except OSError as exc:
            sock.close()
            raise ControlError(f"cannot reach the daemon at {self.path}: {exc.strerror}") from None
        return sock

    def call(self, command: str, **args: Any) -> Any:
        sock = self._connect()
        try:
            sock.sendall(encode({"id": next(self._ids), "command": command, "args": args}))
            with sock.makefile("rb") as stream:
                line = stream.readline()
        except TimeoutError:
            raise ControlError(f"the daemon did not answer {command!r} in time") from None
        finally:
            sock.close()
        if not line:
            raise ControlError("the daemon closed the connection")
        return _result(decode(line))

    def events(self) -> Iterator[dict[str, Any]]:
        """Yield SA up/down events until the daemon stops or the caller breaks."""
        sock = self._connect()
        sock.settimeout(None)
        try:
            sock.sendall(encode({"id": next(self._ids), "command": "watch", "args": {}}))
            with sock.makefile("rb") as stream:
                _result(decode(stream.readline() or b"{}"))
                for line in stream:
                    message = decode(line)
                    if "event" in message:
                        yield message["event"]
        finally:
            sock.close()


def _result(response: dict[str, Any]) -> Any:
    if response.get("ok"):
        return response.get("result")
    error = response.get("error") or {}
    raise ControlError(
        str(error.get("message", "unknown error")),
        error_type=str(error.get("type", "ControlError")),
    )
