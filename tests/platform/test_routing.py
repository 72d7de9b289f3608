"""Policy routing: fwmark rule, TUN route, blackhole backstop; removal leaves nothing."""

from __future__ import annotations

import pytest

from netns import run_in_netns

pytestmark = pytest.mark.netns


def test_install_and_remove_routing():
    out = run_in_netns(
        """
        import subprocess
        from pyipsec.platform.linux import routing, sysctl
        from pyipsec.platform.linux.tun import Tun
        cfg = routing.RoutingConfig()
        tun = Tun.open(cfg.ifname)
        routing.configure_link(cfg.ifname, 1400)
        sysctl.prepare_tun(cfg.ifname)
        assert sysctl.read(f"net.ipv4.conf.{cfg.ifname}.rp_filter") == "0"
        routing.install_routing(cfg)
        routing.install_routing(cfg)          # idempotent
        sh = lambda c: subprocess.run(c, shell=True, capture_output=True, text=True).stdout
        rules4, rules6 = sh("ip -4 rule"), sh("ip -6 rule")
        mark = hex(cfg.mark)
        assert rules4.count(mark) == 1 and rules6.count(mark) == 1, rules4
        t4 = sh(f"ip -4 route show table {cfg.table}")
        assert "default dev pyipsec0" in t4 and "blackhole default" in t4, t4
        assert "blackhole default" in sh(f"ip -6 route show table {cfg.table}")
        # the marked route goes into the TUN; with the TUN gone, into the blackhole
        assert "dev pyipsec0" in sh(f"ip route get 10.1.2.3 mark {cfg.mark}")
        tun.close()
        assert "blackhole" in sh(f"ip route get 10.1.2.3 mark {cfg.mark} 2>&1") or \\
            "Invalid" in subprocess.run(f"ip route get 10.1.2.3 mark {cfg.mark}", shell=True,
                capture_output=True, text=True).stderr
        removed = routing.remove_routing(cfg)
        assert "rule v4" in removed and "rule v6" in removed, removed
        assert mark not in sh("ip -4 rule") + sh("ip -6 rule")
        assert sh(f"ip -4 route show table {cfg.table}").strip() == ""
        assert routing.remove_routing(cfg) == []
        print("ok")
        """
    )
    assert out.strip() == "ok"
