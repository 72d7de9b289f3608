"""Raw ESP send cost: one ``sendto`` per packet against ``sendmmsg`` batches.

Usage: ``.venv/bin/python bench/rawsend_bench.py [--packets 20000] [--size 1400]`` (root).

Builds two namespaces ``pyi-rsa`` / ``pyi-rsb`` joined by a veth (10.98.0.1 / 10.98.0.2;
B holds a raw protocol-50 socket open, as a data plane does, so the kernel does not
answer with ICMP), then from A sends header-included ESP packets through the data
plane's own sender (:func:`pyipsec.platform.linux.sockets.open_raw_sender` with SO_MARK)
packet by packet and through :class:`pyipsec.platform.linux.sockets.RawBatchSender`, for
batch sizes 1 to 64, interleaved, and prints microseconds per packet (min and median of
5 rounds). The time includes the kernel's work for each packet (output path, veth and
B's receive path, run in A's system call), which no batching removes. Namespaces and
the receiver are removed on exit.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

NS_A, NS_B = "pyi-rsa", "pyi-rsb"
A, B = "10.98.0.1", "10.98.0.2"

_SENDER = r"""
import socket, statistics, struct, sys, time
from pyipsec.platform.linux import sockets as sk
from pyipsec.wire.ip import ipv4_header_checksum

count, size, src, dst = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
tx = sk.open_raw_sender(socket.AF_INET, 0x42)

def packet(i):
    h = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, size, i & 0xFFFF, 0, 64, 50, 0,
                              socket.inet_aton(src), socket.inet_aton(dst)))
    struct.pack_into("!H", h, 10, ipv4_header_checksum(h))
    return bytes(h) + struct.pack("!II", 0x1234, i) + bytes(size - 28)

for batch in (1, 2, 4, 8, 16, 32, 64):
    pkts = [packet(i) for i in range(batch)]
    rb = sk.RawBatchSender(tx, 64)
    addr = (dst, 0)
    each = lambda: [tx.sendto(p, addr) for p in pkts]
    mmsg = lambda: rb.send(pkts, dst)
    calls = max(1, count // batch)
    res = {"sendto": [], "sendmmsg": []}
    for _ in range(5):
        for name, fn in (("sendto", each), ("sendmmsg", mmsg)):
            t = time.perf_counter()
            for _ in range(calls):
                fn()
            res[name].append((time.perf_counter() - t) / calls / batch * 1e6)
            time.sleep(0.02)
    line = "  ".join(f"{k} {min(v):5.2f} / {statistics.median(v):5.2f}" for k, v in res.items())
    note = "" if batch >= sk.MMSG_MIN else "   (the data plane uses sendto here)"
    print(f"batch {batch:2d}: {line}{note}", flush=True)
"""


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


def cleanup() -> None:
    for ns in (NS_A, NS_B):
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--packets", type=int, default=20000, help="packets per round and size")
    ap.add_argument("--size", type=int, default=1400, help="IP packet size in bytes")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    cleanup()
    rx = None
    try:
        for ns in (NS_A, NS_B):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "link", "add", "pyi-rs0", "netns", NS_A, "type", "veth",
           "peer", "name", "pyi-rs1", "netns", NS_B)  # fmt: skip
        for ns, dev, addr in ((NS_A, "pyi-rs0", A), (NS_B, "pyi-rs1", B)):
            sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
        keep = "import socket, time; s = socket.socket(socket.AF_INET, socket.SOCK_RAW, 50)"
        rx = subprocess.Popen(
            ["ip", "netns", "exec", NS_B, sys.executable, "-c", keep + "; time.sleep(3600)"]
        )
        time.sleep(0.5)
        print(f"us per {args.size}-byte packet, min / median of 5 rounds "
              f"(load {os.getloadavg()[0]:.2f})")  # fmt: skip
        res = subprocess.run(
            ["ip", "netns", "exec", NS_A, sys.executable, "-c", _SENDER,
             str(args.packets), str(args.size), A, B],
            text=True, capture_output=True,
        )  # fmt: skip
        print(res.stdout, end="")
        if res.returncode != 0:
            print(res.stderr, file=sys.stderr)
            return 1
        print(f"load at the end {os.getloadavg()[0]:.2f}")
        return 0
    finally:
        if rx is not None and rx.poll() is None:
            os.kill(rx.pid, signal.SIGTERM)
            rx.wait(5)
        cleanup()


if __name__ == "__main__":
    raise SystemExit(main())
