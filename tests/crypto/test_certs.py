"""Certificate validation: chains, expiry, revocation, identities, EKU/KU, parsing."""

from __future__ import annotations

import datetime as dt
import ipaddress

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID

from pki import IPSEC_IKE_EKU, NOW, Pki, make_ca, make_ee
from pyipsec.crypto.certs import CertValidator, certificate_from_der
from pyipsec.crypto.signatures import sign, verify
from pyipsec.errors import ConfigError, ProtocolError
from pyipsec.wire.iana import IdType, NotifyType


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki()


@pytest.fixture()
def validator(pki: Pki) -> CertValidator:
    return CertValidator([pki.root.cert])


def reason(ei: pytest.ExceptionInfo) -> str:
    assert ei.value.notify == NotifyType.AUTHENTICATION_FAILED
    return str(ei.value)


@pytest.mark.parametrize("kind", ["rsa2048", "p256", "p384", "ed25519"])
def test_chain_valid_and_key_usable(pki: Pki, validator: CertValidator, kind: str) -> None:
    ee = pki.issue(kind, dns=["gw.example"])
    key = validator.validate(ee.cert, [pki.intermediate.cert], NOW, (IdType.FQDN, b"gw.example"))
    assert key == ee.cert.public_key()
    method, data = sign(ee.key, b"signed octets")
    verify(key, b"signed octets", method, data)
    assert validator.statistics().validated == 1


def test_direct_issue_and_float_time(pki: Pki, validator: CertValidator) -> None:
    ee = pki.issue("p256", direct=True, dns=["gw.example"])
    res = validator.validate_peer(ee.cert, [], NOW.timestamp())
    assert res.chain[0] == ee.cert and res.chain[-1] == pki.root.cert


def test_missing_intermediate_is_untrusted(pki: Pki, validator: CertValidator) -> None:
    ee = pki.issue("p256", dns=["gw.example"])
    with pytest.raises(ProtocolError) as ei:
        validator.validate(ee.cert, [], NOW)
    assert reason(ei).startswith("untrusted")


def test_other_ca_is_untrusted(validator: CertValidator) -> None:
    other = Pki(name="other")
    ee = other.issue("p256", dns=["gw.example"])
    with pytest.raises(ProtocolError) as ei:
        validator.validate(ee.cert, [other.intermediate.cert], NOW)
    assert reason(ei).startswith("untrusted")
    assert validator.statistics().untrusted == 1


def test_self_signed_peer_is_untrusted(validator: CertValidator) -> None:
    rogue = make_ca("rogue", "p256")
    with pytest.raises(ProtocolError) as ei:
        validator.validate(rogue.cert, [], NOW)
    assert reason(ei).startswith(("untrusted", "bad certificate"))


def test_expired_and_not_yet_valid(pki: Pki, validator: CertValidator) -> None:
    expired = pki.issue("p256", dns=["gw.example"], days=-3)
    with pytest.raises(ProtocolError) as ei:
        validator.validate(expired.cert, [pki.intermediate.cert], NOW)
    assert reason(ei).startswith("expired")
    ee = pki.issue("p256", dns=["gw.example"])
    with pytest.raises(ProtocolError) as ei:
        validator.validate(ee.cert, [pki.intermediate.cert], NOW - dt.timedelta(days=30))
    assert reason(ei).startswith("not yet valid")
    with pytest.raises(ProtocolError) as ei:
        validator.validate(ee.cert, [pki.intermediate.cert], NOW + dt.timedelta(days=400))
    assert reason(ei).startswith("expired")
    assert validator.statistics().expired == 3


def test_expired_intermediate(pki: Pki) -> None:
    inter = make_ca("short-lived intermediate", "p256", issuer=pki.root, days=2)
    ee = make_ee(inter, "p256", dns=["gw.example"], days=1)
    v = CertValidator([pki.root.cert])
    v.validate(ee.cert, [inter.cert], NOW)
    # An end entity that outlives its (expired) intermediate CA.
    ee_long = make_ee(inter, "p256", dns=["gw.example"], days=100)
    with pytest.raises(ProtocolError) as ei:
        v.validate(ee_long.cert, [inter.cert], NOW + dt.timedelta(days=10))
    assert reason(ei).startswith("expired")


