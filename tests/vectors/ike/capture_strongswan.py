"""Capture real IKEv2 exchanges between two strongSwan charons, with their IKE SA keys.

Run as root from the repository root (it makes namespaces pyi-h3a/pyi-h3b and removes them):

    .venv/bin/python tests/vectors/ike/capture_strongswan.py

For each scenario it writes ``strongswan_<name>.json`` next to this file: the IKE datagrams
seen on the veth (non-ESP marker removed on port 4500), who sent them, and SK_ei/SK_er/SK_ai/
SK_ar as charon logged them at ike log level 4. The PSK and keys belong to a throwaway session.
tests/wire/ike/test_strongswan_vectors.py parses and decrypts these messages.
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # tests/, for the strongSwan harness

import strongswan  # noqa: E402
from strongswan import Charon, Child, Connection, NetnsPair, Psk, start_capture  # noqa: E402

NS_A, NS_B = "pyi-h3a", "pyi-h3b"
A, B = "10.97.0.1", "10.97.0.2"
INNER_A, INNER_B = "10.97.1.1", "10.97.2.1"

SCENARIOS = {
    # AES-GCM-16 IKE SA; IKE_AUTH fragmented (RFC 7383) by a small fragment_size.
    "gcm_fragmented": dict(ike="aes128gcm16-prfsha256-x25519", fragment_size=160),
    # AES-CBC + HMAC-SHA2-256-128 IKE SA, unfragmented.
    "cbc_sha256": dict(ike="aes128-sha256-ecp256", fragment_size=1280),
}


class VerboseCharon(Charon):
    """A harness charon that logs IKE at level 4 (charon then dumps the SK_* keys)."""

    def write_config(self) -> None:
        super().write_config()
        conf = self.workdir / "strongswan.conf"
        conf.write_text(conf.read_text().replace("ike = 2", "ike = 4"))


def _keys(log: str) -> dict[str, str]:
    """SK_* secrets from a level-4 charon log ("Sk_ei secret => 20 bytes @ ..." + hexdump)."""
    keys: dict[str, str] = {}
    lines = log.splitlines()
    for i, line in enumerate(lines):
        m = re.search(r"Sk_(\w+) secret => (\d+) bytes", line)
        if not m:
            continue
        hexdigits = ""
        for follow in lines[i + 1 :]:
            d = re.search(r"\s\d+: ((?:[0-9A-F]{2} ?)+)", follow)
            if not d:
                break
            hexdigits += d.group(1).replace(" ", "")
        keys["sk_" + m.group(1)] = hexdigits[: 2 * int(m.group(2))].lower()
    return keys


def _datagrams(pcap: Path) -> list[dict]:
    from scapy.all import IP, UDP, rdpcap

    out = []
    for p in rdpcap(str(pcap)):
        if UDP not in p or not {p[UDP].sport, p[UDP].dport} & {500, 4500}:
            continue
        data = bytes(p[UDP].payload)
        if p[UDP].dport == 4500 or p[UDP].sport == 4500:
            if data[:4] != bytes(4):
                continue  # ESP-in-UDP, not IKE
            data = data[4:]
        sender = "initiator" if p[IP].src == A else "responder"
        out.append({"from": sender, "port": p[UDP].dport, "hex": data.hex()})
    return out


def capture(name: str, ike: str, fragment_size: int) -> None:
    psk = Psk(ids=("a.pyi", "b.pyi"), secret=os.urandom(32))

    def conn(local: str, remote: str, lid: str, rid: str, lin: str, rin: str) -> Connection:
        child = Child("c", [f"{lin}/32"], [f"{rin}/32"], esp_proposals=["aes128gcm16"])
        return Connection(
            "t", [local], [remote], lid, rid, [child], ike_proposals=[ike],
            encap=True, fragmentation="yes",
        )  # fmt: skip

    extra = f"    fragment_size = {fragment_size}\n"
    with tempfile.TemporaryDirectory() as tmp:
        pcap = Path(tmp) / "ike.pcap"
        with NetnsPair(NS_A, NS_B, veth_a="pyi-h3v0", veth_b="pyi-h3v1", addr_a=A, addr_b=B,
                       inner_a=INNER_A, inner_b=INNER_B):  # fmt: skip
            ca = VerboseCharon(NS_A, [conn(A, B, "a.pyi", "b.pyi", INNER_A, INNER_B)], [psk],
                               extra_conf=extra)  # fmt: skip
            cb = VerboseCharon(NS_B, [conn(B, A, "b.pyi", "a.pyi", INNER_B, INNER_A)], [psk],
                               extra_conf=extra)  # fmt: skip
            with ca, cb:
                cap = start_capture(NS_A, "pyi-h3v0", pcap)
                try:
                    ca.initiate("c")
                    cb.wait_established("c")
                    ca.terminate(ike="t")
                    time.sleep(0.5)
                finally:
                    strongswan.stop_process(cap)
                keys = _keys(ca.log_text())
        record = {
            "source": "strongSwan 5.9.8 charon (Debian), two namespaces, captured by "
            "tests/vectors/ike/capture_strongswan.py; throwaway PSK session",
            "ike_proposal": ike,
            "fragment_size": fragment_size,
            "keys": keys,
            "datagrams": _datagrams(pcap),
        }
    (HERE / f"strongswan_{name}.json").write_text(json.dumps(record, indent=1) + "\n")
    print(name, len(record["datagrams"]), "datagrams, keys:", sorted(keys))


if __name__ == "__main__":
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces)")
    for scenario, params in SCENARIOS.items():
        capture(scenario, **params)
