"""YAML configuration files whose errors name the file, the line and the key.

Administrators fix a configuration faster when the error says where: every value read
through :class:`Section` knows its dotted key path (``connections.web-db.children.0.mode``)
and the line it came from, and every validation error is a
:class:`pyipsec.errors.ConfigError` carrying both.

    doc = load_yaml_file("/etc/pyipsec/pyipsec.yaml")
    for name, conn in doc.section("connections").items():
        mode = conn.get_choice("mode", ("transport", "tunnel"), default="transport")

PyYAML's composer gives us nodes with positions; we walk those nodes ourselves so that
duplicate keys (silently last-wins in plain ``yaml.safe_load``) are an error too.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import yaml

from pyipsec.errors import ConfigError

T = TypeVar("T")

_MISSING: Any = object()


def load_yaml_text(text: str, *, file: str = "<string>") -> Section:
    """Parse YAML text into a :class:`Section` (the document must be a mapping)."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark is not None else None
        raise ConfigError(f"invalid YAML: {exc.problem}", file=file, line=line) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {exc}", file=file) from None
    if node is None:
        node = yaml.MappingNode("tag:yaml.org,2002:map", [])
    if not isinstance(node, yaml.MappingNode):
        raise ConfigError("the document must be a mapping", file=file, line=_line(node))
    return Section(node, file=file, path="")


