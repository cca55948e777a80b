"""What the patcher reads and writes in the store, besides its own rollout record.

Role: one read of the cluster as the patcher needs it (``Snapshot``: spec, guest placement, host
conditions as the controller reports them, each host's patch level and agent record), the
balancer admin calls of the drain (``Balancers``: set a backend ``drain``/``ready``, wait until its
in-flight requests are done), host maintenance through ``hosts/<h>/desired`` (the controller's
documented interface), guest moves (live migration of VMs through ``migrate_to``, cold moves of
process guests by reassignment, both the controller's own transactions in
nonstop/controller/view.py), and host commands through the agent (``ops/patch-<host>``,
nonstop/agent/patch.py). Also ``patch_level_warning`` for ``nonstop status``.

Must not: decide (the core planner and step machine do) or hold rollout state.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

from nonstop.agent.patch import request_key
from nonstop.controller import view as cv
from nonstop.controller.lbsync import http_json
from nonstop.core.patching.planner import placement_conditions
from nonstop.core.spec import ClusterSpec
from nonstop.store import keys
from nonstop.store.base import Compare, Op, Store, encode_json
from nonstop.store.state import get_spec

CONTROLLER_FRESH = 5.0
"""The controller publishes its status every second; older than this, nobody is watching the cluster."""


@dataclass
class Snapshot:
    spec: ClusterSpec
    view: cv.ClusterView
    controller: dict[str, Any]
    host_observed: dict[str, dict[str, Any]] = field(default_factory=dict)
    alive: dict[str, dict[str, Any]] = field(default_factory=dict)

    def controller_fresh(self, now: float) -> bool:
        return bool(self.controller) and now - float(self.controller.get("updated_at", 0)) < CONTROLLER_FRESH

    def conditions(self) -> dict[str, str]:
        """host → up | maintenance | <liveness state> as the controller sees it."""
        states = self.controller.get("hosts", {})
        maintenance = set(self.controller.get("maintenance", []))
        out = {}
        for host in self.spec.hosts:
            if host.name in maintenance or self.view.host_desired.get(host.name, {}).get("state") == "maintenance":
                out[host.name] = "maintenance"
            else:
                out[host.name] = str(states.get(host.name, "unknown"))
        return out

    def placement(self) -> dict[str, str]:
        """``conditions()`` as the placement engine takes them (a dead or suspect host is ``failed``)."""
        return placement_conditions(self.conditions())

    def levels(self) -> dict[str, str | None]:
        return {h.name: self.host_observed.get(h.name, {}).get("patch_level") for h in self.spec.hosts}

    def guests_on(self, host: str) -> list[str]:
        return sorted(g for g, d in self.view.desired.items() if d.host == host)

    def running_on(self, guest: str, host: str) -> bool:
        obs = self.view.observed.get(guest, {})
        d = self.view.desired.get(guest)
        return (d is not None and d.host == host and d.migrate_to is None and obs.get("host") == host
                and obs.get("state") == "running")


async def snapshot(store: Store, cluster: str) -> Snapshot:
    stored = await get_spec(store, cluster)
    if stored is None:
        raise RuntimeError(f"no spec for cluster {cluster} in the store")
    view = await cv.read_view(store, cluster)
    controller = await store.get_json(keys.leader(cluster)) or {}
    snap = Snapshot(stored.spec, view, controller if isinstance(controller, dict) else {})
    for kv in await store.list(keys.hosts_prefix(cluster)):
        parsed = keys.parse(kv.key)
        with contextlib.suppress(ValueError):
            if parsed.leaf == "observed":
                snap.host_observed[parsed.name] = json.loads(kv.value)
            elif parsed.leaf == "alive":
                snap.alive[parsed.name] = json.loads(kv.value)
    return snap


async def patch_level_warning(store: Store, cluster: str) -> str | None:
    """For ``nonstop status``: a warning while hosts report different patch levels (or a rollout
    is not complete), else None."""
    snap = await snapshot(store, cluster)
    levels = snap.levels()
    distinct = {lv for lv in levels.values()}
    rollout = await store.get_json(keys.op(cluster, "patch-rollout"))
    parts = []
    if len(distinct) > 1:
        parts.append("patch levels differ: " + ", ".join(f"{h}={lv or 'unknown'}" for h, lv in sorted(levels.items())))
    if isinstance(rollout, dict) and rollout.get("status") in ("running", "failed"):
        parts.append(f"patch rollout to {rollout.get('target')} is {rollout.get('status')}")
    return "; ".join(parts) or None


# ------------------------------------------------------------------ maintenance


async def set_maintenance(store: Store, cluster: str, host: str, on: bool, reason: str) -> None:
    value = {"state": "maintenance", "evacuate": False, "reason": reason} if on else {"state": "up", "reason": reason}
    await store.put(keys.host_desired(cluster, host), encode_json(value))


# ------------------------------------------------------------------ balancers


class Balancers:
    """The services' balancers (service → admin ``ip:port``), reached from this process's namespace."""

    def __init__(self, admins: dict[str, str], timeout: float = 2.0) -> None:
        self.admins = dict(admins)
        self.timeout = timeout

    async def backends(self, service: str) -> list[dict[str, Any]]:
        status, body = await http_json(self.admins[service], "GET", f"/services/{service}/backends", timeout=self.timeout)
        return list(body) if status == 200 and isinstance(body, list) else []

    async def set_state(self, guests: list[str], state: str) -> list[str]:
        """Set every backend named after one of ``guests`` to ``state`` on every balancer; what was changed."""
        done = []
        for service, address in self.admins.items():
            with contextlib.suppress(OSError, asyncio.TimeoutError, ValueError):
                names = {b.get("name") for b in await self.backends(service)}
                for guest in guests:
                    if guest in names:
                        status, _ = await http_json(address, "PATCH", f"/services/{service}/backends/{guest}",
                                                    {"state": state}, timeout=self.timeout)
                        if status == 200:
                            done.append(f"{service}/{guest}")
        return done

    async def wait_idle(self, guests: list[str], timeout: float) -> int:
        """Wait until no backend of ``guests`` has a request in flight (or the timeout); how many are left."""
        deadline = time.monotonic() + timeout
        while True:
            active = 0
            for service in self.admins:
                with contextlib.suppress(OSError, asyncio.TimeoutError, ValueError):
                    active += sum(int(b.get("active") or 0) for b in await self.backends(service)
                                  if b.get("name") in guests)
            if active == 0 or time.monotonic() > deadline:
                return active
            await asyncio.sleep(0.1)

    async def serving(self, guest: str) -> bool:
        """The guest is a backend of every balancer that knows its service, and healthy there."""
        for service in self.admins:
            with contextlib.suppress(OSError, asyncio.TimeoutError, ValueError):
                for b in await self.backends(service):
                    if b.get("name") == guest:
                        return bool(b.get("serving"))
        return False


# ------------------------------------------------------------------ guest moves


async def move_guest(store: Store, cluster: str, snap: Snapshot, guest: str, target: str) -> str:
    """Live-migrate a VM, cold-move anything else; returns how (``live`` / ``cold``)."""
    definition = snap.view.desired[guest]
    if definition.kind == "vm":
        if definition.migrate_to != target:
            ok = await cv.request_migration(store, cluster, definition, target, snap.view.desired_rev[guest])
            if not ok:
                raise RuntimeError(f"{guest}: its record changed while requesting the migration")
        return "live"
    await cv.assign(store, cluster, definition, target,
                    max(snap.view.epochs.get(guest, 0), definition.fencing_epoch))
    return "cold"


async def migration_failure(store: Store, cluster: str, guest: str, since: float) -> str | None:
    """The reason a live migration of ``guest`` requested at or after ``since`` failed (the agents'
    hand-over record ``ops/migrate-<guest>``, docs/agent.md), else None."""
    op = await store.get_json(keys.op(cluster, f"migrate-{guest}"))
    if isinstance(op, dict) and op.get("phase") == "failed" and float(op.get("requested_at") or 0) >= since - 1.0:
        return str(op.get("reason") or "no reason given")
    return None


# ------------------------------------------------------------------ host commands (through the agent)


async def host_command(store: Store, cluster: str, host: str, request_id: str, action: str, *,
                       command: str | None = None, target: str = "", timeout: float = 120.0,
                       restart_agent: bool = False) -> dict[str, Any]:
    """The current record of request ``request_id`` on ``host``, writing it first if absent."""
    key = request_key(cluster, host)
    kv = await store.get(key)
    if kv is not None:
        with contextlib.suppress(ValueError):
            record = json.loads(kv.value)
            if record.get("id") == request_id:
                return dict(record)
    record = {"type": "host-command", "id": request_id, "host": host, "action": action, "command": command,
              "target": target, "timeout": timeout, "restart_agent": restart_agent, "state": "requested",
              "requested_at": time.time()}
    compare = Compare.mod_revision(key, kv.mod_revision) if kv is not None else Compare.missing(key)
    await store.txn([compare], [Op.put_json(key, record)])
    return record


async def read_command(store: Store, cluster: str, host: str) -> dict[str, Any] | None:
    value = await store.get_json(request_key(cluster, host))
    return value if isinstance(value, dict) else None
