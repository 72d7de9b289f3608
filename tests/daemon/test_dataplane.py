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


def _child_event(inbound: int, outbound: int, rekeyed_from: int | None = None):
    import ipaddress

    from pyipsec.ike.events import ChildSaInstalled
    from pyipsec.ike.ts import TsRange

    a, b = ipaddress.ip_address("10.1.0.1"), ipaddress.ip_address("10.1.0.2")
    return ChildSaInstalled(
        ike_sa=1, child="db", protocol="esp", mode="transport", inbound_spi=inbound,
        outbound_spi=outbound, algorithm="aes128gcm16", inbound_key=bytes(20),
        outbound_key=bytes(range(20)), esn=False, local_ts=(TsRange(a, a),),
        remote_ts=(TsRange(b, b),), rekey_time=60, life_time=66, rekey_bytes=0,
        rekey_packets=0, encap_udp=False, local_addr="10.1.0.1", remote_addr="10.1.0.2",
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
