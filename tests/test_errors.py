from pyipsec.errors import ConfigError, IntegrityError, ProtocolError, StateError


def test_config_error_names_file_line_and_key() -> None:
    err = ConfigError("must be a positive integer", key="lifetime.bytes", file="a.yaml", line=7)
    assert str(err) == "a.yaml:7: lifetime.bytes: must be a positive integer"
    assert err.key == "lifetime.bytes"


def test_packet_errors_carry_their_counter() -> None:
    assert IntegrityError("icv").counter == "packets_not_authenticated"


def test_protocol_error_carries_notify() -> None:
    assert ProtocolError("bad", notify=14).notify == 14


def test_state_error_names_role_state_event() -> None:
    assert "initiator" in str(StateError(role="initiator", state="IDLE", event="X"))