def test_ca_without_key_usage_accepted() -> None:
    root = make_ca("bare root", "p256", key_usage="none")
    ee = make_ee(root, "p256", dns=["gw.example"])
    CertValidator([root.cert]).validate(ee.cert, [], NOW, (IdType.FQDN, b"gw.example"))


def test_ca_key_usage_without_certsign_rejected() -> None:
    root = make_ca("crippled root", "p256", key_usage="no-certsign")
    ee = make_ee(root, "p256", dns=["gw.example"])
    with pytest.raises(ProtocolError) as ei:
        CertValidator([root.cert]).validate(ee.cert, [], NOW)
    assert reason(ei).startswith(("bad certificate", "untrusted"))


def test_revoked_by_crl(pki: Pki) -> None:
    ee = pki.issue("p256", dns=["gw.example"])
    good = pki.issue("p256", dns=["gw.example"])
    crl = pki.crl([ee.cert.serial_number])
    v = CertValidator([pki.root.cert], crls=[crl])
    with pytest.raises(ProtocolError) as ei:
        v.validate(ee.cert, [pki.intermediate.cert], NOW)
    assert reason(ei).startswith("revoked")
    v.validate(good.cert, [pki.intermediate.cert], NOW)
    assert v.statistics().revoked == 1 and v.statistics().validated == 1


def test_revoked_intermediate_by_root_crl(pki: Pki) -> None:
    ee = pki.issue("p256", dns=["gw.example"])
    crl = pki.crl([pki.intermediate.cert.serial_number], by_root=True)
    v = CertValidator([pki.root.cert], crls=[crl])
    with pytest.raises(ProtocolError) as ei:
        v.validate(ee.cert, [pki.intermediate.cert], NOW)
    assert reason(ei).startswith("revoked")


def test_forged_crl_ignored(pki: Pki) -> None:
    ee = pki.issue("p256", dns=["gw.example"])
    other = Pki(name="pyipsec test")  # same subject names, different keys
    forged = other.crl([ee.cert.serial_number])
    assert forged.issuer == ee.cert.issuer
    v = CertValidator([pki.root.cert], crls=[forged])
    v.validate(ee.cert, [pki.intermediate.cert], NOW)


def test_revoked_serial_list(pki: Pki) -> None:
    ee = pki.issue("p256", dns=["gw.example"])
    v = CertValidator([pki.root.cert], revoked_serials=[ee.cert.serial_number])
    with pytest.raises(ProtocolError) as ei:
        v.validate(ee.cert, [pki.intermediate.cert], NOW)
    assert reason(ei).startswith("revoked")


def test_identities(pki: Pki, validator: CertValidator) -> None:
    ee = pki.issue(
        "p256",
        dns=["gw.example"],
        ips=["192.0.2.7", "2001:db8::7"],
        emails=["ops@example.org"],
    )
    inter = [pki.intermediate.cert]
    ok = [
        (IdType.FQDN, b"GW.example"),
        (IdType.FQDN, "gw.example."),
        (IdType.IPV4_ADDR, ipaddress.ip_address("192.0.2.7").packed),
        (IdType.IPV6_ADDR, ipaddress.ip_address("2001:db8::7").packed),
        (IdType.RFC822_ADDR, b"Ops@Example.org"),
        (IdType.DER_ASN1_DN, ee.cert.subject.public_bytes()),
    ]
    for ident in ok:
        validator.validate(ee.cert, inter, NOW, ident)
    bad = [
        (IdType.FQDN, b"other.example"),
        (IdType.FQDN, b"example"),
        (IdType.IPV4_ADDR, ipaddress.ip_address("192.0.2.8").packed),
        (IdType.IPV6_ADDR, ipaddress.ip_address("2001:db8::8").packed),
        (IdType.IPV4_ADDR, b"\x01\x02\x03"),
        (IdType.RFC822_ADDR, b"root@example.org"),
        (IdType.DER_ASN1_DN, pki.root.cert.subject.public_bytes()),
        (IdType.KEY_ID, b"keyid"),
        (99, b"x"),
    ]
    for ident in bad:
        with pytest.raises(ProtocolError) as ei:
            validator.validate(ee.cert, inter, NOW, ident)
        assert reason(ei).startswith("identity mismatch"), ident
    assert validator.statistics().identity_mismatch == len(bad)


