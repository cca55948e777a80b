"""The placement engine's view of a cluster: hosts and guests as numpy arrays.

Role: ``Host`` and ``Guest`` are the plain records a caller builds (from the spec, from
observed state, or by hand in a test); ``ClusterState`` turns them into arrays the
filters and weighers work on — effective capacity per resource (capacity × allocation
ratio − reserved, as in Nova), current usage, host conditions, reachable networks,
and the group tables that affinity and anti-affinity need. Placement decisions never
mutate a ``ClusterState``; they return a new one (``with_assignment``).

Must not: know about YAML, the store or the clock, or decide anything — it is data.
Group constraints (spread, affinity, anti-affinity) are properties of a guest *group*:
the state unions what the group's guests declare, and makes anti-affinity symmetric
("A never shares a host with B" is the same fact as "B never shares a host with A").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum, IntEnum

import numpy as np
from numpy.typing import NDArray

RESOURCES: tuple[str, str, str] = ("cpu", "memory", "disk")
"""Resource order in every (n, 3) array of the engine."""

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.intp]
BoolArray = NDArray[np.bool_]

Triple = tuple[float, float, float]


class HostCondition(IntEnum):
    """What the cluster believes about a host; only UP (and, by policy, DEGRADED) take new guests."""

    UP = 0
    MAINTENANCE = 1
    DEGRADED = 2
    FAILED = 3


class Spread(str, Enum):
    """How the replicas of one group share hosts: never (hard), preferably not (soft), don't care."""

    HARD = "hard"
    SOFT = "soft"
    NONE = "none"


@dataclass(frozen=True)
class Host:
    name: str
    capacity: Triple
    """Physical cpus, memory bytes, disk bytes."""
    ratios: Triple = (4.0, 1.0, 1.0)
    reserved: Triple = (0.0, 0.0, 0.0)
    condition: HostCondition = HostCondition.UP
    networks: frozenset[str] = frozenset()
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Guest:
    name: str
    group: str
    request: Triple
    """vcpus, memory bytes, disk bytes."""
    priority: int = 100
    networks: frozenset[str] = frozenset()
    spread: Spread = Spread.NONE
    affinity: frozenset[str] = frozenset()
    anti_affinity: frozenset[str] = frozenset()
    labels: Mapping[str, str] = field(default_factory=dict)
    """Required host labels: every key/value must match."""
    host: str | None = None


@dataclass(frozen=True)
class RequestClass:
    """Guests that every host-only filter and resource weigher treats alike."""

    request: Triple
    networks: tuple[int, ...]
    labels: tuple[tuple[str, str], ...]


def _readonly(array: NDArray[np.generic]) -> None:
    array.setflags(write=False)


