"""What the patcher reads of the cluster, and how it asks the controller for changes.

Role: one read of the cluster as the patcher needs it (``Snapshot``: spec, guest placement, host
conditions as the controller reports them, each host's patch level and agent record); the current
operation of a kind (``latest``: the newest ``ops/<id>`` record of that kind); the balancer admin
calls of the drain (``Balancers``: set a backend ``drain``/``ready``, wait until its in-flight
requests are done); intents to the controller (``ask``: write one, wait for the first answer —
``accepted`` or final — and turn a refusal into ``IntentFailed`` with the controller's words;
``wait_on``: until a moved guest runs on its target, or the controller says the move failed); host
commands through the agent (``hosts/<h>/patch``, nonstop/agent/patch.py). Also
``patch_level_warning`` for ``nonstop status``.

Must not: decide (the core planner and step machine do), hold rollout state, or write guest
placement or host state (``guests/*/desired``, ``hosts/*/desired``): only the controller does, on
the intents written here.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

from nonstop.agent.patch import request_key
from nonstop.core.guests.model import GuestDefinition
from nonstop.core.patching.planner import placement_conditions
from nonstop.core.patching.steps import KIND as ROLLOUT_KIND
from nonstop.core.spec import ClusterSpec
from nonstop.lb.client import BalancerAdminClient, BalancerAdminError
from nonstop.store import intents, keys, operations
from nonstop.store.base import Compare, Store
from nonstop.store.cluster_records import ClusterRecords, ObservedGuestRecord, read_cluster
from nonstop.store.intents import IntentKind, IntentOutcome
from nonstop.store.operations import OperationRecord
from nonstop.store.records import HostAlive, HostObserved, HostPatch, LeaderRecord, RecordError, put_op, read_or_none
from nonstop.store.state import get_spec

CONTROLLER_FRESH = 5.0
"""The controller publishes its status every second; older than this, nobody is watching the cluster."""
INTENT_TIMEOUT = 30.0
"""How long a first answer to an intent may take (a controller restarting answers once it leads)."""
ANSWERED = frozenset({"accepted", *intents.FINAL_STATUSES})


@dataclass
class Snapshot:
    spec: ClusterSpec
    records: ClusterRecords
    controller: LeaderRecord | None
    """The leading controller's status record; None while no controller leads."""
    host_observed: dict[str, HostObserved] = field(default_factory=dict)
    alive: dict[str, HostAlive] = field(default_factory=dict)

    @property
    def desired(self) -> dict[str, GuestDefinition]:
        return {g: r.desired for g, r in self.records.guests.items() if r.desired is not None}

    @property
    def observed(self) -> dict[str, ObservedGuestRecord]:
        return {g: r.observed for g, r in self.records.guests.items() if r.observed is not None}

    def assignments(self) -> dict[str, str]:
        return self.records.assignments()

    def controller_fresh(self, now: float) -> bool:
        return self.controller is not None and now - (self.controller.updated_at or 0.0) < CONTROLLER_FRESH

    def in_maintenance(self, host: str) -> bool:
        """Whether the controller reports ``host`` in maintenance."""
        return self.controller is not None and host in self.controller.maintenance

    def verdict(self, host: str) -> str:
        """The controller's liveness verdict on ``host`` (``unknown`` when it has none)."""
        return self.controller.hosts.get(host, "unknown") if self.controller is not None else "unknown"

    def conditions(self) -> dict[str, str]:
        """host → up | maintenance | <liveness state> as the controller sees it."""
        out = {}
        for host in self.spec.hosts:
            rec = self.records.hosts.get(host.name)
            if self.in_maintenance(host.name) or (rec is not None and rec.desired.state == "maintenance"):
                out[host.name] = "maintenance"
            else:
                out[host.name] = self.verdict(host.name)
        return out

    def placement(self) -> dict[str, str]:
        """``conditions()`` as the placement engine takes them (a dead or suspect host is ``failed``)."""
        return placement_conditions(self.conditions())

    def levels(self) -> dict[str, str | None]:
        return {h.name: obs.patch_level if (obs := self.host_observed.get(h.name)) is not None else None
                for h in self.spec.hosts}

    def guests_on(self, host: str) -> list[str]:
        return sorted(g for g, d in self.desired.items() if d.host == host)

    def running_on(self, guest: str, host: str) -> bool:
        obs = self.observed.get(guest)
        d = self.desired.get(guest)
        return (d is not None and obs is not None and d.host == host and d.migrate_to is None and obs.host == host
                and obs.state == "running")


