"""Tests of the anti-replay window against a set-based model (RFC 4303 3.4.3, RFC 6479)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyipsec.errors import ConfigError, ReplayedPacket
from pyipsec.ipsec.replay import ReplayWindow


class Model:
    """The obvious definition: a packet is fresh if above the window's left edge and
    never accepted before."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.seen: set[int] = set()
        self.top = 0

    def accept(self, seq: int) -> bool:
        if seq <= 0 or seq in self.seen or seq + self.size <= self.top:
            return False
        self.seen.add(seq)
        self.top = max(self.top, seq)
        return True


def run(win: ReplayWindow, model: Model, seqs: list[int], verified: list[bool]) -> None:
    """Feed ``seqs`` through check/ICV/update; ``verified[i]`` False simulates an ICV
    failure. With ESN a wrongly reconstructed high half also fails the ICV, as the high
    half is part of the ICV input."""
    for seq, ok in zip(seqs, verified):
        full = win.estimate(seq & 0xFFFFFFFF) if win.esn else seq
        try:
            win.check(full)
            fresh = True
        except ReplayedPacket:
            fresh = False
        if not ok:  # the ICV failed: the window must not move
            continue
        accepted = fresh and full == seq
        assert accepted == model.accept(seq), seq
        if accepted:
            win.update(full)
        assert win.top == model.top


@settings(max_examples=60, deadline=None)
@given(
    size=st.sampled_from([32, 64, 100, 128, 1000, 4096]),
    data=st.data(),
)
def test_window_agrees_with_set_model(size: int, data: st.DataObject) -> None:
    top = data.draw(st.integers(1, 20000))
    seqs = data.draw(st.lists(st.integers(1, top), max_size=300))
    verified = data.draw(st.lists(st.booleans(), min_size=len(seqs), max_size=len(seqs)))
    run(ReplayWindow(size), Model(size), seqs, verified)


@settings(max_examples=60, deadline=None)
@given(size=st.sampled_from([32, 64, 256, 4096]), data=st.data())
def test_esn_window_agrees_with_set_model(size: int, data: st.DataObject) -> None:
    # sequence numbers around the 2^32 boundary, arriving out of order but never further
    # than the window behind the highest one sent so far (as RFC 4303 A2.2 assumes)
    start = data.draw(st.integers((1 << 32) - 3 * size, (1 << 32) + 10))
    n = data.draw(st.integers(1, 400))
    sent = list(range(start, start + n))
    rnd = data.draw(st.randoms(use_true_random=False))
    order: list[int] = []
    pending = list(sent)
    while pending:
        order.append(pending.pop(rnd.randint(0, min(len(pending) - 1, size // 2))))
        if rnd.random() < 0.3:
            order.append(order[rnd.randint(0, len(order) - 1)])  # duplicate
    win = ReplayWindow(size, esn=True)
    model = Model(size)
    # the window starts just left of the test range, as if the earlier packets arrived
    win.update(start - 1)
    model.accept(start - 1)
    run(win, model, order, [True] * len(order))


def test_esn_estimate_appendix_a_cases() -> None:
    w = ReplayWindow(64, esn=True)
    w.update((5 << 32) | 1000)
    assert w.estimate(990) == (5 << 32) | 990  # case A, inside
    assert w.estimate(2000) == (5 << 32) | 2000  # case A, ahead
    assert w.estimate(10) == (6 << 32) | 10  # case A, left of window: next subspace
    w = ReplayWindow(64, esn=True)
    w.update((5 << 32) | 10)
    assert w.estimate(0xFFFFFFF0) == (4 << 32) | 0xFFFFFFF0  # case B, previous subspace
    assert w.estimate(5) == (5 << 32) | 5
    assert ReplayWindow(64, esn=True).estimate(0xFFFFFFF0) == -1  # would be below 1


def test_check_never_changes_state_and_rejects() -> None:
    w = ReplayWindow(32)
    w.update(100)
    w.check(99)
    assert not w.received(99)
    with pytest.raises(ReplayedPacket):
        w.check(100)
    with pytest.raises(ReplayedPacket):
        w.check(68)  # 68 + 32 <= 100: left of the window
    w.check(69)
    with pytest.raises(ReplayedPacket):
        w.check(0)
    w.update(100000)  # a jump larger than the ring clears everything
    assert not w.received(100)
    w.check(99999)


@pytest.mark.parametrize("size", [0, 31, 4097])
def test_window_size_bounds(size: int) -> None:
    with pytest.raises(ConfigError):
        ReplayWindow(size)
