"""A control server on a real Unix socket, run in a thread: for CLI and client tests."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from pyipsec.control.server import ControlServer


class ServerThread:
    """Runs ``ControlServer(path, handlers)`` in its own event loop thread."""

    def __init__(
        self, path: str, handlers: Mapping[str, Callable[[dict[str, Any]], Awaitable[Any]]]
    ) -> None:
        self.server = ControlServer(path, handlers)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._started = threading.Event()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self.server.start())
        self._started.set()
        self.loop.run_forever()
        self.loop.run_until_complete(self.server.close())
        self.loop.close()

    def __enter__(self) -> ServerThread:
        self._thread.start()
        if not self._started.wait(5):
            raise RuntimeError("control server did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)

    def publish(self, event: dict[str, Any]) -> None:
        self.loop.call_soon_threadsafe(self.server.publish, event)
