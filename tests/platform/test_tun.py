"""The TUN device: create, read packets the kernel routes into it, write packets back."""

from __future__ import annotations

import pytest

from netns import run_in_netns

pytestmark = pytest.mark.netns


def test_tun_read_and_write():
    out = run_in_netns(
        """
        import select, socket, subprocess
        from pyipsec.platform.linux.tun import Tun
        from pyipsec.platform.linux import routing
        from pyipsec.wire.ip import parse_flow
        tun = Tun.open("pyipsec0")
        assert tun.read_batch() == []          # non-blocking, nothing queued
        routing.configure_link("pyipsec0", 1400)
        subprocess.run("ip addr add 10.9.0.1/24 dev pyipsec0", shell=True, check=True)
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for i in range(3):
            s.sendto(b"hello%d" % i, ("10.9.0.2", 7000))
        select.select([tun.fd], [], [], 2)
        pkts = tun.read_batch(64)
        flows = [parse_flow(p) for p in pkts if p[0] >> 4 == 4]
        assert [f.dport for f in flows] == [7000] * 3, flows
        # write a UDP packet from 10.9.0.2 to our socket: the kernel delivers it
        r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        r.bind(("10.9.0.1", 7001)); r.settimeout(2)
        import struct
        payload = b"back"
        udp = struct.pack("!HHHH", 7002, 7001, 8 + len(payload), 0) + payload
        hdr = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
                        socket.inet_aton("10.9.0.2"), socket.inet_aton("10.9.0.1")))
        c = sum(struct.unpack("!10H", hdr)); c = (c & 0xFFFF) + (c >> 16)
        hdr[10:12] = struct.pack("!H", ~c & 0xFFFF)
        subprocess.run("sysctl -qw net.ipv4.conf.pyipsec0.rp_filter=0", shell=True)
        tun.write(bytes(hdr) + udp)
        tun.write(b"\\x45garbage")              # dropped later by the kernel, never raises
        assert r.recvfrom(100)[0] == b"back"
        st = tun.statistics()
        assert st.packets_read >= 3 and st.packets_written == 2, st
        tun.close()
        print("ok")
        """
    )
    assert out.strip() == "ok"


def test_tun_name_too_long():
    from pyipsec.platform.linux.tun import Tun

    with pytest.raises(ValueError):
        Tun.open("x" * 16)


@pytest.mark.parametrize("tso", [False, True])
def test_offload_reads_give_complete_checksums(tso: bool):
    """With IFF_VNET_HDR, packets read carry a complete UDP/TCP checksum whether the kernel
    computed it (tso=False: no checksum offload announced) or split() finished it (tso=True);
    a peer's kernel verifies it after decryption."""
    out = run_in_netns(
        f"""
        import select, socket, subprocess
        from pyipsec.platform.linux.tun import Tun
        from pyipsec.platform.linux import routing
        from pyipsec.wire.ip import internet_checksum, pseudo_header_sum
        tun = Tun.open("pyipsec0", offload=True, tso={tso})
        routing.configure_link("pyipsec0", 1400)
        subprocess.run("ip addr add 10.9.0.1/24 dev pyipsec0", shell=True, check=True)
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for i in range(3):
            s.sendto(b"hello%d" % i * 100, ("10.9.0.2", 7000))
        select.select([tun.fd], [], [], 2)
        pkts = [p for p in tun.read_batch(64) if p[0] == 0x45 and p[9] == 17]
        assert len(pkts) == 3, pkts
        for p in pkts:
            seg = p[20:]
            ph = pseudo_header_sum(p[12:16], p[16:20], 17, len(seg))
            assert internet_checksum(seg, ph) == 0, p.hex()
        tun.close()
        print("ok")
        """
    )
    assert out.strip() == "ok"


def test_tso_needs_offload():
    from pyipsec.platform.linux.tun import Tun

    with pytest.raises(ValueError):
        Tun.open("pyi-x", tso=True)
