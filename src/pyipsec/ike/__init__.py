"""Sans-I/O IKEv2 (RFC 7296 with RFC 7383, 7427, 9242, 9370).

Public API: :class:`~pyipsec.ike.endpoint.IkeEndpoint` (bytes, time and commands in;
datagrams, timers and events out), the configuration dataclasses of
:mod:`pyipsec.ike.config` and the events of :mod:`pyipsec.ike.events`.
"""

from pyipsec.ike.config import AuthConfig, ChildConfig, EndpointConfig, Identity, PeerConfig
from pyipsec.ike.endpoint import EndpointStatistics, IkeEndpoint
from pyipsec.ike.events import (
    AuthenticationFailed,
    ChildSaDeleted,
    ChildSaInstalled,
    ChildSaRekeyed,
    IkeEvent,
    IkeSaDown,
    IkeSaRekeyed,
    IkeSaUp,
    NegotiationFailed,
)

__all__ = [
    "AuthConfig",
    "AuthenticationFailed",
    "ChildConfig",
    "ChildSaDeleted",
    "ChildSaInstalled",
    "ChildSaRekeyed",
    "EndpointConfig",
    "EndpointStatistics",
    "Identity",
    "IkeEndpoint",
    "IkeEvent",
    "IkeSaDown",
    "IkeSaRekeyed",
    "IkeSaUp",
    "NegotiationFailed",
    "PeerConfig",
]
