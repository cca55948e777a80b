"""The host agent: keeps this host's guests as the store says they should be.

Role: a level-triggered loop. Each pass reads this host's desired guests, the fencing epochs and
the guest locks from the store, asks every driver what it has, lets the pure
``nonstop.core.guests.reconcile`` decide, and applies the actions — one background task per guest
(Kubernetes' "one worker per key"), so a slow stop or a migration never holds up other guests and
a guest that cannot start never stops the agent serving the rest. It then writes each guest's
observed record and the host's usage record. Passes run every ``interval`` seconds and at once
when a watched key (desired records, the migrations it takes part in) changes.

Live migrations (migration.py): each pass reads the migration operation every desired record
involving this host names (``migration_id``) — and, on the destination, the one it is still
finishing — and hands its step to the reconcile. Once an operation is ``done`` the guest is the
destination's even though the desired record still names the source: the source neither
restarts nor reports it (its last observed record is left for the destination to overwrite),
the destination runs and reports it under the same fencing epoch.

Safety: a guest is started only while this agent holds its lock (``locks/guests/<guest>``, on the
agent's lease); after a restart the drivers adopt running guests and the agent re-binds their
locks to its new lease, so nothing is started twice. If the lease is lost and another host took a
lock meanwhile, the agent stops its own copy (the holder wins). Records with a stale fencing epoch
are refused. Failures spend a retry budget with exponential back-off, then the guest stays FAILED
with the reason in its observed record.

Must not: decide placement (the controller writes desired records), call drivers from the
reconcile decision, or stop guests when it exits (guests outlive agent restarts).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

from nonstop.agent import records
from nonstop.agent.hostinfo import UsageSampler
from nonstop.agent.migration import Migrator
from nonstop.agent.records import AgentKeys
from nonstop.core.guests import migration as mig
from nonstop.core.guests import reconcile as rc
from nonstop.core.guests.model import GuestDefinition, GuestState, GuestStatus
from nonstop.drivers.base import Driver, DriverError, GuestNotFound, NotSupported
from nonstop.store.base import Compare, Op, Store, StoreError
from nonstop.store.records import HostAlive, ObservedGuestRecord, RecordError, put
from nonstop.vital import vital

log = logging.getLogger("nonstop.agent")

VOLATILE = ("cpu_seconds", "cpu_usage", "cpu_throttled_seconds", "throttled_periods", "total_periods",
            "memory_usage", "memory_pressure", "memory_limit_hits", "updated_at")


class Agent:
    def __init__(
        self,
        store: Store,
        *,
        cluster: str,
        host: str,
        drivers: Mapping[str, Driver],
        policy: rc.RetryPolicy = rc.RetryPolicy(),
        interval: float = 1.0,
        lease_ttl: int = 10,
        observed_every: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.keys = AgentKeys(cluster, host)
        self.host = host
        self.log = logging.getLogger(f"nonstop.agent.{host}")
        self.drivers = dict(drivers)
        self.policy = policy
        self.interval = interval
        self.lease_ttl = lease_ttl
        self.observed_every = observed_every
        self.clock = clock
        self.lease: int | None = None
        self.retry: dict[str, rc.RetryState] = {}
        self.notes: dict[str, dict[str, Any]] = {}
        self.inflight: dict[str, asyncio.Task[None]] = {}
        self.migration_ids: dict[str, str] = {}
        """guest → the migration operation this host takes part in (learned from desired records)."""
        self.passes = 0
        self._written: dict[str, tuple[dict[str, Any], float, int]] = {}
        self._last_status: dict[str, GuestStatus] = {}
        self._unknown: set[str] = set()
        self._completions = 0
        self._seen_desired: set[str] = set()
        self._finished: dict[str, int] = {}
        self._held: dict[str, str] = {}
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._usage = UsageSampler()
        self._usage_written = float("-inf")
        self.migrator = Migrator(store, self.keys, self.drivers, lambda: self.lease, self.log.info)

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Lease, presence key, adoption of running guests (re-binding their locks)."""
        self.lease = await self.store.grant_lease(self.lease_ttl)
        await self._announce()
        for kind, driver in self.drivers.items():
            try:
                found = await driver.adopt()
            except DriverError as exc:
                self.log.error("adoption by the %s driver failed: %s", kind, exc.reason)
                continue
            for name, status in found.items():
                if status.state is GuestState.RUNNING:
                    await self._hold_or_yield(name, driver)
                self.log.info("adopted %s (%s, boot %s)", name, status.state.value, status.boot_id)
        self.migration_ids.update(await self.migrator.open_ids())
        self._tasks = [
            vital(self._keepalive_loop(), "agent-keepalive"),
            vital(self._watch_loop(self.keys.guests_prefix, lambda key: key.endswith("/desired")), "agent-watch-desired"),
            vital(self._watch_loop(self.keys.ops_prefix, self._tracked_op), "agent-watch-migrations"),
        ]

    async def run(self, stop: asyncio.Event) -> None:
        await self.start()
        try:
            while not stop.is_set():
                self._wake.clear()
                try:
                    await self.reconcile_once()
                except StoreError as exc:
                    self.log.warning("store unavailable this pass: %s", exc)
                except Exception:  # a bug in one pass must not end the agent: log it, try again next pass
                    self.log.exception("reconcile pass failed")
                with contextlib.suppress(asyncio.TimeoutError):
                    stop_wait = asyncio.ensure_future(stop.wait())
                    wake_wait = asyncio.ensure_future(self._wake.wait())
                    try:
                        await asyncio.wait({stop_wait, wake_wait}, timeout=self.interval,
                                           return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        stop_wait.cancel()
                        wake_wait.cancel()
        finally:
            await self.shutdown()

    async def shutdown(self) -> None:
        """Stop our own tasks; guests keep running and the lease simply expires."""
        for task in self._tasks:
            task.cancel()
        pending = list(self.inflight.values())
        if pending:
            await asyncio.wait(pending, timeout=15)
        for task in [*self._tasks, *pending]:
            task.cancel()
        for driver in self.drivers.values():
            with contextlib.suppress(Exception):
                await driver.close()

    async def _announce(self) -> None:
        alive = HostAlive(host=self.host, pid=os.getpid(), started_at=time.time(), drivers=tuple(sorted(self.drivers)))
        await put(self.store, self.keys.alive(), alive, lease=self.lease)

    async def _keepalive_loop(self) -> None:
        while True:
            await asyncio.sleep(max(self.lease_ttl / 3, 0.2))
            try:
                if self.lease is not None and await self.store.keepalive(self.lease):
                    continue
                self.log.warning("lease lost; taking a new one and re-checking guest locks")
                self.lease = await self.store.grant_lease(self.lease_ttl)
                await self._announce()
                for driver in self.drivers.values():
                    for name in await driver.list_guests():
                        with contextlib.suppress(GuestNotFound):
                            if (await driver.status(name)).state is GuestState.RUNNING:
                                await self._hold_or_yield(name, driver)
            except StoreError as exc:
                self.log.warning("keepalive failed: %s", exc)
            except (DriverError, RecordError) as exc:  # a guest's driver or record: the next round retries
                self.log.error("keepalive round failed: %s", exc)

    async def _hold_or_yield(self, name: str, driver: Driver) -> None:
        """Keep the lock of a guest running here; if another host holds it, that copy wins: stop ours."""
        assert self.lease is not None
        holder = await records.acquire_runner(self.store, self.keys, name, self.lease)
        if holder is not None and holder != "contention":
            self.log.error("guest %s runs here but host %s holds its lock: stopping our copy", name, holder)
            self.notes[name] = {"note": f"stopped: host {holder} holds the guest's lock"}
            await driver.stop(name, timeout=self.policy.stop_timeout)

    def _tracked_op(self, key: str) -> bool:
        return key[len(self.keys.ops_prefix):] in self.migration_ids.values()

    async def _watch_loop(self, prefix: str, matters: Callable[[str], bool]) -> None:
        """Wake the loop on changes that matter (desired records, our migrations), not on observed writes."""
        while True:
            try:
                async with self.store.watch(prefix) as events:
                    async for event in events:
                        if matters(event.key):
                            self._wake.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the store went away or history was compacted: re-watch
                self.log.debug("watch on %s ended: %s", prefix, exc)
            await asyncio.sleep(self.interval)

    # ------------------------------------------------------------------ one pass

    async def observe(self) -> tuple[dict[str, tuple[str, GuestStatus]], dict[str, GuestDefinition]]:
        self._unknown = set()
        observed: dict[str, tuple[str, GuestStatus]] = {}
        applied: dict[str, GuestDefinition] = {}
        for kind, driver in self.drivers.items():
            for name in await driver.list_guests():
                if name in self.inflight and name in self._last_status:
                    # An operation is running on this guest: don't open a second control channel
                    # (QMP takes one client at a time); report what we saw before it started.
                    observed[name] = (kind, self._last_status[name])
                    continue
                try:
                    observed[name] = (kind, await driver.status(name))
                    self._last_status[name] = observed[name][1]
                    if str(self.notes.get(name, {}).get("note", "")).startswith("status failed"):
                        self.notes[name].pop("note")
                except GuestNotFound:
                    self.log.debug("%s listed by the %s driver but gone when asked", name, kind)
                    continue
                except DriverError as exc:
                    # Unknown is not absent: never (re)create a guest we merely failed to look at.
                    self.notes.setdefault(name, {})["note"] = f"status failed: {exc.reason}"
                    self._unknown.add(name)
                    continue
                with contextlib.suppress(NotSupported, GuestNotFound):
                    applied[name] = await driver.definition(name)
        return observed, applied

    async def reconcile_once(self) -> list[rc.Action]:
        now = self.clock()
        pass_start = self._completions
        # Desired records first, migrations second: an operation only moves forward, so its step is
        # at least as new as the record that names it (the controller rewrites it only after done).
        guests = await records.read_guests(self.store, self.keys)
        involved, unreadable = guests.involving(self.host), guests.unreadable
        migrations = await self._read_migrations(involved)
        desired: dict[str, GuestDefinition] = {}
        for name, record in involved.items():
            effective = mig.effective_desired(record, migrations.get(name))
            if effective is not None and effective.host == self.host:
                desired[name] = effective
        handed_away = {name for name, m in migrations.items()
                       if m.source == self.host and m.step in mig.HANDED_OVER and name not in desired}
        for name in handed_away:
            self._written.pop(name, None)  # the destination reports it now: leave our last record alone
        locks = guests.runners
        epochs = await records.read_epochs(self.store, self.keys)
        observed, applied = await self.observe()
        self._forget_migrations(involved, desired, observed, migrations)
        views: dict[str, rc.GuestView] = {}
        for name in sorted(set(involved) | set(observed)):
            if name in self.inflight or name in self._unknown:
                continue
            status = observed[name][1] if name in observed else None
            if status is not None and status.state is GuestState.RUNNING and name in self.retry:
                running_for = now - (status.started_at or now)
                self.retry[name] = rc.record_success(self.retry[name], running_for=running_for, policy=self.policy)
            views[name] = rc.GuestView(
                name=name,
                desired=involved.get(name),
                observed=status,
                applied=applied.get(name),
                retry=self.retry.get(name, rc.RetryState()),
                current_epoch=epochs.get(name),
                lock_holder=locks[name][0] if name in locks else None,
                migration=migrations.get(name),
            )
        caps = {kind: type(driver).capabilities for kind, driver in self.drivers.items()}
        actions = rc.reconcile(self.host, views, caps, now=now, policy=self.policy)
        self._seen_desired.update(desired)
        if not guests.desired:
            # An empty store (wrong --store or --cluster?) must not wipe guests we adopted but never
            # saw desired: only guests once desired in this agent's life are removed then.
            kept = [a for a in actions
                    if not (isinstance(a, rc.Destroy | rc.DropIncoming) and a.name not in self._seen_desired)]
            if len(kept) != len(actions):
                self.log.warning("the store has no desired guests for cluster %s: not removing %d adopted guest(s)",
                                 self.keys.cluster, len(actions) - len(kept))
            actions = kept
        by_guest: dict[str, list[rc.Action]] = {}
        for action in actions:
            by_guest.setdefault(_guest_of(action), []).append(action)
        for name, guest_actions in by_guest.items():
            if isinstance(guest_actions[0], rc.Spawn):
                self.log.debug("spawn %s: observed=%s inflight=%s unknown=%s",
                               name, sorted(observed), sorted(self.inflight), sorted(self._unknown))
            if self._finished.get(name, -1) >= pass_start:
                continue  # a task on this guest ended while we were reading: our view of it is stale
            self._dispatch(name, guest_actions, observed.get(name, (None, None))[0], now)
        for name in [n for n in self._held if n not in by_guest]:
            self._unhold(name)
        for name, reason in unreadable.items():
            self.notes[name] = {"failure_reason": reason, "state": "failed"}
        await self._write_observed(desired, observed, set(unreadable), guests.observed_hosts, now, handed_away)
        self.passes += 1
        return actions

    async def _read_migrations(self, involved: Mapping[str, GuestDefinition]) -> dict[str, mig.MigrationView]:
        """guest → the step of the migration it is in here: the one its record names, else the one
        this host still takes part in (the destination finishing after the controller's rewrite)."""
        for name, d in involved.items():
            if d.migrate_to is not None and d.migration_id is not None:
                self.migration_ids[name] = d.migration_id
        found = {}
        for name, op_id in sorted(self.migration_ids.items()):
            m = await self.migrator.load(op_id)
            if m is not None and m.body.guest == name:
                found[name] = m.view
        return found

    def _forget_migrations(self, involved: Mapping[str, GuestDefinition], desired: Mapping[str, GuestDefinition],
                           observed: Mapping[str, tuple[str, GuestStatus]],
                           migrations: Mapping[str, mig.MigrationView]) -> None:
        """Keep a migration while its record names it, while we (its destination) still have to
        finish the guest, or while we (its source) still have the guest's old copy to remove."""
        for name, op_id in list(self.migration_ids.items()):
            m = migrations.get(name)
            keep = (name in involved and involved[name].migration_id == op_id) or m is not None and (
                (m.destination == self.host and m.step == mig.DONE and name in desired)
                or (m.source == self.host and m.step in mig.HANDED_OVER and name in observed and name not in desired))
            if not keep:
                del self.migration_ids[name]

    def _dispatch(self, name: str, actions: list[rc.Action], kind: str | None, now: float) -> None:
        first = actions[0]
        if isinstance(first, rc.Hold):
            if self._held.get(name) != first.reason:
                self.log.warning("%s: %s", name, first.reason)
            self._held[name] = first.reason
            self.notes[name] = {"note": first.reason}
            return
        self._unhold(name)
        if isinstance(first, rc.RefuseStale):
            self.notes[name] = {"state": "failed", "failure_reason":
                                f"refused to start: desired record has fencing epoch {first.record_epoch}, "
                                f"the guest's current epoch is {first.current_epoch} (stale record)"}
            return
        if isinstance(first, rc.Blocked):
            self.notes[name] = {"state": "pending", "note": f"waiting: host {first.holder} holds the guest's lock"}
            return
        if isinstance(first, rc.GiveUp):
            self.notes[name] = {"state": "failed", "failure_reason": first.reason}
            return
        if isinstance(first, rc.Wait):
            self.notes[name] = {"state": "failed", "failure_reason": first.reason, "next_attempt_at": first.until}
            return
        if isinstance(first, rc.Unsupported):
            self.notes[name] = {"note": f"not done: the driver cannot do {first.operation}"}
            return
        task = asyncio.create_task(self._apply(name, actions, kind), name=f"guest-{name}")
        self.inflight[name] = task
        task.add_done_callback(functools.partial(self._done, name))

    def _unhold(self, name: str) -> None:
        """No longer held back: the note that said why goes too."""
        reason = self._held.pop(name, None)
        if reason is not None and self.notes.get(name, {}).get("note") == reason:
            self.notes[name].pop("note")

    def _done(self, name: str, _task: asyncio.Task[None]) -> None:
        self._finished[name] = self._completions
        self._completions += 1
        self.inflight.pop(name, None)
        self._wake.set()

    def _driver(self, kind: str | None) -> Driver:
        if kind is None or kind not in self.drivers:
            raise DriverError(f"no driver for {kind} guests on this host")
        return self.drivers[kind]

    async def _apply(self, name: str, actions: list[rc.Action], observed_kind: str | None) -> None:
        for action in actions:
            try:
                await self._apply_one(name, action, observed_kind)
            except DriverError as exc:
                self.log.warning("%s: %s failed: %s", name, type(action).__name__, exc.reason)
                self.notes.setdefault(name, {})["note"] = f"{type(action).__name__} failed: {exc.reason}"
            except StoreError as exc:
                self.log.warning("%s: store error during %s: %s", name, type(action).__name__, exc)
            except Exception:  # a bug must not take the agent down with it
                self.log.exception("%s: %s crashed", name, type(action).__name__)

    async def _apply_one(self, name: str, action: rc.Action, observed_kind: str | None) -> None:
        if isinstance(action, rc.Spawn | rc.Start | rc.Respawn):
            await self._start(action)
        elif isinstance(action, rc.Stop):
            await self._driver(observed_kind).stop(name, timeout=action.timeout)
            await records.release_runner(self.store, self.keys, name)
        elif isinstance(action, rc.Destroy):
            driver = self._driver(observed_kind)
            with contextlib.suppress(GuestNotFound):
                await driver.stop(name, timeout=action.timeout)
            await driver.destroy(name)
            await records.release_runner(self.store, self.keys, name)
            await self._delete_observed(name)
            self.retry.pop(name, None)
            self.notes.pop(name, None)
            self.log.info("destroyed %s: %s", name, action.reason)
        elif isinstance(action, rc.SetVcpus):
            await self._driver(observed_kind).set_vcpus(name, action.vcpus)
            self.log.info("%s: vCPUs now %d (live)", name, action.vcpus)
        elif isinstance(action, rc.SetMemory):
            await self._driver(observed_kind).set_memory(name, action.memory)
            self.log.info("%s: memory now %d bytes (live)", name, action.memory)
        elif isinstance(action, rc.AttachVnic):
            await self._driver(observed_kind).attach_vnic(name, action.vnic)
        elif isinstance(action, rc.DetachVnic):
            await self._driver(observed_kind).detach_vnic(name, action.mac)
        elif isinstance(action, rc.Migrate):
            await self._migrate(action, self._driver(observed_kind))
        elif isinstance(action, rc.PrepareIncoming):
            await self.migrator.prepare(action.migration_id)
        elif isinstance(action, rc.FinishIncoming):
            await self.migrator.finish(name, action.migration_id)
            self.retry.pop(name, None)
        elif isinstance(action, rc.FailMigration):
            await self.migrator.fail(action.migration_id, action.reason)
        elif isinstance(action, rc.DropIncoming):
            await self.migrator.drop(name, self._driver(observed_kind))
            self.log.info("dropped the incoming copy of %s: %s", name, action.reason)

    async def _start(self, action: rc.Spawn | rc.Start | rc.Respawn) -> None:
        d = action.definition
        driver = self._driver(d.kind)
        assert self.lease is not None
        holder = await records.acquire_runner(self.store, self.keys, d.name, self.lease)
        if holder is not None:
            self.notes[d.name] = {"state": "pending", "note": f"waiting: host {holder} holds the guest's lock"}
            return
        try:
            if isinstance(action, rc.Respawn):
                await driver.destroy(d.name)
            if isinstance(action, rc.Start):
                await driver.start(d.name)
            else:
                await driver.spawn(d)
        except DriverError as exc:
            permanent = bool(getattr(exc, "permanent", False))
            self.retry[d.name] = rc.record_failure(
                self.retry.get(d.name, rc.RetryState()), now=self.clock(), reason=exc.reason,
                fp=rc.attempt_key(d), policy=self.policy, permanent=permanent,
            )
            self.notes[d.name] = {"state": "failed", "failure_reason": exc.reason}
            await records.release_runner(self.store, self.keys, d.name)
            self.log.warning("%s did not start (%s attempt %d): %s", d.name, "permanent," if permanent else "",
                        self.retry[d.name].attempts, exc.reason)
            return
        self.notes.pop(d.name, None)
        self.log.info("%s started (%s)", d.name, action.reason)

    async def _migrate(self, action: rc.Migrate, driver: Driver) -> None:
        """Source: one attempt per operation (a failed one is final; the controller asks again
        with a new id if it wants)."""
        d, op_id = action.definition, action.migration_id
        try:
            result = await self.migrator.migrate_out(d, action.destination, op_id, driver)
        except DriverError as exc:
            self.log.warning("%s: migration %s to %s failed: %s", d.name, op_id, action.destination, exc.reason)
            self.notes[d.name] = {"note": f"migration {op_id} to {action.destination} failed: {exc.reason}"}
            return
        self.notes[d.name] = {"note": f"migrated to {action.destination} ({op_id})", "migration": result}

    # ------------------------------------------------------------- observed state

    def _record(self, name: str, desired: GuestDefinition | None, kind: str | None,
                status: GuestStatus | None, now: float) -> dict[str, Any]:
        note = self.notes.get(name, {})
        if status is not None:
            rec = status.to_dict()
        else:
            absent = GuestState.PENDING if desired is None or desired.running else GuestState.STOPPED
            rec = {"name": name, "state": note.get("state", absent.value)}
        if status is None or status.state is not GuestState.RUNNING:
            for field in ("failure_reason", "next_attempt_at"):
                if field in note:
                    rec[field] = note[field]
            if status is not None and status.state is GuestState.STOPPED and note.get("state") == "failed":
                rec["state"] = "failed"
        retry = self.retry.get(name)
        rec.update({
            "host": self.host,
            "kind": desired.kind if desired else kind,
            "fencing_epoch": desired.fencing_epoch if desired else None,
            "desired_running": desired.running if desired else False,
            "desired_vcpus": desired.vcpus if desired else None,
            "desired_memory": desired.memory if desired else None,
            "attempts": retry.attempts if retry else 0,
            "gave_up": retry.gave_up if retry else False,
            "note": note.get("note"),
            "updated_at": now,
        })
        if "migration" in note:
            rec["migration"] = note["migration"]
        return rec

    async def _write_observed(self, desired: Mapping[str, GuestDefinition],
                              observed: Mapping[str, tuple[str, GuestStatus]], unreadable: set[str],
                              owners: Mapping[str, str | None], now: float, handed_away: set[str]) -> None:
        # A guest's observed record belongs to the host that runs it: we write those desired here, and
        # leftovers here only while no other host reports on them — never one we migrated away.
        names = set(desired) | unreadable | {
            n for n in observed if owners.get(n) in (None, self.host) and n not in handed_away
            and observed[n][1].state is not GuestState.INCOMING
        }
        for name in sorted(names):
            kind, status = observed.get(name, (None, None))
            rec = self._record(name, desired.get(name), kind, status, now)
            stable = {k: v for k, v in rec.items() if k not in VOLATILE}
            last = self._written.get(name)
            if last is not None and last[0] == stable and now - last[1] < self.observed_every:
                continue
            revision = await put(self.store, self.keys.observed(name), ObservedGuestRecord.model_validate(rec))
            self._written[name] = (stable, now, revision)
        for name in list(self._written):
            if name not in names:
                await self._delete_observed(name)
        if now - self._usage_written >= self.observed_every:
            statuses = [s for _, s in observed.values()]
            usage = self._usage.sample(desired.values(), statuses)
            running = sorted(n for n, (_, s) in observed.items() if s.state is GuestState.RUNNING)
            await records.merge_host_observed(self.store, self.keys, {"usage": usage, "guests": running})
            self._usage_written = now

    async def _delete_observed(self, name: str) -> None:
        """Delete our observed record only if it is still the one we wrote (another host may own it now)."""
        last = self._written.pop(name, None)
        if last is not None:
            key = self.keys.observed(name)
            await self.store.txn([Compare.mod_revision(key, last[2])], [Op.delete(key)])


def _guest_of(action: rc.Action) -> str:
    definition = getattr(action, "definition", None)
    if definition is not None:
        return str(definition.name)
    return str(action.name)  # type: ignore[union-attr]
