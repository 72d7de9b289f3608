"""``pyipsec server``: the HTTPS policy server (mutual TLS, signed policy envelopes).

Hosts authenticate with the machine certificates issued by :mod:`pyipsec.pki`: the TLS
layer requires a client certificate chaining to the CA and allowing clientAuth; the
certificate's common name is the host's identity in the store (host -> groups -> the linked
policy). The server then checks the CA's CRL itself (re-read when the file changes), so a
revocation takes effect on the next request without a restart.

API (JSON)::

    GET  /v1/policy    200 signed envelope (pyipsec.policy.envelope) of the host's policy
                       404 no policy assigned to this host; 409 conflicting assignments
    POST /v1/applied   {"policy": str, "version": int, "sha256": hex, "status": str,
                        "detail": str} -> 200 {"recorded": true}; 400 on a bad report
    GET  /v1/health    200 {"ok": true}

Every refusal is answered with ``{"error": "..."}`` and counted in :meth:`statistics`.
The TLS handshake runs in the request's thread (not in the accept loop), so a slow or
broken client cannot stall the others. Logs name hosts and paths, never keys.

This module does I/O (sockets, threads, the clock through ``clock``); the decisions
(which policy, what to record) live in :class:`~pyipsec.policy.store.PolicyStore` and
:mod:`pyipsec.policy.envelope`.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID

from pyipsec.errors import ConfigError
from pyipsec.pki.ca import load_certificate, load_crl, load_private_key
from pyipsec.policy.envelope import sign_envelope
from pyipsec.policy.store import PolicyStore

__all__ = ["DEFAULT_PORT", "PolicyServer", "ServerStats", "tls_server_context"]

log = logging.getLogger("pyipsec.policy.server")

DEFAULT_PORT = 8443
_MAX_BODY = 64 * 1024
_HANDSHAKE_TIMEOUT = 10.0


@dataclass(frozen=True)
class ServerStats:
    """Counters of the policy server since it started."""

    connections: int  #: TCP connections accepted
    tls_failures: int  #: handshakes that failed (no/untrusted client certificate, ...)
    revoked_clients: int  #: requests refused because the client certificate is revoked
    requests: int  #: HTTP requests handled
    policies_served: int  #: signed envelopes sent
    no_policy: int  #: GET /v1/policy from hosts with no (or a conflicting) policy
    applied_records: int  #: POST /v1/applied recorded
    bad_requests: int  #: malformed requests, unknown paths or methods


def tls_server_context(cert: Path, key: Path, ca: Path) -> ssl.SSLContext:
    """TLS 1.2+ server context requiring a client certificate issued by ``ca``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(str(cert), str(key))
        ctx.load_verify_locations(cafile=str(ca))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load TLS certificate/key/CA: {exc}", key="tls") from None
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


class _Revocation:
    """The CA's CRL, re-read when its file changes (mtime/size)."""

    def __init__(self, path: Path | None, ca: x509.Certificate) -> None:
        self._path = path
        self._ca = ca
        self._stamp: tuple[float, int] | None = None
        self._serials: frozenset[int] = frozenset()
        self._lock = threading.Lock()

    def is_revoked(self, serial: int) -> bool:
        if self._path is None:
            return False
        with self._lock:
            try:
                st = os.stat(self._path)
            except OSError:
                # a configured CRL that vanished: fail closed
                log.error("CRL %s cannot be read; refusing clients", self._path)
                return True
            stamp = (st.st_mtime, st.st_size)
            if stamp != self._stamp:
                crl = load_crl(self._path)
                if crl.issuer != self._ca.subject or not crl.is_signature_valid(
                    self._ca.public_key()
                ):
                    log.error("CRL %s is not signed by the CA; refusing clients", self._path)
                    return True
                self._serials = frozenset(r.serial_number for r in crl)
                self._stamp = stamp
            return serial in self._serials


