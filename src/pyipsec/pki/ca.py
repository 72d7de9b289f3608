"""A file-based certificate authority for machine certificates (``pyipsec pki``).

Administrators run the CA on one machine; hosts enroll by generating their key locally
(it never leaves the host) and sending a certificate signing request (CSR); the CA signs it;
revocation publishes a signed CRL that the IKE layer loads
(:class:`pyipsec.crypto.certs.CertValidator` takes ``crls=``). The exchange of CSR and
certificate is by file for now.

Directory layout of a CA (``pyipsec pki init --dir DIR``)::

    DIR/ca.key          CA private key, PKCS#8 PEM, mode 0600
    DIR/ca.crt          self-signed CA certificate (PEM)
    DIR/index.json      every issued certificate: serial, subject, SANs, validity, revocation
    DIR/issued/<serial>.crt   copies of the issued certificates (PEM)
    DIR/crl.pem         the current CRL, signed by the CA (also DIR/crl.der)

Issued host certificates carry what IKE (RFC 4945 5.1.3) and TLS need: critical
BasicConstraints CA=false, critical KeyUsage digitalSignature (plus keyEncipherment for RSA),
ExtendedKeyUsage serverAuth + clientAuth + ipsecIKE (1.3.6.1.5.5.7.3.17), SAN iPAddress /
dNSName, SubjectKeyIdentifier and AuthorityKeyIdentifier.

Time arrives as ``now`` (seconds since the epoch); this module never reads the clock. Key
material never appears in messages or repr().
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import ipaddress
import json
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pyipsec.crypto.files import load_certificate, load_crl, load_private_key
from pyipsec.errors import ConfigError

__all__ = [
    "KEY_TYPES",
    "CertificateAuthority",
    "IssuedCert",
    "PkiStats",
    "generate_key",
    "load_certificate",
    "load_crl",
    "load_private_key",
    "make_csr",
    "private_key_pem",
    "write_private",
]

IPSEC_IKE_EKU = x509.ObjectIdentifier("1.3.6.1.5.5.7.3.17")
KEY_TYPES = ("p256", "p384", "ed25519", "rsa3072")
_REASONS = {
    "unspecified": x509.ReasonFlags.unspecified,
    "key-compromise": x509.ReasonFlags.key_compromise,
    "superseded": x509.ReasonFlags.superseded,
    "cessation-of-operation": x509.ReasonFlags.cessation_of_operation,
    "affiliation-changed": x509.ReasonFlags.affiliation_changed,
}
REVOCATION_REASONS = tuple(_REASONS)


# --------------------------------------------------------------------------- helpers


def _dt_of(now: float) -> _dt.datetime:
    return _dt.datetime.fromtimestamp(int(now), tz=_dt.UTC)


def generate_key(key_type: str = "p256") -> Any:
    """A fresh private key of ``key_type`` (one of :data:`KEY_TYPES`)."""
    if key_type == "p256":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "p384":
        return ec.generate_private_key(ec.SECP384R1())
    if key_type == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if key_type == "rsa3072":
        return rsa.generate_private_key(public_exponent=65537, key_size=3072)
    raise ConfigError(
        f"unknown key type {key_type!r} (one of {', '.join(KEY_TYPES)})", key="key_type"
    )


def _sign_hash(key: Any) -> hashes.HashAlgorithm | None:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return None
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size >= 384:
        return hashes.SHA384()
    return hashes.SHA256()


def write_private(path: str | os.PathLike[str], data: bytes, *, overwrite: bool = False) -> None:
    """Write secret ``data`` to ``path`` with mode 0600 from the first byte on."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise ConfigError("refusing to overwrite an existing key file", key=str(path)) from None
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
    finally:
        os.close(fd)


