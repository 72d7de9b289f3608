"""A small IKE peer around IkeEndpoint with real UDP sockets, for interop tests.

Run inside a network namespace (``ip netns exec NS python swan_peer.py ...``): binds UDP
500 and 4500 on ``--local``, initiates to (or waits for) ``--remote``, performs the
``--actions`` in order once the first Child SA is up, and prints one JSON line per IKE
event (never key material), then ``{"done": true}`` or ``{"timeout": ...}``.
"""

from __future__ import annotations

import argparse
import json
import select
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from pyipsec.ike import (  # noqa: E402
    AuthConfig,
    ChildConfig,
    EndpointConfig,
    IkeEndpoint,
    IkeSaUp,
    PeerConfig,
)
from pyipsec.ike.events import (  # noqa: E402
    ChildSaDeleted,
    ChildSaInstalled,
    ChildSaRekeyed,
    IkeSaDown,
    IkeSaRekeyed,
)

MARKER = b"\0\0\0\0"


def describe(ev: object) -> dict:
    out: dict = {"event": type(ev).__name__}
    for name in getattr(type(ev), "__dataclass_fields__", {}):
        if "key" in name:
            continue
        value = getattr(ev, name)
        out[name] = (
            value if isinstance(value, int | str | bool | float) or value is None else str(value)
        )
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--local", required=True)
    ap.add_argument("--remote", required=True)
    ap.add_argument("--psk", required=True)
    ap.add_argument("--local-id", required=True)
    ap.add_argument("--remote-id", required=True)
    ap.add_argument("--proposal", default="aes128gcm16-prfsha256-x25519")
    ap.add_argument("--esp", default="aes128gcm16")
    ap.add_argument("--local-ts", default="dynamic")
    ap.add_argument("--remote-ts", default="dynamic")
    ap.add_argument("--mode", default="tunnel")
    ap.add_argument("--initiate", action="store_true")
    ap.add_argument("--actions", default="")
    ap.add_argument("--timeout", type=float, default=30.0)
    ap.add_argument("--cert-dir", default="", help="key.pem, cert.pem, chain.pem, ca.pem")
    args = ap.parse_args()

    local_auth = remote_auth = AuthConfig(psk=bytes.fromhex(args.psk))
    if args.cert_dir:
        from cryptography import x509
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        d = Path(args.cert_dir)
        key = load_pem_private_key((d / "key.pem").read_bytes(), None)
        chain = (
            x509.load_pem_x509_certificate((d / "cert.pem").read_bytes()),
            *x509.load_pem_x509_certificates((d / "chain.pem").read_bytes()),
        )
        ca = x509.load_pem_x509_certificate((d / "ca.pem").read_bytes())
        local_auth = AuthConfig(method="pubkey", private_key=key, cert_chain=chain)
        remote_auth = AuthConfig(method="pubkey", trusted_cas=(ca,))
    child = ChildConfig(
        "t-c",
        local_ts=(args.local_ts,),
        remote_ts=(args.remote_ts,),
        mode=args.mode,
        esp_proposals=(args.esp,),
    )
    peer = PeerConfig(
        "t",
        remote_addrs=(args.remote,),
        local_addr=args.local,
        ike_proposals=(args.proposal,),
        local_auth=local_auth,
        remote_auth=remote_auth,
        local_id=args.local_id,
        remote_id=args.remote_id,
        children=(child,),
        retransmit_timeout=1.0,
        retransmit_tries=3,
    )
    ep = IkeEndpoint(EndpointConfig(peers=(peer,), local_addr=args.local))
    socks = {}
    for port in (500, 4500):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((args.local, port))
        socks[port] = s
    actions = [a for a in args.actions.split(",") if a]
    handle = None
    waiting_for: type | None = ChildSaInstalled
    if args.initiate:
        handle = ep.initiate(peer, child, time.time())
    deadline = time.time() + args.timeout

    def flush() -> None:
        for data, dst, local in ep.datagrams_to_send_from(time.time()):
            port = local[1] if local else (4500 if dst[1] == 4500 else 500)
            socks[port].sendto(MARKER + data if port == 4500 else data, dst)

    while time.time() < deadline:
        flush()
        while (ev := ep.next_event()) is not None:
            print(json.dumps(describe(ev)), flush=True)
            if isinstance(ev, IkeSaUp):
                handle = ev.ike_sa
            if waiting_for is not None and isinstance(ev, waiting_for):
                waiting_for = None
        if waiting_for is None:
            if not actions:
                print(json.dumps({"done": True}), flush=True)
                return 0
            action = actions.pop(0)
            now = time.time()
            if action == "rekey_child":
                ep.rekey_child(handle, "t-c", now)
                waiting_for = ChildSaRekeyed
            elif action == "rekey_ike":
                ep.rekey_ike(handle, now)
                waiting_for = IkeSaRekeyed
            elif action == "delete_child":
                ep.delete_child(handle, "t-c", now)
                waiting_for = ChildSaDeleted
            elif action == "delete_ike":
                ep.delete_ike(handle, now)
                waiting_for = IkeSaDown
            elif action.startswith("wait_"):
                waiting_for = {
                    "wait_rekeyed": ChildSaRekeyed,
                    "wait_ike_rekeyed": IkeSaRekeyed,
                    "wait_down": IkeSaDown,
                }[action]
            flush()
            continue
        timer = ep.get_timer()
        wait = 0.2 if timer is None else max(0.0, min(0.2, timer - time.time()))
        ready, _, _ = select.select(list(socks.values()), [], [], wait)
        for s in ready:
            data, src = s.recvfrom(65535)
            port = s.getsockname()[1]
            if port == 4500:
                if data[:4] != MARKER:
                    continue  # ESP: not for us
                data = data[4:]
            ep.receive_datagram(data, src, time.time(), local_addr=(args.local, port))
        now = time.time()
        timer = ep.get_timer()
        if timer is not None and timer <= now:
            ep.handle_timer(now)
    print(json.dumps({"timeout": str(waiting_for)}), flush=True)
    return 1


if __name__ == "__main__":
    sys.exit(main())
