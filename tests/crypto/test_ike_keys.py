"""IKE key derivation: CAVP KDF135 (SP 800-135) IKEv2 known answers plus RFC self-consistency."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

import pytest

from pyipsec.crypto.ike_ciphers import encr_key_size, integ_key_size, sk_cipher
from pyipsec.crypto.ike_keys import (
    IkeKeys,
    apply_ppk,
    child_keymat,
    derive_ike_keys,
    rekey_ike_keys,
    rekey_skeyseed,
    skeyseed,
    split_child_keymat,
    update_ike_keys_intermediate,
)
from pyipsec.crypto.ke import ke_by_id
from pyipsec.crypto.prf import Prf
from pyipsec.errors import IntegrityError

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "ike_kdf" / "ikev2_kdf135.rsp"
PRF_BY_HASH = {
    "SHA-1": "prf-hmac-sha1",
    "SHA-256": "prf-hmac-sha256",
    "SHA-384": "prf-hmac-sha384",
    "SHA-512": "prf-hmac-sha512",
}


def load_vectors() -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    prf = None
    cur: dict[str, str] | None = None
    for raw in VECTORS.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[PRF = "):
            prf = PRF_BY_HASH[line[len("[PRF = ") : -1]]
            continue
        key, _, value = line.partition(" = ")
        if key == "COUNT":
            cur = {"PRF": prf, "COUNT": value}
            out.append(cur)
        else:
            assert cur is not None
            cur[key] = value
    return out


VECS = load_vectors()


def h(v: dict[str, str], k: str) -> bytes:
    return bytes.fromhex(v[k])


def test_vector_file_loaded() -> None:
    assert len(VECS) >= 4
    assert {v["PRF"] for v in VECS} >= {"prf-hmac-sha1", "prf-hmac-sha256", "prf-hmac-sha384"}


@pytest.mark.parametrize("v", VECS, ids=lambda v: f"{v['PRF']}-{v['COUNT']}")
def test_cavp_ike_sa_keys(v: dict[str, str]) -> None:
    prf = Prf.from_name(v["PRF"])
    ni, nr, spi_i, spi_r = h(v, "Ni"), h(v, "Nr"), h(v, "SPIi"), h(v, "SPIr")
    dkm = h(v, "DKM")
    # Choose key lengths so that the seven keys use exactly len(DKM) octets.
    kp = prf.key_size
    rest = max(0, len(dkm) - 3 * kp)
    integ = 20 if rest > 40 else 0
    encr = (rest - 2 * integ) // 2
    keys = derive_ike_keys(prf, ni, nr, h(v, "g^ir"), spi_i, spi_r, encr, integ)
    joined = keys.sk_d + keys.sk_ai + keys.sk_ar + keys.sk_ei + keys.sk_er + keys.sk_pi
    joined += keys.sk_pr
    n = min(len(joined), len(dkm))
    assert n >= 100
    assert joined[:n] == dkm[:n]
    # SKEYSEED itself: prf(Ni|Nr, g^ir), through the public helper.
    assert skeyseed(prf, ni, nr, h(v, "g^ir")) == h(v, "SKEYSEED")


@pytest.mark.parametrize("v", VECS, ids=lambda v: f"{v['PRF']}-{v['COUNT']}")
def test_cavp_rekey_skeyseed(v: dict[str, str]) -> None:
    prf = Prf.from_name(v["PRF"])
    sk_d = h(v, "DKM")[: prf.key_size]
    got = rekey_skeyseed(prf, sk_d, h(v, "g^ir (new)"), h(v, "Ni"), h(v, "Nr"))
    assert got == h(v, "SKEYSEED(Rekey)")
    # And the full rekey: prf+ (SKEYSEED(Rekey), Ni|Nr|SPIi|SPIr) with the new SPIs.
    new = rekey_ike_keys(
        prf, sk_d, h(v, "g^ir (new)"), h(v, "Ni"), h(v, "Nr"), h(v, "SPIi"), h(v, "SPIr"), 16, 20
    )
    expected = prf.prf_plus(
        got, h(v, "Ni") + h(v, "Nr") + h(v, "SPIi") + h(v, "SPIr"), prf.key_size
    )
    assert new.sk_d == expected


CHILD_VECS = [v for v in VECS if "DKM(Child SA)" in v]


@pytest.mark.parametrize("v", CHILD_VECS, ids=lambda v: f"{v['PRF']}-{v['COUNT']}")
def test_cavp_child_keymat(v: dict[str, str]) -> None:
    prf = Prf.from_name(v["PRF"])
    sk_d = h(v, "DKM")[: prf.key_size]
    want = h(v, "DKM(Child SA)")
    assert child_keymat(prf, sk_d, h(v, "Ni"), h(v, "Nr"), len(want)) == want
    want_dh = h(v, "DKM(Child SA D-H)")
    got = child_keymat(prf, sk_d, h(v, "Ni"), h(v, "Nr"), len(want_dh), h(v, "g^ir (new)"))
    assert got == want_dh


def test_cavp_vectors_include_child_keymat() -> None:
    assert len(CHILD_VECS) >= 2


# ------------------------------------------------------------------ self-consistency

NI, NR = bytes(range(32)), bytes(range(32, 64))
SPI_I, SPI_R = bytes.fromhex("0102030405060708"), bytes.fromhex("1112131415161718")
GIR = bytes(range(100, 164))


def hm(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


def plus(key: bytes, seed: bytes, n: int) -> bytes:
    out, t, i = b"", b"", 1
    while len(out) < n:
        t = hm(key, t + seed + bytes([i]))
        out += t
        i += 1
    return out[:n]


def test_derive_lengths_and_split_aes_cbc() -> None:
    keys = derive_ike_keys("prf-hmac-sha256", NI, NR, GIR, SPI_I, SPI_R, 32, 32)
    assert [
        len(x)
        for x in (keys.sk_d, keys.sk_ai, keys.sk_ar, keys.sk_ei, keys.sk_er, keys.sk_pi, keys.sk_pr)
    ] == [32, 32, 32, 32, 32, 32, 32]
    dkm = plus(hm(NI + NR, GIR), NI + NR + SPI_I + SPI_R, 7 * 32)
    assert keys.sk_d == dkm[0:32] and keys.sk_ai == dkm[32:64] and keys.sk_ar == dkm[64:96]
    assert keys.sk_ei == dkm[96:128] and keys.sk_er == dkm[128:160]
    assert keys.sk_pi == dkm[160:192] and keys.sk_pr == dkm[192:224]
    assert keys.encryption_key(True) == keys.sk_ei and keys.encryption_key(False) == keys.sk_er
    assert keys.integrity_key(False) == keys.sk_ar and keys.auth_key(True) == keys.sk_pi


def test_derive_aead_has_no_integrity_keys() -> None:
    keys = derive_ike_keys("prf-hmac-sha256", NI, NR, GIR, SPI_I, SPI_R, 36, 0)
    assert keys.sk_ai == b"" and keys.sk_ar == b""
    assert len(keys.sk_ei) == 36 and len(keys.sk_er) == 36


def test_repr_hides_keys() -> None:
    keys = derive_ike_keys("prf-hmac-sha256", NI, NR, GIR, SPI_I, SPI_R, 32, 32)
    text = repr(keys) + str(keys)
    for k in (keys.sk_d, keys.sk_ei, keys.sk_pi):
        assert k.hex() not in text
        assert repr(k) not in text
    assert "prf-hmac-sha256" in text


def test_equality_constant_time_and_distinct() -> None:
    a = derive_ike_keys("prf-hmac-sha256", NI, NR, GIR, SPI_I, SPI_R, 32, 32)
    b = derive_ike_keys("prf-hmac-sha256", NI, NR, GIR, SPI_I, SPI_R, 32, 32)
    c = derive_ike_keys("prf-hmac-sha256", NI, NR, GIR[:-1] + b"\0", SPI_I, SPI_R, 32, 32)
    assert a == b and a != c
    assert isinstance(a, IkeKeys)


def test_bad_spi_length() -> None:
    with pytest.raises(ValueError):
        derive_ike_keys("prf-hmac-sha256", NI, NR, GIR, b"123", SPI_R, 32, 32)


def test_intermediate_update_rfc9370() -> None:
    keys = derive_ike_keys("prf-hmac-sha256", NI, NR, GIR, SPI_I, SPI_R, 36, 0)
    sk1 = b"\x55" * 32
    new = update_ike_keys_intermediate("prf-hmac-sha256", keys, sk1, NI, NR, SPI_I, SPI_R)
    seed = hm(keys.sk_d, sk1 + NI + NR)
    dkm = plus(seed, NI + NR + SPI_I + SPI_R, 3 * 32 + 2 * 36)
    assert new.sk_d == dkm[:32]
    assert new.sk_ei == dkm[32:68] and new.sk_er == dkm[68:104]
    assert new.sk_pi == dkm[104:136] and new.sk_pr == dkm[136:168]
    assert new != keys


def test_rekey_uses_old_prf_for_skeyseed() -> None:
    old_sk_d = b"\x11" * 20
    new = rekey_ike_keys(
        "prf-hmac-sha256", old_sk_d, GIR, NI, NR, SPI_I, SPI_R, 16, 32, old_prf="prf-hmac-sha1"
    )
    seed = hmac.new(old_sk_d, GIR + NI + NR, hashlib.sha1).digest()
    assert new.sk_d == plus(seed, NI + NR + SPI_I + SPI_R, 32)
    assert new.prf == Prf.from_name("prf-hmac-sha256")


def test_rekey_with_additional_key_exchanges() -> None:
    sk_d = b"\x22" * 32
    sk1, sk2 = b"\x01" * 32, b"\x02" * 32
    new = rekey_ike_keys(
        "prf-hmac-sha256",
        sk_d,
        GIR,
        NI,
        NR,
        SPI_I,
        SPI_R,
        36,
        0,
        additional_shared_secrets=[sk1, sk2],
    )
    seed = hm(sk_d, GIR + NI + NR + sk1 + sk2)
    assert new.sk_d == plus(seed, NI + NR + SPI_I + SPI_R, 32)


def test_child_keymat_and_split() -> None:
    sk_d = b"\x33" * 32
    km = child_keymat("prf-hmac-sha256", sk_d, NI, NR, 2 * (16 + 32))
    assert km == plus(sk_d, NI + NR, 96)
    pfs = child_keymat("prf-hmac-sha256", sk_d, NI, NR, 96, shared_secret=GIR)
    assert pfs == plus(sk_d, GIR + NI + NR, 96) and pfs != km
    hyb = child_keymat("prf-hmac-sha256", sk_d, NI, NR, 96, GIR, [b"\x44" * 32])
    assert hyb == plus(sk_d, GIR + NI + NR + b"\x44" * 32, 96)
    ck = split_child_keymat(km, 16, 32)
    assert ck.encr_i == km[:16] and ck.integ_i == km[16:48]
    assert ck.encr_r == km[48:64] and ck.integ_r == km[64:96]
    assert km[:16].hex() not in repr(ck)
    with pytest.raises(ValueError):
        split_child_keymat(km[:10], 16, 32)
    with pytest.raises(ValueError):
        child_keymat("prf-hmac-sha256", sk_d, NI, NR, 10, None, [b"x"])


@pytest.mark.parametrize(
    ("ke_id", "encr", "bits", "integ"),
    [
        (31, 20, 256, 0),  # curve25519, AES-GCM-16-256
        (19, 28, None, 0),  # ecp256, ChaCha20-Poly1305
        (14, 12, 128, 12),  # modp2048, AES-CBC-128 + HMAC-SHA2-256-128
        (36, 20, 128, 0),  # ML-KEM-768 as the only KE, AES-GCM-16-128
    ],
)
def test_both_sides_derive_the_same_keys(ke_id: int, encr: int, bits, integ: int) -> None:
    """KE -> SKEYSEED/SK_* on both sides -> SK ciphers interoperate -> Child KEYMAT agrees."""
    ke = ke_by_id(ke_id)
    kx = ke.new()
    ker, ss_r = ke.respond(kx.public_value())
    ss_i = kx.complete(ker)
    e_len, a_len = encr_key_size(encr, bits), integ_key_size(integ)
    ki = derive_ike_keys("prf-hmac-sha256", NI, NR, ss_i, SPI_I, SPI_R, e_len, a_len)
    kr = derive_ike_keys("prf-hmac-sha256", NI, NR, ss_r, SPI_I, SPI_R, e_len, a_len)
    assert ki == kr
    # Initiator seals with SK_ei/SK_ai; the responder opens with the same keys.
    send = sk_cipher(encr, bits, integ, ki.sk_ei, ki.sk_ai)
    recv = sk_cipher(encr, bits, integ, kr.sk_ei, kr.sk_ai)
    aad = SPI_I + SPI_R + b"\x2e\x20\x23\x08" + bytes(8)
    assert recv.open(aad, send.seal(aad, bytes(32))) == bytes(32)
    # The other direction's key does not open it.
    wrong = sk_cipher(encr, bits, integ, kr.sk_er, kr.sk_ar)
    with pytest.raises(IntegrityError):
        wrong.open(aad, send.seal(aad, bytes(32)))
    assert child_keymat(ki.prf, ki.sk_d, NI, NR, 72) == child_keymat(kr.prf, kr.sk_d, NI, NR, 72)


def test_apply_ppk_rfc8784() -> None:
    keys = derive_ike_keys("prf-hmac-sha256", NI, NR, GIR, SPI_I, SPI_R, 32, 32)
    ppk = b"post-quantum preshared key material, 32+ bytes long"
    new = apply_ppk(keys, ppk)
    assert new.sk_d == plus(ppk, keys.sk_d, 32)
    assert new.sk_pi == plus(ppk, keys.sk_pi, 32)
    assert new.sk_pr == plus(ppk, keys.sk_pr, 32)
    assert (new.sk_ai, new.sk_ar, new.sk_ei, new.sk_er) == (
        keys.sk_ai,
        keys.sk_ar,
        keys.sk_ei,
        keys.sk_er,
    )
    assert apply_ppk(keys, ppk + b"!") != new
    with pytest.raises(ValueError):
        apply_ppk(keys, b"")
