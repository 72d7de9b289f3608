"""UDP encapsulation of ESP for NAT traversal (RFC 3948).

On port 4500 three kinds of datagram arrive: ESP (first four bytes are a non-zero SPI),
IKE (first four bytes zero: the non-ESP marker, section 2.2) and NAT keepalives (one byte
0xFF, section 2.3). The ESP path raises :class:`NonEspPacket` for the second (the caller
hands the datagram to IKE) and :class:`NatKeepalive` for the third (dropped); both are
counted under their own counters and change no SA state.
"""

from __future__ import annotations

from pyipsec.errors import MalformedPacket, PacketError
from pyipsec.wire.esp import NAT_KEEPALIVE, NON_ESP_MARKER, UDP_HEADER
from pyipsec.wire.ip import PROTO_UDP, internet_checksum, pseudo_header_sum


class NatKeepalive(PacketError):
    """A NAT-keepalive datagram (RFC 3948 section 2.3): nothing to decapsulate."""

    counter = "nat_keepalive_packets"


class NonEspPacket(PacketError):
    """A datagram with the non-ESP marker (RFC 3948 section 2.2): an IKE message."""

    counter = "non_esp_packets"


def classify(payload: bytes | memoryview) -> str:
    """Classify a UDP payload received on port 4500: "esp", "ike" or "keepalive"."""
    if len(payload) == 1 and payload[0] == 0xFF:
        return "keepalive"
    if len(payload) >= 4 and payload[:4] == NON_ESP_MARKER:
        return "ike"
    if len(payload) < 8:
        raise MalformedPacket("UDP-encapsulated ESP shorter than the ESP header")
    return "esp"


def check_esp_payload(payload: bytes | memoryview) -> None:
    """Raise NatKeepalive / NonEspPacket / MalformedPacket unless ``payload`` is ESP."""
    if len(payload) == 1 and payload[0] == 0xFF:
        raise NatKeepalive("NAT keepalive")
    if len(payload) >= 4 and payload[:4] == NON_ESP_MARKER:
        raise NonEspPacket("non-ESP marker: IKE message on the NAT-T port")
    if len(payload) < 8:
        raise MalformedPacket("UDP-encapsulated ESP shorter than the ESP header")


def udp_header(
    sport: int, dport: int, payload: bytes, src: bytes | None = None, dst: bytes | None = None
) -> bytes:
    """The UDP header for ``payload`` (RFC 3948 section 2.1).

    Over IPv4 the checksum is zero (section 3.1.1 allows it); over IPv6 (``src``/``dst``
    given as 16-byte addresses) it is computed, since IPv6 forbids a zero UDP checksum
    (RFC 8200 section 8.1).
    """
    length = len(payload) + 8
    if src is None or len(src) == 4:
        return UDP_HEADER.pack(sport, dport, length, 0)
    head = UDP_HEADER.pack(sport, dport, length, 0)
    csum = internet_checksum(head + payload, pseudo_header_sum(src, dst, PROTO_UDP, length))
    return UDP_HEADER.pack(sport, dport, length, csum or 0xFFFF)


def keepalive() -> bytes:
    """The NAT-keepalive payload to send every ~20 s (RFC 3948 section 4)."""
    return NAT_KEEPALIVE
