"""Proposal keywords (strongSwan style), conversion to SA payload proposals, and selection.

A keyword string such as ``"aes128gcm16-prfsha256-x25519"`` or ``"aes256-sha256-modp2048"``
describes one proposal; several algorithms of the same transform type in one string are
alternatives (``"aes128-aes256-sha256-modp2048-ecp256"``). A second key exchange keyword
(or an explicit ``ke1_`` prefix, e.g. ``ke1_mlkem768``) becomes ADDKE1 (RFC 9370).
Child SA proposals accept ``esn``/``noesn``; a KE keyword there is the PFS group.

Selection (RFC 7296 section 2.7/3.3.6): the responder walks its own proposals in order of
preference and accepts the first proposal of the initiator for which every transform type
that either side uses has a common algorithm; the chosen proposal carries exactly one
transform of each type and the initiator's proposal number.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from pyipsec.errors import ConfigError, ProtocolError
from pyipsec.wire.iana import (
    EncrId,
    EsnId,
    IntegId,
    KeId,
    NotifyType,
    PrfId,
    ProtocolId,
    TransformType,
)

# (transform type, id, key length in bits or None)
TransformSpec = tuple[int, int, int | None]

_ENCR: dict[str, tuple[EncrId, int | None]] = {"3des": (EncrId.TRIPLE_DES, None)}
for _bits in (128, 192, 256):
    _ENCR[f"aes{_bits}"] = (EncrId.AES_CBC, _bits)
    _ENCR[f"aes{_bits}ctr"] = (EncrId.AES_CTR, _bits)
    for _icv, _eid in ((8, EncrId.AES_GCM_8), (12, EncrId.AES_GCM_12), (16, EncrId.AES_GCM_16)):
        _ENCR[f"aes{_bits}gcm{_icv}"] = (_eid, _bits)
    _ENCR[f"aes{_bits}gmac"] = (EncrId.NULL_AUTH_AES_GMAC, _bits)
_ENCR["aes"] = (EncrId.AES_CBC, 128)
_ENCR["chacha20poly1305"] = (EncrId.CHACHA20_POLY1305, None)
_ENCR["null"] = (EncrId.NULL, None)

AEAD_ENCR = frozenset(
    {
        EncrId.AES_GCM_8,
        EncrId.AES_GCM_12,
        EncrId.AES_GCM_16,
        EncrId.AES_CCM_8,
        EncrId.AES_CCM_12,
        EncrId.AES_CCM_16,
        EncrId.CHACHA20_POLY1305,
        EncrId.NULL_AUTH_AES_GMAC,
    }
)

_INTEG: dict[str, IntegId] = {
    "md5": IntegId.HMAC_MD5_96,
    "sha1": IntegId.HMAC_SHA1_96,
    "sha": IntegId.HMAC_SHA1_96,
    "sha256": IntegId.HMAC_SHA2_256_128,
    "sha2_256": IntegId.HMAC_SHA2_256_128,
    "sha384": IntegId.HMAC_SHA2_384_192,
    "sha2_384": IntegId.HMAC_SHA2_384_192,
    "sha512": IntegId.HMAC_SHA2_512_256,
    "sha2_512": IntegId.HMAC_SHA2_512_256,
}
_PRF: dict[str, PrfId] = {
    "prfmd5": PrfId.HMAC_MD5,
    "prfsha1": PrfId.HMAC_SHA1,
    "prfsha256": PrfId.HMAC_SHA2_256,
    "prfsha384": PrfId.HMAC_SHA2_384,
    "prfsha512": PrfId.HMAC_SHA2_512,
}
# the PRF strongSwan derives from an integrity keyword when no prf is given
_PRF_FROM_INTEG = {
    IntegId.HMAC_MD5_96: PrfId.HMAC_MD5,
    IntegId.HMAC_SHA1_96: PrfId.HMAC_SHA1,
    IntegId.HMAC_SHA2_256_128: PrfId.HMAC_SHA2_256,
    IntegId.HMAC_SHA2_384_192: PrfId.HMAC_SHA2_384,
    IntegId.HMAC_SHA2_512_256: PrfId.HMAC_SHA2_512,
}
KE_KEYWORDS: dict[str, KeId] = {
    "modp2048": KeId.MODP2048,
    "modp3072": KeId.MODP3072,
    "modp4096": KeId.MODP4096,
    "ecp256": KeId.ECP256,
    "ecp384": KeId.ECP384,
    "ecp521": KeId.ECP521,
    "x25519": KeId.CURVE25519,
    "curve25519": KeId.CURVE25519,
    "x448": KeId.CURVE448,
    "curve448": KeId.CURVE448,
    "mlkem512": KeId.ML_KEM_512,
    "mlkem768": KeId.ML_KEM_768,
    "mlkem1024": KeId.ML_KEM_1024,
}
KEM_IDS = frozenset({KeId.ML_KEM_512, KeId.ML_KEM_768, KeId.ML_KEM_1024})
_ADDKE_TYPES = [TransformType(t) for t in range(TransformType.ADDKE1, TransformType.ADDKE7 + 1)]


@dataclass(frozen=True, slots=True)
class ProposalSpec:
    """One proposal: for each transform type the acceptable (id, key length) in order."""

    protocol: ProtocolId
    transforms: tuple[tuple[int, tuple[tuple[int, int | None], ...]], ...]
    keyword: str

    def algs(self, ttype: int) -> tuple[tuple[int, int | None], ...]:
        for t, algs in self.transforms:
            if t == ttype:
                return algs
        return ()

    def flat(self) -> list[TransformSpec]:
        """All transforms as (type, id, key length), in wire order."""
        return [(t, i, k) for t, algs in self.transforms for i, k in algs]


def parse_proposal(keyword: str, protocol: ProtocolId, *, key: str = "proposals") -> ProposalSpec:
    """Parse one strongSwan-style proposal keyword string; ConfigError(key=...) if invalid.

    Results are cached (proposals are parsed for every negotiation)."""
    return _parse_cached(keyword, ProtocolId(protocol), key)


@functools.lru_cache(maxsize=1024)
def _parse_cached(keyword: str, protocol: ProtocolId, key: str) -> ProposalSpec:
    tokens = [t for t in keyword.lower().strip().split("-") if t]
    if not tokens:
        raise ConfigError("empty proposal", key=key)
    per: dict[int, list[tuple[int, int | None]]] = {}
    ke_count = 0
    for tok in tokens:
        ttype: int
        alg: tuple[int, int | None]
        if tok.startswith("ke") and "_" in tok and tok[2 : tok.index("_")].isdigit():
            n = int(tok[2 : tok.index("_")])
            name = tok[tok.index("_") + 1 :]
            if not 1 <= n <= 7 or name not in KE_KEYWORDS:
                raise ConfigError(f"unknown additional key exchange {tok!r}", key=key)
            ttype, alg = _ADDKE_TYPES[n - 1], (KE_KEYWORDS[name], None)
        elif tok in _ENCR and protocol != ProtocolId.AH:
            ttype, alg = TransformType.ENCR, _ENCR[tok]
        elif tok in _INTEG:
            ttype, alg = TransformType.INTEG, (_INTEG[tok], None)
        elif tok in _PRF and protocol == ProtocolId.IKE:
            ttype, alg = TransformType.PRF, (_PRF[tok], None)
        elif tok in KE_KEYWORDS:
            ke_id = KE_KEYWORDS[tok]
            # a KEM (or a second group after a first one) is an additional key exchange
            if protocol == ProtocolId.IKE and (ke_id in KEM_IDS and per.get(TransformType.KE)):
                ke_count += 1
                ttype = _ADDKE_TYPES[ke_count - 1]
            else:
                ttype = TransformType.KE
            alg = (ke_id, None)
        elif tok in ("esn", "noesn") and protocol != ProtocolId.IKE:
            ttype = TransformType.ESN
            alg = (EsnId.ESN if tok == "esn" else EsnId.NO_ESN, None)
        else:
            raise ConfigError(f"unknown algorithm keyword {tok!r} in {keyword!r}", key=key)
        lst = per.setdefault(ttype, [])
        if alg not in lst:
            lst.append(alg)
    encrs = per.get(TransformType.ENCR, [])
    aead = [e for e, _ in encrs if e in AEAD_ENCR]
    if aead and len(aead) != len(encrs):
        raise ConfigError(f"cannot mix AEAD and non-AEAD ciphers in {keyword!r}", key=key)
    if protocol == ProtocolId.IKE:
        if not encrs:
            raise ConfigError(f"IKE proposal {keyword!r} lacks an encryption algorithm", key=key)
        if not aead and TransformType.INTEG not in per:
            raise ConfigError(f"IKE proposal {keyword!r} lacks an integrity algorithm", key=key)
        if aead and TransformType.INTEG in per:
            raise ConfigError(f"AEAD proposal {keyword!r} must not name integrity", key=key)
        if TransformType.PRF not in per:
            if aead:
                per[TransformType.PRF] = [(PrfId.HMAC_SHA2_256, None)]
            else:
                per[TransformType.PRF] = [
                    (_PRF_FROM_INTEG[i], None) for i, _ in per[TransformType.INTEG]
                ]
        if TransformType.KE not in per:
            raise ConfigError(f"IKE proposal {keyword!r} lacks a key exchange method", key=key)
    elif protocol == ProtocolId.ESP:
        if not encrs:
            raise ConfigError(f"ESP proposal {keyword!r} lacks an encryption algorithm", key=key)
        if not aead and TransformType.INTEG not in per:
            raise ConfigError(f"ESP proposal {keyword!r} lacks an integrity algorithm", key=key)
        per.setdefault(TransformType.ESN, [(EsnId.NO_ESN, None)])
    else:
        if TransformType.INTEG not in per:
            raise ConfigError(f"AH proposal {keyword!r} lacks an integrity algorithm", key=key)
        per.setdefault(TransformType.ESN, [(EsnId.NO_ESN, None)])
    order = [TransformType.ENCR, TransformType.PRF, TransformType.INTEG, TransformType.KE]
    order += [TransformType.ESN, *_ADDKE_TYPES]
    transforms = tuple((t, tuple(per[t])) for t in order if t in per)
    return ProposalSpec(protocol, transforms, keyword)


def with_pfs(spec: ProposalSpec, ke_id: int | None) -> ProposalSpec:
    """Add a KE transform (PFS group) to a child proposal that has none."""
    if ke_id is None or spec.algs(TransformType.KE):
        return spec
    ts = list(spec.transforms)
    pos = next((i for i, (t, _) in enumerate(ts) if t > TransformType.KE), len(ts))
    ts.insert(pos, (TransformType.KE, ((ke_id, None),)))
    return ProposalSpec(spec.protocol, tuple(ts), spec.keyword)


def without_ke(spec: ProposalSpec) -> ProposalSpec:
    """The proposal with no KE transform (IKE_AUTH child SA: no PFS, RFC 7296 1.2)."""
    ts = tuple((t, a) for t, a in spec.transforms if t != TransformType.KE)
    return ProposalSpec(spec.protocol, ts, spec.keyword)


@dataclass(frozen=True, slots=True)
class Chosen:
    """A selected proposal: exactly one transform per type, plus the peer's number/SPI."""

    protocol: ProtocolId
    number: int
    spi: bytes
    transforms: tuple[TransformSpec, ...]

    def get(self, ttype: int) -> tuple[int, int | None] | None:
        for t, i, k in self.transforms:
            if t == ttype:
                return (i, k)
        return None

    @property
    def encr(self) -> tuple[int, int | None] | None:
        return self.get(TransformType.ENCR)

    @property
    def integ(self) -> int:
        got = self.get(TransformType.INTEG)
        return int(got[0]) if got else IntegId.NONE

    @property
    def prf(self) -> int:
        got = self.get(TransformType.PRF)
        return int(got[0]) if got else 0

    @property
    def ke(self) -> int | None:
        got = self.get(TransformType.KE)
        return int(got[0]) if got and got[0] != KeId.NONE else None

    @property
    def esn(self) -> bool:
        got = self.get(TransformType.ESN)
        return bool(got and got[0] == EsnId.ESN)

    def additional_kes(self) -> list[tuple[int, int]]:
        """(transform type, KE id) of the ADDKEn transforms present, in order."""
        return [(t, i) for t, i, _ in self.transforms if t in _ADDKE_TYPES and i != KeId.NONE]


