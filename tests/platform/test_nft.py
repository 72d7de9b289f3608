"""nft -j: atomic table replacement, counters by comment, deletion."""

from __future__ import annotations

import pytest

from netns import run_in_netns

pytestmark = pytest.mark.netns


def test_replace_count_delete():
    out = run_in_netns(
        """
        import socket
        from pyipsec.platform.linux import nft
        t = nft.TableRef("inet", "pyitest")
        assert not nft.table_exists(t) and not nft.delete_table(t)
        chain = {"add": {"chain": {"family": "inet", "table": "pyitest", "name": "out",
                 "type": "filter", "hook": "output", "prio": 0, "policy": "accept"}}}
        def rule(port, comment):
            return {"add": {"rule": {"family": "inet", "table": "pyitest", "chain": "out",
                    "comment": comment, "expr": [
                        {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": 17}},
                        {"match": {"op": "==", "left": {"payload": {"protocol": "udp",
                         "field": "dport"}}, "right": port}},
                        {"counter": None}, {"drop": None}]}}}
        nft.replace_table(t, [chain, rule(9, "nine")])
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for _ in range(2):
            try:
                s.sendto(b"x", ("127.0.0.1", 9))
            except PermissionError:
                pass
        assert nft.rule_counters(t)["nine"][0] == 2
        nft.replace_table(t, [chain, rule(10, "ten")])   # replaced as a whole
        c = nft.rule_counters(t)
        assert "nine" not in c and c["ten"] == (0, 0), c
        try:
            nft.replace_table(t, [chain, {"add": {"rule": {"family": "inet", "table": "pyitest",
                              "chain": "nosuch", "expr": [{"accept": None}]}}}])
            raise SystemExit("bad ruleset accepted")
        except nft.NftError:
            pass
        assert "ten" in nft.rule_counters(t)       # the failed transaction changed nothing
        assert nft.delete_table(t) and not nft.table_exists(t)
        print("ok")
        """
    )
    assert out.strip() == "ok"
