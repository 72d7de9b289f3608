"""Built-in filter actions, filter lists and example policies.

The names are the ones administrators know from Windows IPsec policies. Built-in filter
actions and filter lists can be used by name in any policy without being defined there
(defining one with the same name is an error, so a name always means one thing).

* Filter actions: "Integrity and Encryption", "Integrity only", "Require Security
  (Strict)" (negotiate, no clear text at all), "Request Security" (negotiate, accept clear
  text arriving and fall back to clear text with hosts that do not answer IKE), "Permit",
  "Block".
* Filter lists: "All IP Traffic" (me <-> any) and "All ICMP Traffic" (me <-> any, ICMP).
* Example policies (YAML text, see :data:`EXAMPLES` and ``examples/policies/``): "Client
  (Respond Only)", "Server (Request Security)", "Secure Server (Require Security)" and
  "Web App Encrypt" (the reference scenario: server A and server B, parametrised by their
  addresses).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from pyipsec.errors import ConfigError
from pyipsec.ipsec.selectors import AddressRange
from pyipsec.policy.model import Endpoint, Filter, FilterAction, FilterList, SecurityMethod

if TYPE_CHECKING:
    from pyipsec.policy.model import Policy

__all__ = ["EXAMPLES", "FILTER_ACTIONS", "FILTER_LISTS", "example_policy", "example_yaml"]

#: Windows' default session-key lifetimes: 100,000 KB or 1 hour
_KB, _SECONDS = 100_000, 3600

_ENCRYPT = (
    SecurityMethod(esp="aes128gcm16", kilobytes=_KB, seconds=_SECONDS),
    SecurityMethod(esp="aes256gcm16", kilobytes=_KB, seconds=_SECONDS),
    SecurityMethod(esp="aes256-sha256", kilobytes=_KB, seconds=_SECONDS),
)
_INTEGRITY = (
    SecurityMethod(esp="null-sha256", kilobytes=_KB, seconds=_SECONDS),
    SecurityMethod(esp="aes128gmac", kilobytes=_KB, seconds=_SECONDS),
)

FILTER_ACTIONS: Mapping[str, FilterAction] = {
    a.name: a
    for a in (
        FilterAction(
            "Integrity and Encryption",
            "negotiate",
            _ENCRYPT,
            description="ESP with encryption and integrity; no clear text",
        ),
        FilterAction(
            "Integrity only",
            "negotiate",
            _INTEGRITY,
            description="ESP with integrity only (data readable on the wire); no clear text",
        ),
        FilterAction(
            "Require Security (Strict)",
            "negotiate",
            _ENCRYPT,
            description="negotiate security; never accept or send clear text",
        ),
        FilterAction(
            "Request Security",
            "negotiate",
            _ENCRYPT,
            accept_unsecured=True,
            allow_unsecured_fallback=True,
            description="negotiate security; clear text with hosts that do not support IPsec",
        ),
        FilterAction("Permit", "permit", description="let the traffic pass in clear"),
        FilterAction("Block", "block", description="drop the traffic"),
    )
}

_ME = Endpoint("me", "me")
_ANY = Endpoint("any", "any", AddressRange.ANY)

FILTER_LISTS: Mapping[str, FilterList] = {
    fl.name: fl
    for fl in (
        FilterList(
            "All IP Traffic",
            (Filter(_ME, _ANY, None, list_name="All IP Traffic", description="all IP packets"),),
            description="every packet from this host to any other host, and back",
        ),
        FilterList(
            "All ICMP Traffic",
            (Filter(_ME, _ANY, 1, list_name="All ICMP Traffic", description="all ICMP packets"),),
            description="every ICMP packet from this host to any other host, and back",
        ),
    )
}

_CLIENT = """\
# Client (Respond Only): communicate in clear normally; answer with IPsec when a server
# asks for security (the default response rule).
name: Client (Respond Only)
description: Communicate normally (unsecured); use the default response rule to
  negotiate with servers that request security.
