"""The policy model: filter lists, filter actions, rules, policies (plain frozen dataclasses).

The vocabulary is the one Windows IPsec policies made familiar to administrators:

* a :class:`Filter` says which traffic (source, destination, protocol, ports; ``mirrored``
  also matches the reverse direction); filters are grouped in named :class:`FilterList` s;
* a :class:`FilterAction` says what to do with it: ``permit`` (clear text), ``block``
  (drop) or ``negotiate`` (protect with IPsec, one of an ordered list of
  :class:`SecurityMethod` s);
* a :class:`Rule` joins a filter list, a filter action and the authentication methods
  (and a tunnel endpoint for tunnel mode);
* a :class:`Policy` is a set of rules with key-exchange settings and the default response
  rule. Rules are *not* ordered by the author: the most specific filter wins
  (:mod:`pyipsec.policy.order`).

Every object carries a :class:`Where` (file, line, key) so that compilation errors can
point at the YAML the administrator wrote. Objects are built by
:mod:`pyipsec.policy.loader` (from YAML) or :mod:`pyipsec.policy.presets` (built-ins);
their constructors do not validate again. Nothing here holds a secret: a pre-shared key
is named (``psk_ref``), the secret itself lives in the daemon's 0600 secrets file.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pyipsec.errors import ConfigError
from pyipsec.ipsec.selectors import AddressRange, PortRange, format_protocol

__all__ = [
    "AuthMethod",
    "Endpoint",
    "Filter",
    "FilterAction",
    "FilterList",
    "KeyExchange",
    "Policy",
    "Rule",
    "SecurityMethod",
    "Where",
]


@dataclass(frozen=True)
class Where:
    """Where an object was written: file, line (1-based) and dotted key."""

    file: str = "<builtin>"  #: file name, or ``<builtin>`` / ``<string>``
    line: int | None = None  #: line of the object's key in the file
    key: str | None = None  #: dotted key path, e.g. ``filter_lists.Web.filters.0``

    def error(self, message: str, key: str | None = None) -> ConfigError:
        """A ConfigError located here (``key`` appended to this object's key path)."""
        full = self.key if key is None else (f"{self.key}.{key}" if self.key else key)
        return ConfigError(message, key=full, file=self.file, line=self.line)

    def __str__(self) -> str:
        text = self.file + (f":{self.line}" if self.line is not None else "")
        return f"{text} ({self.key})" if self.key else text


@dataclass(frozen=True)
class Endpoint:
    """One side of a filter.

    ``kind``: ``"me"`` (this host's own addresses, known at compilation), ``"any"``,
    ``"address"`` (an address, subnet or range: ``range`` holds it) or ``"dns"`` (a name
    resolved when the policy is applied, through the resolver given to the compiler).
    """

    kind: str  #: "me", "any", "address" or "dns"
    text: str  #: what the administrator wrote
    range: AddressRange | None = None  #: for "address"

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class Filter:
    """Which traffic a rule is about (one line of a filter list)."""

    source: Endpoint  #: source addresses
    destination: Endpoint  #: destination addresses
    protocol: int | None = None  #: IP protocol number, None for any
    source_ports: PortRange = PortRange.ANY  #: source port range (TCP/UDP/SCTP...)
    destination_ports: PortRange = PortRange.ANY  #: destination port range
    mirrored: bool = True  #: also match the reverse direction (destination -> source)
    description: str = ""  #: free text
    list_name: str = ""  #: the filter list it belongs to
    index: int = 0  #: position in that list (0-based)
    where: Where = field(default_factory=Where, compare=False)

    @property
    def label(self) -> str:
        """A short name for messages: ``"List name" #1 (description)``."""
        desc = f" ({self.description})" if self.description else ""
        return f"{self.list_name!r} #{self.index + 1}{desc}"

    def describe(self) -> str:
        """The filter in one line: ``10.0.0.1 <-> 10.0.0.2 tcp dport 5432``."""
        arrow = "<->" if self.mirrored else "->"
        text = f"{self.source} {arrow} {self.destination} {format_protocol(self.protocol)}"
        if not self.source_ports.is_any:
            text += f" sport {self.source_ports}"
        if not self.destination_ports.is_any:
            text += f" dport {self.destination_ports}"
        return text


@dataclass(frozen=True)
class FilterList:
    """A named list of filters."""

    name: str
    filters: tuple[Filter, ...]
    description: str = ""
    where: Where = field(default_factory=Where, compare=False)


@dataclass(frozen=True)
class SecurityMethod:
    """One acceptable way to protect traffic, with its session-key lifetimes.

    ``esp``: an ESP transform keyword (``aes128gcm16``, ``aes256-sha256``; integrity only:
    ``null-sha256``, ``aes128gmac``); ``ah``: an AH keyword (``sha256``); both set means AH
    with ESP (an SA bundle). Session keys are renewed after ``kilobytes`` or ``seconds``.
    """

    esp: str | None = None  #: ESP keyword, or None
    ah: str | None = None  #: AH keyword, or None
    kilobytes: int = 100_000  #: rekey after this much traffic (KiB)
    seconds: int = 3600  #: rekey after this many seconds
    where: Where = field(default_factory=Where, compare=False)

    @property
    def kind(self) -> str:
        """``"esp"``, ``"ah"`` or ``"ah+esp"``."""
        if self.esp and self.ah:
            return "ah+esp"
        return "ah" if self.ah else "esp"

    def describe(self) -> str:
        parts = [f"AH {self.ah}"] if self.ah else []
        if self.esp:
            parts.append(f"ESP {self.esp}")
        return " + ".join(parts) + f" ({self.kilobytes} KB / {self.seconds} s)"


@dataclass(frozen=True)
class FilterAction:
    """What happens to matching traffic: ``permit``, ``block`` or ``negotiate``.

    For ``negotiate``: ``methods`` in order of preference; ``accept_unsecured``: accept
    clear-text traffic arriving, but always answer with IPsec; ``allow_unsecured_fallback``:
    talk in clear to hosts that do not answer IKE, after ``fallback_seconds`` of failed
    negotiation; ``pfs``: new key exchange for every session key.
    """

    name: str
    action: str  #: "permit", "block" or "negotiate"
    methods: tuple[SecurityMethod, ...] = ()
    accept_unsecured: bool = False
    allow_unsecured_fallback: bool = False
    fallback_seconds: float = 3.0
    pfs: bool = False
    description: str = ""
    where: Where = field(default_factory=Where, compare=False)


@dataclass(frozen=True)
class AuthMethod:
    """One authentication method: ``certificate`` (issued by the CA in ``ca``), ``psk``
    (the secret named ``psk_ref`` in the daemon's secrets file) or ``kerberos``."""

    kind: str  #: "certificate", "psk" or "kerberos"
    ca: str | None = None  #: CA certificate file (certificate)
    psk_ref: str | None = None  #: name of the pre-shared key (psk)
    where: Where = field(default_factory=Where, compare=False)

    def describe(self) -> str:
        if self.kind == "certificate":
            return f"certificate issued by {self.ca}"
        if self.kind == "psk":
            return f"pre-shared key {self.psk_ref!r}"
        return self.kind


@dataclass(frozen=True)
class Rule:
    """A filter list + a filter action + authentication + mode (transport or tunnel)."""

    name: str
    filter_list: str  #: name of the filter list
    filter_action: str  #: name of the filter action
    authentication: tuple[AuthMethod, ...] = ()
    tunnel: str | None = None  #: remote tunnel endpoint address; None: transport mode
    connection_type: str = "all"  #: "all", "lan" or "remote"
    description: str = ""
    where: Where = field(default_factory=Where, compare=False)


@dataclass(frozen=True)
class KeyExchange:
    """Key-exchange ("main mode", the IKE SA) settings of a policy."""

    lifetime: int = 28800  #: IKE SA lifetime in seconds (rekey after it)
    master_key_pfs: bool = False  #: new IKE SA (re-authentication) for every session key
    methods: tuple[str, ...] = ("aes128gcm16-prfsha256-x25519",)  #: IKE proposals
    where: Where = field(default_factory=Where, compare=False)


@dataclass(frozen=True)
class Policy:
    """A whole policy.

    ``default_response``: answer IKE requests from any host that asks for security when no
    rule applies (authenticated with ``default_response_auth``). ``polling_interval``: how
    often (seconds) a host asks the policy server for a newer version.
    """

    name: str
    rules: tuple[Rule, ...]
    filter_lists: dict[str, FilterList]
    filter_actions: dict[str, FilterAction]
    description: str = ""
    key_exchange: KeyExchange = field(default_factory=KeyExchange)
    default_response: bool = False
    default_response_auth: tuple[AuthMethod, ...] = ()
    polling_interval: int = 10800
    where: Where = field(default_factory=Where, compare=False)

    def rule(self, name: str) -> Rule:
        for rule in self.rules:
            if rule.name == name:
                return rule
        raise ConfigError(f"no rule named {name!r}", key="rules")
