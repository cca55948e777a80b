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
``accel`` (force ``kvm``/``tcg``; default: the cached bounded probe), ``image_cache``,
``kernel`` (boot another kernel with the built-in initramfs), ``kernel_args`` (extra guest
kernel command-line words, e.g. ``("loglevel=7",)`` to see the guest's kernel messages on the
console), ``migration_parameters``
(QMP migrate-set-parameters; ``{}`` keeps QEMU's defaults).

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
import time
from pathlib import Path
from typing import Any, ClassVar

from nonstop.core.guests.qemu_argv import MachineLayout
from nonstop.drivers import qemu_mirror
from nonstop.drivers import qemu_runtime as rt
from nonstop.drivers.base import (
    Capabilities,
    GuestDefinition,
    GuestExists,
    GuestNotFound,
    GuestState,
    GuestStatus,
    InvalidDefinition,
    MigrationEndpoint,
    MigrationError,
    MigrationResult,
)
from nonstop.drivers.qemu_core import driver_errors
from nonstop.drivers.qemu_hotplug import QemuHotplug

# QEMU's defaults are a 128 MiB/s cap and a 300 ms pause budget. A shorter pause budget cut
# the measured downtime (bench/guests); lifting the bandwidth cap made migrations *slower* on
# 2 shared cores (the sender starves the receiver and the guest), so the cap stays.
MIGRATION_PARAMETERS: dict[str, int] = {"downtime-limit": 100}

PAUSED_MIGRATION_REASON = "TCG loses guest writes to hot-plugged DIMMs during a live copy"
"""QEMU 7.2's fast dirty-bitmap sync does not re-arm TCG's write tracking (qemu_argv.TCG_RAM_SHORTFALL).
The boot RAM block is sized to avoid the fast path, but a DIMM must stay a whole number of the
guest's 128 MiB memory blocks, so its pages can go stale on the destination (seen: the guest's
init killed by a corrupted page seconds after a move). Under TCG a guest with hot-plugged DIMMs
is therefore copied paused — correct, at the price of a downtime as long as the copy (reported
as such) — while a guest without DIMMs migrates live."""


class QemuDriver(QemuHotplug):
    kind: ClassVar[str] = "qemu"
    capabilities: ClassVar[Capabilities] = Capabilities(
        live_migration=True, hotplug_vcpu=True, hotplug_memory=True, hotplug_nic=True,
        hotplug_disk=True, resize_disk=True, adoption=True, console_log=True,
        # Unplug of hot-plugged DIMMs (the guest offlines movable memory). vCPU unplug is off:
        # under TCG it corrupts QEMU 7.2 (qemu_hotplug.TCG_VCPU_UNPLUG_CRASH); KVM is untested.
        unplug_vcpu=False, unplug_memory=True,
    )

    # ------------------------------------------- mirrored disks (issue 9): hook only
    # A ``redundancy: mirror`` disk is a quorum over one leg per host drive, not a file in the
    # disk directory; all of it lives in nonstop/drivers/qemu_mirror.py (the host-side
    # reconciler that re-mirrors after a drive failure is nonstop/components/mirror_host.py).

    def _create_disks(self, definition: GuestDefinition) -> list[dict[str, Any]]:
        return qemu_mirror.create_disks(self, definition, super()._create_disks)

    async def _launch(self, name: str, record: dict[str, Any], layout: MachineLayout, incoming: str | None) -> None:
        await qemu_mirror.before_launch(self, name, incoming)
        await super()._launch(name, record, layout, incoming)
        try:
            await qemu_mirror.after_launch(self, name)
        except BaseException as exc:
            pid = self._load(name).get("pid")
            if pid:
                rt.kill_process(pid, self._children.pop(name, None))
            raise rt.RuntimeFailure(f"mirrored disk not attached: {exc}") from exc

    async def destroy(self, name: str) -> None:
        legs = qemu_mirror.legs_of(self, name)
        await super().destroy(name)
        await asyncio.to_thread(qemu_mirror.remove_legs, legs)

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
                                  "kernel": layout_data.get("kernel"), "initrd": layout_data.get("initrd"),
                                  "nic_slots": layout_data.get("nic_slots")
                                  or {v.mac: i for i, v in enumerate(definition.vnics)}}
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

    @driver_errors(MigrationError)
    async def migrate(self, name: str, endpoint: MigrationEndpoint, *, timeout: float = 120.0) -> MigrationResult:
        record = self._load(name)
        self._require_running(name, record)
        self._save_layout(name)  # brings the boot id along
        record["migrating_to"] = endpoint.host
        self._save(name, record)
        try:
            return await self._migrate(name, record, endpoint, timeout)
        except BaseException:
            with contextlib.suppress(GuestNotFound):
                record = self._load(name)
                record.pop("migrating_to", None)
                self._save(name, record)
            raise

    async def _migrate(self, name: str, record: dict[str, Any], endpoint: MigrationEndpoint,
                       timeout: float) -> MigrationResult:
        sock = self._run_dir(name) / "qmp.sock"
        started = time.monotonic()
        # TCG + hot-plugged DIMMs: copy while paused (see PAUSED_MIGRATION_REASON).
        paused = record.get("accel", "tcg") == "tcg" and bool(self._layout(name).dimms)
        async with rt.qmp_session(sock) as qmp:
            parameters = self.options.get("migration_parameters", MIGRATION_PARAMETERS)
            if parameters:
                await qmp.execute("migrate-set-parameters", parameters)
            if paused:
                await qmp.execute("stop")
            try:
                info, trace = await self._follow_migration(qmp, name, endpoint, started, timeout)
            except BaseException:
                if paused:
                    with contextlib.suppress(Exception):
                        await qmp.execute("cont")
                raise
            # From here the destination runs the guest: hand it the shared layout first, so no
            # clean-up here (nor an agent restarted mid-way) removes what it uses.
            with contextlib.suppress(OSError, ValueError):
                self._claim_layout(name, endpoint.host)
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
        total = float(info.get("total-time", (time.monotonic() - started) * 1000)) / 1000
        downtime = float(info["downtime"]) / 1000 if "downtime" in info else None
        return MigrationResult(
            guest=name, source=self.host, destination=endpoint.host, total_seconds=total,
            # Paused for the whole copy: the guest was down all along (the destination resumes it).
            downtime_seconds=total if paused else downtime,
            transferred_bytes=int(ram["transferred"]) if "transferred" in ram else None,
            extra={"wall_seconds": time.monotonic() - started, "setup_ms": info.get("setup-time"), "trace": trace,
                   "mode": f"paused: {PAUSED_MIGRATION_REASON}" if paused else "live"},
        )

    async def _follow_migration(self, qmp: Any, name: str, endpoint: MigrationEndpoint, started: float,
                                timeout: float) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """QMP ``migrate`` and poll until completed; ``MigrationError`` (after cancelling) otherwise."""
        await qmp.execute("migrate", {"uri": endpoint.uri})
        info: dict[str, Any] = {}
        trace: list[dict[str, Any]] = []
        while True:
            result = await qmp.execute("query-migrate")
            assert isinstance(result, dict)
            info = result
            elapsed = time.monotonic() - started
            if not trace or elapsed - trace[-1]["t"] >= 1.0:
                # A coarse progress trace: where a slow migration spent its time.
                ram = info.get("ram", {})
                trace.append({"t": round(elapsed, 2), "status": info.get("status"),
                              "transferred": ram.get("transferred"), "remaining": ram.get("remaining"),
                              "dirty_rate": ram.get("dirty-pages-rate"), "iterations": ram.get("dirty-sync-count")})
            if info.get("status") == "completed":
                break
            if info.get("status") in ("failed", "cancelled"):
                raise MigrationError(f"migration {info.get('status')}: {info.get('error-desc', 'no detail')}",
                                     guest=name)
            if time.monotonic() - started > timeout:
                await qmp.execute("migrate_cancel")
                raise MigrationError(f"migration did not finish within {timeout:.0f} s", guest=name)
            await asyncio.sleep(0.02)
        return info, trace

    @driver_errors(MigrationError)
    async def finish_incoming(self, name: str, timeout: float = 30.0) -> GuestStatus:
        record = self._load(name)
        deadline = time.monotonic() + timeout
        while True:
            status = await self.status(name)
            if status.extra.get("qemu_status") == "running":
                break
            if status.extra.get("qemu_status") == "paused":
                # The source was paused for the copy (TCG + DIMMs): the runstate came along.
                async with rt.qmp_session(self._run_dir(name) / "qmp.sock") as qmp:
                    await qmp.execute("cont")
                continue
            if status.state is GuestState.FAILED or time.monotonic() > deadline:
                console = (await self.console_log(name, max_bytes=600)).strip().splitlines()[-3:]
                raise MigrationError(f"guest not running on {self.host} after migration ({status.state.value}: "
                                     f"{status.failure_reason or 'no detail'}; console: {' | '.join(console)})",
                                     guest=name)
            await asyncio.sleep(0.05)
        record = self._load(name)
        record["state"] = "running"
        # The source wrote the boot id into the shared layout file just before migrating.
        with contextlib.suppress(OSError, ValueError):
            record["boot_id"] = json.loads((self._disk_dir(name) / "layout.json").read_text()).get("boot_id")
        with contextlib.suppress(OSError, ValueError):
            self._claim_layout(name)  # the guest runs here now (the source handed it over already)
        record["host_channel_error"] = await self._tell_host(name)
        self._save(name, record)
        return await self.status(name)

    async def _tell_host(self, name: str) -> str | None:
        """Tell the guest which host it runs on now (its identity page shows it); None on
        success, else why not (the guest keeps showing its previous host)."""
        return await self._tell_guest(name, f"host={self.host}")
