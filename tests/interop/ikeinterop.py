"""Shared pieces of the IKE interop tests against strongSwan's charon (issue 6).

Layout: charon in pyi-ai (10.99.1.1), pyipsec's IkeEndpoint through tests/interop/
ikedriver.py in pyi-bi (10.99.1.2); the ``topo`` fixture (conftest.py) makes them. Here:
configuration of both sides (:func:`charon_conn`, :func:`py_peer`, :func:`cert_setup`),
starting them (:func:`start`), bringing the SAs up from either side (:func:`establish`),
checking that both hold the same SAs (:func:`check_agreement`) and small waits/queries.
Used by test_ike_interop.py and test_ike_lifecycle_interop.py.
"""

from __future__ import annotations

import os
import time

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from ikedriver import IkeDriver

from pki import Pki, make_ca, make_ee
from pyipsec.ike import (
    AuthConfig,
    AuthenticationFailed,
    ChildConfig,
    ChildSaInstalled,
    EndpointConfig,
    IkeSaUp,
    NegotiationFailed,
    PeerConfig,
)
from strongswan import Charon, Child, Connection, Psk
from vici_client import ViciClient

A, B = "10.99.1.1", "10.99.1.2"  # charon (pyi-ai), pyipsec (pyi-bi)

CHARON_ID, PY_ID = "charon@pyi", "py@pyi"

SIDES = ["pyipsec", "charon"]  # who initiates

DH_NAMES = {
    "modp2048": "MODP_2048", "ecp256": "ECP_256", "ecp384": "ECP_384",
    "curve25519": "CURVE_25519", "x25519": "CURVE_25519", "curve448": "CURVE_448",
    "x448": "CURVE_448",
}  # fmt: skip

IKE_ENCR_NAMES = {
    "aes128gcm16": "AES_GCM_16", "aes256gcm16": "AES_GCM_16",
    "chacha20poly1305": "CHACHA20_POLY1305", "aes256": "AES_CBC",
}  # fmt: skip

#: ESP keyword -> charon's (encr-alg, encr-keysize, integ-alg) in list-sas
ESP_NAMES = {
    "aes128gcm16": ("AES_GCM_16", "128", None),
    "aes256gcm16": ("AES_GCM_16", "256", None),
    "chacha20poly1305": ("CHACHA20_POLY1305", "256", None),
    "aes128-sha256": ("AES_CBC", "128", "HMAC_SHA2_256_128"),
    "aes256-sha512": ("AES_CBC", "256", "HMAC_SHA2_512_256"),
}


def charon_conn(
    *,
    ike: str = "aes128gcm16-prfsha256-x25519",
    esp: str = "aes128gcm16",
    local_ts: str = f"{A}/32",
    remote_ts: str = f"{B}/32",
    child_kw: dict | None = None,
    **kw,
) -> Connection:
    child = Child("t-c", [local_ts], [remote_ts], esp_proposals=[esp], **(child_kw or {}))
    kw.setdefault("local_id", CHARON_ID)
    kw.setdefault("remote_id", PY_ID)
    return Connection(
        "t", [A], [B], children=[child], ike_proposals=[ike], encap=True, **kw
    )  # fmt: skip


def py_peer(
    *,
    ike: str = "aes128gcm16-prfsha256-x25519",
    esp: str = "aes128gcm16",
    local_ts: str = f"{B}/32",
    remote_ts: str = f"{A}/32",
    child_kw: dict | None = None,
    **kw,
) -> PeerConfig:
    child = ChildConfig(
        "t-c", local_ts=(local_ts,), remote_ts=(remote_ts,), mode="tunnel",
        esp_proposals=(esp,), **(child_kw or {}),
    )  # fmt: skip
    kw.setdefault("local_id", PY_ID)
    kw.setdefault("remote_id", CHARON_ID)
    kw.setdefault("retransmit_timeout", 1.0)
    kw.setdefault("retransmit_tries", 3)
    return PeerConfig(
        "t", remote_addrs=(A,), local_addr=B, ike_proposals=(ike,), children=(child,), **kw
    )


def psk_pair(secret: bytes | None = None) -> tuple[AuthConfig, list[Psk]]:
    secret = secret or os.urandom(32)
    return AuthConfig(psk=secret), [Psk(ids=(CHARON_ID, PY_ID), secret=secret)]


def start(
    interop, topo, conn: Connection, psks: list[Psk], peer: PeerConfig, **charon_kw
) -> tuple[Charon, IkeDriver]:
    charon = interop.charon(Charon(topo.a.ns, [conn], psks, **charon_kw))
    charon.start()
    drv = interop.driver(IkeDriver(topo.b.ns, B, EndpointConfig(peers=(peer,), local_addr=B)))
    drv.start()
    return charon, drv


def establish(side: str, charon: Charon, drv: IkeDriver, peer: PeerConfig):
    """Bring the IKE SA and Child SA t-c up, initiated by ``side``; return
    (IkeSaUp, ChildSaInstalled, charon's IKE SA dict, charon's Child SA dict)."""
    if side == "pyipsec":
        drv.call(lambda ep, now: ep.initiate(peer, peer.children[0], now))
    else:
        charon.initiate("t-c")
    up = drv.wait_event(IkeSaUp)
    inst = drv.wait_event(ChildSaInstalled)
    child = charon.wait_established("t-c")
    (ike,) = charon.list_sas(block=True).values()
    return up, inst, ike, child


