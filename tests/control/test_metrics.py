"""The Prometheus collector against a fake daemon on a real control socket."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from controlthread import ServerThread
from pyipsec.control.metrics import (
    CHILD_LABELS,
    DaemonCollector,
    MetricsError,
    exposition,
    make_registry,
    metric_name,
    statistics_metrics,
    status_metrics,
)
from pyipsec.control.protocol import ControlError

IKE = {
    "name": "web-db",
    "handle": 4,
    "state": "ESTABLISHED",
    "local_addr": "192.0.2.1",
    "remote_addr": "192.0.2.2",
    "local_id": "a.example",
    "remote_id": 'b "quoted" \\ id\nnewline',
    "auth": "psk",
    "established_for": 120.5,
    "rekey_in": 3000.0,
}


def child(spi_in: str, spi_out: str, bytes_in: int, **extra: Any) -> dict[str, Any]:
    row = {
        "name": "sql",
        "ike_sa": "web-db[4]",
        "state": "INSTALLED",
        "mode": "transport",
        "protocol": "esp",
        "spi_in": spi_in,
        "spi_out": spi_out,
        "algorithm": "aes128gcm16",
        "bytes_in": bytes_in,
        "packets_in": 10,
        "bytes_out": 2000,
        "packets_out": 20,
        "installed_for": 5.0,
        "rekey_in": -2.0,
    }
    row.update(extra)
    return row


STATUS = {
    "version": "0.1.0",
    "uptime": 99.0,
    "ike_sas": [IKE],
    "child_sas": [child("c0000001", "d0000001", 1000), child("c0000002", "d0000002", 5)],
    "recent_failures": [{"when": "x", "peer": "p", "reason": "r", "notify": None}],
}
STATISTICS = {
    "active_ike_sas": 1,
    "active_child_sas": 2,
    "ike_sa_additions": 3,
    "bad_spi_packets": 7,
    "held": 4,
    "bytes_in_total": 11,  # a key already ending in _total stays one _total
    "policy": "not a number",
    "flag": True,
}


@pytest.fixture
def daemon(tmp_path) -> Iterator[tuple[str, dict[str, Any]]]:
    answers: dict[str, Any] = {"status": STATUS, "statistics": STATISTICS}

    def handler(name: str):
        async def handle(args: dict[str, Any]) -> Any:
            if isinstance(answers[name], Exception):
                raise answers[name]
            return answers[name]

        return handle

    path = str(tmp_path / "control.sock")
    with ServerThread(path, {"status": handler("status"), "statistics": handler("statistics")}):
        yield path, answers


def scrape(collector: DaemonCollector) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = exposition(collector).decode()
    families = list(text_string_to_metric_families(text))
    names = [f.name for f in families]
    assert len(names) == len(set(names)), "a metric family appears twice"
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}


def test_scrape_of_a_running_daemon(daemon) -> None:
    path, _ = daemon
    samples = scrape(DaemonCollector(path))
    assert samples[("pyipsec_up", ())] == 1
    assert samples[("pyipsec_info", (("version", "0.1.0"),))] == 1
    assert samples[("pyipsec_uptime_seconds", ())] == 99
    assert samples[("pyipsec_ike_sas", ())] == 1
    assert samples[("pyipsec_child_sas", ())] == 2
    assert samples[("pyipsec_recent_failures", ())] == 1
    labels = (
        ("algorithm", "aes128gcm16"),
        ("mode", "transport"),
        ("name", "sql"),
        ("protocol", "esp"),
        ("remote", "192.0.2.2"),
        ("spi_in", "c0000001"),
        ("spi_out", "d0000001"),
    )
    assert samples[("pyipsec_child_sa_bytes_in_total", labels)] == 1000
    assert samples[("pyipsec_child_sa_bytes_out_total", labels)] == 2000
    assert samples[("pyipsec_child_sa_packets_in_total", labels)] == 10
    assert samples[("pyipsec_child_sa_packets_out_total", labels)] == 20
    assert samples[("pyipsec_child_sa_rekey_in_seconds", labels)] == -2
    assert samples[("pyipsec_child_sa_installed_seconds", labels)] == 5
    second = dict(labels) | {"spi_in": "c0000002", "spi_out": "d0000002"}
    key = ("pyipsec_child_sa_bytes_in_total", tuple(sorted(second.items())))
    assert samples[key] == 5
    ike = [k for k in samples if k[0] == "pyipsec_ike_sa_rekey_in_seconds"]
    assert len(ike) == 1 and dict(ike[0][1])["remote_id"] == IKE["remote_id"]
    assert samples[("pyipsec_ike_sa_established_seconds", ike[0][1])] == 120.5


def test_every_numeric_statistic_is_exported(daemon) -> None:
    path, _ = daemon
    samples = scrape(DaemonCollector(path))
    assert samples[("pyipsec_ike_sa_additions_total", ())] == 3
    assert samples[("pyipsec_bad_spi_packets_total", ())] == 7
    assert samples[("pyipsec_bytes_in_total", ())] == 11
    # levels are gauges without _total
    assert samples[("pyipsec_active_child_sas", ())] == 2
    assert samples[("pyipsec_held", ())] == 4
    assert not any(name.startswith(("pyipsec_policy", "pyipsec_flag")) for name, _ in samples)


def test_daemon_down_is_up_zero_not_an_exception(tmp_path) -> None:
    collector = DaemonCollector(str(tmp_path / "absent.sock"))
    samples = scrape(collector)
    assert samples[("pyipsec_up", ())] == 0
    assert ("pyipsec_child_sas", ()) not in samples
    assert samples[("pyipsec_exporter_scrape_failures_total", ())] == 1
    stats = collector.statistics()
    assert stats.scrapes == 1 and stats.failures == 1
    assert stats.last_error is not None and "not running" in stats.last_error


def test_daemon_error_and_wrong_shape_are_up_zero(daemon) -> None:
    path, answers = daemon
    collector = DaemonCollector(path)
    answers["statistics"] = ControlError("busy")
    assert scrape(collector)[("pyipsec_up", ())] == 0
    answers["statistics"] = STATISTICS
    answers["status"] = {"ike_sas": "nope"}
    samples = scrape(collector)
    assert samples[("pyipsec_up", ())] == 0
    assert ("pyipsec_ike_sas", ()) not in samples  # nothing half-built
    answers["status"] = STATUS
    samples = scrape(collector)
    assert samples[("pyipsec_up", ())] == 1
    assert samples[("pyipsec_exporter_scrapes_total", ())] == 3
    assert samples[("pyipsec_exporter_scrape_failures_total", ())] == 2
    assert "is not a list of objects" in (collector.statistics().last_error or "")


def test_client_factory_and_registry_do_not_scrape_on_register() -> None:
    calls: list[str] = []

    class Fake:
        def call(self, command: str) -> Any:
            calls.append(command)
            return STATUS if command == "status" else {}

    collector = DaemonCollector(client_factory=Fake)
    registry = make_registry(collector)
    assert calls == []
    assert registry.get_sample_value("pyipsec_child_sas") == 2
    assert calls == ["status", "statistics"]


def test_status_metrics_rejects_bad_shapes() -> None:
    with pytest.raises(MetricsError):
        status_metrics([])  # type: ignore[arg-type]
    with pytest.raises(MetricsError):
        status_metrics({"child_sas": [1, 2]})
    with pytest.raises(MetricsError):
        status_metrics({"recent_failures": "x"})
    with pytest.raises(MetricsError):
        statistics_metrics({"a-b": 1, "a_b": 2})
    families = status_metrics({})
    assert {f.name for f in families} >= {"pyipsec_ike_sas", "pyipsec_child_sas"}


def test_child_remote_label_falls_back_to_empty() -> None:
    families = status_metrics({"child_sas": [child("1", "2", 3, ike_sa="gone[9]")]})
    family = next(f for f in families if f.name == "pyipsec_child_sa_bytes_in")
    assert family.samples[0].labels["remote"] == ""
    assert tuple(family.samples[0].labels) == CHILD_LABELS


def test_metric_name() -> None:
    assert metric_name("Bad-SPI packets") == "bad_spi_packets"
    assert metric_name("4xx") == "_4xx"
    with pytest.raises(MetricsError):
        metric_name("---")


def test_policy_metrics() -> None:
    from prometheus_client.core import CollectorRegistry

    policy = {
        "name": "web-db",
        "version": 3,
        "source": "/etc/pyipsec/policy.yaml",
        "mode": "file",
        "applied_at": 1700000000.0,
        "spd_entries": 4,
        "last_error": "signature check failed",
    }

    class Fake:
        def call(self, command: str) -> Any:
            return {"policy": policy} if command == "status" else {}

    registry: CollectorRegistry = make_registry(DaemonCollector(client_factory=Fake))
    labels = {"name": "web-db", "version": "3", "source": policy["source"], "mode": "file"}
    assert registry.get_sample_value("pyipsec_policy_info", labels) == 1
    assert registry.get_sample_value("pyipsec_policy_error") == 1
    assert registry.get_sample_value("pyipsec_policy_spd_entries") == 4
    assert registry.get_sample_value("pyipsec_policy_applied_timestamp_seconds") == 1.7e9
    policy["last_error"] = None
    assert registry.get_sample_value("pyipsec_policy_error") == 0
    assert status_metrics({}) == status_metrics({"policy": None})
    with pytest.raises(MetricsError):
        status_metrics({"policy": "x"})
