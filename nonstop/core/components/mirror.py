"""A mirrored guest disk as QEMU block nodes: a quorum (RAID-1) over two legs (pure).

Role: the one place that knows how a ``redundancy: mirror`` disk looks in QEMU's block
layer, and the QMP steps that drop a dead leg and re-mirror onto a repaired drive.

Shape: each leg is a qcow2 file on one host drive (``Disk0``, ``Disk1``), served by its
own ``qemu-nbd`` process over a Unix socket — in the lab the process *is* the drive: when
the drive fails the process dies and every request to that leg fails with EIO, exactly as
a vanished disk would. In QEMU each leg is a ``raw`` node over an ``nbd`` node, and the
guest's disk is a ``quorum`` node over the legs with ``vote-threshold=1`` and
``read-pattern=fifo``: writes go to every leg and succeed while one leg succeeds, reads go
to the first leg and fall over to the next on an error. That is RAID-1 in QEMU 7.2.

Re-mirror after repair (``remirror_plan``): add the new leg as a free node, run a
``blockdev-mirror`` job from the quorum node onto it (``sync=full``,
``copy-mode=write-blocking``: once READY every guest write reaches both), then, with the
vCPUs paused for a moment and the job's last dirty blocks copied, cancel the READY job (QEMU leaves the target a point-in-time copy,
no pivot) and attach the copy as a new quorum child with ``x-blockdev-change``; resume.

Must not: run QEMU or qemu-nbd, or talk QMP (nonstop/drivers/qemu_mirror_legs.py does).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

QUORUM_READ_PATTERN = "fifo"
VOTE_THRESHOLD = 1


@dataclass(frozen=True)
class MirrorLeg:
    drive: str
    """The host drive holding the leg (``Disk0``): what the BMC reports failed."""
    socket: str
    """Unix socket of the leg's NBD server."""
    generation: int = 0
    """Bumped for every re-mirrored copy, so node names never repeat inside one QEMU."""


def leg_node(disk: str, leg: MirrorLeg) -> str:
    return f"{disk}-{leg.drive}-g{leg.generation}"


def disk_node(disk: str) -> str:
    """The node the guest's virtio-blk device uses (same name as a plain disk's)."""
    return f"disk-{disk}"


def leg_blockdev(disk: str, leg: MirrorLeg) -> dict[str, Any]:
    """``blockdev-add`` arguments (and -blockdev JSON) for one leg."""
    return {
        "driver": "raw", "node-name": leg_node(disk, leg),
        "file": {"driver": "nbd", "server": {"type": "unix", "path": leg.socket}, "reconnect-delay": 0},
    }


def quorum_blockdev(disk: str, legs: tuple[MirrorLeg, ...]) -> dict[str, Any]:
    """The guest's disk node. One leg is a degraded mirror (booted while a drive is down);
    the reconciler adds the second when the drive works again."""
    if not legs:
        raise ValueError(f"a mirror needs a leg, {disk} has none")
    if len({leg.drive for leg in legs}) != len(legs):
        raise ValueError(f"the legs of {disk} must be on different drives: {[leg.drive for leg in legs]}")
    return {
        "driver": "quorum", "node-name": disk_node(disk), "vote-threshold": VOTE_THRESHOLD,
        "read-pattern": QUORUM_READ_PATTERN, "children": [leg_node(disk, leg) for leg in legs],
    }


def mirror_blockdev_args(disk: str, legs: tuple[MirrorLeg, ...]) -> list[str]:
    """``-blockdev`` options for a mirrored disk, legs first (the quorum refers to them)."""
    argv: list[str] = []
    for leg in legs:
        argv += ["-blockdev", json.dumps(leg_blockdev(disk, leg), separators=(",", ":"))]
    return argv + ["-blockdev", json.dumps(quorum_blockdev(disk, legs), separators=(",", ":"))]


SYNCED = "synced"
"""Not a QMP event: wait until the job has copied everything (``offset == len``)."""


@dataclass(frozen=True)
class QmpCall:
    command: str
    arguments: dict[str, Any]
    wait_event: str | None = None
    """A QMP event to wait for after the call (``BLOCK_JOB_READY`` ...)."""


def drop_leg_plan(disk: str, child: str, leg: MirrorLeg) -> tuple[QmpCall, ...]:
    """Detach a dead leg (quorum child ``child``, e.g. ``children.0`` as QEMU named it) and
    delete its nodes; the guest keeps running on the other leg."""
    return (
        QmpCall("x-blockdev-change", {"parent": disk_node(disk), "child": child}),
        QmpCall("blockdev-del", {"node-name": leg_node(disk, leg)}),
    )


