"""The controller: level-triggered reconcile loops over the store, plus the heartbeat monitor.

Role: one leading process per cluster (``nonstop controller --store URL --cluster NAME``; any
other stands by, leadership.py). Once elected it
- publishes itself in ``leader`` (on a lease shorter than half the self-fence timeout) with its
  heartbeat endpoints, which agents read; every write it makes is leader-guarded;
- runs the ``HeartbeatMonitor`` (UDP receiver, φ per host per link, liveness table); a host
  that becomes ``dead`` (and is not in maintenance) gets a persisted failover operation
  (failover.py: fence, then move); ``link-degraded`` is logged, never acted on;
- every ``tick`` (and at once on a transition or a spec/record change) runs one reconcile pass:
  place pending guests, move guests that keep failing on one host, evacuate hosts in
  maintenance, fail back returned hosts per policy, and make every service's backend list —
  in the store and in the running balancer — equal to the healthy replicas;
- logs every decision to ``events/`` with its reason and timing (events.py).

Public hooks used by the rolling-patch work and the API: ``enter_maintenance(host,
evacuate=True)`` / ``exit_maintenance(host)`` (also driven by ``hosts/<h>/desired`` =
``{"state": "maintenance"|"up", "evacuate": bool}`` written by anyone).

Must not: make decisions inline — they come from nonstop/core/controller and the placement
engine; or start guests itself (agents do).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import socket
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from nonstop.controller import view as cv
from nonstop.controller.events import EventLog
from nonstop.controller.failover import load_ops, persist, run_failover
from nonstop.controller.lbsync import LbSync
from nonstop.controller.leadership import LeaderGuardedStore, NotLeader, campaign, leader_lease_ttl
from nonstop.controller.readiness import ReadinessGate
from nonstop.core.controller.backends import desired_backends
from nonstop.core.controller.failback import failback_decision
from nonstop.core.controller.guestfail import GuestHealth, guest_verdict
from nonstop.core.controller.ops import FailoverOp, OpEvent, Step, advance
from nonstop.core.controller.placing import move_off, place_pending, rebalance_moves
from nonstop.core.guests.model import GuestDefinition
from nonstop.core.ha.liveness import HostState, Transition, liveness_config
from nonstop.core.spec import ClusterSpec
from nonstop.ha.monitor import HeartbeatMonitor
from nonstop.store import keys
from nonstop.store.base import Store, StoreError, encode_json
from nonstop.store.lease import LeaseKeeper
from nonstop.store.state import get_spec

log = logging.getLogger("nonstop.controller")

FAILED_STATES = frozenset({"dead", "suspect", "unknown"})


@dataclass(frozen=True)
class Endpoint:
    """One heartbeat endpoint of the controller: a management network it listens on."""

    link: str
    address: str
    port: int
    prefix: int = 24

    def to_dict(self) -> dict[str, Any]:
        return {"link": self.link, "address": self.address, "port": self.port, "prefix": self.prefix}


def host_links(spec: ClusterSpec, endpoints: list[Endpoint]) -> dict[str, list[str]]:
    """host → names of the links it should be heard on: the endpoints whose network holds one
    of its management addresses (the lab's addressing, nonstop/lab/names.py)."""
    from nonstop.lab import names

    out: dict[str, list[str]] = {}
    for host in spec.hosts:
        links = []
        for _device, cidr in names.host_addresses(spec, host):
            addr = ipaddress.ip_interface(cidr).ip
            for ep in endpoints:
                if addr in ipaddress.ip_network(f"{ep.address}/{ep.prefix}", strict=False) and ep.link not in links:
                    links.append(ep.link)
        out[host.name] = links or [ep.link for ep in endpoints]
    return out


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
        self.bmcs = dict(bmcs or {})
        self._bmc_password_file = bmc_password_file
        self.fence_timeout, self.tick, self.serving_timeout = fence_timeout, tick, serving_timeout
        self.startup_grace = startup_grace
        self.step_pause = step_pause
        self.id = controller_id or f"controller@{socket.gethostname()}"
        self.events = EventLog(self.store, cluster)
        self.lb = LbSync(self.store, cluster, balancers or {})
        self.spec: ClusterSpec = None  # type: ignore[assignment]
        self.spec_revision = 0
        self.monitor: HeartbeatMonitor | None = None
        self.ops: dict[str, FailoverOp] = {}
        self.op_tasks: dict[str, asyncio.Task[FailoverOp]] = {}
        self.homes: dict[str, str] = {}
        """guest → the host it ran on before a failover (failback target)."""
        self.failures: dict[str, list[float]] = {}
        self.up_since: dict[str, float] = {}
        self.failback_done: dict[str, float] = {}
        self.maintenance: dict[str, bool] = {}
        """host → evacuate? for hosts in maintenance."""
        self._reported: dict[str, str] = {}
        self._wake = asyncio.Event()
        self.started_at = time.monotonic()
        self._moved = False
        self.drain_delay = 0.5
        self.readiness = ReadinessGate(self.wake, give_up_after=serving_timeout)
        self._tasks: list[asyncio.Task[Any]] = []
        self.passes = 0

    # ------------------------------------------------------------------ helpers

    def bmc_password(self, host: str) -> str:
        path = self._bmc_password_file
        spec_path = self.spec.host(host).bmc.password_file
        for candidate in (path, Path(spec_path) if spec_path else None):
            if candidate is not None and candidate.exists():
                return candidate.read_text().strip()
        return "password"

    def wake(self) -> None:
        self._wake.set()

    def host_state(self, host: str) -> str:
        if self.monitor is None:
            return "unknown"
        return self.monitor.state(host).value

    async def hear_hosts(self, exclude: str) -> None:
        """Wait until every host but ``exclude`` (and those in maintenance) has been heard, at most
        until 2 × startup grace after this controller started."""
        while time.monotonic() - self.started_at < 2 * self.startup_grace and any(
                self.host_state(h.name) == "unknown" for h in self.spec.hosts
                if h.name != exclude and h.name not in self.maintenance):
            await asyncio.sleep(0.05)

    def last_heard(self, host: str) -> float | None:
        if self.monitor is None or host not in self.monitor.reports:
            return None
        return self.monitor.reports[host].received_at

    def conditions(self, view: cv.ClusterView) -> dict[str, str]:
        """host → placement condition: failed (dead, suspect, never heard, being failed over),
        maintenance, or up."""
        out = {}
        for host in self.spec.hosts:
            state = self.host_state(host.name)
            active = any(op.host == host.name and not op.final for op in self.ops.values())
            if host.name in self.maintenance or state == "maintenance":
                out[host.name] = "maintenance"
            elif state in FAILED_STATES or active:
                out[host.name] = "failed"
            elif view.host_components.get(host.name, {}).get("placement") == "no-new-guests":
                out[host.name] = "degraded"  # component policy (docs/components.md); placement filters it
            else:
                out[host.name] = "up"
        return out

    # ------------------------------------------------------------------ lifecycle

    async def _load_spec(self) -> bool:
        stored = await get_spec(self.store, self.cluster)
        if stored is None or stored.mod_revision == self.spec_revision:
            return False
        self.spec, self.spec_revision = stored.spec, stored.mod_revision
        return True

    async def run(self, stop: asyncio.Event) -> None:
        """Stand by until this controller leads, then lead until ``stop`` or until the leader
        lease is lost (then return: the caller starts a fresh ``Controller`` that campaigns again)."""
        while not await self._load_spec():
            log.info("waiting for the spec of cluster %s in the store", self.cluster)
            await asyncio.sleep(0.5)
        ttl = leader_lease_ttl(self.spec.policies.ha.self_fence_timeout)
        async with LeaseKeeper(self.raw_store, ttl) as lease:
            record = {"id": self.id, "pid": os.getpid(), "started_at": time.time(),
                      "heartbeat": [ep.to_dict() for ep in self.endpoints]}
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
            self.started_at = time.monotonic()  # the watchdog-wait fence counts from leading
            if took_over:
                await self.events.emit("controller-takeover", self.id, "took over from its own previous run")
            ha = self.spec.policies.ha
            config = replace(liveness_config(ha), startup_grace=self.startup_grace)
            self.monitor = HeartbeatMonitor(
                self.cluster, self.key, host_links(self.spec, self.endpoints),
                [(ep.address, ep.port) for ep in self.endpoints], config=config, on_transition=self._on_transition,
            )
            await self.monitor.start()
            await self.events.emit("controller-started", self.id, "leader; listening for heartbeats",
                                   endpoints=[ep.to_dict() for ep in self.endpoints], lease_ttl=ttl)
            await self._load_maintenance()
            for op in await load_ops(self):
                self.ops[op.op_id] = op
                if op.final and op.step is Step.DONE:
                    for guest, _target in op.moves:
                        self.homes.setdefault(guest, op.host)
                elif not op.final:
                    await self.events.emit("failover-resumed", op.host, f"resuming at step {op.step.value}")
                    self._start_op(op)
            self._tasks.append(asyncio.create_task(self._watch(), name="controller-watch"))
            self._tasks.append(asyncio.create_task(self._publish(lease.id), name="controller-status"))
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
                for task in [*self._tasks, *self.op_tasks.values()]:
                    task.cancel()
                await self.monitor.stop()
            if not stop.is_set():
                # Recorded outside the guard: this controller no longer leads.
                why = lease.reason or "a guarded write found another leader"
                log.error("leadership lost: %s", why)
                await EventLog(self.raw_store, self.cluster).emit("controller-stepped-down", self.id, why)

    def status(self) -> dict[str, Any]:
        """What the controller knows right now (published in the ``leader`` record every second)."""
        monitor = self.monitor
        return {
            "id": self.id, "pid": os.getpid(), "heartbeat": [ep.to_dict() for ep in self.endpoints],
            "updated_at": time.time(), "passes": self.passes,
            "hosts": {h.name: self.host_state(h.name) for h in self.spec.hosts},
            "maintenance": sorted(self.maintenance),
            "heartbeats": {v.value: n for v, n in monitor.counters.items()} if monitor else {},
            "unknown_senders": monitor.unknown_senders if monitor else 0,
            "ops": {op_id: op.step.value for op_id, op in self.ops.items() if not op.final},
            "balancer_errors": dict(self.lb.errors),
        }

    async def _publish(self, lease: int) -> None:
        while True:
            await asyncio.sleep(1.0)
            with contextlib.suppress(StoreError):
                await self.store.put(keys.leader(self.cluster), encode_json(self.status()), lease=lease)

    async def _wait_any(self, stop: asyncio.Event) -> None:
        waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._wake.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    async def _watch(self) -> None:
        """Wake on changes that matter: observed records, the spec, host desired state."""
        prefix = keys.cluster_prefix(self.cluster)
        while True:
            try:
                async with self.store.watch(prefix) as events:
                    async for event in events:
                        parsed = keys.parse(event.key)
                        if parsed.kind in ("spec", "hosts") or parsed.leaf in ("observed", "runner"):
                            self._wake.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("watch ended: %s", exc)
            await asyncio.sleep(0.5)

    # ------------------------------------------------------------------ host liveness

    def _on_transition(self, t: Transition) -> None:
        asyncio.get_running_loop().create_task(self._handle_transition(t))
        self._wake.set()

    async def _handle_transition(self, t: Transition) -> None:
        now = time.time()
        if t.before is t.after and t.after is not HostState.LINK_DEGRADED:
            return
        await self.events.emit("host-state", t.host, f"{t.before.value} -> {t.after.value}: {t.reason}",
                               before=t.before.value, after=t.after.value, down_links=sorted(t.down_links))
        if t.after is HostState.LINK_DEGRADED:
            await self.events.emit("link-degraded", t.host, f"links down: {', '.join(sorted(t.down_links))}; "
                                   "the host is alive on its other links (no failover)", down_links=sorted(t.down_links))
        if t.after in (HostState.UP, HostState.LINK_DEGRADED):
            self.up_since.setdefault(t.host, now)
            for op in list(self.ops.values()):
                if op.host == t.host and op.step in (Step.DETECTED, Step.FENCE_FAILED) and op.op_id not in self.op_tasks:
                    self.ops[op.op_id] = advance(op, OpEvent.HOST_RETURNED, now)
                    await persist(self, self.ops[op.op_id])
        else:
            self.up_since.pop(t.host, None)
        if t.after is HostState.DEAD and t.host not in self.maintenance:
            if any(op.host == t.host and not op.final for op in self.ops.values()):
                return
            if t.before is HostState.UNKNOWN and await self._still_down(t.host):
                return
            self.failures.setdefault(t.host, []).append(now)
            op = FailoverOp(op_id=f"failover-{t.host}-{int(now * 1000)}", host=t.host, detected_at=now,
                            last_heard=self.last_heard(t.host), times={"detected": now})
            self.ops[op.op_id] = op
            await persist(self, op)
            await self.events.emit("host-dead", t.host, f"every link silent: {t.reason}; fencing before failover",
                                   op=op.op_id)
            self._start_op(op)

    async def _still_down(self, host: str) -> bool:
        """A host this controller never heard, whose last failover finished (fenced, guests moved)
        and that holds no guest: the same outage seen again after a controller restart, not a
        new failure — no second failover, no count against failback's flap memory."""
        done = [op for op in self.ops.values() if op.host == host and op.step is Step.DONE]
        if not done:
            return False
        view = await cv.read_view(self.store, self.cluster)
        if any(d.host == host for d in view.desired.values()):
            return False
        last = max(done, key=lambda op: op.detected_at)
        if self._note(f"still-down:{host}", last.op_id):
            await self.events.emit("host-still-down", host, f"not heard since this controller started; failover "
                                   f"{last.op_id} finished and no guest is assigned to it: nothing to do", op=last.op_id)
        return True

    def _start_op(self, op: FailoverOp) -> None:
        task = asyncio.get_running_loop().create_task(run_failover(self, op), name=op.op_id)
        self.op_tasks[op.op_id] = task

        def done(t: asyncio.Task[FailoverOp]) -> None:
            self.op_tasks.pop(op.op_id, None)
            if not t.cancelled() and t.exception() is None:
                self.ops[op.op_id] = t.result()
            elif not t.cancelled():
                log.error("failover %s crashed: %r", op.op_id, t.exception())
            self._wake.set()

        task.add_done_callback(done)

    # ------------------------------------------------------------------ maintenance

    async def _load_maintenance(self) -> None:
        for kv in await self.store.list(keys.hosts_prefix(self.cluster)):
            parsed = keys.parse(kv.key)
            if parsed.leaf == "desired":
                with contextlib.suppress(ValueError):
                    data = json.loads(kv.value)
                    if data.get("state") == "maintenance":
                        self._set_maintenance(parsed.name, bool(data.get("evacuate", True)))

    def _set_maintenance(self, host: str, evacuate: bool) -> None:
        self.maintenance[host] = evacuate
        if self.monitor is not None:
            self.monitor.set_maintenance(host, True, "maintenance mode")

    async def enter_maintenance(self, host: str, evacuate: bool = True, reason: str = "operator") -> None:
        """Never treated as failed, receives no new guests; with ``evacuate`` its guests move off
        (VMs live, process guests cold). Persisted in ``hosts/<h>/desired``."""
        await self.store.put(keys.host_desired(self.cluster, host),
                             encode_json({"state": "maintenance", "evacuate": evacuate, "reason": reason}))
        self._set_maintenance(host, evacuate)
        await self.events.emit("maintenance", host, f"entered ({reason}); evacuate={evacuate}")
        self.wake()

    async def exit_maintenance(self, host: str, reason: str = "operator") -> None:
        await self.store.put(keys.host_desired(self.cluster, host), encode_json({"state": "up", "reason": reason}))
        self.maintenance.pop(host, None)
        if self.monitor is not None:
            self.monitor.set_maintenance(host, False, reason)
        await self.events.emit("maintenance", host, f"left ({reason})")
        self.wake()

    async def _sync_maintenance(self, view: cv.ClusterView) -> None:
        for host, data in view.host_desired.items():
            wanted = data.get("state") == "maintenance"
            if wanted and host not in self.maintenance:
                self._set_maintenance(host, bool(data.get("evacuate", True)))
                await self.events.emit("maintenance", host, f"entered ({data.get('reason', 'store')})")
            elif not wanted and host in self.maintenance:
                self.maintenance.pop(host, None)
                if self.monitor is not None:
                    self.monitor.set_maintenance(host, False, "maintenance ended")
                await self.events.emit("maintenance", host, "left")

    # ------------------------------------------------------------------ one pass

    def _note(self, key: str, text: str) -> bool:
        """True the first time ``text`` is reported under ``key`` (events are not repeated every pass)."""
        if self._reported.get(key) == text:
            return False
        self._reported[key] = text
        return True

    async def reconcile_once(self) -> None:
        if await self._load_spec():
            await self.events.emit("spec", self.cluster, f"spec revision {self.spec_revision} loaded")
        view = await cv.read_view(self.store, self.cluster)
        await self._sync_maintenance(view)
        conditions = self.conditions(view)
        busy = {g for op in self.ops.values() if not op.final for g in view.desired if view.desired[g].host == op.host}
        await self._remove_unknown(view)
        await self._place_pending(view, conditions)
        await self._guest_failures(view, conditions, busy)
        await self._evacuate(view, conditions, busy)
        await self._failback(view, conditions, busy)
        if self._moved:
            # a guest changed host this pass: take it out of the balancer before its old copy stops
            self._moved = False
            view = await cv.read_view(self.store, self.cluster)
        await self._sync_services(view)
        self.passes += 1

    async def _remove_unknown(self, view: cv.ClusterView) -> None:
        known = {g for group in self.spec.guests for g in group.guest_names()}
        for guest in sorted(set(view.desired) - known):
            await self.store.delete(keys.guest_desired(self.cluster, guest))
            await self.events.emit("guest-removed", guest, "no longer in the spec")

    async def _definition(self, guest: str, host: str) -> GuestDefinition:
        from nonstop.core.net.render import gateway_address
        from nonstop.net.ipam_store import allocate_address

        group = next(g for g in self.spec.guests if guest in g.guest_names())
        from nonstop.core.net.names import bridge_name

        addresses: list[str | None] = []
        gateways: list[str | None] = []
        # VMs: the tap joins the network's virtual switch; process guests are plugged by the
        # host network module when no bridge is named (docs/guests.md).
        bridges: list[str | None] = [bridge_name(n.network) if group.kind.value == "vm" else None for n in group.nics]
        for nic in group.nics:
            net = next(n for n in self.spec.networks if n.name == nic.network)
            if net.mode.value == "isolated":
                addresses.append(None)
                gateways.append(None)
                continue
            ip = await allocate_address(self.store, self.cluster, net, guest)
            addresses.append(ip if "/" in ip else f"{ip}/{net.network().prefixlen}")
            gateways.append(gateway_address(net))
        return GuestDefinition.from_group(group, name=guest, cluster=self.cluster, host=host,
                                          addresses=addresses, gateways=gateways, bridges=bridges)

    async def _place_pending(self, view: cv.ClusterView, conditions: dict[str, str]) -> None:
        known = [g for group in self.spec.guests for g in group.guest_names()]
        pending = [g for g in known if g not in view.desired]
        if not pending or "up" not in conditions.values():
            return
        unheard = [h.name for h in self.spec.hosts if self.host_state(h.name) == "unknown"]
        if unheard and time.monotonic() - self.started_at < 2 * self.startup_grace:
            return  # let every host be heard first, or the first one heard gets every guest
        decision = place_pending(self.spec, view.assignments(), conditions)
        for guest, host in decision.moves:
            definition = await self._definition(guest, host)
            epoch = await cv.assign(self.store, self.cluster, definition, host, view.epochs.get(guest, 0))
            await self.events.emit("guest-placed", guest, f"placed on {host}", host=host, epoch=epoch)
        for guest, reason in decision.unplaced:
            if self._note(f"unplaced:{guest}", reason):
                await self.events.emit("unplaceable", guest, reason)

    async def _move(self, view: cv.ClusterView, guest: str, target: str, why: str, live: bool) -> None:
        definition = view.desired[guest]
        if live and definition.kind == "vm" and definition.migrate_to is None:
            if await cv.request_migration(self.store, self.cluster, definition, target, view.desired_rev[guest]):
                await self.events.emit("guest-migrating", guest, f"live migration {definition.host} -> {target}: {why}",
                                       source=definition.host, target=target)
            return
        if definition.migrate_to is not None:
            return  # a live migration is under way; the agents finish it
        self._moved = True
        await self._drain(guest, definition.group)
        epoch = await cv.assign(self.store, self.cluster, definition, target,
                                max(view.epochs.get(guest, 0), definition.fencing_epoch))
        await self.events.emit("guest-moved", guest, f"{definition.host} -> {target}: {why}",
                               source=definition.host, target=target, epoch=epoch)

    async def _drain(self, guest: str, group: str | None) -> None:
        """Before a cold move from a live host: out of the balancer first, then a short pause so
        requests in flight finish on the old copy (the balancer sends nothing new there)."""
        drained = False
        for service in self.spec.services:
            if service.backends is not None and service.backends.group == group:
                drained |= await self.lb.remove(service.name, guest)
        if drained:
            await asyncio.sleep(self.drain_delay)

    async def _guest_failures(self, view: cv.ClusterView, conditions: dict[str, str], busy: set[str]) -> None:
        max_restarts = self.spec.policies.ha.max_restarts
        for guest, d in view.desired.items():
            obs = view.observed.get(guest)
            if guest in busy or obs is None or obs.get("host") != d.host or conditions.get(d.host) not in ("up", "degraded"):
                continue
            verdict = guest_verdict(GuestHealth(guest, d.host, obs.get("state"), int(obs.get("attempts") or 0),
                                                bool(obs.get("gave_up")), obs.get("failure_reason")),
                                    max_restarts=max_restarts)
            if not verdict.move:
                continue
            decision = move_off(self.spec, view.assignments(), conditions, [guest], avoid=d.host)
            for g, target in decision.moves:
                await self._move(view, g, target, verdict.reason, live=False)
            for g, reason in decision.unplaced:
                if self._note(f"stuck:{g}", reason):
                    await self.events.emit("unplaceable", g, f"{verdict.reason}; no other host: {reason}")

    async def _evacuate(self, view: cv.ClusterView, conditions: dict[str, str], busy: set[str]) -> None:
        for host, evacuate in self.maintenance.items():
            if not evacuate:
                continue
            guests = sorted(g for g, d in view.desired.items() if d.host == host and g not in busy)
            if not guests:
                if self._note(f"evacuated:{host}", "empty"):
                    await self.events.emit("evacuated", host, "no guest left on the host")
                continue
            self._reported.pop(f"evacuated:{host}", None)
            decision = move_off(self.spec, view.assignments(), conditions, guests, avoid=host)
            for guest, target in decision.moves:
                self.homes.setdefault(guest, host)
                await self._move(view, guest, target, f"evacuating {host} (maintenance)", live=True)
            for guest, reason in decision.unplaced:
                if self._note(f"evac:{guest}", reason):
                    await self.events.emit("unplaceable", guest, f"evacuating {host}: {reason}")

    async def _failback(self, view: cv.ClusterView, conditions: dict[str, str], busy: set[str]) -> None:
        ha = self.spec.policies.ha
        assignments = view.assignments()
        for host, failures in self.failures.items():
            if conditions.get(host) != "up" or self.host_state(host) != "up":
                continue
            last_done = self.failback_done.get(host, 0.0)
            if last_done >= failures[-1]:
                continue
            balanced: tuple[tuple[str, str], ...] = ()
            if ha.failback.value == "balanced":
                balanced = rebalance_moves(self.spec, assignments, conditions).moves
            decision = failback_decision(
                host=host, policy=ha.failback.value, up_since=self.up_since.get(host), now=time.time(),
                stability=ha.failback_stability, failures=failures,
                homes={g: h for g, h in self.homes.items() if g not in busy}, assignments=assignments,
                balanced_moves=balanced,
            )
            if self._note(f"failback:{host}", decision.reason.split(" for ")[0] if not decision.ready else decision.reason):
                await self.events.emit("failback-check", host, decision.reason, ready=decision.ready)
            if not decision.ready:
                continue
            for guest, target in decision.moves:
                if guest in view.desired:
                    await self._move(view, guest, target, f"failback to {target} ({ha.failback.value})", live=True)
                    if self.homes.get(guest) == target:
                        self.homes.pop(guest, None)
            self.failback_done[host] = time.time()
            await self.events.emit("failback", host, decision.reason, moves=[list(m) for m in decision.moves])

    async def _sync_services(self, view: cv.ClusterView) -> None:
        states = {h.name: self.host_state(h.name) for h in self.spec.hosts}
        for op in self.ops.values():
            if not op.final:
                states[op.host] = "dead"
        facts = view.facts()
        for service in self.spec.services:
            want = await self.readiness.filter(desired_backends(self.spec, service, facts, states), facts)
            if await self.lb.store_backends(service.name, want):
                await self.events.emit("backends", service.name, f"{len(want)} backend(s): "
                                       f"{', '.join(b.name for b in want) or 'none'}", backends=[b.to_dict() for b in want])
            done = await self.lb.apply(service.name, want)
            if done:
                await self.events.emit("balancer", service.name, f"balancer updated: {' '.join(done)}")
