"""Statistics snapshots of IKE SAs (frozen dataclasses, what "Main Mode" monitors show)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class IkeSaStatistics:
    """Snapshot of one IKE SA (what "Main Mode" monitors show)."""

    handle: int
    peer: str
    state: str
    initiator: bool
    spi_i: str
    spi_r: str
    local_addr: tuple[str, int]
    remote_addr: tuple[str, int]
    proposal: str
    local_id: str
    remote_id: str
    established_at: float | None
    rekey_at: float | None
    expire_at: float | None
    children: int
    messages_in: int
    messages_out: int
    retransmits: int
    dropped: int


__all__ = ["IkeSaStatistics"]
