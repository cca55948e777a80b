"""The placement engine: where guests run, whether the cluster survives host failures.

Role: a pure, vectorized (numpy) Nova-style scheduler — filter plugins remove hosts,
weigher plugins score the rest — and the planners built on it: ``place`` (priority
order), ``plan_failover``, ``admission`` / ``admit`` (HA N+F admission control) and
``plan_rebalance``. The state model (``ClusterState``) is decoupled from the spec;
``cluster_state_from_spec`` bridges the two. See docs/placement.md.

Must not: do I/O, read a clock, or import a shell (import-linter enforces it).
"""

from nonstop.core.placement.admission import admission, admit
from nonstop.core.placement.engine import Engine, SchedulerConfig, place, placement_order
from nonstop.core.placement.failover import plan_failover
from nonstop.core.placement.fromspec import cluster_state_from_spec, config_from_spec
from nonstop.core.placement.model import RESOURCES, ClusterState, Guest, Host, HostCondition, Spread
from nonstop.core.placement.rebalance import plan_rebalance
from nonstop.core.placement.results import (
    AdmissionReport,
    AdmitDecision,
    Explanation,
    FailoverPlan,
    FilterStep,
    HostScore,
    Move,
    PlacementResult,
    RebalancePlan,
    Unplaced,
    WeigherScore,
)

__all__ = [
    "RESOURCES",
    "AdmissionReport",
    "AdmitDecision",
    "ClusterState",
    "Engine",
    "Explanation",
    "FailoverPlan",
    "FilterStep",
    "Guest",
    "Host",
    "HostCondition",
    "HostScore",
    "Move",
    "PlacementResult",
    "RebalancePlan",
    "SchedulerConfig",
    "Spread",
    "Unplaced",
    "WeigherScore",
    "admission",
    "admit",
    "cluster_state_from_spec",
    "config_from_spec",
    "place",
    "placement_order",
    "plan_failover",
    "plan_rebalance",
]
