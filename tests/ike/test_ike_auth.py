"""IKE_AUTH details: identities, INITIAL_CONTACT, IDr, child refusal keeps the IKE SA."""

import pytest

from ike.harness import A_ADDR, B_ADDR, Pair, peer_config
from pyipsec.ike.config import ChildConfig
from pyipsec.ike.events import AuthenticationFailed, IkeSaUp
from pyipsec.wire.iana import AuthMethod, ExchangeType, NotifyType


def capture_auth(p):
    log = []
    p.net.tamper = lambda data, dst: (log.append((data, dst)), data)[1]
    return log


def decrypt_requests(p, log):
    from pyipsec.wire.ike import decrypt_message

    sa = p.b._by_handle[p.of("b", IkeSaUp)[-1].ike_sa]
    out = []
    for data, dst in log:
        if dst == B_ADDR and data[18] == ExchangeType.IKE_AUTH:
            out.append(decrypt_message(data, sa.cipher_in))
    return out


def test_identities_and_initial_contact():
    a = peer_config(
        "to-b",
        B_ADDR[0],
        local_id="alice@example.org",
        remote_id="@moon.example",
        children=(ChildConfig("c"),),
    )
    b = peer_config(
        "to-a",
        A_ADDR[0],
        local_id="moon.example",
        remote_id="alice@example.org",
        children=(ChildConfig("c"),),
    )
    p = Pair(a, b)
    log = capture_auth(p)
    p.connect()
    assert p.of("a", IkeSaUp)[0].remote_id == "moon.example"
    assert p.of("b", IkeSaUp)[0].remote_id == "alice@example.org"
    (req,) = decrypt_requests(p, log)
    assert next(req.notifies(NotifyType.INITIAL_CONTACT), None) is not None
    assert next(req.notifies(NotifyType.USE_TRANSPORT_MODE), None) is not None


def test_wrong_remote_identity_fails():
    a = peer_config("to-b", B_ADDR[0], remote_id="@other.example", children=(ChildConfig("c"),))
    p = Pair(a)
    p.a.initiate(a, a.children[0], p.now)
    p.advance(20)
    assert p.of("a", AuthenticationFailed)
    assert "not the configured" in p.of("a", AuthenticationFailed)[0].reason


def test_second_ike_sa_without_initial_contact():
    p = Pair()
    p.connect()
    log = capture_auth(p)
    p.a.initiate(p.a_peer, p.a_peer.children[0], p.now)
    p.advance(10)
    assert len(p.of("b", IkeSaUp)) == 2 and p.b.statistics().ike_sas == 2
    reqs = decrypt_requests(p, log)
    assert reqs and next(reqs[-1].notifies(NotifyType.INITIAL_CONTACT), None) is None


def test_responder_picks_peer_by_identity():
    from pyipsec.ike.config import AuthConfig, EndpointConfig
    from pyipsec.ike.endpoint import IkeEndpoint

    carol = peer_config(
        "carol",
        "%any",
        remote_id="carol@example.org",
        local_auth=AuthConfig(psk=b"carol secret"),
        remote_auth=AuthConfig(psk=b"carol secret"),
        children=(ChildConfig("c"),),
    )
    alice = peer_config(
        "alice", "%any", remote_id="alice@example.org", children=(ChildConfig("c"),)
    )
    a = peer_config("to-b", B_ADDR[0], local_id="alice@example.org", children=(ChildConfig("c"),))
    p = Pair(a)
    p.b = IkeEndpoint(EndpointConfig(peers=(carol, alice), local_addr=B_ADDR[0]))
    p.connect()
    assert p.of("b", IkeSaUp)[0].peer == "alice"


# ---------------------------------------------------------------- several auth methods


@pytest.fixture(scope="module")
def pki():
    from pki import Pki

    return Pki()


def _start():
    from pki import NOW  # certificates are checked against it

    return NOW.timestamp() + 3600


def _cert(pki, dns):
    from pyipsec.ike.config import AuthConfig

    ee = pki.issue("p256", dns=[dns])
    chain = (ee.cert, pki.intermediate.cert)
    return AuthConfig(method="pubkey", private_key=ee.key, cert_chain=chain)


def _trust(*cas):
    from pyipsec.ike.config import AuthConfig

    return AuthConfig(method="pubkey", trusted_cas=tuple(cas))


def _multi_pair(pki, a_pairs, b_pairs, *, b_trust_ca=None):
    """A (alice) and B (bob), each with an ordered list of (local, remote) pairs."""
    a = peer_config(
        "to-b",
        B_ADDR[0],
        local_id="alice.example",
        remote_id="bob.example",
        local_auth=a_pairs[0][0],
        remote_auth=a_pairs[0][1],
        auth_alternatives=tuple(a_pairs[1:]),
        children=(ChildConfig("c"),),
    )
    b = peer_config(
        "to-a",
        A_ADDR[0],
        local_id="bob.example",
        remote_id="alice.example",
        local_auth=b_pairs[0][0],
        remote_auth=b_pairs[0][1],
        auth_alternatives=tuple(b_pairs[1:]),
        children=(ChildConfig("c"),),
    )
    return Pair(a, b, start=_start())


def _methods_seen(log, p):
    """AUTH methods of the IKE_AUTH requests A sent (decrypted with B's SA keys)."""
    from pyipsec.wire.ike import AuthPayload

    return [m.find(AuthPayload).method for m in decrypt_requests(p, log)]


