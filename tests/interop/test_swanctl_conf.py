"""Tests of the generated strongSwan configuration (tests/swanctl_conf.py)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from swanctl_conf import (  # noqa: E402
    FAST_RETRANSMIT,
    Child,
    Connection,
    Psk,
    render_strongswan_conf,
    render_swanctl_conf,
)

OUTER_A, OUTER_B = "10.96.0.1", "10.96.0.2"
INNER_A, INNER_B = "10.96.1.1", "10.96.2.1"


def test_swanctl_conf_rendering_keeps_psk_out_of_repr() -> None:
    secret = bytes(range(32))
    psk = Psk(ids=("a@pyi", "b@pyi"), secret=secret)
    assert secret.hex() not in repr(psk)
    conn = Connection(
        name="t",
        local_addrs=[OUTER_A],
        remote_addrs=[OUTER_B],
        local_id="a@pyi",
        remote_id="b@pyi",
        children=[Child("t-c", [f"{INNER_A}/32"], [f"{INNER_B}/32"], rekey_time="30s")],
        dpd_delay="5s",
    )
    text = render_swanctl_conf([conn], [psk])
    assert f"secret = 0x{secret.hex()}" in text
    assert "esp_proposals = aes128gcm16" in text
    assert "encap = yes" in text
    assert "rekey_time = 30s" in text
    assert "dpd_delay = 5s" in text
    assert "certs" not in text  # no cert configured: no empty option written


def test_certificate_connection_options() -> None:
    conn = Connection(
        name="c",
        local_addrs=[OUTER_A],
        remote_addrs=[OUTER_B],
        local_id="a.pyi.test",
        remote_id="b.pyi.test",
        children=[Child("c-c", ["0.0.0.0/0"], ["10.0.0.0/8", "fd99::/16"], start_action="trap")],
        auth="pubkey",
        local_cert="a.pem",
        send_cert="always",
        remote_cacerts="root.pem",
        ike_proposals=["aes256-sha256-modp2048", "chacha20poly1305-prfsha256-curve448"],
        fragmentation="force",
    )
    text = render_swanctl_conf([conn], [])
    assert "certs = a.pem" in text
    assert "send_cert = always" in text
    assert "cacerts = root.pem" in text
    assert "proposals = aes256-sha256-modp2048,chacha20poly1305-prfsha256-curve448" in text
    assert "remote_ts = 10.0.0.0/8,fd99::/16" in text
    assert "start_action = trap" in text
    assert "fragmentation = force" in text
    assert text.count("auth = pubkey") == 2
    assert "secret =" not in text


def test_strongswan_conf_plugins_marks_and_retransmit(tmp_path: Path) -> None:
    text = render_strongswan_conf(tmp_path, retransmit=FAST_RETRANSMIT)
    load = next(line for line in text.splitlines() if line.strip().startswith("load = random"))
    assert load.index("kernel-libipsec") < load.index("kernel-netlink")
    assert "fwmark = 0x42" in text and "fwmark = !0x42" in text
    assert "allow_peer_ts = yes" in text
    assert f"socket = unix://{tmp_path}/charon.vici" in text
    assert "retransmit_tries = 2" in text and "retransmit_timeout = 0.5" in text
