"""IKE SA and Child SA key derivation (RFC 7296 sections 2.14, 2.17, 2.18; RFC 9370).

* Initial IKE SA (RFC 7296 section 2.14)::

      SKEYSEED = prf(Ni | Nr, g^ir)
      {SK_d | SK_ai | SK_ar | SK_ei | SK_er | SK_pi | SK_pr}
                = prf+ (SKEYSEED, Ni | Nr | SPIi | SPIr)

  SK_d, SK_pi and SK_pr are as long as the PRF's preferred key size; SK_a* as long as the
  integrity algorithm's key; SK_e* as long as the cipher key (for AEAD ciphers, RFC 5282
  section 7.1, the cipher key *includes* the salt, and there is no SK_a*: pass
  ``integ_key_len=0``).

* After each IKE_INTERMEDIATE additional key exchange (RFC 9370 section 2.2.2)::

      SKEYSEED(n) = prf(SK_d(n-1), SK(n) | Ni | Nr)
      {SK_d(n) | ...} = prf+ (SKEYSEED(n), Ni | Nr | SPIi | SPIr)

* IKE SA rekey (RFC 7296 section 2.18, RFC 9370 section 2.2.4)::

      SKEYSEED = prf(SK_d (old), SK(0) | Ni | Nr | SK(1) | ... | SK(n))

  computed with the *old* IKE SA's PRF; the prf+ that follows uses the new PRF.

* Post-quantum preshared key (RFC 8784 section 3), :func:`apply_ppk`: SK_d, SK_pi and
  SK_pr each replaced by prf+ (PPK, old value).

* Child SA (RFC 7296 section 2.17, RFC 9370 section 2.2.4)::

      KEYMAT = prf+ (SK_d, Ni | Nr)                           (no PFS)
      KEYMAT = prf+ (SK_d, SK(0) | Ni | Nr | SK(1) | ...)      (PFS / additional KEs)

  The caller splits KEYMAT: encryption key then integrity key for the initiator-to-
  responder SA, then the same for the other direction (:func:`split_child_keymat`).

Shared secrets are the raw outputs of :mod:`pyipsec.crypto.ke` (already padded to the
modulus length as RFC 7296 requires).

No key ever appears in ``repr``: :class:`IkeKeys` shows only algorithm and lengths.
"""

from __future__ import annotations

import hmac as _hmac
from collections.abc import Sequence
from dataclasses import dataclass, field

from pyipsec.crypto.prf import Prf

__all__ = [
    "IkeKeys",
    "derive_ike_keys",
    "update_ike_keys_intermediate",
    "rekey_ike_keys",
    "child_keymat",
    "split_child_keymat",
    "ChildKeys",
    "apply_ppk",
]

_KEY_FIELDS = ("sk_d", "sk_ai", "sk_ar", "sk_ei", "sk_er", "sk_pi", "sk_pr")


