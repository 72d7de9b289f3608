"""Per-packet cost of SecurityAssociation.encapsulate/decapsulate against the raw
``cryptography`` call on the same payload.

For each algorithm and inner packet size (64, 512, 1400 bytes) it prints the
microseconds per packet of encapsulate and decapsulate (ESP tunnel mode over IPv4, the
data plane's configuration), and beside them the raw primitive work on the same inner
packet with cipher objects built once: AEAD encrypt/decrypt for GCM/ChaCha20-Poly1305,
GCM tag over the payload for GMAC, CBC update + pre-keyed HMAC copy for CBC/HMAC
suites. The last line is exactly::

    esp aes128gcm16 1400B overhead ratio: X.XX

(encapsulate + decapsulate time divided by raw encrypt + decrypt time; target <= 1.5).
Run: ``python bench/esp_bench.py`` (about 40 s). Each figure is the fastest of many
short batches, the four measurements interleaved (see :func:`measure`).
"""

from __future__ import annotations

import logging
import os
import struct
import sys
import time

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from pyipsec.crypto.esp_algorithms import ALGORITHMS
from pyipsec.ipsec import SecurityAssociation

ALGS = [
    "aes128gcm16",
    "aes256gcm16",
    "chacha20poly1305",
    "aes128gmac",
    "aes128-sha256",
    "aes256-sha512",
    "null-sha256",
    "3des-sha1",
]
SIZES = [64, 512, 1400]
BATCH = 200  # packets per timed batch
BATCHES = 250
perf = time.perf_counter


def inner_packet(size: int) -> bytes:
    hdr = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, size, 1, 0, 64, 17, 0, bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
    )
    return hdr + struct.pack("!HHHH", 1000, 2000, size - 20, 0) + bytes(size - 28)


def measure(kw, pkt, payload, renc, rdec, prep, n, nb):
    """Best per-packet microseconds of (encap, decap, raw encrypt, raw decrypt).

    The four are timed one after the other in every round, so that all of them see the
    same share of a shared CPU; each keeps its fastest round. Decapsulation needs fresh
    sequence numbers: one batch of packets, a fresh receiving SA every round (the
    packets stay warm in the cache, as the raw call's payload does).
    """
    sender = SecurityAssociation(0x1000, **kw)
    tx = SecurityAssociation(0x1000, **kw)
    wire = [tx.encapsulate(pkt) for _ in range(n)]
    plain = [pkt] * n
    raw_in = [payload] * n
    raw_ct = [prep(payload)] * n
    enc = sender.encapsulate
    best = [float("inf")] * 4
    for _ in range(nb):
        dec = SecurityAssociation(0x1000, **kw).decapsulate
        t0 = perf()
        for x in plain:
            enc(x)
        t1 = perf()
        for w in wire:
            dec(w)
        t2 = perf()
        for x in raw_in:
            renc(x)
        t3 = perf()
        for c in raw_ct:
            rdec(c)
        t4 = perf()
        for i, t in enumerate((t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            best[i] = min(best[i], t)
    assert dec(tx.encapsulate(pkt)) == pkt
    return [b / n * 1e6 for b in best]


def raw_pair(name: str, key: bytes):
    """(encrypt, decrypt) closures doing only the cryptographic work of one packet."""
    alg = ALGORITHMS[name]
    ek = key[: alg.encr_key_len]
    nonce = os.urandom(12)
    aad = os.urandom(8)
    if alg.kind in ("aead", "gmac"):
        aead = ChaCha20Poly1305(ek) if name.startswith("chacha") else AESGCM(ek)
        if alg.kind == "aead":

            def enc(p):
                return aead.encrypt(nonce, p, aad)

            def dec(c):
                return aead.decrypt(nonce, c, aad)

            return enc, dec, lambda p: aead.encrypt(nonce, p, aad)

        def genc(p):
            return aead.encrypt(nonce, b"", p)

        def gdec(pc):
            p, c = pc
            return aead.decrypt(nonce, c, p)

        return genc, gdec, lambda p: (p, aead.encrypt(nonce, b"", p))
    hname = name.rsplit("-", 1)[1]
    h = {
        "sha1": hashes.SHA1,
        "sha256": hashes.SHA256,
        "sha384": hashes.SHA384,
        "sha512": hashes.SHA512,
    }[hname]
    mac = hmac.HMAC(key[alg.encr_key_len :], h())
    bs = alg.block_size
    if alg.kind == "null":

        def nenc(p):
            m = mac.copy()
            m.update(p)
            return m.finalize()

        return nenc, nenc, lambda p: p
    cipher = algorithms.AES(ek) if name.startswith("aes") else TripleDES(ek)
    e = Cipher(cipher, modes.CBC(bytes(bs))).encryptor()
    d = Cipher(cipher, modes.CBC(bytes(bs))).decryptor()

    def cenc(p):
        c = e.update(p)
        m = mac.copy()
        m.update(c)
        return c, m.finalize()

    def cdec(c):
        m = mac.copy()
        m.update(c)
        m.finalize()
        return d.update(c)

    def prep(p):
        return e.update(p)

    return cenc, cdec, prep


def pad_to(p: bytes, bs: int) -> bytes:
    return p + bytes(-len(p) % bs)


def main() -> None:
    logging.getLogger("pyipsec").setLevel(logging.ERROR)  # no "weak algorithm" warnings
    print(
        f"{'algorithm':<18}{'size':>6}{'encap us':>10}{'raw enc':>9}{'decap us':>10}"
        f"{'raw dec':>9}{'ratio':>7}"
    )
    ratio_line = None
    for name in ALGS:
        alg = ALGORITHMS[name]
        key = os.urandom(alg.key_len)
        kw = dict(
            mode="tunnel",
            algorithm=name,
            key=key,
            tunnel_src="192.0.2.1",
            tunnel_dst="192.0.2.2",
            replay_window=4096,
        )
        for size in SIZES:
            pkt = inner_packet(size)
            n = BATCH
            nb = BATCHES // 10 if name.startswith("3des") else BATCHES  # 3DES is slow
            renc, rdec, prep = raw_pair(name, key)
            payload = pad_to(pkt, alg.block_size) if alg.kind == "cbc" else pkt
            t_enc, t_dec, t_renc, t_rdec = measure(kw, pkt, payload, renc, rdec, prep, n, nb)
            ratio = (t_enc + t_dec) / (t_renc + t_rdec)
            print(
                f"{name:<18}{size:>6}{t_enc:>10.2f}{t_renc:>9.2f}{t_dec:>10.2f}"
                f"{t_rdec:>9.2f}{ratio:>7.2f}"
            )
            sys.stdout.flush()
            if name == "aes128gcm16" and size == 1400:
                ratio_line = f"esp aes128gcm16 1400B overhead ratio: {ratio:.2f}"
    print(ratio_line)


if __name__ == "__main__":
    main()
