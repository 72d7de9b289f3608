"""Traffic selectors: address ranges, port ranges and the SPD selector (RFC 4301 4.4.1.1).

A :class:`Selector` says which packets an SPD entry or an SA covers, in *local* / *remote*
terms, as RFC 4301 does: for an outbound packet the local address is its source, for an
inbound packet its destination. Every field is plain data (integers, a version, a
protocol number) so that the data plane can compile selectors into nftables rules
without parsing anything again.

Conventions:

* An :class:`AddressRange` is an inclusive interval ``[start, end]`` of integers in one
  address family (``version`` 4 or 6). ``version`` 0 is "any address of either family"
  (``any`` / ``%any`` in configuration), which matches IPv4 and IPv6 packets alike.
* A :class:`PortRange` is an inclusive interval of 16-bit ports; ``PortRange.ANY`` is
  0-65535. For ICMP and ICMPv6, as RFC 4301 section 4.4.1.1 and the Linux kernel do,
  the "port" fields carry the message type and code: ``local_ports`` holds the ICMP type
  range and ``remote_ports`` the code range, and both are compared with the packet's
  type (``Flow.sport``) and code (``Flow.dport``) whatever the direction, because type
  and code do not swap when a packet travels the other way.
* ``protocol`` ``None`` means any next-layer protocol; ports must then be ANY.

String forms follow strongSwan's traffic-selector notation, one side as
``10.0.0.0/24[tcp/5432]`` and a whole selector as ``local === remote``;
:meth:`Selector.parse` reads back what ``str()`` writes.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import ClassVar

from pyipsec.errors import ConfigError
from pyipsec.wire.flow import Flow

__all__ = [
    "ICMP_PROTOCOLS",
    "PORT_PROTOCOLS",
    "AddressRange",
    "PortRange",
    "Selector",
    "SelectorList",
    "format_protocol",
    "parse_protocol",
]

_MAX = {4: (1 << 32) - 1, 6: (1 << 128) - 1, 0: (1 << 128) - 1}
_BITS = {4: 32, 6: 128}

#: Next-layer protocols whose selectors carry two 16-bit ports (TCP, UDP, DCCP, SCTP, UDP-Lite).
PORT_PROTOCOLS = frozenset({6, 17, 33, 132, 136})
#: ICMP (IPv4) and ICMPv6: the "ports" are the 8-bit message type and code.
ICMP_PROTOCOLS = frozenset({1, 58})

_PROTOCOL_NAMES = {
    "icmp": 1,
    "igmp": 2,
    "ipip": 4,
    "tcp": 6,
    "udp": 17,
    "ipv6": 41,
    "gre": 47,
    "esp": 50,
    "ah": 51,
    "icmpv6": 58,
    "ipv6-icmp": 58,
    "icmp6": 58,
    "sctp": 132,
    "udplite": 136,
    "dccp": 33,
    "ospf": 89,
}
_PROTOCOL_LABELS = {
    1: "icmp",
    2: "igmp",
    4: "ipip",
    6: "tcp",
    17: "udp",
    41: "ipv6",
    47: "gre",
    50: "esp",
    51: "ah",
    58: "ipv6-icmp",
    132: "sctp",
    136: "udplite",
    33: "dccp",
    89: "ospf",
}
_ANY_WORDS = frozenset({"any", "%any", "*", ""})


def _is_decimal(text: str) -> bool:
    """ASCII digits only (``str.isdigit`` also accepts e.g. superscripts int() refuses)."""
    return text.isascii() and text.isdigit()


def parse_protocol(text: str | int | None, *, key: str = "protocol") -> int | None:
    """Parse a next-layer protocol: a name (``tcp``, ``icmp``...), a number, or ``any``.

    Returns the IANA protocol number, or ``None`` for any protocol.
    """
    if text is None:
        return None
    if isinstance(text, bool):
        raise ConfigError(f"not a protocol: {text!r}", key=key)
    if isinstance(text, int):
        number = text
    else:
        word = text.strip().lower()
        if word in _ANY_WORDS:
            return None
        if word in _PROTOCOL_NAMES:
            return _PROTOCOL_NAMES[word]
        if not _is_decimal(word):
            raise ConfigError(f"unknown protocol {text!r}", key=key)
        number = int(word)
    if not 0 <= number <= 255:
        raise ConfigError(f"protocol number {number} outside 0-255", key=key)
    return number


def format_protocol(protocol: int | None) -> str:
    """The name of a protocol number as :func:`parse_protocol` reads it."""
    if protocol is None:
        return "any"
    return _PROTOCOL_LABELS.get(protocol, str(protocol))


# --------------------------------------------------------------------------- addresses


@dataclass(frozen=True, slots=True)
class AddressRange:
    """An inclusive range of addresses of one family (``version`` 0: either family)."""

    version: int  #: 4, 6, or 0 for any address of either family
    start: int  #: first address, as an integer
    end: int  #: last address, as an integer (inclusive)

    ANY: ClassVar[AddressRange]

    def __post_init__(self) -> None:
        if self.version not in _MAX:
            raise ConfigError(
                f"address version must be 4, 6 or 0, not {self.version!r}", key="address"
            )
        if self.version == 0 and (self.start, self.end) != (0, _MAX[0]):
            raise ConfigError("a range of either family must cover everything", key="address")
        if not 0 <= self.start <= self.end <= _MAX[self.version]:
            raise ConfigError(f"bad address range {self.start}-{self.end}", key="address")

    @classmethod
    def parse(cls, text: str, *, key: str = "address") -> AddressRange:
        """Parse ``any``, an address, a prefix ``a/n`` or a range ``a-b``.

        Host bits set in a prefix (``10.0.0.1/24``) are an error: they usually mean a typo.
        """
        if not isinstance(text, str):
            raise ConfigError(f"address must be a string, not {type(text).__name__}", key=key)
        word = text.strip()
        if word.lower() in _ANY_WORDS:
            return cls.ANY
        try:
            if "-" in word:
                first, _, last = word.partition("-")
                a = ipaddress.ip_address(first.strip())
                b = ipaddress.ip_address(last.strip())
                if a.version != b.version:
                    raise ConfigError(f"range {text!r} mixes IPv4 and IPv6", key=key)
                if int(a) > int(b):
                    raise ConfigError(f"range {text!r} ends before it starts", key=key)
                return cls(a.version, int(a), int(b))
            if "/" in word:
                net = ipaddress.ip_network(word, strict=True)
                return cls(net.version, int(net.network_address), int(net.broadcast_address))
            addr = ipaddress.ip_address(word)
        except ValueError as exc:
            raise ConfigError(
                f"not an address, prefix or range: {text!r} ({exc})", key=key
            ) from None
        return cls(addr.version, int(addr), int(addr))

    @classmethod
    def host(cls, version: int, address: int) -> AddressRange:
        """A single address."""
        return cls(version, address, address)

    @classmethod
    def full(cls, version: int) -> AddressRange:
        """Every address of one family (``0.0.0.0/0`` or ``::/0``)."""
        return cls(version, 0, _MAX[version])

    def contains(self, version: int, address: int) -> bool:
        """Whether ``address`` of family ``version`` lies in this range."""
        return (self.version == 0 or self.version == version) and (
            self.start <= address <= self.end
        )

    @property
    def is_any(self) -> bool:
        """Whether this range matches every address (of its family, or of both)."""
        return self.start == 0 and self.end == _MAX[self.version]

    @property
    def prefix_length(self) -> int | None:
        """The prefix length if the range is exactly one prefix, else ``None``."""
        bits = 128 if self.version == 0 else _BITS[self.version]
        size = self.end - self.start + 1
        if size & (size - 1) or self.start & (size - 1):
            return None
        return bits - (size.bit_length() - 1)

    def cover(self) -> tuple[int, int]:
        """The smallest prefix containing the range, as ``(length, start >> host_bits)``."""
        bits = 128 if self.version == 0 else _BITS[self.version]
        length = bits - (self.start ^ self.end).bit_length()
        return length, self.start >> (bits - length)

    def __str__(self) -> str:
        if self.version == 0:
            return "%any"
        length = self.prefix_length
        cls = ipaddress.IPv4Address if self.version == 4 else ipaddress.IPv6Address
        if length is not None:
            return f"{cls(self.start)}/{length}"
        return f"{cls(self.start)}-{cls(self.end)}"


AddressRange.ANY = AddressRange(0, 0, _MAX[0])


# --------------------------------------------------------------------------- ports


@dataclass(frozen=True, slots=True)
class PortRange:
    """An inclusive range of ports (or of ICMP types / codes)."""

    start: int = 0  #: first port
    end: int = 65535  #: last port (inclusive)

    ANY: ClassVar[PortRange]

    def __post_init__(self) -> None:
        if not (isinstance(self.start, int) and isinstance(self.end, int)):
            raise ConfigError("port range bounds must be integers", key="port")
        if not 0 <= self.start <= self.end <= 65535:
            raise ConfigError(f"bad port range {self.start}-{self.end}", key="port")

    @classmethod
    def parse(cls, text: str | int, *, key: str = "port") -> PortRange:
        """Parse ``any``, a port ``5432`` or a range ``1000-2000``."""
        if isinstance(text, bool):
            raise ConfigError(f"not a port: {text!r}", key=key)
        if isinstance(text, int):
            if not 0 <= text <= 65535:
                raise ConfigError(f"port {text} outside 0-65535", key=key)
            return cls(text, text)
        if not isinstance(text, str):
            raise ConfigError(f"port must be a string or int, not {type(text).__name__}", key=key)
        word = text.strip().lower()
        if word in _ANY_WORDS:
            return cls.ANY
        first, dash, last = word.partition("-")
        if not _is_decimal(first.strip()) or (dash and not _is_decimal(last.strip())):
            raise ConfigError(f"not a port or port range: {text!r}", key=key)
        a = int(first)
        b = int(last) if dash else a
        if a > 65535 or b > 65535:
            raise ConfigError(f"port outside 0-65535 in {text!r}", key=key)
        if a > b:
            raise ConfigError(f"port range {text!r} ends before it starts", key=key)
        return cls(a, b)

    @property
    def is_any(self) -> bool:
        """Whether every port matches."""
        return self.start == 0 and self.end == 65535

    def contains(self, port: int) -> bool:
        """Whether ``port`` lies in the range."""
        return self.start <= port <= self.end

    def __str__(self) -> str:
        if self.is_any:
            return "any"
        if self.start == self.end:
            return str(self.start)
        return f"{self.start}-{self.end}"


PortRange.ANY = PortRange(0, 65535)


# --------------------------------------------------------------------------- selector


def _parse_ts(text: str, key: str) -> tuple[AddressRange, int | None, PortRange | None]:
    """One side in strongSwan notation: ``addr[proto/port]``, ``addr[proto]`` or ``addr``."""
    if not isinstance(text, str):
        raise ConfigError(f"traffic selector must be a string, not {type(text).__name__}", key=key)
    word = text.strip()
    protocol: int | None = None
    ports: PortRange | None = None
    if "[" in word:
        if not word.endswith("]"):
            raise ConfigError(f"unclosed '[' in {text!r}", key=key)
        word, _, inner = word[:-1].partition("[")
        proto_text, slash, port_text = inner.partition("/")
        protocol = parse_protocol(proto_text, key=key + ".protocol")
        if slash:
            ports = PortRange.parse(port_text, key=key + ".ports")
    return AddressRange.parse(word, key=key), protocol, ports


@dataclass(frozen=True, slots=True)
class Selector:
    """An SPD / SA selector: local and remote addresses, protocol, local and remote ports.

    See the module docstring for the ICMP convention and the meaning of ``version`` 0.
    """

    local: AddressRange  #: local addresses (source of outbound packets)
    remote: AddressRange  #: remote addresses (destination of outbound packets)
    protocol: int | None = None  #: next-layer protocol number, ``None`` for any
    local_ports: PortRange = PortRange.ANY  #: local ports, or ICMP type range
    remote_ports: PortRange = PortRange.ANY  #: remote ports, or ICMP code range

    def __post_init__(self) -> None:
        if not isinstance(self.local, AddressRange):
            raise ConfigError("local must be an AddressRange", key="local")
        if not isinstance(self.remote, AddressRange):
            raise ConfigError("remote must be an AddressRange", key="remote")
        lv, rv = self.local.version, self.remote.version
        if lv and rv and lv != rv:
            raise ConfigError(f"local is IPv{lv} but remote is IPv{rv}", key="remote")
        proto = self.protocol
        if proto is not None and (isinstance(proto, bool) or not 0 <= proto <= 255):
            raise ConfigError(f"protocol must be 0-255 or None, not {proto!r}", key="protocol")
        for name in ("local_ports", "remote_ports"):
            ports = getattr(self, name)
            if not isinstance(ports, PortRange):
                raise ConfigError(f"{name} must be a PortRange", key=name)
            if ports.is_any:
                continue
            if proto in ICMP_PROTOCOLS:
                if ports.end > 255:
                    what = "type" if name == "local_ports" else "code"
                    raise ConfigError(f"ICMP {what} range {ports} exceeds 255", key=name)
            elif proto not in PORT_PROTOCOLS:
                raise ConfigError(
                    f"ports need a protocol with ports (tcp, udp, sctp...), not "
                    f"{format_protocol(proto)}",
                    key=name,
                )
        version = lv or rv
        if (proto == 1 and version == 6) or (proto == 58 and version == 4):
            raise ConfigError(
                f"{format_protocol(proto)} does not go with IPv{version} addresses",
                key="protocol",
            )

    # ------------------------------------------------------------------ construction

    @classmethod
    def parse(cls, local: str, remote: str = "any") -> Selector:
        """Build a selector from two strongSwan-style traffic selectors.

        ``Selector.parse("10.0.0.0/24[tcp/5432]", "10.0.1.5[tcp]")``; the protocol may be
        given on one side only, and both sides must agree when both give it. A whole
        ``"local === remote"`` string (what ``str()`` prints) is accepted as ``local``.
        """
        if isinstance(local, str) and "===" in local:
            local, _, remote = local.partition("===")
        laddr, lproto, lports = _parse_ts(local, "local")
        raddr, rproto, rports = _parse_ts(remote, "remote")
        if lproto is not None and rproto is not None and lproto != rproto:
            raise ConfigError(
                f"protocols differ: {format_protocol(lproto)} against {format_protocol(rproto)}",
                key="remote.protocol",
            )
        proto = lproto if lproto is not None else rproto
        return cls(laddr, raddr, proto, lports or PortRange.ANY, rports or PortRange.ANY)

    @classmethod
    def from_fields(
        cls,
        local: str = "any",
        remote: str = "any",
        protocol: str | int | None = None,
        local_ports: str | int = "any",
        remote_ports: str | int = "any",
        *,
        icmp_type: str | int | None = None,
        icmp_code: str | int | None = None,
    ) -> Selector:
        """Build a selector from separate configuration fields, naming the bad one.

        ``icmp_type`` / ``icmp_code`` are the readable spelling of the ICMP convention
        (they fill ``local_ports`` / ``remote_ports``).
        """
        proto = parse_protocol(protocol)
        lports = PortRange.parse(local_ports, key="local_ports")
        rports = PortRange.parse(remote_ports, key="remote_ports")
        if icmp_type is not None or icmp_code is not None:
            if proto not in ICMP_PROTOCOLS:
                raise ConfigError(
                    "icmp_type/icmp_code need protocol icmp or ipv6-icmp",
                    key="icmp_type" if icmp_type is not None else "icmp_code",
                )
            if not (lports.is_any and rports.is_any):
                raise ConfigError(
                    "give ICMP type/code either as ports or as icmp_type/code", key="local_ports"
                )
            for name, value in (("icmp_type", icmp_type), ("icmp_code", icmp_code)):
                if value is None:
                    continue
                ports = PortRange.parse(value, key=name)
                if ports.end > 255:
                    raise ConfigError(f"ICMP {name[5:]} {value!r} exceeds 255", key=name)
                if name == "icmp_type":
                    lports = ports
                else:
                    rports = ports
        return cls(
            AddressRange.parse(local, key="local"),
            AddressRange.parse(remote, key="remote"),
            proto,
            lports,
            rports,
        )

    # ------------------------------------------------------------------ queries

    @property
    def version(self) -> int:
        """Address family of the selector: 4, 6, or 0 when it matches both."""
        return self.local.version or self.remote.version

    @property
    def is_icmp(self) -> bool:
        """Whether the port fields hold ICMP type and code."""
        return self.protocol in ICMP_PROTOCOLS

    def matches(self, flow: Flow, direction: str = "in") -> bool:
        """Whether a packet's flow falls under this selector.

        ``direction`` ``"out"``: the packet leaves this host (local = source);
        ``"in"`` (the default, as an SA checks a decapsulated packet): it arrives
        (local = destination).
        """
        if direction == "out":
            laddr, raddr, lport, rport = flow.src, flow.dst, flow.sport, flow.dport
        elif direction == "in":
            laddr, raddr, lport, rport = flow.dst, flow.src, flow.dport, flow.sport
        else:
            raise ValueError(f"direction must be 'in' or 'out', not {direction!r}")
        proto = self.protocol
        if proto is not None:
            if flow.protocol != proto:
                return False
            if proto == 1 or proto == 58:
                lport, rport = flow.sport, flow.dport  # type, code: never swapped
        local, remote = self.local, self.remote
        version = flow.version
        if (local.version and local.version != version) or (
            remote.version and remote.version != version
        ):
            return False
        if not (local.start <= laddr <= local.end and remote.start <= raddr <= remote.end):
            return False
        lp, rp = self.local_ports, self.remote_ports
        return lp.start <= lport <= lp.end and rp.start <= rport <= rp.end

    def mirror(self) -> Selector:
        """The selector seen from the peer: local and remote exchanged.

        ICMP type and code keep their places (they are not per-endpoint).
        """
        if self.is_icmp:
            return Selector(
                self.remote, self.local, self.protocol, self.local_ports, self.remote_ports
            )
        return Selector(self.remote, self.local, self.protocol, self.remote_ports, self.local_ports)

    def _side(self, addr: AddressRange, ports: PortRange) -> str:
        if self.protocol is None:
            return str(addr)
        if ports.is_any:
            return f"{addr}[{format_protocol(self.protocol)}]"
        return f"{addr}[{format_protocol(self.protocol)}/{ports}]"

    def __str__(self) -> str:
        return (
            f"{self._side(self.local, self.local_ports)} === "
            f"{self._side(self.remote, self.remote_ports)}"
        )


@dataclass(frozen=True, slots=True)
class SelectorList:
    """Several selectors, matching a flow when any of them does.

    An IKEv2 Child SA may be negotiated with several traffic selectors on each side
    (RFC 7296 section 2.9); its SA covers every local/remote pair of them. Give an
    instance as a :class:`~pyipsec.ipsec.SecurityAssociation`'s ``selectors``.
    """

    selectors: tuple[Selector, ...]  #: the alternatives, in no particular order

    def __post_init__(self) -> None:
        object.__setattr__(self, "selectors", tuple(self.selectors))
        if not self.selectors:
            raise ConfigError("a selector list needs at least one selector", key="selectors")
        if not all(isinstance(s, Selector) for s in self.selectors):
            raise ConfigError("a selector list holds Selector objects", key="selectors")

    @classmethod
    def product(
        cls,
        local: list[tuple[AddressRange, int | None, PortRange]],
        remote: list[tuple[AddressRange, int | None, PortRange]],
    ) -> SelectorList:
        """Every combination of local and remote traffic selectors, as IKEv2 TSi x TSr.

        Each side is ``(addresses, protocol or None, ports)``; pairs whose families or
        protocols cannot meet are left out (ConfigError if none is left).
        """
        out = []
        for laddr, lproto, lports in local:
            for raddr, rproto, rports in remote:
                if laddr.version and raddr.version and laddr.version != raddr.version:
                    continue
                if lproto is not None and rproto is not None and lproto != rproto:
                    continue
                proto = lproto if lproto is not None else rproto
                try:
                    out.append(Selector(laddr, raddr, proto, lports, rports))
                except ConfigError:
                    continue  # e.g. ports without a protocol, ICMP with IPv6 addresses
        if not out:
            raise ConfigError("no local/remote selector pair fits together", key="selectors")
        return cls(tuple(out))

    def matches(self, flow: Flow, direction: str = "in") -> bool:
        """Whether any selector matches ``flow`` (see :meth:`Selector.matches`)."""
        return any(s.matches(flow, direction) for s in self.selectors)

    def __str__(self) -> str:
        return ", ".join(str(s) for s in self.selectors)