class ClusterState:
    """An immutable snapshot: hosts, guests, who runs where, and the derived arrays.

    Arrays (H hosts, G guests, R = 3 resources): ``capacity``/``ratios``/``reserved``/
    ``effective`` (H, R); ``condition`` (H,); ``host_networks`` (H, N); ``request`` (G, R);
    ``priority``, ``group``, ``klass``, ``assignment`` (G,) with -1 for "not placed";
    ``used`` (H, R) = the requests of the guests assigned to each host.
    """

    def __init__(self, hosts: Sequence[Host], guests: Sequence[Guest]) -> None:
        self.hosts: tuple[Host, ...] = tuple(hosts)
        self.guests: tuple[Guest, ...] = tuple(guests)
        self.host_names: tuple[str, ...] = tuple(h.name for h in self.hosts)
        self.host_index: dict[str, int] = {name: i for i, name in enumerate(self.host_names)}
        if len(self.host_index) != len(self.hosts):
            raise ValueError("duplicate host names")
        self.capacity: FloatArray = np.array([h.capacity for h in self.hosts], dtype=np.float64).reshape(-1, 3)
        self.ratios: FloatArray = np.array([h.ratios for h in self.hosts], dtype=np.float64).reshape(-1, 3)
        self.reserved: FloatArray = np.array([h.reserved for h in self.hosts], dtype=np.float64).reshape(-1, 3)
        self.effective: FloatArray = self.capacity * self.ratios - self.reserved
        self.condition: NDArray[np.int8] = np.array([int(h.condition) for h in self.hosts], dtype=np.int8)
        self.network_names: tuple[str, ...] = tuple(
            sorted({n for h in self.hosts for n in h.networks} | {n for g in self.guests for n in g.networks})
        )
        net_index = {n: i for i, n in enumerate(self.network_names)}
        self.host_networks: BoolArray = np.zeros((len(self.hosts), len(self.network_names)), dtype=np.bool_)
        for i, h in enumerate(self.hosts):
            for n in h.networks:
                self.host_networks[i, net_index[n]] = True
        self._build_guests(net_index)
        self._label_masks: dict[tuple[tuple[str, str], ...], BoolArray] = {}
        self._order_keys: tuple[NDArray[np.int64], NDArray[np.int64]] | None = None
        self._by_host: tuple[IntArray, IntArray] | None = None
        for array in (self.capacity, self.ratios, self.reserved, self.effective, self.condition, self.host_networks):
            _readonly(array)

    def __repr__(self) -> str:
        hosts = ", ".join(f"{h.name}:{HostCondition(int(c)).name.lower()}:{h.capacity}x{h.ratios}-{h.reserved}"
                          f"{sorted(h.networks)}{dict(h.labels)}" for h, c in zip(self.hosts, self.condition, strict=True))
        guests = ", ".join(
            f"{g.name}:{g.request}p{g.priority}{g.spread.value}{sorted(g.networks)}{dict(g.labels)}"
            f"aff{sorted(g.affinity)}anti{sorted(g.anti_affinity)}@{self.host_names[a] if a >= 0 else None}"
            for g, a in zip(self.guests, self.assignment.tolist(), strict=True)
        )
        return f"ClusterState(hosts=[{hosts}], guests=[{guests}])"

    # ----------------------------------------------------------------- building

    def _build_guests(self, net_index: Mapping[str, int]) -> None:
        guests = self.guests
        self.guest_names: tuple[str, ...] = tuple(g.name for g in guests)
        self.guest_index: dict[str, int] = {name: i for i, name in enumerate(self.guest_names)}
        if len(self.guest_index) != len(guests):
            raise ValueError("duplicate guest names")
        group_ids: dict[str, int] = {}
        class_ids: dict[RequestClass, int] = {}
        group = np.empty(len(guests), dtype=np.intp)
        klass = np.empty(len(guests), dtype=np.intp)
        assignment = np.full(len(guests), -1, dtype=np.intp)
        spread: dict[int, Spread] = {}
        affinity: dict[int, set[str]] = {}
        anti: dict[int, set[str]] = {}
        strictness = {Spread.NONE: 0, Spread.SOFT: 1, Spread.HARD: 2}
        for i, g in enumerate(guests):
            gid = group_ids.setdefault(g.group, len(group_ids))
            group[i] = gid
            if gid not in spread or strictness[g.spread] > strictness[spread[gid]]:
                spread[gid] = g.spread
            affinity.setdefault(gid, set()).update(g.affinity)
            anti.setdefault(gid, set()).update(g.anti_affinity)
            rc = RequestClass(
                (float(g.request[0]), float(g.request[1]), float(g.request[2])),
                tuple(sorted(net_index[n] for n in g.networks)),
                tuple(sorted(g.labels.items())),
            )
            klass[i] = class_ids.setdefault(rc, len(class_ids))
            if g.host is not None:
                if g.host not in self.host_index:
                    raise ValueError(f"guest {g.name} is on unknown host {g.host}")
                assignment[i] = self.host_index[g.host]
        self.group_names: tuple[str, ...] = tuple(group_ids)
        self.group_index: dict[str, int] = dict(group_ids)
        self.classes: tuple[RequestClass, ...] = tuple(class_ids)
        self.group: IntArray = group
        self.klass: IntArray = klass
        self.request: FloatArray = np.array([g.request for g in guests], dtype=np.float64).reshape(-1, 3)
        self.priority: NDArray[np.int64] = np.array([g.priority for g in guests], dtype=np.int64)
        self.assignment: IntArray = assignment
        n_groups = len(group_ids)
        self.group_spread: tuple[Spread, ...] = tuple(spread[i] for i in range(n_groups))
        # Constraints only name groups that exist; a reference to an absent group binds nothing.
        self.group_affinity: tuple[tuple[int, ...], ...] = tuple(
            tuple(sorted(group_ids[n] for n in affinity[i] if n in group_ids and group_ids[n] != i))
            for i in range(n_groups)
        )
        anti_sets: list[set[int]] = [{group_ids[n] for n in anti[i] if n in group_ids} for i in range(n_groups)]
        for i in range(n_groups):
            for j in list(anti_sets[i]):
                anti_sets[j].add(i)
        self.group_anti: tuple[tuple[int, ...], ...] = tuple(tuple(sorted(s)) for s in anti_sets)
        order = np.argsort(group, kind="stable")
        self.group_members_order: IntArray = order
        self.group_offsets: IntArray = np.searchsorted(group[order], np.arange(n_groups + 1)).astype(np.intp)
        self.class_request: FloatArray = np.array([c.request for c in self.classes], dtype=np.float64).reshape(-1, 3)
        self.used: FloatArray = self._usage(assignment)
        # Rank of each guest's name: the last key of the placement order, sortable by numpy.
        self.name_rank: IntArray = np.argsort(np.argsort(np.array(self.guest_names, dtype=str), kind="stable"))
        for array in (self.name_rank, group, klass, self.request, self.priority, assignment, order, self.group_offsets,
                      self.class_request, self.used):
            _readonly(array)

    def _usage(self, assignment: IntArray) -> FloatArray:
        placed = assignment >= 0
        used = np.zeros((len(self.hosts), 3), dtype=np.float64)
        for r in range(3):
            used[:, r] = np.bincount(assignment[placed], weights=self.request[placed, r], minlength=len(self.hosts))
        return used

    # ------------------------------------------------------------------ queries

    def members(self, group: int) -> IntArray:
        """Guest indices of one group."""
        return self.group_members_order[self.group_offsets[group] : self.group_offsets[group + 1]]

    def label_mask(self, labels: tuple[tuple[str, str], ...]) -> BoolArray:
        """Hosts that carry every required label."""
        mask = self._label_masks.get(labels)
        if mask is None:
            mask = np.array([all(h.labels.get(k) == v for k, v in labels) for h in self.hosts], dtype=np.bool_)
            _readonly(mask)
            self._label_masks[labels] = mask
        return mask

    def network_mask(self, networks: tuple[int, ...]) -> BoolArray:
        """Hosts that reach every one of the given networks."""
        if not networks:
            return np.ones(len(self.hosts), dtype=np.bool_)
        return np.asarray(self.host_networks[:, list(networks)].all(axis=1), dtype=np.bool_)

    def guests_on(self, host: int) -> IntArray:
        """Guest indices on ``host``, ascending."""
        if self._by_host is None:
            order = np.argsort(self.assignment, kind="stable")
            offsets = np.searchsorted(self.assignment[order], np.arange(-1, len(self.hosts) + 1))
            self._by_host = (order, offsets.astype(np.intp))
        order, offsets = self._by_host
        return order[offsets[host + 1] : offsets[host + 2]]

    def group_order_keys(self) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        """Per group: the priority floor affine dependents lift it to, and its affinity depth.

        A group others are affine to must be placed before them: it inherits the highest
        priority of its (transitive) dependents, and sorts before them at equal priority.
        """
        if self._order_keys is None:
            n_groups = len(self.group_names)
            group_max = np.full(n_groups, np.iinfo(np.int64).min, dtype=np.int64)
            np.maximum.at(group_max, self.group, self.priority)
            lift = np.full(n_groups, np.iinfo(np.int64).min, dtype=np.int64)
            depth = np.zeros(n_groups, dtype=np.int64)
            dependents = [(a, b) for a in range(n_groups) for b in self.group_affinity[a]]
            for _ in range(n_groups):  # the longest affinity chain is < n_groups (cycles stop here)
                changed = False
                for a, b in dependents:
                    floor = max(int(group_max[a]), int(lift[a]))
                    if floor > lift[b]:
                        lift[b] = floor
                        changed = True
                    if depth[b] + 1 > depth[a]:
                        depth[a] = depth[b] + 1
                        changed = True
                if not changed:
                    break
            _readonly(lift)
            _readonly(depth)
            self._order_keys = (lift, depth)
        return self._order_keys

    def placement_map(self) -> dict[str, str]:
        """Guest name -> host name for every placed guest."""
        return {self.guest_names[i]: self.host_names[h] for i, h in enumerate(self.assignment.tolist()) if h >= 0}

    # ---------------------------------------------------------------- deriving

    def with_assignment(self, assignment: IntArray) -> ClusterState:
        """The same cluster with guests placed as ``assignment`` says (-1 = not placed)."""
        clone = self._clone()
        clone._by_host = None
        clone.assignment = np.array(assignment, dtype=np.intp)
        clone.used = clone._usage(clone.assignment)
        _readonly(clone.assignment)
        _readonly(clone.used)
        return clone

    def with_conditions(self, conditions: Mapping[str, HostCondition]) -> ClusterState:
        """The same cluster with some hosts in another condition."""
        clone = self._clone()
        condition = self.condition.copy()
        for name, value in conditions.items():
            condition[self.host_index[name]] = int(value)
        _readonly(condition)
        clone.condition = condition
        return clone

    def _clone(self) -> ClusterState:
        clone = object.__new__(ClusterState)
        clone.__dict__.update(self.__dict__)
        return clone
