"""Interop run bookkeeping: the result matrix and the results folder (issue 6).

* Every test with a ``side`` parameter ("pyipsec" or "charon": who initiates) is one cell of
  the matrix printed at the end of the run, in the spirit of the QUIC interop runner: rows
  are scenarios (test name plus its other parameters), columns the initiator side.
* The ``interop`` fixture collects what a scenario runs (charons, pyipsec drivers) and
  captures the veth of the pyipsec namespace; when the test fails, both sides' logs, the
  charon configs (no keys) and the pcap are kept under results/interop/<test>/ (git-ignored).
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

RESULTS = Path(__file__).resolve().parents[2] / "results" / "interop"
SIDES = ("pyipsec", "charon")
_MATRIX = pytest.StashKey[dict]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_MATRIX] = {}


def _cell(item: pytest.Item) -> tuple[str, str] | None:
    params = getattr(getattr(item, "callspec", None), "params", {})
    side = params.get("side")
    if side not in SIDES:
        return None
    name = getattr(item, "originalname", item.name).removeprefix("test_")
    rest = [f"{k}={v}" for k, v in params.items() if k != "side"]
    return (name + (f" [{', '.join(rest)}]" if rest else ""), side)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)
    cell = _cell(item)
    if cell is None:
        return
    matrix = item.config.stash[_MATRIX]
    if rep.when == "call" or (rep.when == "setup" and not rep.passed):
        if rep.skipped:
            status = "skip"
        elif rep.passed:
            status = "ok"
        else:
            status = "FAIL"
        matrix[cell] = status
    elif rep.when == "teardown" and rep.failed:
        matrix[cell] = "FAIL"


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    matrix: dict = config.stash.get(_MATRIX, {})
    if not matrix:
        return
    rows = sorted({row for row, _ in matrix}, key=lambda r: list(dict.fromkeys(
        row for row, _ in matrix)).index(r))  # fmt: skip
    width = max(len(r) for r in rows + ["scenario"])
    heads = [f"{s} initiates" for s in SIDES]
    tr = terminalreporter
    tr.section("interop matrix: pyipsec vs strongSwan charon 5.9.8")
    tr.write_line(f"{'scenario':<{width}}  " + "  ".join(f"{h:<17}" for h in heads))
    for row in rows:
        cells = [matrix.get((row, side), "-") for side in SIDES]
        tr.write_line(f"{row:<{width}}  " + "  ".join(f"{c:<17}" for c in cells))
    failed = sum(v == "FAIL" for v in matrix.values())
    passed = sum(v == "ok" for v in matrix.values())
    tr.write_line(f"{passed} ok, {failed} failed; failures kept under {RESULTS}")


class InteropRun:
    """What one scenario started: charons and drivers to save when it fails."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.charons: list = []
        self.drivers: list = []
        self.captures: list = []  # (process, pcap path)
        self.workdir: Path | None = None

    def charon(self, charon):
        self.charons.append(charon)
        return charon

    def driver(self, driver):
        self.drivers.append(driver)
        return driver

    def daemon(self, daemon):
        """A ``pyipsec daemon`` run (anything with save_artifacts/close), kept like a
        charon."""
        return self.charon(daemon)

    def stop_capture(self) -> Path | None:
        """Stop the capture now and return its pcap (kept for the results folder)."""
        from strongswan import stop_process

        for proc, _ in self.captures:
            stop_process(proc)
        return self.captures[0][1] if self.captures else None

    def save(self, failure: str = "") -> Path:
        target = RESULTS / self.name
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True, exist_ok=True)
        (target / "failure.txt").write_text(failure)
        for charon in self.charons:
            try:
                charon.save_artifacts(target)
            except Exception as exc:  # noqa: BLE001 - keep what we can
                (target / f"{charon.ns}-error.txt").write_text(repr(exc))
        for driver in self.drivers:
            driver.save_artifacts(target)
        for _, pcap in self.captures:
            if pcap.exists():
                shutil.copy(pcap, target / pcap.name)
        return target


@pytest.fixture(scope="module")
def topo():
    """Namespaces pyi-ai / pyi-bi / pyi-ci (tests/netns.py, tag "i") for one test module:
    charon in A (10.99.1.1), pyipsec in B (10.99.1.2)."""
    from netns import Topology

    with Topology(tag="i") as t:
        yield t


@pytest.fixture
def interop(request: pytest.FixtureRequest, tmp_path: Path):
    """An :class:`InteropRun`; capture on the pyipsec side's veth when ``topo`` is used."""
    from strongswan import start_capture, stop_process

    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
    run = InteropRun(name)
    topo = request.getfixturevalue("topo") if "topo" in request.fixturenames else None
    if topo is not None and shutil.which("tcpdump"):
        pcap = tmp_path / "pyipsec-side.pcap"
        try:
            # 256 bytes of each packet: headers, and the start of every payload, where a
            # leaked plaintext marker (repeated every 64 bytes) would show
            run.captures.append((start_capture(topo.b.ns, "eth0", pcap, snaplen=256), pcap))
        except RuntimeError:
            pass
    yield run
    for proc, _ in run.captures:
        stop_process(proc)
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        run.save(rep.longreprtext[-20000:])
    for driver in run.drivers:
        driver.close()
    for charon in run.charons:
        charon.close()
    for _, pcap in run.captures:  # kept only in results/ for failures
        pcap.unlink(missing_ok=True)
