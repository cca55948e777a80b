"""The QEMU driver's hot-plug half: vCPUs, memory, vNICs and disks on a running VM.

Role: ``QemuHotplug`` adds to ``QemuCore`` the live changes, each a short QMP exchange whose
plan comes from the pure ``qemu_argv`` planners; every change is written to the shared
``layout.json`` (vCPU/DIMM devices, device slots) at once, so a later migration or adoption
renders the same machine. Unplug removes what was hot-plugged, newest first: DIMMs (the guest
must offline the memory: the built-in image onlines hot-added memory as movable), vNICs,
disks, and vCPUs under KVM only (``TCG_VCPU_UNPLUG_CRASH``); every unplug waits for the
guest's ACPI eject. Boot vCPUs and boot memory stay.

Must not: start or stop guests, or change anything the running guest did not accept.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from qemu.qmp import ExecuteError

from nonstop.core.guests.qemu_argv import (
    MAX_DISKS,
    MAX_NICS,
    DiskAttachment,
    LayoutError,
    MachineLayout,
    NicAttachment,
    disk_device_props,
    free_slot,
    initial_layout,
    nic_device_props,
    plan_memory,
    plan_memory_removal,
    plan_vcpu_removal,
    plan_vcpus,
)
from nonstop.drivers import qemu_runtime as rt
from nonstop.drivers.base import (
    DiskDefinition,
    GuestDefinition,
    GuestStatus,
    InvalidDefinition,
    NotSupported,
    VnicDefinition,
)
from nonstop.drivers.qemu_core import QemuCore, driver_errors

UNPLUG_TIMEOUT = 10.0
TCG_VCPU_UNPLUG_CRASH = "QEMU 7.2 dies at the next memory-map change after a TCG vCPU is unplugged"
"""Measured here (docs/guests-vm.md): device_del of a hot-added vCPU succeeds and the guest shows
one CPU less, but the next DIMM hot-add or unplug aborts QEMU ("corrupted double-linked list")
— the removed vCPU's TCG memory listener is left behind. So vCPUs are only removed under KVM,
and ``capabilities.unplug_vcpu`` stays off (the agent restarts the guest to shrink instead)."""
CPU_MEMORY_UNPLUG_TIMEOUT = 30.0
"""The guest offlines a CPU or migrates pages off a DIMM before it ejects: slower under TCG."""


class QemuHotplug(QemuCore):
    # ----------------------------------------------------------------------------- hot-plug

    @driver_errors()
    async def set_vcpus(self, name: str, vcpus: int) -> GuestStatus:
        record = self._load(name)
        if not self._alive(name, record):
            return await self._reshape_stopped(name, vcpus=vcpus)
        layout = self._layout(name)
        if vcpus < layout.vcpus:
            if record.get("accel", "tcg") == "tcg":
                raise NotSupported(f"vCPU unplug under TCG ({TCG_VCPU_UNPLUG_CRASH})", driver=self.kind, guest=name)
            return await self._unplug_vcpus(name, layout, vcpus)
        async with rt.qmp_session(self._run_dir(name) / "qmp.sock") as qmp:
            slots = await qmp.execute("query-hotpluggable-cpus")
            assert isinstance(slots, list)
            empty = [s for s in slots if "qom-path" not in s]
            free = [(int(s["props"].get("socket-id", 0)), int(s["props"].get("core-id", 0)),
                     int(s["props"].get("thread-id", 0))) for s in empty]
            try:
                devices = plan_vcpus(layout, vcpus, free)
            except LayoutError as exc:
                raise InvalidDefinition(str(exc), guest=name) from exc
            # The CPU model decides the device type (qemu64-x86_64-cpu under TCG, max-... under KVM).
            cpu_type = str(empty[0]["type"]) if empty else None
            for device in devices:
                device = replace(device, driver=cpu_type or device.driver)
                await qmp.execute("device_add", {"driver": device.driver, "id": device.id,
                                                 "socket-id": device.socket_id, "core-id": device.core_id,
                                                 "thread-id": device.thread_id})
                layout = replace(layout, cpus=(*layout.cpus, device))
                self._save_layout(name, layout)
        self._update_definition(name, vcpus=layout.vcpus)
        return await self.status(name)

    @driver_errors()
    async def set_memory(self, name: str, memory: int) -> GuestStatus:
        record = self._load(name)
        if not self._alive(name, record):
            return await self._reshape_stopped(name, memory=memory)
        layout = self._layout(name)
        if memory < layout.memory:
            return await self._unplug_memory(name, layout, memory)
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

    async def _unplug_vcpus(self, name: str, layout: MachineLayout, vcpus: int) -> GuestStatus:
        """device_del the newest hot-plugged vCPUs; the guest offlines each one and ejects it
        (ACPI), then QEMU drops it. Boot vCPUs stay (``InvalidDefinition`` below them)."""
        try:
            devices = plan_vcpu_removal(layout, vcpus)
        except LayoutError as exc:
            raise InvalidDefinition(str(exc), guest=name) from exc
        for device in devices:
            await self._unplug(name, device.id, CPU_MEMORY_UNPLUG_TIMEOUT)
            layout = replace(layout, cpus=tuple(c for c in layout.cpus if c.id != device.id))
            self._save_layout(name, layout)
            self._update_definition(name, vcpus=layout.vcpus)
        return await self.status(name)

    async def _unplug_memory(self, name: str, layout: MachineLayout, memory: int) -> GuestStatus:
        """device_del the newest DIMMs, then delete their RAM backends. The guest must be able
        to offline the memory (the built-in image onlines hot-added memory as movable); if it
        cannot, the DIMM stays and this raises with the reason."""
        try:
            dimms = plan_memory_removal(layout, memory)
        except LayoutError as exc:
            raise InvalidDefinition(str(exc), guest=name) from exc
        for dimm in dimms:
            await self._unplug(name, dimm.id, CPU_MEMORY_UNPLUG_TIMEOUT)
            await self._delete_backend(name, "object-del", {"id": f"mem-{dimm.id}"})
            layout = replace(layout, dimms=tuple(d for d in layout.dimms if d.id != dimm.id))
            self._save_layout(name, layout)
            self._update_definition(name, memory=layout.memory)
        return await self.status(name)

    async def _reshape_stopped(self, name: str, **changes: int) -> GuestStatus:
        """A guest that is not running takes new vCPUs/memory as its boot shape (any direction,
        within its maxima): the next start boots that way, with no hot-plugged devices."""
        current = GuestDefinition.from_dict(self._load(name)["definition"])
        if changes.get("vcpus", 0) > current.max_vcpus or changes.get("memory", 0) > current.max_memory:
            raise InvalidDefinition(f"{changes} is above the guest's maxima", guest=name)
        definition = current.with_changes(**changes)
        try:
            layout = initial_layout(definition.vcpus, definition.max_vcpus, definition.memory, definition.max_memory)
        except LayoutError as exc:
            raise InvalidDefinition(str(exc), guest=name) from exc
        self._update_definition(name, **changes)
        self._save_layout(name, layout)
        return await self.status(name)

    # ------------------------------------------------------------------------ vNICs

    @driver_errors()
    async def attach_vnic(self, name: str, vnic: VnicDefinition) -> GuestStatus:
        """Add a virtio-net vNIC on a new tap bridged to ``vnic.bridge``, then hand the guest its
        address (``addr=MAC,ADDRESS[,GATEWAY]`` on the org.nonstop.host port: the built-in image
        configures the interface with that MAC). A guest that does not ack keeps the vNIC without
        an address; the reason is in the status (``vnic_address_error``)."""
        record = self._load(name)
        self._require_running(name, record)
        definition = GuestDefinition.from_dict(record["definition"])
        if any(v.mac == vnic.mac for v in definition.vnics):
            raise InvalidDefinition(f"a vNIC with MAC {vnic.mac} is already attached", guest=name)
        slots: dict[str, int] = record.get("nic_slots") or {}
        try:
            slot = free_slot(list(slots.values()), MAX_NICS)
        except LayoutError as exc:
            raise InvalidDefinition(str(exc), guest=name) from exc
        nic = NicAttachment(tap=vnic.host_ifname or self._tap_name(name, slot), mac=vnic.mac, slot=slot)
        async with rt.qmp_session(self._run_dir(name) / "qmp.sock") as qmp:
            await qmp.execute("netdev_add", {"type": "tap", "id": f"net{slot}", "ifname": nic.tap,
                                             "script": "no", "downscript": "no"})
            try:
                await qmp.execute("device_add", nic_device_props(nic, slot))
            except Exception:
                await qmp.execute("netdev_del", {"id": f"net{slot}"})
                raise
        await asyncio.to_thread(rt.bridge_tap, self.netns, nic.tap, vnic.bridge)
        if vnic.bandwidth:
            await asyncio.to_thread(rt.shape_tap, self.netns, nic.tap, vnic.bandwidth)
        told = None
        if vnic.address:
            gateway = f",{vnic.gateway}" if vnic.gateway else ""
            told = await self._tell_guest(name, f"addr={vnic.mac.lower()},{vnic.address}{gateway}")
        record = self._load(name)
        record["nic_slots"] = {**slots, vnic.mac: slot}
        record["definition"] = definition.with_changes(vnics=(*definition.vnics, vnic)).to_dict()
        record["vnic_address_error"] = told
        self._save(name, record)
        self._save_layout(name)
        return await self.status(name)

    @driver_errors()
    async def detach_vnic(self, name: str, mac: str) -> GuestStatus:
        record = self._load(name)
        self._require_running(name, record)
        slots: dict[str, int] = record.get("nic_slots") or {}
        if mac not in slots:
            raise InvalidDefinition(f"no vNIC with MAC {mac}", guest=name)
        slot = slots[mac]
        taps = dict(zip([v.mac for v in GuestDefinition.from_dict(record["definition"]).vnics], self._taps(record),
                        strict=True))
        await self._unplug(name, f"nic{slot}")
        await self._delete_backend(name, "netdev_del", {"id": f"net{slot}"})
        if mac in taps:
            await asyncio.to_thread(rt.unshape_tap, self.netns, taps[mac])
        record = self._load(name)
        definition = GuestDefinition.from_dict(record["definition"])
        record["nic_slots"] = {m: n for m, n in slots.items() if m != mac}
        record["definition"] = definition.with_changes(vnics=tuple(v for v in definition.vnics if v.mac != mac)).to_dict()
        self._save(name, record)
        self._save_layout(name)
        return await self.status(name)

    async def _unplug(self, name: str, device_id: str, timeout: float = UNPLUG_TIMEOUT) -> None:
        """device_del, then wait until the guest has ejected it (ACPI hot-unplug)."""
        sock = self._run_dir(name) / "qmp.sock"
        async with rt.qmp_session(sock) as qmp:
            await qmp.execute("device_del", {"id": device_id})
            deadline = time.monotonic() + timeout
            while True:
                children = await qmp.execute("qom-list", {"path": "/machine/peripheral"})
                assert isinstance(children, list)
                if all(child.get("name") != device_id for child in children):
                    return
                if time.monotonic() > deadline:
                    raise rt.RuntimeFailure(f"guest did not release {device_id} within {timeout:.0f} s")
                await asyncio.sleep(0.05)

    async def _delete_backend(self, name: str, command: str, arguments: dict[str, str]) -> None:
        """Delete a device's backend once QEMU has let go of it: the device leaves the QOM
        tree a moment before it drops its reference, so "in use" is retried briefly."""
        deadline = time.monotonic() + UNPLUG_TIMEOUT
        async with rt.qmp_session(self._run_dir(name) / "qmp.sock") as qmp:
            while True:
                try:
                    await qmp.execute(command, arguments)
                    return
                except ExecuteError as exc:
                    if "in use" not in str(exc) or time.monotonic() > deadline:
                        raise
                await asyncio.sleep(0.05)

    # ------------------------------------------------------------------------ disks

    @driver_errors()
    async def attach_disk(self, name: str, disk: DiskDefinition) -> GuestStatus:
        record = self._load(name)
        self._require_running(name, record)
        disks: list[dict[str, Any]] = record["disks"]
        if any(d["name"] == disk.name for d in disks):
            raise InvalidDefinition(f"a disk named {disk.name} is already attached", guest=name)
        try:
            slot = free_slot([d.get("slot", i) for i, d in enumerate(disks)], MAX_DISKS)
        except LayoutError as exc:
            raise InvalidDefinition(str(exc), guest=name) from exc
        if disk.path is not None:
            info = await asyncio.to_thread(rt.image_info, Path(disk.path))
            entry = {"name": disk.name, "path": disk.path, "format": info["format"], "created": False, "slot": slot}
        else:
            suffix = "qcow2" if disk.provisioning == "thin" else "raw"
            path = self._disk_dir(name) / f"{disk.name}.{suffix}"
            fmt = await asyncio.to_thread(rt.create_disk, path, disk.size, disk.provisioning)
            entry = {"name": disk.name, "path": str(path), "format": fmt, "created": True, "slot": slot}
        attachment = DiskAttachment(disk.name, entry["path"], entry["format"], slot)
        try:
            async with rt.qmp_session(self._run_dir(name) / "qmp.sock") as qmp:
                await qmp.execute("blockdev-add", {
                    "driver": attachment.format, "node-name": f"disk-{disk.name}",
                    "file": {"driver": "file", "filename": attachment.path, "node-name": f"file-{disk.name}"}})
                try:
                    await qmp.execute("device_add", disk_device_props(attachment, slot))
                except Exception:
                    await qmp.execute("blockdev-del", {"node-name": f"disk-{disk.name}"})
                    raise
        except Exception:
            if entry["created"]:
                Path(entry["path"]).unlink(missing_ok=True)
            raise
        record = self._load(name)
        record["disks"] = [*record["disks"], entry]
        definition = GuestDefinition.from_dict(record["definition"])
        record["definition"] = definition.with_changes(disks=(*definition.disks, disk)).to_dict()
        self._save(name, record)
        self._save_layout(name)
        return await self.status(name)

    @driver_errors()
    async def detach_disk(self, name: str, disk_name: str) -> GuestStatus:
        """Unplug a disk. Its file is kept (data is never deleted by an unplug) until ``destroy``."""
        record = self._load(name)
        self._require_running(name, record)
        entry = next((d for d in record["disks"] if d["name"] == disk_name), None)
        if entry is None:
            raise InvalidDefinition(f"no disk named {disk_name}", guest=name)
        await self._unplug(name, f"blk-{disk_name}")
        await self._delete_backend(name, "blockdev-del", {"node-name": f"disk-{disk_name}"})
        record = self._load(name)
        record["disks"] = [d for d in record["disks"] if d["name"] != disk_name]
        record["detached_disks"] = [*record.get("detached_disks", []), entry]
        definition = GuestDefinition.from_dict(record["definition"])
        record["definition"] = definition.with_changes(
            disks=tuple(d for d in definition.disks if d.name != disk_name)).to_dict()
        self._save(name, record)
        self._save_layout(name)
        return await self.status(name)

    @driver_errors()
    async def resize_disk(self, name: str, disk_name: str, size: int) -> GuestStatus:
        """Grow a disk (never shrinks): live with QMP block_resize, else with qemu-img."""
        record = self._load(name)
        entry = next((d for d in record["disks"] if d["name"] == disk_name), None)
        if entry is None:
            raise InvalidDefinition(f"no disk named {disk_name}", guest=name)
        current = int((await asyncio.to_thread(rt.image_info, Path(entry["path"])))["virtual-size"])
        if size < current:
            raise InvalidDefinition(f"disk {disk_name} is {current} bytes; shrinking to {size} is refused", guest=name)
        if size > current:
            if self._alive(name, record):
                async with rt.qmp_session(self._run_dir(name) / "qmp.sock") as qmp:
                    await qmp.execute("block_resize", {"node-name": f"disk-{disk_name}", "size": size})
            else:
                await asyncio.to_thread(rt.resize_disk, Path(entry["path"]), entry["format"], size)
        definition = GuestDefinition.from_dict(record["definition"])
        disks = tuple(replace(d, size=size) if d.name == disk_name else d for d in definition.disks)
        self._update_definition(name, disks=disks)
        return await self.status(name)

