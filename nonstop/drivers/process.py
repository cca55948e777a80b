"""The process driver: a light guest is a process tree in its own network namespace and cgroup.

Role: run a guest's workload (default: ``python -m nonstop.workload``) through the ``launch.py``
shim, which joins the guest's cgroup and network namespace before exec; enforce vCPUs as a CPU
quota (vcpus × period) and memory as a hard limit; hot-plug by rewriting those limits live; stop
with SIGTERM, a deadline, then SIGKILL to everything left in the cgroup; report OOM kills, exit
codes and signals as the failure reason; and find running guests again after an agent restart
from the pid file (pid + kernel start time + cmdline must all match, so a recycled pid is never
mistaken for our guest).

Per guest, under ``state_dir/<guest>/``: ``definition.json`` (as currently applied),
``runtime.json`` (pid, start time, cmdline, boot id, cgroup, namespace — the pid file),
``failure.json`` (why it last died) and ``console.log`` (the workload's stdout and stderr).
A stopped guest holds no kernel resources: its cgroup and namespace exist only while it runs.

Options: ``host_netns`` (alias ``netns``, as the QEMU driver calls it) — the namespace holding the host's virtual switch (default: the agent's
own); ``cgroup_version`` (default: detected); ``cgroup_v2_root`` (where the unified tree is
mounted, default /sys/fs/cgroup); ``pids_max`` (default 1024).

Must not: decide when to start or stop (the agent does), talk to the store, or signal any pid it
has not verified as its own guest.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import nonstop
from nonstop.drivers import cgroups, process_net
from nonstop.drivers.base import (
    Capabilities,
    Driver,
    GuestDefinition,
    GuestExists,
    GuestNotFound,
    GuestStartError,
    GuestState,
    GuestStatus,
    InvalidDefinition,
    VnicDefinition,
)
from nonstop.drivers.cgroups import Cgroup, CgroupError

MIN_MEMORY = 16 * 1024**2
LAUNCHER = Path(__file__).with_name("launch.py")
POLL_INTERVAL = 0.02
CONSOLE_MAX_BYTES = 1024 * 1024


def default_command(port: int) -> list[str]:
    return [sys.executable, "-m", "nonstop.workload", "--port", str(port)]


@dataclass
class _Guest:
    definition: GuestDefinition
    state: GuestState = GuestState.STOPPED
    pid: int | None = None
    start_ticks: int | None = None
    cmdline: list[str] = field(default_factory=list)
    boot_id: str | None = None
    started_at: float | None = None
    cgroup: Cgroup | None = None
    netns: str | None = None
    popen: subprocess.Popen[bytes] | None = None
    failure_reason: str | None = None
    oom_baseline: int = 0
    last_sample: tuple[float, float] | None = None  # (monotonic, cpu_seconds)


def _proc_start_ticks(pid: int) -> tuple[int, str] | None:
    """(start time in clock ticks since boot, state letter) of ``pid``, None if it does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields_after_comm = stat.rsplit(")", 1)[1].split()
    return int(fields_after_comm[19]), fields_after_comm[0]


