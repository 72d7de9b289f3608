"""The monitor page: Main Mode and Quick Mode tables, statistics and recent failures.

Server-rendered HTML with inline CSS, no script and no external asset; the page
refreshes itself with ``<meta http-equiv="refresh">``. Every value that comes from the
daemon passes through :func:`esc` (``html.escape`` with quotes), because identities,
connection names and failure reasons are chosen by peers and administrators.
"""

from __future__ import annotations

import html
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pyipsec.control.labels import STAT_LABELS as MONITOR_LABELS

# counters shown first, in the words of an IP security monitor; the rest follow sorted
STAT_LABELS: dict[str, str] = dict(MONITOR_LABELS)

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;
margin:0;background:#f4f6f8;color:#1d2630}
header{background:#1f3a5f;color:#fff;padding:14px 24px;display:flex;align-items:baseline;
gap:18px;flex-wrap:wrap}
header h1{font-size:20px;margin:0;font-weight:600}
header .meta{opacity:.85;font-size:13px}
main{padding:16px 24px 32px}
.cards{display:flex;gap:12px;flex-wrap:wrap;margin-bottom:18px}
.card{background:#fff;border:1px solid #d8dee6;border-radius:6px;padding:10px 16px;min-width:150px}
.card .n{font-size:22px;font-weight:600}
.card .l{font-size:12px;color:#5b6776;text-transform:uppercase;letter-spacing:.04em}
.card.bad .n{color:#b3261e}
section{background:#fff;border:1px solid #d8dee6;border-radius:6px;margin-bottom:18px;
overflow-x:auto}
section h2{font-size:15px;margin:0;padding:10px 14px;border-bottom:1px solid #d8dee6;
background:#eef2f6}
section h2 .count{color:#5b6776;font-weight:400}
table{border-collapse:collapse;width:100%}
th,td{padding:5px 10px;vertical-align:middle;text-align:left;white-space:nowrap;
border-bottom:1px solid #edf0f3}
th{font-size:12px;color:#5b6776;font-weight:600}
td{font-size:13px}
tbody tr:nth-child(even){background:#f9fafb}
td.num{text-align:right;font-variant-numeric:tabular-nums}
code,.mono{font-family:"DejaVu Sans Mono",Menlo,Consolas,monospace;font-size:12px}
.empty{padding:12px 14px;color:#5b6776}
.state{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;
background:#e4e8ee;color:#2b3642}
.state.ok{background:#dcf3e3;color:#17643a}
.state.warn{background:#fdf0d5;color:#8a5a00}
.policy{background:#fff;border:1px solid #d8dee6;border-radius:6px;padding:8px 14px;
margin-bottom:18px}
.policy .err{color:#8c1d18;margin-left:12px}
.banner{background:#fde8e7;border:1px solid #f3b7b3;color:#8c1d18;border-radius:6px;
padding:10px 14px;margin-bottom:18px}
.grid{display:grid;grid-template-columns:minmax(0,1fr) minmax(0,1fr);gap:18px}
@media (max-width:1000px){.grid{grid-template-columns:1fr}}
footer{color:#5b6776;font-size:12px;padding:0 24px 24px}
"""


def esc(value: Any) -> str:
    """``value`` as HTML text: ``None`` as a dash, everything else escaped."""
    if value is None or value == "":
        return "-"
    if isinstance(value, (list, tuple)):
        return ", ".join(esc(v) for v in value) or "-"
    return html.escape(str(value), quote=True)


def human_bytes(count: Any) -> str:
    if isinstance(count, bool) or not isinstance(count, (int, float)):
        return "-"
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(count)  # pragma: no cover


def human_seconds(seconds: Any) -> str:
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        return "-"
    seconds = int(seconds)
    if seconds < 0:
        return "due"
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    if seconds < 172800:
        return f"{seconds // 3600}h {(seconds % 3600) // 60:02d}m"
    return f"{seconds // 86400}d {(seconds % 86400) // 3600}h"


def _state(value: Any) -> str:
    text = str(value or "-").upper()
    kind = "ok" if text in ("ESTABLISHED", "INSTALLED") else "warn" if text != "-" else ""
    return f'<span class="state {kind}">{esc(value)}</span>'


Column = tuple[str, Callable[[Mapping[str, Any]], str], str]  # header, cell html, css class


def _cell(key: str) -> Callable[[Mapping[str, Any]], str]:
    return lambda row: esc(row.get(key))


def _mono(key: str) -> Callable[[Mapping[str, Any]], str]:
    return lambda row: f"<code>{esc(row.get(key))}</code>"


MAIN_MODE: list[Column] = [
    ("Name", _cell("name"), ""),
    ("State", lambda r: _state(r.get("state")), ""),
    ("Local", _mono("local_addr"), ""),
    ("Remote", _mono("remote_addr"), ""),
    ("Local ID", _cell("local_id"), ""),
    ("Remote ID", _cell("remote_id"), ""),
    ("Auth", _cell("auth"), ""),
    ("Encryption", _cell("encryption"), ""),
    ("Integrity", _cell("integrity"), ""),
    ("PRF", _cell("prf"), ""),
    ("Key exchange", _cell("ke"), ""),
    (
        "Role",
        lambda r: "-" if "initiator" not in r else "initiator" if r["initiator"] else "responder",
        "",
    ),
    (
        "SPI i / r",
        lambda r: f"<code>{esc(r.get('spi_i'))}<br>{esc(r.get('spi_r'))}</code>",
        "",
    ),
    ("Established", lambda r: esc(human_seconds(r.get("established_for"))), "num"),
    ("Rekey in", lambda r: esc(human_seconds(r.get("rekey_in"))), "num"),
]

QUICK_MODE: list[Column] = [
    ("Name", _cell("name"), ""),
    ("IKE SA", _cell("ike_sa"), ""),
    ("State", lambda r: _state(r.get("state")), ""),
    ("Mode", _cell("mode"), ""),
    ("Proto", _cell("protocol"), ""),
    ("SPI in", _mono("spi_in"), ""),
    ("SPI out", _mono("spi_out"), ""),
    ("Algorithm", _cell("algorithm"), ""),
    ("Local TS", _mono("local_ts"), ""),
    ("Remote TS", _mono("remote_ts"), ""),
    ("Bytes in", lambda r: esc(human_bytes(r.get("bytes_in"))), "num"),
    ("Bytes out", lambda r: esc(human_bytes(r.get("bytes_out"))), "num"),
    ("Packets in", _cell("packets_in"), "num"),
    ("Packets out", _cell("packets_out"), "num"),
    ("Rekey in", lambda r: esc(human_seconds(r.get("rekey_in"))), "num"),
]

FALLBACKS: list[Column] = [
    ("Host", _cell("remote"), ""),
    ("Connection", _cell("connection"), ""),
    ("Child", _cell("child"), ""),
    ("In clear for", lambda row: esc(human_seconds(row.get("for"))), ""),
]

FAILURES: list[Column] = [
    ("When", _cell("when"), ""),
    ("Peer", _cell("peer"), ""),
    ("Notify", _cell("notify"), ""),
    ("Reason", _cell("reason"), ""),
]


def _table(columns: Sequence[Column], rows: Sequence[Any], empty: str) -> str:
    rows = [r for r in rows if isinstance(r, Mapping)]
    if not rows:
        return f'<div class="empty">{esc(empty)}</div>'
    head = "".join(f'<th class="{cls}">{esc(title)}</th>' for title, _, cls in columns)
    body = "".join(
        "<tr>"
        + "".join(f'<td class="{cls}">{cell(row)}</td>' for _, cell, cls in columns)
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _section(title: str, count: int | None, content: str, anchor: str) -> str:
    counter = f' <span class="count">({count})</span>' if count is not None else ""
    return f'<section id="{anchor}"><h2>{esc(title)}{counter}</h2>{content}</section>'


def _statistics_table(statistics: Mapping[str, Any]) -> str:
    numeric = {
        k: v
        for k, v in statistics.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    ordered = [(STAT_LABELS[k], numeric[k]) for k in STAT_LABELS if k in numeric]
    ordered += [
        (k.replace("_", " "), v) for k, v in sorted(numeric.items()) if k not in STAT_LABELS
    ]
    if not ordered:
        return '<div class="empty">no counters</div>'
    body = "".join(
        f'<tr><td>{esc(label)}</td><td class="num">{esc(f"{value:,}")}</td></tr>'
        for label, value in ordered
    )
    head = '<thead><tr><th>Counter</th><th class="num">Value</th></tr></thead>'
    return f"<table>{head}<tbody>{body}</tbody></table>"


def _card(label: str, value: str, bad: bool = False) -> str:
    cls = "card bad" if bad else "card"
    return (
        f'<div class="{cls}"><div class="n">{esc(value)}</div>'
        f'<div class="l">{esc(label)}</div></div>'
    )


def _policy(policy: Any) -> str:
    """One line about the applied policy (daemons with a ``policy:`` section only)."""
    if not isinstance(policy, Mapping):
        return ""
    if policy.get("name"):
        text = f"<strong>Policy</strong> {esc(policy.get('name'))}"
        if policy.get("version") is not None:
            text += f" version {esc(policy.get('version'))}"
    else:
        text = "<strong>Policy</strong> none applied"
    text += f" &middot; from <code>{esc(policy.get('source'))}</code>"
    applied = policy.get("applied_at")
    if isinstance(applied, (int, float)) and not isinstance(applied, bool):
        text += (
            f" &middot; applied {esc(time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(applied)))}"
        )
    if isinstance(policy.get("spd_entries"), int):
        text += f" &middot; {esc(policy.get('spd_entries'))} SPD entries"
    if policy.get("last_error"):
        text += f'<span class="err">last error: {esc(policy.get("last_error"))}</span>'
    return f'<div class="policy">{text}</div>'


def _total(rows: Sequence[Any], keys: Sequence[str]) -> int:
    """Sum of the integer ``keys`` over ``rows`` (anything else counts 0)."""
    total = 0
    for row in rows:
        if isinstance(row, Mapping):
            for key in keys:
                value = row.get(key)
                if isinstance(value, int) and not isinstance(value, bool):
                    total += value
    return total


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def render_page(
    status: Any,
    statistics: Any,
    *,
    error: str | None = None,
    refresh: int = 5,
    now: float | None = None,
) -> str:
    """The whole monitor page for one ``status`` and ``statistics`` answer.

    ``error`` (the daemon could not be reached) shows a banner instead of the tables.
    ``refresh`` seconds between reloads (0: none). ``now`` stamps the page (tests).
    """
    status = status if isinstance(status, Mapping) else {}
    statistics = statistics if isinstance(statistics, Mapping) else {}
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))
    ike_sas = _list(status.get("ike_sas"))
    child_sas = _list(status.get("child_sas"))
    failures = _list(status.get("recent_failures"))
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
    ]
    if refresh > 0:
        parts.append(f'<meta http-equiv="refresh" content="{int(refresh)}">')
    parts += [
        "<title>pyipsec - IP Security Monitor</title>",
        f"<style>{CSS}</style></head><body>",
        "<header><h1>IP Security Monitor</h1>",
    ]
    if status.get("version") is not None:
        parts.append(f'<span class="meta">pyipsec {esc(status.get("version"))}</span>')
    if status.get("uptime") is not None:
        uptime = esc(human_seconds(status.get("uptime")))
        parts.append(f'<span class="meta">daemon up {uptime}</span>')
    parts += [
        f'<span class="meta">updated {esc(stamp)}'
        + (f", every {int(refresh)}s" if refresh > 0 else "")
        + "</span></header><main>",
    ]
    if error is not None:
        parts.append(f'<div class="banner"><strong>Daemon unreachable:</strong> {esc(error)}</div>')
    else:
        in_bytes = _total(child_sas, ("bytes_in",))
        out_bytes = _total(child_sas, ("bytes_out",))
        failed = _total([statistics], ("authentication_failures", "negotiation_failures"))
        bad_packets = _total(
            [statistics],
            (
                "bad_spi_packets",
                "packets_not_decrypted",
                "packets_not_authenticated",
                "replayed_packets",
            ),
        )
        parts.append('<div class="cards">')
        parts += [
            _card("Main Mode SAs", str(len(ike_sas))),
            _card("Quick Mode SAs", str(len(child_sas))),
            _card("Bytes in", human_bytes(in_bytes)),
            _card("Bytes out", human_bytes(out_bytes)),
            _card("IKE failures", str(failed), bad=failed > 0),
            _card("Rejected packets", str(bad_packets), bad=bad_packets > 0),
        ]
        parts.append("</div>")
        parts.append(_policy(status.get("policy")))
        parts.append(
            _section(
                "Main Mode (IKE SAs)",
                len(ike_sas),
                _table(MAIN_MODE, ike_sas, "no IKE SA"),
                "main-mode",
            )
        )
        parts.append(
            _section(
                "Quick Mode (Child SAs)",
                len(child_sas),
                _table(QUICK_MODE, child_sas, "no Child SA"),
                "quick-mode",
            )
        )
        fallbacks = _list(status.get("fallbacks"))
        if fallbacks:
            parts.append(
                _section(
                    "In clear after unsecured fallback",
                    len(fallbacks),
                    _table(FALLBACKS, fallbacks, "none"),
                    "fallbacks",
                )
            )
        parts.append('<div class="grid">')
        parts.append(_section("Statistics", None, _statistics_table(statistics), "statistics"))
        parts.append(
            _section(
                "Recent failures",
                len(failures),
                _table(FAILURES, failures, "no failure"),
                "failures",
            )
        )
        parts.append("</div>")
    parts.append(
        "</main><footer>JSON: <code>/api/status</code>, <code>/api/statistics</code>"
        " &middot; Prometheus: <code>/metrics</code></footer></body></html>"
    )
    return "\n".join(parts)
