"""Asyncio server side of the control socket.

The daemon registers one coroutine per command; the server does the framing, turns
typed errors into error responses (a bad request never stops the daemon), and fans
out events to every ``watch`` connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from pyipsec.control.protocol import MAX_LINE, ControlError, decode, encode
from pyipsec.errors import PyipsecError

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any]], Awaitable[Any]]


class ControlServer:
    """Serves ``handlers`` (command name -> coroutine taking the args dict) on ``path``."""

    def __init__(self, path: str, handlers: Mapping[str, Handler]) -> None:
        self.path = path
        self.handlers = dict(handlers)
        self._server: asyncio.base_events.Server | None = None
        self._watchers: set[asyncio.Queue[dict[str, Any] | None]] = set()
        self._connections: set[asyncio.Task[None]] = set()
        self.requests = 0
        self.errors = 0

    async def start(self) -> None:
        directory = os.path.dirname(self.path) or "."
        os.makedirs(directory, mode=0o700, exist_ok=True)
        # Bind under a temporary name, make it 0600, then rename it into place: the socket
        # is never reachable with wider permissions, and the process umask (shared by all
        # threads) is never touched.
        temporary = f"{self.path}.{os.getpid()}.tmp"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(temporary)
            os.chmod(temporary, 0o600)
            os.replace(temporary, self.path)
        except BaseException:
            sock.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            raise
        self._server = await asyncio.start_unix_server(self._serve, sock=sock, limit=MAX_LINE)

    async def close(self) -> None:
        for queue in list(self._watchers):
            queue.put_nowait(None)
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._connections:
            await asyncio.wait(set(self._connections), timeout=2)
            for task in self._connections:
                task.cancel()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def publish(self, event: dict[str, Any]) -> None:
        """Send an event to every watcher (slow watchers lose events, never block us)."""
        for queue in list(self._watchers):
            if queue.qsize() < 1000:
                queue.put_nowait(event)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
            task.add_done_callback(self._connections.discard)
        try:
            while True:
                try:
                    line = await reader.readline()
                except (ValueError, asyncio.LimitOverrunError):
                    writer.write(encode({"ok": False, "error": _error(ControlError("too long"))}))
                    break
                if not line:
                    break
                response, watch = await self._dispatch(line)
                writer.write(encode(response))
                await writer.drain()
                if watch:
                    await self._stream(reader, writer)
                    break
        except (ConnectionError, BrokenPipeError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _dispatch(self, line: bytes) -> tuple[dict[str, Any], bool]:
        self.requests += 1
        request_id: Any = None
        try:
            request = decode(line)
            request_id = request.get("id")
            command = request.get("command")
            args = request.get("args") or {}
            if not isinstance(command, str) or not isinstance(args, dict):
                raise ControlError("request needs a string 'command' and an object 'args'")
            if command == "watch":
                return {"id": request_id, "ok": True, "result": "watching"}, True
            handler = self.handlers.get(command)
            if handler is None:
                raise ControlError(f"unknown command {command!r}")
            result = await handler(args)
            return {"id": request_id, "ok": True, "result": result}, False
        except PyipsecError as exc:
            self.errors += 1
            return {"id": request_id, "ok": False, "error": _error(exc)}, False
        except Exception as exc:  # a bug in a handler must not take the daemon down
            self.errors += 1
            log.exception("control command failed")
            return {
                "id": request_id,
                "ok": False,
                "error": {"type": "InternalError", "message": f"{type(exc).__name__}"},
            }, False

    async def _stream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._watchers.add(queue)
        closed = asyncio.ensure_future(reader.read())
        try:
            while True:
                getter = asyncio.ensure_future(queue.get())
                done, _ = await asyncio.wait({getter, closed}, return_when=asyncio.FIRST_COMPLETED)
                if closed in done:
                    getter.cancel()
                    return
                event = getter.result()
                if event is None:
                    return
                writer.write(encode({"event": event}))
                await writer.drain()
        finally:
            self._watchers.discard(queue)
            closed.cancel()


def _error(exc: Exception) -> dict[str, Any]:
    error_type = getattr(exc, "error_type", type(exc).__name__)
    return {"type": error_type, "message": str(exc)}
