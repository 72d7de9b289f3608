"""IKE_AUTH authentication: PSK (RFC 7296 2.15) and certificates with RFC 7427 signatures.

``local_auth_payloads`` builds what we send (IDx, CERT..., [CERTREQ], AUTH);
``verify_peer`` checks what we received: identity against the configuration, then the AUTH
data (PSK: constant-time compare; pubkey: chain validated against the configured CAs with
the identity checked against the certificate, then the signature). Every failure raises
ProtocolError(AUTHENTICATION_FAILED) with a reason that never contains a secret.

A peer may list several (local, remote) authentication pairs (PeerConfig.auth_pairs).
The pair in use is :func:`auth_pair`: an initiator's is its configuration's primary pair
(it starts over with :meth:`PeerConfig.next_auth` after a failure); a responder's is the
one :func:`verify_initiator` chose from the AUTH payload's method (Shared Key MIC: a PSK
pair, anything else: a signature pair), whose local method then answers.
"""

from __future__ import annotations

import datetime
import ipaddress
import struct
from typing import TYPE_CHECKING, Any

from pyipsec.crypto.signatures import (
    choose_hash_algorithm,
    psk_auth_data,
    sign,
    signed_octets,
    verify,
    verify_psk,
)
from pyipsec.errors import ConfigError, ProtocolError
from pyipsec.ike.config import AuthConfig, Identity
from pyipsec.wire.iana import AuthMethod, CertEncoding, IdType, NotifyType
from pyipsec.wire.ike import AuthPayload, CertPayload, CertReqPayload, IdPayload, push_id

if TYPE_CHECKING:
    from pyipsec.ike.ike_sa import IkeSa


def _fail(reason: str) -> ProtocolError:
    return ProtocolError(reason, notify=NotifyType.AUTHENTICATION_FAILED)


def local_identity(sa: IkeSa) -> Identity:
    """Our configured identity, or our IP address."""
    if sa.peer is not None and sa.peer.local_id:
        return Identity.parse(sa.peer.local_id)
    ip = ipaddress.ip_address(sa.local_addr[0])
    return Identity(IdType.IPV4_ADDR if ip.version == 4 else IdType.IPV6_ADDR, ip.packed)


def _int_auth(sa: IkeSa) -> bytes:
    if not sa.ctx.get("intermediate"):
        return b""
    return sa.int_auth_i + sa.int_auth_r + struct.pack("!I", sa.ctx["auth_mid"])


def octets_for(sa: IkeSa, from_initiator: bool, id_body: bytes) -> bytes:
    """InitiatorSignedOctets (True) or ResponderSignedOctets (False)."""
    assert sa.keys is not None and sa.chosen is not None
    if from_initiator:
        msg, nonce, key = sa.init_request, sa.nr, sa.keys.sk_pi
    else:
        msg, nonce, key = sa.init_response, sa.ni, sa.keys.sk_pr
    return signed_octets(sa.chosen.prf, msg, nonce, key, id_body, _int_auth(sa))


def _spki_sha1(cert: Any) -> bytes:
    from cryptography.hazmat.primitives import hashes, serialization

    der = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    h = hashes.Hash(hashes.SHA1())  # noqa: S303 - RFC 7296 3.7 CA key hash
    h.update(der)
    return h.finalize()


def certreq_payloads(auth: AuthConfig) -> list[Any]:
    """CERTREQ naming the CAs we trust (SHA-1 of their public keys, RFC 7296 3.7)."""
    if auth.method != "pubkey" or not auth.trusted_cas:
        return []
    data = b"".join(_spki_sha1(c) for c in auth.trusted_cas)
    return [CertReqPayload(CertEncoding.X509_SIG, data)]


def auth_pair(sa: IkeSa) -> tuple[AuthConfig, AuthConfig]:
    """The (local, remote) authentication in use on ``sa``: the pair a responder chose,
    else the peer's primary pair."""
    assert sa.peer is not None
    pair = sa.ctx.get("auth_pair")
    return pair if pair is not None else (sa.peer.local_auth, sa.peer.remote_auth)


