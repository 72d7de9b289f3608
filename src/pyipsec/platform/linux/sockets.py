"""Sockets of the data plane: raw IP for ESP/AH, UDP 4500 for ESP-in-UDP (RFC 3948).

Every socket carries SO_MARK (``socket_mark``) so the nftables output chain accepts the data
plane's own packets first and they never loop back into the TUN device.

* Sending whole ESP/AH packets: ``AF_INET``/``AF_INET6`` ``SOCK_RAW`` ``IPPROTO_RAW``; the
  header is included (IPv6 IPPROTO_RAW sockets imply IPV6_HDRINCL), so AH's ICV over the
  exact header stays valid. A batch goes out in one ``sendmmsg(2)`` (:class:`RawBatchSender`,
  libc's through ctypes: the socket module has none).
* Receiving ESP (50) and AH (51): raw sockets of those protocols. IPv4 delivers the IP header
  with the payload; IPv6 does not, so the destination address comes from IPV6_PKTINFO. Having
  such a socket open also stops the kernel's ICMP protocol-unreachable answers.
* ESP-in-UDP: one UDP socket per family bound to port 4500, used by both workers (the
  inbound worker receives, the outbound worker sends). Sending batches uses UDP_SEGMENT
  (GSO: one ``sendmsg`` for up to 64 equal-size datagrams); receiving uses UDP_GRO (the
  kernel coalesces datagrams of one flow; a cmsg gives the segment size). UDP_ENCAP is NOT
  set: the kernel has no ESP, the socket must stay an ordinary UDP socket.

Descriptors are blocking (O_NONBLOCK would be shared by both workers); reads that must not
block pass MSG_DONTWAIT.
"""

from __future__ import annotations

import ctypes
import errno
import socket
import struct
from collections.abc import Iterable
from typing import Any

SO_MARK = 36
SOL_UDP = 17
UDP_SEGMENT = 103
UDP_GRO = 104
IP_PKTINFO = 8
IPV6_RECVPKTINFO = 49
IPV6_PKTINFO = 50
IPV6_MTU = 24
IP_MTU = 14
IPV6_RECVHOPOPTS = 53
IPV6_HOPOPTS = 54
IPV6_RECVRTHDR = 56
IPV6_RTHDR = 57
IPV6_RECVDSTOPTS = 58
IPV6_DSTOPTS = 59
IPPROTO_ESP = 50
IPPROTO_AH = 51
GSO_MAX_SEGMENTS = 64
GSO_MAX_BYTES = 65507
_CMSG_SPACE = socket.CMSG_SPACE(64) * 2
_U16 = struct.Struct("=H")
_AF_INET = int(socket.AF_INET)
_AF_INET6 = int(socket.AF_INET6)
_I32 = struct.Struct("=i")


def _marked(sock: socket.socket, mark: int) -> socket.socket:
    sock.setsockopt(socket.SOL_SOCKET, SO_MARK, mark)
    sock.set_inheritable(True)
    return sock


def open_raw_sender(family: int, mark: int) -> socket.socket:
    """Raw socket that sends complete IP packets (header included)."""
    sock = socket.socket(family, socket.SOCK_RAW, socket.IPPROTO_RAW)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    return _marked(sock, mark)


def open_raw_receiver(family: int, proto: int, mark: int) -> socket.socket:
    """Raw socket receiving every packet of ``proto`` (50 ESP, 51 AH) sent to this host."""
    sock = socket.socket(family, socket.SOCK_RAW, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, 1)
        if proto == IPPROTO_AH:  # the headers AH's ICV covers: see recv_ah6
            for opt in (IPV6_RECVHOPOPTS, IPV6_RECVDSTOPTS, IPV6_RECVRTHDR):
                sock.setsockopt(socket.IPPROTO_IPV6, opt, 1)
    return _marked(sock, mark)


def open_udp_encap(family: int, mark: int, port: int = 4500, *, gro: bool = True) -> socket.socket:
    """UDP socket bound to ``port`` for ESP-in-UDP, with packet info (and GRO) enabled."""
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, 1)
        sock.bind(("::", port))
    else:
        sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        sock.bind(("0.0.0.0", port))
    if gro:
        try:
            sock.setsockopt(SOL_UDP, UDP_GRO, 1)
        except OSError:
            pass  # old kernel: every datagram arrives alone, still correct
    return _marked(sock, mark)


