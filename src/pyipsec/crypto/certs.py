"""X.509 validation for IKEv2 certificate authentication.

:class:`CertValidator` validates a peer's end-entity certificate (from its CERT payload,
RFC 7296 section 3.6, encoding X509_SIG = DER) against the configured trust anchors, with
any intermediates the peer sent, at a given time, then checks revocation and that the IKE
identity (IDi/IDr) is bound to the certificate (RFC 4945 section 3.1).

Path building and the signature/validity/constraint checks are ``cryptography``'s
``x509.verification`` (the webpki-style verifier). We use its *client* verifier: the server
verifier insists on binding a DNS name or IP address, but IKE identities are also e-mail
addresses and Distinguished Names, so we check the identity ourselves. The end-entity
extension policy is the webpki default with two IKE adjustments:

* ExtendedKeyUsage may be absent; if present it must allow serverAuth, clientAuth,
  ipsecIKE (1.3.6.1.5.5.7.3.17, RFC 4945 5.1.3.12) or anyExtendedKeyUsage;
* SubjectAlternativeName may be absent (a DER_ASN1_DN identity needs none);
* KeyUsage, if present, must allow digitalSignature (or nonRepudiation) and not keyCertSign.

and for CA certificates one: KeyUsage may be absent (plain ``openssl req -x509`` CAs have
none); if present it must allow keyCertSign.

Identity binding (RFC 4945 3.1): IPV4_ADDR/IPV6_ADDR must equal a SAN iPAddress, FQDN a SAN
dNSName (case-insensitive), RFC822_ADDR a SAN rfc822Name (case-insensitive), DER_ASN1_DN the
certificate's subject DN (DER equality). KEY_ID cannot be bound to a certificate and fails.

Revocation: CRLs (each must be signed by the issuer of the certificate it applies to) and a
configured set of revoked serial numbers, applied to every certificate in the validated
chain except the trust anchor.

Every failure is ``ProtocolError(notify=AUTHENTICATION_FAILED)`` whose message starts with
the reason: ``untrusted``, ``expired`` / ``not yet valid``, ``revoked``, ``identity
mismatch``, ``bad certificate``.
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from pyipsec.errors import ConfigError, ProtocolError
from pyipsec.wire.iana import IdType, NotifyType

__all__ = [
    "CertValidator",
    "CertValidatorStats",
    "ValidatedPeer",
    "certificate_from_der",
    "IPSEC_IKE_EKU",
]

IPSEC_IKE_EKU = x509.ObjectIdentifier("1.3.6.1.5.5.7.3.17")
_ACCEPTED_EKUS = {
    ExtendedKeyUsageOID.SERVER_AUTH,
    ExtendedKeyUsageOID.CLIENT_AUTH,
    ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE,
    IPSEC_IKE_EKU,
}


def _fail(reason: str) -> ProtocolError:
    return ProtocolError(reason, notify=NotifyType.AUTHENTICATION_FAILED)


def certificate_from_der(data: bytes) -> x509.Certificate:
    """Parse the data of a CERT payload with encoding X509_SIG (4): one DER certificate."""
    try:
        return x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise _fail(f"bad certificate: cannot parse DER ({exc})") from None


def _eku_validator(policy: Any, cert: x509.Certificate, ext: Any) -> None:
    if ext is not None and not (_ACCEPTED_EKUS & set(ext)):
        raise ValueError("extended key usage does not allow IKE")


def _ku_validator(policy: Any, cert: x509.Certificate, ext: Any) -> None:
    if ext is None:
        return
    if not (ext.digital_signature or ext.content_commitment):
        raise ValueError("key usage does not allow digital signatures")
    if ext.key_cert_sign:
        raise ValueError("end-entity certificate with keyCertSign")


def _ca_ku_validator(policy: Any, cert: x509.Certificate, ext: Any) -> None:
    if ext is not None and not ext.key_cert_sign:
        raise ValueError("CA certificate whose key usage lacks keyCertSign")


def _ca_policy() -> ExtensionPolicy:
    return ExtensionPolicy.webpki_defaults_ca().may_be_present(
        x509.KeyUsage, Criticality.AGNOSTIC, _ca_ku_validator
    )


def _ee_policy() -> ExtensionPolicy:
    return (
        ExtensionPolicy.webpki_defaults_ee()
        .may_be_present(x509.ExtendedKeyUsage, Criticality.AGNOSTIC, _eku_validator)
        .may_be_present(x509.SubjectAlternativeName, Criticality.AGNOSTIC, None)
        .may_be_present(x509.KeyUsage, Criticality.AGNOSTIC, _ku_validator)
    )


def _as_datetime(now: _dt.datetime | float) -> _dt.datetime:
    if isinstance(now, _dt.datetime):
        return now if now.tzinfo else now.replace(tzinfo=_dt.UTC)
    return _dt.datetime.fromtimestamp(now, tz=_dt.UTC)


@dataclass(frozen=True)
class ValidatedPeer:
    """Result of a successful validation: the peer's key and the chain (leaf first)."""

    public_key: Any
    chain: tuple[x509.Certificate, ...]


