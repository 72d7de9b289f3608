"""The packet pipeline of the user-space data plane: the hot path, without I/O.

Outbound, one call of :meth:`OutboundPipeline.process` per batch read from the TUN device
(the worker in :mod:`pyipsec.dataplane.workers` reads up to 64 packets per wake-up)::

    read batch        packets the kernel routed into pyipsec0 (fwmark set by nftables)
    classify          parse_flow (5-tuple) -> Spd.lookup(flow, "out") -> SPD entry
                      PROTECT -> the child's outbound SA; BYPASS/DISCARD/no entry in the
                      TUN are counted and dropped (the kernel should not have sent them)
    no SA yet         hold the packet in a bounded per-(child, destination) queue (oldest
                      dropped and counted) and report an Acquire once per queue
    seq numbers       assigned inside the SA: the outbound SA lives only in the
                      outbound worker, so a sequence number is never used twice
    encrypt           per SA, after classifying the batch: sa.encapsulate per packet
                      (whole outer packet, raw socket) or sa.encapsulate_esp_batch (ESP
                      messages for the UDP 4500 socket, :mod:`pyipsec.ipsec.sa_batch`)
    send batch        per SA: raw sends, or UDP datagrams grouped for UDP_SEGMENT (GSO)

Inbound, :meth:`InboundPipeline.process_ip4` (raw IPv4 ESP/AH: whole packets) and
:meth:`InboundPipeline.process_payloads` (IPv6 raw ESP and UDP 4500: payload plus outer
addresses; IPv6 AH arrives whole, its header chain rebuilt, through
:meth:`InboundPipeline.process_ip6`)::

    SPI -> SA         dict lookup by (protocol, SPI), once per run of one SPI; a miss
                      counts bad_spi_packets; on UDP 4500, SPI 0 is the non-ESP marker
                      (RFC 3948 2.2): the IKE message goes to ``on_ike`` with its source
                      port, and a lone 0xFF byte is a NAT keepalive
    decapsulate       replay check, ICV, decrypt, replay update, the inner packet checked
                      against the SA's selectors (SecurityAssociation does all of it; ESP
                      runs from UDP / IPv6 go through sa.decapsulate_esp_batch)
    write batch       the inner packets into the TUN device; with TUN offloads, runs of
                      one TCP flow become one GSO super-packet (receive-side GRO)

NAT mapping changes (RFC 3948 2.1, RFC 7296 2.23): UDP 4500 items come with their source
ports; when a run of ESP-in-UDP packets of one SA verifies (ICV and replay window passed)
and came from another (address, port) than the SA's peer, the inbound pipeline reports a
:class:`NatMapping` once per change. The pipeline does not move anything itself: the
daemon decides (the outbound side follows through :meth:`OutboundPipeline.set_peer`).

Every PacketError raised on the way is counted under its ``counter`` name and never stops
the batch. Nothing here reads the clock: ``now`` comes from the worker loop.
"""

from __future__ import annotations

import ipaddress
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

from pyipsec.errors import MalformedPacket, PacketError
from pyipsec.ipsec.spd import Action, Spd
from pyipsec.wire.esp import NATT_PORT
from pyipsec.wire.flow import Flow
from pyipsec.wire.ip import parse_flow

_SPI = struct.Struct("!I")
_V6HDR = struct.Struct("!IHBB16s16s")

HOLD_PER_QUEUE = 32  #: packets held per (child, destination) while waiting for an SA
HOLD_QUEUES = 256  #: distinct (child, destination) queues at most


class Sender(Protocol):
    """Where encapsulated packets go (raw sockets and the UDP 4500 socket)."""

    def send_ip(self, packets: list[bytes], version: int, dst: str) -> None: ...

    def send_udp(self, datagrams: list[bytes], version: int, addr: tuple[str, int]) -> None: ...


class PacketSink(Protocol):
    """Where decapsulated packets go (the TUN device), one batch per call."""

    def write_batch(self, packets: list[bytes]) -> None: ...


