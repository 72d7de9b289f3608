"""IKEv2 interop between pyipsec's IkeEndpoint and strongSwan's charon 5.9.8 (issue 6).

charon runs in pyi-ai (10.99.1.1), pyipsec's engine (tests/interop/ikedriver.py) on real
UDP 500/4500 sockets in pyi-bi (10.99.1.2). Every scenario runs with each side as the
initiator (the ``side`` parameter: one column of the matrix printed at the end, see
conftest.py) and checks on *both* sides what was agreed: IKE and Child SA SPIs, the
algorithms, the identities (charon's view through vici). No data plane is involved:
charon's Child SAs are installed in its kernel-libipsec (tunnel mode, ESP-in-UDP, since
``encap = yes`` makes charon fake a NAT), pyipsec's are only negotiated.

One charon is started per scenario (about 0.3 s); the whole file runs in a few minutes.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ikedriver import IkeDriver  # noqa: E402

import strongswan  # noqa: E402
from netns import Topology  # noqa: E402
from pki import Pki, make_ca, make_ee  # noqa: E402
from pyipsec.ike import (  # noqa: E402
    AuthConfig,
    AuthenticationFailed,
    ChildConfig,
    ChildSaDeleted,
    ChildSaInstalled,
    ChildSaRekeyed,
    EndpointConfig,
    IkeSaDown,
    IkeSaRekeyed,
    IkeSaUp,
    NegotiationFailed,
    PeerConfig,
)
from pyipsec.wire.iana import NotifyType  # noqa: E402
from strongswan import Charon, Child, Connection, Psk  # noqa: E402
from vici_client import ViciClient  # noqa: E402

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(not os.path.exists(strongswan.CHARON), reason="strongSwan not installed"),
]

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


@pytest.fixture(scope="module")
def topo():
    with Topology(tag="i") as t:
        yield t


# --------------------------------------------------------------------------- configuration


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


# --------------------------------------------------------------------------- scenarios


@pytest.mark.parametrize("side", SIDES)
def test_psk(side: str, topo, interop) -> None:
    auth, psks = psk_pair()
    peer = py_peer(local_auth=auth, remote_auth=auth)
    charon, drv = start(interop, topo, charon_conn(), psks, peer)
    up, inst, ike, child = establish(side, charon, drv, peer)
    check_agreement(side, up, inst, ike, child, "aes128gcm16")
    assert up.proposal == "aes128gcm16-prfsha256-x25519"
    assert ike["dh-group"] == "CURVE_25519" and ike["prf-alg"] == "PRF_HMAC_SHA2_256"
    log = charon.log_text()
    assert f"authentication of '{PY_ID}' with pre-shared key successful" in log


# (IKE proposal, ESP proposal): together they cover the KE groups modp2048, ecp256, ecp384,
# curve25519, curve448, the IKE ciphers aes128gcm16, aes256gcm16, chacha20poly1305,
# aes256-sha256 and the ESP algorithms issue 6 names.
PROPOSALS = [
    ("aes128gcm16-prfsha256-curve25519", "aes128gcm16"),
    ("aes256gcm16-prfsha384-ecp384", "aes256gcm16"),
    ("chacha20poly1305-prfsha256-curve448", "chacha20poly1305"),
    ("aes256-sha256-modp2048", "aes128-sha256"),
    ("aes128gcm16-prfsha256-ecp256", "aes256-sha512"),
]


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize(("ike_prop", "esp"), PROPOSALS)
def test_proposals(ike_prop: str, esp: str, side: str, topo, interop) -> None:
    auth, psks = psk_pair()
    peer = py_peer(ike=ike_prop, esp=esp, local_auth=auth, remote_auth=auth)
    charon, drv = start(interop, topo, charon_conn(ike=ike_prop, esp=esp), psks, peer)
    up, inst, ike, child = establish(side, charon, drv, peer)
    check_agreement(side, up, inst, ike, child, esp)
    group = ike_prop.rsplit("-", 1)[1]
    assert ike["dh-group"] == DH_NAMES[group]
    encr = ike_prop.split("-", 1)[0]
    expected_encr = IKE_ENCR_NAMES[encr]
    assert ike["encr-alg"] == expected_encr
    if encr == "aes256":
        assert ike["integ-alg"] == "HMAC_SHA2_256_128" and ike["encr-keysize"] == "256"
    # our description of the chosen proposal names the same group
    assert DH_NAMES[up.proposal.rsplit("-", 1)[1]] == DH_NAMES[group], up.proposal


# --------------------------------------------------------------------------- certificates

CHARON_FQDN, PY_FQDN = "charon.pyi.test", "py.pyi.test"


def cert_setup(
    interop, topo, kind: str, *, intermediate: bool = False, dn_ids: bool = False, **conn_kw
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
    charon = interop.charon(Charon(topo.a.ns, [conn]))
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


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("kind", ["rsa2048", "p256", "ed25519"])
def test_certificates(kind: str, side: str, topo, interop) -> None:
    charon, drv, peer = cert_setup(interop, topo, kind)
    up, inst, ike, child = establish(side, charon, drv, peer)
    assert (ike["initiator-spi"], ike["responder-spi"]) == (up.spi_i, up.spi_r)
    assert ike["remote-id"] == PY_FQDN and up.remote_id == CHARON_FQDN
    assert int(child["spi-in"], 16) == inst.outbound_spi
    log = charon.log_text()
    lines = [ln for ln in log.splitlines() if f"authentication of '{PY_FQDN}' with" in ln]
    assert lines and "successful" in lines[0], log[-3000:]
    method = {"rsa2048": "RSA", "p256": "ECDSA", "ed25519": "ED25519"}[kind]
    assert method in lines[0].upper(), lines[0]


#: variant -> (key kind, charon's local auth, identities are DNs, what charon's log names)
CERT_VARIANTS = {
    "p384": ("p384", "pubkey", False, "ECDSA"),
    "rsa-pss": ("rsa2048", "rsa/pss-sha256", False, "RSA_EMSA_PSS"),
    "dn-ids": ("p256", "pubkey", True, "ECDSA"),
}


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("variant", list(CERT_VARIANTS))
def test_certificate_variants(variant: str, side: str, topo, interop) -> None:
    """ECDSA P-384 (SHA-384), RSASSA-PSS signatures from charon (RFC 7427), and subject
    DNs as identities."""
    kind, auth, dn_ids, method = CERT_VARIANTS[variant]
    charon, drv, peer = cert_setup(interop, topo, kind, dn_ids=dn_ids, auth=auth)
    up, inst, ike, child = establish(side, charon, drv, peer)
    assert (ike["initiator-spi"], ike["responder-spi"]) == (up.spi_i, up.spi_r)
    log = charon.log_text()
    ours = [ln for ln in log.splitlines() if "authentication of '" in ln and "(myself)" in ln]
    assert ours and method in ours[0].upper(), ours
    if dn_ids:
        assert ike["remote-id"] == f"O=pyipsec test, CN={PY_FQDN}", ike
        assert up.remote_id.startswith("dn:"), up.remote_id  # charon's DN, as it sent it


@pytest.mark.parametrize("side", SIDES)
def test_fragmentation(side: str, topo, interop) -> None:
    """RSA certificates plus a per-side RSA sub-CA in IKE_AUTH: too big for one 1280-byte
    datagram, so both sides fragment (RFC 7383) and reassemble the other's fragments."""
    charon, drv, peer = cert_setup(interop, topo, "rsa2048", intermediate=True,
                                   fragmentation="yes")  # fmt: skip
    up, inst, ike, child = establish(side, charon, drv, peer)
    assert (ike["initiator-spi"], ike["responder-spi"]) == (up.spi_i, up.spi_r)
    log = charon.log_text()
    assert "splitting IKE message" in log, log[-3000:]  # charon sent fragments
    assert "reassembled fragmented IKE message" in log, log[-3000:]  # and got ours
    assert 'received issuer cert "O=pyipsec test, CN=pyi sub CA py"' in log
    assert drv.endpoint.statistics().counter("fragmented_messages") >= 1


