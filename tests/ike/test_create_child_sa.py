"""CREATE_CHILD_SA: new Child SAs, rekeys with and without PFS, simultaneous rekeying."""

import dataclasses

import pytest

from ike.harness import Network, Pair, peer_config
from pyipsec.ike.config import ChildConfig
from pyipsec.ike.events import (
    ChildSaDeleted,
    ChildSaInstalled,
    ChildSaRekeyed,
    IkeSaDown,
    IkeSaRekeyed,
    IkeSaUp,
    NegotiationFailed,
)
from pyipsec.wire.iana import NotifyType


def live(p, side):
    """Child SAs installed and not deleted on one side, by inbound SPI."""
    gone = {e.inbound_spi for e in p.of(side, ChildSaDeleted)}
    return {e.inbound_spi: e for e in p.of(side, ChildSaInstalled) if e.inbound_spi not in gone}


def outbound_in_use(p, side):
    """What a daemon following ChildSaRekeyed would use for sending."""
    first = p.of(side, ChildSaInstalled)[0].outbound_spi
    rekeys = p.of(side, ChildSaRekeyed)
    return rekeys[-1].new_outbound_spi if rekeys else first


def consistent(p):
    la, lb = live(p, "a"), live(p, "b")
    assert len(la) == 1 and len(lb) == 1
    (ca,), (cb,) = la.values(), lb.values()
    assert ca.inbound_spi == cb.outbound_spi and ca.inbound_key == cb.outbound_key
    # the outbound SA each side uses is the one the other side still has inbound
    assert outbound_in_use(p, "a") == cb.inbound_spi
    assert outbound_in_use(p, "b") == ca.inbound_spi


def test_additional_child_sa_both_roles():
    extra = ChildConfig("extra", esp_proposals=("chacha20poly1305",))
    p = Pair(children=(ChildConfig("c"), extra))
    h = p.connect()
    p.a.create_child(h, extra, p.now)
    p.b.create_child(p.of("b", IkeSaUp)[0].ike_sa, extra, p.now)
    p.advance(10)
    names = sorted(e.child for e in p.of("a", ChildSaInstalled))
    assert names == ["c", "extra", "extra"]
    assert {e.algorithm for e in p.of("b", ChildSaInstalled)} == {"aes128gcm16", "chacha20poly1305"}
    assert p.a.statistics().child_sas == 3 and p.b.statistics().child_sas == 3


def test_pfs_group_mismatch_invalid_ke_retry():
    # a guesses ecp256 for PFS but also offers x25519; b accepts only x25519
    a_cfg = ChildConfig("c", pfs_group="ecp256", esp_proposals=("aes128gcm16-ecp256-x25519",))
    b_cfg = ChildConfig("c", pfs_group="x25519")
    base = Pair(children=(a_cfg,))
    p = Pair(base.a_peer, dataclasses.replace(base.b_peer, children=(b_cfg,)))
    h = p.connect()
    p.a.rekey_child(h, "c", p.now)
    p.advance(10)
    assert p.a.statistics().counter("invalid_ke_retries") == 1
    assert len(p.of("a", ChildSaInstalled)) == 2
    consistent(p)


def test_pfs_group_unacceptable():
    a_cfg = ChildConfig("c", pfs_group="ecp256")
    b_cfg = ChildConfig("c", pfs_group="x25519")
    base = Pair(children=(a_cfg,))
    p = Pair(base.a_peer, dataclasses.replace(base.b_peer, children=(b_cfg,)))
    h = p.connect()
    p.a.create_child(h, a_cfg, p.now)
    p.advance(10)
    assert p.of("a", NegotiationFailed)[0].notify == NotifyType.NO_PROPOSAL_CHOSEN
    assert p.a.statistics().child_sas == 1 and p.b.statistics().child_sas == 1


def test_new_child_ts_unacceptable_keeps_others():
    p = Pair()
    h = p.connect()
    p.a.create_child(
        h,
        ChildConfig("x", mode="tunnel", local_ts=("10.0.0.0/8",), remote_ts=("10.0.0.0/8",)),
        p.now,
    )
    p.advance(10)
    (nf,) = p.of("a", NegotiationFailed)
    assert nf.notify == NotifyType.TS_UNACCEPTABLE and nf.child == "x"
    assert p.a.statistics().child_sas == 1


