"""The file-based CA: init, enroll + issue, revoke + CRL, list; checked with the IKE validator."""

from __future__ import annotations

import datetime as _dt
import json
import os
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from pyipsec.crypto.certs import CertValidator
from pyipsec.errors import ConfigError, ProtocolError
from pyipsec.pki.ca import (
    IPSEC_IKE_EKU,
    CertificateAuthority,
    load_certificate,
    load_crl,
    load_private_key,
    make_csr,
    private_key_pem,
    write_private,
)
from pyipsec.wire.iana import IdType

NOW = 1_780_000_000.0  # 2026-05-28


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture()
def ca(tmp_path):
    return CertificateAuthority.init(tmp_path / "ca", "pyipsec test CA", now=NOW)


def test_init_creates_key_0600_and_self_signed_ca(ca, tmp_path):
    d = tmp_path / "ca"
    assert _mode(d / "ca.key") == 0o600
    assert _mode(d) == 0o700
    cert = load_certificate(d / "ca.crt")
    assert cert.subject == cert.issuer
    cert.verify_directly_issued_by(cert)
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert bc.ca is True
    assert load_crl(d / "crl.pem").is_signature_valid(cert.public_key())
    assert len(load_crl(d / "crl.der")) == 0
    assert "BEGIN" not in repr(ca) and "PRIVATE" not in repr(ca)


def test_init_refuses_to_overwrite(ca, tmp_path):
    with pytest.raises(ConfigError, match="already exists"):
        CertificateAuthority.init(tmp_path / "ca", "again", now=NOW)


def test_open_missing_ca_is_typed_error(tmp_path):
    with pytest.raises(ConfigError, match="pki init"):
        CertificateAuthority(tmp_path / "nothing")


@pytest.mark.parametrize("key_type", ["p256", "p384", "ed25519"])
def test_enroll_issue_and_ike_validation(ca, key_type):
    key, csr = make_csr("hosta", ips=["192.0.2.10"], dns=["hosta.example"], key_type=key_type)
    cert = ca.issue(csr.public_bytes(serialization.Encoding.PEM), now=NOW, days=30)
    cert.verify_directly_issued_by(ca.certificate)
    assert cert.public_key() == key.public_key()
    eku = set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    assert eku == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH, IPSEC_IKE_EKU}
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["hosta.example"]
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["192.0.2.10"]
    # The IKE layer accepts it for both identities.
    validator = CertValidator([ca.certificate])
    import ipaddress

    validator.validate(
        cert, now=NOW + 60, identity=(IdType.IPV4_ADDR, ipaddress.ip_address("192.0.2.10").packed)
    )
    validator.validate(cert, now=NOW + 60, identity=(IdType.FQDN, b"hosta.example"))
    with pytest.raises(ProtocolError, match="expired"):
        validator.validate(cert, now=NOW + 40 * 86400)


def test_issue_adds_sans_and_defaults_to_cn(ca):
    _, csr = make_csr("db.example")
    cert = ca.issue(csr, now=NOW)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["db.example"]
    _, csr = make_csr("web", ips=["192.0.2.1"])
    cert = ca.issue(csr, now=NOW, ips=["2001:db8::1"], dns=["web.example"])
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {str(a) for a in san.get_values_for_type(x509.IPAddress)} == {"192.0.2.1", "2001:db8::1"}
    assert san.get_values_for_type(x509.DNSName) == ["web.example"]


def test_issue_refuses_bad_csrs(ca, tmp_path):
    with pytest.raises(ConfigError, match="not a certificate signing request"):
        ca.issue(
            b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
            now=NOW,
        )
    # A CSR whose signature was broken (subject swapped after signing is not possible with
    # the builder, so flip a byte in the signature).
    _, csr = make_csr("hostx")
    der = bytearray(csr.public_bytes(serialization.Encoding.DER))
    der[-3] ^= 0x01
    with pytest.raises(ConfigError, match="signature"):
        ca.issue(bytes(der), now=NOW)
    with pytest.raises(ConfigError, match="IP address"):
        make_csr("hosty", ips=["not-an-ip"])
    with pytest.raises(ConfigError, match="host name"):
        make_csr("a/b")
    assert ca.list() == []  # nothing recorded by refused requests


def test_revoke_publishes_crl_honoured_by_ike(ca):
    _, csr_a = make_csr("hosta", ips=["192.0.2.10"])
    _, csr_b = make_csr("hostb", ips=["192.0.2.11"])
    a = ca.issue(csr_a, now=NOW)
    b = ca.issue(csr_b, now=NOW)
    rec = ca.revoke(a.serial_number, now=NOW + 10, reason="key-compromise")
    assert rec.status(NOW + 20) == "revoked" and rec.reason == "key-compromise"
    crl = load_crl(ca.crl_path)
    assert crl.is_signature_valid(ca.certificate.public_key())
    assert crl.get_revoked_certificate_by_serial_number(a.serial_number) is not None
    assert crl.get_revoked_certificate_by_serial_number(b.serial_number) is None
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 1
    validator = CertValidator([ca.certificate], crls=[crl])
    with pytest.raises(ProtocolError, match="revoked"):
        validator.validate(a, now=NOW + 60)
    validator.validate(b, now=NOW + 60)
    # revoked_serials() feeds CertValidator(revoked_serials=...) as well
    v2 = CertValidator([ca.certificate], revoked_serials=ca.revoked_serials())
    with pytest.raises(ProtocolError, match="revoked"):
        v2.validate(a, now=NOW + 60)
    with pytest.raises(ConfigError, match="already revoked"):
        ca.revoke(a.serial_number, now=NOW + 30)
    with pytest.raises(ConfigError, match="no certificate"):
        ca.revoke(12345, now=NOW + 30)
    with pytest.raises(ConfigError, match="unknown reason"):
        ca.revoke(b.serial_number, now=NOW + 30, reason="because")
    stats = ca.statistics()
    assert (stats.issued, stats.revoked, stats.crl_number) == (2, 1, 1)


def test_list_and_persistence(ca, tmp_path):
    _, csr = make_csr("hosta", ips=["192.0.2.10"])
    cert = ca.issue(csr, now=NOW, days=10)
    again = CertificateAuthority(tmp_path / "ca")  # reopened from disk
    (entry,) = again.list()
    assert entry.serial == cert.serial_number
    assert entry.subject == "hosta" and entry.sans == ("ip:192.0.2.10",)
    assert entry.status(NOW) == "valid"
    assert entry.status(NOW + 11 * 86400) == "expired"
    assert (tmp_path / "ca" / "issued" / f"{cert.serial_number:x}.crt").exists()
    index = json.loads((tmp_path / "ca" / "index.json").read_text())
    assert "PRIVATE" not in json.dumps(index)
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == _dt.timedelta(days=10)


def test_write_private_0600_and_no_overwrite(tmp_path):
    key, _ = make_csr("h")
    path = tmp_path / "h.key"
    write_private(path, private_key_pem(key))
    assert _mode(path) == 0o600
    with pytest.raises(ConfigError, match="refusing to overwrite") as info:
        write_private(path, private_key_pem(key))
    assert "PRIVATE" not in str(info.value)
    assert load_private_key(path).public_key() == key.public_key()
    (tmp_path / "bad.key").write_text(
        "-----BEGIN PRIVATE KEY-----\nsecretstuff\n-----END PRIVATE KEY-----\n"
    )
    with pytest.raises(ConfigError) as info:
        load_private_key(tmp_path / "bad.key")
    assert "secretstuff" not in str(info.value)
