"""End-to-end tests of IkeEndpoint through the in-memory harness (both roles)."""

import pytest

from ike.harness import A_ADDR, B_ADDR, Network, Pair, peer_config
from pyipsec.errors import ConfigError
from pyipsec.ike.config import AuthConfig, ChildConfig
from pyipsec.ike.events import (
    AuthenticationFailed,
    ChildSaDeleted,
    ChildSaInstalled,
    ChildSaRekeyed,
    IkeSaDown,
    IkeSaRekeyed,
    IkeSaUp,
    NegotiationFailed,
)
from pyipsec.wire.iana import NotifyType


def installed(p, side):
    return p.of(side, ChildSaInstalled)


def assert_pair_matches(ca, cb):
    assert ca.inbound_spi == cb.outbound_spi and ca.outbound_spi == cb.inbound_spi
    assert ca.inbound_key == cb.outbound_key and ca.outbound_key == cb.inbound_key
    assert ca.inbound_key != ca.outbound_key
    assert ca.algorithm == cb.algorithm and ca.mode == cb.mode and ca.esn == cb.esn
    assert ca.local_ts == cb.remote_ts and ca.remote_ts == cb.local_ts


def test_psk_handshake_transport():
    p = Pair()
    h = p.connect()
    ua, ub = p.of("a", IkeSaUp)[0], p.of("b", IkeSaUp)[0]
    assert ua.initiator and not ub.initiator and ua.spi_i == ub.spi_i
    assert ua.proposal == "aes128gcm16-prfsha256-x25519"
    assert ua.remote_id == "192.0.2.2" and ub.remote_id == "192.0.2.1"
    (ca,), (cb,) = installed(p, "a"), installed(p, "b")
    assert_pair_matches(ca, cb)
    assert ca.mode == "transport" and ca.algorithm == "aes128gcm16" and ca.esn
    assert len(ca.inbound_key) == 20 and ca.protocol == "esp"
    assert str(ca.local_ts[0]) == "192.0.2.1" and str(ca.remote_ts[0]) == "192.0.2.2"
    assert "inbound_key" not in repr(ca)
    assert p.a.statistics().established == 1 and p.b.statistics().child_sas == 1
    (st,) = p.a.ike_sas()
    assert st.handle == h and st.state == "established" and st.children == 1
    # events order: IKE SA up before the child
    assert isinstance(p.events["a"][0], IkeSaUp) and isinstance(p.events["b"][0], IkeSaUp)


def test_tunnel_mode_narrowing_and_cbc():
    ca_cfg = ChildConfig(
        "net",
        local_ts=("10.1.0.0/16",),
        remote_ts=("10.2.0.0/16",),
        mode="tunnel",
        esp_proposals=("aes256-sha256",),
    )
    cb_cfg = ChildConfig(
        "net",
        local_ts=("10.2.1.0/24",),
        remote_ts=("10.1.0.0/16",),
        mode="tunnel",
        esp_proposals=("aes256-sha384", "aes256-sha256"),
    )
    p = Pair(
        peer_config(
            "to-b", B_ADDR[0], children=(ca_cfg,), ike_proposals=("aes256-sha256-modp2048",)
        ),
        peer_config(
            "to-a", A_ADDR[0], children=(cb_cfg,), ike_proposals=("aes256-sha256-modp2048",)
        ),
    )
    p.connect()
    (ca,), (cb,) = installed(p, "a"), installed(p, "b")
    assert_pair_matches(ca, cb)
    assert ca.mode == "tunnel" and ca.algorithm == "aes256-sha256" and not ca.esn
    assert [str(t) for t in ca.remote_ts] == ["10.2.1.0/24"]  # narrowed by the responder
    assert len(ca.inbound_key) == 64
    assert p.of("a", IkeSaUp)[0].proposal == "aes256-sha256-prfsha256-modp2048"


def test_ah_child():
    cfg = ChildConfig("ah", esp_proposals=(), ah_proposals=("sha256",))
    p = Pair(children=(cfg,))
    p.connect()
    (ca,), (cb,) = installed(p, "a"), installed(p, "b")
    assert_pair_matches(ca, cb)
    assert ca.protocol == "ah" and ca.algorithm == "sha256" and len(ca.inbound_key) == 32


