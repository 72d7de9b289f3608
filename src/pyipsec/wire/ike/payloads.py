"""IKEv2 payloads (RFC 7296 section 3) and the payload chain.

One frozen dataclass per payload; ``pull_<name>(body)`` / ``push_<name>(payload)`` code the
payload body (the part after the 4-byte generic header). :func:`pull_payload_chain` walks a
chain of generic headers; :func:`push_payload_chain` writes one. Every payload object has a
``payload_type`` (class attribute, or a property for IDi/IDr and TSi/TSr).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pyipsec.errors import ProtocolError
from pyipsec.wire.iana import IdType, NotifyType, PayloadType, ProtocolId
from pyipsec.wire.ike.header import (
    CRITICAL_BIT,
    GENERIC_HEADER,
    GENERIC_HEADER_SIZE,
    pull_generic_header,
    syntax_error,
)
from pyipsec.wire.ike.sa_payload import SaPayload, pull_sa, push_sa
from pyipsec.wire.ike.ts import TsPayload, pull_ts, push_ts


class UnsupportedCriticalPayload(ProtocolError):
    """An unknown payload had its critical bit set (RFC 7296 section 2.5).

    ``payload_type`` is the offending type: the one-byte data of the
    UNSUPPORTED_CRITICAL_PAYLOAD notify to send back.
    """

    def __init__(self, payload_type: int) -> None:
        super().__init__(
            f"unsupported critical payload type {payload_type}",
            notify=NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD,
        )
        self.payload_type = payload_type


# RFC 7296 section 3.4: Key Exchange payload.
# |   Diffie-Hellman Group Num    |           RESERVED            |
# ~                       Key Exchange Data                       ~
@dataclass(frozen=True, slots=True)
class KePayload:
    """Key Exchange payload: the group (KeId) and the public value / KEM data."""

    group: int
    data: bytes
    payload_type: ClassVar[int] = PayloadType.KE


# RFC 7296 section 3.5: Identification payloads IDi and IDr.
# |   ID Type     |                 RESERVED                      |
# ~                   Identification Data                         ~
@dataclass(frozen=True, slots=True)
class IdPayload:
    """IDi (``initiator=True``) or IDr: ID type (IdType) and identification data."""

    id_type: int
    data: bytes
    initiator: bool = True

    @property
    def payload_type(self) -> int:
        return PayloadType.IDi if self.initiator else PayloadType.IDr


# RFC 7296 section 3.6: Certificate payload. | Cert Encoding | Certificate Data ~
@dataclass(frozen=True, slots=True)
class CertPayload:
    """Certificate payload: encoding (CertEncoding) and data (DER for X509_SIG)."""

    encoding: int
    data: bytes
    payload_type: ClassVar[int] = PayloadType.CERT


# RFC 7296 section 3.7: Certificate Request payload. | Cert Encoding | Certification Authority ~
@dataclass(frozen=True, slots=True)
class CertReqPayload:
    """Certificate Request: encoding and CA data (for X509_SIG: SHA-1 hashes of CA keys)."""

    encoding: int
    data: bytes
    payload_type: ClassVar[int] = PayloadType.CERTREQ

    @property
    def ca_hashes(self) -> list[bytes]:
        """The 20-byte SHA-1 public key hashes (for X509_SIG); a short tail is dropped."""
        return [self.data[i : i + 20] for i in range(0, len(self.data) - 19, 20)]


# RFC 7296 section 3.8: Authentication payload.
# | Auth Method   |                RESERVED                       |
# ~                      Authentication Data                      ~
@dataclass(frozen=True, slots=True)
class AuthPayload:
    """Authentication payload: method (AuthMethod) and authentication data."""

    method: int
    data: bytes
    payload_type: ClassVar[int] = PayloadType.AUTH


# RFC 7296 section 3.9: Nonce payload (16 to 256 octets of nonce data).
@dataclass(frozen=True, slots=True)
class NoncePayload:
    """Nonce payload (Ni / Nr)."""

    data: bytes
    payload_type: ClassVar[int] = PayloadType.NONCE


# RFC 7296 section 3.10: Notify payload.
# |  Protocol ID  |   SPI Size    |      Notify Message Type      |
# ~                Security Parameter Index (SPI)                 ~
# ~                       Notification Data                       ~
@dataclass(frozen=True, slots=True)
class NotifyPayload:
    """Notify payload. ``protocol_id`` 0 and empty ``spi`` unless the notify names an SA."""

    protocol_id: int = 0
    spi: bytes = b""
    notify_type: int = 0
    data: bytes = b""
    payload_type: ClassVar[int] = PayloadType.NOTIFY

    @property
    def is_error(self) -> bool:
        """Types below 16384 are errors (RFC 7296 section 3.10.1)."""
        return self.notify_type < 16384


# RFC 7296 section 3.11: Delete payload.
# | Protocol ID   |   SPI Size    |          Num of SPIs          |
# ~               Security Parameter Index(es) (SPI)              ~
@dataclass(frozen=True, slots=True)
class DeletePayload:
    """Delete payload: IKE (spi_size 0, no SPIs) or ESP/AH (spi_size 4, inbound SPIs)."""

    protocol_id: int
    spi_size: int = 0
    spis: list[bytes] = field(default_factory=list)
    payload_type: ClassVar[int] = PayloadType.DELETE


# RFC 7296 section 3.12: Vendor ID payload.
@dataclass(frozen=True, slots=True)
class VendorIdPayload:
    """Vendor ID payload: opaque data."""

    data: bytes
    payload_type: ClassVar[int] = PayloadType.VENDOR_ID


@dataclass(frozen=True, slots=True)
class UnknownPayload:
    """A payload this codec does not decode (kept so it can be logged or re-sent)."""

    payload_type: int
    data: bytes
    critical: bool = False


# RFC 7296 section 3.14: Encrypted and Authenticated payload (SK).
# ~                 Initialization Vector                         ~
# ~                    Encrypted IKE Payloads                     ~
# |               |             Padding (0-255 octets)            |
# +-+-+-+-+-+-+-+-+                               +-+-+-+-+-+-+-+-+
# |                                               |  Pad Length   |
# ~                    Integrity Checksum Data                    ~
@dataclass(frozen=True, slots=True)
class EncryptedPayload:
    """An SK payload still closed: ``body`` is IV || ciphertext || ICV."""

    first_payload_type: int
    body: bytes
    payload_type: ClassVar[int] = PayloadType.SK


# RFC 7383 section 2.5: Encrypted Fragment payload (SKF).
# |        Fragment Number        |        Total Fragments        |
# ~                 IV, encrypted content, padding, ICV           ~
@dataclass(frozen=True, slots=True)
class EncryptedFragmentPayload:
    """An SKF payload still closed. ``first_payload_type`` is non-zero in fragment 1 only."""

    first_payload_type: int
    fragment_number: int
    total_fragments: int
    body: bytes
    payload_type: ClassVar[int] = PayloadType.SKF


# Plain ints for the hot paths (IntEnum attribute lookups cost more than the parsing).
_PT_NONE, _PT_SK, _PT_SKF = int(PayloadType.NONE), int(PayloadType.SK), int(PayloadType.SKF)
_PROTO_IKE, _PROTO_ESP, _PROTO_AH = int(ProtocolId.IKE), int(ProtocolId.ESP), int(ProtocolId.AH)
_HEAD4 = struct.Struct("!B3x")
_KE = struct.Struct("!H2x")
_NOTIFY = struct.Struct("!BBH")
_DELETE = struct.Struct("!BBH")
_SKF = struct.Struct("!HH")


def _need(body: bytes, n: int, what: str) -> None:
    if len(body) < n:
        raise syntax_error(f"{what} payload too short: {len(body)} < {n} bytes")


def pull_ke(body: bytes) -> KePayload:
    _need(body, _KE.size, "KE")
    (group,) = _KE.unpack_from(body, 0)
    return KePayload(group, bytes(body[_KE.size :]))


def push_ke(p: KePayload) -> bytes:
    return _KE.pack(p.group) + p.data


_ID_LENGTHS = {int(IdType.IPV4_ADDR): 4, int(IdType.IPV6_ADDR): 16}


def pull_id(body: bytes, initiator: bool) -> IdPayload:
    _need(body, _HEAD4.size, "ID")
    (id_type,) = _HEAD4.unpack_from(body, 0)
    data = bytes(body[_HEAD4.size :])
    want = _ID_LENGTHS.get(id_type)
    if want is not None and len(data) != want:
        raise syntax_error(f"ID type {id_type} needs {want} bytes of data, got {len(data)}")
    return IdPayload(id_type, data, initiator)


def push_id(p: IdPayload) -> bytes:
    """Body of IDi/IDr: also the RestOfInitIDPayload signed by AUTH (RFC 7296 2.15)."""
    return _HEAD4.pack(p.id_type) + p.data


def pull_cert(body: bytes) -> CertPayload:
    _need(body, 1, "CERT")
    return CertPayload(body[0], bytes(body[1:]))


def push_cert(p: CertPayload) -> bytes:
    return bytes((p.encoding,)) + p.data


def pull_certreq(body: bytes) -> CertReqPayload:
    _need(body, 1, "CERTREQ")
    return CertReqPayload(body[0], bytes(body[1:]))


def push_certreq(p: CertReqPayload) -> bytes:
    return bytes((p.encoding,)) + p.data


def pull_auth(body: bytes) -> AuthPayload:
    _need(body, _HEAD4.size, "AUTH")
    return AuthPayload(body[0], bytes(body[_HEAD4.size :]))


def push_auth(p: AuthPayload) -> bytes:
    return _HEAD4.pack(p.method) + p.data


def pull_nonce(body: bytes) -> NoncePayload:
    if not 16 <= len(body) <= 256:
        raise syntax_error(f"nonce of {len(body)} bytes, RFC 7296 3.9 requires 16 to 256")
    return NoncePayload(bytes(body))


def push_nonce(p: NoncePayload) -> bytes:
    return p.data


def pull_notify(body: bytes) -> NotifyPayload:
    _need(body, _NOTIFY.size, "Notify")
    proto, spi_size, ntype = _NOTIFY.unpack_from(body, 0)
    _need(body, _NOTIFY.size + spi_size, "Notify")
    spi = bytes(body[_NOTIFY.size : _NOTIFY.size + spi_size])
    return NotifyPayload(proto, spi, ntype, bytes(body[_NOTIFY.size + spi_size :]))


def push_notify(p: NotifyPayload) -> bytes:
    return _NOTIFY.pack(p.protocol_id, len(p.spi), p.notify_type) + p.spi + p.data


def pull_delete(body: bytes) -> DeletePayload:
    _need(body, _DELETE.size, "Delete")
    proto, spi_size, count = _DELETE.unpack_from(body, 0)
    if proto == _PROTO_IKE and (spi_size != 0 or count != 0):
        raise syntax_error("Delete of an IKE SA must carry no SPIs")
    if (proto == _PROTO_ESP or proto == _PROTO_AH) and spi_size != 4:
        raise syntax_error(f"Delete of ESP/AH with SPI size {spi_size}, expected 4")
    if len(body) != _DELETE.size + spi_size * count:
        raise syntax_error(f"Delete announces {count} SPIs of {spi_size} bytes, body mismatch")
    if spi_size == 0 and count != 0:
        raise syntax_error("Delete with SPI size 0 but SPIs announced")
    spis = [
        bytes(body[_DELETE.size + i * spi_size : _DELETE.size + (i + 1) * spi_size])
        for i in range(count)
    ]
    return DeletePayload(proto, spi_size, spis)


def push_delete(p: DeletePayload) -> bytes:
    if any(len(s) != p.spi_size for s in p.spis):
        raise ValueError("Delete payload SPIs must all be spi_size bytes")
    return _DELETE.pack(p.protocol_id, p.spi_size, len(p.spis)) + b"".join(p.spis)


def pull_vendor_id(body: bytes) -> VendorIdPayload:
    return VendorIdPayload(bytes(body))


def push_vendor_id(p: VendorIdPayload) -> bytes:
    return p.data


def pull_skf_header(body: bytes) -> tuple[int, int]:
    """Return (fragment_number, total_fragments) of an SKF body, checked (RFC 7383 2.5)."""
    _need(body, _SKF.size, "SKF")
    number, total = _SKF.unpack_from(body, 0)
    if number == 0 or total == 0 or number > total:
        raise syntax_error(f"SKF fragment {number} of {total} is invalid")
    return number, total


_PULL: dict[int, Callable[[bytes], Any]] = {  # keys become plain ints below
    PayloadType.SA: pull_sa,
    PayloadType.KE: pull_ke,
    PayloadType.IDi: lambda b: pull_id(b, True),
    PayloadType.IDr: lambda b: pull_id(b, False),
    PayloadType.CERT: pull_cert,
    PayloadType.CERTREQ: pull_certreq,
    PayloadType.AUTH: pull_auth,
    PayloadType.NONCE: pull_nonce,
    PayloadType.NOTIFY: pull_notify,
    PayloadType.DELETE: pull_delete,
    PayloadType.VENDOR_ID: pull_vendor_id,
    PayloadType.TSi: lambda b: pull_ts(b, True),
    PayloadType.TSr: lambda b: pull_ts(b, False),
}

_PULL = {int(k): v for k, v in _PULL.items()}

_PUSH: dict[type, Callable[[Any], bytes]] = {
    SaPayload: push_sa,
    KePayload: push_ke,
    IdPayload: push_id,
    CertPayload: push_cert,
    CertReqPayload: push_certreq,
    AuthPayload: push_auth,
    NoncePayload: push_nonce,
    NotifyPayload: push_notify,
    DeletePayload: push_delete,
    VendorIdPayload: push_vendor_id,
    TsPayload: push_ts,
    UnknownPayload: lambda p: p.data,
    EncryptedPayload: lambda p: p.body,
    EncryptedFragmentPayload: lambda p: _SKF.pack(p.fragment_number, p.total_fragments) + p.body,
}

# Types defined by RFC 7296 (33..48) and SKF: the critical bit is ignored for them.
_RFC_DEFINED = frozenset(range(int(PayloadType.SA), int(PayloadType.EAP) + 1)) | {_PT_SKF}


def pull_payload_body(payload_type: int, body: bytes, critical: bool = False) -> Any:
    """Decode one payload body of the given type.

    Unknown types give an UnknownPayload, or raise UnsupportedCriticalPayload when the
    critical bit is set. SK and SKF are handled by :func:`pull_payload_chain`.
    """
    pull = _PULL.get(payload_type)
    if pull is not None:
        return pull(body)
    if critical and payload_type not in _RFC_DEFINED:
        raise UnsupportedCriticalPayload(payload_type)
    return UnknownPayload(payload_type, bytes(body), critical)


def push_payload_body(payload: Any) -> bytes:
    """Encode the body of one payload (no generic header)."""
    push = _PUSH.get(type(payload))
    if push is None:
        raise TypeError(f"cannot encode {type(payload).__name__} as a payload body")
    return push(payload)


def pull_payload_chain(
    data: bytes, first_type: int, offset: int, end: int, *, allow_encrypted: bool
) -> tuple[list[Any], int]:
    """Decode the payload chain in ``data[offset:end]`` starting with ``first_type``.

    Returns (payloads, offset of the SK/SKF generic header or ``end``). With
    ``allow_encrypted`` an SK or SKF payload must be the last one (RFC 7296 3.14, RFC 7383
    2.5) and is returned as EncryptedPayload / EncryptedFragmentPayload; otherwise (inside
    a decrypted SK) it is a syntax error. The chain must fill ``data[offset:end]`` exactly.
    """
    payloads: list[Any] = []
    nxt = first_type
    pos = offset
    sk_offset = end
    unpack = GENERIC_HEADER.unpack_from
    while nxt != _PT_NONE:
        ptype = nxt
        if end - pos < GENERIC_HEADER_SIZE:
            pull_generic_header(data, pos, end)  # raises the syntax error
        nxt, flags, length = unpack(data, pos)
        if length < GENERIC_HEADER_SIZE or pos + length > end:
            pull_generic_header(data, pos, end)  # raises the syntax error
        body = data[pos + GENERIC_HEADER_SIZE : pos + length]
        if ptype == _PT_SK or ptype == _PT_SKF:
            if not allow_encrypted:
                raise syntax_error(f"payload type {ptype} nested inside an encrypted payload")
            if pos + length != end:
                raise syntax_error(f"payload type {ptype} is not the last payload")
            sk_offset = pos
            if ptype == _PT_SK:
                payloads.append(EncryptedPayload(nxt, bytes(body)))
            else:
                number, total = pull_skf_header(body)
                first = nxt if number == 1 else 0
                payloads.append(EncryptedFragmentPayload(first, number, total, bytes(body[4:])))
            return payloads, sk_offset
        pull = _PULL.get(ptype)
        if pull is not None:
            payloads.append(pull(body))
        else:
            payloads.append(pull_payload_body(ptype, body, bool(flags & CRITICAL_BIT)))
        pos += length
    if pos != end:
        raise syntax_error(f"{end - pos} bytes after the last payload")
    return payloads, sk_offset


def push_payload_chain(payloads: Sequence[Any], last_next: int = PayloadType.NONE) -> bytes:
    """Encode payloads with their generic headers; ``last_next`` is the last Next Payload."""
    out = bytearray()
    count = len(payloads)
    for i, p in enumerate(payloads):
        kind = type(p)
        push = _PUSH.get(kind)
        if push is None:
            raise TypeError(f"cannot encode {kind.__name__} as a payload body")
        body = push(p)
        critical = False
        if i + 1 < count:
            nxt = payloads[i + 1].payload_type
        else:
            nxt = last_next
        if kind is EncryptedPayload or kind is EncryptedFragmentPayload:
            # A still-closed SK/SKF (e.g. re-encoding a message read by pull_message):
            # its Next Payload names the first inner payload, and it must come last.
            if i + 1 != count:
                raise ValueError("an SK/SKF payload must be the last payload")
            nxt = p.first_payload_type
        elif kind is UnknownPayload:
            critical = p.critical
        length = len(body) + GENERIC_HEADER_SIZE
        if length > 0xFFFF:
            raise ValueError(f"payload too long: {length} bytes")
        out += GENERIC_HEADER.pack(nxt, CRITICAL_BIT if critical else 0, length)
        out += body
    return bytes(out)
