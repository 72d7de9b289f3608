"""IKE SA and Child SA state machines as data (transition tables), per role.

``transition(kind, role, state, event)`` returns the next state or raises
pyipsec.errors.StateError naming role, state and event. The tables are the single source of
truth for what each side may do in each state: an IKE SA only processes exchanges its table
allows (e.g. no CREATE_CHILD_SA before IKE_AUTH completed).
"""

from __future__ import annotations

from enum import StrEnum

from pyipsec.errors import StateError


class IkeState(StrEnum):
    """IKE SA states."""

    IDLE = "idle"  # created, nothing sent
    INIT_SENT = "init_sent"  # initiator: IKE_SA_INIT request sent
    INIT_DONE = "init_done"  # IKE_SA_INIT completed (keys derived), no IKE_AUTH yet
    INTERMEDIATE = "intermediate"  # IKE_INTERMEDIATE exchanges in progress
    AUTH_SENT = "auth_sent"  # initiator: IKE_AUTH request sent
    ESTABLISHED = "established"
    REKEYING = "rekeying"  # IKE SA rekey (CREATE_CHILD_SA) in progress
    DELETING = "deleting"  # Delete of the IKE SA sent
    CLOSED = "closed"


class ChildState(StrEnum):
    """Child SA states."""

    CREATING = "creating"
    INSTALLED = "installed"
    REKEYING = "rekeying"  # we started a rekey of this SA
    REKEYED = "rekeyed"  # replaced, waiting for its deletion
    DELETING = "deleting"
    DELETED = "deleted"


ROLE_I, ROLE_R = "initiator", "responder"
S = IkeState

# events common to both roles once established
_ESTABLISHED = {
    "create_child": S.ESTABLISHED,
    "rekey_child": S.ESTABLISHED,
    "delete_child": S.ESTABLISHED,
    "recv_create_child": S.ESTABLISHED,
    "recv_informational": S.ESTABLISHED,
    "dpd": S.ESTABLISHED,
    "rekey_ike": S.REKEYING,
    "recv_rekey_ike": S.REKEYING,
    "delete_ike": S.DELETING,
    "recv_delete_ike": S.CLOSED,
    "timeout": S.CLOSED,
    "expire": S.CLOSED,
}
_REKEYING = {
    "create_child": S.REKEYING,
    "rekey_child": S.REKEYING,
    "delete_child": S.REKEYING,
    "recv_create_child": S.REKEYING,
    "recv_rekey_ike": S.REKEYING,
    "recv_informational": S.REKEYING,
    "dpd": S.REKEYING,
    "rekey_done": S.CLOSED,  # the old SA goes once its successor exists
    "rekey_failed": S.ESTABLISHED,
    "delete_ike": S.DELETING,
    "recv_delete_ike": S.CLOSED,
    "timeout": S.CLOSED,
    "expire": S.CLOSED,
}
_DELETING = {
    "recv_informational": S.DELETING,
    "recv_create_child": S.DELETING,
    "recv_delete_ike": S.CLOSED,
    "delete_done": S.CLOSED,
    "timeout": S.CLOSED,
    "expire": S.CLOSED,
    "delete_ike": S.DELETING,
}

IKE_TABLE: dict[str, dict[IkeState, dict[str, IkeState]]] = {
    ROLE_I: {
        S.IDLE: {"send_init": S.INIT_SENT, "established_by_rekey": S.ESTABLISHED},
        S.INIT_SENT: {
            "recv_init_response": S.INIT_DONE,
            "retry_init": S.INIT_SENT,  # COOKIE / INVALID_KE_PAYLOAD
            "fail": S.CLOSED,
            "timeout": S.CLOSED,
            "delete_ike": S.CLOSED,
        },
        S.INIT_DONE: {
            "send_intermediate": S.INTERMEDIATE,
            "send_auth": S.AUTH_SENT,
            "fail": S.CLOSED,
            "delete_ike": S.CLOSED,
        },
        S.INTERMEDIATE: {
            "recv_intermediate_response": S.INTERMEDIATE,
            "send_intermediate": S.INTERMEDIATE,
            "send_auth": S.AUTH_SENT,
            "fail": S.CLOSED,
            "timeout": S.CLOSED,
            "delete_ike": S.CLOSED,
        },
        S.AUTH_SENT: {
            "recv_auth_response": S.ESTABLISHED,
            "fail": S.CLOSED,
            "timeout": S.CLOSED,
            "delete_ike": S.CLOSED,
        },
        S.ESTABLISHED: dict(_ESTABLISHED),
        S.REKEYING: dict(_REKEYING),
        S.DELETING: dict(_DELETING),
        S.CLOSED: {},
    },
    ROLE_R: {
        S.IDLE: {"recv_init_request": S.INIT_DONE, "established_by_rekey": S.ESTABLISHED},
        S.INIT_DONE: {
            "recv_intermediate_request": S.INTERMEDIATE,
            "recv_auth_request": S.ESTABLISHED,
            "fail": S.CLOSED,
            "timeout": S.CLOSED,
            "delete_ike": S.CLOSED,
        },
        S.INTERMEDIATE: {
            "recv_intermediate_request": S.INTERMEDIATE,
            "recv_auth_request": S.ESTABLISHED,
            "fail": S.CLOSED,
            "timeout": S.CLOSED,
            "delete_ike": S.CLOSED,
        },
        S.ESTABLISHED: dict(_ESTABLISHED),
        S.REKEYING: dict(_REKEYING),
        S.DELETING: dict(_DELETING),
        S.CLOSED: {},
    },
}

C = ChildState
CHILD_TABLE: dict[str, dict[ChildState, dict[str, ChildState]]] = {}
for _role in (ROLE_I, ROLE_R):
    CHILD_TABLE[_role] = {
        C.CREATING: {"install": C.INSTALLED, "fail": C.DELETED},
        C.INSTALLED: {
            "rekey": C.REKEYING,
            "rekeyed": C.REKEYED,
            "delete": C.DELETING,
            "recv_delete": C.DELETED,
            "expire": C.DELETED,
        },
        C.REKEYING: {
            "rekeyed": C.REKEYED,
            "rekey_failed": C.INSTALLED,
            "delete": C.DELETING,
            "recv_delete": C.DELETED,
            "expire": C.DELETED,
        },
        C.REKEYED: {
            "delete": C.DELETING,
            "recv_delete": C.DELETED,
            "expire": C.DELETED,
        },
        C.DELETING: {"recv_delete": C.DELETED, "deleted": C.DELETED, "expire": C.DELETED},
        C.DELETED: {},
    }


def ike_transition(role: str, state: IkeState, event: str) -> IkeState:
    """Next IKE SA state; StateError if ``event`` is impossible in ``state`` for ``role``."""
    try:
        return IKE_TABLE[role][state][event]
    except KeyError:
        raise StateError(role=role, state=state.value, event=event) from None


def child_transition(role: str, state: ChildState, event: str) -> ChildState:
    """Next Child SA state; StateError if impossible."""
    try:
        return CHILD_TABLE[role][state][event]
    except KeyError:
        raise StateError(role=role, state=state.value, event=event) from None


def ike_allows(role: str, state: IkeState, event: str) -> bool:
    return event in IKE_TABLE[role].get(state, {})