def _pktinfo_dst(ancdata: list, family: int) -> tuple[bytes | None, int]:
    """Destination address (IP_PKTINFO / IPV6_PKTINFO, packed) and GRO segment size."""
    dst = None
    seg = 0
    for level, kind, data in ancdata:
        if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(data) >= 12:
            dst = data[8:12]  # ipi_addr: the header's destination
        elif level == socket.IPPROTO_IPV6 and kind == IPV6_PKTINFO and len(data) >= 16:
            dst = data[:16]
        elif level == SOL_UDP and kind == UDP_GRO:
            seg = _I32.unpack_from(data)[0] if len(data) >= 4 else _U16.unpack_from(data)[0]
    return dst, seg


def recv_raw4(sock: socket.socket, limit: int) -> list[bytes]:
    """Up to ``limit`` IPv4 packets (with header) from a raw socket, without blocking."""
    out: list[bytes] = []
    recv = sock.recv
    try:
        while len(out) < limit:
            out.append(recv(65535, socket.MSG_DONTWAIT))
    except BlockingIOError:
        pass
    return out


def recv_with_addrs(
    sock: socket.socket, limit: int, ports: list[int] | None = None
) -> list[tuple[bytes, bytes, bytes]]:
    """Up to ``limit`` (payload, src, dst) from an IPv6 raw socket or a UDP socket;
    addresses are packed (4 or 16 bytes), as the SA takes them without parsing.

    UDP_GRO super-datagrams are split into their segments here. With ``ports`` (a list,
    UDP sockets), the source port of each item is appended to it, index for index: a peer
    behind a NAT sends from whatever port its NAT mapped 4500 to, and IKE replies and
    ESP-in-UDP must go back there (RFC 7296 2.23, RFC 3948 2.1). The items stay triples
    (what the SA batch code unpacks); the ports cost one list append per system call
    (all segments of a GRO super-datagram come from one source port).
    """
    out: list[tuple[bytes, bytes, bytes]] = []
    recvmsg = sock.recvmsg
    pton = socket.inet_pton
    while len(out) < limit:
        try:
            data, anc, _flags, addr = recvmsg(65535, _CMSG_SPACE, socket.MSG_DONTWAIT)
        except BlockingIOError:
            break
        # the family from the address tuple (sock.family builds an IntEnum on every call)
        family = _AF_INET6 if len(addr) == 4 else _AF_INET
        dst, seg = _pktinfo_dst(anc, family)
        src = pton(family, addr[0].partition("%")[0])
        if dst is None:
            dst = bytes(16 if family == _AF_INET6 else 4)
        if seg and len(data) > seg:
            n = len(out)
            for off in range(0, len(data), seg):
                out.append((data[off : off + seg], src, dst))
            if ports is not None:
                ports += [addr[1]] * (len(out) - n)
        else:
            out.append((data, src, dst))
            if ports is not None:
                ports.append(addr[1])
    return out


_EXT_CMSG = {IPV6_HOPOPTS: 0, IPV6_RTHDR: 43, IPV6_DSTOPTS: 60}
_EXT_CMSG_SPACE = socket.CMSG_SPACE(2048) * 3 + socket.CMSG_SPACE(20)
_V6HDR = struct.Struct("!IHBB16s16s")


def recv_ah6(sock: socket.socket, limit: int) -> list[bytes]:
    """Up to ``limit`` whole IPv6 packets carrying AH from an IPv6 raw AH socket
    (:func:`open_raw_receiver`), without blocking.

    An IPv6 raw socket hands over the bytes from AH on; AH's ICV also covers the
    extension headers in front of it (RFC 4302 3.3.3.1.2). The socket asks for them as
    ancillary data (IPV6_RECVHOPOPTS / RECVDSTOPTS / RECVRTHDR: the kernel reports them
    in packet order, each with its own Next Header byte) and the header chain is rebuilt
    here: the fixed header from the addresses, with traffic class, flow label and hop
    limit (mutable, zeroed for the ICV) as 0 / 0 / 64. The kernel reassembled fragments
    before delivery and removed the fragment header, which the ICV never covers."""
    out: list[bytes] = []
    recvmsg = sock.recvmsg
    pton = socket.inet_pton
    ipv6 = socket.IPPROTO_IPV6
    while len(out) < limit:
        try:
            data, anc, _flags, addr = recvmsg(65535, _EXT_CMSG_SPACE, socket.MSG_DONTWAIT)
        except BlockingIOError:
            break
        dst = bytes(16)
        exts = []
        nh = IPPROTO_AH
        for level, kind, cdata in anc:
            if level != ipv6:
                continue
            if kind == IPV6_PKTINFO and len(cdata) >= 16:
                dst = cdata[:16]
            elif kind in _EXT_CMSG:
                if not exts:
                    nh = _EXT_CMSG[kind]
                exts.append(cdata)
        body = b"".join((*exts, data)) if exts else data
        src = pton(_AF_INET6, addr[0].partition("%")[0])
        out.append(_V6HDR.pack(6 << 28, len(body), nh, 64, src, dst) + body)
    return out


