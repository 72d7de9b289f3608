"""``pyipsec daemon``: the asyncio process an administrator runs on each server.

It wires the real boundaries around :class:`pyipsec.daemon.core.Daemon`:

* the IKE sockets (UDP 500; port 4500 through the data plane, which owns it),
* the Linux data plane (TUN ``pyipsec0``, nftables table ``inet pyipsec``, the two
  per-direction workers),
* the control socket (status, statistics, up/down/rekey, reload, events),
* signals: SIGTERM/SIGINT stop cleanly (Delete sent for every IKE SA; the kernel state
  stays so protected peers exchange no plaintext until ``pyipsec flush``), SIGHUP reloads;
* with a ``policy:`` section, the policy (:mod:`pyipsec.daemon.policy`): applied before
  the daemon starts, re-applied on reload, pulled at the polling interval and on
  ``policy-update`` (``pyipsec policy update``).

A configuration that does not validate is refused, on start and on reload; a running
daemon keeps its configuration and its SAs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Callable
from typing import Any

from pyipsec import __version__
from pyipsec.control.server import ControlServer
from pyipsec.daemon.config import DaemonConfig, load_config
from pyipsec.daemon.core import Daemon, Dataplane, IkeNetwork
from pyipsec.daemon.policy import PolicyApplier, PolicyRunner
from pyipsec.errors import ConfigError, PyipsecError

log = logging.getLogger("pyipsec.daemon")

DataplaneFactory = Callable[[DaemonConfig, asyncio.AbstractEventLoop, Any], Dataplane]
NetworkFactory = Callable[[Any], IkeNetwork]


def control_handlers(
    daemon: Daemon, config_path: str, policy: PolicyRunner | None = None
) -> dict[str, Any]:
    """The control API of a running daemon (see :mod:`pyipsec.control.protocol`).

    With a policy (``policy:`` in the configuration), ``reload`` re-reads the file and
    re-applies the policy, and ``policy-update`` (args: ``force``) pulls and applies now.
    """

    async def version(args: dict[str, Any]) -> Any:
        return {"version": __version__}

    async def status(args: dict[str, Any]) -> Any:
        result = daemon.status()
        if policy is not None:
            result["policy"] = policy.applier.status()
        return result

    async def statistics(args: dict[str, Any]) -> Any:
        result = daemon.statistics()
        if policy is not None:
            result.update(vars(policy.applier.statistics()))
        return result

    async def list_ike_sas(args: dict[str, Any]) -> Any:
        return daemon.status()["ike_sas"]

    async def list_child_sas(args: dict[str, Any]) -> Any:
        return daemon.status()["child_sas"]

    def _name(args: dict[str, Any]) -> str:
        name = args.get("name")
        if not isinstance(name, str) or not name:
            raise ConfigError("a connection or child name is required", key="name")
        return name

    async def up(args: dict[str, Any]) -> Any:
        return {"message": daemon.command_up(_name(args))}

    async def down(args: dict[str, Any]) -> Any:
        return {"message": daemon.command_down(_name(args))}

    async def rekey(args: dict[str, Any]) -> Any:
        return {"message": daemon.command_rekey(_name(args))}

    async def policy_update(args: dict[str, Any]) -> Any:
        if policy is None:
            raise ConfigError("the daemon's configuration has no policy section", key="policy")
        return await policy.update(force=bool(args.get("force")), reason="update")

    async def reload(args: dict[str, Any]) -> Any:
        if policy is not None:
            try:
                result = await policy.update(rebuild=True, reason="reload")
            except PyipsecError:
                daemon.counters.failed_reloads += 1
                raise
            return {"message": "configuration reloaded: " + result["message"], **result}
        path = args.get("config") or config_path
        try:
            new = load_config(path)
        except ConfigError:
            daemon.counters.failed_reloads += 1
            raise
        result = daemon.reload(new)
        return {"message": "configuration reloaded", **result}

    return {
        "version": version,
        "status": status,
        "statistics": statistics,
        "list-ike-sas": list_ike_sas,
        "list-child-sas": list_child_sas,
        "up": up,
        "initiate": up,
        "down": down,
        "terminate": down,
        "rekey": rekey,
        "reload": reload,
        "policy-update": policy_update,
    }


async def _quiet(update: Any) -> None:
    """Run a policy update whose refusal is already logged and counted."""
    try:
        await update
    except PyipsecError as exc:
        log.debug("policy update: %s", exc)


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stdout,
    )
    logging.getLogger("pyroute2").setLevel(logging.WARNING)


async def run(
    config_path: str,
    *,
    dataplane_factory: DataplaneFactory | None = None,
    network_factory: NetworkFactory | None = None,
    ready: Callable[[], None] | None = None,
    policy_applier: PolicyApplier | None = None,
) -> int:
    """Run until SIGTERM/SIGINT; returns the exit status.

    ``policy_applier`` replaces the one built from the ``policy:`` section (tests).
    """
    config = load_config(config_path)
    loop = asyncio.get_running_loop()
    if policy_applier is None and config.policy is not None:
        policy_applier = PolicyApplier(config_path, config.policy)
    runner: PolicyRunner | None = None
    if policy_applier is not None:
        runner = PolicyRunner(policy_applier, None, loop)
        config = await loop.run_in_executor(None, runner.initial_config, config)
    stop = asyncio.Event()
    holder: dict[str, Daemon] = {}

    def receive(data: bytes, remote: tuple[str, int], local: tuple[str, int]) -> None:
        if "daemon" in holder:
            holder["daemon"].datagram(data, remote, local)

    if dataplane_factory is None:
        from pyipsec.daemon.dataplane import LinuxDataplane

        def dataplane_factory(cfg: DaemonConfig, lp: asyncio.AbstractEventLoop, hooks: Any):
            return LinuxDataplane(cfg, lp, hooks)

    if network_factory is None:
        from pyipsec.daemon.io import UdpIkeNetwork
        from pyipsec.platform.linux.routing import RoutingConfig

        def network_factory(receiver: Any) -> IkeNetwork:
            return UdpIkeNetwork(receiver, mark=RoutingConfig().socket_mark, ports=(500,))

    network = network_factory(receive)
    control = ControlServer(config.control_socket, {})

    class Hooks:
        """Callbacks from the data plane into the daemon."""

        @staticmethod
        def acquire(src: str, dst: str, child: str | None = None) -> None:
            if "daemon" in holder:
                holder["daemon"].acquire(src, dst, child)

        @staticmethod
        def ike_datagram(data: bytes, remote: tuple[str, int], local: tuple[str, int]) -> None:
            if hasattr(network, "ike_from_4500"):
                network.ike_from_4500(data, remote)  # type: ignore[attr-defined]
            else:
                receive(data[4:], remote, local)

        @staticmethod
        def send_4500(send: Callable[[bytes, tuple[str, int]], None]) -> None:
            if hasattr(network, "use_dataplane_4500"):
                network.use_dataplane_4500(send)  # type: ignore[attr-defined]

        @staticmethod
        def nat_mapping(inbound_spi: int, addr: tuple[str, int]) -> list[int]:
            daemon = holder.get("daemon")
            return daemon.peer_moved(inbound_spi, addr) if daemon is not None else []

        @staticmethod
        def rekey_child(inbound_spi: int) -> None:
            daemon = holder.get("daemon")
            if daemon is not None:
                for child in list(daemon.child_sas.values()):
                    if inbound_spi in (child.spi_in, child.spi_out):
                        with contextlib.suppress(Exception):
                            daemon.command_rekey(child.name)

    dataplane = dataplane_factory(config, loop, Hooks)
    daemon = Daemon(config, network, dataplane, loop=loop, publish=control.publish)
    holder["daemon"] = daemon
    if runner is not None:
        runner.daemon = daemon
    control.handlers.update(control_handlers(daemon, config_path, runner))
    background: set[asyncio.Future[Any]] = set()

    def on_reload() -> None:
        if runner is not None:
            task = asyncio.ensure_future(_quiet(runner.update(rebuild=True, reason="reload")))
            background.add(task)
            task.add_done_callback(background.discard)
            return
        try:
            new = load_config(config_path)
        except ConfigError as exc:
            daemon.counters.failed_reloads += 1
            log.error("reload refused, keeping the running configuration: %s", exc)
            return
        daemon.reload(new)

    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, on_reload)
    status = 0
    try:
        start = getattr(network, "start", None)
        if start is not None:
            await start()
        dp_start = getattr(dataplane, "start_async", None)
        if dp_start is not None:
            await dp_start()
        await control.start()
        daemon.start()
        log.info(
            "pyipsec %s daemon running: %d connection(s), control socket %s",
            __version__,
            len(config.connections),
            config.control_socket,
        )
        if runner is not None:
            await loop.run_in_executor(None, runner.report_started)
            background.add(asyncio.ensure_future(runner.poll_forever()))
        if ready is not None:
            ready()
        waiter = asyncio.ensure_future(stop.wait())
        watchdog = getattr(dataplane, "wait_failed", None)
        tasks = {waiter}
        if watchdog is not None:
            tasks.add(asyncio.ensure_future(watchdog()))
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in pending | background:
            task.cancel()
        if waiter not in done:
            log.error("the data plane failed: stopping (the host stays fail-closed)")
            status = 1
    finally:
        log.info("stopping: deleting SAs")
        daemon.close()
        await asyncio.sleep(0.1)  # let the Delete notifications leave
        await control.close()
        network.close()
        dataplane.close()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
    return status


def main(config_path: str) -> int:
    """Entry point of ``pyipsec daemon``: validates first, then runs in the foreground."""
    config = load_config(config_path)  # a ConfigError here is one clear line from the CLI
    setup_logging(config.log_level)
    return asyncio.run(run(config_path))