def load_yaml_file(path: str | os.PathLike[str]) -> Section:
    """Read and parse a YAML file; a missing or unreadable file is a ConfigError."""
    name = os.fspath(path)
    try:
        with open(name, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", file=name) from None
    except UnicodeDecodeError:
        raise ConfigError("not UTF-8 text", file=name) from None
    return load_yaml_text(text, file=name)


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def _join(path: str, key: str | int) -> str:
    return f"{path}.{key}" if path else str(key)


def _plain(node: yaml.Node) -> Any:
    """Convert a node to plain Python values (used for free-form leaves)."""
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_object(node, deep=True)
    finally:
        loader.dispose()


class Value:
    """A scalar or sequence node with its position, for typed access."""

    def __init__(self, node: yaml.Node, *, file: str, path: str) -> None:
        self.node = node
        self.file = file
        self.path = path

    @property
    def line(self) -> int:
        return _line(self.node)

    def error(self, message: str) -> ConfigError:
        """A ConfigError located at this value."""
        return ConfigError(message, key=self.path, file=self.file, line=self.line)

    def raw(self) -> Any:
        return _plain(self.node)

    def as_section(self) -> Section:
        if not isinstance(self.node, yaml.MappingNode):
            raise self.error("must be a mapping")
        return Section(self.node, file=self.file, path=self.path)

    def as_list(self) -> list[Value]:
        if isinstance(self.node, yaml.ScalarNode) and self.node.tag.endswith(":null"):
            return []
        if not isinstance(self.node, yaml.SequenceNode):
            raise self.error("must be a list")
        return [
            Value(item, file=self.file, path=_join(self.path, index))
            for index, item in enumerate(self.node.value)
        ]

    def as_str(self) -> str:
        value = self.raw()
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise self.error("must be a string")
        return str(value)

    def as_int(self, *, minimum: int | None = None, maximum: int | None = None) -> int:
        value = self.raw()
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error("must be an integer")
        if minimum is not None and value < minimum:
            raise self.error(f"must be at least {minimum}")
        if maximum is not None and value > maximum:
            raise self.error(f"must be at most {maximum}")
        return value

    def as_bool(self) -> bool:
        value = self.raw()
        if not isinstance(value, bool):
            raise self.error("must be true or false")
        return value

    def as_str_list(self) -> list[str]:
        if isinstance(self.node, yaml.ScalarNode):
            return [self.as_str()]
        return [item.as_str() for item in self.as_list()]


class Section:
    """A mapping node: keys are checked for duplicates and for unknown names."""

    def __init__(self, node: yaml.MappingNode, *, file: str, path: str) -> None:
        self.node = node
        self.file = file
        self.path = path
        self._items: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise ConfigError(
                    "keys must be strings", key=path or None, file=file, line=_line(key_node)
                )
            key = str(key_node.value)
            if key in self._items:
                raise ConfigError(
                    "duplicate key", key=_join(path, key), file=file, line=_line(key_node)
                )
            self._items[key] = (key_node, value_node)

    @property
    def line(self) -> int:
        return _line(self.node)

    def error(self, message: str, key: str | None = None) -> ConfigError:
        """A ConfigError at ``key`` of this section (or the section itself)."""
        if key is not None and key in self._items:
            return ConfigError(
                message,
                key=_join(self.path, key),
                file=self.file,
                line=_line(self._items[key][0]),
            )
        return ConfigError(
            message,
            key=_join(self.path, key) if key else (self.path or None),
            file=self.file,
            line=self.line,
        )

    def __contains__(self, key: str) -> bool:
        return key in self._items

    def keys(self) -> list[str]:
        return list(self._items)

    def value(self, key: str) -> Value:
        if key not in self._items:
            raise self.error("is required", key)
        return Value(self._items[key][1], file=self.file, path=_join(self.path, key))

    def items(self) -> Iterator[tuple[str, Section]]:
        """Iterate over ``name: mapping`` entries (e.g. named connections)."""
        for key in self._items:
            yield key, self.value(key).as_section()

    def check_keys(self, allowed: Sequence[str]) -> None:
        """Reject keys this section does not know (typos must not pass silently)."""
        for key, (key_node, _) in self._items.items():
            if key not in allowed:
                known = ", ".join(sorted(allowed))
                raise ConfigError(
                    f"unknown key (known: {known})",
                    key=_join(self.path, key),
                    file=self.file,
                    line=_line(key_node),
                )

    def _get(self, key: str, default: Any, convert: Callable[[Value], T]) -> T:
        if key not in self._items:
            if default is _MISSING:
                raise self.error("is required", key)
            return default  # type: ignore[no-any-return]
        return convert(self.value(key))

    def section(self, key: str, *, required: bool = False) -> Section:
        """A nested mapping; an absent optional one reads as empty."""
        if key not in self._items and not required:
            return Section(
                yaml.MappingNode("tag:yaml.org,2002:map", [], self.node.start_mark),
                file=self.file,
                path=_join(self.path, key),
            )
        return self._get(key, _MISSING, Value.as_section)

    def get_str(self, key: str, default: Any = _MISSING) -> str:
        return self._get(key, default, Value.as_str)

    def get_int(
        self,
        key: str,
        default: Any = _MISSING,
        *,
        minimum: int | None = None,
        maximum: int | None = None,
    ) -> int:
        return self._get(key, default, lambda v: v.as_int(minimum=minimum, maximum=maximum))

    def get_bool(self, key: str, default: Any = _MISSING) -> bool:
        return self._get(key, default, Value.as_bool)

    def get_str_list(self, key: str, default: Any = _MISSING) -> list[str]:
        return self._get(key, default, Value.as_str_list)

    def get_list(self, key: str, default: Any = _MISSING) -> list[Value]:
        return self._get(key, default, Value.as_list)

    def get_choice(self, key: str, choices: Sequence[str], default: Any = _MISSING) -> str:
        def convert(value: Value) -> str:
            text = value.as_str()
            if text not in choices:
                raise value.error(f"must be one of {', '.join(choices)} (got {text!r})")
            return text

        return self._get(key, default, convert)

    def get_converted(self, key: str, parse: Callable[[str], T], default: Any = _MISSING) -> T:
        """Read a string and convert it with ``parse``; its ValueError/ConfigError is located."""

        def convert(value: Value) -> T:
            text = value.as_str()
            try:
                return parse(text)
            except ConfigError as exc:
                raise value.error(exc.reason) from None
            except ValueError as exc:
                raise value.error(str(exc)) from None

        return self._get(key, default, convert)
