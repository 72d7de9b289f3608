"""Two daemons end to end in one event loop, through a fake network and fake data planes.

This exercises the daemon core for real (the IKE endpoint, its events, the SA tables,
commands, reload) without root; the namespace tests run the same code with real sockets.
"""

from __future__ import annotations

import asyncio
import os
import textwrap

import pytest

from daemonfakes import FakeDataplane, FakeNetwork
from pyipsec.daemon.config import DaemonConfig, load_config
from pyipsec.daemon.core import Daemon
from pyipsec.errors import ConfigError

A, B = "10.1.0.1", "10.1.0.2"


def config_for(
    tmp_path, me: str, peer: str, psk: str, *, start: str = "trap", mode: str = "transport"
) -> DaemonConfig:
    directory = tmp_path / me
    directory.mkdir(exist_ok=True)
    secrets = directory / "secrets.yaml"
    secrets.write_text(f'psk:\n  web-db: "{psk}"\n')
    os.chmod(secrets, 0o600)
    path = directory / "pyipsec.yaml"
    path.write_text(
        textwrap.dedent(f"""\
        secrets: secrets.yaml
        connections:
          web-db:
            local_addrs: [{me}]
            remote_addrs: [{peer}]
            local: {{auth: psk, id: {me}}}
            remote: {{auth: psk, id: {peer}}}
            dpd_delay: 0
            retransmit_timeout: 0.2
            retransmit_tries: 2
            children:
              db:
                mode: {mode}
                start_action: {start}
        """)
    )
    return load_config(str(path))


@pytest.fixture
def pair(tmp_path):
    loop = asyncio.new_event_loop()
    net = FakeNetwork(loop)

    def make(psk_a: str = "shared secret key", psk_b: str = "shared secret key", **kw):
        daemons = []
        for me, peer, psk in ((A, B, psk_a), (B, A, psk_b)):
            dataplane = FakeDataplane()
            daemon = Daemon(
                config_for(tmp_path, me, peer, psk, **kw),
                net.port(me),
                dataplane,
                clock=loop.time,
                loop=loop,
            )
            net.hosts[me] = daemon.datagram
            daemons.append(daemon)
        for daemon in daemons:
            daemon.start()
        return daemons

    yield loop, net, make
    loop.close()


def run_until(loop: asyncio.AbstractEventLoop, predicate, timeout: float = 5.0) -> bool:
    async def wait() -> bool:
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            if predicate():
                return True
            await asyncio.sleep(0.01)
        return predicate()

    return loop.run_until_complete(wait())


def test_up_installs_matching_sas_on_both_sides(pair) -> None:
    loop, _, make = pair
    a, b = make()
    assert a.dataplane.policies and b.dataplane.policies
    a.command_up("web-db")
    assert run_until(loop, lambda: a.child_sas and b.child_sas)
    (sa_a,) = a.dataplane.installed.values()
    (sa_b,) = b.dataplane.installed.values()
    assert sa_a.inbound_spi == sa_b.outbound_spi and sa_a.outbound_spi == sa_b.inbound_spi
    assert sa_a.inbound_key == sa_b.outbound_key and sa_a.outbound_key == sa_b.inbound_key
    assert sa_a.mode == "transport"
    status = a.status()
    assert status["ike_sas"][0]["remote_addr"] == B
    assert status["child_sas"][0]["spi_in"] == f"{sa_a.inbound_spi:08x}"
    assert status["child_sas"][0]["bytes_in"] == 100
    stats = a.statistics()
    assert stats["active_ike_sas"] == 1 and stats["child_sa_additions"] == 1


def test_acquire_starts_the_trapped_connection_once(pair) -> None:
    loop, net, make = pair
    a, b = make()
    a.acquire(A, B)
    a.acquire(A, B)  # a second held packet must not start a second IKE SA
    assert run_until(loop, lambda: a.child_sas and b.child_sas)
    assert len(a.ike_sas) == 1 and len(b.ike_sas) == 1
    assert a.counters.acquires == 2


def test_start_action_start_brings_it_up_alone(pair) -> None:
    loop, _, make = pair
    a, b = make(start="start")
    assert run_until(loop, lambda: a.child_sas and b.child_sas)


