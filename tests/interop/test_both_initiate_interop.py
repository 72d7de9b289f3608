"""pyipsec daemon and strongSwan's charon 5.9.8 initiate to each other at the same moment.

Each side then holds two IKE SAs with the other (one initiated, one answered). charon does
nothing about it; the daemon applies its rule (pyipsec.daemon.duplicates: the lower
(SPI_i, SPI_r) pair stays; it deletes the other after 2 s if it initiated it, after 10 s if
charon did). Checks: one IKE SA with one Child SA remains on both sides (the same SPIs),
the daemon counted one deleted duplicate, and a ping running through the tunnel the whole
time lost nothing. Uses the topology and helpers of test_traffic_interop.py.
"""

from __future__ import annotations

import signal
import subprocess
import time

from test_traffic_interop import INNER_A, INNER_B, pytestmark, setup, topo  # noqa: F401

from vici_client import ViciClient


def charon_ike_sas(charon) -> list[dict]:
    """Every IKE SA of charon (``Charon.list_sas`` keys them by name, one per name)."""
    client = ViciClient(charon.vici_path)
    try:
        events = client.streamed("list-sas", "list-sa", {"noblock": "yes"})
    finally:
        client.close()
    return [ike for event in events for ike in event.values()]


def test_both_initiate_one_ike_sa_remains(topo, interop) -> None:  # noqa: F811
    charon, daemon = setup(interop, topo, "aes128gcm16")
    pinger = topo.b.spawn(["ping", "-n", "-i", "0.1", "-I", INNER_B, INNER_A],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        charon.initiate_background("t-c")
        daemon.call("up", name="t-c")
        most = 0
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            ours, theirs = daemon.call("status"), charon_ike_sas(charon)
            most = max(most, len(ours["ike_sas"]))
            if most == 2 and len(ours["ike_sas"]) == len(theirs) == 1:
                if len(ours["child_sas"]) == 1 and len(theirs[0].get("child-sas", {})) == 1:
                    break
            time.sleep(0.5)
        time.sleep(1.0)
    finally:
        pinger.send_signal(signal.SIGINT)
        out = pinger.communicate(timeout=10)[0].decode()
    logs = daemon.log_text()[-4000:]
    assert most == 2, f"no duplicate IKE SA arose:\n{logs}"
    (ike,), theirs = ours["ike_sas"], charon_ike_sas(charon)
    assert len(theirs) == 1, logs
    assert (ike["spi_i"], ike["spi_r"]) == (theirs[0]["initiator-spi"], theirs[0]["responder-spi"])
    (child,) = ours["child_sas"]
    (their_child,) = theirs[0]["child-sas"].values()
    assert child["spi_in"] == their_child["spi-out"] and child["spi_out"] == their_child["spi-in"]
    assert daemon.call("statistics")["duplicate_ike_sas_deleted"] == 1
    summary = [line for line in out.splitlines() if "packets transmitted" in line]
    assert summary and " 0% packet loss" in summary[0], out[-500:]
