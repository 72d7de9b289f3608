"""The data plane service: installs the kernel side, runs the two workers, answers control.

``pyipsec dataplane --static FILE`` runs :func:`run_service`:

1. validate the static file completely (nothing is installed if any field is wrong);
2. create the TUN device ``pyipsec0`` (MTU = path MTU - worst SA overhead, at least 1280),
   loose rp_filter, policy routing (rule + table + blackhole backstop, see
   :mod:`pyipsec.platform.linux.routing`) and the nftables table (``kernel.py``);
3. open the sockets (SO_MARK), fork the outbound and inbound workers, hand them the SAs;
4. serve the control socket (newline-delimited JSON, the same framing as
   :mod:`pyipsec.control.protocol`) at ``/run/pyipsec/dataplane.<netns>.sock`` (0600 in a
   0700 directory; ``<netns>`` is the inode of the network namespace so data planes in
   different namespaces never collide) for ``pyipsec sa|policy-entry add|del|list``.

SIGTERM/SIGINT stop the workers and remove the control socket but leave the nftables table,
rule and blackhole routes in place: the host stays fail-closed until ``pyipsec flush``
(:func:`flush`) removes everything. A crash (SIGKILL) leaves the same state: the workers die
with the service (PR_SET_PDEATHSIG), the TUN device disappears with its last descriptor,
and the blackhole route plus the postrouting drop keep protected traffic off the wire.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import multiprocessing
import os
import select
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pyipsec.dataplane import kernel
from pyipsec.dataplane.static import PolicyConfig, SaConfig, StaticConfig, parse_policy, parse_sa
from pyipsec.dataplane.workers import SocketSender, inbound_main, outbound_main
from pyipsec.errors import ConfigError, PyipsecError
from pyipsec.ipsec.spd import Spd
from pyipsec.platform.linux import nft, routing, sysctl
from pyipsec.platform.linux import sockets as sk
from pyipsec.platform.linux.tun import Tun

log = logging.getLogger("pyipsec.dataplane")

RUN_DIR = "/run/pyipsec"
MIN_MTU = 1280
TUN_ADDRESS = "169.254.73.1"  #: given to the TUN only when net.ipv4.conf.all.rp_filter != 0


def default_control_path() -> str:
    """Control socket path for the current network namespace."""
    try:
        ino = os.stat("/proc/self/ns/net").st_ino
    except OSError:
        ino = 0
    return os.path.join(RUN_DIR, f"dataplane.{ino}.sock")


# --------------------------------------------------------------------------- state


@dataclass
class DataplaneState:
    """The configured SAs and SPD entries; every change is validated before it applies."""

    sas: dict[tuple[str, str, int], SaConfig] = field(default_factory=dict)
    policies: list[PolicyConfig] = field(default_factory=list)

    def children(self) -> set[str]:
        return {p.entry.template.child for p in self.policies if p.entry.template}

    def check_sa(self, sa: SaConfig) -> None:
        if sa.ident in self.sas:
            raise ConfigError(
                f"an {sa.direction}bound {sa.protocol} SA with SPI {sa.spi:#x} exists", key="spi"
            )
        if sa.child not in self.children():
            raise ConfigError(f"no protect policy names child {sa.child!r}", key="child")

    def with_policy(self, pol: PolicyConfig) -> list[PolicyConfig]:
        if any(p.name == pol.name for p in self.policies):
            raise ConfigError(f"a policy named {pol.name!r} exists", key="name")
        new = [*self.policies, pol]
        spd = Spd()
        for p in new:
            spd.add(p.entry)
        return new

    def find_sa(self, spi: int, protocol: str, direction: str | None) -> SaConfig:
        found = [
            s
            for s in self.sas.values()
            if s.spi == spi and s.protocol == protocol and direction in (None, s.direction)
        ]
        if not found:
            raise ConfigError(f"no {protocol} SA with SPI {spi:#x}", key="spi")
        if len(found) > 1:
            raise ConfigError("SPI exists in both directions: give --direction", key="direction")
        return found[0]


def ordered_entries(policies: list[PolicyConfig]) -> list[Any]:
    spd = Spd()
    for p in policies:
        spd.add(p.entry)
    return spd.entries()


# --------------------------------------------------------------------------- service


class Service:
    """One running data plane (in the current network namespace)."""

    def __init__(
        self,
        static: StaticConfig,
        *,
        control_path: str | None = None,
        cfg: routing.RoutingConfig | None = None,
        gso: bool = True,
        offload: bool = True,
        tso: bool = False,
        events: bool = False,
    ) -> None:
        """``events``: give each worker a one-way pipe for acquires, lifetime events and
        IKE messages from UDP 4500 (``event_conns``), and keep the UDP 4500 sockets open
        here so the daemon sends IKE through them (:meth:`send_udp`). ``offload``: TUN
        with IFF_VNET_HDR (coalesced GSO writes); ``tso``: TSO super-packet reads too
        (:meth:`pyipsec.platform.linux.tun.Tun.open` says why it is off by default)."""
        self.cfg = cfg or routing.RoutingConfig()
        self.events = events
        self.event_conns: list[Any] = []
        self._udp: dict[int, socket.socket] = {}
        self.offload = offload
        self.tso = tso and offload
        self.control_path = control_path or default_control_path()
        self.state = DataplaneState()
        self.state.policies = list(static.policies)
        for sa in static.sas:
            self.state.sas[sa.ident] = sa
        self.gso = gso
        self.stopping = False
        self.procs: dict[str, Any] = {}
        self.conns: dict[str, Any] = {}
        self.mtu = 0
        self._lsock: socket.socket | None = None

    # ------------------------------------------------------------------ setup

    def _mtu(self) -> int:
        sas = list(self.state.sas.values())
        link = min((routing.path_mtu(s.dst) for s in sas), default=1500)
        overhead = max((s.build().overhead for s in sas), default=100)
        return max(MIN_MTU, link - overhead)

    def install_kernel(self) -> Tun:
        self.mtu = self._mtu()
        tun = Tun.open(self.cfg.ifname, offload=self.offload, tso=self.tso)
        routing.configure_link(self.cfg.ifname, self.mtu)
        if sysctl.prepare_tun(self.cfg.ifname):
            # all.rp_filter is on: an address makes the TUN pass loose/strict filtering
            sysctl.write(f"net.ipv4.conf.{self.cfg.ifname}.rp_filter", 2)
            routing.add_address(self.cfg.ifname, TUN_ADDRESS, 32)
        routing.install_routing(self.cfg)
        nft.replace_table(
            kernel.TABLE, kernel.compile_ruleset(ordered_entries(self.state.policies), self.cfg)
        )
        return tun

    def start(self) -> None:
        tun = self.install_kernel()
        mark = self.cfg.socket_mark
        raw4 = sk.open_raw_sender(socket.AF_INET, mark)
        raw6 = sk.open_raw_sender(socket.AF_INET6, mark)
        udp4 = sk.open_udp_encap(socket.AF_INET, mark)
        udp6 = sk.open_udp_encap(socket.AF_INET6, mark)
        receivers = [
            ("raw4", sk.open_raw_receiver(socket.AF_INET, sk.IPPROTO_ESP, mark)),
            ("raw4", sk.open_raw_receiver(socket.AF_INET, sk.IPPROTO_AH, mark)),
            ("esp6", sk.open_raw_receiver(socket.AF_INET6, sk.IPPROTO_ESP, mark)),
            ("ah6", sk.open_raw_receiver(socket.AF_INET6, sk.IPPROTO_AH, mark)),
            ("udp", udp4),
            ("udp", udp6),
        ]
        ctx = multiprocessing.get_context("fork")
        policies = list(self.state.policies)
        sender = SocketSender(raw4, raw6, udp4, udp6, gso=self.gso, mark=mark)
        for name, target, args in (
            ("outbound", outbound_main, (tun, sender, policies)),
            ("inbound", inbound_main, (tun, receivers, policies)),
        ):
            parent, child = ctx.Pipe()
            ev_recv = ev_send = None
            if self.events:
                ev_recv, ev_send = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=target, args=(child, *args, ev_send), name=f"pyipsec-{name}")
            proc.daemon = True
            proc.start()
            child.close()
            if ev_send is not None:
                ev_send.close()
                self.event_conns.append(ev_recv)
            self.procs[name] = proc
            self.conns[name] = parent
        keep = [udp4, udp6] if self.events else []
        if self.events:
            self._udp = {4: udp4, 6: udp6}
        sk.close_all(
            [s for s in [raw4, raw6, udp4, udp6] + [s for _, s in receivers] if s not in keep]
        )
        tun.close()
        for sa in self.state.sas.values():
            self._worker_call("outbound" if sa.direction == "out" else "inbound", ("add_sa", sa))
        self._open_control()
        log.info(
            "data plane up: %s mtu %d, %d SAs, %d policies, control %s",
            self.cfg.ifname, self.mtu, len(self.state.sas), len(self.state.policies),
            self.control_path,
        )  # fmt: skip

    def _open_control(self) -> None:
        os.makedirs(os.path.dirname(self.control_path), mode=0o700, exist_ok=True)
        os.chmod(os.path.dirname(self.control_path), 0o700)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.control_path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            sock.bind(self.control_path)
        finally:
            os.umask(old)
        os.chmod(self.control_path, 0o600)
        sock.listen(16)
        self._lsock = sock

    # ------------------------------------------------------------------ workers

    def _worker_call(self, name: str, msg: tuple, timeout: float = 10.0) -> Any:
        conn = self.conns[name]
        conn.send(msg)
        if not conn.poll(timeout):
            raise PyipsecError(f"the {name} worker did not answer")
        reply = conn.recv()
        if isinstance(reply, dict) and "error" in reply:
            raise PyipsecError(f"{name} worker: {reply['error']}")
        return reply

    def send_udp(self, payload: bytes, addr: tuple[str, int]) -> None:
        """Send one datagram from UDP port 4500 (IKE with its non-ESP marker)."""
        sock = self._udp.get(6 if ":" in addr[0] else 4)
        if sock is None:
            raise OSError(101, "no UDP 4500 socket")
        sock.sendto(payload, addr)

    def workers_alive(self) -> bool:
        return all(p.is_alive() for p in self.procs.values())

    # ------------------------------------------------------------------ control

    def serve(self) -> int:
        """Answer control requests until stopped; returns the exit status."""
        assert self._lsock is not None
        status = 0
        while not self.stopping:
            try:
                ready, _, _ = select.select([self._lsock], [], [], 0.5)
            except InterruptedError:
                continue
            if not self.workers_alive():
                log.error("a worker died: stopping (the host stays fail-closed)")
                status = 1
                break
            if ready:
                conn, _ = self._lsock.accept()
                with conn:
                    self._handle(conn)
        self.shutdown()
        return status

    def _handle(
        self,
        conn: socket.socket,
        *,
        allowed: frozenset[str] | None = None,
        why: str = "",
    ) -> None:
        """Answer one request. ``allowed``: the only commands served (a data plane that
        the daemon manages answers read-only ones; ``why`` says what to do instead)."""
        if conn.gettimeout() is None:
            conn.settimeout(10)
        try:
            with conn.makefile("rb") as f:
                line = f.readline(1 << 20)
            req = json.loads(line)
            command, args = req["command"], req.get("args") or {}
            if allowed is not None and command not in allowed:
                raise PyipsecError(f"{command!r} refused: {why}")
            result = self.dispatch(command, args)
            resp = {"id": req.get("id"), "ok": True, "result": result}
        except PyipsecError as exc:
            resp = {"id": None, "ok": False,
                    "error": {"type": type(exc).__name__, "message": str(exc)}}  # fmt: skip
        except (ValueError, KeyError, TypeError) as exc:
            error = {"type": "ControlError", "message": f"bad request: {exc}"}
            resp = {"id": None, "ok": False, "error": error}
        except OSError:
            return
        with contextlib.suppress(OSError):
            conn.sendall(json.dumps(resp, default=str).encode() + b"\n")

    def dispatch(self, command: str, args: dict[str, Any]) -> Any:
        handler: Callable[[dict[str, Any]], Any] | None = getattr(
            self, "cmd_" + command.replace("-", "_").replace(".", "_"), None
        )
        if handler is None:
            raise PyipsecError(f"unknown command {command!r}")
        return handler(args)

    def cmd_status(self, args: dict[str, Any]) -> Any:
        return {
            "pid": os.getpid(), "tun": self.cfg.ifname, "mtu": self.mtu,
            "sas": len(self.state.sas), "policies": len(self.state.policies),
            "workers": {n: p.is_alive() for n, p in self.procs.items()},
        }  # fmt: skip

    def cmd_sa_list(self, args: dict[str, Any]) -> Any:
        show = bool(args.get("show_keys"))
        out = []
        for name in ("outbound", "inbound"):
            for item in self._worker_call(name, ("stats",))["sas"]:
                if show:
                    ident = (item["sa"]["direction"], item["sa"]["protocol"],
                             int(item["sa"]["spi"], 16))  # fmt: skip
                    sa = self.state.sas.get(ident)
                    if sa is not None:
                        item["sa"]["key"] = sa.key.hex()
                out.append(item)
        return out

    def cmd_sa_add(self, args: dict[str, Any]) -> Any:
        local = routing.local_addresses()
        sa = parse_sa(dict(args.get("sa") or {}), path="sa", is_local=lambda a: a in local)
        self.state.check_sa(sa)
        self._worker_call("outbound" if sa.direction == "out" else "inbound", ("add_sa", sa))
        self.state.sas[sa.ident] = sa
        return sa.to_dict()

    def cmd_sa_del(self, args: dict[str, Any]) -> Any:
        spi = args.get("spi")
        spi = int(spi, 0) if isinstance(spi, str) else spi
        if not isinstance(spi, int):
            raise ConfigError("is required", key="spi")
        sa = self.state.find_sa(spi, str(args.get("protocol", "esp")), args.get("direction"))
        worker = "outbound" if sa.direction == "out" else "inbound"
        self._worker_call(worker, ("del_sa", sa.protocol, sa.spi))
        del self.state.sas[sa.ident]
        return sa.to_dict()

    def cmd_policy_list(self, args: dict[str, Any]) -> Any:
        counters = nft.rule_counters(kernel.TABLE)
        out = []
        for e in ordered_entries(self.state.policies):
            pol = next(p for p in self.state.policies if p.name == e.name)
            d = pol.to_dict()
            d["selector"] = str(e.selector)
            d["kernel_packets"] = sum(
                v[0] for k, v in counters.items() if k.rpartition("/")[0] == e.name
            )
            out.append(d)
        return out

    def _apply_policies(self, new: list[PolicyConfig]) -> None:
        nft.replace_table(kernel.TABLE, kernel.compile_ruleset(ordered_entries(new), self.cfg))
        self.state.policies = new
        for name in ("outbound", "inbound"):
            self._worker_call(name, ("policies", new))

    def cmd_policy_add(self, args: dict[str, Any]) -> Any:
        pol = parse_policy(dict(args.get("policy") or {}), path="policy")
        self._apply_policies(self.state.with_policy(pol))
        return pol.to_dict()

    def cmd_policy_del(self, args: dict[str, Any]) -> Any:
        name = args.get("name")
        if not any(p.name == name for p in self.state.policies):
            raise ConfigError(f"no policy named {name!r}", key="name")
        self._apply_policies([p for p in self.state.policies if p.name != name])
        return {"name": name}

    def cmd_stats(self, args: dict[str, Any]) -> Any:
        out = {n: self._worker_call(n, ("stats",)) for n in ("outbound", "inbound")}
        out["kernel"] = {k: list(v) for k, v in nft.rule_counters(kernel.TABLE).items()}
        return out

    def cmd_shutdown(self, args: dict[str, Any]) -> Any:
        self.stopping = True
        return {"stopping": True}

    # ------------------------------------------------------------------ stop

    def shutdown(self) -> None:
        """Stop the workers; keep the kernel state (fail closed) for ``pyipsec flush``."""
        for name, conn in self.conns.items():
            with contextlib.suppress(OSError, ValueError, BrokenPipeError):
                conn.send(("stop",))
            proc = self.procs[name]
            proc.join(2)
            if proc.is_alive():
                proc.terminate()
                proc.join(2)
        for conn in self.event_conns:
            with contextlib.suppress(OSError):
                conn.close()
        self.event_conns.clear()
        sk.close_all(list(self._udp.values()))
        self._udp.clear()
        if self._lsock is not None:
            self._lsock.close()
            self._lsock = None
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.control_path)


def run_service(
    static: StaticConfig,
    *,
    control_path: str | None = None,
    gso: bool = True,
    offload: bool = True,
    tso: bool = False,
) -> int:
    """Run a data plane until SIGTERM/SIGINT; returns the process exit status."""
    svc = Service(static, control_path=control_path, gso=gso, offload=offload, tso=tso)

    def stop(*_: object) -> None:
        svc.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    svc.start()
    return svc.serve()


def flush(cfg: routing.RoutingConfig | None = None) -> list[str]:
    """Remove everything a data plane installed in this namespace (table, rules, routes,
    TUN device); returns what was removed."""
    cfg = cfg or routing.RoutingConfig()
    removed = []
    if nft.delete_table(kernel.TABLE):
        removed.append("nftables table inet pyipsec")
    removed += routing.remove_routing(cfg)
    return removed


def is_local_factory() -> Callable[[str], bool]:
    local = routing.local_addresses()
    return lambda addr: str(ipaddress.ip_address(addr)) in local
