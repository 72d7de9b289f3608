"""Signed policy envelopes: what the policy server hands a host, and how the host checks it.

An envelope carries one policy version for one host::

    {"format": "pyipsec-policy/1", "host": "hosta", "name": "Web App Encrypt",
     "version": 3, "sha256": "<hex of text>", "text": "<policy YAML>",
     "issued_at": 1780000000.0, "signer": "<PEM certificate>", "signature": "<base64>"}

The signature covers the canonical JSON (sorted keys, no spaces, UTF-8) of every field but
``signature``; it is made with the policy server's key (ECDSA with SHA-256/384, Ed25519, or
RSA-PSS with SHA-256, by key type). A host accepts an envelope only when

1. the text's sha256 equals ``sha256`` (the text was not altered),
2. the signer certificate was issued directly by the host's trusted CA, is valid at ``now``,
   is not a CA, allows serverAuth, names the configured policy server (SAN dNSName,
   iPAddress or CN) and is not revoked (CRL / serials), and
3. the signature verifies with the signer's key, and the envelope names this host.

The envelope outlives the TLS session (hosts cache it), which is why it is signed at all.
Every refusal is a :class:`SignatureInvalid` (or :class:`EnvelopeError` when malformed).
This module never reads the clock: ``now`` is an argument.
"""

from __future__ import annotations

import base64
import binascii
import datetime as _dt
import hashlib
import ipaddress
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pyipsec.errors import ConfigError, PyipsecError
from pyipsec.util.configfile import load_yaml_text

__all__ = [
    "ENVELOPE_FORMAT",
    "EnvelopeError",
    "PolicyEnvelope",
    "SignatureInvalid",
    "sign_envelope",
    "validate_policy_text",
    "verify_envelope",
]

ENVELOPE_FORMAT = "pyipsec-policy/1"
_MAX_ENVELOPE = 4 * 1024 * 1024


class EnvelopeError(PyipsecError):
    """A policy envelope is malformed (not JSON, missing fields, wrong types)."""


class SignatureInvalid(EnvelopeError):
    """A policy envelope does not verify: altered, wrong signer, or not for this host."""


def validate_policy_text(text: str, source: str = "<policy>") -> object:
    """Validate a policy document; raise ConfigError naming file/line/key when it is bad.

    Uses the policy loader (:mod:`pyipsec.policy.loader`) when it is present; without it,
    checks that the text is a YAML mapping without duplicate keys.
    """
    if not isinstance(text, str):
        raise ConfigError("policy text must be a string", file=source)
    try:
        from pyipsec.policy import loader
    except ModuleNotFoundError as exc:
        if exc.name != "pyipsec.policy.loader":
            raise
        return load_yaml_text(text, file=source)
    return loader.load_policy_text(text, file=source)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class PolicyEnvelope:
    """A policy version for one host, signed by the policy server (fields: module docstring)."""

    host: str
    name: str
    version: int
    sha256: str
    text: str
    issued_at: float
    signer: str
    signature: str
    format: str = ENVELOPE_FORMAT

    def signed_bytes(self) -> bytes:
        """The octets the signature covers: canonical JSON of all fields but the signature."""
        fields = asdict(self)
        del fields["signature"]
        return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode("utf-8")

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True, indent=1).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes | str) -> PolicyEnvelope:
        """Parse an envelope; any structural problem is an :class:`EnvelopeError`."""
        if len(data) > _MAX_ENVELOPE:
            raise EnvelopeError("policy envelope too large")
        try:
            obj = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            raise EnvelopeError("policy envelope is not JSON") from None
        if not isinstance(obj, dict):
            raise EnvelopeError("policy envelope is not a JSON object")
        if obj.get("format") != ENVELOPE_FORMAT:
            raise EnvelopeError(f"unknown policy envelope format {obj.get('format')!r}")
        types = {
            "host": str,
            "name": str,
            "version": int,
            "sha256": str,
            "text": str,
            "issued_at": (int, float),
            "signer": str,
            "signature": str,
        }
        for key, typ in types.items():
            if key not in obj:
                raise EnvelopeError(f"policy envelope lacks {key!r}")
            if not isinstance(obj[key], typ) or isinstance(obj[key], bool):
                raise EnvelopeError(f"policy envelope field {key!r} has the wrong type")
        extra = set(obj) - set(types) - {"format"}
        if extra:
            raise EnvelopeError(f"policy envelope has unknown fields {sorted(extra)}")
        return cls(**{k: obj[k] for k in types}, format=obj["format"])


# --------------------------------------------------------------------------- signatures


