"""Protection of the IKEv2 Encrypted (SK / SKF) payload body, one object per key and direction.

The codec (:mod:`pyipsec.wire.ike.message`) adds Padding and Pad Length (RFC 7296 section
3.14) itself and passes ``aad`` = every octet of the message before the SK body (IKE header,
unencrypted payloads, SK generic header, SKF numbers). The cipher objects here do the rest:

``seal(aad, plaintext) -> IV || ciphertext || ICV`` and ``open(aad, body) -> plaintext``
(still padded). ``open`` raises :class:`~pyipsec.errors.IntegrityError` when the ICV does
not verify and :class:`~pyipsec.errors.DecryptionError` when the body cannot be a valid
ciphertext (e.g. not a multiple of the block size); both are PacketErrors, i.e. the datagram
is dropped without a reply (RFC 7296 section 2.21.2).

Algorithms:

* AES-CBC-128/192/256 (RFC 3602) and 3DES-CBC (RFC 2451) with HMAC-SHA1-96 (RFC 2404) or
  HMAC-SHA2-256-128 / 384-192 / 512-256 (RFC 4868): random IV of one block, ICV is the
  truncated HMAC over ``aad || IV || ciphertext`` (encrypt-then-MAC, RFC 7296 3.14).
* AES-GCM with 8, 12 or 16 octet ICV (RFC 5282): key material is key || 4-octet salt; the
  8-octet explicit IV is a 64-bit counter (nonce = salt || IV); AAD is ``aad``.
* ChaCha20-Poly1305 (RFC 7634): 32-octet key || 4-octet salt, 8-octet IV counter, 16-octet tag.

AEAD IV counters start at a random 63-bit value and increase by one per sealed message, so
two cipher objects built from the same key (which the state machine should not do, but might
after a restart) almost surely never share a nonce, and one object never repeats one. When
the counter would wrap, ``seal`` refuses (the SA must be rekeyed long before).

Key material never appears in ``repr``.
"""

from __future__ import annotations

import hmac as _hmac
import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from pyipsec.errors import ConfigError, DecryptionError, IntegrityError
from pyipsec.wire.iana import EncrId, IntegId

__all__ = [
    "SkCipher",
    "SkCipherStats",
    "sk_cipher",
    "encr_key_size",
    "integ_key_size",
    "is_aead",
    "AEAD_SALT_SIZE",
]

AEAD_SALT_SIZE = 4
_GCM_ICV = {EncrId.AES_GCM_8: 8, EncrId.AES_GCM_12: 12, EncrId.AES_GCM_16: 16}
_AES_KEY_BITS = (128, 192, 256)

# integ id -> (hash factory, key size, ICV size)
_INTEG: dict[IntegId, tuple[type[hashes.HashAlgorithm], int, int]] = {
    IntegId.HMAC_SHA1_96: (hashes.SHA1, 20, 12),
    IntegId.HMAC_SHA2_256_128: (hashes.SHA256, 32, 16),
    IntegId.HMAC_SHA2_384_192: (hashes.SHA384, 48, 24),
    IntegId.HMAC_SHA2_512_256: (hashes.SHA512, 64, 32),
}
_COUNTER_LIMIT = 2**64


def is_aead(encr_id: int) -> bool:
    """True for combined-mode ciphers (no separate integrity transform)."""
    return encr_id in _GCM_ICV or encr_id == EncrId.CHACHA20_POLY1305


def encr_key_size(encr_id: int, key_length_bits: int | None = None) -> int:
    """Octets of SK_e* for an ENCR transform (AEAD: including the 4-octet salt).

    ``key_length_bits`` is the Key Length attribute (required for AES; for ChaCha20 and
    3DES it must be absent or equal to the fixed size). ConfigError if unsupported.
    """
    try:
        eid = EncrId(encr_id)
    except ValueError:
        raise ConfigError(f"unsupported encryption transform {encr_id}", key="encr") from None
    if eid == EncrId.AES_CBC or eid in _GCM_ICV:
        if key_length_bits not in _AES_KEY_BITS:
            raise ConfigError(
                f"{eid.name} needs a key length of 128, 192 or 256 bits, got {key_length_bits}",
                key="encr",
            )
        size = key_length_bits // 8
        return size + AEAD_SALT_SIZE if eid in _GCM_ICV else size
    if eid == EncrId.CHACHA20_POLY1305:
        if key_length_bits not in (None, 256):
            raise ConfigError("ChaCha20-Poly1305 has a fixed 256-bit key", key="encr")
        return 32 + AEAD_SALT_SIZE
    if eid == EncrId.TRIPLE_DES:
        if key_length_bits not in (None, 192):
            raise ConfigError("3DES has a fixed 192-bit key", key="encr")
        return 24
    raise ConfigError(f"unsupported encryption transform {eid.name}", key="encr")