@dataclass(frozen=True, slots=True)
class Acquire:
    """A packet needs an SA that does not exist yet (the daemon starts IKE for it)."""

    child: str  #: the SPD entry's template child name
    policy: str  #: name of the SPD entry that matched
    flow: Flow  #: the first held packet's 5-tuple


@dataclass(frozen=True, slots=True)
class NatMapping:
    """Authenticated ESP-in-UDP of an inbound SA arrived from a new (address, port).

    A NAT in front of the peer changed its mapping (RFC 7296 2.23): the peer's outbound
    SA, and our IKE SA, should now send there. Reported once per new mapping, and only
    for packets that passed the ICV and the replay window."""

    protocol: str  #: "esp"
    spi: int  #: the inbound SA's SPI
    child: str  #: the SA's data plane child name
    addr: str  #: the new source address (text)
    port: int  #: the new UDP source port


@dataclass(frozen=True, slots=True)
class SaEventReport:
    """An SA event (lifetime, sequence exhaustion) seen by a worker."""

    direction: str  #: "in" or "out"
    protocol: str
    spi: int
    event: Any  #: the SA's own event object


@dataclass(frozen=True, slots=True)
class OutboundStatistics:
    packets_read: int  #: packets read from the TUN device
    packets_sent: int  #: encapsulated packets handed to the sockets
    bytes_sent: int  #: bytes of those packets
    no_policy: int  #: read from the TUN but no SPD entry matched (dropped)
    not_protect: int  #: matched BYPASS/DISCARD inside the TUN (dropped)
    held: int  #: packets currently waiting for an SA
    held_dropped: int  #: held packets dropped (queue full, too many queues)
    acquires: int  #: Acquire reports made
    errors: tuple[tuple[str, int], ...]  #: PacketError counters (name, count)


@dataclass(frozen=True, slots=True)
class InboundStatistics:
    packets_received: int  #: ESP/AH/UDP-4500 packets read from the sockets
    packets_delivered: int  #: inner packets written to the TUN device
    bytes_delivered: int
    nat_keepalives: int  #: 0xFF one-byte NAT keepalives on port 4500 (RFC 3948 2.3)
    non_esp: int  #: non-ESP-marker datagrams on 4500 (IKE: handed to ``on_ike``)
    errors: tuple[tuple[str, int], ...]  #: PacketError counters, bad_spi_packets included
    nat_mappings: int = 0  #: NatMapping reports made (verified ESP from a new address/port)


class _OutSa:
    """An outbound SA with its send route and this batch's output buffer."""

    __slots__ = ("sa", "cfg", "udp", "version", "dst", "addr", "buf", "nbytes")

    def __init__(self, sa: Any, cfg: Any) -> None:
        self.sa = sa
        self.cfg = cfg
        self.udp = cfg.encap == "udp"
        self.version = ipaddress.ip_address(cfg.dst).version
        self.dst = cfg.dst
        self.addr = (cfg.dst, cfg.encap_dport)
        self.buf: list[bytes] = []
        self.nbytes = 0


def _bump(counts: dict[str, int], name: str) -> None:
    counts[name] = counts.get(name, 0) + 1


