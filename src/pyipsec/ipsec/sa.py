"""The IPsec Security Association: ESP or AH, one direction's keys, sequence and replay state.

One object serves both directions of use: the sender calls :meth:`encapsulate` (outbound
sequence numbers), the receiver :meth:`decapsulate` (replay window); in a deployment each
SA is used in one direction only, as RFC 4301 SAs are unidirectional. This module holds
the configuration, lifetimes and events, the outbound side and the statistics; the
inbound side (decapsulate, decapsulate_esp, the selector check) is the base class
:class:`pyipsec.ipsec.sa_inbound.InboundPaths`, and the batch paths of the data plane
are :mod:`pyipsec.ipsec.sa_batch`. Both are parts of this class kept in their own modules
for size.

Every rejected packet raises a :class:`pyipsec.errors.PacketError` subclass, is counted
under the error's ``counter`` and changes nothing else: the replay window is updated and
the traffic counters grow only after the ICV verified (and the selectors matched).

No clock is read: ``now`` arrives as an argument (the value given at creation when
omitted for a packet). Keys never appear in ``repr()`` or error messages.

Hot path (the data plane sends ~100k packets/s through here). For AEAD transforms with
a 16-byte ICV and no ESN (aes*gcm16, chacha20poly1305), the common cases run inline in
:meth:`SecurityAssociation.encapsulate` / :meth:`SecurityAssociation.decapsulate`:

* out: tunnel over IPv4 (plain or in UDP) or transport, IPv4 inner packet without
  options: one ``struct`` call packs outer header + ESP header + counter IV, the nonce
  is ``salt || sequence``, one AEAD call on ``packet + trailer`` (trailers precomputed),
  one concatenation; counters and lifetime thresholds are two comparisons.
* in (:mod:`pyipsec.ipsec.sa_inbound`): IPv4 without options or IPv6 without extension
  headers, the next in-order sequence number: one ``struct`` call reads lengths,
  protocol, SPI and sequence; one AEAD call; trailer and padding checked by one
  comparison; the replay bit set inline.

* bare ESP messages (the UDP 4500 path, IPv6 raw sockets), tunnel mode:
  :meth:`SecurityAssociation.encapsulate_esp` / :meth:`SecurityAssociation.decapsulate_esp`
  inline the same steps, and :mod:`pyipsec.ipsec.sa_batch` does them for a whole batch
  with the limit checks once per batch (what the data plane calls). Selector answers are
  cached per flow when the selector object has a ``generation`` (see :meth:`_selected`).

Everything else (ESN, CBC/HMAC, GMAC, truncated GCM, AH, options, extension headers,
out-of-order or replayed numbers, every error) takes the general path through
:mod:`pyipsec.ipsec.esp` / :mod:`pyipsec.ipsec.ah`, which raises and counts the right
error; tests check that both paths produce identical bytes.
"""

from __future__ import annotations

import ipaddress
import logging
import struct
from collections import deque
from typing import Any, Protocol

from pyipsec.crypto.esp_algorithms import get_algorithm
from pyipsec.errors import ConfigError, LifetimeExpired, PacketError
from pyipsec.ipsec import sa_batch
from pyipsec.ipsec.ah import AhProcessor
from pyipsec.ipsec.esp import EspProcessor
from pyipsec.ipsec.lifetime import (
    HardLifetimeExpired,
    Lifetime,
    LifetimeTracker,
    SaEvent,
    SequenceExhausted,
    SoftLifetimeExpired,
)
from pyipsec.ipsec.replay import ReplayWindow
from pyipsec.ipsec.sa_inbound import InboundPaths, packed_addr
from pyipsec.ipsec.stats import ERROR_COUNTERS, SaStatistics
from pyipsec.wire.flow import Flow
from pyipsec.wire.ip import ipv4_header_checksum

