"""Policy server capacity: how many host polls per second one server answers.

Builds a throwaway CA, a SQLite store holding one policy assigned to a group of hosts, and
runs the HTTPS policy server on 127.0.0.1 (ephemeral port). It then measures:

* ``sign``: building and signing one envelope (ECDSA P-256), in the server's process;
* ``verify``: a host's check of one envelope (chain to the CA, name, signature);
* ``poll``: one full ``PolicyClient.fetch`` (new TLS 1.3 connection with a client
  certificate, store lookup, signing, verification, validation by the policy loader, cache
  write), from 1 and from 4 client threads.

Client and server share the machine's cores, so the figures are a floor for the server.
Run: ``.venv/bin/python bench/policy_server_bench.py [--duration 3]``. The last line is
``policy polls/s (4 threads): N``; with a poll every 3 hours (the Windows default) one
server answers N * 10,800 hosts.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from pyipsec.pki.ca import (
    CertificateAuthority,
    load_certificate,
    load_private_key,
    make_csr,
    private_key_pem,
    write_private,
)
from pyipsec.policy.client import ClientConfig, PolicyClient
from pyipsec.policy.envelope import sign_envelope, verify_envelope
from pyipsec.policy.server import PolicyServer
from pyipsec.policy.store import PolicyStore

POLICY = """\
name: Web App Encrypt
description: bench
filter_lists:
  Web - DB traffic:
    filters:
      - source: 10.77.0.1
        destination: 10.77.0.2
rules:
  Web - DB:
    filter_list: Web - DB traffic
    filter_action: Require Security (Strict)
    authentication:
      - psk: web-db
"""


def _identity(ca: CertificateAuthority, d: Path, name: str, ips=()) -> tuple[Path, Path]:
    key, csr = make_csr(name, ips=ips)
    cert = ca.issue(csr, now=time.time())
    kp, cp = d / f"{name}.key", d / f"{name}.crt"
    write_private(kp, private_key_pem(key))
    cp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cp, kp


def _rate(fn, duration: float) -> tuple[int, float]:
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < duration:
        fn()
        n += 1
    return n, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=3.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pyi-bench-") as tmp:
        d = Path(tmp)
        ca = CertificateAuthority.init(d / "ca", "bench CA", now=time.time())
        scert, skey = _identity(ca, d, "policy-server", ips=["127.0.0.1"])
        store = PolicyStore(d / "store.db")
        now = time.time()
        store.create_policy("web", POLICY, author="bench", now=now)
        store.create_group("g", now=now)
        store.assign("web", "g", now=now)
        hosts = []
        for i in range(4):
            store.add_host("g", f"host{i}", now=now)
            hosts.append(_identity(ca, d, f"host{i}"))

        key, cert = load_private_key(skey), load_certificate(scert)
        env = sign_envelope(
            host="host0", name="web", version=1, text=POLICY, now=now, key=key, certificate=cert
        )
        n, t = _rate(
            lambda: sign_envelope(
                host="host0", name="web", version=1, text=POLICY, now=now, key=key, certificate=cert
            ),
            args.duration,
        )
        print(f"sign envelope:   {t / n * 1e6:8.1f} us")
        n, t = _rate(
            lambda: verify_envelope(
                env, ca=ca.certificate, now=now + 1, signer_name="127.0.0.1", host="host0"
            ),
            args.duration,
        )
        print(f"verify envelope: {t / n * 1e6:8.1f} us")

        server = PolicyServer(
            store,
            cert=scert,
            key=skey,
            ca=ca.cert_path,
            crl=ca.crl_path,
            listen="127.0.0.1",
            port=0,
        )
        server.start()
        url = f"https://127.0.0.1:{server.address[1]}"
        clients = [
            PolicyClient(
                ClientConfig(server=url, ca=ca.cert_path, cert=c, key=k, cache=d / f"cache{i}.json")
            )
            for i, (c, k) in enumerate(hosts)
        ]
        try:
            n, t = _rate(lambda: clients[0].fetch(time.time()), args.duration)
            print(f"poll, 1 thread:  {t / n * 1e3:8.2f} ms  ({n / t:.0f} polls/s)")
            counts = [0] * len(clients)

            def worker(i: int, stop: float) -> None:
                while time.perf_counter() < stop:
                    clients[i].fetch(time.time())
                    counts[i] += 1

            stop = time.perf_counter() + args.duration
            threads = [threading.Thread(target=worker, args=(i, stop)) for i in range(4)]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            stats = server.statistics()
            assert stats.tls_failures == 0, stats
            print(f"policy polls/s (4 threads): {sum(counts) / args.duration:.0f}")
        finally:
            server.shutdown()
            store.close()


if __name__ == "__main__":
    main()
