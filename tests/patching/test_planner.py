"""The rolling-patch planner: batches, skips, and refusals with the reason (anti-affinity, HA
headroom, cluster health), on real specs through the real placement engine."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nonstop.core.patching.planner import check_batch, plan_rollout
from nonstop.core.spec import ClusterSpec


def spec(*, hosts: int = 3, cpus: int = 2, groups: list[dict[str, Any]] | None = None) -> ClusterSpec:
    return ClusterSpec.model_validate({
        "cluster": "p",
        "hosts": [{"name": f"h{i}", "cpus": cpus, "memory": "2GiB", "disk": "20GiB", "nics": [{"name": "eth0"}]}
                  for i in range(1, hosts + 1)],
        "guests": groups if groups is not None else [
            {"name": "api", "kind": "process", "replicas": 3, "vcpus": 1, "memory": "64MiB", "spread": "soft"}],
    })


UP = {"h1": "up", "h2": "up", "h3": "up"}
SPREAD = {"api-0": "h1", "api-1": "h2", "api-2": "h3"}


def test_one_host_per_batch_in_spec_order() -> None:
    plan = plan_rollout(spec(), SPREAD, UP, {}, "L2")
    assert plan.ok, plan.refused
    assert plan.batches == (("h1",), ("h2",), ("h3",))
    assert dict(plan.moves)["h1"] and all(t != "h1" for _, t in dict(plan.moves)["h1"])


def test_hosts_at_the_target_are_skipped_and_hosts_filter() -> None:
    plan = plan_rollout(spec(), SPREAD, UP, {"h1": "L2", "h2": "L1"}, "L2")
    assert plan.batches == (("h2",), ("h3",)) and plan.skipped == (("h1", "already at L2"),)
    plan = plan_rollout(spec(), SPREAD, UP, {}, "L2", hosts=["h3", "h1"])
    assert plan.batches == (("h1",), ("h3",))


def test_max_unavailable_never_batches_two_replicas_of_a_service() -> None:
    plan = plan_rollout(spec(), SPREAD, UP, {}, "L2", max_unavailable=2)
    assert plan.batches == (("h1",), ("h2",), ("h3",))
    # with a service only on h1 and h2, h3 (empty) may join h1's batch
    two = {"api-0": "h1", "api-1": "h2", "api-2": "h2"}
    plan = plan_rollout(spec(), two, UP, {}, "L2", max_unavailable=2)
    assert plan.ok and plan.batches == (("h1", "h3"), ("h2",))


def test_refused_when_hard_spread_cannot_leave_a_host() -> None:
    s = spec(groups=[{"name": "db", "kind": "process", "replicas": 3, "vcpus": 1, "memory": "64MiB",
                      "spread": "hard"}])
    plan = plan_rollout(s, {"db-0": "h1", "db-1": "h2", "db-2": "h3"}, UP, {}, "L2")
    assert not plan.ok
    assert any("HA headroom: db-0 cannot leave h1" in r for r in plan.refused), plan.refused


def test_refused_when_the_rest_cannot_hold_the_guests() -> None:
    s = spec(cpus=1, groups=[{"name": "big", "kind": "process", "replicas": 3, "vcpus": 4, "memory": "64MiB",
                              "spread": "none"}])
    plan = plan_rollout(s, {"big-0": "h1", "big-1": "h2", "big-2": "h3"}, UP, {}, "L2")
    assert not plan.ok and all("HA headroom" in r for r in plan.refused), plan.refused


def test_refused_when_another_host_is_down_or_unknown() -> None:
    plan = plan_rollout(spec(), SPREAD, {**UP, "h3": "failed"}, {}, "L2", hosts=["h1"])
    assert not plan.ok and any("h3 is failed" in r for r in plan.refused)
    plan = plan_rollout(spec(), SPREAD, UP, {}, "L2", hosts=["h9"])
    assert plan.refused == ("h9 is not a host of cluster p",)
    assert plan_rollout(spec(), SPREAD, UP, {}, "L2", max_unavailable=0).refused


def test_check_batch_ignores_the_rollouts_own_maintenance() -> None:
    cond = {**UP, "h1": "maintenance"}
    assert check_batch(spec(), SPREAD, cond, ["h1"]).ok
    assert not check_batch(spec(), SPREAD, cond, ["h2"]).ok
    assert check_batch(spec(), SPREAD, cond, ["h2"], ignore=["h1"]).ok  # api-1 fits on h3


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(["h1", "h2", "h3", "h4"]), min_size=4, max_size=4), st.integers(1, 3))
def test_batches_are_safe_by_construction(hosts_of: list[str], width: int) -> None:
    s = spec(hosts=4, groups=[{"name": "a", "kind": "process", "replicas": 2, "vcpus": 1, "memory": "64MiB"},
                              {"name": "b", "kind": "process", "replicas": 2, "vcpus": 1, "memory": "64MiB"}])
    assignments = dict(zip(["a-0", "a-1", "b-0", "b-1"], hosts_of, strict=True))
    plan = plan_rollout(s, assignments, {}, {}, "L2", max_unavailable=width)
    assert sorted(h for b in plan.batches for h in b) == ["h1", "h2", "h3", "h4"]
    for batch in plan.batches:
        assert 1 <= len(batch) <= width
        groups = [{g[0] for g, h in assignments.items() if h == host} for host in batch]
        for i, gi in enumerate(groups):
            for gj in groups[i + 1:]:
                assert not gi & gj
        if plan.ok:
            assert check_batch(s, assignments, {}, batch).ok


pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("state", ["dead", "suspect", "link-degraded", "unknown", "failed"])
def test_a_host_in_any_liveness_state_is_a_reason_not_a_crash(state: str) -> None:
    """The controller reports liveness states the placement engine has no name for; the check
    must refuse with the reason (it once raised KeyError('DEAD') mid-rollout)."""
    check = check_batch(spec(), SPREAD, {**UP, "h3": state}, ["h2"])
    assert not check.ok and any(f"h3 is {state}" in r for r in check.reasons), check.reasons
    # and nothing lands on it
    assert all(target != "h3" for _, target in check.moves)
