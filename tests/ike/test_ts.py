import ipaddress

import pytest

from pyipsec.errors import ConfigError, ProtocolError
from pyipsec.ike.ts import TsRange, any_ts, check_subset, host_ts, intersect, narrow, parse_ts
from pyipsec.wire.iana import NotifyType, TsType

ip = ipaddress.ip_address


def test_parse_forms():
    t = parse_ts("10.0.0.0/24")
    assert (t.start_addr, t.end_addr) == (ip("10.0.0.0"), ip("10.0.0.255"))
    assert t.ts_type == TsType.IPV4_ADDR_RANGE
    t = parse_ts("10.0.0.1[tcp/80]")
    assert (t.ip_protocol, t.start_port, t.end_port) == (6, 80, 80)
    t = parse_ts("10.0.0.1-10.0.0.9[17/1000-2000]")
    assert (t.end_addr, t.ip_protocol, t.end_port) == (ip("10.0.0.9"), 17, 2000)
    assert parse_ts("::/0").ts_type == TsType.IPV6_ADDR_RANGE
    assert parse_ts("dynamic") is None
    assert str(parse_ts("10.0.0.0/24[tcp/80]")) == "10.0.0.0/24[6/80]"


@pytest.mark.parametrize(
    "bad",
    [
        "10.0.0.0/33",
        "10.0.0.9-10.0.0.1",
        "10.0.0.1[tcp",
        "1.2.3.4[tcp/90-80]",
        "dynamic[tcp]",
        "1.2.3.4-::1",
        "x[udp/a]",
    ],
)
def test_parse_invalid(bad):
    with pytest.raises(ConfigError):
        parse_ts(bad)


def test_intersect_and_contains():
    a = parse_ts("10.0.0.0/16")
    b = parse_ts("10.0.5.0/24[tcp/1-100]")
    assert intersect(a, b) == b
    assert a.contains(b) and not b.contains(a)
    assert intersect(a, parse_ts("::/0")) is None
    assert intersect(parse_ts("10.0.0.1[udp]"), parse_ts("10.0.0.1[tcp]")) is None
    assert intersect(parse_ts("10.0.0.1[tcp/1-5]"), parse_ts("10.0.0.1[tcp/6-9]")) is None


def test_narrow():
    proposed = [any_ts(4)]
    configured = [parse_ts("192.168.0.0/24"), host_ts("10.0.0.1")]
    assert narrow(proposed, configured) == configured
    with pytest.raises(ProtocolError) as ei:
        narrow([parse_ts("172.16.0.0/12")], configured)
    assert ei.value.notify == NotifyType.TS_UNACCEPTABLE


def test_check_subset():
    check_subset([host_ts("10.0.0.1")], [parse_ts("10.0.0.0/24")])
    with pytest.raises(ProtocolError):
        check_subset([parse_ts("10.0.0.0/16")], [parse_ts("10.0.0.0/24")])
    with pytest.raises(ProtocolError):
        check_subset([], [parse_ts("10.0.0.0/24")])
    assert isinstance(host_ts("::1"), TsRange)
