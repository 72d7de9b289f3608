import pytest

from pyipsec.errors import StateError
from pyipsec.ike.state import (
    IKE_TABLE,
    ChildState,
    IkeState,
    child_transition,
    ike_allows,
    ike_transition,
)

INI, R = "initiator", "responder"


def test_initiator_happy_path():
    s = IkeState.IDLE
    for ev in ("send_init", "recv_init_response", "send_auth", "recv_auth_response"):
        s = ike_transition(INI, s, ev)
    assert s == IkeState.ESTABLISHED
    s = ike_transition(INI, s, "rekey_ike")
    assert s == IkeState.REKEYING
    assert ike_transition(INI, s, "rekey_done") == IkeState.CLOSED


def test_responder_happy_path():
    s = ike_transition(R, IkeState.IDLE, "recv_init_request")
    s = ike_transition(R, s, "recv_intermediate_request")
    assert ike_transition(R, s, "recv_auth_request") == IkeState.ESTABLISHED


@pytest.mark.parametrize(
    "role,state,event",
    [
        (INI, IkeState.IDLE, "recv_auth_response"),
        (R, IkeState.INIT_DONE, "send_auth"),
        (R, IkeState.IDLE, "recv_create_child"),
        (INI, IkeState.INIT_SENT, "create_child"),
        (INI, IkeState.CLOSED, "recv_informational"),
    ],
)
def test_impossible_transitions_name_role_state_event(role, state, event):
    with pytest.raises(StateError) as ei:
        ike_transition(role, state, event)
    assert (ei.value.role, ei.value.state, ei.value.event) == (role, state.value, event)
    assert role in str(ei.value) and event in str(ei.value)
    assert not ike_allows(role, state, event)


def test_every_target_state_is_known():
    for role in IKE_TABLE:
        for table in IKE_TABLE[role].values():
            for target in table.values():
                assert target in IKE_TABLE[role]


def test_child_states():
    s = child_transition(INI, ChildState.CREATING, "install")
    s = child_transition(INI, s, "rekey")
    s = child_transition(INI, s, "rekeyed")
    assert child_transition(INI, s, "delete") == ChildState.DELETING
    with pytest.raises(StateError):
        child_transition(R, ChildState.DELETED, "install")
