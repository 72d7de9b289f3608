"""The TUN device ``pyipsec0``: open a queue, set MTU/state, read and write IP packets.

The kernel routes packets that need protection into the TUN device (policy routing on the
fwmark set by nftables); the data plane reads them as plain IP packets (IFF_TUN|IFF_NO_PI),
and writes decapsulated packets back, which the kernel then delivers as if they had arrived
on ``pyipsec0``.

One queue is opened (IFF_MULTI_QUEUE is set so that more can be attached later). Both
direction workers share that one descriptor: the outbound worker reads it, the inbound worker
writes it. Two queues would not split the directions: the tun driver steers a flow's
outbound packets to the queue that last *wrote* a packet of that flow (its symmetric flow
hash), so a queue owned by the inbound writer would receive outbound packets.

With ``offload=True`` (the data plane's default) the queue uses IFF_VNET_HDR:
:meth:`Tun.write_batch` merges runs of one TCP flow into GSO super-packets
(:mod:`pyipsec.platform.linux.offload`). With ``tso=True`` as well (not the default: the
Python per-segment checksum costs more than it saves) the device announces checksum and
TCP segmentation offload, and reads return up to 64 KB TCP super-packets that
:meth:`Tun.read_batch` segments.

The descriptor is non-blocking (O_NONBLOCK is shared by every process holding it, so it is
set once here and never toggled): readers wait with epoll, then drain with
:meth:`Tun.read_batch`.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
from dataclasses import dataclass

from pyipsec.errors import MalformedPacket
from pyipsec.platform.linux import offload as offload_mod

TUNSETIFF = 0x400454CA
TUNSETPERSIST = 0x400454CB
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_MULTI_QUEUE = 0x0100
IFF_VNET_HDR = 0x4000

DEFAULT_NAME = "pyipsec0"
MAX_PACKET = 65535


@dataclass(frozen=True, slots=True)
class TunStatistics:
    """Counters of one TUN descriptor as seen by this process."""

    packets_read: int
    bytes_read: int
    packets_written: int
    bytes_written: int
    write_errors: int
    reads: int  #: read system calls that returned data (< packets_read with TSO)
    bad_offload_headers: int  #: reads whose virtio header could not be handled
    coalesced_writes: int  #: write system calls for batches (< packets_written with GRO)


class Tun:
    """One queue of a TUN device. ``fd`` is a plain file descriptor, inherited by workers."""

    def __init__(self, fd: int, name: str, *, vnet_hdr: bool = False) -> None:
        self.fd = fd
        self.name = name
        self.vnet_hdr = vnet_hdr
        self._pr = self._br = self._pw = self._bw = self._we = 0
        self._reads = self._bad = self._writes = 0

    @classmethod
    def open(
        cls,
        name: str = DEFAULT_NAME,
        *,
        multi_queue: bool = True,
        offload: bool = False,
        tso: bool = False,
    ) -> Tun:
        """Create (or attach to) the TUN device ``name`` and return its queue.

        ``offload``: IFF_VNET_HDR, so :meth:`write_batch` can hand the kernel coalesced
        GSO super-packets. ``tso`` (needs ``offload``): also announce checksum and TCP
        segmentation offload (TSO4/TSO6), so reads return super-packets that
        :meth:`read_batch` segments in Python (:mod:`pyipsec.platform.linux.offload`).
        Without ``tso`` the kernel segments and checksums in C before the TUN sees the
        packets; measured here, that is cheaper than the Python per-segment checksum
        (3.3 us per 1448 bytes, more than the 1.5 us read it saves): see bench/README.md.
        """
        if tso and not offload:
            raise ValueError("tso needs offload (IFF_VNET_HDR)")
        if len(name.encode()) >= 16:
            raise ValueError(f"interface name too long: {name!r}")
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        flags = IFF_TUN | IFF_NO_PI | (IFF_MULTI_QUEUE if multi_queue else 0)
        if offload:
            flags |= IFF_VNET_HDR
        ifr = struct.pack("16sH22x", name.encode(), flags)
        try:
            fcntl.ioctl(fd, TUNSETIFF, ifr)
            if offload:
                fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", offload_mod.VNET_HDR_LEN))
                features = 0
                if tso:
                    features = offload_mod.TUN_F_CSUM | offload_mod.TUN_F_TSO4
                    features |= offload_mod.TUN_F_TSO6
                fcntl.ioctl(fd, TUNSETOFFLOAD, features)
        except OSError:
            os.close(fd)
            raise
        os.set_inheritable(fd, True)
        return cls(fd, name, vnet_hdr=offload)

    def read_batch(self, limit: int = 64) -> list[bytes]:
        """Read up to ``limit`` times without blocking (empty list: nothing queued).

        With offloads each read may yield many packets (a segmented super-packet);
        malformed offload headers are counted and skipped.
        """
        out: list[bytes] = []
        read = os.read
        fd = self.fd
        n = 0
        try:
            if self.vnet_hdr:
                split = offload_mod.split
                append = out.append
                while n < limit:
                    buf = read(fd, MAX_PACKET + offload_mod.VNET_HDR_LEN)
                    n += 1
                    # no GSO, checksum complete (the default without TSO): skip the header
                    if not buf[1] and not buf[0] & offload_mod.F_NEEDS_CSUM and len(buf) > 30:
                        append(buf[offload_mod.VNET_HDR_LEN :])
                        continue
                    try:
                        out += split(buf)
                    except MalformedPacket:
                        self._bad += 1
            else:
                while n < limit:
                    out.append(read(fd, MAX_PACKET))
                    n += 1
        except BlockingIOError:
            pass
        if out:
            self._reads += n
            self._pr += len(out)
            self._br += sum(map(len, out))
        return out

    def write(self, packet: bytes) -> None:
        """Write one IP packet into the kernel. A rejected packet is counted, not raised."""
        try:
            if self.vnet_hdr:
                os.writev(self.fd, (offload_mod.WRITE_HEADER, packet))
            else:
                os.write(self.fd, packet)
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.EIO, errno.EAGAIN, errno.ENOBUFS, errno.EBADFD):
                self._we += 1
                return
            raise
        self._pw += 1
        self._bw += len(packet)

    def write_batch(self, packets: list[bytes]) -> None:
        """Write decapsulated packets; with offloads, runs of one TCP flow are merged into
        GSO super-packets first (:func:`pyipsec.platform.linux.offload.coalesce_iov`),
        one ``writev`` each."""
        if not self.vnet_hdr:
            for p in packets:
                self.write(p)
            return
        writev = os.writev
        fd = self.fd
        for iov in offload_mod.coalesce_iov(packets):
            try:
                writev(fd, iov)
            except OSError as exc:
                if exc.errno in (errno.EINVAL, errno.EIO, errno.EAGAIN, errno.ENOBUFS):
                    self._we += 1
                    continue
                raise
            self._writes += 1
        self._pw += len(packets)
        self._bw += sum(map(len, packets))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def statistics(self) -> TunStatistics:
        return TunStatistics(
            self._pr, self._br, self._pw, self._bw, self._we, self._reads, self._bad,
            self._writes,
        )  # fmt: skip