def test_wrong_psk_fails_both_sides_nothing_installed():
    p = Pair(
        peer_config(
            "to-b",
            B_ADDR[0],
            children=(ChildConfig("c"),),
            local_auth=AuthConfig(psk=b"wrong"),
            remote_auth=AuthConfig(psk=b"wrong"),
        )
    )
    p.a.initiate(p.a_peer, p.a_peer.children[0], p.now)
    p.advance(60)
    assert p.of("a", AuthenticationFailed) and p.of("b", AuthenticationFailed)
    assert not installed(p, "a") and not installed(p, "b")
    assert not p.of("a", IkeSaUp) and not p.of("b", IkeSaUp)
    assert p.a.statistics().ike_sas == 0 and p.b.statistics().ike_sas == 0
    assert "wrong" not in repr(p.events)


def test_no_proposal_chosen():
    p = Pair(
        peer_config(
            "to-b",
            B_ADDR[0],
            ike_proposals=("aes256gcm16-prfsha384-ecp384",),
            children=(ChildConfig("c"),),
        )
    )
    p.a.initiate(p.a_peer, p.a_peer.children[0], p.now)
    p.advance(30)
    (nf,) = p.of("a", NegotiationFailed)
    assert nf.notify == NotifyType.NO_PROPOSAL_CHOSEN
    assert p.of("a", IkeSaDown)[0].reason == "failed"
    assert p.b.statistics().ike_sas == 0 and p.b.statistics().counter("no_proposal_chosen") == 1


def test_child_no_proposal_keeps_ike_sa():
    p = Pair(
        peer_config(
            "to-b", B_ADDR[0], children=(ChildConfig("c", esp_proposals=("aes256-sha512",)),)
        )
    )
    p.connect()
    assert not installed(p, "a") and not installed(p, "b")
    assert p.of("a", NegotiationFailed)[0].notify == NotifyType.NO_PROPOSAL_CHOSEN
    assert p.of("a", NegotiationFailed)[0].child == "c"
    assert p.a.statistics().established == 1


def test_ts_unacceptable():
    a_child = ChildConfig("c", local_ts=("10.9.0.0/16",), remote_ts=("10.8.0.0/16",), mode="tunnel")
    b_child = ChildConfig("c", local_ts=("10.2.0.0/16",), remote_ts=("10.1.0.0/16",), mode="tunnel")
    p = Pair(
        peer_config("to-b", B_ADDR[0], children=(a_child,)),
        peer_config("to-a", A_ADDR[0], children=(b_child,)),
    )
    p.connect()
    assert p.of("a", NegotiationFailed)[0].notify == NotifyType.TS_UNACCEPTABLE
    assert not installed(p, "a") and not installed(p, "b")


def test_invalid_ke_retry_with_requested_group():
    a = peer_config(
        "to-b",
        B_ADDR[0],
        children=(ChildConfig("c"),),
        ike_proposals=("aes128gcm16-prfsha256-x25519-ecp256",),
    )
    b = peer_config(
        "to-a",
        A_ADDR[0],
        children=(ChildConfig("c"),),
        ike_proposals=("aes128gcm16-prfsha256-ecp256",),
    )
    p = Pair(a, b)
    p.connect()
    assert p.of("a", IkeSaUp)[0].proposal.endswith("ecp256")
    assert p.a.statistics().counter("invalid_ke_retries") == 1
    assert p.b.statistics().counter("invalid_ke_sent") == 1
    assert_pair_matches(installed(p, "a")[0], installed(p, "b")[0])


def test_cookie_challenge_above_threshold():
    p = Pair(b_endpoint={"cookie_threshold": 0})
    p.connect()
    assert p.b.statistics().counter("cookies_sent") == 1
    assert p.a.statistics().counter("cookie_retries") == 1
    assert_pair_matches(installed(p, "a")[0], installed(p, "b")[0])


