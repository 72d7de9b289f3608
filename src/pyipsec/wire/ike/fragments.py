"""Reassembly of IKEv2 messages fragmented with SKF payloads (RFC 7383 section 2.6).

Each fragment is authenticated on its own, so a fragment is kept only after its ICV verified:
forged fragments cannot fill the memory or displace real ones. Memory is bounded by the
number of messages in reassembly, the number of fragments per message and the bytes held.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from pyipsec.errors import MalformedPacket, PacketError, ProtocolError
from pyipsec.wire.iana import PayloadType
from pyipsec.wire.ike.header import FLAG_RESPONSE, IkeHeader, syntax_error
from pyipsec.wire.ike.message import (
    SKF_HEADER_SIZE,
    IkeCipher,
    Message,
    message_from_header,
    open_body,
    read_outer,
)
from pyipsec.wire.ike.payloads import EncryptedFragmentPayload, pull_payload_chain


@dataclass(frozen=True, slots=True)
class ReassemblerStats:
    """Snapshot of a Reassembler's counters.

    fragments_received: datagrams given to add().
    fragments_accepted: authenticated fragments stored.
    fragments_duplicate: fragments already held (dropped without decrypting).
    fragments_stale: fragments of an older fragmentation (smaller Total Fragments, 2.6.2).
    fragments_malformed: fragments rejected before authentication (syntax, limits).
    fragments_not_authenticated: fragments whose ICV did not verify.
    fragments_invalid: authenticated fragments with bad content (padding, header mismatch).
    messages_reassembled: complete messages returned.
    messages_evicted: incomplete messages dropped to respect the memory bounds.
    messages_invalid: complete messages whose payload chain did not parse.
    pending_messages / pending_bytes: what is held right now.
    """

    fragments_received: int = 0
    fragments_accepted: int = 0
    fragments_duplicate: int = 0
    fragments_stale: int = 0
    fragments_malformed: int = 0
    fragments_not_authenticated: int = 0
    fragments_invalid: int = 0
    messages_reassembled: int = 0
    messages_evicted: int = 0
    messages_invalid: int = 0
    pending_messages: int = 0
    pending_bytes: int = 0


@dataclass(slots=True)
class _Pending:
    header: IkeHeader
    total: int
    first_type: int = PayloadType.NONE
    parts: dict[int, bytes] = field(default_factory=dict)
    size: int = 0


_Key = tuple[bytes, bytes, int, bool]


class Reassembler:
    """Collects SKF fragments per (IKE SPIs, Message ID, response flag).

    ``add(datagram, cipher)`` returns the decrypted Message once every fragment arrived,
    else None. Duplicates and stale fragments are counted and ignored; bad fragments raise
    PacketError (not authenticated: drop silently) or ProtocolError (authenticated but
    malformed) and change nothing else.
    """

    def __init__(
        self, *, max_messages: int = 4, max_fragments: int = 128, max_bytes: int = 256 * 1024
    ) -> None:
        self.max_messages = max_messages
        self.max_fragments = max_fragments
        self.max_bytes = max_bytes
        self._pending: OrderedDict[_Key, _Pending] = OrderedDict()
        self._counts: dict[str, int] = dict.fromkeys(ReassemblerStats.__slots__, 0)

    def statistics(self) -> ReassemblerStats:
        """A frozen snapshot of the counters."""
        counts = dict(self._counts)
        counts["pending_messages"] = len(self._pending)
        counts["pending_bytes"] = self._held()
        return ReassemblerStats(**counts)

    def discard(self, message_id: int | None = None) -> None:
        """Forget incomplete messages (all, or those with ``message_id``)."""
        for key in [k for k in self._pending if message_id is None or k[2] == message_id]:
            del self._pending[key]

    def _held(self) -> int:
        return sum(p.size for p in self._pending.values())

    def _count(self, name: str) -> None:
        self._counts[name] += 1

    def add(self, data: bytes, cipher: IkeCipher) -> Message | None:
        """Process one datagram whose IKE header announces SKF."""
        self._count("fragments_received")
        try:
            header, outer, skf_offset = read_outer(data)
            if len(outer) != 1 or not isinstance(outer[0], EncryptedFragmentPayload):
                raise syntax_error("an SKF fragment must carry the SKF payload only")
            frag = outer[0]
            if frag.total_fragments > self.max_fragments:
                raise syntax_error(f"{frag.total_fragments} fragments exceed the limit")
        except (PacketError, ProtocolError) as exc:
            self._count("fragments_malformed")
            raise MalformedPacket(f"bad SKF fragment: {exc}") from exc
        key = (header.spi_i, header.spi_r, header.message_id, bool(header.flags & FLAG_RESPONSE))
        pending = self._pending.get(key)
        if pending is not None:
            if frag.total_fragments < pending.total:
                self._count("fragments_stale")
                return None
            if frag.total_fragments == pending.total and frag.fragment_number in pending.parts:
                self._count("fragments_duplicate")
                return None
        aad_end = skf_offset + SKF_HEADER_SIZE
        try:
            content = open_body(cipher, bytes(data[:aad_end]), bytes(data[aad_end:]))
        except ProtocolError:
            self._count("fragments_invalid")
            raise
        except PacketError:
            self._count("fragments_not_authenticated")
            raise
        if pending is not None and pending.header.exchange_type != header.exchange_type:
            self._count("fragments_invalid")
            raise syntax_error("fragments of one message disagree on the exchange type")
        if pending is None or frag.total_fragments > pending.total:
            # New message, or a retransmission fragmented differently (RFC 7383 2.6.2).
            pending = _Pending(header, frag.total_fragments)
            self._pending.pop(key, None)
        if frag.fragment_number == 1:
            pending.first_type = frag.first_payload_type
        pending.parts[frag.fragment_number] = content
        pending.size += len(content)
        self._pending[key] = pending
        self._pending.move_to_end(key)
        self._count("fragments_accepted")
        if len(pending.parts) == pending.total:
            del self._pending[key]
            return self._complete(pending)
        self._enforce_bounds(key)
        return None

    def _enforce_bounds(self, current: _Key) -> None:
        """Evict the oldest incomplete messages until the limits hold."""
        while len(self._pending) > self.max_messages or self._held() > self.max_bytes:
            oldest = next(iter(self._pending))
            del self._pending[oldest]
            self._count("messages_evicted")
            if oldest == current:
                break

    def _complete(self, pending: _Pending) -> Message:
        content = b"".join(pending.parts[i] for i in range(1, pending.total + 1))
        try:
            inner, _ = pull_payload_chain(
                content, pending.first_type, 0, len(content), allow_encrypted=False
            )
        except ProtocolError:
            self._count("messages_invalid")
            raise
        self._count("messages_reassembled")
        return message_from_header(pending.header, inner)
