"""Retransmission of IKE requests with exponential backoff (RFC 7296 section 2.1).

The initiator of an exchange owns retransmission: the request is re-sent after
``timeout * base**n`` seconds for n = 0, 1, ... ``tries - 1`` (``tries`` retransmissions);
after the last one it waits ``timeout * base**tries`` more and then gives up: the peer is
considered dead. strongSwan uses the same scheme (defaults 4 s, 1.8, 5 tries: about 165 s).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RetransmitStatistics:
    """Snapshot: retransmissions sent so far for the current request, and in total."""

    pending: bool
    sent_current: int
    total: int
    next_time: float | None


class Retransmitter:
    """Timer bookkeeping for one outstanding request (window size 1)."""

    def __init__(self, timeout: float, base: float, tries: int) -> None:
        self.timeout = timeout
        self.base = base
        self.tries = tries
        self.packets: list[bytes] = []
        self._count = 0
        self._next: float | None = None
        self.total = 0

    def start(self, packets: list[bytes], now: float) -> None:
        """A new request was sent at ``now``: arm the first timeout."""
        self.packets = list(packets)
        self._count = 0
        self._next = now + self.timeout

    def stop(self) -> None:
        """The response arrived (or the exchange was abandoned)."""
        self.packets = []
        self._next = None
        self._count = 0

    @property
    def next_time(self) -> float | None:
        return self._next

    @property
    def active(self) -> bool:
        return self._next is not None

    def on_timer(self, now: float) -> list[bytes] | None:
        """Due at ``now``: the packets to send again, ``[]`` if not due yet, ``None`` when the
        retries are exhausted (give up)."""
        if self._next is None or now < self._next:
            return []
        if self._count >= self.tries:
            self._next = None
            return None
        self._count += 1
        self.total += 1
        self._next = now + self.timeout * self.base**self._count
        return list(self.packets)

    def statistics(self) -> RetransmitStatistics:
        return RetransmitStatistics(self.active, self._count, self.total, self._next)
