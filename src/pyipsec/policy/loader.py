"""Policy documents (YAML): parsing and validation, errors naming file, line and key.

.. code-block:: yaml

    name: Web App Encrypt
    description: encrypt everything between the web server and its database
    polling_interval: 3h                 # how often hosts ask the policy server
    key_exchange:                        # "main mode": the IKE SA
      lifetime: 8h
      master_key_pfs: false
      methods: [aes128gcm16-prfsha256-x25519]
    default_response: false              # or {enabled: true, authentication: [...]}
    filter_lists:
      Web - DB traffic:
        filters:
          - source: 10.77.0.1            # me, any, address, subnet, a-b range, DNS name
            destination: 10.77.0.2
            protocol: any                # any, tcp, udp, icmp, or a number
            destination_port: any        # port or range, TCP/UDP/SCTP/DCCP only
            mirrored: true               # default: also the reverse direction
    filter_actions:                      # the built-in ones need no definition
      Encrypt fast:
        action: negotiate                # permit, block, negotiate
        methods:
          - {esp: aes128gcm16, kilobytes: 100000, seconds: 3600}
          - {ah: sha256}
        accept_unsecured: false
        allow_unsecured_fallback: false
        pfs: false
    rules:
      Web - DB:
        filter_list: Web - DB traffic
        filter_action: Require Security (Strict)
        authentication:                  # in order of preference
          - psk: web-db                  # names a secret in the daemon's secrets file
          # - certificate: {ca: /etc/pyipsec/ca.pem}
        tunnel: 192.0.2.1                # absent: transport mode
        connection_type: all

Every check happens here, before anything is compiled; an error is a
:class:`~pyipsec.errors.ConfigError` with ``file``, ``line`` and ``key``.
"""

from __future__ import annotations

import ipaddress
import os
import re
from typing import Any

from pyipsec.crypto.esp_algorithms import get_algorithm
from pyipsec.errors import ConfigError
from pyipsec.ike.proposals import parse_proposal
from pyipsec.ipsec.selectors import (
    PORT_PROTOCOLS,
    AddressRange,
    PortRange,
    format_protocol,
    parse_protocol,
)
from pyipsec.policy.model import (
    AuthMethod,
    Endpoint,
    Filter,
    FilterAction,
    FilterList,
    KeyExchange,
    Policy,
    Rule,
    SecurityMethod,
    Where,
)
from pyipsec.policy.presets import FILTER_ACTIONS, FILTER_LISTS
from pyipsec.util.configfile import Section, Value, load_yaml_file, load_yaml_text
from pyipsec.wire.iana import ProtocolId

__all__ = ["load_policy_file", "load_policy_text", "parse_duration", "parse_endpoint"]

