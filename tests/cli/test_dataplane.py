"""``pyipsec dataplane|sa|policy-entry|flush`` from the command line."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

import pytest
import yaml

from netns import Topology

PYIPSEC = os.path.join(os.path.dirname(sys.executable), "pyipsec")
KEY_AB = "11" * 20
KEY_BA = "22" * 20


def run(*args: str, input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([PYIPSEC, *args], capture_output=True, text=True, input=input)


def test_bad_static_file_is_one_line_naming_the_field(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(
        "sas:\n  - {spi: 0x1001, src: 10.0.0.1, dst: 10.0.0.2, algorithm: aes128gcm16,\n"
        f'     key: "{"ab" * 7}", child: x, direction: out}}\n'
        "policies:\n  - {name: x, local: 10.0.0.1, remote: 10.0.0.2, action: protect}\n"
    )
    os.chmod(path, 0o600)
    res = run("dataplane", "--static", str(path))
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "sas.0.key" in lines[0] and str(path) in lines[0]
    assert "ab" * 7 not in res.stderr


def test_sa_commands_without_a_data_plane(tmp_path):
    res = run("sa", "list", "--control", str(tmp_path / "none.sock"))
    assert res.returncode == 1 and "not running" in res.stderr


@pytest.mark.netns
def test_manual_keying_through_the_cli(tmp_path):
    topo = Topology(tag="-" + uuid.uuid4().hex[:4])
    procs = []
    try:
        a, b = topo.a, topo.b
        ctl = {}
        for h, peer in ((a, b), (b, a)):
            path = tmp_path / f"{h.ns}.yaml"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
            with os.fdopen(fd, "w") as f:
                yaml.safe_dump({"policies": [{"name": "ab", "local": h.addr4,
                                "remote": peer.addr4, "action": "protect"}]}, f)  # fmt: skip
            ctl[h.ns] = f"/run/pyipsec/clitest-{h.ns}.sock"
            procs.append((h, h.spawn([PYIPSEC, "dataplane", "--static", str(path),
                                      "--control", ctl[h.ns]])))  # fmt: skip

        def cli(h, *args, check=True, input=None):
            return h.run(PYIPSEC, *args, "--control", ctl[h.ns], check=check, input=input)

        deadline = time.monotonic() + 20
        while not all(os.path.exists(c) for c in ctl.values()):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        # policy but no SA: the packet is held, an acquire is counted, nothing leaves in clear
        assert not a.ping(b.addr4)
        # a bad key is refused with one line naming the field; nothing is installed
        sa_ab = ("sa", "add", "--spi", "0x1001", "--src", a.addr4, "--dst", b.addr4)
        sa_ab += ("--child", "ab")
        res = cli(a, *sa_ab, "--algorithm", "aes128gcm16", "--key", "abcd", check=False)
        assert res.returncode == 1 and b"sa.key" in res.stderr and b"abcd" not in res.stderr
        assert cli(a, "sa", "list").stdout == b""
        res = cli(a, *sa_ab, "--algorithm", "rot13", "--key", KEY_AB, check=False)
        assert res.returncode == 1 and b"sa.algorithm" in res.stderr
        for h in (a, b):
            cli(h, "sa", "add", "--spi", "0x1001", "--src", a.addr4, "--dst", b.addr4,
                "--algorithm", "aes128gcm16", "--key", KEY_AB, "--child", "ab")  # fmt: skip
            cli(h, "sa", "add", "--spi", "0x1002", "--src", b.addr4, "--dst", a.addr4,
                "--algorithm", "aes128gcm16", "--key", "-", "--child", "ab",
                input=KEY_BA.encode() + b"\n")  # fmt: skip
        assert a.ping(b.addr4, count=2)
        listing = cli(a, "sa", "list").stdout.decode()
        assert "out esp spi 0x00001001" in listing and "in  esp spi 0x00001002" in listing
        assert KEY_AB not in listing and KEY_BA not in listing
        assert "packets_out=" in listing
        assert KEY_AB in cli(a, "sa", "list", "--show-keys").stdout.decode()
        stats = cli(a, "sa", "stats").stdout.decode()
        assert "outbound: packets_read=" in stats and "acquires=1" in stats
        assert "kernel ab/out:" in stats
        assert os.stat(ctl[a.ns]).st_mode & 0o777 == 0o600
        assert os.stat(os.path.dirname(ctl[a.ns])).st_mode & 0o077 == 0
        # duplicate SPI refused
        res = cli(a, *sa_ab, "--algorithm", "aes128gcm16", "--key", KEY_AB, check=False)
        assert res.returncode == 1 and b"exists" in res.stderr
        # policy entries: add a DISCARD for ICMP before the PROTECT entry, then remove it
        cli(a, "policy-entry", "add", "--name", "noping", "--remote", b.addr4,
            "--protocol", "icmp", "--action", "discard", "--priority", "1")  # fmt: skip
        plist = cli(a, "policy-entry", "list").stdout.decode().splitlines()
        assert plist[0].startswith("noping: discard") and plist[1].startswith("ab: protect")
        assert not a.ping(b.addr4)
        res = cli(a, "policy-entry", "add", "--name", "bad", "--local", "10.0.0.0/40",
                  "--action", "bypass", check=False)  # fmt: skip
        assert res.returncode == 1 and b"policy.local" in res.stderr
        cli(a, "policy-entry", "del", "--name", "noping")
        assert a.ping(b.addr4)
        # deleting the outbound SA: packets are held again
        cli(a, "sa", "del", "--spi", "0x1001", "--direction", "out")
        assert not a.ping(b.addr4)
        assert "0x00001001" not in cli(a, "sa", "list").stdout.decode()
        # flush stops the data plane and removes everything; plain traffic flows again
        for h in (a, b):
            out = cli(h, "flush").stdout.decode()
            assert "nftables table inet pyipsec" in out
        assert a.ping(b.addr4)
        for _h, p in procs:
            p.wait(timeout=10)
            assert p.returncode == 0
    finally:
        for h, p in procs:
            h.stop(p)
        for h in (topo.a, topo.b):
            h.run(PYIPSEC, "flush", check=False)
        topo.close()
