"""The daemon's fallback timer carried out on fakes (decisions: test_dynamic.py)."""

from __future__ import annotations

import asyncio

from daemonfakes import FakeDataplane
from pyipsec.daemon.duplicates import Duplicates
from pyipsec.daemon.dynamic import Fallbacks
from pyipsec.daemon.housekeeping import Housekeeping, Pending
from pyipsec.daemon.tables import Counters


class _Host(Housekeeping):
    def __init__(self, loop: asyncio.AbstractEventLoop, now: list[float]) -> None:
        self.loop = loop
        self.clock = lambda: now[0]
        self.dataplane = FakeDataplane()
        self.counters = Counters()
        self.fallbacks = Fallbacks(retry=60.0)
        self.duplicates = Duplicates()
        self.ike_sas, self.child_sas = {}, {}
        self.closed = False
        self._pending = {}
        self._fallback_timer = self._duplicate_timer = self._duplicate_at = None
        self.initiated: list[tuple[str, str, str, str]] = []
        self.emitted: list[tuple[str, dict]] = []
        self.pumps = 0

    def initiate_to(self, conn: str, child: str, local: str, remote: str) -> None:
        self.initiated.append((conn, child, local, remote))

    def _pump(self) -> None:
        self.pumps += 1

    def _emit(self, kind: str, **fields) -> None:
        self.emitted.append((kind, fields))


def test_fallback_then_background_retry_on_the_timer() -> None:
    loop = asyncio.new_event_loop()
    now = [100.0]
    try:
        host = _Host(loop, now)
        host.fallbacks.negotiating("any", "all", "10.0.0.5", "192.0.2.7", 3.0, now[0])
        host._pending[("any", "all", "192.0.2.7")] = Pending("any", "all", now[0], "192.0.2.7")
        host._arm_fallbacks(now[0])
        assert host._fallback_timer is not None
        now[0] = 103.0
        host._on_fallback()
        assert host.dataplane.bypasses == {("any/all", "192.0.2.7")}
        assert host.counters.unsecured_fallbacks == 1
        assert host.emitted == [("fallback", {"name": "any/all", "remote": "192.0.2.7"})]
        assert host.initiated == [] and host._fallback_timer is not None  # retry armed
        now[0] = 163.0
        host._on_fallback()  # the retry: the pending attempt is forgotten, IKE again
        assert host.initiated == [("any", "all", "10.0.0.5", "192.0.2.7")]
        assert ("any", "all", "192.0.2.7") not in host._pending
        assert host.dataplane.bypasses == {("any/all", "192.0.2.7")}  # clear text goes on
        assert host.counters.unsecured_fallbacks == 1
        host.closed = True
        host._on_fallback()  # a closed daemon does nothing
        assert len(host.initiated) == 1
    finally:
        loop.close()
