from collections import deque

from pyipsec.daemon.tables import ChildSaRow, Failure, IkeSaRow, status_report


def test_status_report_splits_proposal_and_merges_traffic_counters() -> None:
    ike = IkeSaRow(
        handle=3,
        name="web-db",
        local_addr="10.0.0.1",
        remote_addr="10.0.0.2",
        local_id="10.0.0.1",
        remote_id="10.0.0.2",
        auth="psk",
        proposal="aes128gcm16-prfsha256-x25519-mlkem768",
        initiator=True,
        spi_i="01",
        spi_r="02",
        established=100.0,
        rekey_at=400.0,
    )
    child = ChildSaRow(
        ike_sa=3,
        name="db",
        protocol="esp",
        mode="transport",
        spi_in=0xC1,
        spi_out=0xC2,
        algorithm="aes128gcm16",
        esn=True,
        encap=False,
        local_ts=["10.0.0.1"],
        remote_ts=["10.0.0.2"],
        installed=150.0,
        rekey_at=250.0,
    )
    report = status_report(
        now=200.0, started=50.0, ike_sas={3: ike}, child_sas={0xC1: child},
        failures=deque([Failure(when=0.0, peer="10.0.0.9", reason="bad", notify="X")]),
        per_spi={0xC1: {"bytes_in": 10, "packets_in": 1}, 0xC2: {"bytes_out": 20,
                                                                  "packets_out": 2}},
    )  # fmt: skip
    (row,) = report["ike_sas"]
    assert (row["encryption"], row["prf"], row["ke"]) == ("aes128gcm16", "prfsha256",
                                                         "x25519-mlkem768")  # fmt: skip
    assert row["integrity"] is None
    assert row["established_for"] == 100.0 and row["rekey_in"] == 200.0
    (crow,) = report["child_sas"]
    assert crow["ike_sa"] == "web-db[3]" and crow["spi_in"] == "000000c1"
    assert (crow["bytes_in"], crow["bytes_out"], crow["packets_out"]) == (10, 20, 2)
    assert crow["rekey_in"] == 50.0
    assert report["uptime"] == 150.0
    assert report["recent_failures"][0]["notify"] == "X"


def test_cbc_proposal_reports_integrity() -> None:
    ike = IkeSaRow(
        handle=1,
        name="n",
        local_addr="a",
        remote_addr="b",
        local_id="a",
        remote_id="b",
        auth="pubkey",
        proposal="aes256-sha256-prfsha256-modp2048",
        initiator=False,
        spi_i="1",
        spi_r="2",
        established=0.0,
        rekey_at=None,
    )
    (row,) = status_report(now=1.0, started=0.0, ike_sas={1: ike}, child_sas={}, failures=[],
                           per_spi={})["ike_sas"]  # fmt: skip
    assert row["integrity"] == "sha256" and row["ke"] == "modp2048" and row["rekey_in"] is None
