"""The host side of central management: fetch, verify and cache the assigned policy.

A host asks the policy server (``GET /v1/policy`` over mutual TLS with its machine
certificate), checks the signed envelope (:func:`pyipsec.policy.envelope.verify_envelope`:
issued by the trusted CA, naming the policy server the host talks to, for this host, text
unaltered) and that the policy validates, then keeps it as the *last good envelope* in a
0600 cache file. Whatever goes wrong, the current policy stays in place and a typed
:class:`PolicyUpdateError` says what happened and which policy is kept:

* :class:`ServerUnreachable`: no TCP/TLS connection, a timeout, or an HTTP error;
* :class:`NoPolicyAssigned`: the server knows no policy for this host (404/409);
* :class:`BadSignature`: the envelope does not verify, or is older than the one in effect;
* :class:`InvalidPolicy`: the envelope verifies but its policy does not validate.

Polling is a pure function of (now, last poll, interval) (:func:`poll_due`,
:func:`next_poll`) so the daemon schedules it with its own clock. Calls that touch the
network or the clock take ``now`` explicitly.
"""

from __future__ import annotations

import http.client
import json
import os
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from pyipsec.errors import ConfigError, PyipsecError
from pyipsec.pki.ca import load_certificate, load_crl
from pyipsec.policy.envelope import (
    EnvelopeError,
    PolicyEnvelope,
    validate_policy_text,
    verify_envelope,
)

__all__ = [
    "BadSignature",
    "ClientConfig",
    "ClientStats",
    "InvalidPolicy",
    "NoPolicyAssigned",
    "PolicyClient",
    "PolicyUpdateError",
    "ServerUnreachable",
    "UpdateResult",
    "next_poll",
    "poll_due",
]

#: an envelope issued this much earlier than the one in effect is still accepted
#: (several policy servers sharing one store may disagree on the time a little)
CLOCK_SKEW = 300.0
_MAX_RESPONSE = 4 * 1024 * 1024


# --------------------------------------------------------------------------- polling


def poll_due(now: float, last_poll: float | None, interval: float) -> bool:
    """Whether a host should ask the policy server now.

    Never polled, an interval elapsed, or a clock that went backwards: poll.
    """
    if interval <= 0:
        raise ConfigError("polling interval must be positive", key="polling_interval")
    if last_poll is None or now < last_poll:
        return True
    return now - last_poll >= interval


def next_poll(now: float, last_poll: float | None, interval: float) -> float:
    """The time of the next poll (``now`` when one is due)."""
    if poll_due(now, last_poll, interval):
        return now
    assert last_poll is not None
    return last_poll + interval


# --------------------------------------------------------------------------- errors


class PolicyUpdateError(PyipsecError):
    """A policy update failed; ``kept`` is the envelope still in effect (or None)."""

    def __init__(self, reason: str, kept: PolicyEnvelope | None) -> None:
        self.reason = reason
        self.kept = kept
        if kept is None:
            tail = "no policy in effect"
        else:
            tail = f"keeping current policy {kept.name!r} version {kept.version}"
        super().__init__(f"{reason}; {tail}")


class ServerUnreachable(PolicyUpdateError):
    """The policy server could not be reached or answered with an error."""


class NoPolicyAssigned(PolicyUpdateError):
    """The policy server has no (or a conflicting) policy for this host."""


class BadSignature(PolicyUpdateError):
    """The envelope did not verify (altered, wrong signer, other host, or a rollback)."""


class InvalidPolicy(PolicyUpdateError):
    """The envelope verified but its policy text does not validate."""


# --------------------------------------------------------------------------- client


@dataclass(frozen=True)
class ClientConfig:
    """Where the policy server is and what the host authenticates/verifies with.

    server: ``https://name:port`` (the name must be in the server certificate);
    ca: the CA certificate (trust anchor for TLS and envelopes); cert/key: this host's
    machine certificate and key; cache: the last good envelope (written 0600);
    crl: optional CRL of the CA (checked against the envelope's signer); timeout: seconds.
    """

    server: str
    ca: Path
    cert: Path
    key: Path
    cache: Path
    crl: Path | None = None
    timeout: float = 10.0


@dataclass(frozen=True)
class UpdateResult:
    """A successful fetch: the envelope now in effect, the previous one, whether it changed,
    and what the validator returned for its text (the parsed policy, for the daemon)."""

    envelope: PolicyEnvelope
    previous: PolicyEnvelope | None
    changed: bool
    policy: object = None


@dataclass(frozen=True)
class ClientStats:
    """Counters of this client: fetch attempts and their outcomes."""

    fetches: int
    updated: int
    unchanged: int
    unreachable: int
    no_policy: int
    bad_signature: int
    invalid_policy: int
    reports: int


