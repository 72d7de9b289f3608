"""pyipsec against strongSwan, end to end: pyipsec's IKEv2 negotiates with a real charon,
pyipsec's user-space data plane carries the traffic of the negotiated Child SA, and
charon's kernel-libipsec is the other end of the ESP-in-UDP tunnel (issue 6 groundwork).

Both directions of IKE: pyipsec initiates to charon, and charon initiates to pyipsec.
The IKE side runs in the test process through tests/pyipsec_peer.py (the daemon of issue
5 will own it); the data plane is ``pyipsec dataplane --static`` fed with the keys IKE
negotiated. Checks: both sides agree on SPIs and algorithms, ping and a hash-checked TCP
transfer cross the tunnel, charon counts the packets it decrypted, and a capture on the
veth shows only UDP 4500 between the hosts and never the plaintext marker. (The IKE-only
interop matrix is tests/interop/test_ike_interop.py; ``side`` names the initiator, as
there, so these cases join its printed matrix.)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import strongswan  # noqa: E402
from netns import Host, start_transfer  # noqa: E402
from strongswan import (  # noqa: E402
    Charon,
    Child,
    Connection,
    NetnsPair,
    Psk,
    run,
    start_capture,
    stop_process,
)

NS_A, NS_B = "pyi-s1", "pyi-s2"  # A: pyipsec, B: charon
OUTER_A, OUTER_B = "10.96.0.1", "10.96.0.2"
INNER_A, INNER_B = "10.96.1.1", "10.96.2.1"
MARKER = b"PYI-INTEROP-MARK"
SIZE = 4 * 1024 * 1024
PYIPSEC = str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "pyipsec")

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(not os.path.exists(strongswan.CHARON), reason="strongSwan not installed"),
    pytest.mark.skipif(shutil.which("tcpdump") is None, reason="tcpdump not installed"),
]


def _pyipsec_config(psk: bytes, esp: str):
    from pyipsec.ike.config import AuthConfig, ChildConfig, EndpointConfig, PeerConfig

    child = ChildConfig(
        "t-c",
        local_ts=(f"{INNER_A}/32",),
        remote_ts=(f"{INNER_B}/32",),
        mode="tunnel",
        esp_proposals=(esp,),
    )
    peer = PeerConfig(
        "charon",
        remote_addrs=(OUTER_B,),
        local_addr=OUTER_A,
        local_auth=AuthConfig(psk=psk),
        remote_auth=AuthConfig(psk=psk),
        local_id="a@pyi",
        remote_id="b@pyi",
        children=(child,),
    )
    return EndpointConfig(peers=(peer,), local_addr=OUTER_A), peer, child


def _wait_for_tun(ns: str, proc: subprocess.Popen, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while run(["ip", "link", "show", "pyipsec0"], ns=ns, check=False).returncode != 0:
        assert proc.poll() is None, "pyipsec dataplane exited"
        assert time.monotonic() < deadline, "no pyipsec0"
        time.sleep(0.1)
    time.sleep(0.3)


@pytest.mark.parametrize("side", ["pyipsec", "charon"])
@pytest.mark.parametrize("esp", ["aes128gcm16", "chacha20poly1305"])
def test_pyipsec_and_charon_tunnel(side: str, esp: str, tmp_path: Path) -> None:
    from pyipsec.ike.events import ChildSaInstalled, IkeSaUp
    from pyipsec_peer import IkePeer, static_sa_yaml, write_secret_file

    psk = os.urandom(32)
    endpoint_config, peer, child = _pyipsec_config(psk, esp)
    conn_b = Connection(
        "t", [OUTER_B], [OUTER_A], "b@pyi", "a@pyi",
        [Child("t-c", [f"{INNER_B}/32"], [f"{INNER_A}/32"], esp_proposals=[esp])],
        encap=True,
    )  # fmt: skip
    pair = NetnsPair(
        NS_A, NS_B, veth_a="pyi-sv0", veth_b="pyi-sv1", addr_a=OUTER_A, addr_b=OUTER_B,
        inner_a=INNER_A, inner_b=INNER_B,
    )  # fmt: skip
    charon = Charon(NS_B, [conn_b], [Psk(ids=("a@pyi", "b@pyi"), secret=psk)])
    dataplane = None
    with pair, charon, IkePeer(NS_A, OUTER_A, endpoint_config) as ike:
        # IKE: pyipsec <-> charon
        if side == "pyipsec":
            ike.endpoint.initiate(peer, child, time.time())
        else:
            charon.initiate_background("t-c")  # we keep stepping pyipsec meanwhile
        up = ike.wait_for(IkeSaUp)
        installed = ike.wait_for(ChildSaInstalled)
        sa_b = charon.wait_established("t-c")
        assert up.initiator == (side == "pyipsec")
        assert installed.mode == "tunnel" and installed.encap_udp
        assert installed.algorithm == esp
        assert int(sa_b["spi-in"], 16) == installed.outbound_spi
        assert int(sa_b["spi-out"], 16) == installed.inbound_spi
        ike.release_nat_t_port()

        # data plane: pyipsec's, keyed by what IKE negotiated
        static = tmp_path / "static.yaml"
        write_secret_file(static, static_sa_yaml(installed, local_ts=INNER_A, remote_ts=INNER_B))
        dataplane = subprocess.Popen(
            ["ip", "netns", "exec", NS_A, PYIPSEC, "dataplane", "--static", str(static)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            _wait_for_tun(NS_A, dataplane)
            pcap = tmp_path / "veth.pcap"
            capture = start_capture(NS_A, "pyi-sv0", pcap)
            try:
                ping = run(
                    ["ping", "-c", "3", "-i", "0.2", "-W", "2", "-I", INNER_A,
                     "-p", MARKER.hex(), INNER_B],
                    ns=NS_A, check=False,
                )  # fmt: skip
                transfer = start_transfer(
                    Host(NS_B, INNER_B, ""), Host(NS_A, INNER_A, ""), INNER_B, SIZE,
                    marker=MARKER.decode(), source=INNER_A,
                )  # fmt: skip
                sent, received = transfer.wait(timeout=120)
                time.sleep(0.3)
            finally:
                stop_process(capture)
        finally:
            stop_process(dataplane)
            for pid in run(["ip", "netns", "pids", NS_A], check=False).stdout.split():
                if int(pid) != os.getpid():
                    os.kill(int(pid), 9)
        assert ping.returncode == 0, ping.stdout + ping.stderr
        assert sent == received and sent[0] == SIZE  # (bytes, sha256) on both ends
        (after,) = charon.child_sas("t-c")
        assert int(after["packets-in"]) >= 3 and int(after["packets-out"]) >= 3
        assert int(after["bytes-in"]) >= SIZE  # charon decrypted all of it

    from scapy.all import IP, UDP, rdpcap

    assert MARKER not in pcap.read_bytes()
    between = [
        p for p in rdpcap(str(pcap)) if IP in p and {p[IP].src, p[IP].dst} == {OUTER_A, OUTER_B}
    ]
    assert len(between) >= 6
    for p in between:
        assert UDP in p and p[UDP].sport == 4500 and p[UDP].dport == 4500, p.summary()