def test_initiate_to_any_is_config_error():
    p = Pair()
    with pytest.raises(ConfigError):
        p.a.initiate(peer_config("x", "%any"), None, p.now)


def test_child_rekey_from_each_side():
    for side in ("a", "b"):
        p = Pair()
        h = p.connect()
        ep = p.a if side == "a" else p.b
        handle = h if side == "a" else p.of("b", IkeSaUp)[0].ike_sa
        old = installed(p, side)[0]
        ep.rekey_child(handle, "c", p.now)
        p.advance(10)
        for s in "ab":
            (rk,) = p.of(s, ChildSaRekeyed)
            new = installed(p, s)[-1]
            assert new.rekeyed_from is not None
            assert (rk.new_inbound_spi, rk.new_outbound_spi) == (new.inbound_spi, new.outbound_spi)
            (gone,) = p.of(s, ChildSaDeleted)
            assert gone.reason == "rekeyed"
        assert_pair_matches(installed(p, "a")[-1], installed(p, "b")[-1])
        assert installed(p, side)[-1].inbound_key != old.inbound_key
        assert p.a.statistics().child_sas == 1 and p.b.statistics().child_sas == 1


def test_child_rekey_with_pfs():
    cfg = ChildConfig("c", pfs_group="x25519")
    p = Pair(children=(cfg,))
    h = p.connect()
    p.a.rekey_child(h, "c", p.now)
    p.advance(10)
    assert len(installed(p, "a")) == 2 and len(installed(p, "b")) == 2
    assert_pair_matches(installed(p, "a")[-1], installed(p, "b")[-1])


def test_ike_rekey_from_each_side_keeps_children():
    for side in "ab":
        p = Pair()
        h = p.connect()
        handle = h if side == "a" else p.of("b", IkeSaUp)[0].ike_sa
        (p.a if side == "a" else p.b).rekey_ike(handle, p.now)
        p.advance(10)
        for s in "ab":
            (rk,) = p.of(s, IkeSaRekeyed)
            assert rk.new_spi_i != rk.old_spi_i
            assert not p.of(s, IkeSaDown) and not p.of(s, ChildSaDeleted)
            assert p.a.statistics().ike_sas == 1 and p.a.statistics().child_sas == 1
        # the rekeyed SA works: a Child SA rekey over it
        p.a.rekey_child(h, "c", p.now)
        p.advance(10)
        assert_pair_matches(installed(p, "a")[-1], installed(p, "b")[-1])


def test_delete_child_and_ike():
    p = Pair()
    h = p.connect()
    p.b.delete_child(p.of("b", IkeSaUp)[0].ike_sa, "c", p.now)
    p.advance(5)
    assert p.of("a", ChildSaDeleted)[0].reason == "deleted by peer"
    assert p.of("b", ChildSaDeleted)[0].reason == "deleted"
    p.a.create_child(h, ChildConfig("c"), p.now)
    p.advance(5)
    assert len(installed(p, "a")) == 2
    p.a.delete_ike(h, p.now)
    p.advance(5)
    assert p.of("a", IkeSaDown)[0].reason == "deleted"
    assert p.of("b", IkeSaDown)[0].reason == "deleted by peer"
    assert len(p.of("b", ChildSaDeleted)) == 2
    assert p.a.statistics().ike_sas == 0 and p.b.statistics().ike_sas == 0


def test_dpd_declares_silent_peer_dead():
    p = Pair(
        peer_config(
            "to-b",
            B_ADDR[0],
            children=(ChildConfig("c"),),
            dpd_delay=30.0,
            retransmit_tries=3,
            retransmit_timeout=1.0,
            retransmit_base=2.0,
        )
    )
    p.connect()
    p.advance(29)
    assert not p.a.statistics().counter("dpd_sent")
    p.advance(2)
    assert p.a.statistics().counter("dpd_sent") == 1  # answered: still up
    assert p.a.statistics().established == 1
    p.net.drop = 1.0  # the peer goes silent
    p.advance(60)
    (down,) = p.of("a", IkeSaDown)
    assert down.reason == "dead peer"
    assert p.of("a", ChildSaDeleted)[0].reason == "ike sa down"
    assert p.a.statistics().ike_sas == 0


