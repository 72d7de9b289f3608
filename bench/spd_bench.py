"""SPD lookup cost with 10, 1,000 and 10,000 policies.

Policies are a realistic mix: a few wildcards (IKE and ICMP bypass, a discarded
network), mostly IPv4 /32 host pairs (some per TCP port, some any protocol), some
IPv4 subnet pairs (/24, /16), some IPv6 host pairs and /64 subnets, and a few
arbitrary (non-prefix) ranges. Flows are random: half are drawn inside a random
policy (hits), half are random addresses (mostly misses). The flow cache is off,
so every lookup walks the index. A sample of lookups is checked against a linear
scan before timing.

Run: ``.venv/bin/python bench/spd_bench.py``. The last line is
``spd lookup 10000/10 ratio: X.XX`` (time per lookup with 10,000 policies divided by
time per lookup with 10; target 3 or less).
"""

from __future__ import annotations

import random
import time

from pyipsec.ipsec.selectors import AddressRange, PortRange, Selector
from pyipsec.ipsec.spd import Action, SaTemplate, Spd, SpdEntry
from pyipsec.wire.flow import Flow

V4_LOCAL = 0x0A000000  # 10.0.0.0/16 local side
V4_REMOTE = 0x0A010000  # 10.1.0.0/16 remote side
V6_LOCAL = 0x20010DB8_00000000 << 64
V6_REMOTE = 0x20010DB8_00010000 << 64
TEMPLATE = SaTemplate(child="bench", algorithms=("aes128gcm16",))


def wildcards() -> list[SpdEntry]:
    any_ = AddressRange.ANY
    return [
        SpdEntry("ike", Selector(any_, any_, 17, PortRange(500, 500)), Action.BYPASS, 0),
        SpdEntry("natt", Selector(any_, any_, 17, PortRange(4500, 4500)), Action.BYPASS, 0),
        SpdEntry(
            "pmtu",
            Selector(AddressRange.full(4), AddressRange.full(4), 1, PortRange(3, 3)),
            Action.BYPASS,
            1,
        ),
        SpdEntry("blackhole", Selector.parse("any", "192.0.2.0/24"), Action.DISCARD, 2),
    ]


def random_entry(rng: random.Random, i: int) -> SpdEntry:
    roll = rng.random()
    prio = rng.randrange(10, 1000)
    if roll < 0.75:  # IPv4 host pair
        local = AddressRange.host(4, V4_LOCAL + rng.randrange(1 << 16))
        remote = AddressRange.host(4, V4_REMOTE + rng.randrange(1 << 16))
        if rng.random() < 0.5:
            port = rng.choice((443, 5432, 3306, 22, 8080))
            sel = Selector(local, remote, 6, PortRange.ANY, PortRange(port, port))
        else:
            sel = Selector(local, remote)
    elif roll < 0.88:  # IPv4 subnet pair
        plen = rng.choice((24, 24, 28, 20))
        size = 1 << (32 - plen)
        lbase = V4_LOCAL + rng.randrange(1 << 16) // size * size
        rbase = V4_REMOTE + rng.randrange(1 << 16) // size * size
        sel = Selector(
            AddressRange(4, lbase, lbase + size - 1),
            AddressRange(4, rbase, rbase + size - 1),
            rng.choice((None, 6, 17)),
        )
    elif roll < 0.97:  # IPv6 host pair or /64 pair
        if rng.random() < 0.7:
            sel = Selector(
                AddressRange.host(6, V6_LOCAL + rng.randrange(1 << 16)),
                AddressRange.host(6, V6_REMOTE + rng.randrange(1 << 16)),
            )
        else:
            lbase = V6_LOCAL + (rng.randrange(1 << 8) << 64)
            rbase = V6_REMOTE + (rng.randrange(1 << 8) << 64)
            sel = Selector(
                AddressRange(6, lbase, lbase + (1 << 64) - 1),
                AddressRange(6, rbase, rbase + (1 << 64) - 1),
            )
    else:  # arbitrary range, not a prefix
        a = V4_LOCAL + rng.randrange(1 << 16)
        sel = Selector(
            AddressRange(4, a, a + rng.randrange(3, 200)),
            AddressRange.host(4, V4_REMOTE + rng.randrange(1 << 16)),
            17,
        )
    action = rng.choice(
        (Action.PROTECT, Action.PROTECT, Action.PROTECT, Action.BYPASS, Action.DISCARD)
    )
    template = TEMPLATE if action is Action.PROTECT else None
    return SpdEntry(f"p{i}", sel, action, prio, template)


