"""IKEv2 key exchange methods: MODP, ECP, Curve25519/448 and ML-KEM, through ``cryptography``.

Supported (IANA "Transform Type 4 - Key Exchange Method Transform IDs"):

=====  ==============  =====================================================================
id     name            wire format
=====  ==============  =====================================================================
14     modp2048        RFC 3526 group; public value y, big-endian, padded to len(p) octets
15     modp3072        (RFC 7296 section 3.4); shared secret g^xy padded to len(p)
16     modp4096
19     ecp256          RFC 5903: public value x || y (each padded to the field size, no
20     ecp384          0x04 prefix); shared secret is the x coordinate only
21     ecp521
31     curve25519      RFC 8031: 32-octet u-coordinate (RFC 7748); all-zero result rejected
32     curve448        RFC 8031: 56 octets
36     mlkem768        ML-KEM for IKEv2 (draft-ietf-ipsecme-ikev2-mlkem, RFC 9370): the
37     mlkem1024       initiator sends the encapsulation key, the responder the ciphertext;
                       the shared secret is the 32-octet ML-KEM key
=====  ==============  =====================================================================

ML-KEM-512 (35) is not offered: ``cryptography`` implements ML-KEM-768 and -1024 only.

Uniform API (the state machine need not know whether a method is a DH group or a KEM)::

    ke = ke_by_id(KeId.CURVE25519)
    # initiator
    kx = ke.new()
    send(kx.public_value())                     # KEi data: DH share, or ML-KEM ek
    # responder
    resp_value, ss_r = ke.respond(kei_data)     # KEr data: DH share, or ML-KEM ciphertext
    # initiator again
    ss_i = kx.complete(ker_data)                # == ss_r

For DH groups ``kx.shared_secret(peer)`` is ``complete`` by its classic name; for KEMs
``ke.encapsulate(ek)`` and ``kx.decapsulate(ct)`` are the FIPS 203 names of ``respond`` and
``complete``. A bad peer value (wrong length, point not on the curve, y outside
[2, p-2], invalid ML-KEM key or ciphertext length, all-zero X25519 result) raises
``ProtocolError(notify=INVALID_SYNTAX)`` (RFC 7296 section 3.4 and RFC 6989: the
exchange fails). An unsupported method raises ``ConfigError``.

Note: ``cryptography`` 50 deprecates finite-field DH (MODP); its classes are fetched once
under a narrow warnings filter so callers see no warning. If a later ``cryptography``
removes FFDH, groups 14-16 disappear from :func:`supported_ke_ids` and nothing else changes.
"""

from __future__ import annotations

import hmac as _hmac
import warnings
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, mlkem, x448, x25519

from pyipsec.errors import ConfigError, ProtocolError
from pyipsec.wire.iana import KeId, NotifyType

__all__ = [
    "KeyExchange",
    "KeyExchangeContext",
    "ke_by_id",
    "ke_by_name",
    "supported_ke_ids",
    "KE_NAMES",
]

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    try:
        from cryptography.hazmat.primitives.asymmetric import dh as _dh

        _DHParameterNumbers: Any = _dh.DHParameterNumbers
        _DHPublicNumbers: Any = _dh.DHPublicNumbers
    except (ImportError, AttributeError):  # pragma: no cover - future cryptography
        _DHParameterNumbers = None
        _DHPublicNumbers = None