# --------------------------------------------------------------------------- rekeying


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


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("by", ["pyipsec", "charon"])
@pytest.mark.parametrize("what", ["child", "ike"])
def test_rekey(what: str, by: str, side: str, topo, interop) -> None:
    """A short lifetime on the ``by`` side makes it rekey the Child SA / IKE SA."""
    auth, psks = psk_pair()
    conn_kw: dict = {}
    child_kw: dict = {}
    peer_kw: dict = {}
    py_child_kw: dict = {}
    if by == "charon":
        if what == "child":
            child_kw = {"rekey_time": "3s", "life_time": "60s", "rand_time": "0s"}
        else:
            conn_kw = {"rekey_time": "3s", "over_time": "60s", "rand_time": "0s"}
    elif what == "child":
        py_child_kw = {"rekey_time": 3.0, "life_time": 60.0}
    else:
        peer_kw = {"rekey_time": 3.0, "over_time": 60.0}
    peer = py_peer(local_auth=auth, remote_auth=auth, child_kw=py_child_kw, **peer_kw)
    conn = charon_conn(child_kw=child_kw, **conn_kw)
    charon, drv = start(interop, topo, conn, psks, peer)
    up, inst, ike, child = establish(side, charon, drv, peer)
    if what == "child":
        ev = drv.wait_event(ChildSaRekeyed, timeout=15)
        assert (ev.old_inbound_spi, ev.old_outbound_spi) == (inst.inbound_spi, inst.outbound_spi)
        wait_until(
            lambda: [int(sa["spi-in"], 16) for sa in installed(charon)] == [ev.new_outbound_spi],
            what="charon to hold only the new Child SA", log=charon.log_text,
        )  # fmt: skip
        (now_child,) = installed(charon)
        assert int(now_child["spi-out"], 16) == ev.new_inbound_spi
        drv.wait_event(ChildSaDeleted, lambda e: e.inbound_spi == inst.inbound_spi)
        assert "rekeyed" in charon.log_text().lower() or "rekeying" in charon.log_text()
    else:
        ev = drv.wait_event(IkeSaRekeyed, timeout=15)
        assert (ev.old_spi_i, ev.old_spi_r) == (up.spi_i, up.spi_r)
        wait_until(
            lambda: ike_spis(charon) == [(ev.new_spi_i, ev.new_spi_r)],
            what="charon to hold only the new IKE SA", log=charon.log_text,
        )  # fmt: skip
        (now_child,) = installed(charon)  # the Child SA moved over unchanged
        assert int(now_child["spi-in"], 16) == inst.outbound_spi
        assert drv.endpoint.statistics().counter("ike_rekeys") >= 1
    assert not drv.events_of(IkeSaDown)


