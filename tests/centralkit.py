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
