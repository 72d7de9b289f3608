"""AUTH data: PSK (RFC 7296 2.15) and signatures (RFC 7427, RFC 8420, legacy methods)."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding
from hypothesis import given, settings
from hypothesis import strategies as st

from pki import new_key
from pyipsec.crypto.prf import Prf
from pyipsec.crypto.signatures import (
    algorithm_identifier,
    choose_hash_algorithm,
    pack_signature_hash_algorithms,
    psk_auth_data,
    sign,
    signature_hash_algorithms,
    signed_octets,
    unpack_signature_hash_algorithms,
    verify,
    verify_psk,
)
from pyipsec.errors import ConfigError, ProtocolError
from pyipsec.wire.iana import AuthMethod, HashAlgorithm, NotifyType

OCTETS = b"RealMessage1" + b"NonceRData" * 3 + bytes(range(32))
H = HashAlgorithm


def auth_failed(exc: pytest.ExceptionInfo) -> bool:
    return exc.value.notify == NotifyType.AUTHENTICATION_FAILED


# ------------------------------------------------------------------- PSK


def test_psk_auth_data_definition() -> None:
    psk = b"correct horse battery staple"
    inner = hmac.new(psk, b"Key Pad for IKEv2", hashlib.sha256).digest()
    want = hmac.new(inner, OCTETS, hashlib.sha256).digest()
    assert psk_auth_data("prf-hmac-sha256", psk, OCTETS) == want
    verify_psk("prf-hmac-sha256", psk, OCTETS, want)
    with pytest.raises(ProtocolError) as ei:
        verify_psk("prf-hmac-sha256", b"wrong psk", OCTETS, want)
    assert auth_failed(ei)
    with pytest.raises(ProtocolError):
        verify_psk("prf-hmac-sha256", psk, OCTETS, want[:-1])


def test_signed_octets_definition() -> None:
    sk_pi = b"\x07" * 32
    idbody = bytes([2, 0, 0, 0]) + b"alice.example"
    got = signed_octets("prf-hmac-sha256", b"MSG1", b"NR", sk_pi, idbody)
    assert got == b"MSG1NR" + hmac.new(sk_pi, idbody, hashlib.sha256).digest()
    assert (
        signed_octets(Prf.from_name("prf-hmac-sha256"), b"M", b"N", sk_pi, idbody, b"IA")[-2:]
        == b"IA"
    )


# ------------------------------------------------------------------- RFC 7427 Appendix A

# RFC 7427 Appendix A (A.1 RSA, A.3 ECDSA, A.4.3 RSASSA-PSS with SHA-256); RFC 8420 (Ed25519).
RFC7427_BLOBS = {
    ("rsa", H.SHA1): "300d06092a864886f70d0101050500",
    ("rsa", H.SHA2_256): "300d06092a864886f70d01010b0500",
    ("rsa", H.SHA2_384): "300d06092a864886f70d01010c0500",
    ("rsa", H.SHA2_512): "300d06092a864886f70d01010d0500",
    ("ecdsa", H.SHA2_256): "300a06082a8648ce3d040302",
    ("ecdsa", H.SHA2_384): "300a06082a8648ce3d040303",
    ("ecdsa", H.SHA2_512): "300a06082a8648ce3d040304",
    ("pss", H.SHA2_256): (
        "304606092a864886f70d01010a3039a00f300d06096086480165030402010500a11c301a06092a8648"
        "86f70d010108300d06096086480165030402010500a203020120a303020101"
    ),
    ("ed25519", H.IDENTITY): "300506032b6570",
}


@pytest.mark.parametrize(("kind", "alg"), sorted(RFC7427_BLOBS, key=str), ids=str)
def test_algorithm_identifiers_match_rfc(kind: str, alg: HashAlgorithm) -> None:
    assert algorithm_identifier(kind, alg).hex() == RFC7427_BLOBS[(kind, alg)]


# ------------------------------------------------------------------- sign / verify

CASES = [
    ("rsa2048", H.SHA2_256, False),
    ("rsa2048", H.SHA2_384, False),
    ("rsa2048", H.SHA2_512, False),
    ("rsa2048", H.SHA2_256, True),
    ("rsa2048", H.SHA2_384, True),
    ("rsa2048", H.SHA2_512, True),
    ("p256", H.SHA2_256, False),
    ("p384", H.SHA2_384, False),
    ("p521", H.SHA2_512, False),
    ("p256", H.SHA2_512, False),
    ("ed25519", None, False),
    ("ed448", None, False),
]


@pytest.mark.parametrize(("kind", "alg", "pss"), CASES, ids=str)
def test_sign_verify_digital_signature(kind: str, alg, pss: bool) -> None:
    key = new_key(kind)
    method, data = sign(key, OCTETS, alg, rsa_pss=pss)
    assert method == AuthMethod.DIGITAL_SIGNATURE
    n = data[0]
    expected_kind = {"rsa": "pss" if pss else "rsa", "p2": "ecdsa", "p3": "ecdsa", "p5": "ecdsa"}
    k = expected_kind.get(kind[:3], expected_kind.get(kind[:2], kind))
    want_alg = alg if alg is not None else H.IDENTITY
    assert data[1 : 1 + n] == algorithm_identifier(k, want_alg)
    verify(key.public_key(), OCTETS, method, data)
    # Wrong data, wrong key, corrupted signature: all AUTHENTICATION_FAILED.
    with pytest.raises(ProtocolError) as ei:
        verify(key.public_key(), OCTETS + b"x", method, data)
    assert auth_failed(ei)
    other = new_key(kind, label="other")
    with pytest.raises(ProtocolError) as ei:
        verify(other.public_key(), OCTETS, method, data)
    assert auth_failed(ei)
    bad = bytearray(data)
    bad[-1] ^= 1
    with pytest.raises(ProtocolError):
        verify(key.public_key(), OCTETS, method, bytes(bad))


def test_ecdsa_signature_is_der() -> None:
    key = new_key("p256")
    _, data = sign(key, OCTETS, H.SHA2_256)
    sig = data[1 + data[0] :]
    assert sig[0] == 0x30  # DER Ecdsa-Sig-Value
    key.public_key().verify(sig, OCTETS, ec.ECDSA(hashes.SHA256()))


def test_rsa_pss_verifies_with_cryptography_directly() -> None:
    key = new_key("rsa2048")
    _, data = sign(key, OCTETS, H.SHA2_256, rsa_pss=True)
    sig = data[1 + data[0] :]
    pad = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
    key.public_key().verify(sig, OCTETS, pad, hashes.SHA256())


def test_key_type_mismatch_rejected() -> None:
    rsa_key, ec_key = new_key("rsa2048"), new_key("p256")
    method, data = sign(ec_key, OCTETS, H.SHA2_256)
    with pytest.raises(ProtocolError) as ei:
        verify(rsa_key.public_key(), OCTETS, method, data)
    assert auth_failed(ei)
    method, data = sign(new_key("ed25519"), OCTETS)
    with pytest.raises(ProtocolError):
        verify(ec_key.public_key(), OCTETS, method, data)


def test_sha1_and_malformed_rejected() -> None:
    key = new_key("rsa2048")
    ai = algorithm_identifier("rsa", H.SHA1)
    sig = key.sign(OCTETS, padding.PKCS1v15(), hashes.SHA1())
    with pytest.raises(ProtocolError) as ei:
        verify(key.public_key(), OCTETS, AuthMethod.DIGITAL_SIGNATURE, bytes([len(ai)]) + ai + sig)
    assert "SHA-1" in str(ei.value)
    for data in (b"", b"\x40abc", bytes([3]) + b"\x30\x01\x05" + b"sig", b"\x02\x30\x00sig"):
        with pytest.raises(ProtocolError) as ei:
            verify(key.public_key(), OCTETS, AuthMethod.DIGITAL_SIGNATURE, data)
        assert auth_failed(ei)
    with pytest.raises(ProtocolError):
        verify(key.public_key(), OCTETS, AuthMethod.SHARED_KEY_MIC, b"x")
    with pytest.raises(ProtocolError):
        verify(key.public_key(), OCTETS, 200, b"x")


@pytest.mark.parametrize(
    ("method", "kind"),
    [
        (AuthMethod.RSA_SIG, "rsa2048"),
        (AuthMethod.ECDSA_256, "p256"),
        (AuthMethod.ECDSA_384, "p384"),
        (AuthMethod.ECDSA_521, "p521"),
    ],
    ids=str,
)
def test_legacy_methods(method: AuthMethod, kind: str) -> None:
    key = new_key(kind)
    m, data = sign(key, OCTETS, method=method)
    assert m == method
    if kind.startswith("p"):
        size = (key.curve.key_size + 7) // 8
        assert len(data) == 2 * size  # RFC 4754: r || s
    verify(key.public_key(), OCTETS, m, data)
    with pytest.raises(ProtocolError):
        verify(key.public_key(), OCTETS + b"!", m, data)
    with pytest.raises(ProtocolError):
        verify(new_key("ed25519").public_key(), OCTETS, m, data)


def test_legacy_wrong_curve_rejected() -> None:
    with pytest.raises(ConfigError):
        sign(new_key("p384"), OCTETS, method=AuthMethod.ECDSA_256)
    m, data = sign(new_key("p256"), OCTETS, method=AuthMethod.ECDSA_256)
    with pytest.raises(ProtocolError):
        verify(new_key("p384").public_key(), OCTETS, AuthMethod.ECDSA_384, data + data[:32])


def test_hash_algorithm_negotiation() -> None:
    assert H.SHA1 not in signature_hash_algorithms()
    packed = pack_signature_hash_algorithms(signature_hash_algorithms())
    assert packed == bytes.fromhex("0002000300040005")
    assert unpack_signature_hash_algorithms(packed) == (2, 3, 4, 5)
    with pytest.raises(ProtocolError):
        unpack_signature_hash_algorithms(b"\x00\x02\x00")
    assert choose_hash_algorithm(new_key("p384"), [2, 3]) == H.SHA2_384
    assert choose_hash_algorithm(new_key("p384"), [2]) == H.SHA2_256
    assert choose_hash_algorithm(new_key("rsa2048"), [4, 2]) == H.SHA2_256
    assert choose_hash_algorithm(new_key("ed25519"), [2, 5]) == H.IDENTITY
    with pytest.raises(ConfigError):
        choose_hash_algorithm(new_key("ed25519"), [2, 3])
    with pytest.raises(ConfigError):
        choose_hash_algorithm(new_key("p256"), [1])
    with pytest.raises(ConfigError):
        sign(new_key("ed25519"), OCTETS, H.SHA2_256)
    with pytest.raises(ConfigError):
        sign(new_key("p256"), OCTETS, H.SHA1)


def test_rsa_pss_parameter_variants_parsed() -> None:
    """Peers encode RSASSA-PSS parameters differently: without trailerField, other salt."""
    key = new_key("rsa2048")
    no_trailer = bytes.fromhex(
        "304106092a864886f70d01010a3034a00f300d06096086480165030402010500a11c301a06092a8648"
        "86f70d010108300d06096086480165030402010500a203020120"
    )
    sig = key.sign(
        OCTETS, padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32), hashes.SHA256()
    )
    verify(key.public_key(), OCTETS, 14, bytes([len(no_trailer)]) + no_trailer + sig)
    salt20 = no_trailer[:-1] + b"\x14"
    sig20 = key.sign(
        OCTETS, padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=20), hashes.SHA256()
    )
    verify(key.public_key(), OCTETS, 14, bytes([len(salt20)]) + salt20 + sig20)
    with pytest.raises(ProtocolError):  # salt length in the parameters is enforced
        verify(key.public_key(), OCTETS, 14, bytes([len(salt20)]) + salt20 + sig)
    # Absent parameters mean SHA-1 defaults (RFC 4055): refused.
    bare = bytes.fromhex("300b06092a864886f70d01010a")
    with pytest.raises(ProtocolError):
        verify(key.public_key(), OCTETS, 14, bytes([len(bare)]) + bare + sig)


_FUZZ_KEYS = {k: new_key(k) for k in ("rsa2048", "p256", "ed25519")}


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(sorted(_FUZZ_KEYS)),
    st.sampled_from([1, 2, 9, 10, 11, 14, 200]),
    st.one_of(
        st.binary(max_size=300),
        st.builds(
            lambda ai, tail: bytes([len(ai)]) + ai + tail,
            st.sampled_from([algorithm_identifier(k, a) for (k, a) in RFC7427_BLOBS]),
            st.binary(max_size=300),
        ),
        st.builds(  # mutated PSS blobs exercise the DER reader
            lambda pos, val, tail: _mutate(RFC7427_BLOBS[("pss", H.SHA2_256)], pos, val) + tail,
            st.integers(0, 71),
            st.integers(0, 255),
            st.binary(max_size=64),
        ),
    ),
)
def test_fuzz_verify_only_raises_protocol_error(kind: str, method: int, data: bytes) -> None:
    with pytest.raises(ProtocolError) as ei:
        verify(_FUZZ_KEYS[kind].public_key(), OCTETS, method, data)
    assert auth_failed(ei)


def _mutate(blob_hex: str, pos: int, val: int) -> bytes:
    blob = bytearray(bytes.fromhex(blob_hex))
    blob[pos] = val
    return bytes([len(blob)]) + bytes(blob)
