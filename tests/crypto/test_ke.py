"""Key exchange methods: agreement for every group, rejection of bad peer values, ML-KEM."""

from __future__ import annotations

import warnings

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from pyipsec.crypto.ke import KE_NAMES, ke_by_id, ke_by_name, supported_ke_ids
from pyipsec.errors import ConfigError, ProtocolError
from pyipsec.wire.iana import KeId, NotifyType

ALL = [
    KeId.MODP2048,
    KeId.MODP3072,
    KeId.MODP4096,
    KeId.ECP256,
    KeId.ECP384,
    KeId.ECP521,
    KeId.CURVE25519,
    KeId.CURVE448,
    KeId.ML_KEM_768,
    KeId.ML_KEM_1024,
]
SIZES = {
    KeId.MODP2048: (256, 256, 256),
    KeId.MODP3072: (384, 384, 384),
    KeId.MODP4096: (512, 512, 512),
    KeId.ECP256: (64, 64, 32),
    KeId.ECP384: (96, 96, 48),
    KeId.ECP521: (132, 132, 66),
    KeId.CURVE25519: (32, 32, 32),
    KeId.CURVE448: (56, 56, 56),
    KeId.ML_KEM_768: (1184, 1088, 32),
    KeId.ML_KEM_1024: (1568, 1568, 32),
}


def test_all_required_methods_supported() -> None:
    assert set(ALL) <= set(supported_ke_ids())


@pytest.mark.parametrize("ke_id", ALL, ids=lambda k: k.name)
def test_two_parties_agree(ke_id: KeId) -> None:
    ke = ke_by_id(ke_id)
    assert ke.id == ke_id
    pub_size, resp_size, ss_size = SIZES[ke_id]
    kx = ke.new()
    kei = kx.public_value()
    assert len(kei) == pub_size == ke.public_size
    ker, ss_r = ke.respond(kei)
    assert len(ker) == resp_size == ke.response_size
    ss_i = kx.complete(ker)
    assert ss_i == ss_r and len(ss_i) == ss_size
    # A second exchange gives a different secret (fresh ephemeral keys).
    kx2 = ke.new()
    ker2, ss2 = ke.respond(kx2.public_value())
    assert kx2.complete(ker2) == ss2 != ss_i


@pytest.mark.parametrize("ke_id", [k for k in ALL if not ke_by_id(k).is_kem], ids=str)
def test_dh_symmetric_shared_secret_api(ke_id: KeId) -> None:
    ke = ke_by_id(ke_id)
    a, b = ke.new(), ke.new()
    assert a.shared_secret(b.public_value()) == b.shared_secret(a.public_value())


@pytest.mark.parametrize("ke_id", ALL, ids=lambda k: k.name)
@pytest.mark.parametrize("delta", [-1, +1])
def test_wrong_length_rejected(ke_id: KeId, delta: int) -> None:
    ke = ke_by_id(ke_id)
    kx = ke.new()
    good_resp, _ = ke.respond(ke.new().public_value())
    with pytest.raises(ProtocolError) as ei:
        kx.complete(good_resp[:delta] if delta < 0 else good_resp + b"\0")
    assert ei.value.notify == NotifyType.INVALID_SYNTAX
    pub = kx.public_value()
    with pytest.raises(ProtocolError) as ei:
        ke.respond(pub[:delta] if delta < 0 else pub + b"\0")
    assert ei.value.notify == NotifyType.INVALID_SYNTAX


@pytest.mark.parametrize("ke_id", [KeId.MODP2048, KeId.MODP3072, KeId.MODP4096], ids=str)
def test_modp_degenerate_values_rejected(ke_id: KeId) -> None:
    ke = ke_by_id(ke_id)
    p = ke._p  # the test needs the modulus for p-1 and p
    n = ke.public_size
    kx = ke.new()
    for y in (0, 1, p - 1, p, 2 ** (8 * n) - 1):
        with pytest.raises(ProtocolError) as ei:
            kx.complete(y.to_bytes(n, "big"))
        assert ei.value.notify == NotifyType.INVALID_SYNTAX


