"""The benchmark's synthetic cluster: heterogeneous hosts, mixed guest sizes, anti-affinity triples.

Role: build, from a seed, the ``ClusterState`` the placement benchmark measures on —
10,000 hosts of four shapes (some without the storage network, some labelled by zone)
and 100,000 guests of six flavors in groups of three whose replicas never share a host
(hard spread). Also the identical-hosts packing scenario.

Must not: time anything (``bench.placement.__main__`` does) or touch the filesystem.
"""

from __future__ import annotations

import numpy as np

from nonstop.core.placement import ClusterState, Guest, Host, Spread

GIB = 1024**3
HOST_SHAPES = ((16, 64, 1000), (24, 96, 1500), (32, 128, 2000), (48, 192, 4000))
"""(cpus, memory GiB, disk GiB)."""
FLAVORS = ((1, 1, 10), (1, 2, 20), (2, 4, 40), (4, 8, 80), (8, 16, 160), (2, 16, 50))
"""(vcpus, memory GiB, disk GiB)."""


def hosts(count: int, seed: int = 1) -> list[Host]:
    rng = np.random.default_rng(seed)
    shapes = rng.integers(0, len(HOST_SHAPES), count)
    storage = rng.random(count) < 0.8
    result = []
    for i in range(count):
        cpus, mem, disk = HOST_SHAPES[int(shapes[i])]
        nets = frozenset({"lan", "storage"}) if storage[i] else frozenset({"lan"})
        result.append(Host(f"h{i:05d}", (float(cpus), float(mem * GIB), float(disk * GIB)),
                           reserved=(0.0, 2.0 * GIB, 0.0), networks=nets,
                           labels={"zone": "abc"[i % 3]}))
    return result


def guests(count: int, group_size: int = 3, seed: int = 2) -> list[Guest]:
    rng = np.random.default_rng(seed)
    n_groups = (count + group_size - 1) // group_size
    flavor = rng.choice(len(FLAVORS), n_groups, p=(0.2, 0.25, 0.25, 0.15, 0.05, 0.10))
    priority = rng.choice((100, 200, 500), n_groups, p=(0.6, 0.3, 0.1))
    storage = rng.random(n_groups) < 0.3
    result = []
    for g in range(n_groups):
        vcpus, mem, disk = FLAVORS[int(flavor[g])]
        nets = frozenset({"lan", "storage"}) if storage[g] else frozenset({"lan"})
        for i in range(group_size):
            if len(result) == count:
                break
            result.append(Guest(f"g{g:05d}-{i}", f"g{g:05d}", (float(vcpus), float(mem * GIB), float(disk * GIB)),
                                priority=int(priority[g]), networks=nets, spread=Spread.HARD))
    return result


def mixed_cluster(n_hosts: int = 10_000, n_guests: int = 100_000) -> ClusterState:
    return ClusterState(hosts(n_hosts), guests(n_guests))


def packing_cluster(n_hosts: int = 2_000, n_guests: int = 20_000, seed: int = 3) -> ClusterState:
    """Identical hosts, mixed guests, no spread: the pack weigher should fill hosts one by one."""
    rng = np.random.default_rng(seed)
    hs = [Host(f"p{i:05d}", (32.0, 128.0 * GIB, 2000.0 * GIB)) for i in range(n_hosts)]
    flavor = rng.choice(len(FLAVORS), n_guests, p=(0.2, 0.25, 0.25, 0.15, 0.05, 0.10))
    gs = []
    for i in range(n_guests):
        vcpus, mem, disk = FLAVORS[int(flavor[i])]
        gs.append(Guest(f"q{i:06d}", f"q{i:06d}", (float(vcpus), float(mem * GIB), float(disk * GIB))))
    return ClusterState(hs, gs)