def _peer_by_type(transforms: list[TransformSpec]) -> dict[int, list[tuple[int, int | None]]]:
    out: dict[int, list[tuple[int, int | None]]] = {}
    for t, i, k in transforms:
        out.setdefault(int(t), []).append((int(i), k))
    return out


def select_proposal(
    ours: list[ProposalSpec], theirs: list[tuple[int, int, bytes, list[TransformSpec]]]
) -> Chosen:
    """Pick the first of our proposals that one of theirs satisfies.

    ``theirs`` holds (number, protocol id, spi, transforms) per received proposal. Raises
    ProtocolError(NO_PROPOSAL_CHOSEN) when nothing matches.
    """
    for spec in ours:
        for number, proto, spi, transforms in theirs:
            if proto != spec.protocol:
                continue
            peer = _peer_by_type(transforms)
            mine = {int(t): list(a) for t, a in spec.transforms}
            # absent ESN on the peer side means "no ESN" (RFC 7296 3.3.3 lists it mandatory for
            # ESP/AH; be lenient); absent ADDKE means NONE
            if spec.protocol != ProtocolId.IKE and TransformType.ESN not in peer:
                peer[TransformType.ESN] = [(EsnId.NO_ESN, None)]
            types = set(mine) | set(peer)
            picked: list[TransformSpec] = []
            ok = True
            for t in sorted(types):
                mine_algs = mine.get(t, [])
                peer_algs = peer.get(t, [])
                optional_none = t in _ADDKE_TYPES or t == TransformType.KE
                if not mine_algs and optional_none and (KeId.NONE, None) in peer_algs:
                    continue
                if not peer_algs and t in _ADDKE_TYPES:
                    ok = False
                    break
                common = [a for a in peer_algs if a in mine_algs]
                if not common:
                    ok = False
                    break
                if common[0][0] == KeId.NONE and optional_none:
                    continue
                picked.append((t, common[0][0], common[0][1]))
            if ok:
                return Chosen(ProtocolId(proto), number, spi, tuple(picked))
    raise ProtocolError("no acceptable proposal", notify=NotifyType.NO_PROPOSAL_CHOSEN)


