"""Mirrored VM disks, the QEMU driver's side: its hook, and the per-VM mirror record.

Role: nonstop/drivers/qemu.py calls ``create_disks``, ``before_launch``, ``after_launch`` and
``legs_of``/``remove_legs``. A disk with ``redundancy: mirror`` is not a file in the shared
disk directory but a quorum over one leg per working host drive
(nonstop/drivers/qemu_mirror_legs.py). ``create`` makes a blank leg on each drive; every launch
serves the legs (their servers outlive the agent, as QEMU does) and, as soon as QMP answers —
before the guest's kernel scans its PCI bus — plugs the quorum and its virtio-blk device at the
disk's own slot, so the guest boots with it. ``destroy`` removes the legs. A VM with mirrored
disks does not live-migrate: its legs are this host's drives.

The per-VM record, ``<qemu state dir>/<guest>/mirror.json`` (``load``/``save``, one ``lock``
per VM), is shared with the host-side ``MirrorReconciler`` (nonstop/components/mirror_host.py),
which drops dead legs and re-mirrors; it imports this module, never the reverse.

Must not: decide (nonstop/core/components/mirror.py plans, the reconciler acts on drive
failures), touch guests without mirrored disks, or import the component-redundancy shell.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nonstop.core.components.mirror import MirrorLeg
from nonstop.core.guests.model import GuestDefinition
from nonstop.drivers import qemu_mirror_legs as legs_io
from nonstop.drivers.qemu_mirror_legs import MirrorError, MirrorQmp
from nonstop.drivers.qemu_runtime import RuntimeFailure

log = logging.getLogger("nonstop.drivers.qemu_mirror")

STATE_FILE = "mirror.json"
_locks: dict[str, asyncio.Lock] = {}


def lock(run_dir: Path) -> asyncio.Lock:
    """One lock per VM in this process: the driver's launch and the reconciler never overlap."""
    return _locks.setdefault(str(run_dir), asyncio.Lock())


def mirrored(definition: Any) -> list[tuple[int, Any]]:
    """(slot, disk) for every ``redundancy: mirror`` disk of a guest definition."""
    return [(i, d) for i, d in enumerate(definition.disks) if getattr(d, "redundancy", "none") == "mirror"]


def load(run_dir: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads((run_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {"disks": {}}
    return data


def save(run_dir: Path, state: dict[str, Any]) -> None:
    path = run_dir / STATE_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=1, sort_keys=True))
    tmp.replace(path)


def leg_of(entry: dict[str, Any]) -> MirrorLeg:
    return MirrorLeg(entry["drive"], entry["socket"], int(entry["generation"]))


def new_leg(disk_root: Path, host: str, guest: str, disk: str, drive: str, generation: int) -> dict[str, Any]:
    """The record of a leg not made yet: its file on ``drive`` and its server's socket."""
    path = legs_io.drive_dir(disk_root, host, drive) / f"{guest}-{disk}-g{generation}.qcow2"
    return {"drive": drive, "path": str(path), "socket": legs_io.leg_socket(path), "generation": generation}


# ---------------------------------------------------------------------- driver hook


def create_disks(driver: Any, definition: Any, plain: Callable[[Any], list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The driver's ``_create_disks`` with mirrored disks taken out (they become legs)."""
    disks = mirrored(definition)
    if not disks:
        return plain(definition)
    names = {d.name for _, d in disks}
    slots = {d.name: i for i, d in enumerate(definition.disks)}
    entries = plain(definition.with_changes(disks=tuple(d for d in definition.disks if d.name not in names)))
    for entry in entries:
        entry["slot"] = slots[entry["name"]]
    state: dict[str, Any] = {"disks": {}}
    made: list[Path] = []
    try:
        for slot, disk in disks:
            drives = [d for d in legs_io.host_drives(driver.disk_root, driver.host)
                      if not legs_io.drive_failed(legs_io.drive_dir(driver.disk_root, driver.host, d))]
            if not drives:
                raise MirrorError(f"no working drive on {driver.host} for mirrored disk {disk.name}")
            legs = [new_leg(driver.disk_root, driver.host, definition.name, disk.name, d, 0) for d in drives[:2]]
            for leg in legs:
                legs_io.create_leg_file(Path(leg["path"]), disk.size)
                made.append(Path(leg["path"]))
            state["disks"][disk.name] = {"size": disk.size, "slot": slot, "generation": 0, "legs": legs}
        save(driver._run_dir(definition.name), state)  # noqa: SLF001 - the driver's own run directory
    except BaseException:
        for path in made:
            legs_io.remove_leg(path)
        raise
    return entries


async def before_launch(driver: Any, name: str, incoming: str | None) -> None:
    """Serve every leg whose server is not running (a restart, or after a host power-off)."""
    run_dir = driver._run_dir(name)  # noqa: SLF001
    if incoming is not None and mirrored(GuestDefinition.from_dict(driver._load(name)["definition"])):  # noqa: SLF001
        raise RuntimeFailure("a VM with mirrored disks does not live-migrate: its legs are its host's drives")
    state = load(run_dir)
    if not state["disks"]:
        return
    async with lock(run_dir):
        for disk, entry in state["disks"].items():
            kept = []
            for leg in entry["legs"]:
                path = Path(leg["path"])
                if legs_io.server_alive(path):
                    kept.append(leg)
                elif path.exists() and not legs_io.drive_failed(path.parent):
                    await asyncio.to_thread(legs_io.serve_leg, path, leg["socket"])
                    kept.append(leg)
                else:
                    log.warning("%s/%s: leg on %s is gone (drive failed or replaced)", name, disk, leg["drive"])
            if not kept:
                raise RuntimeFailure(f"mirrored disk {disk}: no leg left on any drive")
            entry["legs"] = kept
        save(run_dir, state)


async def after_launch(driver: Any, name: str) -> None:
    """Plug each mirrored disk (quorum over its legs) into the just-started QEMU."""
    run_dir = driver._run_dir(name)  # noqa: SLF001
    state = load(run_dir)
    if not state["disks"]:
        return
    qmp = MirrorQmp(run_dir / "qmp.sock")
    async with lock(run_dir):
        for disk, entry in sorted(state["disks"].items(), key=lambda kv: int(kv[1]["slot"])):
            await qmp.attach(disk, tuple(leg_of(leg) for leg in entry["legs"]), slot=int(entry["slot"]))


def legs_of(driver: Any, name: str) -> list[Path]:
    return [Path(leg["path"]) for entry in load(driver._run_dir(name))["disks"].values()  # noqa: SLF001
            for leg in entry["legs"]]


def remove_legs(paths: list[Path]) -> None:
    for path in paths:
        legs_io.remove_leg(path)
