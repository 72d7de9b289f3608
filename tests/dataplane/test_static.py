"""Static SA/SPD files: validation names the field, nothing half-parsed, keys never shown."""

from __future__ import annotations

import os

import pytest

from pyipsec.dataplane.static import load_static_file, load_static_text, parse_policy, parse_sa
from pyipsec.errors import ConfigError
from pyipsec.ipsec.spd import Action

KEY = "00112233445566778899aabbccddeeff01020304"  # aes128gcm16: 16 + 4 salt

GOOD = f"""
sas:
  - spi: 0x1001
    src: 10.99.1.1
    dst: 10.99.1.2
    algorithm: aes128gcm16
    key: "{KEY}"
    child: ab
  - {{spi: 4098, src: 10.99.1.2, dst: 10.99.1.1, algorithm: aes128gcm16, key: "0x{KEY}",
      encap: udp, mode: tunnel}}
policies:
  - name: ab
    local: 10.99.1.1
    remote: 10.99.1.0/24
    protocol: tcp
    remote_ports: 5432
    action: protect
  - {{name: block, local: any, remote: 10.99.9.1-10.99.9.9, action: discard, priority: 5}}
"""


def local_a(addr: str) -> bool:
    return addr in ("10.99.1.1", "fd99:1::1")


def test_good_file_parses_and_infers_direction():
    cfg = load_static_text(GOOD, is_local=local_a)
    out, inn = cfg.sas
    assert (out.direction, out.spi, out.child) == ("out", 0x1001, "ab")
    assert (inn.direction, inn.spi, inn.encap, inn.mode) == ("in", 4098, "udp", "tunnel")
    assert inn.child == "ab"  # the only child defaults
    assert inn.key == bytes.fromhex(KEY)
    ab, block = cfg.policies
    assert ab.entry.action is Action.PROTECT and ab.entry.template.child == "ab"
    assert ab.entry.selector.protocol == 6 and ab.entry.selector.remote_ports.start == 5432
    assert block.entry.priority == 5 and block.entry.template is None


def test_key_never_in_repr_or_dict():
    cfg = load_static_text(GOOD, is_local=local_a)
    sa = cfg.sas[0]
    assert KEY not in repr(sa) and KEY not in str(sa.to_dict())
    assert sa.to_dict(show_key=True)["key"] == KEY


def base_sa(**kw):
    d = {"spi": 0x1001, "src": "10.99.1.1", "dst": "10.99.1.2", "algorithm": "aes128gcm16",
         "key": KEY, "child": "ab", "direction": "out"}  # fmt: skip
    d.update(kw)
    return {k: v for k, v in d.items() if v is not None}


@pytest.mark.parametrize(
    "kw,field",
    [
        ({"spi": 5}, "sa.spi"),
        ({"spi": "0xzz"}, "sa.spi"),
        ({"spi": None}, "sa.spi"),
        ({"src": "10.99.1.300"}, "sa.src"),
        ({"dst": "fd99::1"}, "sa.dst"),
        ({"protocol": "gre"}, "sa.protocol"),
        ({"mode": "beet"}, "sa.mode"),
        ({"algorithm": "rot13"}, "sa.algorithm"),
        ({"key": "xyz"}, "sa.key"),
        ({"key": "0011"}, "sa.key"),  # wrong length for aes128gcm16
        ({"key": None}, "sa.key"),
        ({"protocol": "ah", "algorithm": "sha256", "key": "00" * 32, "encap": "udp"}, "sa.encap"),
        ({"direction": "sideways"}, "sa.direction"),
        ({"replay_window": 100000}, "sa.replay_window"),
        ({"replay_window": 0}, "sa.replay_window"),  # anti-replay cannot be turned off
        ({"colour": "blue"}, "sa.colour"),
        ({"lifetime": {"hard_fortnights": 1}}, "sa.lifetime"),
    ],
)
def test_sa_errors_name_the_field(kw, field):
    with pytest.raises(ConfigError) as exc:
        parse_sa(base_sa(**kw))
    assert exc.value.key == field
    assert KEY not in str(exc.value)


def test_direction_cannot_be_inferred():
    with pytest.raises(ConfigError) as exc:
        parse_sa(base_sa(direction=None), is_local=lambda a: False)
    assert exc.value.key == "sa.direction"


@pytest.mark.parametrize(
    "kw,field",
    [
        ({"name": None}, "policy.name"),
        ({"action": "maybe"}, "policy.action"),
        ({"local": "10.0.0.0/33"}, "policy.local"),
        ({"remote": "fd99::/64"}, "policy.remote"),
        ({"protocol": "nosuch"}, "policy.protocol"),
        ({"local_ports": "80"}, "policy.local_ports"),  # ports without a port protocol
        ({"protocol": "tcp", "remote_ports": "9-3"}, "policy.remote_ports"),
        ({"action": "bypass", "child": "x"}, "policy.child"),
        ({"priority": "high"}, "policy.priority"),
    ],
)
def test_policy_errors_name_the_field(kw, field):
    d = {"name": "p", "local": "10.0.0.1", "remote": "10.0.0.2", "action": "protect"}
    d.update(kw)
    d = {k: v for k, v in d.items() if v is not None}
    with pytest.raises(ConfigError) as exc:
        parse_policy(d)
    assert exc.value.key == field


def test_file_errors_carry_file_line_and_path(tmp_path):
    text = GOOD.replace('key: "0x', 'key: "0xq')
    path = tmp_path / "s.yaml"
    path.write_text(text)
    os.chmod(path, 0o600)
    with pytest.raises(ConfigError) as exc:
        load_static_file(str(path), is_local=local_a)
    assert exc.value.key == "sas.1.key" and exc.value.file == str(path)
    assert exc.value.line is not None


def test_unknown_child_and_duplicates_rejected():
    with pytest.raises(ConfigError, match="child") as exc:
        load_static_text(GOOD.replace("child: ab", "child: zz"), is_local=local_a)
    assert exc.value.key == "sas.0.child"
    dup = GOOD.replace("spi: 4098", "spi: 0x1001").replace("dst: 10.99.1.1,", "dst: 10.99.1.3,")
    with pytest.raises(ConfigError) as exc:
        load_static_text(dup, is_local=local_a)
    assert exc.value.key in ("sas.1.spi", "sas.1.direction")


def test_world_readable_key_file_refused(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(GOOD)
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_static_file(str(path), is_local=local_a)
    os.chmod(path, 0o600)
    assert len(load_static_file(str(path), is_local=local_a).sas) == 2


def test_key_file(tmp_path):
    kf = tmp_path / "k.hex"
    kf.write_text(KEY + "\n")
    sa = parse_sa(base_sa(key=None, key_file=str(kf)))
    assert sa.key == bytes.fromhex(KEY)
    with pytest.raises(ConfigError) as exc:
        parse_sa(base_sa(key_file=str(kf)))  # both given
    assert exc.value.key == "sa.key"
