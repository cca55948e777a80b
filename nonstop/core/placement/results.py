"""What the placement engine returns: frozen decision records and their explanations.

Role: plain data — a placement result, a failover plan, a rebalance plan, an admission
report, and the per-decision explanation (which filter removed which hosts, every
weigher's raw and normalized score for the chosen host and the runners-up). Each has
``to_dict`` so a shell can print JSON without knowing the engine.

Must not: compute placements or hold references to the mutable run state.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from nonstop.core.placement.model import RESOURCES, ClusterState

MAX_NAMES = 10
"""Host names listed per filter step in an explanation; the count is always exact."""


@dataclass(frozen=True)
class FilterStep:
    filter: str
    removed: int
    removed_hosts: tuple[str, ...]
    """At most MAX_NAMES of them, in host order."""
    remaining: int

    def to_dict(self) -> dict[str, Any]:
        return {"filter": self.filter, "removed": self.removed, "removed_hosts": list(self.removed_hosts),
                "remaining": self.remaining}


@dataclass(frozen=True)
class WeigherScore:
    weigher: str
    weight: float
    raw: float
    normalized: float

    def to_dict(self) -> dict[str, Any]:
        return {"weigher": self.weigher, "weight": self.weight, "raw": self.raw, "normalized": self.normalized}


@dataclass(frozen=True)
class HostScore:
    host: str
    total: float
    scores: tuple[WeigherScore, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"host": self.host, "total": self.total, "scores": [s.to_dict() for s in self.scores]}


@dataclass(frozen=True)
class Explanation:
    guest: str
    filters: tuple[FilterStep, ...]
    chosen: HostScore | None
    runners_up: tuple[HostScore, ...]
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "guest": self.guest,
            "filters": [f.to_dict() for f in self.filters],
            "chosen": None if self.chosen is None else self.chosen.to_dict(),
            "runners_up": [r.to_dict() for r in self.runners_up],
            "reason": self.reason,
        }


@dataclass(frozen=True)
class Unplaced:
    guest: str
    reason: str


@dataclass(frozen=True)
class PlacementResult:
    state: ClusterState
    """The cluster after placement (input assignments plus every decision)."""
    placed: tuple[tuple[str, str], ...]
    """(guest, host) in decision order."""
    unplaced: tuple[Unplaced, ...]
    explanations: Mapping[str, Explanation] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.unplaced

    def to_dict(self) -> dict[str, Any]:
        return {
            "placed": dict(self.placed),
            "unplaced": [{"guest": u.guest, "reason": u.reason} for u in self.unplaced],
            "explanations": {k: v.to_dict() for k, v in self.explanations.items()},
        }


@dataclass(frozen=True)
class Move:
    guest: str
    source: str | None
    target: str
    reason: str


@dataclass(frozen=True)
class FailoverPlan:
    failed_hosts: tuple[str, ...]
    moves: tuple[Move, ...]
    """In priority order: where each displaced guest restarts."""
    unplaced: tuple[Unplaced, ...]
    state: ClusterState
    """The cluster after the plan: failed hosts FAILED, moved guests on their targets."""

    @property
    def ok(self) -> bool:
        return not self.unplaced

    def to_dict(self) -> dict[str, Any]:
        return {
            "failed_hosts": list(self.failed_hosts),
            "moves": [{"guest": m.guest, "from": m.source, "to": m.target} for m in self.moves],
            "unplaced": [{"guest": u.guest, "reason": u.reason} for u in self.unplaced],
        }


@dataclass(frozen=True)
class RebalancePlan:
    moves: tuple[Move, ...]
    spread_target: float
    deviation_before: float
    """Largest |host utilization − mean| before the moves (dominant resource)."""
    deviation_after: float
    reached: bool
    reason: str
    state: ClusterState

    def to_dict(self) -> dict[str, Any]:
        return {
            "moves": [{"guest": m.guest, "from": m.source, "to": m.target, "reason": m.reason} for m in self.moves],
            "spread_target": self.spread_target,
            "deviation_before": self.deviation_before,
            "deviation_after": self.deviation_after,
            "reached": self.reached,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class AdmissionReport:
    failures: int
    tolerates: bool
    exact: bool
    """False when F > 1 was too many combinations and a conservative bound decided."""
    worst_case: tuple[str, ...]
    """The host set whose failure hurts most (or the first set that cannot be absorbed)."""
    headroom: Mapping[str, float]
    """Per resource, in that worst case: (surviving effective capacity − demand) / surviving capacity."""
    reason: str
    unplaced: tuple[Unplaced, ...] = ()
    """For a failing worst case: the guests that could not be restarted."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "failures": self.failures,
            "tolerates": self.tolerates,
            "exact": self.exact,
            "worst_case": list(self.worst_case),
            "headroom": {r: self.headroom.get(r, 0.0) for r in RESOURCES},
            "reason": self.reason,
            "unplaced": [{"guest": u.guest, "reason": u.reason} for u in self.unplaced],
        }


@dataclass(frozen=True)
class AdmitDecision:
    admitted: bool
    reason: str
    placement: PlacementResult
    report: AdmissionReport | None
