"""The QEMU driver: real VMs on one host, controlled over QMP, with hot-plug and live migration.

Role: implement ``nonstop.drivers.base.Driver`` for ``kind: vm`` guests. Per guest it keeps a
run directory ``<state_dir>/<guest>/`` (state.json, qmp.sock, console.log, qemu.pid,
qemu.log) and, in the shared disk directory ``<disk_dir>/<cluster>/<guest>/``, the disks and
``layout.json`` — the machine's boot shape plus hot-plugged vCPUs/DIMMs — so that a
migration destination (which sees the same disk directory) starts an identical machine.
QEMU runs inside the host's network namespace (``netns`` option) so its taps live there.

Options (keyword arguments after cluster/host/state_dir): ``netns`` (host namespace name;
None = the agent's own), ``disk_dir`` (shared storage, default /var/lib/nonstop/disks),
``migration_address`` (the host's address other hosts reach for incoming migrations),
``accel`` (force ``kvm``/``tcg``; default: the cached bounded probe), ``image_cache``.

Interface notes (for the base-class owner): boot ids are read from the serial console line
the built-in image prints (``nonstop-guest: ready <boot id>``) and carried across migration
in layout.json; ``wait_serving(name, timeout)`` is a QEMU-only extra the tests and bench use.

Must not: decide placement or retries (the agent does), render QEMU options itself (the
pure ``nonstop.core.guests.qemu_argv`` does), or kill a process it cannot prove is its QEMU.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import subprocess
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

from nonstop.core.guests.model import short_id
from nonstop.core.guests.qemu_argv import (
    DiskAttachment,
    LayoutError,
    MachineLayout,
    NicAttachment,
    QemuLaunch,
    initial_layout,
    plan_memory,
    plan_vcpus,
    render_argv,
)
from nonstop.drivers import qemu_runtime as rt
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
    MigrationEndpoint,
    MigrationError,
    MigrationResult,
)
from nonstop.image import ImageBuildError, ImagePaths, ensure_image

READY_LINE = re.compile(rb"nonstop-guest: ready ([0-9a-f-]{36})")
DEFAULT_DISK_DIR = Path("/var/lib/nonstop/disks")


class QemuDriver(Driver):
    kind: ClassVar[str] = "qemu"
    capabilities: ClassVar[Capabilities] = Capabilities(
        live_migration=True, hotplug_vcpu=True, hotplug_memory=True, adoption=True, console_log=True,
    )

    def __init__(self, *, cluster: str, host: str, state_dir: Path | str, **options: Any) -> None:
        super().__init__(cluster=cluster, host=host, state_dir=state_dir, **options)
        self.netns: str | None = options.get("netns")
        self.disk_root = Path(options.get("disk_dir", DEFAULT_DISK_DIR)) / cluster
        self.migration_address: str = options.get("migration_address", "127.0.0.1")
        self._accel: str | None = options.get("accel")
        self._image_cache: Path | None = options.get("image_cache")
        self._children: dict[str, subprocess.Popen[bytes]] = {}

    # ------------------------------------------------------------------ files and records

    def _run_dir(self, name: str) -> Path:
        return self.state_dir / name

    def _disk_dir(self, name: str) -> Path:
        return self.disk_root / name

    def _load(self, name: str) -> dict[str, Any]:
        path = self._run_dir(name) / "state.json"
        try:
            record: dict[str, Any] = json.loads(path.read_text())
        except FileNotFoundError:
            raise GuestNotFound("no such guest", guest=name) from None
        return record

    def _save(self, name: str, record: dict[str, Any]) -> None:
        path = self._run_dir(name) / "state.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=1, sort_keys=True))
        tmp.replace(path)

    def _layout(self, name: str) -> MachineLayout:
        return MachineLayout.from_dict(json.loads((self._disk_dir(name) / "layout.json").read_text()))

    def _save_layout(self, name: str, layout: MachineLayout, **facts: Any) -> None:
        """Write layout.json; ``facts`` (boot_id, kernel, initrd) ride along for the migration destination."""
        data: dict[str, Any] = layout.to_dict()
        data.update({k: v for k, v in facts.items() if v})
        path = self._disk_dir(name) / "layout.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(path)

    def _tap_name(self, name: str, index: int) -> str:
        return f"nv{short_id(self.cluster, self.host, name, length=9)}{index}"

    # -------------------------------------------------------------------------- lifecycle

    async def create(self, definition: GuestDefinition) -> None:
        name = definition.name
        if (self._run_dir(name) / "state.json").exists():
            raise GuestExists("already defined", guest=name)
        layout = self._check_definition(definition)
        run_dir, disk_dir = self._run_dir(name), self._disk_dir(name)
        created_disk_dir = not disk_dir.exists()
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            disk_dir.mkdir(parents=True, exist_ok=True)
            disks = await asyncio.to_thread(self._create_disks, definition)
            self._save_layout(name, layout)
            self._save(name, {"definition": definition.to_dict(), "disks": disks, "state": "stopped",
                              "owns_disks": True})
        except BaseException as exc:
            shutil.rmtree(run_dir, ignore_errors=True)
            if created_disk_dir:
                shutil.rmtree(disk_dir, ignore_errors=True)
            if isinstance(exc, GuestStartError):
                raise
            if isinstance(exc, rt.RuntimeFailure | OSError):
                raise GuestStartError(str(exc), guest=name, permanent="bad disk" in str(exc)) from exc
            raise

    def _check_definition(self, definition: GuestDefinition) -> MachineLayout:
        try:
            layout = initial_layout(definition.vcpus, definition.max_vcpus, definition.memory, definition.max_memory)
        except LayoutError as exc:
            raise InvalidDefinition(str(exc), guest=definition.name) from exc
        if definition.image != "builtin" and not Path(definition.image).is_file():
            raise InvalidDefinition(f"image {definition.image} not found", guest=definition.name)
        return layout

    def _create_disks(self, definition: GuestDefinition) -> list[dict[str, Any]]:
        disks: list[dict[str, Any]] = []
        base = Path(definition.image) if definition.image != "builtin" else None
        for index, disk in enumerate(definition.disks):
            if disk.path is not None:
                path = Path(disk.path)
                info = rt.image_info(path)
                fmt = str(info["format"])
                if fmt not in ("raw", "qcow2"):
                    raise InvalidDefinition(f"bad disk {path}: format {fmt} (want raw or qcow2)", guest=definition.name)
                disks.append({"name": disk.name, "path": str(path), "format": fmt, "created": False})
                continue
            suffix = "qcow2" if disk.provisioning == "thin" else "raw"
            path = self._disk_dir(definition.name) / f"{disk.name}.{suffix}"
            # The first disk of a guest with a disk image is an overlay on (or copy of) that image.
            fmt = rt.create_disk(path, disk.size, disk.provisioning, base if index == 0 else None)
            disks.append({"name": disk.name, "path": str(path), "format": fmt, "created": True})
        return disks

    async def start(self, name: str) -> GuestStatus:
        record = self._load(name)
        if self._alive(name, record):
            return await self.status(name)
        definition = GuestDefinition.from_dict(record["definition"])
        try:
            need = definition.memory
            available = rt.host_memory_available()
            if need > available:
                raise GuestStartError(
                    f"not enough memory: needs {need // 2**20} MiB, host has {available // 2**20} MiB available",
                    guest=name, permanent=False)
            await self._launch(name, record, self._layout(name), incoming=None)
        except (GuestStartError, rt.RuntimeFailure, ImageBuildError, LayoutError, OSError) as exc:
            reason = exc.reason if isinstance(exc, GuestStartError) else str(exc)
            record = self._load(name)
            record.update(state="failed", failure_reason=reason, pid=None)
            self._save(name, record)
            if isinstance(exc, GuestStartError):
                raise
            raise GuestStartError(reason, guest=name, permanent=isinstance(exc, ImageBuildError | LayoutError)) from exc
        return await self.status(name)

    async def _launch(self, name: str, record: dict[str, Any], layout: MachineLayout, incoming: str | None) -> None:
        """Spawn QEMU and wait for QMP; on any failure no process and no socket are left."""
        definition = GuestDefinition.from_dict(record["definition"])
        run_dir = self._run_dir(name)
        if record.get("kernel") and Path(record["kernel"]).is_file() and Path(record["initrd"]).is_file():
            # A migration destination must load the very kernel/initrd the source booted
            # (their sizes are part of the migrated machine), even if the image was rebuilt since.
            image = ImagePaths(kernel=Path(record["kernel"]), initrd=Path(record["initrd"]))
        else:
            image = await asyncio.to_thread(ensure_image, *([self._image_cache] if self._image_cache else []))
        accel = self._accel or await asyncio.to_thread(rt.probe_accel, image.kernel, image.initrd)
        nics = tuple(
            NicAttachment(tap=vnic.host_ifname or self._tap_name(name, i), mac=vnic.mac, address=vnic.address,
                          gateway=vnic.gateway)
            for i, vnic in enumerate(definition.vnics)
        )
        launch = QemuLaunch(
            guest=name, host=self.host, kernel=str(image.kernel), initrd=str(image.initrd),
            qmp_socket=str(run_dir / "qmp.sock"), console_log=str(run_dir / "console.log"),
            pid_file=str(run_dir / "qemu.pid"), accel=accel, host_channel=str(run_dir / "host.sock"),
            disks=tuple(DiskAttachment(d["name"], d["path"], d["format"]) for d in record["disks"]),
            nics=nics, incoming=incoming,
        )
        argv = render_argv(launch, layout)
        for stale in ("qmp.sock", "host.sock", "qemu.pid", "console.log"):
            (run_dir / stale).unlink(missing_ok=True)
        log = run_dir / "qemu.log"
        log.write_bytes(b"")
        proc = rt.spawn(argv, self.netns, log)
        try:
            await rt.wait_qmp(run_dir / "qmp.sock", proc.pid, proc, timeout=15.0)
            for nic, vnic in zip(nics, definition.vnics, strict=True):
                await asyncio.to_thread(rt.bridge_tap, self.netns, nic.tap, vnic.bridge)
        except BaseException as exc:
            rt.kill_process(proc.pid, proc)
            (run_dir / "qmp.sock").unlink(missing_ok=True)
            detail = rt._last_line(log.read_text(errors="replace"))
            if isinstance(exc, rt.RuntimeFailure):
                raise rt.RuntimeFailure(f"{exc}: {detail}") from exc
            raise
        self._children[name] = proc
        record.update(state="incoming" if incoming else "running", failure_reason=None, pid=proc.pid,
                      pid_start=rt.process_start_time(proc.pid), accel=accel, argv=argv, started_at=time.time(),
                      stopping=False, kernel=str(image.kernel), initrd=str(image.initrd))
        self._save(name, record)

    def _alive(self, name: str, record: dict[str, Any]) -> bool:
        pid = record.get("pid")
        if not pid:
            return False
        child = self._children.get(name)
        if child is not None and child.poll() is not None:
            return False
        return rt.is_our_qemu(pid, record.get("pid_start"), name)

    async def stop(self, name: str, *, timeout: float = 10.0) -> GuestStatus:
        record = self._load(name)
        if self._alive(name, record):
            record["stopping"] = True
            self._save(name, record)
            pid, child = record["pid"], self._children.get(name)
            with contextlib.suppress(rt.RuntimeFailure):
                async with rt.qmp_session(self._run_dir(name) / "qmp.sock") as qmp:
                    await qmp.execute("system_powerdown")
            if not await rt.wait_gone(pid, child, timeout):
                rt.kill_process(pid, child)
                await rt.wait_gone(pid, child, 5.0)
                record["forced"] = True
            else:
                record["forced"] = False
        record.update(state="stopped", pid=None, stopping=False)
        self._children.pop(name, None)
        (self._run_dir(name) / "qmp.sock").unlink(missing_ok=True)
        self._save(name, record)
        return await self.status(name)

    async def destroy(self, name: str) -> None:
        try:
            record = self._load(name)
        except GuestNotFound:
            record = {}
        if record and self._alive(name, record):
            rt.kill_process(record["pid"], self._children.get(name))
            await rt.wait_gone(record["pid"], self._children.get(name), 5.0)
        self._children.pop(name, None)
        shutil.rmtree(self._run_dir(name), ignore_errors=True)
        if record.get("owns_disks"):
            for disk in record.get("disks", []):
                if disk.get("created"):
                    Path(disk["path"]).unlink(missing_ok=True)
            (self._disk_dir(name) / "layout.json").unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                self._disk_dir(name).rmdir()

    async def list_guests(self) -> list[str]:
        if not self.state_dir.is_dir():
            return []
        return sorted(p.parent.name for p in self.state_dir.glob("*/state.json"))

    async def definition(self, name: str) -> GuestDefinition:
        record = self._load(name)
        return GuestDefinition.from_dict(record["definition"])

    async def console_log(self, name: str, *, max_bytes: int = 64 * 1024) -> str:
        self._load(name)
        path = self._run_dir(name) / "console.log"
        if not path.exists():
            return ""
        with path.open("rb") as f:
            f.seek(max(0, path.stat().st_size - max_bytes))
            return f.read().decode(errors="replace")

    def _boot_id(self, name: str, record: dict[str, Any]) -> str | None:
        path = self._run_dir(name) / "console.log"
        if path.exists():
            found = READY_LINE.findall(path.read_bytes()[-256 * 1024 :])
            if found:
                return str(found[-1].decode())
        return record.get("boot_id")

    async def status(self, name: str) -> GuestStatus:
        record = self._load(name)
        definition = GuestDefinition.from_dict(record["definition"])
        base = GuestStatus(name=name, state=GuestState.STOPPED, address=definition.address,
                           boot_id=self._boot_id(name, record), started_at=record.get("started_at"),
                           extra={"accel": record.get("accel"), "host": self.host})
        if record.get("state") == "failed":
            return replace(base, state=GuestState.FAILED, failure_reason=record.get("failure_reason"))
        if not record.get("pid"):
            return base
        if not self._alive(name, record):
            return self._exited(name, record, base)
        pid = record["pid"]
        rss, cpu = rt.process_usage(pid)
        base = replace(base, pid=pid, memory_usage=rss, cpu_seconds=cpu)
        try:
            async with rt.qmp_session(self._run_dir(name) / "qmp.sock") as qmp:
                run = await qmp.execute("query-status")
                cpus = await qmp.execute("query-cpus-fast")
                mem = await qmp.execute("query-memory-size-summary")
                migration = await qmp.execute("query-migrate")
        except rt.RuntimeFailure as exc:
            return replace(base, state=GuestState.RUNNING, extra={**base.extra, "qmp_error": str(exc)})
        assert isinstance(run, dict) and isinstance(cpus, list) and isinstance(mem, dict)
        assert isinstance(migration, dict)
        qemu_state = str(run.get("status"))
        state = {
            "running": GuestState.RUNNING,
            "inmigrate": GuestState.INCOMING,
            "shutdown": GuestState.STOPPING,
            "postmigrate": GuestState.MIGRATING,
            "finish-migrate": GuestState.MIGRATING,
        }.get(qemu_state, GuestState.RUNNING)
        if migration.get("status") in ("active", "setup", "device", "pre-switchover"):
            state = GuestState.MIGRATING
        if record.get("stopping"):
            state = GuestState.STOPPING
        memory = int(mem.get("base-memory", 0)) + int(mem.get("plugged-memory", 0))
        return replace(base, state=state, vcpus=len(cpus), memory=memory,
                       extra={**base.extra, "qemu_status": qemu_state, "migration": migration.get("status")})

    def _exited(self, name: str, record: dict[str, Any], base: GuestStatus) -> GuestStatus:
        """The QEMU process is gone without stop(): a guest power-off is STOPPED, anything else FAILED."""
        child = self._children.get(name)
        code = child.poll() if child is not None else None
        console = (self._run_dir(name) / "console.log")
        powered_off = console.exists() and b"reboot: Power down" in console.read_bytes()[-4096:]
        if code == 0 or powered_off:
            return base
        log = self._run_dir(name) / "qemu.log"
        detail = rt._last_line(log.read_text(errors="replace")) if log.exists() else "no log"
        return replace(base, state=GuestState.FAILED,
                       failure_reason=f"QEMU exited unexpectedly (code {code}): {detail}")

    async def wait_serving(self, name: str, timeout: float = 30.0) -> str:
        """Wait for the built-in image's ready line on the console; returns the boot id."""
        deadline = time.monotonic() + timeout
        path = self._run_dir(name) / "console.log"
        while time.monotonic() < deadline:
            if path.exists():
                found = READY_LINE.search(path.read_bytes())
                if found:
                    return found.group(1).decode()
            record = self._load(name)
            if not self._alive(name, record):
                raise GuestStartError("QEMU exited before the guest was ready", guest=name)
            await asyncio.sleep(0.05)
        raise GuestStartError(f"guest not ready within {timeout:.0f} s", guest=name)

    async def adopt(self) -> dict[str, GuestStatus]:
        found: dict[str, GuestStatus] = {}
        for name in await self.list_guests():
            with contextlib.suppress(GuestNotFound):
                found[name] = await self.status(name)
        return found

    # ----------------------------------------------------------------------------- hot-plug

    async def set_vcpus(self, name: str, vcpus: int) -> GuestStatus:
        record = self._load(name)
        self._require_running(name, record)
        layout = self._layout(name)
        async with rt.qmp_session(self._run_dir(name) / "qmp.sock") as qmp:
            slots = await qmp.execute("query-hotpluggable-cpus")
            assert isinstance(slots, list)
            free = [(int(s["props"].get("socket-id", 0)), int(s["props"].get("core-id", 0)),
                     int(s["props"].get("thread-id", 0))) for s in slots if "qom-path" not in s]
            try:
                devices = plan_vcpus(layout, vcpus, free)
            except LayoutError as exc:
                raise InvalidDefinition(str(exc), guest=name) from exc
            for device in devices:
                await qmp.execute("device_add", {"driver": device.driver, "id": device.id,
                                                 "socket-id": device.socket_id, "core-id": device.core_id,
                                                 "thread-id": device.thread_id})
                layout = replace(layout, cpus=(*layout.cpus, device))
                self._save_layout(name, layout)
        self._update_definition(name, vcpus=layout.vcpus)
        return await self.status(name)

    async def set_memory(self, name: str, memory: int) -> GuestStatus:
        record = self._load(name)
        self._require_running(name, record)
        layout = self._layout(name)
        try:
            dimm = plan_memory(layout, memory)
        except LayoutError as exc:
            raise InvalidDefinition(str(exc), guest=name) from exc
        if dimm is not None:
            async with rt.qmp_session(self._run_dir(name) / "qmp.sock") as qmp:
                await qmp.execute("object-add", {"qom-type": "memory-backend-ram", "id": f"mem-{dimm.id}",
                                                 "size": dimm.size})
                await qmp.execute("device_add", {"driver": "pc-dimm", "id": dimm.id, "memdev": f"mem-{dimm.id}"})
            self._save_layout(name, replace(layout, dimms=(*layout.dimms, dimm)))
        self._update_definition(name, memory=memory)
        return await self.status(name)

    def _require_running(self, name: str, record: dict[str, Any]) -> None:
        if not self._alive(name, record):
            raise GuestStartError("guest is not running", guest=name)

    def _update_definition(self, name: str, **changes: Any) -> None:
        record = self._load(name)
        definition = GuestDefinition.from_dict(record["definition"]).with_changes(**changes)
        record["definition"] = definition.to_dict()
        self._save(name, record)

    # ---------------------------------------------------------------------------- migration

    async def prepare_incoming(self, definition: GuestDefinition) -> MigrationEndpoint:
        """Start QEMU paused with ``-incoming defer`` on the shared disks and listen on a free port."""
        name = definition.name
        if (self._run_dir(name) / "state.json").exists():
            raise GuestExists("already defined on the destination", guest=name)
        layout_path = self._disk_dir(name) / "layout.json"
        if not layout_path.exists():
            raise InvalidDefinition(f"no machine layout at {layout_path}: is the disk directory shared?", guest=name)
        layout_data = json.loads(layout_path.read_text())
        disks = []
        known = {d["name"]: d for d in layout_data.get("disks") or []}
        for disk in definition.disks:
            if disk.name in known:
                if not Path(known[disk.name]["path"]).exists():
                    raise InvalidDefinition(f"disk {known[disk.name]['path']} is not visible on {self.host}", guest=name)
                disks.append(dict(known[disk.name]))
                continue
            suffix = "qcow2" if disk.provisioning == "thin" else "raw"
            path = Path(disk.path) if disk.path else self._disk_dir(name) / f"{disk.name}.{suffix}"
            if not path.exists():
                raise InvalidDefinition(f"disk {path} is not visible on {self.host}", guest=name)
            disks.append({"name": disk.name, "path": str(path), "format": "qcow2" if suffix == "qcow2" else "raw",
                          "created": disk.path is None})
        self._run_dir(name).mkdir(parents=True, exist_ok=True)
        record: dict[str, Any] = {"definition": definition.with_changes(host=self.host).to_dict(), "disks": disks,
                                  "state": "incoming", "owns_disks": True, "boot_id": layout_data.get("boot_id"),
                                  "kernel": layout_data.get("kernel"), "initrd": layout_data.get("initrd")}
        self._save(name, record)
        try:
            await self._launch(name, record, MachineLayout.from_dict(layout_data), incoming="defer")
            async with rt.qmp_session(self._run_dir(name) / "qmp.sock") as qmp:
                await qmp.execute("migrate-incoming", {"uri": f"tcp:{self.migration_address}:0"})
                info = await qmp.execute("query-migrate")
            assert isinstance(info, dict)
            port = next(int(a["port"]) for a in info.get("socket-address", []) if a.get("type") == "inet")
        except BaseException as exc:
            await self.destroy_incoming(name)
            if isinstance(exc, rt.RuntimeFailure | StopIteration | OSError):
                raise MigrationError(f"destination not ready: {exc}", guest=name) from exc
            raise
        return MigrationEndpoint(guest=name, host=self.host, uri=f"tcp:{self.migration_address}:{port}")

    async def destroy_incoming(self, name: str) -> None:
        """Drop a destination copy that never ran, keeping the shared disks (the source still uses them)."""
        with contextlib.suppress(GuestNotFound):
            record = self._load(name)
            record["owns_disks"] = False
            self._save(name, record)
        await self.destroy(name)

    async def migrate(self, name: str, endpoint: MigrationEndpoint, *, timeout: float = 120.0) -> MigrationResult:
        record = self._load(name)
        self._require_running(name, record)
        self._save_layout(name, self._layout(name), boot_id=self._boot_id(name, record), kernel=record.get("kernel"),
                          initrd=record.get("initrd"), disks=record.get("disks"))
        sock = self._run_dir(name) / "qmp.sock"
        started = time.monotonic()
        async with rt.qmp_session(sock) as qmp:
            await qmp.execute("migrate-set-parameters", {"max-bandwidth": 4 * 1024**3, "downtime-limit": 100})
            await qmp.execute("migrate", {"uri": endpoint.uri})
            info: dict[str, Any] = {}
            while True:
                result = await qmp.execute("query-migrate")
                assert isinstance(result, dict)
                info = result
                if info.get("status") == "completed":
                    break
                if info.get("status") in ("failed", "cancelled"):
                    raise MigrationError(f"migration {info.get('status')}: {info.get('error-desc', 'no detail')}",
                                         guest=name)
                if time.monotonic() - started > timeout:
                    await qmp.execute("migrate_cancel")
                    raise MigrationError(f"migration did not finish within {timeout:.0f} s", guest=name)
                await asyncio.sleep(0.02)
            # The source is paused in postmigrate; quit it (the destination owns the guest now).
            with contextlib.suppress(Exception):
                await qmp.execute("quit")
        await rt.wait_gone(record["pid"], self._children.get(name), 10.0)
        self._children.pop(name, None)
        # Forget the guest here without touching the shared disks: they belong to the destination.
        record["owns_disks"] = False
        self._save(name, record)
        await self.destroy(name)
        ram = info.get("ram", {})
        return MigrationResult(
            guest=name, source=self.host, destination=endpoint.host,
            total_seconds=float(info.get("total-time", (time.monotonic() - started) * 1000)) / 1000,
            downtime_seconds=float(info["downtime"]) / 1000 if "downtime" in info else None,
            transferred_bytes=int(ram["transferred"]) if "transferred" in ram else None,
            extra={"wall_seconds": time.monotonic() - started, "setup_ms": info.get("setup-time")},
        )

    async def finish_incoming(self, name: str, timeout: float = 30.0) -> GuestStatus:
        record = self._load(name)
        deadline = time.monotonic() + timeout
        while True:
            status = await self.status(name)
            if status.extra.get("qemu_status") == "running":
                break
            if status.state is GuestState.FAILED or time.monotonic() > deadline:
                raise MigrationError(f"guest not running on {self.host} after migration ({status.state.value})",
                                     guest=name)
            await asyncio.sleep(0.05)
        record = self._load(name)
        record["state"] = "running"
        # The source wrote the boot id into the shared layout file just before migrating.
        with contextlib.suppress(OSError, ValueError):
            record["boot_id"] = json.loads((self._disk_dir(name) / "layout.json").read_text()).get("boot_id")
        record["host_channel_error"] = await self._tell_host(name)
        self._save(name, record)
        return await self.status(name)

    async def _tell_host(self, name: str, timeout: float = 3.0) -> str | None:
        """Write ``host=<this host>`` into the guest's org.nonstop.host port and wait for its ack.

        Returns None on success, else why not (the guest keeps showing its previous host;
        a guest image without the port listener never acks)."""
        path = self._run_dir(name) / "host.sock"
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(path)), timeout)
        except (OSError, TimeoutError) as exc:
            return f"host channel: {exc}"
        try:
            writer.write(f"host={self.host}\n".encode())
            await writer.drain()
            line = await asyncio.wait_for(reader.readline(), timeout)
            return None if line.strip() == b"ack" else f"host channel: unexpected reply {line!r}"
        except (OSError, TimeoutError) as exc:
            return f"host channel: no ack ({exc.__class__.__name__})"
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
