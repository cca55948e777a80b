"""Mirrored VM disks on a host: the host-side reconciler.

Role: ``MirrorReconciler``, run beside the agent loop (``run_mirror_reconciler``), keeps every
mirrored disk of this host's VMs on two working drives. Level-triggered, every pass it reads
the host's drive states (the hardware watcher's ``hosts/<h>/components`` storage group; no
record, or an unreadable BMC = unknown) and each mirrored disk's legs (is the leg's server
alive), asks the pure ``plan_mirror`` what to do, and does it: drop a dead leg, or re-mirror
onto a drive that has worked for the stability window
(``policies.components.stability_window``). Every change is an event (``mirror-leg-dropped``,
``mirror-remirrored``, ``mirror-failed``; source ``mirror``).

It works on the per-VM record the QEMU driver's mirror hook keeps,
``<qemu state dir>/<guest>/mirror.json``, under the same per-VM lock
(nonstop/drivers/qemu_mirror.py), and on the legs through nonstop/drivers/qemu_mirror_legs.py
(qemu-nbd servers, quorum QMP). Components import drivers; drivers never import this.

Must not: decide (the core does), touch guests without a mirror record, or leave a guest
paused (``MirrorQmp.remirror`` resumes it whatever fails).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from typing import Any

from nonstop.core.components.mirror import (
    DROP,
    DriveView,
    LegView,
    MirrorAction,
    plan_mirror,
    track_ok_since,
)
from nonstop.drivers import qemu_mirror_legs as legs_io
from nonstop.drivers.qemu_mirror import STATE_FILE, leg_of, load, lock, new_leg, save
from nonstop.drivers.qemu_mirror_legs import MirrorError, MirrorQmp

log = logging.getLogger("nonstop.components.mirror")

SPEC_EVERY = 5.0
"""How often the stored spec is read again (drives, stability window), seconds."""
ACTION_TIMEOUT = 180.0
"""Longest one drop or re-mirror may take (a hung QMP call) before the pass reports it, seconds."""


class MirrorReconciler:
    """Keeps every mirrored disk of this host's VMs on two working drives."""

    def __init__(self, store: Any, cluster: str, host: str, qemu_state_dir: Path, disk_root: Path) -> None:
        from nonstop.store.events import EventLog

        self.store, self.cluster, self.host = store, cluster, host
        self.qemu_state_dir, self.disk_root = Path(qemu_state_dir), Path(disk_root)
        self.events = EventLog(store, cluster)
        self.ok_since: dict[str, float | None] = {}
        self.window = 30.0
        self.drives = list(legs_io.DEFAULT_DRIVES)
        self.spec_read_at: float | None = None
        self.timings: list[dict[str, Any]] = []

    async def read_spec(self, now: float) -> None:
        """The host's drives and the stability window from the stored spec (every SPEC_EVERY s);
        the drive list goes to ``drives.json`` for the driver."""
        from nonstop.store.state import get_spec

        if self.spec_read_at is not None and now - self.spec_read_at < SPEC_EVERY:
            return
        self.spec_read_at = now
        stored = await get_spec(self.store, self.cluster)
        if stored is not None:
            with contextlib.suppress(KeyError):
                self.drives = [d.name for d in stored.spec.host(self.host).drives]
            self.window = float(stored.spec.policies.components.stability_window)
        await asyncio.to_thread(legs_io.write_host_drives, self.disk_root, self.host, self.drives)

    async def drive_states(self, now: float) -> dict[str, bool | None]:
        from nonstop.store import keys
        from nonstop.store.records import HostComponents, read_or_none

        await self.read_spec(now)
        drives = self.drives
        record = await read_or_none(self.store, keys.host_components(self.cluster, self.host), HostComponents)
        storage = record.groups.get("storage") if record is not None else None
        # The watcher rewrites the record only when something changes, so its age is no sign
        # of staleness; an unreadable BMC shows as health "unknown".
        if record is None or storage is None or storage.state == "unknown" or record.health == "unknown":
            return {d: None for d in drives}
        failed = set(storage.failed)
        return {d: d in failed for d in drives}

    async def pass_once(self, now: float | None = None) -> list[MirrorAction]:
        now = time.time() if now is None else now
        if not any(self.qemu_state_dir.glob(f"*/{STATE_FILE}")):
            await self.read_spec(now)  # keeps drives.json current for the next mirrored VM
            self.ok_since = {}
            return []
        states = await self.drive_states(now)
        running = [f.parent for f in sorted(self.qemu_state_dir.glob(f"*/{STATE_FILE}"))
                   if (f.parent / "qmp.sock").exists()]  # a stopped VM: its next launch serves what is left
        views = {run_dir: {disk: tuple(LegView(leg["drive"], legs_io.server_alive(Path(leg["path"])))
                                       for leg in entry["legs"])
                           for disk, entry in load(run_dir)["disks"].items()} for run_dir in running}
        dead = frozenset(v.drive for disks in views.values() for legs in disks.values() for v in legs if not v.alive)
        self.ok_since = track_ok_since(self.ok_since, states, now, dead)
        drives = tuple(DriveView(d, s, self.ok_since.get(d)) for d, s in states.items())
        done: list[MirrorAction] = []
        for run_dir in running:
            async with lock(run_dir):
                state = load(run_dir)
                for disk, entry in state["disks"].items():
                    legs = tuple(LegView(leg["drive"], legs_io.server_alive(Path(leg["path"]))) for leg in entry["legs"])
                    for action in plan_mirror(disk, legs, drives, now, self.window):
                        try:  # a hung QMP call must not hold this VM's mirrors for ever
                            await asyncio.wait_for(self._act(run_dir, state, entry, action), ACTION_TIMEOUT)
                        except TimeoutError:
                            await self._emit("mirror-failed", f"{self.host}/{run_dir.name}/{disk}",
                                             f"{action.kind} on {action.drive} took over {ACTION_TIMEOUT:g} s",
                                             drive=action.drive)
                        done.append(action)
        return done

    async def _act(self, run_dir: Path, state: dict[str, Any], entry: dict[str, Any], action: MirrorAction) -> None:
        guest, qmp = run_dir.name, MirrorQmp(run_dir / "qmp.sock")
        subject = f"{self.host}/{guest}/{action.disk}"
        if action.kind == DROP:
            leg = next(leg for leg in entry["legs"] if leg["drive"] == action.drive)
            try:
                await qmp.drop_leg(action.disk, leg_of(leg))
            except MirrorError as exc:
                log.warning("%s: %s (forgetting the leg)", subject, exc)
            entry["legs"].remove(leg)
            save(run_dir, state)
            await asyncio.to_thread(legs_io.remove_leg, Path(leg["path"]))
            await self._emit("mirror-leg-dropped", subject, f"leg on {action.drive} dropped: {action.reason}",
                             drive=action.drive)
            return
        entry["generation"] = int(entry["generation"]) + 1
        save(run_dir, state)
        leg = new_leg(self.disk_root, self.host, guest, action.disk, action.drive, entry["generation"])
        path = Path(leg["path"])
        try:
            await asyncio.to_thread(legs_io.create_leg_file, path, int(entry["size"]))
            await asyncio.to_thread(legs_io.serve_leg, path, leg["socket"])
            timings = await qmp.remirror(action.disk, leg_of(leg))
        except Exception as exc:  # noqa: BLE001 - a failed copy is retried on a later pass
            await asyncio.to_thread(legs_io.remove_leg, path)
            await self._emit("mirror-failed", subject, f"re-mirror onto {action.drive} failed: {exc}",
                             drive=action.drive)
            return
        entry["legs"].append(leg)
        save(run_dir, state)
        rounded = {k: round(v, 3) for k, v in timings.items()}
        self.timings.append({"guest": guest, "disk": action.disk, "drive": action.drive, **rounded})
        await self._emit("mirror-remirrored", subject, f"re-mirrored onto {action.drive} ({action.reason}); "
                         f"copy {timings.get('copy', 0):.2f} s, guest paused {timings.get('paused', 0):.3f} s",
                         drive=action.drive, **rounded)

    async def _emit(self, kind: str, subject: str, reason: str, **data: Any) -> None:
        log.info("%s %s: %s", kind, subject, reason)
        with contextlib.suppress(Exception):
            await self.events.emit(kind, subject, reason, source="mirror", host=self.host, **data)


async def run_mirror_reconciler(store: Any, cluster: str, host: str, state_dir: Path, options: dict[str, Any],
                                stop: asyncio.Event, drivers: Any = None, interval: float = 0.5) -> None:
    """The agent's call: reconcile mirrored disks every ``interval`` until ``stop`` (only on a
    host that runs VMs)."""
    if drivers is not None and "vm" not in drivers:
        return
    from nonstop.drivers.qemu_core import DEFAULT_DISK_DIR

    reconciler = MirrorReconciler(store, cluster, host, Path(state_dir) / "qemu",
                                  Path(options.get("disk_dir", DEFAULT_DISK_DIR)) / cluster)
    await asyncio.to_thread(legs_io.sweep_dead_sockets)
    while not stop.is_set():
        try:
            await reconciler.pass_once()
        except Exception:  # noqa: BLE001 - the next pass looks again
            log.exception("mirror reconcile pass failed")
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)
