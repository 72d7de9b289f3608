"""IKEv2 AUTH payload data: pre-shared key (RFC 7296 2.15) and signatures (RFC 7427).

Pre-shared key::

    AUTH = prf( prf(Shared Secret, "Key Pad for IKEv2"), <InitiatorSignedOctets>)

Digital Signature (Auth Method 14, RFC 7427 section 3): the AUTH data is a one-octet length,
the DER AlgorithmIdentifier of the signature scheme, then the signature:

* RSASSA-PKCS1-v1_5 with SHA-256/384/512 (sha*WithRSAEncryption, RFC 7427 A.1);
* RSASSA-PSS with SHA-256/384/512, MGF1 with the same hash, salt = hash length
  (RFC 7427 A.4.3 for SHA-256; the blob carries trailerField 1 as the RFC's example does);
* ECDSA with SHA-256/384/512 (RFC 7427 A.3), the signature a DER Ecdsa-Sig-Value;
* Ed25519 / Ed448 (RFC 8420), "identity" hash: the whole signed octets are signed.

Legacy methods accepted (and produced on request) for peers without RFC 7427:
RSA_SIG (1, PKCS#1 v1.5 with SHA-1 as deployed implementations use), ECDSA_256/384/521
(9-11, RFC 4754: SHA-256/384/512, signature r || s of fixed length).

Every verification failure raises ``ProtocolError(notify=AUTHENTICATION_FAILED)`` with a
message saying why; none contains key material.
"""

from __future__ import annotations

import hmac as _hmac
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from pyipsec.crypto.prf import Prf
from pyipsec.errors import ConfigError, ProtocolError
from pyipsec.wire.iana import AuthMethod, HashAlgorithm, NotifyType

__all__ = [
    "psk_auth_data",
    "verify_psk",
    "signed_octets",
    "sign",
    "verify",
    "signature_hash_algorithms",
    "pack_signature_hash_algorithms",
    "unpack_signature_hash_algorithms",
    "choose_hash_algorithm",
    "algorithm_identifier",
]

KEY_PAD = b"Key Pad for IKEv2"

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
PrivateKey = PrivateKey | ed448.Ed448PrivateKey
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey
PublicKey = PublicKey | ed448.Ed448PublicKey


def _fail(msg: str) -> ProtocolError:
    return ProtocolError(msg, notify=NotifyType.AUTHENTICATION_FAILED)


# --------------------------------------------------------------------------- PSK


def psk_auth_data(prf: Prf | str | int, psk: bytes, signed: bytes) -> bytes:
    """AUTH data for a pre-shared key (RFC 7296 section 2.15)."""
    p = Prf.get(prf)
    return p.prf(p.prf(psk, KEY_PAD), signed)


def verify_psk(prf: Prf | str | int, psk: bytes, signed: bytes, auth_data: bytes) -> None:
    """Check a peer's PSK AUTH data in constant time; AUTHENTICATION_FAILED if it differs."""
    if not _hmac.compare_digest(psk_auth_data(prf, psk, signed), auth_data):
        raise _fail("pre-shared key AUTH data does not match")


def signed_octets(
    prf: Prf | str | int,
    message: bytes,
    peer_nonce: bytes,
    sk_p: bytes,
    id_payload_body: bytes,
    int_auth: bytes = b"",
) -> bytes:
    """InitiatorSignedOctets / ResponderSignedOctets (RFC 7296 2.15, RFC 9242 section 3.3.2).

    ``message`` is this side's IKE_SA_INIT message as sent, ``peer_nonce`` the other side's
    Nonce data, ``sk_p`` this side's SK_pi/SK_pr, ``id_payload_body`` the ID payload without
    its generic header (ID Type, RESERVED, data), ``int_auth`` the IntAuth value when
    IKE_INTERMEDIATE exchanges took place (empty otherwise).
    """
    p = Prf.get(prf)
    return message + peer_nonce + p.prf(sk_p, id_payload_body) + int_auth


# --------------------------------------------------------------------------- DER helpers


def _der(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        return bytes((tag, n)) + content
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(raw))) + raw + content


def _oid(dotted: str) -> bytes:
    parts = [int(x) for x in dotted.split(".")]
    body = bytearray((40 * parts[0] + parts[1],))
    for v in parts[2:]:
        chunk = [v & 0x7F]
        v >>= 7
        while v:
            chunk.append(0x80 | (v & 0x7F))
            v >>= 7
        body += bytes(reversed(chunk))
    return _der(0x06, bytes(body))