default_response:
  enabled: true
  authentication:
    - certificate: {{ca: {ca}}}
"""

_SERVER = """\
# Server (Request Security): always ask for security, accept clear text from hosts that
# do not support IPsec; ICMP always in clear.
name: Server (Request Security)
description: For all IP traffic, always request security using certificates; allow
  unsecured communication with clients that do not respond to the request.
rules:
  All IP Traffic:
    filter_list: All IP Traffic
    filter_action: Request Security
    authentication:
      - certificate: {{ca: {ca}}}
  All ICMP Traffic:
    filter_list: All ICMP Traffic
    filter_action: Permit
default_response:
  enabled: true
  authentication:
    - certificate: {{ca: {ca}}}
"""

_SECURE = """\
# Secure Server (Require Security): all IP traffic must be protected; ICMP stays in clear
# so that ping and path MTU discovery keep working.
name: Secure Server (Require Security)
description: For all IP traffic, always require security using certificates; never
  communicate in clear with untrusted clients.
rules:
  All IP Traffic:
    filter_list: All IP Traffic
    filter_action: Require Security (Strict)
    authentication:
      - certificate: {{ca: {ca}}}
  All ICMP Traffic:
    filter_list: All ICMP Traffic
    filter_action: Permit
"""

_WEB_APP = """\
# Web App Encrypt: the reference scenario. Server A runs the web application, server B
# its database; everything between them is authenticated and encrypted (ESP, transport
# mode); traffic with any other host is left alone.
name: Web App Encrypt
description: Encrypt and authenticate all traffic between the web server and its database.
key_exchange:
  lifetime: 8h
  methods: [aes128gcm16-prfsha256-x25519, aes256gcm16-prfsha384-ecp384]
filter_lists:
  Web - DB traffic:
    description: all traffic between server A (web) and server B (database)
    filters:
      - source: {server_a}
        destination: {server_b}
        protocol: any
        mirrored: true
        description: web server <-> database server
rules:
  Web - DB:
    description: all traffic between server A and server B, encrypted
    filter_list: Web - DB traffic
    filter_action: Require Security (Strict)
    authentication:
      - {auth}
"""

#: example policy name -> (YAML template, parameters with their defaults, example file)
EXAMPLES: Mapping[str, tuple[str, dict[str, str], str]] = {
    "Client (Respond Only)": (_CLIENT, {"ca": "/etc/pyipsec/ca.pem"}, "client-respond-only"),
    "Server (Request Security)": (
        _SERVER,
        {"ca": "/etc/pyipsec/ca.pem"},
        "server-request-security",
    ),
    "Secure Server (Require Security)": (
        _SECURE,
        {"ca": "/etc/pyipsec/ca.pem"},
        "secure-server-require-security",
    ),
    "Web App Encrypt": (
        _WEB_APP,
        {"server_a": "10.77.0.1", "server_b": "10.77.0.2", "auth": "psk: web-db"},
        "web-app-encrypt",
    ),
}


def example_yaml(name: str, **params: str) -> str:
    """The YAML text of the built-in example policy ``name`` with ``params`` filled in.

    Unknown names and unknown parameters are a ConfigError (they would be typos).
    """
    if name not in EXAMPLES:
        known = ", ".join(EXAMPLES)
        raise ConfigError(f"no built-in policy named {name!r} (known: {known})", key="name")
    template, defaults, _ = EXAMPLES[name]
    for key in params:
        if key not in defaults:
            known = ", ".join(defaults) or "none"
            raise ConfigError(f"unknown parameter of {name!r} (known: {known})", key=key)
    values = {**defaults, **params}
    return template.format(**values)


def example_policy(name: str, **params: str) -> Policy:
    """The built-in example policy ``name``, parsed and validated like any policy file."""
    from pyipsec.policy.loader import load_policy_text  # the loader uses our presets

    return load_policy_text(example_yaml(name, **params), file=f"<builtin:{name}>")
