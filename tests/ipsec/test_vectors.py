"""Published ESP/HMAC test vectors (tests/vectors/esp/, sources in its README.md).

Each vector goes through the real SecurityAssociation code path: ``decapsulate_esp`` on
the published ESP packet, and where the vector's IV can be reproduced (RFC 3602, whose
CBC IV comes from our chained random block), ``encapsulate_esp`` must give the published
bytes exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from pyipsec.crypto.esp_algorithms import Hmac
from pyipsec.errors import IntegrityError, ReplayedPacket
from pyipsec.ipsec import SecurityAssociation
from pyipsec.wire.ip import IPV4_HEADER, ipv4_header_checksum

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "esp"
SRC, DST = "192.0.2.1", "192.0.2.2"


def load(name: str):
    return json.loads((VECTORS / name).read_text())


def prime_window(sa: SecurityAssociation, seq: int) -> None:
    """Put the receiver's window just below ``seq`` (as if earlier packets arrived), so
    that ESN reconstruction lands in the vector's 2^32 subspace."""
    if seq > 1:
        sa._replay.update(seq - 1)


GCM = load("draft_mcgrew_gcm_test_01.json")["cases"]


@pytest.mark.parametrize("case", GCM, ids=[c["name"] for c in GCM])
def test_gcm_esp_packets_draft_mcgrew(case: dict) -> None:
    key = bytes.fromhex(case["key"])
    esn = len(case["seq"]) == 16
    seq = int(case["seq"], 16)
    sa = SecurityAssociation(
        int(case["spi"], 16) or 0x100,
        algorithm=f"aes{len(key) * 8}gcm16",
        key=key + bytes.fromhex(case["salt"]),
        esn=esn,
    )
    sa.spi = int(case["spi"], 16)  # the vectors use SPIs below 256, reserved on the wire
    sa._proc.spi = sa.spi
    prime_window(sa, seq)
    packet = bytes.fromhex(case["packet"])
    assert packet[8:16].hex() == case["iv"]
    pt = bytes.fromhex(case["plaintext"])
    pad, nh = pt[-2], pt[-1]
    payload = pt[: len(pt) - 2 - pad]
    # over raw IP (protocol 50): on UDP 4500 gcm-4's zero SPI would be the non-ESP marker
    inner = sa.decapsulate(ipv4(packet, 50))
    assert inner[20:] == payload and inner[9] == nh
    assert sa.statistics().replay_top == seq
    # the same packet again is a replay; one flipped ICV bit fails
    with pytest.raises(ReplayedPacket):
        sa.decapsulate(ipv4(packet, 50))
    sa2 = SecurityAssociation(
        0x100,
        algorithm=f"aes{len(key) * 8}gcm16",
        key=key + bytes.fromhex(case["salt"]),
        esn=esn,
    )
    sa2.spi = sa2._proc.spi = sa.spi
    prime_window(sa2, seq)
    bad = bytearray(packet)
    bad[-1] ^= 1
    with pytest.raises(IntegrityError):
        sa2.decapsulate(ipv4(bytes(bad), 50))


def test_chacha20poly1305_esp_rfc7634_appendix_a() -> None:
    v = load("rfc7634_appendix_a.json")
    sa = SecurityAssociation(
        int(v["spi"], 16),
        mode="tunnel",
        algorithm="chacha20poly1305",
        key=bytes.fromhex(v["key"] + v["salt"]),
        tunnel_src="203.0.113.153",
        tunnel_dst="203.0.113.5",
    )
    prime_window(sa, int(v["seq"], 16))
    packet = bytes.fromhex(v["spi"] + v["seq"] + v["iv"] + v["ciphertext_icv"])
    pt = bytes.fromhex(v["plaintext"])
    assert sa.decapsulate_esp(packet, "203.0.113.153", "203.0.113.5") == pt[:84]
    assert pt[-1] == 4  # next header: IPv4 (tunnel mode)


AUTH = load("rfc4868_auth.json")["cases"]


@pytest.mark.parametrize("case", AUTH, ids=[c["name"] for c in AUTH])
def test_hmac_sha2_truncation_rfc4868(case: dict) -> None:
    mac = Hmac(case["hash"], bytes.fromhex(case["key"]))
    data = bytes.fromhex(case["data"])
    icv = bytes.fromhex(case["icv"])
    assert mac.compute(data) == icv
    assert mac.compute(data[:3], data[3:]) == icv  # split input, same MAC
    mac.verify(icv, data)
    with pytest.raises(IntegrityError):
        mac.verify(icv[:-1] + bytes([icv[-1] ^ 1]), data)


CBC = load("rfc3602_cbc.json")["cases"]
INTEG_KEY = bytes(range(32))


def hmac256_128(data: bytes) -> bytes:
    h = hmac.HMAC(INTEG_KEY, hashes.SHA256())
    h.update(data)
    return h.finalize()[:16]


def cbc_sa(case: dict) -> SecurityAssociation:
    tunnel = case["next_header"] == 4
    return SecurityAssociation(
        int(case["spi"], 16),
        mode="tunnel" if tunnel else "transport",
        algorithm="aes128-sha256",
        key=bytes.fromhex(case["key"]) + INTEG_KEY,
        tunnel_src=SRC if tunnel else None,
        tunnel_dst=DST if tunnel else None,
    )


def ipv4(payload: bytes, proto: int) -> bytes:
    h = bytearray(
        IPV4_HEADER.pack(
            0x45,
            0,
            20 + len(payload),
            0,
            0,
            64,
            proto,
            0,
            bytes([192, 0, 2, 1]),
            bytes([192, 0, 2, 2]),
        )
    )
    h[10:12] = ipv4_header_checksum(h).to_bytes(2, "big")
    return bytes(h) + payload


@pytest.mark.parametrize("case", CBC, ids=[c["name"] for c in CBC])
def test_aes_cbc_esp_rfc3602_decrypt(case: dict) -> None:
    sa = cbc_sa(case)
    prime_window(sa, case["seq"])
    packet = bytes.fromhex(case["packet"])
    payload = bytes.fromhex(case["payload"])
    out = sa.decapsulate_esp(packet + hmac256_128(packet), SRC, DST)
    if case["next_header"] == 4:
        assert out == payload
    else:
        assert out[20:] == payload and out[9] == case["next_header"]


@pytest.mark.parametrize("case", CBC, ids=[c["name"] for c in CBC])
def test_aes_cbc_esp_rfc3602_encrypt(case: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """Our CBC context feeds one random block R before the payload and sends E(R) as the
    IV (fresh context: chaining value zero). Choosing R = D(IV) must reproduce the RFC
    packet byte for byte, proving the chaining, padding and header layout."""
    packet = bytes.fromhex(case["packet"])
    iv = packet[8:24]
    dec = Cipher(algorithms.AES(bytes.fromhex(case["key"])), modes.ECB()).decryptor()
    r = dec.update(iv) + dec.finalize()
    monkeypatch.setattr("pyipsec.crypto.esp_algorithms.os.urandom", lambda n: r)
    sa = cbc_sa(case)
    sa._seq = case["seq"] - 1
    payload = bytes.fromhex(case["payload"])
    inner = payload if case["next_header"] == 4 else ipv4(payload, case["next_header"])
    out = sa.encapsulate_esp(inner)
    assert out[:-16] == packet
    assert out[-16:] == hmac256_128(packet)
