"""Two IKE endpoints in memory: a hand-driven clock and a seeded lossy network.

``Network`` drops, duplicates, reorders and delays datagrams with given probabilities,
all from one seeded random.Random, so every run is reproducible. ``Pair`` wires two
endpoints ("a" at 192.0.2.1, "b" at 192.0.2.2, port 500) through it; ``run`` advances the
clock to the next delivery or timer until a condition holds. Events are collected per side.
"""

from __future__ import annotations

import heapq
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pyipsec.ike.config import AuthConfig, ChildConfig, EndpointConfig, PeerConfig
from pyipsec.ike.endpoint import IkeEndpoint
from pyipsec.ike.events import IkeEvent

A_ADDR = ("192.0.2.1", 500)
B_ADDR = ("192.0.2.2", 500)
PSK = AuthConfig(psk=b"correct horse battery staple")
START = 1_760_000_000.0  # wall-clock-like start (certificates are checked against it)


@dataclass
class Network:
    """Seeded lossy datagram network: each datagram is independently dropped (``drop``),
    duplicated (``dup``), delayed by up to ``max_delay`` (``delay``) and delivered behind
    the next one (``reorder``); base latency ``latency``."""

    seed: int = 0
    drop: float = 0.0
    dup: float = 0.0
    reorder: float = 0.0
    delay: float = 0.0
    latency: float = 0.01
    max_delay: float = 1.0
    rng: random.Random = field(init=False)
    queue: list[tuple[float, int, bytes, tuple[str, int], tuple[str, int]]] = field(
        default_factory=list
    )
    seq: int = 0
    sent: int = 0
    dropped: int = 0
    tamper: Callable[[bytes, tuple[str, int]], bytes | None] | None = None

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def send(self, data: bytes, src: tuple[str, int], dst: tuple[str, int], now: float) -> None:
        self.sent += 1
        if self.tamper is not None:
            out = self.tamper(data, dst)
            if out is None:
                self.dropped += 1
                return
            data = out
        if self.rng.random() < self.drop:
            self.dropped += 1
            return
        copies = 2 if self.rng.random() < self.dup else 1
        for _ in range(copies):
            t = now + self.latency
            if self.rng.random() < self.delay:
                t += self.rng.random() * self.max_delay
            if self.rng.random() < self.reorder:
                t += self.latency * 2  # overtaken by the next datagram
            self.seq += 1
            heapq.heappush(self.queue, (t, self.seq, data, src, dst))

    def next_time(self) -> float | None:
        return self.queue[0][0] if self.queue else None

    def due(self, now: float) -> list[tuple[bytes, tuple[str, int], tuple[str, int]]]:
        out = []
        while self.queue and self.queue[0][0] <= now:
            _, _, data, src, dst = heapq.heappop(self.queue)
            out.append((data, src, dst))
        return out


def peer_config(name: str, remote: str, **kw: Any) -> PeerConfig:
    kw.setdefault("local_auth", PSK)
    kw.setdefault("remote_auth", PSK)
    kw.setdefault("retransmit_timeout", 1.0)
    kw.setdefault("retransmit_base", 1.5)
    kw.setdefault("retransmit_tries", 5)
    return PeerConfig(name, remote_addrs=(remote,), **kw)


class Pair:
    """Endpoint ``a`` (usually the initiator) and ``b`` joined by a Network."""

    def __init__(
        self,
        a_peer: PeerConfig | None = None,
        b_peer: PeerConfig | None = None,
        *,
        network: Network | None = None,
        seed: int = 1,
        b_endpoint: dict[str, Any] | None = None,
        children: tuple[ChildConfig, ...] = (ChildConfig("c"),),
        start: float = START,
        addrs: tuple[str, str] = (A_ADDR[0], B_ADDR[0]),
    ) -> None:
        self.a_addr, self.b_addr = (addrs[0], 500), (addrs[1], 500)
        self.now = start
        self.net = network or Network(seed=seed)
        self.a_peer = a_peer or peer_config("to-b", addrs[1], children=children)
        self.b_peer = b_peer or peer_config("to-a", addrs[0], children=children)
        rng = random.Random(seed)
        self.a = IkeEndpoint(
            EndpointConfig(peers=(self.a_peer,), local_addr=addrs[0]),
            rng=random.Random(rng.random()),
        )
        self.b = IkeEndpoint(
            EndpointConfig(peers=(self.b_peer,), local_addr=addrs[1], **(b_endpoint or {})),
            rng=random.Random(rng.random()),
        )
        self.a_public = self.a_addr  # set to another address to put "a" behind a NAT
        self.events: dict[str, list[IkeEvent]] = {"a": [], "b": []}

    def endpoints(self) -> list[tuple[str, IkeEndpoint]]:
        return [("a", self.a), ("b", self.b)]

    def flush(self) -> None:
        """Move produced datagrams into the network and collect events."""
        for name, ep in self.endpoints():
            for data, dst, local in ep.datagrams_to_send_from(self.now):
                port = local[1] if local else 500
                src = self.a_public if ep is self.a else (self.b_addr[0], port)
                self.net.send(data, src, dst, self.now)
            while (ev := ep.next_event()) is not None:
                self.events[name].append(ev)

    def deliver(self) -> None:
        for data, src, dst in self.net.due(self.now):
            if self.a_public != self.a_addr:  # "a" behind a NAT: anything to its public IP
                ep = self.a if dst[0] == self.a_public[0] else self.b
            else:
                ep = (
                    self.a
                    if dst[0] == self.a_addr[0]
                    else self.b
                    if dst[0] == self.b_addr[0]
                    else None
                )
            if ep is not None:
                ep.receive_datagram(data, src, self.now, local_addr=dst)
        self.flush()

    def step(self) -> bool:
        """Advance to the next delivery or timer; False when nothing is left to do."""
        self.flush()
        times = [
            t
            for t in (self.net.next_time(), self.a.get_timer(), self.b.get_timer())
            if t is not None
        ]
        if not times:
            return False
        self.now = max(self.now, min(times))
        self.deliver()
        for _, ep in self.endpoints():
            t = ep.get_timer()
            if t is not None and t <= self.now:
                ep.handle_timer(self.now)
        self.flush()
        return True

    def run(self, until: Callable[[], bool] | None = None, max_time: float = 600.0) -> bool:
        """Step until ``until()`` holds (True) or time/work runs out (False)."""
        end = self.now + max_time
        while self.now <= end:
            if until is not None and until():
                return True
            if not self.step():
                return until() if until is not None else True
        return until() if until is not None else False

    def advance(self, seconds: float) -> None:
        """Run everything up to now + seconds."""
        end = self.now + seconds
        while True:
            self.flush()
            times = [
                t
                for t in (self.net.next_time(), self.a.get_timer(), self.b.get_timer())
                if t is not None and t <= end
            ]
            if not times:
                break
            self.step()
        self.now = end

    def of(self, side: str, cls: type) -> list[Any]:
        return [e for e in self.events[side] if isinstance(e, cls)]

    def connect(self, child: ChildConfig | None = None, **kw: Any) -> int:
        from pyipsec.ike.events import IkeSaUp

        if child is None and self.a_peer.children:
            child = self.a_peer.children[0]
        handle = self.a.initiate(self.a_peer, child, self.now)
        self.run(lambda: bool(self.of("a", IkeSaUp)) and bool(self.of("b", IkeSaUp)), **kw)
        return handle


def wall() -> float:
    return time.time()
