"""SK payload ciphers: known answers, round trips, tampering, IV uniqueness, key sizes."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from pyipsec.crypto.ike_ciphers import encr_key_size, integ_key_size, is_aead, sk_cipher
from pyipsec.errors import ConfigError, DecryptionError, IntegrityError, PacketError
from pyipsec.wire.iana import EncrId, IntegId

AAD = bytes.fromhex("00112233445566778899aabbccddeeff2e202308000000010000005c")
AAD += bytes.fromhex("2100003c")

# (encr, key bits, integ)
COMBOS = [
    (EncrId.AES_GCM_16, 128, IntegId.NONE),
    (EncrId.AES_GCM_16, 256, IntegId.NONE),
    (EncrId.AES_GCM_12, 192, IntegId.NONE),
    (EncrId.AES_GCM_8, 128, IntegId.NONE),
    (EncrId.CHACHA20_POLY1305, None, IntegId.NONE),
    (EncrId.AES_CBC, 128, IntegId.HMAC_SHA1_96),
    (EncrId.AES_CBC, 128, IntegId.HMAC_SHA2_256_128),
    (EncrId.AES_CBC, 192, IntegId.HMAC_SHA2_384_192),
    (EncrId.AES_CBC, 256, IntegId.HMAC_SHA2_512_256),
    (EncrId.TRIPLE_DES, None, IntegId.HMAC_SHA2_256_128),
]


def make(encr, bits, integ):
    ek = bytes(range(1, 1 + encr_key_size(encr, bits)))
    ik = bytes(range(100, 100 + integ_key_size(integ)))
    return sk_cipher(encr, bits, integ, ek, ik)


def ident(c) -> str:
    return f"{c[0].name}-{c[1]}-{c[2].name}"


@pytest.mark.parametrize("combo", COMBOS, ids=ident)
def test_round_trip_and_sizes(combo) -> None:
    a, b = make(*combo), make(*combo)
    pt = bytes(range(64))  # a multiple of every block size
    body = a.seal(AAD, pt)
    assert len(body) == a.iv_size + len(pt) + a.icv_size
    assert b.open(AAD, body) == pt
    assert a.statistics().sealed == 1 and b.statistics().opened == 1
    assert pt not in body
    # Empty-content case that the codec produces: just the Pad Length octet (padded).
    pad_only = bytes(a.block_size) if a.block_size > 1 else b"\x00"
    assert b.open(AAD, a.seal(AAD, pad_only)) == pad_only


@pytest.mark.parametrize("combo", COMBOS, ids=ident)
def test_tampering_detected(combo) -> None:
    a, b = make(*combo), make(*combo)
    pt = bytes(48)
    body = a.seal(AAD, pt)
    for pos in (0, a.iv_size, len(body) - 1):  # IV, ciphertext, ICV
        bad = bytearray(body)
        bad[pos] ^= 0x01
        with pytest.raises(IntegrityError):
            b.open(AAD, bytes(bad))
    bad_aad = bytearray(AAD)
    bad_aad[20] ^= 0x80
    with pytest.raises(IntegrityError):
        b.open(bytes(bad_aad), body)
    with pytest.raises(PacketError):
        b.open(AAD, body[:5])
    assert b.statistics().failed == 5
    assert b.open(AAD, body) == pt  # the failures changed no state


@pytest.mark.parametrize("combo", COMBOS, ids=ident)
def test_wrong_key_fails(combo) -> None:
    a = make(*combo)
    encr, bits, integ = combo
    ek = bytes(encr_key_size(encr, bits))
    ik = bytes(integ_key_size(integ))
    other = sk_cipher(encr, bits, integ, ek, ik)
    with pytest.raises(IntegrityError):
        other.open(AAD, a.seal(AAD, bytes(32)))


@pytest.mark.parametrize("combo", [c for c in COMBOS if is_aead(c[0])], ids=ident)
def test_aead_iv_is_unique_counter(combo) -> None:
    a = make(*combo)
    ivs = [a.seal(AAD, b"x")[:8] for _ in range(200)]
    assert len(set(ivs)) == 200
    nums = [int.from_bytes(iv, "big") for iv in ivs]
    assert nums == list(range(nums[0], nums[0] + 200))
    # Two objects built from the same key start at independent random points.
    b = make(*combo)
    assert b.seal(AAD, b"x")[:8] not in ivs


def test_cbc_iv_random_and_icv_definition() -> None:
    c = make(EncrId.AES_CBC, 256, IntegId.HMAC_SHA2_256_128)
    ek = bytes(range(1, 33))
    ik = bytes(range(100, 132))
    pt = bytes(range(32))
    body = c.seal(AAD, pt)
    iv, ct, icv = body[:16], body[16:48], body[48:]
    assert icv == hmac.new(ik, AAD + iv + ct, hashlib.sha256).digest()[:16]
    dec = Cipher(algorithms.AES(ek), modes.CBC(iv)).decryptor()
    assert dec.update(ct) + dec.finalize() == pt
    assert c.seal(AAD, pt)[:16] != iv
    with pytest.raises(ValueError):
        c.seal(AAD, b"not a block multiple")


def test_cbc_partial_block_after_valid_icv_is_decryption_error() -> None:
    c = make(EncrId.AES_CBC, 128, IntegId.HMAC_SHA2_256_128)
    ik = bytes(range(100, 132))
    iv, ct = bytes(16), bytes(20)
    icv = hmac.new(ik, AAD + iv + ct, hashlib.sha256).digest()[:16]
    with pytest.raises(DecryptionError):
        c.open(AAD, iv + ct + icv)


# McGrew & Viega, "The Galois/Counter Mode of Operation (GCM)", test case 4 (AES-128):
# key feffe9..08, IV cafebabefacedbaddecaf888 = RFC 5282 salt cafebabe || IV facedbaddecaf888.
GCM_K = bytes.fromhex("feffe9928665731c6d6a8f9467308308")
GCM_SALT, GCM_IV = bytes.fromhex("cafebabe"), bytes.fromhex("facedbaddecaf888")
GCM_P = bytes.fromhex(
    "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
    "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39"
)
GCM_A = bytes.fromhex("feedfacedeadbeeffeedfacedeadbeefabaddad2")
GCM_C = bytes.fromhex(
    "42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e"
    "21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091"
)
GCM_T = bytes.fromhex("5bc94fbc3221a5db94fae95ae7121a47")


@pytest.mark.parametrize("encr", [EncrId.AES_GCM_16, EncrId.AES_GCM_12, EncrId.AES_GCM_8])
def test_gcm_known_answer(encr: EncrId) -> None:
    c = sk_cipher(encr, 128, IntegId.NONE, GCM_K + GCM_SALT)
    icv = c.icv_size
    body = GCM_IV + GCM_C + GCM_T[:icv]
    assert c.open(GCM_A, body) == GCM_P
    c._counter = int.from_bytes(GCM_IV, "big")  # force the IV to reproduce the vector
    assert c.seal(GCM_A, GCM_P) == body


# RFC 8439 section 2.8.2: nonce 07000000 || 4041424344454647 = RFC 7634 salt || IV.
CC_K = bytes(range(0x80, 0xA0))
CC_SALT, CC_IV = bytes.fromhex("07000000"), bytes.fromhex("4041424344454647")
CC_A = bytes.fromhex("50515253c0c1c2c3c4c5c6c7")
CC_P = (
    b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the "
    b"future, sunscreen would be it."
)
CC_C = bytes.fromhex(
    "d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d6"
    "3dbea45e8ca9671282fafb69da92728b1a71de0a9e060b2905d6a5b67ecd3b36"
    "92ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc"
    "3ff4def08e4b7a9de576d26586cec64b6116"
)
CC_T = bytes.fromhex("1ae10b594f09e26a7e902ecbd0600691")


def test_chacha20_poly1305_known_answer() -> None:
    c = sk_cipher(EncrId.CHACHA20_POLY1305, None, IntegId.NONE, CC_K + CC_SALT)
    assert c.open(CC_A, CC_IV + CC_C + CC_T) == CC_P
    c._counter = int.from_bytes(CC_IV, "big")
    assert c.seal(CC_A, CC_P) == CC_IV + CC_C + CC_T


def test_key_size_tables() -> None:
    assert encr_key_size(EncrId.AES_GCM_16, 256) == 36
    assert encr_key_size(EncrId.AES_GCM_8, 128) == 20
    assert encr_key_size(EncrId.CHACHA20_POLY1305) == 36
    assert encr_key_size(EncrId.AES_CBC, 192) == 24
    assert encr_key_size(EncrId.TRIPLE_DES) == 24
    assert integ_key_size(IntegId.HMAC_SHA1_96) == 20
    assert integ_key_size(IntegId.HMAC_SHA2_256_128) == 32
    assert integ_key_size(IntegId.HMAC_SHA2_384_192) == 48
    assert integ_key_size(IntegId.HMAC_SHA2_512_256) == 64
    assert integ_key_size(IntegId.NONE) == 0
    assert is_aead(EncrId.AES_GCM_16) and not is_aead(EncrId.AES_CBC)


@pytest.mark.parametrize(
    ("encr", "bits"),
    [
        (EncrId.AES_CBC, None),
        (EncrId.AES_CBC, 100),
        (EncrId.CHACHA20_POLY1305, 128),
        (EncrId.NULL, None),
        (EncrId.AES_CTR, 128),
        (999, 128),
    ],
)
def test_unsupported_encr(encr, bits) -> None:
    with pytest.raises(ConfigError):
        encr_key_size(encr, bits)


def test_bad_combinations() -> None:
    with pytest.raises(ConfigError):
        integ_key_size(IntegId.HMAC_MD5_96)
    with pytest.raises(ConfigError):
        sk_cipher(EncrId.AES_GCM_16, 128, IntegId.HMAC_SHA2_256_128, bytes(20), bytes(32))
    with pytest.raises(ConfigError):
        sk_cipher(EncrId.AES_CBC, 128, IntegId.NONE, bytes(16))
    with pytest.raises(ValueError):
        sk_cipher(EncrId.AES_CBC, 128, IntegId.HMAC_SHA2_256_128, bytes(15), bytes(32))
    with pytest.raises(ValueError):
        sk_cipher(EncrId.AES_CBC, 128, IntegId.HMAC_SHA2_256_128, bytes(16), bytes(31))


def test_repr_has_no_key() -> None:
    key = bytes(range(1, 37))
    c = sk_cipher(EncrId.AES_GCM_16, 256, IntegId.NONE, key)
    assert key.hex() not in repr(c) and "aes256gcm16" in repr(c)


_FUZZ = {ident(c): make(*c) for c in COMBOS}


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(_FUZZ)), st.binary(max_size=200), st.binary(max_size=40))
def test_fuzz_open_only_raises_packet_error(name: str, body: bytes, aad: bytes) -> None:
    with pytest.raises(PacketError):
        _FUZZ[name].open(aad, body)
