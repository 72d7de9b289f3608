"""A minimal vici client: the message protocol charon's vici plugin speaks.

swanctl is fine for loading configuration, but its ``--raw`` output is hard to parse
reliably (values may hold spaces); vici gives nested dictionaries. The protocol is small
enough to speak directly, so the harness needs no extra package.
"""

from __future__ import annotations

import socket
import struct

# The vici protocol (strongSwan src/libcharon/plugins/vici/README.md): each packet is a
# 32-bit big-endian length then a 1-byte type; named types carry an 8-bit-length name.
# A message is a sequence of elements: section start/end, key=value, list start/item/end.
_CMD_REQUEST, _CMD_RESPONSE, _CMD_UNKNOWN = 0, 1, 2
_EVENT_REGISTER, _EVENT_UNREGISTER, _EVENT_CONFIRM, _EVENT_UNKNOWN, _EVENT = 3, 4, 5, 6, 7
_SECTION_START, _SECTION_END, _KEY_VALUE, _LIST_START, _LIST_ITEM, _LIST_END = 1, 2, 3, 4, 5, 6


def encode_vici_message(msg: dict) -> bytes:
    """Encode a dict (values: str/bytes/int, list of those, or nested dict) as vici."""
    out = bytearray()
    for key, value in msg.items():
        name = key.encode()
        if isinstance(value, dict):
            out += bytes([_SECTION_START, len(name)]) + name
            out += encode_vici_message(value)
            out.append(_SECTION_END)
        elif isinstance(value, list | tuple):
            out += bytes([_LIST_START, len(name)]) + name
            for item in value:
                data = item if isinstance(item, bytes) else str(item).encode()
                out += bytes([_LIST_ITEM]) + struct.pack("!H", len(data)) + data
            out.append(_LIST_END)
        else:
            data = value if isinstance(value, bytes) else str(value).encode()
            out += bytes([_KEY_VALUE, len(name)]) + name + struct.pack("!H", len(data)) + data
    return bytes(out)


def decode_vici_message(data: bytes) -> dict:
    """Decode a vici message into nested dicts; values and list items become str."""
    root: dict = {}
    stack = [root]
    pos = 0
    current_list: list | None = None

    def name_at(p: int) -> tuple[str, int]:
        n = data[p]
        return data[p + 1 : p + 1 + n].decode(errors="replace"), p + 1 + n

    def value_at(p: int) -> tuple[str, int]:
        (n,) = struct.unpack_from("!H", data, p)
        return data[p + 2 : p + 2 + n].decode(errors="replace"), p + 2 + n

    while pos < len(data):
        kind = data[pos]
        pos += 1
        if kind == _SECTION_START:
            name, pos = name_at(pos)
            section: dict = {}
            stack[-1][name] = section
            stack.append(section)
        elif kind == _SECTION_END:
            stack.pop()
        elif kind == _KEY_VALUE:
            name, pos = name_at(pos)
            stack[-1][name], pos = value_at(pos)
        elif kind == _LIST_START:
            name, pos = name_at(pos)
            current_list = []
            stack[-1][name] = current_list
        elif kind == _LIST_ITEM:
            item, pos = value_at(pos)
            assert current_list is not None
            current_list.append(item)
        elif kind == _LIST_END:
            current_list = None
        else:
            raise ValueError(f"bad vici element type {kind}")
    return root


class ViciClient:
    """A minimal blocking vici client over charon's Unix socket."""

    def __init__(self, path: str, timeout: float = 30.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)

    def close(self) -> None:
        self.sock.close()

    def _send(self, ptype: int, name: str | None, msg: dict | None = None) -> None:
        body = bytes([ptype])
        if name is not None:
            body += bytes([len(name)]) + name.encode()
        body += encode_vici_message(msg or {})
        self.sock.sendall(struct.pack("!I", len(body)) + body)

    def _recv(self) -> tuple[int, str | None, dict]:
        (length,) = struct.unpack("!I", self._recv_exact(4))
        body = self._recv_exact(length)
        ptype, pos, name = body[0], 1, None
        if ptype == _EVENT:
            n = body[1]
            name, pos = body[2 : 2 + n].decode(), 2 + n
        return ptype, name, decode_vici_message(body[pos:])

    def _recv_exact(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("vici socket closed")
            buf += chunk
        return buf

    def request(self, command: str, msg: dict | None = None) -> dict:
        """Send one command and return its response message."""
        self._send(_CMD_REQUEST, command, msg)
        ptype, _, reply = self._recv()
        if ptype == _CMD_UNKNOWN:
            raise RuntimeError(f"vici: unknown command {command}")
        return reply

    def streamed(self, command: str, event: str, msg: dict | None = None) -> list[dict]:
        """Run a command that streams ``event`` messages; return them (then the reply)."""
        self._send(_EVENT_REGISTER, event)
        ptype, _, _ = self._recv()
        if ptype != _EVENT_CONFIRM:
            raise RuntimeError(f"vici: cannot register for {event}")
        self._send(_CMD_REQUEST, command, msg)
        events = []
        while True:
            ptype, name, body = self._recv()
            if ptype == _EVENT and name == event:
                events.append(body)
            elif ptype == _CMD_RESPONSE:
                break
        self._send(_EVENT_UNREGISTER, event)
        self._recv()
        return events
