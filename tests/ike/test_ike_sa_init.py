"""IKE_SA_INIT through the harness: every group and IKE cipher, NAT detection, cookies,
INVALID_KE_PAYLOAD, notifies announced, bad requests answered without state."""

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ike.harness import A_ADDR, B_ADDR, Pair, peer_config
from pyipsec.ike.config import ChildConfig
from pyipsec.ike.events import ChildSaInstalled, IkeSaUp, NegotiationFailed
from pyipsec.ike.exchanges.ike_sa_init import nat_hash
from pyipsec.wire.iana import ExchangeType, NotifyType
from pyipsec.wire.ike import KePayload, Message, NotifyPayload, pull_message, push_message


def both(proposal, **kw):
    c = (ChildConfig("c"),)
    return Pair(
        peer_config("to-b", B_ADDR[0], ike_proposals=(proposal,), children=c, **kw),
        peer_config("to-a", A_ADDR[0], ike_proposals=(proposal,), children=c, **kw),
    )


def check_up(p, proposal):
    assert p.of("a", IkeSaUp)[0].proposal == p.of("b", IkeSaUp)[0].proposal == proposal
    (ca,), (cb,) = p.of("a", ChildSaInstalled), p.of("b", ChildSaInstalled)
    assert ca.inbound_key == cb.outbound_key and ca.outbound_key == cb.inbound_key


@pytest.mark.parametrize(
    "group", ["modp2048", "modp3072", "modp4096", "ecp256", "ecp384", "ecp521", "x25519", "x448"]
)
def test_every_group(group):
    proposal = f"aes128gcm16-prfsha256-{group}"
    p = both(proposal)
    p.connect()
    check_up(p, proposal)


@pytest.mark.parametrize(
    "proposal",
    [
        "aes256gcm16-prfsha384-x25519",
        "aes128gcm8-prfsha256-x25519",
        "aes192gcm12-prfsha512-x25519",
        "chacha20poly1305-prfsha256-x25519",
        "aes128-sha256-prfsha256-x25519",
        "aes256-sha384-prfsha384-x25519",
        "aes256-sha512-prfsha512-x25519",
        "aes128-sha1-prfsha1-x25519",
    ],
)
def test_every_ike_cipher(proposal):
    p = both(proposal)
    p.connect()
    check_up(p, proposal)


def test_nat_detected_behind_nat():
    ca = ChildConfig("c", mode="tunnel", local_ts=("10.1.0.0/16",), remote_ts=("10.2.0.0/16",))
    cb = ChildConfig("c", mode="tunnel", local_ts=("10.2.0.0/16",), remote_ts=("10.1.0.0/16",))
    p = Pair(
        peer_config("to-b", B_ADDR[0], children=(ca,)), peer_config("to-a", "%any", children=(cb,))
    )
    p.a_public = ("198.51.100.7", 40000)  # a's packets arrive from its NAT
    p.connect()
    (ca,), (cb,) = p.of("a", ChildSaInstalled), p.of("b", ChildSaInstalled)
    assert ca.encap_udp and cb.encap_udp
    # IKE_AUTH floated to port 4500 (RFC 7296 2.23)
    assert p.of("a", IkeSaUp)[0].remote_addr == ("192.0.2.2", 4500)
    assert p.of("b", IkeSaUp)[0].remote_addr == ("198.51.100.7", 40000)
    assert p.of("b", IkeSaUp)[0].local_addr == ("192.0.2.2", 4500)
    assert p.a.statistics().counter("nat_t_float") == 1


def test_no_nat_no_encap():
    p = Pair()
    p.connect()
    assert not p.of("a", ChildSaInstalled)[0].encap_udp


