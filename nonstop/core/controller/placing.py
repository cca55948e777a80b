"""Where guests go: initial placement, failover moves and guest moves (pure, via the placement engine).

Role: translate the controller's view (the spec, which host each guest is assigned to, each
host's condition) into the placement engine's ``ClusterState`` and back into plain
(guest, host) decisions with reasons. Hosts that are dead, fenced or in maintenance are
conditions the engine's filters already understand (``failed`` / ``maintenance``): they
receive nothing.

Must not: write records, bump epochs or read a clock.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from nonstop.core.placement import (
    ClusterState,
    cluster_state_from_spec,
    config_from_spec,
    place,
    plan_failover,
    plan_rebalance,
)
from nonstop.core.spec import ClusterSpec


@dataclass(frozen=True)
class Decision:
    """Guests to (re)assign, in priority order, and those that cannot be placed (with the reason)."""

    moves: tuple[tuple[str, str], ...]
    unplaced: tuple[tuple[str, str], ...]


def _state(spec: ClusterSpec, assignments: Mapping[str, str], conditions: Mapping[str, str]) -> ClusterState:
    known = {g for group in spec.guests for g in group.guest_names()}
    hosts = {h.name for h in spec.hosts}
    assigned = {g: h for g, h in assignments.items() if g in known and h in hosts}
    return cluster_state_from_spec(spec, {h: c for h, c in conditions.items() if h in hosts}, assigned)


def place_pending(spec: ClusterSpec, assignments: Mapping[str, str], conditions: Mapping[str, str]) -> Decision:
    """Hosts for every guest of the spec that has none yet."""
    state = _state(spec, assignments, conditions)
    result = place(state, config=config_from_spec(spec))
    return Decision(tuple(result.placed), tuple((u.guest, u.reason) for u in result.unplaced))


def failover_moves(
    spec: ClusterSpec, assignments: Mapping[str, str], conditions: Mapping[str, str], failed: Sequence[str]
) -> Decision:
    """Where the guests of ``failed`` hosts go (``plan_failover``: by priority, every filter applies)."""
    state = _state(spec, assignments, conditions)
    plan = plan_failover(state, list(failed), config_from_spec(spec))
    return Decision(tuple((m.guest, m.target) for m in plan.moves), tuple((u.guest, u.reason) for u in plan.unplaced))


def move_off(
    spec: ClusterSpec, assignments: Mapping[str, str], conditions: Mapping[str, str], guests: Sequence[str],
    avoid: str,
) -> Decision:
    """New hosts for ``guests`` (currently on ``avoid``), never ``avoid`` itself: a guest that keeps
    failing there, or a host being evacuated for maintenance."""
    without = {g: h for g, h in assignments.items() if g not in set(guests)}
    blocked = dict(conditions)
    blocked[avoid] = "maintenance" if blocked.get(avoid, "up") == "up" else blocked[avoid]
    state = _state(spec, without, blocked)
    result = place(state, list(guests), config=config_from_spec(spec))
    return Decision(tuple(result.placed), tuple((u.guest, u.reason) for u in result.unplaced))


def rebalance_moves(spec: ClusterSpec, assignments: Mapping[str, str], conditions: Mapping[str, str]) -> Decision:
    """``balanced`` failback: the greedy rebalance plan's moves (empty when within the spread target)."""
    state = _state(spec, assignments, conditions)
    plan = plan_rebalance(state, spec.policies.spread_target, config_from_spec(spec))
    return Decision(tuple((m.guest, m.target) for m in plan.moves), ())


def fits_on(
    spec: ClusterSpec, assignments: Mapping[str, str], conditions: Mapping[str, str], guest: str, target: str,
) -> str | None:
    """None when ``guest`` may move to ``target`` under every placement filter (capacity,
    networks, labels, affinity, anti-affinity, host condition); else the reason, in the words of
    the filter that removed ``target``. Every other host is taken out of the choice first."""
    if target not in {h.name for h in spec.hosts}:
        return f"no host {target}"
    without = {g: h for g, h in assignments.items() if g != guest}
    only = {h: ("maintenance" if h != target else conditions.get(h, "up")) for h in conditions}
    state = _state(spec, without, only)
    result = place(state, [guest], config=config_from_spec(spec), explain=[guest])
    if result.placed and result.placed[0] == (guest, target):
        return None
    explanation = result.explanations.get(guest)
    if explanation is not None:
        for step in explanation.filters:
            if target in step.removed_hosts:
                return f"{guest} does not fit on {target}: removed by {step.filter}"
    reason = result.unplaced[0].reason if result.unplaced else "not chosen"
    return f"{guest} does not fit on {target}: {reason}"
