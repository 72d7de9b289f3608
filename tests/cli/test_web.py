"""``pyipsec web``, ``pyipsec web-token`` and ``pyipsec metrics`` through click."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from controlthread import ServerThread
from pyipsec.cli.main import cli

STATUS = {
    "version": "0.1.0",
    "ike_sas": [{"name": "web-db", "remote_addr": "192.0.2.2", "handle": 1}],
    "child_sas": [
        {"name": "sql", "ike_sa": "web-db[1]", "spi_in": "c0ffee01", "spi_out": "c0ffee02"}
    ],
    "recent_failures": [],
}


@pytest.fixture
def daemon(tmp_path) -> Iterator[str]:
    async def status(args: dict[str, Any]) -> Any:
        return STATUS

    async def statistics(args: dict[str, Any]) -> Any:
        return {"bad_spi_packets": 2}

    path = str(tmp_path / "control.sock")
    with ServerThread(path, {"status": status, "statistics": statistics}):
        yield path


def test_metrics_prints_one_scrape(daemon: str) -> None:
    result = CliRunner().invoke(cli, ["metrics", "--socket", daemon], catch_exceptions=False)
    assert result.exit_code == 0
    samples = {s.name: s for f in text_string_to_metric_families(result.output) for s in f.samples}
    assert samples["pyipsec_up"].value == 1
    assert samples["pyipsec_bad_spi_packets_total"].value == 2
    assert samples["pyipsec_child_sa_bytes_in_total"].labels["spi_in"] == "c0ffee01"
    assert samples["pyipsec_child_sa_bytes_in_total"].labels["remote"] == "192.0.2.2"


def test_metrics_with_daemon_down(tmp_path) -> None:
    result = CliRunner().invoke(cli, ["metrics", "--socket", str(tmp_path / "x.sock")])
    assert result.exit_code == 0 and "pyipsec_up 0.0" in result.output


def test_web_token(tmp_path) -> None:
    path = str(tmp_path / "token")
    result = CliRunner().invoke(cli, ["web-token", path])
    assert result.exit_code == 0 and os.stat(path).st_mode & 0o777 == 0o600
    token = open(path).read().strip()
    assert token not in result.output
    again = CliRunner().invoke(cli, ["web-token", path])
    assert again.exit_code != 0 and "exists" in str(again.exception)


def _run_main(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pyipsec", *args], capture_output=True, text=True, timeout=60
    )


def test_web_refuses_non_loopback_without_token_in_one_line() -> None:
    completed = _run_main("web", "--listen", "0.0.0.0:0")
    assert completed.returncode == 1
    assert completed.stderr.strip().startswith("pyipsec: error: listen: refusing")
    assert "Traceback" not in completed.stderr


def test_web_serves_until_interrupted(daemon: str) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "pyipsec", "web", "--listen", "127.0.0.1:0", "--socket", daemon],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("pyipsec web monitor on http://127.0.0.1:")
        url = line.split(" on ", 1)[1].split()[0]
        with urllib.request.urlopen(url, timeout=10) as response:
            page = response.read().decode()
        assert "c0ffee01" in page
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)
