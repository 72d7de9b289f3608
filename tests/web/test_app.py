"""The web monitor over real HTTP on 127.0.0.1, against a fake daemon on a real socket."""

from __future__ import annotations

import base64
import json
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from controlthread import ServerThread
from pyipsec.errors import ConfigError
from pyipsec.web.app import (
    WebMonitor,
    create_token_file,
    is_loopback,
    parse_listen,
    read_token,
)

HOSTILE = '<script>alert("x")</script>&"\''

STATUS: dict[str, Any] = {
    "version": "0.1.0",
    "uptime": 3723.0,
    "ike_sas": [
        {
            "name": "web-db",
            "handle": 1,
            "state": "ESTABLISHED",
            "local_addr": "192.0.2.1",
            "remote_addr": "192.0.2.2",
            "local_id": "server-a.example",
            "remote_id": HOSTILE,
            "auth": "psk",
            "initiator": True,
            "spi_i": "0123456789abcdef",
            "spi_r": "fedcba9876543210",
            "proposal": "aes128gcm16-prfsha256-x25519",
            "encryption": "aes128gcm16",
            "integrity": None,
            "prf": "prfsha256",
            "ke": "x25519",
            "established_for": 3600.0,
            "rekey_in": 10000.0,
        }
    ],
    "child_sas": [
        {
            "name": "web-db-sql",
            "ike_sa": "web-db[1]",
            "state": "INSTALLED",
            "mode": "transport",
            "protocol": "esp",
            "encap": False,
            "esn": False,
            "spi_in": "c0ffee01",
            "spi_out": "c0ffee02",
            "algorithm": "aes128gcm16",
            "local_ts": ["192.0.2.1/32"],
            "remote_ts": ["192.0.2.2/32[tcp/5432]"],
            "bytes_in": 123456,
            "packets_in": 100,
            "bytes_out": 654321,
            "packets_out": 200,
            "installed_for": 50.0,
            "rekey_in": 3000.0,
        }
    ],
    "policy": {
        "name": "web-db",
        "version": 3,
        "source": "https://192.0.2.10:8443/",
        "mode": "server",
        "applied_at": 1700000000.0,
        "spd_entries": 4,
        "last_error": None,
    },
    "recent_failures": [
        {
            "when": "12:00:00",
            "peer": "198.51.100.7",
            "reason": "authentication failed: <b>bad</b> PSK",
            "notify": "AUTHENTICATION_FAILED",
        }
    ],
}
STATISTICS = {
    "active_ike_sas": 1,
    "active_child_sas": 1,
    "bad_spi_packets": 3,
    "authentication_failures": 1,
    "replayed_packets": 0,
}


@pytest.fixture
def daemon(tmp_path) -> Iterator[str]:
    async def status(args: dict[str, Any]) -> Any:
        return STATUS

    async def statistics(args: dict[str, Any]) -> Any:
        return STATISTICS

    path = str(tmp_path / "control.sock")
    with ServerThread(path, {"status": status, "statistics": statistics}):
        yield path


@pytest.fixture
def monitor(daemon: str) -> Iterator[WebMonitor]:
    with WebMonitor("127.0.0.1:0", socket_path=daemon, refresh=7) as running:
        yield running


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_page_shows_both_tables_with_spis_and_failures(monitor: WebMonitor) -> None:
    code, headers, body = get(monitor.url)
    assert code == 200
    assert headers["Content-Type"].startswith("text/html")
    assert "script-src" not in headers["Content-Security-Policy"]
    page = body.decode()
    assert "Main Mode (IKE SAs)" in page and "Quick Mode (Child SAs)" in page
    for spi in ("c0ffee01", "c0ffee02", "0123456789abcdef", "fedcba9876543210"):
        assert spi in page
    assert "120.6 KiB" in page and "639.0 KiB" in page  # bytes in / out
    assert "Bad SPI packets" in page
    assert "AUTHENTICATION_FAILED" in page
    assert '<meta http-equiv="refresh" content="7">' in page
    assert "<strong>Policy</strong> web-db version 3" in page