def check_chosen(offered: list[ProposalSpec], chosen: Chosen) -> None:
    """Initiator side: the responder's choice must be a subset of one of our proposals."""
    for spec in offered:
        if spec.protocol != chosen.protocol:
            continue
        if all((i, k) in spec.algs(t) for t, i, k in chosen.transforms):
            types = {t for t, _, _ in chosen.transforms}
            needed = {
                t
                for t, _ in spec.transforms
                if t not in (TransformType.ESN,) and t not in _ADDKE_TYPES
            }
            if needed <= types or needed - types <= {TransformType.KE}:
                return
    raise ProtocolError(
        "responder chose a proposal we did not offer", notify=NotifyType.NO_PROPOSAL_CHOSEN
    )


# --------------------------------------------------------------------------- ESP keywords

_INTEG_KW = {
    IntegId.HMAC_MD5_96: "md5",
    IntegId.HMAC_SHA1_96: "sha1",
    IntegId.HMAC_SHA2_256_128: "sha256",
    IntegId.HMAC_SHA2_384_192: "sha384",
    IntegId.HMAC_SHA2_512_256: "sha512",
}


def esp_algorithm_keyword(chosen: Chosen) -> str:
    """The pyipsec.ipsec.SecurityAssociation algorithm keyword (e.g. "aes128gcm16",
    "aes128-sha256", AH "sha256") of a negotiated Child SA proposal."""
    integ = _INTEG_KW.get(IntegId(chosen.integ)) if chosen.integ else None
    if chosen.protocol == ProtocolId.AH:
        if integ is None:
            raise ProtocolError("AH without integrity", notify=NotifyType.NO_PROPOSAL_CHOSEN)
        return integ
    encr = chosen.encr
    if encr is None:
        raise ProtocolError("ESP without encryption", notify=NotifyType.NO_PROPOSAL_CHOSEN)
    eid, bits = encr
    name = next((n for n, v in _ENCR.items() if v == (eid, bits) and n != "aes"), None)
    if name is None:
        raise ProtocolError("unsupported cipher", notify=NotifyType.NO_PROPOSAL_CHOSEN)
    if eid in AEAD_ENCR:
        return name
    return f"{name}-{integ}" if integ else name


