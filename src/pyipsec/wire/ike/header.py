"""IKEv2 header and generic payload header codec (RFC 7296 sections 3.1 and 3.2).

Error policy of the whole ``pyipsec.wire.ike`` package:

* :class:`pyipsec.errors.MalformedPacket` when the fixed 28-byte IKE header cannot be read at
  all: fewer than 28 bytes, or a Length field that disagrees with the datagram. Such a
  datagram cannot be answered (RFC 7296 section 2.21.1: no reply to what cannot be parsed).
* :class:`pyipsec.errors.ProtocolError` with ``notify=INVALID_SYNTAX`` for every other
  malformation (payload lengths, fixed parts, SPI sizes, attributes, ...), with
  ``notify=UNSUPPORTED_CRITICAL_PAYLOAD`` for an unknown critical payload
  (:class:`UnsupportedCriticalPayload`, carrying the type) and with
  ``notify=INVALID_MAJOR_VERSION`` for a major version other than 2.

Nothing here raises IndexError, struct.error or ValueError on bad input.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from pyipsec.errors import MalformedPacket, ProtocolError
from pyipsec.wire.iana import NotifyType

IKE_HEADER_SIZE = 28
GENERIC_HEADER_SIZE = 4

FLAG_INITIATOR = 0x08
FLAG_VERSION = 0x10
FLAG_RESPONSE = 0x20
CRITICAL_BIT = 0x80

_HEADER = struct.Struct("!8s8sBBBBII")
GENERIC_HEADER = struct.Struct("!BBH")  # RFC 7296 3.2: Next Payload, C|RESERVED, Length


def syntax_error(message: str) -> ProtocolError:
    """A ProtocolError asking the peer for INVALID_SYNTAX (RFC 7296 section 3.10.1)."""
    return ProtocolError(message, notify=NotifyType.INVALID_SYNTAX)


# RFC 7296 section 3.1: the IKE header.
#                      1                   2                   3
#  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
# +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
# |                       IKE SA Initiator's SPI                  |
# |                       IKE SA Responder's SPI                  |
# |  Next Payload | MjVer | MnVer | Exchange Type |     Flags     |
# |                          Message ID                           |
# |                            Length                             |
# +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
@dataclass(frozen=True, slots=True)
class IkeHeader:
    """The fixed IKE header. ``length`` is the length of the whole message, header included."""

    spi_i: bytes
    spi_r: bytes
    next_payload: int
    major: int = 2
    minor: int = 0
    exchange_type: int = 0
    flags: int = 0
    message_id: int = 0
    length: int = IKE_HEADER_SIZE

    @property
    def initiator(self) -> bool:
        """I(nitiator) flag: set by the original initiator of the IKE SA."""
        return bool(self.flags & FLAG_INITIATOR)

    @property
    def response(self) -> bool:
        """R(esponse) flag: the message is a response to a request with the same ID."""
        return bool(self.flags & FLAG_RESPONSE)

    @property
    def version(self) -> bool:
        """V(ersion) flag: the sender could speak a higher major version."""
        return bool(self.flags & FLAG_VERSION)


def pull_header(data: bytes) -> IkeHeader:
    """Read the IKE header at the start of ``data`` (a whole datagram).

    Raises MalformedPacket if fewer than 28 bytes are given or the Length field is below 28
    or larger than ``data``. The major version is not checked here (see pull_message).
    """
    if len(data) < IKE_HEADER_SIZE:
        raise MalformedPacket(f"IKE message too short: {len(data)} bytes < {IKE_HEADER_SIZE}")
    spi_i, spi_r, nxt, ver, xchg, flags, mid, length = _HEADER.unpack_from(data, 0)
    if length < IKE_HEADER_SIZE or length > len(data):
        raise MalformedPacket(f"IKE header length {length} invalid for a {len(data)}-byte datagram")
    return IkeHeader(spi_i, spi_r, nxt, ver >> 4, ver & 0x0F, xchg, flags, mid, length)


def push_header(header: IkeHeader) -> bytes:
    """Serialize an IKE header (28 bytes)."""
    if len(header.spi_i) != 8 or len(header.spi_r) != 8:
        raise ValueError("IKE SPIs must be 8 bytes each")
    return _HEADER.pack(
        header.spi_i,
        header.spi_r,
        header.next_payload,
        ((header.major & 0x0F) << 4) | (header.minor & 0x0F),
        header.exchange_type,
        header.flags,
        header.message_id,
        header.length,
    )


# RFC 7296 section 3.2: the generic payload header.
# +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
# | Next Payload  |C|  RESERVED   |         Payload Length        |
# +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
def pull_generic_header(data: bytes, offset: int, end: int) -> tuple[int, bool, int]:
    """Read a generic payload header at ``offset``; return (next_payload, critical, length).

    ``length`` includes the 4-byte header and is checked against ``end``.
    """
    if end - offset < GENERIC_HEADER_SIZE:
        raise syntax_error(f"truncated payload header at offset {offset}")
    nxt, flags, length = GENERIC_HEADER.unpack_from(data, offset)
    if length < GENERIC_HEADER_SIZE or offset + length > end:
        raise syntax_error(
            f"payload length {length} at offset {offset} exceeds the {end - offset} bytes left"
        )
    return nxt, bool(flags & CRITICAL_BIT), length


def push_generic_header(next_payload: int, body_length: int, critical: bool = False) -> bytes:
    """Serialize a generic payload header for a body of ``body_length`` bytes."""
    length = body_length + GENERIC_HEADER_SIZE
    if length > 0xFFFF:
        raise ValueError(f"payload too long: {length} bytes")
    return GENERIC_HEADER.pack(next_payload, CRITICAL_BIT if critical else 0, length)