def test_page_escapes_what_the_daemon_says(monitor: WebMonitor) -> None:
    page = get(monitor.url)[2].decode()
    assert "<script>" not in page and "<b>bad</b>" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;&quot;&#x27;" in page
    assert "&lt;b&gt;bad&lt;/b&gt; PSK" in page


def test_refresh_can_be_turned_off_per_request(monitor: WebMonitor) -> None:
    page = get(monitor.url + "?refresh=0")[2].decode()
    assert 'http-equiv="refresh"' not in page


def test_api_is_the_control_api_unchanged(monitor: WebMonitor) -> None:
    code, headers, body = get(monitor.url + "api/status")
    assert code == 200 and headers["Content-Type"] == "application/json"
    assert json.loads(body) == STATUS
    code, _, body = get(monitor.url + "api/statistics")
    assert code == 200 and json.loads(body) == STATISTICS


def test_metrics_parse(monitor: WebMonitor) -> None:
    code, headers, body = get(monitor.url + "metrics")
    assert code == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }
    assert samples[("pyipsec_up", ())] == 1
    assert samples[("pyipsec_child_sas", ())] == 1
    assert samples[("pyipsec_bad_spi_packets_total", ())] == 3
    inbound = [
        v for (name, labels), v in samples.items() if name == "pyipsec_child_sa_bytes_in_total"
    ]
    assert inbound == [123456]


def test_head_unknown_path_and_post(monitor: WebMonitor) -> None:
    request = urllib.request.Request(monitor.url + "api/status", method="HEAD")
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200 and response.read() == b""
        assert int(response.headers["Content-Length"]) > 0
    assert get(monitor.url + "nothing")[0] == 404
    request = urllib.request.Request(monitor.url, data=b"x", method="POST")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=10)
    assert info.value.code == 405
    stats = monitor.statistics()
    assert stats.not_found == 2 and stats.requests == 3 and stats.unauthorized == 0


def test_daemon_down_is_503_and_a_banner_and_up_zero(tmp_path) -> None:
    with WebMonitor("127.0.0.1:0", socket_path=str(tmp_path / "none.sock")) as monitor:
        code, _, body = get(monitor.url)
        assert code == 503
        assert "Daemon unreachable" in body.decode()
        assert "the daemon is not running" in body.decode()
        code, _, body = get(monitor.url + "api/status")
        assert code == 503 and "not running" in json.loads(body)["error"]
        code, _, body = get(monitor.url + "metrics")
        assert code == 200
        assert "pyipsec_up 0.0" in body.decode()
        stats = monitor.statistics()
        assert stats.daemon_errors == 2 and stats.scrape_failures == 1 and stats.scrapes == 1


def test_non_loopback_without_token_is_refused() -> None:
    with pytest.raises(ConfigError, match="refusing to listen on non-loopback"):
        WebMonitor("0.0.0.0:0")
    with pytest.raises(ConfigError, match="refusing"):
        WebMonitor("[::]:0")


def test_token_file_must_be_0600(tmp_path) -> None:
    path = tmp_path / "token"
    path.write_text("a" * 32)
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="group or others") as info:
        WebMonitor("0.0.0.0:0", token_file=str(path))
    assert "a" * 32 not in str(info.value)
    path.chmod(0o600)
    path.write_text("short")
    with pytest.raises(ConfigError, match="fewer than 16"):
        read_token(str(path))
    with pytest.raises(ConfigError, match="cannot open"):
        read_token(str(tmp_path / "missing"))


def test_create_token_file(tmp_path) -> None:
    path = str(tmp_path / "token")
    create_token_file(path)
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert len(read_token(path)) >= 32
    with pytest.raises(ConfigError, match="exists"):
        create_token_file(path)


