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

Must not: run QEMU or qemu-nbd, or talk QMP (nonstop/components/mirror.py does).
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
    if len(legs) < 2:
        raise ValueError(f"a mirror needs two legs, {disk} has {len(legs)}")
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


def child_name(index: int) -> str:
    """Quorum names its children ``children.N`` in the order they were attached."""
    return f"children.{index}"


def drop_leg_plan(disk: str, child_index: int, leg: MirrorLeg) -> tuple[QmpCall, ...]:
    """Detach a dead leg from the quorum and delete its nodes (the guest keeps running)."""
    return (
        QmpCall("x-blockdev-change", {"parent": disk_node(disk), "child": child_name(child_index)}),
        QmpCall("blockdev-del", {"node-name": leg_node(disk, leg)}),
    )


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