@pytest.mark.parametrize("forcing", ["a", "b"])
def test_forced_encapsulation_without_nat(forcing):
    """encap: yes on either side alone makes both float to 4500 and run ESP in UDP."""
    ca = ChildConfig("c", mode="tunnel", local_ts=("10.1.0.0/16",), remote_ts=("10.2.0.0/16",))
    cb = ChildConfig("c", mode="tunnel", local_ts=("10.2.0.0/16",), remote_ts=("10.1.0.0/16",))
    p = Pair(
        peer_config("to-b", B_ADDR[0], children=(ca,), force_encap=forcing == "a"),
        peer_config("to-a", A_ADDR[0], children=(cb,), force_encap=forcing == "b"),
    )
    p.connect()
    (ea,), (eb,) = p.of("a", ChildSaInstalled), p.of("b", ChildSaInstalled)
    assert ea.encap_udp and eb.encap_udp
    # the initiator floated to 4500 (the harness keeps source ports, so b's view of a's
    # port says nothing here)
    assert p.of("a", IkeSaUp)[0].remote_addr == (B_ADDR[0], 4500)
    assert p.a.statistics().counter("nat_t_float") == 1


def test_nat_hash_depends_on_all_inputs():
    base = nat_hash(b"i" * 8, b"r" * 8, ("192.0.2.1", 500))
    assert len(base) == 20
    assert base != nat_hash(b"i" * 8, b"r" * 8, ("192.0.2.1", 4500))
    assert base != nat_hash(b"i" * 8, b"s" * 8, ("192.0.2.1", 500))
    assert base != nat_hash(b"i" * 8, b"r" * 8, ("2001:db8::1", 500))


def capture_init(p):
    """The IKE_SA_INIT request a sends and b's answer."""
    seen = []
    p.net.tamper = lambda data, dst: (seen.append((data, dst)), data)[1]
    p.a.initiate(p.a_peer, p.a_peer.children[0], p.now)
    p.flush()
    return seen


def test_request_announces_features():
    p = Pair(
        peer_config(
            "to-b",
            B_ADDR[0],
            children=(ChildConfig("c"),),
            ike_proposals=("aes128gcm16-prfsha256-x25519-mlkem768",),
        )
    )
    ((req, _),) = capture_init(p)
    msg = pull_message(req)
    types = {n.notify_type for n in msg.notifies()}
    assert {
        NotifyType.NAT_DETECTION_SOURCE_IP,
        NotifyType.NAT_DETECTION_DESTINATION_IP,
        NotifyType.IKEV2_FRAGMENTATION_SUPPORTED,
        NotifyType.SIGNATURE_HASH_ALGORITHMS,
        NotifyType.INTERMEDIATE_EXCHANGE_SUPPORTED,
    } <= types
    sig = next(msg.notifies(NotifyType.SIGNATURE_HASH_ALGORITHMS))
    assert 2 in struct.unpack(f"!{len(sig.data) // 2}H", sig.data)


def test_cookie_state_less_and_bad_cookie_rejected():
    p = Pair(b_endpoint={"cookie_threshold": 0})
    ((req, _),) = capture_init(p)
    p.net.tamper = None
    p.b.receive_datagram(req, A_ADDR, p.now)
    ((ans, _),) = p.b.datagrams_to_send(p.now)
    msg = pull_message(ans)
    (cookie,) = list(msg.notifies(NotifyType.COOKIE))
    assert p.b.statistics().ike_sas == 0 and p.b.statistics().half_open == 0
    # a forged cookie is answered with a fresh challenge, again without state
    orig = pull_message(req)
    forged = Message(
        orig.spi_i,
        orig.spi_r,
        orig.exchange_type,
        orig.flags,
        0,
        [NotifyPayload(notify_type=NotifyType.COOKIE, data=b"\x00" * 36), *orig.payloads],
    )
    p.b.receive_datagram(push_message(forged), A_ADDR, p.now)
    ((ans2, _),) = p.b.datagrams_to_send(p.now)
    assert next(pull_message(ans2).notifies(NotifyType.COOKIE)).data == cookie.data
    assert p.b.statistics().ike_sas == 0 and p.b.cookies.statistics().rejected == 1


def test_retransmitted_init_request_gets_same_answer():
    p = Pair()
    ((req, _),) = capture_init(p)
    p.net.tamper = None
    p.b.receive_datagram(req, A_ADDR, p.now)
    first = p.b.datagrams_to_send(p.now)
    p.b.receive_datagram(req, A_ADDR, p.now)
    again = p.b.datagrams_to_send(p.now)
    assert first == again and p.b.statistics().ike_sas == 1
    assert p.b.statistics().counter("retransmitted_requests") == 1