@pytest.mark.parametrize("side", SIDES)
def test_simultaneous_child_rekey(side: str, topo, interop) -> None:
    """Both sides start rekeying the Child SA before seeing the other's request (RFC 7296
    2.8.1): pyipsec's loop is held while charon's CREATE_CHILD_SA arrives, then it sends
    its own. Exactly one new Child SA survives, the same on both sides."""
    auth, psks = psk_pair()
    peer = py_peer(local_auth=auth, remote_auth=auth)
    charon, drv = start(interop, topo, charon_conn(), psks, peer)
    up, inst, ike, child = establish(side, charon, drv, peer)

    holding = threading.Event()

    def held_rekey(ep, now):  # runs on pyipsec's loop thread: nothing is received meanwhile
        holding.set()
        time.sleep(1.0)
        ep.rekey_child(up.ike_sa, "t-c", time.time())

    hold = threading.Thread(target=drv.call, args=(held_rekey,))
    hold.start()
    assert holding.wait(5)  # the loop is now asleep
    vici_rekey(charon, child="t-c")  # its CREATE_CHILD_SA waits in pyipsec's socket
    hold.join()
    ev = drv.wait_event(ChildSaRekeyed, timeout=15)
    wait_until(
        lambda: [int(sa["spi-in"], 16) for sa in installed(charon)] == [ev.new_outbound_spi],
        what="one surviving Child SA on charon", log=charon.log_text,
    )  # fmt: skip
    (survivor,) = installed(charon)
    assert int(survivor["spi-out"], 16) == ev.new_inbound_spi
    log = charon.log_text()
    assert "collision" in log.lower(), log[-3000:]
    assert drv.endpoint.statistics().counter("rekey_collisions") >= 1
    time.sleep(1.0)  # no late surprises: still exactly one Child SA each
    assert len(installed(charon)) == 1
    live = drv.call(lambda ep, now: ep.child_sas(up.ike_sa))
    assert [(c.inbound_spi, c.outbound_spi) for c in live if c.state == "installed"] == [
        (ev.new_inbound_spi, ev.new_outbound_spi)
    ], live