# ESP/AH key sizes in bytes (encryption key incl. salt, integrity key), RFC 4106/7634/4868
_ENCR_KEY = {
    EncrId.AES_CBC: lambda b: b // 8,
    EncrId.AES_CTR: lambda b: b // 8 + 4,
    EncrId.AES_GCM_8: lambda b: b // 8 + 4,
    EncrId.AES_GCM_12: lambda b: b // 8 + 4,
    EncrId.AES_GCM_16: lambda b: b // 8 + 4,
    EncrId.NULL_AUTH_AES_GMAC: lambda b: b // 8 + 4,
    EncrId.CHACHA20_POLY1305: lambda b: 36,
    EncrId.TRIPLE_DES: lambda b: 24,
    EncrId.NULL: lambda b: 0,
}
_INTEG_KEY = {
    IntegId.NONE: 0,
    IntegId.HMAC_MD5_96: 16,
    IntegId.HMAC_SHA1_96: 20,
    IntegId.HMAC_SHA2_256_128: 32,
    IntegId.HMAC_SHA2_384_192: 48,
    IntegId.HMAC_SHA2_512_256: 64,
}


def child_key_sizes(chosen: Chosen) -> tuple[int, int]:
    """(encryption key bytes incl. salt, integrity key bytes) of a Child SA proposal."""
    enc = 0
    if chosen.encr is not None:
        eid, bits = chosen.encr
        enc = _ENCR_KEY[EncrId(eid)](bits or 0)
    return enc, _INTEG_KEY[IntegId(chosen.integ)]