def test_bad_ke_value_answered_invalid_syntax():
    p = Pair()
    ((req, _),) = capture_init(p)
    orig = pull_message(req)
    payloads = [
        KePayload(31, b"\x01" * 5) if isinstance(x, KePayload) else x for x in orig.payloads
    ]
    bad = Message(orig.spi_i, orig.spi_r, ExchangeType.IKE_SA_INIT, orig.flags, 0, payloads)
    p.b.receive_datagram(push_message(bad), A_ADDR, p.now)
    ((ans, _),) = p.b.datagrams_to_send(p.now)
    assert next(pull_message(ans).notifies()).notify_type == NotifyType.INVALID_SYNTAX
    assert p.b.statistics().ike_sas == 0


def test_invalid_ke_unacceptable_group_fails():
    a = peer_config(
        "to-b",
        B_ADDR[0],
        ike_proposals=("aes128gcm16-prfsha256-x25519",),
        children=(ChildConfig("c"),),
    )
    b = peer_config(
        "to-a",
        A_ADDR[0],
        ike_proposals=("aes128gcm16-prfsha256-ecp256-x25519",),
        children=(ChildConfig("c"),),
    )
    p = Pair(a, b)
    p.connect()  # b accepts the x25519 guess directly: no INVALID_KE round trip
    assert p.b.statistics().counter("invalid_ke_sent") == 0


def test_half_open_timeout_forgets_responder_state():
    p = Pair()
    p.net.tamper = lambda data, dst: data if dst == B_ADDR else None  # b's answers lost
    p.a.initiate(p.a_peer, None, p.now)
    p.advance(5)
    assert p.b.statistics().half_open == 1
    p.advance(40)
    assert p.b.statistics().half_open == 0 and p.b.statistics().ike_sas == 0
    assert p.b.statistics().counter("half_open_timeouts") == 1
    assert p.of("a", NegotiationFailed) or p.a.statistics().ike_sas == 1


def test_max_ike_sas_refuses_more():
    p = Pair(b_endpoint={"max_ike_sas": 1})
    p.connect()
    p.a.initiate(p.a_peer, None, p.now)
    p.advance(10)
    assert p.b.statistics().counter("too_many_ike_sas") == 1
    assert p.of("a", NegotiationFailed)[-1].notify == NotifyType.TEMPORARY_FAILURE
    assert p.b.statistics().ike_sas == 1


def test_unknown_critical_payload_answered():
    from pyipsec.wire.ike import UnknownPayload

    p = Pair()
    ((req, _),) = capture_init(p)
    orig = pull_message(req)
    crit = Message(
        orig.spi_i,
        orig.spi_r,
        ExchangeType.IKE_SA_INIT,
        orig.flags,
        0,
        [*orig.payloads, UnknownPayload(200, b"x", critical=True)],
    )
    p.b.receive_datagram(push_message(crit), A_ADDR, p.now)
    ((ans, _),) = p.b.datagrams_to_send(p.now)
    (n,) = list(pull_message(ans).notifies())
    assert n.notify_type == NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD and n.data == bytes([200])
    assert p.b.statistics().ike_sas == 0
    # not critical: skipped, the handshake goes on
    ok = Message(
        orig.spi_i,
        orig.spi_r,
        ExchangeType.IKE_SA_INIT,
        orig.flags,
        0,
        [*orig.payloads, UnknownPayload(200, b"x", critical=False)],
    )
    p.b.receive_datagram(push_message(ok), A_ADDR, p.now)
    assert p.b.statistics().ike_sas == 1


