"""The plan of a whole spec: place every guest, then ask whether the result survives F failures.

Role: ``plan_spec`` is what ``nonstop plan`` shows — per host, physical versus allocated
capacity for each resource and the resulting overcommit, the guests it runs, the guests
that could not be placed, and the HA verdict from admission control for the policy's
F (host_failures_to_tolerate). ``viable`` is true when every guest is placed and the
verdict holds. Plain data with ``to_dict`` for JSON.

Must not: print, read files, or decide anything the engine does not decide.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from nonstop.core.placement.admission import admission
from nonstop.core.placement.engine import place
from nonstop.core.placement.fromspec import cluster_state_from_spec, config_from_spec
from nonstop.core.placement.model import RESOURCES, HostCondition
from nonstop.core.placement.results import AdmissionReport, PlacementResult
from nonstop.core.spec import ClusterSpec


@dataclass(frozen=True)
class ResourceLine:
    physical: float
    """What the host has (cpus, bytes)."""
    effective: float
    """physical × allocation ratio − reserved: what may be allocated."""
    allocated: float

    @property
    def overcommit(self) -> float:
        """allocated ÷ physical (1.5 = 50 % more promised than present)."""
        return self.allocated / self.physical if self.physical > 0 else 0.0

    def to_dict(self) -> dict[str, float]:
        return {"physical": self.physical, "effective": self.effective, "allocated": self.allocated,
                "overcommit": round(self.overcommit, 4)}


@dataclass(frozen=True)
class HostLine:
    name: str
    condition: str
    resources: tuple[ResourceLine, ResourceLine, ResourceLine]
    guests: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "host": self.name,
            "condition": self.condition,
            "resources": {r: line.to_dict() for r, line in zip(RESOURCES, self.resources, strict=True)},
            "guests": list(self.guests),
        }


@dataclass(frozen=True)
class SpecPlan:
    cluster: str
    hosts: tuple[HostLine, ...]
    placement: PlacementResult
    admission: AdmissionReport

    @property
    def viable(self) -> bool:
        return self.placement.ok and self.admission.tolerates

    def to_dict(self) -> dict[str, Any]:
        return {
            "cluster": self.cluster,
            "viable": self.viable,
            "hosts": [h.to_dict() for h in self.hosts],
            "placement": self.placement.to_dict(),
            "ha": self.admission.to_dict(),
        }


def plan_spec(spec: ClusterSpec, explain: Sequence[str] = ()) -> SpecPlan:
    """Place every guest of ``spec`` on its hosts and check HA admission for the policy's F."""
    state = cluster_state_from_spec(spec)
    config = config_from_spec(spec)
    result = place(state, config=config, explain=explain)
    placed = result.state
    failures = spec.policies.ha.host_failures_to_tolerate
    report = admission(placed, failures, config)
    by_host: dict[int, list[str]] = {}
    for g, h in enumerate(placed.assignment.tolist()):
        if h >= 0:
            by_host.setdefault(h, []).append(placed.guest_names[g])
    lines = []
    for h, name in enumerate(placed.host_names):
        resources = tuple(
            ResourceLine(float(placed.capacity[h, r]), float(placed.effective[h, r]), float(placed.used[h, r]))
            for r in range(3)
        )
        assert len(resources) == 3
        lines.append(HostLine(name, HostCondition(int(placed.condition[h])).name.lower(),
                              (resources[0], resources[1], resources[2]), tuple(by_host.get(h, []))))
    return SpecPlan(spec.cluster, tuple(lines), result, report)
