"""Failover planning: where the guests of failed hosts restart.

Role: ``plan_failover`` marks the failed hosts FAILED, takes their guests off them and
places those guests with the normal engine, in priority order, on the hosts that are
left — the same filters (capacity after ratios and reserved, host state, networks,
affinity, anti-affinity, labels) and weighers as any placement. What cannot be placed
comes back with the reason (which filter removed which hosts).

``failover_run`` is the shared core that admission control calls too, so "the cluster
tolerates a failure of host h" means exactly "plan_failover(state, [h]) places every
guest" — never a separate approximation.

Must not: execute anything (the controller applies the plan) or mutate its input.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from nonstop.core.placement.engine import Engine, SchedulerConfig, placement_order
from nonstop.core.placement.model import ClusterState, HostCondition, IntArray
from nonstop.core.placement.results import FailoverPlan, Move, Unplaced
from nonstop.core.placement.view import RunView


def failover_run(
    state: ClusterState,
    failed: IntArray,
    config: SchedulerConfig,
    *,
    reasons: bool = True,
    stop_on_failure: bool = False,
) -> tuple[RunView, list[tuple[int, int]], list[tuple[int, str]]]:
    """Fail ``failed`` host indices and re-place their guests; returns the view and decisions."""
    view = RunView.start(state, config.accept_degraded)
    displaced = view.fail_hosts(failed)
    engine = Engine(view, config)
    placed, unplaced, _ = engine.run(
        placement_order(state, displaced), reasons=reasons, stop_on_failure=stop_on_failure
    )
    return view, placed, unplaced


class FailoverSimulator:
    """Many what-if failovers from one state, sharing one engine, its score cache and masks.

    Each ``tolerates`` call fails hosts inside a journaled run and rolls back bit for bit,
    so it decides exactly what a fresh ``failover_run`` decides (same filters, same
    scores, same order) at a fraction of the cost: nothing cluster-wide is rebuilt.
    """

    def __init__(self, state: ClusterState, config: SchedulerConfig) -> None:
        self.state = state
        self.view = RunView.start(state, config.accept_degraded)
        self.engine = Engine(self.view, config)
        placed = state.assignment >= 0
        classes = set(state.klass[placed].tolist())
        for k in classes:
            self.engine.static_mask(k)
        self.engine.prepare(classes)

    def unplaced(self, failed: IntArray) -> list[int]:
        """Displaced guests the greedy failover cannot place (empty: tolerated); stops at the first."""
        state = self.state
        parts = [state.guests_on(h) for h in failed.tolist()]
        displaced = np.concatenate(parts) if parts else np.zeros(0, dtype=np.intp)
        self.engine.begin()
        try:
            self.engine.fail_hosts(failed, displaced)
            _placed, unplaced, _ = self.engine.run(
                placement_order(state, displaced), reasons=False, stop_on_failure=True
            )
        finally:
            self.engine.rollback()
        return [g for g, _reason in unplaced]


def plan_failover(
    state: ClusterState,
    failed_hosts: Sequence[str],
    config: SchedulerConfig | None = None,
) -> FailoverPlan:
    """Where each guest of ``failed_hosts`` goes, by priority; what cannot be placed and why."""
    config = config or SchedulerConfig.for_state(state)
    failed = np.array(sorted({state.host_index[name] for name in failed_hosts}), dtype=np.intp)
    view, placed, unplaced = failover_run(state, failed, config)
    source = state.assignment
    moves = tuple(
        Move(state.guest_names[g], state.host_names[int(source[g])], state.host_names[h], "host failed")
        for g, h in placed
    )
    after = state.with_conditions({state.host_names[h]: HostCondition.FAILED for h in failed.tolist()})
    return FailoverPlan(
        failed_hosts=tuple(state.host_names[h] for h in failed.tolist()),
        moves=moves,
        unplaced=tuple(Unplaced(state.guest_names[g], reason) for g, reason in unplaced),
        state=after.with_assignment(view.assignment),
    )
