"""Throwaway PKI for tests: root CA, intermediate CA, end-entity certificates, CRLs.

Import it from any test (``tests/`` is on the path)::

    from pki import Pki
    pki = Pki()                                   # root (ECDSA P-256) + intermediate
    alice = pki.issue("ed25519", dns=["alice.example"], ips=["192.0.2.1"])
    alice.cert, alice.key                         # x509.Certificate, private key
    pki.root.cert, pki.intermediate.cert          # trust anchor, chain element
    crl = pki.crl([alice.cert.serial_number])     # CRL by the intermediate

Key kinds: ``rsa2048``, ``rsa3072``, ``p256``, ``p384``, ``p521``, ``ed25519``, ``ed448``.
RSA keys are cached per kind and label (generation is slow); EC/EdDSA keys are fresh.
Certificates follow what real CAs emit (and what ``cryptography``'s verifier demands):
critical BasicConstraints and KeyUsage, SKI and AKI, SAN on end entities. ``now`` fixes
the validity window so tests are deterministic; ``days``/``not_before``/``not_after``
give expired or not-yet-valid certificates.
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

NOW = _dt.datetime(2026, 6, 1, 12, 0, 0, tzinfo=_dt.UTC)
IPSEC_IKE_EKU = x509.ObjectIdentifier("1.3.6.1.5.5.7.3.17")

_RSA_CACHE: dict[tuple[int, str], rsa.RSAPrivateKey] = {}


def new_key(kind: str, label: str = "") -> Any:
    """A private key of the given kind (RSA cached per (size, label))."""
    if kind.startswith("rsa"):
        bits = int(kind[3:])
        k = _RSA_CACHE.get((bits, label))
        if k is None:
            k = rsa.generate_private_key(public_exponent=65537, key_size=bits)
            _RSA_CACHE[(bits, label)] = k
        return k
    curves = {"p256": ec.SECP256R1, "p384": ec.SECP384R1, "p521": ec.SECP521R1}
    if kind in curves:
        return ec.generate_private_key(curves[kind]())
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if kind == "ed448":
        return ed448.Ed448PrivateKey.generate()
    raise ValueError(f"unknown key kind {kind}")


def _sign_hash(key: Any) -> hashes.HashAlgorithm | None:
    if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
        return None
    return hashes.SHA256()


def _name(cn: str, org: str = "pyipsec test") -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


@dataclass
class CertKey:
    """A certificate with its private key."""

    cert: x509.Certificate
    key: Any

    @property
    def public_key(self) -> Any:
        return self.cert.public_key()


def make_ca(
    cn: str,
    kind: str = "p256",
    *,
    issuer: CertKey | None = None,
    now: _dt.datetime = NOW,
    days: int = 3650,
    path_len: int | None = None,
    key_usage: str = "full",
) -> CertKey:
    """A self-signed root (``issuer`` None) or an intermediate CA signed by ``issuer``.

    ``key_usage``: ``full`` (keyCertSign, cRLSign, digitalSignature), ``none`` (no KeyUsage
    extension, as a plain ``openssl req -x509`` CA) or ``no-certsign`` (invalid for a CA).
    """
    key = new_key(kind, label=cn)
    subject = _name(cn)
    signer_key = key if issuer is None else issuer.key
    issuer_name = subject if issuer is None else issuer.cert.subject
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    b = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _dt.timedelta(days=1))
        .not_valid_after(now + _dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_len), critical=True)
        .add_extension(ski, critical=False)
    )
    if key_usage != "none":
        b = b.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=key_usage == "full",
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    aki_src = key.public_key() if issuer is None else issuer.key.public_key()
    b = b.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(aki_src), critical=False)
    return CertKey(b.sign(signer_key, _sign_hash(signer_key)), key)


def make_ee(
    issuer: CertKey,
    kind: str = "p256",
    *,
    cn: str = "host.example",
    dns: list[str] | tuple[str, ...] = (),
    ips: list[str] | tuple[str, ...] = (),
    emails: list[str] | tuple[str, ...] = (),
    now: _dt.datetime = NOW,
    days: int = 365,
    not_before: _dt.datetime | None = None,
    not_after: _dt.datetime | None = None,
    eku: list[x509.ObjectIdentifier] | None = None,
    digital_signature: bool = True,
    serial: int | None = None,
    key: Any = None,
) -> CertKey:
    """An end-entity certificate. ``eku`` None: serverAuth, clientAuth and ipsecIKE;
    ``[]``: no EKU extension at all."""
    key = key if key is not None else new_key(kind, label=cn)
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    sans += [x509.RFC822Name(e) for e in emails]
    b = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuer.cert.subject)
        .public_key(key.public_key())
        .serial_number(serial if serial is not None else x509.random_serial_number())
        .not_valid_before(not_before or now - _dt.timedelta(days=max(1, 30 - days)))
        .not_valid_after(not_after or now + _dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=digital_signature,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=not digital_signature,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()), False
        )
    )
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    if eku is None:
        eku = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH, IPSEC_IKE_EKU]
    if eku:
        b = b.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
    return CertKey(b.sign(issuer.key, _sign_hash(issuer.key)), key)


def make_crl(
    issuer: CertKey, serials: list[int] | tuple[int, ...], now: _dt.datetime = NOW
) -> x509.CertificateRevocationList:
    """A CRL signed by ``issuer`` revoking ``serials`` (valid from a day ago, 7 days)."""
    b = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.cert.subject)
        .last_update(now - _dt.timedelta(days=1))
        .next_update(now + _dt.timedelta(days=7))
    )
    for s in serials:
        b = b.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(s)
            .revocation_date(now - _dt.timedelta(hours=1))
            .build()
        )
    return b.sign(issuer.key, _sign_hash(issuer.key))


class Pki:
    """Root CA -> intermediate CA -> end entities, all valid at :data:`NOW`."""

    def __init__(self, ca_kind: str = "p256", name: str = "pyipsec test", now=NOW) -> None:
        self.now = now
        self.root = make_ca(f"{name} root CA", ca_kind, now=now)
        self.intermediate = make_ca(f"{name} intermediate CA", ca_kind, issuer=self.root, now=now)

    def issue(self, kind: str = "p256", *, direct: bool = False, **kw: Any) -> CertKey:
        """An end entity signed by the intermediate (or by the root with ``direct``)."""
        kw.setdefault("now", self.now)
        return make_ee(self.root if direct else self.intermediate, kind, **kw)

    def crl(self, serials: list[int], *, by_root: bool = False) -> x509.CertificateRevocationList:
        return make_crl(self.root if by_root else self.intermediate, serials, self.now)