def test_basic_auth_with_token(daemon: str, tmp_path) -> None:
    path = str(tmp_path / "token")
    create_token_file(path)
    token = read_token(path)
    with WebMonitor("127.0.0.1:0", socket_path=daemon, token_file=path) as monitor:
        assert token not in repr(monitor)
        code, headers, _ = get(monitor.url)
        assert code == 401 and headers["WWW-Authenticate"].startswith("Basic")

        def auth(password: str) -> dict[str, str]:
            value = base64.b64encode(f"admin:{password}".encode()).decode()
            return {"Authorization": f"Basic {value}"}

        assert get(monitor.url, auth("wrong-token-wrong-token"))[0] == 401
        assert get(monitor.url, {"Authorization": "Basic %%%"})[0] == 401
        code, _, body = get(monitor.url + "api/status", auth(token))
        assert code == 200 and json.loads(body) == STATUS
        assert monitor.statistics().unauthorized == 3


def test_non_loopback_with_token_binds(daemon: str, tmp_path) -> None:
    path = str(tmp_path / "token")
    create_token_file(path)
    with WebMonitor("0.0.0.0:0", socket_path=daemon, token_file=path) as monitor:
        host, port = monitor.address
        assert port > 0
        code, _, _ = get(f"http://127.0.0.1:{port}/")
        assert code == 401


def test_parse_listen() -> None:
    assert parse_listen("127.0.0.1:9443") == ("127.0.0.1", 9443)
    assert parse_listen("[::1]:80") == ("::1", 80)
    assert is_loopback("::1") and is_loopback("127.0.0.2") and not is_loopback("10.0.0.1")
    for bad in ("localhost:80", "127.0.0.1", "127.0.0.1:x", "1.2.3.4:70000", ":80"):
        with pytest.raises(ConfigError):
            parse_listen(bad)


def test_ipv6_loopback(daemon: str) -> None:
    import socket

    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        monitor = WebMonitor("[::1]:0", socket_path=daemon).start()
    except ConfigError as exc:
        pytest.skip(f"cannot bind ::1: {exc}")
    try:
        assert monitor.url.startswith("http://[::1]:")
        code, _, body = get(monitor.url + "api/statistics")
        assert code == 200 and json.loads(body) == STATISTICS
    finally:
        monitor.close()


def test_port_in_use_is_a_config_error(monitor: WebMonitor) -> None:
    with pytest.raises(ConfigError, match="cannot listen"):
        WebMonitor(f"127.0.0.1:{monitor.address[1]}").start()


