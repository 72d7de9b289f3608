"""Shared pieces for the central-management tests (store, server, client, CLI).

``policy_text(description)`` is a small valid policy document (the reference scenario's
"Web - DB" rule); ``Central`` builds a CA with a policy-server certificate and host
certificates in a temporary directory, a SQLite store, and runs the HTTPS policy server on
127.0.0.1 with an ephemeral port.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from pyipsec.pki.ca import CertificateAuthority, make_csr, private_key_pem, write_private


def policy_text(
    description: str = "one",
    name: str = "Web App Encrypt",
    a: str = "10.77.0.1",
    b: str = "10.77.0.2",
) -> str:
    return f"""\
name: {name}
description: {description}
polling_interval: 1h
filter_lists:
  Web - DB traffic:
    filters:
      - source: {a}
        destination: {b}
rules:
  Web - DB:
    filter_list: Web - DB traffic
    filter_action: Require Security (Strict)
    authentication:
      - psk: web-db
"""


@dataclass
class Identity:
    name: str
    cert: Path
    key: Path


def issue_identity(
    ca: CertificateAuthority,
    directory: Path,
    name: str,
    *,
    ips=(),
    dns=(),
    now: float | None = None,
    days: int = 30,
) -> Identity:
    """Enroll ``name`` the way a host does: key 0600 + CSR, then the CA signs it."""
    now = time.time() if now is None else now
    key, csr = make_csr(name, ips=ips, dns=dns)
    cert = ca.issue(csr.public_bytes(serialization.Encoding.PEM), now=now, days=days)
    directory.mkdir(parents=True, exist_ok=True)
    key_path = directory / f"{name}.key"
    cert_path = directory / f"{name}.crt"
    write_private(key_path, private_key_pem(key))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return Identity(name, cert_path, key_path)


class Central:
    """A CA, a SQLite store and a running policy server on 127.0.0.1 (ephemeral port)."""

    def __init__(self, tmp: Path, *, store_validator=None) -> None:
        from pyipsec.policy.server import PolicyServer
        from pyipsec.policy.store import PolicyStore

        self.tmp = tmp
        self.ca = CertificateAuthority.init(tmp / "ca", "pyipsec test CA", now=time.time())
        self.server_id = issue_identity(self.ca, tmp / "server", "policy-server", ips=["127.0.0.1"])
        kwargs = {} if store_validator is None else {"validator": store_validator}
        self.store = PolicyStore(tmp / "store" / "policy.db", **kwargs)
        self.server = PolicyServer(
            self.store,
            cert=self.server_id.cert,
            key=self.server_id.key,
            ca=self.ca.cert_path,
            crl=self.ca.crl_path,
            listen="127.0.0.1",
            port=0,
        )
        self.server.start()
        self.url = f"https://127.0.0.1:{self.server.address[1]}"

    def host(self, name: str, **kwargs) -> Identity:
        return issue_identity(self.ca, self.tmp / "hosts", name, **kwargs)

    def client(self, ident: Identity, *, url: str | None = None, timeout: float = 5.0):
        from pyipsec.policy.client import ClientConfig, PolicyClient

        return PolicyClient(
            ClientConfig(
                server=url or self.url,
                ca=self.ca.cert_path,
                cert=ident.cert,
                key=ident.key,
                cache=self.tmp / "cache" / ident.name / "policy.json",
                timeout=timeout,
            )
        )

    def close(self) -> None:
        self.server.shutdown()
        self.store.close()


class StaticTlsServer:
    """A real HTTPS server (mutual TLS, certificate of ``ident``) answering every GET with
    fixed bytes: stands in for a compromised or tampering policy server."""

    def __init__(self, ident: Identity, ca_path: Path, body: bytes, status: int = 200) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, HTTPServer

        from pyipsec.policy.server import tls_server_context

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        ctx = tls_server_context(ident.cert, ident.key, ca_path)
        self.httpd = HTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
