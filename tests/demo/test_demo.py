"""Tests of ``make demo`` (demo/run.py) and its building blocks (demo/demolab.py, demodb.py).

* pcap parsing and the summary logic run anywhere;
* the set-up, phase 1 (plain text visible between A and B) and the cleanup run in network
  namespaces (``netns``), with a tag of their own so they never touch a ``make demo`` run;
* a run killed without cleanup is cleaned up by the next one (stale namespaces, processes,
  work directory);
* the full demo (phase 2 needs ``pyipsec daemon``) runs as a subprocess (``slow``).
"""

from __future__ import annotations

import importlib.util
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "demo"
sys.path.insert(0, str(DEMO))

import demolab  # noqa: E402
from demolab import Lab, read_pcap  # noqa: E402


def _load_run():
    spec = importlib.util.spec_from_file_location("pyi_demo_run", DEMO / "run.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


run = _load_run()
TAG = f"-t{os.getpid() % 100000}"


def _namespaces() -> set[str]:
    try:
        return set(os.listdir("/run/netns"))
    except FileNotFoundError:
        return set()


# ---------------------------------------------------------------------- no root needed


def _frame(src: bytes, dst: bytes, proto: int, payload: bytes) -> bytes:
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, 0, 64, proto, 0, src, dst)
    return b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip + payload


def _pcap(frames: list[bytes]) -> bytes:
    out = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    for f in frames:
        out += struct.pack("<IIII", 0, 0, len(f), len(f)) + f
    return out


def test_read_pcap_parses_ipv4_tcp_and_esp() -> None:
    a, b = bytes([10, 77, 0, 10]), bytes([10, 77, 0, 20])
    tcp = struct.pack("!HHIIBBHHH", 40000, 5432, 0, 0, 0x50, 0x18, 0, 0, 0) + b"SELECT 1"
    esp = b"\x00\x00\x10\x01" + b"\x00\x00\x00\x01" + b"\xaa" * 32
    arp = b"\xff" * 6 + b"\x04" * 6 + b"\x08\x06" + b"\x00" * 28
    packets = read_pcap(_pcap([_frame(a, b, 6, tcp), arp, _frame(b, a, 50, esp)]))
    assert len(packets) == 2  # ARP is not IPv4
    first, second = packets
    assert (first.src, first.dst, first.proto, first.sport, first.dport) == (
        "10.77.0.10",
        "10.77.0.20",
        6,
        40000,
        5432,
    )
    assert b"SELECT 1" in first.data
    assert first.between("10.77.0.20", "10.77.0.10")
    assert second.proto == 50 and second.sport == 0
    assert second.describe() == "10.77.0.20 > 10.77.0.10 ESP"