def check_agreement(side: str, up, inst, ike: dict, child: dict, esp: str) -> None:
    """Both sides hold the same SAs: SPIs, roles, identities and algorithms."""
    assert up.initiator == (side == "pyipsec")
    assert ike["state"] == "ESTABLISHED"
    assert ike.get("initiator", "no") == ("yes" if side == "charon" else "no")
    assert (ike["initiator-spi"], ike["responder-spi"]) == (up.spi_i, up.spi_r), (ike, up)
    assert ike["remote-id"] == PY_ID and up.remote_id == CHARON_ID
    assert int(child["spi-in"], 16) == inst.outbound_spi
    assert int(child["spi-out"], 16) == inst.inbound_spi
    assert child["mode"] == "TUNNEL" and inst.mode == "tunnel"
    assert child["protocol"] == "ESP" and inst.protocol == "esp"
    assert child["encap"] == "yes" and inst.encap_udp  # charon's encap = yes fakes a NAT
    encr, bits, integ = ESP_NAMES[esp]
    assert inst.algorithm == esp
    assert child["encr-alg"] == encr
    assert child.get("encr-keysize", "256") == bits
    assert child.get("integ-alg") == integ


def wait_until(cond, timeout: float = 15.0, what: str = "", log=lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{log()[-3000:]}")
        time.sleep(0.1)


CHARON_FQDN, PY_FQDN = "charon.pyi.test", "py.pyi.test"


def cert_setup(
    interop,
    topo,
    kind: str,
    *,
    intermediate: bool = False,
    dn_ids: bool = False,
    retransmit=None,
    **conn_kw,
):
    """Certificates of ``kind`` for both sides from a root CA the test makes (with
    ``intermediate``: each side's own sub-CA, which it sends along, so the peer must
    build the chain from what it received)."""
    pki = Pki("rsa2048" if kind.startswith("rsa") else "p256")
    root = pki.root
    ids = {"charon": CHARON_FQDN, "py": PY_FQDN}
    ees, chains = {}, {}
    for side, name in ids.items():
        issuer = make_ca(f"pyi sub CA {side}", kind, issuer=root) if intermediate else None
        ees[side] = make_ee(issuer or root, kind, cn=name, dns=[name])
        chains[side] = [issuer.cert] if issuer else []
    cid, pid = CHARON_FQDN, PY_FQDN
    if dn_ids:  # identities are the certificates' subject DNs (ID_DER_ASN1_DN)
        cid, pid = (f"O=pyipsec test, CN={n}" for n in (CHARON_FQDN, PY_FQDN))
    conn_kw.setdefault("auth", "pubkey")
    conn = charon_conn(
        local_id=cid, remote_id=pid, local_cert="charon.pem", send_cert="always",
        remote_auth="pubkey", **conn_kw,
    )  # fmt: skip
    charon = interop.charon(Charon(topo.a.ns, [conn], retransmit=retransmit))
    charon.add_cert("root.pem", root.cert.public_bytes(Encoding.PEM), ca=True)
    charon.add_identity("charon.pem", ees["charon"].cert, ees["charon"].key, chains["charon"])
    local = AuthConfig(
        method="pubkey", private_key=ees["py"].key, cert_chain=(ees["py"].cert, *chains["py"])
    )
    remote = AuthConfig(method="pubkey", trusted_cas=(root.cert,))
    peer = py_peer(local_id=pid, remote_id=cid, local_auth=local, remote_auth=remote)
    charon.start()
    drv = interop.driver(IkeDriver(topo.b.ns, B, EndpointConfig(peers=(peer,), local_addr=B)))
    drv.start()
    return charon, drv, peer


def vici_rekey(charon: Charon, **what: str) -> None:
    """Ask charon to rekey (vici "rekey": returns once the rekeying is queued)."""
    client = ViciClient(charon.vici_path)
    try:
        reply = client.request("rekey", what)
    finally:
        client.close()
    assert reply.get("success") == "yes", reply


def ike_spis(charon: Charon) -> list[tuple[str, str]]:
    """(initiator SPI, responder SPI) of each IKE SA charon holds."""
    return [(s["initiator-spi"], s["responder-spi"]) for s in charon.list_sas(block=True).values()]


def installed(charon: Charon) -> list[dict]:
    return [sa for sa in charon.child_sas("t-c", block=True) if sa["state"] == "INSTALLED"]


def failure_events(drv: IkeDriver) -> list:
    return drv.events_of(AuthenticationFailed) + drv.events_of(NegotiationFailed)


def expect_failure(side: str, charon: Charon, drv: IkeDriver, peer: PeerConfig) -> None:
    """Start the negotiation from ``side`` and expect it to fail on charon's side."""
    if side == "pyipsec":
        drv.call(lambda ep, now: ep.initiate(peer, peer.children[0], now))
    else:
        with pytest.raises(RuntimeError):
            charon.initiate("t-c", timeout=6)
