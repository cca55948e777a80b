"""Building ``decide``'s view: the informer cache, the monitor, fences and readiness, typed.

Role: ``build_view`` turns what the controller's shell holds — the cached store records (parsed
by nonstop/store/cluster_records.py, the one reader of those key families), the heartbeat
monitor's verdicts, the fence results and the readiness gate's set — into the core's frozen
``ClusterView``. ``observe_readiness`` runs the readiness gate (TCP connects) over the replicas
that would serve, before ``decide`` runs: readiness is something the shell observes.

Must not: decide or write anything.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping

from nonstop.controller.readiness import ReadinessGate
from nonstop.core.controller.backends import desired_backends
from nonstop.core.controller.ops import FailoverOp
from nonstop.core.controller.view import ClusterView, FenceOutcome, GuestView, HostView, PendingIntent
from nonstop.core.spec import ClusterSpec
from nonstop.store.cluster_records import ClusterRecords


def build_view(spec: ClusterSpec, records: ClusterRecords, *, now: float, liveness: Callable[[str], str],
               last_heard: Callable[[str], float | None], fence_results: Mapping[str, FenceOutcome],
               ready: frozenset[tuple[str, int]], leading_since: float, startup_grace: float,
               serving_timeout: float) -> ClusterView:
    hosts = {}
    for h in spec.hosts:
        rec = records.hosts.get(h.name)
        desired = rec.desired if rec is not None else None
        hosts[h.name] = HostView(
            name=h.name, liveness=liveness(h.name), last_heard=last_heard(h.name),
            maintenance=desired is not None and desired.state == "maintenance",
            evacuate=desired.evacuate if desired is not None else True,
            maintenance_by=desired.by if desired is not None else None,
            placement=(rec.components.placement or None) if rec is not None and rec.components is not None else None,
            agent_lease=rec.alive_lease if rec is not None else None,
        )
    guests = {}
    for name, g in records.guests.items():
        migration_step = None
        if g.desired is not None and g.desired.migration_id:
            op = records.operations.get(g.desired.migration_id)
            migration_step = op.step if op is not None else None
        guests[name] = GuestView(name=name, desired=g.desired, desired_revision=g.desired_revision,
                                 observed=g.observed.core() if g.observed is not None else None,
                                 epoch=g.epoch, runner=g.runner, migration_step=migration_step)
    failovers = {r.id: FailoverOp.from_parts(r.id, r.step, dict(r.progress), dict(r.body))
                 for r in records.operations_of("failover")}
    intents = tuple(PendingIntent(req, out) for req, out in records.pending_intents())
    return ClusterView(spec=spec, now=now, hosts=hosts, guests=guests, failovers=failovers,
                       fence_results=dict(fence_results), intents=intents, ready=ready,
                       leading_since=leading_since, startup_grace=startup_grace, serving_timeout=serving_timeout,
                       id_seed=secrets.token_hex(4))


async def observe_readiness(view: ClusterView, gate: ReadinessGate) -> frozenset[tuple[str, int]]:
    """Probe the replicas that would serve and are not known ready; the gate's ready set."""
    facts = {g: f for g, f in view.facts().items()}
    states = view.host_states()
    for service in view.spec.services:
        await gate.filter(desired_backends(view.spec, service, facts, states), facts)
    return frozenset(gate.ready)
