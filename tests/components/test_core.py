"""Component redundancy core: group states, host health, transitions and the policy table."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nonstop.core.components.policy import (
    RESPONSE,
    TRANSITIONS,
    Action,
    HostPolicy,
    IllegalTransition,
    OnDegraded,
    PolicyState,
    step,
)
from nonstop.core.components.redundancy import GroupState, HostHealth, assess, changes, group_state
from nonstop.core.ha.hardware import ComponentGroup, ComponentReading, HardwareInventory

G = ComponentGroup


def reading(group: ComponentGroup, kind: str, name: str, failed: bool = False) -> ComponentReading:
    return ComponentReading(group, kind, name, f"/x/{name}", "Critical" if failed else "OK",
                            "UnavailableOffline" if failed else "Enabled")


def inventory(psus: int = 2, nics: int = 2, drives: int = 2, failed: tuple[str, ...] = (), power: str = "On",
              missing: tuple[str, ...] = ()) -> HardwareInventory:
    parts = [reading(G.POWER, "power-supply", f"PSU{i}", f"PSU{i}" in failed) for i in range(1, psus + 1)]
    parts += [reading(G.NETWORK, "port", f"eth{i}/1", f"eth{i}/1" in failed) for i in range(nics)]
    parts += [reading(G.STORAGE, "drive", f"Disk{i}", f"Disk{i}" in failed) for i in range(drives)]
    parts += [reading(G.STORAGE, "volume", "Volume1", False), reading(G.COOLING, "fan", "Fan1", "Fan1" in failed),
              reading(G.COOLING, "fan", "Fan2")]
    return HardwareInventory("h1", power, "OK", tuple(parts), missing)


@pytest.mark.parametrize(("working", "total", "state"), [
    (3, 3, GroupState.REDUNDANT), (2, 3, GroupState.REDUNDANT), (2, 2, GroupState.REDUNDANT),
    (1, 2, GroupState.DEGRADED), (1, 1, GroupState.DEGRADED), (0, 2, GroupState.LOST), (0, 0, GroupState.UNKNOWN),
])
def test_group_state_table(working: int, total: int, state: GroupState) -> None:
    assert group_state(working, total) is state


@pytest.mark.parametrize(("failed", "power", "health", "reason_has"), [
    ((), "On", HostHealth.HEALTHY, "redundant"),
    (("PSU1",), "On", HostHealth.DEGRADED, "power: degraded (PSU1"),
    (("eth0/1",), "On", HostHealth.DEGRADED, "network: degraded"),
    (("Disk1",), "On", HostHealth.DEGRADED, "storage: degraded (Disk1"),
    (("Fan1",), "On", HostHealth.HEALTHY, "redundant"),  # cooling is information only
    (("PSU1", "PSU2"), "On", HostHealth.FAILED, "power: lost"),
    (("eth0/1", "eth1/1"), "On", HostHealth.FAILED, "network: lost"),
    ((), "Off", HostHealth.FAILED, "powered off"),
])
def test_host_health_table(failed: tuple[str, ...], power: str, health: HostHealth, reason_has: str) -> None:
    a = assess("h1", inventory(failed=failed, power=power))
    assert a.health is health
    assert reason_has in a.reason


def test_missing_group_is_unknown_not_healthy_and_unreadable_bmc_is_unknown() -> None:
    a = assess("h1", inventory(drives=0, missing=("storage: no Storage",)))
    storage = a.group(G.STORAGE)
    assert storage is not None and storage.state is GroupState.UNKNOWN
    assert a.health is HostHealth.HEALTHY  # the groups it can see are redundant
    assert assess("h1", None).health is HostHealth.UNKNOWN


def test_transitions_name_component_group_and_host() -> None:
    before = assess("h1", inventory())
    after = assess("h1", inventory(failed=("PSU1",)))
    events = changes(before, after, 5.0)
    assert [(e.kind, e.subject, e.before, e.after) for e in events] == [
        ("component", "power/PSU1", "ok", "failed"),
        ("group-state", "power", "redundant", "degraded"),
        ("host-health", "host", "healthy", "degraded"),
    ]
    back = changes(after, before, 6.0)
    assert [(e.kind, e.after) for e in back] == [("component", "ok"), ("group-state", "redundant"),
                                                  ("host-health", "healthy")]
    assert changes(before, before, 7.0) == ()
    assert changes(None, before, 0.0) == ()  # a healthy first reading is not news


def test_unreadable_bmc_never_reports_a_repair() -> None:
    degraded = assess("h1", inventory(failed=("PSU1",)))
    events = changes(degraded, assess("h1", None), 1.0)
    assert not any(e.kind == "component" and e.after == "ok" for e in events)


def test_every_state_health_pair_is_in_the_table() -> None:
    for state in PolicyState:
        for health in (HostHealth.HEALTHY, HostHealth.DEGRADED, HostHealth.FAILED):
            assert (state, health) in TRANSITIONS


def test_illegal_transition_raises_typed_error() -> None:
    table = dict(TRANSITIONS)
    del TRANSITIONS[(PolicyState.NORMAL, HostHealth.DEGRADED)]
    try:
        with pytest.raises(IllegalTransition):
            step(HostPolicy(), HostHealth.DEGRADED, 0.0, OnDegraded.ALERT, 10.0)
    finally:
        TRANSITIONS.clear()
        TRANSITIONS.update(table)


@pytest.mark.parametrize("policy", list(OnDegraded))
def test_degrade_repair_window_release(policy: OnDegraded) -> None:
    s = step(HostPolicy(), HostHealth.DEGRADED, 10.0, policy, 5.0)
    assert s.policy.state is PolicyState.ACTING and s.actions == RESPONSE[policy]
    assert (Action.EVACUATE in s.actions) == (policy is OnDegraded.EVACUATE)
    assert step(s.policy, HostHealth.DEGRADED, 11.0, policy, 5.0).actions == ()  # no repeat
    repaired = step(s.policy, HostHealth.HEALTHY, 12.0, policy, 5.0)
    assert repaired.policy.state is PolicyState.SETTLING and repaired.actions == ()
    early = step(repaired.policy, HostHealth.HEALTHY, 16.9, policy, 5.0)
    assert early.policy.state is PolicyState.SETTLING and early.actions == ()
    released = step(early.policy, HostHealth.HEALTHY, 17.0, policy, 5.0)
    assert released.policy.state is PolicyState.NORMAL and released.actions == (Action.RELEASE,)


def test_a_new_fault_inside_the_window_restarts_it() -> None:
    s = step(HostPolicy(PolicyState.SETTLING, 0.0), HostHealth.DEGRADED, 3.0, OnDegraded.EVACUATE, 5.0)
    assert s.policy.state is PolicyState.ACTING and Action.EVACUATE in s.actions
    again = step(s.policy, HostHealth.HEALTHY, 4.0, OnDegraded.EVACUATE, 5.0)
    assert step(again.policy, HostHealth.HEALTHY, 8.0, OnDegraded.EVACUATE, 5.0).actions == ()


def test_failure_hands_over_to_ha() -> None:
    s = step(HostPolicy(PolicyState.ACTING, 0.0), HostHealth.FAILED, 1.0, OnDegraded.EVACUATE, 5.0)
    assert s.policy.state is PolicyState.DOWN and s.actions == (Action.HAND_OVER,)


healths = st.sampled_from([HostHealth.HEALTHY, HostHealth.DEGRADED, HostHealth.FAILED, HostHealth.UNKNOWN])


@given(st.lists(st.tuples(healths, st.floats(0, 10)), max_size=40), st.sampled_from(list(OnDegraded)),
       st.floats(0, 20))
def test_policy_properties(readings: list[tuple[HostHealth, float]], policy: OnDegraded, window: float) -> None:
    """Evacuation only under the evacuate policy and only on a move into acting; release only
    after a full healthy window; unknown never changes anything."""
    current, now, healthy_since = HostPolicy(), 0.0, None
    for health, dt in readings:
        now += dt
        s = step(current, health, now, policy, window)
        if health is HostHealth.UNKNOWN:
            assert s.policy == current and s.actions == ()
            continue
        if Action.EVACUATE in s.actions:
            assert policy is OnDegraded.EVACUATE and current.state is not PolicyState.ACTING
        if health is HostHealth.HEALTHY:
            healthy_since = healthy_since if current.state is PolicyState.SETTLING else now
        else:
            healthy_since = None
        if Action.RELEASE in s.actions:
            assert health is HostHealth.HEALTHY
            assert healthy_since is not None and now - healthy_since >= window
        assert (s.policy.state is PolicyState.ACTING) == (health is HostHealth.DEGRADED)
        current = s.policy


@given(st.integers(0, 4), st.integers(0, 4), st.integers(0, 4))
def test_health_is_the_worst_group(psu_fail: int, nic_fail: int, drive_fail: int) -> None:
    failed = (*(f"PSU{i}" for i in range(1, psu_fail + 1)), *(f"eth{i}/1" for i in range(nic_fail)),
              *(f"Disk{i}" for i in range(drive_fail)))
    a = assess("h1", inventory(psus=4, nics=4, drives=4, failed=failed))
    working = [4 - psu_fail, 4 - nic_fail, 4 - drive_fail]
    if min(working) == 0:
        assert a.health is HostHealth.FAILED
    elif min(working) == 1:
        assert a.health is HostHealth.DEGRADED
    else:
        assert a.health is HostHealth.HEALTHY