# RFC 3526 primes (generator 2). Cross-checked against OpenSSL's built-in modp_2048/3072/4096.
_MODP_2048 = int(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74"
    "020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F1437"
    "4FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED"
    "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF05"
    "98DA48361C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB"
    "9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B"
    "E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF695581718"
    "3995497CEA956AE515D2261898FA051015728E5A8AACAA68FFFFFFFFFFFFFFFF",
    16,
)
_MODP_3072 = int(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74"
    "020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F1437"
    "4FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED"
    "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF05"
    "98DA48361C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB"
    "9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B"
    "E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF695581718"
    "3995497CEA956AE515D2261898FA051015728E5A8AAAC42DAD33170D04507A33"
    "A85521ABDF1CBA64ECFB850458DBEF0A8AEA71575D060C7DB3970F85A6E1E4C7"
    "ABF5AE8CDB0933D71E8C94E04A25619DCEE3D2261AD2EE6BF12FFA06D98A0864"
    "D87602733EC86A64521F2B18177B200CBBE117577A615D6C770988C0BAD946E2"
    "08E24FA074E5AB3143DB5BFCE0FD108E4B82D120A93AD2CAFFFFFFFFFFFFFFFF",
    16,
)
_MODP_4096 = int(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74"
    "020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F1437"
    "4FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED"
    "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF05"
    "98DA48361C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB"
    "9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B"
    "E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF695581718"
    "3995497CEA956AE515D2261898FA051015728E5A8AAAC42DAD33170D04507A33"
    "A85521ABDF1CBA64ECFB850458DBEF0A8AEA71575D060C7DB3970F85A6E1E4C7"
    "ABF5AE8CDB0933D71E8C94E04A25619DCEE3D2261AD2EE6BF12FFA06D98A0864"
    "D87602733EC86A64521F2B18177B200CBBE117577A615D6C770988C0BAD946E2"
    "08E24FA074E5AB3143DB5BFCE0FD108E4B82D120A92108011A723C12A787E6D7"
    "88719A10BDBA5B2699C327186AF4E23C1A946834B6150BDA2583E9CA2AD44CE8"
    "DBBBC2DB04DE8EF92E8EFC141FBECAA6287C59474E6BC05D99B2964FA090C3A2"
    "233BA186515BE7ED1F612970CEE2D7AFB81BDD762170481CD0069127D5B05AA9"
    "93B4EA988D8FDDC186FFB7DC90A6C08F4DF435C934063199FFFFFFFFFFFFFFFF",
    16,
)


def _bad(msg: str) -> ProtocolError:
    return ProtocolError(msg, notify=NotifyType.INVALID_SYNTAX)


class KeyExchangeContext:
    """One side's ephemeral state of one key exchange. Holds a private key: never logged."""

    def public_value(self) -> bytes:
        """The KE payload data this side sends (initiator: DH share or ML-KEM ek)."""
        raise NotImplementedError

    def complete(self, peer_value: bytes) -> bytes:
        """Shared secret from the responder's KE data (DH share or ML-KEM ciphertext)."""
        raise NotImplementedError

    def shared_secret(self, peer_value: bytes) -> bytes:
        """Classic DH name for :meth:`complete`."""
        return self.complete(peer_value)

    def decapsulate(self, ciphertext: bytes) -> bytes:
        """FIPS 203 name for :meth:`complete`."""
        return self.complete(ciphertext)

    def __repr__(self) -> str:
        return f"<{type(self).__name__}>"


class KeyExchange:
    """A key exchange method (stateless descriptor); see the module docstring for the API."""

    id: KeId
    name: str
    is_kem: bool = False
    #: length of the initiator's KE data (DH share / ML-KEM encapsulation key)
    public_size: int
    #: length of the responder's KE data (DH share / ML-KEM ciphertext)
    response_size: int

    def new(self) -> KeyExchangeContext:
        raise NotImplementedError

    def respond(self, initiator_value: bytes) -> tuple[bytes, bytes]:
        """Responder side: (KEr data, shared secret) for the initiator's KEi data."""
        kx = self.new()
        return kx.public_value(), kx.complete(initiator_value)

    def encapsulate(self, peer_ek: bytes) -> tuple[bytes, bytes]:
        """FIPS 203 name for :meth:`respond`: (ciphertext, shared secret)."""
        return self.respond(peer_ek)

    def __repr__(self) -> str:
        return f"KeyExchange({self.name}, id={int(self.id)})"


# --------------------------------------------------------------------------- MODP


class _ModpContext(KeyExchangeContext):
    __slots__ = ("_ke", "_priv")

    def __init__(self, ke: _Modp) -> None:
        self._ke = ke
        self._priv = ke._params.generate_private_key()

    def public_value(self) -> bytes:
        y = self._priv.public_key().public_numbers().y
        return y.to_bytes(self._ke.public_size, "big")

    def complete(self, peer_value: bytes) -> bytes:
        ke = self._ke
        if len(peer_value) != ke.public_size:
            raise _bad(f"{ke.name}: KE data is {len(peer_value)} octets, want {ke.public_size}")
        y = int.from_bytes(peer_value, "big")
        if not 1 < y < ke._p - 1:
            raise _bad(f"{ke.name}: peer public value out of range")
        try:
            peer = _DHPublicNumbers(y, ke._pn).public_key()
            secret = self._priv.exchange(peer)
        except ValueError:
            raise _bad(f"{ke.name}: invalid peer public value") from None
        return secret.rjust(ke.public_size, b"\0")