def test_read_pcap_big_endian_and_truncated_record() -> None:
    a, b = bytes([10, 77, 0, 30]), bytes([10, 77, 0, 10])
    frame = _frame(a, b, 17, struct.pack("!HHHH", 500, 500, 8, 0))
    blob = struct.pack(">IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    blob += struct.pack(">IIII", 0, 0, len(frame), len(frame)) + frame
    assert [(p.proto, p.dport) for p in read_pcap(blob)] == [(17, 500)]
    assert read_pcap(blob[:-10]) == []  # the last record is cut short: ignored
    assert read_pcap(b"") == []
    with pytest.raises(demolab.LabError):
        read_pcap(b"not a pcap file at all, certainly")


def test_snippet_and_checks() -> None:
    assert run.snippet(b"\x00\x01SELECT id\x00x", b"SELECT") == "SELECT id.x"
    assert run.snippet(b"nothing", b"SELECT") == ""
    checks = run.Checks()
    assert not checks.passed  # no checks at all is not a pass
    checks.add("one", True)
    assert checks.passed
    checks.add("two", False, "why")
    assert not checks.passed
    assert "FAIL  two" in checks.summary() and "1/2 checks passed" in checks.summary()


def test_phase2_fails_clearly_without_daemon(monkeypatch: pytest.MonkeyPatch) -> None:
    """When ``pyipsec daemon`` does not exist, phase 2 is a FAIL naming why, not a fake."""
    monkeypatch.setattr(
        run,
        "pyipsec_argv",
        lambda: [sys.executable, "-c", "import sys; sys.exit('No such command daemon')"],
    )
    scenario = run.Scenario(TAG)  # nothing is created before setup()
    checks = run.Checks()
    scenario.phase2(checks)
    assert [(name, ok) for name, ok, _ in checks.results] == [
        ("phase 2: `pyipsec daemon` is available", False)
    ]
    assert "No such command daemon" in checks.results[0][2]
    assert not checks.passed


# ---------------------------------------------------------------------- namespaces


@pytest.mark.netns
def test_phase1_shows_plaintext_and_cleanup_removes_everything() -> None:
    scenario = run.Scenario(TAG)
    checks = run.Checks()
    try:
        scenario.setup()
        assert set(scenario.lab.namespaces) <= _namespaces()
        scenario.phase1(checks)
        pids = list(scenario.lab.history["pids"])
        workdir = scenario.lab.workdir
    finally:
        scenario.close()
    failed = [(n, d) for n, ok, d in checks.results if not ok]
    assert not failed
    assert {n for n, _, _ in checks.results} >= {
        "phase 1: client gets /orders from server-a",
        "phase 1: SQL text crosses A <-> B in clear",
        "phase 1: row data (marker) crosses A <-> B in clear",
    }
    assert scenario.lab.leftovers() == []
    assert not set(scenario.lab.namespaces) & _namespaces()
    assert not os.path.exists(workdir)
    assert pids and not any(os.path.exists(f"/proc/{pid}") for pid in pids)


_CRASH = """
import os, signal, sys
sys.path.insert(0, sys.argv[1])
from demolab import Lab
lab = Lab(tag=sys.argv[2])
lab.build()
sleeper = lab.spawn(lab.hosts["client"].ns, ["sleep", "300"], log=lab.path("sleep.log"))
print(lab.workdir, sleeper.pid, flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # crash: no cleanup at all
"""


@pytest.mark.netns
def test_stale_run_is_cleaned_up_by_next_run() -> None:
    tag = TAG + "s"
    fresh = Lab(tag=tag)
    try:
        res = subprocess.run(
            [sys.executable, "-c", _CRASH, str(DEMO), tag],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert res.returncode == -9, res.stderr
        workdir, pid = res.stdout.split()
        assert set(fresh.namespaces) <= _namespaces()  # the crash left them behind
        assert os.path.isdir(workdir) and os.path.exists(f"/proc/{pid}")
        removed = fresh.build()
        assert workdir in removed
        assert set(fresh.namespaces) <= set(removed)
        assert not os.path.exists(workdir)
        deadline = time.monotonic() + 5
        while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
            time.sleep(0.05)  # killed by pid with its namespace (reaped by init)
        assert not os.path.exists(f"/proc/{pid}")
        ping = ["ping", "-c1", "-W2", "10.77.0.10"]
        assert fresh.run(fresh.hosts["client"].ns, ping, check=False).returncode == 0
    finally:
        fresh.close()
        demolab.remove_stale(tag, fresh.namespaces)  # if the test failed before build()
    assert fresh.leftovers() == []
    assert not set(fresh.namespaces) & _namespaces()


@pytest.mark.netns
def test_second_run_with_same_tag_is_refused() -> None:
    first = Lab(tag=TAG + "l")
    try:
        first.build()
        second = Lab(tag=TAG + "l")
        with pytest.raises(demolab.LabError, match="in progress"):
            second.build()
        assert set(first.namespaces) <= _namespaces()  # the first run was not disturbed
    finally:
        first.close()
    assert first.leftovers() == []


def _daemon_missing() -> str:
    res = subprocess.run(
        [*run.pyipsec_argv(), "daemon", "--help"], capture_output=True, text=True, timeout=60
    )
    return "" if res.returncode == 0 else "`pyipsec daemon` is not in this tree yet"


@pytest.mark.netns
@pytest.mark.slow
def test_full_demo_passes() -> None:
    why = _daemon_missing()
    if why:
        pytest.skip(why)
    tag = TAG + "f"
    try:
        res = subprocess.run(
            [sys.executable, str(DEMO / "run.py"), f"--tag={tag}"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        left = set(Lab(tag=tag).namespaces) & _namespaces()
    finally:  # a timeout kills the demo with SIGKILL: remove what it left
        demolab.remove_stale(tag, Lab(tag=tag).namespaces)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    assert "demo PASSED" in res.stdout
    for line in (
        "PASS  phase 1: SQL text crosses A <-> B in clear",
        "PASS  phase 2: A <-> B carries only ESP and IKE",
        "PASS  phase 2: no SQL text between A and B",
        "PASS  phase 2: client <-> server-a is left alone (plain HTTP)",
        "PASS  cleanup: namespaces, processes and files removed",
    ):
        assert line in res.stdout.splitlines()
    assert "Main Mode (IKE SAs): 1" in res.stdout and "Quick Mode (Child SAs): 1" in res.stdout
    assert not left


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    """contrib/pyipsec.service is a valid unit (systemd-analyze verify), with the hardening."""
    import shutil

    text = (ROOT / "contrib" / "pyipsec.service").read_text()
    for line in (
        "Type=simple",
        "Restart=on-failure",
        "ExecStart=/usr/local/bin/pyipsec daemon --config /etc/pyipsec/pyipsec.yaml",
        "CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_RAW CAP_NET_BIND_SERVICE",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "DeviceAllow=/dev/net/tun rw",
    ):
        assert line in text.splitlines()
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed")
    script = Path(sys.executable).parent / "pyipsec"
    unit = tmp_path / "pyipsec.service"
    unit.write_text(text.replace("/usr/local/bin/pyipsec", str(script)))
    res = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0 and not res.stderr.strip(), res.stderr
