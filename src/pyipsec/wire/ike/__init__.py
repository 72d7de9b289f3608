"""IKEv2 message codec (RFC 7296 section 3, RFC 7383 fragmentation), sans-I/O.

Read a datagram with :func:`pull_header` (to route it), then :func:`pull_message` for
plaintext messages (IKE_SA_INIT), :func:`decrypt_message` for SK-protected ones, or a
:class:`Reassembler` when the header's next payload is SKF. Write with :func:`push_message`,
:func:`encrypt_message` or :func:`fragment_message`. The error policy is documented in
:mod:`pyipsec.wire.ike.header` and :mod:`pyipsec.wire.ike.message`.
"""

from pyipsec.wire.ike.fragments import Reassembler, ReassemblerStats
from pyipsec.wire.ike.header import (
    FLAG_INITIATOR,
    FLAG_RESPONSE,
    FLAG_VERSION,
    IKE_HEADER_SIZE,
    IkeHeader,
    pull_header,
    push_header,
)
from pyipsec.wire.ike.message import (
    IkeCipher,
    Message,
    decrypt_message,
    encrypt_message,
    fragment_message,
    pull_message,
    push_message,
)
from pyipsec.wire.ike.payloads import (
    AuthPayload,
    CertPayload,
    CertReqPayload,
    DeletePayload,
    EncryptedFragmentPayload,
    EncryptedPayload,
    IdPayload,
    KePayload,
    NoncePayload,
    NotifyPayload,
    UnknownPayload,
    UnsupportedCriticalPayload,
    VendorIdPayload,
    pull_payload_body,
    push_id,
    push_payload_body,
)
from pyipsec.wire.ike.sa_payload import Proposal, SaPayload, Transform
from pyipsec.wire.ike.ts import TrafficSelector, TsPayload

__all__ = [
    "FLAG_INITIATOR",
    "FLAG_RESPONSE",
    "FLAG_VERSION",
    "IKE_HEADER_SIZE",
    "AuthPayload",
    "CertPayload",
    "CertReqPayload",
    "DeletePayload",
    "EncryptedFragmentPayload",
    "EncryptedPayload",
    "IdPayload",
    "IkeCipher",
    "IkeHeader",
    "KePayload",
    "Message",
    "NoncePayload",
    "NotifyPayload",
    "Proposal",
    "Reassembler",
    "ReassemblerStats",
    "SaPayload",
    "TrafficSelector",
    "Transform",
    "TsPayload",
    "UnknownPayload",
    "UnsupportedCriticalPayload",
    "VendorIdPayload",
    "decrypt_message",
    "encrypt_message",
    "fragment_message",
    "pull_header",
    "pull_message",
    "pull_payload_body",
    "push_header",
    "push_id",
    "push_message",
    "push_payload_body",
]
