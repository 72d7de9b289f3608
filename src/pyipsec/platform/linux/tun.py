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


class Tun:
    """One queue of a TUN device. ``fd`` is a plain file descriptor, inherited by workers."""

    def __init__(self, fd: int, name: str) -> None:
        self.fd = fd
        self.name = name
        self._pr = self._br = self._pw = self._bw = self._we = 0

    @classmethod
    def open(cls, name: str = DEFAULT_NAME, *, multi_queue: bool = True) -> Tun:
        """Create (or attach to) the TUN device ``name`` and return its queue."""
        if len(name.encode()) >= 16:
            raise ValueError(f"interface name too long: {name!r}")
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        flags = IFF_TUN | IFF_NO_PI | (IFF_MULTI_QUEUE if multi_queue else 0)
        ifr = struct.pack("16sH22x", name.encode(), flags)
        try:
            fcntl.ioctl(fd, TUNSETIFF, ifr)
        except OSError:
            os.close(fd)
            raise
        os.set_inheritable(fd, True)
        return cls(fd, name)

    def read_batch(self, limit: int = 64) -> list[bytes]:
        """Read up to ``limit`` packets without blocking (empty list: nothing queued)."""
        out: list[bytes] = []
        read = os.read
        fd = self.fd
        try:
            while len(out) < limit:
                out.append(read(fd, MAX_PACKET))
        except BlockingIOError:
            pass
        if out:
            self._pr += len(out)
            self._br += sum(map(len, out))
        return out

    def write(self, packet: bytes) -> None:
        """Write one IP packet into the kernel. A rejected packet is counted, not raised."""
        try:
            os.write(self.fd, packet)
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.EIO, errno.EAGAIN, errno.ENOBUFS, errno.EBADFD):
                self._we += 1
                return
            raise
        self._pw += 1
        self._bw += len(packet)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def statistics(self) -> TunStatistics:
        return TunStatistics(self._pr, self._br, self._pw, self._bw, self._we)
