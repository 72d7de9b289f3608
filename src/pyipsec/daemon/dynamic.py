"""Connections toward many hosts: opportunistic negotiation and the unsecured fallback.

Most connections name one peer address. Three policies of the Windows tradition need
more (see :mod:`pyipsec.policy.presets`):

* **opportunistic** ("Secure Server", "Server (Request Security)"): a connection whose
  ``remote_addrs`` is ``%any`` (or a subnet) protects traffic with *every* host it
  covers. The first packet to host X is held and acquired; the daemon negotiates with
  X (the acquire's destination becomes the IKE peer) and proposes traffic selectors
  narrowed to the packet's two hosts (:func:`narrow_child`; RFC 7296 section 2.9:
  the initiator's first selector is the triggering packet's).
* **respond only** (the default response rule): a connection for ``%any`` that never
  initiates and answers whoever asks, with ``dynamic`` selectors.
* **unsecured fallback** (``allow_unsecured_fallback``): when negotiation with X has not
  produced a Child SA after a few seconds, X is a host without IPsec: traffic with it
  goes in clear (a BYPASS entry for X) until IPsec with X works. The fallback is
  re-examined every :data:`FALLBACK_RETRY` seconds by a background negotiation, so a
  host that gains IPsec gets protected without anybody noticing a pause.

Child SAs of such connections get one data-plane child per peer,
``<connection>/<child>@<address>`` (:func:`dataplane_child`), whose PROTECT entries come
from the negotiated selectors and sit just before the connection's own entries (see
:mod:`pyipsec.daemon.dataplane`). This module is pure: :class:`Fallbacks` takes ``now``
and says what to do; the daemon core does it.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass

from pyipsec.ike.config import ChildConfig, PeerConfig
from pyipsec.ike.ts import TsRange, host_ts, intersect, parse_ts

__all__ = [
    "FALLBACK_RETRY",
    "FallbackAction",
    "Fallbacks",
    "dataplane_child",
    "is_dynamic",
    "narrow_child",
    "peer_for",
]

FALLBACK_RETRY = 300.0  #: seconds between background negotiations with a fallen-back host
FALLBACK_LIMIT = 4096  #: hosts tracked at most (the oldest idle attempt is forgotten first)


def is_dynamic(peer: PeerConfig) -> bool:
    """Whether ``peer`` covers more than one host (``%any``, a subnet, a range, several)."""
    if len(peer.remote_addrs) != 1:
        return True
    text = peer.remote_addrs[0]
    if text == "%any":
        return True
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return True
    return False


def dataplane_child(peer: PeerConfig, child: str, remote: str) -> str:
    """The data plane's name of a Child SA: one per peer host for dynamic connections."""
    if is_dynamic(peer):
        return f"{peer.name}/{child}@{remote}"
    return f"{peer.name}/{child}"


def peer_for(peer: PeerConfig, remote: str) -> PeerConfig:
    """``peer`` aimed at the one host ``remote`` (same name, so events map back)."""
    return dataclasses.replace(peer, remote_addrs=(remote,))


def _narrow(texts: tuple[str, ...], host: str, key: str) -> tuple[str, ...]:
    """The selectors of ``texts`` that contain ``host``, shrunk to that host (keeping
    their protocol and ports); ``dynamic`` becomes the host itself."""
    point = host_ts(host)
    out: list[str] = []
    for text in texts:
        ts = parse_ts(text, key=key)
        if ts is None:
            out.append(str(point))
            continue
        meet = intersect(ts, TsRange(point.start_addr, point.end_addr))
        if meet is not None:
            out.append(str(meet))
    return tuple(dict.fromkeys(out))


def narrow_child(child: ChildConfig, local: str, remote: str) -> ChildConfig | None:
    """``child`` with its selectors narrowed to the hosts ``local`` and ``remote`` (the
    packet that triggered the negotiation); None when the packet is outside them."""
    local_ts = _narrow(child.local_ts, local, "local_ts")
    remote_ts = _narrow(child.remote_ts, remote, "remote_ts")
    if not local_ts or not remote_ts:
        return None
    return dataclasses.replace(child, local_ts=local_ts, remote_ts=remote_ts)


@dataclass
class _Host:
    connection: str
    child: str
    local: str  #: our address in the triggering packet
    remote: str  #: the peer host
    deadline: float  #: when to act next
    bypassed: bool = False  #: clear text allowed now
    since: float = 0.0  #: when the fallback started (bypassed) or negotiation began


@dataclass(frozen=True)
class FallbackAction:
    """What the daemon must do for one host now.

    kind: "bypass" (negotiation failed for ``seconds``: let the traffic pass in clear)
    or "retry" (a fallen-back host: negotiate again in the background, keep the bypass).
    """

    kind: str
    connection: str
    child: str
    local: str
    remote: str


class Fallbacks:
    """The unsecured-fallback state of every host a fallback-capable child negotiated with."""

    def __init__(self, retry: float = FALLBACK_RETRY, limit: int = FALLBACK_LIMIT) -> None:
        self.retry = retry
        self.limit = limit
        self._hosts: dict[tuple[str, str, str], _Host] = {}

    def negotiating(
        self, connection: str, child: str, local: str, remote: str, seconds: float, now: float
    ) -> None:
        """A negotiation with ``remote`` started; fall back if no SA after ``seconds``."""
        key = (connection, child, remote)
        if key in self._hosts:
            return
        if len(self._hosts) >= self.limit:
            oldest = min(
                (k for k, h in self._hosts.items() if not h.bypassed),
                key=lambda k: self._hosts[k].since,
                default=None,
            )
            if oldest is None:
                return  # every slot holds an active fallback: stay fail-closed
            del self._hosts[oldest]
        self._hosts[key] = _Host(connection, child, local, remote, now + seconds, since=now)

    def protected(self, connection: str, child: str, remote: str) -> bool:
        """A Child SA with ``remote`` is up: forget the host. True if it was bypassed
        (the BYPASS entry must go)."""
        host = self._hosts.pop((connection, child, remote), None)
        return host is not None and host.bypassed

    def forget_connection(self, connection: str) -> list[tuple[str, str]]:
        """The connection is gone (reload): drop its hosts; returns the bypassed
        (child, remote) pairs whose entries must go."""
        gone = [k for k in self._hosts if k[0] == connection]
        out = [(k[1], k[2]) for k in gone if self._hosts[k].bypassed]
        for k in gone:
            del self._hosts[k]
        return out

    def due(self, now: float) -> list[FallbackAction]:
        """Actions whose time has come (and their next deadlines set)."""
        out: list[FallbackAction] = []
        for host in self._hosts.values():
            if host.deadline > now:
                continue
            out.append(
                FallbackAction(
                    "retry" if host.bypassed else "bypass",
                    host.connection,
                    host.child,
                    host.local,
                    host.remote,
                )
            )
            if not host.bypassed:
                host.bypassed = True
                host.since = now
            host.deadline = now + self.retry
        return out

    def next_deadline(self) -> float | None:
        return min((h.deadline for h in self._hosts.values()), default=None)

    def active(self) -> list[dict[str, object]]:
        """Hosts talked to in clear now, for the status report."""
        return [
            {"connection": h.connection, "child": h.child, "remote": h.remote, "since": h.since}
            for h in self._hosts.values()
            if h.bypassed
        ]
