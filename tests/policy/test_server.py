"""The policy server over real mutual TLS on 127.0.0.1 (certificates from pyipsec.pki)."""

from __future__ import annotations

import http.client
import json
import ssl
import time

import pytest
from cryptography.hazmat.primitives import serialization

from centralkit import Central, issue_identity, policy_text
from pyipsec.errors import ConfigError
from pyipsec.pki.ca import CertificateAuthority, load_certificate
from pyipsec.policy.envelope import PolicyEnvelope, verify_envelope
from pyipsec.policy.server import PolicyServer


@pytest.fixture()
def central(tmp_path):
    c = Central(tmp_path)
    c.store.create_policy("web", policy_text("one"), author="admin", now=time.time())
    c.store.create_group("webdb", now=time.time())
    c.store.assign("web", "webdb", now=time.time())
    yield c
    c.close()


def _connect(central: Central, cert=None, key=None, ca=None) -> http.client.HTTPSConnection:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=str(ca or central.ca.cert_path))
    if cert is not None:
        ctx.load_cert_chain(str(cert), str(key))
    return http.client.HTTPSConnection(
        "127.0.0.1", central.server.address[1], context=ctx, timeout=5
    )


def _get(central, ident, path="/v1/policy") -> tuple[int, bytes]:
    conn = _connect(central, ident.cert, ident.key)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _post(central, ident, body: bytes, path="/v1/applied", method="POST") -> tuple[int, dict]:
    conn = _connect(central, ident.cert, ident.key)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def test_host_gets_signed_policy_by_certificate_identity(central):
    hosta = central.host("hosta", ips=["10.77.0.1"])
    central.store.add_host("webdb", "hosta", now=time.time())
    status, body = _get(central, hosta)
    assert status == 200
    env = PolicyEnvelope.from_json(body)
    assert (env.host, env.name, env.version) == ("hosta", "web", 1)
    assert env.text == policy_text("one")
    verify_envelope(
        env, ca=central.ca.certificate, now=time.time(), signer_name="127.0.0.1", host="hosta"
    )
    signer = load_certificate(central.server_id.cert)
    assert signer.public_bytes(serialization.Encoding.PEM).decode() == env.signer
    # versioning: an edit is served on the next request
    central.store.edit_policy("web", policy_text("two"), author="admin", now=time.time())
    status, body = _get(central, hosta)
    assert PolicyEnvelope.from_json(body).version == 2
    assert central.server.statistics().policies_served == 2


def test_host_in_no_group_and_conflicts(central):
    hostc = central.host("hostc")
    status, body = _get(central, hostc)
    assert status == 404 and "no policy assigned" in json.loads(body)["error"]
    central.store.create_policy("other", policy_text("x", name="Other"), author="a", now=1.0)
    central.store.create_group("ops", now=1.0)
    central.store.assign("other", "ops", now=1.0)
    central.store.add_host("ops", "hostc", now=1.0)
    central.store.add_host("webdb", "hostc", now=1.0)
    status, body = _get(central, hostc)
    assert status == 409 and "conflicting" in json.loads(body)["error"]
    assert central.server.statistics().no_policy == 2


def test_clients_without_valid_machine_certificates_are_refused(central, tmp_path):
    # no client certificate at all
    conn = _connect(central)
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        conn.request("GET", "/v1/policy")
        conn.getresponse().read()
    conn.close()
    # a certificate from another CA
    rogue_ca = CertificateAuthority.init(tmp_path / "rogue", "rogue CA", now=time.time())
    rogue = issue_identity(rogue_ca, tmp_path / "rogue-hosts", "hosta")
    conn = _connect(central, rogue.cert, rogue.key)
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        conn.request("GET", "/v1/policy")
        conn.getresponse().read()
    conn.close()
    deadline = time.time() + 5
    while central.server.statistics().tls_failures < 2 and time.time() < deadline:
        time.sleep(0.05)
    stats = central.server.statistics()
    assert stats.tls_failures == 2 and stats.policies_served == 0
    # and the server still serves good hosts afterwards
    good = central.host("hostb")
    central.store.add_host("webdb", "hostb", now=1.0)
    assert _get(central, good)[0] == 200


def test_revoked_host_certificate_refused_without_restart(central):
    hosta = central.host("hosta")
    central.store.add_host("webdb", "hosta", now=1.0)
    assert _get(central, hosta)[0] == 200
    serial = load_certificate(hosta.cert).serial_number
    time.sleep(0.01)  # a distinct mtime for the new CRL on coarse filesystems
    central.ca.revoke(serial, now=time.time(), reason="key-compromise")
    status, body = _get(central, hosta)
    assert status == 403 and "revoked" in json.loads(body)["error"]
    assert central.server.statistics().revoked_clients == 1


def test_applied_reports_recorded_under_the_certificate_identity(central):
    hosta = central.host("hosta")
    sha = "ab" * 32
    report = {
        "policy": "web",
        "version": 1,
        "sha256": sha,
        "status": "applied",
        "host": "somebody-else",
    }
    status, body = _post(central, hosta, json.dumps(report).encode())
    assert (status, body) == (200, {"recorded": True})
    (rec,) = central.store.applied()
    assert (rec.host, rec.policy, rec.version, rec.status) == ("hosta", "web", 1, "applied")
    # bad reports: each refused, none recorded
    for bad in (
        b"not json",
        b"[]",
        json.dumps({**report, "version": "1"}).encode(),
        json.dumps({**report, "status": "exploded"}).encode(),
        json.dumps({"policy": "web"}).encode(),
    ):
        status, body = _post(central, hosta, bad)
        assert status == 400 and "error" in body
    assert len(central.store.applied()) == 1
    assert _post(central, hosta, b"{}", path="/v1/nothing")[0] == 404
    assert _post(central, hosta, b"{}", path="/v1/policy", method="PUT")[0] == 405
    assert _get(central, hosta, "/v1/health")[0] == 200
    stats = central.server.statistics()
    assert stats.applied_records == 1 and stats.bad_requests == 7


def test_bad_server_configuration_is_typed(central, tmp_path):
    with pytest.raises(ConfigError):
        PolicyServer(
            central.store,
            cert=tmp_path / "missing.crt",
            key=central.server_id.key,
            ca=central.ca.cert_path,
            port=0,
        )
    with pytest.raises(ConfigError, match="cannot listen"):
        PolicyServer(
            central.store,
            cert=central.server_id.cert,
            key=central.server_id.key,
            ca=central.ca.cert_path,
            listen="127.0.0.1",
            port=central.server.address[1],
        )