def _write_public(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def private_key_pem(key: Any) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _parse_ips(ips: Iterable[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    for ip in ips:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(ip)))
        except ValueError:
            raise ConfigError(f"not an IP address: {ip!r}", key="ip") from None
    return out


def make_csr(
    name: str, *, ips: Iterable[str] = (), dns: Iterable[str] = (), key_type: str = "p256"
) -> tuple[Any, x509.CertificateSigningRequest]:
    """Enrollment on the host: a new private key and a CSR for ``name`` (the subject CN).

    Returns (private key, CSR). The caller stores the key 0600 (:func:`write_private`) and
    hands the CSR to the CA (``pyipsec pki issue --csr``).
    """
    if not name or "/" in name or len(name) > 64:
        raise ConfigError("host name must be 1-64 characters without '/'", key="name")
    key = generate_key(key_type)
    sans = _parse_ips(ips) + [x509.DNSName(d) for d in dns]
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return key, builder.sign(key, _sign_hash(key))


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class IssuedCert:
    """One line of the CA's index.

    serial: certificate serial number; subject: the CN; sans: SAN entries as text
    ("ip:192.0.2.1", "dns:a.example"); not_before/not_after: validity (epoch seconds);
    revoked_at: revocation time or None; reason: revocation reason or None.
    """

    serial: int
    subject: str
    sans: tuple[str, ...]
    not_before: float
    not_after: float
    revoked_at: float | None = None
    reason: str | None = None

    def status(self, now: float) -> str:
        """``revoked``, ``expired`` or ``valid`` at ``now``."""
        if self.revoked_at is not None:
            return "revoked"
        if now > self.not_after:
            return "expired"
        return "valid"


@dataclass(frozen=True)
class PkiStats:
    """Snapshot of a CA: certificates issued (all time), revoked, and the current CRL number."""

    issued: int
    revoked: int
    crl_number: int


# --------------------------------------------------------------------------- the CA


class CertificateAuthority:
    """A CA rooted in a directory (see the module docstring for its layout)."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self._key_path = self.directory / "ca.key"
        self._cert_path = self.directory / "ca.crt"
        self._index_path = self.directory / "index.json"
        if not self._cert_path.exists() or not self._key_path.exists():
            raise ConfigError("no CA here (run `pyipsec pki init` first)", key=str(self.directory))
        self.certificate = load_certificate(self._cert_path)
        self._key: Any = None

    def __repr__(self) -> str:
        return f"CertificateAuthority({str(self.directory)!r})"

    @property
    def crl_path(self) -> Path:
        return self.directory / "crl.pem"

    @property
    def cert_path(self) -> Path:
        return self._cert_path

    # ------------------------------------------------------------------ creation

    @classmethod
    def init(
        cls,
        directory: str | os.PathLike[str],
        name: str,
        *,
        now: float,
        key_type: str = "p256",
        days: int = 3650,
    ) -> CertificateAuthority:
        """Create a CA: key (0600), self-signed certificate, empty index and an empty CRL."""
        d = Path(directory)
        if (d / "ca.key").exists() or (d / "ca.crt").exists():
            raise ConfigError("a CA already exists here", key=str(d))
        d.mkdir(parents=True, exist_ok=True)
        os.chmod(d, 0o700)
        (d / "issued").mkdir(exist_ok=True)
        key = generate_key(key_type)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        start = _dt_of(now) - _dt.timedelta(minutes=5)
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + _dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(ski, critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
                critical=False,
            )
            .sign(key, _sign_hash(key))
        )
        write_private(d / "ca.key", private_key_pem(key))
        _write_public(d / "ca.crt", cert.public_bytes(serialization.Encoding.PEM))
        _write_public(d / "index.json", json.dumps({"crl_number": 0, "certs": []}).encode())
        ca = cls(d)
        ca._key = key
        ca._publish_crl([], 0, now)
        return ca

    # ------------------------------------------------------------------ index

    @contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        """Exclusive access to the index; the dict yielded is written back on success."""
        with open(self.directory / ".lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            index = json.loads(self._index_path.read_text())
            yield index
            _write_public(self._index_path, json.dumps(index, indent=1).encode())

    def _read_index(self) -> dict[str, Any]:
        return json.loads(self._index_path.read_text())

    def _ca_key(self) -> Any:
        if self._key is None:
            self._key = load_private_key(self._key_path)
        return self._key

    # ------------------------------------------------------------------ operations

    def issue(
        self,
        csr: x509.CertificateSigningRequest | bytes,
        *,
        now: float,
        days: int = 365,
        ips: Iterable[str] = (),
        dns: Iterable[str] = (),
    ) -> x509.Certificate:
        """Sign a host CSR; SANs are the CSR's plus ``ips``/``dns`` (the CN as DNS if none)."""
        if isinstance(csr, bytes):
            try:
                csr = (
                    x509.load_pem_x509_csr(csr)
                    if b"-----BEGIN" in csr
                    else x509.load_der_x509_csr(csr)
                )
            except ValueError as exc:
                raise ConfigError(f"not a certificate signing request ({exc})", key="csr") from None
        if not csr.is_signature_valid:
            raise ConfigError("CSR signature does not verify", key="csr")
        cns = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if len(cns) != 1 or not str(cns[0].value):
            raise ConfigError("CSR subject must have exactly one common name", key="csr")
        name = str(cns[0].value)
        sans: list[x509.GeneralName] = []
        try:
            ext = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)
            sans.extend(ext.value)
        except x509.ExtensionNotFound:
            pass
        for gn in _parse_ips(ips) + [x509.DNSName(d) for d in dns]:
            if gn not in sans:
                sans.append(gn)
        if not sans:
            sans.append(x509.DNSName(name))
        public = csr.public_key()
        if not isinstance(
            public, ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | rsa.RSAPublicKey
        ):
            raise ConfigError("unsupported key type in CSR", key="csr")
        if isinstance(public, rsa.RSAPublicKey) and public.key_size < 2048:
            raise ConfigError("RSA keys below 2048 bits are refused", key="csr")
        start = _dt_of(now) - _dt.timedelta(minutes=5)
        ca_ski = self.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self.certificate.subject)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + _dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=isinstance(public, rsa.RSAPublicKey),
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [
                        ExtendedKeyUsageOID.SERVER_AUTH,
                        ExtendedKeyUsageOID.CLIENT_AUTH,
                        IPSEC_IKE_EKU,
                    ]
                ),
                critical=False,
            )
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski.value),
                critical=False,
            )
            .sign(self._ca_key(), _sign_hash(self._ca_key()))
        )
        record = IssuedCert(
            serial=cert.serial_number,
            subject=name,
            sans=tuple(_san_text(g) for g in sans),
            not_before=cert.not_valid_before_utc.timestamp(),
            not_after=cert.not_valid_after_utc.timestamp(),
        )
        with self._locked() as index:
            index["certs"].append(asdict(record))
            issued = self.directory / "issued"
            issued.mkdir(exist_ok=True)
            _write_public(
                issued / f"{cert.serial_number:x}.crt",
                cert.public_bytes(serialization.Encoding.PEM),
            )
        return cert

    def revoke(self, serial: int, *, now: float, reason: str = "unspecified") -> IssuedCert:
        """Mark ``serial`` revoked and publish a new signed CRL (crl.pem / crl.der)."""
        if reason not in _REASONS:
            raise ConfigError(
                f"unknown reason {reason!r} (one of {', '.join(REVOCATION_REASONS)})", key="reason"
            )
        with self._locked() as index:
            for entry in index["certs"]:
                if entry["serial"] == serial:
                    break
            else:
                raise ConfigError(
                    f"no certificate with serial {serial:x} was issued here", key="serial"
                )
            if entry["revoked_at"] is not None:
                raise ConfigError(f"certificate {serial:x} is already revoked", key="serial")
            entry["revoked_at"] = float(int(now))
            entry["reason"] = reason
            index["crl_number"] += 1
            revoked = [_record(e) for e in index["certs"] if e["revoked_at"] is not None]
            self._publish_crl(revoked, index["crl_number"], now)
        return _record(entry)

    def publish_crl(self, *, now: float) -> x509.CertificateRevocationList:
        """Re-sign the CRL (e.g. before its next update is due) and return it."""
        with self._locked() as index:
            index["crl_number"] += 1
            revoked = [_record(e) for e in index["certs"] if e["revoked_at"] is not None]
            return self._publish_crl(revoked, index["crl_number"], now)

    def _publish_crl(
        self, revoked: list[IssuedCert], number: int, now: float, days: int = 30
    ) -> x509.CertificateRevocationList:
        ca_ski = self.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.certificate.subject)
            .last_update(_dt_of(now))
            .next_update(_dt_of(now) + _dt.timedelta(days=days))
            .add_extension(x509.CRLNumber(number), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski.value),
                critical=False,
            )
        )
        for rec in revoked:
            assert rec.revoked_at is not None
            entry = (
                x509.RevokedCertificateBuilder()
                .serial_number(rec.serial)
                .revocation_date(_dt_of(rec.revoked_at))
            )
            if rec.reason and rec.reason != "unspecified":
                entry = entry.add_extension(x509.CRLReason(_REASONS[rec.reason]), critical=False)
            builder = builder.add_revoked_certificate(entry.build())
        crl = builder.sign(self._ca_key(), _sign_hash(self._ca_key()))
        _write_public(self.directory / "crl.pem", crl.public_bytes(serialization.Encoding.PEM))
        _write_public(self.directory / "crl.der", crl.public_bytes(serialization.Encoding.DER))
        return crl

    def list(self) -> list[IssuedCert]:
        """Every certificate issued, oldest first."""
        return [_record(e) for e in self._read_index()["certs"]]

    def revoked_serials(self) -> frozenset[int]:
        return frozenset(c.serial for c in self.list() if c.revoked_at is not None)

    def statistics(self) -> PkiStats:
        index = self._read_index()
        return PkiStats(
            issued=len(index["certs"]),
            revoked=sum(1 for e in index["certs"] if e["revoked_at"] is not None),
            crl_number=index["crl_number"],
        )


def _record(entry: dict[str, Any]) -> IssuedCert:
    return IssuedCert(
        serial=entry["serial"],
        subject=entry["subject"],
        sans=tuple(entry["sans"]),
        not_before=entry["not_before"],
        not_after=entry["not_after"],
        revoked_at=entry["revoked_at"],
        reason=entry["reason"],
    )


def _san_text(gn: x509.GeneralName) -> str:
    if isinstance(gn, x509.IPAddress):
        return f"ip:{gn.value}"
    if isinstance(gn, x509.DNSName):
        return f"dns:{gn.value}"
    if isinstance(gn, x509.RFC822Name):
        return f"email:{gn.value}"
    return f"other:{gn.value}"
