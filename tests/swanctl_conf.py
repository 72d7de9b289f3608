"""strongSwan configuration generated from Python objects: swanctl.conf and strongswan.conf.

Used by the harness in tests/strongswan.py (and by interop tests that make charon the
peer of pyipsec): connections with PSK or certificate authentication, IKE and ESP
proposals, traffic selectors, start/close/DPD actions, rekey and lifetime times,
fragmentation, and the strongswan.conf settings two charons need to run side by side
here (DESIGN.md, "Real components"). PSKs are written as hex and never appear in repr().
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

#: Plugins charon loads (order matters: kernel-libipsec before kernel-netlink).
PLUGINS = (
    "random nonce openssl aes sha1 sha2 hmac gcm chapoly curve25519 kdf pem pkcs1 pkcs8 "
    "x509 pubkey revocation constraints kernel-libipsec kernel-netlink socket-default "
    "vici updown"
)

SOCKET_FWMARK = "0x42"


@dataclass
class Child:
    """One Child SA configuration (swanctl.conf ``connections.X.children.NAME``)."""

    name: str
    local_ts: list[str]
    remote_ts: list[str]
    esp_proposals: list[str] = field(default_factory=lambda: ["aes128gcm16"])
    mode: str = "tunnel"
    start_action: str = "none"  # none | trap | start
    dpd_action: str | None = None  # clear | trap | restart
    close_action: str | None = None
    rekey_time: str | None = None  # e.g. "30s"; "0" disables
    life_time: str | None = None
    rand_time: str | None = None
    rekey_bytes: int | None = None

    def render(self) -> str:
        opts = {
            "local_ts": ",".join(self.local_ts),
            "remote_ts": ",".join(self.remote_ts),
            "esp_proposals": ",".join(self.esp_proposals),
            "mode": self.mode,
            "start_action": self.start_action,
            "dpd_action": self.dpd_action,
            "close_action": self.close_action,
            "rekey_time": self.rekey_time,
            "life_time": self.life_time,
            "rand_time": self.rand_time,
            "rekey_bytes": self.rekey_bytes,
        }
        return _block(self.name, opts, indent=12)


@dataclass
class Connection:
    """One IKE connection (swanctl.conf ``connections.NAME``).

    ``auth`` is "psk" or "pubkey"; for pubkey give ``local_cert`` (a file name in the
    charon's x509/ directory, see :meth:`Charon.add_cert`) and trust a CA in x509ca/.
    """

    name: str
    local_addrs: list[str]
    remote_addrs: list[str]
    local_id: str
    remote_id: str
    children: list[Child]
    auth: str = "psk"
    local_cert: str | None = None
    remote_auth: str | None = None  # default: same as auth
    send_cert: str | None = None  # ifasked | always | never
    remote_cacerts: str | None = None  # constrain the peer to this CA (file in x509ca/)
    ike_proposals: list[str] = field(default_factory=lambda: ["aes128gcm16-prfsha256-x25519"])
    version: int = 2
    encap: bool = True
    mobike: bool = False
    fragmentation: str | None = None  # yes | accept | force | no
    rekey_time: str | None = None
    reauth_time: str | None = None
    over_time: str | None = None
    rand_time: str | None = None
    dpd_delay: str | None = None
    dpd_timeout: str | None = None

    def render(self) -> str:
        opts = {
            "version": self.version,
            "local_addrs": ",".join(self.local_addrs),
            "remote_addrs": ",".join(self.remote_addrs),
            "proposals": ",".join(self.ike_proposals),
            "encap": "yes" if self.encap else "no",
            "mobike": "yes" if self.mobike else "no",
            "send_cert": self.send_cert,
            "fragmentation": self.fragmentation,
            "rekey_time": self.rekey_time,
            "reauth_time": self.reauth_time,
            "over_time": self.over_time,
            "rand_time": self.rand_time,
            "dpd_delay": self.dpd_delay,
            "dpd_timeout": self.dpd_timeout,
        }
        local = {
            "auth": self.auth,
            "id": self.local_id,
            "certs": self.local_cert,
        }
        remote = {
            "auth": self.remote_auth or self.auth,
            "id": self.remote_id,
            "cacerts": self.remote_cacerts,
        }
        inner = _block("local", local, 8) + _block("remote", remote, 8)
        inner += " " * 8 + "children {\n"
        inner += "".join(child.render() for child in self.children)
        inner += " " * 8 + "}\n"
        return _block(self.name, opts, 4, inner)


@dataclass
class Psk:
    """A pre-shared key between two identities (written as hex: never quoted or logged)."""

    ids: tuple[str, str]
    secret: bytes

    def __repr__(self) -> str:
        return f"Psk(ids={self.ids!r}, secret=<{len(self.secret)} bytes>)"


def _block(name: str, opts: dict, indent: int, inner: str = "") -> str:
    pad = " " * indent
    lines = [f"{pad}{name} {{"]
    lines += [f"{pad}    {k} = {v}" for k, v in opts.items() if v is not None]
    return "\n".join(lines) + "\n" + inner + f"{pad}}}\n"


def render_swanctl_conf(connections: Iterable[Connection], psks: Iterable[Psk]) -> str:
    """swanctl.conf text for the given connections and PSKs."""
    text = "connections {\n" + "".join(c.render() for c in connections) + "}\n"
    text += "secrets {\n"
    for index, psk in enumerate(psks):
        text += f"    ike-{index} {{\n"
        for n, ident in enumerate(psk.ids, 1):
            text += f"        id-{n} = {ident}\n"
        text += f"        secret = 0x{psk.secret.hex()}\n    }}\n"
    return text + "}\n"


@dataclass(frozen=True)
class Retransmit:
    """charon's IKE retransmission schedule (``charon.retransmit_*``): the peer is given
    up after about timeout * (1 + base + ... + base**tries) seconds, which is how fast
    DPD notices a dead peer."""

    tries: int = 3
    timeout: float = 2.0
    base: float = 1.8


FAST_RETRANSMIT = Retransmit(tries=2, timeout=0.5, base=1.4)  #: gives up after ~2 s


def render_strongswan_conf(
    workdir: Path,
    *,
    allow_peer_ts: bool = True,
    extra: str = "",
    ike_log_level: int = 2,
    retransmit: Retransmit = Retransmit(),  # noqa: B008 - frozen
) -> str:
    """strongswan.conf for a charon whose files all live in ``workdir``."""
    return f"""charon {{
    load_modular = no
    load = {PLUGINS}
    install_virtual_ip = no
    retransmit_tries = {retransmit.tries}
    retransmit_timeout = {retransmit.timeout}
    retransmit_base = {retransmit.base}
    filelog {{
        charon {{
            path = {workdir}/charon.log
            time_format = %H:%M:%S
            append = no
            flush_line = yes
            ike_name = yes
            default = 1
            ike = {ike_log_level}
            cfg = 2
        }}
    }}
    syslog {{
        daemon {{
            default = -1
        }}
        auth {{
            default = -1
        }}
    }}
    plugins {{
        kernel-libipsec {{
            allow_peer_ts = {"yes" if allow_peer_ts else "no"}
        }}
        socket-default {{
            fwmark = {SOCKET_FWMARK}
        }}
        kernel-netlink {{
            fwmark = !{SOCKET_FWMARK}
        }}
        vici {{
            socket = unix://{workdir}/charon.vici
        }}
    }}
{extra}}}
swanctl {{
    load = pem pkcs1 pkcs8 x509 openssl curve25519
}}
"""
