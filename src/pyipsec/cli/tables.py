"""Plain-text tables for the monitor, in the spirit of an IP security monitor.

"Main Mode" lists IKE SAs, "Quick Mode" lists Child SAs. The input is the JSON the
control API returns (see :mod:`pyipsec.control.protocol`), so the tables and
``--json`` always show the same data.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from pyipsec.control.labels import STAT_LABELS


def human_bytes(count: int | None) -> str:
    if count is None:
        return "-"
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(count)  # pragma: no cover


def human_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds < 0:
        return "due"
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"


def render_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Left-aligned columns separated by two spaces, with a rule under the header."""
    cells = [[str(h) for h in headers]] + [["-" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _ts(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or "-"
    return "-" if value is None else str(value)


def main_mode_table(ike_sas: Sequence[dict[str, Any]]) -> str:
    headers = [
        "NAME",
        "STATE",
        "LOCAL",
        "REMOTE",
        "LOCAL ID",
        "REMOTE ID",
        "AUTH",
        "ENCRYPTION",
        "INTEGRITY",
        "PRF",
        "KE",
        "ESTABLISHED",
        "REKEY IN",
    ]
    rows = [
        [
            sa.get("name"),
            sa.get("state"),
            sa.get("local_addr"),
            sa.get("remote_addr"),
            sa.get("local_id"),
            sa.get("remote_id"),
            sa.get("auth"),
            sa.get("encryption"),
            sa.get("integrity") or "-",
            sa.get("prf"),
            sa.get("ke"),
            human_seconds(sa.get("established_for")) + " ago"
            if sa.get("established_for") is not None
            else "-",
            human_seconds(sa.get("rekey_in")),
        ]
        for sa in ike_sas
    ]
    return render_table(headers, rows)


def quick_mode_table(child_sas: Sequence[dict[str, Any]]) -> str:
    headers = [
        "NAME",
        "IKE SA",
        "STATE",
        "MODE",
        "PROTO",
        "SPI IN",
        "SPI OUT",
        "ALGORITHM",
        "LOCAL TS",
        "REMOTE TS",
        "BYTES IN",
        "BYTES OUT",
        "PKTS IN",
        "PKTS OUT",
        "REKEY IN",
    ]
    rows = [
        [
            sa.get("name"),
            sa.get("ike_sa"),
            sa.get("state"),
            sa.get("mode"),
            sa.get("protocol"),
            sa.get("spi_in"),
            sa.get("spi_out"),
            sa.get("algorithm"),
            _ts(sa.get("local_ts")),
            _ts(sa.get("remote_ts")),
            human_bytes(sa.get("bytes_in")),
            human_bytes(sa.get("bytes_out")),
            sa.get("packets_in"),
            sa.get("packets_out"),
            human_seconds(sa.get("rekey_in")),
        ]
        for sa in child_sas
    ]
    return render_table(headers, rows)


def stats_table(stats: dict[str, Any]) -> str:
    known = [(label, stats[key]) for key, label in STAT_LABELS if key in stats]
    extra = [
        (key, value)
        for key, value in sorted(stats.items())
        if key not in dict(STAT_LABELS) and isinstance(value, (int, float))
    ]
    return render_table(["COUNTER", "VALUE"], known + extra)