@dataclass(frozen=True)
class CertValidatorStats:
    """Counters: validations that passed, and failures by reason."""

    validated: int
    untrusted: int
    expired: int
    revoked: int
    identity_mismatch: int
    bad_certificate: int


class CertValidator:
    """Validates peer certificates against fixed trust anchors and revocation data."""

    def __init__(
        self,
        trusted_cas: Iterable[x509.Certificate],
        crls: Iterable[x509.CertificateRevocationList] = (),
        revoked_serials: Iterable[int] = (),
        *,
        max_chain_depth: int = 8,
    ) -> None:
        self._anchors = list(trusted_cas)
        if not self._anchors:
            raise ConfigError("no trusted CA certificates configured", key="cacerts")
        self._store = Store(self._anchors)
        self._crls = list(crls)
        self._revoked = frozenset(revoked_serials)
        self._depth = max_chain_depth
        self._ee = _ee_policy()
        self._ca = _ca_policy()
        self._counts = dict.fromkeys(
            (
                "validated",
                "untrusted",
                "expired",
                "revoked",
                "identity_mismatch",
                "bad_certificate",
            ),
            0,
        )

    def statistics(self) -> CertValidatorStats:
        return CertValidatorStats(**self._counts)

    # ------------------------------------------------------------------ public API

    def validate(
        self,
        end_entity: x509.Certificate,
        intermediates: Iterable[x509.Certificate] = (),
        now: _dt.datetime | float | None = None,
        identity: tuple[int, bytes | str] | None = None,
    ) -> Any:
        """Validate and return the end entity's public key (see :meth:`validate_peer`)."""
        return self.validate_peer(end_entity, intermediates, now, identity).public_key

    def validate_peer(
        self,
        end_entity: x509.Certificate,
        intermediates: Iterable[x509.Certificate] = (),
        now: _dt.datetime | float | None = None,
        identity: tuple[int, bytes | str] | None = None,
    ) -> ValidatedPeer:
        """Full validation; ``identity`` is (ID Type, ID data) from the peer's ID payload.

        ``now`` is required (this layer never reads the clock); a float is POSIX time.
        """
        if now is None:
            raise ValueError("now is required")
        when = _as_datetime(now)
        try:
            chain = self._verify_chain(end_entity, list(intermediates), when)
            self._check_revocation(chain)
            if identity is not None:
                self._check_identity(end_entity, identity)
        except ProtocolError as exc:
            key = str(exc).split(":", 1)[0].replace(" ", "_")
            if key in ("expired", "not_yet_valid"):
                key = "expired"
            self._counts[key if key in self._counts else "untrusted"] += 1
            raise
        self._counts["validated"] += 1
        return ValidatedPeer(end_entity.public_key(), tuple(chain))

    # ------------------------------------------------------------------ steps

    def _verify_chain(
        self, leaf: x509.Certificate, intermediates: list[x509.Certificate], when: _dt.datetime
    ) -> list[x509.Certificate]:
        if when < leaf.not_valid_before_utc:
            raise _fail(f"not yet valid: certificate valid from {leaf.not_valid_before_utc}")
        if when > leaf.not_valid_after_utc:
            raise _fail(f"expired: certificate expired at {leaf.not_valid_after_utc}")
        verifier = (
            PolicyBuilder()
            .store(self._store)
            .time(when)
            .max_chain_depth(self._depth)
            .extension_policies(ca_policy=self._ca, ee_policy=self._ee)
            .build_client_verifier()
        )
        try:
            verified = verifier.verify(leaf, intermediates)
        except VerificationError as exc:
            text = str(exc)
            if "not valid at validation time" in text:
                raise _fail(f"expired: a certificate in the chain is not valid ({text})") from None
            if "extension validator failed" in text or "invalid extension" in text:
                raise _fail(f"bad certificate: {text}") from None
            raise _fail(f"untrusted: no valid chain to a trusted CA ({text})") from None
        return list(verified.chain)

    def _check_revocation(self, chain: list[x509.Certificate]) -> None:
        # chain[-1] is the trust anchor; every other element has its issuer at i + 1.
        for i, cert in enumerate(chain[:-1]):
            if cert.serial_number in self._revoked:
                raise _fail(f"revoked: serial {cert.serial_number:x} is on the revocation list")
            issuer = chain[i + 1]
            for crl in self._crls:
                if crl.issuer != cert.issuer:
                    continue
                if not crl.is_signature_valid(issuer.public_key()):  # type: ignore[arg-type]
                    continue  # a CRL not signed by this issuer says nothing about this cert
                if crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None:
                    raise _fail(
                        f"revoked: serial {cert.serial_number:x} revoked by a CRL "
                        f"of {cert.issuer.rfc4514_string()}"
                    )

    @staticmethod
    def _check_identity(cert: x509.Certificate, identity: tuple[int, bytes | str]) -> None:
        id_type, data = identity
        try:
            sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            sans = x509.SubjectAlternativeName([])
        try:
            kind = IdType(id_type)
        except ValueError:
            raise _fail(f"identity mismatch: unsupported ID type {id_type}") from None
        if kind in (IdType.IPV4_ADDR, IdType.IPV6_ADDR):
            try:
                want = ipaddress.ip_address(data)
            except ValueError:
                raise _fail("identity mismatch: malformed IP address identity") from None
            if want in sans.get_values_for_type(x509.IPAddress):
                return
            raise _fail(f"identity mismatch: {want} is not a subjectAltName of the certificate")
        if kind in (IdType.FQDN, IdType.RFC822_ADDR):
            text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
            want_s = text.rstrip(".").lower()
            cls = x509.DNSName if kind == IdType.FQDN else x509.RFC822Name
            if any(v.rstrip(".").lower() == want_s for v in sans.get_values_for_type(cls)):
                return
            raise _fail(f"identity mismatch: {text!r} is not a subjectAltName of the certificate")
        if kind == IdType.DER_ASN1_DN:
            raw = data.encode() if isinstance(data, str) else data
            if dn_equal(raw, cert.subject.public_bytes()):
                return
            raise _fail("identity mismatch: ID is not the certificate's subject DN")
        raise _fail(f"identity mismatch: ID type {kind.name} cannot be bound to a certificate")


