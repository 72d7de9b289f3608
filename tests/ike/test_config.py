import pytest

from pyipsec.errors import ConfigError
from pyipsec.ike.config import AuthConfig, ChildConfig, EndpointConfig, Identity, PeerConfig
from pyipsec.wire.iana import IdType, KeId, ProtocolId, TransformType

PSK = AuthConfig(psk=b"secret-psk-value")


def peer(**kw):
    kw.setdefault("local_auth", PSK)
    kw.setdefault("remote_auth", PSK)
    return PeerConfig("p", **kw)


def test_defaults_valid():
    p = peer(children=(ChildConfig("c"),))
    assert p.default_ke == KeId.CURVE25519
    assert p.child("c").protocol == ProtocolId.ESP
    assert p.hard_life > p.rekey_time
    assert EndpointConfig(peers=(p,)).peer("p") is p


def test_auth_pairs_and_next_auth():
    other = AuthConfig(psk=b"another-secret-value")
    third = AuthConfig(psk=b"a-third-secret-value")
    p = peer(auth_alternatives=((other, other), (third, PSK)), children=(ChildConfig("c"),))
    assert p.auth_pairs() == ((PSK, PSK), (other, other), (third, PSK))
    second = p.next_auth()
    assert second is not None and second.name == p.name and second.children == p.children
    assert (second.local_auth, second.remote_auth) == (other, other)
    assert second.auth_alternatives == ((third, PSK),)
    last = second.next_auth()
    assert last is not None and (last.local_auth, last.remote_auth) == (third, PSK)
    assert last.auth_alternatives == () and last.next_auth() is None
    assert peer().next_auth() is None and peer().auth_pairs() == ((PSK, PSK),)
    assert "another-secret-value" not in repr(p)


def test_psk_not_in_repr():
    p = peer()
    assert "secret-psk-value" not in repr(p)
    assert "secret-psk-value" not in repr(PSK)


@pytest.mark.parametrize(
    "kw,key",
    [
        ({"ike_proposals": ("aes128-bogus-x25519",)}, "peer.ike_proposals"),
        ({"ike_proposals": ("aes128-sha256",)}, "peer.ike_proposals"),
        ({"ike_proposals": ()}, "peer.ike_proposals"),
        ({"remote_addrs": ("not-an-ip",)}, "peer.remote_addrs"),
        ({"retransmit_tries": 0}, "peer.retransmit_tries"),
        ({"retransmit_base": 0.5}, "peer.retransmit_base"),
        ({"jitter": 20000.0}, "peer.jitter"),
        ({"local_auth": AuthConfig()}, "peer.local_auth.psk"),
        ({"remote_auth": AuthConfig(method="pubkey")}, "peer.remote_auth"),
        ({"fragment_size": 100}, "peer.fragment_size"),
        ({"children": (ChildConfig("a"), ChildConfig("a"))}, "peer.children"),
        ({"auth_alternatives": ((PSK, AuthConfig()),)}, "peer.auth_alternatives.0.remote_auth.psk"),
        (
            {"auth_alternatives": ((PSK, PSK), (AuthConfig(method="pubkey"), PSK))},
            "peer.auth_alternatives.1.local_auth",
        ),
        ({"auth_alternatives": ((PSK,),)}, "peer.auth_alternatives.0"),
        ({"auth_alternatives": (("psk", "psk"),)}, "peer.auth_alternatives.0"),
    ],
)
def test_peer_invalid(kw, key):
    with pytest.raises(ConfigError) as ei:
        peer(**kw)
    assert ei.value.key == key


@pytest.mark.parametrize(
    "kw,key",
    [
        ({"mode": "bogus"}, "child.mode"),
        ({"esp_proposals": (), "ah_proposals": ()}, "child.esp_proposals"),
        ({"ah_proposals": ("sha256",)}, "child.ah_proposals"),
        ({"esp_proposals": ("aes128",)}, "child.esp_proposals"),
        ({"local_ts": ("10.0.0.0/33",)}, "child.local_ts"),
        ({"remote_ts": ("10.0.0.1[bogus]",)}, "child.remote_ts"),
        ({"pfs_group": "modp1"}, "child.pfs_group"),
        ({"life_time": 10.0}, "child.life_time"),
        ({"start_action": "x"}, "child.start_action"),
    ],
)
def test_child_invalid(kw, key):
    with pytest.raises(ConfigError) as ei:
        ChildConfig("c", **kw)
    assert ei.value.key == key


def test_child_pfs_and_ah():
    c = ChildConfig("c", pfs_group="ecp256")
    assert all(p.algs(TransformType.KE) == ((KeId.ECP256, None),) for p in c.proposals())
    ah = ChildConfig("c", esp_proposals=(), ah_proposals=("sha256",))
    assert ah.protocol == ProtocolId.AH


@pytest.mark.parametrize(
    "text,t,data",
    [
        ("10.1.2.3", IdType.IPV4_ADDR, bytes([10, 1, 2, 3])),
        ("::1", IdType.IPV6_ADDR, bytes(15) + b"\x01"),
        ("moon.example", IdType.FQDN, b"moon.example"),
        ("@moon.example", IdType.FQDN, b"moon.example"),
        ("carol@example.org", IdType.RFC822_ADDR, b"carol@example.org"),
        ("keyid:0a0b", IdType.KEY_ID, b"\x0a\x0b"),
    ],
)
def test_identity_parse(text, t, data):
    ident = Identity.parse(text)
    assert (ident.id_type, ident.data) == (t, data)
    assert str(ident)


def test_identity_dn_and_errors():
    ident = Identity.parse("C=CH, O=Org, CN=moon")
    assert ident.id_type == IdType.DER_ASN1_DN and ident.data.startswith(b"\x30")
    with pytest.raises(ConfigError):
        Identity.parse("")
    with pytest.raises(ConfigError):
        Identity.parse("keyid:zz")


def test_endpoint_invalid():
    with pytest.raises(ConfigError) as ei:
        EndpointConfig(local_addr="x")
    assert ei.value.key == "local_addr"
    with pytest.raises(ConfigError):
        EndpointConfig(peers=(peer(), peer()))


def test_dn_identity_matches_other_string_encoding():
    """Found against strongSwan (issue 6): charon sends "O=pyipsec test, CN=charon.pyi.test"
    with PrintableString values; the configured identity (UTF8String) must still match."""
    captured = bytes.fromhex(
        "303131153013060355040a130c707969707365632074657374311830160603550403130f"
        "636861726f6e2e7079692e74657374"
    )
    want = Identity.parse("O=pyipsec test, CN=charon.pyi.test")
    assert want.data != captured
    assert want.matches(IdType.DER_ASN1_DN, captured)
    assert not want.matches(IdType.FQDN, captured)
    assert not Identity.parse("O=pyipsec test, CN=other").matches(IdType.DER_ASN1_DN, captured)
    fqdn = Identity.parse("@charon.pyi.test")
    assert fqdn.matches(IdType.FQDN, b"charon.pyi.test")
    assert not fqdn.matches(IdType.FQDN, b"CHARON.pyi.test")
