"""The SA tables the daemon keeps for the monitor ("Main Mode" / "Quick Mode").

Rows are updated from IKE events by :class:`pyipsec.daemon.core.Daemon`;
:func:`status_report` renders them, with the data plane's per-SPI counters, into the JSON
the control API returns (and ``pyipsec status``, the web page and the metrics read).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pyipsec import __version__


@dataclass
class IkeSaRow:
    """One IKE SA as the monitor shows it ("Main Mode")."""

    handle: int
    name: str
    local_addr: str
    remote_addr: str
    local_id: str
    remote_id: str
    auth: str
    proposal: str
    initiator: bool
    spi_i: str
    spi_r: str
    established: float
    rekey_at: float | None
    state: str = "ESTABLISHED"
    remote_port: int = 0  #: the peer's IKE port when the SA came up (500, 4500, a NAT's)


@dataclass
class ChildSaRow:
    """One Child SA pair as the monitor shows it ("Quick Mode")."""

    ike_sa: int
    name: str
    protocol: str
    mode: str
    spi_in: int
    spi_out: int
    algorithm: str
    esn: bool
    encap: bool
    local_ts: list[str]
    remote_ts: list[str]
    installed: float
    rekey_at: float
    state: str = "INSTALLED"


@dataclass
class Counters:
    ike_sa_additions: int = 0
    ike_sa_deletions: int = 0
    child_sa_additions: int = 0
    child_sa_deletions: int = 0
    ike_rekeys: int = 0
    child_rekeys: int = 0
    authentication_failures: int = 0
    negotiation_failures: int = 0
    acquires: int = 0
    reloads: int = 0
    failed_reloads: int = 0
    nat_keepalives_sent: int = 0
    unsecured_fallbacks: int = 0  #: hosts that got clear text after failed negotiation
    duplicate_ike_sas_deleted: int = 0  #: duplicates of a simultaneous initiation we deleted


@dataclass
class Failure:
    when: float
    peer: str
    reason: str
    notify: str | None = None


_KE_WORDS = {
    "modp2048",
    "modp3072",
    "modp4096",
    "ecp256",
    "ecp384",
    "ecp521",
    "x25519",
    "x448",
    "curve25519",
    "curve448",
    "mlkem512",
    "mlkem768",
    "mlkem1024",
}


def status_report(
    *,
    now: float,
    started: float,
    ike_sas: Mapping[int, IkeSaRow],
    child_sas: Mapping[int, ChildSaRow],
    failures: Iterable[Failure],
    per_spi: Mapping[int, Mapping[str, int]],
    fallbacks: Iterable[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """IKE SAs, Child SAs (with traffic counters), hosts talked to in clear after an
    unsecured fallback and recent failures as plain JSON."""
    ike_rows = []
    for row in ike_sas.values():
        parts = row.proposal.split("-")
        ike_rows.append(
            {
                "name": row.name,
                "handle": row.handle,
                "state": row.state,
                "local_addr": row.local_addr,
                "remote_addr": row.remote_addr,
                "local_id": row.local_id,
                "remote_id": row.remote_id,
                "auth": row.auth,
                "initiator": row.initiator,
                "spi_i": row.spi_i,
                "spi_r": row.spi_r,
                "proposal": row.proposal,
                "encryption": parts[0] if parts else None,
                "integrity": next(
                    (p for p in parts[1:] if not p.startswith("prf") and p not in _KE_WORDS),
                    None,
                ),
                "prf": next((p for p in parts if p.startswith("prf")), None),
                "ke": "-".join(p for p in parts if p in _KE_WORDS) or None,
                "established_for": now - row.established,
                "rekey_in": None if row.rekey_at is None else row.rekey_at - now,
            }
        )
    child_rows = []
    for child in child_sas.values():
        ike = ike_sas.get(child.ike_sa)
        stats_in = per_spi.get(child.spi_in, {})
        stats_out = per_spi.get(child.spi_out, {})
        child_rows.append(
            {
                "name": child.name,
                "ike_sa": f"{ike.name}[{ike.handle}]" if ike else str(child.ike_sa),
                "state": child.state,
                "mode": child.mode,
                "protocol": child.protocol,
                "encap": child.encap,
                "esn": child.esn,
                "spi_in": f"{child.spi_in:08x}",
                "spi_out": f"{child.spi_out:08x}",
                "algorithm": child.algorithm,
                "local_ts": child.local_ts,
                "remote_ts": child.remote_ts,
                "bytes_in": stats_in.get("bytes_in", 0),
                "packets_in": stats_in.get("packets_in", 0),
                "bytes_out": stats_out.get("bytes_out", 0),
                "packets_out": stats_out.get("packets_out", 0),
                "installed_for": now - child.installed,
                "rekey_in": child.rekey_at - now,
            }
        )
    return {
        "version": __version__,
        "uptime": now - started,
        "ike_sas": ike_rows,
        "child_sas": child_rows,
        "fallbacks": [
            {
                "connection": f["connection"],
                "child": f["child"],
                "remote": f["remote"],
                "for": now - float(f["since"]),
            }
            for f in fallbacks
        ],
        "recent_failures": [
            {
                "when": time.strftime("%H:%M:%S", time.localtime(f.when)),
                "peer": f.peer,
                "reason": f.reason,
                "notify": f.notify,
            }
            for f in failures
        ],
    }
