"""pyipsec as the peer of a charon, before the daemon exists: test-side glue.

:class:`IkePeer` drives pyipsec's sans-I/O :class:`pyipsec.ike.endpoint.IkeEndpoint` over
real UDP sockets (ports 500 and 4500, the latter with the RFC 3948 non-ESP marker)
opened inside a network namespace, in the test's own process: the sockets are created
after ``setns`` into the namespace and keep belonging to it. :func:`static_sa_yaml` turns
a negotiated :class:`~pyipsec.ike.events.ChildSaInstalled` into the static SA/SPD file of
``pyipsec dataplane --static``, so pyipsec's user-space data plane can carry the traffic
of an SA that pyipsec's IKE negotiated with strongSwan.

The UDP 4500 socket must be closed (:meth:`IkePeer.release_nat_t_port`) before the data
plane binds the port for ESP-in-UDP; after that the IKE SA gets no more messages (fine for
tests that stop there; the daemon, issue 5, owns both for real).

Use::

    with IkePeer("pyi-s1", "10.96.0.1", EndpointConfig(peers=(peer,), ...)) as ike:
        ike.endpoint.initiate(peer, child, time.time())
        installed = ike.wait_for(ChildSaInstalled)
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import socket
import time
from collections.abc import Iterator
from typing import Any

from pyipsec.ike.config import EndpointConfig
from pyipsec.ike.endpoint import IkeEndpoint
from pyipsec.ike.events import ChildSaInstalled, IkeEvent

NON_ESP_MARKER = b"\0\0\0\0"
_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


@contextlib.contextmanager
def in_netns(ns: str) -> Iterator[None]:
    """Run the block with this thread in network namespace ``ns`` (sockets made there stay
    in it); the original namespace is restored afterwards, even on error."""
    orig = os.open("/proc/self/ns/net", os.O_RDONLY)
    try:
        target = os.open(f"/run/netns/{ns}", os.O_RDONLY)
        try:
            if _libc.setns(target, _CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns({ns}): {os.strerror(err)}")
            yield
        finally:
            os.close(target)
    finally:
        if _libc.setns(orig, _CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "cannot return to the original namespace")
        os.close(orig)


class IkePeer:
    """An :class:`IkeEndpoint` on UDP 500/4500 at ``addr`` in namespace ``ns``."""

    def __init__(self, ns: str, addr: str, config: EndpointConfig) -> None:
        self.ns = ns
        self.addr = addr
        self.endpoint = IkeEndpoint(config)
        self.events: list[IkeEvent] = []
        self._taken: set[int] = set()
        self.socks: dict[int, socket.socket] = {}
        with in_netns(ns):
            for port in (500, 4500):
                family = socket.AF_INET6 if ":" in addr else socket.AF_INET
                sock = socket.socket(family, socket.SOCK_DGRAM)
                sock.bind((addr, port))
                self.socks[port] = sock

    def __enter__(self) -> IkePeer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for sock in self.socks.values():
            sock.close()
        self.socks.clear()

    def release_nat_t_port(self) -> None:
        """Send what is pending, then close UDP 4500 so the data plane can bind it."""
        self._flush()
        sock = self.socks.pop(4500, None)
        if sock is not None:
            sock.close()

    def _flush(self) -> None:
        for data, dst, src in self.endpoint.datagrams_to_send_from(time.time()):
            port = src[1] if src else 500
            sock = self.socks.get(port)
            if sock is None:
                continue  # 4500 released: the IKE SA is on its own now
            sock.sendto(NON_ESP_MARKER + data if port == 4500 else data, dst)

    def step(self, timeout: float = 0.1) -> None:
        """Send pending datagrams, wait up to ``timeout`` for input, run due timers."""
        self._flush()
        now = time.time()
        timer = self.endpoint.get_timer()
        wait = timeout if timer is None else max(0.0, min(timeout, timer - now))
        readable, _, _ = select.select(list(self.socks.values()), [], [], wait)
        for sock in readable:
            data, addr = sock.recvfrom(65535)
            local = (self.addr, sock.getsockname()[1])
            self.endpoint.receive_datagram(data, addr[:2], time.time(), local)
        timer = self.endpoint.get_timer()
        if timer is not None and timer <= time.time():
            self.endpoint.handle_timer(time.time())
        while (event := self.endpoint.next_event()) is not None:
            self.events.append(event)
        self._flush()

    def wait_for(self, kind: type, timeout: float = 15.0) -> Any:
        """The first event of class ``kind`` not returned before, stepping until it comes
        (TimeoutError naming the events seen and the endpoint statistics if it does not)."""
        deadline = time.monotonic() + timeout
        while True:
            for index, event in enumerate(self.events):
                if index not in self._taken and isinstance(event, kind):
                    self._taken.add(index)
                    return event
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"no {kind.__name__} after {timeout}s; events: {self.events!r}; "
                    f"statistics: {self.endpoint.statistics()}"
                )
            self.step()


def static_sa_yaml(
    sa: ChildSaInstalled, *, local_ts: str, remote_ts: str, child: str | None = None
) -> str:
    """The ``pyipsec dataplane --static`` file for a negotiated Child SA (both directions,
    one PROTECT policy ``local_ts`` <-> ``remote_ts``). Holds keys: write it 0600."""
    name = child or sa.child
    encap = "udp" if sa.encap_udp else "none"
    out = []
    for spi, src, dst, key, direction in (
        (sa.outbound_spi, sa.local_addr, sa.remote_addr, sa.outbound_key, "out"),
        (sa.inbound_spi, sa.remote_addr, sa.local_addr, sa.inbound_key, "in"),
    ):
        out.append(
            f"  - spi: {spi}\n    src: {src}\n    dst: {dst}\n    protocol: {sa.protocol}\n"
            f'    mode: {sa.mode}\n    algorithm: {sa.algorithm}\n    key: "{key.hex()}"\n'
            f"    encap: {encap}\n    esn: {'true' if sa.esn else 'false'}\n"
            f"    child: {name}\n    direction: {direction}\n"
        )
    policy = (
        f"  - name: {name}\n    local: {local_ts}\n    remote: {remote_ts}\n"
        f"    action: protect\n    child: {name}\n"
    )
    return "sas:\n" + "".join(out) + "policies:\n" + policy


def write_secret_file(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` created 0600 (it holds keys)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