# --------------------------------------------------------------------------- delete and DPD


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("by", ["pyipsec", "charon"])
def test_delete(by: str, side: str, topo, interop) -> None:
    """``by`` deletes the Child SA (the IKE SA stays), then the IKE SA; the other side
    follows each time."""
    auth, psks = psk_pair()
    peer = py_peer(local_auth=auth, remote_auth=auth)
    charon, drv = start(interop, topo, charon_conn(), psks, peer)
    up, inst, ike, child = establish(side, charon, drv, peer)
    if by == "pyipsec":
        drv.call(lambda ep, now: ep.delete_child(up.ike_sa, "t-c", now))
    else:
        charon.terminate(child="t-c")
    gone = drv.wait_event(ChildSaDeleted)
    assert (gone.inbound_spi, gone.outbound_spi) == (inst.inbound_spi, inst.outbound_spi)
    assert gone.reason == ("deleted" if by == "pyipsec" else "deleted by peer")
    wait_until(lambda: charon.child_sas(block=True) == [], what="charon to drop the Child SA",
               log=charon.log_text)  # fmt: skip
    assert len(charon.list_sas(block=True)) == 1 and not drv.events_of(IkeSaDown)
    if by == "pyipsec":
        drv.call(lambda ep, now: ep.delete_ike(up.ike_sa, now))
    else:
        charon.terminate(ike="t")
    down = drv.wait_event(IkeSaDown)
    assert down.reason == ("deleted" if by == "pyipsec" else "deleted by peer")
    wait_until(lambda: charon.list_sas(block=True) == {}, what="charon to drop the IKE SA",
               log=charon.log_text)  # fmt: skip
    assert drv.call(lambda ep, now: ep.statistics()).ike_sas == 0
    log = charon.log_text()
    if by == "pyipsec":
        assert "received DELETE for ESP CHILD_SA" in log and "received DELETE for IKE_SA" in log
    else:
        assert "sending DELETE for ESP CHILD_SA" in log and "sending DELETE for IKE_SA" in log


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("killed", ["charon", "pyipsec"])
def test_dpd(killed: str, side: str, topo, interop) -> None:
    """The survivor's dead peer detection notices a killed peer (no DELETE was sent) and
    removes its SAs."""
    auth, psks = psk_pair()
    peer = py_peer(local_auth=auth, remote_auth=auth, dpd_delay=1.0,
                   retransmit_timeout=0.5, retransmit_tries=2)  # fmt: skip
    conn = charon_conn(dpd_delay="1s")
    charon, drv = start(interop, topo, conn, psks, peer, retransmit=strongswan.FAST_RETRANSMIT)
    up, inst, ike, child = establish(side, charon, drv, peer)
    if killed == "charon":
        charon.kill()
        down = drv.wait_event(IkeSaDown, timeout=20)
        assert down.reason == "dead peer"
        assert drv.events_of(ChildSaDeleted)
        stats = drv.endpoint.statistics()
        assert stats.counter("dpd_sent") >= 1 and stats.counter("timeouts") >= 1
        assert stats.ike_sas == 0
    else:
        time.sleep(1.5)  # a DPD round trip or two while both live
        assert len(charon.list_sas(block=True)) == 1
        drv.kill()
        charon.wait_for_log("giving up after", timeout=20)
        wait_until(lambda: charon.list_sas(block=True) == {}, what="charon to drop the SAs",
                   log=charon.log_text)  # fmt: skip
        assert "sending DPD request" in charon.log_text()


# --------------------------------------------------------------------------- negative


def failure_events(drv: IkeDriver) -> list:
    return drv.events_of(AuthenticationFailed) + drv.events_of(NegotiationFailed)


def expect_failure(side: str, charon: Charon, drv: IkeDriver, peer: PeerConfig) -> None:
    """Start the negotiation from ``side`` and expect it to fail on charon's side."""
    if side == "pyipsec":
        drv.call(lambda ep, now: ep.initiate(peer, peer.children[0], now))
    else:
        with pytest.raises(RuntimeError):
            charon.initiate("t-c", timeout=6)


@pytest.mark.parametrize("side", SIDES)
def test_mismatched_psk(side: str, topo, interop) -> None:
    auth, psks = psk_pair()
    other = AuthConfig(psk=os.urandom(32))
    peer = py_peer(local_auth=other, remote_auth=other)
    charon, drv = start(interop, topo, charon_conn(), psks, peer,
                        retransmit=strongswan.FAST_RETRANSMIT)  # fmt: skip
    expect_failure(side, charon, drv, peer)
    ev = drv.wait_event((AuthenticationFailed, NegotiationFailed))
    if side == "pyipsec":  # charon checked our AUTH and refused it
        charon.wait_for_log(f"tried 1 shared key for '{CHARON_ID}' - '{PY_ID}', but MAC mismatched")
        assert isinstance(ev, AuthenticationFailed) or ev.notify == NotifyType.AUTHENTICATION_FAILED
    else:  # we checked charon's AUTH and refused it
        assert isinstance(ev, AuthenticationFailed), ev
        charon.wait_for_log("received AUTHENTICATION_FAILED notify error")
    assert ev.reason and ev.peer == "t"
    if side == "pyipsec":
        assert drv.wait_event(IkeSaDown).reason == "failed"
    else:  # a responder's half-open SA goes without IkeSaDown (it never came up)
        assert "pre-shared key" in ev.reason
    wait_until(lambda: drv.endpoint.statistics().ike_sas == 0, what="pyipsec to drop the SA")
    assert drv.endpoint.statistics().counter("auth_failures") == 1
    assert not drv.events_of(IkeSaUp) and not drv.events_of(ChildSaInstalled)
    assert charon.list_sas(block=True) == {} or all(
        s["state"] != "ESTABLISHED" for s in charon.list_sas(block=True).values()
    )
    for text in (drv.log_text(), charon.log_text()):
        for secret in (auth.psk, other.psk):
            assert secret.hex() not in text


