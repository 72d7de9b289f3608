"""IKEv2 interop between pyipsec's IkeEndpoint and strongSwan's charon 5.9.8 (issue 6):
authentication, algorithms and negotiation details.

charon runs in pyi-ai (10.99.1.1), pyipsec's engine (tests/interop/ikedriver.py) on real
UDP 500/4500 sockets in pyi-bi (10.99.1.2). Every scenario runs with each side as the
initiator (the ``side`` parameter: one column of the matrix printed at the end, see
conftest.py) and checks on *both* sides what was agreed: IKE and Child SA SPIs, the
algorithms, the identities (charon's view through vici). No data plane is involved:
charon's Child SAs are installed in its kernel-libipsec (tunnel mode, ESP-in-UDP, since
``encap = yes`` makes charon fake a NAT), pyipsec's are only negotiated. Rekeying,
deletion and DPD are in test_ike_lifecycle_interop.py, traffic in test_traffic_interop.py.

One charon is started per scenario (about 0.3 s); the file runs in about a minute.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ikedriver import IkeDriver  # noqa: E402
from ikeinterop import (  # noqa: E402
    CHARON_FQDN,
    CHARON_ID,
    DH_NAMES,
    IKE_ENCR_NAMES,
    PY_FQDN,
    PY_ID,
    SIDES,
    A,
    B,
    cert_setup,
    charon_conn,
    check_agreement,
    establish,
    expect_failure,
    installed,
    psk_pair,
    py_peer,
    start,
    wait_until,
)  # fmt: skip

import strongswan  # noqa: E402
from pyipsec.ike import (  # noqa: E402
    AuthConfig,
    AuthenticationFailed,
    ChildConfig,
    ChildSaInstalled,
    EndpointConfig,
    IkeSaDown,
    IkeSaUp,
    NegotiationFailed,
    PeerConfig,
)
from pyipsec.wire.iana import NotifyType  # noqa: E402
from strongswan import Charon, Child, Psk  # noqa: E402

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(not os.path.exists(strongswan.CHARON), reason="strongSwan not installed"),
]


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
