"""The daemon's data-plane adapter: the SPD it hands to the data plane, acquire events."""

from __future__ import annotations

import os
import textwrap

from pyipsec.daemon.config import load_config
from pyipsec.daemon.dataplane import LinuxDataplane, compile_policies
from pyipsec.ipsec.spd import Action

CONFIG = """\
secrets: secrets.yaml
connections:
  web-db:
    local_addrs: [10.1.0.1]
    remote_addrs: [10.1.0.2]
    local: {auth: psk, id: 10.1.0.1}
    remote: {auth: psk, id: 10.1.0.2}
    children:
      db: {start_action: trap}
  other:
    local_addrs: [10.1.0.1]
    remote_addrs: [10.1.0.3]
    local: {auth: psk, id: 10.1.0.1}
    remote: {auth: psk, id: 10.1.0.3}
    children:
      x: {start_action: trap}
"""


def _config(tmp_path, extra: str = ""):
    secrets = tmp_path / "secrets.yaml"
    secrets.write_text('psk:\n  web-db: "a very secret key"\n  other: "another secret key"\n')
    os.chmod(secrets, 0o600)
    path = tmp_path / "pyipsec.yaml"
    path.write_text(CONFIG + textwrap.dedent(extra))
    return load_config(str(path))


def test_children_without_entries_get_derived_protect_entries(tmp_path) -> None:
    policies = compile_policies(_config(tmp_path))
    assert [(p.name, p.entry.action, p.entry.priority) for p in policies] == [
        ("web-db/db#0", Action.PROTECT, 100),
        ("other/x#0", Action.PROTECT, 100),
    ]
    assert policies[0].entry.template.child == "web-db/db"


def test_explicit_entries_come_first_and_replace_derived_ones(tmp_path) -> None:
    config = _config(
        tmp_path,
        """\
        spd:
          - {name: block-smtp, local: 10.1.0.1, remote: 10.1.0.2, protocol: tcp,
             remote_ports: 25, action: discard, priority: 0}
          - {name: dns, local: 10.1.0.1, remote: any, protocol: udp, remote_ports: 53,
             action: bypass, priority: 1, direction: out}
          - {name: db, local: 10.1.0.1, remote: 10.1.0.2, action: protect,
             child: web-db/db, priority: 2}
        """,
    )
    policies = compile_policies(config)
    assert [p.name for p in policies] == ["block-smtp", "dns", "db", "other/x#0"]
    assert [p.entry.action for p in policies[:3]] == [Action.DISCARD, Action.BYPASS, Action.PROTECT]
    assert policies[1].entry.direction == "out"
    # the data plane's nftables rules follow the SPD order: DISCARD before PROTECT
    from pyipsec.dataplane.kernel import compile_ruleset
    from pyipsec.dataplane.service import ordered_entries
    from pyipsec.platform.linux.routing import RoutingConfig

    rules = compile_ruleset(ordered_entries(policies), RoutingConfig())
    comments = [r["add"]["rule"].get("comment") for r in rules if "rule" in r["add"]]
    out = [c for c in comments if c and c.endswith("/out")]
    assert out == ["block-smtp/out", "db/out", "other/x#0/out"]


def test_acquire_events_carry_the_child() -> None:
    calls = []

    class Hooks:
        @staticmethod
        def acquire(src, dst, child=None):
            calls.append((src, dst, child))

    plane = LinuxDataplane.__new__(LinuxDataplane)
    plane.hooks = Hooks
    plane._dispatch(("acquire", "web-db/db", "db", "10.1.0.1", "10.1.0.2"))
    assert calls == [("10.1.0.1", "10.1.0.2", "web-db/db")]


class _FakeService:
    """Records what the adapter asks the workers to do."""

    def __init__(self) -> None:
        from pyipsec.dataplane.service import DataplaneState

        self.calls: list[tuple[str, str, int]] = []
        self.state = DataplaneState()
        self.procs: dict[str, object] = {}

    def _worker_call(self, worker: str, msg: tuple) -> dict:
        if msg[0] == "add_sa":
            self.calls.append((worker, "add", msg[1].spi))
        else:
            self.calls.append((worker, "del", msg[2]))
        return {"ok": True}

    def _apply_policies(self, policies) -> None:
        self.state.policies = list(policies)


def _child_event(inbound: int, outbound: int, rekeyed_from: int | None = None,
                 child: str = "db", remote: str = "10.1.0.2"):  # fmt: skip
    import ipaddress

    from pyipsec.ike.events import ChildSaInstalled
    from pyipsec.ike.ts import TsRange

    a, b = ipaddress.ip_address("10.1.0.1"), ipaddress.ip_address(remote)
    return ChildSaInstalled(
        ike_sa=1, child=child, protocol="esp", mode="transport", inbound_spi=inbound,
        outbound_spi=outbound, algorithm="aes128gcm16", inbound_key=bytes(20),
        outbound_key=bytes(range(20)), esn=False, local_ts=(TsRange(a, a),),
        remote_ts=(TsRange(b, b),), rekey_time=60, life_time=66, rekey_bytes=0,
        rekey_packets=0, encap_udp=False, local_addr="10.1.0.1", remote_addr=remote,
        rekeyed_from=rekeyed_from,
    )  # fmt: skip


