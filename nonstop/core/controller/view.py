"""What the controller's ``decide`` sees (pure, typed): one snapshot of desired and observed state.

Role: the shell builds a ``ClusterView`` from its informer cache of the store, the heartbeat
monitor's verdicts, the readiness gate and the results of fences it ran; ``decide`` reads
nothing else. Everything here is frozen; derived views (``conditions``, ``assignments``,
``facts``) are computed, never stored.

Host conditions (what placement may do with a host):
- ``maintenance``: its desired state says so, or the monitor reports it;
- ``failed``: dead, suspect or never heard — or a failover of it is under way;
- ``degraded``: its hardware watcher allows no new guests there (docs/components.md);
- ``up``: anything else.

Must not: read the store, a clock or a socket; hold mutable state.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from nonstop.core.controller.backends import GuestFacts
from nonstop.core.controller.ops import FailoverOp
from nonstop.core.guests.model import GuestDefinition
from nonstop.core.intents import IntentOutcome, IntentRequest
from nonstop.core.spec import ClusterSpec

FAILED_LIVENESS = frozenset({"dead", "suspect", "unknown"})
UP_LIVENESS = frozenset({"up", "link-degraded"})


@dataclass(frozen=True)
class HostView:
    name: str
    liveness: str = "unknown"
    """The heartbeat monitor's verdict: up, link-degraded, suspect, dead, unknown, maintenance."""
    last_heard: float | None = None
    """Wall-clock seconds of the last heartbeat heard (recorded in failovers)."""
    maintenance: bool = False
    """``hosts/<h>/desired`` says maintenance."""
    evacuate: bool = True
    maintenance_by: str | None = None
    placement: str | None = None
    """The components watcher's word on placement (``no-new-guests`` or None)."""
    agent_lease: int | None = None
    """Lease of the agent's presence key (revoked after a fence)."""


@dataclass(frozen=True)
class ObservedGuest:
    """The agent's report on one guest (``guests/<g>/observed``)."""

    host: str | None
    state: str | None
    fencing_epoch: int | None = None
    attempts: int = 0
    gave_up: bool = False
    failure_reason: str | None = None


@dataclass(frozen=True)
class GuestView:
    name: str
    desired: GuestDefinition | None = None
    desired_revision: int = 0
    observed: ObservedGuest | None = None
    epoch: int = 0
    """The guest's current fencing epoch (``epoch/<g>``; 0 when none)."""
    runner: tuple[str, int] | None = None
    """(host holding the runner lock, its lease)."""
    migration_step: str | None = None
    """Step of the migration operation named by ``desired.migration_id`` (None: none stored)."""

    def running_on(self, host: str) -> bool:
        o = self.observed
        return (o is not None and o.host == host and o.state == "running"
                and (o.fencing_epoch is None or o.fencing_epoch >= self.epoch))


@dataclass(frozen=True)
class FenceOutcome:
    """The result of one fence attempt the shell ran for a failover."""

    attempt: int
    fenced: bool
    agent: str
    outcome: str
    detail: str
    seconds: float


@dataclass(frozen=True)
class PendingIntent:
    request: IntentRequest
    outcome: IntentOutcome | None = None


@dataclass(frozen=True)
class ClusterView:
    spec: ClusterSpec
    now: float
    """Wall-clock seconds (the controller's clock)."""
    hosts: Mapping[str, HostView]
    guests: Mapping[str, GuestView]
    failovers: Mapping[str, FailoverOp] = field(default_factory=dict)
    fence_results: Mapping[str, FenceOutcome] = field(default_factory=dict)
    """op id → the latest fence attempt's result."""
    intents: tuple[PendingIntent, ...] = ()
    """Intents without a final outcome, oldest first."""
    ready: frozenset[tuple[str, int]] = frozenset()
    """(guest, epoch) whose service port accepted a connection (the readiness gate)."""
    leading_since: float = 0.0
    startup_grace: float = 5.0
    serving_timeout: float = 60.0
    id_seed: str = "0"
    """Fresh per pass (drawn by the shell): ids of new operations are ``<kind>-<seed>-<n>``."""

    # ------------------------------------------------------------------ derived

    def host(self, name: str) -> HostView:
        return self.hosts.get(name) or HostView(name)

    def active_failover(self, host: str) -> FailoverOp | None:
        for op in self.failovers.values():
            if op.host == host and not op.final:
                return op
        return None

    def conditions(self) -> dict[str, str]:
        out = {}
        for h in self.spec.hosts:
            hv = self.host(h.name)
            if hv.maintenance or hv.liveness == "maintenance":
                out[h.name] = "maintenance"
            elif hv.liveness in FAILED_LIVENESS or self.active_failover(h.name) is not None:
                out[h.name] = "failed"
            elif hv.placement == "no-new-guests":
                out[h.name] = "degraded"
            else:
                out[h.name] = "up"
        return out

    def host_states(self) -> dict[str, str]:
        """Liveness per host, with hosts under failover counted dead (their replicas serve nothing)."""
        states = {h.name: self.host(h.name).liveness for h in self.spec.hosts}
        for op in self.failovers.values():
            if not op.final:
                states[op.host] = "dead"
        return states

    def assignments(self) -> dict[str, str]:
        return {g: v.desired.host for g, v in self.guests.items() if v.desired is not None}

    def busy(self) -> frozenset[str]:
        """Guests on a host whose failover is under way: nothing but the failover moves them."""
        hosts = {op.host for op in self.failovers.values() if not op.final}
        return frozenset(g for g, v in self.guests.items() if v.desired is not None and v.desired.host in hosts)

    def facts(self) -> dict[str, GuestFacts]:
        out = {}
        for name, v in self.guests.items():
            d = v.desired
            if d is None:
                continue
            o = v.observed
            out[name] = GuestFacts(
                name=name, group=d.group, host=d.host, epoch=v.epoch or d.fencing_epoch, address=d.address,
                observed_host=o.host if o else None, observed_state=o.state if o else None,
                observed_epoch=o.fencing_epoch if o else None,
            )
        return out

    def known_guests(self) -> list[str]:
        return [g for group in self.spec.guests for g in group.guest_names()]
