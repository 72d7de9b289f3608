"""ESP and AH transforms: the keyword registry and the per-SA cipher objects.

Keywords are the ones strongSwan administrators write (``aes128gcm16``,
``aes256-sha384``, ``chacha20poly1305``, ``sha256`` for AH ...); each maps to the IANA
transform ids of :mod:`pyipsec.wire.iana` and the sizes RFC 4303/4106/7634/4543/4868/
2404/2451/3602 fix. :func:`make_transform` builds, once per SA, the object that seals and
opens ESP payloads; the hot path then only calls its ``seal``/``open`` methods.

Key material is in RFC 7296 section 2.17 order: the encryption key (with its 4-byte salt
for GCM, GMAC and ChaCha20-Poly1305), then the integrity key.
"""

from __future__ import annotations

import hmac as _stdlib_hmac
import os
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as _hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from pyipsec.errors import ConfigError, IntegrityError, MalformedPacket
from pyipsec.wire.iana import EncrId, IntegId

_Q = struct.Struct("!Q")
_I = struct.Struct("!I")


@dataclass(frozen=True, slots=True)
class EspAlgorithm:
    """Static description of an ESP or AH transform (sizes in bytes)."""

    name: str  #: the keyword, e.g. "aes128gcm16"
    protocol: str  #: "esp" or "ah"
    kind: str  #: "aead", "gmac", "cbc", "null" (ESP encryption NULL) or "ah"
    encr_id: EncrId | None  #: IANA ENCR transform id (ESP only)
    encr_key_len: int  #: encryption key length without salt
    salt_len: int  #: 4 for GCM, GMAC and ChaCha20-Poly1305 (RFC 4106/4543/7634)
    integ_id: IntegId | None  #: IANA INTEG transform id (None for AEAD/GMAC)
    integ_key_len: int
    icv_len: int
    iv_len: int
    block_size: int  #: alignment of the encrypted part (at least 4)
    weak: bool  #: legacy algorithm (3DES or SHA-1): accepted, flagged

    @property
    def key_len(self) -> int:
        """Length of the key material the SA takes (encryption + salt + integrity)."""
        return self.encr_key_len + self.salt_len + self.integ_key_len

    @property
    def confidential(self) -> bool:
        """Whether the payload is encrypted (false for NULL and GMAC)."""
        return self.kind in ("aead", "cbc")


# RFC 4868 section 2 (SHA-2), RFC 2404 (SHA-1): key length, truncated ICV length.
_HMACS = {
    "sha1": (IntegId.HMAC_SHA1_96, 20, 12, hashes.SHA1),
    "sha256": (IntegId.HMAC_SHA2_256_128, 32, 16, hashes.SHA256),
    "sha384": (IntegId.HMAC_SHA2_384_192, 48, 24, hashes.SHA384),
    "sha512": (IntegId.HMAC_SHA2_512_256, 64, 32, hashes.SHA512),
}
_GCM_IDS = {8: EncrId.AES_GCM_8, 12: EncrId.AES_GCM_12, 16: EncrId.AES_GCM_16}


def _build_registry() -> dict[str, EspAlgorithm]:
    reg: dict[str, EspAlgorithm] = {}
    for bits in (128, 192, 256):
        for icv in (8, 12, 16):
            name = f"aes{bits}gcm{icv}"
            reg[name] = EspAlgorithm(
                name, "esp", "aead", _GCM_IDS[icv], bits // 8, 4, None, 0, icv, 8, 4, False
            )
            reg[f"aes{bits}gcm{icv * 8}"] = reg[name]  # strongSwan's bit-length aliases
        name = f"aes{bits}gmac"
        reg[name] = EspAlgorithm(
            name, "esp", "gmac", EncrId.NULL_AUTH_AES_GMAC, bits // 8, 4, None, 0, 16, 8, 4, False
        )
    reg["chacha20poly1305"] = EspAlgorithm(
        "chacha20poly1305",
        "esp",
        "aead",
        EncrId.CHACHA20_POLY1305,
        32,
        4,
        None,
        0,
        16,
        8,
        4,
        False,
    )
    for h, (iid, klen, icv, _) in _HMACS.items():
        weak_h = h == "sha1"
        for bits in (128, 192, 256):
            name = f"aes{bits}-{h}"
            reg[name] = EspAlgorithm(
                name, "esp", "cbc", EncrId.AES_CBC, bits // 8, 0, iid, klen, icv, 16, 16, weak_h
            )
        name = f"3des-{h}"
        reg[name] = EspAlgorithm(
            name, "esp", "cbc", EncrId.TRIPLE_DES, 24, 0, iid, klen, icv, 8, 8, True
        )
        name = f"null-{h}"
        reg[name] = EspAlgorithm(
            name, "esp", "null", EncrId.NULL, 0, 0, iid, klen, icv, 0, 4, weak_h
        )
        reg[h] = EspAlgorithm(h, "ah", "ah", None, 0, 0, iid, klen, icv, 0, 4, weak_h)
    return reg


ALGORITHMS: dict[str, EspAlgorithm] = _build_registry()


