"""Mirrored guest disks for VMs: the legs on host drives, and the QMP operations on them.

Role: the plumbing under nonstop/core/components/mirror.py's plans, shared by the QEMU driver's
mirror hook (nonstop/drivers/qemu_mirror.py) and the host-side reconciler
(nonstop/components/mirror_host.py), which imports it from here: drivers never import the
component-redundancy shell.

- Host drives: each drive of a host (``Disk0``, ``Disk1`` in the host spec) is a directory
  ``<disk_dir>/<cluster>/.drives/<host>/<drive>/`` (``drive_dir``). A leg is a qcow2 file
  there, served by its own ``qemu-nbd`` on a Unix socket (``serve_leg``), with a pid file
  beside it. In the lab that process *is* the drive: ``fail_drive_dir`` (what the lab BMC's
  drive failure calls) marks the directory ``FAILED`` and kills every leg server in it, so
  every request on those legs fails with EIO inside QEMU's block layer, as on a vanished
  disk; ``repair_drive_dir`` brings a blank drive (the legs' files are gone, the mark too).
- ``MirrorQmp``: attach a mirrored disk to a running VM (legs + quorum ``blockdev-add``, then
  ``device_add virtio-blk-pci``), drop a dead leg (``x-blockdev-change`` with the child name
  QEMU reports + ``blockdev-del``), and re-mirror onto a new leg (``blockdev-mirror`` →
  READY → pause, last blocks, cancel without pivot → ``x-blockdev-change`` add → resume).
  The pause is the only moment the guest notices, and ``cont`` is sent whatever happens
  after ``stop``.

Must not: decide anything (nonstop/core/components/mirror.py plans; qemu_mirror.py and
nonstop/components/mirror_host.py act), keep QMP connections open between calls (the QEMU
driver connects per operation too), or kill a process it cannot prove is the leg server it
started.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from qemu.qmp import QMPClient

from nonstop.core.components import mirror as plan
from nonstop.core.components.mirror import MirrorLeg, QmpCall
from nonstop.drivers.qemu_runtime import process_start_time as _start_time

FAILED_MARK = "FAILED"
DRIVES_FILE = "drives.json"
DEFAULT_DRIVES = ("Disk0", "Disk1")
"""The host spec's default drives, when the host side has not written the host's own list."""
SOCKET_DIR = Path("/run/nonstop/legs")
LAB_DISK_DIR = Path("/var/lib/nonstop/disks")
"""The QEMU driver's default disk directory, which the lab's agents use."""


class MirrorError(RuntimeError):
    pass


# ------------------------------------------------------------------------ host drives


def drives_root(disk_root: Path, host: str) -> Path:
    """``disk_root`` is the QEMU driver's ``<disk_dir>/<cluster>``."""
    return Path(disk_root) / ".drives" / host


def drive_dir(disk_root: Path, host: str, drive: str) -> Path:
    return drives_root(disk_root, host) / drive


def write_host_drives(disk_root: Path, host: str, drives: list[str]) -> None:
    """Record the host spec's drives (the host side does, from the stored spec)."""
    root = drives_root(disk_root, host)
    root.mkdir(parents=True, exist_ok=True)
    text = json.dumps(sorted(drives))
    path = root / DRIVES_FILE
    if not path.exists() or path.read_text() != text:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(path)


def host_drives(disk_root: Path, host: str) -> list[str]:
    path = drives_root(disk_root, host) / DRIVES_FILE
    with contextlib.suppress(OSError, ValueError):
        return [str(d) for d in json.loads(path.read_text())]
    return list(DEFAULT_DRIVES)


def lab_set_drive(cluster: str, host: str, drive: str, failed: bool, disk_dir: Path = LAB_DISK_DIR) -> None:
    """The lab BMC's drive failure (repair) made real: the drive's leg servers die (a blank drive)."""
    directory = drive_dir(disk_dir / cluster, host, drive)
    if failed:
        fail_drive_dir(directory)
    else:
        repair_drive_dir(directory)


def drive_failed(directory: Path) -> bool:
    return (directory / FAILED_MARK).exists()


def fail_drive_dir(directory: Path) -> list[int]:
    """The lab's drive failure: mark the drive dead and kill every leg server on it."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / FAILED_MARK).write_text(f"{time.time()}\n")
    killed = []
    for pid_file in directory.glob("*.pid"):
        leg_path = pid_file.with_suffix("")
        if _kill_server(pid_file, leg_path):
            killed.append(int(pid_file.read_text().split()[0]))
    return killed


def repair_drive_dir(directory: Path) -> None:
    """A replaced drive: blank (no leg files), working."""
    directory.mkdir(parents=True, exist_ok=True)
    for pid_file in directory.glob("*.pid"):
        _kill_server(pid_file, pid_file.with_suffix(""))
        pid_file.unlink(missing_ok=True)
    for leg_file in directory.glob("*.qcow2"):
        leg_file.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            os.unlink(leg_socket(leg_file))
    (directory / FAILED_MARK).unlink(missing_ok=True)


# ------------------------------------------------------------------------ leg servers


def server_alive(leg_path: Path) -> bool:
    """The leg's qemu-nbd (from its pid file) is running and serves ``leg_path``."""
    return _server_pid(leg_path.with_name(leg_path.name + ".pid"), leg_path) is not None


