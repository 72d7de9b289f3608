"""The ESP/AH transform registry: keywords, IANA ids, sizes, weak flags, key checks."""

from __future__ import annotations

import os

import pytest

from pyipsec.crypto.esp_algorithms import (
    ALGORITHMS,
    Hmac,
    algorithm_from_ids,
    get_algorithm,
    make_ah_mac,
    make_transform,
)
from pyipsec.errors import ConfigError, IntegrityError
from pyipsec.wire.iana import EncrId, IntegId

REQUIRED_ESP = [
    "aes128gcm16",
    "aes192gcm16",
    "aes256gcm16",
    "aes128gcm8",
    "aes128gcm12",
    "aes256gcm8",
    "chacha20poly1305",
    "aes128-sha256",
    "aes256-sha256",
    "aes256-sha384",
    "aes256-sha512",
    "aes128-sha1",
    "3des-sha1",
    "null-sha256",
    "aes128gmac",
    "aes256gmac",
]


@pytest.mark.parametrize("name", REQUIRED_ESP)
def test_issue_keywords_exist(name: str) -> None:
    alg = get_algorithm(name)
    assert alg.protocol == "esp" and alg.name == name


@pytest.mark.parametrize("name", ["sha1", "sha256", "sha384", "sha512"])
def test_ah_keywords(name: str) -> None:
    alg = get_algorithm(name, "ah")
    assert alg.kind == "ah" and alg.encr_id is None
    with pytest.raises(ConfigError):
        get_algorithm(name, "esp")


@pytest.mark.parametrize(
    "name,encr,integ,key_len,icv,iv,weak",
    [
        ("aes128gcm16", EncrId.AES_GCM_16, None, 20, 16, 8, False),
        ("aes256gcm12", EncrId.AES_GCM_12, None, 36, 12, 8, False),
        ("aes192gcm8", EncrId.AES_GCM_8, None, 28, 8, 8, False),
        ("chacha20poly1305", EncrId.CHACHA20_POLY1305, None, 36, 16, 8, False),
        ("aes128gmac", EncrId.NULL_AUTH_AES_GMAC, None, 20, 16, 8, False),
        ("aes128-sha256", EncrId.AES_CBC, IntegId.HMAC_SHA2_256_128, 48, 16, 16, False),
        ("aes256-sha384", EncrId.AES_CBC, IntegId.HMAC_SHA2_384_192, 80, 24, 16, False),
        ("aes256-sha512", EncrId.AES_CBC, IntegId.HMAC_SHA2_512_256, 96, 32, 16, False),
        ("aes128-sha1", EncrId.AES_CBC, IntegId.HMAC_SHA1_96, 36, 12, 16, True),
        ("3des-sha1", EncrId.TRIPLE_DES, IntegId.HMAC_SHA1_96, 44, 12, 8, True),
        ("null-sha256", EncrId.NULL, IntegId.HMAC_SHA2_256_128, 32, 16, 0, False),
    ],
)
def test_sizes_and_ids(name, encr, integ, key_len, icv, iv, weak) -> None:
    a = ALGORITHMS[name]
    assert (a.encr_id, a.integ_id, a.key_len, a.icv_len, a.iv_len, a.weak) == (
        encr,
        integ,
        key_len,
        icv,
        iv,
        weak,
    )
    assert (
        algorithm_from_ids(encr, a.encr_key_len * 8 if a.encr_key_len else None, integ) is a
        or algorithm_from_ids(encr, None, integ).name
    )


def test_aliases_and_case() -> None:
    assert get_algorithm("AES128GCM128") is ALGORITHMS["aes128gcm16"]
    assert get_algorithm("aes256gcm64").icv_len == 8


def test_from_ids_for_ike() -> None:
    assert algorithm_from_ids(EncrId.AES_GCM_16, 256, None).name == "aes256gcm16"
    assert algorithm_from_ids(EncrId.AES_CBC, 128, IntegId.HMAC_SHA2_256_128).name == (
        "aes128-sha256"
    )
    assert algorithm_from_ids(None, None, IntegId.HMAC_SHA2_512_256, "ah").name == "sha512"
    with pytest.raises(ConfigError):
        algorithm_from_ids(EncrId.AES_CTR, 128, IntegId.HMAC_SHA2_256_128)
    with pytest.raises(ConfigError):
        algorithm_from_ids(EncrId.AES_GCM_16, 128, IntegId.HMAC_SHA2_256_128)


def test_confidential_flag() -> None:
    assert ALGORITHMS["aes128gcm16"].confidential and ALGORITHMS["3des-sha1"].confidential
    assert not ALGORITHMS["null-sha256"].confidential
    assert not ALGORITHMS["aes128gmac"].confidential


def test_unknown_and_bad_keys_name_no_secret() -> None:
    with pytest.raises(ConfigError) as e:
        get_algorithm("blowfish-md5")
    assert e.value.key == "algorithm" and "aes128gcm16" in str(e.value)
    secret = bytes.fromhex("c0ffee" * 7)
    with pytest.raises(ConfigError) as e:
        make_transform(ALGORITHMS["aes128gcm16"], secret, False)
    assert "c0ffee" not in str(e.value) and e.value.key == "key"
    with pytest.raises(ConfigError):
        make_ah_mac(ALGORITHMS["sha256"], secret)
    with pytest.raises(ConfigError):
        make_ah_mac(ALGORITHMS["aes128gcm16"], os.urandom(20))


def test_hmac_precomputed_copies_are_independent() -> None:
    h = Hmac("sha256", os.urandom(32))
    a = h.compute(b"one")
    assert h.compute(b"two") != a and h.compute(b"one") == a
    with pytest.raises(IntegrityError):
        h.verify(bytes(16), b"one")
