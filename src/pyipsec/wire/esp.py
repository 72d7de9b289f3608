"""ESP packet codec (RFC 4303) and its UDP encapsulation (RFC 3948).

Only framing lives here: the header, the trailer (padding, pad length, next header) and
the UDP header of NAT traversal. Encryption and the ICV are in :mod:`pyipsec.ipsec.esp`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from pyipsec.errors import DecryptionError, MalformedPacket

# RFC 4303 section 2: Security Parameters Index (32 bits), Sequence Number (32 bits);
# the payload (IV, data, padding, pad length, next header) and the ICV follow.
ESP_HEADER = struct.Struct("!II")
ESP_HEADER_LEN = 8

# RFC 768: source port, destination port, length, checksum.
UDP_HEADER = struct.Struct("!HHHH")
NATT_PORT = 4500
# RFC 3948 section 2.2: a zero SPI field marks an IKE message on port 4500.
NON_ESP_MARKER = b"\x00\x00\x00\x00"
# RFC 3948 section 2.3: the NAT-keepalive payload is a single 0xFF octet.
NAT_KEEPALIVE = b"\xff"

# RFC 4303 section 2.4: the default padding is 1, 2, 3, ... (up to 255 bytes).
_PAD = bytes(range(1, 256))
_PAD_TRAILERS = tuple(bytes(range(1, n + 1)) for n in range(256))


@dataclass(frozen=True, slots=True)
class EspHeader:
    """The cleartext ESP header (RFC 4303 section 2)."""

    spi: int
    seq: int


def pull_esp_header(buf: bytes, offset: int = 0) -> EspHeader:
    """Parse the 8-byte ESP header at ``offset``."""
    if len(buf) < offset + ESP_HEADER_LEN:
        raise MalformedPacket("truncated ESP header")
    spi, seq = ESP_HEADER.unpack_from(buf, offset)
    return EspHeader(spi, seq)


def push_esp_header(h: EspHeader) -> bytes:
    return ESP_HEADER.pack(h.spi, h.seq & 0xFFFFFFFF)


def pad_length(data_len: int, align: int) -> int:
    """Padding bytes needed so that ``data_len + pad + 2`` is a multiple of ``align``.

    ``align`` is the cipher block size rounded up to 4 (RFC 4303 section 2.4: the
    ciphertext ends on a 4-byte boundary).
    """
    return -(data_len + 2) % align


def push_trailer(data_len: int, align: int, next_header: int) -> bytes:
    """ESP trailer for a payload of ``data_len`` bytes: padding, pad length, next header.

    Traffic flow confidentiality padding (RFC 4303 section 2.7) is not put here: it is
    appended to the inner packet in tunnel mode, see :mod:`pyipsec.ipsec.esp`.
    """
    pad = -(data_len + 2) % align
    return _PAD_TRAILERS[pad] + bytes((pad, next_header))


def pull_trailer(plaintext: bytes | bytearray | memoryview) -> tuple[int, int]:
    """(payload length, next header) of decrypted ESP data; checks the padding.

    RFC 4303 section 2.4 says a receiver should check the default padding; a mismatch
    means the data did not decrypt to what the sender wrote.
    """
    n = len(plaintext)
    if n < 2:
        raise DecryptionError("ESP payload shorter than its trailer")
    pad = plaintext[n - 2]
    end = n - 2 - pad
    if end < 0:
        raise DecryptionError("ESP pad length longer than the payload")
    if pad and plaintext[end : n - 2] != _PAD[:pad]:
        raise DecryptionError("ESP padding is not the RFC 4303 default")
    return end, plaintext[n - 1]


def push_udp_header(sport: int, dport: int, payload_len: int, checksum: int = 0) -> bytes:
    """The UDP header of ESP-in-UDP (RFC 3948 section 2.1)."""
    return UDP_HEADER.pack(sport, dport, payload_len + 8, checksum)


def pull_udp_header(buf: bytes, offset: int = 0) -> tuple[int, int, int, int]:
    """(source port, destination port, length, checksum) of the UDP header at ``offset``."""
    if len(buf) < offset + 8:
        raise MalformedPacket("truncated UDP header")
    return UDP_HEADER.unpack_from(buf, offset)
