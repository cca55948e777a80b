"""hypothesis properties of the engine on random small clusters with every kind of constraint."""

from __future__ import annotations

import random
from dataclasses import replace

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nonstop.core.placement import (
    ClusterState,
    HostCondition,
    SchedulerConfig,
    Spread,
    admission,
    place,
    plan_failover,
    plan_rebalance,
)

from .builders import clusters, recomputed_usage

SETTINGS = settings(max_examples=75, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def assert_within_capacity(state: ClusterState) -> None:
    used = recomputed_usage(state)
    # A host whose reserved exceeds its capacity is "over" with no guests at all; it must stay empty.
    busy = np.isin(np.arange(len(state.hosts)), state.assignment)
    over = (used > state.effective) & busy[:, None]
    assert not over.any(), f"over capacity: {np.argwhere(over).tolist()}"


def assert_hard_constraints(state: ClusterState) -> None:
    where: dict[int, dict[int, int]] = {}
    for g, h in enumerate(state.assignment.tolist()):
        if h >= 0:
            group = int(state.group[g])
            where.setdefault(group, {})
            where[group][h] = where[group].get(h, 0) + 1
    for group, hosts in where.items():
        if state.group_spread[group] is Spread.HARD:
            assert max(hosts.values()) == 1, f"hard spread broken for {state.group_names[group]}"
        for other in state.group_anti[group]:
            if other != group:
                assert not set(hosts) & set(where.get(other, {})), "anti-affinity broken"


def assert_affinity(state: ClusterState) -> None:
    for g, h in enumerate(state.assignment.tolist()):
        if h < 0:
            continue
        for other in state.group_affinity[int(state.group[g])]:
            other_hosts = {int(state.assignment[m]) for m in state.members(other)} - {-1}
            if other_hosts:
                assert h in other_hosts, f"{state.guest_names[g]} not with {state.group_names[other]}"


@SETTINGS
@given(clusters())
def test_place_respects_capacity_and_every_hard_constraint(state: ClusterState) -> None:
    result = place(state)
    assert_within_capacity(result.state)
    assert_hard_constraints(result.state)
    assert_affinity(result.state)
    usable = {i for i, c in enumerate(result.state.condition.tolist()) if c in (HostCondition.UP, HostCondition.DEGRADED)}
    assert {int(h) for h in result.state.assignment if h >= 0} <= usable
    assert len(result.placed) + len(result.unplaced) == len(state.guests)


@SETTINGS
@given(clusters(), st.randoms(use_true_random=False))
def test_decisions_are_deterministic_and_independent_of_input_order(state: ClusterState, rnd: random.Random) -> None:
    first = place(state)
    again = place(state)
    assert first.placed == again.placed and first.unplaced == again.unplaced
    shuffled_guests = list(state.guests)
    rnd.shuffle(shuffled_guests)
    shuffled = place(ClusterState(state.hosts, shuffled_guests))
    assert shuffled.placed == first.placed
    assert [u.guest for u in shuffled.unplaced] == [u.guest for u in first.unplaced]


WEIGHTINGS = [
    None,  # defaults: soft spread dominates, so soft groups are batched
    {"SoftSpreadWeigher": 1.0, "PackWeigher": 2.0},  # it does not: siblings' hosts are scored exactly
    {"SpreadWeigher": 0.0, "BalanceWeigher": 0.0, "HaReserveWeigher": 0.0, "PackWeigher": 1.0},
]


@SETTINGS
@given(clusters(), st.sampled_from(WEIGHTINGS))
def test_cached_full_and_explaining_paths_decide_alike(state: ClusterState, weights: dict[str, float] | None) -> None:
    config = SchedulerConfig.for_state(state, weights=weights)
    cached = place(state, config=config, use_cache=True)
    assert place(state, config=config, use_cache=False).placed == cached.placed
    explained = place(state, config=config, explain=state.guest_names)
    assert explained.placed == cached.placed
    for name, host in cached.placed:
        chosen = explained.explanations[name].chosen
        assert chosen is not None and chosen.host == host


@SETTINGS
@given(clusters(max_hosts=5))
def test_single_failover_succeeds_everywhere_exactly_when_admission_says_so(state: ClusterState) -> None:
    placed = place(state).state
    every_failover_ok = all(
        plan_failover(placed, [name]).ok
        for i, name in enumerate(placed.host_names)
        if placed.condition[i] != HostCondition.FAILED
    )
    assert admission(placed, 1).tolerates == every_failover_ok
    assert admission(placed, 1, prove=False).tolerates == every_failover_ok


@SETTINGS
@given(clusters(max_hosts=5))
def test_two_host_failures_enumerated_agree_with_failover(state: ClusterState) -> None:
    placed = place(state).state
    alive = [name for i, name in enumerate(placed.host_names) if placed.condition[i] != HostCondition.FAILED]
    pairs = [[a, b] for i, a in enumerate(alive) for b in alive[i + 1 :]] or [alive]
    every_pair_ok = all(plan_failover(placed, pair).ok for pair in pairs)
    assert admission(placed, 2).tolerates == every_pair_ok
    assert admission(placed, 2, prove=False).tolerates == every_pair_ok


@SETTINGS
@given(clusters(max_hosts=5))
def test_failover_plans_keep_capacity_and_constraints(state: ClusterState) -> None:
    placed = place(state).state
    for i, name in enumerate(placed.host_names):
        if placed.condition[i] == HostCondition.FAILED:
            continue
        plan = plan_failover(placed, [name])
        assert_within_capacity(plan.state)
        assert_hard_constraints(plan.state)
        assert not (plan.state.assignment == i).any()
        assert len(plan.moves) + len(plan.unplaced) == int((placed.assignment == i).sum())


@SETTINGS
@given(clusters(max_hosts=5), st.sampled_from([0.05, 0.15, 0.3]))
def test_rebalance_never_breaks_a_constraint_or_moves_a_guest_twice(state: ClusterState, target: float) -> None:
    placed = place(state).state
    plan = plan_rebalance(placed, target)
    assert_within_capacity(plan.state)
    assert_hard_constraints(plan.state)
    moved = [m.guest for m in plan.moves]
    assert len(moved) == len(set(moved))
    assert plan.deviation_after <= plan.deviation_before + 1e-9
    if plan.reached:
        assert plan.deviation_after <= target + 1e-9


@SETTINGS
@given(clusters(max_hosts=4, allow_failed=False))
def test_placing_onto_existing_assignments_keeps_them(state: ClusterState) -> None:
    half = place(state, [g.name for g in state.guests[::2]]).state
    current = half.placement_map()
    rest = ClusterState(state.hosts, [replace(g, host=current.get(g.name)) for g in state.guests])
    result = place(rest)
    for name, host in current.items():
        assert result.state.placement_map()[name] == host
    assert_within_capacity(result.state)
    assert_hard_constraints(result.state)
