"""Several authentication methods per connection (issue 7) against strongSwan's charon.

pyipsec (pyi-bi) lists two methods (PeerConfig.auth_alternatives), charon (pyi-ai) has one:

* pyipsec initiates with its certificate first; charon only knows the PSK and refuses the
  signature (AUTHENTICATION_FAILED); pyipsec starts over with a new IKE SA and its PSK;
* charon initiates with the PSK: pyipsec verifies with its PSK method and answers in kind;
* charon initiates with its certificate to a pyipsec that lists the PSK first: pyipsec
  verifies the signature with its certificate method and signs its answer.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from cryptography.hazmat.primitives.serialization import Encoding  # noqa: E402
from ikedriver import IkeDriver  # noqa: E402
from ikeinterop import (  # noqa: E402
    CHARON_FQDN,
    CHARON_ID,
    PY_FQDN,
    PY_ID,
    B,
    charon_conn,
    psk_pair,
    py_peer,
    start,
)

import strongswan  # noqa: E402
from pki import Pki, make_ee  # noqa: E402
from pyipsec.ike import (  # noqa: E402
    AuthConfig,
    AuthenticationFailed,
    ChildSaInstalled,
    EndpointConfig,
    IkeSaDown,
    IkeSaUp,
)
from strongswan import Charon  # noqa: E402

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(not os.path.exists(strongswan.CHARON), reason="strongSwan not installed"),
]


def _py_cert(pki: Pki, name: str, **sans) -> tuple[AuthConfig, AuthConfig]:
    """pyipsec's certificate method: (local, remote) trusting ``pki``'s root."""
    ee = make_ee(pki.root, "p256", cn=name, **sans)
    return (
        AuthConfig(method="pubkey", private_key=ee.key, cert_chain=(ee.cert,)),
        AuthConfig(method="pubkey", trusted_cas=(pki.root.cert,)),
    )


@pytest.mark.parametrize("side", ["pyipsec"])
def test_initiator_falls_back_to_psk(side: str, topo, interop) -> None:
    psk, psks = psk_pair()
    cert_local, cert_remote = _py_cert(Pki(), PY_ID, emails=[PY_ID])
    peer = py_peer(local_auth=cert_local, remote_auth=cert_remote, auth_alternatives=((psk, psk),))
    charon, drv = start(interop, topo, charon_conn(), psks, peer)
    drv.call(lambda ep, now: ep.initiate(peer, peer.children[0], now))
    up = drv.wait_event(IkeSaUp)
    inst = drv.wait_event(ChildSaInstalled)
    (failed,) = drv.events_of(AuthenticationFailed)
    assert "rejected" in failed.reason and failed.retry == up.ike_sa != failed.ike_sa
    assert up.auth == "psk" and up.remote_id == CHARON_ID and inst.ike_sa == up.ike_sa
    assert not [e for e in drv.events_of(IkeSaDown) if e.ike_sa == failed.ike_sa]
    child = charon.wait_established("t-c")
    assert int(child["spi-in"], 16) == inst.outbound_spi
    log = charon.log_text()
    assert f"authentication of '{PY_ID}' with pre-shared key successful" in log, log[-3000:]
    (ike,) = charon.list_sas(block=True).values()
    assert ike["state"] == "ESTABLISHED"
    assert drv.endpoint.statistics().counter("auth_retries") == 1
    assert psk.psk is not None and psk.psk.hex() not in drv.log_text()


@pytest.mark.parametrize("side", ["charon"])
def test_responder_answers_psk_with_psk(side: str, topo, interop) -> None:
    psk, psks = psk_pair()
    cert_local, cert_remote = _py_cert(Pki(), PY_ID, emails=[PY_ID])
    peer = py_peer(local_auth=cert_local, remote_auth=cert_remote, auth_alternatives=((psk, psk),))
    charon, drv = start(interop, topo, charon_conn(), psks, peer)
    charon.initiate("t-c")
    up = drv.wait_event(IkeSaUp)
    assert up.auth == "psk" and not up.initiator and up.remote_id == CHARON_ID
    assert not drv.events_of(AuthenticationFailed)
    log = charon.log_text()
    assert f"authentication of '{PY_ID}' with pre-shared key successful" in log, log[-3000:]


@pytest.mark.parametrize("side", ["charon"])
def test_responder_answers_certificate_with_certificate(side: str, topo, interop) -> None:
    pki = Pki()
    charon_ee = make_ee(pki.root, "p256", cn=CHARON_FQDN, dns=[CHARON_FQDN])
    conn = charon_conn(
        local_id=CHARON_FQDN, remote_id=PY_FQDN, local_cert="charon.pem", send_cert="always",
        auth="pubkey", remote_auth="pubkey",
    )  # fmt: skip
    charon = interop.charon(Charon(topo.a.ns, [conn]))
    charon.add_cert("root.pem", pki.root.cert.public_bytes(Encoding.PEM), ca=True)
    charon.add_identity("charon.pem", charon_ee.cert, charon_ee.key, [])
    psk = AuthConfig(psk=os.urandom(32))
    cert_local, cert_remote = _py_cert(pki, PY_FQDN, dns=[PY_FQDN])
    peer = py_peer(
        local_id=PY_FQDN, remote_id=CHARON_FQDN, local_auth=psk, remote_auth=psk,
        auth_alternatives=((cert_local, cert_remote),),
    )  # fmt: skip
    charon.start()
    drv = interop.driver(IkeDriver(topo.b.ns, B, EndpointConfig(peers=(peer,), local_addr=B)))
    drv.start()
    charon.initiate("t-c")
    up = drv.wait_event(IkeSaUp)
    assert up.auth == "pubkey" and up.remote_id == CHARON_FQDN
    assert not drv.events_of(AuthenticationFailed)
    log = charon.log_text()
    lines = [ln for ln in log.splitlines() if f"authentication of '{PY_FQDN}' with" in ln]
    assert lines and "successful" in lines[0] and "ECDSA" in lines[0].upper(), log[-3000:]
