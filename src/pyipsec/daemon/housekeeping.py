"""The daemon's timers for hosts and duplicates: unsecured fallbacks, duplicate IKE SAs.

A mixin of :class:`pyipsec.daemon.core.Daemon`. The decisions are pure and live in
:mod:`pyipsec.daemon.dynamic` (which hosts fall back to clear text, when to retry) and
:mod:`pyipsec.daemon.duplicates` (which of two IKE SAs to the same peer stays, who
deletes the other); this module arms the timers and carries the decisions out.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pyipsec.daemon.config import DaemonConfig
from pyipsec.daemon.duplicates import Duplicates, child_to_move
from pyipsec.daemon.dynamic import Fallbacks
from pyipsec.daemon.tables import ChildSaRow, Counters, IkeSaRow
from pyipsec.errors import PyipsecError

if TYPE_CHECKING:
    from pyipsec.daemon.core import Dataplane
    from pyipsec.ike.endpoint import IkeEndpoint

log = logging.getLogger("pyipsec.daemon")


@dataclass
class Pending:
    """A connection being brought up, so acquires don't start it twice."""

    peer: str
    child: str
    since: float
    remote: str = ""  #: the host, for connections toward many hosts


class Housekeeping:
    """Fallback and duplicate timers of the daemon (see the module doc)."""

    config: DaemonConfig
    endpoint: IkeEndpoint
    dataplane: Dataplane
    loop: asyncio.AbstractEventLoop
    clock: Callable[[], float]
    counters: Counters
    ike_sas: dict[int, IkeSaRow]
    child_sas: dict[int, ChildSaRow]
    closed: bool
    fallbacks: Fallbacks
    duplicates: Duplicates
    _pending: dict[tuple[str, str, str], Pending]
    _fallback_timer: asyncio.TimerHandle | None
    _duplicate_timer: asyncio.TimerHandle | None
    _duplicate_at: float | None
    initiate_to: Callable[[str, str, str, str], None]  #: the core's
    _pump: Callable[[], None]  #: the core's
    _emit: Callable[..., None]  #: the core's

    def _arm_fallbacks(self, now: float) -> None:
        when = self.fallbacks.next_deadline()
        if self._fallback_timer is not None:
            self._fallback_timer.cancel()
            self._fallback_timer = None
        if when is not None and not self.closed:
            self._fallback_timer = self.loop.call_later(max(0.0, when - now), self._on_fallback)

    def _on_fallback(self) -> None:
        """Hosts that did not answer IKE in time talk in clear; fallen-back hosts get a
        background negotiation (the BYPASS entry stays until a Child SA is up)."""
        self._fallback_timer = None
        if self.closed:
            return
        now = self.clock()
        for action in self.fallbacks.due(now):
            name = f"{action.connection}/{action.child}"
            if action.kind == "bypass":
                self.dataplane.add_bypass(name, action.remote)
                self.counters.unsecured_fallbacks += 1
                log.warning(
                    "no IPsec with %s after the fallback delay: %s traffic with it passes in "
                    "clear (allow_unsecured_fallback)",
                    action.remote,
                    name,
                )
                self._emit("fallback", name=name, remote=action.remote)
            else:
                self._pending.pop((action.connection, action.child, action.remote), None)
                self.initiate_to(action.connection, action.child, action.local, action.remote)
        self._pump()
        self._arm_fallbacks(now)

    def _arm_duplicates(self, when: float, now: float) -> None:
        """Look at duplicate IKE SAs at ``when`` (or earlier, if already due then)."""
        if self.closed or (self._duplicate_at is not None and self._duplicate_at <= when):
            return
        if self._duplicate_timer is not None:
            self._duplicate_timer.cancel()
        self._duplicate_at = when
        self._duplicate_timer = self.loop.call_later(max(0.0, when - now), self._on_duplicates)

    def _on_duplicates(self) -> None:
        """Delete the duplicate IKE SAs this side must delete (see
        :mod:`pyipsec.daemon.duplicates`), after moving children the keeper lacks."""
        self._duplicate_timer = self._duplicate_at = None
        if self.closed:
            return
        now = self.clock()
        actions, when = self.duplicates.resolve(self.ike_sas, self.child_sas, now)
        for action in actions:
            row, keeper = self.ike_sas[action.ike_sa], self.ike_sas[action.keeper]
            try:
                if action.kind == "move":
                    self._move_children(keeper, action.children, now)
                    continue
                self.endpoint.delete_ike(action.ike_sa, now)
            except PyipsecError as exc:
                log.warning("resolving duplicate IKE SA [%d] failed: %s", action.ike_sa, exc)
                continue
            self.counters.duplicate_ike_sas_deleted += 1
            log.info(
                "deleting duplicate IKE SA %s[%d] with %s (SPIs %s_i %s_r, %s): "
                "keeping [%d] (SPIs %s_i %s_r, the lower pair)",
                row.name,
                action.ike_sa,
                row.remote_addr,
                row.spi_i,
                row.spi_r,
                "ours" if row.initiator else "the peer's",
                action.keeper,
                keeper.spi_i,
                keeper.spi_r,
            )
            self._emit("duplicate-deleted", name=row.name, ike_sa=action.ike_sa,
                       keeper=action.keeper)  # fmt: skip
        self._pump()
        if when is not None:
            self._arm_duplicates(when, now)

    def _move_children(self, keeper: IkeSaRow, children: tuple[str, ...], now: float) -> None:
        """Negotiate ``children`` inside the IKE SA that stays, before its duplicate goes."""
        peer = self.config.endpoint.peer(keeper.name)
        for name in children if peer is not None else ():
            child, remote = child_to_move(peer, keeper, name)
            if child is None:
                continue
            log.info("negotiating child %s inside IKE SA %s[%d] that stays",
                     name, keeper.name, keeper.handle)  # fmt: skip
            self.endpoint.create_child(keeper.handle, child, now)
            self._pending[(keeper.name, name, remote)] = Pending(keeper.name, name, now, remote)
