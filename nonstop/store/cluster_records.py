"""The one reader of a cluster's records: store key/values in, typed records out.

Role: ``ClusterRecords.from_kvs`` turns the values under ``/nonstop/<cluster>/`` — guests
(desired, observed, runner locks), epochs, hosts (desired, alive, components), operations,
intents and the controller's memory — into typed records, skipping (and naming) values it cannot
read rather than half-reading them. The controller feeds it from its informer cache; tools that
need one snapshot call ``read_cluster`` (one list per key family). The records are the models
of nonstop/store/records.py (and the intent, operation and memory models beside it).

Must not: write, decide, or read the spec (nonstop/store/state.py does) or events.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field

from pydantic import ValidationError

from nonstop.core.controller.memory import ControllerMemory
from nonstop.core.guests.model import GuestDefinition
from nonstop.core.intents import IntentOutcome, IntentRequest
from nonstop.store import intents as intent_store
from nonstop.store import keys
from nonstop.store import operations as op_store
from nonstop.store.base import KeyValue, Store
from nonstop.store.operations import OperationRecord
from nonstop.store.records import (
    EpochRecord,
    GuestDesired,
    HostComponents,
    HostDesired,
    ObservedGuestRecord,
    RunnerLock,
)

__all__ = ["ClusterRecords", "GuestRecords", "HostDesired", "HostRecords", "ObservedGuestRecord", "read_cluster",
           "read_guests", "wanted"]


@dataclass
class GuestRecords:
    desired: GuestDefinition | None = None
    desired_revision: int = 0
    observed: ObservedGuestRecord | None = None
    runner: tuple[str, int] | None = None
    """(holder host, lease id)."""
    epoch: int = 0


@dataclass
class HostRecords:
    desired: HostDesired = field(default_factory=HostDesired)
    alive_lease: int | None = None
    components: HostComponents | None = None


@dataclass
class ClusterRecords:
    guests: dict[str, GuestRecords] = field(default_factory=dict)
    hosts: dict[str, HostRecords] = field(default_factory=dict)
    operations: dict[str, OperationRecord] = field(default_factory=dict)
    intents: dict[str, IntentRequest] = field(default_factory=dict)
    outcomes: dict[str, IntentOutcome] = field(default_factory=dict)
    memory: ControllerMemory | None = None
    unreadable: dict[str, str] = field(default_factory=dict)
    """key → why its value was skipped."""

    def guest(self, name: str) -> GuestRecords:
        return self.guests.setdefault(name, GuestRecords())

    def host(self, name: str) -> HostRecords:
        return self.hosts.setdefault(name, HostRecords())

    def assignments(self) -> dict[str, str]:
        return {g: r.desired.host for g, r in self.guests.items() if r.desired is not None}

    def operations_of(self, kind: str) -> list[OperationRecord]:
        return sorted((o for o in self.operations.values() if o.kind == kind), key=lambda o: (o.created_at, o.id))

    def pending_intents(self) -> list[tuple[IntentRequest, IntentOutcome | None]]:
        out = []
        for intent_id, req in self.intents.items():
            outcome = self.outcomes.get(intent_id)
            if outcome is None or not outcome.final:
                out.append((req, outcome))
        return sorted(out, key=lambda pair: (pair[0].created_at, pair[0].id))

    # ------------------------------------------------------------------ parsing

    @classmethod
    def from_kvs(cls, cluster: str, kvs: Iterable[KeyValue]) -> ClusterRecords:
        out = cls()
        for kv in kvs:
            try:
                out._add(cluster, kv)
            except (ValueError, TypeError, KeyError, ValidationError) as exc:
                out.unreadable[kv.key] = str(exc).splitlines()[0]
        return out

    def _add(self, cluster: str, kv: KeyValue) -> None:
        parsed = keys.parse(kv.key)
        kind, name, leaf = parsed.kind, parsed.name, parsed.leaf
        if kind == "guests":
            if leaf == "desired":
                g = self.guest(name)
                g.desired, g.desired_revision = GuestDesired.decode(kv.value), kv.mod_revision
            elif leaf == "observed":
                self.guest(name).observed = ObservedGuestRecord.decode(kv.value)
            elif leaf == "runner":
                self.guest(name).runner = (RunnerLock.decode(kv.value).host, kv.lease)
        elif kind == "epoch":
            self.guest(name).epoch = EpochRecord.decode(kv.value).epoch
        elif kind == "hosts":
            if leaf == "desired":
                self.host(name).desired = HostDesired.decode(kv.value)
            elif leaf == "alive":
                self.host(name).alive_lease = kv.lease
            elif leaf == "components":
                self.host(name).components = HostComponents.decode(kv.value)
        elif kind == "ops":
            record = op_store.parse(kv.value)
            if record is not None:
                self.operations[record.id] = record
        elif kind == "intents":
            if leaf == "request":
                req = intent_store.parse_request(kv.value)
                if req is None:
                    raise ValueError("not an intent request")
                self.intents[name] = req
            elif leaf == "outcome":
                outcome = intent_store.parse_outcome(kv.value)
                if outcome is not None:
                    self.outcomes[name] = outcome
        elif kind == "controller" and name == "memory":
            self.memory = ControllerMemory.from_dict(json.loads(kv.value))


READ_FAMILIES = ("guests", "epoch", "hosts", "ops", "intents", "controller")


def wanted(key: str, cluster: str) -> bool:
    """Whether ``key`` belongs to the families this module reads (not events, ipam, services…)."""
    prefix = keys.cluster_prefix(cluster)
    return key.startswith(prefix) and key[len(prefix):].split("/", 1)[0] in READ_FAMILIES


async def read_cluster(store: Store, cluster: str) -> ClusterRecords:
    """One snapshot, for tools that do not keep a cache (one list per key family)."""
    kvs: list[KeyValue] = []
    for family in READ_FAMILIES:
        kvs.extend(await store.list(f"{keys.cluster_prefix(cluster)}{family}/"))
    return ClusterRecords.from_kvs(cluster, kvs)


async def read_guests(store: Store, cluster: str) -> dict[str, GuestRecords]:
    """Only ``guests/`` (desired, observed, runner): for tools that follow guests alone."""
    return ClusterRecords.from_kvs(cluster, await store.list(keys.guests_prefix(cluster))).guests
