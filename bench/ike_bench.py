"""IKEv2 handshakes per second in memory: IKE_SA_INIT + IKE_AUTH (PSK, one Child SA),
initiator and responder in one process, datagrams handed over directly (no loss).

Variants: x25519 + AES-GCM-16 (the headline figure, printed last as
``ike handshakes/s: N``) and the same with ML-KEM-768 as an additional key exchange
(IKE_INTERMEDIATE, RFC 9370). Usage: python bench/ike_bench.py [seconds per variant]
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


def measure(proposal: str, seconds: float) -> float:
    a, b, peer = endpoints(proposal)
    now = 1_760_000_000.0
    handshake(a, b, peer, now)  # warm up
    n = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(20):
            handshake(a, b, peer, now)
        n += 20
        if n % 1000 == 0:  # keep the SA tables small
            a, b, peer = endpoints(proposal)
    return n / (time.perf_counter() - start)


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 3.0
    hybrid = measure("aes128gcm16-prfsha256-x25519-mlkem768", seconds)
    print(f"x25519 + ML-KEM-768 (IKE_INTERMEDIATE), PSK, aes128gcm16: {hybrid:.0f} handshakes/s")
    plain = measure("aes128gcm16-prfsha256-x25519", seconds)
    print(
        f"x25519, PSK, aes128gcm16, one Child SA: {plain:.0f} handshakes/s "
        f"({1000 / plain:.2f} ms per handshake, both sides)"
    )
    print(f"ike handshakes/s: {plain:.0f}")


if __name__ == "__main__":
    main()
