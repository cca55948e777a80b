"""Where the agent's state lives in the store (``nonstop.store.keys``), and how records read back.

Role: the agent's view of the cluster key layout (docs/store.md) — all under ``/nonstop/<cluster>/``:

    guests/<guest>/desired    GuestDefinition (``host`` says where it runs) — the controller writes
    guests/<guest>/observed   ObservedGuestRecord: GuestStatus + agent notes — the agent running the guest
    guests/<guest>/runner     RunnerLock (host) on that agent's lease — at most one running copy
    epoch/<guest>             EpochRecord: the guest's fencing epoch — the controller bumps it
    hosts/<host>/alive        HostAlive (pid, started_at, drivers) on the agent's lease — agent presence
    hosts/<host>/observed     HostObserved, merged: the agent sets its ``guests`` and ``usage`` fields only
    ops/<migration id>        a live migration between two agents (migration.py): an OperationRecord of
                              kind ``migration``; its id is the desired record's ``migration_id``

``guests/<guest>/lock`` is left to operations (controller); the agent's own "who runs it" lock is
``runner`` so the two never block each other.

``load_migration`` reads one migration operation by id (typed: header, body, revision);
``latest_migration`` finds a guest's newest one for readers that know the guest but not the id
(the patcher, the CLI).

The records are the models of nonstop/store/records.py.

Must not: decide anything or talk to drivers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nonstop.core.guests import migration as mig
from nonstop.core.guests.model import GuestDefinition
from nonstop.store import keys as store_keys
from nonstop.store import operations
from nonstop.store.base import Compare, KeyValue, Op, Store
from nonstop.store.cluster_records import ClusterRecords
from nonstop.store.operations import OperationRecord
from nonstop.store.record import RecordError, merge, read_prefix
from nonstop.store.records import EpochRecord, HostObserved, RunnerLock


@dataclass(frozen=True)
class AgentKeys:
    cluster: str
    host: str

    @property
    def guests_prefix(self) -> str:
        return store_keys.guests_prefix(self.cluster)

    def desired(self, guest: str) -> str:
        return store_keys.guest_desired(self.cluster, guest)

    def observed(self, guest: str) -> str:
        return store_keys.guest_observed(self.cluster, guest)

    def runner(self, guest: str) -> str:
        return store_keys.guest_runner(self.cluster, guest)

    @property
    def epochs_prefix(self) -> str:
        return store_keys.epochs_prefix(self.cluster)

    def epoch(self, guest: str) -> str:
        return store_keys.epoch(self.cluster, guest)

    def alive(self, host: str | None = None) -> str:
        return store_keys.host_alive(self.cluster, host or self.host)

    def host_observed(self, host: str | None = None) -> str:
        return store_keys.host_observed(self.cluster, host or self.host)

    @property
    def ops_prefix(self) -> str:
        return store_keys.ops_prefix(self.cluster)

    def migration(self, op_id: str) -> str:
        """``ops/<id>``: the migration operation the desired record's ``migration_id`` names."""
        return store_keys.op(self.cluster, op_id)


@dataclass(frozen=True)
class ClusterGuests:
    """One read of ``guests/``: desired records (all hosts), runner locks, unreadable records."""

    desired: dict[str, GuestDefinition]
    runners: dict[str, tuple[str, KeyValue]]
    unreadable: dict[str, str]
    observed_hosts: dict[str, str | None]

    def for_host(self, host: str) -> dict[str, GuestDefinition]:
        return {name: d for name, d in self.desired.items() if d.host == host}

    def involving(self, host: str) -> dict[str, GuestDefinition]:
        """Records placing a guest on ``host`` or asking to migrate one to it."""
        return {name: d for name, d in self.desired.items() if host in (d.host, d.migrate_to)}


