"""IKE_INTERMEDIATE with ML-KEM-768 as additional key exchange (RFC 9242, RFC 9370)."""

import pytest

from ike.harness import A_ADDR, B_ADDR, Network, Pair, peer_config
from pyipsec.ike.config import ChildConfig
from pyipsec.ike.events import ChildSaInstalled, IkeSaRekeyed, IkeSaUp, NegotiationFailed
from pyipsec.ike.exchanges.ike_intermediate import int_auth_octets
from pyipsec.wire.iana import NotifyType
from pyipsec.wire.ike import KePayload

HYBRID = "aes128gcm16-prfsha256-x25519-mlkem768"


def hybrid_pair(a_prop=HYBRID, b_prop=HYBRID, **kw):
    c = (ChildConfig("c"),)
    return Pair(
        peer_config("to-b", B_ADDR[0], ike_proposals=(a_prop,), children=c, **kw),
        peer_config("to-a", A_ADDR[0], ike_proposals=(b_prop,), children=c, **kw),
    )


@pytest.mark.parametrize("fragment_size", [1280, 600])
def test_mlkem_hybrid_handshake(fragment_size):
    p = hybrid_pair(fragment_size=fragment_size)
    p.connect()
    assert p.of("a", IkeSaUp)[0].proposal == "aes128gcm16-prfsha256-x25519-ke1_mlkem768"
    assert p.a.statistics().counter("intermediate_exchanges") == 1
    assert p.b.statistics().counter("intermediate_exchanges") == 1
    (ca,), (cb,) = p.of("a", ChildSaInstalled), p.of("b", ChildSaInstalled)
    assert ca.inbound_key == cb.outbound_key
    if fragment_size == 600:
        assert p.a.statistics().counter("fragmented_messages") >= 1


def test_hybrid_required_but_not_offered():
    p = hybrid_pair(a_prop="aes128gcm16-prfsha256-x25519")
    p.a.initiate(p.a_peer, None, p.now)
    p.advance(30)
    assert p.of("a", NegotiationFailed)[0].notify == NotifyType.NO_PROPOSAL_CHOSEN


def test_hybrid_rekeys_and_lossy():
    c = (ChildConfig("c"),)
    net = Network(seed=7, drop=0.1, dup=0.1, reorder=0.1, delay=0.1)
    p = Pair(
        peer_config("to-b", B_ADDR[0], ike_proposals=(HYBRID,), children=c),
        peer_config("to-a", A_ADDR[0], ike_proposals=(HYBRID,), children=c),
        network=net,
        seed=7,
    )
    h = p.connect(max_time=300)
    p.a.rekey_ike(h, p.now)
    p.advance(60)
    assert p.of("a", IkeSaRekeyed) and p.of("b", IkeSaRekeyed)


def test_int_auth_octets_lengths_exclude_iv_padding_icv():
    class Fake:
        spi_i, spi_r = b"i" * 8, b"r" * 8

    payloads = [KePayload(36, b"\x05" * 1184)]
    octets = int_auth_octets(Fake(), 0x08, 1, payloads)
    inner = 4 + 4 + 1184
    assert len(octets) == 28 + 4 + inner
    assert int.from_bytes(octets[24:28], "big") == len(octets)  # IKE header length
    assert int.from_bytes(octets[30:32], "big") == 4 + inner  # SK payload length
    assert octets[16] == 46 and octets[28] == 34  # SK, first inner payload KE


def test_hybrid_ike_rekey_uses_followup_ke_both_sides():
    p = hybrid_pair()
    h = p.connect()
    for side, handle in (("a", h), ("b", p.of("b", IkeSaUp)[0].ike_sa)):
        (p.a if side == "a" else p.b).rekey_ike(handle, p.now)
        p.advance(10)
    assert p.a.statistics().counter("followup_ke_exchanges") == 2
    assert p.b.statistics().counter("followup_ke_exchanges") == 2
    assert len(p.of("a", IkeSaRekeyed)) == 2 and len(p.of("b", IkeSaRekeyed)) == 2
    sa_a, sa_b = p.a._by_handle[h], p.b._by_handle[p.of("b", IkeSaUp)[0].ike_sa]
    assert sa_a.keys == sa_b.keys  # both derived SKEYSEED with the ML-KEM secret
    p.a.rekey_child(h, "c", p.now)  # the new IKE SA works
    p.advance(10)
    assert len(p.of("b", ChildSaInstalled)) == 2