def test_wrong_psk_installs_nothing_and_is_visible(pair) -> None:
    loop, _, make = pair
    a, b = make(psk_b="another secret key")
    a.command_up("web-db")
    assert run_until(loop, lambda: a.failures and b.failures)
    run_until(loop, lambda: False, timeout=0.3)
    assert not a.dataplane.installed and not b.dataplane.installed
    assert (
        a.statistics()["authentication_failures"] + b.statistics()["authentication_failures"] >= 1
    )
    reasons = " ".join(f["reason"] for f in a.status()["recent_failures"])
    assert "authentication" in reasons.lower() or "AUTHENTICATION" in reasons


def test_down_removes_sas_on_both_sides(pair) -> None:
    loop, _, make = pair
    a, b = make()
    a.command_up("web-db")
    assert run_until(loop, lambda: a.child_sas and b.child_sas)
    a.command_down("web-db")
    assert run_until(loop, lambda: not a.ike_sas and not b.ike_sas)
    assert not a.dataplane.installed and not b.dataplane.installed
    assert b.dataplane.removed


def test_rekey_child_switches_spis(pair) -> None:
    loop, _, make = pair
    a, b = make()
    a.command_up("web-db")
    assert run_until(loop, lambda: a.child_sas and b.child_sas)
    old = set(a.child_sas)
    a.command_rekey("db")
    assert run_until(
        loop, lambda: a.child_sas and set(a.child_sas).isdisjoint(old) and len(b.child_sas) == 1
    )
    assert a.counters.child_rekeys + b.counters.child_rekeys >= 1
    # both sides switched their outbound traffic to the successor once it was confirmed
    assert set(a.dataplane.activated) & set(a.child_sas)
    assert set(b.dataplane.activated) & set(b.child_sas)


def test_unknown_names_are_config_errors(pair) -> None:
    _, _, make = pair
    a, _ = make()
    with pytest.raises(ConfigError):
        a.command_up("nope")
    with pytest.raises(ConfigError):
        a.command_down("web-db")  # nothing up


def test_reload_keeps_unchanged_connections(pair, tmp_path) -> None:
    loop, _, make = pair
    a, b = make()
    a.command_up("web-db")
    assert run_until(loop, lambda: a.child_sas and b.child_sas)
    spis = set(a.child_sas)
    result = a.reload(config_for(tmp_path, A, B, "shared secret key"))
    assert result["kept"] == ["web-db"]
    run_until(loop, lambda: False, timeout=0.2)
    assert set(a.child_sas) == spis
    result = a.reload(config_for(tmp_path, A, B, "shared secret key", mode="tunnel"))
    assert result["changed"] == ["web-db"]
    assert run_until(loop, lambda: not b.ike_sas)


def _two_children(tmp_path, me: str, peer: str) -> DaemonConfig:
    directory = tmp_path / f"two-{me}"
    directory.mkdir()
    secrets = directory / "secrets.yaml"
    secrets.write_text('psk:\n  web-db: "shared secret key"\n')
    os.chmod(secrets, 0o600)
    path = directory / "pyipsec.yaml"
    path.write_text(
        textwrap.dedent(f"""\
        secrets: secrets.yaml
        connections:
          web-db:
            local_addrs: [{me}]
            remote_addrs: [{peer}]
            local: {{auth: psk, id: {me}}}
            remote: {{auth: psk, id: {peer}}}
            dpd_delay: 0
            children:
              tcp: {{local_ts: ["{me}[tcp]"], remote_ts: ["{peer}[tcp]"]}}
              udp: {{local_ts: ["{me}[udp]"], remote_ts: ["{peer}[udp]"]}}
        """)
    )
    return load_config(str(path))


