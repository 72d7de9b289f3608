"""Anti-replay window (RFC 4303 section 3.4.3) as an RFC 6479 ring bitmap, with ESN.

The window is a ring of 64-bit blocks indexed by ``seq % bits``: advancing it clears only
the blocks it moves over, never shifts the whole bitmap. :meth:`ReplayWindow.check`
runs before the ICV and changes nothing; :meth:`ReplayWindow.update` runs only after the
ICV verified (RFC 4303 section 3.4.3, strongSwan ``esp_context``).

With extended sequence numbers only the low 32 bits travel;
:meth:`ReplayWindow.estimate` reconstructs the high half per RFC 4303 Appendix A2.2.
"""

from __future__ import annotations

from pyipsec.errors import ConfigError, ReplayedPacket

MIN_WINDOW = 32
MAX_WINDOW = 4096
_MASK32 = 0xFFFFFFFF


class ReplayWindow:
    """Receive-side replay state of one inbound SA."""

    __slots__ = ("size", "esn", "top", "_blocks", "_nblocks", "_bits")

    def __init__(self, size: int = 64, esn: bool = False) -> None:
        if not MIN_WINDOW <= size <= MAX_WINDOW:
            raise ConfigError(
                f"replay window must be {MIN_WINDOW}..{MAX_WINDOW} packets, got {size}",
                key="replay_window",
            )
        self.size = size
        self.esn = esn
        #: highest sequence number accepted so far (0: none yet)
        self.top = 0
        # RFC 6479 section 2: one spare block so the window never straddles the block
        # being cleared.
        self._nblocks = (size + 63) // 64 + 1
        self._bits = self._nblocks * 64
        self._blocks = [0] * self._nblocks

    def estimate(self, seq_low: int) -> int:
        """The full sequence number of a received packet (RFC 4303 Appendix A2.2).

        Without ESN this is ``seq_low``. With ESN the high half is chosen so that the
        number lies in or above the window; -1 means it would be below sequence 1.
        """
        if not self.esn:
            return seq_low
        top = self.top
        th, tl = top >> 32, top & _MASK32
        w = self.size
        if tl >= w - 1:  # Case A: window within one 2^32 subspace
            if seq_low >= tl - w + 1:
                return (th << 32) | seq_low
            return ((th + 1) << 32) | seq_low
        # Case B: the window spans two subspaces
        if seq_low >= (tl - w + 1) & _MASK32:
            return ((th - 1) << 32) | seq_low if th else -1
        return (th << 32) | seq_low

    def check(self, seq: int) -> None:
        """Raise ReplayedPacket if ``seq`` was seen or is left of the window."""
        if seq <= 0:
            raise ReplayedPacket("sequence number 0 is never sent")
        top = self.top
        if seq > top:
            return
        if seq + self.size <= top:
            raise ReplayedPacket(f"sequence number {seq} is left of the window (top {top})")
        bit = seq % self._bits
        if self._blocks[bit >> 6] >> (bit & 63) & 1:
            raise ReplayedPacket(f"sequence number {seq} was already received")

    def update(self, seq: int) -> None:
        """Mark ``seq`` received (call only after the ICV verified)."""
        top = self.top
        blocks = self._blocks
        n = self._nblocks
        if seq > top and seq >> 6 == top >> 6:  # same block: nothing to clear
            self.top = seq
        elif seq > top:
            # clear the blocks the window moves over (RFC 6479 section 2.3)
            first = (top >> 6) + 1
            last = seq >> 6
            if last - first >= n:
                for i in range(n):
                    blocks[i] = 0
            else:
                for b in range(first, last + 1):
                    blocks[b % n] = 0
            self.top = seq
        bit = seq % self._bits
        blocks[bit >> 6] |= 1 << (bit & 63)

    def received(self, seq: int) -> bool:
        """Whether ``seq`` is inside the window and marked (for tests and monitors)."""
        if seq <= 0 or seq > self.top or seq + self.size <= self.top:
            return False
        bit = seq % self._bits
        return bool(self._blocks[bit >> 6] >> (bit & 63) & 1)
