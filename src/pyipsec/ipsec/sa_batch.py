"""Batch hot paths of :class:`pyipsec.ipsec.sa.SecurityAssociation` for the data plane.

The data plane handles packets in batches (up to 64 per read); per packet the single-packet
methods pay for a method call, a dozen attribute lookups and the lifetime checks again.
These functions take one SA's batch and do the per-batch checks once:

* :func:`encapsulate_esp_batch`: time limit, expiry, sequence space and packet/byte
  lifetime thresholds checked for the whole batch; then per packet one ``struct`` call
  (ESP header + counter IV), one AEAD call on packet + precomputed trailer, one
  concatenation. If any check could trip inside the batch, every packet goes through
  :meth:`~pyipsec.ipsec.sa.SecurityAssociation.encapsulate_esp` instead.
* :func:`decapsulate_esp_batch`: per packet SPI and replay check (before the ICV), one
  AEAD call, trailer check, selector check (cached per flow), replay update (after the
  ICV), counters; anything unusual goes through
  :meth:`~pyipsec.ipsec.sa.SecurityAssociation.decapsulate_esp`, which raises and counts.

Both produce exactly what the single-packet methods produce (tests compare them) and count
every :class:`pyipsec.errors.PacketError` twice, like the single-packet path with the
pipeline around it: on the SA (its statistics) and in the caller's ``errors`` dict.
They read the SA's private hot-path attributes: they are part of the SA, kept in their own
module for size.
"""

from __future__ import annotations

import struct
from typing import Any

from cryptography.exceptions import InvalidTag

from pyipsec.errors import IntegrityError, MalformedPacket, PacketError, SelectorMismatch

_II = struct.Struct("!II")
_H = struct.Struct("!H")
_ESPIV = struct.Struct("!IIQ")  # ESP header + 8-byte counter IV (RFC 4106 section 3.1)
_NONCE = struct.Struct("!4sQ")  # salt || IV
# RFC 4303 section 2.4 trailers (default padding, pad length, next header 4 / 41)
_TRAILER4 = [bytes(range(1, n + 1)) + bytes((n, 4)) for n in range(256)]
_TRAILER6 = [bytes(range(1, n + 1)) + bytes((n, 41)) for n in range(256)]


def _bump(errors: dict[str, int], name: str) -> None:
    errors[name] = errors.get(name, 0) + 1


def encapsulate_esp_batch(
    sa: Any, packets: list[bytes], now: float, errors: dict[str, int]
) -> list[bytes]:
    """The ESP messages for ``packets`` (failing packets are counted and left out)."""
    out: list[bytes] = []
    k = len(packets)
    seq = sa._seq
    life = sa._life
    if (
        not sa._fast_esp
        or sa._dead
        or now >= sa._deadline
        or seq + k >= sa._seq_max
        or sa.packets_out + k >= life.next_packets
        or sa.bytes_out + k * 65535 >= life.next_bytes
    ):
        for p in packets:
            try:
                out.append(sa.encapsulate_esp(p, now))
            except PacketError as exc:
                _bump(errors, exc.counter)
        return out
    spi = sa.spi
    salt = sa._salt
    aenc = sa._aenc
    tr4 = sa._tr4e
    tr6 = sa._tr6e
    pack = _ESPIV.pack
    npack = _NONCE.pack
    unpack = _H.unpack_from
    append = out.append
    fast = nbytes = 0  # packets and bytes of the hot path since the SA was last updated
    for p in packets:
        n = len(p)
        b0 = p[0] if n >= 40 and p.__class__ is bytes else 0
        if b0 >= 0x45 and b0 >> 4 == 4 and unpack(p, 2)[0] == n:
            tr = tr4
        elif b0 >> 4 == 6 and unpack(p, 4)[0] + 40 == n:
            tr = tr6
        else:  # short, odd or malformed: the single-packet method decides (and counts)
            sa._seq = seq
            sa.packets_out += fast
            sa.bytes_out += nbytes
            fast = nbytes = 0
            try:
                append(sa.encapsulate_esp(p, now))
            except PacketError as exc:
                _bump(errors, exc.counter)
            seq = sa._seq
            continue
        seq += 1
        head = pack(spi, seq, seq)
        append(head + aenc(npack(salt, seq), p + tr[-(n + 2) & 3], head[:8]))
        fast += 1
        nbytes += n
    sa._seq = seq
    sa.packets_out += fast
    sa.bytes_out += nbytes
    return out


