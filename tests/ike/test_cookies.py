import random

from pyipsec.ike.cookies import CookieJar


def jar():
    rng = random.Random(1)
    return CookieJar(lifetime=10.0, randbytes=rng.randbytes)


def test_make_verify():
    j = jar()
    c = j.make(b"n" * 32, "192.0.2.1", b"s" * 8, now=0.0)
    assert len(c) == 36
    assert j.verify(c, b"n" * 32, "192.0.2.1", b"s" * 8, now=1.0)
    assert not j.verify(c, b"m" * 32, "192.0.2.1", b"s" * 8, now=1.0)
    assert not j.verify(c, b"n" * 32, "192.0.2.2", b"s" * 8, now=1.0)
    assert not j.verify(c, b"n" * 32, "192.0.2.1", b"t" * 8, now=1.0)
    assert not j.verify(c[:-1], b"n" * 32, "192.0.2.1", b"s" * 8, now=1.0)
    st = j.statistics()
    assert (st.issued, st.accepted, st.rejected) == (1, 1, 4)


def test_rotation_accepts_previous_only():
    j = jar()
    c = j.make(b"n" * 32, "::1", b"s" * 8, now=0.0)
    assert j.verify(c, b"n" * 32, "::1", b"s" * 8, now=11.0)  # rotated once: still valid
    assert not j.verify(c, b"n" * 32, "::1", b"s" * 8, now=22.0)  # rotated twice: stale
    assert "secret" not in repr(j)
