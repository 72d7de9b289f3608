"""LifetimeTracker: thresholds, one report per limit, time limits."""

from __future__ import annotations

from pyipsec.ipsec.lifetime import Lifetime, LifetimeTracker


def test_thresholds_move_after_soft() -> None:
    t = LifetimeTracker(Lifetime(soft_packets=2, hard_packets=4, soft_bytes=10**6), now=5.0)
    assert (t.next_packets, t.next_bytes) == (2, 10**6)
    assert t.over(1, 10) == []
    assert t.over(2, 20) == [("soft", "packets")]
    assert t.next_packets == 4 and t.next_bytes == float("inf")
    assert t.over(3, 30) == []
    assert t.over(4, 40) == [("hard", "packets")]
    assert t.over(5, 50) == [] and t.next_packets == float("inf")


def test_no_limits_never_fire() -> None:
    t = LifetimeTracker(None, now=0.0)
    assert t.next_packets == t.next_bytes == float("inf")
    assert t.over(10**9, 10**12) == [] and t.over_time(10**9) == []


def test_time_limits() -> None:
    t = LifetimeTracker(Lifetime(soft_seconds=30, hard_seconds=60), now=100.0)
    assert t.over_time(129.9) == []
    assert t.over_time(130.0) == [("soft", "seconds")]
    assert t.over_time(200.0) == [("hard", "seconds")]
    assert t.over_time(300.0) == []