@pytest.mark.parametrize("side", SIDES)
def test_no_common_proposal(side: str, topo, interop) -> None:
    auth, psks = psk_pair()
    peer = py_peer(ike="aes128-sha256-modp2048", local_auth=auth, remote_auth=auth)
    conn = charon_conn(ike="aes256gcm16-prfsha384-ecp384")
    charon, drv = start(interop, topo, conn, psks, peer, retransmit=strongswan.FAST_RETRANSMIT)
    expect_failure(side, charon, drv, peer)
    ev = drv.wait_event(NegotiationFailed)
    assert ev.notify == NotifyType.NO_PROPOSAL_CHOSEN, ev
    if side == "pyipsec":
        charon.wait_for_log("received proposals unacceptable")
    else:  # pyipsec refused charon's IKE_SA_INIT: no IKE SA, but an event saying why
        assert ev.ike_sa == 0 and ev.peer == "t" and "no acceptable IKE proposal" in ev.reason
        assert drv.endpoint.statistics().counter("no_proposal_chosen") == 1
        charon.wait_for_log("received NO_PROPOSAL_CHOSEN notify error")
    assert not drv.events_of(IkeSaUp)
    assert charon.list_sas(block=True) == {}
    assert drv.call(lambda ep, now: ep.statistics()).ike_sas == 0


@pytest.mark.parametrize("side", SIDES)
def test_unacceptable_selectors(side: str, topo, interop) -> None:
    """The IKE SA comes up, the Child SA is refused with TS_UNACCEPTABLE: pyipsec proposes
    (or accepts only) subnets charon's configuration does not cover."""
    auth, psks = psk_pair()
    peer = py_peer(local_ts="10.77.0.0/16", remote_ts="10.78.0.0/16",
                   local_auth=auth, remote_auth=auth)  # fmt: skip
    charon, drv = start(interop, topo, charon_conn(), psks, peer,
                        retransmit=strongswan.FAST_RETRANSMIT)  # fmt: skip
    expect_failure(side, charon, drv, peer)
    ev = drv.wait_event(NegotiationFailed)
    assert ev.notify == NotifyType.TS_UNACCEPTABLE, ev
    if side == "pyipsec":
        assert ev.child == "t-c"
        charon.wait_for_log("traffic selectors 10.78.0.0/16 === 10.77.0.0/16 unacceptable")
    else:  # as responder no Child config matched charon's selectors, so no child name
        assert ev.child is None and "traffic selectors" in ev.reason
        charon.wait_for_log("received TS_UNACCEPTABLE notify")
    # the IKE SA itself is fine on both sides
    assert drv.events_of(IkeSaUp) and len(charon.list_sas(block=True)) == 1
    assert not drv.events_of(ChildSaInstalled)
    assert charon.child_sas(block=True) == []


