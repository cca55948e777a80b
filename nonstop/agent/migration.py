"""Live migration between two agents, as a hand-off through the store.

Role: the controller asks for a move by setting ``migrate_to: B`` in the guest's desired record on
host A. Then, through ``migrations/<guest>``:

1. A writes ``{phase: requested, source: A, destination: B, definition}``.
2. B (``poll_incoming``, every loop) calls ``prepare_incoming`` on its driver and writes
   ``{phase: ready, endpoint}``.
3. A calls ``migrate(endpoint)`` on its driver; on success, in ONE transaction, it writes
   ``{phase: done, result}``, rewrites the desired record with ``host: B`` (``migrate_to`` cleared,
   same fencing epoch) and hands the guest's runner lock to B (on B's lease, published at ``ready``). On failure it
   writes ``{phase: failed, reason}`` and the guest keeps running on A (the agent backs off).
4. B sees ``done``: ``finish_incoming``, re-binds the runner lock to its current lease, writes ``{phase: finished}``.
   B destroys its INCOMING copy if it sees ``failed``.
The record stays after ``finished`` (the controller reads downtime from it); a new request replaces it.

Must not: decide that a guest should move (the controller does) or run anything but these steps.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from nonstop.agent.records import AgentKeys, acquire_runner
from nonstop.core.guests.model import GuestDefinition, GuestState
from nonstop.drivers.base import Driver, DriverError, GuestNotFound, MigrationEndpoint, MigrationError
from nonstop.store.base import Compare, LeaseNotFound, Op, Store, encode_json

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

    # ------------------------------------------------------------------ source side

    async def migrate_out(self, definition: GuestDefinition, destination: str, driver: Driver) -> dict[str, Any]:
        """Steps 1 and 3. Returns the result record; raises MigrationError (guest still runs here)."""
        name = definition.name
        key = self.keys.migration(name)
        target = definition.with_changes(host=destination, migrate_to=None)
        record = {
            "type": "migration", "guest": name, "source": self.keys.host, "destination": destination, "phase": "requested",
            "definition": target.to_dict(), "requested_at": time.time(),
        }
        current = await self.store.get(key)
        if current is None or current.json().get("phase") != "requested" or current.json().get("source") != self.keys.host:
            await self.store.put(key, encode_json(record))
        deadline = time.monotonic() + PREPARE_TIMEOUT
        while True:
            kv = await self.store.get(key)
            rec = kv.json() if kv is not None else {}
            if rec.get("phase") == "ready":
                break
            if rec.get("phase") == "failed" or time.monotonic() > deadline:
                reason = rec.get("reason") or f"destination {destination} did not prepare within {PREPARE_TIMEOUT:.0f}s"
                await self._fail(key, rec or record, reason)
                raise MigrationError(reason, guest=name)
            await asyncio.sleep(POLL)
        endpoint = MigrationEndpoint(**rec["endpoint"])
        try:
            result = await driver.migrate(name, endpoint)
        except DriverError as exc:
            await self._fail(key, rec, exc.reason)
            raise MigrationError(exc.reason, guest=name) from exc
        done = {**rec, "phase": "done", "result": asdict(result), "done_at": time.time()}
        # The runner lock goes straight to the destination (on its lease when it gave one), so no
        # pass that read the store before this transaction can start the guest here again.
        runner = encode_json({"host": destination})
        dest_lease = rec.get("lease")
        outcome = None
        for lease in ([dest_lease, None] if dest_lease else [None]):
            ops = [
                Op.put(key, encode_json(done)),
                Op.put(self.keys.desired(name), encode_json(target.to_dict())),
                Op.put(self.keys.runner(name), runner, lease),
            ]
            try:
                outcome = await self.store.txn([Compare.mod_revision(key, kv.mod_revision if kv else 0)], ops)
                break
            except LeaseNotFound:
                continue  # the destination's lease just expired: hand over without one; it re-binds
        if outcome is None or not outcome.succeeded:
            raise MigrationError("migration record changed under us; leaving the store as it is", guest=name)
        self._log(f"migrated {name} to {destination} in {result.total_seconds:.2f}s "
                  f"(downtime {result.downtime_seconds})")
        return done

    async def _fail(self, key: str, rec: dict[str, Any], reason: str) -> None:
        await self.store.put(key, encode_json({**rec, "phase": "failed", "reason": reason, "failed_at": time.time()}))

    # ------------------------------------------------------------- destination side

    async def incoming_unfinished(self) -> set[str]:
        """Guests with a migration into this host that has not finished (or failed) yet."""
        found = set()
        for kv in await self.store.list(self.keys.ops_prefix):
            try:
                rec = kv.json()
            except ValueError:
                continue
            if (isinstance(rec, dict) and rec.get("type") == "migration" and rec.get("destination") == self.keys.host
                    and rec.get("phase") in ("requested", "ready", "done")):
                found.add(str(rec.get("guest")))
        return found

    async def poll_incoming(self) -> None:
        """Steps 2 and 4 for every migration aimed at this host; errors are written to the record."""
        for kv in await self.store.list(self.keys.ops_prefix):
            try:
                rec = kv.json()
            except ValueError:
                continue
            if not isinstance(rec, dict) or rec.get("type") != "migration" or rec.get("destination") != self.keys.host:
                continue
            phase = rec.get("phase")
            try:
                definition = GuestDefinition.from_dict(rec["definition"])
            except (KeyError, TypeError, ValueError):
                continue
            driver = self.drivers.get(definition.kind)
            if driver is None:
                if phase == "requested":
                    await self._cas(kv.key, kv.mod_revision, {**rec, "phase": "failed",
                                                              "reason": f"{self.keys.host} runs no {definition.kind} guests"})
                continue
            try:
                await self._step(kv.key, kv.mod_revision, rec, phase, definition, driver)
            except DriverError as exc:
                self._log(f"incoming migration of {definition.name}: {exc.reason}")
                if phase == "requested":
                    await self._cas(kv.key, kv.mod_revision, {**rec, "phase": "failed", "reason": exc.reason})

    async def _step(self, key: str, rev: int, rec: dict[str, Any], phase: str | None, definition: GuestDefinition,
                    driver: Driver) -> None:
        name = definition.name
        try:
            state = (await driver.status(name)).state
        except GuestNotFound:
            state = None
        if phase == "requested" and state is None:
            endpoint = await driver.prepare_incoming(definition)
            await self._cas(key, rev, {**rec, "phase": "ready", "endpoint": asdict(endpoint), "lease": self._lease()})
        elif phase == "done" and state in (GuestState.INCOMING, GuestState.RUNNING):
            await driver.finish_incoming(name)
            lease = self._lease()
            if lease is not None:
                await acquire_runner(self.store, self.keys, name, lease)
            await self._cas(key, rev, {**rec, "phase": "finished", "finished_at": time.time()})
        elif phase == "failed" and state is GuestState.INCOMING:
            await driver.destroy(name)

    async def _cas(self, key: str, rev: int, rec: dict[str, Any]) -> bool:
        return await self.store.compare_and_set(key, encode_json(rec), rev)