def get_algorithm(name: str, protocol: str = "esp") -> EspAlgorithm:
    """The transform called ``name`` for ``protocol`` ("esp" or "ah"), or ConfigError."""
    alg = ALGORITHMS.get(name.lower())
    if alg is None or alg.protocol != protocol:
        known = sorted(n for n, a in ALGORITHMS.items() if a.protocol == protocol)
        raise ConfigError(
            f"unknown {protocol} algorithm {name!r}; known: {', '.join(known)}", key="algorithm"
        )
    return alg


def algorithm_from_ids(
    encr_id: int | None, encr_key_bits: int | None, integ_id: int | None, protocol: str = "esp"
) -> EspAlgorithm:
    """The registry entry for IANA ids as negotiated by IKE (RFC 7296 section 3.3.2)."""
    for alg in ALGORITHMS.values():
        if alg.protocol != protocol:
            continue
        if protocol == "esp":
            if alg.encr_id != encr_id:
                continue
            if encr_key_bits is not None and alg.encr_key_len * 8 != encr_key_bits:
                continue
            if alg.kind in ("cbc", "null") and alg.integ_id != integ_id:
                continue
            if alg.kind in ("aead", "gmac") and integ_id not in (None, 0):
                continue
        elif alg.integ_id != integ_id:
            continue
        return alg
    raise ConfigError(
        f"no {protocol} transform for ENCR {encr_id}/{encr_key_bits} INTEG {integ_id}",
        key="algorithm",
    )


# --------------------------------------------------------------------------- per-SA objects
#
# ``seal(seq, header, payload)`` returns two byte strings whose concatenation follows the
# 8-byte ESP header: (IV, ciphertext || ICV) or (IV || ciphertext, ICV). ``open(seq, msg)``
# takes the whole ESP message (SPI .. ICV) and returns the decrypted payload (data,
# padding, pad length, next header) or raises IntegrityError. ``seq`` is the full 64-bit
# sequence number; with ESN its high half enters the ICV input only (RFC 4303 section
# 2.2.1; RFC 4106 section 5 and RFC 7634 section 2.1 for the AAD).


class _AeadTransform:
    """AES-GCM (RFC 4106) and ChaCha20-Poly1305 (RFC 7634) with a counter IV."""

    __slots__ = ("_aead", "_salt", "_esn", "_cut", "_key", "_icv")

    def __init__(self, alg: EspAlgorithm, key: bytes, esn: bool) -> None:
        ek = key[: alg.encr_key_len]
        self._salt = key[alg.encr_key_len : alg.encr_key_len + 4]
        self._aead = ChaCha20Poly1305(ek) if alg.encr_id == EncrId.CHACHA20_POLY1305 else AESGCM(ek)
        self._esn = esn
        self._icv = alg.icv_len
        self._cut = alg.icv_len - 16  # negative: truncate the 16-byte tag (GCM 8/12)
        self._key = ek if self._cut else b""

    def seal(self, seq: int, header: bytes, payload: bytes) -> tuple[bytes, bytes]:
        iv = _Q.pack(seq)  # RFC 4106 section 3.1: the sequence number is a unique IV
        aad = header if not self._esn else header[:4] + _I.pack(seq >> 32) + header[4:]
        body = self._aead.encrypt(self._salt + iv, payload, aad)
        if self._cut:
            body = body[: self._cut]
        return iv, body

    def open(self, seq: int, msg: bytes | memoryview) -> bytes:
        if len(msg) < 16 + self._icv:
            raise MalformedPacket("ESP packet shorter than IV and ICV")
        mv = memoryview(msg)
        aad = mv[:8] if not self._esn else bytes(mv[:4]) + _I.pack(seq >> 32) + mv[4:8]
        nonce = self._salt + mv[8:16]
        try:
            if not self._cut:
                return self._aead.decrypt(nonce, mv[16:], aad)
            d = Cipher(
                algorithms.AES(self._key),
                modes.GCM(nonce, bytes(mv[-self._icv :]), min_tag_length=self._icv),
            ).decryptor()
            d.authenticate_additional_data(aad)
            return d.update(mv[16 : -self._icv]) + d.finalize()
        except InvalidTag:
            raise IntegrityError("ESP ICV verification failed") from None


class _GmacTransform:
    """ENCR_NULL_AUTH_AES_GMAC (RFC 4543 section 3): GCM over an empty plaintext with the
    whole ESP message (SPI, sequence, IV, payload, trailer) as AAD; the payload stays
    visible."""

    __slots__ = ("_aead", "_salt", "_esn")

    def __init__(self, alg: EspAlgorithm, key: bytes, esn: bool) -> None:
        self._aead = AESGCM(key[: alg.encr_key_len])
        self._salt = key[alg.encr_key_len : alg.encr_key_len + 4]
        self._esn = esn

    def _aad(self, seq: int, header: bytes | memoryview) -> bytes:
        if not self._esn:
            return bytes(header)
        return bytes(header[:4]) + _I.pack(seq >> 32) + bytes(header[4:8])

    def seal(self, seq: int, header: bytes, payload: bytes) -> tuple[bytes, bytes]:
        iv = _Q.pack(seq)
        tag = self._aead.encrypt(self._salt + iv, b"", self._aad(seq, header) + iv + payload)
        return iv + payload, tag

    def open(self, seq: int, msg: bytes | memoryview) -> bytes:
        if len(msg) < 32:
            raise MalformedPacket("ESP packet shorter than IV and ICV")
        mv = memoryview(msg)
        try:
            self._aead.decrypt(self._salt + mv[8:16], mv[-16:], self._aad(seq, mv[:8]) + mv[8:-16])
        except InvalidTag:
            raise IntegrityError("ESP ICV verification failed") from None
        return bytes(mv[16:-16])