@pytest.mark.parametrize("side", SIDES)
def test_simultaneous_ike_rekey(side: str, topo, interop) -> None:
    """Both sides rekey the IKE SA at once (RFC 7296 2.8.2): the IKE SA with the lowest
    nonce is redundant and deleted; one new IKE SA survives, the same on both sides, and
    the Child SA moves to it unchanged."""
    auth, psks = psk_pair()
    peer = py_peer(local_auth=auth, remote_auth=auth)
    charon, drv = start(interop, topo, charon_conn(), psks, peer)
    up, inst, ike, child = establish(side, charon, drv, peer)
    holding = threading.Event()

    def held_rekey(ep, now):
        holding.set()
        time.sleep(1.0)
        ep.rekey_ike(up.ike_sa, time.time())

    hold = threading.Thread(target=drv.call, args=(held_rekey,))
    hold.start()
    assert holding.wait(5)
    vici_rekey(charon, ike="t")
    hold.join()
    drv.wait_event(IkeSaRekeyed, timeout=15)

    def agreed() -> bool:  # pyipsec may report the redundant SA first, then the survivor
        last = drv.events_of(IkeSaRekeyed)[-1]
        sas = [
            (s["initiator-spi"], s["responder-spi"]) for s in charon.list_sas(block=True).values()
        ]
        return sas == [(last.new_spi_i, last.new_spi_r)]

    wait_until(agreed, what="one surviving IKE SA on both sides", log=charon.log_text)
    time.sleep(1.0)
    later = drv.events_of(IkeSaRekeyed)
    final = later[-1]
    sas = list(charon.list_sas(block=True).values())
    assert [(s["initiator-spi"], s["responder-spi"]) for s in sas] == [
        (final.new_spi_i, final.new_spi_r)
    ], (sas, later)
    (now_child,) = installed(charon)
    assert int(now_child["spi-in"], 16) == inst.outbound_spi
    assert drv.call(lambda ep, now: ep.statistics()).ike_sas == 1
    assert not drv.events_of(IkeSaDown)
    assert "collision" in charon.log_text().lower()


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("by", ["pyipsec", "charon"])
def test_rekey_with_pfs(by: str, side: str, topo, interop) -> None:
    """Child SA rekey with a fresh key exchange (ESP proposal with a KE group, RFC 7296
    1.3.1): both sides derive the same new keys from it."""
    auth, psks = psk_pair()
    child_kw = {"rekey_time": "3s", "life_time": "60s", "rand_time": "0s"} if by == "charon" else {}
    py_child_kw = {"rekey_time": 3.0, "life_time": 60.0} if by == "pyipsec" else {}
    peer = py_peer(esp="aes256gcm16-ecp256", local_auth=auth, remote_auth=auth,
                   child_kw=py_child_kw)  # fmt: skip
    conn = charon_conn(esp="aes256gcm16-ecp256", child_kw=child_kw)
    charon, drv = start(interop, topo, conn, psks, peer)
    up, inst, ike, child = establish(side, charon, drv, peer)
    assert inst.algorithm == "aes256gcm16"
    ev = drv.wait_event(ChildSaRekeyed, timeout=15)
    wait_until(
        lambda: [int(sa["spi-in"], 16) for sa in installed(charon)] == [ev.new_outbound_spi],
        what="charon to hold only the new Child SA", log=charon.log_text,
    )  # fmt: skip
    (now_child,) = installed(charon)
    assert now_child.get("dh-group") == "ECP_256", now_child
    assert int(now_child["spi-out"], 16) == ev.new_inbound_spi


# --------------------------------------------------------------------------- negotiation details


@pytest.mark.parametrize("side", SIDES)
def test_invalid_ke_retry(side: str, topo, interop) -> None:
    """The initiator's first KE guess is not the responder's choice: INVALID_KE_PAYLOAD
    names the group, the initiator retries with it (RFC 7296 1.2)."""
    auth, psks = psk_pair()
    # the initiator guesses its first group (x25519); the responder takes ecp256 only
    guess, only = "aes128gcm16-prfsha256-x25519-ecp256", "aes128gcm16-prfsha256-ecp256"
    py_ike, charon_ike = (guess, only) if side == "pyipsec" else (only, guess)
    peer = py_peer(ike=py_ike, local_auth=auth, remote_auth=auth)
    charon, drv = start(interop, topo, charon_conn(ike=charon_ike), psks, peer)
    up, inst, ike, child = establish(side, charon, drv, peer)
    assert ike["dh-group"] == "ECP_256" and up.proposal.endswith("ecp256")
    if side == "pyipsec":
        assert "DH group CURVE_25519 unacceptable, requesting ECP_256" in charon.log_text()
    else:
        assert drv.endpoint.statistics().counter("invalid_ke_sent") == 1
        assert "peer didn't accept DH group CURVE_25519, it requested ECP_256" in (
            charon.log_text()
        )


@pytest.mark.parametrize("side", ["charon"])
def test_cookie(side: str, topo, interop) -> None:
    """pyipsec as responder demands a COOKIE before keeping state (RFC 7296 2.6) and
    charon retries with it. (charon's own cookie demand cannot be forced for the first
    IKE_SA_INIT from a configuration, so there is no pyipsec-initiates case.)"""
    auth, psks = psk_pair()
    peer = py_peer(local_auth=auth, remote_auth=auth)
    charon = interop.charon(Charon(topo.a.ns, [charon_conn()], psks))
    charon.start()
    config = EndpointConfig(peers=(peer,), local_addr=B, cookie_threshold=0)
    drv = interop.driver(IkeDriver(topo.b.ns, B, config))
    drv.start()
    up, inst, ike, child = establish(side, charon, drv, peer)
    check_agreement(side, up, inst, ike, child, "aes128gcm16")
    assert drv.endpoint.statistics().counter("cookies_sent") == 1
    assert "N(COOKIE)" in charon.log_text()


