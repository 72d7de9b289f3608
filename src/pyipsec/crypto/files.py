"""Keys, certificates and CRLs read from files, with typed errors that never echo content.

One place for every reader of credentials on disk: the daemon's configuration (machine
certificate, key, CA bundle), the PKI, the policy server and client. Errors are
ConfigError naming the path (``key``) and what was wrong; a private key's bytes never
appear in a message, whatever the parser says.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from pyipsec.errors import ConfigError

__all__ = ["load_certificate", "load_certificates", "load_crl", "load_private_key"]

_PEM = b"-----BEGIN"


def _read(path: str | os.PathLike[str], what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {what}: {exc.strerror}", key=str(path)) from None


def load_private_key(path: str | os.PathLike[str]) -> Any:
    """An unencrypted PEM private key (RSA, EC, Ed25519, Ed448)."""
    data = _read(path, "private key")
    try:
        return serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise ConfigError("not an unencrypted PEM private key", key=str(path)) from None


def load_certificates(path: str | os.PathLike[str]) -> tuple[x509.Certificate, ...]:
    """Every certificate of a PEM file (a chain or a CA bundle, in file order), or the
    one certificate of a DER file."""
    data = _read(path, "certificate")
    try:
        if _PEM in data:
            return tuple(x509.load_pem_x509_certificates(data))
        return (x509.load_der_x509_certificate(data),)
    except ValueError as exc:
        raise ConfigError(f"not a certificate ({exc})", key=str(path)) from None


def load_certificate(path: str | os.PathLike[str]) -> x509.Certificate:
    """The first certificate of a PEM or DER file."""
    return load_certificates(path)[0]


def load_crl(path: str | os.PathLike[str]) -> x509.CertificateRevocationList:
    """A CRL, PEM or DER (for ``CertValidator(crls=...)``)."""
    data = _read(path, "CRL")
    try:
        if _PEM in data:
            return x509.load_pem_x509_crl(data)
        return x509.load_der_x509_crl(data)
    except ValueError as exc:
        raise ConfigError(f"not a CRL ({exc})", key=str(path)) from None