def send_gso(sock: socket.socket, datagrams: list[bytes], addr: tuple, *, gso: bool = True) -> int:
    """Send ``datagrams`` to ``addr``; runs of equal size (the last may be shorter) go out
    in one ``sendmsg`` with UDP_SEGMENT. Returns the number of system calls made."""
    calls = 0
    n = len(datagrams)
    i = 0
    sendto = sock.sendto
    while i < n:
        size = len(datagrams[i])
        j = i + 1
        total = size
        if gso:
            while (
                j < n
                and j - i < GSO_MAX_SEGMENTS
                and total + len(datagrams[j]) <= GSO_MAX_BYTES
                and len(datagrams[j - 1]) == size
                and len(datagrams[j]) <= size
            ):
                total += len(datagrams[j])
                j += 1
        try:
            if j - i == 1:
                sendto(datagrams[i], addr)
            else:
                # the datagrams as separate buffers (one iovec each): no join copy; the
                # kernel cuts the gathered bytes every ``size`` bytes
                sock.sendmsg(datagrams[i:j], [(SOL_UDP, UDP_SEGMENT, _U16.pack(size))], 0, addr)
        except (BlockingIOError, ConnectionRefusedError):
            pass  # full buffer or an old ICMP error: the datagrams are lost, as on a wire
        calls += 1
        i = j
    return calls


# --------------------------------------------------------------------------- sendmmsg


class _Iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _Msghdr(ctypes.Structure):
    _fields_ = [
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.c_void_p),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    ]


class _Mmsghdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _Msghdr), ("msg_len", ctypes.c_uint)]


def _bytes_data_offset() -> int:
    """Offset of a ``bytes`` object's data from its ``id()`` (CPython: 32 on 64-bit),
    checked against what ctypes itself reports for a probe; -1 when they disagree."""
    probe = bytes(range(7)) * 3
    addr = ctypes.cast(ctypes.c_char_p(probe), ctypes.c_void_p).value or 0
    off = addr - id(probe)
    return off if 0 < off < 128 and ctypes.string_at(id(probe) + off, 21) == probe else -1


def _load_sendmmsg() -> object | None:
    try:
        fn = ctypes.CDLL(None, use_errno=True).sendmmsg
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


_SENDMMSG = _load_sendmmsg()
#: below this many packets per call ``sendto`` is as cheap (measured over a veth: 1.5 us
#: per packet saved at 64 packets, 0.4 us lost at 1 packet, even at 2-4)
MMSG_MIN = 4
_BYTES_OFF = _bytes_data_offset()