def test_responder_answers_psk_initiator_with_psk(pki):
    """B lists [certificate, psk]; A has only the PSK: B verifies with its PSK pair and
    answers with its PSK, first time."""
    from ike.harness import PSK

    b_cert = _cert(pki, "bob.example")
    p = _multi_pair(pki, [(PSK, PSK)], [(b_cert, _trust(pki.root.cert)), (PSK, PSK)])
    log = capture_auth(p)
    p.connect()
    (a_up,), (b_up,) = p.of("a", IkeSaUp), p.of("b", IkeSaUp)
    assert (a_up.auth, b_up.auth) == ("psk", "psk")
    assert not p.of("a", AuthenticationFailed) and not p.of("b", AuthenticationFailed)
    assert _methods_seen(log, p) == [AuthMethod.SHARED_KEY_MIC]


def test_responder_answers_certificate_with_certificate(pki):
    """B lists [psk, certificate]; A uses its certificate: B picks its certificate pair
    (by the AUTH payload's method) and signs too."""
    from ike.harness import PSK

    a_cert, b_cert = _cert(pki, "alice.example"), _cert(pki, "bob.example")
    trust = _trust(pki.root.cert)
    p = _multi_pair(pki, [(a_cert, trust)], [(PSK, PSK), (b_cert, trust)])
    p.connect()
    (a_up,), (b_up,) = p.of("a", IkeSaUp), p.of("b", IkeSaUp)
    assert (a_up.auth, b_up.auth) == ("pubkey", "pubkey")
    assert a_up.remote_id == "bob.example" and b_up.remote_id == "alice.example"


def test_responder_tries_each_certificate_method(pki):
    """Two certificate methods (two CAs): the initiator's chain verifies with the second."""
    from pki import Pki

    other = Pki(name="other ca")
    a_cert, b_cert = _cert(other, "alice.example"), _cert(pki, "bob.example")
    p = _multi_pair(
        pki,
        [(a_cert, _trust(pki.root.cert))],
        [(b_cert, _trust(pki.root.cert)), (b_cert, _trust(other.root.cert))],
    )
    p.connect()
    assert p.of("b", IkeSaUp)[0].remote_id == "alice.example"
    assert not p.of("b", AuthenticationFailed)


def test_initiator_falls_back_to_next_method(pki):
    """A lists [certificate, psk], B has only the PSK: B rejects A's signature, A starts
    over with a new IKE SA and its PSK, which comes up with the first Child SA."""
    from ike.harness import PSK
    from pyipsec.ike.events import ChildSaInstalled, IkeSaDown

    a_cert = _cert(pki, "alice.example")
    p = _multi_pair(pki, [(a_cert, _trust(pki.root.cert)), (PSK, PSK)], [(PSK, PSK)])
    first = p.connect()
    (failed,) = p.of("a", AuthenticationFailed)
    assert failed.ike_sa == first and failed.retry not in (0, first)
    assert "rejected" in failed.reason and "next authentication method (psk)" in failed.reason
    assert "expected PSK" in p.of("b", AuthenticationFailed)[0].reason
    (up,) = p.of("a", IkeSaUp)
    assert up.ike_sa == failed.retry and up.peer == "to-b" and up.auth == "psk"
    assert not [e for e in p.of("a", IkeSaDown) if e.ike_sa == first]
    (ca,), (cb,) = p.of("a", ChildSaInstalled), p.of("b", ChildSaInstalled)
    assert ca.ike_sa == failed.retry and ca.inbound_key == cb.outbound_key
    assert p.a.statistics().counter("auth_retries") == 1
    assert p.a.statistics().counter("auth_failures") == 1
    assert p.a.statistics().ike_sas == 1 and p.b.statistics().ike_sas == 1


def test_initiator_gives_up_after_last_method(pki):
    """Every method fails (B's PSK differs): one failure per method, in order, then no
    retry and nothing left."""
    from ike.harness import PSK
    from pyipsec.ike.config import AuthConfig
    from pyipsec.ike.events import IkeSaDown

    wrong = AuthConfig(psk=b"not the same secret")
    a_cert = _cert(pki, "alice.example")
    p = _multi_pair(pki, [(a_cert, _trust(pki.root.cert)), (PSK, PSK)], [(wrong, wrong)])
    p.a.initiate(p.a_peer, p.a_peer.children[0], p.now)
    p.advance(60)
    first, second = p.of("a", AuthenticationFailed)
    assert first.retry == second.ike_sa and second.retry == 0
    assert "next authentication method" not in second.reason
    assert [e.ike_sa for e in p.of("a", IkeSaDown)] == [second.ike_sa]
    assert len(p.of("b", AuthenticationFailed)) == 2
    assert not p.of("a", IkeSaUp) and not p.of("b", IkeSaUp)
    assert p.a.statistics().ike_sas == 0 and p.b.statistics().ike_sas == 0
    assert p.a.statistics().counter("auth_retries") == 1


def test_initiator_retries_when_responder_auth_does_not_verify(pki):
    """B accepts A's certificate and signs, but A does not trust B's CA: A tells B
    (AUTHENTICATION_FAILED) and starts over with the PSK, which B answers with its PSK."""
    from ike.harness import PSK
    from pki import Pki

    rogue = Pki(name="rogue")
    a_cert, b_cert = _cert(pki, "alice.example"), _cert(pki, "bob.example")
    trust = _trust(pki.root.cert)
    p = _multi_pair(
        pki,
        [(a_cert, _trust(rogue.root.cert)), (PSK, PSK)],
        [(b_cert, trust), (PSK, PSK)],
    )
    p.connect()
    (failed,) = p.of("a", AuthenticationFailed)
    assert failed.retry and "next authentication method" in failed.reason
    assert "rejected" in p.of("b", AuthenticationFailed)[0].reason
    ups = p.of("b", IkeSaUp)
    assert [u.auth for u in ups] == ["pubkey", "psk"]  # the first one was undone
    assert p.of("a", IkeSaUp)[0].auth == "psk"
    assert p.a.statistics().ike_sas == 1 and p.b.statistics().ike_sas == 1
