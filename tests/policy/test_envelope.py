"""Signed policy envelopes: round trips for every key type and every refusal."""

from __future__ import annotations

import dataclasses
import json

import pytest
from cryptography.hazmat.primitives import serialization

from centralkit import policy_text
from pyipsec.errors import ConfigError
from pyipsec.pki.ca import CertificateAuthority, make_csr
from pyipsec.policy.envelope import (
    EnvelopeError,
    PolicyEnvelope,
    SignatureInvalid,
    sign_envelope,
    validate_policy_text,
    verify_envelope,
)

NOW = 1_780_000_000.0
TEXT = policy_text("one")


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    return CertificateAuthority.init(tmp_path_factory.mktemp("ca"), "CA", now=NOW)


def _signer(ca, key_type="p256", name="policy-server", ips=("127.0.0.1",), days=30):
    key, csr = make_csr(name, ips=ips, dns=["policy.example"], key_type=key_type)
    return key, ca.issue(csr, now=NOW, days=days)


def _env(ca, key_type="p256", **kw):
    key, cert = _signer(ca, key_type)
    fields = dict(host="hosta", name="web", version=3, text=TEXT, now=NOW + 10)
    fields.update(kw)
    return sign_envelope(key=key, certificate=cert, **fields), cert


@pytest.mark.parametrize("key_type", ["p256", "p384", "ed25519", "rsa3072"])
def test_round_trip_each_key_type(ca, key_type):
    env, _ = _env(ca, key_type)
    again = PolicyEnvelope.from_json(env.to_json())
    assert again == env
    for name in ("127.0.0.1", "policy.example", "POLICY.example", "policy-server"):
        verify_envelope(again, ca=ca.certificate, now=NOW + 20, signer_name=name, host="hosta")


def test_refusals(ca, tmp_path):
    env, cert = _env(ca)
    verify = dict(ca=ca.certificate, now=NOW + 20, signer_name="127.0.0.1", host="hosta")
    cases = {
        "altered": (dataclasses.replace(env, text=TEXT + "#\n"), {}),
        "signature": (dataclasses.replace(env, version=4), {}),
        "not base64": (dataclasses.replace(env, signature="!!!"), {}),
        "is for host": (env, {"host": "hostb"}),
        "does not name": (env, {"signer_name": "10.0.0.9"}),
        "expired": (env, {"now": NOW + 90 * 86400}),
        "revoked": (env, {"revoked_serials": [cert.serial_number]}),
    }
    for reason, (candidate, override) in cases.items():
        with pytest.raises(SignatureInvalid, match=reason):
            verify_envelope(candidate, **{**verify, **override})
    # signer issued by another CA
    other = CertificateAuthority.init(tmp_path / "other", "other", now=NOW)
    key, foreign = _signer(other)
    forged = sign_envelope(
        host="hosta", name="web", version=3, text=TEXT, now=NOW, key=key, certificate=foreign
    )
    with pytest.raises(SignatureInvalid, match="not issued by the trusted CA"):
        verify_envelope(forged, **verify)
    # the CA certificate itself as signer: refused
    ca_key = serialization.load_pem_private_key((ca.directory / "ca.key").read_bytes(), None)
    by_ca = sign_envelope(
        host="hosta",
        name="web",
        version=3,
        text=TEXT,
        now=NOW,
        key=ca_key,
        certificate=ca.certificate,
    )
    with pytest.raises(SignatureInvalid, match="CA certificate"):
        verify_envelope(by_ca, **{**verify, "signer_name": None})
    # revoked through the CA's CRL
    ca.revoke(cert.serial_number, now=NOW + 5)
    from pyipsec.pki.ca import load_crl

    with pytest.raises(SignatureInvalid, match="revoked"):
        verify_envelope(env, **verify, crls=[load_crl(ca.crl_path)])
    with pytest.raises(SignatureInvalid, match="cannot be parsed"):
        verify_envelope(dataclasses.replace(env, signer="junk"), **verify)


def test_malformed_envelopes(ca):
    env, _ = _env(ca)
    good = json.loads(env.to_json())
    bad_docs = [
        b"\xff",
        b"[1]",
        json.dumps({**good, "format": "other/9"}).encode(),
        json.dumps({k: v for k, v in good.items() if k != "sha256"}).encode(),
        json.dumps({**good, "version": "3"}).encode(),
        json.dumps({**good, "version": True}).encode(),
        json.dumps({**good, "extra": 1}).encode(),
        b" " * (4 * 1024 * 1024 + 1),
    ]
    for doc in bad_docs:
        with pytest.raises(EnvelopeError):
            PolicyEnvelope.from_json(doc)


def test_signed_bytes_cover_everything_but_the_signature(ca):
    env, _ = _env(ca)
    covered = json.loads(env.signed_bytes())
    assert "signature" not in covered
    assert set(covered) == {f.name for f in dataclasses.fields(env)} - {"signature"}
    assert dataclasses.replace(env, signature="x").signed_bytes() == env.signed_bytes()


def test_validate_policy_text():
    validate_policy_text(TEXT, "t")
    for bad in ("- a list\n", "a: [\n", "a: 1\na: 2\n"):
        with pytest.raises(ConfigError):
            validate_policy_text(bad, "t")
    with pytest.raises(ConfigError):
        validate_policy_text(b"name: x", "t")  # type: ignore[arg-type]