def flow_inside(rng: random.Random, entry: SpdEntry) -> Flow:
    sel = entry.selector
    version = sel.version or 4
    local = rng.randint(
        sel.local.start, min(sel.local.end, (1 << 32) - 1 if version == 4 else sel.local.end)
    )
    remote = rng.randint(
        sel.remote.start, min(sel.remote.end, (1 << 32) - 1 if version == 4 else sel.remote.end)
    )
    proto = sel.protocol if sel.protocol is not None else rng.choice((6, 17))
    lport = rng.randint(sel.local_ports.start, sel.local_ports.end)
    rport = rng.randint(sel.remote_ports.start, sel.remote_ports.end)
    return Flow(version, local, remote, proto, lport, rport)


def random_flow(rng: random.Random) -> Flow:
    if rng.random() < 0.85:
        return Flow(
            4,
            V4_LOCAL + rng.randrange(1 << 16),
            V4_REMOTE + rng.randrange(1 << 16),
            rng.choice((6, 17, 1)),
            rng.randrange(65536),
            rng.randrange(65536),
        )
    return Flow(
        6,
        V6_LOCAL + rng.randrange(1 << 16),
        V6_REMOTE + rng.randrange(1 << 16),
        rng.choice((6, 17)),
        rng.randrange(65536),
        rng.randrange(65536),
    )


def linear(entries: list[SpdEntry], flow: Flow) -> SpdEntry | None:
    for entry in entries:
        if entry.selector.matches(flow, "out"):
            return entry
    return None


def setup(n: int, seed: int = 1) -> tuple[Spd, list[Flow]]:
    """An SPD of ``n`` policies and 20,000 flows, checked against a linear scan."""
    rng = random.Random(seed)
    entries = wildcards()
    entries += [random_entry(rng, i) for i in range(n - len(entries))]
    spd = Spd(entries, cache_size=0)
    flows = []
    for _ in range(20000):
        if rng.random() < 0.5:
            flows.append(flow_inside(rng, rng.choice(entries[4:] or entries)))
        else:
            flows.append(random_flow(rng))
    ordered = spd.entries()
    for flow in flows[:: len(flows) // 40]:
        assert spd.lookup(flow) is linear(ordered, flow), "index disagrees with linear scan"
    return spd, flows


def one_pass(spd: Spd, flows: list[Flow]) -> float:
    lookup = spd.lookup
    t0 = time.perf_counter()
    for flow in flows:
        lookup(flow)
    return (time.perf_counter() - t0) / len(flows)


def measure(sizes: tuple[int, ...], rounds: int = 7) -> dict[int, float]:
    """Best time per lookup for each size; sizes are interleaved round by round so that
    load from other processes on the machine hits every size alike."""
    setups = {n: setup(n) for n in sizes}
    best = dict.fromkeys(sizes, float("inf"))
    for _ in range(rounds):
        for n in sizes:
            best[n] = min(best[n], one_pass(*setups[n]))
    for n in sizes:
        spd, flows = setups[n]
        matched = sum(1 for f in flows[:2000] if spd.lookup(f) is not None) / 2000
        groups = sum(len(t.groups) for t in spd._tables["out"].values())
        print(
            f"{n:6d} policies: {best[n] * 1e6:6.2f} us/lookup  (flows matched {matched:.0%}, "
            f"{groups} prefix-length groups, best of {rounds} x {len(flows)} lookups)"
        )
    return best


def cached(n: int = 10000, seed: int = 1) -> None:
    rng = random.Random(seed)
    entries = wildcards() + [random_entry(rng, i) for i in range(n - 4)]
    spd = Spd(entries, cache_size=4096)
    flows = [flow_inside(rng, rng.choice(entries[4:])) for _ in range(1000)]
    for flow in flows:
        spd.lookup(flow)
    t0 = time.perf_counter()
    for _ in range(10):
        for flow in flows:
            spd.lookup(flow)
    per = (time.perf_counter() - t0) / (10 * len(flows))
    print(f"{n:6d} policies, flow cache warm (1000 flows): {per * 1e6:6.2f} us/lookup")


def main() -> None:
    best = measure((10, 1000, 10000))
    cached()
    print(f"spd lookup 10000/10 ratio: {best[10000] / best[10]:.2f}")


if __name__ == "__main__":
    main()