def _read_tlv(data: bytes, pos: int) -> tuple[int, bytes, int]:
    """(tag, value, next position); ValueError on truncation."""
    if pos + 2 > len(data):
        raise ValueError("truncated DER")
    tag, first = data[pos], data[pos + 1]
    pos += 2
    if first & 0x80:
        n = first & 0x7F
        if n == 0 or n > 2 or pos + n > len(data):
            raise ValueError("bad DER length")
        length = int.from_bytes(data[pos : pos + n], "big")
        pos += n
    else:
        length = first
    if pos + length > len(data):
        raise ValueError("truncated DER value")
    return tag, data[pos : pos + length], pos + length


_NULL = b"\x05\x00"
_OID_RSA_PSS = _oid("1.2.840.113549.1.1.10")
_OID_MGF1 = _oid("1.2.840.113549.1.1.8")

# HashAlgorithm -> (hash factory, DER OID of the hash, sha*WithRSAEncryption OID,
#                   ecdsa-with-SHA* OID)
_HASHES: dict[HashAlgorithm, tuple[type[hashes.HashAlgorithm], bytes, bytes, bytes]] = {
    HashAlgorithm.SHA1: (
        hashes.SHA1,
        _oid("1.3.14.3.2.26"),
        _oid("1.2.840.113549.1.1.5"),
        _oid("1.2.840.10045.4.1"),
    ),
    HashAlgorithm.SHA2_256: (
        hashes.SHA256,
        _oid("2.16.840.1.101.3.4.2.1"),
        _oid("1.2.840.113549.1.1.11"),
        _oid("1.2.840.10045.4.3.2"),
    ),
    HashAlgorithm.SHA2_384: (
        hashes.SHA384,
        _oid("2.16.840.1.101.3.4.2.2"),
        _oid("1.2.840.113549.1.1.12"),
        _oid("1.2.840.10045.4.3.3"),
    ),
    HashAlgorithm.SHA2_512: (
        hashes.SHA512,
        _oid("2.16.840.1.101.3.4.2.3"),
        _oid("1.2.840.113549.1.1.13"),
        _oid("1.2.840.10045.4.3.4"),
    ),
}
_OID_ED25519 = _oid("1.3.101.112")
_OID_ED448 = _oid("1.3.101.113")


@dataclass(frozen=True)
class _Scheme:
    """A parsed signature scheme: kind in {"rsa", "pss", "ecdsa", "ed25519", "ed448"}."""

    kind: str
    hash_alg: HashAlgorithm
    mgf_hash: HashAlgorithm | None = None
    salt_length: int = 0


def algorithm_identifier(kind: str, hash_alg: HashAlgorithm) -> bytes:
    """DER AlgorithmIdentifier: ``kind`` is rsa, pss, ecdsa, ed25519 or ed448."""
    if kind == "ed25519":
        return _der(0x30, _OID_ED25519)
    if kind == "ed448":
        return _der(0x30, _OID_ED448)
    factory, hash_oid, rsa_oid, ecdsa_oid = _HASHES[hash_alg]
    if kind == "rsa":
        return _der(0x30, rsa_oid + _NULL)
    if kind == "ecdsa":
        return _der(0x30, ecdsa_oid)
    if kind == "pss":
        hash_ai = _der(0x30, hash_oid + _NULL)
        params = (
            _der(0xA0, hash_ai)
            + _der(0xA1, _der(0x30, _OID_MGF1 + hash_ai))
            + _der(0xA2, _der(0x02, bytes((factory.digest_size,))))
            + _der(0xA3, _der(0x02, b"\x01"))
        )
        return _der(0x30, _OID_RSA_PSS + _der(0x30, params))
    raise ValueError(f"unknown signature scheme {kind}")


def _hash_by_oid(oid_der: bytes) -> HashAlgorithm:
    for alg, (_, hash_oid, _, _) in _HASHES.items():
        if hash_oid == oid_der:
            return alg
    raise _fail("unsupported hash algorithm in RSASSA-PSS parameters")


def _parse_hash_ai(value: bytes) -> HashAlgorithm:
    tag, inner, _ = _read_tlv(value, 0)
    if tag != 0x30:
        raise ValueError("hash AlgorithmIdentifier is not a SEQUENCE")
    t, oid_body, _ = _read_tlv(inner, 0)
    return _hash_by_oid(_der(t, oid_body))