class OutboundPipeline:
    """TUN packets -> SPD -> outbound SA -> sockets. Owns the outbound SAs."""

    def __init__(
        self,
        spd: Spd,
        sender: Sender,
        *,
        on_acquire: Callable[[Acquire], None] | None = None,
        hold_per_queue: int = HOLD_PER_QUEUE,
        hold_queues: int = HOLD_QUEUES,
    ) -> None:
        self.spd = spd
        self.sender = sender
        self.on_acquire = on_acquire
        self.by_child: dict[str, _OutSa] = {}
        self.by_ident: dict[tuple[str, int], _OutSa] = {}
        self.hold_per_queue = hold_per_queue
        self.hold_queues = hold_queues
        self._held: dict[tuple[str, int], deque[bytes]] = {}
        self._read = self._sent = self._bytes = 0
        self._no_policy = self._not_protect = self._held_dropped = self._acquires = 0
        self.errors: dict[str, int] = {}

    # ------------------------------------------------------------------ SAs

    def add_sa(self, cfg: Any, sa: Any, now: float) -> None:
        """Install ``sa`` as the outbound SA of ``cfg.child`` (replacing the previous one,
        which stays listed until removed) and release packets held for that child.

        A per-host child ``<conn>/<child>@<host>`` (a connection toward many hosts: the
        packets were held under the connection's child ``<conn>/<child>``) also releases
        what was held for that host; released packets go through the SPD again."""
        out = _OutSa(sa, cfg)
        self.by_ident[(cfg.protocol, cfg.spi)] = out
        self.by_child[cfg.child] = out
        generic, at, _ = cfg.child.partition("@")
        host = int(ipaddress.ip_address(cfg.dst)) if at else None
        for key in [
            k for k in self._held if k[0] == cfg.child or (k[0] == generic and k[1] == host)
        ]:
            held = self._held.pop(key)
            self._read -= len(held)  # counted again by process
            self.process(list(held), now)

    def set_peer(self, protocol: str, spi: int, addr: str, port: int) -> bool:
        """Send ``spi``'s ESP-in-UDP to ``(addr, port)`` from now on (the peer's NAT
        mapping changed, RFC 7296 2.23). False if the SA is unknown or not in UDP, or the
        address family would change (the outer header is built per SA)."""
        out = self.by_ident.get((protocol, spi))
        if out is None or not out.udp or not 0 < port < 65536:
            return False
        try:
            version = ipaddress.ip_address(addr).version
        except ValueError:
            return False
        if version != out.version:
            return False
        out.dst = addr
        out.addr = (addr, port)
        out.cfg = replace(out.cfg, dst=addr, encap_dport=port)
        return True

    def remove_sa(self, protocol: str, spi: int) -> bool:
        out = self.by_ident.pop((protocol, spi), None)
        if out is None:
            return False
        if self.by_child.get(out.cfg.child) is out:
            del self.by_child[out.cfg.child]
            for other in self.by_ident.values():  # an older SA of the child takes over
                if other.cfg.child == out.cfg.child:
                    self.by_child[out.cfg.child] = other
        return True

    # ------------------------------------------------------------------ hot path

    def process(self, packets: list[bytes], now: float) -> None:
        """Classify, encapsulate and send one batch of plain packets from the TUN."""
        self._read += len(packets)
        lookup = self.spd.lookup
        by_child = self.by_child
        used: list[_OutSa] = []
        protect = Action.PROTECT
        last_key = None
        entry = flow = None
        for pkt in packets:
            # consecutive packets of one TCP/UDP flow (TSO segments) share the SPD answer:
            # the key holds everything parse_flow reads (IPv4: fragment field too)
            b0 = pkt[0]
            if b0 == 0x45 and len(pkt) >= 24 and (pkt[9] == 6 or pkt[9] == 17):
                key = pkt[6:10] + pkt[12:24]
            elif b0 >> 4 == 6 and len(pkt) >= 44 and (pkt[6] == 6 or pkt[6] == 17):
                key = pkt[6:7] + pkt[8:44]
            else:
                key = None
            if key is None or key != last_key:
                try:
                    flow = parse_flow(pkt)
                except MalformedPacket as exc:
                    _bump(self.errors, exc.counter)
                    last_key = None
                    continue
                entry = lookup(flow, "out")
                last_key = key
            if entry is None:
                self._no_policy += 1
                continue
            if entry.action is not protect:
                self._not_protect += 1
                continue
            out = by_child.get(entry.template.child)
            if out is None:
                self._hold(entry, flow, pkt)
                continue
            if not out.buf:
                used.append(out)
            out.buf.append(pkt)  # encapsulated per SA below, as one batch
        for out in used:
            if out.udp:
                buf = out.sa.encapsulate_esp_batch(out.buf, now, self.errors)
                if buf:
                    self.sender.send_udp(buf, out.version, out.addr)
            else:
                buf = []
                for pkt in out.buf:
                    try:
                        buf.append(out.sa.encapsulate(pkt, now))
                    except PacketError as exc:
                        _bump(self.errors, exc.counter)
                if buf:
                    self.sender.send_ip(buf, out.version, out.dst)
            out.nbytes = sum(map(len, buf))
            self._sent += len(buf)
            self._bytes += out.nbytes
            out.buf = []
            out.nbytes = 0

    def _hold(self, entry: Any, flow: Flow, pkt: bytes) -> None:
        key = (entry.template.child, flow.dst)
        q = self._held.get(key)
        if q is None:
            if len(self._held) >= self.hold_queues:
                self._held_dropped += 1
                return
            q = self._held[key] = deque()
            self._acquires += 1
            if self.on_acquire is not None:
                self.on_acquire(Acquire(entry.template.child, entry.name, flow))
        if len(q) >= self.hold_per_queue:
            q.popleft()
            self._held_dropped += 1
        q.append(pkt)

    # ------------------------------------------------------------------ housekeeping

    def tick(self, now: float) -> list[SaEventReport]:
        """Time-based lifetime checks; returns the SA events that were queued."""
        return _drain_events(((o.cfg, o.sa) for o in self.by_ident.values()), "out", now)

    def sa_statistics(self) -> list[tuple[Any, Any]]:
        return [(o.cfg, o.sa.statistics()) for o in self.by_ident.values()]

    def statistics(self) -> OutboundStatistics:
        return OutboundStatistics(
            self._read, self._sent, self._bytes, self._no_policy, self._not_protect,
            sum(len(q) for q in self._held.values()), self._held_dropped, self._acquires,
            tuple(sorted(self.errors.items())),
        )  # fmt: skip


