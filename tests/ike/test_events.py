import dataclasses

import pytest

from pyipsec.ike.events import ChildSaInstalled, IkeSaDown
from pyipsec.ike.ts import host_ts


def test_events_frozen_and_keys_hidden():
    ev = ChildSaInstalled(
        1,
        "c",
        "esp",
        "transport",
        0x1000,
        0x2000,
        "aes128gcm16",
        b"\x11" * 20,
        b"\x22" * 20,
        True,
        (host_ts("10.0.0.1"),),
        (host_ts("10.0.0.2"),),
        3600.0,
        3960.0,
        0,
        0,
        False,
        "10.0.0.1",
        "10.0.0.2",
    )
    text = repr(ev)
    assert "11111111" not in text and "\\x11" not in text and "inbound_key" not in text
    with pytest.raises(dataclasses.FrozenInstanceError):
        ev.child = "x"
    assert IkeSaDown(1, "p", "dead peer").reason == "dead peer"
    # the IKE ports come last, with the NAT-T port as default (older callers stay valid)
    assert (ev.remote_port, ev.local_port) == (4500, 4500)
    moved = dataclasses.replace(ev, remote_port=31000)
    assert moved.remote_port == 31000 and moved.inbound_spi == ev.inbound_spi
    assert [f.name for f in dataclasses.fields(ChildSaInstalled)][-2:] == [
        "remote_port",
        "local_port",
    ]
