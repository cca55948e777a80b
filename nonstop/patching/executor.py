"""The rolling-patch executor: runs the core step machine against the real cluster, persisting
every step in the store so a killed patcher resumes where it was.

Role: ``Patcher(store, cluster, balancers=...)``:
- ``plan(target, hosts, max_unavailable)``: the pure planner on a fresh snapshot;
- ``start(...)`` stores a new rollout, an operation of kind ``patch-rollout`` at ``ops/<id>``
  with a generated id (refused while the current one — the newest of that kind — is running or
  failed: resume or abort it first);
- ``run()`` holds ``op-control/<id>/lock`` on a lease (one patcher at a time; a killed one's lock goes
  with its lease), then loops: ``transition(rollout, observation, now)`` → persist → run the steps
  it asks for (hosts of one batch concurrently) → feed each result back;
- ``resume()`` / ``abort()``: the operator's observations (an abort reaches a running patcher in
  any process through ``op-control/<id>/abort``).

The patcher never writes guest placement or host state: it asks the controller with intents
(nonstop/store/intents.py, requester ``patcher``) and waits for their outcome; a refusal fails the
step with the controller's message. Per-host step procedures are idempotent (a resumed step runs
again from its beginning): precheck (controller alive and fresh, cluster healthy,
``check_batch``), enter-maintenance (a ``maintenance`` intent with ``evacuate: false``, then wait
until the controller reports the host in maintenance — from then on it never fences or fails the
host over), drain (backends of the host's guests set ``drain`` on every balancer, in-flight
requests finish), evacuate (one guest at a time: drained, a ``migrate`` intent with
``avoid=host``, wait until it runs on the target the controller chose and serves), patch (request
through the agent, wait for the result), await-agent (the agent re-executed, reports the target
level and its version), postcheck (a self-test guest boots on the host), exit-maintenance (an
intent to leave, then wait until the controller hears the host on every link), failback (per
``policies.ha.failback``: ``manual`` leaves guests where they are, ``auto`` asks for the evacuated
ones back home, ``balanced`` asks for the moves of the controller's rebalance plan).

Must not: decide order, batches or safety (nonstop/core/patching does), choose evacuation targets
(the controller does), write ``guests/*/desired`` or ``hosts/*/desired``, or run anything on a
host itself (the agent does).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from nonstop.core.controller.placing import rebalance_moves
from nonstop.core.patching.planner import RolloutPlan, check_batch, plan_rollout
from nonstop.core.patching.steps import (
    KIND,
    Abort,
    Finished,
    Moved,
    Observation,
    Resume,
    Rollout,
    RolloutStatus,
    RunStep,
    StaleResult,
    Step,
    StepResult,
    Tick,
    new_rollout,
    transition,
)
from nonstop.patching import cluster as pc
from nonstop.store import keys, operations
from nonstop.store.base import Compare, Store
from nonstop.store.events import EventLog
from nonstop.store.intents import IntentKind, IntentOutcome
from nonstop.store.lease import LeaseKeeper
from nonstop.store.operations import OperationRecord
from nonstop.store.records import AbortRequest, HostPatch, PatcherLock, put, put_op, read_or_none

log = logging.getLogger("nonstop.patching")

Progress = Callable[[Rollout, str], None]
REQUESTER = "patcher"


class RolloutError(Exception):
    pass


class Patcher:
    def __init__(self, store: Store, cluster: str, *, balancers: dict[str, str] | None = None,
                 step_timeout: float = 90.0, drain_timeout: float = 10.0, progress: Progress | None = None,
                 patcher_id: str = "patcher") -> None:
        self.store, self.cluster = store, cluster
        self.balancers = pc.Balancers(balancers or {})
        self.step_timeout, self.drain_timeout = step_timeout, drain_timeout
        self.progress = progress or (lambda _r, text: log.info("%s", text))
        self.events = EventLog(store, cluster)
        self.id = patcher_id
        self.rollout: Rollout | None = None
        self._lock = asyncio.Lock()

    # ------------------------------------------------------------------ records

    async def load(self, rollout_id: str | None = None) -> Rollout | None:
        """Rollout ``rollout_id``, or the current one: the newest operation of kind ``patch-rollout``."""
        record = (await operations.load(self.store, self.cluster, rollout_id) if rollout_id
                  else await pc.latest(self.store, self.cluster, KIND))
        return Rollout.from_body(record.header, record.body) if record is not None and record.kind == KIND else None

    async def _save(self, rollout: Rollout) -> None:
        await operations.save(self.store, self.cluster, OperationRecord.of(rollout.header, rollout.body()))

    async def lock_holder(self, rollout: Rollout) -> PatcherLock | None:
        """Who runs ``rollout`` right now (``op-control/<id>/lock``), or None."""
        return await read_or_none(self.store, keys.op_lock(self.cluster, rollout.header.id), PatcherLock)

    async def plan(self, target: str, hosts: list[str] | None = None, max_unavailable: int = 1) -> RolloutPlan:
        snap = await pc.snapshot(self.store, self.cluster)
        return plan_rollout(snap.spec, snap.assignments(), snap.conditions(), snap.levels(), target,
                            hosts=hosts, max_unavailable=max_unavailable)

    async def start(self, target: str, *, hosts: list[str] | None = None, max_unavailable: int = 1,
                    command: str | None = None, restart_agent: bool = True, timeout: float = 120.0) -> Rollout:
        current = await self.load()
        if current is not None and current.status in (RolloutStatus.RUNNING, RolloutStatus.FAILED):
            raise RolloutError(f"rollout {current.header.id} to {current.target} is {current.status.value}: "
                               "resume or abort it first")
        plan = await self.plan(target, hosts, max_unavailable)
        if not plan.ok:
            raise RolloutError("the planner refuses: " + "; ".join(plan.refused))
        snap = await pc.snapshot(self.store, self.cluster)
        rollout = new_rollout(operations.new_op_id(KIND), target, plan.batches, time.time(), levels=snap.levels(),
                              command=command, restart_agent=restart_agent, timeout=timeout,
                              max_unavailable=max_unavailable,
                              reason=f"patch {', '.join(h for b in plan.batches for h in b)} to {target} ({self.id})")
        await self._save(rollout)
        await self.events.emit("patch-rollout", self.cluster, f"rollout {rollout.header.id} to {target} planned: "
                               + " | ".join(",".join(b) for b in plan.batches), batches=[list(b) for b in plan.batches])
        return rollout

    async def resume(self) -> Rollout:
        rollout = await self._require()
        failed = rollout.failed_hosts()
        hosts = dict(rollout.hosts)
        for host in failed:  # a retried patch is a new request to the agent
            if hosts[host].failed_step is Step.PATCH:
                hosts[host] = replace(hosts[host], attempt=hosts[host].attempt + 1)
        rollout, _ = transition(replace(rollout, hosts=hosts), Resume(), time.time())
        await self._save(rollout)
        await self.events.emit("patch-resumed", self.cluster, f"rollout {rollout.header.id} resumed"
                               + (f" ({', '.join(failed)} retried)" if failed else ""))
        return rollout

    async def abort(self, wait: float = 60.0) -> Rollout:
        """End the rollout, leaving the cluster serving. When a patcher is running it (its lock is
        held), ask it through ``op-control/<id>/abort`` and wait until it has stopped its steps and
        recorded the abort (it may live in another process); otherwise abort the record here."""
        rollout = await self._require()
        if rollout.status in (RolloutStatus.COMPLETE, RolloutStatus.ABORTED):
            raise RolloutError(f"rollout {rollout.header.id} is already {rollout.status.value}")
        if await self.lock_holder(rollout) is None:
            return await self._apply_abort(rollout)
        await put(self.store, keys.op_abort(self.cluster, rollout.header.id), AbortRequest(requested_at=time.time()))
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            current = await self._require(rollout.header.id)
            if current.status is RolloutStatus.ABORTED:
                return current
            if await self.lock_holder(current) is None:  # it ended without seeing the request
                return await self._apply_abort(current)
        raise RolloutError(f"the patcher running rollout {rollout.header.id} did not stop within {wait:.0f} s; "
                           "the abort stays requested")

    async def _apply_abort(self, rollout: Rollout) -> Rollout:
        """Hosts that were not patched yet, or are patched and verified, leave maintenance; a host
        whose patch failed or was cut short stays in maintenance for the operator (its guests are
        elsewhere, so the cluster keeps serving)."""
        snap = await pc.snapshot(self.store, self.cluster)
        leave = (Step.PRECHECK, Step.ENTER_MAINTENANCE, Step.DRAIN, Step.EVACUATE, Step.EXIT_MAINTENANCE,
                 Step.FAILBACK)
        for host, p in rollout.hosts.items():
            step = p.failed_step if p.step is Step.FAILED else p.step
            if step in leave and snap.conditions().get(host) == "maintenance":
                try:  # the controller acts on the intent whenever it can; the abort does not wait longer
                    await self._ask("maintenance", f"patch {rollout.header.id} aborted", timeout=10.0, host=host,
                                    enter=False)
                except pc.IntentFailed as exc:
                    self.progress(rollout, f"{host}: leaving maintenance: {exc}")
        rollout, _ = transition(rollout, Abort(), time.time())
        await self._save(rollout)
        await self.store.delete(keys.op_abort(self.cluster, rollout.header.id))
        await self.events.emit("patch-aborted", self.cluster, f"rollout {rollout.header.id} aborted")
        self.rollout = rollout
        return rollout

    async def _require(self, rollout_id: str | None = None) -> Rollout:
        rollout = await self.load(rollout_id)
        if rollout is None:
            raise RolloutError(f"no rollout {rollout_id} in the store" if rollout_id else "no rollout in the store")
        return rollout

    # ------------------------------------------------------------------ the loop

    async def run(self) -> Rollout:
        """Run the current rollout to its end (or its failure, or an abort)."""
        rollout = await self._require()
        lock = keys.op_lock(self.cluster, rollout.header.id)
        async with LeaseKeeper(self.store, 5) as lease:
            while True:
                got = await self.store.txn([Compare.missing(lock)],
                                           [put_op(lock, PatcherLock(patcher=self.id), lease=lease.id)])
                if got.succeeded:
                    break
                self.progress(rollout, "another patcher holds the rollout; waiting for its lease")
                await asyncio.sleep(1.0)
            try:
                return await self._loop(rollout.header.id)
            finally:
                with contextlib.suppress(Exception):
                    await self.store.delete(lock)

    async def _observe(self, obs: Observation) -> tuple[Rollout, tuple[Any, ...]]:
        async with self._lock:
            assert self.rollout is not None
            self.rollout, actions = transition(self.rollout, obs, time.time())
            await self._save(self.rollout)
            return self.rollout, actions

    async def _abort_requested(self) -> bool:
        assert self.rollout is not None
        return await self.store.get(keys.op_abort(self.cluster, self.rollout.header.id)) is not None

    async def _loop(self, rollout_id: str) -> Rollout:
        self.rollout = await self._require(rollout_id)  # as it is now that the lock is held
        if self.rollout.status in (RolloutStatus.COMPLETE, RolloutStatus.ABORTED):
            return self.rollout
        if await self._abort_requested():
            return await self._apply_abort(self.rollout)
        rollout, actions = await self._observe(Tick())
        tasks: dict[str, asyncio.Task[None]] = {}
        finished: Finished | None = None
        while True:
            for action in actions:
                if isinstance(action, RunStep):
                    if action.host in tasks and not tasks[action.host].done():
                        continue
                    tasks[action.host] = asyncio.create_task(self._host(action.host), name=f"patch-{action.host}")
                elif isinstance(action, Finished):
                    finished = action
            live = [t for t in tasks.values() if not t.done()]
            if not live:
                break
            await asyncio.wait(live, timeout=0.5, return_when=asyncio.FIRST_COMPLETED)
            if await self._abort_requested():
                # Stop every step where it is (each is idempotent and leaves the cluster serving:
                # a live migration under way is finished by the agents), then record the abort.
                for task in live:
                    task.cancel()
                await asyncio.gather(*live, return_exceptions=True)
                self.progress(self.rollout, "abort requested: steps stopped")
                rollout = await self._apply_abort(self.rollout)
                self.progress(rollout, "rollout aborted")
                return rollout
            ended = [host for host, task in tasks.items() if task.done()]
            for host in ended:
                tasks.pop(host).result()
            actions = (await self._observe(Tick()))[1] if ended else ()
        assert self.rollout is not None
        if finished is not None or self.rollout.status is not RolloutStatus.RUNNING:
            text = finished.reason if finished else self.rollout.status.value
            await self.events.emit(f"patch-{self.rollout.status.value}", self.cluster,
                                   f"rollout {self.rollout.header.id}: {text}")
            self.progress(self.rollout, f"rollout {self.rollout.status.value}: {text}")
        return self.rollout

    async def _host(self, host: str) -> None:
        """Run the host's steps until it is done, failed or aborted."""
        while True:
            assert self.rollout is not None
            progress = self.rollout.hosts[host]
            step = progress.step
            if step in (Step.DONE, Step.FAILED, Step.ABORTED, Step.PENDING):
                return
            self.progress(self.rollout, f"{host}: {step.value}")
            try:
                result = await asyncio.wait_for(self._step(host, step), self._timeout(step))
            except TimeoutError:
                result = StepResult(host, step, ok=False, error=f"{step.value} did not finish in "
                                    f"{self._timeout(step):.0f} s")
            except (RolloutError, pc.IntentFailed) as exc:
                result = StepResult(host, step, ok=False, error=str(exc))
            except Exception as exc:  # a step that raised is a failed step, with the reason
                log.exception("%s: step %s raised", host, step.value)
                result = StepResult(host, step, ok=False, error=f"{step.value}: {exc!r}")
            try:
                rollout, _ = await self._observe(result)
            except StaleResult:
                return
            p = rollout.hosts[host]
            if result.ok:
                await self.events.emit("patch-step", host, f"{step.value} done", step=step.value,
                                       rollout=rollout.header.id)
            else:
                await self.events.emit("patch-failed", host, f"{step.value} failed: {result.error}",
                                       step=step.value, output=result.output, rollout=rollout.header.id)
                self.progress(rollout, f"{host}: {step.value} FAILED: {result.error}")
            if p.step is not step and p.step is Step.DONE:
                self.progress(rollout, f"{host}: done ({p.level_before} -> {p.level_after})")

    def _timeout(self, step: Step) -> float:
        assert self.rollout is not None
        if step is Step.PATCH:
            return self.rollout.timeout + 30.0
        return self.step_timeout

    # ------------------------------------------------------------------ steps

    async def _step(self, host: str, step: Step) -> StepResult:
        procedure = {
            Step.PRECHECK: self._precheck, Step.ENTER_MAINTENANCE: self._enter, Step.DRAIN: self._drain,
            Step.EVACUATE: self._evacuate, Step.PATCH: self._patch, Step.AWAIT_AGENT: self._await_agent,
            Step.POSTCHECK: self._postcheck, Step.EXIT_MAINTENANCE: self._exit, Step.FAILBACK: self._failback,
        }[step]
        return await procedure(host)

    async def _wait(self, what: str, predicate: Callable[[pc.Snapshot], bool], timeout: float) -> pc.Snapshot:
        deadline = time.monotonic() + timeout
        while True:
            snap = await pc.snapshot(self.store, self.cluster)
            if predicate(snap):
                return snap
            if time.monotonic() > deadline:
                raise RolloutError(f"timed out after {timeout:.0f} s waiting for {what}")
            await asyncio.sleep(0.2)

    def _batch_of(self, host: str) -> tuple[str, ...]:
        assert self.rollout is not None
        return next(b for b in self.rollout.batches if host in b)

    async def _precheck(self, host: str) -> StepResult:
        batch = self._batch_of(host)
        reasons: list[str] = []
        deadline = time.monotonic() + 30.0
        while True:  # a host that just returned from the previous batch may need a moment
            snap = await pc.snapshot(self.store, self.cluster)
            now = time.time()
            reasons = []
            if not snap.controller_fresh(now):
                reasons.append("the controller is not running (no fresh status in the leader record)")
            if host not in snap.alive:
                reasons.append(f"the agent of {host} is not alive")
            conditions = {h: ("up" if c == "up" else c) for h, c in snap.conditions().items()}
            check = check_batch(snap.spec, snap.assignments(), conditions, batch, ignore=batch)
            reasons.extend(check.reasons)
            if not reasons or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        return StepResult(host, Step.PRECHECK, ok=not reasons, error="; ".join(reasons) or None,
                          level_before=snap.levels().get(host))

    async def _ask(self, kind: IntentKind, reason: str, timeout: float = pc.INTENT_TIMEOUT,
                   **fields: Any) -> IntentOutcome:
        return await pc.ask(self.store, self.cluster, kind, requester=REQUESTER, reason=reason, timeout=timeout,
                            **fields)

    async def _enter(self, host: str) -> StepResult:
        outcome = await self._ask("maintenance", f"patch {self._now().header.id}", host=host, enter=True,
                                  evacuate=False)
        await self._wait(f"the controller to put {host} in maintenance",
                         lambda s: s.in_maintenance(host), 20.0)
        return StepResult(host, Step.ENTER_MAINTENANCE, ok=True, output=outcome.message)

    async def _drain(self, host: str) -> StepResult:
        snap = await pc.snapshot(self.store, self.cluster)
        guests = snap.guests_on(host)
        drained = await self.balancers.set_state(guests, "drain")
        left = await self.balancers.wait_idle(guests, self.drain_timeout)
        note = f"drained {', '.join(drained) or 'nothing'}" + (f"; {left} request(s) still in flight" if left else "")
        return StepResult(host, Step.DRAIN, ok=True, output=note)

    async def _move_one(self, owner: str, step: Step, source: str, guest: str, *, target: str | None = None,
                        avoid: str | None = None, under_way: bool = False) -> tuple[str, str, str, str]:
        """Drain, ask the controller to move the guest (to ``target``, or anywhere but ``avoid``),
        record the move in the rollout (``Moved``) as soon as it is accepted — so a patcher killed
        while it is under way knows after the resume what to fail back — wait until the guest runs
        where the controller put it and serves, undrain. ``under_way``: a resumed step finds the
        live migration to ``target`` it asked for before it stopped; it is recorded and waited for,
        never asked again (the controller would refuse). A refusal or a failed move undrains the
        guest (it still runs where it was) and fails the step with the controller's words."""
        snap = await pc.snapshot(self.store, self.cluster)
        how = "live" if snap.desired[guest].kind == "vm" else "cold"
        await self.balancers.set_state([guest], "drain")
        await self.balancers.wait_idle([guest], self.drain_timeout)
        try:
            intent_id = None
            if under_way and target is not None:
                move = (guest, source, target, how)
            else:
                outcome = await self._ask("migrate", f"patch {self._now().header.id}: {step.value} {owner}",
                                          guest=guest, target=target, avoid=avoid, live=how == "live")
                intent_id = outcome.id
                move = (guest, outcome.source or source, outcome.target or target or source, how)
            if move[1] != move[2]:
                await self._observe(Moved(owner, step, move))
            await pc.wait_on(self.store, self.cluster, guest, move[2], timeout=self.step_timeout,
                             intent_id=intent_id, source=None if intent_id else source)
        except pc.IntentFailed:
            await self.balancers.set_state([guest], "ready")
            raise
        await self._serve(guest, snap)
        return move

    async def _serve(self, guest: str, snap: pc.Snapshot) -> None:
        """Undrain, and wait (20 s at most) until the balancers serve the guest again."""
        await self.balancers.set_state([guest], "ready")
        if self.balancers.admins and self._in_service(snap, guest):
            deadline = time.monotonic() + 20.0
            while not await self.balancers.serving(guest) and time.monotonic() < deadline:
                await self.balancers.set_state([guest], "ready")
                await asyncio.sleep(0.2)

    @staticmethod
    def _in_service(snap: pc.Snapshot, guest: str) -> bool:
        group = snap.desired[guest].group
        return any(s.backends is not None and s.backends.group == group for s in snap.spec.services)

    async def _evacuate(self, host: str) -> StepResult:
        """One guest at a time: a ``migrate`` intent with ``avoid=host``; the controller picks the
        target. A refusal ("no other host fits ...") fails the step with the controller's words."""
        moves: list[tuple[str, str, str, str]] = []
        while True:
            snap = await pc.snapshot(self.store, self.cluster)
            guests = snap.guests_on(host)
            if not guests:
                break
            guest = guests[0]
            in_flight = snap.desired[guest].migrate_to
            self.progress(self._now(), f"{host}: moving {guest} off" + (f" (to {in_flight})" if in_flight else ""))
            try:
                under_way = bool(in_flight) and in_flight != host
                moves.append(await self._move_one(host, Step.EVACUATE, host, guest, avoid=host, under_way=under_way,
                                                  target=in_flight if under_way else None))
            except pc.IntentFailed as exc:
                return StepResult(host, Step.EVACUATE, ok=False, error=f"cannot move {guest}: {exc}",
                                  moves=tuple(moves))
        return StepResult(host, Step.EVACUATE, ok=True, moves=tuple(moves))

    def _now(self) -> Rollout:
        assert self.rollout is not None
        return self.rollout

    def _request_id(self, host: str, kind: str) -> str:
        assert self.rollout is not None
        return f"{self.rollout.header.id}/{host}/{self.rollout.hosts[host].attempt}/{kind}"

    async def _command(self, host: str, kind: str, **kwargs: Any) -> HostPatch:
        request_id = self._request_id(host, kind)
        record: HostPatch | None = await pc.host_command(self.store, self.cluster, host, request_id, kind, **kwargs)
        final = ("done", "failed", "timeout", "restarting") if kind == "patch" else ("done", "failed")
        deadline = time.monotonic() + float(kwargs.get("timeout", 30.0)) + 30.0
        while record is None or record.state not in final:
            if time.monotonic() > deadline:
                raise RolloutError(f"the agent of {host} did not answer the {kind} request "
                                   f"(state {record.state if record else None})")
            await asyncio.sleep(0.2)
            record = await pc.read_command(self.store, self.cluster, host)
            if record is None or record.id != request_id:
                raise RolloutError(f"the {kind} request on {host} was replaced by {record.id if record else None}")
        return record

    async def _patch(self, host: str) -> StepResult:
        r = self.rollout
        assert r is not None
        record = await self._command(host, "patch", command=r.command, target=r.target, timeout=r.timeout,
                                     restart_agent=r.restart_agent)
        ok = record.state in ("done", "restarting")
        error = None if ok else str(record.error or record.state)
        return StepResult(host, Step.PATCH, ok=ok, error=error, output=record.output,
                          attempt=r.hosts[host].attempt)

    async def _await_agent(self, host: str) -> StepResult:
        r = self.rollout
        assert r is not None
        request_id = self._request_id(host, "patch")

        def back(s: pc.Snapshot) -> bool:
            obs = s.host_observed.get(host)
            return host in s.alive and obs is not None and obs.patch_level == r.target and bool(obs.agent_version)

        async def restarted() -> bool:
            record = await pc.read_command(self.store, self.cluster, host)
            return record is not None and record.id == request_id and record.state == "done"

        deadline = time.monotonic() + 60.0
        while not await restarted():
            if time.monotonic() > deadline:
                return StepResult(host, Step.AWAIT_AGENT, ok=False, error="the agent did not come back after the patch")
            await asyncio.sleep(0.2)
        snap = await self._wait(f"{host}'s agent reporting level {r.target}", back, 60.0)
        obs = snap.host_observed[host]
        return StepResult(host, Step.AWAIT_AGENT, ok=True, level_after=obs.patch_level,
                          output=f"agent {obs.agent_version} pid {obs.agent_pid} at {obs.patch_level}")

    async def _postcheck(self, host: str) -> StepResult:
        record = await self._command(host, "selftest", timeout=30.0)
        ok = record.state == "done"
        detail = (f"self-test guest booted in {record.boot_seconds} s (boot {record.boot_id})" if ok
                  else str(record.error))
        return StepResult(host, Step.POSTCHECK, ok=ok, error=None if ok else detail, output=detail)

    async def _exit(self, host: str) -> StepResult:
        rollout_id = self._now().header.id
        await self._ask("maintenance", f"patch {rollout_id} done", host=host, enter=False)
        try:
            await self._wait(f"the controller to hear {host} on every link", lambda s: (
                not s.in_maintenance(host) and s.verdict(host) == "up"),
                30.0)
        except RolloutError as exc:
            with contextlib.suppress(pc.IntentFailed):  # the step fails either way, with the links' reason
                await self._ask("maintenance", f"patch {rollout_id} post-check: links not all heard", host=host,
                                enter=True, evacuate=False)
            return StepResult(host, Step.EXIT_MAINTENANCE, ok=False, error=str(exc))
        return StepResult(host, Step.EXIT_MAINTENANCE, ok=True)

    async def _failback(self, host: str) -> StepResult:
        """``auto``: the guests this rollout moved off ``host`` and that are still where they went
        are asked back (explicit target ``host``); ``balanced``: the pure rebalance plan only
        chooses targets, the controller re-checks each one. A refusal fails the step."""
        snap = await pc.snapshot(self.store, self.cluster)
        policy = snap.spec.policies.ha.failback.value
        wanted: list[tuple[str, str]] = []
        if policy == "auto":
            wanted = [(g, src) for g, src, dst, _how in self._now().hosts[host].moves
                      if src == host and g in snap.desired and snap.desired[g].host == dst]
        elif policy == "balanced":
            wanted = list(rebalance_moves(snap.spec, snap.assignments(), snap.placement()).moves)
        moves = []
        for guest, target in wanted:
            current = (await pc.snapshot(self.store, self.cluster)).desired[guest].host
            if current != target:
                moves.append(await self._move_one(host, Step.FAILBACK, current, guest, target=target))
        note = f"policy {policy}: " + (", ".join(f"{g} -> {t} ({how})" for g, _s, t, how in moves) or "nothing moved")
        return StepResult(host, Step.FAILBACK, ok=True, output=note, moves=tuple(moves))


__all__ = ["REQUESTER", "Patcher", "RolloutError"]
