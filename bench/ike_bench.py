"""IKEv2 handshakes per second in memory: IKE_SA_INIT + IKE_AUTH (PSK, one Child SA),
initiator and responder in one process, datagrams handed over directly (no loss).

Variants: x25519 + AES-GCM-16 (the headline figure, printed last as
``ike handshakes/s: N``) and the same with ML-KEM-768 as an additional key exchange
(IKE_INTERMEDIATE, RFC 9370). Usage: python bench/ike_bench.py [seconds per variant]

Both wall-clock and CPU-time rates are printed; the last line gives handshakes per CPU
second of this (single-threaded) process, which stays meaningful on a busy shared host.
"""

from __future__ import annotations

import sys
import time

from pyipsec.ike.config import AuthConfig, ChildConfig, EndpointConfig, PeerConfig
from pyipsec.ike.endpoint import IkeEndpoint
from pyipsec.ike.events import ChildSaInstalled

A, B = ("192.0.2.1", 500), ("192.0.2.2", 500)
PSK = AuthConfig(psk=b"benchmark pre-shared key")


def endpoints(proposal: str) -> tuple[IkeEndpoint, IkeEndpoint, PeerConfig]:
    child = ChildConfig("c", esp_proposals=("aes128gcm16-esn",))
    pa = PeerConfig(
        "b",
        remote_addrs=(B[0],),
        ike_proposals=(proposal,),
        local_auth=PSK,
        remote_auth=PSK,
        children=(child,),
    )
    pb = PeerConfig(
        "a",
        remote_addrs=(A[0],),
        ike_proposals=(proposal,),
        local_auth=PSK,
        remote_auth=PSK,
        children=(child,),
    )
    a = IkeEndpoint(EndpointConfig(peers=(pa,), local_addr=A[0], cookie_threshold=10**9))
    b = IkeEndpoint(EndpointConfig(peers=(pb,), local_addr=B[0], cookie_threshold=10**9))
    return a, b, pa


def handshake(a: IkeEndpoint, b: IkeEndpoint, peer: PeerConfig, now: float) -> None:
    a.initiate(peer, peer.children[0], now)
    done = 0
    while done < 2:
        moved = False
        for src, dst, src_addr in ((a, b, A), (b, a, B)):
            for data, _ in src.datagrams_to_send(now):
                dst.receive_datagram(data, src_addr, now)
                moved = True
        for ep in (a, b):
            while (ev := ep.next_event()) is not None:
                if isinstance(ev, ChildSaInstalled):
                    done += 1
        if not moved and done < 2:
            raise RuntimeError("handshake stalled")


def measure(proposal: str, seconds: float) -> tuple[float, float]:
    """(handshakes per wall-clock second, handshakes per CPU second of this process)."""
    a, b, peer = endpoints(proposal)
    now = 1_760_000_000.0
    handshake(a, b, peer, now)  # warm up
    n = 0
    start, cpu0 = time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        for _ in range(20):
            handshake(a, b, peer, now)
        n += 20
        if n % 1000 == 0:  # keep the SA tables small
            a, b, peer = endpoints(proposal)
    wall = time.perf_counter() - start
    cpu = time.process_time() - cpu0
    return n / wall, n / cpu


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 3.0
    h_wall, h_cpu = measure("aes128gcm16-prfsha256-x25519-mlkem768", seconds)
    print(
        f"x25519 + ML-KEM-768 (IKE_INTERMEDIATE), PSK, aes128gcm16: {h_wall:.0f} handshakes/s "
        f"wall clock, {h_cpu:.0f} per CPU second"
    )
    p_wall, p_cpu = measure("aes128gcm16-prfsha256-x25519", seconds)
    print(
        f"x25519, PSK, aes128gcm16, one Child SA: {p_wall:.0f} handshakes/s wall clock, "
        f"{p_cpu:.0f} per CPU second ({1000 / p_cpu:.2f} ms CPU per handshake, both sides)"
    )
    # the machine is shared: CPU time of this process is the reproducible figure
    print(f"ike handshakes/s: {p_cpu:.0f}")


if __name__ == "__main__":
    main()