def test_acquire_brings_up_the_child_the_data_plane_names(tmp_path) -> None:
    loop = asyncio.new_event_loop()
    net = FakeNetwork(loop)
    daemons = []
    for me, peer in ((A, B), (B, A)):
        daemon = Daemon(
            _two_children(tmp_path, me, peer), net.port(me), FakeDataplane(),
            clock=loop.time, loop=loop,
        )  # fmt: skip
        net.hosts[me] = daemon.datagram
        daemons.append(daemon)
    a, b = daemons
    try:
        a.acquire(A, B, "web-db/udp")  # the second trap child, not the first
        assert run_until(loop, lambda: a.child_sas and b.child_sas)
        assert [c.name for c in a.child_sas.values()] == ["udp"]
        a.acquire(A, B, "web-db/nope")  # unknown child: the first trap child of the peer
        assert run_until(loop, lambda: len(a.child_sas) == 2)
        assert sorted(c.name for c in a.child_sas.values()) == ["tcp", "udp"]
        assert a.counters.acquires == 2
    finally:
        for daemon in daemons:
            daemon.close()
        loop.close()


def test_nat_keepalives_go_to_peers_whose_child_sas_run_in_udp(pair) -> None:
    loop, net, make = pair
    a, b = make()
    a.command_up("web-db")
    assert run_until(loop, lambda: a.child_sas and b.child_sas)
    a._keepalive()
    assert net.keepalives == []  # no NAT, no UDP encapsulation: nothing to keep alive
    for row in a.child_sas.values():
        row.encap = True
    a._keepalive()
    assert net.keepalives == [(A, (B, 4500))]
    assert a.statistics()["nat_keepalives_sent"] == 1


# ------------------------------------------------------------ connections toward any host

S, C, N = "10.1.0.10", "10.1.0.20", "10.1.0.30"


def _any_host(tmp_path, me: str, *, initiate: bool, fallback: float | None = None):
    """A connection for %any: a server's "All IP Traffic" rule (trap, selectors me <->
    any) or a client's default response rule (never initiates, dynamic selectors)."""
    directory = tmp_path / f"any-{me}"
    directory.mkdir()
    secrets = directory / "secrets.yaml"
    secrets.write_text('psk:\n  any: "shared secret key"\n')
    os.chmod(secrets, 0o600)
    if initiate:
        child = f'local_ts: ["{me}"], remote_ts: ["0.0.0.0/0"], start_action: trap'
        if fallback is not None:
            child += f", unsecured_fallback: {fallback}"
    else:
        child = "start_action: none"
    path = directory / "pyipsec.yaml"
    path.write_text(
        textwrap.dedent(f"""\
        secrets: secrets.yaml
        connections:
          any:
            local_addrs: [{me}]
            remote_addrs: ["%any"]
            local: {{auth: psk, id: {me}}}
            remote: {{auth: psk}}
            dpd_delay: 0
            retransmit_timeout: 0.2
            retransmit_tries: 2
            children:
              all: {{{child}}}
        """)
    )
    return load_config(str(path))


@pytest.fixture
def hosts(tmp_path):
    loop = asyncio.new_event_loop()
    net = FakeNetwork(loop)
    made: list[Daemon] = []

    def make(me: str, **kw) -> Daemon:
        daemon = Daemon(
            _any_host(tmp_path, me, **kw), net.port(me), FakeDataplane(),
            clock=loop.time, loop=loop,
        )  # fmt: skip
        net.hosts[me] = daemon.datagram
        daemon.start()
        made.append(daemon)
        return daemon

    yield loop, make
    for daemon in made:
        daemon.close()
    loop.close()


def test_opportunistic_negotiates_with_the_acquired_host(hosts) -> None:
    loop, make = hosts
    s = make(S, initiate=True)
    c = make(C, initiate=False)
    n = make(N, initiate=False)
    s.acquire(S, C, "any/all")
    s.acquire(S, C, "any/all")  # held packets of one host start one negotiation
    s.acquire(S, N, "any/all")  # another host: its own IKE SA
    assert run_until(loop, lambda: len(s.child_sas) == 2 and c.child_sas and n.child_sas)
    assert sorted(r.remote_addr for r in s.ike_sas.values()) == [C, N]
    for peer, row in ((C, c), (N, n)):
        (child,) = row.child_sas.values()
        assert child.local_ts == [peer] and child.remote_ts == [S]  # narrowed to hosts
    assert sorted(tuple(r.remote_ts) for r in s.child_sas.values()) == [(C,), (N,)]
    assert not s.dataplane.bypasses and s.statistics()["unsecured_fallbacks"] == 0
    s.acquire(S, C, "any/all")  # a later acquire for a protected host changes nothing
    run_until(loop, lambda: False, timeout=0.2)
    assert len(s.ike_sas) == 2 and len(s.child_sas) == 2