def test_lifetimes_trigger_rekeys_with_jitter():
    cfg = ChildConfig("c", rekey_time=100.0, jitter=10.0)
    a = peer_config("to-b", B_ADDR[0], children=(cfg,), rekey_time=300.0, jitter=30.0)
    b = peer_config("to-a", A_ADDR[0], children=(cfg,), rekey_time=400.0, jitter=30.0)
    p = Pair(a, b)
    p.connect()
    first = installed(p, "a")[0]
    assert 90.0 <= first.rekey_time <= 100.0
    p.advance(330)
    assert len(p.of("a", IkeSaRekeyed)) >= 1
    assert len(installed(p, "a")) >= 4  # several child rekeys
    assert p.a.statistics().child_sas == 1 and p.b.statistics().child_sas == 1
    assert p.a.statistics().ike_sas == 1 and not p.of("a", IkeSaDown)


def test_retransmission_and_give_up():
    p = Pair(
        peer_config(
            "to-b",
            B_ADDR[0],
            children=(ChildConfig("c"),),
            retransmit_tries=2,
            retransmit_timeout=1.0,
            retransmit_base=2.0,
        )
    )
    p.net.drop = 1.0
    p.a.initiate(p.a_peer, None, p.now)
    p.advance(100)
    assert p.a.statistics().counter("retransmits") == 2
    assert p.of("a", NegotiationFailed)[0].notify == 0
    assert p.of("a", IkeSaDown)[0].reason == "failed"


def test_lost_response_answered_from_cache():
    p = Pair()
    lost = {"n": 0}

    def tamper(data, dst):  # drop the first IKE_AUTH response
        if dst == A_ADDR and data[18] == 35 and lost["n"] == 0:
            lost["n"] += 1
            return None
        return data

    p.net.tamper = tamper
    p.connect()
    assert p.b.statistics().counter("retransmitted_requests") == 1
    assert len(installed(p, "b")) == 1 and len(installed(p, "a")) == 1


def test_truncated_corrupted_and_replayed_messages():
    p = Pair()
    h = p.connect()
    captured = []

    def tamper(data, dst):  # hold back the first rekey request
        if dst == B_ADDR and not captured:
            captured.append(data)
            return None
        return data

    p.net.tamper = tamper
    p.a.rekey_child(h, "c", p.now)
    p.flush()
    (request,) = captured
    n_events = len(p.events["b"])
    p.b.receive_datagram(request[:-5], A_ADDR, p.now)  # truncated
    bad = bytearray(request)
    bad[-1] ^= 1
    p.b.receive_datagram(bytes(bad), A_ADDR, p.now)  # corrupted ICV
    p.b.receive_datagram(b"\x00" * 10, A_ADDR, p.now)  # garbage
    st = p.b.statistics()
    assert st.counter("malformed") == 2 and st.counter("packets_not_authenticated") == 1
    assert p.b.datagrams_to_send(p.now) == []
    p.flush()
    assert len(p.events["b"]) == n_events  # no state change
    p.advance(10)  # the retransmitted genuine request still works
    assert len(installed(p, "b")) == 2 and p.b.statistics().child_sas == 1
    n_events = len(p.events["b"])
    p.b.receive_datagram(request, A_ADDR, p.now)  # replay of an old request
    p.flush()
    assert len(p.events["b"]) == n_events
    assert p.b.statistics().counter("invalid_message_ids") == 1


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_lossy_network_handshake_and_rekeys(seed):
    net = Network(seed=seed, drop=0.1, dup=0.1, reorder=0.1, delay=0.1)
    p = Pair(network=net, seed=seed)
    h = p.connect(max_time=300)
    assert p.of("a", IkeSaUp) and p.of("b", IkeSaUp)
    for _ in range(3):
        p.a.rekey_child(h, "c", p.now)
        p.advance(60)
    p.b.rekey_ike(p.of("b", IkeSaUp)[0].ike_sa, p.now)
    p.advance(60)
    for s in "ab":
        spis = [e.inbound_spi for e in installed(p, s)]
        assert len(spis) == len(set(spis)) == 4  # never installed twice, none lost
        assert len(p.of(s, ChildSaDeleted)) == 3
        assert not p.of(s, IkeSaDown)
    assert p.a.statistics().child_sas == 1 and p.b.statistics().child_sas == 1
    assert_pair_matches(installed(p, "a")[-1], installed(p, "b")[-1])


