"""Two real daemons in namespaces pyi-a / pyi-b (pyi-c is the bystander).

Everything here runs the real stack: ``pyipsec daemon`` processes, IKEv2 over UDP 500,
the TUN data plane, nftables, captures on the veth.
"""

from __future__ import annotations

import signal
import time

import pytest

from netns import Topology, start_transfer
from netns_daemons import MARKER, wire_summary, write_pair

pytestmark = [pytest.mark.netns]

SIZE = 20 * 1024 * 1024


@pytest.fixture
def topo():
    with Topology(tag="d") as topology:
        yield topology


def _check_protected_transfer(topo, a, b, dst: str, src: str, size: int = SIZE,
                              port: int = 5001) -> None:  # fmt: skip
    cap = topo.capture(topo.b, "eth0")
    transfer = start_transfer(topo.b, topo.a, dst, size, port=port, marker=MARKER)
    sent, received = transfer.wait(timeout=180)
    frames = cap.stop_raw()
    assert sent == received, "the transfer arrived damaged"
    assert sent[0] == size
    protos, marker = wire_summary(frames, src, dst)
    assert marker is False, "plaintext marker seen on the wire"
    assert protos and protos <= {50, 17}, f"unexpected protocols on the wire: {protos}"
    assert 50 in protos


@pytest.mark.parametrize(
    ("family", "mode", "auth"),
    [(4, "transport", "psk"), (6, "tunnel", "psk"), (4, "tunnel", "p256"),
     (6, "transport", "ed25519")],
)  # fmt: skip
def test_first_packet_brings_up_sas_and_protects_traffic(topo, family, mode, auth) -> None:
    a, b = write_pair(topo, family=family, mode=mode, auth=auth)
    a.start()
    b.start()
    dst = topo.b.addr4 if family == 4 else topo.b.addr6
    src = topo.a.addr4 if family == 4 else topo.a.addr6
    # the first pings are held while IKE runs; then they pass
    assert topo.a.ping(dst, count=5, timeout=3), a.read_log() + b.read_log()
    (child_a,) = a.wait_child()
    (child_b,) = b.wait_child()
    assert child_a["spi_in"] == child_b["spi_out"] and child_a["mode"] == mode
    _check_protected_transfer(topo, a, b, dst, src)
    status = a.status()
    assert status["ike_sas"][0]["auth"] == ("psk" if auth == "psk" else "pubkey")
    assert status["child_sas"][0]["bytes_out"] > SIZE // 2 or status["child_sas"][0]["bytes_in"] > 0
    # C still talks to B in the clear, unaffected
    c_dst = topo.b_c4 if family == 4 else topo.b_c6
    assert topo.c.ping(c_dst, count=2)
    # the CLI's tables and JSON agree with the control API
    table = a.cli("status").stdout
    assert child_a["spi_in"] in table and "Main Mode" in table and "Quick Mode" in table


def test_up_command_and_statistics(topo) -> None:
    a, b = write_pair(topo)
    a.start()
    b.start()
    out = a.cli("up", "web-db").stdout
    assert "initiating" in out
    a.wait_child()
    b.wait_child()
    stats = a.call("statistics")
    assert stats["active_ike_sas"] == 1 and stats["active_child_sas"] == 1
    assert "Active Quick Mode SAs" in a.cli("stats").stdout


def test_wrong_psk_no_sa_and_no_plaintext(topo) -> None:
    a, b = write_pair(topo, psk_b="a different secret entirely")
    a.start()
    b.start()
    cap = topo.capture(topo.b, "eth0")
    assert not topo.a.ping(topo.b.addr4, count=3, timeout=1)
    a.cli("up", "web-db")
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if (
            a.call("statistics")["authentication_failures"]
            or b.call("statistics")["authentication_failures"]
        ):
            break
        time.sleep(0.2)
    frames = cap.stop_raw()
    protos, _ = wire_summary(frames, topo.a.addr4, topo.b.addr4)
    assert protos <= {17}, f"only IKE may cross, saw {protos}"
    failures = a.status()["recent_failures"] + b.status()["recent_failures"]
    assert any("AUTHENTICATION_FAILED" in (f.get("notify") or "") or "auth" in f["reason"].lower()
               for f in failures)  # fmt: skip
    assert not a.status()["child_sas"] and not b.status()["child_sas"]