def _plane(tmp_path) -> tuple[LinuxDataplane, _FakeService]:
    plane = LinuxDataplane.__new__(LinuxDataplane)
    plane.config = _config(tmp_path)
    service = _FakeService()
    service.state.policies = compile_policies(plane.config)
    plane.service = service
    plane._children = {}
    plane._waiting = {}
    plane._dynamic = {}
    plane._compiled = None
    return plane, service


def test_rekey_successor_sends_only_after_activation(tmp_path) -> None:
    from pyipsec.ike.events import ChildSaDeleted

    plane, service = _plane(tmp_path)
    plane.install(_child_event(0x1001, 0x2001))
    assert service.calls == [("inbound", "add", 0x1001), ("outbound", "add", 0x2001)]
    service.calls.clear()
    plane.install(_child_event(0x1002, 0x2002, rekeyed_from=0x2001))
    assert service.calls == [("inbound", "add", 0x1002)]  # outbound stays on the old SA
    plane.activate(0x1002)
    assert service.calls[-1] == ("outbound", "add", 0x2002)
    service.calls.clear()
    plane.remove(ChildSaDeleted(1, "db", "esp", 0x1001, 0x2001, "rekeyed"))
    assert ("outbound", "add", 0x2002) not in service.calls  # activated once only


def test_removing_the_old_sa_activates_a_waiting_successor(tmp_path) -> None:
    from pyipsec.ike.events import ChildSaDeleted

    plane, service = _plane(tmp_path)
    plane.install(_child_event(0x1001, 0x2001))
    plane.install(_child_event(0x1002, 0x2002, rekeyed_from=0x2001))
    service.calls.clear()
    plane.remove(ChildSaDeleted(1, "db", "esp", 0x1001, 0x2001, "rekeyed"))
    assert service.calls[0] == ("outbound", "add", 0x2002)  # before the old one goes
    assert ("outbound", "del", 0x2001) in service.calls


ANY_HOST = """\
  any:
    local_addrs: [10.1.0.1]
    remote_addrs: ["%any"]
    local: {auth: psk, id: 10.1.0.1}
    remote: {auth: psk}
    children:
      all: {local_ts: [10.1.0.1], remote_ts: [0.0.0.0/0], unsecured_fallback: 3s}
spd:
  - {name: icmp, local: 10.1.0.1, remote: any, protocol: icmp, action: bypass, priority: 0}
  - {name: ip-out, local: 10.1.0.1, remote: any, action: protect, child: any/all,
     priority: 1, direction: out}
  - {name: ip-in, local: 10.1.0.1, remote: any, action: bypass, priority: 1, direction: in}
"""


def test_hosts_of_an_any_connection_get_their_own_child_and_entries(tmp_path) -> None:
    from pyipsec.dataplane.service import ordered_entries
    from pyipsec.ike.events import ChildSaDeleted

    plane, service = _plane(tmp_path)
    secrets = tmp_path / "secrets.yaml"
    secrets.write_text(secrets.read_text() + '  any: "yet another secret"\n')
    path = tmp_path / "pyipsec.yaml"
    path.write_text(CONFIG + ANY_HOST)
    plane.set_policies(load_config(str(path)))

    def names() -> list[str]:
        return [e.name for e in ordered_entries(service.state.policies)]

    assert names()[:3] == ["icmp", "ip-out", "ip-in"]
    plane.install(_child_event(0x1001, 0x2001, child="all", remote="10.1.0.9"))
    plane.install(_child_event(0x1002, 0x2002, child="all", remote="10.1.0.8"))
    assert plane._children[0x1001] == "any/all@10.1.0.9"
    assert names()[:5] == ["icmp", "any/all@10.1.0.9#n0", "any/all@10.1.0.8#n0", "ip-out", "ip-in"]
    host = next(p.entry for p in service.state.policies if p.name == "any/all@10.1.0.9#n0")
    assert host.template.child == "any/all@10.1.0.9" and host.direction == "out"
    assert str(host.selector.remote) == "10.1.0.9/32" and host.priority == 1
    # a host without IPsec: BYPASS cut from the connection's entry, both ways
    plane.add_bypass("any/all", "10.1.0.7")
    clear = next(p.entry for p in service.state.policies if p.name.endswith("-clear"))
    assert clear.name == "ip-out@10.1.0.7-clear" and clear.direction == "both"
    assert clear.action is Action.BYPASS and str(clear.selector.remote) == "10.1.0.7/32"
    assert names().index(clear.name) < names().index("ip-out")
    # a reload keeps per-host entries of connections that still exist
    plane.set_policies(plane.config)
    assert "any/all@10.1.0.9#n0" in names() and clear.name in names()
    # the host's last SA goes: its entries go; the other host's stay
    plane.remove(ChildSaDeleted(1, "all", "esp", 0x1001, 0x2001, "deleted"))
    assert "any/all@10.1.0.9#n0" not in names() and "any/all@10.1.0.8#n0" in names()
    plane.remove_bypass("any/all", "10.1.0.7")
    assert clear.name not in names()
    # the connection is removed by a reload: the remaining host entries go with it
    plane.set_policies(_config(tmp_path))
    assert names() == ["web-db/db#0", "other/x#0"]


