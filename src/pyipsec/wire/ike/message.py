"""Whole IKEv2 messages: plaintext, SK-protected (RFC 7296 3.14) and SKF-fragmented (RFC 7383).

The cipher is duck-typed (pyipsec.crypto implements it)::

    cipher.iv_size, cipher.icv_size, cipher.block_size
    cipher.seal(aad, plaintext) -> IV || ciphertext || ICV
    cipher.open(aad, body) -> padded plaintext, or raises pyipsec.errors.IntegrityError

``aad`` is every byte of the message before the SK payload's body: the IKE header, any
unencrypted payloads and the SK generic header (plus fragment number/total for SKF). That is
both the AEAD AAD of RFC 5282 section 5.1 and the leading part of the ICV input of RFC 7296
section 3.14, so one interface serves both kinds of cipher.

Errors from :func:`decrypt_message` before the ICV is verified are PacketError subclasses
(MalformedPacket, IntegrityError): the caller drops the datagram silently, as RFC 7296
section 2.21.2 asks for unauthenticated messages. Problems found after the ICV verified are
ProtocolError (INVALID_SYNTAX, UNSUPPORTED_CRITICAL_PAYLOAD), which deserve a reply.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from pyipsec.errors import ConfigError, MalformedPacket, ProtocolError
from pyipsec.wire.iana import NotifyType, PayloadType
from pyipsec.wire.ike.header import (
    FLAG_INITIATOR,
    FLAG_RESPONSE,
    FLAG_VERSION,
    GENERIC_HEADER_SIZE,
    IKE_HEADER_SIZE,
    IkeHeader,
    pull_header,
    push_generic_header,
    push_header,
    syntax_error,
)
from pyipsec.wire.ike.payloads import (
    EncryptedFragmentPayload,
    EncryptedPayload,
    NotifyPayload,
    pull_payload_chain,
    push_payload_chain,
)

SKF_HEADER_SIZE = GENERIC_HEADER_SIZE + 4
_SKF_NUMBERS = struct.Struct("!HH")
P = TypeVar("P")


class IkeCipher(Protocol):
    """What the codec needs from an IKE SA cipher (pyipsec.crypto provides it)."""

    iv_size: int
    icv_size: int
    block_size: int

    def seal(self, aad: bytes, plaintext: bytes) -> bytes: ...

    def open(self, aad: bytes, body: bytes) -> bytes: ...


@dataclass(frozen=True, slots=True)
class Message:
    """An IKEv2 message: the header fields (without Next Payload and Length) and payloads.

    ``payloads`` are payload objects; a message read by :func:`pull_message` keeps an SK
    payload as a trailing EncryptedPayload (SKF: EncryptedFragmentPayload).
    """

    spi_i: bytes
    spi_r: bytes
    exchange_type: int
    flags: int = 0
    message_id: int = 0
    payloads: list[Any] = field(default_factory=list)
    major: int = 2
    minor: int = 0

    @property
    def initiator(self) -> bool:
        """I flag: sent by the original initiator of the IKE SA."""
        return bool(self.flags & FLAG_INITIATOR)

    @property
    def response(self) -> bool:
        """R flag: this is a response."""
        return bool(self.flags & FLAG_RESPONSE)

    @property
    def version(self) -> bool:
        """V flag."""
        return bool(self.flags & FLAG_VERSION)

    def header(self, next_payload: int, length: int) -> IkeHeader:
        """The IKE header of this message for a given first payload and total length."""
        return IkeHeader(
            self.spi_i,
            self.spi_r,
            next_payload,
            self.major,
            self.minor,
            self.exchange_type,
            self.flags,
            self.message_id,
            length,
        )

    def find(self, cls: type[P]) -> P | None:
        """The first payload of class ``cls``, or None."""
        for p in self.payloads:
            if isinstance(p, cls):
                return p
        return None

    def find_all(self, cls: type[P]) -> list[P]:
        """All payloads of class ``cls``, in order."""
        return [p for p in self.payloads if isinstance(p, cls)]

    def notifies(self, notify_type: int | None = None) -> Iterator[NotifyPayload]:
        """Notify payloads, optionally only those of ``notify_type``."""
        for p in self.payloads:
            if isinstance(p, NotifyPayload) and (
                notify_type is None or p.notify_type == notify_type
            ):
                yield p


def message_from_header(header: IkeHeader, payloads: list[Any]) -> Message:
    """A Message with the header fields of ``header`` and the given payloads."""
    return Message(
        header.spi_i,
        header.spi_r,
        header.exchange_type,
        header.flags,
        header.message_id,
        payloads,
        header.major,
        header.minor,
    )


def read_outer(data: bytes) -> tuple[IkeHeader, list[Any], int]:
    """Header and outer payload chain of a whole datagram; returns the SK/SKF offset too."""
    header = pull_header(data)
    if header.length != len(data):
        raise MalformedPacket(f"IKE header length {header.length} != datagram {len(data)}")
    if header.major != 2:
        raise ProtocolError(
            f"IKE major version {header.major} not supported",
            notify=NotifyType.INVALID_MAJOR_VERSION,
        )
    payloads, sk_offset = pull_payload_chain(
        data, header.next_payload, IKE_HEADER_SIZE, len(data), allow_encrypted=True
    )
    return header, payloads, sk_offset


def pull_message(data: bytes) -> Message:
    """Decode a whole datagram without decrypting it.

    MalformedPacket if the header cannot be read or its Length differs from ``len(data)``;
    ProtocolError(INVALID_MAJOR_VERSION) for a major version other than 2; ProtocolError
    (INVALID_SYNTAX / UNSUPPORTED_CRITICAL_PAYLOAD) for a malformed payload chain.
    """
    header, payloads, _ = read_outer(data)
    return message_from_header(header, payloads)


def push_message(msg: Message) -> bytes:
    """Encode an unencrypted message (e.g. IKE_SA_INIT)."""
    chain = push_payload_chain(msg.payloads)
    first = msg.payloads[0].payload_type if msg.payloads else PayloadType.NONE
    return push_header(msg.header(first, IKE_HEADER_SIZE + len(chain))) + chain


def _pad(content: bytes, block_size: int) -> bytes:
    """Append Padding and Pad Length so the total is a multiple of ``block_size`` (3.14)."""
    pad_len = -(len(content) + 1) % max(block_size, 1)
    return content + bytes(pad_len) + bytes((pad_len,))


def _unpad(plaintext: bytes) -> bytes:
    if not plaintext:
        raise syntax_error("empty plaintext in encrypted payload")
    pad_len = plaintext[-1]
    if pad_len + 1 > len(plaintext):
        raise syntax_error(f"pad length {pad_len} exceeds the {len(plaintext)}-byte plaintext")
    return plaintext[: len(plaintext) - pad_len - 1]


def open_body(cipher: IkeCipher, aad: bytes, body: bytes) -> bytes:
    """Verify and decrypt an SK/SKF body; return the content without padding.

    MalformedPacket if the body cannot hold IV and ICV; IntegrityError from the cipher;
    ProtocolError(INVALID_SYNTAX) for a bad pad length after the ICV verified.
    """
    if len(body) < cipher.iv_size + cipher.icv_size + 1:
        raise MalformedPacket(f"encrypted payload of {len(body)} bytes too short")
    return _unpad(cipher.open(aad, body))


def decrypt_message(data: bytes, cipher: IkeCipher) -> Message:
    """Decode a datagram carrying SK, verify and decrypt it; payloads come out in order
    (any unencrypted payloads before SK first, then the decrypted ones).

    Datagrams with SKF belong to :class:`pyipsec.wire.ike.Reassembler`.
    """
    try:
        header, outer, sk_offset = read_outer(data)
    except ProtocolError as exc:  # not authenticated: drop silently
        raise MalformedPacket(f"unauthenticated message malformed: {exc}") from exc
    if not outer or not isinstance(outer[-1], EncryptedPayload):
        if outer and isinstance(outer[-1], EncryptedFragmentPayload):
            raise MalformedPacket("SKF fragment given to decrypt_message; use a Reassembler")
        raise MalformedPacket("message has no SK payload")
    sk = outer.pop()
    aad_end = sk_offset + GENERIC_HEADER_SIZE
    content = open_body(cipher, bytes(data[:aad_end]), bytes(data[aad_end:]))
    inner, _ = pull_payload_chain(
        content, sk.first_payload_type, 0, len(content), allow_encrypted=False
    )
    return message_from_header(header, outer + inner)


def _sealed(cipher: IkeCipher, aad: bytes, plaintext: bytes) -> bytes:
    body = cipher.seal(aad, plaintext)
    if len(body) != cipher.iv_size + len(plaintext) + cipher.icv_size:
        raise RuntimeError("cipher.seal returned a body of unexpected length")
    return body


def encrypt_message(msg: Message, cipher: IkeCipher) -> bytes:
    """Encode ``msg`` with all its payloads inside one SK payload (RFC 7296 section 3.14)."""
    inner = push_payload_chain(msg.payloads)
    first = msg.payloads[0].payload_type if msg.payloads else PayloadType.NONE
    plaintext = _pad(inner, cipher.block_size)
    body_len = cipher.iv_size + len(plaintext) + cipher.icv_size
    sk_header = push_generic_header(first, body_len)
    length = IKE_HEADER_SIZE + GENERIC_HEADER_SIZE + body_len
    aad = push_header(msg.header(PayloadType.SK, length)) + sk_header
    return aad + _sealed(cipher, aad, plaintext)


def fragment_message(msg: Message, cipher: IkeCipher, max_size: int) -> list[bytes]:
    """Encode ``msg`` as SKF fragments of at most ``max_size`` bytes each (RFC 7383 2.5).

    ``max_size`` counts the IKE message only (IKE header to ICV): the caller subtracts IP
    and UDP headers and the 4-byte non-ESP marker on port 4500. Fragment 1 carries the type
    of the first inner payload; all fragments carry the same Message ID and flags.
    """
    inner = push_payload_chain(msg.payloads)
    first = msg.payloads[0].payload_type if msg.payloads else PayloadType.NONE
    bs = max(cipher.block_size, 1)
    room = max_size - IKE_HEADER_SIZE - SKF_HEADER_SIZE - cipher.iv_size - cipher.icv_size
    chunk = (room // bs) * bs - 1
    if chunk < 1:
        raise ConfigError(f"fragment size {max_size} leaves no room for data", key="fragment_size")
    chunks = [inner[i : i + chunk] for i in range(0, len(inner), chunk)] or [b""]
    total = len(chunks)
    if total > 0xFFFF:
        raise ConfigError(f"message needs {total} fragments, more than 65535", key="fragment_size")
    out: list[bytes] = []
    for number, content in enumerate(chunks, start=1):
        plaintext = _pad(content, bs)
        body_len = cipher.iv_size + len(plaintext) + cipher.icv_size
        skf_header = push_generic_header(
            first if number == 1 else PayloadType.NONE, 4 + body_len
        ) + _SKF_NUMBERS.pack(number, total)
        length = IKE_HEADER_SIZE + SKF_HEADER_SIZE + body_len
        aad = push_header(msg.header(PayloadType.SKF, length)) + skf_header
        out.append(aad + _sealed(cipher, aad, plaintext))
    return out