@pytest.mark.parametrize("side", SIDES)
def test_selector_narrowing(side: str, topo, interop) -> None:
    """The initiator proposes a wider subnet pair than the responder allows; the
    responder narrows it to its own configuration (RFC 7296 2.9) and both install that."""
    auth, psks = psk_pair()
    wide, narrow = ("10.99.0.0/16", "10.99.0.0/16"), (f"{B}/32", f"{A}/32")
    py_ts = wide if side == "pyipsec" else narrow
    charon_ts = (f"{A}/32", f"{B}/32") if side == "pyipsec" else ("10.99.0.0/16",) * 2
    peer = py_peer(local_ts=py_ts[0], remote_ts=py_ts[1], local_auth=auth, remote_auth=auth)
    conn = charon_conn(local_ts=charon_ts[0], remote_ts=charon_ts[1])
    charon, drv = start(interop, topo, conn, psks, peer)
    up, inst, ike, child = establish(side, charon, drv, peer)
    assert child["local-ts"] == [f"{A}/32"] and child["remote-ts"] == [f"{B}/32"], child
    assert [str(t.start_addr) for t in inst.local_ts] == [B]
    assert [str(t.end_addr) for t in inst.remote_ts] == [A]


@pytest.mark.parametrize("side", SIDES)
def test_child_no_common_proposal(side: str, topo, interop) -> None:
    """The IKE SA is fine, the ESP proposals have nothing in common: the first Child SA is
    refused with NO_PROPOSAL_CHOSEN and the IKE SA stays up on both sides."""
    auth, psks = psk_pair()
    peer = py_peer(esp="aes256-sha512", local_auth=auth, remote_auth=auth)
    charon, drv = start(interop, topo, charon_conn(esp="chacha20poly1305"), psks, peer)
    expect_failure(side, charon, drv, peer)
    ev = drv.wait_event(NegotiationFailed)
    assert ev.notify == NotifyType.NO_PROPOSAL_CHOSEN, ev
    drv.wait_event(IkeSaUp)
    if side == "pyipsec":
        charon.wait_for_log("no acceptable proposal found")
    else:
        charon.wait_for_log("NO_PROPOSAL_CHOSEN")
    assert not drv.events_of(ChildSaInstalled) and charon.child_sas(block=True) == []
    assert len(charon.list_sas(block=True)) == 1


@pytest.mark.parametrize("side", SIDES)
def test_second_child_sa(side: str, topo, interop) -> None:
    """A second Child SA in the same IKE SA (CREATE_CHILD_SA), created by ``side``."""
    auth, psks = psk_pair()
    second_py = ChildConfig("t-2", local_ts=(f"{B}/32[tcp]",), remote_ts=(f"{A}/32[tcp]",),
                            mode="tunnel", esp_proposals=("chacha20poly1305",))  # fmt: skip
    peer = py_peer(local_auth=auth, remote_auth=auth)
    peer = PeerConfig(**{f: getattr(peer, f) for f in peer.__dataclass_fields__} | {
        "children": (*peer.children, second_py)})  # fmt: skip
    conn = charon_conn()
    conn.children.append(Child("t-2", [f"{A}/32[tcp]"], [f"{B}/32[tcp]"],
                               esp_proposals=["chacha20poly1305"]))  # fmt: skip
    charon, drv = start(interop, topo, conn, psks, peer)
    up, inst, ike, child = establish("pyipsec", charon, drv, peer)
    if side == "pyipsec":
        drv.call(lambda ep, now: ep.create_child(up.ike_sa, second_py, now))
    else:
        charon.initiate("t-2")
    second = drv.wait_event(ChildSaInstalled, lambda e: e.child == "t-2")
    theirs = charon.wait_established("t-2")
    assert int(theirs["spi-in"], 16) == second.outbound_spi
    assert theirs["encr-alg"] == "CHACHA20_POLY1305" and second.algorithm == "chacha20poly1305"
    assert theirs["local-ts"] == [f"{A}/32[tcp]"], theirs
    assert len(charon.list_sas(block=True)) == 1 and len(installed(charon)) == 1


