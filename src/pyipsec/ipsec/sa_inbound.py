"""The receiving side of :class:`pyipsec.ipsec.sa.SecurityAssociation`: decapsulation.

:class:`InboundPaths` holds every inbound method of the SA (it is a base class of
:class:`~pyipsec.ipsec.sa.SecurityAssociation`, kept in its own module for size, as
:mod:`pyipsec.ipsec.sa_batch` is): the replay check before the ICV, the ICV, the trailer,
the selector check (answers cached per flow, see :meth:`InboundPaths._selected`), then
the replay window and the counters updated, in that order. Being methods of the SA's own
class (not functions the SA calls), the hot paths cost no extra call or lookup.

Hot paths (AEAD with a 16-byte ICV, no ESN; the next in-order sequence number):

* :meth:`InboundPaths.decapsulate`: IPv4 without options (plain ESP, or ESP in UDP for a
  tunnel SA) or IPv6 without extension headers (tunnel): one ``struct`` call reads lengths,
  protocol, SPI and sequence; one AEAD call; then :meth:`InboundPaths._tunnel_inner` (trailer
  and padding in one comparison, replay bit set inline) or, for transport mode,
  :meth:`InboundPaths._decapsulate_transport4` (the IP header rebuilt around the payload).
* :meth:`InboundPaths.decapsulate_esp`: bare ESP messages (UDP 4500, IPv6 raw sockets) of
  an AEAD tunnel SA, the same steps.

Anything else (ESN, CBC/HMAC, GMAC, AH, options, extension headers, out-of-order or
replayed numbers, dummy packets, every error) takes :meth:`InboundPaths._decapsulate_slow`
(or the general half of :meth:`InboundPaths.decapsulate_esp`) through the SA's
:class:`~pyipsec.ipsec.esp.EspProcessor` / :class:`~pyipsec.ipsec.ah.AhProcessor`, which
raises the right :class:`pyipsec.errors.PacketError`; it is counted on the SA and changes
nothing else.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidTag

from pyipsec.errors import (
    ConfigError,
    IntegrityError,
    LifetimeExpired,
    PacketError,
    SelectorMismatch,
    UnknownSpi,
)
from pyipsec.wire.ip import ipv4_header_checksum, parse_flow

if TYPE_CHECKING:
    from collections.abc import Callable

    from pyipsec.ipsec.ah import AhProcessor
    from pyipsec.ipsec.esp import EspProcessor
    from pyipsec.ipsec.lifetime import LifetimeTracker
    from pyipsec.ipsec.replay import ReplayWindow
    from pyipsec.ipsec.sa import FlowSelector

_II = struct.Struct("!II")
_H = struct.Struct("!H")
# IPv4 header (no options) + ESP header: total length, flags/fragment, protocol, SPI, seq
_FAST4 = struct.Struct("!2xH2xH1xB10xII")
_UDPESP = struct.Struct("!H2xII")  # UDP length, (checksum), SPI, sequence
_PADDING = bytes(range(1, 256))
# RFC 4303 section 2.4 trailers (default padding, pad length, next header 4 / 41)
_TRAILER4 = [bytes(range(1, n + 1)) + bytes((n, 4)) for n in range(256)]
_TRAILER6 = [bytes(range(1, n + 1)) + bytes((n, 41)) for n in range(256)]


def packed_addr(value: str | bytes | None, name: str) -> bytes | None:
    """``value`` (an IP address as text, or already packed, or None) as packed bytes;
    ConfigError naming ``name`` if it is not an address."""
    if value is None or isinstance(value, bytes):
        return value
    try:
        return ipaddress.ip_address(value).packed
    except ValueError:
        raise ConfigError(f"not an IP address: {value!r}", key=name) from None


class InboundPaths:
    """Decapsulation methods of :class:`~pyipsec.ipsec.sa.SecurityAssociation`.

    Not usable alone: it reads the SA's state, set up by the SA's ``__init__``, and calls
    the SA's ``_fail`` / ``_limits`` / ``check_lifetime`` (declared below for readers and
    type checkers only).
    """

    spi: int
    protocol: str
    selectors: FlowSelector | None
    packets_in: int
    bytes_in: int
    _proc: EspProcessor | AhProcessor
    _replay: ReplayWindow
    _life: LifetimeTracker
    _now: float
    _dead: bool
    _deadline: float
    _fast_in: bool  # AEAD with a 16-byte ICV, no ESN: the inline hot paths apply
    _fast_esp: bool  # the same for bare ESP messages of a tunnel SA
    _tunnel: bool
    _salt: bytes
    _adec: Callable[[bytes, bytes, bytes], bytes]  # AEAD open: (nonce, data, aad)
    _sel_cache: dict[tuple[int, bytes], bool]
    _sel_gen: object

    if TYPE_CHECKING:

        def _fail(self, e: PacketError) -> None: ...

        def _limits(self, reached: list[tuple[str, str]], now: float) -> None: ...

        def check_lifetime(self, now: float) -> None: ...

    def _selected(self, inner: bytes) -> bool:
        """Whether ``inner`` matches the SA's selectors.

        Selector objects with a ``generation`` attribute (which changes whenever their
        answers may change) get their answers cached per flow, keyed by the header bytes
        parse_flow reads (TCP/UDP over IPv4 without options or IPv6 without extension
        headers): one dict lookup instead of parse_flow + matching on every packet.
        """
        sel = self.selectors
        gen = getattr(sel, "generation", None)
        if gen is None:
            return sel.matches(parse_flow(inner))  # type: ignore[union-attr]
        b0 = inner[0]
        if (
            b0 == 0x45
            and len(inner) >= 24
            and (inner[9] == 6 or inner[9] == 17)
            and not (inner[6] & 0x1F or inner[7])  # not a later fragment (no ports)
        ):
            key = (inner[9], inner[12:24])
        elif b0 >> 4 == 6 and len(inner) >= 44 and (inner[6] == 6 or inner[6] == 17):
            key = (inner[6], inner[8:44])
        else:
            return sel.matches(parse_flow(inner))  # type: ignore[union-attr]
        cache = self._sel_cache
        if gen != self._sel_gen:
            cache.clear()
            self._sel_gen = gen
        ok = cache.get(key)
        if ok is None:
            ok = sel.matches(parse_flow(inner))  # type: ignore[union-attr]
            if len(cache) >= 4096:
                cache.clear()
            cache[key] = ok
        return ok

    def _accept(self, seq: int, inner: bytes, now: float | None) -> bytes:
        if self.selectors is not None and inner and not self._selected(inner):
            raise SelectorMismatch(
                f"inner packet does not match the selectors of SA {self.spi:#010x}"
            )
        self._replay.update(seq)
        self.packets_in += 1
        self.bytes_in += len(inner)
        life = self._life
        if self.packets_in >= life.next_packets or self.bytes_in >= life.next_bytes:
            self._limits(
                life.over(self.packets_in, self.bytes_in), self._now if now is None else now
            )
        return inner

    def decapsulate(self, ip_packet: bytes, now: float | None = None) -> bytes:
        """Verify and unwrap a whole protected packet; the whole inner packet.

        Returns ``b""`` for an ESP dummy packet (next header 59).

        Hot path (AEAD tunnel SA, plain ESP, next in-order packet): checked and
        decrypted inline; anything else (options, fragments, NAT-T, out-of-order or
        replayed numbers, errors) takes the general path below, which counts and
        raises the right error.
        """
        if ip_packet.__class__ is memoryview:
            ip_packet = ip_packet.tobytes()
        p = ip_packet
        if self._fast_in and not self._dead and (now is None or now < self._deadline):
            n = len(p)
            if n >= 56 and p[0] == 0x45:  # IPv4 without options
                total, frag, proto, spi, seq = _FAST4.unpack_from(p)
                ok = total == n and not frag & 0x3FFF
                off = 20
                if proto == 17 and self._tunnel and n >= 64:  # ESP in UDP
                    ulen, spi, seq = _UDPESP.unpack_from(p, 24)
                    ok = ok and ulen == n - 20
                    off = 28
                elif proto != 50:
                    ok = False
                if ok and not self._tunnel:
                    return self._decapsulate_transport4(p, n, spi, seq, now)
            elif n >= 76 and p[0] >> 4 == 6 and p[6] == 50 and self._tunnel:
                spi, seq = _II.unpack_from(p, 40)
                ok = _H.unpack_from(p, 4)[0] + 40 == n
                off = 40
            else:
                ok = False
            replay = self._replay
            if ok and spi == self.spi and seq > replay.top:
                try:
                    pt = self._adec(
                        self._salt + p[off + 8 : off + 16], p[off + 16 :], p[off : off + 8]
                    )
                except InvalidTag:
                    e = IntegrityError("ESP ICV verification failed")
                    self._fail(e)
                    raise e from None
                inner = self._tunnel_inner(pt, seq, now)
                if inner is not None:
                    return inner
        return self._decapsulate_slow(p, now)

    def _tunnel_inner(self, pt: bytes, seq: int, now: float | None) -> bytes | None:
        """Hot path after a verified AEAD open in tunnel mode: check the trailer, cut the
        inner packet, check the selectors, update the replay window (``seq`` is above its
        top: checked before the ICV) and the counters. None: the general path decides."""
        ln = len(pt)
        pad = pt[-2]
        end = ln - 2 - pad
        # padding 1, 2, 3 ..., pad length and next header in one comparison
        if end < 20 or pt[end:] != (_TRAILER4 if pt[-1] == 4 else _TRAILER6)[pad]:
            return None
        v = pt[0] >> 4
        nh = pt[-1]
        if v == 4 and nh == 4:
            il = _H.unpack_from(pt, 2)[0]
        elif v == 6 and nh == 41 and end >= 40:
            il = _H.unpack_from(pt, 4)[0] + 40
        else:
            return None
        if not 20 <= il <= end:
            return None
        inner = pt[:il]
        if self.selectors is not None:
            try:
                ok = self._selected(inner)
            except PacketError as e:
                self._fail(e)
                raise
            if not ok:
                e = SelectorMismatch(
                    f"inner packet does not match the selectors of SA {self.spi:#010x}"
                )
                self._fail(e)
                raise e
        replay = self._replay
        if seq >> 6 == replay.top >> 6:  # same bitmap block: set one bit
            replay.top = seq
            bit = seq % replay._bits
            replay._blocks[bit >> 6] |= 1 << (bit & 63)
        else:
            replay.update(seq)
        self.packets_in = pi = self.packets_in + 1
        self.bytes_in = bi = self.bytes_in + il
        life = self._life
        if pi >= life.next_packets or bi >= life.next_bytes:
            self._limits(life.over(pi, bi), self._now if now is None else now)
        return inner

    def _decapsulate_transport4(
        self, p: bytes, n: int, spi: int, seq: int, now: float | None
    ) -> bytes:
        """Hot path of transport-mode ESP over IPv4 (no options, no NAT-T)."""
        replay = self._replay
        if spi != self.spi or seq <= replay.top:
            return self._decapsulate_slow(p, now)
        try:
            pt = self._adec(self._salt + p[28:36], p[36:], p[20:28])
        except InvalidTag:
            e = IntegrityError("ESP ICV verification failed")
            self._fail(e)
            raise e from None
        ln = len(pt)
        pad = pt[-2]
        end = ln - 2 - pad
        nh = pt[-1]
        if end < 0 or nh == 59 or (pad and pt[end : ln - 2] != _PADDING[:pad]):
            return self._decapsulate_slow(p, now)  # counts and raises the right error
        h = bytearray(p[:20])
        h[9] = nh
        _H.pack_into(h, 2, 20 + end)
        h[10] = h[11] = 0
        _H.pack_into(h, 10, ipv4_header_checksum(h))
        inner = b"".join((h, pt[:end]))
        if self.selectors is not None:
            try:
                return self._accept(seq, inner, now)
            except PacketError as e:
                self._fail(e)
                raise
        replay.update(seq)
        self.packets_in = pi = self.packets_in + 1
        self.bytes_in = bi = self.bytes_in + len(inner)
        life = self._life
        if pi >= life.next_packets or bi >= life.next_bytes:
            self._limits(life.over(pi, bi), self._now if now is None else now)
        return inner

    def _decapsulate_slow(self, ip_packet: bytes, now: float | None) -> bytes:
        """The general decapsulation path: every check, every error counted."""
        try:
            if self._dead:
                raise LifetimeExpired(f"SA {self.spi:#010x} expired")
            if now is not None and now >= self._deadline:
                self.check_lifetime(now)
                if self._dead:
                    raise LifetimeExpired(f"SA {self.spi:#010x} expired")
            proc = self._proc
            off, end, nh_off = proc.locate(ip_packet)
            spi, seql = _II.unpack_from(ip_packet, off if self.protocol == "esp" else off + 4)
            if spi != self.spi:
                raise UnknownSpi(f"SPI {spi:#010x} is not this SA's")
            replay = self._replay
            seq = replay.estimate(seql)
            replay.check(seq)
            inner = proc.open(ip_packet, off, end, nh_off, seq)
            return self._accept(seq, inner, now)
        except PacketError as e:
            self._fail(e)
            raise

    def decapsulate_esp(
        self, esp: bytes, src: str | bytes, dst: str | bytes, now: float | None = None
    ) -> bytes:
        """Verify and unwrap a bare ESP message (from a UDP or IPv6 raw socket).

        ``src``/``dst`` are the outer addresses; the result is the whole inner packet.
        """
        if (
            self._fast_esp
            and len(esp) >= 54
            and not self._dead
            and (now is None or now < self._deadline)
        ):
            spi, seq = _II.unpack_from(esp)
            if spi == self.spi and seq > self._replay.top:  # replay check before the ICV
                try:
                    pt = self._adec(self._salt + esp[8:16], esp[16:], esp[:8])
                except InvalidTag:
                    e = IntegrityError("ESP ICV verification failed")
                    self._fail(e)
                    raise e from None
                inner = self._tunnel_inner(pt, seq, now)
                if inner is not None:
                    return inner
        if esp.__class__ is memoryview:
            esp = esp.tobytes()
        try:
            if self.protocol != "esp":
                raise ConfigError("decapsulate_esp needs an ESP SA", key="protocol")
            if self._dead:
                raise LifetimeExpired(f"SA {self.spi:#010x} expired")
            if now is not None and now >= self._deadline:
                self.check_lifetime(now)
                if self._dead:
                    raise LifetimeExpired(f"SA {self.spi:#010x} expired")
            from pyipsec.ipsec.natt import check_esp_payload

            check_esp_payload(esp)
            spi, seql = _II.unpack_from(esp, 0)
            if spi != self.spi:
                raise UnknownSpi(f"SPI {spi:#010x} is not this SA's")
            s = packed_addr(src, "src")
            d = packed_addr(dst, "dst")
            seq = self._replay.estimate(seql)
            self._replay.check(seq)
            inner = self._proc.open_esp(esp, seq, s, d)
            return self._accept(seq, inner, now)
        except PacketError as e:
            self._fail(e)
            raise
