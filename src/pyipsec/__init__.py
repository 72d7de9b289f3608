"""pyipsec: an IPsec system (IKEv2, ESP, AH) for Linux, written in Python."""

__version__ = "0.1.0"