def test_unsecured_fallback_then_protection_once_the_host_answers(hosts) -> None:
    loop, make = hosts
    s = make(S, initiate=True, fallback=0.3)
    s.fallbacks.retry = 0.5  # the background retry comes quickly here
    s.acquire(S, N, "any/all")  # nobody at N answers IKE
    assert run_until(loop, lambda: s.dataplane.bypasses)
    assert s.dataplane.bypasses == {("any/all", N)}
    assert s.statistics()["unsecured_fallbacks"] == 1
    assert s.statistics()["active_fallbacks"] == 1
    (row,) = s.status()["fallbacks"]
    assert row["remote"] == N and row["connection"] == "any" and row["for"] >= 0
    assert not s.child_sas
    make(N, initiate=False)  # N installs IPsec: the background negotiation succeeds
    assert run_until(loop, lambda: s.child_sas and not s.dataplane.bypasses, timeout=8)
    assert s.status()["fallbacks"] == [] and s.statistics()["unsecured_fallbacks"] == 1


def test_no_fallback_when_the_host_answers_in_time(hosts) -> None:
    loop, make = hosts
    s = make(S, initiate=True, fallback=0.5)
    make(C, initiate=False)
    s.acquire(S, C, "any/all")
    assert run_until(loop, lambda: s.child_sas)
    run_until(loop, lambda: False, timeout=0.7)
    assert not s.dataplane.bypasses and s.statistics()["unsecured_fallbacks"] == 0


# ------------------------------------------------------- several authentication methods


