"""Fakes of the daemon's boundaries: an in-memory IKE network and a recording data plane."""

from __future__ import annotations

import asyncio
from typing import Any

from pyipsec.daemon.config import DaemonConfig
from pyipsec.ike.events import ChildSaDeleted, ChildSaInstalled


class FakeDataplane:
    def __init__(self) -> None:
        self.installed: dict[int, ChildSaInstalled] = {}
        self.removed: list[ChildSaDeleted] = []
        self.policies: list[DaemonConfig] = []
        self.activated: list[int] = []
        self.bypasses: set[tuple[str, str]] = set()  #: (conn/child, host) in clear

    def install(self, child: ChildSaInstalled) -> None:
        self.installed[child.inbound_spi] = child

    def remove(self, child: ChildSaDeleted) -> None:
        self.removed.append(child)
        self.installed.pop(child.inbound_spi, None)

    def activate(self, new_inbound_spi: int) -> None:
        self.activated.append(new_inbound_spi)

    def set_policies(self, config: DaemonConfig) -> None:
        self.policies.append(config)

    def add_bypass(self, child: str, remote: str) -> None:
        self.bypasses.add((child, remote))

    def remove_bypass(self, child: str, remote: str) -> None:
        self.bypasses.discard((child, remote))

    def sa_statistics(self) -> dict[int, dict[str, int]]:
        return {spi: {"bytes_in": 100, "packets_in": 1} for spi in self.installed}

    def statistics(self) -> dict[str, int]:
        return {"bad_spi_packets": 0}

    def close(self) -> None:
        pass


class FakeNetwork:
    """Delivers datagrams between daemons by address, asynchronously; can drop all."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.hosts: dict[str, Any] = {}  # address -> receiver(data, remote, local)
        self.blocked: set[str] = set()
        self.count = 0
        self.keepalives: list[tuple[str, tuple[str, int]]] = []

    def port(self, address: str) -> Any:
        network = self

        class Port:
            def send(self, data: bytes, remote: tuple[str, int], local_port: int) -> None:
                network.count += 1
                target = network.hosts.get(remote[0])
                if target is None or address in network.blocked or remote[0] in network.blocked:
                    return
                network.loop.call_soon(target, data, (address, local_port), (remote[0], remote[1]))

            def send_keepalive(self, remote: tuple[str, int]) -> None:
                network.keepalives.append((address, remote))

            def close(self) -> None:
                pass

        return Port()