def _sign(key: Any, data: bytes) -> bytes:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(data)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        h = hashes.SHA384() if key.curve.key_size >= 384 else hashes.SHA256()
        return key.sign(data, ec.ECDSA(h))
    if isinstance(key, rsa.RSAPrivateKey):
        pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
        return key.sign(data, pss, hashes.SHA256())
    raise ConfigError("unsupported signing key type", key="key")


def _verify(public: Any, signature: bytes, data: bytes) -> None:
    if isinstance(public, ed25519.Ed25519PublicKey):
        public.verify(signature, data)
    elif isinstance(public, ec.EllipticCurvePublicKey):
        h = hashes.SHA384() if public.curve.key_size >= 384 else hashes.SHA256()
        public.verify(signature, data, ec.ECDSA(h))
    elif isinstance(public, rsa.RSAPublicKey):
        pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
        public.verify(signature, data, pss, hashes.SHA256())
    else:
        raise InvalidSignature


def sign_envelope(
    *,
    host: str,
    name: str,
    version: int,
    text: str,
    now: float,
    key: Any,
    certificate: x509.Certificate,
) -> PolicyEnvelope:
    """Build and sign the envelope of policy ``name`` version ``version`` for ``host``."""
    unsigned = PolicyEnvelope(
        host=host,
        name=name,
        version=version,
        sha256=_sha256(text),
        text=text,
        issued_at=float(now),
        signer=certificate.public_bytes(serialization.Encoding.PEM).decode("ascii"),
        signature="",
    )
    signature = _sign(key, unsigned.signed_bytes())
    return PolicyEnvelope(
        **{**asdict(unsigned), "signature": base64.b64encode(signature).decode("ascii")}
    )


def _names(cert: x509.Certificate) -> set[str]:
    names = {str(a.value).lower() for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)}
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return names
    names |= {d.lower() for d in san.get_values_for_type(x509.DNSName)}
    names |= {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    return names


def _normal(name: str) -> str:
    try:
        return str(ipaddress.ip_address(name.strip("[]")))
    except ValueError:
        return name.lower()


def verify_envelope(
    envelope: PolicyEnvelope,
    *,
    ca: x509.Certificate,
    now: float,
    signer_name: str | None = None,
    host: str | None = None,
    crls: Iterable[x509.CertificateRevocationList] = (),
    revoked_serials: Iterable[int] = (),
) -> None:
    """Check an envelope as described in the module docstring; raise SignatureInvalid."""
    if _sha256(envelope.text) != envelope.sha256:
        raise SignatureInvalid("policy text does not match its sha256 (altered)")
    try:
        signer = x509.load_pem_x509_certificate(envelope.signer.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        raise SignatureInvalid("signer certificate cannot be parsed") from None
    try:
        signer.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise SignatureInvalid("signer certificate is not issued by the trusted CA") from None
    when = _dt.datetime.fromtimestamp(now, tz=_dt.UTC)
    if not signer.not_valid_before_utc <= when <= signer.not_valid_after_utc:
        raise SignatureInvalid("signer certificate is expired or not yet valid")
    try:
        bc = signer.extensions.get_extension_for_class(x509.BasicConstraints).value
        if bc.ca:
            raise SignatureInvalid("signer certificate is a CA certificate")
    except x509.ExtensionNotFound:
        pass
    try:
        eku = signer.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        if ExtendedKeyUsageOID.SERVER_AUTH not in eku:
            raise SignatureInvalid("signer certificate does not allow serverAuth")
    except x509.ExtensionNotFound:
        pass
    if signer_name is not None and _normal(signer_name) not in _names(signer):
        raise SignatureInvalid(
            f"signer certificate does not name the policy server {signer_name!r}"
        )
    revoked = set(revoked_serials)
    for crl in crls:
        if crl.issuer == ca.subject and crl.is_signature_valid(ca.public_key()):
            if crl.get_revoked_certificate_by_serial_number(signer.serial_number) is not None:
                revoked.add(signer.serial_number)
    if signer.serial_number in revoked:
        raise SignatureInvalid("signer certificate is revoked")
    try:
        signature = base64.b64decode(envelope.signature, validate=True)
    except (binascii.Error, ValueError):
        raise SignatureInvalid("signature is not base64") from None
    try:
        _verify(signer.public_key(), signature, envelope.signed_bytes())
    except InvalidSignature:
        raise SignatureInvalid("signature does not verify (envelope altered)") from None
    if host is not None and envelope.host != host:
        raise SignatureInvalid(f"envelope is for host {envelope.host!r}, not {host!r}")
