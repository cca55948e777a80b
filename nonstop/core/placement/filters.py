"""Filters: small plugins, one concern each, that remove hosts a guest cannot go to.

Role: every filter answers, for one guest, a boolean mask over all hosts (``host_mask``),
vectorized with numpy — the shape Nova's ``host_passes`` has, one host at a time. Three
kinds exist because the engine caches what it can:

- ``HostFilter``: depends only on the host and the guest's request class (state,
  networks, labels) — computed once per class per run.
- ``CapacityFilter``: one resource; depends on current usage — re-evaluated on the one
  host that changed after each placement.
- ``GroupFilter``: depends on where other guests of related groups run (affinity,
  anti-affinity, hard spread) — expressed as a sparse set of hosts to exclude, or a set
  of hosts the guest is restricted to.

Must not: weigh, place, or read anything but the ``RunView`` it is given.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np

from nonstop.core.placement.model import RESOURCES, BoolArray, FloatArray, HostCondition, IntArray, Spread
from nonstop.core.placement.view import RunView

EMPTY: IntArray = np.zeros(0, dtype=np.intp)


class Filter(ABC):
    name: ClassVar[str] = "Filter"

    @property
    def label(self) -> str:
        return self.name

    @abstractmethod
    def host_mask(self, view: RunView, guest: int) -> BoolArray:
        """True for every host this filter lets ``guest`` go to."""


class HostFilter(Filter):
    """A filter that looks only at the host and at the guest's request class."""

    @abstractmethod
    def class_mask(self, view: RunView, klass: int) -> BoolArray: ...

    def host_mask(self, view: RunView, guest: int) -> BoolArray:
        return self.class_mask(view, int(view.state.klass[guest]))


class HostStateFilter(HostFilter):
    """Only UP hosts take guests; DEGRADED ones too unless the policy says no-new-guests."""

    name = "HostStateFilter"

    def class_mask(self, view: RunView, klass: int) -> BoolArray:
        mask: BoolArray = view.condition == int(HostCondition.UP)
        if view.accept_degraded:
            mask = mask | (view.condition == int(HostCondition.DEGRADED))
        return mask


class NetworkFilter(HostFilter):
    """The host must reach every network the guest has a vNIC on."""

    name = "NetworkFilter"

    def class_mask(self, view: RunView, klass: int) -> BoolArray:
        return view.state.network_mask(view.state.classes[klass].networks)


class LabelFilter(HostFilter):
    """The host must carry every label the guest requires."""

    name = "LabelFilter"

    def class_mask(self, view: RunView, klass: int) -> BoolArray:
        return view.state.label_mask(view.state.classes[klass].labels)


class CapacityFilter(Filter):
    """Usage plus the request must stay within capacity × ratio − reserved, for one resource."""

    name = "CapacityFilter"

    def __init__(self, resource: str) -> None:
        self.resource = resource
        self.column = RESOURCES.index(resource)

    @property
    def label(self) -> str:
        return f"{self.resource.capitalize()}CapacityFilter"

    @staticmethod
    def fits(used_after: FloatArray, effective: FloatArray) -> BoolArray:
        """Elementwise: the one expression both the explaining and the fast path use."""
        result: BoolArray = used_after <= effective
        return result

    def host_mask(self, view: RunView, guest: int) -> BoolArray:
        r = self.column
        request = float(view.state.request[guest, r])
        return self.fits(view.used[:, r] + request, view.state.effective[:, r])


class GroupFilter(Filter):
    """A filter about other guests: a sparse exclusion, or a restriction to some hosts."""

    def excluded(self, view: RunView, guest: int) -> IntArray:
        """Hosts removed for ``guest`` (may repeat)."""
        return EMPTY

    def required(self, view: RunView, guest: int) -> IntArray | None:
        """If not None: ``guest`` may only go to these hosts (sorted, distinct)."""
        return None

    def host_mask(self, view: RunView, guest: int) -> BoolArray:
        n = len(view.state.hosts)
        required = self.required(view, guest)
        if required is None:
            mask = np.ones(n, dtype=np.bool_)
        else:
            mask = np.zeros(n, dtype=np.bool_)
            mask[required] = True
        mask[self.excluded(view, guest)] = False
        return mask


class AntiAffinityFilter(GroupFilter):
    """Never share a host with an anti-affine group, nor (hard spread) with a sibling."""

    name = "AntiAffinityFilter"

    def excluded(self, view: RunView, guest: int) -> IntArray:
        state = view.state
        group = int(state.group[guest])
        parts = [view.occupancy.hosts(other) for other in state.group_anti[group]]
        if state.group_spread[group] is Spread.HARD:
            parts.append(view.occupancy.hosts(group))
        if not parts:
            return EMPTY
        return parts[0] if len(parts) == 1 else np.concatenate(parts)


class AffinityFilter(GroupFilter):
    """Share a host with every affine group that already runs somewhere.

    A group whose guests are not placed yet binds nothing; the engine places a group
    before the groups that are affine to it, so the first of them sets the host.
    """

    name = "AffinityFilter"

    def required(self, view: RunView, guest: int) -> IntArray | None:
        state = view.state
        result: IntArray | None = None
        for other in state.group_affinity[int(state.group[guest])]:
            hosts = view.occupancy.hosts(other)
            if len(hosts) == 0:
                continue
            hosts = np.unique(hosts)
            result = hosts if result is None else np.intersect1d(result, hosts, assume_unique=True)
        return result


def default_filters() -> tuple[Filter, ...]:
    """The filters every run applies unless told otherwise, cheapest and broadest first."""
    return (
        HostStateFilter(),
        NetworkFilter(),
        LabelFilter(),
        CapacityFilter("cpu"),
        CapacityFilter("memory"),
        CapacityFilter("disk"),
        AffinityFilter(),
        AntiAffinityFilter(),
    )
