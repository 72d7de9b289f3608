"""IkeSa message handling: message IDs, window, cached responses, bad input never raises
and changes nothing, statistics."""

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ike.harness import A_ADDR, B_ADDR, Pair
from pyipsec.ike.events import ChildSaInstalled, IkeSaUp, NegotiationFailed


def record(p):
    log = []
    p.net.tamper = lambda data, dst: (log.append((data, dst)), data)[1]
    return log


def session():
    p = Pair()
    log = record(p)
    h = p.connect()
    p.a.rekey_child(h, "c", p.now)
    p.advance(5)
    return p, log


P, LOG = session()


def test_statistics_snapshot():
    (st_a,) = P.a.ike_sas()
    assert st_a.state == "established" and st_a.initiator and st_a.children == 1
    assert st_a.messages_out >= 3 and st_a.proposal == "aes128gcm16-prfsha256-x25519"
    (child,) = P.a.child_sas(st_a.handle)
    assert child.state == "installed" and child.algorithm == "aes128gcm16"


def test_window_of_one_queues_requests():
    p = Pair()
    h = p.connect()
    p.a.rekey_child(h, "c", p.now)
    p.a.create_child(h, p.a_peer.children[0], p.now)
    p.a.create_child(h, p.a_peer.children[0], p.now)
    sent = p.a.datagrams_to_send(p.now)
    assert len(sent) == 1  # one request in flight, the others wait
    for data, dst in sent:
        p.net.send(data, A_ADDR, dst, p.now)
    p.advance(20)
    assert len(p.of("a", ChildSaInstalled)) == 4  # first, rekeyed, two new
    assert p.a.statistics().child_sas == 3


def feed_all(p, datagrams):
    for data in datagrams:
        for ep, src in ((p.a, B_ADDR), (p.b, A_ADDR)):
            ep.receive_datagram(data, src, p.now)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    index=st.integers(min_value=0, max_value=len(LOG) - 1),
    cuts=st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)), max_size=4),
    trunc=st.integers(min_value=0, max_value=3000),
)
def test_mutated_messages_only_counted(index, cuts, trunc):
    """Random mutations of real messages: no exception, established state untouched."""
    p = Pair(seed=index)
    h = p.connect()
    data = bytearray(LOG[index][0])
    for pos, val in cuts:
        if data:
            data[pos % len(data)] = val
    data = bytes(data[: trunc or len(data)])
    n_a, n_b = len(p.events["a"]), len(p.events["b"])
    feed_all(p, [data, data[:28], data + b"\x00" * 7])
    p.flush()

    # nothing happened to the established SA (a mutated IKE_SA_INIT may be refused and
    # reported as a NegotiationFailed without an IKE SA, ike_sa 0)
    def changes(events: list) -> list:
        return [e for e in events if not (isinstance(e, NegotiationFailed) and e.ike_sa == 0)]

    assert changes(p.events["a"][n_a:]) == []
    assert not [
        e for e in changes(p.events["b"][n_b:]) if not isinstance(e, IkeSaUp | ChildSaInstalled)
    ]
    assert p.a.ike_sas()[0].state == "established" and h == p.a.ike_sas()[0].handle
    p.a.rekey_child(h, "c", p.now)  # still works
    p.advance(5)
    assert len(p.of("a", ChildSaInstalled)) == 2


def test_random_garbage_never_raises():
    rng = random.Random(5)
    p = Pair()
    p.connect()
    for _ in range(300):
        n = rng.choice([0, 1, 4, 27, 28, 29, 60, 200, 1500])
        data = bytes(rng.getrandbits(8) for _ in range(n))
        if rng.random() < 0.5 and n >= 28:  # valid-looking header for a known SA
            sa = p.a.ike_sas()[0]
            data = (
                bytes.fromhex(sa.spi_i)
                + bytes.fromhex(sa.spi_r)
                + bytes([46, 0x20, 37, rng.choice([0, 8, 0x20, 0x28])])
                + data[20:24]
                + len(data).to_bytes(4, "big")
                + data[28:]
            )
        feed_all(p, [data])
    p.flush()
    assert p.a.statistics().established == 1 and p.b.statistics().established == 1
    assert len(p.of("a", IkeSaUp)) == 1


def test_duplicate_request_answered_from_cache_not_reprocessed():
    p = Pair()
    log = record(p)
    h = p.connect()
    p.a.rekey_child(h, "c", p.now)
    p.advance(5)
    requests = [d for d, dst in log if dst == B_ADDR and d[18] == 36]  # CREATE_CHILD_SA
    n = len(p.of("b", ChildSaInstalled))
    p.b.receive_datagram(requests[-1], A_ADDR, p.now)
    out = p.b.datagrams_to_send(p.now)
    # the delete exchange followed, so the rekey request is two IDs behind: dropped
    assert out == [] and len(p.of("b", ChildSaInstalled)) == n
