"""Reading the cluster as the controller sees it, and the writes that move guests.

Role: one read of ``guests/`` (desired and observed records, runner locks), ``epoch/`` and
``hosts/*/desired`` into a ``ClusterView``; and the store transactions the controller's
decisions become:

- ``assign`` — a guest's desired record on a host with a bumped fencing epoch, in one
  transaction with the epoch key (cold placement, failover, moves off a failing host);
- ``request_migration`` — ``migrate_to`` in the desired record, same epoch (live moves of VMs:
  the agents hand the guest over through ``ops/migrate-<g>``, docs/agent.md);
- ``release_dead_host`` — after a fence: revoke the dead agent's lease, which deletes its
  runner locks and presence key so the guests may start elsewhere at once.

Must not: decide; every decision comes from nonstop/core/controller.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from nonstop.agent.records import AgentKeys
from nonstop.core.controller.backends import GuestFacts
from nonstop.core.guests.model import GuestDefinition
from nonstop.store import keys
from nonstop.store.base import Compare, Op, Store


@dataclass
class ClusterView:
    desired: dict[str, GuestDefinition] = field(default_factory=dict)
    desired_rev: dict[str, int] = field(default_factory=dict)
    observed: dict[str, dict[str, Any]] = field(default_factory=dict)
    runners: dict[str, tuple[str, int]] = field(default_factory=dict)
    """guest → (host holding the runner lock, its lease id)."""
    epochs: dict[str, int] = field(default_factory=dict)
    host_desired: dict[str, dict[str, Any]] = field(default_factory=dict)
    alive: dict[str, int] = field(default_factory=dict)
    """host → lease id of its agent's presence key."""
    host_components: dict[str, dict[str, Any]] = field(default_factory=dict)
    """host → its ``hosts/<h>/components`` record (hardware watcher, docs/components.md)."""

    def assignments(self) -> dict[str, str]:
        return {g: d.host for g, d in self.desired.items()}

    def facts(self) -> dict[str, GuestFacts]:
        out = {}
        for name, d in self.desired.items():
            obs = self.observed.get(name, {})
            out[name] = GuestFacts(
                name=name, group=d.group, host=d.host, epoch=self.epochs.get(name, d.fencing_epoch),
                address=d.address, observed_host=obs.get("host"), observed_state=obs.get("state"),
                observed_epoch=obs.get("fencing_epoch"),
            )
        return out


def _epoch(value: bytes) -> int:
    data = json.loads(value)
    return int(data["epoch"] if isinstance(data, dict) else data)


async def read_view(store: Store, cluster: str) -> ClusterView:
    view = ClusterView()
    for kv in await store.list(keys.guests_prefix(cluster)):
        parsed = keys.parse(kv.key)
        try:
            data = json.loads(kv.value)
        except ValueError:
            continue
        if parsed.leaf == "desired":
            try:
                view.desired[parsed.name] = GuestDefinition.from_dict(data)
                view.desired_rev[parsed.name] = kv.mod_revision
            except (KeyError, TypeError, ValueError):
                continue
        elif parsed.leaf == "observed":
            view.observed[parsed.name] = data
        elif parsed.leaf == "runner" and isinstance(data, dict):
            view.runners[parsed.name] = (str(data.get("host")), kv.lease)
    for kv in await store.list(keys.epochs_prefix(cluster)):
        try:
            view.epochs[keys.parse(kv.key).name] = _epoch(kv.value)
        except (ValueError, KeyError, TypeError):
            continue
    for kv in await store.list(keys.hosts_prefix(cluster)):
        parsed = keys.parse(kv.key)
        if parsed.leaf == "desired":
            try:
                view.host_desired[parsed.name] = json.loads(kv.value)
            except ValueError:
                continue
        elif parsed.leaf == "alive":
            view.alive[parsed.name] = kv.lease
        elif parsed.leaf == "components":
            try:
                view.host_components[parsed.name] = json.loads(kv.value)
            except ValueError:
                continue
    return view


async def assign(store: Store, cluster: str, definition: GuestDefinition, host: str, current_epoch: int) -> int:
    """Put ``definition`` on ``host`` under epoch ``current_epoch + 1`` (one transaction); the new epoch."""
    epoch = current_epoch + 1
    record = definition.with_changes(host=host, fencing_epoch=epoch, migrate_to=None)
    await store.txn([], [
        Op.put_json(keys.epoch(cluster, definition.name), epoch),
        Op.put_json(keys.guest_desired(cluster, definition.name), record.to_dict()),
    ])
    return epoch


async def request_migration(store: Store, cluster: str, definition: GuestDefinition, target: str, revision: int) -> bool:
    """Ask the current host to live-migrate the guest to ``target`` (only if the record is unchanged)."""
    record = definition.with_changes(migrate_to=target)
    key = keys.guest_desired(cluster, definition.name)
    result = await store.txn([Compare.mod_revision(key, revision)], [Op.put_json(key, record.to_dict())])
    return result.succeeded


async def release_dead_host(store: Store, cluster: str, host: str, view: ClusterView) -> list[str]:
    """Revoke the (fenced) host's agent lease: its runner locks and presence key go with it.
    Locks bound to another lease of that host (a stale one) are deleted one by one."""
    released = []
    leases = {lease for h, lease in view.runners.values() if h == host}
    if host in view.alive:
        leases.add(view.alive[host])
    for lease in leases:
        if lease:
            await store.revoke(lease)
    for guest, (holder, _lease) in view.runners.items():
        if holder == host:
            await store.delete(AgentKeys(cluster, host).runner(guest))
            released.append(guest)
    return released
