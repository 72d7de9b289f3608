"""The monitor page renderer: content, escaping, odd answers from the daemon."""

from __future__ import annotations

import html.parser

from pyipsec.web.page import esc, human_bytes, human_seconds, render_page


class _Collect(html.parser.HTMLParser):
    """Collects start tags and text, to prove the page's structure comes from us only."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(page: str) -> _Collect:
    parser = _Collect()
    parser.feed(page)
    return parser


HOSTILE = '"><img src=x onerror=alert(1)><script>x</script>'


def test_hostile_values_become_text_not_markup() -> None:
    status = {
        "ike_sas": [{"name": HOSTILE, "remote_id": HOSTILE, "state": HOSTILE}],
        "child_sas": [{"name": HOSTILE, "spi_in": "c0ffee01", "local_ts": [HOSTILE]}],
        "recent_failures": [{"peer": HOSTILE, "reason": HOSTILE}],
        "version": HOSTILE,
    }
    page = render_page(status, {HOSTILE: 1}, refresh=0)
    parsed = parse(page)
    assert "script" not in parsed.tags and "img" not in parsed.tags
    assert sum(HOSTILE in chunk for chunk in parsed.text) >= 7  # shown, as text
    assert "c0ffee01" in page


def test_error_banner_replaces_tables() -> None:
    page = render_page(None, None, error="the daemon is not running <x>")
    assert "Daemon unreachable" in page and "not running &lt;x&gt;" in page
    assert "Main Mode (IKE SAs)" not in page
    assert "daemon up" not in page
    assert "daemon up 1h 02m" in render_page({"uptime": 3723, "version": "9"}, {})


def test_empty_daemon_and_refresh() -> None:
    page = render_page({"ike_sas": [], "child_sas": []}, {}, refresh=3)
    assert "no IKE SA" in page and "no Child SA" in page and "no counters" in page
    assert '<meta http-equiv="refresh" content="3">' in page
    assert "http-equiv" not in render_page({}, {}, refresh=0)


def test_wrong_shapes_do_not_break_the_page() -> None:
    page = render_page({"ike_sas": "x", "child_sas": [1, None, {"bytes_in": "lots"}]}, [1])
    assert "Quick Mode (Child SAs)" in page
    assert "0 B" in page  # totals ignore non-numbers


def test_statistics_order_and_labels() -> None:
    page = render_page({}, {"zeta_counter": 5, "bad_spi_packets": 1234567, "flag": True})
    assert page.index("Bad SPI packets") < page.index("zeta counter")
    assert "1,234,567" in page and ">flag<" not in page


def test_formatters() -> None:
    assert esc(None) == "-" and esc([]) == "-" and esc(["a", "<b>"]) == "a, &lt;b&gt;"
    assert human_bytes(512) == "512 B" and human_bytes(2048) == "2.0 KiB"
    assert human_bytes("x") == "-" and human_bytes(True) == "-"
    assert human_seconds(-1) == "due" and human_seconds(59) == "59s"
    assert human_seconds(600) == "10m 00s" and human_seconds(3723) == "1h 02m"
    assert human_seconds(200000) == "2d 7h" and human_seconds(None) == "-"


def test_policy_line() -> None:
    policy = {
        "name": "<web-db>",
        "version": 3,
        "source": "https://policy.example/",
        "mode": "server",
        "applied_at": 0,
        "spd_entries": 4,
        "last_error": "signature <bad>",
    }
    page = render_page({"policy": policy}, {})
    assert "&lt;web-db&gt; version 3" in page and "4 SPD entries" in page
    assert "last error: signature &lt;bad&gt;" in page
    empty = render_page({"policy": {"name": None, "source": "/etc/p.yaml"}}, {})
    assert "none applied" in empty and "last error" not in empty
    assert 'class="policy"' not in render_page({}, {})


def test_fallbacks_section_only_when_some_host_is_in_clear() -> None:
    assert "unsecured fallback" not in render_page({"fallbacks": []}, {})
    row = {"connection": "all-ip", "child": "all-ip-1", "remote": "10.0.0.9", "for": 75}
    page = render_page({"fallbacks": [row]}, {})
    assert "In clear after unsecured fallback" in page
    assert "10.0.0.9" in page and "75s" in page
