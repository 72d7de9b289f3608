"""The daemon's commands: status, statistics, up/down/rekey by name, reload.

A mixin of :class:`pyipsec.daemon.core.Daemon`, kept apart so that the core stays about
driving the IKE endpoint and the data plane; the control server calls these.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pyipsec.daemon.config import DaemonConfig
from pyipsec.daemon.dynamic import Fallbacks
from pyipsec.daemon.tables import ChildSaRow, Counters, Failure, IkeSaRow, status_report
from pyipsec.errors import ConfigError

if TYPE_CHECKING:
    from pyipsec.daemon.core import Dataplane
    from pyipsec.ike.endpoint import IkeEndpoint

log = logging.getLogger("pyipsec.daemon")


class Commands:
    """What an administrator asks a running daemon (through the control socket)."""

    config: DaemonConfig
    endpoint: IkeEndpoint
    dataplane: Dataplane
    clock: Callable[[], float]
    started: float
    counters: Counters
    ike_sas: dict[int, IkeSaRow]
    child_sas: dict[int, ChildSaRow]
    failures: deque[Failure]
    fallbacks: Fallbacks
    initiate: Callable[..., None]  #: the core's: bring up a connection (or one child)
    _pump: Callable[[], None]  #: the core's: send, handle events, re-arm the timer

    def status(self) -> dict[str, Any]:
        """The SA tables and recent failures, as the control API returns them."""
        return status_report(
            now=self.clock(),
            started=self.started,
            ike_sas=self.ike_sas,
            child_sas=self.child_sas,
            failures=self.failures,
            per_spi=self.dataplane.sa_statistics(),
            fallbacks=self.fallbacks.active(),
        )

    def statistics(self) -> dict[str, Any]:
        stats: dict[str, Any] = dict(vars(self.counters))
        stats["active_ike_sas"] = len(self.ike_sas)
        stats["active_child_sas"] = len(self.child_sas)
        stats["active_fallbacks"] = len(self.fallbacks.active())
        stats.update(self.dataplane.statistics())
        return stats

    def find_ike_sas(self, name: str) -> list[int]:
        """IKE SA handles of connection ``name`` (or of the one holding child ``name``)."""
        handles = [h for h, row in self.ike_sas.items() if row.name == name]
        if not handles:
            handles = sorted({c.ike_sa for c in self.child_sas.values() if c.name == name})
        return handles

    def command_up(self, name: str) -> str:
        for peer in self.config.endpoint.peers:
            if peer.name == name:
                self.initiate(peer.name, peer.children[0].name if peer.children else None)
                self._pump()
                return f"initiating {name}"
            if peer.child(name) is not None:
                self.initiate(peer.name, name)
                self._pump()
                return f"initiating {peer.name}/{name}"
        raise ConfigError(f"no connection or child named {name!r}")

    def command_down(self, name: str) -> str:
        now = self.clock()
        is_child = any(c.name == name for c in self.child_sas.values()) and not any(
            row.name == name for row in self.ike_sas.values()
        )
        if is_child:
            for child in [c for c in self.child_sas.values() if c.name == name]:
                self.endpoint.delete_child(child.ike_sa, child.spi_in, now)
            self._pump()
            return f"deleting child {name}"
        handles = self.find_ike_sas(name)
        if not handles:
            raise ConfigError(f"no SA named {name!r} is up")
        for handle in handles:
            self.endpoint.delete_ike(handle, now)
        self._pump()
        return f"deleting {len(handles)} IKE SA(s) of {name}"

    def command_rekey(self, name: str) -> str:
        now = self.clock()
        children = [c for c in self.child_sas.values() if c.name == name]
        if children:
            for child in children:
                self.endpoint.rekey_child(child.ike_sa, child.spi_in, now)
            self._pump()
            return f"rekeying child {name}"
        handles = self.find_ike_sas(name)
        if not handles:
            raise ConfigError(f"no SA named {name!r} is up")
        for handle in handles:
            self.endpoint.rekey_ike(handle, now)
        self._pump()
        return f"rekeying IKE SA of {name}"

    def reload(self, new: DaemonConfig) -> dict[str, list[str]]:
        """Apply a new, already validated configuration.

        Connections whose configuration is unchanged keep their SAs; changed or removed
        ones are deleted (and changed ones come back under the new settings); new ones
        are started according to their start actions.
        """
        old_peers = {p.name: p for p in self.config.endpoint.peers}
        new_peers = {p.name: p for p in new.endpoint.peers}
        kept = [n for n in new_peers if n in old_peers and old_peers[n] == new_peers[n]]
        changed = [n for n in new_peers if n in old_peers and n not in kept]
        removed = [n for n in old_peers if n not in new_peers]
        added = [n for n in new_peers if n not in old_peers]
        now = self.clock()
        for name in changed + removed:
            for handle in self.find_ike_sas(name):
                self.endpoint.delete_ike(handle, now)
            for child, remote in self.fallbacks.forget_connection(name):
                self.dataplane.remove_bypass(f"{name}/{child}", remote)
        self._pump()
        self.config = new
        self.endpoint.config = new.endpoint  # responders match peers against the new set
        self.dataplane.set_policies(new)
        for name in changed + added:
            for child in new_peers[name].children:
                if child.start_action == "start":
                    self.initiate(name, child.name)
        self.counters.reloads += 1
        self._pump()
        log.info(
            "configuration reloaded: kept %s, changed %s, added %s, removed %s",
            kept,
            changed,
            added,
            removed,
        )
        return {"kept": kept, "changed": changed, "added": added, "removed": removed}