@pytest.mark.parametrize("seed", range(6))
def test_simultaneous_child_rekey(seed):
    p = Pair(seed=seed, children=(ChildConfig("c", pfs_group="x25519"),))
    p.connect()
    ha, hb = p.of("a", IkeSaUp)[0].ike_sa, p.of("b", IkeSaUp)[0].ike_sa
    p.a.rekey_child(ha, "c", p.now)
    p.b.rekey_child(hb, "c", p.now)
    p.advance(30)
    consistent(p)
    assert p.a.statistics().counter("rekey_collisions") == 1
    assert p.b.statistics().counter("rekey_collisions") == 1
    for side in "ab":
        assert len(p.of(side, ChildSaInstalled)) == 3  # original, two successors
        assert len(p.of(side, ChildSaDeleted)) == 2  # original, redundant successor
        assert not p.of(side, NegotiationFailed)


def test_simultaneous_child_rekey_slow_link():
    """One side's response arrives before the other's request (different path delays)."""
    p = Pair(seed=5, network=Network(seed=5, latency=0.3))
    p.connect()
    ha, hb = p.of("a", IkeSaUp)[0].ike_sa, p.of("b", IkeSaUp)[0].ike_sa
    p.a.rekey_child(ha, "c", p.now)
    p.advance(0.2)
    p.b.rekey_child(hb, "c", p.now)
    p.advance(30)
    consistent(p)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("latency", [0.01, 0.3])
def test_simultaneous_ike_rekey(seed, latency):
    """RFC 7296 2.8.2: both rekeys complete, the redundant IKE SA (lowest nonce) and the old
    one are deleted, the Child SAs end up on the survivor on both sides."""
    p = Pair(seed=seed, network=Network(seed=seed, latency=latency))
    p.connect()
    ha, hb = p.of("a", IkeSaUp)[0].ike_sa, p.of("b", IkeSaUp)[0].ike_sa
    p.a.rekey_ike(ha, p.now)
    if seed % 2:
        p.advance(latency / 2)
    p.b.rekey_ike(hb, p.now)
    p.advance(60)
    for side in "ab":
        assert not p.of(side, IkeSaDown) and not p.of(side, ChildSaDeleted)
    ep_a, ep_b = p.a, p.b
    assert len(ep_a._by_spi) == 1 and len(ep_b._by_spi) == 1  # old and redundant SAs gone
    sa_a, sa_b = ep_a.ike_sas()[0], ep_b.ike_sas()[0]
    assert (sa_a.spi_i, sa_a.spi_r) == (sa_b.spi_i, sa_b.spi_r)
    assert p.of("a", IkeSaRekeyed)[-1].new_spi_i == sa_a.spi_i
    assert sa_a.children == 1 and sa_b.children == 1
    p.b.rekey_child(hb, "c", p.now)  # the surviving IKE SA works
    p.advance(10)
    consistent(p)


class Outbound:
    """Follows one side's events the way a daemon does: the outbound SA is set by a new
    Child SA (not a rekey successor), switched by ChildSaRekeyed, gone when deleted."""

    def __init__(self, p, side):
        self.p, self.side, self.seen, self.spi = p, side, 0, None
        self.live_in: set[int] = set()

    def update(self):
        evs = self.p.events[self.side]
        for e in evs[self.seen :]:
            if isinstance(e, ChildSaInstalled):
                self.live_in.add(e.inbound_spi)
                if e.rekeyed_from is None:
                    self.spi = e.outbound_spi
            elif isinstance(e, ChildSaRekeyed):
                self.spi = e.new_outbound_spi
            elif isinstance(e, ChildSaDeleted):
                self.live_in.discard(e.inbound_spi)
                if e.outbound_spi == self.spi:
                    self.spi = None
        self.seen = len(evs)


def run_checking_outbound(p, seconds):
    a, b = Outbound(p, "a"), Outbound(p, "b")
    end = p.now + seconds
    while p.now < end and p.step():
        a.update()
        b.update()
        assert a.spi is not None and b.spi is not None, "an outbound SA was lost"
        assert a.spi in b.live_in, "a sends on an SA b does not have"
        assert b.spi in a.live_in, "b sends on an SA a does not have"


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("latency", [0.01, 0.3])
def test_simultaneous_rekey_never_loses_outbound(seed, latency):
    p = Pair(seed=seed, network=Network(seed=seed, latency=latency, delay=0.3, max_delay=0.5))
    p.connect()
    ha, hb = p.of("a", IkeSaUp)[0].ike_sa, p.of("b", IkeSaUp)[0].ike_sa
    p.a.rekey_child(ha, "c", p.now)
    if seed % 2:
        p.advance(latency * (seed % 3))
    p.b.rekey_child(hb, "c", p.now)
    run_checking_outbound(p, 30)
    consistent(p)
    p.a.rekey_child(ha, "c", p.now)  # and an ordinary rekey afterwards
    run_checking_outbound(p, 30)
    consistent(p)


