"""INFORMATIONAL: deletes from both sides, DPD, INITIAL_CONTACT, AUTH failure notify."""

from ike.harness import B_ADDR, Pair, peer_config
from pyipsec.ike.config import ChildConfig
from pyipsec.ike.events import ChildSaDeleted, IkeSaDown, IkeSaUp


def test_delete_ike_from_responder():
    p = Pair()
    p.connect()
    p.b.delete_ike(p.of("b", IkeSaUp)[0].ike_sa, p.now)
    p.advance(5)
    assert p.of("a", IkeSaDown)[0].reason == "deleted by peer"
    assert p.of("b", IkeSaDown)[0].reason == "deleted"
    assert p.of("a", ChildSaDeleted)[0].reason == "deleted by peer"


def test_simultaneous_child_delete():
    p = Pair()
    h = p.connect()
    p.a.delete_child(h, "c", p.now)
    p.b.delete_child(p.of("b", IkeSaUp)[0].ike_sa, "c", p.now)
    p.advance(10)
    assert len(p.of("a", ChildSaDeleted)) == 1 and len(p.of("b", ChildSaDeleted)) == 1
    assert p.a.statistics().child_sas == 0 and p.a.statistics().established == 1


def test_dpd_from_responder_and_peer_answers():
    p = Pair(b_peer=peer_config("to-a", "192.0.2.1", children=(ChildConfig("c"),), dpd_delay=10.0))
    p.connect()
    p.advance(35)
    assert p.b.statistics().counter("dpd_sent") >= 3
    assert not p.of("b", IkeSaDown)


def test_delete_ike_when_peer_gone():
    p = Pair(peer_config("to-b", B_ADDR[0], children=(ChildConfig("c"),), retransmit_tries=1))
    h = p.connect()
    p.net.drop = 1.0
    p.a.delete_ike(h, p.now)
    p.advance(30)
    assert p.of("a", IkeSaDown)[0].reason == "deleted"
    assert p.a.statistics().ike_sas == 0


def test_initial_contact_replaces_stale_sa():
    p = Pair()
    p.connect()
    # "a" restarts: a fresh endpoint with the same configuration connects again
    from pyipsec.ike.endpoint import IkeEndpoint

    p.a = IkeEndpoint(p.a.config)
    p.events["a"].clear()
    p.a.initiate(p.a_peer, p.a_peer.children[0], p.now)
    p.advance(10)
    assert p.b.statistics().counter("initial_contact_replaced") == 1
    down = p.of("b", IkeSaDown)
    assert [d.reason for d in down] == ["replaced"]
    assert p.b.statistics().ike_sas == 1 and p.b.statistics().child_sas == 1


def test_hard_expiry_deletes_on_both_sides():
    cfg = ChildConfig("c", rekey_time=1000.0, life_time=1100.0)
    p = Pair(
        peer_config("to-b", B_ADDR[0], children=(cfg,)),
        peer_config("to-a", "192.0.2.1", children=(cfg,), rekey_time=10**6),
    )
    h = p.connect()
    # no rekeying on either side: the Child SA reaches its hard lifetime
    sa = p.a._by_handle[h]
    sa.children[0].rekey_at = float("inf")
    p.b._by_handle[p.of("b", IkeSaUp)[0].ike_sa].children[0].rekey_at = float("inf")
    p.advance(1200)
    reasons = {p.of("a", ChildSaDeleted)[0].reason, p.of("b", ChildSaDeleted)[0].reason}
    assert reasons == {"expired", "deleted by peer"}  # the first to expire tells the other
    assert p.a.statistics().child_sas == 0 and p.b.statistics().child_sas == 0
    assert (
        p.a.statistics().counter("expiry_deletes") + p.b.statistics().counter("expiry_deletes") >= 1
    )


def test_traffic_seen_postpones_dpd():
    p = Pair(peer_config("to-b", B_ADDR[0], children=(ChildConfig("c"),), dpd_delay=10.0))
    h = p.connect()
    for _ in range(5):
        p.advance(8)
        p.a.traffic_seen(h, p.now)  # ESP keeps flowing
    assert p.a.statistics().counter("dpd_sent") == 0
    p.advance(11)
    assert p.a.statistics().counter("dpd_sent") == 1