def decapsulate_esp_batch(
    sa: Any,
    items: list[tuple[bytes, Any, Any]],
    now: float,
    out: list[bytes],
    errors: dict[str, int],
) -> None:
    """Append the inner packets of ``items`` ((ESP message, src, dst), all of this SA) to
    ``out``; every rejected packet is counted (SA and ``errors``) and left out."""
    if not sa._fast_esp or sa._dead or now >= sa._deadline:
        for esp, src, dst in items:
            _single(sa, esp, src, dst, now, out, errors)
        return
    spi0 = sa.spi
    replay = sa._replay
    blocks = replay._blocks
    bits = replay._bits
    salt = sa._salt
    adec = sa._adec
    life = sa._life
    sel = sa.selectors
    cache = None
    if sel is not None:
        gen = getattr(sel, "generation", None)
        if gen is not None:
            cache = sa._sel_cache
            if gen != sa._sel_gen:
                cache.clear()
                sa._sel_gen = gen
    unpack = _II.unpack_from
    unpack_h = _H.unpack_from
    append = out.append
    for i, (esp, src, dst) in enumerate(items):
        if len(esp) < 54:
            _single(sa, esp, src, dst, now, out, errors)
            continue
        spi, seq = unpack(esp)
        if spi != spi0 or seq <= replay.top:  # replay check before the ICV: general path
            _single(sa, esp, src, dst, now, out, errors)
            continue
        try:
            pt = adec(salt + esp[8:16], esp[16:], esp[:8])
        except InvalidTag:
            e = IntegrityError("ESP ICV verification failed")
            sa._fail(e)
            _bump(errors, e.counter)
            continue
        ln = len(pt)
        pad = pt[-2]
        end = ln - 2 - pad
        nh = pt[-1]
        v = pt[0] >> 4
        il = 0
        # padding 1, 2, 3 ..., pad length and next header in one comparison
        if end >= 20 and pt[end:] == (_TRAILER4 if nh == 4 else _TRAILER6)[pad]:
            if v == 4 and nh == 4:
                il = unpack_h(pt, 2)[0]
            elif v == 6 and nh == 41 and end >= 40:
                il = unpack_h(pt, 4)[0] + 40
        if not 20 <= il <= end:  # dummy packet, bad trailer or inner length: general path
            _single(sa, esp, src, dst, now, out, errors)
            continue
        inner = pt[:il] if il != ln else pt
        if sel is not None:
            try:
                ok = _selected(sa, sel, cache, inner)
            except PacketError as e:
                sa._fail(e)
                _bump(errors, e.counter)
                continue
            if not ok:
                e = SelectorMismatch(
                    f"inner packet does not match the selectors of SA {spi0:#010x}"
                )
                sa._fail(e)
                _bump(errors, e.counter)
                continue
        top = replay.top
        if seq >> 6 == top >> 6:  # same bitmap block: set one bit
            replay.top = seq
            bit = seq % bits
            blocks[bit >> 6] |= 1 << (bit & 63)
        else:
            replay.update(seq)
            blocks = replay._blocks
        sa.packets_in = pi = sa.packets_in + 1
        sa.bytes_in = bi = sa.bytes_in + il
        append(inner)
        if pi >= life.next_packets or bi >= life.next_bytes:
            sa._limits(life.over(pi, bi), now)
            if sa._dead:  # hard limit: the rest is refused (and counted) one by one
                for esp2, src2, dst2 in items[i + 1 :]:
                    _single(sa, esp2, src2, dst2, now, out, errors)
                return


def _single(
    sa: Any, esp: Any, src: Any, dst: Any, now: float, out: list[bytes], errors: dict[str, int]
) -> None:
    try:
        out.append(sa.decapsulate_esp(esp, src, dst, now))
    except PacketError as exc:
        _bump(errors, exc.counter)
    except ValueError:  # unparsable address from a cmsg: count as malformed
        _bump(errors, MalformedPacket.counter)


def _selected(sa: Any, sel: Any, cache: dict | None, inner: bytes) -> bool:
    if cache is None:
        return sa._selected(inner)
    b0 = inner[0]
    if (
        b0 == 0x45
        and len(inner) >= 24
        and (inner[9] == 6 or inner[9] == 17)
        and not (inner[6] & 0x1F or inner[7])
    ):
        key = (inner[9], inner[12:24])
    elif b0 >> 4 == 6 and len(inner) >= 44 and (inner[6] == 6 or inner[6] == 17):
        key = (inner[6], inner[8:44])
    else:
        return sa._selected(inner)
    ok = cache.get(key)
    if ok is None:
        return sa._selected(inner)  # fills the cache
    return ok
