"""Child SA keys (RFC 7296 2.17 order) and lifetimes."""

import hmac

from pyipsec.ike.child_sa import derive_child_keys, lifetimes
from pyipsec.ike.config import ChildConfig
from pyipsec.ike.proposals import Chosen
from pyipsec.wire.iana import EncrId, IntegId, PrfId, ProtocolId, TransformType


def prf_plus(key, seed, n):
    out, t, i = b"", b"", 1
    while len(out) < n:
        t = hmac.new(key, t + seed + bytes([i]), "sha256").digest()
        out += t
        i += 1
    return out[:n]


def test_keys_follow_rfc7296_2_17_order():
    chosen = Chosen(
        ProtocolId.ESP,
        1,
        b"\0\0\1\0",
        (
            (TransformType.ENCR, EncrId.AES_CBC, 128),
            (TransformType.INTEG, IntegId.HMAC_SHA2_256_128, None),
        ),
    )
    sk_d, ni, nr = b"d" * 32, b"i" * 32, b"r" * 32
    keymat = prf_plus(sk_d, ni + nr, 2 * (16 + 32))
    i_to_r, r_to_i = keymat[:48], keymat[48:]
    ini_in, ini_out = derive_child_keys(PrfId.HMAC_SHA2_256, sk_d, chosen, ni, nr, True)
    res_in, res_out = derive_child_keys(PrfId.HMAC_SHA2_256, sk_d, chosen, ni, nr, False)
    assert ini_out == i_to_r == res_in and ini_in == r_to_i == res_out


def test_pfs_changes_keys():
    chosen = Chosen(ProtocolId.ESP, 1, b"", ((TransformType.ENCR, EncrId.AES_GCM_16, 256),))
    a = derive_child_keys(PrfId.HMAC_SHA2_256, b"d" * 32, chosen, b"i" * 32, b"r" * 32, True)
    b = derive_child_keys(
        PrfId.HMAC_SHA2_256, b"d" * 32, chosen, b"i" * 32, b"r" * 32, True, shared_secret=b"g" * 32
    )
    assert len(a[0]) == 36 and a != b


def test_lifetimes_with_jitter():
    cfg = ChildConfig("c", rekey_time=100.0, jitter=20.0, life_time=150.0)
    assert lifetimes(cfg, 1000.0, 0.0) == (1100.0, 1150.0)
    assert lifetimes(cfg, 1000.0, 0.5) == (1090.0, 1150.0)


def test_installed_event_carries_the_ike_ports():
    """ChildSaInstalled names the IKE SA's ports (ESP-in-UDP goes to the remote one: a
    NAT's mapping of the peer's 4500); the NAT-T port 4500 when the caller gives none."""
    from pyipsec.ike.child_sa import ChildSa
    from pyipsec.ike.ts import host_ts

    chosen = Chosen(ProtocolId.ESP, 1, b"", ((TransformType.ENCR, EncrId.AES_GCM_16, 128),))
    child = ChildSa(ChildConfig("c"), "responder", 0x1000, 0x2000, chosen, "tunnel",
                    (host_ts("10.0.0.1"),), (host_ts("10.0.0.2"),), b"k" * 20, b"l" * 20,
                    10.0, 100.0, 200.0, False, (b"i", b"r"))  # fmt: skip
    ev = child.installed_event(
        7,
        encap_udp=True,
        local_addr="192.0.2.2",
        remote_addr="198.51.100.7",
        remote_port=31000,
        local_port=4500,
    )
    got = (ev.remote_addr, ev.remote_port, ev.local_port, ev.encap_udp)
    assert got == ("198.51.100.7", 31000, 4500, True)
    assert (ev.rekey_time, ev.life_time, ev.algorithm) == (90.0, 190.0, "aes128gcm16")
    plain = child.installed_event(7, encap_udp=False, local_addr="192.0.2.2",
                                  remote_addr="198.51.100.7")  # fmt: skip
    assert (plain.remote_port, plain.local_port) == (4500, 4500)
