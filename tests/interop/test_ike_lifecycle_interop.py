"""IKEv2 interop with strongSwan's charon 5.9.8 over the life of the SAs (issue 6):
Child SA and IKE SA rekeying by either side (also simultaneous, and with PFS), charon's
reauthentication, deletion from either side, dead peer detection of a killed peer.

Same layout and conventions as test_ike_interop.py (helpers in ikeinterop.py).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ikedriver import IkeDriver  # noqa: E402
from ikeinterop import (  # noqa: E402
    SIDES,
    B,
    cert_setup,
    charon_conn,
    establish,
    ike_spis,
    installed,
    psk_pair,
    py_peer,
    start,
    vici_rekey,
    wait_until,
)  # fmt: skip

import strongswan  # noqa: E402
from pyipsec.ike import (  # noqa: E402
    ChildSaDeleted,
    ChildSaInstalled,
    ChildSaRekeyed,
    EndpointConfig,
    IkeSaDown,
    IkeSaRekeyed,
    IkeSaUp,
)
from vici_client import ViciClient  # noqa: E402

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(not os.path.exists(strongswan.CHARON), reason="strongSwan not installed"),
]


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("by", ["pyipsec", "charon"])
@pytest.mark.parametrize("what", ["child", "ike"])
def test_rekey(what: str, by: str, side: str, topo, interop) -> None:
    """A short lifetime on the ``by`` side makes it rekey the Child SA / IKE SA."""
    auth, psks = psk_pair()
    conn_kw: dict = {}
    child_kw: dict = {}
    peer_kw: dict = {}
    py_child_kw: dict = {}
    if by == "charon":
        if what == "child":
            child_kw = {"rekey_time": "3s", "life_time": "60s", "rand_time": "0s"}
        else:
            conn_kw = {"rekey_time": "3s", "over_time": "60s", "rand_time": "0s"}
    elif what == "child":
        py_child_kw = {"rekey_time": 3.0, "life_time": 60.0}
    else:
        peer_kw = {"rekey_time": 3.0, "over_time": 60.0}
    peer = py_peer(local_auth=auth, remote_auth=auth, child_kw=py_child_kw, **peer_kw)
    conn = charon_conn(child_kw=child_kw, **conn_kw)
    charon, drv = start(interop, topo, conn, psks, peer)
    up, inst, ike, child = establish(side, charon, drv, peer)
    if what == "child":
        ev = drv.wait_event(ChildSaRekeyed, timeout=15)
        assert (ev.old_inbound_spi, ev.old_outbound_spi) == (inst.inbound_spi, inst.outbound_spi)
        wait_until(
            lambda: [int(sa["spi-in"], 16) for sa in installed(charon)] == [ev.new_outbound_spi],
            what="charon to hold only the new Child SA", log=charon.log_text,
        )  # fmt: skip
        (now_child,) = installed(charon)
        assert int(now_child["spi-out"], 16) == ev.new_inbound_spi
        drv.wait_event(ChildSaDeleted, lambda e: e.inbound_spi == inst.inbound_spi)
        assert "rekeyed" in charon.log_text().lower() or "rekeying" in charon.log_text()
    else:
        ev = drv.wait_event(IkeSaRekeyed, timeout=15)
        assert (ev.old_spi_i, ev.old_spi_r) == (up.spi_i, up.spi_r)
        wait_until(
            lambda: ike_spis(charon) == [(ev.new_spi_i, ev.new_spi_r)],
            what="charon to hold only the new IKE SA", log=charon.log_text,
        )  # fmt: skip
        (now_child,) = installed(charon)  # the Child SA moved over unchanged
        assert int(now_child["spi-in"], 16) == inst.outbound_spi
        assert drv.endpoint.statistics().counter("ike_rekeys") >= 1
    assert not drv.events_of(IkeSaDown)


@pytest.mark.parametrize("side", SIDES)
def test_simultaneous_child_rekey(side: str, topo, interop) -> None:
    """Both sides start rekeying the Child SA before seeing the other's request (RFC 7296
    2.8.1): pyipsec's loop is held while charon's CREATE_CHILD_SA arrives, then it sends
    its own. Exactly one new Child SA survives, the same on both sides."""
    auth, psks = psk_pair()
    peer = py_peer(local_auth=auth, remote_auth=auth)
    charon, drv = start(interop, topo, charon_conn(), psks, peer)
    up, inst, ike, child = establish(side, charon, drv, peer)

    holding = threading.Event()

    def held_rekey(ep, now):  # runs on pyipsec's loop thread: nothing is received meanwhile
        holding.set()
        time.sleep(1.0)
        ep.rekey_child(up.ike_sa, "t-c", time.time())

    hold = threading.Thread(target=drv.call, args=(held_rekey,))
    hold.start()
    assert holding.wait(5)  # the loop is now asleep
    vici_rekey(charon, child="t-c")  # its CREATE_CHILD_SA waits in pyipsec's socket
    hold.join()
    ev = drv.wait_event(ChildSaRekeyed, timeout=15)
    wait_until(
        lambda: [int(sa["spi-in"], 16) for sa in installed(charon)] == [ev.new_outbound_spi],
        what="one surviving Child SA on charon", log=charon.log_text,
    )  # fmt: skip
    (survivor,) = installed(charon)
    assert int(survivor["spi-out"], 16) == ev.new_inbound_spi
    log = charon.log_text()
    assert "collision" in log.lower(), log[-3000:]
    assert drv.endpoint.statistics().counter("rekey_collisions") >= 1
    time.sleep(1.0)  # no late surprises: still exactly one Child SA each
    assert len(installed(charon)) == 1
    live = drv.call(lambda ep, now: ep.child_sas(up.ike_sa))
    assert [(c.inbound_spi, c.outbound_spi) for c in live if c.state == "installed"] == [
        (ev.new_inbound_spi, ev.new_outbound_spi)
    ], live


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("by", ["pyipsec", "charon"])
def test_delete(by: str, side: str, topo, interop) -> None:
    """``by`` deletes the Child SA (the IKE SA stays), then the IKE SA; the other side
    follows each time."""
    auth, psks = psk_pair()
    peer = py_peer(local_auth=auth, remote_auth=auth)
    charon, drv = start(interop, topo, charon_conn(), psks, peer)
    up, inst, ike, child = establish(side, charon, drv, peer)
    if by == "pyipsec":
        drv.call(lambda ep, now: ep.delete_child(up.ike_sa, "t-c", now))
    else:
        charon.terminate(child="t-c")
    gone = drv.wait_event(ChildSaDeleted)
    assert (gone.inbound_spi, gone.outbound_spi) == (inst.inbound_spi, inst.outbound_spi)
    assert gone.reason == ("deleted" if by == "pyipsec" else "deleted by peer")
    wait_until(lambda: charon.child_sas(block=True) == [], what="charon to drop the Child SA",
               log=charon.log_text)  # fmt: skip
    assert len(charon.list_sas(block=True)) == 1 and not drv.events_of(IkeSaDown)
    if by == "pyipsec":
        drv.call(lambda ep, now: ep.delete_ike(up.ike_sa, now))
    else:
        charon.terminate(ike="t")
    down = drv.wait_event(IkeSaDown)
    assert down.reason == ("deleted" if by == "pyipsec" else "deleted by peer")
    wait_until(lambda: charon.list_sas(block=True) == {}, what="charon to drop the IKE SA",
               log=charon.log_text)  # fmt: skip
    assert drv.call(lambda ep, now: ep.statistics()).ike_sas == 0
    log = charon.log_text()
    if by == "pyipsec":
        assert "received DELETE for ESP CHILD_SA" in log and "received DELETE for IKE_SA" in log
    else:
        assert "sending DELETE for ESP CHILD_SA" in log and "sending DELETE for IKE_SA" in log


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("killed", ["charon", "pyipsec"])
def test_dpd(killed: str, side: str, topo, interop) -> None:
    """The survivor's dead peer detection notices a killed peer (no DELETE was sent) and
    removes its SAs."""
    auth, psks = psk_pair()
    peer = py_peer(local_auth=auth, remote_auth=auth, dpd_delay=1.0,
                   retransmit_timeout=0.5, retransmit_tries=2)  # fmt: skip
    conn = charon_conn(dpd_delay="1s")
    charon, drv = start(interop, topo, conn, psks, peer, retransmit=strongswan.FAST_RETRANSMIT)
    up, inst, ike, child = establish(side, charon, drv, peer)
    if killed == "charon":
        charon.kill()
        down = drv.wait_event(IkeSaDown, timeout=20)
        assert down.reason == "dead peer"
        assert drv.events_of(ChildSaDeleted)
        stats = drv.endpoint.statistics()
        assert stats.counter("dpd_sent") >= 1 and stats.counter("timeouts") >= 1
        assert stats.ike_sas == 0
    else:
        time.sleep(1.5)  # a DPD round trip or two while both live
        assert len(charon.list_sas(block=True)) == 1
        drv.kill()
        charon.wait_for_log("giving up after", timeout=20)
        wait_until(lambda: charon.list_sas(block=True) == {}, what="charon to drop the SAs",
                   log=charon.log_text)  # fmt: skip
        assert "sending DPD request" in charon.log_text()


@pytest.mark.parametrize("side", SIDES)
def test_simultaneous_ike_rekey(side: str, topo, interop) -> None:
    """Both sides rekey the IKE SA at once (RFC 7296 2.8.2): the IKE SA with the lowest
    nonce is redundant and deleted; one new IKE SA survives, the same on both sides, and
    the Child SA moves to it unchanged."""
    auth, psks = psk_pair()
    peer = py_peer(local_auth=auth, remote_auth=auth)
    charon, drv = start(interop, topo, charon_conn(), psks, peer)
    up, inst, ike, child = establish(side, charon, drv, peer)
    holding = threading.Event()

    def held_rekey(ep, now):
        holding.set()
        time.sleep(1.0)
        ep.rekey_ike(up.ike_sa, time.time())

    hold = threading.Thread(target=drv.call, args=(held_rekey,))
    hold.start()
    assert holding.wait(5)
    vici_rekey(charon, ike="t")
    hold.join()
    drv.wait_event(IkeSaRekeyed, timeout=15)

    def agreed() -> bool:  # pyipsec may report the redundant SA first, then the survivor
        last = drv.events_of(IkeSaRekeyed)[-1]
        sas = [
            (s["initiator-spi"], s["responder-spi"]) for s in charon.list_sas(block=True).values()
        ]
        return sas == [(last.new_spi_i, last.new_spi_r)]

    wait_until(agreed, what="one surviving IKE SA on both sides", log=charon.log_text)
    time.sleep(1.0)
    later = drv.events_of(IkeSaRekeyed)
    final = later[-1]
    sas = list(charon.list_sas(block=True).values())
    assert [(s["initiator-spi"], s["responder-spi"]) for s in sas] == [
        (final.new_spi_i, final.new_spi_r)
    ], (sas, later)
    (now_child,) = installed(charon)
    assert int(now_child["spi-in"], 16) == inst.outbound_spi
    assert drv.call(lambda ep, now: ep.statistics()).ike_sas == 1
    assert not drv.events_of(IkeSaDown)
    assert "collision" in charon.log_text().lower()


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("by", ["pyipsec", "charon"])
def test_rekey_with_pfs(by: str, side: str, topo, interop) -> None:
    """Child SA rekey with a fresh key exchange (ESP proposal with a KE group, RFC 7296
    1.3.1): both sides derive the same new keys from it."""
    auth, psks = psk_pair()
    child_kw = {"rekey_time": "3s", "life_time": "60s", "rand_time": "0s"} if by == "charon" else {}
    py_child_kw = {"rekey_time": 3.0, "life_time": 60.0} if by == "pyipsec" else {}
    peer = py_peer(esp="aes256gcm16-ecp256", local_auth=auth, remote_auth=auth,
                   child_kw=py_child_kw)  # fmt: skip
    conn = charon_conn(esp="aes256gcm16-ecp256", child_kw=child_kw)
    charon, drv = start(interop, topo, conn, psks, peer)
    up, inst, ike, child = establish(side, charon, drv, peer)
    assert inst.algorithm == "aes256gcm16"
    ev = drv.wait_event(ChildSaRekeyed, timeout=15)
    wait_until(
        lambda: [int(sa["spi-in"], 16) for sa in installed(charon)] == [ev.new_outbound_spi],
        what="charon to hold only the new Child SA", log=charon.log_text,
    )  # fmt: skip
    (now_child,) = installed(charon)
    assert now_child.get("dh-group") == "ECP_256", now_child
    assert int(now_child["spi-out"], 16) == ev.new_inbound_spi


@pytest.mark.parametrize("side", SIDES)
def test_charon_reauthenticates(side: str, topo, interop) -> None:
    """charon reauthenticates (make-before-break: a new IKE SA with IKE_SA_INIT and
    IKE_AUTH, then the old one is deleted): pyipsec ends with exactly the new IKE SA and
    its Child SA, agreeing with charon."""
    auth, psks = psk_pair()
    peer = py_peer(local_auth=auth, remote_auth=auth)
    conn = charon_conn(reauth_time="3s", rekey_time="0", over_time="30s", rand_time="0s")
    charon, drv = start(interop, topo, conn, psks, peer)
    up, inst, ike, child = establish(side, charon, drv, peer)
    second = drv.wait_event(IkeSaUp, lambda e: e.spi_i != up.spi_i, timeout=15)
    drv.wait_event(IkeSaDown, lambda e: e.ike_sa == up.ike_sa, timeout=15)
    wait_until(lambda: ike_spis(charon) == [(second.spi_i, second.spi_r)],
               what="charon to keep only the new IKE SA", log=charon.log_text)  # fmt: skip
    (now_child,) = installed(charon)
    (ours,) = [c for c in drv.call(lambda ep, now: ep.child_sas(second.ike_sa))
               if c.state == "installed"]  # fmt: skip
    assert int(now_child["spi-in"], 16) == ours.outbound_spi
    assert drv.call(lambda ep, now: ep.statistics()).ike_sas == 1


def _exchange(data: bytes) -> tuple[int, bool]:
    """(exchange type, is a response) of an IKE message (RFC 7296 3.1 header)."""
    return data[18], bool(data[19] & 0x20)


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("lost", ["request", "response"])
def test_lost_ike_auth_is_retransmitted(lost: str, side: str, topo, interop) -> None:
    """The first IKE_AUTH message of ``lost`` kind (as pyipsec sends or receives it) is
    lost; the initiator retransmits, a responder answers a retransmitted request from its
    cache (RFC 7296 2.1), and the IKE SA comes up once on both sides. With a certificate
    chain every message is fragmented (RFC 7383), so whole fragment sets are resent."""
    charon, drv, peer = cert_setup(interop, topo, "rsa2048", intermediate=True,
                                   fragmentation="yes",
                                   retransmit=strongswan.FAST_RETRANSMIT)  # fmt: skip
    want_response = lost == "response"
    window: dict[str, float] = {}

    def lose(data: bytes, _addr) -> bool:
        """Every IKE_AUTH datagram of the chosen kind in the first 0.3 s: all fragments of
        the first transmission, none of the retransmissions (0.5 s and later)."""
        exch, response = _exchange(data)
        if exch != 35 or response != want_response:
            return False
        until = window.setdefault("until", time.monotonic() + 0.3)
        return time.monotonic() < until

    # pyipsec initiates: it sends the requests and receives the responses; else reversed
    we_send = (side == "pyipsec") != want_response
    if we_send:
        drv.drop_out = lose
    else:
        drv.drop_in = lose
    up, inst, ike, child = establish(side, charon, drv, peer)
    assert drv.dropped >= 1
    assert (ike["initiator-spi"], ike["responder-spi"]) == (up.spi_i, up.spi_r)
    assert len(drv.events_of(IkeSaUp)) == 1 and len(charon.list_sas(block=True)) == 1
    log = charon.log_text()
    stats = drv.endpoint.statistics()
    if side == "charon":  # charon initiated: it retransmitted, we answered
        assert "retransmit 1 of request" in log, log[-3000:]
        if lost == "response":  # from the cached response
            assert stats.counter("retransmitted_requests") >= 1, stats
    else:  # we initiated and retransmitted
        assert stats.counter("retransmits") >= 1, stats
        if lost == "response":
            assert "received retransmit of request" in log, log[-3000:]


@pytest.mark.parametrize("side", SIDES)
def test_lost_rekey_response(side: str, topo, interop) -> None:
    """``side`` rekeys the Child SA and the first CREATE_CHILD_SA response is lost: the
    request is retransmitted and answered from the responder's cache, so exactly one new
    Child SA exists, the same on both sides."""
    auth, psks = psk_pair()
    peer = py_peer(local_auth=auth, remote_auth=auth)
    charon, drv = start(interop, topo, charon_conn(), psks, peer,
                        retransmit=strongswan.FAST_RETRANSMIT)  # fmt: skip
    up, inst, ike, child = establish(side, charon, drv, peer)
    window: dict[str, float] = {}

    def lose(data: bytes, _addr) -> bool:
        exch, response = _exchange(data)
        if exch != 36 or not response:
            return False
        until = window.setdefault("until", time.monotonic() + 0.3)
        return time.monotonic() < until

    if side == "pyipsec":
        drv.drop_in = lose
        drv.call(lambda ep, now: ep.rekey_child(up.ike_sa, "t-c", now))
    else:
        drv.drop_out = lose
        vici_rekey(charon, child="t-c")
    ev = drv.wait_event(ChildSaRekeyed, timeout=15)
    wait_until(
        lambda: [int(sa["spi-in"], 16) for sa in installed(charon)] == [ev.new_outbound_spi],
        what="one new Child SA on charon", log=charon.log_text,
    )  # fmt: skip
    time.sleep(1.0)
    assert len(installed(charon)) == 1
    live = drv.call(lambda ep, now: ep.child_sas(up.ike_sa))
    assert [(c.inbound_spi, c.outbound_spi) for c in live if c.state == "installed"] == [
        (ev.new_inbound_spi, ev.new_outbound_spi)
    ], live
    assert drv.dropped >= 1
    stats = drv.endpoint.statistics()
    if side == "charon":
        assert stats.counter("retransmitted_requests") >= 1, stats
    else:
        assert stats.counter("retransmits") >= 1, stats
    assert len(drv.events_of(ChildSaRekeyed)) == 1


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("restarted", ["charon", "pyipsec"])
def test_peer_restart_initial_contact(restarted: str, side: str, topo, interop) -> None:
    """A peer crashes and comes back without state, then connects again with
    INITIAL_CONTACT (RFC 7296 2.4): the survivor drops the stale IKE SA and its Child SAs
    at once (no waiting for DPD) and keeps only the new ones."""
    auth, psks = psk_pair()
    peer = py_peer(local_auth=auth, remote_auth=auth)
    charon, drv = start(interop, topo, charon_conn(), psks, peer)
    up, inst, ike, child = establish(side, charon, drv, peer)
    if restarted == "charon":
        charon.kill()
        charon.start()
        charon.initiate("t-c")
        down = drv.wait_event(IkeSaDown, lambda e: e.ike_sa == up.ike_sa)
        assert down.reason == "replaced", down
        new = drv.wait_event(IkeSaUp, lambda e: e.ike_sa != up.ike_sa)
        assert drv.endpoint.statistics().counter("initial_contact_replaced") == 1
        assert drv.call(lambda ep, now: ep.statistics()).ike_sas == 1
        assert ike_spis(charon) == [(new.spi_i, new.spi_r)]
    else:
        drv.kill()
        fresh = interop.driver(IkeDriver(topo.b.ns, B, EndpointConfig(peers=(peer,),
                                                                      local_addr=B)))  # fmt: skip
        fresh.start()
        fresh.call(lambda ep, now: ep.initiate(peer, peer.children[0], now))
        new = fresh.wait_event(IkeSaUp)
        fresh.wait_event(ChildSaInstalled)
        wait_until(lambda: ike_spis(charon) == [(new.spi_i, new.spi_r)],
                   what="charon to drop the stale IKE SA", log=charon.log_text)  # fmt: skip
        assert len(installed(charon)) == 1


@pytest.mark.parametrize("side", SIDES)
def test_simultaneous_ike_delete(side: str, topo, interop) -> None:
    """Both sides delete the IKE SA at once (each sends its DELETE before seeing the
    other's): both end without SAs, promptly, and pyipsec reports the IKE SA down once."""
    auth, psks = psk_pair()
    peer = py_peer(local_auth=auth, remote_auth=auth)
    charon, drv = start(interop, topo, charon_conn(), psks, peer,
                        retransmit=strongswan.FAST_RETRANSMIT)  # fmt: skip
    up, inst, ike, child = establish(side, charon, drv, peer)
    holding = threading.Event()

    def held_delete(ep, now):
        holding.set()
        time.sleep(1.0)
        ep.delete_ike(up.ike_sa, time.time())

    hold = threading.Thread(target=drv.call, args=(held_delete,))
    hold.start()
    assert holding.wait(5)
    client = ViciClient(charon.vici_path)
    try:  # like swanctl --terminate, without waiting for the outcome
        client.request("terminate", {"ike": "t", "timeout": "-1"})
    finally:
        client.close()
    hold.join()
    down = drv.wait_event(IkeSaDown, timeout=10)
    assert down.reason in ("deleted", "deleted by peer"), down
    wait_until(lambda: charon.list_sas(block=True) == {}, timeout=10,
               what="charon to drop the IKE SA", log=charon.log_text)  # fmt: skip
    time.sleep(1.5)  # nothing left behind, no late retransmissions failing
    assert len(drv.events_of(IkeSaDown)) == 1
    assert drv.call(lambda ep, now: ep.statistics()).ike_sas == 0
