"""prf and prf+ (RFC 7296 section 2.13), checked against an independent hmac-module version."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from pyipsec.crypto import prf_plus
from pyipsec.crypto.prf import Prf
from pyipsec.errors import ConfigError
from pyipsec.wire.iana import PrfId

HASHES = {
    "prf-hmac-sha1": (hashlib.sha1, PrfId.HMAC_SHA1, 20),
    "prf-hmac-sha256": (hashlib.sha256, PrfId.HMAC_SHA2_256, 32),
    "prf-hmac-sha384": (hashlib.sha384, PrfId.HMAC_SHA2_384, 48),
    "prf-hmac-sha512": (hashlib.sha512, PrfId.HMAC_SHA2_512, 64),
}


def reference_prf_plus(digest, key: bytes, seed: bytes, length: int) -> bytes:
    """RFC 7296 2.13 written out directly with the stdlib hmac module."""
    out = b""
    t = b""
    n = 1
    while len(out) < length:
        t = hmac.new(key, t + seed + bytes([n]), digest).digest()
        out += t
        n += 1
    return out[:length]


@pytest.mark.parametrize("name", sorted(HASHES))
@pytest.mark.parametrize("length", [0, 1, 19, 20, 21, 64, 65, 132, 300])
def test_prf_plus_matches_definition(name: str, length: int) -> None:
    digest, prf_id, _ = HASHES[name]
    key = bytes(range(37))
    seed = b"Ni-nonce" + b"Nr-nonce" + bytes(16)
    expected = reference_prf_plus(digest, key, seed, length)
    assert prf_plus(name, key, seed, length) == expected
    assert prf_plus(prf_id, key, seed, length) == expected
    assert prf_plus(Prf.from_id(prf_id), key, seed, length) == expected


@pytest.mark.parametrize("name", sorted(HASHES))
def test_prf_properties(name: str) -> None:
    digest, prf_id, size = HASHES[name]
    p = Prf.from_name(name)
    assert p == Prf.from_id(prf_id)
    assert p.name == name and p.id == prf_id
    assert p.key_size == size and p.output_size == size
    assert p.prf(b"k", b"data") == hmac.new(b"k", b"data", digest).digest()
    assert name in repr(p)


def test_prf_plus_limit_255_blocks() -> None:
    p = Prf.from_name("prf-hmac-sha1")
    assert len(p.prf_plus(b"k", b"s", 255 * 20)) == 255 * 20
    with pytest.raises(ValueError):
        p.prf_plus(b"k", b"s", 255 * 20 + 1)
    with pytest.raises(ValueError):
        p.prf_plus(b"k", b"s", -1)


def test_prf_aliases_and_unknown() -> None:
    assert Prf.from_name("PRF-HMAC-SHA2-256") == Prf.from_name("prf-hmac-sha256")
    with pytest.raises(ConfigError):
        Prf.from_name("prf-hmac-md5")
    with pytest.raises(ConfigError):
        Prf.from_id(PrfId.HMAC_MD5)
    with pytest.raises(ConfigError):
        Prf.from_id(999)
