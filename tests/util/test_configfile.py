import os

import pytest

from pyipsec.errors import ConfigError
from pyipsec.util.configfile import load_yaml_file, load_yaml_text

DOC = """\
connections:
  web-db:
    mode: tunel
    tries: 3
    secret: s3cr3t
  other:
    tries: -1
"""


def test_error_names_file_line_and_key() -> None:
    doc = load_yaml_text(DOC, file="pyipsec.yaml")
    conn = dict(doc.section("connections").items())["web-db"]
    with pytest.raises(ConfigError) as info:
        conn.get_choice("mode", ("transport", "tunnel"))
    err = info.value
    assert (err.file, err.line, err.key) == ("pyipsec.yaml", 3, "connections.web-db.mode")
    assert "must be one of transport, tunnel" in str(err)


def test_range_and_type_checks() -> None:
    doc = load_yaml_text(DOC)
    other = doc.section("connections").section("other")
    with pytest.raises(ConfigError, match="at least 0") as info:
        other.get_int("tries", minimum=0)
    assert info.value.line == 7
    with pytest.raises(ConfigError, match="must be an integer"):
        doc.section("connections").section("web-db").get_int("mode")


def test_missing_required_key_and_defaults() -> None:
    section = load_yaml_text("a: {}").section("a")
    assert section.get_int("x", 5) == 5
    with pytest.raises(ConfigError, match="is required") as info:
        section.get_str("x")
    assert info.value.key == "a.x"
    assert section.section("absent").keys() == []
    with pytest.raises(ConfigError, match="is required"):
        section.section("absent", required=True)


def test_duplicate_and_unknown_keys_are_errors() -> None:
    with pytest.raises(ConfigError, match="duplicate key") as info:
        load_yaml_text("a: 1\nb: 2\na: 3\n", file="f.yaml")
    assert info.value.line == 3
    doc = load_yaml_text("modee: tunnel\n")
    with pytest.raises(ConfigError, match="unknown key") as info:
        doc.check_keys(["mode"])
    assert info.value.key == "modee"


def test_invalid_yaml_and_non_mapping() -> None:
    with pytest.raises(ConfigError, match="invalid YAML") as info:
        load_yaml_text("a: [1, 2\nb: 3\n", file="x.yaml")
    assert info.value.file == "x.yaml" and info.value.line is not None
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_yaml_text("- 1\n- 2\n")


def test_converted_values_locate_parser_errors() -> None:
    doc = load_yaml_text("addr: 10.0.0.300\nlist: [a, b]\nflag: yes\n")

    def parse(text: str) -> int:
        raise ValueError(f"bad address {text}")

    with pytest.raises(ConfigError, match="bad address 10.0.0.300") as info:
        doc.get_converted("addr", parse)
    assert info.value.line == 1
    assert doc.get_str_list("list") == ["a", "b"]
    assert doc.get_bool("flag") is True


def test_file_errors(tmp_path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_yaml_file(tmp_path / "missing.yaml")
    path = tmp_path / "ok.yaml"
    path.write_text("a: 1\n")
    assert load_yaml_file(path).get_int("a") == 1
    os.chmod(path, 0o600)
