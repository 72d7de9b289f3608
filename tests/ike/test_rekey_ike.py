"""IKE SA rekey (RFC 7296 2.18): new SPIs and keys, children kept, message IDs restart."""

from ike.harness import Pair
from pyipsec.ike.events import ChildSaDeleted, IkeSaDown, IkeSaRekeyed, IkeSaUp


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


def test_ike_rekey_collision_answered_temporary_failure_then_retried():
    p = Pair(seed=11)
    h = p.connect()
    p.a.rekey_ike(h, p.now)
    p.b.rekey_ike(p.of("b", IkeSaUp)[0].ike_sa, p.now)
    p.advance(1)
    assert (
        p.a.statistics().counter("failed_exchanges") + p.b.statistics().counter("failed_exchanges")
        >= 1
    )
    p.advance(30)
    assert len(p.of("a", IkeSaRekeyed)) == 1 and len(p.of("b", IkeSaRekeyed)) == 1