def test_wildcard_or_empty_local_address_from_socket_layer():
    """A daemon bound to 0.0.0.0 may pass ("", 500): no crash, the configured address or
    the peer's local_addr is used, and no NAT is imagined for ourselves."""
    p = Pair()
    got = []
    orig = p.b.receive_datagram

    def recv(data, addr, now, local_addr=None):
        got.append(local_addr)
        orig(data, addr, now, local_addr=("", 500))

    p.b.receive_datagram = recv
    p.connect()
    assert got and p.of("b", IkeSaUp)[0].local_addr == ("192.0.2.2", 500)
    assert not installed(p, "b")[0].encap_udp


def test_ipv6_handshake_transport_and_tunnel():
    p = Pair(addrs=("2001:db8::1", "2001:db8::2"))
    p.connect()
    (ca,), (cb,) = installed(p, "a"), installed(p, "b")
    assert_pair_matches(ca, cb)
    assert str(ca.local_ts[0]) == "2001:db8::1" and not ca.encap_udp
    child = ChildConfig(
        "t", mode="tunnel", local_ts=("2001:db8:1::/48",), remote_ts=("2001:db8:2::/48",)
    )
    child_b = ChildConfig(
        "t", mode="tunnel", local_ts=("2001:db8:2::/48",), remote_ts=("2001:db8:1::/48",)
    )
    q = Pair(
        peer_config("to-b", "2001:db8::2", children=(child,)),
        peer_config("to-a", "2001:db8::1", children=(child_b,)),
        addrs=("2001:db8::1", "2001:db8::2"),
    )
    q.connect()
    assert str(installed(q, "a")[0].remote_ts[0]) == "2001:db8:2::/48"


def test_unknown_own_addresses_still_negotiate_transport_mode():
    """Both endpoints bound to the wildcard without a configured local address: "dynamic"
    selectors still come out as the two real host addresses."""
    from pyipsec.ike.config import EndpointConfig
    from pyipsec.ike.endpoint import IkeEndpoint

    p = Pair()
    p.a = IkeEndpoint(EndpointConfig(peers=(p.a_peer,)))  # local_addr 0.0.0.0
    p.b = IkeEndpoint(EndpointConfig(peers=(p.b_peer,)))
    orig = p.b.receive_datagram
    p.b.receive_datagram = lambda d, a, n, local_addr=None: orig(d, a, n, local_addr=("", 500))
    p.connect()
    (ca,), (cb,) = installed(p, "a"), installed(p, "b")
    assert_pair_matches(ca, cb)
    assert [str(t) for t in ca.local_ts] == ["192.0.2.1"]
    assert [str(t) for t in ca.remote_ts] == ["192.0.2.2"]
    assert not ca.encap_udp and not cb.encap_udp
    assert ca.local_addr == "192.0.2.1" and cb.local_addr == "192.0.2.2"


def _nat_pair():
    ca = ChildConfig("c", mode="tunnel", local_ts=("10.1.0.0/16",), remote_ts=("10.2.0.0/16",))
    cb = ChildConfig("c", mode="tunnel", local_ts=("10.2.0.0/16",), remote_ts=("10.1.0.0/16",))
    p = Pair(
        peer_config("to-b", B_ADDR[0], children=(ca,)), peer_config("to-a", "%any", children=(cb,))
    )
    p.a_public = ("198.51.100.7", 31000)  # a is behind a NAT
    p.connect()
    return p