@pytest.mark.parametrize("side", SIDES)
def test_ip_address_identities(side: str, topo, interop) -> None:
    """No identities configured: both use their IP address (ID_IPV4_ADDR), and the PSK is
    found by address on charon's side."""
    secret = os.urandom(32)
    auth = AuthConfig(psk=secret)
    peer = py_peer(local_id=None, remote_id=None, local_auth=auth, remote_auth=auth)
    conn = charon_conn(local_id=A, remote_id=B)
    charon, drv = start(interop, topo, conn, [Psk(ids=(A, B), secret=secret)], peer)
    up, inst, ike, child = establish(side, charon, drv, peer)
    assert ike["remote-id"] == B and up.remote_id == A and up.local_id == B
    assert int(child["spi-in"], 16) == inst.outbound_spi


@pytest.mark.parametrize("side", SIDES)
def test_esn_preference(side: str, topo, interop) -> None:
    """pyipsec's default ESP proposals prefer extended sequence numbers; charon's
    kernel-libipsec has no ESN, so its proposal says noesn and that is what both use."""
    auth, psks = psk_pair()
    peer = py_peer(esp="aes128gcm16-esn", local_auth=auth, remote_auth=auth)
    peer = PeerConfig(**{f: getattr(peer, f) for f in peer.__dataclass_fields__} | {
        "children": (ChildConfig("t-c", local_ts=(f"{B}/32",), remote_ts=(f"{A}/32",),
                                 mode="tunnel"),)})  # fmt: skip
    assert peer.children[0].esp_proposals == ("aes128gcm16-esn", "aes128gcm16")
    charon, drv = start(interop, topo, charon_conn(esp="aes128gcm16"), psks, peer)
    up, inst, ike, child = establish(side, charon, drv, peer)
    assert not inst.esn and "esn" not in child, child
    check_agreement(side, up, inst, ike, child, "aes128gcm16")


@pytest.mark.parametrize("side", SIDES)
def test_charon_reauthenticates(side: str, topo, interop) -> None:
    """charon reauthenticates (make-before-break: a new IKE SA with IKE_SA_INIT and
    IKE_AUTH, then the old one is deleted): pyipsec ends with exactly the new IKE SA and
    its Child SA, agreeing with charon."""
    auth, psks = psk_pair()
    peer = py_peer(local_auth=auth, remote_auth=auth)
    conn = charon_conn(reauth_time="3s", rekey_time="0", over_time="30s", rand_time="0s")
    charon, drv = start(interop, topo, conn, psks, peer)
    up, inst, ike, child = establish(side, charon, drv, peer)
    second = drv.wait_event(IkeSaUp, lambda e: e.spi_i != up.spi_i, timeout=15)
    drv.wait_event(IkeSaDown, lambda e: e.ike_sa == up.ike_sa, timeout=15)
    wait_until(lambda: ike_spis(charon) == [(second.spi_i, second.spi_r)],
               what="charon to keep only the new IKE SA", log=charon.log_text)  # fmt: skip
    (now_child,) = installed(charon)
    (ours,) = [c for c in drv.call(lambda ep, now: ep.child_sas(second.ike_sa))
               if c.state == "installed"]  # fmt: skip
    assert int(now_child["spi-in"], 16) == ours.outbound_spi
    assert drv.call(lambda ep, now: ep.statistics()).ike_sas == 1


@pytest.mark.parametrize("side", SIDES)
def test_several_traffic_selectors(side: str, topo, interop) -> None:
    """A Child SA with two selectors on each side (TSi/TSr with several entries: TCP and
    UDP between the hosts; charon's kernel-libipsec needs a local address inside each of
    its selectors to route them, so no foreign subnets here)."""
    auth, psks = psk_pair()
    mine, theirs = (f"{B}/32[tcp]", f"{B}/32[udp]"), (f"{A}/32[tcp]", f"{A}/32[udp]")
    py_child = ChildConfig("t-c", local_ts=mine, remote_ts=theirs, mode="tunnel",
                           esp_proposals=("aes128gcm16",))  # fmt: skip
    peer = py_peer(local_auth=auth, remote_auth=auth)
    peer = PeerConfig(**{f: getattr(peer, f) for f in peer.__dataclass_fields__}
                      | {"children": (py_child,)})  # fmt: skip
    conn = charon_conn()
    conn.children[0].local_ts, conn.children[0].remote_ts = list(theirs), list(mine)
    charon, drv = start(interop, topo, conn, psks, peer)
    up, inst, ike, child = establish(side, charon, drv, peer)
    assert sorted(child["local-ts"]) == sorted(theirs), child
    assert sorted(child["remote-ts"]) == sorted(mine), child
    assert len(inst.local_ts) == 2 and len(inst.remote_ts) == 2, inst
