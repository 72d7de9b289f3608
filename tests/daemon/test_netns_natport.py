"""Two daemons through a NAT that remaps UDP ports (RFC 7296 2.23, RFC 3948 2.1).

Topology (``Topology(tag="n")``: pyi-an, pyi-bn, pyi-cn)::

    A (pyi-an)                 R (pyi-bn, router + NAT)                  B (pyi-cn)
    10.99.1.1  ---- eth0 ----  10.99.1.2 | 10.99.2.2  ---- eth1 ----  10.99.2.3
    inner 10.98.1.1 on lo      SNAT of A's UDP to 10.99.2.2:30000-30100   inner 10.98.2.1

A's daemon initiates a tunnel-mode Child SA (10.98.1.1 <-> 10.98.2.1); R rewrites the
source of A's UDP to its outside address and a port of its range, so A's 500 and 4500
both arrive at B from ports that are not 4500. B has no route to A's network: every
packet B sends to A goes to R's mapped port, or nowhere. B must therefore answer IKE
and send ESP-in-UDP to the port each request came from, which the data plane's UDP
receive path now reports.
"""

from __future__ import annotations

import os
import signal
import struct
import sys
import tempfile
import time
from typing import Any

import pytest
import yaml

from netns import Capture, Host, Topology, ip_of_frame, start_transfer
from netns_daemons import MARKER, DaemonRun

pytestmark = [pytest.mark.netns]

INNER_A, INNER_B = "10.98.1.1", "10.98.2.1"
NAT_PORTS = (30000, 30100)
SIZE = 8 * 1024 * 1024


@pytest.fixture
def nat():
    with Topology(tag="n") as topo:
        a, r, b = topo.a, topo.b, topo.c
        r.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
        b.run("ip", "route", "del", "10.99.1.0/24")  # B can reach A only through the NAT
        a.run("ip", "addr", "add", f"{INNER_A}/32", "dev", "lo")
        a.run("ip", "route", "add", f"{INNER_B}/32", "via", r.addr4)
        b.run("ip", "addr", "add", f"{INNER_B}/32", "dev", "lo")
        b.run("ip", "route", "add", f"{INNER_A}/32", "via", topo.b_c4)
        _set_nat(r, topo.b_c4, *NAT_PORTS)
        yield topo


def _set_nat(router: Host, outside: str, low: int, high: int) -> None:
    """(Re)write R's NAT table: A's UDP leaves from ``outside``:``low``-``high``; anything
    else from A's network that would cross is dropped (only IKE and ESP-in-UDP may)."""
    # one transaction (nft -f is atomic): no packet ever crosses without the NAT
    rules = f"""
table ip pyi_nat
delete table ip pyi_nat
table ip pyi_nat {{
    chain out_nat {{
        type nat hook postrouting priority srcnat; policy accept;
        oifname "eth1" ip saddr 10.99.1.0/24 ip protocol udp snat to {outside}:{low}-{high}
    }}
    chain cross {{
        type filter hook forward priority filter; policy accept;
        iifname "eth0" oifname "eth1" ip protocol != udp drop
    }}
}}
"""
    router.run("nft", "-f", "-", input=rules.encode())


def _flush_conntrack(router: Host) -> None:
    """Forget every NAT mapping on R (``conntrack -F``, through pyroute2's netlink)."""
    code = "from pyroute2 import Conntrack\nc = Conntrack()\nc.flush()\nc.close()\n"
    router.run(sys.executable, "-c", code)