def _self_signed(tmp_path) -> tuple[str, str]:
    """A P-256 certificate for 127.0.0.1 and its key (0600), made with cryptography."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pyipsec web test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path = tmp_path / "web.crt"
    key_path = tmp_path / "web.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return str(cert_path), str(key_path)


def test_https_with_token(daemon: str, tmp_path) -> None:
    import socket
    import ssl

    cert, key = _self_signed(tmp_path)
    token_path = str(tmp_path / "token")
    create_token_file(token_path)
    token = read_token(token_path)
    value = base64.b64encode(f"admin:{token}".encode()).decode()
    with WebMonitor(
        "127.0.0.1:0", socket_path=daemon, token_file=token_path, tls_cert=cert, tls_key=key
    ) as monitor:
        assert monitor.url.startswith("https://127.0.0.1:")
        # a client that speaks plain HTTP gets nothing, and the server goes on
        with socket.create_connection(monitor.address, timeout=10) as plain:
            plain.sendall(b"GET / HTTP/1.0\r\n\r\n")
            assert b"HTTP/1." not in plain.recv(4096)
        context = ssl.create_default_context(cafile=cert)
        request = urllib.request.Request(
            monitor.url + "api/status", headers={"Authorization": f"Basic {value}"}
        )
        with urllib.request.urlopen(request, timeout=10, context=context) as response:
            assert json.loads(response.read()) == STATUS
        assert monitor.statistics().connection_errors == 1


def test_tls_configuration_errors(tmp_path) -> None:
    cert, key = _self_signed(tmp_path)
    with pytest.raises(ConfigError, match="needs its key"):
        WebMonitor("127.0.0.1:0", tls_cert=cert)
    os.chmod(key, 0o640)
    with pytest.raises(ConfigError, match="group or others"):
        WebMonitor("127.0.0.1:0", tls_cert=cert, tls_key=key)
    os.chmod(key, 0o600)
    with pytest.raises(ConfigError, match="cannot load TLS"):
        WebMonitor("127.0.0.1:0", tls_cert=key, tls_key=key)
    with pytest.raises(ConfigError, match="not found"):
        WebMonitor("127.0.0.1:0", tls_cert=str(tmp_path / "none.crt"), tls_key=key)


# ---------------------------------------------------------------- against real daemons

A, B = "10.2.0.1", "10.2.0.2"


def _daemon_config(directory, me: str, peer: str, start: str) -> str:
    directory.mkdir()
    secrets = directory / "secrets.yaml"
    secrets.write_text('psk:\n  web-db: "shared secret key"\n')
    os.chmod(secrets, 0o600)
    path = directory / "pyipsec.yaml"
    path.write_text(
        f"secrets: secrets.yaml\n"
        f"control_socket: {directory}/control.sock\n"
        f"connections:\n"
        f"  web-db:\n"
        f"    local_addrs: [{me}]\n"
        f"    remote_addrs: [{peer}]\n"
        f"    local: {{auth: psk, id: {me}}}\n"
        f"    remote: {{auth: psk, id: {peer}}}\n"
        f"    children:\n"
        f"      db: {{mode: transport, start_action: {start}}}\n"
    )
    return str(path)


def test_monitor_of_two_real_daemons(tmp_path) -> None:
    """Two daemon loops (fake network and data plane) negotiate; the page and the
    metrics of daemon A show the Child SA the daemons really installed."""
    import asyncio

    from daemonfakes import FakeDataplane, FakeNetwork
    from pyipsec.daemon.main import run

    loop = asyncio.new_event_loop()
    net = FakeNetwork(loop)
    paths = {
        A: _daemon_config(tmp_path / "a", A, B, "start"),
        B: _daemon_config(tmp_path / "b", B, A, "trap"),
    }
    planes = {A: FakeDataplane(), B: FakeDataplane()}
    ready = {A: asyncio.Event(), B: asyncio.Event()}
    tasks: list[asyncio.Task[Any]] = []

    async def start() -> None:
        for me in (A, B):

            def network_factory(receiver: Any, me: str = me) -> Any:
                net.hosts[me] = receiver
                return net.port(me)

            tasks.append(
                loop.create_task(
                    run(
                        paths[me],
                        dataplane_factory=lambda cfg, lp, hooks, me=me: planes[me],
                        network_factory=network_factory,
                        ready=ready[me].set,
                    )
                )
            )
        await asyncio.wait_for(asyncio.gather(ready[A].wait(), ready[B].wait()), 5)

        for _ in range(250):
            if planes[A].installed and planes[B].installed:
                return
            await asyncio.sleep(0.02)

    def in_thread(function: Any) -> Any:
        return loop.run_until_complete(loop.run_in_executor(None, function))

    try:
        loop.run_until_complete(start())
        assert planes[A].installed and planes[B].installed
        spi_in = f"{next(iter(planes[A].installed)):08x}"
        spi_out = f"{next(iter(planes[B].installed)):08x}"
        socket_path = str(tmp_path / "a" / "control.sock")
        with WebMonitor("127.0.0.1:0", socket_path=socket_path) as monitor:
            code, _, body = in_thread(lambda: get(monitor.url))
            page = body.decode()
            assert code == 200 and spi_in in page and spi_out in page
            assert "ESTABLISHED" in page and A in page and B in page
            code, _, body = in_thread(lambda: get(monitor.url + "metrics"))
        samples = [
            s
            for family in text_string_to_metric_families(body.decode())
            for s in family.samples
            if s.name == "pyipsec_child_sa_bytes_in_total"
        ]
        assert len(samples) == 1
        labels = samples[0].labels
        assert (labels["spi_in"], labels["spi_out"], labels["remote"]) == (spi_in, spi_out, B)
        assert (labels["name"], labels["mode"], labels["protocol"]) == ("db", "transport", "esp")
        assert samples[0].value == 100  # what the fake data plane counts per SA
    finally:
        for task in tasks:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        loop.close()
