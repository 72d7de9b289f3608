"""Cost of IKEv2 key exchange methods through pyipsec.crypto.ke (printed, not asserted).

For each method: one full exchange (initiator new() + public_value(), responder respond(),
initiator complete()), and the responder's share of it (respond() alone, what a gateway pays
per IKE_SA_INIT). ML-KEM also shows keygen / encapsulate / decapsulate separately.

    python bench/ke_bench.py [--seconds 0.5]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from pyipsec.crypto.ke import ke_by_id
from pyipsec.wire.iana import KeId


def per_call(fn: Callable[[], object], seconds: float) -> float:
    """µs per call: the best batch of 10 calls seen within ``seconds``.

    The host is shared (2 cores, other jobs), so the minimum over batches is the figure least
    disturbed by other processes; it is what one call costs on an idle core.
    """
    fn()  # warm up
    best = float("inf")
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        for _ in range(10):
            fn()
        best = min(best, (time.perf_counter() - t0) / 10)
    return best * 1e6


def full_exchange(ke_id: KeId) -> Callable[[], object]:
    ke = ke_by_id(ke_id)

    def run() -> object:
        kx = ke.new()
        resp, ss = ke.respond(kx.public_value())
        assert kx.complete(resp) == ss
        return ss

    return run


def responder_only(ke_id: KeId) -> Callable[[], object]:
    ke = ke_by_id(ke_id)
    kei = ke.new().public_value()
    return lambda: ke.respond(kei)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=0.5, help="time per measurement")
    args = ap.parse_args()
    s = args.seconds
    methods = [
        ("x25519", KeId.CURVE25519),
        ("x448", KeId.CURVE448),
        ("ecp256", KeId.ECP256),
        ("ecp384", KeId.ECP384),
        ("modp2048", KeId.MODP2048),
        ("modp3072", KeId.MODP3072),
        ("mlkem768", KeId.ML_KEM_768),
        ("mlkem1024", KeId.ML_KEM_1024),
    ]
    print(f"{'method':<10} {'full exchange':>15} {'responder side':>15}")
    for name, ke_id in methods:
        full = per_call(full_exchange(ke_id), s)
        resp = per_call(responder_only(ke_id), s)
        print(f"{name:<10} {full:>12.1f} µs {resp:>12.1f} µs")
    ke = ke_by_id(KeId.ML_KEM_768)
    kx = ke.new()
    ek = kx.public_value()
    ct, _ = ke.encapsulate(ek)
    keygen = per_call(lambda: ke.new().public_value(), s)
    encaps = per_call(lambda: ke.encapsulate(ek), s)
    decaps = per_call(lambda: kx.decapsulate(ct), s)
    print(
        f"mlkem768 parts: keygen {keygen:.1f} µs, encapsulate {encaps:.1f} µs, "
        f"decapsulate {decaps:.1f} µs"
    )


if __name__ == "__main__":
    main()