def test_pfs_group_from_proposal_keyword_sends_ke(monkeypatch):
    """Found against strongSwan (issue 6): with the KE group named in the ESP proposal
    ("aes256gcm16-ecp256", strongSwan's way to ask for PFS) and no pfs_group, a rekey
    offered the KE transform but sent no KE payload; charon answered INVALID_KE_PAYLOAD
    over and over. The request now carries the KE payload of that group."""
    from pyipsec.ike.exchanges import create_child_sa as mod

    seen = []
    original = mod.respond_child

    def spy(*args, **kw):
        seen.append(kw.get("ke"))
        return original(*args, **kw)

    monkeypatch.setattr(mod, "respond_child", spy)
    cfg = ChildConfig("c", esp_proposals=("aes256gcm16-ecp256",))
    p = Pair(children=(cfg,))
    h = p.connect()
    p.a.rekey_child(h, "c", p.now)
    p.advance(10)
    assert seen and seen[-1] is not None and seen[-1].group == 19  # ECP256
    assert len(p.of("a", ChildSaRekeyed)) == 1
    assert p.a.statistics().counter("invalid_ke_retries") == 0
    consistent(p)


def test_refused_rekey_is_retried_later_not_at_once():
    """Found against strongSwan (issue 6): a Child SA whose rekey the peer refused went
    back to INSTALLED with its rekey time in the past and was rekeyed again at once, in a
    loop. Now the next attempt waits (10-30 s), and the SA stays usable meanwhile."""
    a_cfg = ChildConfig("c", pfs_group="ecp256", rekey_time=20.0, life_time=200.0)
    b_cfg = ChildConfig("c", pfs_group="x25519")
    base = Pair(children=(a_cfg,))
    p = Pair(base.a_peer, dataclasses.replace(base.b_peer, children=(b_cfg,)))
    p.connect()
    p.advance(60)  # first attempt at ~20 s, then at most two more
    refused = [e for e in p.of("a", NegotiationFailed) if e.child == "c"]
    assert 1 <= len(refused) <= 3, len(refused)
    assert all(e.notify == NotifyType.NO_PROPOSAL_CHOSEN for e in refused)
    assert len(live(p, "a")) == 1 and p.a.child_sas(1)[0].state == "installed"


def test_child_sa_carries_the_nat_mapped_ike_ports():
    """Behind a NAT that maps port 4500 elsewhere, the responder's ChildSaInstalled names
    the mapped port (ESP-in-UDP must go there, RFC 3948 2.1), and a Child SA made after
    the mapping changed names the new port (RFC 7296 2.23)."""
    ca = ChildConfig("c", mode="tunnel", local_ts=("10.1.0.0/16",), remote_ts=("10.2.0.0/16",))
    cb = ChildConfig("c", mode="tunnel", local_ts=("10.2.0.0/16",), remote_ts=("10.1.0.0/16",))
    p = Pair(
        peer_config("to-b", "192.0.2.2", children=(ca,)),
        peer_config("to-a", "%any", children=(cb,)),
    )
    p.a_public = ("198.51.100.7", 31000)
    h = p.connect()
    (ea,), (eb,) = p.of("a", ChildSaInstalled), p.of("b", ChildSaInstalled)
    assert ea.encap_udp and eb.encap_udp
    assert (eb.remote_addr, eb.remote_port, eb.local_port) == ("198.51.100.7", 31000, 4500)
    # (a's local port is not checked: the harness's NAT does not translate destinations back)
    assert (ea.remote_addr, ea.remote_port) == ("192.0.2.2", 4500)
    p.a_public = ("198.51.100.7", 31077)  # the NAT's mapping changed
    p.a.rekey_child(h, "c", p.now)
    p.advance(10)
    installed = p.of("b", ChildSaInstalled)
    assert len(installed) == 2 and installed[1].rekeyed_from == eb.outbound_spi
    assert installed[1].remote_port == 31077
    assert p.a.statistics().child_sas == 1


def test_child_sa_without_nat_names_ike_port_500():
    p = Pair()
    p.connect()
    (ev,) = p.of("b", ChildSaInstalled)
    assert not ev.encap_udp and (ev.remote_port, ev.local_port) == (500, 500)
