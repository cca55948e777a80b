"""Live migration between two agents: the steps of the ``migration`` operation (``ops/<id>``).

Role: the controller asks for a move by writing the guest's desired record (host A) with
``migrate_to: B`` and ``migration_id: <id>``. The pure reconcile decides which step an agent
takes (nonstop/core/guests/reconcile.py); this module carries the steps out against the store
and the drivers, every write a compare-and-set on the operation's revision and every step a
transition of ``MIGRATION`` (nonstop/core/guests/migration.py):

1. A (``migrate_out``) creates the operation at ``requested``: guest, source, destination, the
   definition as it will run on B, the fencing epoch.
2. B (``prepare``) calls ``prepare_incoming`` and moves it to ``ready`` with the endpoint and its
   agent's lease; if it cannot, to ``failed`` with the reason.
3. A calls ``migrate(endpoint)``; on success ONE transaction writes ``done`` with the result and
   hands the guest's runner lock to B (on B's lease, or on none when that lease just expired);
   the desired record is NOT written (the controller rewrites it). On failure A writes
   ``failed`` with the reason and keeps running the guest; a ``requested`` that B does not
   prepare within ``PREPARE_TIMEOUT`` fails too.
4. B (``finish``) sees ``done``: ``finish_incoming``, re-binds the runner lock to its current
   lease, writes ``finished``. B drops its incoming copy (``drop``) when the operation failed.
The operation stays after it ends (readers take the result and reason from it); a new request
is a new operation with a new id.

Must not: decide that a guest should move or which step comes next (the controller and the
reconcile do), or write ``guests/*/desired``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from dataclasses import asdict, replace
from typing import TYPE_CHECKING, Any

from nonstop.agent import records
from nonstop.agent.records import AgentKeys, Migration, acquire_runner
from nonstop.core.guests import migration as mig
from nonstop.core.guests.model import GuestDefinition, GuestState
from nonstop.core.operations import IllegalTransition, start, transition
from nonstop.drivers.base import Driver, DriverError, GuestNotFound, MigrationEndpoint, MigrationError
from nonstop.store import operations
from nonstop.store.base import Compare, LeaseNotFound, Store, encode_json
from nonstop.store.operations import OperationRecord
from nonstop.store.records import RunnerLock, put_op

if TYPE_CHECKING:
    from collections.abc import Callable

PREPARE_TIMEOUT = 60.0
POLL = 0.05


class Migrator:
    def __init__(self, store: Store, keys: AgentKeys, drivers: Mapping[str, Driver],
                 lease: Callable[[], int | None], log: Callable[[str], None]) -> None:
        self.store = store
        self.keys = keys
        self.drivers = drivers
        self._lease = lease
        self._log = log

    async def load(self, op_id: str) -> Migration | None:
        return await records.load_migration(self.store, self.keys.cluster, op_id)

    async def open_ids(self) -> dict[str, str]:
        """guest → id of the migrations this host may still have work in whatever the desired
        record says now (read once at start): ``done`` into it (to finish, even after the
        controller's rewrite), handed over from it (an old copy to remove, never to report)."""
        found = {}
        for m in await records.list_migrations(self.store, self.keys.cluster):
            if ((m.body.destination == self.keys.host and m.step == mig.DONE)
                    or (m.body.source == self.keys.host and m.step in mig.HANDED_OVER)):
                found[m.body.guest] = m.id
        return found

    # ------------------------------------------------------------------ source side

    async def migrate_out(self, definition: GuestDefinition, destination: str, op_id: str,
                          driver: Driver) -> dict[str, Any]:
        """Steps 1 and 3. Returns the result; raises MigrationError (the guest still runs here)."""
        name = definition.name
        m = await self._requested(definition, destination, op_id)
        m = await self._ready(m)
        assert m.body.endpoint is not None
        try:
            result = await driver.migrate(name, MigrationEndpoint(**m.body.endpoint))
        except DriverError as exc:
            await self._advance(m, "fail", exc.reason)
            raise MigrationError(exc.reason, guest=name) from exc
        done = self._next(m, "migrated", None, result=asdict(result))
        # The runner lock goes straight to the destination (on its lease when it gave one), so no
        # pass that read the store before this transaction can start the guest here again.
        runner = RunnerLock(host=destination)
        outcome = None
        for lease in ([m.body.lease, None] if m.body.lease else [None]):
            ops = [operations.put_op(self.keys.cluster, done), put_op(self.keys.runner(name), runner, lease)]
            try:
                outcome = await self.store.txn([Compare.mod_revision(self.keys.migration(op_id), m.revision)], ops)
                break
            except LeaseNotFound:
                continue  # the destination's lease just expired: hand over without one; it re-binds
        if outcome is None or not outcome.succeeded:
            raise MigrationError(f"migration {op_id} changed under us; leaving the store as it is", guest=name)
        self._log(f"migrated {name} to {destination} in {result.total_seconds:.2f}s "
                  f"(downtime {result.downtime_seconds}; {op_id})")
        return asdict(result)

    async def _requested(self, definition: GuestDefinition, destination: str, op_id: str) -> Migration:
        """Step 1: the operation at ``requested`` (created here) or further on (resumed)."""
        name = definition.name
        m = await self.load(op_id)
        if m is None:
            header = start(op_id, mig.MIGRATION, mig.REQUESTED, time.time(),
                           reason=f"live migration of {name} from {self.keys.host} to {destination}")
            body = mig.MigrationBody(guest=name, source=self.keys.host, destination=destination,
                                     definition=mig.handed_over(definition))
            record = OperationRecord.of(header, body.to_json())
            await self.store.compare_and_set(self.keys.migration(op_id), encode_json(record.to_json()), 0)
            m = await self.load(op_id)
        if m is None or (m.body.guest, m.body.source, m.body.destination) != (name, self.keys.host, destination):
            raise MigrationError(f"operation {op_id} is not the migration of {name} from {self.keys.host} "
                                 f"to {destination}", guest=name)
        if m.step not in (mig.REQUESTED, mig.READY):
            raise MigrationError(f"migration {op_id} is {m.step} already", guest=name)
        return m

    async def _ready(self, m: Migration) -> Migration:
        """Wait for the destination's ``ready``; fail the operation if it does not come in time."""
        deadline = m.record.progress.get(mig.REQUESTED, m.record.created_at) + PREPARE_TIMEOUT
        while m.step != mig.READY:
            if m.step == mig.FAILED:
                raise MigrationError(m.reason or "the destination failed to prepare", guest=m.body.guest)
            if time.time() > deadline:
                reason = f"destination {m.body.destination} did not prepare within {PREPARE_TIMEOUT:.0f}s"
                await self._advance(m, "fail", reason)
                raise MigrationError(reason, guest=m.body.guest)
            await asyncio.sleep(POLL)
            again = await self.load(m.id)
            if again is None:
                raise MigrationError(f"migration {m.id} vanished", guest=m.body.guest)
            m = again
        return m

    # ------------------------------------------------------------- destination side

    async def prepare(self, op_id: str) -> None:
        """Step 2: an incoming copy and ``ready``; ``failed`` when the driver cannot."""
        m = await self.load(op_id)
        if m is None or m.step != mig.REQUESTED or m.body.destination != self.keys.host:
            return
        definition = m.body.definition
        driver = self._driver_for(definition)
        try:
            endpoint = await driver.prepare_incoming(definition)
        except DriverError as exc:
            await self._advance(m, "fail", f"{self.keys.host} could not prepare: {exc.reason}")
            raise
        if not await self._advance(m, "prepared", None, endpoint=asdict(endpoint), lease=self._lease()):
            self._log(f"migration {op_id} of {definition.name} moved on while preparing: dropping the copy")
            await self.drop(definition.name, driver)

    async def finish(self, name: str, op_id: str) -> None:
        """Step 4: run the copy, re-bind the runner lock, ``finished``. A copy that is gone or
        failed is not finished: the operation still ends and the guest starts afresh here."""
        m = await self.load(op_id)
        if m is None or m.step != mig.DONE or m.body.destination != self.keys.host:
            return
        driver = self._driver_for(m.body.definition)
        try:
            state: GuestState | None = (await driver.status(name)).state
        except GuestNotFound:
            state = None
        reason = None
        if state in (GuestState.INCOMING, GuestState.RUNNING):
            await driver.finish_incoming(name)
        else:
            reason = f"the incoming copy is {state.value if state else 'gone'} on {self.keys.host}: it starts afresh"
            self._log(f"migration {op_id} of {name}: {reason}")
        lease = self._lease()
        if lease is not None:
            holder = await acquire_runner(self.store, self.keys, name, lease)
            if holder is not None:
                self._log(f"migration {op_id} of {name}: the runner lock is held by {holder}")
        await self._advance(m, "finished", reason)

    async def fail(self, op_id: str, reason: str) -> None:
        m = await self.load(op_id)
        if m is not None and mig.MIGRATION.allows(m.step, "fail"):
            await self._advance(m, "fail", reason)
            self._log(f"migration {op_id} of {m.body.guest} failed: {reason}")

    async def drop(self, name: str, driver: Driver) -> None:
        """Remove an incoming copy that never ran, keeping shared disks where the driver knows how."""
        destroy_incoming = getattr(driver, "destroy_incoming", None)
        with contextlib.suppress(GuestNotFound):
            await (destroy_incoming(name) if destroy_incoming is not None else driver.destroy(name))

    # ----------------------------------------------------------------------- writes

    def _driver_for(self, definition: GuestDefinition) -> Driver:
        driver = self.drivers.get(definition.kind)
        if driver is None:
            raise DriverError(f"{self.keys.host} runs no {definition.kind} guests", guest=definition.name)
        return driver

    def _next(self, m: Migration, event: str, reason: str | None, **changes: Any) -> OperationRecord:
        header = transition(mig.MIGRATION, m.record.header, event, time.time(), reason)
        return OperationRecord.of(header, replace(m.body, **changes).to_json())

    async def _advance(self, m: Migration, event: str, reason: str | None, **changes: Any) -> bool:
        """Write the step after ``event`` if the operation is still as read; False otherwise."""
        try:
            record = self._next(m, event, reason, **changes)
        except IllegalTransition as exc:
            self._log(str(exc))
            return False
        return await self.store.compare_and_set(self.keys.migration(m.id), encode_json(record.to_json()), m.revision)