def _parse_pss(params: bytes) -> _Scheme:
    # RFC 4055 RSASSA-PSS-params; defaults SHA-1, MGF1-SHA-1, salt 20, trailer 1.
    hash_alg = HashAlgorithm.SHA1
    mgf_hash = HashAlgorithm.SHA1
    salt = 20
    pos = 0
    while pos < len(params):
        tag, value, pos = _read_tlv(params, pos)
        if tag == 0xA0:
            hash_alg = _parse_hash_ai(value)
        elif tag == 0xA1:
            _, mgf, _ = _read_tlv(value, 0)
            t, oid_body, p2 = _read_tlv(mgf, 0)
            if _der(t, oid_body) != _OID_MGF1:
                raise _fail("RSASSA-PSS with a mask generation function other than MGF1")
            mgf_hash = _parse_hash_ai(mgf[p2:])
        elif tag == 0xA2:
            _, num, _ = _read_tlv(value, 0)
            salt = int.from_bytes(num, "big")
        elif tag == 0xA3:
            _, num, _ = _read_tlv(value, 0)
            if int.from_bytes(num, "big") != 1:
                raise _fail("RSASSA-PSS trailer field must be 1")
        else:
            raise ValueError("unexpected field in RSASSA-PSS parameters")
    return _Scheme("pss", hash_alg, mgf_hash, salt)


def _parse_algorithm_identifier(blob: bytes) -> _Scheme:
    try:
        tag, seq, end = _read_tlv(blob, 0)
        if tag != 0x30 or end != len(blob):
            raise ValueError("AlgorithmIdentifier is not one SEQUENCE")
        t, oid_body, pos = _read_tlv(seq, 0)
        oid = _der(t, oid_body)
        rest = seq[pos:]
        if oid == _OID_ED25519:
            return _Scheme("ed25519", HashAlgorithm.IDENTITY)
        if oid == _OID_ED448:
            return _Scheme("ed448", HashAlgorithm.IDENTITY)
        if oid == _OID_RSA_PSS:
            if not rest:
                return _parse_pss(b"")
            t2, params, _ = _read_tlv(rest, 0)
            if t2 != 0x30:
                raise ValueError("RSASSA-PSS parameters are not a SEQUENCE")
            return _parse_pss(params)
        for alg, (_, _, rsa_oid, ecdsa_oid) in _HASHES.items():
            if oid == rsa_oid:
                return _Scheme("rsa", alg)
            if oid == ecdsa_oid:
                return _Scheme("ecdsa", alg)
    except ValueError as exc:
        raise _fail(f"malformed signature AlgorithmIdentifier: {exc}") from None
    raise _fail("unsupported signature algorithm in AUTH payload")


# --------------------------------------------------------------------------- hash choice

#: Hash algorithms we announce in SIGNATURE_HASH_ALGORITHMS (RFC 7427 section 4).
_SUPPORTED_HASHES = (
    HashAlgorithm.SHA2_256,
    HashAlgorithm.SHA2_384,
    HashAlgorithm.SHA2_512,
    HashAlgorithm.IDENTITY,
)


def signature_hash_algorithms() -> tuple[HashAlgorithm, ...]:
    """What to put in our SIGNATURE_HASH_ALGORITHMS notify (SHA-1 deliberately absent)."""
    return _SUPPORTED_HASHES


def pack_signature_hash_algorithms(algs: Iterable[int]) -> bytes:
    """Notification data of SIGNATURE_HASH_ALGORITHMS: 2-octet ids (RFC 7427 section 4)."""
    return b"".join(struct.pack("!H", a) for a in algs)


def unpack_signature_hash_algorithms(data: bytes) -> tuple[int, ...]:
    """Parse SIGNATURE_HASH_ALGORITHMS data; INVALID_SYNTAX if the length is odd."""
    if len(data) % 2:
        raise ProtocolError(
            "SIGNATURE_HASH_ALGORITHMS data has odd length", notify=NotifyType.INVALID_SYNTAX
        )
    return tuple(v for (v,) in struct.iter_unpack("!H", data))


def _default_hash(key: PrivateKey | PublicKey) -> HashAlgorithm:
    if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
        return HashAlgorithm.IDENTITY
    if isinstance(key, ec.EllipticCurvePrivateKey):
        size = key.curve.key_size
        if size > 384:
            return HashAlgorithm.SHA2_512
        if size > 256:
            return HashAlgorithm.SHA2_384
    return HashAlgorithm.SHA2_256