class RawBatchSender:
    """Whole IP packets to one destination through ``sendmmsg(2)``: one system call for
    up to ``batch`` packets on a raw IPPROTO_RAW socket (header included).

    Python's socket module has no ``sendmmsg``; this calls libc's through ctypes with
    an ``mmsghdr``/``iovec`` array allocated once and reused. Each ``iovec`` points at
    the ``bytes`` object's own buffer (no copy): only its address and length are written
    per packet, through a ``memoryview`` over the array (two item stores). The caller's
    list keeps the packets alive during the call. Every message names the same
    ``sockaddr`` buffer, rewritten when the destination changes.

    A packet the kernel refuses (EMSGSIZE, EPERM from the firewall, ...) costs only
    itself: ``sendmmsg`` returns how many went out before it, the refused one is counted
    and skipped, and the rest go out in the next call. Without ``sendmmsg`` (old libc,
    ENOSYS, a non-CPython ``bytes`` layout) every packet goes out with ``sendto``.
    """

    def __init__(self, sock: socket.socket, batch: int = GSO_MAX_SEGMENTS) -> None:
        self.sock = sock
        self.batch = batch
        self.family = int(sock.family)
        self.calls = 0  #: system calls made (sendmmsg or sendto)
        #: packets refused as larger than the route's MTU (EMSGSIZE), not counted as
        #: errors: the caller fragments them (header-included sockets never do) or counts
        self.too_big: list[bytes] = []
        self._fd = sock.fileno()
        self._fn = _SENDMMSG if _BYTES_OFF > 0 else None
        self._dst: str | None = None
        self._name = ctypes.create_string_buffer(28)  # sockaddr_in6 is the larger
        self._iov = (_Iovec * batch)()
        self._msgs = (_Mmsghdr * batch)()
        base = ctypes.addressof(self._iov)
        size = ctypes.sizeof(_Iovec)
        for i in range(batch):
            hdr = self._msgs[i].msg_hdr
            hdr.msg_name = ctypes.addressof(self._name)
            hdr.msg_iov = base + i * size
            hdr.msg_iovlen = 1
        # the iovecs as unsigned 64-bit words: base, length, base, length, ...
        self._msgs_addr = ctypes.addressof(self._msgs)
        self._words = memoryview(self._iov).cast("B").cast("Q") if size == 16 else None
        if self._words is None:
            self._fn = None

    @property
    def batched(self) -> bool:
        """Whether sends go through ``sendmmsg`` (False: the ``sendto`` fallback)."""
        return self._fn is not None

    def _set_dst(self, dst: str) -> bool:
        """Write ``dst`` into the shared sockaddr; False for what only ``sendto`` can
        parse (a scoped ``fe80::1%eth0``, a name)."""
        try:
            packed = socket.inet_pton(self.family, dst)
        except (OSError, ValueError):
            return False
        if self.family == _AF_INET6:
            addr = struct.pack("=HHI16sI", _AF_INET6, 0, 0, packed, 0)
        else:
            addr = struct.pack("=HH4s8x", _AF_INET, 0, packed)
        ctypes.memmove(self._name, addr, len(addr))
        for i in range(self.batch):
            self._msgs[i].msg_hdr.msg_namelen = len(addr)
        self._dst = dst
        return True

    def send(self, packets: list[bytes], dst: str) -> int:
        """Send ``packets`` (``bytes`` each) to ``dst``; returns how many the kernel
        refused (each counted once, the others still sent; those too large for the
        route are put in :attr:`too_big` instead). Fewer than
        :data:`MMSG_MIN` packets go out with ``sendto``: the ctypes call costs more
        than the system calls it would save."""
        if self._fn is None or len(packets) < MMSG_MIN:
            return self._send_each(packets, dst, 0)
        if dst != self._dst:
            if not self._set_dst(dst):
                return self._send_each(packets, dst, 0)
        words = self._words
        off = _BYTES_OFF
        fd = self._fd
        fn = self._fn
        msgs = self._msgs_addr
        n = len(packets)
        batch = self.batch
        errors = 0
        i = 0
        while i < n:
            k = n - i if n - i < batch else batch
            w = 0
            for p in packets[i : i + k]:
                if type(p) is not bytes:  # only bytes has the layout the offset is for
                    return errors + self._send_each(packets, dst, i)
                words[w] = id(p) + off
                words[w + 1] = len(p)
                w += 2
            sent = fn(fd, msgs, k, 0)
            self.calls += 1
            if sent > 0:
                i += sent
                continue
            err = ctypes.get_errno()
            if err == errno.EINTR:
                continue
            if err == errno.ENOSYS:  # a kernel without sendmmsg: never try again
                self._fn = None
                return errors + self._send_each(packets, dst, i)
            if err == errno.EMSGSIZE:
                self.too_big.append(packets[i])  # the caller may fragment it
            else:
                errors += 1  # the first packet of this call was refused: skip it alone
            i += 1
        return errors

    def _send_each(self, packets: list[bytes], dst: str, start: int) -> int:
        self.calls += len(packets) - start
        return send_each(self.sock, packets[start:], dst, self.too_big)


def send_each(sock: Any, packets: list[bytes], dst: str, too_big: list[bytes]) -> int:
    """One ``sendto`` per whole IP packet to ``dst``; returns how many the kernel refused.
    Packets refused as larger than the route's MTU (EMSGSIZE) go to ``too_big`` instead,
    for the caller to fragment."""
    sendto = sock.sendto
    addr = (dst, 0)
    errors = 0
    for p in packets:
        try:
            sendto(p, addr)
        except OSError as exc:
            if exc.errno == errno.EMSGSIZE:
                too_big.append(p)
            else:
                errors += 1
    return errors


def route_mtu(dst: str, mark: int) -> int:
    """The MTU of the route to ``dst`` (IPv4 or IPv6 text) for packets carrying ``mark``:
    what a header-included send to it may not exceed. When unknown: 1280 for IPv6 (its
    minimum), 576 for IPv4 (the datagram size every host must accept)."""
    v6 = ":" in dst
    s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
    floor = 1280 if v6 else 576
    try:
        s.setsockopt(socket.SOL_SOCKET, SO_MARK, mark)
        s.connect((dst, 9))
        level, opt = (socket.IPPROTO_IPV6, IPV6_MTU) if v6 else (socket.IPPROTO_IP, IP_MTU)
        return max(floor, s.getsockopt(level, opt))
    except OSError:
        return floor
    finally:
        s.close()


def close_all(socks: Iterable[socket.socket]) -> None:
    for s in socks:
        try:
            s.close()
        except OSError:
            pass
