from pyipsec.cli.tables import (
    human_bytes,
    human_seconds,
    main_mode_table,
    quick_mode_table,
    render_table,
    stats_table,
)


def test_render_table_aligns_columns() -> None:
    text = render_table(["A", "LONGER"], [["x", 1], ["yyyy", None]])
    lines = text.splitlines()
    assert lines[0] == "A     LONGER"
    assert lines[1] == "----  ------"
    assert lines[2] == "x     1"
    assert lines[3] == "yyyy  -"


def test_human_units() -> None:
    assert human_bytes(512) == "512 B"
    assert human_bytes(20 * 1024 * 1024) == "20.0 MiB"
    assert human_seconds(59) == "59s"
    assert human_seconds(3599) == "59m59s"
    assert human_seconds(7300) == "2h01m"
    assert human_seconds(-1) == "due"
    assert human_seconds(None) == "-"


def test_main_and_quick_mode_tables_show_sa_fields() -> None:
    ike = [
        {
            "name": "web-db",
            "state": "ESTABLISHED",
            "local_addr": "10.0.0.1",
            "remote_addr": "10.0.0.2",
            "local_id": "a",
            "remote_id": "b",
            "auth": "psk",
            "encryption": "AES_GCM_16-128",
            "prf": "PRF_HMAC_SHA2_256",
            "ke": "CURVE_25519",
            "established_for": 65,
            "rekey_in": 3000,
        }
    ]
    text = main_mode_table(ike)
    assert "web-db" in text and "CURVE_25519" in text and "65s ago" in text and "50m00s" in text
    child = [
        {
            "name": "web-db",
            "ike_sa": "web-db#1",
            "state": "INSTALLED",
            "mode": "transport",
            "protocol": "esp",
            "spi_in": "c1a2b3c4",
            "spi_out": "d1d2d3d4",
            "algorithm": "aes128gcm16",
            "local_ts": ["10.0.0.1/32"],
            "remote_ts": ["10.0.0.2/32"],
            "bytes_in": 2048,
            "bytes_out": 100,
            "packets_in": 2,
            "packets_out": 1,
            "rekey_in": 10,
        }
    ]
    text = quick_mode_table(child)
    assert "c1a2b3c4" in text and "2.0 KiB" in text and "10.0.0.2/32" in text


def test_stats_table_uses_monitor_words_and_keeps_unknown_counters() -> None:
    text = stats_table({"bad_spi_packets": 3, "replayed_packets": 1, "custom_counter": 7})
    assert "Bad SPI packets" in text and "Packets with replay detection" in text
    assert "custom_counter" in text
