"""The daemon's IKE sockets: port-4500 demultiplexing, markers, keepalives."""

from __future__ import annotations

import asyncio
import socket

import pytest

from pyipsec.daemon.io import NON_ESP_MARKER, UdpIkeNetwork


def make() -> tuple[UdpIkeNetwork, list]:
    got: list = []
    net = UdpIkeNetwork(lambda data, remote, local: got.append((data, remote, local)))
    return net, got


def test_port_4500_keeps_ike_and_drops_esp_and_keepalives() -> None:
    net, got = make()
    net.ike_from_4500(NON_ESP_MARKER + b"ike-message", ("10.0.0.2", 4500))
    net.ike_from_4500(b"\x00\x00\x10\x01esp", ("10.0.0.2", 4500))  # an SPI: ESP
    net.ike_from_4500(b"\xff", ("10.0.0.2", 4500))  # NAT keepalive
    assert got == [(b"ike-message", ("10.0.0.2", 4500), ("", 4500))]
    assert (net.received, net.dropped) == (1, 1)


def test_sends_through_the_data_plane_socket_with_marker_and_raw_keepalive() -> None:
    net, _ = make()
    sent: list = []
    net.use_dataplane_4500(lambda payload, remote: sent.append((payload, remote)))
    net.send(b"ike", ("10.0.0.2", 4500), 4500)
    net.send_keepalive(("10.0.0.2", 4500))
    assert sent == [(NON_ESP_MARKER + b"ike", ("10.0.0.2", 4500)), (b"\xff", ("10.0.0.2", 4500))]


def test_no_socket_for_the_family_is_an_oserror() -> None:
    net, _ = make()
    with pytest.raises(OSError):
        net.send(b"ike", ("fd00::2", 500), 500)
    with pytest.raises(OSError):
        net.send_keepalive(("10.0.0.2", 4500))


def test_real_sockets_on_loopback() -> None:
    """Datagrams really leave and arrive (ports chosen free on loopback)."""

    async def scenario() -> list:
        got: list = []
        net = UdpIkeNetwork(lambda data, remote, local: got.append(data), ports=(0,), ipv6=False)
        await net.start()
        (((_, _), transport),) = net._transports.items()
        port = transport.get_extra_info("sockname")[1]
        peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        peer.bind(("127.0.0.1", 0))
        peer.sendto(b"hello", ("127.0.0.1", port))
        for _ in range(100):
            if got:
                break
            await asyncio.sleep(0.01)
        net._transports[(socket.AF_INET, 500)] = transport
        net.send(b"answer", peer.getsockname(), 500)
        peer.settimeout(2)
        answer = peer.recv(100)
        peer.close()
        net.close()
        return [*got, answer]

    assert asyncio.run(scenario()) == [b"hello", b"answer"]