class _Modp(KeyExchange):
    def __init__(self, ke_id: KeId, name: str, p: int) -> None:
        self.id = ke_id
        self.name = name
        self._p = p
        self.public_size = self.response_size = (p.bit_length() + 7) // 8
        self._pn = _DHParameterNumbers(p, 2, (p - 1) // 2)
        self._params = self._pn.parameters()

    def new(self) -> KeyExchangeContext:
        return _ModpContext(self)


# --------------------------------------------------------------------------- ECP


class _EcpContext(KeyExchangeContext):
    __slots__ = ("_ke", "_priv")

    def __init__(self, ke: _Ecp) -> None:
        self._ke = ke
        self._priv = ec.generate_private_key(ke._curve)

    def public_value(self) -> bytes:
        n = self._priv.public_key().public_numbers()
        size = self._ke._coord
        return n.x.to_bytes(size, "big") + n.y.to_bytes(size, "big")

    def complete(self, peer_value: bytes) -> bytes:
        ke = self._ke
        if len(peer_value) != ke.public_size:
            raise _bad(f"{ke.name}: KE data is {len(peer_value)} octets, want {ke.public_size}")
        try:
            peer = ec.EllipticCurvePublicKey.from_encoded_point(ke._curve, b"\x04" + peer_value)
            secret = self._priv.exchange(ec.ECDH(), peer)
        except ValueError:
            raise _bad(f"{ke.name}: peer public value is not a point on the curve") from None
        return secret.rjust(ke._coord, b"\0")


class _Ecp(KeyExchange):
    def __init__(self, ke_id: KeId, name: str, curve: ec.EllipticCurve, coord: int) -> None:
        self.id = ke_id
        self.name = name
        self._curve = curve
        self._coord = coord
        self.public_size = self.response_size = 2 * coord

    def new(self) -> KeyExchangeContext:
        return _EcpContext(self)


# --------------------------------------------------------------------------- X25519 / X448


class _XContext(KeyExchangeContext):
    __slots__ = ("_ke", "_priv")

    def __init__(self, ke: _Xdh) -> None:
        self._ke = ke
        self._priv = ke._priv_cls.generate()

    def public_value(self) -> bytes:
        return self._priv.public_key().public_bytes_raw()

    def complete(self, peer_value: bytes) -> bytes:
        ke = self._ke
        if len(peer_value) != ke.public_size:
            raise _bad(f"{ke.name}: KE data is {len(peer_value)} octets, want {ke.public_size}")
        try:
            peer = ke._pub_cls.from_public_bytes(peer_value)
            secret = self._priv.exchange(peer)
        except ValueError:
            raise _bad(f"{ke.name}: invalid peer public value") from None
        # RFC 8031 section 2: an all-zero result means a small-order point; reject it.
        if _hmac.compare_digest(secret, bytes(len(secret))):
            raise _bad(f"{ke.name}: peer public value has small order")
        return secret


class _Xdh(KeyExchange):
    def __init__(self, ke_id: KeId, name: str, priv_cls: Any, pub_cls: Any, size: int) -> None:
        self.id = ke_id
        self.name = name
        self._priv_cls = priv_cls
        self._pub_cls = pub_cls
        self.public_size = self.response_size = size

    def new(self) -> KeyExchangeContext:
        return _XContext(self)


# --------------------------------------------------------------------------- ML-KEM


class _MlKemContext(KeyExchangeContext):
    __slots__ = ("_ke", "_priv")

    def __init__(self, ke: _MlKem) -> None:
        self._ke = ke
        self._priv = ke._priv_cls.generate()

    def public_value(self) -> bytes:
        return self._priv.public_key().public_bytes_raw()

    def complete(self, peer_value: bytes) -> bytes:
        ke = self._ke
        if len(peer_value) != ke.response_size:
            raise _bad(
                f"{ke.name}: ciphertext is {len(peer_value)} octets, want {ke.response_size}"
            )
        try:
            return self._priv.decapsulate(peer_value)
        except ValueError:
            raise _bad(f"{ke.name}: invalid ciphertext") from None


class _MlKem(KeyExchange):
    is_kem = True

    def __init__(
        self, ke_id: KeId, name: str, priv_cls: Any, pub_cls: Any, ek: int, ct: int
    ) -> None:
        self.id = ke_id
        self.name = name
        self._priv_cls = priv_cls
        self._pub_cls = pub_cls
        self.public_size = ek
        self.response_size = ct

    def new(self) -> KeyExchangeContext:
        return _MlKemContext(self)

    def respond(self, initiator_value: bytes) -> tuple[bytes, bytes]:
        """Encapsulate to the initiator's key: (ciphertext, shared secret)."""
        if len(initiator_value) != self.public_size:
            raise _bad(
                f"{self.name}: encapsulation key is {len(initiator_value)} octets, "
                f"want {self.public_size}"
            )
        try:
            # from_public_bytes performs the FIPS 203 encapsulation key (modulus) check.
            ek = self._pub_cls.from_public_bytes(initiator_value)
        except ValueError:
            raise _bad(f"{self.name}: invalid encapsulation key") from None
        secret, ciphertext = ek.encapsulate()
        return ciphertext, secret


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class _Entry:
    ke_id: KeId
    name: str
    aliases: tuple[str, ...]


def _build() -> dict[KeId, KeyExchange]:
    table: dict[KeId, KeyExchange] = {}
    if _DHParameterNumbers is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for ke_id, name, p in (
                (KeId.MODP2048, "modp2048", _MODP_2048),
                (KeId.MODP3072, "modp3072", _MODP_3072),
                (KeId.MODP4096, "modp4096", _MODP_4096),
            ):
                table[ke_id] = _Modp(ke_id, name, p)
    table[KeId.ECP256] = _Ecp(KeId.ECP256, "ecp256", ec.SECP256R1(), 32)
    table[KeId.ECP384] = _Ecp(KeId.ECP384, "ecp384", ec.SECP384R1(), 48)
    table[KeId.ECP521] = _Ecp(KeId.ECP521, "ecp521", ec.SECP521R1(), 66)
    table[KeId.CURVE25519] = _Xdh(
        KeId.CURVE25519, "curve25519", x25519.X25519PrivateKey, x25519.X25519PublicKey, 32
    )
    table[KeId.CURVE448] = _Xdh(
        KeId.CURVE448, "curve448", x448.X448PrivateKey, x448.X448PublicKey, 56
    )
    try:
        mlkem.MLKEM768PrivateKey.generate()
    except UnsupportedAlgorithm:  # pragma: no cover - depends on the OpenSSL build
        pass
    else:
        table[KeId.ML_KEM_768] = _MlKem(
            KeId.ML_KEM_768,
            "mlkem768",
            mlkem.MLKEM768PrivateKey,
            mlkem.MLKEM768PublicKey,
            1184,
            1088,
        )
        table[KeId.ML_KEM_1024] = _MlKem(
            KeId.ML_KEM_1024,
            "mlkem1024",
            mlkem.MLKEM1024PrivateKey,
            mlkem.MLKEM1024PublicKey,
            1568,
            1568,
        )
    return table


_TABLE = _build()

#: Configuration names (strongSwan-style) and aliases -> KeId.
KE_NAMES: dict[str, KeId] = {ke.name: ke_id for ke_id, ke in _TABLE.items()}
KE_NAMES.update(
    {
        "x25519": KeId.CURVE25519,
        "x448": KeId.CURVE448,
        "ml-kem-768": KeId.ML_KEM_768,
        "ml-kem-1024": KeId.ML_KEM_1024,
    }
)
KE_NAMES = {k: v for k, v in KE_NAMES.items() if v in _TABLE}


def supported_ke_ids() -> tuple[KeId, ...]:
    """Key exchange methods this build offers, in a sensible preference order."""
    order = (
        KeId.CURVE25519,
        KeId.ECP256,
        KeId.ECP384,
        KeId.CURVE448,
        KeId.ECP521,
        KeId.MODP3072,
        KeId.MODP4096,
        KeId.MODP2048,
        KeId.ML_KEM_768,
        KeId.ML_KEM_1024,
    )
    return tuple(k for k in order if k in _TABLE)


def ke_by_id(ke_id: int) -> KeyExchange:
    """The method for an IANA key exchange id; ConfigError if unsupported."""
    try:
        return _TABLE[KeId(ke_id)]
    except (ValueError, KeyError):
        raise ConfigError(f"unsupported key exchange method {ke_id}", key="ke") from None


def ke_by_name(name: str) -> KeyExchange:
    """The method for a configuration name such as ``curve25519`` or ``mlkem768``."""
    ke_id = KE_NAMES.get(name.lower().strip())
    if ke_id is None:
        raise ConfigError(f"unknown key exchange method {name!r}", key="ke")
    return _TABLE[ke_id]
