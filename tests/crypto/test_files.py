"""Credentials read from files: PEM and DER, bundles, typed errors without content."""

from __future__ import annotations

import datetime as dt
import os

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from pyipsec.crypto.files import load_certificate, load_certificates, load_crl, load_private_key
from pyipsec.errors import ConfigError


def _cert(name: str, key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    return (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )  # fmt: skip


@pytest.fixture
def key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def test_key_bundle_der_and_crl(tmp_path, key) -> None:
    pem_key = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )  # fmt: skip
    (tmp_path / "k.pem").write_bytes(pem_key)
    assert load_private_key(tmp_path / "k.pem").private_numbers() == key.private_numbers()
    a, b = _cert("a", key), _cert("b", key)
    bundle = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (a, b))
    (tmp_path / "bundle.pem").write_bytes(bundle)
    assert load_certificates(tmp_path / "bundle.pem") == (a, b)
    assert load_certificate(tmp_path / "bundle.pem") == a
    (tmp_path / "a.der").write_bytes(a.public_bytes(serialization.Encoding.DER))
    assert load_certificates(tmp_path / "a.der") == (a,)
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    crl = (
        x509.CertificateRevocationListBuilder().issuer_name(a.subject)
        .last_update(now).next_update(now + dt.timedelta(days=1)).sign(key, hashes.SHA256())
    )  # fmt: skip
    for encoding, name in ((serialization.Encoding.PEM, "c.pem"), (serialization.Encoding.DER,
                                                                   "c.der")):  # fmt: skip
        (tmp_path / name).write_bytes(crl.public_bytes(encoding))
        assert load_crl(tmp_path / name) == crl


def test_errors_name_the_file_never_the_content(tmp_path, key) -> None:
    secret = b"-----BEGIN PRIVATE KEY-----\nc2VjcmV0LXN0dWZm\n-----END PRIVATE KEY-----\n"
    (tmp_path / "bad.pem").write_bytes(secret)
    with pytest.raises(ConfigError, match="not an unencrypted PEM private key") as info:
        load_private_key(tmp_path / "bad.pem")
    assert info.value.key == str(tmp_path / "bad.pem")
    assert "c2VjcmV0" not in str(info.value)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pass phrase"),
    )  # fmt: skip
    (tmp_path / "enc.pem").write_bytes(encrypted)
    with pytest.raises(ConfigError, match="unencrypted"):
        load_private_key(tmp_path / "enc.pem")
    with pytest.raises(ConfigError, match="cannot read certificate"):
        load_certificates(tmp_path / "missing.pem")
    (tmp_path / "junk").write_bytes(b"junk")
    with pytest.raises(ConfigError, match="not a certificate"):
        load_certificate(tmp_path / "junk")
    with pytest.raises(ConfigError, match="not a CRL"):
        load_crl(tmp_path / "junk")
    os.chmod(tmp_path / "junk", 0)
    if os.geteuid() != 0:  # root reads anything
        with pytest.raises(ConfigError, match="cannot read CRL"):
            load_crl(tmp_path / "junk")
