"""Prometheus metrics of a running daemon, read over the control socket on every scrape.

:class:`DaemonCollector` is a prometheus-client custom collector: each ``collect()``
asks the daemon for ``status`` and ``statistics`` (the same answers ``pyipsec status
--json`` and ``pyipsec stats --json`` print) and turns them into metric families:

* ``pyipsec_up`` 1 when the daemon answered, 0 when it did not (a scrape never raises:
  a daemon that is down, or an answer of the wrong shape, is ``pyipsec_up 0``);
* ``pyipsec_ike_sas``, ``pyipsec_child_sas``, ``pyipsec_recent_failures``,
  ``pyipsec_uptime_seconds`` and ``pyipsec_info{version}``;
* per IKE SA ("Main Mode"): established-for and rekey-in seconds;
* per Child SA ("Quick Mode"), labelled ``name, spi_in, spi_out, protocol, mode,
  algorithm, remote``: bytes and packets in and out (counters), rekey-in and
  installed-for seconds;
* every integer counter of ``statistics`` as ``pyipsec_<name>_total`` (the few that are
  levels rather than counts, such as ``active_child_sas``, as gauges ``pyipsec_<name>``);
* the collector's own ``pyipsec_exporter_scrapes_total`` and
  ``pyipsec_exporter_scrape_failures_total``.

Layering: this module talks to the daemon only through :class:`ControlClient`.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from pyipsec.control.client import ControlClient
from pyipsec.control.protocol import DEFAULT_SOCKET, ControlError
from pyipsec.errors import PyipsecError

PREFIX = "pyipsec"

#: labels of every per-Child-SA metric, in this order
CHILD_LABELS = ("name", "spi_in", "spi_out", "protocol", "mode", "algorithm", "remote")
#: labels of every per-IKE-SA metric
IKE_LABELS = ("name", "local", "remote", "local_id", "remote_id", "auth")

#: statistics that are levels (they go down as well as up): exported as gauges
GAUGE_STATISTICS = frozenset({"active_ike_sas", "active_child_sas", "held"})

_NAME_RE = re.compile(r"[^a-zA-Z0-9_]")


class MetricsError(PyipsecError):
    """The daemon's answer cannot be turned into metrics (wrong shape)."""


@dataclass(frozen=True)
class CollectorStatistics:
    """A snapshot of the collector's own counters."""

    scrapes: int  #: collect() calls
    failures: int  #: scrapes that yielded pyipsec_up 0
    last_error: str | None  #: why the last failed scrape failed (no secrets: daemon's text)


def metric_name(key: str) -> str:
    """``key`` made a valid Prometheus name fragment (lower case, ``_`` for the rest)."""
    name = _NAME_RE.sub("_", key.strip()).lower().strip("_")
    if not name:
        raise MetricsError(f"statistics key {key!r} has no usable name")
    if name[0].isdigit():
        name = "_" + name
    return name


def _label(value: Any) -> str:
    return "" if value is None else str(value)