def quorum_child(graph: dict[str, Any], disk: str, leg: MirrorLeg) -> str | None:
    """The quorum's name for ``leg`` (``children.N``) in ``x-debug-query-block-graph`` output.

    QEMU numbers children as they are added and reuses the highest number when that child
    is deleted, so the name is read from QEMU rather than counted here."""
    ids = {n.get("name"): n.get("id") for n in graph.get("nodes", [])}
    parent, child = ids.get(disk_node(disk)), ids.get(leg_node(disk, leg))
    for edge in graph.get("edges", []):
        if edge.get("parent") == parent and edge.get("child") == child and parent is not None:
            return str(edge.get("name"))
    return None


def remirror_plan(disk: str, new_leg: MirrorLeg) -> tuple[QmpCall, ...]:
    """Copy the surviving data onto ``new_leg`` and attach it as a quorum child."""
    job = f"remirror-{disk}"
    return (
        QmpCall("blockdev-add", leg_blockdev(disk, new_leg)),
        QmpCall("blockdev-mirror", {"job-id": job, "device": disk_node(disk), "target": leg_node(disk, new_leg),
                                    "sync": "full", "copy-mode": "write-blocking"}, wait_event="BLOCK_JOB_READY"),
        QmpCall("stop", {}, wait_event=SYNCED),
        QmpCall("block-job-cancel", {"device": job}, wait_event="BLOCK_JOB_COMPLETED"),
        QmpCall("x-blockdev-change", {"parent": disk_node(disk), "node": leg_node(disk, new_leg)}),
        QmpCall("cont", {}),
    )


# ----------------------------------------------------------------- reconcile decision
#
# Level-triggered: every pass the host side compares what the drives are (the hardware
# watcher's storage group, or no data) with the legs each mirrored disk has attached, and
# this decides at most one change per disk. Desired: one live leg per working drive, two
# drives per mirror.

LEGS_WANTED = 2


@dataclass(frozen=True)
class DriveView:
    name: str
    failed: bool | None
    """True/False as the BMC reports the drive; None = unknown (no reading)."""
    ok_since: float | None = None
    """When the drive was first seen working after a failure (or since watching began)."""


@dataclass(frozen=True)
class LegView:
    drive: str
    alive: bool
    """Its server answers (in the lab: the NBD server process of the leg is running)."""


@dataclass(frozen=True)
class MirrorAction:
    kind: str
    """``drop`` (detach the leg on ``drive``) or ``remirror`` (copy onto a new leg on ``drive``)."""
    disk: str
    drive: str
    reason: str


DROP = "drop"
REMIRROR = "remirror"


def track_ok_since(previous: dict[str, float | None], failed: dict[str, bool | None],
                   now: float, dead_legs: frozenset[str] = frozenset()) -> dict[str, float | None]:
    """Per drive, since when it has been seen working: reset by a failure or by no data.

    ``dead_legs``: drives on which a leg was just found dead. The BMC's reading may lag
    behind (the watcher has not read the failure yet), so such a drive's clock starts again
    now — a drive is never re-mirrored onto within the window after a leg on it died."""
    out: dict[str, float | None] = {}
    for drive, state in failed.items():
        if state is False:
            before = previous.get(drive)
            out[drive] = now if before is None or drive in dead_legs else before
        else:
            out[drive] = None
    return out


def plan_mirror(disk: str, legs: tuple[LegView, ...], drives: tuple[DriveView, ...], now: float,
                window: float) -> tuple[MirrorAction, ...]:
    """What to do with one mirrored disk now (empty: nothing).

    - A leg whose server is dead or whose drive the BMC reports failed is dropped — but never
      the last leg (QEMU's quorum cannot lose its last child; with every leg dead the disk is
      lost and only an operator can act).
    - A working drive without a leg gets a re-mirrored copy once it has been working for the
      stability window — only with a known reading (no data is never a repair), only while a
      live leg exists to copy from, and one copy at a time.
    """
    by_name = {d.name: d for d in drives}
    dead = [leg for leg in legs
            if not leg.alive or (by_name.get(leg.drive) is not None and by_name[leg.drive].failed is True)]
    if dead and len(legs) > 1:
        leg = dead[0]
        why = "its server is gone" if not leg.alive else f"drive {leg.drive} failed"
        return (MirrorAction(DROP, disk, leg.drive, why),)
    live = [leg for leg in legs if leg not in dead]
    if not live or len(legs) >= LEGS_WANTED:
        return ()
    used = {leg.drive for leg in legs}
    for drive in sorted(drives, key=lambda d: d.name):
        if drive.name in used or drive.failed is not False or drive.ok_since is None:
            continue
        if now - drive.ok_since >= window:
            return (MirrorAction(REMIRROR, disk, drive.name,
                                 f"drive {drive.name} working for {now - drive.ok_since:.1f} s"),)
    return ()