_log = logging.getLogger(__name__)
_H = struct.Struct("!H")
_INF = float("inf")
_HEAD4 = struct.Struct("!BBHHHBBH4s4sIIQ")  # outer IPv4, ESP header, 8-byte counter IV
_NONCE = struct.Struct("!4sQ")  # RFC 4106 section 4: salt || IV
_HEAD4U = struct.Struct("!BBHHHBBH4s4sHHHHIIQ")  # outer IPv4, UDP (RFC 3948), ESP, IV
_ESPIV = struct.Struct("!IIQ")  # ESP header + counter IV
_PADDING = bytes(range(1, 256))
# transport trailers for 4-byte alignment, by next header and pad length
_TRAIL = [[_PADDING[:pad] + bytes((pad, nh)) for pad in range(4)] for nh in range(256)]


class FlowSelector(Protocol):
    """What an SA needs of its traffic selectors (pyipsec.ipsec.selectors.Selector)."""

    def matches(self, flow: Flow) -> bool: ...


class SecurityAssociation(InboundPaths):
    """An ESP or AH SA (RFC 4301 section 4.4.2); the inbound methods (decapsulate,
    decapsulate_esp) are in :class:`~pyipsec.ipsec.sa_inbound.InboundPaths`."""

    def __init__(
        self,
        spi: int,
        *,
        protocol: str = "esp",
        mode: str = "transport",
        algorithm: str = "aes128gcm16",
        key: bytes,
        tunnel_src: str | bytes | None = None,
        tunnel_dst: str | bytes | None = None,
        esn: bool = False,
        replay_window: int = 64,
        lifetime: Lifetime | None = None,
        encap: str | None = None,
        encap_sport: int = 4500,
        encap_dport: int = 4500,
        tfc_padding: int = 0,
        selectors: FlowSelector | None = None,
        now: float = 0.0,
    ) -> None:
        if not 256 <= spi <= 0xFFFFFFFF:
            raise ConfigError(f"SPI {spi:#x} out of range (256..2^32-1)", key="spi")
        if protocol not in ("esp", "ah"):
            raise ConfigError(f"protocol must be 'esp' or 'ah', not {protocol!r}", key="protocol")
        if mode not in ("transport", "tunnel"):
            raise ConfigError(f"mode must be 'transport' or 'tunnel', not {mode!r}", key="mode")
        if encap not in (None, "udp"):
            raise ConfigError(f"encap must be None or 'udp', not {encap!r}", key="encap")
        if encap and protocol == "ah":
            raise ConfigError(
                "AH cannot be UDP-encapsulated (RFC 3948 covers ESP only)", key="encap"
            )
        src = packed_addr(tunnel_src, "tunnel_src")
        dst = packed_addr(tunnel_dst, "tunnel_dst")
        if mode == "tunnel":
            if src is None or dst is None:
                raise ConfigError("tunnel mode needs tunnel_src and tunnel_dst", key="tunnel_src")
            if len(src) != len(dst):
                raise ConfigError("tunnel_src and tunnel_dst differ in family", key="tunnel_dst")
        if tfc_padding and mode != "tunnel":
            raise ConfigError("TFC padding needs tunnel mode", key="tfc_padding")
        if not 0 <= tfc_padding <= 65535:
            raise ConfigError("TFC padding must be 0..65535", key="tfc_padding")
        alg = get_algorithm(algorithm, protocol)
        self.spi = spi
        self.protocol = protocol
        self.mode = mode
        self.algorithm = alg.name
        self.tunnel_src = str(ipaddress.ip_address(src)) if src is not None else None
        self.tunnel_dst = str(ipaddress.ip_address(dst)) if dst is not None else None
        self.esn = esn
        self.encap = encap
        self.selectors = selectors
        self.weak = alg.weak
        if alg.weak:
            _log.warning("SA %#010x uses legacy algorithm %s (weak)", spi, alg.name)
        self._alg = alg
        common = dict(tunnel=mode == "tunnel", esn=esn, tunnel_src=src, tunnel_dst=dst)
        self._proc: EspProcessor | AhProcessor
        if protocol == "esp":
            self._proc = EspProcessor(
                spi, alg, bytes(key), encap=encap == "udp", encap_sport=encap_sport,
                encap_dport=encap_dport, tfc=tfc_padding, **common,
            )  # fmt: skip
        else:
            self._proc = AhProcessor(spi, alg, bytes(key), **common)
        self._replay = ReplayWindow(replay_window, esn)
        self._seq_max = (1 << 64) - 1 if esn else (1 << 32) - 1
        self._seq = 0
        self._now = now
        self._life = LifetimeTracker(lifetime, now)
        self._events: deque[SaEvent] = deque()
        self._dead = False  # hard lifetime reached or sequence space exhausted
        self._err = dict.fromkeys(ERROR_COUNTERS, 0)
        self._conf = alg.confidential
        self.packets_out = self.bytes_out = self.packets_in = self.bytes_in = 0
        self.overhead: int = self._proc.overhead()
        # hot-path shortcuts (see encapsulate/decapsulate)
        self._encap = self._proc.encapsulate
        self._deadline = _INF  # next time limit (soft or hard) to check, see check_lifetime
        self._set_deadline()
        proc = self._proc
        # AEAD (16-byte ICV), no ESN: the inline hot paths below apply
        self._fast_in = isinstance(proc, EspProcessor) and proc.fast
        self._tunnel = mode == "tunnel"
        if self._fast_in:
            self._adec = proc.aead_decrypt
            self._aenc = proc.aead_encrypt
            self._salt = proc.salt
        # bare ESP messages (UDP 4500 / IPv6 raw sockets) of an AEAD tunnel SA
        self._fast_esp = self._fast_in and self._tunnel and not proc.tfc
        if self._fast_esp:
            self._tr4e, self._tr6e = proc._tr4, proc._tr6
        self._sel_cache: dict[tuple[int, bytes], bool] = {}
        self._sel_gen: object = None
        # outbound: 1 = tunnel over IPv4, 2 = the same in UDP (NAT-T), 3 = transport
        # (IPv4 inner packets without options); 0 = the general path only
        self._fast_out = 0
        if self._fast_in and not proc.tfc:
            if self._tunnel and len(src) == 4:
                self._fast_out = 2 if proc.encap else 1
                self._csum_base = proc._csum_base
                self._src4, self._dst4 = src, dst
                self._tr4 = proc._tr4
                self._ports = (encap_sport, encap_dport)
            elif not self._tunnel and not proc.encap:
                self._fast_out = 3

    def __repr__(self) -> str:
        return (
            f"SecurityAssociation(spi={self.spi:#010x}, {self.protocol}, {self.mode}, "
            f"{self.algorithm}, esn={self.esn}, encap={self.encap})"
        )

    # ------------------------------------------------------------------ events, lifetime

    def next_event(self) -> SaEvent | None:
        """The oldest queued event, or None."""
        return self._events.popleft() if self._events else None

    def _limits(self, reached: list[tuple[str, str]], now: float) -> None:
        for kind, reason in reached:
            if kind == "soft":
                self._events.append(SoftLifetimeExpired(self.spi, reason, now))
            else:
                self._dead = True
                self._events.append(HardLifetimeExpired(self.spi, reason, now))

    def check_lifetime(self, now: float) -> None:
        """Apply the time-based limits at ``now`` (queues events). Traffic carrying a
        ``now`` past the next limit applies them too."""
        self._limits(self._life.over_time(now), now)
        self._set_deadline()

    def _set_deadline(self) -> None:
        life = self._life
        lt = life.lifetime
        d = [_INF]
        if lt.soft_seconds is not None and not life.soft_done:
            d.append(life.created + lt.soft_seconds)
        if lt.hard_seconds is not None and not life.hard_done:
            d.append(life.created + lt.hard_seconds)
        self._deadline = min(d)

    def _fail(self, e: PacketError) -> None:
        self._err[e.counter] = self._err.get(e.counter, 0) + 1

    def _expired(self, now: float | None) -> LifetimeExpired:
        e = LifetimeExpired(f"SA {self.spi:#010x} expired")
        self._fail(e)
        return e

    # ------------------------------------------------------------------ outbound

    def _next_seq(self, now: float | None) -> int:
        if self._dead:
            raise self._expired(now)
        if now is not None and now >= self._deadline:
            self.check_lifetime(now)
            if self._dead:
                raise self._expired(now)
        seq = self._seq + 1
        if seq > self._seq_max:
            self._dead = True
            self._events.append(SequenceExhausted(self.spi, self._now if now is None else now))
            raise self._expired(now)
        return seq

    def _sent(self, seq: int, n: int, now: float | None) -> None:
        self._seq = seq
        self.packets_out += 1
        self.bytes_out += n
        life = self._life
        if self.packets_out >= life.next_packets or self.bytes_out >= life.next_bytes:
            self._limits(
                life.over(self.packets_out, self.bytes_out), self._now if now is None else now
            )
        if seq == self._seq_max:
            self._dead = True
            self._events.append(SequenceExhausted(self.spi, self._now if now is None else now))

    def encapsulate(self, ip_packet: bytes, now: float | None = None) -> bytes:
        """Protect a whole IPv4/IPv6 packet; the whole outer packet."""
        if ip_packet.__class__ is memoryview:  # bytes and bytearray are used as they are
            ip_packet = ip_packet.tobytes()
        seq = self._seq + 1
        if self._dead or seq >= self._seq_max or (now is not None and now >= self._deadline):
            return self._encapsulate_checked(ip_packet, now)
        p = ip_packet
        n = len(p)
        fast = self._fast_out
        if fast and n >= 20 and p[0] == 0x45 and _H.unpack_from(p, 2)[0] == n:
            if fast == 1:  # tunnel: new outer IPv4 header, ESP header, counter IV
                tos = p[1]
                pad = -(n + 2) & 3
                total = n + pad + 54
                ident = seq & 0xFFFF
                c = (self._csum_base + tos + total + ident) % 0xFFFF
                head = _HEAD4.pack(
                    0x45,
                    tos,
                    total,
                    ident,
                    0,
                    64,
                    50,
                    (~c & 0xFFFF) if c else 0,
                    self._src4,
                    self._dst4,
                    self.spi,
                    seq,
                    seq,
                )
                out = head + self._aenc(
                    _NONCE.pack(self._salt, seq), p + self._tr4[pad], head[20:28]
                )
            elif fast == 2:  # tunnel in UDP (RFC 3948: IPv4 UDP checksum zero)
                tos = p[1]
                pad = -(n + 2) & 3
                total = n + pad + 62
                ident = seq & 0xFFFF
                c = (self._csum_base + tos + total + ident) % 0xFFFF
                sport, dport = self._ports
                head = _HEAD4U.pack(
                    0x45,
                    tos,
                    total,
                    ident,
                    0,
                    64,
                    17,
                    (~c & 0xFFFF) if c else 0,
                    self._src4,
                    self._dst4,
                    sport,
                    dport,
                    total - 20,
                    0,
                    self.spi,
                    seq,
                    seq,
                )
                out = head + self._aenc(
                    _NONCE.pack(self._salt, seq), p + self._tr4[pad], head[28:36]
                )
            elif _H.unpack_from(p, 6)[0] & 0x3FFF:
                return self._encapsulate_checked(p, now)  # fragment: the general path says no
            else:  # transport: the IP header stays, ESP goes after it
                pl = n - 20
                pad = -(pl + 2) & 3
                h = bytearray(p[:20])
                h[9] = 50
                _H.pack_into(h, 2, n + pad + 34)
                h[10] = h[11] = 0
                _H.pack_into(h, 10, ipv4_header_checksum(h))
                esp = _ESPIV.pack(self.spi, seq, seq)
                out = b"".join(
                    (
                        h,
                        esp,
                        self._aenc(
                            _NONCE.pack(self._salt, seq),
                            p[20:] + _TRAIL[p[9]][pad],
                            esp[:8],
                        ),
                    )
                )
            self._seq = seq
            self.packets_out = po = self.packets_out + 1
            self.bytes_out = bo = self.bytes_out + n
            life = self._life
            if po >= life.next_packets or bo >= life.next_bytes:
                self._limits(life.over(po, bo), self._now if now is None else now)
            return out
        try:
            out = self._encap(ip_packet, seq)
        except PacketError as e:
            self._fail(e)
            raise
        self._seq = seq
        self.packets_out = po = self.packets_out + 1
        self.bytes_out = bo = self.bytes_out + len(ip_packet)
        life = self._life
        if po >= life.next_packets or bo >= life.next_bytes:
            self._limits(life.over(po, bo), self._now if now is None else now)
        return out

    def _encapsulate_checked(self, ip_packet: bytes, now: float | None) -> bytes:
        """encapsulate with the expiry, time and sequence-space checks done first."""
        seq = self._next_seq(now)
        try:
            out = self._proc.encapsulate(ip_packet, seq)
        except PacketError as e:
            self._fail(e)
            raise
        self._sent(seq, len(ip_packet), now)
        return out

    def encapsulate_esp(self, ip_packet: bytes, now: float | None = None) -> bytes:
        """Protect a packet; only the ESP message (SPI .. ICV), for a UDP socket."""
        if ip_packet.__class__ is memoryview:
            ip_packet = ip_packet.tobytes()
        seq = self._seq + 1
        p = ip_packet
        n = len(p)
        if (
            self._fast_esp
            and n >= 20
            and not self._dead
            and seq < self._seq_max
            and (now is None or now < self._deadline)
        ):
            # AEAD tunnel hot path: ESP header + counter IV in one struct call, nonce is
            # salt || sequence, one AEAD call over packet + precomputed trailer
            b0 = p[0]
            if b0 >= 0x45 and b0 >> 4 == 4 and _H.unpack_from(p, 2)[0] == n:
                tr = self._tr4e
            elif b0 >> 4 == 6 and n >= 40 and _H.unpack_from(p, 4)[0] + 40 == n:
                tr = self._tr6e
            else:
                tr = None
            if tr is not None:
                head = _ESPIV.pack(self.spi, seq, seq)
                out = head + self._aenc(
                    _NONCE.pack(self._salt, seq), p + tr[-(n + 2) & 3], head[:8]
                )
                self._seq = seq
                self.packets_out = po = self.packets_out + 1
                self.bytes_out = bo = self.bytes_out + n
                life = self._life
                if po >= life.next_packets or bo >= life.next_bytes:
                    self._limits(life.over(po, bo), self._now if now is None else now)
                return out
        if self.protocol != "esp":
            raise ConfigError("encapsulate_esp needs an ESP SA", key="protocol")
        seq = self._next_seq(now)
        try:
            out = self._proc.encapsulate_esp(ip_packet, seq)
        except PacketError as e:
            self._fail(e)
            raise
        self._sent(seq, len(ip_packet), now)
        return out

    # ------------------------------------------------------------------ batches

    def encapsulate_esp_batch(
        self, packets: list[bytes], now: float, errors: dict[str, int]
    ) -> list[bytes]:
        """:meth:`encapsulate_esp` for a batch (:mod:`pyipsec.ipsec.sa_batch`); failing
        packets are counted here and in ``errors`` and left out."""
        return sa_batch.encapsulate_esp_batch(self, packets, now, errors)

    def decapsulate_esp_batch(
        self, items: list[tuple[bytes, Any, Any]], now: float, out: list[bytes],
        errors: dict[str, int],
    ) -> None:  # fmt: skip
        """:meth:`decapsulate_esp` for (message, src, dst) items of this SA, inner packets
        appended to ``out`` (:mod:`pyipsec.ipsec.sa_batch`); failing packets are counted
        here and in ``errors`` and left out."""
        sa_batch.decapsulate_esp_batch(self, items, now, out, errors)

    # ------------------------------------------------------------------ statistics

    def statistics(self) -> SaStatistics:
        """A frozen snapshot of this SA's counters."""
        conf = self._conf
        e = self._err
        return SaStatistics(
            spi=self.spi,
            protocol=self.protocol,
            mode=self.mode,
            algorithm=self.algorithm,
            weak=self.weak,
            esn=self.esn,
            encap=self.encap,
            packets_out=self.packets_out,
            bytes_out=self.bytes_out,
            packets_in=self.packets_in,
            bytes_in=self.bytes_in,
            confidential_bytes_out=self.bytes_out if conf else 0,
            confidential_bytes_in=self.bytes_in if conf else 0,
            authenticated_bytes_out=self.bytes_out,
            authenticated_bytes_in=self.bytes_in,
            sequence_out=self._seq,
            replay_top=self._replay.top,
            soft_expired=self._life.soft_done,
            hard_expired=self._dead,
            created=self._life.created,
            **e,
        )
