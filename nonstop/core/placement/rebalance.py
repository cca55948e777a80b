"""Rebalancing: few guest moves that bring every host within a spread target of the mean.

Role: ``plan_rebalance`` measures each usable host by its dominant-resource utilization
(the largest of used ÷ effective capacity over cpu, memory, disk) and plans moves until
every host is within ``spread_target`` of the mean. It is greedy, not optimal (finding
the true minimum number of moves is a bin-packing problem): each step takes the host
furthest from the mean, picks the guest whose move closes that host's gap most nearly,
and sends it where the normal engine would place it — every filter applies — among the
hosts that do not end up above the source. A step must lower the total squared deviation
without widening the largest gap, and no guest moves twice, so the plan always
terminates. If the furthest host cannot be helped the next ones are tried (up to
CANDIDATE_HOSTS); if no step helps, the plan says that the target was not reached and why.

Must not: execute moves (the controller live-migrates or restarts guests) or mutate input.
"""

from __future__ import annotations

import numpy as np

from nonstop.core.placement.engine import Engine, SchedulerConfig
from nonstop.core.placement.model import BoolArray, ClusterState, FloatArray, HostCondition
from nonstop.core.placement.results import Move, RebalancePlan
from nonstop.core.placement.view import RunView

CANDIDATE_GUESTS = 8
"""Guests tried per source host per step, best-fitting first."""
CANDIDATE_SOURCES = 4
CANDIDATE_HOSTS = 16
"""Hosts outside the target tried per step, furthest first, before the plan gives up."""


def _dominant(used: FloatArray, inv_effective: FloatArray) -> FloatArray:
    util = used * inv_effective
    dominant: FloatArray = np.maximum(np.maximum(util[..., 0], util[..., 1]), util[..., 2])
    return dominant


def _deviation(view: RunView, usable: BoolArray) -> tuple[FloatArray, float]:
    util = _dominant(view.used, view.inv_effective)
    mean = float(util[usable].mean()) if usable.any() else 0.0
    deviation: FloatArray = np.where(usable, util - mean, 0.0)
    return deviation, mean


def plan_rebalance(
    state: ClusterState,
    spread_target: float = 0.15,
    config: SchedulerConfig | None = None,
    *,
    max_moves: int | None = None,
) -> RebalancePlan:
    """Greedy moves until every usable host is within ``spread_target`` of the mean utilization."""
    config = config or SchedulerConfig.for_state(state)
    view = RunView.start(state, config.accept_degraded)
    engine = Engine(view, config)
    usable = view.condition == int(HostCondition.UP)
    if config.accept_degraded:
        usable = usable | (view.condition == int(HostCondition.DEGRADED))
    limit = len(state.guests) if max_moves is None else max_moves
    deviation, mean = _deviation(view, usable)
    before = float(np.abs(deviation).max()) if len(deviation) else 0.0
    moves: list[Move] = []
    moved: set[int] = set()
    reason = ""
    reached = False
    while True:
        deviation, mean = _deviation(view, usable)
        worst = int(np.argmax(np.abs(deviation)))
        if usable.sum() < 2 or abs(float(deviation[worst])) <= spread_target:
            reached = True
            reason = "every host is within the target of the mean"
            break
        if len(moves) >= limit:
            reason = f"stopped after {limit} moves"
            break
        move = None
        outside = np.flatnonzero(usable & (np.abs(deviation) > spread_target))
        for host in outside[np.argsort(-np.abs(deviation[outside]), kind="stable")][:CANDIDATE_HOSTS].tolist():
            move = _best_step(state, view, engine, usable, deviation, mean, host, moved)
            if move is not None:
                break
        if move is None:
            reason = (f"no single guest move brings a host outside the target (worst: {state.host_names[worst]}) "
                      f"closer to the mean without breaking a filter")
            break
        moves.append(move)
    deviation, _mean = _deviation(view, usable)
    after = float(np.abs(deviation).max()) if len(deviation) else 0.0
    return RebalancePlan(
        moves=tuple(moves), spread_target=spread_target, deviation_before=before, deviation_after=after,
        reached=reached, reason=reason, state=state.with_assignment(view.assignment),
    )


def _best_step(
    state: ClusterState,
    view: RunView,
    engine: Engine,
    usable: BoolArray,
    deviation: FloatArray,
    mean: float,
    worst: int,
    moved: set[int],
) -> Move | None:
    """Apply and return one improving move for the host furthest from the mean, or None."""
    objective = float(np.square(deviation).sum())
    worst_gap = float(np.abs(deviation).max())
    util = deviation + mean
    pull_to: int | None = None
    if deviation[worst] > 0:
        sources = [worst]
    else:
        pull_to = worst
        over = np.flatnonzero(usable & (deviation > 0))
        sources = over[np.argsort(-deviation[over], kind="stable")][:CANDIDATE_SOURCES].tolist()
    host_ids = np.arange(len(state.hosts))
    for source in sources:
        guests = np.array([g for g in np.flatnonzero(view.assignment == source).tolist() if g not in moved],
                          dtype=np.intp)
        if len(guests) == 0:
            continue
        requests = state.request[guests]
        if pull_to is None:
            after = _dominant(view.used[source] - requests, view.inv_effective[source])
            misfit = np.abs(deviation[source] - (util[source] - after))
        else:
            after = _dominant(view.used[pull_to] + requests, view.inv_effective[pull_to])
            misfit = np.abs(-deviation[pull_to] - (after - util[pull_to]))
        for guest in guests[np.argsort(misfit, kind="stable")][:CANDIDATE_GUESTS].tolist():
            request = state.request[guest]
            # The target host must not end up above where the source is now (no new worst host);
            # the squared-deviation check below makes sure the move is progress.
            below_source = _dominant(view.used + request, view.inv_effective) < util[source]
            allowed = usable & below_source & (host_ids != source)
            if pull_to is not None:
                allowed &= host_ids == pull_to
            view.assign(guest, -1)
            host = engine.decide_full(guest, allowed)
            view.assign(guest, host if host >= 0 else source)
            if host < 0:
                continue
            new_deviation, _ = _deviation(view, usable)
            improves = float(np.square(new_deviation).sum()) < objective - 1e-12
            if improves and float(np.abs(new_deviation).max()) <= worst_gap + 1e-12:
                moved.add(guest)
                gap = "above" if deviation[source] > 0 else "toward"
                return Move(state.guest_names[guest], state.host_names[source], state.host_names[host],
                            f"{state.host_names[source]} {gap} mean utilization {mean:.2f} by "
                            f"{deviation[source]:+.2f}")
            view.assign(guest, source)
    return None
