"""Test doubles for the IKE codec tests: ciphers with the interface pyipsec.crypto provides.

AeadTestCipher: AES-GCM with a 4-byte salt and an 8-byte explicit IV (RFC 5282 layout).
CbcHmacTestCipher: AES-CBC + HMAC-SHA256-128 (RFC 7296 3.14 layout, ICV over aad||IV||ct).
Both come from ``cryptography``; they exist so the codec is tested without pyipsec.crypto.
"""

from __future__ import annotations

import hashlib
import hmac
import os

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from pyipsec.errors import IntegrityError


class AeadTestCipher:
    iv_size = 8
    icv_size = 16

    def __init__(self, key: bytes = bytes(16), salt: bytes = b"salt", block_size: int = 1):
        self._aead = AESGCM(key)
        self._salt = salt
        self._counter = 0
        self.block_size = block_size

    def seal(self, aad: bytes, plaintext: bytes) -> bytes:
        self._counter += 1
        iv = self._counter.to_bytes(8, "big")
        return iv + self._aead.encrypt(self._salt + iv, plaintext, aad)

    def open(self, aad: bytes, body: bytes) -> bytes:
        iv = body[:8]
        try:
            return self._aead.decrypt(self._salt + iv, body[8:], aad)
        except InvalidTag:
            raise IntegrityError("ICV mismatch") from None


class CbcHmacTestCipher:
    iv_size = 16
    icv_size = 16
    block_size = 16

    def __init__(self, key: bytes = bytes(16), mac_key: bytes = b"k" * 32):
        self._key = key
        self._mac_key = mac_key

    def _icv(self, data: bytes) -> bytes:
        return hmac.new(self._mac_key, data, hashlib.sha256).digest()[:16]

    def seal(self, aad: bytes, plaintext: bytes) -> bytes:
        iv = os.urandom(16)
        enc = Cipher(algorithms.AES(self._key), modes.CBC(iv)).encryptor()
        ct = enc.update(plaintext) + enc.finalize()
        return iv + ct + self._icv(aad + iv + ct)

    def open(self, aad: bytes, body: bytes) -> bytes:
        iv, ct, icv = body[:16], body[16:-16], body[-16:]
        if not hmac.compare_digest(icv, self._icv(aad + iv + ct)) or len(ct) % 16:
            raise IntegrityError("ICV mismatch")
        dec = Cipher(algorithms.AES(self._key), modes.CBC(iv)).decryptor()
        return dec.update(ct) + dec.finalize()


@pytest.fixture(params=["aead", "aead16", "cbc"])
def cipher_pair(request):
    """(sender cipher, receiver cipher) sharing keys."""
    if request.param == "aead":
        return AeadTestCipher(), AeadTestCipher()
    if request.param == "aead16":
        return AeadTestCipher(block_size=16), AeadTestCipher(block_size=16)
    return CbcHmacTestCipher(), CbcHmacTestCipher()


@pytest.fixture
def aead_cipher():
    """The AeadTestCipher class, to build ciphers with chosen keys."""
    return AeadTestCipher


@pytest.fixture
def cbc_cipher():
    """The CbcHmacTestCipher class, to build ciphers with chosen keys."""
    return CbcHmacTestCipher