class Hmac:
    """A pre-keyed truncated HMAC (RFC 2404, RFC 4868); ``.copy()`` per packet."""

    __slots__ = ("_h", "icv_len")

    def __init__(self, hash_name: str, key: bytes) -> None:
        _, klen, self.icv_len, hcls = _HMACS[hash_name]
        self._h = _hmac.HMAC(key, hcls())

    def compute(self, *parts: bytes | memoryview) -> bytes:
        h = self._h.copy()
        for p in parts:
            h.update(p)
        return h.finalize()[: self.icv_len]

    def verify(self, icv: bytes | memoryview, *parts: bytes | memoryview) -> None:
        if not _stdlib_hmac.compare_digest(self.compute(*parts), bytes(icv)):
            raise IntegrityError("ICV verification failed")


class _CbcHmacTransform:
    """AES-CBC (RFC 3602) / 3DES-CBC (RFC 2451) or NULL (RFC 2410) with HMAC.

    One CBC context per direction lives as long as the SA (building one per packet costs
    about 20 us). Encryption feeds a random block before the payload: its ciphertext,
    E(random XOR previous block), is the packet's IV, unpredictable as RFC 3602 section 3
    requires, and the payload is then chained from it exactly as CBC with that IV.
    Decryption feeds IV || ciphertext and drops the first output block.
    """

    __slots__ = ("_enc", "_dec", "_mac", "_esn", "_bs", "_icv", "_null")

    def __init__(self, alg: EspAlgorithm, key: bytes, esn: bool) -> None:
        ek = key[: alg.encr_key_len]
        self._null = alg.kind == "null"
        self._bs = alg.iv_len
        if not self._null:
            algo = algorithms.AES(ek) if alg.encr_id == EncrId.AES_CBC else TripleDES(ek)
            self._enc = Cipher(algo, modes.CBC(bytes(self._bs))).encryptor()
            self._dec = Cipher(algo, modes.CBC(bytes(self._bs))).decryptor()
        hname = alg.name.rsplit("-", 1)[1]
        self._mac = Hmac(hname, key[alg.encr_key_len :])
        self._esn = esn
        self._icv = alg.icv_len

    def seal(self, seq: int, header: bytes, payload: bytes) -> tuple[bytes, bytes]:
        if self._bs and len(payload) % self._bs:
            # a partial block would stay buffered in the long-lived context
            raise ValueError("CBC payload must be padded to the block size")
        body = payload if self._null else self._enc.update(os.urandom(self._bs) + payload)
        if self._esn:  # RFC 4303 section 3.3.2.1: high bits appended, never sent
            return body, self._mac.compute(header, body, _I.pack(seq >> 32))
        return body, self._mac.compute(header, body)

    def open(self, seq: int, msg: bytes | memoryview) -> bytes:
        icv = self._icv
        bs = self._bs
        n = len(msg) - 8 - icv - bs
        if n < 0 or (bs and n % bs):
            raise MalformedPacket("ESP ciphertext is not a whole number of cipher blocks")
        mv = memoryview(msg)
        if self._esn:
            self._mac.verify(mv[-icv:], mv[:-icv], _I.pack(seq >> 32))
        else:
            self._mac.verify(mv[-icv:], mv[:-icv])
        if self._null:
            return bytes(mv[8:-icv])
        return self._dec.update(mv[8:-icv])[bs:]


def make_transform(alg: EspAlgorithm, key: bytes, esn: bool):
    """The per-SA seal/open object for ``alg`` (ESP only; AH uses :class:`Hmac`)."""
    if len(key) != alg.key_len:
        raise ConfigError(
            f"{alg.name} needs {alg.key_len} bytes of key material, got {len(key)}", key="key"
        )
    if alg.kind == "aead":
        return _AeadTransform(alg, key, esn)
    if alg.kind == "gmac":
        return _GmacTransform(alg, key, esn)
    if alg.kind in ("cbc", "null"):
        return _CbcHmacTransform(alg, key, esn)
    raise ConfigError(f"{alg.name} is not an ESP transform", key="algorithm")


def make_ah_mac(alg: EspAlgorithm, key: bytes) -> Hmac:
    """The per-SA pre-keyed HMAC of an AH transform."""
    if alg.kind != "ah":
        raise ConfigError(f"{alg.name} is not an AH transform", key="algorithm")
    if len(key) != alg.key_len:
        raise ConfigError(
            f"{alg.name} needs {alg.key_len} bytes of key material, got {len(key)}", key="key"
        )
    return Hmac(alg.name, key)
