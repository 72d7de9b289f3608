"""IKE SA rekey (RFC 7296 2.18): new SPIs and keys, children kept, message IDs restart."""

import pytest

from ike.harness import Network, Pair
from pyipsec.ike.config import ChildConfig
from pyipsec.ike.events import (
    ChildSaDeleted,
    ChildSaInstalled,
    IkeSaDown,
    IkeSaRekeyed,
    IkeSaUp,
)


def test_rekey_ike_new_keys_children_moved_and_ids_restart():
    p = Pair()
    h = p.connect()
    old_a = p.a._by_handle[h]
    old_keys = old_a.keys
    p.a.rekey_ike(h, p.now)
    p.advance(10)
    new_a = p.a._by_handle[h]
    assert new_a is not old_a and new_a.keys != old_keys
    assert new_a.next_request_id == 0 and new_a.children and not old_a.children
    assert old_a.state.value == "closed"
    (ev,) = p.of("a", IkeSaRekeyed)
    assert ev.new_spi_i == new_a.spi_i.hex() and ev.old_spi_i == old_a.spi_i.hex()
    assert p.a.ike_sas()[0].spi_i == ev.new_spi_i
    # twice more, alternating sides: still one IKE SA and one child each
    p.b.rekey_ike(p.of("b", IkeSaUp)[0].ike_sa, p.now)
    p.advance(10)
    p.a.rekey_ike(h, p.now)
    p.advance(10)
    for s in "ab":
        assert len(p.of(s, IkeSaRekeyed)) == 3
        assert not p.of(s, IkeSaDown) and not p.of(s, ChildSaDeleted)
    assert p.b.statistics().ike_sas == 1 and p.b.statistics().child_sas == 1


def test_ike_rekey_collision_resolved_by_nonce():
    p = Pair(seed=11)
    h = p.connect()
    p.a.rekey_ike(h, p.now)
    p.b.rekey_ike(p.of("b", IkeSaUp)[0].ike_sa, p.now)
    p.advance(30)
    assert p.a.statistics().counter("ike_rekey_collisions") == 1
    assert p.b.statistics().counter("ike_rekey_collisions") == 1
    assert p.a.statistics().counter("failed_exchanges") == 0
    assert len(p.a._by_spi) == 1 and len(p.b._by_spi) == 1


@pytest.mark.parametrize("seed", [1, 5, 9, 13, 17, 21])
def test_lossy_rekey_storm(seed):
    """10% drop/dup/reorder/delay; child rekeys from both sides (some simultaneous), then a
    simultaneous IKE rekey and another IKE rekey: one Child SA pair, one IKE SA, agreeing
    keys, no SA installed twice, nothing torn down. (Seeds 1 and 9 once lost the Child SAs
    when the peer deleted a redundant successor before our rekey response arrived.)"""
    net = Network(seed=seed, drop=0.1, dup=0.1, reorder=0.1, delay=0.1)
    p = Pair(
        network=net,
        seed=seed,
        children=(ChildConfig("c", pfs_group="x25519" if seed % 2 else None),),
    )
    h = p.connect(max_time=300)
    hb = p.of("b", IkeSaUp)[0].ike_sa
    for i in range(4):
        if i % 2:
            p.a.rekey_child(h, "c", p.now)
        else:
            p.b.rekey_child(hb, "c", p.now)
        if i == 1:
            p.b.rekey_child(hb, "c", p.now)  # simultaneous with a's
        p.advance(60)
    p.a.rekey_ike(h, p.now)
    p.b.rekey_ike(hb, p.now)
    p.advance(60)
    p.b.rekey_ike(hb, p.now)
    p.advance(60)
    for s in "ab":
        assert not p.of(s, IkeSaDown)
        spis = [e.inbound_spi for e in p.of(s, ChildSaInstalled)]
        assert len(spis) == len(set(spis))
    la = {e.inbound_spi for e in p.of("a", ChildSaInstalled)} - {
        e.inbound_spi for e in p.of("a", ChildSaDeleted)
    }
    lb = {e.inbound_spi for e in p.of("b", ChildSaInstalled)} - {
        e.inbound_spi for e in p.of("b", ChildSaDeleted)
    }
    assert len(la) == 1 and len(lb) == 1
    (ca,) = [e for e in p.of("a", ChildSaInstalled) if e.inbound_spi in la]
    (cb,) = [e for e in p.of("b", ChildSaInstalled) if e.inbound_spi in lb]
    assert ca.outbound_spi == cb.inbound_spi and ca.inbound_key == cb.outbound_key
    assert len(p.a._by_spi) == 1 and len(p.b._by_spi) == 1


def test_ike_rekey_invalid_ke_retry():
    """The responder was reconfigured to another group: INVALID_KE_PAYLOAD, retry with it."""
    import dataclasses

    p = Pair()
    h = p.connect()
    a_peer = dataclasses.replace(p.a_peer, ike_proposals=("aes128gcm16-prfsha256-x25519-ecp256",))
    b_peer = dataclasses.replace(p.b_peer, ike_proposals=("aes128gcm16-prfsha256-ecp256",))
    p.a._by_handle[h].peer = a_peer
    p.b._by_handle[p.of("b", IkeSaUp)[0].ike_sa].peer = b_peer
    p.a.rekey_ike(h, p.now)
    p.advance(10)
    assert p.a.statistics().counter("invalid_ke_retries") == 1
    assert p.of("a", IkeSaRekeyed) and p.a.ike_sas()[0].proposal.endswith("ecp256")


def test_redundant_successors_ours_deleted_now_the_peers_left_to_the_peer():
    """A stray loser of a rekey collision goes when the old IKE SA does: ours at once;
    the peer's is the peer's to delete (RFC 7296 2.8.2) and charon's Delete for it is
    usually in flight, so it only expires after REDUNDANT_WAIT (deleting it at the same
    moment left charon retransmitting its Delete to an SA we had forgotten)."""
    from collections import Counter
    from types import SimpleNamespace

    from pyipsec.ike.exchanges.rekey_ike import REDUNDANT_WAIT, drop_redundant

    def sa(initiator: bool):
        queued: list = []
        return SimpleNamespace(
            state=SimpleNamespace(value="established"), children=[], ctx={},
            initiator=initiator, expire_at=1000.0, queued=queued,
            queue=lambda task, now: queued.append(task),
        )  # fmt: skip

    keep, ours, theirs = sa(True), sa(True), sa(False)
    old = SimpleNamespace(
        ctx={"successor": (keep, b"n", True), "successors": [keep, ours, theirs]},
        endpoint=SimpleNamespace(stats=Counter()),
    )
    drop_redundant(old, 50.0)
    assert len(ours.queued) == 1 and ours.ctx["delete_queued"]
    assert theirs.queued == [] and theirs.expire_at == 50.0 + REDUNDANT_WAIT
    assert keep.queued == [] and keep.expire_at == 1000.0
    assert old.endpoint.stats["redundant_ike_sas_deleted"] == 2
