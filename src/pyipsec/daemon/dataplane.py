"""The daemon's data plane: the Linux user-space data plane, driven by IKE events.

The daemon runs the data plane service of :mod:`pyipsec.dataplane.service` in its own
process tree (the two per-direction workers are forked from the daemon) and translates:

* the configuration's children into SPD entries (``set_policies``): one PROTECT entry per
  pair of local/remote traffic selectors, ``dynamic`` meaning the IKE addresses;
* ``ChildSaInstalled`` into an inbound SA (installed first) and an outbound SA (which
  replaces the child's previous outbound SA atomically in the outbound worker: traffic
  switches to the new SA when it is installed, the old inbound SA keeps accepting
  in-flight packets until IKE deletes it);
* worker events back into daemon calls: acquires (first packet of a trapped flow),
  IKE datagrams that arrived on the data plane's UDP 4500 socket (non-ESP marker), and
  soft lifetime expiry by volume (rekey now).

Children are named ``<connection>/<child>`` in the data plane, so two connections may
use the same child name. Connections toward many hosts (``%any``, subnets: see
:mod:`pyipsec.daemon.dynamic`) get one child per host, ``<connection>/<child>@<host>``,
whose PROTECT entries are made from the negotiated selectors when the SA is installed
and removed with its last SA; they sit just before the connection's own entries (or
last, for a child that has none: the default response rule), with the same priority.
BYPASS entries of hosts that fell back to clear text sit there too.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import logging
from typing import Any

from pyipsec.daemon.config import DaemonConfig
from pyipsec.daemon.dynamic import dataplane_child
from pyipsec.dataplane.service import Service
from pyipsec.dataplane.static import PolicyConfig, StaticConfig, parse_policy, parse_sa
from pyipsec.ike.events import ChildSaDeleted, ChildSaInstalled
from pyipsec.ike.ts import TsRange, parse_ts

log = logging.getLogger("pyipsec.daemon.dataplane")

#: data-plane control commands a daemon's data plane answers (it manages the rest)
READ_ONLY_COMMANDS = frozenset({"status", "sa-list", "policy-list", "stats"})
_MANAGED = (
    "this data plane is managed by the pyipsec daemon: change its configuration and run "
    "`pyipsec reload` (or `pyipsec up/down/rekey`)"
)


def _range_text(ts: TsRange) -> str:
    if ts.start_addr == ts.end_addr:
        return str(ts.start_addr)
    return f"{ts.start_addr}-{ts.end_addr}"


def _ports(ts: TsRange) -> str:
    if (ts.start_port, ts.end_port) == (0, 65535):
        return "any"
    if ts.start_port == ts.end_port:
        return str(ts.start_port)
    return f"{ts.start_port}-{ts.end_port}"


def _resolve(text: str, own: str | None) -> TsRange | None:
    ts = parse_ts(text)
    if ts is not None:
        return ts
    if own is None or own == "%any":
        return None
    address = ipaddress.ip_address(own)
    return TsRange(address, address)


def _protect_entry(name: str, child: str, local: TsRange, remote: TsRange,
                   **extra: Any) -> dict[str, Any]:  # fmt: skip
    """A PROTECT entry (``spd:`` format) for one pair of traffic selectors of ``child``."""
    entry: dict[str, Any] = {
        "name": name,
        "local": _range_text(local),
        "remote": _range_text(remote),
        "action": "protect",
        "child": child,
        **extra,
    }
    protocol = local.ip_protocol or remote.ip_protocol
    if protocol:
        entry["protocol"] = protocol
        entry["local_ports"] = _ports(local)
        entry["remote_ports"] = _ports(remote)
    return entry


def compile_policies(config: DaemonConfig) -> list[PolicyConfig]:
    """The SPD of the data plane: the configuration's explicit entries (``spd:`` and the
    applied policy's BYPASS / DISCARD / PROTECT entries, with their priorities), then
    PROTECT entries (priority 100) for every child that no explicit entry names.

    Children whose selectors cannot be made concrete (``dynamic`` with no fixed address
    on that side, e.g. a responder for ``%any``) get their entries when their SA is
    installed, from the negotiated selectors.
    """
    policies: list[PolicyConfig] = list(config.spd)
    explicit = {p.entry.template.child for p in config.spd if p.entry.template is not None}
    for peer in config.endpoint.peers:
        local_addr = peer.local_addr
        remote_addr = peer.remote_addrs[0] if peer.remote_addrs else None
        for child in peer.children:
            name = f"{peer.name}/{child.name}"
            if name in explicit:
                continue
            index = 0
            for local_text in child.local_ts:
                local = _resolve(local_text, local_addr)
                for remote_text in child.remote_ts:
                    remote = _resolve(remote_text, remote_addr)
                    if local is None or remote is None:
                        continue
                    if local.start_addr.version != remote.start_addr.version:
                        continue
                    entry = _protect_entry(f"{name}#{index}", name, local, remote, priority=100)
                    policies.append(parse_policy(entry, path=f"connections.{name}"))
                    index += 1
    return policies


def _sa_dict(event: ChildSaInstalled, direction: str) -> dict[str, Any]:
    inbound = direction == "in"
    data: dict[str, Any] = {
        "spi": event.inbound_spi if inbound else event.outbound_spi,
        "src": event.remote_addr if inbound else event.local_addr,
        "dst": event.local_addr if inbound else event.remote_addr,
        "protocol": event.protocol,
        "mode": event.mode,
        "algorithm": event.algorithm,
        "key": (event.inbound_key if inbound else event.outbound_key).hex(),
        "child": "",
        "direction": direction,
        "esn": event.esn,
        "replay_window": 128 if inbound else 64,
    }
    if event.encap_udp:
        data["encap"] = "udp"
        # the peer's IKE port: behind a NAT it is rarely 4500 (RFC 3948 section 2.1)
        remote_port = getattr(event, "remote_port", 4500) or 4500
        data["encap_sport" if inbound else "encap_dport"] = remote_port
    lifetime: dict[str, Any] = {"hard_seconds": event.life_time + 60}
    if event.rekey_bytes:
        lifetime["soft_bytes"] = event.rekey_bytes
    if event.rekey_packets:
        lifetime["soft_packets"] = event.rekey_packets
    data["lifetime"] = lifetime
    return data


class LinuxDataplane:
    """The :class:`pyipsec.daemon.core.Dataplane` of a real Linux host."""

    def __init__(self, config: DaemonConfig, loop: asyncio.AbstractEventLoop, hooks: Any) -> None:
        self.config = config
        self.loop = loop
        self.hooks = hooks
        self.service = Service(StaticConfig(sas=(), policies=()), events=True)
        self._children: dict[int, str] = {}  # inbound SPI -> data plane child name
        #: per-host entries, by the connection's child name ("conn/child") they precede:
        #: PROTECT entries of installed SAs and BYPASS entries of fallen-back hosts
        self._dynamic: dict[str, dict[str, list[dict[str, Any]]]] = {}
        #: rekey successors whose outbound SA waits: new inbound SPI -> (old outbound SPI, SA)
        self._waiting: dict[int, tuple[int, Any]] = {}
        self._compiled: tuple[DaemonConfig, list[PolicyConfig]] | None = None
        self._failed: asyncio.Future[None] = loop.create_future()

    # ------------------------------------------------------------------ lifecycle

    async def start_async(self) -> None:
        """Start the service off the event loop (pyroute2's synchronous API runs an event
        loop of its own and refuses to run inside ours), then listen to the workers."""
        self.service.state.policies = self._policies()
        await self.loop.run_in_executor(None, self.service.start)
        logging.getLogger("pyroute2").setLevel(logging.WARNING)
        for conn in self.service.event_conns:
            self.loop.add_reader(conn.fileno(), self._on_event, conn)
        if self.service._lsock is not None:
            self.service._lsock.setblocking(False)
            self.loop.add_reader(self.service._lsock.fileno(), self._on_control)
        self.hooks.send_4500(self.service.send_udp)

    async def wait_failed(self) -> None:
        """Completes when a worker dies (the daemon then stops, fail-closed)."""
        while self.service.workers_alive():
            await asyncio.sleep(0.5)

    def close(self) -> None:
        for conn in self.service.event_conns:
            with contextlib.suppress(Exception):
                self.loop.remove_reader(conn.fileno())
        if self.service._lsock is not None:
            with contextlib.suppress(Exception):
                self.loop.remove_reader(self.service._lsock.fileno())
        self.service.shutdown()

    # ------------------------------------------------------------------ control

    def _on_control(self) -> None:
        """The data plane's control socket, read-only under the daemon: ``pyipsec sa
        list``, ``pyipsec policy-entry list`` and ``pyipsec dataplane`` status/stats work
        as with a standalone data plane; changes go through the daemon's configuration."""
        lsock = self.service._lsock
        if lsock is None:
            return
        try:
            conn, _ = lsock.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            log.warning("data plane control socket: %s", exc.strerror)
            return
        with conn:
            conn.setblocking(True)
            conn.settimeout(1.0)  # a local client sends one line at once; never stall IKE
            self.service._handle(conn, allowed=READ_ONLY_COMMANDS, why=_MANAGED)

    # ------------------------------------------------------------------ events

    def _on_event(self, conn: Any) -> None:
        try:
            while conn.poll():
                event = conn.recv()
                self._dispatch(event)
        except (EOFError, OSError):
            self.loop.remove_reader(conn.fileno())

    def _dispatch(self, event: tuple[Any, ...]) -> None:
        kind = event[0]
        if kind == "acquire":
            _, child, _policy, src, dst = event
            self.hooks.acquire(src, dst, child)
        elif kind == "ike":
            _, data, remote, local = event
            self.hooks.ike_datagram(data, remote, local)
        elif kind == "nat_mapping":
            _, protocol, spi, _child, addr, port = event
            self._peer_moved(protocol, spi, addr, port)
        elif kind == "sa_event":
            _, what, direction, _protocol, spi = event
            if what in ("soft", "soft_lifetime", "SoftLifetimeExpired"):
                self.hooks.rekey_child(spi)
            else:
                log.info("SA %08x (%s) event: %s", spi, direction, what)

    def _peer_moved(self, protocol: str, inbound_spi: int, addr: str, port: int) -> None:
        """Authenticated ESP from a new NAT mapping (RFC 7296 2.23): if the IKE layer
        agrees, every outbound SA of that IKE SA sends its ESP-in-UDP there."""
        for out_spi in self.hooks.nat_mapping(inbound_spi, (addr, port)):
            with contextlib.suppress(Exception):
                self.service._worker_call("outbound", ("set_peer", protocol, out_spi, addr, port))
            for new_in, (old_out, cfg) in list(self._waiting.items()):
                if cfg.spi == out_spi:  # a rekey successor not carrying traffic yet
                    moved = dataclasses.replace(cfg, dst=addr, encap_dport=port)
                    self._waiting[new_in] = (old_out, moved)

    # ------------------------------------------------------------------ Dataplane protocol

    def set_policies(self, config: DaemonConfig) -> None:
        self.config = config
        known = {f"{p.name}/{c.name}" for p in config.endpoint.peers for c in p.children}
        for generic in [g for g in self._dynamic if g not in known]:
            del self._dynamic[generic]  # the connection is gone, and its hosts' entries
        self._refresh()

    def _refresh(self) -> None:
        policies = self._policies()
        if self.service.procs:
            self.service._apply_policies(policies)
        else:
            self.service.state.policies = policies

    def _configured(self) -> list[PolicyConfig]:
        """The configuration's SPD (:func:`compile_policies`), compiled once per
        configuration: per-host entries come and go with SAs, the configuration does not."""
        cached = self._compiled
        if cached is None or cached[0] is not self.config:
            cached = (self.config, compile_policies(self.config))
            self._compiled = cached
        return cached[1]

    def _policies(self) -> list[PolicyConfig]:
        """The configured SPD with the per-host entries in place (see the module doc)."""
        base = self._configured()
        pending = {g: [e for group in d.values() for e in group] for g, d in self._dynamic.items()}
        out: list[PolicyConfig] = []
        for policy in base:
            template = policy.entry.template
            generic = template.child if template is not None else None
            for data in pending.pop(generic, []) if generic else []:
                out.append(parse_policy({**data, "priority": policy.entry.priority}, path=generic))
            out.append(policy)
        for generic, items in pending.items():
            last = max((p.entry.priority for p in base), default=0)
            out.extend(parse_policy({**d, "priority": max(last, 100)}, path=generic) for d in items)
        return out

    def add_bypass(self, child: str, remote: str) -> None:
        """Let traffic of ``child`` (``conn/child``) with host ``remote`` pass in clear (an
        unsecured fallback): BYPASS entries cut from the child's entries to that host."""
        version = ipaddress.ip_address(remote).version
        entries = []
        for policy in self._configured():
            entry = policy.entry
            if entry.template is None or entry.template.child != child:
                continue
            if entry.selector.remote.version not in (0, version):
                continue
            data = {k: v for k, v in policy.source.items() if k not in ("child", "priority")}
            data.update(name=f"{entry.name}@{remote}-clear", remote=remote, action="bypass",
                        direction="both")  # fmt: skip
            entries.append(data)
        self._dynamic.setdefault(child, {})[f"clear@{remote}"] = entries
        self._refresh()

    def remove_bypass(self, child: str, remote: str) -> None:
        """The unsecured fallback with ``remote`` ended (a Child SA protects it now)."""
        if self._dynamic.get(child, {}).pop(f"clear@{remote}", None) is not None:
            self._refresh()

    def install(self, child: ChildSaInstalled) -> None:
        """Install the inbound SA, then the outbound one.

        A rekey successor (``rekeyed_from`` set) only gets its inbound SA now: traffic
        keeps leaving on the old SA until :meth:`activate` (on ``ChildSaRekeyed``, when the
        peer is known to hold the new SA) or until the old SA is removed, whichever comes
        first. Switching earlier loses packets when we answered the peer's rekey and our
        response has not reached it yet; a collision loser never carries traffic.
        """
        peer = self._peer_of(child)
        name = (
            dataplane_child(peer, child.child, child.remote_addr)
            if peer is not None
            else f"dynamic/{child.child}"
        )
        self._ensure_policies(child, name)
        configs = {}
        for direction in ("in", "out"):
            data = _sa_dict(child, direction)
            data["child"] = name
            configs[direction] = parse_sa(data, path=f"child {name}")
        self._add("in", configs["in"])
        if child.rekeyed_from is not None:
            self._waiting[child.inbound_spi] = (child.rekeyed_from, configs["out"])
        else:
            self._add("out", configs["out"])
        self._children[child.inbound_spi] = name

    def activate(self, new_inbound_spi: int) -> None:
        """Switch outbound traffic to a rekeyed Child SA (its ``ChildSaRekeyed``)."""
        waiting = self._waiting.pop(new_inbound_spi, None)
        if waiting is not None:
            self._add("out", waiting[1])

    def _add(self, direction: str, sa: Any) -> None:
        worker = "inbound" if direction == "in" else "outbound"
        self.service._worker_call(worker, ("add_sa", sa))
        self.service.state.sas[sa.ident] = sa

    def remove(self, child: ChildSaDeleted) -> None:
        # a successor still waiting for the SA being removed takes over first, so the
        # child is never left without an outbound SA
        for spi, (replaces, _) in list(self._waiting.items()):
            if replaces == child.outbound_spi:
                self.activate(spi)
        self._waiting.pop(child.inbound_spi, None)
        for direction, spi in (("out", child.outbound_spi), ("in", child.inbound_spi)):
            worker = "inbound" if direction == "in" else "outbound"
            with contextlib.suppress(Exception):
                self.service._worker_call(worker, ("del_sa", child.protocol, spi))
            self.service.state.sas.pop((direction, child.protocol, spi), None)
        name = self._children.pop(child.inbound_spi, None)
        if name is not None and name not in self._children.values():
            generic = name.partition("@")[0]
            if self._dynamic.get(generic, {}).pop(name, None) is not None:
                self._refresh()  # the host's last SA is gone, and its PROTECT entries

    def _peer_of(self, child: ChildSaInstalled) -> Any:
        for peer in self.config.endpoint.peers:
            if peer.child(child.child) is not None and (peer.matches_addr(child.remote_addr)):
                return peer
        return None

    def _ensure_policies(self, child: ChildSaInstalled, name: str) -> None:
        """PROTECT entries from the negotiated selectors for a child the configuration
        gives none (a host of a connection toward many hosts, or ``dynamic`` selectors
        of a responder for ``%any``); they follow the direction of the connection's own
        entries (``out`` for accept_unsecured) and live until the child's last SA goes."""
        generic = name.partition("@")[0]
        if name in self._dynamic.get(generic, {}):
            return
        base = self._configured()
        own = [p.entry for p in base if p.entry.template and p.entry.template.child == generic]
        if "@" not in name and own:
            return  # the configuration's entries cover it
        direction = "out" if own and all(e.direction == "out" for e in own) else "both"
        entries = []
        for index, (local, remote) in enumerate(
            (lts, rts) for lts in child.local_ts for rts in child.remote_ts
        ):
            if local.start_addr.version != remote.start_addr.version:
                continue
            entries.append(
                _protect_entry(f"{name}#n{index}", name, local, remote, direction=direction)
            )
        if entries:
            self._dynamic.setdefault(generic, {})[name] = entries
            self._refresh()

    def sa_statistics(self) -> dict[int, dict[str, int]]:
        out: dict[int, dict[str, int]] = {}
        try:
            for item in self.service.cmd_sa_list({}):
                sa, stats = item["sa"], item["statistics"]
                out[int(sa["spi"], 16)] = {
                    "bytes_in": stats.get("bytes_in", 0),
                    "packets_in": stats.get("packets_in", 0),
                    "bytes_out": stats.get("bytes_out", 0),
                    "packets_out": stats.get("packets_out", 0),
                }
        except Exception as exc:  # statistics must never break the monitor
            log.debug("SA statistics unavailable: %s", exc)
        return out

    def statistics(self) -> dict[str, int]:
        totals: dict[str, int] = {}
        try:
            stats = self.service.cmd_stats({})
        except Exception as exc:
            log.debug("data plane statistics unavailable: %s", exc)
            return totals
        for worker in ("outbound", "inbound"):
            part = stats.get(worker, {})
            for item in part.get("sas", []):
                for key, value in item.get("statistics", {}).items():
                    if isinstance(value, int) and not isinstance(value, bool):
                        totals[key] = totals.get(key, 0) + value
            for key, value in part.get("pipeline", {}).items():
                if isinstance(value, int) and not isinstance(value, bool):
                    totals[key] = totals.get(key, 0) + value
        totals.update(self._kernel_drops(stats.get("kernel", {})))
        return totals

    def _kernel_drops(self, counters: dict[str, Any]) -> dict[str, int]:
        """Packets nftables dropped for the SPD (rule comments are ``<entry>/<chain>``):
        clear text where a PROTECT entry wants IPsec, DISCARD entries, and protected
        packets that would have left by another interface than the TUN (fail closed)."""
        actions = {p.name: p.entry.action.value for p in self.service.state.policies}
        out = {"unprotected_packets_dropped": 0, "discarded_packets": 0, "fail_closed_drops": 0}
        for comment, value in counters.items():
            packets = int(value[0]) if value else 0
            entry, _, chain = comment.rpartition("/")
            if comment == "fail-closed":
                out["fail_closed_drops"] += packets
            elif actions.get(entry) == "discard":
                out["discarded_packets"] += packets
            elif actions.get(entry) == "protect" and chain in ("in", "fwd-in"):
                out["unprotected_packets_dropped"] += packets
        return out
