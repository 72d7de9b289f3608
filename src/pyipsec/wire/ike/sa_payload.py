"""SA payload: proposals, transforms and transform attributes (RFC 7296 section 3.3).

The codec checks syntax only (lengths, substructure markers, counts, SPI sizes, attribute
formats); choosing a proposal is the state machine's job (pyipsec.ike.proposals).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import ClassVar

from pyipsec.wire.iana import PayloadType, ProtocolId, TransformAttr
from pyipsec.wire.ike.header import syntax_error

_PROPOSAL = struct.Struct("!BBHBBBB")
_TRANSFORM = struct.Struct("!BBHBBH")
_ATTR = struct.Struct("!HH")

_LAST = 0
_MORE_PROPOSALS = 2
_MORE_TRANSFORMS = 3
_ATTR_TV = 0x8000

# Allowed SPI sizes by protocol (RFC 7296 section 3.3.1): IKE 0 in IKE_SA_INIT and 8 when
# rekeying the IKE SA in CREATE_CHILD_SA; ESP and AH 4. Unknown protocols: any.
_SPI_SIZES = {int(ProtocolId.IKE): (0, 8), int(ProtocolId.ESP): (4,), int(ProtocolId.AH): (4,)}
_KEY_LENGTH = int(TransformAttr.KEY_LENGTH)
_KEY_LENGTH_TV = (0x8000 | _KEY_LENGTH).to_bytes(2, "big")


# RFC 7296 section 3.3.2: transform substructure.
# | Last Substruc |   RESERVED    |        Transform Length       |
# |Transform Type |   RESERVED    |          Transform ID         |
# ~                      Transform Attributes                     ~
# RFC 7296 section 3.3.5: attributes, |A|Attribute Type|AF=0 Length / AF=1 Value|[Value]
@dataclass(frozen=True, slots=True)
class Transform:
    """One transform. ``key_length`` is the Key Length attribute (bits), None if absent.

    ``other_attributes`` keeps any attribute other than Key Length as (type, tv, value):
    RFC 7296 section 3.3.6 says a transform with an unknown attribute must be rejected, so
    the proposal selector needs to see them.
    """

    type: int
    id: int
    key_length: int | None = None
    other_attributes: tuple[tuple[int, bool, bytes], ...] = ()


# RFC 7296 section 3.3.1: proposal substructure.
# | Last Substruc |   RESERVED    |         Proposal Length       |
# | Proposal Num  |  Protocol ID  |    SPI Size   |Num  Transforms|
# ~                        SPI (variable)                         ~
# ~                        <Transforms>                           ~
@dataclass(frozen=True, slots=True)
class Proposal:
    """A proposal: number, protocol (ProtocolId), SPI (0, 4 or 8 bytes) and transforms."""

    num: int
    protocol_id: int
    spi: bytes
    transforms: list[Transform] = field(default_factory=list)


# RFC 7296 section 3.3: the SA payload is a list of proposals.
@dataclass(frozen=True, slots=True)
class SaPayload:
    """Security Association payload: proposals in preference order."""

    proposals: list[Proposal] = field(default_factory=list)
    payload_type: ClassVar[int] = PayloadType.SA


def _pull_attributes(data: bytes, offset: int, end: int) -> tuple[int | None, tuple]:
    key_length: int | None = None
    others: list[tuple[int, bool, bytes]] = []
    while offset < end:
        if end - offset < _ATTR.size:
            raise syntax_error("truncated transform attribute")
        atype, value = _ATTR.unpack_from(data, offset)
        offset += _ATTR.size
        tv = bool(atype & _ATTR_TV)
        atype &= 0x7FFF
        if tv:
            raw = value.to_bytes(2, "big")
        else:
            if end - offset < value:
                raise syntax_error(f"attribute {atype} length {value} exceeds the transform")
            raw = bytes(data[offset : offset + value])
            offset += value
        if atype == _KEY_LENGTH:
            if not tv:
                raise syntax_error("Key Length attribute must use the TV format")
            if key_length is not None:
                raise syntax_error("duplicate Key Length attribute")
            key_length = value
        else:
            others.append((atype, tv, raw))
    return key_length, tuple(others)


def _pull_transform(data: bytes, offset: int, end: int) -> tuple[Transform, int, int]:
    """Return (transform, last_substruc, offset after it)."""
    if end - offset < _TRANSFORM.size:
        raise syntax_error("truncated transform")
    last, _res, length, ttype, _res2, tid = _TRANSFORM.unpack_from(data, offset)
    if last not in (_LAST, _MORE_TRANSFORMS):
        raise syntax_error(f"transform Last Substruc {last} is neither 0 nor 3")
    if length < _TRANSFORM.size or offset + length > end:
        raise syntax_error(f"transform length {length} invalid")
    if length == _TRANSFORM.size:  # the common cases first: no attribute...
        return Transform(ttype, tid), last, offset + length
    if length == _TRANSFORM.size + 4 and data[offset + 8 : offset + 10] == _KEY_LENGTH_TV:
        # ...or only a Key Length
        key_length = int.from_bytes(data[offset + 10 : offset + 12], "big")
        return Transform(ttype, tid, key_length), last, offset + length
    key_length, others = _pull_attributes(data, offset + _TRANSFORM.size, offset + length)
    return Transform(ttype, tid, key_length, others), last, offset + length


def _pull_proposal(data: bytes, offset: int, end: int) -> tuple[Proposal, int, int]:
    if end - offset < _PROPOSAL.size:
        raise syntax_error("truncated proposal")
    last, _res, length, num, proto, spi_size, n_transforms = _PROPOSAL.unpack_from(data, offset)
    if last not in (_LAST, _MORE_PROPOSALS):
        raise syntax_error(f"proposal Last Substruc {last} is neither 0 nor 2")
    if length < _PROPOSAL.size + spi_size or offset + length > end:
        raise syntax_error(f"proposal length {length} invalid")
    allowed = _SPI_SIZES.get(proto)
    if allowed is not None and spi_size not in allowed:
        raise syntax_error(f"SPI size {spi_size} invalid for protocol {proto}")
    pos = offset + _PROPOSAL.size
    spi = bytes(data[pos : pos + spi_size])
    pos += spi_size
    stop = offset + length
    transforms: list[Transform] = []
    t_last = _MORE_TRANSFORMS
    while pos < stop:
        if t_last == _LAST:
            raise syntax_error("data after the last transform of a proposal")
        transform, t_last, pos = _pull_transform(data, pos, stop)
        transforms.append(transform)
    if transforms and t_last != _LAST:
        raise syntax_error("last transform not marked as last")
    if len(transforms) != n_transforms:
        raise syntax_error(f"proposal announces {n_transforms} transforms, has {len(transforms)}")
    return Proposal(num, proto, spi, transforms), last, stop


def pull_sa(body: bytes) -> SaPayload:
    """Decode the body of an SA payload (generic header excluded)."""
    proposals: list[Proposal] = []
    pos, end = 0, len(body)
    last = _MORE_PROPOSALS
    while pos < end:
        if last == _LAST:
            raise syntax_error("data after the last proposal")
        proposal, last, pos = _pull_proposal(body, pos, end)
        proposals.append(proposal)
    if not proposals:
        raise syntax_error("SA payload without proposals")
    if last != _LAST:
        raise syntax_error("last proposal not marked as last")
    return SaPayload(proposals)


def _push_transform(t: Transform, last: bool) -> bytes:
    attrs = bytearray()
    if t.key_length is not None:
        attrs += _ATTR.pack(_ATTR_TV | _KEY_LENGTH, t.key_length)
    for atype, tv, raw in t.other_attributes:
        if tv:
            attrs += _ATTR.pack(_ATTR_TV | atype, int.from_bytes(raw, "big"))
        else:
            attrs += _ATTR.pack(atype, len(raw)) + raw
    head = _TRANSFORM.pack(
        _LAST if last else _MORE_TRANSFORMS, 0, _TRANSFORM.size + len(attrs), t.type, 0, t.id
    )
    return head + bytes(attrs)


def push_sa(sa: SaPayload) -> bytes:
    """Encode the body of an SA payload."""
    out = bytearray()
    for i, p in enumerate(sa.proposals):
        transforms = b"".join(
            _push_transform(t, j == len(p.transforms) - 1) for j, t in enumerate(p.transforms)
        )
        length = _PROPOSAL.size + len(p.spi) + len(transforms)
        last = _LAST if i == len(sa.proposals) - 1 else _MORE_PROPOSALS
        out += _PROPOSAL.pack(last, 0, length, p.num, p.protocol_id, len(p.spi), len(p.transforms))
        out += p.spi + transforms
    return bytes(out)
