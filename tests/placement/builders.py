"""Small cluster builders and hypothesis strategies shared by the placement tests."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from nonstop.core.placement import ClusterState, Guest, Host, HostCondition, Spread

GIB = 1024**3


def host(name: str, cpus: float = 8, mem_gib: float = 32, disk_gib: float = 500, **kwargs: object) -> Host:
    return Host(name, (float(cpus), mem_gib * GIB, disk_gib * GIB), **kwargs)  # type: ignore[arg-type]


def guest(name: str, group: str | None = None, cpus: float = 1, mem_gib: float = 1, disk_gib: float = 10,
          **kwargs: object) -> Guest:
    return Guest(name, group or name.rsplit("-", 1)[0], (float(cpus), mem_gib * GIB, disk_gib * GIB),
                 **kwargs)  # type: ignore[arg-type]


def recomputed_usage(state: ClusterState) -> np.ndarray:
    """Usage from the assignment alone, independent of the engine's own bookkeeping."""
    used = np.zeros((len(state.hosts), 3))
    for g, h in enumerate(state.assignment.tolist()):
        if h >= 0:
            used[h] += state.request[g]
    return used


def hosts_of(state: ClusterState, group: str) -> list[int]:
    return [int(state.assignment[g]) for g in range(len(state.guests))
            if state.guests[g].group == group and state.assignment[g] >= 0]


@st.composite
def clusters(draw: st.DrawFn, max_hosts: int = 6, max_groups: int = 5, allow_failed: bool = True) -> ClusterState:
    """Random small clusters: heterogeneous hosts, groups with every kind of constraint.

    Affinity only points to earlier groups (acyclic), as the engine documents.
    """
    n_hosts = draw(st.integers(1, max_hosts))
    conditions = [HostCondition.UP, HostCondition.UP, HostCondition.UP, HostCondition.DEGRADED,
                  HostCondition.MAINTENANCE] + ([HostCondition.FAILED] if allow_failed else [])
    hosts = []
    for i in range(n_hosts):
        hosts.append(Host(
            f"h{i}",
            (float(draw(st.integers(1, 8))), float(draw(st.integers(1, 16))), float(draw(st.integers(0, 20)))),
            ratios=(draw(st.sampled_from([1.0, 2.0, 4.0])), draw(st.sampled_from([1.0, 1.5])), 1.0),
            reserved=(0.0, float(draw(st.integers(0, 2))), 0.0),
            condition=draw(st.sampled_from(conditions)),
            networks=frozenset(draw(st.sets(st.sampled_from(["a", "b"])))),
            labels={"zone": draw(st.sampled_from(["x", "y"]))},
        ))
    n_groups = draw(st.integers(1, max_groups))
    guests = []
    for gi in range(n_groups):
        name = f"g{gi}"
        spread = draw(st.sampled_from(list(Spread)))
        earlier = [f"g{j}" for j in range(gi)]
        affinity = frozenset(draw(st.sets(st.sampled_from(earlier), max_size=1))) if earlier and draw(
            st.integers(0, 3)) == 0 else frozenset()
        anti = frozenset(draw(st.sets(st.sampled_from([f"g{j}" for j in range(n_groups)]), max_size=2)))
        request = (float(draw(st.integers(1, 4))), float(draw(st.integers(1, 6))), float(draw(st.integers(0, 5))))
        networks = frozenset(draw(st.sets(st.sampled_from(["a", "b"]), max_size=1)))
        labels = {"zone": draw(st.sampled_from(["x", "y"]))} if draw(st.integers(0, 4)) == 0 else {}
        priority = draw(st.sampled_from([100, 200, 300]))
        for i in range(draw(st.integers(1, 4))):
            guests.append(Guest(f"{name}-{i}", name, request, priority=priority, networks=networks, spread=spread,
                                affinity=affinity, anti_affinity=anti, labels=labels))
    return ClusterState(hosts, guests)