def _proc_cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _trim(path: Path, max_bytes: int) -> None:
    """Keep the console log bounded across restarts: past ``max_bytes``, keep its last quarter."""
    try:
        if path.stat().st_size <= max_bytes:
            return
        with path.open("rb") as f:
            f.seek(-max_bytes // 4, os.SEEK_END)
            tail = f.read()
        path.write_bytes(b"--- nonstop: console log trimmed ---\n" + tail)
    except FileNotFoundError:
        pass


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


class ProcessDriver(Driver):
    kind = "process"
    capabilities = Capabilities(
        live_migration=False,
        hotplug_vcpu=True,
        unplug_vcpu=True,
        hotplug_memory=True,
        unplug_memory=True,
        hotplug_nic=True,
        hotplug_disk=False,
        resize_disk=False,
        adoption=True,
        console_log=True,
    )

    def __init__(self, *, cluster: str, host: str, state_dir: Path | str, **options: Any) -> None:
        super().__init__(cluster=cluster, host=host, state_dir=state_dir, **options)
        self.host_netns: str | None = options.get("host_netns") or options.get("netns")
        self.cgroup_version: int = options.get("cgroup_version") or cgroups.detect()
        root = options.get("cgroup_v2_root")
        self.cgroup_v2_root: Path | None = Path(root) if root else None
        self.pids_max: int = int(options.get("pids_max", 1024))
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._guests: dict[str, _Guest] = {}
        # Guests whose launch (netns, vNICs, cgroup, exec) is running in a worker thread right now.
        # Until it returns the guest has no live pid yet, and that is not a death: status must not
        # tear its resources down under the launch (set/cleared by the thread, so a cancelled start
        # still protects a launch that goes on).
        self._launching: set[str] = set()

    # ------------------------------------------------------------------ bookkeeping

    def _dir(self, name: str) -> Path:
        return self.state_dir / name

    def _get(self, name: str) -> _Guest:
        guest = self._guests.get(name)
        if guest is None:
            raise GuestNotFound("no such guest", guest=name)
        return guest

    def _cgroup_name(self, name: str) -> str:
        return f"nonstop.{self.cluster}.{name}"

    def _save_definition(self, guest: _Guest) -> None:
        _write_json(self._dir(guest.definition.name) / "definition.json", guest.definition.to_dict())

    def _save_failure(self, guest: _Guest) -> None:
        path = self._dir(guest.definition.name) / "failure.json"
        if guest.failure_reason is None:
            path.unlink(missing_ok=True)
        else:
            _write_json(path, {"reason": guest.failure_reason, "boot_id": guest.boot_id})

    def _validate(self, d: GuestDefinition) -> None:
        if d.kind != "process":
            raise InvalidDefinition(f"the process driver runs process guests, not {d.kind}", guest=d.name)
        if d.vcpus < 1 or d.max_vcpus < d.vcpus:
            raise InvalidDefinition(f"bad vcpus {d.vcpus} (max {d.max_vcpus})", guest=d.name)
        if d.memory < MIN_MEMORY:
            raise InvalidDefinition(
                f"memory {d.memory // 2**20}MiB is below the {MIN_MEMORY // 2**20}MiB a process guest needs",
                guest=d.name,
            )
        if d.command is not None and not d.command:
            raise InvalidDefinition("empty command", guest=d.name)
        if len(d.vnics) > 16:
            raise InvalidDefinition("at most 16 vNICs", guest=d.name)

    # ------------------------------------------------------------------ lifecycle

    async def create(self, definition: GuestDefinition) -> None:
        name = definition.name
        if name in self._guests:
            raise GuestExists("guest already defined", guest=name)
        self._validate(definition)
        self._dir(name).mkdir(parents=True, exist_ok=True)
        # Pin each vNIC's host interface name now, so unplugging one never renames the others.
        vnics = tuple(
            v if v.host_ifname else replace(v, host_ifname=process_net.vnic_plan(self.host_netns, self.cluster, name, i, v))
            for i, v in enumerate(definition.vnics)
        )
        guest = _Guest(definition=definition.with_changes(vnics=vnics))
        self._save_definition(guest)
        self._save_failure(guest)
        self._guests[name] = guest

    async def start(self, name: str) -> GuestStatus:
        guest = self._get(name)
        if guest.state is GuestState.RUNNING and self._alive(guest):
            return await self.status(name)
        d = guest.definition
        guest.state = GuestState.STARTING
        guest.failure_reason = None
        try:
            # pyroute2's sync API runs its own event loop: netlink work happens in a worker thread.
            self._launching.add(name)
            await asyncio.to_thread(self._launch_marked, guest)
        except GuestStartError as exc:
            await asyncio.to_thread(self._release, guest)
            guest.state = GuestState.FAILED
            guest.failure_reason = exc.reason
            self._save_failure(guest)
            raise
        guest.state = GuestState.RUNNING
        self._save_failure(guest)
        _write_json(
            self._dir(d.name) / "runtime.json",
            {
                "pid": guest.pid,
                "start_ticks": guest.start_ticks,
                "cmdline": guest.cmdline,
                "boot_id": guest.boot_id,
                "started_at": guest.started_at,
                "netns": guest.netns,
                "cgroup_version": self.cgroup_version,
                "cgroup": guest.cgroup.as_record() if guest.cgroup else {},
                "oom_baseline": guest.oom_baseline,
            },
        )
        return await self.status(name)

    def _launch_marked(self, guest: _Guest) -> None:
        try:
            self._launch(guest)
        finally:
            self._launching.discard(guest.definition.name)

    def _launch(self, guest: _Guest) -> None:
        """Namespace, vNICs, cgroup with limits, then the launcher; raises GuestStartError."""
        d = guest.definition
        ns = process_net.netns_name(self.cluster, d.name)
        cg = cgroups.for_guest(self._cgroup_name(d.name), self.cgroup_version, self.cgroup_v2_root)
        guest.netns, guest.cgroup = ns, cg
        try:
            process_net.create_netns(ns)
            for index, vnic in enumerate(d.vnics):
                process_net.plug(self.host_netns, self.cluster, d.name, ns, self._index(d.name, index, vnic), vnic)
            cg.remove()
            cg.create()
            cg.set_cpu(d.vcpus)
            cg.set_memory(d.memory)
            cg.set_pids(self.pids_max)
            guest.oom_baseline = cg.stats().oom_kills
        except (process_net.VnicError, CgroupError, OSError) as exc:
            raise GuestStartError(f"cannot prepare guest resources: {exc}", guest=d.name) from exc

        command = list(d.command) if d.command is not None else default_command(d.port)
        boot_id = uuid.uuid4().hex[:16]
        env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "PYTHONPATH": str(Path(nonstop.__file__).resolve().parent.parent),
            "NONSTOP_GUEST": d.name,
            "NONSTOP_HOST": self.host,
            "NONSTOP_CLUSTER": self.cluster,
            "NONSTOP_BOOT_ID": boot_id,
            "NONSTOP_PORT": str(d.port),
            **dict(d.env),
        }
        argv = [sys.executable, "-S", "-E", str(LAUNCHER)]
        for procs in cg.procs_files():
            argv += ["--procs", procs]
        argv += ["--netns", process_net.netns_path(ns)]
        read_fd, write_fd = os.pipe()
        argv += ["--status-fd", str(write_fd), "--", *command]
        console = self._dir(d.name) / "console.log"
        _trim(console, CONSOLE_MAX_BYTES)
        try:
            with console.open("ab") as log:
                log.write(f"--- nonstop: starting boot {boot_id} at {time.time():.3f}\n".encode())
                log.flush()
                popen = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    env=env,
                    cwd=self._dir(d.name),
                    pass_fds=(write_fd,),
                    start_new_session=True,  # survives the agent: no job-control signals reach it
                )
        except OSError as exc:
            os.close(read_fd)
            os.close(write_fd)
            raise GuestStartError(f"cannot start launcher: {exc}", guest=d.name) from exc
        os.close(write_fd)
        # EOF without data = exec succeeded (close-on-exec); otherwise the launcher says why.
        chunks = []
        while chunk := os.read(read_fd, 4096):
            chunks.append(chunk)
        os.close(read_fd)
        if chunks:
            popen.wait()
            reason = b"".join(chunks).decode(errors="replace")
            raise GuestStartError(reason, guest=d.name, permanent=reason.startswith("cannot run"))
        ticks = _proc_start_ticks(popen.pid)
        guest.popen, guest.pid, guest.boot_id = popen, popen.pid, boot_id
        guest.start_ticks = ticks[0] if ticks else None
        guest.cmdline = _proc_cmdline(popen.pid)
        guest.started_at = time.time()
        guest.last_sample = None

    def _ifname(self, name: str, index: int, vnic: VnicDefinition) -> str:
        return vnic.host_ifname or process_net.vnic_plan(self.host_netns, self.cluster, name, index, vnic)

    def _index(self, name: str, position: int, vnic: VnicDefinition) -> int:
        """The vNIC's slot number: the one its pinned host name was derived from (stable across unplugs)."""
        for index in range(64):
            if vnic.host_ifname in (process_net.vnic_plan(self.host_netns, self.cluster, name, index, vnic),
                                    process_net.host_ifname(self.cluster, name, index)):
                return index
        return position

    def _free_index(self, d: GuestDefinition, vnic: VnicDefinition) -> int:
        taken = {v.host_ifname for v in d.vnics}
        index = len(d.vnics)
        while process_net.vnic_plan(self.host_netns, self.cluster, d.name, index, vnic) in taken:
            index += 1
        return index

    def _alive(self, guest: _Guest) -> bool:
        """True while the guest's main process runs; reaps it when it is our child."""
        if guest.pid is None:
            return False
        if guest.popen is not None:
            return guest.popen.poll() is None
        info = _proc_start_ticks(guest.pid)
        return info is not None and info[0] == guest.start_ticks and info[1] not in ("Z", "X")

    def _death_reason(self, guest: _Guest) -> tuple[GuestState, str | None]:
        """Why the main process is gone; reads the cgroup before it is removed."""
        oom = 0
        limit = guest.definition.memory
        if guest.cgroup is not None and guest.cgroup.exists():
            with contextlib.suppress(OSError, ValueError):
                stats = guest.cgroup.stats()
                oom = stats.oom_kills - guest.oom_baseline
                limit = stats.memory_limit or limit
        code = guest.popen.returncode if guest.popen is not None else None
        if oom > 0:
            return GuestState.FAILED, f"killed by the OOM killer at its memory limit of {limit // 2**20}MiB"
        if code is None:
            return GuestState.FAILED, "guest process exited (status unknown: it was adopted, not our child)"
        if code == 0:
            return GuestState.STOPPED, None
        if code < 0:
            return GuestState.FAILED, f"killed by signal {signal.Signals(-code).name}"
        return GuestState.FAILED, f"workload exited with status {code}{self._console_hint(guest)}"

    def _console_hint(self, guest: _Guest) -> str:
        tail = self._tail(guest.definition.name, 400).strip().splitlines()
        return f": {tail[-1][:200]}" if tail else ""

    def _release(self, guest: _Guest) -> None:
        """Kill whatever is left in the cgroup, remove it, the namespace and the host vNIC ends."""
        if guest.cgroup is not None:
            with contextlib.suppress(CgroupError):
                guest.cgroup.remove()
        d = guest.definition
        for position, vnic in enumerate(d.vnics):
            index = self._index(d.name, position, vnic)
            process_net.unplug(self.host_netns, self.cluster, d.name, index, self._ifname(d.name, index, vnic))
        process_net.remove_netns(guest.netns or process_net.netns_name(self.cluster, d.name))
        if guest.popen is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                guest.popen.wait(timeout=1)
        guest.pid = guest.popen = None
        (self._dir(d.name) / "runtime.json").unlink(missing_ok=True)

    async def _observe_exit(self, guest: _Guest) -> None:
        if guest.state is GuestState.STARTING and guest.definition.name in self._launching:
            return  # no pid yet is the launch in progress, not an exit (see _launching)
        if guest.state in (GuestState.RUNNING, GuestState.STARTING) and not self._alive(guest):
            guest.state, guest.failure_reason = self._death_reason(guest)
            await asyncio.to_thread(self._release, guest)
            self._save_failure(guest)

    async def stop(self, name: str, *, timeout: float = 10.0) -> GuestStatus:
        guest = self._get(name)
        await self._observe_exit(guest)
        if guest.state in (GuestState.RUNNING, GuestState.STARTING) and guest.pid is not None:
            guest.state = GuestState.STOPPING
            with contextlib.suppress(ProcessLookupError):
                os.kill(guest.pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while self._alive(guest) and time.monotonic() < deadline:
                await asyncio.sleep(POLL_INTERVAL)
            if guest.cgroup is not None:
                guest.cgroup.kill_all(signal.SIGKILL)
            while self._alive(guest) and time.monotonic() < deadline + 2:
                await asyncio.sleep(POLL_INTERVAL)
        await asyncio.to_thread(self._release, guest)
        guest.state, guest.failure_reason = GuestState.STOPPED, None
        self._save_failure(guest)
        return await self.status(name)

    async def destroy(self, name: str) -> None:
        guest = self._guests.pop(name, None)
        if guest is None:
            definition_file = self._dir(name) / "definition.json"
            try:
                guest = _Guest(definition=GuestDefinition.from_dict(json.loads(definition_file.read_text())))
            except (FileNotFoundError, ValueError, TypeError, KeyError):
                guest = _Guest(definition=GuestDefinition(name=name, cluster=self.cluster, host=self.host))
            guest.cgroup = cgroups.for_guest(self._cgroup_name(name), self.cgroup_version, self.cgroup_v2_root)
            self._load_runtime(guest)
        await asyncio.to_thread(self._release, guest)
        directory = self._dir(name)
        if directory.is_dir():
            for child in directory.iterdir():
                child.unlink(missing_ok=True)
            directory.rmdir()

    async def status(self, name: str) -> GuestStatus:
        guest = self._get(name)
        await self._observe_exit(guest)
        d = guest.definition
        base: dict[str, Any] = {
            "name": name,
            "state": guest.state,
            "address": d.address,
            "failure_reason": guest.failure_reason,
            "boot_id": guest.boot_id,
        }
        if guest.state is not GuestState.RUNNING or guest.cgroup is None:
            return GuestStatus(**base)
        try:
            stats = guest.cgroup.stats()
        except (OSError, ValueError):
            return GuestStatus(**base, pid=guest.pid, started_at=guest.started_at)
        now = time.monotonic()
        usage = None
        if guest.last_sample is not None and now > guest.last_sample[0]:
            usage = max(0.0, (stats.cpu_seconds - guest.last_sample[1]) / (now - guest.last_sample[0]))
        guest.last_sample = (now, stats.cpu_seconds)
        return GuestStatus(
            **base,
            pid=guest.pid,
            vcpus=int(stats.quota_vcpus) if stats.quota_vcpus else d.vcpus,
            memory=stats.memory_limit,
            cpu_seconds=stats.cpu_seconds,
            cpu_usage=usage,
            cpu_throttled_seconds=stats.throttled_seconds,
            throttled_periods=stats.nr_throttled,
            total_periods=stats.nr_periods,
            memory_usage=stats.memory_usage,
            memory_pressure=stats.memory_pressure,
            memory_limit_hits=stats.limit_hits,
            oom_kills=stats.oom_kills - guest.oom_baseline,
            started_at=guest.started_at,
            extra={"netns": guest.netns, "cgroup_version": self.cgroup_version},
        )

    async def list_guests(self) -> list[str]:
        on_disk = {p.parent.name for p in self.state_dir.glob("*/definition.json")}
        return sorted(on_disk | set(self._guests))

    async def definition(self, name: str) -> GuestDefinition:
        return self._get(name).definition

    async def console_log(self, name: str, *, max_bytes: int = 64 * 1024) -> str:
        self._get(name)
        return self._tail(name, max_bytes)

    def _tail(self, name: str, max_bytes: int) -> str:
        path = self._dir(name) / "console.log"
        try:
            with path.open("rb") as f:
                f.seek(max(0, path.stat().st_size - max_bytes))
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    # ------------------------------------------------------------------ adoption

    def _load_runtime(self, guest: _Guest) -> bool:
        """Fill the guest from its pid file; True if its process is alive and verifiably ours."""
        try:
            rt = json.loads((self._dir(guest.definition.name) / "runtime.json").read_text())
        except (FileNotFoundError, ValueError):
            return False
        guest.pid, guest.start_ticks = rt.get("pid"), rt.get("start_ticks")
        guest.cmdline, guest.boot_id = rt.get("cmdline", []), rt.get("boot_id")
        guest.started_at, guest.netns = rt.get("started_at"), rt.get("netns")
        guest.oom_baseline = rt.get("oom_baseline", 0)
        if rt.get("cgroup"):
            guest.cgroup = cgroups.from_record(rt.get("cgroup_version", self.cgroup_version), rt["cgroup"])
        if guest.pid is None:
            return False
        # A recycled pid has another start time or command line: never adopt (or signal) it.
        return self._alive(guest) and _proc_cmdline(guest.pid) == guest.cmdline

    async def adopt(self) -> dict[str, GuestStatus]:
        found: dict[str, GuestStatus] = {}
        for name in await self.list_guests():
            if name in self._guests:
                found[name] = await self.status(name)
                continue
            try:
                data = json.loads((self._dir(name) / "definition.json").read_text())
                guest = _Guest(definition=GuestDefinition.from_dict(data))
            except (FileNotFoundError, ValueError, TypeError, KeyError):
                continue
            with contextlib.suppress(FileNotFoundError, ValueError):
                guest.failure_reason = json.loads((self._dir(name) / "failure.json").read_text())["reason"]
            self._guests[name] = guest
            if self._load_runtime(guest):
                guest.state = GuestState.RUNNING
            elif guest.pid is not None:
                # It died while nobody watched: find out why, then clean up what it left.
                guest.state = GuestState.RUNNING
                if not self._alive(guest) or _proc_cmdline(guest.pid) != guest.cmdline:
                    guest.pid = None
                await self._observe_exit(guest)
            else:
                guest.state = GuestState.FAILED if guest.failure_reason else GuestState.STOPPED
            found[name] = await self.status(name)
        return found

    # ------------------------------------------------------------------ hot-plug

    async def set_vcpus(self, name: str, vcpus: int) -> GuestStatus:
        guest = self._get(name)
        d = guest.definition
        if not 1 <= vcpus <= d.max_vcpus:
            raise InvalidDefinition(f"vcpus {vcpus} outside 1..{d.max_vcpus}", guest=name)
        if guest.state is GuestState.RUNNING and guest.cgroup is not None:
            guest.cgroup.set_cpu(vcpus)
        guest.definition = d.with_changes(vcpus=vcpus)
        self._save_definition(guest)
        return await self.status(name)

    async def set_memory(self, name: str, memory: int) -> GuestStatus:
        guest = self._get(name)
        d = guest.definition
        if not MIN_MEMORY <= memory <= d.max_memory:
            raise InvalidDefinition(f"memory {memory} outside {MIN_MEMORY}..{d.max_memory}", guest=name)
        if guest.state is GuestState.RUNNING and guest.cgroup is not None:
            try:
                guest.cgroup.set_memory(memory)
            except CgroupError as exc:
                raise GuestStartError(f"cannot change memory limit: {exc}", guest=name) from exc
        guest.definition = d.with_changes(memory=memory)
        self._save_definition(guest)
        return await self.status(name)

    async def attach_vnic(self, name: str, vnic: VnicDefinition) -> GuestStatus:
        guest = self._get(name)
        d = guest.definition
        index = self._free_index(d, vnic)
        vnic = replace(vnic, host_ifname=process_net.vnic_plan(self.host_netns, self.cluster, name, index, vnic))
        if guest.state is GuestState.RUNNING and guest.netns:
            try:
                await asyncio.to_thread(process_net.plug, self.host_netns, self.cluster, name, guest.netns, index, vnic)
            except process_net.VnicError as exc:
                raise GuestStartError(str(exc), guest=name) from exc
        guest.definition = d.with_changes(vnics=(*d.vnics, vnic))
        self._save_definition(guest)
        return await self.status(name)

    async def detach_vnic(self, name: str, mac: str) -> GuestStatus:
        guest = self._get(name)
        d = guest.definition
        for position, vnic in enumerate(d.vnics):
            if vnic.mac == mac:
                index = self._index(name, position, vnic)
                await asyncio.to_thread(process_net.unplug, self.host_netns, self.cluster, name, index,
                                        self._ifname(name, index, vnic))
                guest.definition = d.with_changes(vnics=tuple(v for v in d.vnics if v.mac != mac))
                self._save_definition(guest)
                break
        else:
            raise GuestNotFound(f"no vNIC with MAC {mac}", guest=name)
        return await self.status(name)
