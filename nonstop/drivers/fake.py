"""An in-memory driver for fast tests of the agent and the controller: every capability, no guests.

Role: keep guests as records (state, boot id, vCPUs, memory, vNICs, disks) and honor the same
contracts as the real drivers, so one parametrized contract suite runs against it and against the
process driver. Its records are also written to ``state_dir/fake-guests.json`` so a new instance
``adopt``s them, like a real driver after an agent restart. Failure injection for tests:
- image ``missing`` or starting with ``missing-`` → ``GuestStartError`` (permanent) at create;
- command ``("fail",)`` → every start fails (transient), ``("fail-once",)`` → the first start of that name fails;
- ``crash(name, reason)`` → the guest dies on its own (FAILED with that reason).
Live migration works between two fake drivers of the same cluster in one process.

Must not: be used by the product outside tests and benchmarks of the control logic; a feature is
never "done" on the fake.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

from nonstop.drivers.base import (
    Capabilities,
    DiskDefinition,
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
    VnicDefinition,
)


@dataclass
class _FakeGuest:
    definition: GuestDefinition
    state: GuestState = GuestState.STOPPED
    boot_id: str | None = None
    failure_reason: str | None = None
    starts: int = 0
    started_at: float | None = None
    console: list[str] = field(default_factory=list)


class FakeDriver(Driver):
    kind = "fake"
    capabilities = Capabilities(
        live_migration=True,
        hotplug_vcpu=True,
        unplug_vcpu=True,
        hotplug_memory=True,
        unplug_memory=True,
        hotplug_nic=True,
        hotplug_disk=True,
        resize_disk=True,
        adoption=True,
        console_log=True,
    )
    _fabric: ClassVar[dict[tuple[str, str], FakeDriver]] = {}
    """Live fake drivers by (cluster, host): where a migration finds its destination."""

    def __init__(self, *, cluster: str, host: str, state_dir: Path | str, **options: Any) -> None:
        super().__init__(cluster=cluster, host=host, state_dir=state_dir, **options)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._guests: dict[str, _FakeGuest] = {}
        self._attempts: dict[str, int] = {}
        self.calls: list[tuple[str, str]] = []
        """(operation, guest) in order: lets tests assert what the agent asked for."""
        FakeDriver._fabric[(cluster, host)] = self

    # ---------------------------------------------------------------- persistence

    @property
    def _file(self) -> Path:
        return self.state_dir / "fake-guests.json"

    def _save(self) -> None:
        data = {
            name: {
                "definition": g.definition.to_dict(),
                "state": g.state.value,
                "boot_id": g.boot_id,
                "failure_reason": g.failure_reason,
                "starts": g.starts,
                "started_at": g.started_at,
            }
            for name, g in self._guests.items()
        }
        tmp = self._file.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, self._file)

    def _get(self, name: str) -> _FakeGuest:
        guest = self._guests.get(name)
        if guest is None:
            raise GuestNotFound("no such guest", guest=name)
        return guest

    # ---------------------------------------------------------------- lifecycle

    async def create(self, definition: GuestDefinition) -> None:
        self.calls.append(("create", definition.name))
        if definition.name in self._guests:
            raise GuestExists("guest already defined", guest=definition.name)
        if definition.image == "missing" or definition.image.startswith("missing-"):
            raise GuestStartError(f"image {definition.image!r} not found", guest=definition.name, permanent=True)
        if definition.vcpus < 1 or definition.memory < 1:
            raise InvalidDefinition("vcpus and memory must be positive", guest=definition.name)
        self._guests[definition.name] = _FakeGuest(definition=definition)
        self._save()

    async def start(self, name: str) -> GuestStatus:
        self.calls.append(("start", name))
        guest = self._get(name)
        if guest.state is GuestState.RUNNING:
            return await self.status(name)
        command = guest.definition.command or ()
        guest.starts += 1
        self._attempts[name] = self._attempts.get(name, 0) + 1  # survives destroy, unlike guest.starts
        if command[:1] == ("fail",) or (command[:1] == ("fail-once",) and self._attempts[name] == 1):
            guest.state, guest.failure_reason = GuestState.FAILED, "workload failed to start (injected)"
            self._save()
            raise GuestStartError(guest.failure_reason, guest=name)
        guest.state, guest.failure_reason = GuestState.RUNNING, None
        guest.boot_id, guest.started_at = uuid.uuid4().hex[:16], time.time()
        guest.console.append(f"boot {guest.boot_id}")
        self._save()
        return await self.status(name)

    async def stop(self, name: str, *, timeout: float = 10.0) -> GuestStatus:
        self.calls.append(("stop", name))
        guest = self._get(name)
        guest.state, guest.failure_reason = GuestState.STOPPED, None
        self._save()
        return await self.status(name)

    async def destroy(self, name: str) -> None:
        self.calls.append(("destroy", name))
        if self._guests.pop(name, None) is not None:
            self._save()

    async def status(self, name: str) -> GuestStatus:
        g = self._get(name)
        running = g.state is GuestState.RUNNING
        return GuestStatus(
            name=name,
            state=g.state,
            pid=None,
            boot_id=g.boot_id,
            address=g.definition.address,
            vcpus=g.definition.vcpus if running else None,
            memory=g.definition.memory if running else None,
            cpu_seconds=0.0 if running else None,
            memory_usage=g.definition.memory // 4 if running else None,
            failure_reason=g.failure_reason,
            started_at=g.started_at if running else None,
        )

    async def list_guests(self) -> list[str]:
        return sorted(self._guests)

    async def definition(self, name: str) -> GuestDefinition:
        return self._get(name).definition

    async def console_log(self, name: str, *, max_bytes: int = 64 * 1024) -> str:
        return "\n".join(self._get(name).console)[-max_bytes:]

    async def adopt(self) -> dict[str, GuestStatus]:
        try:
            data = json.loads(self._file.read_text())
        except (FileNotFoundError, ValueError):
            data = {}
        for name, rec in data.items():
            if name not in self._guests:
                self._guests[name] = _FakeGuest(
                    definition=GuestDefinition.from_dict(rec["definition"]),
                    state=GuestState(rec["state"]),
                    boot_id=rec["boot_id"],
                    failure_reason=rec["failure_reason"],
                    starts=rec["starts"],
                    started_at=rec["started_at"],
                )
        return {name: await self.status(name) for name in sorted(self._guests)}

    async def close(self) -> None:
        if FakeDriver._fabric.get((self.cluster, self.host)) is self:
            del FakeDriver._fabric[(self.cluster, self.host)]

    def crash(self, name: str, reason: str = "crashed (injected)") -> None:
        guest = self._get(name)
        guest.state, guest.failure_reason = GuestState.FAILED, reason
        self._save()

    # ---------------------------------------------------------------- hot-plug

    def _change(self, name: str, op: str, **changes: Any) -> None:
        self.calls.append((op, name))
        guest = self._get(name)
        guest.definition = replace(guest.definition, **changes)
        self._save()

    async def set_vcpus(self, name: str, vcpus: int) -> GuestStatus:
        if not 1 <= vcpus <= self._get(name).definition.max_vcpus:
            raise InvalidDefinition(f"vcpus {vcpus} above max_vcpus", guest=name)
        self._change(name, "set_vcpus", vcpus=vcpus)
        return await self.status(name)

    async def set_memory(self, name: str, memory: int) -> GuestStatus:
        if not 1 <= memory <= self._get(name).definition.max_memory:
            raise InvalidDefinition(f"memory {memory} above max_memory", guest=name)
        self._change(name, "set_memory", memory=memory)
        return await self.status(name)

    async def attach_vnic(self, name: str, vnic: VnicDefinition) -> GuestStatus:
        self._change(name, "attach_vnic", vnics=(*self._get(name).definition.vnics, vnic))
        return await self.status(name)

    async def detach_vnic(self, name: str, mac: str) -> GuestStatus:
        vnics = self._get(name).definition.vnics
        if mac not in {v.mac for v in vnics}:
            raise GuestNotFound(f"no vNIC with MAC {mac}", guest=name)
        self._change(name, "detach_vnic", vnics=tuple(v for v in vnics if v.mac != mac))
        return await self.status(name)

    async def attach_disk(self, name: str, disk: DiskDefinition) -> GuestStatus:
        self._change(name, "attach_disk", disks=(*self._get(name).definition.disks, disk))
        return await self.status(name)

    async def detach_disk(self, name: str, disk_name: str) -> GuestStatus:
        disks = self._get(name).definition.disks
        self._change(name, "detach_disk", disks=tuple(d for d in disks if d.name != disk_name))
        return await self.status(name)

    async def resize_disk(self, name: str, disk_name: str, size: int) -> GuestStatus:
        disks = tuple(
            replace(d, size=max(d.size, size)) if d.name == disk_name else d for d in self._get(name).definition.disks
        )
        self._change(name, "resize_disk", disks=disks)
        return await self.status(name)

    # ---------------------------------------------------------------- migration

    async def prepare_incoming(self, definition: GuestDefinition) -> MigrationEndpoint:
        self.calls.append(("prepare_incoming", definition.name))
        if definition.name in self._guests:
            raise GuestExists("guest already defined", guest=definition.name)
        self._guests[definition.name] = _FakeGuest(definition=definition, state=GuestState.INCOMING)
        self._save()
        return MigrationEndpoint(guest=definition.name, host=self.host, uri=f"fake:{self.cluster}/{self.host}")

    async def migrate(self, name: str, endpoint: MigrationEndpoint, *, timeout: float = 120.0) -> MigrationResult:
        self.calls.append(("migrate", name))
        source = self._get(name)
        target_driver = FakeDriver._fabric.get((self.cluster, endpoint.host))
        if target_driver is None or name not in target_driver._guests:
            raise MigrationError(f"destination {endpoint.host} is not ready", guest=name)
        incoming = target_driver._guests[name]
        incoming.state, incoming.boot_id, incoming.started_at = GuestState.RUNNING, source.boot_id, source.started_at
        incoming.definition = replace(source.definition, host=endpoint.host, migrate_to=None)
        target_driver._save()
        source.state = GuestState.STOPPED
        self._save()
        return MigrationResult(guest=name, source=self.host, destination=endpoint.host, total_seconds=0.0,
                               downtime_seconds=0.0)

    async def finish_incoming(self, name: str) -> GuestStatus:
        self.calls.append(("finish_incoming", name))
        guest = self._get(name)
        if guest.state is not GuestState.RUNNING:
            raise MigrationError("migration did not complete", guest=name)
        return await self.status(name)
