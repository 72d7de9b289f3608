"""Typed errors, grouped by who is at fault.

* :class:`PacketError` and its subclasses: a packet on the wire is bad. Each carries
  ``counter``, the name of the statistics counter it increments, so that the data plane
  can count every drop in one place.
* :class:`ProtocolError`: an IKE peer broke the protocol; carries the IKEv2 ``notify``
  type to send back (RFC 7296 section 3.10.1).
* :class:`ConfigError`: the administrator's configuration is wrong; names the ``key``
  (and where known the ``file`` and ``line``).
* :class:`StateError`: an impossible transition, naming role, state and event.

Messages never contain key material.
"""

from __future__ import annotations


class PyipsecError(Exception):
    """Base class of every error pyipsec raises on purpose."""


# --------------------------------------------------------------------------- packets


class PacketError(PyipsecError):
    """A packet was rejected. ``counter`` names the statistics counter it increments."""

    counter = "packets_dropped"


class MalformedPacket(PacketError):
    counter = "malformed_packets"


class UnknownSpi(PacketError):
    counter = "bad_spi_packets"


class ReplayedPacket(PacketError):
    counter = "replayed_packets"


class IntegrityError(PacketError):
    """ICV verification failed (packet not authenticated)."""

    counter = "packets_not_authenticated"


class DecryptionError(PacketError):
    """Decryption produced an invalid result, e.g. wrong padding (packet not decrypted)."""

    counter = "packets_not_decrypted"


class SelectorMismatch(PacketError):
    """The inner packet does not match the SA's traffic selectors."""

    counter = "selector_mismatch_packets"


class LifetimeExpired(PacketError):
    """The SA reached a hard lifetime (or its sequence number space) and refuses traffic."""

    counter = "expired_sa_packets"


class NoSaError(PacketError):
    """No outbound SA exists (yet) for a packet that must be protected."""

    counter = "no_sa_packets"


# --------------------------------------------------------------------------- protocol


class ProtocolError(PyipsecError):
    """An IKE peer broke the protocol. ``notify`` is the IKEv2 Notify Message Type."""

    def __init__(self, message: str, *, notify: int | None = None) -> None:
        super().__init__(message)
        self.notify = notify


# --------------------------------------------------------------------------- config


class ConfigError(PyipsecError):
    """Bad configuration from the administrator, naming the key (and file/line)."""

    def __init__(
        self,
        message: str,
        *,
        key: str | None = None,
        file: str | None = None,
        line: int | None = None,
    ) -> None:
        self.key = key
        self.file = file
        self.line = line
        self.reason = message
        where = ""
        if file is not None:
            where = file + (f":{line}" if line is not None else "") + ": "
        elif line is not None:
            where = f"line {line}: "
        if key is not None:
            where += f"{key}: "
        super().__init__(where + message)


class StateError(PyipsecError):
    """An impossible state transition."""

    def __init__(self, *, role: str, state: str, event: str) -> None:
        super().__init__(f"{role} in state {state} cannot handle {event}")
        self.role = role
        self.state = state
        self.event = event