class PolicyClient:
    """Fetches this host's policy from the policy server and keeps the last good one."""

    def __init__(
        self,
        config: ClientConfig,
        *,
        validator: Callable[[str, str], object] = validate_policy_text,
    ) -> None:
        self.config = config
        url = urlsplit(config.server)
        if url.scheme != "https" or not url.hostname:
            raise ConfigError("policy server must be an https:// URL", key="server")
        self._hostname = url.hostname
        self._port = url.port or 443
        self._validate = validator
        self._ca = load_certificate(config.ca)
        self.host = self._own_identity()
        self._counts = dict.fromkeys(ClientStats.__dataclass_fields__, 0)
        self._ctx: ssl.SSLContext | None = None
        self._verified: tuple[bytes, PolicyEnvelope] | None = None  # cache file -> envelope

    def __repr__(self) -> str:
        return f"PolicyClient({self.config.server!r}, host={self.host!r})"

    def _own_identity(self) -> str:
        from cryptography.x509.oid import NameOID

        cert = load_certificate(self.config.cert)
        cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if len(cns) != 1:
            raise ConfigError("machine certificate must have one common name", key="cert")
        return str(cns[0].value)

    def statistics(self) -> ClientStats:
        return ClientStats(**self._counts)

    # ------------------------------------------------------------------ TLS/HTTP

    def _context(self) -> ssl.SSLContext:
        """The TLS context, built once (loading CA and key costs ms; a renewed certificate
        takes effect with a new PolicyClient)."""
        if self._ctx is not None:
            return self._ctx
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            ctx.load_verify_locations(cafile=str(self.config.ca))
            ctx.load_cert_chain(str(self.config.cert), str(self.config.key))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load machine certificate/key/CA: {exc}", key="tls") from None
        self._ctx = ctx
        return ctx

    def _request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        conn = http.client.HTTPSConnection(
            self._hostname, self._port, context=self._context(), timeout=self.config.timeout
        )
        try:
            headers = {"Content-Type": "application/json"} if body is not None else {}
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read(_MAX_RESPONSE + 1)
            return resp.status, data
        finally:
            conn.close()

    # ------------------------------------------------------------------ cache

    def current(self) -> PolicyEnvelope | None:
        """The cached last good envelope, re-verified (a damaged cache counts as none)."""
        try:
            data = self.config.cache.read_bytes()
        except FileNotFoundError:
            return None
        if self._verified is not None and self._verified[0] == data:
            return self._verified[1]
        try:
            envelope = PolicyEnvelope.from_json(data)
            verify_envelope(
                envelope,
                ca=self._ca,
                now=envelope.issued_at,
                signer_name=self._hostname,
                host=self.host,
            )
        except EnvelopeError:
            return None
        self._verified = (data, envelope)
        return envelope

    def _store(self, envelope: PolicyEnvelope) -> None:
        path = self.config.cache
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, envelope.to_json())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)

    # ------------------------------------------------------------------ operations

    def fetch(self, now: float) -> UpdateResult:
        """Fetch, verify, validate and cache the host's policy; raise PolicyUpdateError."""
        self._counts["fetches"] += 1
        kept = self.current()
        try:
            status, data = self._request("GET", "/v1/policy")
        except (TimeoutError, OSError, ssl.SSLError, http.client.HTTPException) as exc:
            self._counts["unreachable"] += 1
            raise ServerUnreachable(
                f"policy server {self.config.server} unreachable ({exc})", kept
            ) from None
        if status in (404, 409):
            self._counts["no_policy"] += 1
            raise NoPolicyAssigned(f"policy server: {_error_text(data)}", kept)
        if status != 200:
            self._counts["unreachable"] += 1
            raise ServerUnreachable(f"policy server answered {status}: {_error_text(data)}", kept)
        try:
            envelope = PolicyEnvelope.from_json(data)
            crls = [load_crl(self.config.crl)] if self.config.crl is not None else []
            verify_envelope(
                envelope,
                ca=self._ca,
                now=now,
                signer_name=self._hostname,
                host=self.host,
                crls=crls,
            )
            if kept is not None and envelope.issued_at < kept.issued_at - CLOCK_SKEW:
                raise EnvelopeError("envelope is older than the policy in effect (rollback)")
        except EnvelopeError as exc:
            self._counts["bad_signature"] += 1
            raise BadSignature(f"policy refused: {exc}", kept) from None
        try:
            parsed = self._validate(envelope.text, f"{envelope.name} v{envelope.version}")
        except ConfigError as exc:
            self._counts["invalid_policy"] += 1
            raise InvalidPolicy(f"policy refused: invalid policy: {exc}", kept) from None
        changed = kept is None or kept.sha256 != envelope.sha256 or kept.name != envelope.name
        self._store(envelope)
        self._counts["updated" if changed else "unchanged"] += 1
        return UpdateResult(envelope=envelope, previous=kept, changed=changed, policy=parsed)

    def report(self, envelope: PolicyEnvelope, status: str, detail: str = "") -> None:
        """Tell the server what this host did with ``envelope`` (``POST /v1/applied``)."""
        body = json.dumps(
            {
                "policy": envelope.name,
                "version": envelope.version,
                "sha256": envelope.sha256,
                "status": status,
                "detail": detail,
            }
        ).encode()
        try:
            code, data = self._request("POST", "/v1/applied", body)
        except (OSError, ssl.SSLError, http.client.HTTPException) as exc:
            raise ServerUnreachable(
                f"cannot report to {self.config.server} ({exc})", envelope
            ) from None
        if code != 200:
            raise ServerUnreachable(f"report refused ({code}): {_error_text(data)}", envelope)
        self._counts["reports"] += 1


def _error_text(data: bytes) -> str:
    try:
        obj = json.loads(data)
        if isinstance(obj, dict) and isinstance(obj.get("error"), str):
            return obj["error"][:500]
    except (ValueError, UnicodeDecodeError):
        pass
    return data[:200].decode("utf-8", "replace")