def choose_hash_algorithm(key: PrivateKey, peer_algorithms: Iterable[int]) -> HashAlgorithm:
    """The hash to sign with, given the peer's SIGNATURE_HASH_ALGORITHMS list.

    Prefers the natural hash for the key (curve size for ECDSA, identity for EdDSA),
    else the strongest one both sides support. ConfigError if there is none.
    """
    peer = set(peer_algorithms)
    preferred = _default_hash(key)
    if preferred in peer:
        return preferred
    if preferred == HashAlgorithm.IDENTITY:
        raise ConfigError("peer does not accept the identity hash needed by EdDSA", key="auth")
    for alg in (HashAlgorithm.SHA2_512, HashAlgorithm.SHA2_384, HashAlgorithm.SHA2_256):
        if alg in peer:
            return alg
    raise ConfigError("no signature hash algorithm in common with the peer", key="auth")


# --------------------------------------------------------------------------- sign


_LEGACY_ECDSA = {
    AuthMethod.ECDSA_256: ("secp256r1", HashAlgorithm.SHA2_256),
    AuthMethod.ECDSA_384: ("secp384r1", HashAlgorithm.SHA2_384),
    AuthMethod.ECDSA_521: ("secp521r1", HashAlgorithm.SHA2_512),
}


def _pss(hash_alg: HashAlgorithm, salt: int | None = None, mgf: HashAlgorithm | None = None):
    factory = _HASHES[hash_alg][0]
    mgf_factory = _HASHES[mgf or hash_alg][0]
    return padding.PSS(
        mgf=padding.MGF1(mgf_factory()),
        salt_length=factory.digest_size if salt is None else salt,
    )