def integ_key_size(integ_id: int) -> int:
    """Octets of SK_a* for an INTEG transform (0 for NONE, used with AEAD)."""
    if integ_id == IntegId.NONE:
        return 0
    try:
        return _INTEG[IntegId(integ_id)][1]
    except (ValueError, KeyError):
        raise ConfigError(f"unsupported integrity transform {integ_id}", key="integ") from None


@dataclass(frozen=True)
class SkCipherStats:
    """Counters of one cipher object: messages sealed, opened, and rejected by ``open``."""

    sealed: int
    opened: int
    failed: int


class SkCipher:
    """Common interface; see the module docstring."""

    iv_size: int
    icv_size: int
    block_size: int
    name: str

    def __init__(self) -> None:
        self.sealed = 0
        self.opened = 0
        self.failed = 0

    def statistics(self) -> SkCipherStats:
        return SkCipherStats(self.sealed, self.opened, self.failed)

    def seal(self, aad: bytes, plaintext: bytes) -> bytes:
        raise NotImplementedError

    def open(self, aad: bytes, body: bytes) -> bytes:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


class _AeadCounter(SkCipher):
    """AEAD with salt || 64-bit counter IV (RFC 5282 section 3, RFC 7634 section 2)."""

    iv_size = 8
    block_size = 1

    def __init__(self, salt: bytes) -> None:
        super().__init__()
        self._salt = salt
        self._counter = int.from_bytes(os.urandom(8), "big") >> 1

    def _next_iv(self) -> bytes:
        if self._counter >= _COUNTER_LIMIT:
            raise ConfigError("IV counter exhausted: rekey the IKE SA", key="encr")
        iv = self._counter.to_bytes(8, "big")
        self._counter += 1
        return iv

    def seal(self, aad: bytes, plaintext: bytes) -> bytes:
        iv = self._next_iv()
        body = iv + self._encrypt(iv, aad, plaintext)
        self.sealed += 1
        return body

    def open(self, aad: bytes, body: bytes) -> bytes:
        if len(body) < self.iv_size + self.icv_size:
            self.failed += 1
            raise IntegrityError("encrypted payload shorter than IV and ICV")
        iv = body[:8]
        try:
            pt = self._decrypt(iv, aad, body[8:])
        except InvalidTag:
            self.failed += 1
            raise IntegrityError(f"{self.name}: ICV verification failed") from None
        self.opened += 1
        return pt

    def _encrypt(self, iv: bytes, aad: bytes, plaintext: bytes) -> bytes:
        raise NotImplementedError

    def _decrypt(self, iv: bytes, aad: bytes, data: bytes) -> bytes:
        raise NotImplementedError


class _AesGcm(_AeadCounter):
    def __init__(self, key_material: bytes, icv_size: int) -> None:
        super().__init__(key_material[-AEAD_SALT_SIZE:])
        self._key = key_material[:-AEAD_SALT_SIZE]
        self.icv_size = icv_size
        self.name = f"aes{len(self._key) * 8}gcm{icv_size}"
        self._aead = AESGCM(self._key)

    def _encrypt(self, iv: bytes, aad: bytes, plaintext: bytes) -> bytes:
        nonce = self._salt + iv
        if self.icv_size == 16:
            return self._aead.encrypt(nonce, plaintext, aad)
        enc = Cipher(algorithms.AES(self._key), modes.GCM(nonce)).encryptor()
        enc.authenticate_additional_data(aad)
        ct = enc.update(plaintext) + enc.finalize()
        return ct + enc.tag[: self.icv_size]

    def _decrypt(self, iv: bytes, aad: bytes, data: bytes) -> bytes:
        nonce = self._salt + iv
        if self.icv_size == 16:
            return self._aead.decrypt(nonce, data, aad)
        ct, tag = data[: -self.icv_size], data[-self.icv_size :]
        dec = Cipher(
            algorithms.AES(self._key), modes.GCM(nonce, tag, min_tag_length=self.icv_size)
        ).decryptor()
        dec.authenticate_additional_data(aad)
        return dec.update(ct) + dec.finalize()