def test_default_response_children_get_entries_last(tmp_path) -> None:
    from pyipsec.dataplane.service import ordered_entries

    plane, service = _plane(tmp_path)
    secrets = tmp_path / "secrets.yaml"
    secrets.write_text(secrets.read_text() + '  default-response: "yet another secret"\n')
    path = tmp_path / "pyipsec.yaml"
    path.write_text(
        CONFIG
        + """\
  default-response:
    remote_addrs: ["%any"]
    local: {auth: psk}
    remote: {auth: psk}
    children:
      default-response: {start_action: none}
"""
    )
    plane.set_policies(load_config(str(path)))
    plane.install(_child_event(0x1001, 0x2001, child="default-response", remote="10.1.0.9"))
    entries = ordered_entries(service.state.policies)
    assert [e.name for e in entries][-1] == "default-response/default-response@10.1.0.9#n0"
    assert entries[-1].direction == "both" and entries[-1].priority >= 100


def test_kernel_drop_counters_by_entry_action(tmp_path) -> None:
    plane, service = _plane(tmp_path)
    config = _config(
        tmp_path,
        """\
        spd:
          - {name: block-smtp, local: 10.1.0.1, remote: any, protocol: tcp,
             remote_ports: 25, action: discard, priority: 0}
        """,
    )
    plane.set_policies(config)
    counters = {
        "block-smtp/out": [3, 180], "block-smtp/fwd-in": [1, 60],
        "web-db/db#0/out": [500, 70000],  # marked for IPsec: not a drop
        "web-db/db#0/in": [7, 420], "web-db/db#0/fwd-in": [2, 120],
        "fail-closed": [4, 240], "unknown/in": [9, 9],
    }  # fmt: skip
    assert plane._kernel_drops(counters) == {
        "unprotected_packets_dropped": 9, "discarded_packets": 4, "fail_closed_drops": 4,
    }  # fmt: skip


def test_data_plane_control_under_the_daemon_is_read_only(tmp_path) -> None:
    import json
    import socket

    from pyipsec.dataplane.service import Service
    from pyipsec.dataplane.static import StaticConfig

    service = Service(StaticConfig(sas=(), policies=()), control_path=str(tmp_path / "c"))
    service.state.policies = compile_policies(_config(tmp_path))
    from pyipsec.daemon.dataplane import _MANAGED, READ_ONLY_COMMANDS

    def ask(command: str, **args) -> dict:
        ours, theirs = socket.socketpair()
        with ours:
            ours.sendall(json.dumps({"id": 1, "command": command, "args": args}).encode() + b"\n")
            service._handle(theirs, allowed=READ_ONLY_COMMANDS, why=_MANAGED)
            theirs.close()
            return json.loads(ours.makefile().readline())

    refused = ask("policy-del", name="web-db/db#0")
    assert not refused["ok"] and "managed by the pyipsec daemon" in refused["error"]["message"]
    assert [p.name for p in service.state.policies] == ["web-db/db#0", "other/x#0"]
    assert not ask("sa-add", sa={})["ok"] and not ask("shutdown")["ok"]
    assert service.stopping is False
    status = ask("status")
    assert status["ok"] and status["result"]["policies"] == 2


def test_nat_mapping_events_redirect_the_outbound_sas_the_ike_layer_names(tmp_path) -> None:
    plane, service = _plane(tmp_path)
    asked = []

    class Hooks:
        @staticmethod
        def nat_mapping(inbound_spi, addr):
            asked.append((inbound_spi, addr))
            return [0x2001, 0x2002]

    plane.hooks = Hooks
    plane.install(_child_event(0x1001, 0x2001))
    plane.install(_child_event(0x1002, 0x2002, rekeyed_from=0x2001))  # waiting successor
    service.calls.clear()
    sent = []
    service._worker_call = lambda worker, msg: sent.append((worker, msg))
    plane._dispatch(("nat_mapping", "esp", 0x1001, "web-db/db", "192.0.2.9", 31001))
    assert asked == [(0x1001, ("192.0.2.9", 31001))]
    assert sent == [
        ("outbound", ("set_peer", "esp", 0x2001, "192.0.2.9", 31001)),
        ("outbound", ("set_peer", "esp", 0x2002, "192.0.2.9", 31001)),
    ]
    (_, moved) = plane._waiting[0x1002]  # the successor starts sending to the new place
    assert (moved.dst, moved.encap_dport) == ("192.0.2.9", 31001)


def test_nat_mapping_refused_by_the_ike_layer_changes_nothing(tmp_path) -> None:
    plane, service = _plane(tmp_path)
    plane.hooks = type("Hooks", (), {"nat_mapping": staticmethod(lambda spi, addr: [])})
    plane.install(_child_event(0x1001, 0x2001))
    service.calls.clear()
    plane._dispatch(("nat_mapping", "esp", 0x1001, "web-db/db", "192.0.2.9", 31001))
    assert service.calls == []