def _pem_files(tmp_path, pki, me: str) -> dict[str, str]:
    """This host's certificate (+ intermediate, its address in the SAN) and key, and the
    root CA, as PEM files."""
    from cryptography.hazmat.primitives import serialization

    pem = serialization.Encoding.PEM
    ee = pki.issue("p256", ips=[me])
    directory = tmp_path / f"pem-{me}"
    directory.mkdir(exist_ok=True)
    cert, key, ca = directory / "host.crt", directory / "host.key", tmp_path / "ca.crt"
    cert.write_bytes(ee.cert.public_bytes(pem) + pki.intermediate.cert.public_bytes(pem))
    key.write_bytes(
        ee.key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    ca.write_bytes(pki.root.cert.public_bytes(pem))
    return {"cert": str(cert), "key": str(key), "ca": str(ca)}


def _multi_config(tmp_path, pki, me: str, peer: str, psk: str, methods: list[str]):
    """Connection web-db authenticating with ``methods`` in order ("certificate", "psk")."""
    files = _pem_files(tmp_path, pki, me)
    sides = {
        "psk": ("{auth: psk}", "{auth: psk}"),
        "certificate": (
            f"{{auth: pubkey, cert: {files['cert']}, key: {files['key']}}}",
            f"{{auth: pubkey, cacerts: [{files['ca']}]}}",
        ),
    }
    first = sides[methods[0]]
    lines = [
        f"local: {first[0][:-1]}, id: {me}}}",
        f"remote: {first[1][:-1]}, id: {peer}}}",
    ]
    if methods[1:]:
        lines.append("alternatives:")
        lines += [f"  - {{local: {sides[m][0]}, remote: {sides[m][1]}}}" for m in methods[1:]]
    directory = tmp_path / f"multi-{me}"
    directory.mkdir()
    secrets = directory / "secrets.yaml"
    secrets.write_text(f'psk:\n  web-db: "{psk}"\n')
    os.chmod(secrets, 0o600)
    auth = "\n".join("    " + line for line in lines)
    path = directory / "pyipsec.yaml"
    path.write_text(
        f"secrets: secrets.yaml\nconnections:\n  web-db:\n    local_addrs: [{me}]\n"
        f"    remote_addrs: [{peer}]\n{auth}\n    dpd_delay: 0\n"
        "    retransmit_timeout: 0.2\n    retransmit_tries: 2\n"
        "    children:\n      db: {start_action: trap}\n"
    )
    return load_config(str(path))


@pytest.fixture
def methods(tmp_path):
    """make(a_methods, b_methods, psk_b=...) -> daemons A and B (certificates valid: the
    clock runs at the test PKI's time)."""
    from pki import NOW, Pki

    loop = asyncio.new_event_loop()
    net = FakeNetwork(loop)
    pki = Pki()
    offset = NOW.timestamp() + 3600 - loop.time()
    made: list[Daemon] = []

    def make(a_methods, b_methods, psk_b: str = "shared secret key"):
        for me, peer, listed, psk in (
            (A, B, a_methods, "shared secret key"),
            (B, A, b_methods, psk_b),
        ):
            daemon = Daemon(
                _multi_config(tmp_path, pki, me, peer, psk, listed),
                net.port(me),
                FakeDataplane(),
                clock=lambda: loop.time() + offset,
                loop=loop,
            )
            net.hosts[me] = daemon.datagram
            daemon.start()
            made.append(daemon)
        return made[-2:]

    yield loop, make
    for daemon in made:
        daemon.close()
    loop.close()


def test_initiator_falls_back_to_its_next_method(methods) -> None:
    """A lists [certificate, psk], B only the PSK: A's first attempt fails (visible in
    A's failures and counters), the second, with the PSK, comes up."""
    loop, make = methods
    a, b = make(["certificate", "psk"], ["psk"])
    a.command_up("web-db")
    assert run_until(loop, lambda: a.child_sas and b.child_sas)
    (sa_a,), (sa_b,) = a.dataplane.installed.values(), b.dataplane.installed.values()
    assert sa_a.inbound_key == sa_b.outbound_key
    assert len(a.ike_sas) == 1 and len(b.ike_sas) == 1
    (row,) = a.status()["ike_sas"]
    assert row["name"] == "web-db" and row["auth"] == "psk"
    assert a.counters.authentication_failures == 1 and b.counters.authentication_failures == 1
    (failure,) = a.status()["recent_failures"]
    assert "next authentication method (psk)" in failure["reason"]
    run_until(loop, lambda: False, timeout=0.3)
    assert len(a.ike_sas) == 1  # no second initiation meanwhile


def test_initiator_gives_up_after_the_last_method(methods) -> None:
    loop, make = methods
    a, b = make(["certificate", "psk"], ["psk"], psk_b="another secret key")
    a.command_up("web-db")
    assert run_until(loop, lambda: a.counters.authentication_failures == 2)
    run_until(loop, lambda: False, timeout=0.5)
    assert a.counters.authentication_failures == 2 and not a.ike_sas and not b.ike_sas
    assert not a.dataplane.installed and not b.dataplane.installed
    first, last = a.status()["recent_failures"]
    assert "next authentication method" in first["reason"]
    assert "next authentication method" not in last["reason"]
    a.command_up("web-db")  # given up, not stuck: a new attempt starts from the first method
    assert run_until(loop, lambda: a.counters.authentication_failures == 4)


def test_responder_answers_a_psk_initiator_with_its_psk(methods) -> None:
    """B lists [certificate, psk]; A has only the PSK: up at once, PSK both ways."""
    loop, make = methods
    a, b = make(["psk"], ["certificate", "psk"])
    a.command_up("web-db")
    assert run_until(loop, lambda: a.child_sas and b.child_sas)
    assert a.counters.authentication_failures == 0 and b.counters.authentication_failures == 0
    assert b.status()["ike_sas"][0]["auth"] == "psk"
    assert a.status()["ike_sas"][0]["auth"] == "psk"


def test_certificates_both_ways_when_both_list_them_first(methods) -> None:
    loop, make = methods
    a, b = make(["certificate", "psk"], ["certificate", "psk"])
    a.command_up("web-db")
    assert run_until(loop, lambda: a.child_sas and b.child_sas)
    assert a.counters.authentication_failures == 0
    assert b.status()["ike_sas"][0]["auth"] == "pubkey"
    assert a.status()["ike_sas"][0]["remote_id"] == B


def test_auth_failure_with_a_retry_keeps_the_attempt_pending(pair) -> None:
    """The IKE layer retries with the next method under a new handle: the attempt stays
    pending (no second initiation) and a dynamic initiation's host follows the handle."""
    from pyipsec.daemon.core import Pending
    from pyipsec.ike.events import AuthenticationFailed

    loop, _, make = pair
    a, _ = make()
    key = ("web-db", "db", B)
    a._pending[key] = Pending("web-db", "db", loop.time(), B)
    a._attempts[7] = B
    a._auth_failed(AuthenticationFailed(7, "web-db", (B, 500), "rejected; trying psk", 9), 0.0)
    assert key in a._pending and a._attempts == {9: B}
    assert a.counters.authentication_failures == 1 and len(a.failures) == 1
    a._auth_failed(AuthenticationFailed(9, "web-db", (B, 500), "rejected"), 0.0)
    assert key not in a._pending and a.counters.authentication_failures == 2


# ------------------------------------------------- both sides initiating at once


def _one_pair_each(a: Daemon, b: Daemon) -> bool:
    return (
        len(a.ike_sas) == 1
        and len(b.ike_sas) == 1
        and len(a.child_sas) == 1
        and len(b.child_sas) == 1
        and len(a.dataplane.installed) == 1
        and len(b.dataplane.installed) == 1
    )


def test_simultaneous_start_leaves_one_ike_sa_and_one_child_pair(pair) -> None:
    """Both daemons start the connection in the same instant: each side first holds two
    IKE SAs (one initiated, one answered); after the grace the duplicate goes, deleted by
    its initiator alone, and both sides keep the same IKE SA (the lower SPI pair) and the
    same Child SA pair."""
    loop, _, make = pair
    a, b = make(start="start")
    assert run_until(loop, lambda: len(a.child_sas) == 2 and len(b.child_sas) == 2)
    assert len(a.ike_sas) == 2 and len(b.ike_sas) == 2  # the duplicate exists
    pairs = sorted((r.spi_i, r.spi_r) for r in a.ike_sas.values())
    assert pairs == sorted((r.spi_i, r.spi_r) for r in b.ike_sas.values())
    run_until(loop, lambda: False, timeout=a.duplicates.grace * 0.5)
    assert len(a.ike_sas) == 2 and len(b.ike_sas) == 2  # nothing goes within the grace
    assert run_until(loop, lambda: _one_pair_each(a, b), timeout=5)
    (row_a,), (row_b,) = a.ike_sas.values(), b.ike_sas.values()
    assert (row_a.spi_i, row_a.spi_r) == (row_b.spi_i, row_b.spi_r) == min(pairs)
    assert row_a.initiator != row_b.initiator
    (sa_a,), (sa_b,) = a.dataplane.installed.values(), b.dataplane.installed.values()
    assert sa_a.inbound_spi == sa_b.outbound_spi and sa_a.outbound_spi == sa_b.inbound_spi
    assert sa_a.inbound_key == sa_b.outbound_key and sa_a.ike_sa == row_a.handle
    # exactly one side deleted, and it was the initiator of the duplicate
    deleted = {d: d.counters.duplicate_ike_sas_deleted for d in (a, b)}
    assert sorted(deleted.values()) == [0, 1]
    deleter = a if deleted[a] else b
    assert (deleter.ike_sas[next(iter(deleter.ike_sas))].initiator) is False
    assert deleter.statistics()["duplicate_ike_sas_deleted"] == 1
    # the duplicate's Child SA pair left both data planes; nothing else did
    assert len(a.dataplane.removed) == 1 and len(b.dataplane.removed) == 1
    assert a.dataplane.removed[0].inbound_spi == b.dataplane.removed[0].outbound_spi
    run_until(loop, lambda: False, timeout=1.0)  # nobody restarts the connection again
    assert _one_pair_each(a, b) and a.counters.ike_sa_additions == 2


def test_duplicate_kept_by_the_peer_is_deleted_by_the_side_that_answered_it(pair) -> None:
    """A peer that does not apply the rule (strongSwan) keeps its duplicate: the side that
    answered it deletes it after the longer responder grace; the keeper stays."""
    loop, _, make = pair
    a, b = make(start="start")
    for d in (a, b):
        d.duplicates.responder_grace = 3.0
    b.duplicates.resolve = lambda *args: ([], None)  # B never acts
    assert run_until(loop, lambda: len(a.child_sas) == 2 and len(b.child_sas) == 2)
    keep = min((r.spi_i, r.spi_r) for r in a.ike_sas.values())
    assert run_until(loop, lambda: _one_pair_each(a, b), timeout=6)
    (row,) = a.ike_sas.values()
    assert (row.spi_i, row.spi_r) == keep
    assert a.counters.duplicate_ike_sas_deleted == 1 and b.counters.duplicate_ike_sas_deleted == 0


def test_children_the_keeper_lacks_are_moved_before_the_duplicate_goes(tmp_path) -> None:
    """A traps child tcp while B traps child udp, at once: two IKE SAs with a different
    child each. The deleting side first negotiates the missing child inside the IKE SA
    that stays; at the end one IKE SA carries both children on both sides."""
    loop = asyncio.new_event_loop()
    net = FakeNetwork(loop)
    daemons = []
    for me, peer in ((A, B), (B, A)):
        daemon = Daemon(
            _two_children(tmp_path, me, peer), net.port(me), FakeDataplane(),
            clock=loop.time, loop=loop,
        )  # fmt: skip
        net.hosts[me] = daemon.datagram
        daemons.append(daemon)
    a, b = daemons
    try:
        a.acquire(A, B, "web-db/tcp")
        b.acquire(B, A, "web-db/udp")
        assert run_until(loop, lambda: len(a.ike_sas) == 2 and len(b.ike_sas) == 2)

        def done() -> bool:
            return all(
                len(d.ike_sas) == 1
                and sorted(c.name for c in d.child_sas.values()) == ["tcp", "udp"]
                and {c.ike_sa for c in d.child_sas.values()} == set(d.ike_sas)
                for d in (a, b)
            )

        assert run_until(loop, done, timeout=8)
        in_a = {c.name: (c.spi_in, c.spi_out) for c in a.child_sas.values()}
        in_b = {c.name: (c.spi_out, c.spi_in) for c in b.child_sas.values()}
        assert in_a == in_b
        assert a.counters.duplicate_ike_sas_deleted + b.counters.duplicate_ike_sas_deleted == 1
    finally:
        for daemon in daemons:
            daemon.close()
        loop.close()


def test_hosts_of_an_any_connection_resolve_per_remote_host(hosts) -> None:
    """Two "Secure Server" hosts trap each other's first packets at once (one IKE SA per
    host pair after the grace); S's IKE SA with a third host is no duplicate of them."""
    loop, make = hosts
    s = make(S, initiate=True)
    c = make(C, initiate=True)
    n = make(N, initiate=False)
    s.acquire(S, C, "any/all")
    c.acquire(C, S, "any/all")
    s.acquire(S, N, "any/all")
    assert run_until(loop, lambda: len(s.ike_sas) == 3 and len(c.ike_sas) == 2)
    assert run_until(loop, lambda: len(s.ike_sas) == 2 and len(c.ike_sas) == 1, timeout=5)
    assert sorted(r.remote_addr for r in s.ike_sas.values()) == [C, N]
    assert len(n.ike_sas) == 1 and len(n.child_sas) == 1
    (to_c,) = [r for r in s.ike_sas.values() if r.remote_addr == C]
    (row_c,) = c.ike_sas.values()
    assert (to_c.spi_i, to_c.spi_r) == (row_c.spi_i, row_c.spi_r)
    (child_c,) = c.child_sas.values()
    (child_s,) = [x for x in s.child_sas.values() if x.ike_sa == to_c.handle]
    assert child_s.spi_in == child_c.spi_out and child_s.spi_out == child_c.spi_in
    assert s.counters.duplicate_ike_sas_deleted + c.counters.duplicate_ike_sas_deleted == 1