def sign(
    private_key: PrivateKey,
    octets: bytes,
    hash_alg: int | None = None,
    *,
    rsa_pss: bool = False,
    method: int = AuthMethod.DIGITAL_SIGNATURE,
) -> tuple[AuthMethod, bytes]:
    """Sign the SignedOctets; returns (Auth Method, AUTH data).

    ``hash_alg`` is an RFC 7427 hash id (default: the key's natural hash, see
    :func:`choose_hash_algorithm`). EdDSA keys always use the identity hash. ``rsa_pss``
    selects RSASSA-PSS for RSA keys. ``method`` may be a legacy method (RSA_SIG,
    ECDSA_256/384/521) for peers without RFC 7427 support.
    """
    method = AuthMethod(method)
    if method == AuthMethod.RSA_SIG:
        if not isinstance(private_key, rsa.RSAPrivateKey):
            raise ConfigError("RSA_SIG needs an RSA key", key="auth")
        return method, private_key.sign(octets, padding.PKCS1v15(), hashes.SHA1())
    if method in _LEGACY_ECDSA:
        curve, alg = _LEGACY_ECDSA[method]
        if (
            not isinstance(private_key, ec.EllipticCurvePrivateKey)
            or private_key.curve.name != curve
        ):
            raise ConfigError(f"{method.name} needs a {curve} key", key="auth")
        der = private_key.sign(octets, ec.ECDSA(_HASHES[alg][0]()))
        r, s = decode_dss_signature(der)
        size = (private_key.curve.key_size + 7) // 8
        return method, r.to_bytes(size, "big") + s.to_bytes(size, "big")
    if method != AuthMethod.DIGITAL_SIGNATURE:
        raise ConfigError(f"cannot sign with auth method {method.name}", key="auth")

    if isinstance(private_key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
        if hash_alg not in (None, HashAlgorithm.IDENTITY):
            raise ConfigError("EdDSA signs with the identity hash only", key="auth")
        kind = "ed25519" if isinstance(private_key, ed25519.Ed25519PrivateKey) else "ed448"
        sig = private_key.sign(octets)
        alg = HashAlgorithm.IDENTITY
    else:
        alg = _default_hash(private_key) if hash_alg is None else HashAlgorithm(hash_alg)
        if alg not in _HASHES or alg == HashAlgorithm.SHA1:
            raise ConfigError(f"hash {alg.name} not usable for signatures", key="auth")
        factory = _HASHES[alg][0]
        if isinstance(private_key, rsa.RSAPrivateKey):
            if rsa_pss:
                kind = "pss"
                sig = private_key.sign(octets, _pss(alg), factory())
            else:
                kind = "rsa"
                sig = private_key.sign(octets, padding.PKCS1v15(), factory())
        elif isinstance(private_key, ec.EllipticCurvePrivateKey):
            kind = "ecdsa"
            sig = private_key.sign(octets, ec.ECDSA(factory()))
        else:
            raise ConfigError(f"unsupported key type {type(private_key).__name__}", key="auth")
    ai = algorithm_identifier(kind, alg)
    return method, bytes((len(ai),)) + ai + sig


# --------------------------------------------------------------------------- verify


def verify(public_key: PublicKey, octets: bytes, auth_method: int, auth_data: bytes) -> None:
    """Verify a peer's AUTH data; raise ProtocolError(AUTHENTICATION_FAILED) on any failure.

    The AlgorithmIdentifier must fit the key type (no RSA scheme with an EC key etc.);
    SHA-1 is refused in Digital Signature AUTH (we never announce it).
    """
    try:
        method = AuthMethod(auth_method)
    except ValueError:
        raise _fail(f"unsupported auth method {auth_method}") from None
    try:
        if method == AuthMethod.DIGITAL_SIGNATURE:
            _verify_digital_signature(public_key, octets, auth_data)
        elif method == AuthMethod.RSA_SIG:
            if not isinstance(public_key, rsa.RSAPublicKey):
                raise _fail("RSA_SIG AUTH but the peer's key is not RSA")
            public_key.verify(auth_data, octets, padding.PKCS1v15(), hashes.SHA1())
        elif method in _LEGACY_ECDSA:
            curve, alg = _LEGACY_ECDSA[method]
            if not isinstance(public_key, ec.EllipticCurvePublicKey) or (
                public_key.curve.name != curve
            ):
                raise _fail(f"{method.name} AUTH but the peer's key is not {curve}")
            size = (public_key.curve.key_size + 7) // 8
            if len(auth_data) != 2 * size:
                raise _fail(f"{method.name} signature is {len(auth_data)} octets")
            r = int.from_bytes(auth_data[:size], "big")
            s = int.from_bytes(auth_data[size:], "big")
            public_key.verify(encode_dss_signature(r, s), octets, ec.ECDSA(_HASHES[alg][0]()))
        else:
            raise _fail(f"auth method {method.name} is not a signature method")
    except InvalidSignature:
        raise _fail("signature does not verify with the peer's public key") from None
    except ValueError as exc:  # malformed signature or parameters rejected by the backend
        raise _fail(f"malformed signature: {exc}") from None


def _verify_digital_signature(public_key: PublicKey, octets: bytes, auth_data: bytes) -> None:
    if not auth_data:
        raise _fail("empty AUTH data")
    n = auth_data[0]
    if len(auth_data) < 1 + n + 1:
        raise _fail("AUTH data shorter than its AlgorithmIdentifier")
    scheme = _parse_algorithm_identifier(auth_data[1 : 1 + n])
    sig = auth_data[1 + n :]
    if scheme.hash_alg == HashAlgorithm.SHA1:
        raise _fail("SHA-1 signatures are not accepted")
    if scheme.kind == "ed25519":
        if not isinstance(public_key, ed25519.Ed25519PublicKey):
            raise _fail("Ed25519 signature but the peer's key is not Ed25519")
        public_key.verify(sig, octets)
    elif scheme.kind == "ed448":
        if not isinstance(public_key, ed448.Ed448PublicKey):
            raise _fail("Ed448 signature but the peer's key is not Ed448")
        public_key.verify(sig, octets)
    elif scheme.kind == "ecdsa":
        if not isinstance(public_key, ec.EllipticCurvePublicKey):
            raise _fail("ECDSA signature but the peer's key is not ECDSA")
        public_key.verify(sig, octets, ec.ECDSA(_HASHES[scheme.hash_alg][0]()))
    elif scheme.kind in ("rsa", "pss"):
        if not isinstance(public_key, rsa.RSAPublicKey):
            raise _fail("RSA signature but the peer's key is not RSA")
        factory = _HASHES[scheme.hash_alg][0]
        if scheme.kind == "rsa":
            pad: padding.AsymmetricPadding = padding.PKCS1v15()
        else:
            if scheme.mgf_hash == HashAlgorithm.SHA1:
                raise _fail("RSASSA-PSS with MGF1-SHA-1 is not accepted")
            pad = _pss(scheme.hash_alg, scheme.salt_length, scheme.mgf_hash)
        public_key.verify(sig, octets, pad, factory())
    else:  # pragma: no cover - _parse_algorithm_identifier returns only the kinds above
        raise _fail("unsupported signature scheme")