def _write(
    topo: Topology,
    side: str,
    root: str,
    extra: dict[str, Any],
    child: dict[str, Any],
    *,
    psk: str = "a shared secret across the NAT",
    peer_id: str = "",
) -> DaemonRun:
    me = {"a": topo.a.addr4, "b": topo.c.addr4}[side]
    remote = [topo.c.addr4] if side == "a" else ["%any"]
    local_ts, remote_ts = (INNER_A, INNER_B) if side == "a" else (INNER_B, INNER_A)
    directory = os.path.join(root, side)
    os.makedirs(directory)
    secrets = os.path.join(directory, "secrets.yaml")
    fd = os.open(secrets, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(f'psk:\n  nat: "{psk}"\n')
    sock = os.path.join(directory, "control.sock")
    ids = {"a": peer_id or "a@nat.test", "b": "b@nat.test"}
    document = {
        "secrets": "secrets.yaml",
        "control_socket": sock,
        "log_level": "debug",
        "connections": {
            "nat": {
                "local_addrs": [me],
                "remote_addrs": remote,
                "local": {"auth": "psk", "id": ids[side]},
                "remote": {"auth": "psk", "id": ids["b" if side == "a" else "a"]},
                "retransmit_timeout": "1s",
                "retransmit_tries": 3,
                **extra,
                "children": {
                    "inner": {
                        "mode": "tunnel",
                        "local_ts": [f"{local_ts}/32"],
                        "remote_ts": [f"{remote_ts}/32"],
                        "start_action": "trap",
                        **child,
                    }
                },
            }
        },
    }
    config = os.path.join(directory, "pyipsec.yaml")
    with open(config, "w") as handle:
        yaml.safe_dump(document, handle, sort_keys=False)
    host = topo.a if side == "a" else topo.c
    return DaemonRun(host, directory, config, sock, os.path.join(directory, "log"))


def _daemons(topo: Topology, child_a: dict[str, Any] | None = None) -> tuple[DaemonRun, DaemonRun]:
    root = tempfile.mkdtemp(prefix="pyi-natport-")
    a = _write(topo, "a", root, {}, child_a or {})
    b = _write(topo, "b", root, {}, {})
    b.start()
    a.start()
    return a, b


def _udp_flows(frames: list[bytes], peer: str, me: str) -> tuple[set[tuple], bool, set[int]]:
    """((src, sport, dst, dport) of UDP between ``peer`` and ``me``, plaintext marker seen,
    IP protocols of every packet between them)."""
    flows: set[tuple] = set()
    protos: set[int] = set()
    marker = False
    for frame in frames:
        parsed = ip_of_frame(frame)
        if parsed is None:
            continue
        _v, src, dst, proto, dport, packet = parsed
        if {src, dst} != {peer, me}:
            continue
        protos.add(proto)
        if MARKER.encode() in frame:
            marker = True
        if proto == 17:
            ihl = (packet[0] & 15) * 4
            sport = int.from_bytes(packet[ihl : ihl + 2], "big")
            flows.add((src, sport, dst, dport))
    return flows, marker, protos


def _stop_timed(cap: Capture) -> list[tuple[float, bytes]]:
    """Stop a capture; its frames with their capture times (``Capture.stop_raw`` drops
    the times, which only serve here to print how long B took to follow the NAT)."""
    time.sleep(0.3)
    cap.host.stop(cap.proc, signal.SIGINT)
    try:
        with open(cap.path, "rb") as handle:
            data = handle.read()
    finally:
        os.unlink(cap.path)
    endian = "<" if data[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    scale = 1e-9 if data[:4] in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d") else 1e-6
    rec = struct.Struct(endian + "IIII")
    out = []
    off = 24
    while off + 16 <= len(data):
        sec, frac, caplen, _len = rec.unpack_from(data, off)
        off += 16
        out.append((sec + frac * scale, data[off : off + caplen]))
        off += caplen
    return out


def _first(timed: list[tuple[float, bytes]], src: str, sport: int | None, dst: str,
           dport: int | None) -> float | None:  # fmt: skip
    """Time of the first UDP packet src:sport -> dst:dport (None: any port)."""
    for when, frame in timed:
        parsed = ip_of_frame(frame)
        if parsed is None or parsed[3] != 17 or parsed[1] != src or parsed[2] != dst:
            continue
        packet = parsed[5]
        ihl = (packet[0] & 15) * 4
        sp = int.from_bytes(packet[ihl : ihl + 2], "big")
        if (sport is None or sp == sport) and (dport is None or parsed[4] == dport):
            return when
    return None


def _nat_port(flows: set[tuple], outside: str, me: str, dport: int) -> set[int]:
    return {f[1] for f in flows if f[0] == outside and f[2] == me and f[3] == dport}


def _transfer(topo: Topology, size: int) -> None:
    transfer = start_transfer(topo.c, topo.a, INNER_B, size, marker=MARKER, source=INNER_A)
    sent, received = transfer.wait(timeout=180)
    assert sent == received, "the transfer arrived damaged"
    assert sent[0] == size


def _wait_ping(topo: Topology, a: DaemonRun, b: DaemonRun, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        res = topo.a.run("ping", "-n", "-q", "-c", "1", "-W", "1", "-I", INNER_A, INNER_B,
                         check=False, timeout=10)  # fmt: skip
        if res.returncode == 0:
            return
    raise AssertionError(f"no ping through the tunnel:\nA:\n{a.read_log()}\nB:\n{b.read_log()}")


def test_ike_and_esp_follow_the_nat_mapped_port(nat) -> None:
    topo = nat
    outside, me = topo.b_c4, topo.c.addr4
    cap = topo.capture(topo.c, "eth0", snaplen=200)
    a, b = _daemons(topo)
    _wait_ping(topo, a, b)
    (child_b,) = b.wait_child()
    (child_a,) = a.wait_child()
    assert child_b["spi_in"] == child_a["spi_out"]
    assert child_b["encap"] is True and child_a["encap"] is True
    _transfer(topo, SIZE)
    frames = cap.stop_raw()
    flows, marker, protos = _udp_flows(frames, outside, me)
    assert marker is False, "plaintext marker seen on the wire"
    assert protos == {17}, f"only UDP may cross the NAT, saw {protos}"
    # A's 500 and 4500 both arrive from R's range, never from 4500
    ike_ports = _nat_port(flows, outside, me, 500)
    natt_ports = _nat_port(flows, outside, me, 4500)
    assert len(natt_ports) == 1, flows
    (natt,) = natt_ports
    assert all(NAT_PORTS[0] <= p <= NAT_PORTS[1] for p in ike_ports | natt_ports), flows
    # B answers exactly there: every datagram B sends goes to the mapped ports
    from_b = {(f[1], f[3]) for f in flows if f[0] == me}
    assert from_b <= {(500, p) for p in ike_ports} | {(4500, natt)}, flows
    assert (4500, natt) in from_b
    print(f"NAT mapped A's 500 to {sorted(ike_ports)}, A's 4500 to {natt}; B sent {from_b}")
    # B's status: the Child SA is ESP in UDP; the IKE SA's peer is R's outside address
    status = b.status()
    (child,) = status["child_sas"]
    assert child["encap"] is True and child["mode"] == "tunnel"
    assert child["bytes_in"] >= SIZE
    assert status["ike_sas"][0]["remote_addr"] == outside


def test_nat_mapping_change_mid_session_recovers(nat) -> None:
    """R's mapping of A changes during a transfer (new port range, conntrack flushed):
    B must follow A to the new port (RFC 7296 2.23); the transfer completes intact.

    A rekeys its Child SA every 6 s, so an authenticated IKE request from the new port
    reaches B within that time (B's IKE SA moves there, the new Child SA's ESP-in-UDP goes
    there). Verified ESP from the new port is also reported by B's data plane
    (``nat_mapping`` event), which lets the daemon follow sooner."""
    topo = nat
    outside, me = topo.b_c4, topo.c.addr4
    a, b = _daemons(topo, child_a={"rekey_time": "6s", "life_time": "30s"})
    _wait_ping(topo, a, b)
    b.wait_child()
    cap = topo.capture(topo.c, "eth0", snaplen=200)
    transfer = start_transfer(topo.c, topo.a, INNER_B, SIZE, marker=MARKER, source=INNER_A,
                              rate=1_000_000, timeout=120)  # fmt: skip
    time.sleep(2.0)
    _set_nat(topo.b, outside, 31000, 31100)
    _flush_conntrack(topo.b)
    sent, received = transfer.wait(timeout=180)
    timed = _stop_timed(cap)
    frames = [frame for _, frame in timed]
    assert sent == received, "the transfer arrived damaged"
    assert sent[0] == SIZE
    flows, marker, protos = _udp_flows(frames, outside, me)
    # R answers B's datagrams to the forgotten mapping with ICMP port unreachable
    assert marker is False and protos <= {17, 1} and 17 in protos, protos
    old = _nat_port(flows, outside, me, 4500) & set(range(30000, 30101))
    new = _nat_port(flows, outside, me, 4500) & set(range(31000, 31101))
    assert len(old) == 1 and len(new) == 1, flows
    # B followed: it sent ESP-in-UDP / IKE to the new mapping
    from_b = {f[3] for f in flows if f[0] == me and f[1] == 4500}
    assert new <= from_b, flows
    (new_port,) = new
    moved_at = _first(timed, outside, new_port, me, 4500)
    followed_at = _first(timed, me, 4500, outside, new_port)
    assert moved_at is not None and followed_at is not None and followed_at >= moved_at
    print(
        f"mapping moved {old} -> {new}; B sent to {sorted(from_b)}; B followed "
        f"{followed_at - moved_at:.2f} s after A's first packet from the new mapping"
    )
    status = b.status()
    assert status["ike_sas"][0]["remote_addr"] == outside
    assert all(c["encap"] for c in status["child_sas"])
    # B's data plane saw authenticated ESP from the new mapping (reported to the daemon)
    assert b.call("statistics").get("nat_mappings", 0) >= 1


@pytest.mark.skipif(not os.path.exists("/usr/lib/ipsec/charon"), reason="no strongSwan")
def test_strongswan_initiator_behind_the_nat(nat) -> None:
    """A peer nobody here wrote behind the NAT: strongSwan's charon in A initiates (real
    NAT detection, no forced encapsulation) to ``pyipsec daemon`` in B."""
    from strongswan import Charon, Child, Connection, Psk

    topo = nat
    outside, me = topo.b_c4, topo.c.addr4
    secret = os.urandom(32)
    child = Child("inner", [f"{INNER_A}/32"], [f"{INNER_B}/32"])
    conn = Connection("nat", [topo.a.addr4], [me], "charon@nat.test", "b@nat.test", [child],
                      encap=False)  # fmt: skip
    charon = Charon(topo.a.ns, [conn], [Psk(("charon@nat.test", "b@nat.test"), secret)])
    try:
        root = tempfile.mkdtemp(prefix="pyi-natport-")
        b = _write(topo, "b", root, {}, {}, psk=f"0x{secret.hex()}", peer_id="charon@nat.test")
        b.start()
        cap = topo.capture(topo.c, "eth0", snaplen=200)
        charon.start()
        charon.initiate("inner")
        charon.wait_established("inner")
        (child_b,) = b.wait_child()
        assert child_b["encap"] is True, child_b
        _transfer(topo, SIZE)
        frames = cap.stop_raw()
        flows, marker, protos = _udp_flows(frames, outside, me)
        assert marker is False and protos == {17}, protos
        natt = _nat_port(flows, outside, me, 4500)
        assert len(natt) == 1 and all(30000 <= p <= 30100 for p in natt), flows
        from_b = {(f[1], f[3]) for f in flows if f[0] == me}
        assert (4500, *natt) in from_b, flows
        assert from_b <= {(500, p) for p in _nat_port(flows, outside, me, 500)} | {(4500, *natt)}, (
            flows
        )
        assert b.status()["child_sas"][0]["bytes_in"] >= SIZE
    except BaseException:
        print(charon.log_text()[-3000:])
        raise
    finally:
        charon.close()
