"""IKE_AUTH details: identities, INITIAL_CONTACT, IDr, child refusal keeps the IKE SA."""

from ike.harness import A_ADDR, B_ADDR, Pair, peer_config
from pyipsec.ike.config import ChildConfig
from pyipsec.ike.events import AuthenticationFailed, IkeSaUp
from pyipsec.wire.iana import ExchangeType, NotifyType


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
