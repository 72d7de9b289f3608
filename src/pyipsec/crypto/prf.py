"""IKEv2 pseudo-random functions and ``prf+`` (RFC 7296 section 2.13).

The PRFs are HMAC-SHA1 (RFC 2104) and HMAC-SHA2-256/384/512 (RFC 4868 section 2.1.2),
computed through ``cryptography``'s HMAC. ``prf+`` is the RFC 7296 expansion::

    prf+ (K,S) = T1 | T2 | T3 | T4 | ...
    T1 = prf (K, S | 0x01)
    T2 = prf (K, T1 | S | 0x02)
    ...

The counter is one octet, so at most 255 blocks can be produced; asking for more is an
error (RFC 7296 section 2.13: "this function is not defined beyond 255 times the size
of the prf function output").

Names accepted by :meth:`Prf.from_name` are the IANA-derived lower-case names
``prf-hmac-sha1``, ``prf-hmac-sha256`` (alias ``prf-hmac-sha2-256``), ``prf-hmac-sha384``,
``prf-hmac-sha512``.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes, hmac

from pyipsec.errors import ConfigError
from pyipsec.wire.iana import PrfId

__all__ = ["Prf", "prf_plus", "PRF_NAMES"]


@dataclass(frozen=True)
class _PrfSpec:
    prf_id: PrfId
    name: str
    hash_factory: type[hashes.HashAlgorithm]
    output_size: int


_SPECS: dict[PrfId, _PrfSpec] = {
    PrfId.HMAC_SHA1: _PrfSpec(PrfId.HMAC_SHA1, "prf-hmac-sha1", hashes.SHA1, 20),
    PrfId.HMAC_SHA2_256: _PrfSpec(PrfId.HMAC_SHA2_256, "prf-hmac-sha256", hashes.SHA256, 32),
    PrfId.HMAC_SHA2_384: _PrfSpec(PrfId.HMAC_SHA2_384, "prf-hmac-sha384", hashes.SHA384, 48),
    PrfId.HMAC_SHA2_512: _PrfSpec(PrfId.HMAC_SHA2_512, "prf-hmac-sha512", hashes.SHA512, 64),
}

#: Accepted names (and aliases) -> PRF transform id.
PRF_NAMES: dict[str, PrfId] = {
    "prf-hmac-sha1": PrfId.HMAC_SHA1,
    "prf-hmac-sha256": PrfId.HMAC_SHA2_256,
    "prf-hmac-sha2-256": PrfId.HMAC_SHA2_256,
    "prf-hmac-sha384": PrfId.HMAC_SHA2_384,
    "prf-hmac-sha2-384": PrfId.HMAC_SHA2_384,
    "prf-hmac-sha512": PrfId.HMAC_SHA2_512,
    "prf-hmac-sha2-512": PrfId.HMAC_SHA2_512,
}


class Prf:
    """One negotiated IKEv2 PRF. Stateless apart from the algorithm choice; thread-safe.

    ``key_size`` is the preferred key length (RFC 7296 section 2.13: for HMAC PRFs the
    key size equals the output size, used e.g. for SK_d / SK_pi / SK_pr); ``output_size``
    the length of one ``prf`` output.
    """

    __slots__ = ("_spec",)

    def __init__(self, spec: _PrfSpec) -> None:
        self._spec = spec

    # -------------------------------------------------------------- constructors

    @classmethod
    def from_id(cls, prf_id: int) -> Prf:
        """The PRF for an IANA PRF transform id; ConfigError if not supported."""
        try:
            return cls(_SPECS[PrfId(prf_id)])
        except (ValueError, KeyError):
            raise ConfigError(f"unsupported PRF transform id {prf_id}", key="prf") from None

    @classmethod
    def from_name(cls, name: str) -> Prf:
        """The PRF for a name such as ``prf-hmac-sha256``; ConfigError if unknown."""
        prf_id = PRF_NAMES.get(name.lower().strip())
        if prf_id is None:
            raise ConfigError(f"unknown PRF {name!r}", key="prf")
        return cls(_SPECS[prf_id])

    @classmethod
    def get(cls, prf: Prf | str | int) -> Prf:
        """Accept a :class:`Prf`, a name, or an IANA id (as the public helpers do)."""
        if isinstance(prf, Prf):
            return prf
        if isinstance(prf, str):
            return cls.from_name(prf)
        return cls.from_id(prf)

    # -------------------------------------------------------------- properties

    @property
    def id(self) -> PrfId:
        return self._spec.prf_id

    @property
    def name(self) -> str:
        return self._spec.name

    @property
    def key_size(self) -> int:
        return self._spec.output_size

    @property
    def output_size(self) -> int:
        return self._spec.output_size

    def __repr__(self) -> str:
        return f"Prf({self._spec.name})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Prf) and other._spec.prf_id == self._spec.prf_id

    def __hash__(self) -> int:
        return hash(self._spec.prf_id)

    # -------------------------------------------------------------- operations

    def prf(self, key: bytes, data: bytes) -> bytes:
        """prf(key, data): one HMAC output of ``output_size`` octets."""
        h = hmac.HMAC(key, self._spec.hash_factory())
        h.update(data)
        return h.finalize()

    def prf_plus(self, key: bytes, seed: bytes, length: int) -> bytes:
        """prf+(key, seed) truncated to ``length`` octets (RFC 7296 section 2.13)."""
        if length < 0:
            raise ValueError("prf+ length must not be negative")
        out_size = self._spec.output_size
        blocks = -(-length // out_size)
        if blocks > 255:
            raise ValueError(f"prf+ cannot produce {length} octets with {self.name}")
        # Key the HMAC once and copy the keyed context for each block.
        base = hmac.HMAC(key, self._spec.hash_factory())
        out = bytearray()
        t = b""
        for counter in range(1, blocks + 1):
            h = base.copy()
            h.update(t)
            h.update(seed)
            h.update(bytes((counter,)))
            t = h.finalize()
            out += t
        return bytes(out[:length])


def prf_plus(prf: Prf | str | int, key: bytes, seed: bytes, length: int) -> bytes:
    """prf+ of RFC 7296 section 2.13.

    ``prf`` is a name (``prf-hmac-sha1``, ``prf-hmac-sha256``, ``prf-hmac-sha384``,
    ``prf-hmac-sha512``), an IANA :class:`PrfId`, or a :class:`Prf`.
    """
    return Prf.get(prf).prf_plus(key, seed, length)