def test_peer_moved_follows_a_new_nat_mapping():
    """Verified ESP from a new NAT mapping (RFC 7296 2.23): the side that is not behind a
    NAT moves its IKE SA there and learns which outbound SAs to redirect."""
    p = _nat_pair()
    hb = p.of("b", IkeSaUp)[0].ike_sa
    (child_b,) = p.of("b", ChildSaInstalled)
    moved = ("198.51.100.7", 31077)
    assert p.b.peer_moved(hb, moved, p.now) == [child_b.outbound_spi]
    assert p.b.ike_sas()[0].remote_addr == moved
    assert p.b.statistics().counter("nat_mapping_updates") == 1
    assert p.b.peer_moved(hb, moved, p.now) == [child_b.outbound_spi]  # already there
    assert p.b.statistics().counter("nat_mapping_updates") == 1
    # B's next request goes to the new mapping
    p.a_public = moved
    p.b.rekey_child(hb, "c", p.now)
    out = p.b.datagrams_to_send_from(p.now)
    assert out and {dst for _, dst, _ in out} == {moved}
    for data, dst, local in out:
        p.net.send(data, (B_ADDR[0], local[1] if local else 500), dst, p.now)
    p.advance(10)
    newest = p.of("b", ChildSaInstalled)[-1]
    assert newest.rekeyed_from == child_b.outbound_spi and newest.remote_port == 31077


def test_peer_moved_refused_where_it_is_unsafe_or_meaningless():
    p = _nat_pair()
    ha = p.of("a", IkeSaUp)[0].ike_sa
    hb = p.of("b", IkeSaUp)[0].ike_sa
    before_a = p.a.ike_sas()[0].remote_addr
    # a is behind a NAT itself: it SHOULD NOT follow (a single packet could break it)
    assert p.a.peer_moved(ha, ("192.0.2.99", 4500), p.now) == []
    assert p.a.ike_sas()[0].remote_addr == before_a
    assert p.b.peer_moved(hb, ("2001:db8::7", 31077), p.now) == []  # family change
    assert p.b.peer_moved(hb, ("198.51.100.7", 0), p.now) == []
    assert p.b.peer_moved(999, ("198.51.100.7", 31077), p.now) == []
    assert p.b.ike_sas()[0].remote_addr == ("198.51.100.7", 31000)
    plain = Pair()  # no NAT, no encapsulation: there is no mapping to follow
    plain.connect()
    hp = plain.of("b", IkeSaUp)[0].ike_sa
    assert plain.b.peer_moved(hp, (A_ADDR[0], 4500), plain.now) == []
    assert plain.b.statistics().counter("nat_mapping_updates") == 0


def test_a_closed_sa_answers_a_retransmitted_delete_from_its_last_response():
    """b answered a's Delete and forgot the IKE SA; the answer got lost, a retransmits:
    b sends the same response again (until CLOSED_RESPONSE_TTL), instead of leaving a
    to retransmit until it gives up. Other requests to the closed SA stay unknown."""
    from ike.harness import Pair
    from pyipsec.ike.endpoint import CLOSED_RESPONSE_TTL

    p = Pair()
    h = p.connect()
    p.a.delete_ike(h, p.now)
    (request,) = [d for d, _, _ in p.a.datagrams_to_send_from(p.now)]
    p.b.receive_datagram(request, p.a_addr, p.now, local_addr=p.b_addr)
    (response,) = [d for d, _, _ in p.b.datagrams_to_send_from(p.now)]  # lost on the way
    assert p.b.statistics().ike_sas == 0
    p.b.receive_datagram(request, p.a_addr, p.now + 2, local_addr=p.b_addr)  # retransmit
    assert [d for d, _, _ in p.b.datagrams_to_send_from(p.now + 2)] == [response]
    assert p.b.statistics().counter("answered_after_close") == 1
    p.a.receive_datagram(response, p.b_addr, p.now + 2, local_addr=p.a_addr)
    assert p.a.statistics().ike_sas == 0  # a's delete completes with the resent answer
    late = p.now + 2 + CLOSED_RESPONSE_TTL
    p.b.receive_datagram(request, p.a_addr, late, local_addr=p.b_addr)
    assert list(p.b.datagrams_to_send_from(late)) == []
    assert p.b.statistics().counter("unknown_spi") == 1
