"""SA lifetimes (RFC 4301 section 4.4.2.1) and the events an SA raises for its key manager.

Limits count what the SA protected (inner packet bytes and packets, each direction on its
own SA) and seconds from the SA's creation time ``now``. A soft limit queues
:class:`SoftLifetimeExpired` once (rekey now); a hard limit queues
:class:`HardLifetimeExpired` once and makes the SA refuse traffic with LifetimeExpired.
Sequence number exhaustion (RFC 4303 section 3.3.3) is reported as
:class:`SequenceExhausted` and is hard as well.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyipsec.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Lifetime:
    """Soft and hard limits; ``None`` means no limit of that kind."""

    soft_bytes: int | None = None
    hard_bytes: int | None = None
    soft_packets: int | None = None
    hard_packets: int | None = None
    soft_seconds: float | None = None
    hard_seconds: float | None = None

    def __post_init__(self) -> None:
        for kind in ("bytes", "packets", "seconds"):
            soft = getattr(self, "soft_" + kind)
            hard = getattr(self, "hard_" + kind)
            for name, v in (("soft_" + kind, soft), ("hard_" + kind, hard)):
                if v is not None and v <= 0:
                    raise ConfigError(f"must be positive, got {v}", key=name)
            if soft is not None and hard is not None and soft > hard:
                raise ConfigError(f"soft limit {soft} above hard limit {hard}", key="soft_" + kind)


@dataclass(frozen=True, slots=True)
class SoftLifetimeExpired:
    """A soft limit was reached: the key manager should rekey the SA now."""

    spi: int  #: SPI of the SA
    reason: str  #: "bytes", "packets" or "seconds"
    now: float  #: time at which it was detected


@dataclass(frozen=True, slots=True)
class HardLifetimeExpired:
    """A hard limit was reached: the SA refuses all further traffic."""

    spi: int  #: SPI of the SA
    reason: str  #: "bytes", "packets" or "seconds"
    now: float  #: time at which it was detected


@dataclass(frozen=True, slots=True)
class SequenceExhausted:
    """The outbound sequence number reached 2^32-1 (2^64-1 with ESN): rekey, no wrap."""

    spi: int  #: SPI of the SA
    now: float  #: time at which it was detected


SaEvent = SoftLifetimeExpired | HardLifetimeExpired | SequenceExhausted

_INF = float("inf")


class LifetimeTracker:
    """Counts bytes/packets against the limits; the SA calls :meth:`over` when
    ``packets >= next_packets or bytes >= next_bytes`` (two comparisons per packet)."""

    __slots__ = ("lifetime", "created", "soft_done", "hard_done", "next_packets", "next_bytes")

    def __init__(self, lifetime: Lifetime | None, now: float) -> None:
        self.lifetime = lifetime or Lifetime()
        self.created = now
        self.soft_done = False
        self.hard_done = False
        self._recompute()

    def _recompute(self) -> None:
        lt = self.lifetime
        p = [] if self.hard_done else [lt.hard_packets]
        b = [] if self.hard_done else [lt.hard_bytes]
        if not self.soft_done:
            p.append(lt.soft_packets)
            b.append(lt.soft_bytes)
        p = [v for v in p if v is not None]
        b = [v for v in b if v is not None]
        self.next_packets = min(p) if p else _INF
        self.next_bytes = min(b) if b else _INF

    def over(self, packets: int, nbytes: int) -> list[tuple[str, str]]:
        """[("soft"|"hard", reason), ...] for limits newly reached by these totals."""
        lt = self.lifetime
        out: list[tuple[str, str]] = []
        if not self.soft_done:
            if lt.soft_packets is not None and packets >= lt.soft_packets:
                out.append(("soft", "packets"))
            elif lt.soft_bytes is not None and nbytes >= lt.soft_bytes:
                out.append(("soft", "bytes"))
            self.soft_done = bool(out)
        if not self.hard_done:
            if lt.hard_packets is not None and packets >= lt.hard_packets:
                out.append(("hard", "packets"))
                self.hard_done = True
            elif lt.hard_bytes is not None and nbytes >= lt.hard_bytes:
                out.append(("hard", "bytes"))
                self.hard_done = True
        self._recompute()
        return out

    def over_time(self, now: float) -> list[tuple[str, str]]:
        """Limits by seconds newly reached at ``now``."""
        lt = self.lifetime
        age = now - self.created
        out = []
        if not self.soft_done and lt.soft_seconds is not None and age >= lt.soft_seconds:
            self.soft_done = True
            self._recompute()
            out.append(("soft", "seconds"))
        if not self.hard_done and lt.hard_seconds is not None and age >= lt.hard_seconds:
            self.hard_done = True
            out.append(("hard", "seconds"))
        return out