def _number(value: Any) -> float | None:
    """A finite int/float (bool excluded) as float, anything else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _rows(status: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    rows = status.get(key) or []
    if not isinstance(rows, list) or not all(isinstance(r, Mapping) for r in rows):
        raise MetricsError(f"status field {key!r} is not a list of objects")
    return rows


def status_metrics(status: Mapping[str, Any]) -> list[Metric]:
    """The metric families of one ``status`` answer (see module docstring)."""
    if not isinstance(status, Mapping):
        raise MetricsError("status answer is not an object")
    ike_rows = _rows(status, "ike_sas")
    child_rows = _rows(status, "child_sas")
    failures = status.get("recent_failures") or []
    if not isinstance(failures, list):
        raise MetricsError("status field 'recent_failures' is not a list")
    out: list[Metric] = []

    info = InfoMetricFamily(f"{PREFIX}", "pyipsec daemon version", labels=["version"])
    info.add_metric([_label(status.get("version"))], {})
    out.append(info)
    uptime = _number(status.get("uptime"))
    if uptime is not None:
        out.append(GaugeMetricFamily(f"{PREFIX}_uptime_seconds", "daemon uptime", value=uptime))
    out.append(
        GaugeMetricFamily(
            f"{PREFIX}_ike_sas", "IKE SAs (Main Mode) the daemon holds", value=len(ike_rows)
        )
    )
    out.append(
        GaugeMetricFamily(
            f"{PREFIX}_child_sas", "Child SAs (Quick Mode) installed", value=len(child_rows)
        )
    )
    out.append(
        GaugeMetricFamily(
            f"{PREFIX}_recent_failures",
            "authentication/negotiation failures in the daemon's recent list",
            value=len(failures),
        )
    )

    ike_established = GaugeMetricFamily(
        f"{PREFIX}_ike_sa_established_seconds",
        "seconds since the IKE SA was established",
        labels=list(IKE_LABELS),
    )
    ike_rekey = GaugeMetricFamily(
        f"{PREFIX}_ike_sa_rekey_in_seconds",
        "seconds until the IKE SA is rekeyed (negative: overdue)",
        labels=list(IKE_LABELS),
    )
    remote_of: dict[str, str] = {}
    for row in ike_rows:
        labels = [
            _label(row.get("name")),
            _label(row.get("local_addr")),
            _label(row.get("remote_addr")),
            _label(row.get("local_id")),
            _label(row.get("remote_id")),
            _label(row.get("auth")),
        ]
        remote_of[f"{row.get('name')}[{row.get('handle')}]"] = _label(row.get("remote_addr"))
        if (value := _number(row.get("established_for"))) is not None:
            ike_established.add_metric(labels, value)
        if (value := _number(row.get("rekey_in"))) is not None:
            ike_rekey.add_metric(labels, value)
    out += [ike_established, ike_rekey]

    def child_family(suffix: str, text: str, counter: bool) -> Metric:
        kind = CounterMetricFamily if counter else GaugeMetricFamily
        return kind(f"{PREFIX}_child_sa_{suffix}", text, labels=list(CHILD_LABELS))

    counters = {
        key: child_family(key, f"{key.replace('_', ' ')} of the Child SA", True)
        for key in ("bytes_in", "bytes_out", "packets_in", "packets_out")
    }
    rekey = child_family(
        "rekey_in_seconds", "seconds until the Child SA is rekeyed (negative: overdue)", False
    )
    installed = child_family("installed_seconds", "seconds since the Child SA was installed", False)
    for row in child_rows:
        labels = [
            _label(row.get("name")),
            _label(row.get("spi_in")),
            _label(row.get("spi_out")),
            _label(row.get("protocol")),
            _label(row.get("mode")),
            _label(row.get("algorithm")),
            _label(row.get("remote") or remote_of.get(_label(row.get("ike_sa")), "")),
        ]
        for key, family in counters.items():
            family.add_metric(labels, _number(row.get(key)) or 0.0)
        if (value := _number(row.get("rekey_in"))) is not None:
            rekey.add_metric(labels, value)
        if (value := _number(row.get("installed_for"))) is not None:
            installed.add_metric(labels, value)
    out += [*counters.values(), rekey, installed]
    out += policy_metrics(status.get("policy"))
    return out


def policy_metrics(policy: Any) -> list[Metric]:
    """The applied policy of daemons with a ``policy:`` section (nothing without one)."""
    if policy is None:
        return []
    if not isinstance(policy, Mapping):
        raise MetricsError("status field 'policy' is not an object")
    info = InfoMetricFamily(
        f"{PREFIX}_policy",
        "the policy applied on this host (empty name: none applied)",
        labels=["name", "version", "source", "mode"],
    )
    info.add_metric([_label(policy.get(k)) for k in ("name", "version", "source", "mode")], {})
    out: list[Metric] = [info]
    out.append(
        GaugeMetricFamily(
            f"{PREFIX}_policy_error",
            "1 when the last policy update failed",
            value=1.0 if policy.get("last_error") else 0.0,
        )
    )
    if (entries := _number(policy.get("spd_entries"))) is not None:
        out.append(
            GaugeMetricFamily(
                f"{PREFIX}_policy_spd_entries", "SPD entries of the applied policy", value=entries
            )
        )
    if (applied := _number(policy.get("applied_at"))) is not None:
        out.append(
            GaugeMetricFamily(
                f"{PREFIX}_policy_applied_timestamp_seconds",
                "when the policy was applied (Unix time)",
                value=applied,
            )
        )
    return out


def statistics_metrics(statistics: Mapping[str, Any]) -> list[Metric]:
    """Every numeric entry of a ``statistics`` answer as a counter (levels as gauges)."""
    if not isinstance(statistics, Mapping):
        raise MetricsError("statistics answer is not an object")
    out: list[Metric] = []
    seen: set[str] = set()
    for key in sorted(statistics):
        value = _number(statistics[key])
        if value is None:
            continue
        name = metric_name(str(key))
        if name in seen:
            raise MetricsError(f"statistics keys collide on the metric name {name!r}")
        seen.add(name)
        text = f"daemon statistics counter {key}"
        if name in GAUGE_STATISTICS or name.startswith("active_"):
            out.append(GaugeMetricFamily(f"{PREFIX}_{name}", text, value=value))
        else:
            out.append(CounterMetricFamily(f"{PREFIX}_{name}", text, value=max(value, 0.0)))
    return out


class DaemonCollector(Collector):
    """Collects the daemon's metrics through its control socket on every scrape.

    ``client_factory`` returns an object with ``call(command)`` (a ControlClient by
    default); tests pass one that talks to a fake daemon.
    """

    def __init__(
        self,
        socket_path: str = DEFAULT_SOCKET,
        *,
        timeout: float = 5.0,
        client_factory: Callable[[], Any] | None = None,
    ) -> None:
        self.socket_path = socket_path
        self._factory = client_factory or (lambda: ControlClient(socket_path, timeout=timeout))
        self._lock = threading.Lock()
        self._scrapes = 0
        self._failures = 0
        self._last_error: str | None = None

    def describe(self) -> Iterable[Metric]:
        """Nothing: registering must not scrape the daemon (families vary per scrape)."""
        return []

    def collect(self) -> Iterator[Metric]:
        families: list[Metric] = []
        error: str | None = None
        try:
            client = self._factory()
            families += status_metrics(client.call("status"))
            families += statistics_metrics(client.call("statistics"))
        except (ControlError, MetricsError, OSError, ValueError) as exc:
            error = str(exc) or type(exc).__name__
            families = []
        with self._lock:
            self._scrapes += 1
            if error is not None:
                self._failures += 1
                self._last_error = error
            scrapes, failures = self._scrapes, self._failures
        yield GaugeMetricFamily(
            f"{PREFIX}_up",
            "1 when the daemon answered the control API",
            value=1.0 if error is None else 0.0,
        )
        yield from families
        yield CounterMetricFamily(
            f"{PREFIX}_exporter_scrapes", "scrapes of the daemon's metrics", value=scrapes
        )
        yield CounterMetricFamily(
            f"{PREFIX}_exporter_scrape_failures",
            "scrapes that could not reach the daemon or understand it",
            value=failures,
        )

    def statistics(self) -> CollectorStatistics:
        with self._lock:
            return CollectorStatistics(self._scrapes, self._failures, self._last_error)


def make_registry(collector: DaemonCollector) -> CollectorRegistry:
    """A registry holding only ``collector`` (no process/platform metrics of the caller)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


def exposition(collector: DaemonCollector) -> bytes:
    """One scrape in the Prometheus text format (``pyipsec metrics``, ``/metrics``)."""
    return generate_latest(make_registry(collector))