def local_auth_payloads(sa: IkeSa, initiator: bool) -> tuple[IdPayload, list[Any], AuthPayload]:
    """(ID payload, CERT payloads, AUTH payload) for our side."""
    from cryptography.hazmat.primitives import serialization

    assert sa.peer is not None and sa.chosen is not None
    ident = local_identity(sa)
    sa.local_identity = str(ident)
    idp = IdPayload(ident.id_type, ident.data, initiator)
    octets = octets_for(sa, initiator, push_id(idp))
    auth = auth_pair(sa)[0]
    if auth.method == "psk":
        assert auth.psk is not None
        data = psk_auth_data(sa.chosen.prf, auth.psk, octets)
        return idp, [], AuthPayload(AuthMethod.SHARED_KEY_MIC, data)
    certs = []
    if auth.send_cert:
        certs = [
            CertPayload(CertEncoding.X509_SIG, c.public_bytes(serialization.Encoding.DER))
            for c in auth.cert_chain
        ]
    try:
        hash_alg = choose_hash_algorithm(auth.private_key, sa.peer_hash_algs or (2,))
    except ConfigError as exc:
        raise _fail(f"no common signature hash: {exc.reason}") from None
    method, data = sign(auth.private_key, octets, hash_alg)
    return idp, certs, AuthPayload(method, data)


def verify_initiator(
    sa: IkeSa, idp: IdPayload, certs: list[CertPayload], auth: AuthPayload, now: float
) -> str:
    """Responder: check the initiator's AUTH with each pair whose remote method is of the
    AUTH payload's kind, in order (with the primary pair when none is); the first that
    verifies becomes :func:`auth_pair`. All failing: the first failure is raised."""
    assert sa.peer is not None
    pairs = sa.peer.auth_pairs()
    kind = "psk" if auth.method == AuthMethod.SHARED_KEY_MIC else "pubkey"
    candidates = [p for p in pairs if p[1].method == kind] or [pairs[0]]
    failure: ProtocolError | None = None
    for pair in candidates:
        try:
            ident = verify_peer(sa, idp, certs, auth, now, pair[1])
        except ProtocolError as exc:
            failure = failure or exc
            continue
        sa.ctx["auth_pair"] = pair
        return ident
    assert failure is not None
    raise failure


def verify_peer(
    sa: IkeSa,
    idp: IdPayload,
    certs: list[CertPayload],
    auth: AuthPayload,
    now: float,
    cfg: AuthConfig | None = None,
) -> str:
    """Check the peer's identity and AUTH against ``cfg`` (default: the remote side of
    :func:`auth_pair`); returns the identity as text."""
    assert sa.peer is not None and sa.chosen is not None
    ident = Identity(
        IdType(idp.id_type) if idp.id_type in IdType._value2member_map_ else idp.id_type, idp.data
    )  # type: ignore[arg-type]
    if sa.peer.remote_id is not None:
        want = Identity.parse(sa.peer.remote_id)
        if not want.matches(idp.id_type, idp.data):
            raise _fail(f"peer identity {ident} is not the configured {want}")
    octets = octets_for(sa, not sa.initiator, push_id(idp))
    cfg = cfg if cfg is not None else auth_pair(sa)[1]
    if cfg.method == "psk":
        if auth.method != AuthMethod.SHARED_KEY_MIC:
            raise _fail(f"peer used auth method {auth.method}, expected PSK")
        assert cfg.psk is not None
        verify_psk(sa.chosen.prf, cfg.psk, octets, auth.data)
        return str(ident)
    if auth.method == AuthMethod.SHARED_KEY_MIC:
        raise _fail("peer used PSK, expected a signature")
    from cryptography import x509

    from pyipsec.crypto.certs import CertValidator

    x509_certs = [c for c in certs if c.encoding == CertEncoding.X509_SIG]
    if not x509_certs:
        raise _fail("peer sent no certificate")
    try:
        chain = [x509.load_der_x509_certificate(c.data) for c in x509_certs]
    except ValueError:
        raise _fail("peer certificate cannot be parsed") from None
    when = datetime.datetime.fromtimestamp(now, tz=datetime.UTC)
    validator = CertValidator(list(cfg.trusted_cas))
    public_key = validator.validate(chain[0], chain[1:], when, identity=(idp.id_type, idp.data))
    verify(public_key, octets, auth.method, auth.data)
    return str(ident)
