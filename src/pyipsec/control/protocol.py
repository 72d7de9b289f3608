"""The control protocol: newline-delimited JSON over a Unix stream socket.

One request per line, one response per line, in order::

    -> {"id": 1, "command": "list-sas", "args": {"ike": "web-db"}}
    <- {"id": 1, "ok": true, "result": [...]}
    <- {"id": 2, "ok": false, "error": {"type": "ConfigError", "message": "..."}}

The ``watch`` command turns the connection into an event stream: after the response,
the server writes ``{"event": {...}}`` lines until the client closes the socket.

The socket is created 0600 in a 0700 directory: only root talks to the daemon.
"""

from __future__ import annotations

import json
from typing import Any

from pyipsec.errors import PyipsecError

DEFAULT_SOCKET = "/run/pyipsec/control.sock"
MAX_LINE = 1 << 20  # a request larger than 1 MiB is refused


class ControlError(PyipsecError):
    """The daemon refused a request or could not be reached."""

    def __init__(self, message: str, *, error_type: str = "ControlError") -> None:
        super().__init__(message)
        self.error_type = error_type


def encode(message: dict[str, Any]) -> bytes:
    """One JSON object on one line."""
    return json.dumps(message, separators=(",", ":"), default=_default).encode() + b"\n"


def decode(line: bytes) -> dict[str, Any]:
    """Parse one line; anything but a JSON object is a ControlError."""
    try:
        message = json.loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ControlError(f"malformed control message: {exc}") from None
    if not isinstance(message, dict):
        raise ControlError("malformed control message: not an object")
    return message


def _default(value: Any) -> Any:
    """JSON for the types statistics snapshots use (bytes as hex, sets as lists)."""
    if isinstance(value, (bytes, bytearray)):
        return value.hex()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if hasattr(value, "__dataclass_fields__"):
        import dataclasses

        return dataclasses.asdict(value)
    if hasattr(value, "value") and hasattr(value, "name"):  # enums
        return value.name
    return str(value)