@pytest.mark.parametrize(
    ("ke_id", "curve"),
    [(KeId.ECP256, ec.SECP256R1()), (KeId.ECP384, ec.SECP384R1()), (KeId.ECP521, ec.SECP521R1())],
    ids=str,
)
def test_ecp_point_not_on_curve_rejected(ke_id: KeId, curve: ec.EllipticCurve) -> None:
    ke = ke_by_id(ke_id)
    good = ke.new().public_value()
    half = len(good) // 2
    y = int.from_bytes(good[half:], "big")
    bad = good[:half] + ((y + 1) % 2 ** (8 * half)).to_bytes(half, "big")
    for value in (bad, bytes(len(good))):
        with pytest.raises(ProtocolError):
            ke.new().complete(value)
        with pytest.raises(ProtocolError):
            ke.respond(value)


def test_ecp_public_value_has_no_prefix_and_is_on_curve() -> None:
    ke = ke_by_id(KeId.ECP256)
    v = ke.new().public_value()
    pub = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + v)
    assert pub.public_numbers().x.to_bytes(32, "big") == v[:32]


@pytest.mark.parametrize("ke_id", [KeId.CURVE25519, KeId.CURVE448], ids=str)
def test_xdh_small_order_rejected(ke_id: KeId) -> None:
    ke = ke_by_id(ke_id)
    # u = 0 and u = 1 are small-order points: the shared secret would be all zeros.
    for u in (0, 1):
        with pytest.raises(ProtocolError) as ei:
            ke.new().complete(u.to_bytes(ke.public_size, "little"))
        assert ei.value.notify == NotifyType.INVALID_SYNTAX


@pytest.mark.parametrize("ke_id", [KeId.ML_KEM_768, KeId.ML_KEM_1024], ids=str)
def test_mlkem_encapsulate_decapsulate(ke_id: KeId) -> None:
    ke = ke_by_id(ke_id)
    assert ke.is_kem
    kx = ke.new()
    ct, ss = ke.encapsulate(kx.public_value())
    assert kx.decapsulate(ct) == ss
    # A modified ciphertext decapsulates (implicit rejection) to a different secret.
    tampered = bytes([ct[0] ^ 1]) + ct[1:]
    assert kx.decapsulate(tampered) != ss


def test_mlkem_invalid_encapsulation_key_rejected() -> None:
    ke = ke_by_id(KeId.ML_KEM_768)
    ek = bytearray(ke.new().public_value())
    # First 12-bit coefficient := 4095 >= q = 3329: fails the FIPS 203 modulus check.
    ek[0] = 0xFF
    ek[1] |= 0x0F
    with pytest.raises(ProtocolError) as ei:
        ke.encapsulate(bytes(ek))
    assert ei.value.notify == NotifyType.INVALID_SYNTAX


def test_registry_names_and_errors() -> None:
    assert ke_by_name("x25519") is ke_by_id(KeId.CURVE25519)
    assert ke_by_name("MODP2048").id == KeId.MODP2048
    assert ke_by_name("mlkem768").id == KeId.ML_KEM_768
    assert "curve25519" in KE_NAMES
    with pytest.raises(ConfigError):
        ke_by_id(KeId.MODP1024)
    with pytest.raises(ConfigError):
        ke_by_id(12345)
    with pytest.raises(ConfigError):
        ke_by_name("ecp999")
    assert "curve25519" in repr(ke_by_id(KeId.CURVE25519))


def test_no_deprecation_warning_in_use() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ke = ke_by_id(KeId.MODP2048)
        kx = ke.new()
        resp, ss = ke.respond(kx.public_value())
        assert kx.complete(resp) == ss


def test_context_repr_has_no_key() -> None:
    kx = ke_by_id(KeId.CURVE25519).new()
    assert kx.public_value().hex() not in repr(kx)


_FUZZ_CTX = {k: (ke_by_id(k), ke_by_id(k).new()) for k in ALL}


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(ALL), st.data())
def test_fuzz_peer_values_only_raise_protocol_error(ke_id: KeId, data) -> None:
    ke, kx = _FUZZ_CTX[ke_id]
    size = st.sampled_from([0, 1, ke.public_size - 1, ke.public_size, ke.response_size])
    value = data.draw(size.flatmap(lambda n: st.binary(min_size=n, max_size=n)))
    for fn in (kx.complete, ke.respond):
        try:
            fn(value)
        except ProtocolError as exc:
            assert exc.notify == NotifyType.INVALID_SYNTAX