def test_bad_reload_refused_sas_untouched(topo) -> None:
    a, b = write_pair(topo)
    a.start()
    b.start()
    assert topo.a.ping(topo.b.addr4, count=5, timeout=3)
    (before,) = a.wait_child()
    with open(a.config) as handle:
        good = handle.read()
    with open(a.config, "w") as handle:
        handle.write(good.replace("mode: transport", "mode: tunel"))
    res = a.cli("reload", check=False)
    assert res.returncode != 0
    assert "children.db.mode" in res.stderr and "\n" not in res.stderr.strip()
    (after,) = a.wait_child()
    assert after["spi_in"] == before["spi_in"]
    assert topo.a.ping(topo.b.addr4, count=2)


def test_killed_daemon_leaks_nothing_and_sas_come_back(topo) -> None:
    a, b = write_pair(topo, conn_extra={"dpd_delay": "2s"}, start_a="start")
    a.start()
    b.start()
    (first,) = b.wait_child()
    cap = topo.capture(topo.b, "eth0")
    transfer = start_transfer(topo.b, topo.a, topo.b.addr4, 200 * 1024 * 1024,
                              marker=MARKER, rate=4_000_000, timeout=60)  # fmt: skip
    time.sleep(1.0)
    a.stop(signal.SIGKILL)
    time.sleep(1.0)
    a.start()
    # A comes back (start_action start, INITIAL_CONTACT); B replaces the dead SAs
    (fresh,) = b.wait_child(exclude={first["spi_in"]}, timeout=30)
    assert fresh["spi_in"] != first["spi_in"]
    time.sleep(1.0)
    try:
        transfer.sender.kill()
        transfer.receiver.kill()
    finally:
        frames = cap.stop_raw()
    protos, marker = wire_summary(frames, topo.a.addr4, topo.b.addr4)
    assert marker is False, "plaintext leaked while the daemon was down"
    assert protos <= {50, 17}
    assert topo.a.ping(topo.b.addr4, count=3, timeout=2)


def test_rekeying_under_load(topo) -> None:
    a, b = write_pair(
        topo,
        child_extra={"rekey_time": "3s", "life_time": "6s"},
        conn_extra={"rekey_time": "8s"},
    )
    a.start()
    b.start()
    assert topo.a.ping(topo.b.addr4, count=5, timeout=3)
    (first,) = a.wait_child()
    cap = topo.capture(topo.b, "eth0", snaplen=200)
    transfer = start_transfer(topo.b, topo.a, topo.b.addr4, 100 * 1024 * 1024,
                              marker=MARKER, rate=8_000_000, timeout=120)  # fmt: skip
    sent, received = transfer.wait(timeout=150)
    frames = cap.stop_raw()
    assert sent == received
    protos, marker = wire_summary(frames, topo.a.addr4, topo.b.addr4)
    assert marker is False and protos <= {50, 17}
    stats_a, stats_b = a.call("statistics"), b.call("statistics")
    assert stats_a["child_rekeys"] + stats_b["child_rekeys"] >= 2
    assert stats_a["ike_rekeys"] + stats_b["ike_rekeys"] >= 1
    now_a = {c["spi_in"] for c in a.call("status")["child_sas"]}
    assert first["spi_in"] not in now_a and now_a
    # B lists new SPIs too (rekeys keep running every few seconds, so A's and B's lists,
    # read at different moments, need not show the same pair)
    now_b_out = {c["spi_out"] for c in b.call("status")["child_sas"]}
    assert first["spi_in"] not in now_b_out and now_b_out


