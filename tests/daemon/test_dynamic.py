"""Connections toward many hosts: naming, selector narrowing and the fallback clock."""

from __future__ import annotations

import pytest

from pyipsec.daemon.dynamic import (
    Fallbacks,
    dataplane_child,
    is_dynamic,
    narrow_child,
    peer_for,
)
from pyipsec.ike.config import AuthConfig, ChildConfig, PeerConfig

PSK = AuthConfig(method="psk", psk=b"a secret of some length")


def _peer(*remote: str) -> PeerConfig:
    return PeerConfig(name="any", remote_addrs=remote, local_auth=PSK, remote_auth=PSK,
                      children=(ChildConfig("c", local_ts=("10.0.0.5",),
                                            remote_ts=("0.0.0.0/0",)),))  # fmt: skip


@pytest.mark.parametrize(
    ("remote", "dynamic"),
    [(("%any",), True), (("10.0.0.1", "10.0.0.2"), True),
     (("10.0.0.1",), False), (("2001:db8::1",), False)],
)  # fmt: skip
def test_is_dynamic(remote: tuple[str, ...], dynamic: bool) -> None:
    peer = _peer(*remote)
    assert is_dynamic(peer) is dynamic
    name = dataplane_child(peer, "c", "10.0.0.9")
    assert name == ("any/c@10.0.0.9" if dynamic else "any/c")


def test_peer_for_keeps_everything_but_the_address() -> None:
    peer = _peer("%any")
    one = peer_for(peer, "192.0.2.7")
    assert one.remote_addrs == ("192.0.2.7",) and one.name == peer.name
    assert one.children == peer.children and not is_dynamic(one)


def test_narrow_child_to_the_packet_hosts() -> None:
    child = ChildConfig(
        "c",
        local_ts=("dynamic",),
        remote_ts=("0.0.0.0/0[tcp/5432]", "10.9.0.0/16", "::/0"),
    )
    narrowed = narrow_child(child, "10.0.0.5", "10.9.1.2")
    assert narrowed is not None
    assert narrowed.local_ts == ("10.0.0.5",)
    assert narrowed.remote_ts == ("10.9.1.2[6/5432]", "10.9.1.2")
    assert narrowed.esp_proposals == child.esp_proposals
    # a destination outside every remote selector: nothing to negotiate
    assert (
        narrow_child(ChildConfig("c", remote_ts=("10.9.0.0/16",)), "10.0.0.5", "10.8.0.1") is None
    )
    # a local address outside the local selectors
    assert narrow_child(ChildConfig("c", local_ts=("10.1.0.0/24",)), "10.0.0.5", "10.8.0.1") is None


def test_fallback_after_the_delay_then_background_retries() -> None:
    f = Fallbacks(retry=300.0)
    f.negotiating("any", "c", "10.0.0.5", "192.0.2.7", 3.0, now=100.0)
    f.negotiating("any", "c", "10.0.0.5", "192.0.2.7", 3.0, now=101.0)  # same host: once
    assert f.next_deadline() == 103.0
    assert f.due(102.9) == []
    (bypass,) = f.due(103.0)
    assert (bypass.kind, bypass.remote, bypass.local) == ("bypass", "192.0.2.7", "10.0.0.5")
    assert f.active() == [
        {"connection": "any", "child": "c", "remote": "192.0.2.7", "since": 103.0}
    ]
    assert f.due(200.0) == []
    (retry,) = f.due(403.0)
    assert retry.kind == "retry" and f.next_deadline() == 703.0
    assert f.protected("any", "c", "192.0.2.7") is True  # SA up: the bypass must go
    assert f.active() == [] and f.next_deadline() is None


def test_protected_in_time_means_no_fallback() -> None:
    f = Fallbacks()
    f.negotiating("any", "c", "10.0.0.5", "192.0.2.7", 3.0, now=0.0)
    assert f.protected("any", "c", "192.0.2.7") is False
    assert f.due(10.0) == []


def test_limit_forgets_the_oldest_negotiation_never_a_fallback() -> None:
    f = Fallbacks(limit=2)
    f.negotiating("any", "c", "l", "h1", 1.0, now=0.0)
    f.due(1.0)  # h1 falls back
    f.negotiating("any", "c", "l", "h2", 1.0, now=2.0)
    f.negotiating("any", "c", "l", "h3", 1.0, now=3.0)  # evicts h2, not h1
    remotes = sorted(a.remote for a in f.due(10.0))
    assert remotes == ["h3"]
    assert [h["remote"] for h in f.active()] == ["h1", "h3"]
    f2 = Fallbacks(limit=1)
    f2.negotiating("any", "c", "l", "h1", 1.0, now=0.0)
    f2.due(1.0)
    f2.negotiating("any", "c", "l", "h2", 1.0, now=2.0)  # full of fallbacks: not tracked
    assert f2.due(10.0) == [] or all(a.remote == "h1" for a in f2.due(10.0))


def test_forget_connection_returns_bypassed_hosts() -> None:
    f = Fallbacks()
    f.negotiating("any", "c", "l", "h1", 1.0, now=0.0)
    f.negotiating("any", "c", "l", "h2", 5.0, now=0.0)
    f.negotiating("other", "c", "l", "h3", 1.0, now=0.0)
    f.due(2.0)
    assert f.forget_connection("any") == [("c", "h1")]
    assert [h["remote"] for h in f.active()] == ["h3"]
