from pyipsec.ike.retransmit import Retransmitter


def test_backoff_and_give_up():
    r = Retransmitter(timeout=2.0, base=2.0, tries=3)
    r.start([b"req"], now=0.0)
    assert r.on_timer(1.9) == []
    times = []
    now = 0.0
    while True:
        now = r.next_time
        out = r.on_timer(now)
        if out is None:
            break
        assert out == [b"req"]
        times.append(now)
    assert times == [2.0, 6.0, 14.0]  # 2, +4, +8
    assert now == 30.0  # +16 then give up
    assert not r.active and r.statistics().total == 3


def test_stop():
    r = Retransmitter(timeout=1.0, base=1.5, tries=2)
    r.start([b"a", b"b"], now=5.0)
    assert r.on_timer(6.0) == [b"a", b"b"]
    r.stop()
    assert r.next_time is None and r.on_timer(100.0) == []