class _Handler(BaseHTTPRequestHandler):
    server: _HttpServer
    protocol_version = "HTTP/1.1"
    server_version = "pyipsec-policy/1"
    sys_version = ""

    # ------------------------------------------------------------------ plumbing

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.info("%s %s", self.client_address[0], format % args)

    def _reply(self, status: int, body: dict[str, Any] | bytes) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str, counter: str = "bad_requests") -> None:
        self.server.owner._count(counter)
        self._reply(status, {"error": message})

    def _identity(self) -> tuple[str, int] | None:
        """(host name, certificate serial) of the authenticated client."""
        der = self.connection.getpeercert(binary_form=True)  # type: ignore[attr-defined]
        if not der:
            return None
        cert = x509.load_der_x509_certificate(der)
        cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if len(cns) != 1:
            return None
        return str(cns[0].value), cert.serial_number

    def _authorised(self) -> str | None:
        self.server.owner._count("requests")
        ident = self._identity()
        if ident is None:
            self._error(HTTPStatus.FORBIDDEN, "client certificate has no single common name")
            return None
        host, serial = ident
        if self.server.owner._revocation.is_revoked(serial):
            log.warning("refused revoked certificate %x of %s", serial, host)
            self._error(HTTPStatus.FORBIDDEN, "client certificate is revoked", "revoked_clients")
            return None
        return host

    # ------------------------------------------------------------------ API

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        host = self._authorised()
        if host is None:
            return
        if self.path == "/v1/health":
            self._reply(HTTPStatus.OK, {"ok": True})
            return
        if self.path != "/v1/policy":
            self._error(HTTPStatus.NOT_FOUND, f"no such resource {self.path[:100]!r}")
            return
        owner = self.server.owner
        try:
            version = owner.store.policy_for_host(host)
        except ConfigError as exc:
            self._error(HTTPStatus.CONFLICT, str(exc), "no_policy")
            return
        if version is None:
            self._error(HTTPStatus.NOT_FOUND, f"no policy assigned to host {host!r}", "no_policy")
            return
        envelope = sign_envelope(
            host=host,
            name=version.name,
            version=version.version,
            text=version.text,
            now=owner.clock(),
            key=owner._signing_key,
            certificate=owner.certificate,
        )
        owner._count("policies_served")
        log.info("served %s version %d to %s", version.name, version.version, host)
        self._reply(HTTPStatus.OK, envelope.to_json())

    def do_POST(self) -> None:  # noqa: N802
        host = self._authorised()
        if host is None:
            return
        if self.path != "/v1/applied":
            self._error(HTTPStatus.NOT_FOUND, f"no such resource {self.path[:100]!r}")
            return
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self._error(HTTPStatus.LENGTH_REQUIRED, "Content-Length required")
            return
        if not 0 < length <= _MAX_BODY:
            self.close_connection = True
            self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "report too large or empty")
            return
        try:
            report = json.loads(self.rfile.read(length))
            if not isinstance(report, dict):
                raise ValueError
            fields = (report["policy"], report["version"], report["sha256"], report["status"])
            detail = report.get("detail", "")
            if not isinstance(detail, str) or not all(
                isinstance(f, t) for f, t in zip(fields, (str, int, str, str))
            ):
                raise ValueError
        except (ValueError, KeyError, UnicodeDecodeError):
            self._error(
                HTTPStatus.BAD_REQUEST,
                "report must be a JSON object with policy, version, sha256, status (and detail)",
            )
            return
        owner = self.server.owner
        try:
            owner.store.record_applied(
                host,
                fields[0],
                fields[1],
                fields[2],
                status=fields[3],
                detail=detail,
                now=owner.clock(),
            )
        except ConfigError as exc:
            self._error(HTTPStatus.BAD_REQUEST, str(exc))
            return
        owner._count("applied_records")
        self._reply(HTTPStatus.OK, {"recorded": True})

    def do_PUT(self) -> None:  # noqa: N802
        self._error(HTTPStatus.METHOD_NOT_ALLOWED, "method not allowed")

    do_DELETE = do_PUT


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True
    owner: PolicyServer

    def __init__(self, address: tuple[str, int], owner: PolicyServer) -> None:
        self.owner = owner
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    def get_request(self) -> tuple[Any, Any]:
        sock, addr = self.socket.accept()
        self.owner._count("connections")
        # headers and body go out as separate writes: without NODELAY, Nagle plus the
        # client's delayed ACK stall every response by ~40 ms
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        wrapped = self.owner.context.wrap_socket(
            sock, server_side=True, do_handshake_on_connect=False
        )
        return wrapped, addr

    def finish_request(self, request: Any, client_address: Any) -> None:
        # Runs in the request's own thread: a stalled handshake holds only this thread.
        try:
            request.settimeout(_HANDSHAKE_TIMEOUT)
            request.do_handshake()
        except (ssl.SSLError, OSError) as exc:
            self.owner._count("tls_failures")
            log.info("TLS handshake with %s failed: %s", client_address[0], exc)
            return
        super().finish_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.exception("error while serving %s", client_address[0])


class PolicyServer:
    """Serves each authenticated host its assigned policy, signed; records applied reports."""

    def __init__(
        self,
        store: PolicyStore,
        *,
        cert: str | os.PathLike[str],
        key: str | os.PathLike[str],
        ca: str | os.PathLike[str],
        crl: str | os.PathLike[str] | None = None,
        listen: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.clock = clock
        self.certificate = load_certificate(cert)
        self._signing_key = load_private_key(key)
        ca_cert = load_certificate(ca)
        self.context = tls_server_context(Path(cert), Path(key), Path(ca))
        self._revocation = _Revocation(Path(crl) if crl is not None else None, ca_cert)
        self._counts = dict.fromkeys(ServerStats.__dataclass_fields__, 0)
        self._count_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        try:
            self._http = _HttpServer((listen, port), self)
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {listen}:{port}: {exc.strerror}", key="listen"
            ) from None

    def __repr__(self) -> str:
        return f"PolicyServer({self.address!r})"

    def _count(self, name: str) -> None:
        with self._count_lock:
            self._counts[name] += 1

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._http.server_address[:2]
        return str(host), int(port)

    def statistics(self) -> ServerStats:
        with self._count_lock:
            return ServerStats(**self._counts)

    def serve_forever(self) -> None:
        """Serve in the calling thread until :meth:`shutdown`."""
        log.info("policy server listening on %s:%d", *self.address)
        self._http.serve_forever(poll_interval=0.2)

    def start(self) -> None:
        """Serve in a background thread (tests, embedding)."""
        self._thread = threading.Thread(
            target=self.serve_forever, name="policy-server", daemon=True
        )
        self._thread.start()

    def shutdown(self) -> None:
        if self._thread is not None:
            self._http.shutdown()  # waits for serve_forever to return
        self._http.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