async def snapshot(store: Store, cluster: str) -> Snapshot:
    stored = await get_spec(store, cluster)
    if stored is None:
        raise RuntimeError(f"no spec for cluster {cluster} in the store")
    records = await read_cluster(store, cluster)
    snap = Snapshot(stored.spec, records, await read_or_none(store, keys.leader(cluster), LeaderRecord))
    for kv in await store.list(keys.hosts_prefix(cluster)):
        parsed = keys.parse(kv.key)
        with contextlib.suppress(RecordError):
            if parsed.leaf == "observed":
                snap.host_observed[parsed.name] = HostObserved.decode(kv.value)
            elif parsed.leaf == "alive":
                snap.alive[parsed.name] = HostAlive.decode(kv.value)
    return snap


async def latest(store: Store, cluster: str, kind: str) -> OperationRecord | None:
    """The newest stored operation of ``kind`` (the current rollout for ``patch-rollout``)."""
    records = await operations.list_operations(store, cluster, kind)
    return records[-1] if records else None


async def patch_level_warning(store: Store, cluster: str) -> str | None:
    """For ``nonstop status``: a warning while hosts report different patch levels (or a rollout
    is not complete), else None."""
    snap = await snapshot(store, cluster)
    levels = snap.levels()
    distinct = {lv for lv in levels.values()}
    rollout = await latest(store, cluster, ROLLOUT_KIND)
    parts = []
    if len(distinct) > 1:
        parts.append("patch levels differ: " + ", ".join(f"{h}={lv or 'unknown'}" for h, lv in sorted(levels.items())))
    if rollout is not None and rollout.step in ("running", "failed"):
        parts.append(f"patch rollout to {rollout.body.get('target')} is {rollout.step}")
    return "; ".join(parts) or None


# ------------------------------------------------------------------ intents to the controller


class IntentFailed(Exception):
    """The controller refused an intent or reported it failed (its message), or did not answer."""


async def ask(store: Store, cluster: str, kind: IntentKind, *, requester: str, reason: str,
              timeout: float = INTENT_TIMEOUT, **fields: Any) -> IntentOutcome:
    """Write an intent and wait for the controller's first answer: ``accepted`` (the move is under
    way: ``target`` says where) or ``done`` is returned; ``refused``, ``failed`` or no answer
    within ``timeout`` raise ``IntentFailed``."""
    intent = await intents.submit(store, cluster, kind, requester=requester, reason=reason, **fields)
    outcome = await intents.wait_outcome(store, cluster, intent.id, timeout=timeout, until=ANSWERED)
    if outcome is None:
        raise IntentFailed(f"the controller did not answer the intent to {intent.describe()} within "
                           f"{timeout:.0f} s (intent {intent.id})")
    if outcome.status in ("refused", "failed"):
        raise IntentFailed(f"the controller {outcome.status} to {intent.describe()}: {outcome.message}")
    return outcome