_DNS_LABEL = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)$")
_REF = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_DURATION = re.compile(r"(\d+)\s*([smhd]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> int:
    """``"90"``, ``"90s"``, ``"15m"``, ``"8h"``, ``"1h30m"``, ``"1d"`` -> whole seconds."""
    compact = text.replace(" ", "")
    if not compact or _DURATION.sub("", compact):
        raise ValueError(f"not a duration: {text!r} (examples: 30s, 15m, 8h, 1h30m)")
    return sum(int(n) * _UNITS[u] for n, u in _DURATION.findall(compact))


def _where(section: Section, key: str) -> Where:
    located = section.error("", key)
    return Where(located.file or section.file, located.line, located.key)


def _value_where(value: Value) -> Where:
    return Where(value.file, value.line, value.path)


def _seconds(section: Section, key: str, default: int, minimum: int) -> int:
    if key not in section:
        return default
    value = section.value(key)
    raw = value.raw()
    if isinstance(raw, int) and not isinstance(raw, bool):
        seconds = raw
    else:
        seconds = section.get_converted(key, parse_duration)
    if seconds < minimum:
        raise value.error(f"must be at least {minimum} seconds")
    return seconds


def parse_endpoint(text: str, *, key: str = "address") -> Endpoint:
    """``me``, ``any``, an address, a subnet, a range ``a-b``, or a DNS name."""
    word = text.strip()
    if word.lower() == "me":
        return Endpoint("me", "me")
    if word.lower() in ("any", "*"):
        return Endpoint("any", "any", AddressRange.ANY)
    if any(c.isalpha() for c in word) and ":" not in word and "/" not in word:
        labels = word.rstrip(".").split(".")
        if len(word) > 253 or not all(_DNS_LABEL.match(label) for label in labels):
            raise ConfigError(f"not an address, range, subnet or DNS name: {text!r}", key=key)
        return Endpoint("dns", word.rstrip(".").lower())
    return Endpoint("address", word, AddressRange.parse(word, key=key))


def _endpoint(section: Section, key: str) -> Endpoint:
    return section.get_converted(key, lambda t: parse_endpoint(t, key=key))


def _ports(section: Section, key: str) -> PortRange:
    if key not in section:
        return PortRange.ANY
    value = section.value(key)
    raw = value.raw()
    try:
        return PortRange.parse(raw if isinstance(raw, int) else value.as_str(), key=key)
    except ConfigError as exc:
        raise value.error(exc.reason) from None


_FILTER_KEYS = [
    "source",
    "destination",
    "protocol",
    "source_port",
    "destination_port",
    "mirrored",
    "description",
]


def _filter(value: Value, list_name: str, index: int) -> Filter:
    section = value.as_section()
    section.check_keys(_FILTER_KEYS)
    src = _endpoint(section, "source")
    dst = _endpoint(section, "destination")
    if src.kind == "me" and dst.kind == "me":
        raise section.error("source and destination cannot both be 'me'", "destination")
    protocol = None
    if "protocol" in section:
        pvalue = section.value("protocol")
        raw = pvalue.raw()
        try:
            protocol = parse_protocol(raw if isinstance(raw, int) else pvalue.as_str())
        except ConfigError as exc:
            raise pvalue.error(exc.reason) from None
    sports = _ports(section, "source_port")
    dports = _ports(section, "destination_port")
    for key, ports in (("source_port", sports), ("destination_port", dports)):
        if not ports.is_any and protocol not in PORT_PROTOCOLS:
            raise section.error(
                f"ports need protocol tcp, udp, sctp or dccp, not {format_protocol(protocol)}",
                key,
            )
    versions = {e.range.version for e in (src, dst) if e.range is not None and e.range.version}
    if len(versions) > 1:
        raise section.error("source is IPv4 and destination IPv6 (or the reverse)", "destination")
    if (protocol == 1 and 6 in versions) or (protocol == 58 and 4 in versions):
        raise section.error(
            f"protocol {format_protocol(protocol)} does not go with IPv{versions.pop()} "
            "addresses (icmp is IPv4, ipv6-icmp IPv6)",
            "protocol",
        )
    return Filter(
        source=src,
        destination=dst,
        protocol=protocol,
        source_ports=sports,
        destination_ports=dports,
        mirrored=section.get_bool("mirrored", True),
        description=section.get_str("description", ""),
        list_name=list_name,
        index=index,
        where=_value_where(value),
    )


def _filter_list(name: str, parent: Section) -> FilterList:
    if name in FILTER_LISTS:
        raise parent.error("shadows the built-in filter list of that name", name)
    section = parent.section(name, required=True)
    section.check_keys(["filters", "description"])
    values = section.get_list("filters")
    if not values:
        raise section.error("a filter list needs at least one filter", "filters")
    return FilterList(
        name=name,
        filters=tuple(_filter(v, name, i) for i, v in enumerate(values)),
        description=section.get_str("description", ""),
        where=_where(parent, name),
    )


def _method(value: Value) -> SecurityMethod:
    section = value.as_section()
    section.check_keys(["esp", "ah", "kilobytes", "seconds"])
    if "esp" not in section and "ah" not in section:
        raise value.error("a security method needs 'esp' and/or 'ah'")
    keywords: dict[str, str | None] = {"esp": None, "ah": None}
    for proto, pid in (("esp", ProtocolId.ESP), ("ah", ProtocolId.AH)):
        if proto in section:
            keyword = section.get_str(proto).strip().lower()
            try:
                get_algorithm(keyword, proto)
                parse_proposal(keyword, pid, key=proto)
            except ConfigError as exc:
                raise section.error(exc.reason, proto) from None
            keywords[proto] = keyword
    kilobytes = section.get_int("kilobytes", 100_000, minimum=1)
    return SecurityMethod(
        esp=keywords["esp"],
        ah=keywords["ah"],
        kilobytes=kilobytes,
        seconds=_seconds(section, "seconds", 3600, 60),
        where=_value_where(value),
    )


def _filter_action(name: str, parent: Section) -> FilterAction:
    if name in FILTER_ACTIONS:
        raise parent.error("shadows the built-in filter action of that name", name)
    section = parent.section(name, required=True)
    section.check_keys(
        [
            "action",
            "methods",
            "accept_unsecured",
            "allow_unsecured_fallback",
            "fallback_seconds",
            "pfs",
            "description",
        ]
    )
    action = section.get_choice("action", ("permit", "block", "negotiate"))
    where = _where(parent, name)
    if action != "negotiate":
        for key in section.keys():
            if key not in ("action", "description"):
                raise section.error(f"only a negotiate action takes {key!r}", key)
        return FilterAction(name, action, description=section.get_str("description", ""),
                            where=where)  # fmt: skip
    values = section.get_list("methods")
    if not values:
        raise section.error("negotiate needs at least one security method", "methods")
    fallback = section.get_bool("allow_unsecured_fallback", False)
    if "fallback_seconds" in section and not fallback:
        raise section.error(
            "fallback_seconds needs allow_unsecured_fallback: true", "fallback_seconds"
        )
    return FilterAction(
        name=name,
        action=action,
        methods=tuple(_method(v) for v in values),
        accept_unsecured=section.get_bool("accept_unsecured", False),
        allow_unsecured_fallback=fallback,
        fallback_seconds=_seconds(section, "fallback_seconds", 3, 1),
        pfs=section.get_bool("pfs", False),
        description=section.get_str("description", ""),
        where=where,
    )


def _auth_methods(section: Section, key: str, base_dir: str) -> tuple[AuthMethod, ...]:
    methods: list[AuthMethod] = []
    for value in section.get_list(key):
        item = value.as_section()
        item.check_keys(["certificate", "psk", "kerberos"])
        if len(item.keys()) != 1:
            raise value.error("one of certificate, psk or kerberos per list item")
        kind = item.keys()[0]
        where = _value_where(value)
        if kind == "kerberos":
            raise item.error("kerberos authentication is not supported yet", "kerberos")
        if kind == "psk":
            ref = item.get_str("psk")
            if not _REF.match(ref):
                raise item.error(
                    "names a secret in the daemon's secrets file: letters, digits, '_.-' "
                    "(the secret itself never goes into a policy)",
                    "psk",
                )
            methods.append(AuthMethod("psk", psk_ref=ref, where=where))
        else:
            cert = item.section("certificate", required=True)
            cert.check_keys(["ca"])
            ca = cert.get_str("ca")
            if not os.path.isabs(ca):
                ca = os.path.normpath(os.path.join(base_dir, ca))
            methods.append(AuthMethod("certificate", ca=ca, where=where))
    if not methods:
        raise section.error("at least one authentication method is needed", key)
    return tuple(methods)


def _rule(
    name: str,
    parent: Section,
    lists: dict[str, FilterList],
    actions: dict[str, FilterAction],
    base_dir: str,
) -> Rule:
    section = parent.section(name, required=True)
    section.check_keys(
        [
            "filter_list",
            "filter_action",
            "authentication",
            "tunnel",
            "connection_type",
            "description",
        ]
    )
    list_name = section.get_str("filter_list")
    if list_name not in lists:
        raise section.error(
            f"no filter list named {list_name!r} (defined: {', '.join(lists)})", "filter_list"
        )
    action_name = section.get_str("filter_action")
    if action_name not in actions:
        raise section.error(
            f"no filter action named {action_name!r} (defined: {', '.join(actions)})",
            "filter_action",
        )
    action = actions[action_name]
    auth: tuple[AuthMethod, ...] = ()
    if action.action == "negotiate":
        if "authentication" not in section:
            raise section.error("a negotiate rule needs authentication methods", "authentication")
        auth = _auth_methods(section, "authentication", base_dir)
    elif "authentication" in section:
        raise section.error(
            f"authentication only applies to negotiate rules ({action_name!r} is {action.action})",
            "authentication",
        )
    tunnel = None
    if "tunnel" in section:
        if action.action != "negotiate":
            raise section.error("a tunnel endpoint only applies to negotiate rules", "tunnel")
        tunnel = section.get_converted("tunnel", lambda t: str(ipaddress.ip_address(t.strip())))
    return Rule(
        name=name,
        filter_list=list_name,
        filter_action=action_name,
        authentication=auth,
        tunnel=tunnel,
        connection_type=section.get_choice("connection_type", ("all", "lan", "remote"), "all"),
        description=section.get_str("description", ""),
        where=_where(parent, name),
    )


def _key_exchange(doc: Section) -> KeyExchange:
    if "key_exchange" not in doc:
        return KeyExchange()
    section = doc.section("key_exchange")
    section.check_keys(["lifetime", "master_key_pfs", "methods"])
    methods = section.get_str_list("methods", list(KeyExchange().methods))
    if not methods:
        raise section.error("at least one key exchange method is needed", "methods")
    for i, keyword in enumerate(methods):
        try:
            parse_proposal(keyword, ProtocolId.IKE, key="methods")
        except ConfigError as exc:
            raise ConfigError(
                exc.reason, key=f"key_exchange.methods.{i}", file=doc.file,
                line=section.value("methods").line,
            ) from None  # fmt: skip
    return KeyExchange(
        lifetime=_seconds(section, "lifetime", 28800, 300),
        master_key_pfs=section.get_bool("master_key_pfs", False),
        methods=tuple(methods),
        where=_where(doc, "key_exchange"),
    )


def _default_response(doc: Section, base_dir: str) -> tuple[bool, tuple[AuthMethod, ...]]:
    if "default_response" not in doc:
        return False, ()
    raw: Any = doc.value("default_response").raw()
    if isinstance(raw, bool):
        if raw:
            raise doc.error(
                "the default response rule needs authentication: write "
                "{enabled: true, authentication: [...]}",
                "default_response",
            )
        return False, ()
    section = doc.section("default_response")
    section.check_keys(["enabled", "authentication"])
    enabled = section.get_bool("enabled", True)
    if not enabled:
        return False, ()
    return True, _auth_methods(section, "authentication", base_dir)


def parse_policy(doc: Section, *, base_dir: str = ".") -> Policy:
    """Validate a parsed YAML document and build the :class:`Policy`."""
    doc.check_keys(
        [
            "name",
            "description",
            "polling_interval",
            "key_exchange",
            "default_response",
            "filter_lists",
            "filter_actions",
            "rules",
        ]
    )
    name = doc.get_str("name").strip()
    if not name:
        raise doc.error("must not be empty", "name")
    lists: dict[str, FilterList] = dict(FILTER_LISTS)
    lists_section = doc.section("filter_lists")
    for list_name in lists_section.keys():
        lists[list_name] = _filter_list(list_name, lists_section)
    actions: dict[str, FilterAction] = dict(FILTER_ACTIONS)
    actions_section = doc.section("filter_actions")
    for action_name in actions_section.keys():
        actions[action_name] = _filter_action(action_name, actions_section)
    rules_section = doc.section("rules")
    rules = tuple(
        _rule(rule_name, rules_section, lists, actions, base_dir)
        for rule_name in rules_section.keys()
    )
    default_response, default_auth = _default_response(doc, base_dir)
    if not rules and not default_response:
        raise doc.error("the policy has no rules and no default response rule", "rules")
    return Policy(
        name=name,
        rules=rules,
        filter_lists=lists,
        filter_actions=actions,
        description=" ".join(doc.get_str("description", "").split()),
        key_exchange=_key_exchange(doc),
        default_response=default_response,
        default_response_auth=default_auth,
        polling_interval=_seconds(doc, "polling_interval", 10800, 60),
        where=Where(doc.file, 1, None),
    )


def load_policy_text(text: str, *, file: str = "<string>", base_dir: str = ".") -> Policy:
    """Parse and validate a policy from YAML text."""
    return parse_policy(load_yaml_text(text, file=file), base_dir=base_dir)


def load_policy_file(path: str | os.PathLike[str]) -> Policy:
    """Read, parse and validate a policy file (relative CA paths are relative to it)."""
    name = os.fspath(path)
    doc = load_yaml_file(name)
    return parse_policy(doc, base_dir=os.path.dirname(os.path.abspath(name)))