class _ChaChaPoly(_AeadCounter):
    icv_size = 16
    name = "chacha20poly1305"

    def __init__(self, key_material: bytes) -> None:
        super().__init__(key_material[32:])
        self._aead = ChaCha20Poly1305(key_material[:32])

    def _encrypt(self, iv: bytes, aad: bytes, plaintext: bytes) -> bytes:
        return self._aead.encrypt(self._salt + iv, plaintext, aad)

    def _decrypt(self, iv: bytes, aad: bytes, data: bytes) -> bytes:
        return self._aead.decrypt(self._salt + iv, data, aad)


class _CbcHmac(SkCipher):
    """Block cipher in CBC mode with a random IV, then truncated HMAC (RFC 7296 3.14)."""

    def __init__(self, algorithm: object, block: int, name: str, integ_id: IntegId, ikey: bytes):
        super().__init__()
        self._alg = algorithm
        self.block_size = self.iv_size = block
        factory, key_size, icv = _INTEG[integ_id]
        if len(ikey) != key_size:
            raise ValueError(f"{integ_id.name} key must be {key_size} octets")
        self.icv_size = icv
        self._mac = hmac.HMAC(ikey, factory())
        self.name = f"{name}-{integ_id.name.lower()}"

    def _icv(self, aad: bytes, iv: bytes, ct: bytes) -> bytes:
        h = self._mac.copy()
        h.update(aad)
        h.update(iv)
        h.update(ct)
        return h.finalize()[: self.icv_size]

    def seal(self, aad: bytes, plaintext: bytes) -> bytes:
        if len(plaintext) % self.block_size:
            raise ValueError(f"plaintext not padded to {self.block_size} octets")
        iv = os.urandom(self.iv_size)
        enc = Cipher(self._alg, modes.CBC(iv)).encryptor()  # type: ignore[arg-type]
        ct = enc.update(plaintext) + enc.finalize()
        self.sealed += 1
        return iv + ct + self._icv(aad, iv, ct)

    def open(self, aad: bytes, body: bytes) -> bytes:
        n_ct = len(body) - self.iv_size - self.icv_size
        if n_ct < 0:
            self.failed += 1
            raise IntegrityError("encrypted payload shorter than IV and ICV")
        iv = body[: self.iv_size]
        ct = body[self.iv_size : self.iv_size + n_ct]
        icv = body[self.iv_size + n_ct :]
        if not _hmac.compare_digest(icv, self._icv(aad, iv, ct)):
            self.failed += 1
            raise IntegrityError(f"{self.name}: ICV verification failed")
        if n_ct == 0 or n_ct % self.block_size:
            self.failed += 1
            raise DecryptionError(f"ciphertext of {n_ct} octets is not whole blocks")
        dec = Cipher(self._alg, modes.CBC(iv)).decryptor()  # type: ignore[arg-type]
        self.opened += 1
        return dec.update(ct) + dec.finalize()


def sk_cipher(
    encr_id: int,
    key_length_bits: int | None,
    integ_id: int,
    encr_key: bytes,
    integ_key: bytes = b"",
) -> SkCipher:
    """A cipher object for one direction of an IKE SA (SK_ei/SK_ai or SK_er/SK_ar).

    ``integ_id`` must be NONE (0) for AEAD ciphers and a supported HMAC otherwise.
    ConfigError for an unsupported combination; ValueError for a key of the wrong length.
    """
    size = encr_key_size(encr_id, key_length_bits)
    if len(encr_key) != size:
        raise ValueError(f"encryption key must be {size} octets, got {len(encr_key)}")
    eid = EncrId(encr_id)
    if is_aead(eid):
        if integ_id not in (IntegId.NONE, None):
            raise ConfigError("AEAD ciphers take no integrity transform", key="integ")
        if eid == EncrId.CHACHA20_POLY1305:
            return _ChaChaPoly(encr_key)
        return _AesGcm(encr_key, _GCM_ICV[eid])
    try:
        iid = IntegId(integ_id)
        _INTEG[iid]
    except (ValueError, KeyError):
        raise ConfigError(
            f"unsupported integrity transform {integ_id} for {eid.name}", key="integ"
        ) from None
    if eid == EncrId.AES_CBC:
        return _CbcHmac(algorithms.AES(encr_key), 16, f"aes{len(encr_key) * 8}", iid, integ_key)
    return _CbcHmac(TripleDES(encr_key), 8, "3des", iid, integ_key)