@dataclass(frozen=True, eq=False)
class IkeKeys:
    """The seven IKE SA keys, with the PRF that produced them.

    ``sk_d`` derives Child SA keys and the next generation's SKEYSEED; ``sk_ai``/``sk_ar``
    authenticate (empty with AEAD), ``sk_ei``/``sk_er`` encrypt (AEAD: key || salt) the
    SK payload in each direction; ``sk_pi``/``sk_pr`` enter the AUTH payload computation.
    ``prf`` is the negotiated PRF (kept so that callers need not carry it separately).
    """

    prf: Prf
    sk_d: bytes = field(repr=False)
    sk_ai: bytes = field(repr=False)
    sk_ar: bytes = field(repr=False)
    sk_ei: bytes = field(repr=False)
    sk_er: bytes = field(repr=False)
    sk_pi: bytes = field(repr=False)
    sk_pr: bytes = field(repr=False)

    def __repr__(self) -> str:
        lens = ", ".join(f"{n}=<{len(getattr(self, n))} bytes>" for n in _KEY_FIELDS)
        return f"IkeKeys(prf={self.prf.name}, {lens})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        """Constant-time comparison of all keys (used by tests and rekey collision checks)."""
        if not isinstance(other, IkeKeys) or other.prf != self.prf:
            return False
        ok = True
        for name in _KEY_FIELDS:
            ok &= _hmac.compare_digest(getattr(self, name), getattr(other, name))
        return ok

    __hash__ = None  # type: ignore[assignment]

    def encryption_key(self, initiator: bool) -> bytes:
        """Key protecting messages *sent* by the initiator (True) or responder (False)."""
        return self.sk_ei if initiator else self.sk_er

    def integrity_key(self, initiator: bool) -> bytes:
        return self.sk_ai if initiator else self.sk_ar

    def auth_key(self, initiator: bool) -> bytes:
        """SK_pi (initiator's AUTH) or SK_pr (responder's AUTH), RFC 7296 section 2.15."""
        return self.sk_pi if initiator else self.sk_pr


def _check_spi(spi: bytes, name: str) -> None:
    if len(spi) != 8:
        raise ValueError(f"{name} must be 8 octets, got {len(spi)}")


def _expand(
    prf: Prf,
    skeyseed: bytes,
    ni: bytes,
    nr: bytes,
    spi_i: bytes,
    spi_r: bytes,
    encr_key_len: int,
    integ_key_len: int,
) -> IkeKeys:
    _check_spi(spi_i, "spi_i")
    _check_spi(spi_r, "spi_r")
    if encr_key_len < 0 or integ_key_len < 0:
        raise ValueError("key lengths must not be negative")
    kp = prf.key_size
    total = 3 * kp + 2 * integ_key_len + 2 * encr_key_len
    keymat = prf.prf_plus(skeyseed, ni + nr + spi_i + spi_r, total)
    pos = 0

    def take(n: int) -> bytes:
        nonlocal pos
        out = keymat[pos : pos + n]
        pos += n
        return out

    sk_d = take(kp)
    sk_ai = take(integ_key_len)
    sk_ar = take(integ_key_len)
    sk_ei = take(encr_key_len)
    sk_er = take(encr_key_len)
    sk_pi = take(kp)
    sk_pr = take(kp)
    return IkeKeys(prf, sk_d, sk_ai, sk_ar, sk_ei, sk_er, sk_pi, sk_pr)


def skeyseed(prf: Prf | str | int, ni: bytes, nr: bytes, shared_secret: bytes) -> bytes:
    """SKEYSEED = prf(Ni | Nr, g^ir) (RFC 7296 section 2.14).

    Only HMAC PRFs are supported, so the full nonces form the key (the 64-bit truncation
    applies to AES-XCBC/CMAC PRFs only).
    """
    return Prf.get(prf).prf(ni + nr, shared_secret)


def derive_ike_keys(
    prf: Prf | str | int,
    ni: bytes,
    nr: bytes,
    shared_secret: bytes,
    spi_i: bytes,
    spi_r: bytes,
    encr_key_len: int,
    integ_key_len: int,
) -> IkeKeys:
    """Keys of a new IKE SA after IKE_SA_INIT (RFC 7296 section 2.14).

    ``encr_key_len`` and ``integ_key_len`` are in octets (see
    :func:`pyipsec.crypto.ike_ciphers.encr_key_size` / ``integ_key_size``).
    """
    p = Prf.get(prf)
    seed = skeyseed(p, ni, nr, shared_secret)
    return _expand(p, seed, ni, nr, spi_i, spi_r, encr_key_len, integ_key_len)


def update_ike_keys_intermediate(
    prf: Prf | str | int,
    keys: IkeKeys,
    additional_shared_secret: bytes,
    ni: bytes,
    nr: bytes,
    spi_i: bytes,
    spi_r: bytes,
    encr_key_len: int | None = None,
    integ_key_len: int | None = None,
) -> IkeKeys:
    """Keys after one more key exchange in IKE_INTERMEDIATE (RFC 9370 section 2.2.2).

    ``ni``/``nr``/``spi_*`` are those of IKE_SA_INIT. Key lengths default to those of
    ``keys`` (the algorithms do not change between IKE_SA_INIT and IKE_AUTH).
    """
    p = Prf.get(prf)
    if encr_key_len is None:
        encr_key_len = len(keys.sk_ei)
    if integ_key_len is None:
        integ_key_len = len(keys.sk_ai)
    seed = p.prf(keys.sk_d, additional_shared_secret + ni + nr)
    return _expand(p, seed, ni, nr, spi_i, spi_r, encr_key_len, integ_key_len)


def rekey_skeyseed(
    old_prf: Prf | str | int,
    old_sk_d: bytes,
    shared_secret: bytes,
    ni: bytes,
    nr: bytes,
    additional_shared_secrets: Sequence[bytes] = (),
) -> bytes:
    """SKEYSEED = prf(SK_d (old), SK(0) | Ni | Nr | SK(1) | ... | SK(n))."""
    data = shared_secret + ni + nr + b"".join(additional_shared_secrets)
    return Prf.get(old_prf).prf(old_sk_d, data)


def rekey_ike_keys(
    prf: Prf | str | int,
    old_sk_d: bytes,
    shared_secret: bytes,
    ni: bytes,
    nr: bytes,
    spi_i: bytes,
    spi_r: bytes,
    encr_key_len: int,
    integ_key_len: int,
    *,
    old_prf: Prf | str | int | None = None,
    additional_shared_secrets: Sequence[bytes] = (),
) -> IkeKeys:
    """Keys of the new IKE SA created by an IKE SA rekey (RFC 7296 section 2.18).

    ``prf`` is the new IKE SA's PRF, ``old_prf`` the old one's (it computes SKEYSEED;
    defaults to ``prf``). ``ni``/``nr`` are the CREATE_CHILD_SA nonces, ``spi_i``/``spi_r``
    the *new* IKE SPIs (from the rekey request and response), ``shared_secret`` is the
    rekey exchange's KE result and ``additional_shared_secrets`` those of any following
    IKE_FOLLOWUP_KE exchanges (RFC 9370 section 2.2.4).
    """
    p = Prf.get(prf)
    op = p if old_prf is None else Prf.get(old_prf)
    seed = rekey_skeyseed(op, old_sk_d, shared_secret, ni, nr, additional_shared_secrets)
    return _expand(p, seed, ni, nr, spi_i, spi_r, encr_key_len, integ_key_len)


def apply_ppk(keys: IkeKeys, ppk: bytes) -> IkeKeys:
    """Mix a post-quantum preshared key into SK_d, SK_pi and SK_pr (RFC 8784 section 3)::

        SK_d  = prf+ (PPK, SK_d')
        SK_pi = prf+ (PPK, SK_pi')
        SK_pr = prf+ (PPK, SK_pr')

    where the primed values are those of RFC 7296; each result keeps its length. The SK_a*
    and SK_e* keys are unchanged (IKE_AUTH is still protected by the original keys).
    """
    if not ppk:
        raise ValueError("empty PPK")
    p = keys.prf
    return IkeKeys(
        p,
        p.prf_plus(ppk, keys.sk_d, len(keys.sk_d)),
        keys.sk_ai,
        keys.sk_ar,
        keys.sk_ei,
        keys.sk_er,
        p.prf_plus(ppk, keys.sk_pi, len(keys.sk_pi)),
        p.prf_plus(ppk, keys.sk_pr, len(keys.sk_pr)),
    )


def child_keymat(
    prf: Prf | str | int,
    sk_d: bytes,
    ni: bytes,
    nr: bytes,
    length: int,
    shared_secret: bytes | None = None,
    additional_shared_secrets: Sequence[bytes] = (),
) -> bytes:
    """KEYMAT for a Child SA (RFC 7296 section 2.17, RFC 9370 section 2.2.4).

    ``shared_secret`` is g^ir (new) when the CREATE_CHILD_SA carried KE payloads (PFS);
    ``None`` for the first Child SA (IKE_AUTH) and for non-PFS rekeys. ``ni``/``nr`` are
    the nonces of IKE_SA_INIT (first Child SA) or of the CREATE_CHILD_SA exchange.
    """
    if additional_shared_secrets and shared_secret is None:
        raise ValueError("additional key exchanges need the initial KE shared secret")
    seed = (shared_secret or b"") + ni + nr + b"".join(additional_shared_secrets)
    return Prf.get(prf).prf_plus(sk_d, seed, length)


@dataclass(frozen=True, eq=False)
class ChildKeys:
    """Child SA keys by direction: ``*_i`` protects initiator-to-responder traffic."""

    encr_i: bytes = field(repr=False)
    integ_i: bytes = field(repr=False)
    encr_r: bytes = field(repr=False)
    integ_r: bytes = field(repr=False)

    def __repr__(self) -> str:
        return f"ChildKeys(encr=<{len(self.encr_i)} bytes>, integ=<{len(self.integ_i)} bytes>)"


def split_child_keymat(keymat: bytes, encr_key_len: int, integ_key_len: int) -> ChildKeys:
    """Split KEYMAT per RFC 7296 section 2.17: for each direction, encryption key first.

    Initiator-to-responder keys come first. With AEAD (RFC 4106) ``encr_key_len``
    includes the salt and ``integ_key_len`` is 0.
    """
    need = 2 * (encr_key_len + integ_key_len)
    if len(keymat) < need:
        raise ValueError(f"KEYMAT too short: {len(keymat)} < {need}")
    e, a = encr_key_len, integ_key_len
    return ChildKeys(
        encr_i=keymat[0:e],
        integ_i=keymat[e : e + a],
        encr_r=keymat[e + a : 2 * e + a],
        integ_r=keymat[2 * e + a : 2 * e + 2 * a],
    )