def _drain_events(items: Any, direction: str, now: float) -> list[SaEventReport]:
    reports = []
    for cfg, sa in items:
        sa.check_lifetime(now)
        while (ev := sa.next_event()) is not None:
            reports.append(SaEventReport(direction, cfg.protocol, cfg.spi, ev))
    return reports


class InboundPipeline:
    """ESP/AH from the sockets -> SA by SPI -> decapsulate -> TUN. Owns the inbound SAs."""

    def __init__(
        self,
        sink: PacketSink,
        *,
        on_mapping: Callable[[NatMapping], None] | None = None,
        on_ike: Callable[[bytes, Any, Any, int], None] | None = None,
    ) -> None:
        self.sink = sink
        self.on_mapping = on_mapping
        #: called with (datagram, src, dst, source port) for IKE on UDP 4500 (non-ESP
        #: marker kept): the daemon's business, found while the batch is classified anyway
        self.on_ike = on_ike
        #: (IP protocol number, SPI) -> (config, SA)
        self.sas: dict[tuple[int, int], tuple[Any, Any]] = {}
        #: ESP SPI -> (packed address, UDP port) the SA's packets are known to come from
        self._peers: dict[int, tuple[bytes, int]] = {}
        self._received = self._delivered = self._bytes = 0
        self._keepalives = self._non_esp = self._mappings = 0
        self.errors: dict[str, int] = {}

    def add_sa(self, cfg: Any, sa: Any) -> None:
        self.sas[(50 if cfg.protocol == "esp" else 51, cfg.spi)] = (cfg, sa)
        if cfg.protocol == "esp" and getattr(cfg, "encap", None) == "udp":
            try:
                packed = ipaddress.ip_address(cfg.src).packed
            except ValueError:
                return
            self._peers[cfg.spi] = (packed, cfg.encap_sport)

    def remove_sa(self, protocol: str, spi: int) -> bool:
        if protocol == "esp":
            self._peers.pop(spi, None)
        return self.sas.pop((50 if protocol == "esp" else 51, spi), None) is not None

    def process_ip4(self, packets: list[bytes], now: float) -> None:
        """Whole IPv4 packets carrying ESP (50) or AH (51), as a raw IPv4 socket gives them."""
        self._received += len(packets)
        sas = self.sas
        done: list[bytes] = []
        write = done.append
        errors = self.errors
        for pkt in packets:
            if len(pkt) < 28:
                _bump(errors, MalformedPacket.counter)
                continue
            ihl = (pkt[0] & 0x0F) * 4
            proto = pkt[9]
            off = ihl + 4 if proto == 51 else ihl
            if len(pkt) < off + 4:
                _bump(errors, MalformedPacket.counter)
                continue
            found = sas.get((proto, _SPI.unpack_from(pkt, off)[0]))
            if found is None:
                _bump(errors, "bad_spi_packets")
                continue
            try:
                inner = found[1].decapsulate(pkt, now)
            except PacketError as exc:
                _bump(errors, exc.counter)
                continue
            write(inner)
            self._delivered += 1
            self._bytes += len(inner)
        if done:
            self.sink.write_batch(done)

    def process_ip6(self, packets: list[bytes], now: float) -> None:
        """Whole IPv6 packets carrying AH after any extension headers (the IPv6 raw AH
        socket's payload with its header chain rebuilt: AH's ICV covers those headers)."""
        self._received += len(packets)
        sas = self.sas
        done: list[bytes] = []
        errors = self.errors
        for pkt in packets:
            nh, off, n = pkt[6], 40, len(pkt)
            while (nh == 0 or nh == 43 or nh == 60) and off + 2 <= n:
                nh, off = pkt[off], off + (pkt[off + 1] + 1) * 8
            if nh != 51 or n < off + 8:
                _bump(errors, MalformedPacket.counter)
                continue
            found = sas.get((51, _SPI.unpack_from(pkt, off + 4)[0]))
            if found is None:
                _bump(errors, "bad_spi_packets")
                continue
            try:
                done.append(found[1].decapsulate(pkt, now))
            except PacketError as exc:
                _bump(errors, exc.counter)
        if done:
            self._delivered += len(done)
            self._bytes += sum(map(len, done))
            self.sink.write_batch(done)

    def process_payloads(
        self,
        items: list[tuple[bytes, str | bytes, str | bytes]],
        proto: int,
        now: float,
        *,
        udp: bool = False,
        ports: list[int] | None = None,
    ) -> None:
        """(payload, src, dst) triples: IPv6 raw ESP/AH payloads, or UDP 4500 datagrams.

        Addresses are packed bytes (what the sockets give) or strings. ``ports``, for
        UDP, holds each item's source port (index for index): a run of one SA that
        verified from another (address, port) than known is reported (:class:`NatMapping`),
        and IKE messages (non-ESP marker) go to ``on_ike`` with their real source port
        (behind a NAT, its mapping of the peer's 4500; 4500 when ``ports`` is None).
        """
        self._received += len(items)
        sas = self.sas
        done: list[bytes] = []
        write = done.append
        errors = self.errors
        off = 4 if proto == 51 else 0
        unpack_spi = _SPI.unpack_from
        i = 0
        k = len(items)
        while i < k:
            payload, src, dst = items[i]
            i += 1
            n = len(payload)
            if n < off + 8:
                if udp and n == 1 and payload[0] == 0xFF:
                    self._keepalives += 1
                elif udp and n >= 4 and payload[:4] == b"\0\0\0\0":
                    self._non_esp += 1
                    if n > 4 and self.on_ike is not None:  # too short: the endpoint counts it
                        self.on_ike(payload, src, dst, NATT_PORT if ports is None else ports[i - 1])
                else:
                    _bump(errors, MalformedPacket.counter)
                continue
            spi = unpack_spi(payload, off)[0]
            if udp and spi == 0:  # non-ESP marker (RFC 3948 2.2): IKE
                self._non_esp += 1
                if self.on_ike is not None:
                    self.on_ike(payload, src, dst, NATT_PORT if ports is None else ports[i - 1])
                continue
            found = sas.get((proto, spi))
            if found is None:
                _bump(errors, "bad_spi_packets")
                continue
            sa = found[1]
            if proto == 50:  # the run of this SPI goes to the SA as one batch
                j = i
                while j < k and len(items[j][0]) >= 8 and unpack_spi(items[j][0])[0] == spi:
                    j += 1
                if ports is None:
                    sa.decapsulate_esp_batch(items[i - 1 : j], now, done, errors)
                else:
                    before = len(done)
                    sa.decapsulate_esp_batch(items[i - 1 : j], now, done, errors)
                    peer = (items[j - 1][1], ports[j - 1])
                    if len(done) > before and self._peers.get(spi, peer) != peer:
                        self._moved(found[0], spi, peer, items, ports, i - 1, j)
                i = j
                continue
            try:
                write(sa.decapsulate(_ipv6_header(payload, src, dst) + payload, now))
            except PacketError as exc:
                _bump(errors, exc.counter)
            except ValueError:  # unparsable address from a cmsg: count as malformed
                _bump(errors, MalformedPacket.counter)
        if done:
            self._delivered += len(done)
            self._bytes += sum(map(len, done))
            self.sink.write_batch(done)

    def _moved(
        self, cfg: Any, spi: int, peer: tuple[Any, int], items: list[Any], ports: list[int],
        start: int, end: int,
    ) -> None:  # fmt: skip
        """A run of ``spi`` that ended with an item from another (address, port) than
        known, and of which something verified. Only a run wholly from ``peer`` proves
        that ``peer`` sent authenticated ESP: a mixed run (a forged packet from a new port
        behind a genuine one) is no evidence and is left for later runs (off the hot path:
        this runs only when the run's last item came from an unknown mapping)."""
        src, port = peer
        for x in range(start, end):
            if ports[x] != port or items[x][1] != src:
                return
        self._mapping(cfg, spi, peer)

    def _mapping(self, cfg: Any, spi: int, peer: tuple[Any, int]) -> None:
        """Verified ESP of ``spi`` from a new (address, port): remember it, report once."""
        addr = peer[0]
        if isinstance(addr, str):  # items with text addresses (tests): compare packed
            peer = (ipaddress.ip_address(addr).packed, peer[1])
            if self._peers.get(spi) == peer:
                return
        self._peers[spi] = peer
        self._mappings += 1
        if self.on_mapping is not None:
            text = str(ipaddress.ip_address(peer[0]))
            self.on_mapping(NatMapping(cfg.protocol, spi, cfg.child, text, peer[1]))

    def tick(self, now: float) -> list[SaEventReport]:
        return _drain_events(self.sas.values(), "in", now)

    def sa_statistics(self) -> list[tuple[Any, Any]]:
        return [(cfg, sa.statistics()) for cfg, sa in self.sas.values()]

    def statistics(self) -> InboundStatistics:
        return InboundStatistics(
            self._received, self._delivered, self._bytes, self._keepalives, self._non_esp,
            tuple(sorted(self.errors.items())), self._mappings,
        )  # fmt: skip


def _packed6(addr: str | bytes) -> bytes:
    return addr if isinstance(addr, bytes) else ipaddress.IPv6Address(addr).packed


def _ipv6_header(payload: bytes, src: str | bytes, dst: str | bytes) -> bytes:
    """The fixed IPv6 header an AH payload arrived under (raw IPv6 sockets strip it).

    Traffic class, flow label and hop limit are mutable and zeroed for AH's ICV (RFC 4302
    3.3.3.1.2), so rebuilding them as 0 / 64 is exact. Extension headers that preceded AH
    are not visible here (packets carrying them fail the ICV and are counted): the data
    plane's AH socket goes through ``sockets.recv_ah6`` and :meth:`process_ip6` instead.
    """
    return _V6HDR.pack(
        6 << 28,
        len(payload),
        51,
        64,
        _packed6(src),
        _packed6(dst),
    )
