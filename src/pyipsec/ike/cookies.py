"""Stateless cookies against IKE_SA_INIT floods (RFC 7296 section 2.6).

Once the number of half-open IKE SAs passes a threshold, the responder answers an
IKE_SA_INIT request without a valid COOKIE notify with only a COOKIE notify, keeping no state.
Cookie = <VersionIDofSecret> | Hash(Ni | IPi | SPIi | <secret>), here a 4-byte version and
SHA-256. The secret is regenerated every ``lifetime`` seconds; cookies of the previous
secret remain valid for one more period so a client in flight is not rejected.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes


@dataclass(frozen=True, slots=True)
class CookieStatistics:
    """Snapshot: cookies issued, accepted, rejected; current secret version."""

    issued: int
    accepted: int
    rejected: int
    version: int


class CookieJar:
    """Makes and checks cookies. ``randbytes(n)`` supplies secrets (default os.urandom)."""

    def __init__(self, lifetime: float, randbytes: Callable[[int], bytes] | None = None) -> None:
        self._lifetime = lifetime
        self._rand = randbytes or os.urandom
        self._version = 0
        self._secret = self._rand(32)
        self._old: tuple[int, bytes] | None = None
        self._since: float | None = None
        self.issued = self.accepted = self.rejected = 0

    def __repr__(self) -> str:
        return f"CookieJar(version={self._version})"

    def _rotate(self, now: float) -> None:
        if self._since is None:
            self._since = now
        elif now - self._since >= self._lifetime:
            self._old = (self._version, self._secret)
            self._version = (self._version + 1) & 0xFFFFFFFF
            self._secret = self._rand(32)
            self._since = now

    @staticmethod
    def _digest(secret: bytes, ni: bytes, ip: str, spi_i: bytes) -> bytes:
        h = hashes.Hash(hashes.SHA256())
        h.update(ni)
        h.update(ipaddress.ip_address(ip).packed)
        h.update(spi_i)
        h.update(secret)
        return h.finalize()

    def make(self, ni: bytes, ip: str, spi_i: bytes, now: float) -> bytes:
        """The cookie for this initiator (nonce, address, SPI)."""
        self._rotate(now)
        self.issued += 1
        return struct.pack("!I", self._version) + self._digest(self._secret, ni, ip, spi_i)

    def verify(self, cookie: bytes, ni: bytes, ip: str, spi_i: bytes, now: float) -> bool:
        """True if ``cookie`` was made by us (current or previous secret) for these values."""
        self._rotate(now)
        ok = False
        if len(cookie) == 36:
            (version,) = struct.unpack_from("!I", cookie)
            secret = None
            if version == self._version:
                secret = self._secret
            elif self._old is not None and version == self._old[0]:
                secret = self._old[1]
            if secret is not None:
                ok = hmac.compare_digest(cookie[4:], self._digest(secret, ni, ip, spi_i))
        if ok:
            self.accepted += 1
        else:
            self.rejected += 1
        return ok

    def statistics(self) -> CookieStatistics:
        return CookieStatistics(self.issued, self.accepted, self.rejected, self._version)
