"""``pyipsec pki init|enroll|issue|revoke|list|crl``: machine certificates without a directory.

The CA runs on the administrator's machine (``--dir``, default ``$PYIPSEC_CA_DIR`` or
/var/lib/pyipsec/ca); a host enrolls by generating its key locally (``pki enroll``, key
0600) and handing the CSR to the CA (``pki issue --csr``); ``pki revoke`` publishes a signed
CRL that the IKE layer and the policy server load. See :mod:`pyipsec.pki.ca`.
"""

from __future__ import annotations

import datetime as _dt
import json
import time
from pathlib import Path

import click

from pyipsec.errors import ConfigError

DEFAULT_CA_DIR = "/var/lib/pyipsec/ca"


def _when(ts: float) -> str:
    return _dt.datetime.fromtimestamp(ts, tz=_dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    for line in [headers, *rows]:
        click.echo("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip())


ca_dir_option = click.option(
    "--dir",
    "ca_dir",
    envvar="PYIPSEC_CA_DIR",
    default=DEFAULT_CA_DIR,
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="CA directory",
)


@click.group("pki")
def pki() -> None:
    """Machine certificates: a CA, host enrollment, revocation."""


def _serial(text: str) -> int:
    try:
        return int(text.replace(":", "").removeprefix("0x"), 16)
    except ValueError:
        raise ConfigError(f"not a hexadecimal serial: {text!r}", key="serial") from None


@pki.command("init")
@ca_dir_option
@click.option("--name", required=True, help="the CA's common name")
@click.option(
    "--key-type",
    default="p256",
    show_default=True,
    type=click.Choice(["p256", "p384", "ed25519", "rsa3072"]),
)
@click.option("--days", default=3650, show_default=True, type=int)
def pki_init(ca_dir: Path, name: str, key_type: str, days: int) -> None:
    """Create a CA: key (0600), self-signed certificate, empty CRL."""
    from pyipsec.pki.ca import CertificateAuthority

    ca = CertificateAuthority.init(ca_dir, name, now=time.time(), key_type=key_type, days=days)
    click.echo(f"CA {name!r} created in {ca_dir}; distribute {ca.cert_path}")


@pki.command("enroll")
@click.option("--name", required=True, help="this host's identity (certificate common name)")
@click.option("--ip", "ips", multiple=True, help="IP address for the SAN (repeatable)")
@click.option("--dns", "dns", multiple=True, help="DNS name for the SAN (repeatable)")
@click.option(
    "--key-type",
    default="p256",
    show_default=True,
    type=click.Choice(["p256", "p384", "ed25519", "rsa3072"]),
)
@click.option("--key-out", required=True, type=Path, help="private key (written 0600)")
@click.option("--csr-out", required=True, type=Path, help="CSR to hand to the CA")
def pki_enroll(
    name: str,
    ips: tuple[str, ...],
    dns: tuple[str, ...],
    key_type: str,
    key_out: Path,
    csr_out: Path,
) -> None:
    """On the host: generate its key locally and a signing request for the CA."""
    from cryptography.hazmat.primitives import serialization

    from pyipsec.pki.ca import make_csr, private_key_pem, write_private

    key, csr = make_csr(name, ips=ips, dns=dns, key_type=key_type)
    write_private(key_out, private_key_pem(key))
    csr_out.write_bytes(csr.public_bytes(serialization.Encoding.PEM))
    click.echo(f"key written to {key_out} (0600); now: pyipsec pki issue --csr {csr_out}")


@pki.command("issue")
@ca_dir_option
@click.option("--csr", "csr_path", required=True, type=Path)
@click.option("--out", "out", default=None, type=Path, help="certificate (default: stdout)")
@click.option("--days", default=365, show_default=True, type=int)
@click.option("--ip", "ips", multiple=True, help="extra SAN IP address")
@click.option("--dns", "dns", multiple=True, help="extra SAN DNS name")
def pki_issue(
    ca_dir: Path,
    csr_path: Path,
    out: Path | None,
    days: int,
    ips: tuple[str, ...],
    dns: tuple[str, ...],
) -> None:
    """Sign a host's CSR (EKU serverAuth, clientAuth, ipsecIKE)."""
    from cryptography.hazmat.primitives import serialization

    from pyipsec.pki.ca import CertificateAuthority

    try:
        data = csr_path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read CSR: {exc.strerror}", key=str(csr_path)) from None
    cert = CertificateAuthority(ca_dir).issue(data, now=time.time(), days=days, ips=ips, dns=dns)
    pem = cert.public_bytes(serialization.Encoding.PEM)
    if out is None:
        click.echo(pem.decode(), nl=False)
    else:
        out.write_bytes(pem)
        click.echo(f"certificate {cert.serial_number:x} written to {out}", err=True)


@pki.command("revoke")
@ca_dir_option
@click.argument("serial")
@click.option(
    "--reason",
    default="unspecified",
    show_default=True,
    type=click.Choice(
        [
            "unspecified",
            "key-compromise",
            "superseded",
            "cessation-of-operation",
            "affiliation-changed",
        ]
    ),
)
def pki_revoke(ca_dir: Path, serial: str, reason: str) -> None:
    """Revoke a certificate by its (hex) serial and publish the new CRL."""
    from pyipsec.pki.ca import CertificateAuthority

    ca = CertificateAuthority(ca_dir)
    rec = ca.revoke(_serial(serial), now=time.time(), reason=reason)
    click.echo(f"revoked {rec.serial:x} ({rec.subject}); CRL published at {ca.crl_path}")


@pki.command("crl")
@ca_dir_option
def pki_crl(ca_dir: Path) -> None:
    """Re-sign and publish the CRL (before its next update is due)."""
    from pyipsec.pki.ca import CertificateAuthority

    ca = CertificateAuthority(ca_dir)
    crl = ca.publish_crl(now=time.time())
    click.echo(f"CRL with {len(crl)} entries published at {ca.crl_path}")


@pki.command("list")
@ca_dir_option
@click.option("--json", "as_json", is_flag=True)
def pki_list(ca_dir: Path, as_json: bool) -> None:
    """Every certificate the CA issued, with its state."""
    from pyipsec.pki.ca import CertificateAuthority

    now = time.time()
    certs = CertificateAuthority(ca_dir).list()
    if as_json:
        out = [
            {
                "serial": f"{c.serial:x}",
                "subject": c.subject,
                "sans": list(c.sans),
                "not_after": c.not_after,
                "status": c.status(now),
                "reason": c.reason,
            }
            for c in certs
        ]
        click.echo(json.dumps(out, indent=1))
        return
    rows = [
        [f"{c.serial:x}", c.subject, ",".join(c.sans), _when(c.not_after), c.status(now)]
        for c in certs
    ]
    _table(["SERIAL", "SUBJECT", "SAN", "EXPIRES", "STATUS"], rows)