def test_responder_reports_no_common_proposal():
    """Found against strongSwan (issue 6): a responder that refused a configured peer's
    IKE_SA_INIT with NO_PROPOSAL_CHOSEN only counted it; it now also emits an event saying
    why, without creating any IKE SA."""
    a = peer_config("to-b", B_ADDR[0], ike_proposals=("aes128-sha256-modp2048",))
    b = peer_config("to-a", A_ADDR[0], ike_proposals=("aes256gcm16-prfsha384-ecp384",))
    p = Pair(a, b)
    p.a.initiate(p.a_peer, None, p.now)
    p.advance(5)
    (refused,) = p.of("b", NegotiationFailed)
    assert refused.ike_sa == 0 and refused.peer == "to-a"
    assert refused.notify == NotifyType.NO_PROPOSAL_CHOSEN
    assert "no acceptable IKE proposal" in refused.reason and A_ADDR[0] in refused.reason
    assert p.b.statistics().counter("no_proposal_chosen") == 1
    assert p.b.statistics().ike_sas == 0 and p.b.statistics().half_open == 0
    assert p.of("a", NegotiationFailed)[-1].notify == NotifyType.NO_PROPOSAL_CHOSEN


def test_responder_stays_silent_about_unknown_addresses():
    """An IKE_SA_INIT from an address no peer is configured for is refused and counted,
    but raises no event (no event flood from strangers)."""
    a = peer_config("to-b", B_ADDR[0])
    b = peer_config("to-a", "198.51.100.7")
    p = Pair(a, b)
    p.a.initiate(p.a_peer, None, p.now)
    p.advance(5)
    assert p.of("b", NegotiationFailed) == []
    assert p.b.statistics().counter("no_proposal_chosen") == 1


def test_cookie_retry_keeps_nonce_and_ke():
    p = Pair(b_endpoint={"cookie_threshold": 0})
    log = []
    p.net.tamper = lambda data, dst: (log.append((data, dst)), data)[1]
    p.connect()
    first, second = [pull_message(d) for d, dst in log if dst == B_ADDR and d[18] == 34][:2]
    assert first.payloads == second.payloads[1:]  # COOKIE first, the rest unchanged
    assert second.payloads[0].notify_type == NotifyType.COOKIE


def _init_response():
    p = Pair(seed=4)
    log = []
    p.net.tamper = lambda data, dst: (log.append((data, dst)), data)[1]
    p.a.initiate(p.a_peer, p.a_peer.children[0], p.now)
    p.advance(0.05)
    return next(d for d, dst in log if dst == A_ADDR)


RESPONSE = _init_response()


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    cuts=st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), min_size=1, max_size=4),
    trunc=st.integers(min_value=0, max_value=400),
)
def test_mutated_init_responses_never_crash_the_initiator(cuts, trunc):
    p = Pair(seed=4)
    p.net.tamper = lambda data, dst: None  # b never answers by itself
    p.a.initiate(p.a_peer, p.a_peer.children[0], p.now)
    p.flush()
    data = bytearray(RESPONSE)
    for pos, val in cuts:
        data[pos % len(data)] = val
    data = bytes(data[: trunc or len(data)])
    p.a.receive_datagram(data, B_ADDR, p.now)  # must not raise
    p.flush()
    st_a = p.a.statistics()
    assert st_a.ike_sas <= 1 and st_a.established == 0


def test_captured_init_response_is_accepted_unmutated():
    """The fuzz test above really reaches response processing (same SPIs, same nonce)."""
    p = Pair(seed=4)
    p.net.tamper = lambda data, dst: None
    p.a.initiate(p.a_peer, p.a_peer.children[0], p.now)
    p.flush()
    p.a.receive_datagram(RESPONSE, B_ADDR, p.now)
    assert p.a.ike_sas()[0].state == "auth_sent"


def _init_request():
    p = Pair(seed=4)
    ((req, _),) = capture_init(p)
    return req


REQUEST = _init_request()


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    cuts=st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), min_size=1, max_size=4),
    trunc=st.integers(min_value=0, max_value=400),
)
def test_mutated_init_requests_never_crash_the_responder(cuts, trunc):
    p = Pair(seed=4)
    data = bytearray(REQUEST)
    for pos, val in cuts:
        data[pos % len(data)] = val
    data = bytes(data[: trunc or len(data)])
    p.b.receive_datagram(data, A_ADDR, p.now)  # must not raise
    for out, _ in p.b.datagrams_to_send(p.now):
        assert pull_message(out).exchange_type == ExchangeType.IKE_SA_INIT
    assert p.b.statistics().ike_sas <= 1 and p.b.statistics().established == 0
