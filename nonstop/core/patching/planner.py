"""The rolling-patch planner (pure): which hosts, in what order and batches, and whether it is safe.

Role: ``plan_rollout`` turns the cluster as the controller sees it (spec, guest → host, host
conditions, each host's reported patch level) into batches of at most ``max_unavailable`` hosts,
or refuses with the reasons. ``check_batch`` is the same safety test for one batch, run again by
the executor's pre-check right before a batch starts (the cluster may have changed since the
plan). A batch is safe when:

- **health**: every host outside the batch is ``up`` (a failed host or one already in maintenance
  for another reason counts against ``max_unavailable``; the plan refuses rather than take a
  second host away);
- **HA headroom**: the rest of the cluster can hold the batch's guests — the placement engine's
  ``plan_failover`` with the batch's hosts taken away places every one of them (its filters
  include capacity, hard spread and anti-affinity, so a move that would put two replicas of a
  hard-spread service on one host is refused here, with the engine's reason);
- **anti-affinity between batch members**: no two hosts of one batch carry replicas of the same
  service group, so a service never has two replicas being moved (drained) at once.

Hosts already at the target level are skipped (the rollout is idempotent). The order is the spec's
host order, so the plan is deterministic and the report reads naturally.

Must not: read the store or a clock; the executor gathers the inputs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from nonstop.core.controller.placing import failover_moves
from nonstop.core.spec import ClusterSpec


@dataclass(frozen=True)
class BatchCheck:
    ok: bool
    reasons: tuple[str, ...] = ()
    moves: tuple[tuple[str, str], ...] = ()
    """Where the batch's guests would go (guest, target) — the evacuation the check proved possible."""


@dataclass(frozen=True)
class RolloutPlan:
    target: str
    batches: tuple[tuple[str, ...], ...]
    skipped: tuple[tuple[str, str], ...]
    """(host, why): hosts not in the rollout (already at the target level)."""
    refused: tuple[str, ...]
    """Why the rollout cannot proceed; empty when it can."""
    moves: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = ()
    """Per batch (as its hosts joined by ','), the evacuation moves the check proved possible."""

    @property
    def ok(self) -> bool:
        return not self.refused

    def to_dict(self) -> dict[str, object]:
        return {
            "target": self.target, "ok": self.ok, "batches": [list(b) for b in self.batches],
            "skipped": [{"host": h, "why": w} for h, w in self.skipped], "refused": list(self.refused),
            "moves": {b: [{"guest": g, "to": t} for g, t in m] for b, m in self.moves},
        }


PLACEMENT_CONDITIONS = frozenset({"up", "maintenance", "degraded", "failed"})


def placement_conditions(conditions: Mapping[str, str]) -> dict[str, str]:
    """Host conditions as the placement engine knows them: a liveness state it has no name for
    (``suspect``, ``dead``, ``link-degraded``, ``unknown``) is ``failed`` — it takes no guests."""
    return {h: (c if c in PLACEMENT_CONDITIONS else "failed") for h, c in conditions.items()}


def _groups_on(spec: ClusterSpec, assignments: Mapping[str, str], host: str) -> set[str]:
    group_of = {name: g.name for g in spec.guests for name in g.guest_names()}
    return {group_of[g] for g, h in assignments.items() if h == host and g in group_of}


def check_batch(spec: ClusterSpec, assignments: Mapping[str, str], conditions: Mapping[str, str],
                batch: Sequence[str], *, ignore: Sequence[str] = ()) -> BatchCheck:
    """Is it safe to take ``batch`` out of service now? ``ignore``: hosts whose non-``up`` condition
    is this rollout's own doing (a batch being resumed is itself in maintenance)."""
    reasons: list[str] = []
    known = {h.name for h in spec.hosts}
    for host in batch:
        if host not in known:
            reasons.append(f"{host} is not a host of cluster {spec.cluster}")
    if reasons:
        return BatchCheck(False, tuple(reasons))
    for spec_host in spec.hosts:
        state = conditions.get(spec_host.name, "up")
        if spec_host.name not in batch and spec_host.name not in ignore and state != "up":
            reasons.append(f"{spec_host.name} is {state}: the cluster is not healthy (it would be a second host "
                           "out of service)")
    seen: dict[str, str] = {}
    for host in batch:
        for group in sorted(_groups_on(spec, assignments, host)):
            if group in seen:
                reasons.append(f"anti-affinity: {seen[group]} and {host} both run replicas of {group}; "
                               "patching them in one batch would move two replicas at once")
            else:
                seen[group] = host
    others_up = [h.name for h in spec.hosts if h.name not in batch and conditions.get(h.name, "up") == "up"]
    if not others_up:
        reasons.append(f"HA headroom: no host would be left to run guests while {', '.join(batch)} is patched")
        return BatchCheck(False, tuple(reasons))
    decision = failover_moves(spec, assignments,
                              placement_conditions({h: c for h, c in conditions.items() if h not in batch}), list(batch))
    for guest, why in decision.unplaced:
        reasons.append(f"HA headroom: {guest} cannot leave {assignments.get(guest)} while "
                       f"{', '.join(batch)} is patched: {why}")
    return BatchCheck(not reasons, tuple(reasons), decision.moves)


def plan_rollout(spec: ClusterSpec, assignments: Mapping[str, str], conditions: Mapping[str, str],
                 levels: Mapping[str, str | None], target: str, *, hosts: Sequence[str] | None = None,
                 max_unavailable: int = 1) -> RolloutPlan:
    """Batches of hosts to patch to ``target``; refused (with reasons) when any batch is unsafe."""
    if max_unavailable < 1:
        return RolloutPlan(target, (), (), (f"max_unavailable must be at least 1 (got {max_unavailable})",))
    order = [h.name for h in spec.hosts]
    wanted = list(hosts) if hosts else order
    unknown = [h for h in wanted if h not in order]
    if unknown:
        return RolloutPlan(target, (), (), tuple(f"{h} is not a host of cluster {spec.cluster}" for h in unknown))
    chosen = [h for h in order if h in wanted]
    skipped = tuple((h, f"already at {target}") for h in chosen if levels.get(h) == target)
    todo = [h for h in chosen if levels.get(h) != target]
    # Greedy batching in host order: a host joins the open batch unless it shares a service group
    # with a member or the batch is full.
    batches: list[list[str]] = []
    for host in todo:
        groups = _groups_on(spec, assignments, host)
        for batch in batches:
            if (len(batch) < max_unavailable
                    and not any(groups & _groups_on(spec, assignments, m) for m in batch)
                    and check_batch(spec, assignments, conditions, [*batch, host]).ok):
                batch.append(host)
                break
        else:
            batches.append([host])
    refused: list[str] = []
    moves: list[tuple[str, tuple[tuple[str, str], ...]]] = []
    for batch in batches:
        check = check_batch(spec, assignments, conditions, batch)
        refused.extend(f"batch {','.join(batch)}: {r}" for r in check.reasons)
        moves.append((",".join(batch), check.moves))
    return RolloutPlan(target, tuple(tuple(b) for b in batches), skipped, tuple(refused), tuple(moves))


__all__ = ["BatchCheck", "PLACEMENT_CONDITIONS", "RolloutPlan", "check_batch", "placement_conditions", "plan_rollout"]
