"""The daemon's real IKE sockets: UDP 500 and 4500 (RFC 7296 section 2.23, RFC 3948).

On port 4500 IKE messages carry the 4-byte non-ESP marker (zero) in front; datagrams
without it are ESP in UDP and belong to the data plane, which may hand us the IKE ones
it receives on its own 4500 socket (:meth:`UdpIkeNetwork.ike_from_4500`).

Every socket carries SO_MARK so that nftables lets IKE pass unclassified and it is
never routed into the TUN device.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable

from pyipsec.wire.esp import NON_ESP_MARKER

log = logging.getLogger("pyipsec.daemon.io")

SO_MARK = 36

Receiver = Callable[[bytes, tuple[str, int], tuple[str, int]], None]


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, network: UdpIkeNetwork, port: int) -> None:
        self.network = network
        self.port = port
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        remote = (addr[0], addr[1])
        if self.port == 4500:
            self.network.ike_from_4500(data, remote)
        else:
            self.network.deliver(data, remote, 500)

    def error_received(self, exc: Exception) -> None:
        log.debug("IKE socket error: %s", exc)


def _socket(family: int, port: int, mark: int, address: str) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if mark:
        sock.setsockopt(socket.SOL_SOCKET, SO_MARK, mark)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    sock.bind((address, port))
    sock.setblocking(False)
    return sock


class UdpIkeNetwork:
    """UDP sockets for IKE on 500 (and 4500 unless the data plane owns that port)."""

    def __init__(
        self,
        receiver: Receiver,
        *,
        mark: int = 0,
        ports: tuple[int, ...] = (500, 4500),
        ipv6: bool = True,
    ) -> None:
        self.receiver = receiver
        self.mark = mark
        self.ports = ports
        self.ipv6 = ipv6
        self._transports: dict[tuple[int, int], asyncio.DatagramTransport] = {}
        self.sent = 0
        self.received = 0
        self.dropped = 0
        self._send_4500: Callable[[bytes, tuple[str, int]], None] | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        families = [(socket.AF_INET, "0.0.0.0")]
        if self.ipv6 and socket.has_ipv6:
            families.append((socket.AF_INET6, "::"))
        for port in self.ports:
            for family, address in families:
                try:
                    sock = _socket(family, port, self.mark, address)
                except OSError as exc:
                    if family == socket.AF_INET6:
                        log.info("no IPv6 IKE socket on port %d: %s", port, exc.strerror)
                        continue
                    raise
                transport, _ = await loop.create_datagram_endpoint(
                    lambda port=port: _Protocol(self, port), sock=sock
                )
                self._transports[(family, port)] = transport  # type: ignore[assignment]

    def use_dataplane_4500(self, send: Callable[[bytes, tuple[str, int]], None]) -> None:
        """The data plane owns UDP 4500: send IKE through ``send`` (marker included)."""
        self._send_4500 = send

    def ike_from_4500(self, data: bytes, remote: tuple[str, int]) -> None:
        """A datagram from port 4500: IKE if it starts with the non-ESP marker."""
        if len(data) == 1 and data == b"\xff":
            return  # NAT keepalive (RFC 3948 section 2.3)
        if not data.startswith(NON_ESP_MARKER):
            self.dropped += 1  # ESP, but the data plane owns ESP: not ours
            return
        self.deliver(data[4:], remote, 4500)

    def deliver(self, data: bytes, remote: tuple[str, int], local_port: int) -> None:
        self.received += 1
        self.receiver(data, remote, ("", local_port))

    def send(self, data: bytes, remote: tuple[str, int], local_port: int) -> None:
        family = socket.AF_INET6 if ":" in remote[0] else socket.AF_INET
        if local_port == 4500:
            payload = NON_ESP_MARKER + data
            if self._send_4500 is not None:
                self._send_4500(payload, remote)
                self.sent += 1
                return
        else:
            payload = data
        transport = self._transports.get((family, local_port)) or self._transports.get(
            (family, 500)
        )
        if transport is None:
            raise OSError(101, f"no IKE socket for {remote[0]}")
        transport.sendto(payload, remote)
        self.sent += 1

    def send_keepalive(self, remote: tuple[str, int]) -> None:
        """A NAT keepalive: the single byte 0xFF from port 4500, without the marker."""
        if self._send_4500 is not None:
            self._send_4500(b"\xff", remote)
            return
        family = socket.AF_INET6 if ":" in remote[0] else socket.AF_INET
        transport = self._transports.get((family, 4500))
        if transport is None:
            raise OSError(101, f"no UDP 4500 socket for {remote[0]}")
        transport.sendto(b"\xff", remote)

    def close(self) -> None:
        for transport in self._transports.values():
            transport.close()
        self._transports.clear()
