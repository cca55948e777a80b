"""The QEMU driver's lifecycle half: records, create/start/stop/destroy, status, adoption.

Role: ``QemuCore`` keeps, per guest, a run directory ``<state_dir>/<guest>/`` (state.json,
qmp.sock, host.sock, console.log, qemu.pid, qemu.log) and, in the shared disk directory
``<disk_dir>/<cluster>/<guest>/``, the disks and ``layout.json`` — the machine's boot shape
plus hot-plugged vCPUs/DIMMs and device slots — so a migration destination (which sees the
same disk directory) starts an identical machine. QEMU runs inside the host's network
namespace (``netns`` option) so its taps live there. Hot-plug is added by
``qemu_hotplug.QemuHotplug`` and migration by ``qemu.QemuDriver`` on top of this class.

Must not: decide placement or retries (the agent does), render QEMU options itself (the
pure ``nonstop.core.guests.qemu_argv`` does), or kill a process it cannot prove is its QEMU.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from qemu.qmp import QMPError

from nonstop.core.guests.model import short_id
from nonstop.core.guests.qemu_argv import (
    DiskAttachment,
    LayoutError,
    MachineLayout,
    NicAttachment,
    QemuLaunch,
    initial_layout,
    render_argv,
)
from nonstop.drivers import qemu_runtime as rt
from nonstop.drivers.base import (
    Capabilities,
    Driver,
    DriverError,
    GuestDefinition,
    GuestExists,
    GuestNotFound,
    GuestStartError,
    GuestState,
    GuestStatus,
    InvalidDefinition,
)
from nonstop.image import DEFAULT_CACHE as DEFAULT_IMAGE_CACHE
from nonstop.image import ImageBuildError, ImagePaths, ensure_image

F = TypeVar("F", bound=Callable[..., Any])


def driver_errors(kind: type[DriverError] = DriverError) -> Callable[[F], F]:
    """Turn QMP and host-side failures of a per-guest method into ``kind(reason, guest=name)``,
    so the agent only ever sees ``DriverError``s (the contract of ``nonstop.drivers.base``)."""

    def decorate(method: F) -> F:
        @functools.wraps(method)
        async def wrapper(self: Any, name: str, *args: Any, **kwargs: Any) -> Any:
            try:
                return await method(self, name, *args, **kwargs)
            except DriverError:
                raise
            except (QMPError, rt.RuntimeFailure, OSError) as exc:
                raise kind(str(exc) or exc.__class__.__name__, guest=name) from exc

        return wrapper  # type: ignore[return-value]

    return decorate


READY_LINE = re.compile(rb"nonstop-guest: ready ([0-9a-f-]{36})")
DEFAULT_DISK_DIR = Path("/var/lib/nonstop/disks")
SOCKETS = ("qmp.sock", "status.sock", "host.sock")
POWER_BUTTON_REPEAT = 3.0



class QemuCore(Driver):
    kind: ClassVar[str] = "qemu"
    capabilities: ClassVar[Capabilities] = Capabilities(adoption=True, console_log=True)

    def __init__(self, *, cluster: str, host: str, state_dir: Path | str, **options: Any) -> None:
        super().__init__(cluster=cluster, host=host, state_dir=state_dir, **options)
        self.netns: str | None = options.get("netns")
        self.disk_root = Path(options.get("disk_dir", DEFAULT_DISK_DIR)) / cluster
        self.migration_address: str = options.get("migration_address", "127.0.0.1")
        self._accel: str = options.get("accel") or ""
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

    def _save_layout(self, name: str, layout: MachineLayout | None = None) -> None:
        """Write layout.json: the machine shape plus what a migration destination must reuse
        (kernel/initrd, disks with their slots and formats, vNIC slots, boot id)."""
        record = self._load(name)
        data: dict[str, Any] = (layout or self._layout(name)).to_dict()
        facts = {"boot_id": self._boot_id(name, record), "kernel": record.get("kernel"),
                 "initrd": record.get("initrd"), "disks": record.get("disks"), "nic_slots": record.get("nic_slots")}
        data.update({k: v for k, v in facts.items() if v})
        data["owner"] = self.host  # whoever writes the shape runs (or is taking over) the guest
        self._write_layout(name, data)

    def _write_layout(self, name: str, data: dict[str, Any]) -> None:
        path = self._disk_dir(name) / "layout.json"
        tmp = path.with_suffix(f".{self.host}.tmp")  # hosts share the directory: no shared temp name
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(path)

    def _claim_layout(self, name: str, owner: str | None = None) -> None:
        """Mark the shared layout as ``owner``'s (default: this host's): a migration hands it over."""
        path = self._disk_dir(name) / "layout.json"
        data = json.loads(path.read_text())
        data["owner"] = owner or self.host
        self._write_layout(name, data)

    def _owns_shared_files(self, record: dict[str, Any], name: str) -> bool:
        """May destroy remove the shared disks and layout? Only the host that runs the guest may.

        Lab hosts share the disk directory: a source host cleaning up after a migration (or an
        agent restarted there, finding the guest's old run directory) must leave the layout and
        disks to the host running the guest now. A record still marked ``migrating_to`` was cut
        off mid hand-off (agent killed): whether the destination took over is unknown, so keep.
        A layout without an owner predates the field: the record decides, as before."""
        if not record.get("owns_disks") or record.get("migrating_to"):
            return False
        try:
            owner = json.loads((self._disk_dir(name) / "layout.json").read_text()).get("owner")
        except (OSError, ValueError):
            return False  # gone or unreadable: ownership unknown, keep what another host may use
        return owner in (None, self.host)

    def _tap_name(self, name: str, index: int) -> str:
        return f"nv{short_id(self.cluster, self.host, name, length=9)}{index}"

    def _taps(self, record: dict[str, Any]) -> list[str]:
        """The host-side taps of the guest in ``record`` (for clean-up of their shaping)."""
        if not record.get("definition"):
            return []
        definition = GuestDefinition.from_dict(record["definition"])
        slots = record.get("nic_slots") or {}
        return [v.host_ifname or self._tap_name(definition.name, slots.get(v.mac, i))
                for i, v in enumerate(definition.vnics)]

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
            self._save(name, {"definition": definition.to_dict(), "disks": disks, "state": "stopped",
                              "owns_disks": True, "nic_slots": {v.mac: i for i, v in enumerate(definition.vnics)}})
            self._save_layout(name, layout)
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
                disks.append({"name": disk.name, "path": str(path), "format": fmt, "created": False, "slot": index})
                continue
            suffix = "qcow2" if disk.provisioning == "thin" else "raw"
            path = self._disk_dir(definition.name) / f"{disk.name}.{suffix}"
            # The first disk of a guest with a disk image is an overlay on (or copy of) that image.
            fmt = rt.create_disk(path, disk.size, disk.provisioning, base if index == 0 else None)
            disks.append({"name": disk.name, "path": str(path), "format": fmt, "created": True, "slot": index})
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
            cache = self._image_cache or DEFAULT_IMAGE_CACHE
            image = await asyncio.to_thread(ensure_image, cache)
            if self.options.get("kernel"):  # another kernel with the built-in userland
                image = ImagePaths(kernel=Path(self.options["kernel"]), initrd=image.initrd)
        accel = self._accel or await asyncio.to_thread(rt.probe_accel, image.kernel, image.initrd)
        slots = record.get("nic_slots") or {}
        nics = tuple(
            NicAttachment(tap=vnic.host_ifname or self._tap_name(name, slots.get(vnic.mac, i)), mac=vnic.mac,
                          address=vnic.address, gateway=vnic.gateway, slot=slots.get(vnic.mac, i))
            for i, vnic in enumerate(definition.vnics)
        )
        launch = QemuLaunch(
            guest=name, host=self.host, kernel=str(image.kernel), initrd=str(image.initrd),
            qmp_socket=str(run_dir / "qmp.sock"), console_log=str(run_dir / "console.log"),
            pid_file=str(run_dir / "qemu.pid"), accel=accel, host_channel=str(run_dir / "host.sock"),
            status_socket=str(run_dir / "status.sock"),
            disks=tuple(DiskAttachment(d["name"], d["path"], d["format"], d.get("slot", i))
                        for i, d in enumerate(record["disks"])),
            nics=nics, incoming=incoming, extra_append=tuple(self.options.get("kernel_args", ())),
        )
        argv = render_argv(launch, layout)
        for stale in (*SOCKETS, "qemu.pid", "console.log"):
            (run_dir / stale).unlink(missing_ok=True)
        log = run_dir / "qemu.log"
        log.write_bytes(b"")
        proc = rt.spawn(argv, self.netns, log)
        try:
            await rt.wait_qmp(run_dir / "qmp.sock", proc.pid, proc, timeout=15.0)
            for nic, vnic in zip(nics, definition.vnics, strict=True):
                await asyncio.to_thread(rt.bridge_tap, self.netns, nic.tap, vnic.bridge)
                if vnic.bandwidth:
                    await asyncio.to_thread(rt.shape_tap, self.netns, nic.tap, vnic.bandwidth)
        except BaseException as exc:
            rt.kill_process(proc.pid, proc)
            for sock in SOCKETS:
                (run_dir / sock).unlink(missing_ok=True)
            detail = rt._last_line(log.read_text(errors="replace"))
            if isinstance(exc, rt.RuntimeFailure):
                raise rt.RuntimeFailure(f"{exc}: {detail}") from exc
            raise
        self._children[name] = proc
        record.update(state="incoming" if incoming else "running", failure_reason=None, pid=proc.pid,
                      pid_start=rt.process_start_time(proc.pid), accel=accel, argv=argv, started_at=time.time(),
                      stopping=False, kernel=str(image.kernel), initrd=str(image.initrd))
        self._save(name, record)
        if incoming is None:
            self._save_layout(name, layout)

    def _alive(self, name: str, record: dict[str, Any]) -> bool:
        pid = record.get("pid")
        if not pid:
            return False
        child = self._children.get(name)
        if child is not None and child.poll() is not None:
            return False
        return rt.is_our_qemu(pid, record.get("pid_start"), name)

    @driver_errors()
    async def stop(self, name: str, *, timeout: float = 10.0) -> GuestStatus:
        record = self._load(name)
        if self._alive(name, record):
            record["stopping"] = True
            self._save(name, record)
            pid, child = record["pid"], self._children.get(name)
            deadline = time.monotonic() + timeout
            gone = False
            while not gone and time.monotonic() < deadline:
                # Press the power button again every few seconds: a press while the guest is
                # still booting (acpid not listening yet) or busy is simply lost.
                with contextlib.suppress(rt.RuntimeFailure, QMPError):
                    async with rt.qmp_session(self._run_dir(name) / "qmp.sock", timeout=2.0) as qmp:
                        await qmp.execute("system_powerdown")
                gone = await rt.wait_gone(pid, child, min(POWER_BUTTON_REPEAT, max(0.0, deadline - time.monotonic())))
            if not gone:
                rt.kill_process(pid, child)
                await rt.wait_gone(pid, child, 5.0)
                record["forced"] = True
            else:
                record["forced"] = False
        record.update(state="stopped", pid=None, stopping=False)
        self._children.pop(name, None)
        for sock in SOCKETS:
            (self._run_dir(name) / sock).unlink(missing_ok=True)
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
        for tap in self._taps(record):
            await asyncio.to_thread(rt.unshape_tap, self.netns, tap)
        owns_shared = self._owns_shared_files(record, name)  # before the run dir (the record) goes
        shutil.rmtree(self._run_dir(name), ignore_errors=True)
        if owns_shared:
            for disk in [*record.get("disks", []), *record.get("detached_disks", [])]:
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
                           extra={"accel": record.get("accel"), "host": self.host,
                                  **({"vnic_address_error": record["vnic_address_error"]}
                                     if record.get("vnic_address_error") else {})})
        if record.get("state") == "failed":
            return replace(base, state=GuestState.FAILED, failure_reason=record.get("failure_reason"))
        if not record.get("pid"):
            return base
        if not self._alive(name, record):
            if record.get("migrating_to"):  # switched over, the source copy is being removed
                return replace(base, state=GuestState.MIGRATING)
            return self._exited(name, record, base)
        pid = record["pid"]
        rss, cpu = rt.process_usage(pid)
        base = replace(base, pid=pid, memory_usage=rss, cpu_seconds=cpu)
        sock = self._run_dir(name) / "status.sock"
        if not sock.exists():  # a QEMU started by an older driver has only the main socket
            sock = self._run_dir(name) / "qmp.sock"
        try:
            async with rt.qmp_session(sock) as qmp:
                run = await qmp.execute("query-status")
                cpus = await qmp.execute("query-cpus-fast")
                mem = await qmp.execute("query-memory-size-summary")
                migration = await qmp.execute("query-migrate")
        except (rt.RuntimeFailure, QMPError) as exc:
            record = self._load(name)  # GuestNotFound if it was migrated away meanwhile
            if not self._alive(name, record):
                if record.get("migrating_to"):
                    return replace(base, state=GuestState.MIGRATING)
                return self._exited(name, record, base)
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
        elif record.get("migrating_to") and state is GuestState.RUNNING:
            state = GuestState.MIGRATING
        # Under TCG the boot RAM is rendered a few KiB short (qemu_argv.TCG_RAM_SHORTFALL): whole MiB again.
        memory = -(-int(mem.get("base-memory", 0)) // 2**20) * 2**20 + int(mem.get("plugged-memory", 0))
        return replace(base, state=state, vcpus=len(cpus), memory=memory,
                       extra={**base.extra, "qemu_status": qemu_state, "migration": migration.get("status")})

    def _exited(self, name: str, record: dict[str, Any], base: GuestStatus) -> GuestStatus:
        """The QEMU process is gone without stop(): a guest power-off is STOPPED, anything else FAILED."""
        child = self._children.get(name)
        code = child.poll() if child is not None else None
        console = self._run_dir(name) / "console.log"
        tail = console.read_bytes()[-4096:] if console.exists() else b""
        if b"reboot: Power down" in tail:
            return base  # the guest powered itself off
        log = self._run_dir(name) / "qemu.log"
        detail = rt._last_line(log.read_text(errors="replace")) if log.exists() else "no log"
        if code == 0:
            # Exit status 0 without a power-off: a guest reset or panic (-no-reboot turns both
            # into an exit) or a signal QEMU treats as a shutdown request (its log says which).
            last = " | ".join(tail.decode(errors="replace").strip().splitlines()[-2:])
            detail = f"guest reset or crashed ({detail}); console: {last or 'empty'}"
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

    def _require_running(self, name: str, record: dict[str, Any]) -> None:
        if not self._alive(name, record):
            raise GuestStartError("guest is not running", guest=name)

    def _update_definition(self, name: str, **changes: Any) -> None:
        record = self._load(name)
        definition = GuestDefinition.from_dict(record["definition"]).with_changes(**changes)
        record["definition"] = definition.to_dict()
        self._save(name, record)

    async def _tell_guest(self, name: str, line: str, timeout: float = 3.0) -> str | None:
        """Write one ``line`` into the guest's org.nonstop.host virtio-serial port (``host=NAME``
        after a migration, ``addr=MAC,ADDRESS[,GATEWAY]`` for a hot-added vNIC) and wait for its
        ``ack``. Returns None on success, else why not: a guest image without the port listener
        never acks, and the guest keeps running either way."""
        path = self._run_dir(name) / "host.sock"
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(path)), timeout)
        except (OSError, TimeoutError) as exc:
            return f"guest channel: {exc}"
        try:
            writer.write(f"{line}\n".encode())
            await writer.drain()
            reply = await asyncio.wait_for(reader.readline(), timeout)
            return None if reply.strip() == b"ack" else f"guest channel: unexpected reply {reply!r}"
        except (OSError, TimeoutError) as exc:
            return f"guest channel: no ack ({exc.__class__.__name__})"
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
