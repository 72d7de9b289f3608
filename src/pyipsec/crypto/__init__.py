"""Cryptography for IKEv2 and IPsec, all primitives from ``cryptography``.

IKE side (this package's IKE modules): :mod:`.prf` (PRFs, ``prf+``), :mod:`.ike_keys`
(SKEYSEED, SK_*, Child SA KEYMAT), :mod:`.ke` (key exchange methods: MODP, ECP,
Curve25519/448, ML-KEM), :mod:`.ike_ciphers` (SK payload protection), :mod:`.signatures`
(PSK and RFC 7427 authentication), :mod:`.certs` (X.509 chain and identity validation).
"""

from pyipsec.crypto.prf import Prf, prf_plus

__all__ = ["Prf", "prf_plus"]
