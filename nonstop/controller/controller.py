"""The controller's shell: read the cluster, call ``decide``, apply the commands — in a loop.

Role: one leading process per cluster (``nonstop controller --store URL --cluster NAME``; any
other stands by, leadership.py). Once elected it
- keeps an informer cache of the cluster's records (list once, watch from that revision;
  nonstop/store/cache.py) and runs the ``HeartbeatMonitor`` (UDP, φ per host per link);
- every ``tick``, and at once when a record changes or a host changes state, runs one pass:
  build the typed view (reader.py), observe readiness, call the pure
  ``decide(view, memory, intents, now)`` (nonstop/core/controller/decide.py), apply its commands
  (apply.py: leader-guarded store transactions, balancer calls, fences) and persist the
  controller's memory (``controller/memory``) when it changed, so a successor resumes failback
  windows and flap memory exactly;
- publishes its status in the ``leader`` record every second.

Every decision — host conditions, failover, guest failures, evacuation, failback, intents,
backends — is made in the core; this module has none.

Must not: decide anything, or write a record except through the applier.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from nonstop.controller.apply import Applier
from nonstop.controller.endpoints import Endpoint, host_links
from nonstop.controller.fencing import FenceRunner
from nonstop.controller.lbsync import LbSync
from nonstop.controller.leadership import LeaderGuardedStore, NotLeader, campaign, leader_lease_ttl
from nonstop.controller.reader import build_view, observe_readiness
from nonstop.controller.readiness import ReadinessGate
from nonstop.core.controller.decide import decide
from nonstop.core.controller.memory import ControllerMemory
from nonstop.core.ha.liveness import HostState, Transition, liveness_config
from nonstop.core.spec import ClusterSpec
from nonstop.ha.monitor import HeartbeatMonitor
from nonstop.store import cluster_records, keys
from nonstop.store.base import Store, StoreError, encode_json
from nonstop.store.cache import StoreCache
from nonstop.store.cluster_records import ClusterRecords
from nonstop.store.events import EventLog
from nonstop.store.lease import LeaseKeeper
from nonstop.store.records import HeartbeatEndpoint, LeaderRecord, put
from nonstop.store.state import get_spec
from nonstop.vital import vital

log = logging.getLogger("nonstop.controller")

__all__ = ["Controller", "Endpoint"]


class Controller:
    def __init__(self, store: Store, cluster: str, *, key: bytes, endpoints: list[Endpoint],
                 balancers: dict[str, str] | None = None, bmcs: dict[str, str] | None = None,
                 bmc_password_file: Path | None = None, fence_timeout: float = 5.0, tick: float = 0.2,
                 serving_timeout: float = 60.0, startup_grace: float = 5.0, controller_id: str | None = None,
                 step_pause: float = 0.0) -> None:
        self.raw_store = store
        self.store = LeaderGuardedStore(store, keys.leader(cluster))
        """Every write of this controller runs through it: refused once another controller leads."""
        self.cluster, self.key = cluster, key
        self.endpoints = endpoints
        self.tick, self.serving_timeout, self.startup_grace = tick, serving_timeout, startup_grace
        self.id = controller_id or f"controller@{socket.gethostname()}"
        self.events = EventLog(self.store, cluster)
        self.lb = LbSync(self.store, cluster, balancers or {})
        self.spec: ClusterSpec | None = None
        self.spec_revision = 0
        self.monitor: HeartbeatMonitor | None = None
        self.memory = ControllerMemory()
        self.records = ClusterRecords()
        self._wake = asyncio.Event()
        self.leading_since = time.time()
        self.readiness = ReadinessGate(self.wake, give_up_after=serving_timeout)
        self.fences = FenceRunner(bmcs=dict(bmcs or {}), password_file=bmc_password_file, timeout=fence_timeout,
                                  last_heard=self.last_heard, wake=self.wake, report=self._report)
        self.cache = StoreCache(store, keys.cluster_prefix(cluster),
                                keep=lambda k: cluster_records.wanted(k, cluster), on_change=self._changed)
        self.applier = Applier(self.store, cluster, self.cache, events=self.events, lb=self.lb, fences=self.fences,
                               spec=self._spec, step_pause=step_pause, on_maintenance=self._monitor_maintenance)
        self._tasks: list[asyncio.Task[Any]] = []
        self.passes = 0
        self.last_commands = 0

    # ------------------------------------------------------------------ small helpers

    def _spec(self) -> ClusterSpec:
        assert self.spec is not None
        return self.spec

    def wake(self) -> None:
        self._wake.set()

    def _changed(self, _key: str) -> None:
        self._wake.set()

    async def _report(self, kind: str, subject: str, reason: str, data: dict[str, object]) -> None:
        await self.events.emit(kind, subject, reason, **data)

    def host_state(self, host: str) -> str:
        return self.monitor.state(host).value if self.monitor is not None else "unknown"

    def last_heard(self, host: str) -> float | None:
        if self.monitor is None or host not in self.monitor.reports:
            return None
        return self.monitor.reports[host].received_at

    def last_heard_wall(self, host: str) -> float | None:
        """``last_heard`` on the wall clock (what failover records keep: other processes read them)."""
        heard = self.last_heard(host)
        return None if heard is None else time.time() - (time.monotonic() - heard)

    def _monitor_maintenance(self, host: str, on: bool) -> None:
        if self.monitor is not None and (self.monitor.state(host) is HostState.MAINTENANCE) != on:
            self.monitor.set_maintenance(host, on, "maintenance" if on else "maintenance ended")

    async def _load_spec(self) -> bool:
        stored = await get_spec(self.raw_store, self.cluster)
        if stored is None or stored.mod_revision == self.spec_revision:
            return False
        self.spec, self.spec_revision = stored.spec, stored.mod_revision
        return True

    # ------------------------------------------------------------------ lifecycle

    async def run(self, stop: asyncio.Event) -> None:
        """Stand by until this controller leads, then lead until ``stop`` or until the leader
        lease is lost (then return: the caller starts a fresh ``Controller`` that campaigns again)."""
        while not await self._load_spec():
            log.info("waiting for the spec of cluster %s in the store", self.cluster)
            await asyncio.sleep(0.5)
        spec = self._spec()
        ttl = leader_lease_ttl(spec.policies.ha.self_fence_timeout)
        async with LeaseKeeper(self.raw_store, ttl) as lease:
            record = LeaderRecord(id=self.id, pid=os.getpid(), started_at=time.time(), heartbeat=self._heartbeat())
            campaigning = asyncio.ensure_future(campaign(
                self.raw_store, keys.leader(self.cluster), record, lease.id, my_id=self.id,
                lease_lost=lease.lost.is_set))
            stopping = asyncio.ensure_future(stop.wait())
            try:
                await asyncio.wait([stopping, campaigning], return_when=asyncio.FIRST_COMPLETED)
            finally:
                stopping.cancel()
            if not campaigning.done():
                campaigning.cancel()
                return
            create_revision, took_over = campaigning.result()
            self.store.arm(create_revision)
            self.leading_since = time.time()  # the startup grace counts from leading
            if took_over:
                await self.events.emit("controller-takeover", self.id, "took over from its own previous run")
            await self._lead(lease, stop, ttl)
            if not stop.is_set():
                # Recorded outside the guard: this controller no longer leads.
                why = lease.reason or "a guarded write found another leader"
                log.error("leadership lost: %s", why)
                await EventLog(self.raw_store, self.cluster).emit("controller-stepped-down", self.id, why)

    async def _lead(self, lease: LeaseKeeper, stop: asyncio.Event, ttl: int) -> None:
        spec = self._spec()
        config = replace(liveness_config(spec.policies.ha), startup_grace=self.startup_grace)
        self.monitor = HeartbeatMonitor(
            self.cluster, self.key, host_links(spec, self.endpoints),
            [(ep.address, ep.port) for ep in self.endpoints], config=config, on_transition=self._on_transition,
        )
        await self.monitor.start()
        await self.cache.start()
        self.records = ClusterRecords.from_kvs(self.cluster, self.cache.snapshot())
        self.memory = self.records.memory or ControllerMemory()
        await self.events.emit("controller-started", self.id, "leader; listening for heartbeats",
                               endpoints=[ep.to_dict() for ep in self.endpoints], lease_ttl=ttl)
        for op in self.records.operations_of("failover"):
            if op.step not in ("done", "aborted"):
                await self.events.emit("failover-resumed", str(op.body.get("host")), f"resuming at step {op.step}",
                                       op=op.id)
        self._tasks.append(vital(self._publish(lease.id), "controller-status"))
        try:
            while not stop.is_set() and not lease.lost.is_set():
                self._wake.clear()
                try:
                    await self.reconcile_once()
                except NotLeader as exc:
                    log.error("stepping down: %s", exc)
                    break
                except StoreError as exc:
                    log.warning("store error this pass: %s", exc)
                except Exception:  # one bad pass must not end the controller
                    log.exception("reconcile pass failed")
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wait_any(stop), self.tick)
        finally:
            self.readiness.close()
            self.fences.close()
            for task in self._tasks:
                task.cancel()
            await self.cache.close()
            await self.monitor.stop()

    # ------------------------------------------------------------------ one pass

    async def reconcile_once(self) -> None:
        if await self._load_spec():
            await self.events.emit("spec", self.cluster, f"spec revision {self.spec_revision} loaded")
        spec = self._spec()
        self.records = ClusterRecords.from_kvs(self.cluster, self.cache.snapshot())
        for host in spec.hosts:
            rec = self.records.hosts.get(host.name)
            self._monitor_maintenance(host.name, rec is not None and rec.desired.state == "maintenance")
        view = build_view(spec, self.records, now=time.time(), liveness=self.host_state, last_heard=self.last_heard_wall,
                          fence_results=self.fences.results, ready=frozenset(self.readiness.ready),
                          leading_since=self.leading_since, startup_grace=self.startup_grace,
                          serving_timeout=self.serving_timeout)
        view = replace(view, ready=await observe_readiness(view, self.readiness))
        decision = decide(view, self.memory)
        await self.applier.apply(decision.commands)
        if decision.memory != self.memory:
            await self.store.put(keys.controller_memory(self.cluster), encode_json(decision.memory.to_dict()))
            self.memory = decision.memory
        self.last_commands = len(decision.commands)
        self.passes += 1

    # ------------------------------------------------------------------ status and wake-ups

    def _heartbeat(self) -> tuple[HeartbeatEndpoint, ...]:
        return tuple(HeartbeatEndpoint(**ep.to_dict()) for ep in self.endpoints)

    def status(self) -> LeaderRecord:
        """What the controller knows right now (published in the ``leader`` record every second)."""
        monitor, spec = self.monitor, self.spec
        failovers = self.records.operations_of("failover")
        return LeaderRecord(
            id=self.id, pid=os.getpid(), heartbeat=self._heartbeat(), updated_at=time.time(), passes=self.passes,
            hosts={h.name: self.host_state(h.name) for h in spec.hosts} if spec else {},
            maintenance=tuple(sorted(self.memory.maintenance)),
            heartbeats={v.value: n for v, n in monitor.counters.items()} if monitor else {},
            unknown_senders=monitor.unknown_senders if monitor else 0,
            ops={op.id: op.step for op in failovers if op.step not in ("done", "aborted")},
            balancer_errors=dict(self.lb.errors),
            cache={"revision": self.cache.revision, "events": self.cache.events, "relists": self.cache.relists},
        )

    async def _publish(self, lease: int) -> None:
        while True:
            await asyncio.sleep(1.0)
            with contextlib.suppress(StoreError):
                await put(self.store, keys.leader(self.cluster), self.status(), lease=lease)

    async def _wait_any(self, stop: asyncio.Event) -> None:
        waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._wake.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    def _on_transition(self, t: Transition) -> None:
        asyncio.get_running_loop().create_task(self._log_transition(t))
        self._wake.set()

    async def _log_transition(self, t: Transition) -> None:
        """The monitor's verdicts are observations: recorded as events; ``decide`` acts on them."""
        if t.before is t.after and t.after is not HostState.LINK_DEGRADED:
            return
        await self.events.emit("host-state", t.host, f"{t.before.value} -> {t.after.value}: {t.reason}",
                               before=t.before.value, after=t.after.value, down_links=sorted(t.down_links))
        if t.after is HostState.LINK_DEGRADED:
            await self.events.emit("link-degraded", t.host, f"links down: {', '.join(sorted(t.down_links))}; "
                                   "the host is alive on its other links (no failover)",
                                   down_links=sorted(t.down_links))