# Distinguished names are compared by meaning, not by encoding (RFC 5280 7.1, RFC 4945
# 3.1.5): strongSwan sends "O=x, CN=y" identities as PrintableString where ``cryptography``
# writes UTF8String, and the same DN must match either way (found against strongSwan).
_DN_STRINGS = {
    0x0C: "utf-8",  # UTF8String
    0x13: "ascii",  # PrintableString
    0x16: "ascii",  # IA5String
    0x14: "latin-1",  # TeletexString (as commonly used)
    0x1E: "utf-16-be",  # BMPString
    0x1C: "utf-32-be",  # UniversalString
}


def _der_tlvs(data: bytes) -> list[tuple[int, bytes]]:
    """The consecutive DER TLVs in ``data`` (definite lengths); ValueError if malformed."""
    out, i = [], 0
    while i < len(data):
        if i + 2 > len(data):
            raise ValueError("truncated TLV")
        tag, length = data[i], data[i + 1]
        i += 2
        if length & 0x80:
            n = length & 0x7F
            if not 1 <= n <= 4 or i + n > len(data):
                raise ValueError("bad length")
            length = int.from_bytes(data[i : i + n], "big")
            i += n
        if i + length > len(data):
            raise ValueError("truncated value")
        out.append((tag, data[i : i + length]))
        i += length
    return out


def dn_key(der: bytes) -> tuple[Any, ...] | None:
    """A comparable form of a DER Name, None if ``der`` is not one: per RDN its sorted
    (OID, value) pairs, string values decoded from whichever ASN.1 string type, with
    whitespace collapsed and case folded (RFC 5280 7.1); other values compared raw."""
    try:
        ((tag, body),) = _der_tlvs(der)
        if tag != 0x30:
            return None
        rdns = []
        for set_tag, set_body in _der_tlvs(body):
            if set_tag != 0x31:
                return None
            pairs: list[tuple[bytes, int, Any]] = []
            for seq_tag, seq_body in _der_tlvs(set_body):
                (oid_tag, oid), (value_tag, value) = _der_tlvs(seq_body)
                if seq_tag != 0x30 or oid_tag != 0x06:
                    return None
                encoding = _DN_STRINGS.get(value_tag)
                if encoding is None:
                    pairs.append((oid, value_tag, value))
                else:
                    pairs.append((oid, 0, " ".join(value.decode(encoding).split()).casefold()))
            rdns.append(tuple(sorted(pairs)))
        return tuple(rdns)
    except (ValueError, UnicodeDecodeError):
        return None


def dn_equal(a: bytes, b: bytes) -> bool:
    """True if DER Names ``a`` and ``b`` name the same entity (bytes equal, or the same
    :func:`dn_key`)."""
    if a == b:
        return True
    key = dn_key(a)
    return key is not None and key == dn_key(b)