async def wait_on(store: Store, cluster: str, guest: str, target: str, *, timeout: float,
                  intent_id: str | None = None, source: str | None = None) -> None:
    """Until ``guest`` runs on ``target`` (or the controller says the intent ``intent_id`` is
    done). Raises ``IntentFailed`` when the controller reports the intent failed (a live
    migration the agents gave up), when — with no intent: a migration already under way when a
    patcher resumed — the guest is back on ``source`` with no migration pending, or at ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        snap = await snapshot(store, cluster)
        if snap.running_on(guest, target):
            return
        if intent_id is not None:
            outcome = await intents.get_outcome(store, cluster, intent_id)
            if outcome is not None and outcome.status == "done":
                return
            if outcome is not None and outcome.status in ("failed", "refused"):
                raise IntentFailed(f"moving {guest} to {target} {outcome.status}: {outcome.message}")
        else:
            d = snap.desired.get(guest)
            if d is not None and d.host == source and d.migrate_to is None:
                raise IntentFailed(f"the migration of {guest} to {target} under way when the patcher stopped "
                                   f"ended with {guest} still on {source}")
        if time.monotonic() > deadline:
            raise IntentFailed(f"timed out after {timeout:.0f} s waiting for {guest} on {target}")
        await asyncio.sleep(0.2)


# ------------------------------------------------------------------ balancers


class Balancers:
    """The services' balancers (service → admin ``ip:port``), reached from this process's namespace."""

    def __init__(self, admins: dict[str, str], timeout: float = 2.0) -> None:
        self.admins = dict(admins)
        self.timeout = timeout
        self._clients: dict[str, BalancerAdminClient] = {}

    def client(self, service: str) -> BalancerAdminClient:
        """One client per service, made in (and bound to) the loop that first uses it."""
        if service not in self._clients:
            self._clients[service] = BalancerAdminClient(self.admins[service], timeout=self.timeout)
        return self._clients[service]

    async def backends(self, service: str) -> list[dict[str, Any]]:
        try:
            return await self.client(service).get_backends(service)
        except BalancerAdminError:
            return []

    async def set_state(self, guests: list[str], state: str) -> list[str]:
        """Set every backend named after one of ``guests`` to ``state`` on every balancer; what was changed."""
        done = []
        for service in self.admins:
            names = {b.get("name") for b in await self.backends(service)}
            for guest in guests:
                if guest in names:
                    with contextlib.suppress(BalancerAdminError):
                        await self.client(service).set_state(service, guest, state)
                        done.append(f"{service}/{guest}")
        return done

    async def wait_idle(self, guests: list[str], timeout: float) -> int:
        """Wait until no backend of ``guests`` has a request in flight (or the timeout); how many are left."""
        deadline = time.monotonic() + timeout
        while True:
            active = 0
            for service in self.admins:
                active += sum(int(b.get("active") or 0) for b in await self.backends(service)
                              if b.get("name") in guests)
            if active == 0 or time.monotonic() > deadline:
                return active
            await asyncio.sleep(0.1)

    async def serving(self, guest: str) -> bool:
        """The guest is a backend of every balancer that knows its service, and healthy there."""
        for service in self.admins:
            with contextlib.suppress(OSError, asyncio.TimeoutError, ValueError):
                for b in await self.backends(service):
                    if b.get("name") == guest:
                        return bool(b.get("serving"))
        return False


# ------------------------------------------------------------------ host commands (through the agent)


async def host_command(store: Store, cluster: str, host: str, request_id: str, action: str, *,
                       command: str | None = None, target: str = "", timeout: float = 120.0,
                       restart_agent: bool = False) -> HostPatch:
    """The current record of request ``request_id`` on ``host``, writing it first if absent."""
    key = request_key(cluster, host)
    kv = await store.get(key)
    if kv is not None:
        with contextlib.suppress(RecordError):
            current = HostPatch.decode(kv.value)
            if current.id == request_id:
                return current
    record = HostPatch(id=request_id, host=host, action=action, command=command, target=target, timeout=timeout,
                       restart_agent=restart_agent, state="requested", requested_at=time.time())
    compare = Compare.mod_revision(key, kv.mod_revision) if kv is not None else Compare.missing(key)
    await store.txn([compare], [put_op(key, record)])
    return record


async def read_command(store: Store, cluster: str, host: str) -> HostPatch | None:
    """The host's current command record (None when absent or unreadable)."""
    return await read_or_none(store, request_key(cluster, host), HostPatch)
