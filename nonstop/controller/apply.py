"""The controller's applier: ``decide``'s commands become store transactions and balancer calls.

Role: ``Applier.apply(commands)`` runs them in order. Every store write goes through the
leader-guarded store (a controller that lost leadership gets ``NotLeader`` and steps down) and
is one transaction per command; writes that depend on what ``decide`` saw compare its revision
(a migration request, its completion) and are dropped when the record changed meanwhile — the
next pass decides again. Cold moves drain first: the guest leaves its services' balancers, then
one short pause per pass lets requests in flight finish on the old copy, then the new placement
is written. Own writes of records the controller reads are written through to its cache.

This module and nonstop/store/cluster_records.py are the only controller code that knows the
value formats of ``guests/*/desired``, ``epoch/*``, ``hosts/*/desired``, ``ops/*`` and
``intents/*/outcome``: the controller is their one writer (docs/controller.md).

Must not: decide anything (a command says what and why), or swallow ``NotLeader``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from nonstop.controller.fencing import FenceRunner
from nonstop.controller.lbsync import LbSync
from nonstop.core.controller import commands as c
from nonstop.core.guests.model import GuestDefinition
from nonstop.core.spec import ClusterSpec
from nonstop.store import keys
from nonstop.store import operations as op_store
from nonstop.store.base import Compare, KeyValue, Op, Store
from nonstop.store.cache import StoreCache
from nonstop.store.events import EventLog
from nonstop.store.intents import IntentOutcome, dump, outcome_key
from nonstop.store.records import EpochRecord, GuestDesired, HostDesired, RecordError, RunnerLock, put_op

log = logging.getLogger("nonstop.controller.apply")


def failover_record(op: Any) -> op_store.OperationRecord:
    return op_store.OperationRecord(id=op.op_id, kind="failover", step=op.step.value,
                                    created_at=op.detected_at or min(op.times.values(), default=0.0),
                                    updated_at=max(op.times.values(), default=op.detected_at),
                                    progress=dict(op.times), body=op.body())


class Applier:
    def __init__(self, store: Store, cluster: str, cache: StoreCache, *, events: EventLog, lb: LbSync,
                 fences: FenceRunner, spec: Callable[[], ClusterSpec], drain_delay: float = 0.5,
                 step_pause: float = 0.0, on_maintenance: Callable[[str, bool], None] | None = None) -> None:
        self.store, self.cluster, self.cache = store, cluster, cache
        self.events, self.lb, self.fences = events, lb, fences
        self.spec = spec
        self.drain_delay, self.step_pause = drain_delay, step_pause
        self.on_maintenance = on_maintenance or (lambda _h, _on: None)
        self.dropped = 0
        """Commands whose compare failed (the record changed after the view was read)."""

    async def apply(self, commands: Sequence[c.Command]) -> None:
        drains = [cmd for cmd in commands if isinstance(cmd, c.MoveGuest) and cmd.drain]
        if drains:
            await self._drain(drains)
        for cmd in commands:
            await self._one(cmd)

    # ------------------------------------------------------------------ dispatch

    async def _one(self, cmd: c.Command) -> None:
        if isinstance(cmd, c.Emit):
            await self.events.emit(cmd.kind, cmd.subject, cmd.reason, **dict(cmd.data))
        elif isinstance(cmd, c.PlaceGuest):
            await self._place(cmd)
        elif isinstance(cmd, c.MoveGuest):
            await self._move(cmd)
        elif isinstance(cmd, c.RequestMigration):
            await self._rewrite(cmd.guest, cmd.revision, migrate_to=cmd.target, migration_id=cmd.migration_id)
        elif isinstance(cmd, c.CompleteMigration):
            await self._rewrite(cmd.guest, cmd.revision, host=cmd.target, migrate_to=None, migration_id=None)
        elif isinstance(cmd, c.ClearMigration):
            await self._rewrite(cmd.guest, cmd.revision, migrate_to=None, migration_id=None)
        elif isinstance(cmd, c.RemoveGuest):
            key = keys.guest_desired(self.cluster, cmd.guest)
            if await self.store.delete(key):
                self.cache.write_through(None, key, await self.store.revision())
        elif isinstance(cmd, c.SaveFailover):
            await self._put(op_store.put_op(self.cluster, failover_record(cmd.op)))
            if self.step_pause and not cmd.op.final:
                await asyncio.sleep(self.step_pause)  # --step-pause: tests kill the controller at a known step
        elif isinstance(cmd, c.Fence):
            self.fences.ensure(self.spec(), cmd.op_id, cmd.host, cmd.attempt)
        elif isinstance(cmd, c.ReleaseHost):
            await self._release(cmd.host)
        elif isinstance(cmd, c.SetHostState):
            record = HostDesired(state=cmd.state, evacuate=cmd.evacuate, reason=cmd.reason, by=cmd.by)
            await self._put(put_op(keys.host_desired(self.cluster, cmd.host), record))
            self.on_maintenance(cmd.host, cmd.state == "maintenance")
        elif isinstance(cmd, c.SetBackends):
            await self._backends(cmd)
        elif isinstance(cmd, c.AnswerIntent):
            outcome = IntentOutcome(id=cmd.intent_id, status=cmd.status, message=cmd.message,
                                    updated_at=time.time(), target=cmd.target, source=cmd.source, epoch=cmd.epoch)
            await self._put(Op.put_json(outcome_key(self.cluster, cmd.intent_id), dump(outcome)))
        else:  # pragma: no cover - every command type is handled above
            raise TypeError(f"unknown command {cmd!r}")

    # ------------------------------------------------------------------ writes

    async def _put(self, op: Op) -> None:
        revision = await self.store.put(op.key, op.value)
        self._through(op.key, op.value, revision)

    def _through(self, key: str, value: bytes, revision: int) -> None:
        old = self.cache.get(key)
        kv = KeyValue(key, value, old.create_revision if old else revision, revision,
                      (old.version + 1) if old else 1, old.lease if old else 0)
        self.cache.write_through(kv, key, revision)

    def _desired(self, guest: str) -> tuple[GuestDefinition, int] | None:
        kv = self.cache.get(keys.guest_desired(self.cluster, guest))
        if kv is None:
            return None
        return GuestDesired.decode(kv.value), kv.mod_revision

    async def _assign(self, record: GuestDefinition, epoch: int, compares: list[Compare]) -> bool:
        desired_key = keys.guest_desired(self.cluster, record.name)
        ops = [put_op(keys.epoch(self.cluster, record.name), EpochRecord(epoch=epoch)),
               Op.put(desired_key, GuestDesired.encode(record))]
        result = await self.store.txn(compares, ops)
        if not result.succeeded:
            self.dropped += 1
            return False
        for op in ops:
            self._through(op.key, op.value, result.revision)
        return True

    async def _place(self, cmd: c.PlaceGuest) -> None:
        definition = await self._definition(cmd.guest, cmd.host)
        record = definition.with_changes(fencing_epoch=cmd.epoch)
        await self._assign(record, cmd.epoch, [Compare.missing(keys.guest_desired(self.cluster, cmd.guest))])

    async def _move(self, cmd: c.MoveGuest) -> None:
        current = self._desired(cmd.guest)
        if current is None:
            return
        definition, revision = current
        changes = dict(cmd.changes)
        record = definition.with_changes(host=cmd.target, fencing_epoch=cmd.epoch, migrate_to=None,
                                         migration_id=None, **changes)
        await self._assign(record, cmd.epoch, [Compare.mod_revision(keys.guest_desired(self.cluster, cmd.guest),
                                                                    revision)])

    async def _rewrite(self, guest: str, revision: int, **changes: Any) -> None:
        current = self._desired(guest)
        if current is None:
            return
        definition, _ = current
        key = keys.guest_desired(self.cluster, guest)
        record = definition.with_changes(**changes)
        value = GuestDesired.encode(record)
        result = await self.store.txn([Compare.mod_revision(key, revision)], [Op.put(key, value)])
        if result.succeeded:
            self._through(key, value, result.revision)
        else:
            self.dropped += 1

    async def _release(self, host: str) -> None:
        """Revoke the fenced host's agent lease: its runner locks and presence key go with it;
        locks bound to another (stale) lease of that host are deleted one by one."""
        leases: set[int] = set()
        runners: list[str] = []
        alive = self.cache.get(keys.host_alive(self.cluster, host))
        if alive is not None and alive.lease:
            leases.add(alive.lease)
        prefix = keys.guests_prefix(self.cluster)
        for kv in self.cache.snapshot():
            if kv.key.startswith(prefix) and kv.key.endswith("/runner"):
                try:
                    holder: str | None = RunnerLock.decode(kv.value).host
                except RecordError:
                    holder = None
                if holder == host:
                    runners.append(kv.key)
                    if kv.lease:
                        leases.add(kv.lease)
        for lease in sorted(leases):
            await self.store.revoke(lease)
        for key in runners:
            await self.store.delete(key)

    async def _drain(self, moves: list[c.MoveGuest]) -> None:
        drained = False
        for move in moves:
            for service in move.drain:
                drained |= await self.lb.remove(service, move.guest)
        if drained:
            await asyncio.sleep(self.drain_delay)

    async def _backends(self, cmd: c.SetBackends) -> None:
        want = cmd.backends
        if await self.lb.store_backends(cmd.service, want):
            await self.events.emit("backends", cmd.service,
                                   f"{len(want)} backend(s): {', '.join(b.name for b in want) or 'none'}",
                                   backends=[b.to_dict() for b in want])
        done = await self.lb.apply(cmd.service, want)
        if done:
            await self.events.emit("balancer", cmd.service, f"balancer updated: {' '.join(done)}")

    # ------------------------------------------------------------------ definitions

    async def _definition(self, guest: str, host: str) -> GuestDefinition:
        """A new guest's definition on ``host``: addresses from IPAM, bridges from the network layout."""
        from nonstop.core.net.names import bridge_name
        from nonstop.core.net.render import gateway_address
        from nonstop.net.ipam_store import allocate_address

        spec = self.spec()
        group = next(g for g in spec.guests if guest in g.guest_names())
        addresses: list[str | None] = []
        gateways: list[str | None] = []
        # VMs: the tap joins the network's virtual switch; process guests are plugged by the
        # host network module when no bridge is named (docs/guests.md).
        bridges: list[str | None] = [bridge_name(n.network) if group.kind.value == "vm" else None for n in group.nics]
        for nic in group.nics:
            net = next(n for n in spec.networks if n.name == nic.network)
            if net.mode.value == "isolated":
                addresses.append(None)
                gateways.append(None)
                continue
            ip = await allocate_address(self.store, self.cluster, net, guest)
            addresses.append(ip if "/" in ip else f"{ip}/{net.network().prefixlen}")
            gateways.append(gateway_address(net))
        return GuestDefinition.from_group(group, name=guest, cluster=self.cluster, host=host,
                                          addresses=addresses, gateways=gateways, bridges=bridges)