# --------------------------------------------------------------------------- wire conversion

_KW_ENCR = {v: k for k, v in reversed(list(_ENCR.items())) if k != "aes"}
_KW_PRF = {v: k for k, v in _PRF.items()}
_KW_KE = {v: k for k, v in reversed(list(KE_KEYWORDS.items()))}


def describe(chosen: Chosen) -> str:
    """strongSwan-style keyword of a chosen proposal, e.g. "aes128gcm16-prfsha256-x25519"."""
    parts: list[str] = []
    rank = {TransformType.ENCR: 0, TransformType.INTEG: 1, TransformType.PRF: 2}
    for t, i, k in sorted(chosen.transforms, key=lambda x: (rank.get(x[0], 3), x[0])):
        if t == TransformType.ENCR:
            parts.append(_KW_ENCR.get((i, k), f"encr{i}"))
        elif t == TransformType.PRF:
            parts.append(_KW_PRF.get(i, f"prf{i}"))
        elif t == TransformType.INTEG:
            parts.append(_INTEG_KW.get(i, f"integ{i}"))
        elif t == TransformType.KE:
            parts.append(_KW_KE.get(i, f"ke{i}"))
        elif t == TransformType.ESN:
            parts.append("esn" if i == EsnId.ESN else "noesn")
        else:
            parts.append(f"ke{t - TransformType.ADDKE1 + 1}_{_KW_KE.get(i, i)}")
    return "-".join(parts)


def prefer_ke(specs: list[ProposalSpec], ke_id: int) -> list[ProposalSpec]:
    """Our proposals with ``ke_id`` moved first among the KE alternatives, so that the
    initiator's KE payload group wins whenever we accept it (avoids INVALID_KE_PAYLOAD)."""
    out = []
    for s in specs:
        ts = []
        for t, algs in s.transforms:
            if t == TransformType.KE and (ke_id, None) in algs:
                algs = ((ke_id, None),) + tuple(a for a in algs if a != (ke_id, None))
            ts.append((t, algs))
        out.append(ProposalSpec(s.protocol, tuple(ts), s.keyword))
    return out


def to_sa_payload(specs: list[ProposalSpec], spi: bytes = b"") -> object:
    """SA payload offering ``specs`` (numbered from 1) with our SPI."""
    from pyipsec.wire.ike import Proposal, SaPayload, Transform

    return SaPayload(
        [
            Proposal(n, s.protocol, spi, [Transform(t, i, k) for t, i, k in s.flat()])
            for n, s in enumerate(specs, start=1)
        ]
    )


def chosen_sa_payload(chosen: Chosen, spi: bytes = b"") -> object:
    """SA payload carrying the one selected proposal (initiator's number, our SPI)."""
    from pyipsec.wire.ike import Proposal, SaPayload, Transform

    return SaPayload(
        [
            Proposal(
                chosen.number,
                chosen.protocol,
                spi,
                [Transform(t, i, k) for t, i, k in chosen.transforms],
            )
        ]
    )


def from_sa_payload(sa: object) -> list[tuple[int, int, bytes, list[TransformSpec]]]:
    """Received proposals as (number, protocol, spi, transforms); transforms with unknown
    attributes are left out (RFC 7296 3.3.6: such a transform must not be selected)."""
    out = []
    for p in sa.proposals:  # type: ignore[attr-defined]
        transforms = [
            (int(t.type), int(t.id), t.key_length)
            for t in p.transforms
            if not getattr(t, "other_attributes", ())
        ]
        out.append((int(p.num), int(p.protocol_id), bytes(p.spi), transforms))
    return out


def chosen_from_response(sa: object) -> Chosen:
    """The single proposal of a responder's SA payload (INVALID_SYNTAX if not exactly one,
    or if a transform type repeats)."""
    props = from_sa_payload(sa)
    if len(props) != 1:
        raise ProtocolError("response must carry one proposal", notify=NotifyType.INVALID_SYNTAX)
    num, proto, spi, transforms = props[0]
    types = [t for t, _, _ in transforms]
    if len(set(types)) != len(types):
        raise ProtocolError(
            "response proposal repeats a transform type", notify=NotifyType.INVALID_SYNTAX
        )
    try:
        protocol = ProtocolId(proto)
    except ValueError:
        raise ProtocolError("unknown protocol", notify=NotifyType.INVALID_SYNTAX) from None
    return Chosen(protocol, num, spi, tuple(transforms))
