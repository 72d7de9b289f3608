"""One IKE SA per peer: resolving the duplicates of a simultaneous initiation.

When both hosts initiate to each other at once (both connections ``start_action:
start``, traffic trapped in both directions, two "Secure Server" hosts sending their first
packets together), each side ends with two IKE SAs to the same peer, one it initiated and
one it answered, each with a Child SA pair for the same child. Traffic flows (the data
plane sends on the newest outbound SA of a child) but every rekey and DPD runs twice and
the SA tables show noise. RFC 7296 leaves this alone (2.8.1/2.8.2 resolve *rekey*
collisions only), so both daemons apply one rule that each reaches from its own tables,
without talking:

**The rule.** IKE SAs are duplicates when they belong to the same connection and have
the same remote address, remote IKE port and authenticated remote identity (a connection
toward many hosts has one IKE SA per host; two hosts behind one NAT share an address but
get different ports). Of a set of duplicates the one with the numerically lowest
(initiator SPI, responder SPI) pair stays. Both sides see the same SPIs for every SA
(NAT-proof, unlike addresses), so both name the same keeper. Every other SA is deleted
(RFC 7296 Delete) by the side that *initiated* it, :data:`GRACE` seconds after the later
of the two came up, so a Child SA being created inside the duplicate is not torn down
mid-exchange. The side that answered it deletes it only if it is still there
:data:`RESPONDER_GRACE` seconds later (a peer that does not apply the rule, e.g.
strongSwan): both sides may then delete the *same* SA, which RFC 7296 handles (each
answers the other's Delete), but never each other's, so the keeper survives.

**Traffic never stops.** The duplicate goes only once the keeper carries every child the
duplicate carries (the data plane's older SA of the child then takes over outbound
traffic). If the keeper lacks one (e.g. each side trapped a different child), the deleting
side first negotiates it inside the keeper (``move``) and deletes the duplicate once it is
installed, or after :data:`MOVE_WAIT` seconds at the latest.

This module is pure: :class:`Duplicates` reads the daemon's tables and ``now`` and says
what to do; :mod:`pyipsec.daemon.core` does it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from pyipsec.daemon.dynamic import is_dynamic, narrow_child
from pyipsec.daemon.tables import ChildSaRow, IkeSaRow
from pyipsec.ike.config import ChildConfig, PeerConfig

__all__ = [
    "GRACE",
    "MOVE_WAIT",
    "RESPONDER_GRACE",
    "DuplicateAction",
    "Duplicates",
    "child_to_move",
    "preferred",
]

GRACE = 2.0  #: seconds before the initiator of a duplicate deletes it
RESPONDER_GRACE = 10.0  #: seconds before the side that answered it deletes it instead
MOVE_WAIT = 6.0  #: seconds to wait for children negotiated inside the keeper


def sa_order(row: IkeSaRow) -> tuple[int, int]:
    """The order of the rule: (initiator SPI, responder SPI) as numbers."""
    return (int(row.spi_i or "0", 16), int(row.spi_r or "0", 16))


def group_key(row: IkeSaRow) -> tuple[str, str, int, str]:
    """IKE SAs with equal keys are duplicates: (connection, remote address, remote port,
    remote identity)."""
    return (row.name, row.remote_addr, row.remote_port, row.remote_id)


def preferred(ike_sas: Mapping[int, IkeSaRow], handles: Iterable[int]) -> int | None:
    """Of ``handles`` the one the rule keeps (new Child SAs go there); None if empty."""
    known = [h for h in handles if h in ike_sas]
    return min(known, key=lambda h: sa_order(ike_sas[h])) if known else None


def child_to_move(peer: PeerConfig, keeper: IkeSaRow, name: str) -> tuple[ChildConfig | None, str]:
    """Child ``name`` of ``peer`` as it is negotiated inside ``keeper`` (narrowed to the
    two hosts for a connection toward many hosts), and the host it is pending for ("" for
    a connection with one peer); (None, ...) when the child is not configured (any more)."""
    configured = peer.child(name)
    if configured is None:
        return None, ""
    if not is_dynamic(peer):
        return configured, ""
    return narrow_child(configured, keeper.local_addr, keeper.remote_addr), keeper.remote_addr


@dataclass(frozen=True)
class DuplicateAction:
    """What the daemon must do about one duplicate IKE SA now.

    kind: "delete" (send an RFC 7296 Delete for ``ike_sa``) or "move" (negotiate the
    children named in ``children`` inside ``keeper`` first; the duplicate stays for now).
    ike_sa: the duplicate's handle. keeper: the handle of the IKE SA that stays.
    children: ChildConfig names (for "move"; for "delete" those the duplicate carried).
    """

    kind: str
    ike_sa: int
    keeper: int
    children: tuple[str, ...] = ()


class Duplicates:
    """Decides, from the SA tables, which duplicate IKE SAs to delete and when."""

    def __init__(
        self,
        grace: float = GRACE,
        responder_grace: float = RESPONDER_GRACE,
        move_wait: float = MOVE_WAIT,
    ) -> None:
        self.grace = grace
        self.responder_grace = responder_grace
        self.move_wait = move_wait
        #: (keeper handle, child name) -> when we asked for that child inside the keeper
        self._moves: dict[tuple[int, str], float] = {}
        self._deleted: set[int] = set()  #: duplicates whose Delete went out

    def has_duplicate(self, ike_sas: Mapping[int, IkeSaRow], handle: int) -> bool:
        """Whether IKE SA ``handle`` has a duplicate in ``ike_sas``."""
        row = ike_sas.get(handle)
        if row is None:
            return False
        key = group_key(row)
        return any(h != handle and group_key(r) == key for h, r in ike_sas.items())

    def resolve(
        self,
        ike_sas: Mapping[int, IkeSaRow],
        child_sas: Mapping[int, ChildSaRow],
        now: float,
    ) -> tuple[list[DuplicateAction], float | None]:
        """The actions due at ``now`` and when to look again (None: no duplicate left
        for which we will ever act)."""
        groups: dict[tuple[str, str, int, str], list[int]] = {}
        for handle, row in ike_sas.items():
            groups.setdefault(group_key(row), []).append(handle)
        children: dict[int, set[str]] = {}
        for child in child_sas.values():
            children.setdefault(child.ike_sa, set()).add(child.name)
        actions: list[DuplicateAction] = []
        wake: float | None = None

        def later(when: float) -> None:
            nonlocal wake
            wake = when if wake is None else min(wake, when)

        for handles in groups.values():
            if len(handles) < 2:
                continue
            keeper, *others = sorted(handles, key=lambda h: sa_order(ike_sas[h]))
            kept = ike_sas[keeper]
            for handle in others:
                if handle in self._deleted:
                    continue
                row = ike_sas[handle]
                wait = self.grace if row.initiator else self.responder_grace
                due = max(row.established, kept.established) + wait
                if now < due:
                    later(due)
                    continue
                carried = children.get(handle, set())
                missing = sorted(carried - children.get(keeper, set()))
                asked = [self._moves.get((keeper, name)) for name in missing]
                new = tuple(n for n, when in zip(missing, asked, strict=True) if when is None)
                if new:
                    for name in new:
                        self._moves[(keeper, name)] = now
                    actions.append(DuplicateAction("move", handle, keeper, new))
                    later(now + self.move_wait)
                    continue
                pending = [when + self.move_wait for when in asked if when is not None]
                if pending and now < max(pending):
                    later(max(pending))
                    continue
                actions.append(DuplicateAction("delete", handle, keeper, tuple(sorted(carried))))
                self._deleted.add(handle)
        self._deleted &= set(ike_sas)
        for key in [
            k for k in self._moves if k[0] not in ike_sas or k[1] in children.get(k[0], ())
        ]:
            del self._moves[key]
        return actions, wake
