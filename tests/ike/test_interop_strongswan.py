"""IkeEndpoint against a real strongSwan charon (netns, root): PSK handshake both ways,
Child SA and IKE SA rekeying and deletion initiated by us and by charon."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import strongswan  # noqa: E402
from strongswan import Charon, Child, Connection, NetnsPair, Psk  # noqa: E402

NS_S, NS_P = "pyi-iks", "pyi-ikp"
ADDR_S, ADDR_P = "10.97.0.1", "10.97.0.2"
PEER = Path(__file__).with_name("swan_peer.py")
pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(not os.path.exists(strongswan.CHARON), reason="strongSwan missing"),
]


def charon_conn(**kw) -> Connection:
    child = Child("t-c", [f"{ADDR_S}/32"], [f"{ADDR_P}/32"], esp_proposals=["aes128gcm16"])
    return Connection("t", [ADDR_S], [ADDR_P], "charon@pyi", "py@pyi", [child], **kw)


def run_peer(secret: bytes, *extra: str, timeout: float = 40.0) -> list[dict]:
    argv = [
        "ip",
        "netns",
        "exec",
        NS_P,
        sys.executable,
        str(PEER),
        "--local",
        ADDR_P,
        "--remote",
        ADDR_S,
        "--psk",
        secret.hex(),
        "--local-id",
        "py@pyi",
        "--remote-id",
        "charon@pyi",
        "--local-ts",
        f"{ADDR_P}/32",
        "--remote-ts",
        f"{ADDR_S}/32",
        *extra,
    ]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert lines and lines[-1].get("done"), f"peer failed: {lines[-3:]} {err[-2000:]}"
    return lines


def events(lines: list[dict], name: str) -> list[dict]:
    return [x for x in lines if x.get("event") == name]


def test_we_initiate_rekey_and_delete():
    secret = os.urandom(32)
    with (
        NetnsPair(NS_S, NS_P, veth_a="pyi-ikv0", veth_b="pyi-ikv1", addr_a=ADDR_S, addr_b=ADDR_P),
        Charon(NS_S, [charon_conn()], [Psk(("charon@pyi", "py@pyi"), secret)]) as charon,
    ):
        lines = run_peer(
            secret, "--initiate", "--actions", "rekey_child,rekey_ike,rekey_child,delete_ike"
        )
        up = events(lines, "IkeSaUp")[0]
        assert up["remote_id"] == "charon@pyi"
        installed = events(lines, "ChildSaInstalled")
        assert len(installed) == 3 and installed[0]["encap_udp"]  # charon forces NAT-T
        assert len(events(lines, "IkeSaRekeyed")) == 1
        assert events(lines, "IkeSaDown")[-1]["reason"] == "deleted"
        log = charon.log_text()
        assert "rekeyed" in log.lower() or "rekeying" in log.lower()


def test_charon_initiates_and_rekeys():
    secret = os.urandom(32)
    with (
        NetnsPair(NS_S, NS_P, veth_a="pyi-ikv0", veth_b="pyi-ikv1", addr_a=ADDR_S, addr_b=ADDR_P),
        Charon(NS_S, [charon_conn()], [Psk(("charon@pyi", "py@pyi"), secret)]) as charon,
    ):
        proc = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                NS_P,
                sys.executable,
                str(PEER),
                "--local",
                ADDR_P,
                "--remote",
                ADDR_S,
                "--psk",
                secret.hex(),
                "--local-id",
                "py@pyi",
                "--remote-id",
                "charon@pyi",
                "--local-ts",
                f"{ADDR_P}/32",
                "--remote-ts",
                f"{ADDR_S}/32",
                "--actions",
                "wait_rekeyed,wait_ike_rekeyed",
                "--timeout",
                "40",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            import time

            time.sleep(1.0)
            charon.initiate("t-c")
            charon.wait_established("t-c")
            charon.rekey(child="t-c")
            time.sleep(2.0)
            charon.rekey(ike="t")
            out, err = proc.communicate(timeout=40)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        lines = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
        assert lines and lines[-1].get("done"), f"{lines[-3:]} {err[-2000:]}"
        assert not events(lines, "IkeSaUp")[0]["initiator"]
        assert events(lines, "ChildSaRekeyed") and events(lines, "IkeSaRekeyed")


def test_wrong_psk_against_charon():
    with (
        NetnsPair(NS_S, NS_P, veth_a="pyi-ikv0", veth_b="pyi-ikv1", addr_a=ADDR_S, addr_b=ADDR_P),
        Charon(NS_S, [charon_conn()], [Psk(("charon@pyi", "py@pyi"), os.urandom(32))]),
    ):
        argv = [
            "ip",
            "netns",
            "exec",
            NS_P,
            sys.executable,
            str(PEER),
            "--local",
            ADDR_P,
            "--remote",
            ADDR_S,
            "--psk",
            os.urandom(32).hex(),
            "--local-id",
            "py@pyi",
            "--remote-id",
            "charon@pyi",
            "--local-ts",
            f"{ADDR_P}/32",
            "--remote-ts",
            f"{ADDR_S}/32",
            "--initiate",
            "--timeout",
            "15",
        ]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=60).stdout
        lines = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
        assert events(lines, "AuthenticationFailed")
        assert not events(lines, "ChildSaInstalled")


@pytest.mark.parametrize(
    "kind,we_initiate",
    [("p256", True), ("rsa2048", True), ("ed25519", True), ("p384", False), ("rsa2048", False)],
)
def test_certificates_with_charon(tmp_path, kind, we_initiate):
    from cryptography.hazmat.primitives import serialization

    from pki import Pki

    pki = Pki()
    ours = pki.issue(kind, dns=["py.pyi"])
    theirs = pki.issue(kind, dns=["charon.pyi"])
    pem = serialization.Encoding.PEM
    fd = os.open(tmp_path / "key.pem", os.O_WRONLY | os.O_CREAT, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(
            ours.key.private_bytes(
                pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    (tmp_path / "cert.pem").write_bytes(ours.cert.public_bytes(pem))
    (tmp_path / "chain.pem").write_bytes(pki.intermediate.cert.public_bytes(pem))
    (tmp_path / "ca.pem").write_bytes(pki.root.cert.public_bytes(pem))
    child = Child("t-c", [f"{ADDR_S}/32"], [f"{ADDR_P}/32"], esp_proposals=["aes128gcm16"])
    conn = Connection(
        "t",
        [ADDR_S],
        [ADDR_P],
        "charon.pyi",
        "py.pyi",
        [child],
        auth="pubkey",
        local_cert="charon.pem",
        send_cert="always",
    )
    charon = Charon(NS_S, [conn], [])
    charon.add_identity("charon.pem", theirs.cert, theirs.key, [pki.intermediate.cert])
    charon.add_cert("root.pem", pki.root.cert.public_bytes(pem), ca=True)
    with (
        NetnsPair(NS_S, NS_P, veth_a="pyi-ikv0", veth_b="pyi-ikv1", addr_a=ADDR_S, addr_b=ADDR_P),
        charon,
    ):
        argv = [
            "ip",
            "netns",
            "exec",
            NS_P,
            sys.executable,
            str(PEER),
            "--local",
            ADDR_P,
            "--remote",
            ADDR_S,
            "--psk",
            "00",
            "--local-id",
            "py.pyi",
            "--remote-id",
            "charon.pyi",
            "--local-ts",
            f"{ADDR_P}/32",
            "--remote-ts",
            f"{ADDR_S}/32",
            *(["--initiate"] if we_initiate else []),
            "--cert-dir",
            str(tmp_path),
            "--timeout",
            "25",
        ]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            if not we_initiate:
                import time

                time.sleep(1.0)
                charon.initiate("t-c")
            stdout, stderr = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        out = subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr)
        lines = [json.loads(x) for x in out.stdout.splitlines() if x.startswith("{")]
        assert lines and lines[-1].get("done"), f"{lines[-3:]} {out.stderr[-1500:]}"
        assert events(lines, "IkeSaUp")[0]["remote_id"] == "charon.pyi"
        assert events(lines, "ChildSaInstalled")