def test_dn_only_certificate_without_san(pki: Pki, validator: CertValidator) -> None:
    ee = pki.issue("p256", cn="dn-only peer")
    validator.validate(
        ee.cert, [pki.intermediate.cert], NOW, (IdType.DER_ASN1_DN, ee.cert.subject.public_bytes())
    )
    with pytest.raises(ProtocolError):
        validator.validate(ee.cert, [pki.intermediate.cert], NOW, (IdType.FQDN, b"peer"))


@pytest.mark.parametrize(
    "eku",
    [[], [IPSEC_IKE_EKU], [ExtendedKeyUsageOID.SERVER_AUTH], [ExtendedKeyUsageOID.CLIENT_AUTH]],
)
def test_acceptable_ekus(pki: Pki, validator: CertValidator, eku) -> None:
    ee = pki.issue("p256", dns=["gw.example"], eku=eku)
    validator.validate(ee.cert, [pki.intermediate.cert], NOW)


def test_wrong_eku_and_key_usage_rejected(pki: Pki, validator: CertValidator) -> None:
    ee = pki.issue("p256", dns=["gw.example"], eku=[ExtendedKeyUsageOID.CODE_SIGNING])
    with pytest.raises(ProtocolError) as ei:
        validator.validate(ee.cert, [pki.intermediate.cert], NOW)
    assert reason(ei).startswith("bad certificate")
    ee = pki.issue("p256", dns=["gw.example"], digital_signature=False)
    with pytest.raises(ProtocolError) as ei:
        validator.validate(ee.cert, [pki.intermediate.cert], NOW)
    assert reason(ei).startswith("bad certificate")


def test_certificate_from_der(pki: Pki) -> None:
    der = pki.root.cert.public_bytes(Encoding.DER)
    assert certificate_from_der(der) == pki.root.cert
    with pytest.raises(ProtocolError) as ei:
        certificate_from_der(der[:-10])
    assert reason(ei).startswith("bad certificate")


def test_config_errors(pki: Pki) -> None:
    with pytest.raises(ConfigError):
        CertValidator([])
    with pytest.raises(ValueError):
        CertValidator([pki.root.cert]).validate(pki.root.cert, [], None)


def test_naive_datetime_is_utc(pki: Pki, validator: CertValidator) -> None:
    ee = pki.issue("p256", dns=["gw.example"])
    validator.validate(ee.cert, [pki.intermediate.cert], NOW.replace(tzinfo=None))
    assert isinstance(ee.cert, x509.Certificate)


# The IDi strongSwan 5.9.8 sent for "O=pyipsec test, CN=charon.pyi.test" (captured in the
# interop run of issue 6): PrintableString values, where cryptography writes UTF8String.
CHARON_DN_ID = bytes.fromhex(
    "303131153013060355040a130c707969707365632074657374311830160603550403130f"
    "636861726f6e2e7079692e74657374"
)


def test_dn_equal_ignores_the_string_type():
    from pyipsec.crypto.certs import dn_equal, dn_key

    ours = x509.Name.from_rfc4514_string("CN=charon.pyi.test,O=pyipsec test").public_bytes()
    assert ours != CHARON_DN_ID and dn_equal(ours, CHARON_DN_ID)
    other = x509.Name.from_rfc4514_string("CN=other.pyi.test,O=pyipsec test").public_bytes()
    assert not dn_equal(other, CHARON_DN_ID)
    swapped = x509.Name.from_rfc4514_string("O=pyipsec test,CN=charon.pyi.test").public_bytes()
    assert not dn_equal(swapped, CHARON_DN_ID)  # RDN order matters
    assert dn_key(b"\x30\x05\x31") is None and not dn_equal(b"\x30\x05\x31", CHARON_DN_ID)
    assert dn_key(CHARON_DN_ID[:-1]) is None


def test_dn_identity_in_another_string_type_is_bound_to_the_certificate():
    """Found against strongSwan: a DN identity sent as PrintableString was refused as "not
    the certificate's subject DN" because the subject is UTF8String."""
    pki = Pki()
    ee = make_ee(pki.root, "p256", cn="charon.pyi.test", dns=["charon.pyi.test"])
    validator = CertValidator([pki.root.cert])
    key = validator.validate(ee.cert, [], NOW, identity=(9, CHARON_DN_ID))  # DER_ASN1_DN
    assert key is not None
    other = make_ee(pki.root, "p256", cn="other.pyi.test", dns=["other.pyi.test"])
    with pytest.raises(Exception, match="identity mismatch"):
        validator.validate(other.cert, [], NOW, identity=(9, CHARON_DN_ID))
