"""The working copy one placement run reads and updates: usage, conditions, group occupancy.

Role: filters and weighers look at a ``RunView`` rather than at a ``ClusterState`` so
that one run (``place``, a failover plan, an admission check) can place guests one by
one and see its own earlier decisions, without ever mutating the input state.
``Occupancy`` answers "on which hosts are the guests of group g?" in time proportional
to the group (small groups) or to the hosts (large groups, kept as a dense count array).

Must not: decide anything, or be shared between runs (it is mutable scratch space).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from nonstop.core.placement.model import ClusterState, FloatArray, HostCondition, IntArray

BIG_GROUP = 256
"""Groups larger than this keep a dense per-host count array instead of scanning members."""


class Occupancy:
    """Per-group host occupancy over a mutable copy of the assignment array."""

    def __init__(self, state: ClusterState, assignment: IntArray) -> None:
        self.state = state
        self.assignment = assignment
        self._dense: dict[int, NDArray[np.int64]] = {}

    def _dense_counts(self, group: int) -> NDArray[np.int64]:
        counts = self._dense.get(group)
        if counts is None:
            hosts = self.assignment[self.state.members(group)]
            counts = np.bincount(hosts[hosts >= 0], minlength=len(self.state.hosts)).astype(np.int64)
            self._dense[group] = counts
        return counts

    def hosts(self, group: int) -> IntArray:
        """Hosts holding at least one guest of the group (may repeat for small groups)."""
        members = self.state.members(group)
        if len(members) > BIG_GROUP:
            return np.flatnonzero(self._dense_counts(group))
        hosts = self.assignment[members]
        return hosts[hosts >= 0]

    def counts(self, group: int) -> tuple[IntArray, NDArray[np.int64]]:
        """Distinct hosts of the group (ascending) and how many of its guests each holds."""
        members = self.state.members(group)
        if len(members) > BIG_GROUP:
            dense = self._dense_counts(group)
            hosts = np.flatnonzero(dense)
            return hosts, dense[hosts]
        placed = self.assignment[members]
        unique, counts = np.unique(placed[placed >= 0], return_counts=True)
        return unique.astype(np.intp), counts.astype(np.int64)

    def move(self, guest: int, host: int) -> None:
        """Record that ``guest`` now runs on ``host`` (-1: nowhere)."""
        old = int(self.assignment[guest])
        self.assignment[guest] = host
        dense = self._dense.get(int(self.state.group[guest]))
        if dense is not None:
            if old >= 0:
                dense[old] -= 1
            if host >= 0:
                dense[host] += 1


@dataclass
class _Journal:
    """What a what-if run changed: original host per guest, original rows per host."""

    hosts: dict[int, int] = field(default_factory=dict)
    used: dict[int, FloatArray] = field(default_factory=dict)
    condition: dict[int, int] = field(default_factory=dict)


@dataclass
class RunView:
    """Everything a filter or weigher may read during one run."""

    state: ClusterState
    used: FloatArray
    condition: NDArray[np.int8]
    occupancy: Occupancy
    accept_degraded: bool = True
    """False when the policy says degraded hosts take no new guests."""
    inv_effective: FloatArray = field(init=False)
    _journal: _Journal | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        # A host with no effective capacity of a resource is full of it: any positive request
        # yields a huge utilization, and the capacity filter rejects it anyway.
        self.inv_effective = 1.0 / np.maximum(self.state.effective, 1e-9)

    @classmethod
    def start(cls, state: ClusterState, accept_degraded: bool = True) -> RunView:
        assignment = np.array(state.assignment, dtype=np.intp)
        return cls(
            state=state,
            used=np.array(state.used, dtype=np.float64),
            condition=np.array(state.condition, dtype=np.int8),
            occupancy=Occupancy(state, assignment),
            accept_degraded=accept_degraded,
        )

    @property
    def assignment(self) -> IntArray:
        return self.occupancy.assignment

    def begin(self) -> None:
        """Start recording changes so ``rollback`` can restore this exact view (what-if runs)."""
        self._journal = _Journal()

    def rollback(self) -> None:
        """Undo every change since ``begin``, bit for bit."""
        journal = self._journal
        assert journal is not None, "rollback without begin"
        self._journal = None
        for guest, host in journal.hosts.items():
            self.occupancy.move(guest, host)
        for host, row in journal.used.items():
            self.used[host] = row
        for host, value in journal.condition.items():
            self.condition[host] = value

    def assign(self, guest: int, host: int) -> None:
        """Move ``guest`` to ``host`` (-1: unplace it), keeping usage and occupancy current."""
        old = int(self.occupancy.assignment[guest])
        if self._journal is not None:
            self._journal.hosts.setdefault(guest, old)
            for h in (old, host):
                if h >= 0 and h not in self._journal.used:
                    self._journal.used[h] = self.used[h].copy()
        request = self.state.request[guest]
        if old >= 0:
            self.used[old] -= request
        if host >= 0:
            self.used[host] += request
        self.occupancy.move(guest, host)

    def assign_new(self, guests: list[int], hosts: list[int]) -> None:
        """Place ``guests`` on distinct ``hosts`` at once (a batch decision)."""
        if self._journal is not None or (self.occupancy.assignment[guests] >= 0).any():
            for guest, host in zip(guests, hosts, strict=True):
                self.assign(guest, host)
            return
        self.used[hosts] += self.state.request[guests]
        for guest, host in zip(guests, hosts, strict=True):
            self.occupancy.move(guest, host)

    def fail_hosts(self, hosts: IntArray, displaced: IntArray | None = None) -> IntArray:
        """Mark hosts FAILED and unplace their guests (``displaced`` if the caller knows them)."""
        if self._journal is not None:
            for h in hosts.tolist():
                self._journal.condition.setdefault(h, int(self.condition[h]))
        self.condition[hosts] = int(HostCondition.FAILED)
        if displaced is None:
            displaced = np.flatnonzero(np.isin(self.occupancy.assignment, hosts))
        for guest in displaced.tolist():
            self.assign(guest, -1)
        return displaced