def _server_pid(pid_file: Path, leg_path: Path) -> int | None:
    try:
        pid_text, start_text = pid_file.read_text().split()[:2]
        pid = int(pid_text)
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    if str(_start_time(pid)) != start_text or str(leg_path).encode() not in cmdline or b"qemu-nbd" not in cmdline[0]:
        return None
    return pid


def _kill_server(pid_file: Path, leg_path: Path) -> bool:
    pid = _server_pid(pid_file, leg_path)
    if pid is None:
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while _start_time(pid) is not None and time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.01)
    return True


def leg_socket(path: Path) -> str:
    """Unix socket paths are short (108 bytes): a digest of the leg's path names its socket."""
    return str(SOCKET_DIR / f"{hashlib.sha256(str(path).encode()).hexdigest()[:20]}.sock")


def sweep_dead_sockets() -> int:
    """Remove leg sockets nobody serves any more (a lab torn down with its VMs running kills
    the leg servers but not their socket files); how many."""
    import socket as sockets

    removed = 0
    for path in SOCKET_DIR.glob("*.sock") if SOCKET_DIR.is_dir() else ():
        probe = sockets.socket(sockets.AF_UNIX, sockets.SOCK_STREAM)
        try:
            probe.settimeout(0.5)
            probe.connect(str(path))
        except ConnectionRefusedError:
            with contextlib.suppress(OSError):
                path.unlink()
                removed += 1
        except OSError:
            pass  # busy or unknown: leave it
        finally:
            probe.close()
    return removed


def create_leg_file(path: Path, size: int) -> None:
    if drive_failed(path.parent):
        raise MirrorError(f"drive {path.parent.name} has failed")
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), str(size)], check=True,
                   capture_output=True, timeout=30)


def serve_leg(path: Path, socket: str, timeout: float = 10.0) -> int:
    """Serve ``path`` on ``socket`` with its own qemu-nbd (it outlives the caller); its pid."""
    if drive_failed(path.parent):
        raise MirrorError(f"drive {path.parent.name} has failed")
    if not path.exists():
        raise MirrorError(f"leg {path} does not exist")
    Path(socket).parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(socket)
    proc = subprocess.Popen(["qemu-nbd", "-f", "qcow2", "-k", socket, "--persistent", "--shared=4",
                             "--cache=none", "--aio=threads", str(path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + timeout
    while not os.path.exists(socket):
        if proc.poll() is not None or time.monotonic() > deadline:
            err = proc.stderr.read().decode() if proc.stderr and proc.poll() is not None else "timeout"
            proc.kill()
            raise MirrorError(f"qemu-nbd for {path} did not start: {err.strip()}")
        time.sleep(0.01)
    if proc.stderr is not None:
        proc.stderr.close()
    pid_file = path.with_name(path.name + ".pid")
    pid_file.write_text(f"{proc.pid} {_start_time(proc.pid)}\n")
    return proc.pid


def remove_leg(path: Path) -> None:
    """Stop the leg's server (if it is still ours and running) and delete its file."""
    pid_file = path.with_name(path.name + ".pid")
    _kill_server(pid_file, path)
    pid_file.unlink(missing_ok=True)
    path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        os.unlink(leg_socket(path))


# ------------------------------------------------------------------------ QMP


@contextlib.asynccontextmanager
async def qmp(socket_path: str | Path, timeout: float = 10.0) -> AsyncIterator[QMPClient]:
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

    async def attach(self, disk: str, legs: tuple[MirrorLeg, ...], slot: int) -> None:
        """Hot-plug a mirrored disk: legs, quorum, virtio-blk device (serial = disk name)."""
        from nonstop.core.guests.qemu_argv import disk_slot

        async with qmp(self.qmp_socket) as c:
            for leg in legs:
                await c.execute("blockdev-add", plan.leg_blockdev(disk, leg))
            await c.execute("blockdev-add", plan.quorum_blockdev(disk, legs))
            await c.execute("device_add", {"driver": "virtio-blk-pci", "drive": plan.disk_node(disk),
                                           "id": f"blk-{disk}", "serial": disk, "addr": f"{disk_slot(slot):#04x}"})

    async def children(self, disk: str, legs: tuple[MirrorLeg, ...]) -> dict[str, str]:
        """Leg node name → quorum child name, for the legs QEMU has attached now."""
        async with qmp(self.qmp_socket) as c:
            graph: Any = await c.execute("x-debug-query-block-graph")
        out = {}
        for leg in legs:
            child = plan.quorum_child(graph, disk, leg)
            if child is not None:
                out[plan.leg_node(disk, leg)] = child
        return out

    async def drop_leg(self, disk: str, leg: MirrorLeg) -> None:
        """Detach ``leg`` from the quorum; the guest keeps running on the others."""
        async with qmp(self.qmp_socket) as c:
            graph: Any = await c.execute("x-debug-query-block-graph")
            child = plan.quorum_child(graph, disk, leg)
            if child is None:
                raise MirrorError(f"{disk} has no child {plan.leg_node(disk, leg)}")
            for call in plan.drop_leg_plan(disk, child, leg):
                await c.execute(call.command, call.arguments)

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
                with contextlib.suppress(Exception):
                    await c.execute("blockdev-del", {"node-name": plan.leg_node(disk, new_leg)})
                raise
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
