"""Statistics of SAs and of the whole packet layer, named the way IPsec monitors show them.

:class:`SaStatistics` is the frozen snapshot one :class:`~pyipsec.ipsec.sa.SecurityAssociation`
returns. :class:`GlobalStatistics` sums the snapshots of all SAs and adds the drops that
never reached an SA (unknown SPI, malformed outer packets, NAT keepalives), which a
:class:`GlobalCounters` object owned by the data plane counts.

"Confidential bytes" are payload bytes protected by encryption (ESP with a cipher);
"authenticated bytes" are payload bytes protected by an ICV (every ESP and AH SA).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields

from pyipsec.errors import PacketError

#: error counters, keyed by :attr:`pyipsec.errors.PacketError.counter`
ERROR_COUNTERS = (
    "malformed_packets",
    "bad_spi_packets",
    "replayed_packets",
    "packets_not_authenticated",
    "packets_not_decrypted",
    "selector_mismatch_packets",
    "expired_sa_packets",
    "nat_keepalive_packets",
    "non_esp_packets",
    "packets_dropped",
)


@dataclass(frozen=True, slots=True)
class SaStatistics:
    """Snapshot of one SA's counters."""

    spi: int
    protocol: str  #: "esp" or "ah"
    mode: str  #: "transport" or "tunnel"
    algorithm: str
    weak: bool  #: legacy algorithm (3DES/SHA-1)
    esn: bool
    encap: str | None  #: "udp" for NAT-T
    packets_out: int  #: packets protected by encapsulate
    bytes_out: int  #: inner bytes protected by encapsulate
    packets_in: int  #: packets accepted by decapsulate
    bytes_in: int  #: inner bytes accepted by decapsulate
    confidential_bytes_out: int
    confidential_bytes_in: int
    authenticated_bytes_out: int
    authenticated_bytes_in: int
    malformed_packets: int
    bad_spi_packets: int
    replayed_packets: int  #: "packets with replay detection"
    packets_not_authenticated: int  #: ICV failed
    packets_not_decrypted: int  #: bad padding / trailer after a valid ICV
    selector_mismatch_packets: int
    expired_sa_packets: int  #: refused because the SA reached a hard limit
    nat_keepalive_packets: int
    non_esp_packets: int
    packets_dropped: int  #: other drops
    sequence_out: int  #: last sequence number sent (64-bit with ESN)
    replay_top: int  #: highest sequence number accepted
    soft_expired: bool
    hard_expired: bool
    created: float  #: ``now`` at creation

    @property
    def errors(self) -> int:
        """Total packets rejected by this SA."""
        return sum(getattr(self, c) for c in ERROR_COUNTERS)


@dataclass(frozen=True, slots=True)
class GlobalStatistics:
    """Sum over all SAs plus drops that reached no SA."""

    sas: int
    weak_sas: int
    packets_out: int = 0
    bytes_out: int = 0
    packets_in: int = 0
    bytes_in: int = 0
    confidential_bytes_out: int = 0
    confidential_bytes_in: int = 0
    authenticated_bytes_out: int = 0
    authenticated_bytes_in: int = 0
    malformed_packets: int = 0
    bad_spi_packets: int = 0
    replayed_packets: int = 0
    packets_not_authenticated: int = 0
    packets_not_decrypted: int = 0
    selector_mismatch_packets: int = 0
    expired_sa_packets: int = 0
    nat_keepalive_packets: int = 0
    non_esp_packets: int = 0
    packets_dropped: int = 0
    no_sa_packets: int = 0  #: outbound packets with no SA yet (acquire)


_SUMMED = tuple(
    f.name for f in fields(GlobalStatistics) if f.name not in ("sas", "weak_sas", "no_sa_packets")
)


class GlobalCounters:
    """Drops counted outside any SA (e.g. UnknownSpi from the SAD lookup)."""

    __slots__ = ("counts",)

    def __init__(self) -> None:
        self.counts: dict[str, int] = dict.fromkeys(ERROR_COUNTERS + ("no_sa_packets",), 0)

    def count(self, error: PacketError) -> None:
        """Count ``error`` under its ``counter`` name."""
        name = error.counter
        self.counts[name] = self.counts.get(name, 0) + 1

    def snapshot(self, sa_stats: Iterable[SaStatistics]) -> GlobalStatistics:
        """Aggregate the SA snapshots with these counters."""
        totals = {name: self.counts.get(name, 0) for name in _SUMMED}
        n = weak = 0
        for s in sa_stats:
            n += 1
            weak += s.weak
            for name in _SUMMED:
                totals[name] += getattr(s, name)
        return GlobalStatistics(
            sas=n, weak_sas=weak, no_sa_packets=self.counts.get("no_sa_packets", 0), **totals
        )
