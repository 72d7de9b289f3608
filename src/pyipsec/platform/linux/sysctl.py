"""Per-interface sysctls the data plane needs, read and written through /proc/sys."""

from __future__ import annotations

import os

PROC = "/proc/sys"


def _path(key: str) -> str:
    return os.path.join(PROC, key.replace(".", "/"))


def read(key: str) -> str:
    """Value of a sysctl such as ``net.ipv4.conf.pyipsec0.rp_filter``."""
    with open(_path(key)) as f:
        return f.read().strip()


def write(key: str, value: str | int) -> None:
    with open(_path(key), "w") as f:
        f.write(str(value))


def prepare_tun(ifname: str) -> bool:
    """rp_filter off on the TUN, IPv6 on, no DAD/router solicitations.

    Decapsulated packets enter through the TUN although the main table routes their source
    through the physical interface. Even loose reverse-path filtering (2) drops them while
    the TUN has no IPv4 address (the kernel's ``fib_validate_source`` takes its
    "no address" branch), so the TUN gets 0. The kernel uses the maximum of ``all`` and
    the interface value: returns True when ``all`` is non-zero, and the caller then gives
    the TUN a link-local /32 address so that loose filtering passes.
    """
    write(f"net.ipv4.conf.{ifname}.rp_filter", 0)
    if os.path.exists(_path(f"net.ipv6.conf.{ifname}.disable_ipv6")):
        write(f"net.ipv6.conf.{ifname}.disable_ipv6", 0)
        write(f"net.ipv6.conf.{ifname}.accept_dad", 0)
        write(f"net.ipv6.conf.{ifname}.router_solicitations", 0)
    return read("net.ipv4.conf.all.rp_filter") != "0"