async def read_guests(store: Store, keys: AgentKeys) -> ClusterGuests:
    """One read of ``guests/``, parsed by the store's one reader of these records (cluster_records)."""
    kvs = await store.list(keys.guests_prefix)
    records = ClusterRecords.from_kvs(keys.cluster, kvs)
    by_key = {kv.key: kv for kv in kvs}
    desired = {g: r.desired for g, r in records.guests.items() if r.desired is not None}
    runners = {g: (r.runner[0], by_key[keys.runner(g)]) for g, r in records.guests.items()
               if r.runner is not None and keys.runner(g) in by_key}
    observed_hosts = {g: r.observed.host for g, r in records.guests.items() if r.observed is not None}
    unreadable = {store_keys.parse(key).name: f"unreadable desired record: {why}"
                  for key, why in records.unreadable.items() if key.endswith("/desired")}
    return ClusterGuests(desired, runners, unreadable, observed_hosts)


@dataclass(frozen=True)
class Migration:
    """One stored migration operation: the record, its typed body, the revision it was read at
    (0 when read by a listing: re-read it before writing)."""

    record: OperationRecord
    body: mig.MigrationBody
    revision: int = 0

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def step(self) -> str:
        return self.record.step

    @property
    def reason(self) -> str:
        return self.record.reason

    @property
    def view(self) -> mig.MigrationView:
        return mig.MigrationView(id=self.id, step=self.step, source=self.body.source,
                                 destination=self.body.destination, reason=self.reason)

    @classmethod
    def of(cls, record: OperationRecord | None, revision: int = 0) -> Migration | None:
        """None unless ``record`` is a well-formed migration operation."""
        if record is None or record.kind != mig.KIND or record.step not in mig.MIGRATION.table:
            return None
        try:
            return cls(record, mig.MigrationBody.from_json(record.body), revision)
        except ValueError:
            return None


async def load_migration(store: Store, cluster: str, op_id: str) -> Migration | None:
    """The migration operation ``ops/<op_id>`` (None when absent or not a migration)."""
    kv = await store.get(store_keys.op(cluster, op_id))
    return Migration.of(operations.parse(kv.value), kv.mod_revision) if kv is not None else None


async def list_migrations(store: Store, cluster: str) -> list[Migration]:
    """Every stored migration operation, oldest first (one listing of ``ops/``)."""
    found = (Migration.of(r) for r in await operations.list_operations(store, cluster, kind=mig.KIND))
    return [m for m in found if m is not None]


async def latest_migration(store: Store, cluster: str, guest: str, *, since: float = 0.0) -> Migration | None:
    """The newest migration of ``guest`` created at or after ``since`` (wall-clock seconds), for
    readers that know the guest but not the operation id; its ``step`` is ``failed`` with
    ``reason`` when it failed."""
    found = [m for m in await list_migrations(store, cluster)
             if m.body.guest == guest and m.record.created_at >= since]
    return found[-1] if found else None


async def read_epochs(store: Store, keys: AgentKeys) -> dict[str, int]:
    return {guest: r.epoch for guest, r in (await read_prefix(store, keys.epochs_prefix, EpochRecord)).items()}


async def acquire_runner(store: Store, keys: AgentKeys, guest: str, lease: int) -> str | None:
    """Take (or re-bind to our lease) the guest's runner lock. None on success, else the holder."""
    key = keys.runner(guest)
    value = RunnerLock(host=keys.host).encode()
    for _ in range(3):
        kv = await store.get(key)
        if kv is None:
            if await store.compare_and_set(key, value, 0, lease=lease):
                return None
            continue
        try:
            holder = RunnerLock.decode(kv.value).host
        except RecordError:
            holder = "?"
        if holder != keys.host:
            return holder
        if kv.lease == lease:
            return None
        # Ours from before a restart (the old lease is still alive): move it to the new lease.
        if await store.compare_and_set(key, value, kv.mod_revision, lease=lease):
            return None
    return "contention"


async def release_runner(store: Store, keys: AgentKeys, guest: str) -> None:
    """Delete the guest's runner lock if it is still ours."""
    key = keys.runner(guest)
    kv = await store.get(key)
    try:
        ours = kv is not None and RunnerLock.decode(kv.value).host == keys.host
    except RecordError:
        ours = False
    if kv is not None and ours:
        await store.txn([Compare.mod_revision(key, kv.mod_revision)], [Op.delete(key)])


async def merge_host_observed(store: Store, keys: AgentKeys, fields: dict[str, Any]) -> None:
    """Set our fields of ``hosts/<host>/observed`` without clobbering what other components wrote."""
    await merge(store, keys.host_observed(), HostObserved, fields)
