"""Machine certificates without a directory service: a small file-based CA.

See :mod:`pyipsec.pki.ca`.
"""

from pyipsec.pki.ca import (
    CertificateAuthority,
    IssuedCert,
    PkiStats,
    load_certificate,
    load_crl,
    make_csr,
    write_private,
)

__all__ = [
    "CertificateAuthority",
    "IssuedCert",
    "PkiStats",
    "load_certificate",
    "load_crl",
    "make_csr",
    "write_private",
]
