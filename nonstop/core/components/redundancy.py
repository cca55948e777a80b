"""Redundancy state of a host's component groups and the host health derived from it (pure).

Role: turn one ``HardwareInventory`` (what a BMC said, nonstop/core/ha/hardware.py) into a
``HostAssessment``: for each group that has redundancy — power supplies, NIC ports, drives —
``redundant`` (more than one working member), ``degraded`` (running on its last member),
``lost`` (no working member) or ``unknown`` (the BMC gave no reading for the group); cooling
(fans, temperatures) is reported as information only and never changes the host's health.
Host health: ``failed`` when the host is powered off or a group is lost, ``degraded`` when a
group runs on its last member, ``healthy`` otherwise, ``unknown`` when the BMC could not be
read at all. ``changes(before, after)`` lists every transition as a frozen event.

"No data" is never "healthy": a group the BMC does not describe stays ``unknown`` and a
host whose BMC cannot be read is ``unknown``, which the policy (policy.py) treats as "no
news" rather than as a repair.

Must not: talk to a BMC, read a clock or decide what to do about a degraded host (policy.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from nonstop.core.ha.hardware import ComponentGroup, ComponentReading, HardwareInventory


class GroupState(str, Enum):
    REDUNDANT = "redundant"
    DEGRADED = "degraded"
    LOST = "lost"
    UNKNOWN = "unknown"


class HostHealth(str, Enum):
    HEALTHY = "healthy"
    DEGRADED = "degraded"
    FAILED = "failed"
    UNKNOWN = "unknown"


REDUNDANT_GROUPS: tuple[ComponentGroup, ...] = (ComponentGroup.POWER, ComponentGroup.NETWORK, ComponentGroup.STORAGE)
"""Groups whose state makes the host's health; cooling is information only."""

MEMBER_KINDS: dict[ComponentGroup, tuple[str, ...]] = {
    ComponentGroup.POWER: ("power-supply",),
    ComponentGroup.NETWORK: ("port", "adapter"),
    ComponentGroup.STORAGE: ("drive",),
    ComponentGroup.COOLING: ("fan",),
}
"""Which readings count as members of a group (volumes and temperatures are not members)."""


@dataclass(frozen=True)
class GroupAssessment:
    group: ComponentGroup
    state: GroupState
    working: int
    total: int
    failed: tuple[str, ...] = ()
    """Names of the failed members, sorted."""


@dataclass(frozen=True)
class HostAssessment:
    host: str
    health: HostHealth
    groups: tuple[GroupAssessment, ...]
    power_state: str | None = None
    reason: str = ""
    """Why the host has this health, for events and the operator (``power: degraded (PSU1 failed)``)."""

    def group(self, group: ComponentGroup) -> GroupAssessment | None:
        return next((g for g in self.groups if g.group is group), None)

    def failed_members(self) -> frozenset[tuple[str, str]]:
        return frozenset((g.group.value, name) for g in self.groups for name in g.failed)

    def to_dict(self) -> dict[str, object]:
        return {
            "host": self.host, "health": self.health.value, "power_state": self.power_state, "reason": self.reason,
            "groups": {g.group.value: {"state": g.state.value, "working": g.working, "total": g.total,
                                       "failed": list(g.failed)} for g in self.groups},
        }


def group_state(working: int, total: int) -> GroupState:
    """The redundancy rule: >1 working = redundant, exactly 1 = degraded, 0 = lost, no members = unknown."""
    if total <= 0:
        return GroupState.UNKNOWN
    if working >= 2:
        return GroupState.REDUNDANT
    return GroupState.DEGRADED if working == 1 else GroupState.LOST


def assess_group(group: ComponentGroup, readings: tuple[ComponentReading, ...]) -> GroupAssessment:
    members = [r for r in readings if r.group is group and r.kind in MEMBER_KINDS[group]]
    failed = tuple(sorted(r.name for r in members if r.failed))
    working = len(members) - len(failed)
    return GroupAssessment(group, group_state(working, len(members)), working, len(members), failed)


def assess(host: str, inventory: HardwareInventory | None) -> HostAssessment:
    """The host's redundancy and health from one reading; ``None`` = the BMC could not be read."""
    if inventory is None:
        groups = tuple(GroupAssessment(g, GroupState.UNKNOWN, 0, 0) for g in (*REDUNDANT_GROUPS, ComponentGroup.COOLING))
        return HostAssessment(host, HostHealth.UNKNOWN, groups, None, "BMC unreadable")
    groups = tuple(assess_group(g, inventory.components) for g in (*REDUNDANT_GROUPS, ComponentGroup.COOLING))
    redundant = [g for g in groups if g.group in REDUNDANT_GROUPS]
    if inventory.power_state == "Off":
        return HostAssessment(host, HostHealth.FAILED, groups, inventory.power_state, "powered off")
    lost = [g for g in redundant if g.state is GroupState.LOST]
    degraded = [g for g in redundant if g.state is GroupState.DEGRADED]
    if lost:
        return HostAssessment(host, HostHealth.FAILED, groups, inventory.power_state, _why(lost))
    if degraded:
        return HostAssessment(host, HostHealth.DEGRADED, groups, inventory.power_state, _why(degraded))
    return HostAssessment(host, HostHealth.HEALTHY, groups, inventory.power_state, "all groups redundant")


def _why(groups: list[GroupAssessment]) -> str:
    return "; ".join(f"{g.group.value}: {g.state.value} ({', '.join(g.failed) or 'no members'} failed)" for g in groups)


# ------------------------------------------------------------------------ transitions


@dataclass(frozen=True)
class ComponentEvent:
    """One transition: ``kind`` is ``host-health``, ``group-state`` or ``component``."""

    kind: str
    host: str
    subject: str
    """``host``, the group name, or ``group/member``."""
    before: str
    after: str
    at: float
    reason: str = ""


def changes(before: HostAssessment | None, after: HostAssessment, now: float) -> tuple[ComponentEvent, ...]:
    """Every transition from ``before`` (None = first reading) to ``after``: failed and repaired
    members, group states, host health. A first reading reports only what is not healthy."""
    events: list[ComponentEvent] = []
    old_failed = before.failed_members() if before is not None else frozenset()
    new_failed = after.failed_members()
    for group, name in sorted(new_failed - old_failed):
        events.append(ComponentEvent("component", after.host, f"{group}/{name}", "ok", "failed", now))
    # An unreadable BMC forgets nothing: members are "repaired" only by a reading that says so.
    if after.health is not HostHealth.UNKNOWN:
        for group, name in sorted(old_failed - new_failed):
            events.append(ComponentEvent("component", after.host, f"{group}/{name}", "failed", "ok", now))
    for g in after.groups:
        old = before.group(g.group) if before is not None else None
        old_state = old.state if old is not None else (GroupState.REDUNDANT if before is None else GroupState.UNKNOWN)
        if g.state is not old_state and not (before is None and g.state is GroupState.UNKNOWN):
            events.append(ComponentEvent("group-state", after.host, g.group.value, old_state.value, g.state.value, now,
                                         f"{g.working}/{g.total} working"))
    old_health = before.health if before is not None else HostHealth.HEALTHY
    if after.health is not old_health and not (before is None and after.health is HostHealth.HEALTHY):
        events.append(ComponentEvent("host-health", after.host, "host", old_health.value, after.health.value, now,
                                     after.reason))
    return tuple(events)
