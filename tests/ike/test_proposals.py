import pytest

from pyipsec.errors import ConfigError, ProtocolError
from pyipsec.ike.proposals import (
    check_chosen,
    child_key_sizes,
    esp_algorithm_keyword,
    parse_proposal,
    select_proposal,
    without_ke,
)
from pyipsec.wire.iana import (
    EncrId,
    EsnId,
    IntegId,
    KeId,
    NotifyType,
    PrfId,
    ProtocolId,
    TransformType,
)

IKE, ESP, AH = ProtocolId.IKE, ProtocolId.ESP, ProtocolId.AH


def offer(spec, num=1, spi=b""):
    return (num, spec.protocol, spi, spec.flat())


def test_parse_ike_aead_default_prf():
    p = parse_proposal("aes128gcm16-prfsha256-x25519", IKE)
    assert p.algs(TransformType.ENCR) == ((EncrId.AES_GCM_16, 128),)
    assert p.algs(TransformType.PRF) == ((PrfId.HMAC_SHA2_256, None),)
    assert p.algs(TransformType.KE) == ((KeId.CURVE25519, None),)
    assert parse_proposal("aes256gcm16-x25519", IKE).algs(TransformType.PRF)


def test_parse_ike_cbc_prf_from_integ():
    p = parse_proposal("aes256-sha384-modp2048-ecp256", IKE)
    assert p.algs(TransformType.PRF) == ((PrfId.HMAC_SHA2_384, None),)
    assert p.algs(TransformType.INTEG) == ((IntegId.HMAC_SHA2_384_192, None),)
    assert [k for k, _ in p.algs(TransformType.KE)] == [KeId.MODP2048, KeId.ECP256]


def test_parse_mlkem_additional():
    p = parse_proposal("aes128gcm16-prfsha256-x25519-mlkem768", IKE)
    assert p.algs(TransformType.ADDKE1) == ((KeId.ML_KEM_768, None),)
    q = parse_proposal("aes128gcm16-x25519-ke1_mlkem768", IKE)
    assert q.algs(TransformType.ADDKE1) == ((KeId.ML_KEM_768, None),)


@pytest.mark.parametrize(
    "kw,proto",
    [
        ("", IKE),
        ("aes128gcm16-sha256-x25519", IKE),
        ("aes128gcm16-aes128-x25519", IKE),
        ("aes128-prfsha256-x25519", IKE),
        ("aes128gcm16-prfsha256", IKE),
        ("sha256", ESP),
        ("aes128", ESP),
        ("aes128", AH),
        ("esn", AH),
        ("ke9_mlkem768", IKE),
    ],
)
def test_parse_invalid(kw, proto):
    with pytest.raises(ConfigError):
        parse_proposal(kw, proto)


def test_select_first_of_ours_with_common():
    ours = [
        parse_proposal("aes256gcm16-prfsha384-ecp384", IKE),
        parse_proposal("aes128gcm16-prfsha256-x25519", IKE),
    ]
    theirs = [offer(parse_proposal("aes128gcm16-aes256gcm16-prfsha256-x25519-ecp256", IKE), 7)]
    chosen = select_proposal(ours, theirs)
    assert chosen.number == 7
    assert chosen.encr == (EncrId.AES_GCM_16, 128)
    assert chosen.ke == KeId.CURVE25519
    assert chosen.prf == PrfId.HMAC_SHA2_256
    check_chosen([parse_proposal("aes128gcm16-aes256gcm16-prfsha256-x25519-ecp256", IKE)], chosen)


def test_select_none():
    ours = [parse_proposal("aes256-sha256-modp2048", IKE)]
    theirs = [offer(parse_proposal("aes128gcm16-prfsha256-x25519", IKE))]
    with pytest.raises(ProtocolError) as ei:
        select_proposal(ours, theirs)
    assert ei.value.notify == NotifyType.NO_PROPOSAL_CHOSEN


def test_select_addke_must_match():
    hybrid = parse_proposal("aes128gcm16-prfsha256-x25519-mlkem768", IKE)
    plain = parse_proposal("aes128gcm16-prfsha256-x25519", IKE)
    with pytest.raises(ProtocolError):
        select_proposal([hybrid], [offer(plain)])
    assert select_proposal([hybrid], [offer(hybrid)]).additional_kes() == [
        (TransformType.ADDKE1, KeId.ML_KEM_768)
    ]


def test_esp_esn_and_keyword():
    ours = [parse_proposal("aes128gcm16-esn", ESP)]
    theirs = [offer(parse_proposal("aes128gcm16-esn-noesn", ESP), spi=b"\x01\x02\x03\x04")]
    c = select_proposal(ours, theirs)
    assert c.esn and c.spi == b"\x01\x02\x03\x04"
    assert esp_algorithm_keyword(c) == "aes128gcm16"
    assert child_key_sizes(c) == (20, 0)
    cbc = select_proposal(
        [parse_proposal("aes256-sha256", ESP)], [offer(parse_proposal("aes256-sha256", ESP))]
    )
    assert not cbc.esn and esp_algorithm_keyword(cbc) == "aes256-sha256"
    assert child_key_sizes(cbc) == (32, 32)
    ah = select_proposal([parse_proposal("sha256", AH)], [offer(parse_proposal("sha256", AH))])
    assert esp_algorithm_keyword(ah) == "sha256" and child_key_sizes(ah) == (0, 32)
    assert ah.get(TransformType.ESN) == (EsnId.NO_ESN, None)


def test_pfs_mismatch_and_without_ke():
    pfs = parse_proposal("aes128gcm16-x25519", ESP)
    nopfs = parse_proposal("aes128gcm16", ESP)
    with pytest.raises(ProtocolError):
        select_proposal([pfs], [offer(nopfs)])
    assert select_proposal([without_ke(pfs)], [offer(nopfs)]).ke is None


def test_check_chosen_rejects_unoffered():
    chosen = select_proposal(
        [parse_proposal("aes256gcm16-x25519", IKE)],
        [offer(parse_proposal("aes256gcm16-x25519", IKE))],
    )
    with pytest.raises(ProtocolError):
        check_chosen([parse_proposal("aes128gcm16-x25519", IKE)], chosen)