def test_forced_udp_encapsulation(topo) -> None:
    """encap: true on one side: IKE floats to 4500 and ESP runs in UDP, no NAT needed."""
    a, b = write_pair(topo, mode="tunnel", conn_extra={"encap": True})
    a.start()
    b.start()
    assert topo.a.ping(topo.b.addr4, count=5, timeout=3), a.read_log() + b.read_log()
    (child,) = a.wait_child()
    assert child["encap"] is True
    cap = topo.capture(topo.b, "eth0")
    transfer = start_transfer(topo.b, topo.a, topo.b.addr4, 5 * 1024 * 1024, marker=MARKER)
    sent, received = transfer.wait(timeout=120)
    frames = cap.stop_raw()
    assert sent == received
    protos, marker = wire_summary(frames, topo.a.addr4, topo.b.addr4)
    assert protos == {17} and marker is False, protos
    assert a.call("status")["ike_sas"][0]["remote_addr"] == topo.b.addr4


def test_both_sides_start_at_once_one_ike_sa_remains(topo) -> None:
    """Both daemons start the connection (``start_action: start``) at the same moment:
    each first holds two IKE SAs to the other (one initiated, one answered). A 5 MB
    hash-checked transfer starts as soon as the first Child SA is up and runs while the
    duplicate is resolved; at the end each side lists one IKE SA and one Child SA pair
    (the same pair), and the wire never carried the plaintext."""
    import threading

    a, b = write_pair(topo, start_a="start", start_b="start")
    errors: list[BaseException] = []

    def start(run) -> None:
        try:
            run.start()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(run,)) for run in (a, b)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors, errors
    cap = topo.capture(topo.b, "eth0")
    a.wait_child()
    b.wait_child()
    transfer = start_transfer(topo.b, topo.a, topo.b.addr4, 5 * 1024 * 1024,
                              marker=MARKER, rate=1_000_000, timeout=60)  # fmt: skip
    resolved_during = False
    try:
        deadline = time.monotonic() + 60
        while transfer.sender.poll() is None and time.monotonic() < deadline:
            deleted = [r.call("statistics")["duplicate_ike_sas_deleted"] for r in (a, b)]
            if sum(deleted) and transfer.sender.poll() is None:
                resolved_during = True
                break
            time.sleep(0.2)
        sent, received = transfer.wait(timeout=90)
    finally:
        frames = cap.stop_raw()
    assert resolved_during, "the duplicate was not resolved while the transfer ran"
    assert sent == received, "the transfer arrived damaged"
    assert sent[0] == 5 * 1024 * 1024
    protos, marker = wire_summary(frames, topo.a.addr4, topo.b.addr4)
    assert marker is False, "plaintext marker seen on the wire"
    assert protos and protos <= {50, 17}, f"unexpected protocols on the wire: {protos}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        status_a, status_b = a.status(), b.status()
        if all(len(s["ike_sas"]) == 1 and len(s["child_sas"]) == 1
               for s in (status_a, status_b)):  # fmt: skip
            break
        time.sleep(0.2)
    logs = a.read_log() + b.read_log()
    (ike_a,), (ike_b,) = status_a["ike_sas"], status_b["ike_sas"]
    (child_a,), (child_b,) = status_a["child_sas"], status_b["child_sas"]
    assert (ike_a["spi_i"], ike_a["spi_r"]) == (ike_b["spi_i"], ike_b["spi_r"]), logs
    assert child_a["spi_in"] == child_b["spi_out"] and child_a["spi_out"] == child_b["spi_in"]
    stats_a, stats_b = a.call("statistics"), b.call("statistics")
    # the duplicate existed (each side brought up two IKE SAs) and one side deleted it
    assert stats_a["ike_sa_additions"] == 2 and stats_b["ike_sa_additions"] == 2, logs
    assert stats_a["duplicate_ike_sas_deleted"] + stats_b["duplicate_ike_sas_deleted"] == 1
    assert "Duplicate Main Mode SAs deleted" in a.cli("stats").stdout
    assert topo.a.ping(topo.b.addr4, count=2)
