"""Rolling guest updates: a service's guests move to a new version (command or image) with the
service never losing capacity; rolled back when the new version is not healthy.

Role: ``GuestUpdater(store, cluster)`` runs the pure machine of nonstop/core/patching/update.py,
an operation of kind ``guest-update`` stored at ``ops/<id>`` (generated id; the group's update is
the one of that kind whose body names the group and that is not final), saved after every phase
(a killed updater resumes with ``run()``):

- surge: the spec's group gets the new version and one more replica; the controller places the
  surge replica; healthy = running where assigned AND admitted to the service's backend list by
  the controller (its readiness gate: the port accepts), within ``health_timeout``;
- replace(i): replica i is drained on the balancers, then a ``replace`` intent asks the controller
  to reassign it cold with the new version to another host (the old process is removed by its
  agent, a fresh one spawned); it must become healthy the same way, then it is set ``ready``
  again. A refusal (no other host fits) counts as unhealthy: the update rolls back;
- shrink: the surge replica is drained and the group goes back to its replica count (all new);
- rolling-back: the spec goes back to the old version and count, every replica already replaced is
  replaced again with the old version; done when every replica runs the old version and serves.

Must not: decide the order or when to roll back (the core does), write guest placement (the
controller does, on the intents written here), or start guests (agents do).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from nonstop.core.guests.model import GuestDefinition
from nonstop.core.patching.update import FINAL_PHASES, KIND, GuestUpdate, Phase, advance, new_update
from nonstop.core.spec import ClusterSpec
from nonstop.patching import cluster as pc
from nonstop.store import keys, operations
from nonstop.store.base import Store
from nonstop.store.operations import OperationRecord
from nonstop.store.records import ServiceBackends, read_or_none
from nonstop.store.state import get_spec, put_spec

FIELDS = ("command", "image")
REQUESTER = "guest-update"


class UpdateError(Exception):
    pass


def _with_group(spec: ClusterSpec, group: str, fields: dict[str, Any], replicas: int) -> ClusterSpec:
    groups = [g.model_copy(update={**fields, "replicas": replicas}) if g.name == group else g for g in spec.guests]
    return spec.model_copy(update={"guests": groups})


def _definition_fields(fields: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "command" in fields:
        out["command"] = tuple(fields["command"]) if fields["command"] is not None else None
    if "image" in fields:
        out["image"] = fields["image"]
    return out


def _is_version(d: GuestDefinition, fields: dict[str, Any]) -> bool:
    return all(getattr(d, k) == v for k, v in _definition_fields(fields).items())


class GuestUpdater:
    def __init__(self, store: Store, cluster: str, *, balancers: dict[str, str] | None = None,
                 health_timeout: float = 20.0, progress: Callable[[str], None] | None = None) -> None:
        self.store, self.cluster = store, cluster
        self.balancers = pc.Balancers(balancers or {})
        self.health_timeout = health_timeout
        self.say = progress or (lambda _t: None)

    async def load(self, group: str) -> GuestUpdate | None:
        """The group's unfinished update, else its newest one (None when it never had one)."""
        updates = [GuestUpdate.from_body(r.header, r.body)
                   for r in await operations.list_operations(self.store, self.cluster, KIND)
                   if r.body.get("group") == group]
        unfinished = [u for u in updates if u.phase not in FINAL_PHASES]
        candidates = unfinished or updates
        return candidates[-1] if candidates else None

    async def _save(self, update: GuestUpdate) -> None:
        await operations.save(self.store, self.cluster, OperationRecord.of(update.header, update.body()))

    async def start(self, group: str, new: dict[str, Any]) -> GuestUpdate:
        current = await self.load(group)
        if current is not None and current.phase not in FINAL_PHASES:
            raise UpdateError(f"an update of {group} is {current.phase.value}: run it to its end first")
        stored = await get_spec(self.store, self.cluster)
        if stored is None:
            raise UpdateError(f"no spec for cluster {self.cluster}")
        spec_group = next((g for g in stored.spec.guests if g.name == group), None)
        if spec_group is None:
            raise UpdateError(f"no guest group {group}")
        unknown = set(new) - set(FIELDS)
        if unknown:
            raise UpdateError(f"only {', '.join(FIELDS)} can be rolled out (got {', '.join(sorted(unknown))})")
        old = {k: getattr(spec_group, k) for k in new}
        update = new_update(operations.new_op_id(KIND), group, spec_group.replicas, old, dict(new), time.time())
        await self._save(update)
        return update

    async def run(self, group: str) -> GuestUpdate:
        update = await self.load(group)
        if update is None:
            raise UpdateError(f"no update of {group} in the store")
        while update.phase not in FINAL_PHASES:
            self.say(f"{update.group}: {update.phase.value}"
                     + (f" {update.current()}" if update.phase is Phase.REPLACE else ""))
            ok, reason = await self._phase(update)
            if not ok:
                self.say(f"{update.group}: unhealthy: {reason}; rolling back")
            update = advance(update, ok, time.time(), reason)
            await self._save(update)
        self.say(f"{update.group}: {update.phase.value}" + (f" ({update.header.reason})" if update.header.reason else ""))
        return update

    # ------------------------------------------------------------------ phases

    async def _phase(self, u: GuestUpdate) -> tuple[bool, str | None]:
        if u.phase is Phase.SURGE:
            await self._put_group(u.group, u.new, u.replicas + 1)
            return await self._healthy(u.surge_name(), u.new)
        if u.phase is Phase.REPLACE:
            return await self._replace(u.current(), u.new, u.header.id)
        if u.phase is Phase.SHRINK:
            await self.balancers.set_state([u.surge_name()], "drain")
            await self.balancers.wait_idle([u.surge_name()], 10.0)
            await self._put_group(u.group, u.new, u.replicas)
            return await self._gone(u.surge_name())
        # rolling back: never gives up (a rollback that cannot finish is retried)
        while True:
            await self._put_group(u.group, u.old, u.replicas)
            await self._gone(u.surge_name())
            results = [await self._replace(g, u.old, u.header.id) for g in dict.fromkeys([*u.replaced, u.current()])]
            if all(ok for ok, _ in results):
                return True, None
            await asyncio.sleep(1.0)

    async def _put_group(self, group: str, fields: dict[str, Any], replicas: int) -> None:
        stored = await get_spec(self.store, self.cluster)
        assert stored is not None
        await put_spec(self.store, _with_group(stored.spec, group, fields, replicas))

    async def _healthy(self, guest: str, fields: dict[str, Any]) -> tuple[bool, str | None]:
        deadline = time.monotonic() + self.health_timeout
        last = "not placed yet"
        while time.monotonic() < deadline:
            snap = await pc.snapshot(self.store, self.cluster)
            d = snap.desired.get(guest)
            if d is not None:
                obs = snap.observed.get(guest)
                last = (f"{guest} is {obs.state or 'not reported'} on {obs.host}" if obs is not None
                        else f"{guest} is not reported")
                if _is_version(d, fields) and snap.running_on(guest, d.host) and await self._in_backends(snap, guest):
                    return True, None
                if obs is not None and obs.state == "running" and snap.running_on(guest, d.host):
                    last = f"{guest} runs on {d.host} but is not admitted to its service (not ready)"
            await asyncio.sleep(0.2)
        return False, f"new version not healthy after {self.health_timeout:.0f} s: {last}"

    async def _in_backends(self, snap: pc.Snapshot, guest: str) -> bool:
        group = snap.desired[guest].group
        services = [s.name for s in snap.spec.services if s.backends is not None and s.backends.group == group]
        for service in services:
            stored = await read_or_none(self.store, keys.service_backends(self.cluster, service), ServiceBackends)
            if stored is None or guest not in stored.names():
                return False
        return True

    async def _gone(self, guest: str) -> tuple[bool, str | None]:
        deadline = time.monotonic() + self.health_timeout
        while time.monotonic() < deadline:
            snap = await pc.snapshot(self.store, self.cluster)
            if guest not in snap.desired and guest not in snap.observed:
                return True, None
            await asyncio.sleep(0.2)
        return False, f"{guest} was not removed"

    async def _replace(self, guest: str, fields: dict[str, Any], update_id: str) -> tuple[bool, str | None]:
        snap = await pc.snapshot(self.store, self.cluster)
        d = snap.desired.get(guest)
        if d is None:
            return False, f"{guest} has no desired record"
        if not _is_version(d, fields):
            await self.balancers.set_state([guest], "drain")
            await self.balancers.wait_idle([guest], 10.0)
            try:
                await pc.ask(self.store, self.cluster, "replace", requester=REQUESTER, guest=guest, avoid=d.host,
                             changes=dict(fields), reason=f"rolling update {update_id} of {d.group}: {guest}")
            except pc.IntentFailed as exc:
                await self.balancers.set_state([guest], "ready")  # it still runs where it was
                return False, str(exc)
        ok, reason = await self._healthy(guest, fields)
        if ok:
            await self.balancers.set_state([guest], "ready")
        return ok, reason


__all__ = ["REQUESTER", "GuestUpdater", "UpdateError"]
