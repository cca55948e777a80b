"""Mirrored guest disks for VMs: the legs on two host drives, and the QMP operations on them.

Role: the shell around nonstop/core/components/mirror.py.

- ``DriveLegs``: one leg of a mirrored disk per host drive — a qcow2 file in the drive's
  directory (``<drive_dir>/<guest>-<disk>-g<N>.qcow2``) served by its own ``qemu-nbd`` on a
  Unix socket. In the lab, that process is the drive: ``fail_drive(drive)`` kills it (every
  request on that leg then fails with EIO, as on a dead disk), ``repair_drive(drive)`` creates
  a fresh, empty leg on the drive (a replaced disk is blank) and starts its server.
- ``MirrorQmp``: attach a mirrored disk to a running VM (legs + quorum ``blockdev-add``, then
  ``device_add virtio-blk-pci``), drop a dead leg (``x-blockdev-change`` + ``blockdev-del``),
  and re-mirror onto a new leg (``blockdev-mirror`` → READY → pause, last blocks, cancel
  without pivot → ``x-blockdev-change`` add → resume). The pause is the only moment the guest
  notices, and ``cont`` is sent whatever happens after ``stop``.

The BMC's ``on_component("drive", name, failed)`` hook is where a lab calls ``fail_drive`` /
``repair_drive``; the hardware watcher's events tell the operator.

Must not: decide anything (which leg is dead comes from the caller), keep QMP connections
open between calls (the QEMU driver connects per operation too), or touch files outside the
drive directories it was given.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qemu.qmp import QMPClient

from nonstop.core.components import mirror as plan
from nonstop.core.components.mirror import MirrorLeg, QmpCall


class MirrorError(RuntimeError):
    pass


@dataclass
class LegProcess:
    leg: MirrorLeg
    path: Path
    proc: subprocess.Popen[bytes]


@dataclass
class DriveLegs:
    """The legs of one mirrored disk (``disk``) of ``guest`` on the host's drives."""

    guest: str
    disk: str
    size: int
    drives: dict[str, Path]
    """drive name (``Disk0``) → the directory standing for it."""
    sockets: Path
    running: dict[str, LegProcess] = field(default_factory=dict)
    generation: int = 0

    def _start(self, drive: str) -> LegProcess:
        directory = self.drives[drive]
        directory.mkdir(parents=True, exist_ok=True)
        self.sockets.mkdir(parents=True, exist_ok=True)
        leg = MirrorLeg(drive, str(self.sockets / f"{self.guest}-{self.disk}-{drive}-g{self.generation}.sock"),
                        self.generation)
        path = directory / f"{self.guest}-{self.disk}-g{self.generation}.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), str(self.size)], check=True,
                       capture_output=True, timeout=30)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(leg.socket)
        proc = subprocess.Popen(["qemu-nbd", "-f", "qcow2", "-k", leg.socket, "--persistent", "--shared=4",
                                 "--cache=none", "--aio=threads", str(path)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        deadline = time.monotonic() + 10
        while not os.path.exists(leg.socket):
            if proc.poll() is not None or time.monotonic() > deadline:
                err = proc.stderr.read().decode() if proc.stderr and proc.poll() is not None else "timeout"
                proc.kill()
                raise MirrorError(f"qemu-nbd for {path} did not start: {err.strip()}")
            time.sleep(0.01)
        running = LegProcess(leg, path, proc)
        self.running[drive] = running
        return running

    def start(self) -> tuple[MirrorLeg, ...]:
        """Create and serve one leg per drive (a new disk: both blank)."""
        if len(self.drives) < 2:
            raise MirrorError(f"a mirror needs two drives, got {sorted(self.drives)}")
        return tuple(self._start(d).leg for d in sorted(self.drives))

    def fail_drive(self, drive: str) -> MirrorLeg | None:
        """The drive died: its leg's server is killed (requests on it now fail). The leg, or None."""
        running = self.running.pop(drive, None)
        if running is None:
            return None
        with contextlib.suppress(ProcessLookupError):
            running.proc.send_signal(signal.SIGKILL)
        running.proc.wait(timeout=5)
        return running.leg

    def repair_drive(self, drive: str) -> MirrorLeg:
        """A replaced (blank) drive: a fresh leg of the next generation, served and empty."""
        if drive in self.running:
            raise MirrorError(f"drive {drive} of {self.guest}/{self.disk} is not failed")
        self.generation += 1
        return self._start(drive).leg

    def close(self, remove_files: bool = True) -> None:
        for drive in list(self.running):
            running = self.running.pop(drive)
            with contextlib.suppress(ProcessLookupError):
                running.proc.kill()
            running.proc.wait(timeout=5)
            if remove_files:
                running.path.unlink(missing_ok=True)
        if remove_files:
            for directory in self.drives.values():
                for stale in directory.glob(f"{self.guest}-{self.disk}-g*.qcow2"):
                    stale.unlink(missing_ok=True)


@contextlib.asynccontextmanager
async def qmp(socket_path: str | Path, timeout: float = 5.0) -> AsyncIterator[QMPClient]:
    client = QMPClient(f"nonstop-mirror-{Path(socket_path).parent.name}")
    await asyncio.wait_for(client.connect(str(socket_path)), timeout)
    try:
        yield client
    finally:
        await client.disconnect()


class MirrorQmp:
    """QMP operations on the mirrored disks of one VM (its main QMP socket)."""

    def __init__(self, qmp_socket: str | Path, *, job_timeout: float = 120.0) -> None:
        self.qmp_socket = Path(qmp_socket)
        self.job_timeout = job_timeout
        self.children: dict[str, list[MirrorLeg]] = {}
        """disk → its quorum children in attach order (the index QEMU gives is in ``_index``)."""
        self._index: dict[tuple[str, str], int] = {}
        self._next: dict[str, int] = {}

    def _attached(self, disk: str, leg: MirrorLeg) -> None:
        self.children.setdefault(disk, []).append(leg)
        index = self._next.get(disk, 0)
        self._index[(disk, plan.leg_node(disk, leg))] = index
        self._next[disk] = index + 1

    async def attach(self, disk: str, legs: tuple[MirrorLeg, ...], slot: int) -> None:
        """Hot-plug a mirrored disk: legs, quorum, virtio-blk device (serial = disk name)."""
        from nonstop.core.guests.qemu_argv import disk_slot

        async with qmp(self.qmp_socket) as c:
            for leg in legs:
                await c.execute("blockdev-add", plan.leg_blockdev(disk, leg))
            await c.execute("blockdev-add", plan.quorum_blockdev(disk, legs))
            await c.execute("device_add", {"driver": "virtio-blk-pci", "drive": plan.disk_node(disk),
                                           "id": f"blk-{disk}", "serial": disk, "addr": f"{disk_slot(slot):#04x}"})
        for leg in legs:
            self._attached(disk, leg)

    def adopt(self, disk: str, legs: tuple[MirrorLeg, ...]) -> None:
        """A VM booted with the mirror on its command line: children.0, children.1 ... in order."""
        for leg in legs:
            self._attached(disk, leg)

    async def drop_leg(self, disk: str, drive: str) -> MirrorLeg:
        """Detach the (dead) leg on ``drive`` from the quorum; the guest keeps running on the other."""
        leg = next((lg for lg in self.children.get(disk, []) if lg.drive == drive), None)
        if leg is None:
            raise MirrorError(f"{disk} has no leg on {drive}")
        index = self._index[(disk, plan.leg_node(disk, leg))]
        async with qmp(self.qmp_socket) as c:
            for call in plan.drop_leg_plan(disk, index, leg):
                await c.execute(call.command, call.arguments)
        self.children[disk].remove(leg)
        return leg

    async def remirror(self, disk: str, new_leg: MirrorLeg) -> dict[str, float]:
        """Copy the disk onto ``new_leg`` and attach it; timings (copy, pause) in seconds."""
        timings: dict[str, float] = {}
        started = time.monotonic()
        stopped_at: float | None = None
        async with qmp(self.qmp_socket) as c:
            try:
                for call in plan.remirror_plan(disk, new_leg):
                    await c.execute(call.command, call.arguments)
                    if call.command == "stop":
                        stopped_at = time.monotonic()
                        timings["copy"] = stopped_at - started
                    elif call.command == "cont":
                        timings["paused"] = time.monotonic() - (stopped_at or started)
                        stopped_at = None
                    if call.wait_event is not None:
                        await self._wait_job(c, call, f"remirror-{disk}")
            except BaseException:
                if stopped_at is not None:
                    with contextlib.suppress(Exception):
                        await c.execute("cont")
                with contextlib.suppress(Exception):
                    await c.execute("block-job-cancel", {"device": f"remirror-{disk}", "force": True})
                raise
        self._attached(disk, new_leg)
        timings["total"] = time.monotonic() - started
        return timings

    async def _wait_job(self, c: QMPClient, call: QmpCall, job: str) -> None:
        deadline = time.monotonic() + self.job_timeout
        while True:
            jobs: Any = await c.execute("query-block-jobs")
            mine = next((j for j in jobs if j.get("device") == job), None)
            if call.wait_event == "BLOCK_JOB_READY" and mine is not None and mine.get("ready"):
                return
            if call.wait_event == plan.SYNCED and mine is not None and mine["offset"] == mine["len"]:
                return
            if call.wait_event == "BLOCK_JOB_COMPLETED" and mine is None:
                return
            if mine is None and call.wait_event != "BLOCK_JOB_COMPLETED":
                raise MirrorError(f"block job {job} ended before {call.wait_event}")
            if mine is not None and mine.get("io-status") not in (None, "ok"):
                raise MirrorError(f"block job {job}: I/O status {mine.get('io-status')}")
            if time.monotonic() > deadline:
                raise MirrorError(f"block job {job} not {call.wait_event} after {self.job_timeout:g} s")
            await asyncio.sleep(0.02)

    async def health(self, disk: str) -> list[str]:
        """Node names of the quorum's children as QEMU sees them now."""
        async with qmp(self.qmp_socket) as c:
            nodes: Any = await c.execute("query-named-block-nodes", {"flat": True})
        quorum = next((n for n in nodes if n.get("node-name") == plan.disk_node(disk)), None)
        if quorum is None:
            raise MirrorError(f"no quorum node for {disk}")
        children = [n["node-name"] for n in nodes if str(n.get("node-name", "")).startswith(f"{disk}-")]
        return sorted(children)
