"""Certificate and PSK authentication through two endpoints (RFC 7296 2.15, RFC 7427)."""

import datetime as dt

import pytest

from ike.harness import A_ADDR, B_ADDR, Pair, peer_config
from pki import NOW, Pki
from pyipsec.ike.config import AuthConfig, ChildConfig
from pyipsec.ike.events import AuthenticationFailed, ChildSaDeleted, ChildSaInstalled, IkeSaUp

START = NOW.timestamp() + 3600


@pytest.fixture(scope="module")
def pki():
    return Pki()


def cert_auth(pki, ee):
    return AuthConfig(
        method="pubkey", private_key=ee.key, cert_chain=(ee.cert, pki.intermediate.cert)
    )


def trust(*cas):
    return AuthConfig(method="pubkey", trusted_cas=tuple(cas))


def make_pair(
    pki,
    a_kind,
    b_kind,
    *,
    a_ee=None,
    b_trust=None,
    a_id="alice.example",
    b_remote_id="alice.example",
    **kw,
):
    a_ee = a_ee or pki.issue(a_kind, dns=["alice.example"])
    b_ee = pki.issue(b_kind, dns=["bob.example"])
    a = peer_config(
        "to-b",
        B_ADDR[0],
        children=(ChildConfig("c"),),
        local_id=a_id,
        remote_id="bob.example",
        local_auth=cert_auth(pki, a_ee),
        remote_auth=trust(pki.root.cert),
        **kw,
    )
    b = peer_config(
        "to-a",
        A_ADDR[0],
        children=(ChildConfig("c"),),
        local_id="bob.example",
        remote_id=b_remote_id,
        local_auth=cert_auth(pki, b_ee),
        remote_auth=b_trust or trust(pki.root.cert),
        **kw,
    )
    return Pair(a, b, start=START)


@pytest.mark.parametrize(
    "a_kind,b_kind",
    [("rsa2048", "p256"), ("p256", "ed25519"), ("ed25519", "rsa2048"), ("p384", "p384")],
)
def test_certificate_handshake(pki, a_kind, b_kind):
    p = make_pair(pki, a_kind, b_kind)
    p.connect()
    assert p.of("a", IkeSaUp)[0].remote_id == "bob.example"
    assert p.of("b", IkeSaUp)[0].remote_id == "alice.example"
    (ca,), (cb,) = p.of("a", ChildSaInstalled), p.of("b", ChildSaInstalled)
    assert ca.inbound_key == cb.outbound_key


def test_large_cert_chain_fragmented(pki):
    p = make_pair(pki, "rsa2048", "rsa2048", fragment_size=600)
    p.connect()
    assert p.a.statistics().counter("fragmented_messages") >= 1
    assert p.b.statistics().counter("fragmented_messages") >= 1
    assert p.of("a", ChildSaInstalled) and p.of("b", ChildSaInstalled)


def failed_both(p):
    p.a.initiate(p.a_peer, p.a_peer.children[0], p.now)
    p.advance(60)
    assert p.of("a", AuthenticationFailed) and p.of("b", AuthenticationFailed)
    assert not p.of("a", ChildSaInstalled) and not p.of("b", ChildSaInstalled)
    assert p.a.statistics().ike_sas == 0 and p.b.statistics().ike_sas == 0
    return p.of("b", AuthenticationFailed)[0].reason


def test_untrusted_certificate(pki):
    other = Pki(name="rogue")
    reason = failed_both(make_pair(pki, "p256", "p256", b_trust=trust(other.root.cert)))
    assert reason


def test_expired_certificate(pki):
    old = pki.issue(
        "p256",
        dns=["alice.example"],
        not_before=NOW - dt.timedelta(days=30),
        not_after=NOW - dt.timedelta(days=1),
    )
    reason = failed_both(make_pair(pki, "p256", "p256", a_ee=old))
    assert "expired" in reason


def test_identity_not_in_certificate(pki):
    failed_both(
        make_pair(pki, "p256", "p256", a_id="mallory.example", b_remote_id="mallory.example")
    )


def test_identity_not_configured(pki):
    failed_both(make_pair(pki, "p256", "p256", b_remote_id="carol.example"))


def test_responder_rejected_by_initiator(pki):
    """The responder authenticates fine but the initiator does not trust it."""
    other = Pki(name="rogue")
    p = make_pair(pki, "p256", "p256")
    p.a_peer = peer_config(
        "to-b",
        B_ADDR[0],
        children=(ChildConfig("c"),),
        local_id="alice.example",
        remote_id="bob.example",
        local_auth=p.a_peer.local_auth,
        remote_auth=trust(other.root.cert),
    )
    p.a.config = type(p.a.config)(peers=(p.a_peer,), local_addr=A_ADDR[0])
    p.a.initiate(p.a_peer, p.a_peer.children[0], p.now)
    p.advance(60)
    assert p.of("a", AuthenticationFailed) and not p.of("a", ChildSaInstalled)
    # the responder had accepted us: the INFORMATIONAL AUTHENTICATION_FAILED undoes it
    (failed,) = p.of("b", AuthenticationFailed)
    assert "rejected" in failed.reason
    (inst,) = p.of("b", ChildSaInstalled)
    (gone,) = p.of("b", ChildSaDeleted)
    assert gone.inbound_spi == inst.inbound_spi
    assert p.a.statistics().ike_sas == 0 and p.b.statistics().ike_sas == 0


def test_psk_vs_pubkey_mismatch(pki):
    ee = pki.issue("p256", dns=["alice.example"])
    a = peer_config(
        "to-b",
        B_ADDR[0],
        children=(ChildConfig("c"),),
        local_id="alice.example",
        local_auth=cert_auth(pki, ee),
    )
    p = Pair(a, start=START)
    failed_both(p)


@pytest.mark.parametrize("seed", [1, 2])
def test_fragmented_certificate_auth_over_lossy_network(pki, seed):
    from ike.harness import Network

    p = make_pair(pki, "rsa2048", "rsa2048", fragment_size=600)
    p.net = Network(seed=seed, drop=0.1, dup=0.1, reorder=0.1, delay=0.1)
    p.connect(max_time=300)
    assert p.a.statistics().counter("fragmented_messages") >= 1
    (ca,), (cb,) = p.of("a", ChildSaInstalled), p.of("b", ChildSaInstalled)
    assert ca.inbound_key == cb.outbound_key


def test_responder_with_several_methods_none_verifies(pki):
    """B lists two certificate methods (two CAs) and no PSK: a certificate from a third CA
    fails with the first method's reason; a PSK initiator is told a signature is expected."""
    rogue, other = Pki(name="rogue"), Pki(name="other")
    p = make_pair(pki, "p256", "p256", a_ee=rogue.issue("p256", dns=["alice.example"]))
    b = p.b_peer
    p.b_peer = peer_config(
        "to-a",
        A_ADDR[0],
        children=b.children,
        local_id=b.local_id,
        remote_id=b.remote_id,
        local_auth=b.local_auth,
        remote_auth=b.remote_auth,
        auth_alternatives=((b.local_auth, trust(other.root.cert)),),
    )
    p.b.config = type(p.b.config)(peers=(p.b_peer,), local_addr=B_ADDR[0])
    reason = failed_both(p)
    assert reason and "PSK" not in reason
    psk_a = peer_config("to-b", B_ADDR[0], children=(ChildConfig("c"),), local_id="alice.example")
    q = Pair(psk_a, p.b_peer, start=START)
    assert "expected a signature" in failed_both(q)
