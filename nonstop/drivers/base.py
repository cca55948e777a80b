"""The hypervisor driver interface: what the agent may ask of a driver, and what it promises.

Role: one small abstract class, ``Driver``, with capability flags and contracts written as
docstrings (in the manner of Nova's ``virt/driver.py``), the typed errors drivers raise, and
the migration hand-off records. Implementations: ``fake`` (in memory, for unit tests),
``process`` (process tree + network namespace + cgroups) and ``qemu`` (QEMU/QMP VMs).

Every method is a coroutine and is called from the agent's asyncio loop; a driver that must
block (netlink, cgroup files) keeps each call short. Operations are keyed by guest name; a
driver keeps whatever it needs to find a guest again after an agent restart under its
``state_dir`` (``adopt`` reads it back).

Must not: talk to the store, decide what should run (the agent and the pure reconcile logic
do), or touch guests of another cluster/host (everything it creates carries the cluster and
guest names). Changes to this module are additive only: other drivers implement it.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from nonstop.core.guests.model import (
    Capabilities,
    DiskDefinition,
    GuestDefinition,
    GuestState,
    GuestStatus,
    VnicDefinition,
)

__all__ = [
    "Capabilities",
    "DiskDefinition",
    "Driver",
    "DriverError",
    "GuestDefinition",
    "GuestExists",
    "GuestNotFound",
    "GuestStartError",
    "GuestState",
    "GuestStatus",
    "InvalidDefinition",
    "MigrationEndpoint",
    "MigrationError",
    "MigrationResult",
    "NotSupported",
    "VnicDefinition",
]


# ---------------------------------------------------------------------------- errors


class DriverError(Exception):
    """Base of every driver error; ``reason`` is a short human sentence stored as the failure reason."""

    def __init__(self, reason: str, *, guest: str | None = None) -> None:
        super().__init__(reason if guest is None else f"{guest}: {reason}")
        self.reason = reason
        self.guest = guest


class GuestStartError(DriverError):
    """The guest could not be created or started (missing image, bad disk, no memory, exec failed...).

    The driver has already cleaned up partial state when this is raised. ``permanent`` says that
    retrying the same definition cannot help (bad input), so the agent marks the guest failed at once
    instead of spending its retry budget.
    """

    def __init__(self, reason: str, *, guest: str | None = None, permanent: bool = False) -> None:
        super().__init__(reason, guest=guest)
        self.permanent = permanent


class InvalidDefinition(GuestStartError):
    """The definition itself is wrong for this driver (e.g. vcpus > max_vcpus, unknown image)."""

    def __init__(self, reason: str, *, guest: str | None = None) -> None:
        super().__init__(reason, guest=guest, permanent=True)


class GuestNotFound(DriverError):
    """The driver knows no guest of that name (never created, or destroyed)."""


class GuestExists(DriverError):
    """``create`` was called for a guest the driver already has."""


class NotSupported(DriverError):
    """The driver cannot do this operation at all (see its ``capabilities``)."""

    def __init__(self, operation: str, *, driver: str = "", guest: str | None = None) -> None:
        super().__init__(f"{driver or 'this driver'} does not support {operation}", guest=guest)
        self.operation = operation


class MigrationError(DriverError):
    """A live migration failed; the guest still runs on the source (the driver rolled back)."""


# ---------------------------------------------------------------------- capabilities


# Capabilities lives in the pure core (the reconcile logic reads it); re-exported here.


# ------------------------------------------------------------------------ migration


@dataclass(frozen=True)
class MigrationEndpoint:
    """Returned by the destination's ``prepare_incoming``; handed to the source's ``migrate``."""

    guest: str
    host: str
    uri: str
    """Driver-specific, e.g. ``tcp:198.18.0.12:49152`` for QEMU."""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MigrationResult:
    guest: str
    source: str
    destination: str
    total_seconds: float
    downtime_seconds: float | None = None
    """Measured stop-and-copy pause as the hypervisor reports it (None if unknown)."""
    transferred_bytes: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- driver


class Driver(abc.ABC):
    """A hypervisor on one host.

    Contracts common to all methods:
    - Guest names are unique per driver instance (one cluster, one host).
    - A method that fails raises a ``DriverError`` subclass with a ``reason`` fit for the store.
    - Nothing here kills a guest as a side effect of the agent exiting: ``close()`` only releases
      connections, and guests survive an agent crash (``adopt`` finds them again).
    """

    kind: ClassVar[str] = "abstract"
    capabilities: ClassVar[Capabilities] = Capabilities()

    def __init__(self, *, cluster: str, host: str, state_dir: Path | str, **options: Any) -> None:
        self.cluster = cluster
        self.host = host
        self.state_dir = Path(state_dir)
        self.options = options

    # ---- lifecycle

    @abc.abstractmethod
    async def create(self, definition: GuestDefinition) -> None:
        """Define the guest and allocate what it needs (disks, namespace, cgroup) without running it.

        Raises ``GuestExists`` if already defined, ``InvalidDefinition`` for bad input and
        ``GuestStartError`` otherwise. If this fails, any partially created state is removed.
        """

    @abc.abstractmethod
    async def start(self, name: str) -> GuestStatus:
        """Start a created (or stopped) guest; returns once it is running (not necessarily serving).

        Starting a running guest is a no-op that returns its status (it never starts a second copy).
        On failure raises ``GuestStartError``; the guest is left created-but-stopped, with no
        stray processes, and ``status`` reports FAILED with the same reason.
        """

    async def spawn(self, definition: GuestDefinition) -> GuestStatus:
        """``create`` then ``start``. If either fails the guest is completely cleaned up (destroyed)."""
        await self.create(definition)
        try:
            return await self.start(definition.name)
        except BaseException:
            await self.destroy(definition.name)
            raise

    @abc.abstractmethod
    async def stop(self, name: str, *, timeout: float = 10.0) -> GuestStatus:
        """Graceful stop: ask the guest to shut down (SIGTERM / ACPI power-off), wait up to
        ``timeout`` seconds, then force it off. Returns the STOPPED status. Stopping a stopped
        guest is a no-op. Raises ``GuestNotFound`` for an unknown guest."""

    @abc.abstractmethod
    async def destroy(self, name: str) -> None:
        """Force the guest off and remove everything it had (processes, cgroup, namespace, vNICs,
        sockets, state files; disks the driver created). Succeeds if the guest is already gone or
        was never created."""

    @abc.abstractmethod
    async def status(self, name: str) -> GuestStatus:
        """One observation of the guest. Raises ``GuestNotFound`` if the driver has no such guest.
        A guest that died on its own is reported FAILED with ``failure_reason`` (e.g. an OOM kill)."""

    @abc.abstractmethod
    async def list_guests(self) -> list[str]:
        """Names of every guest this driver currently has (running or not)."""

    async def definition(self, name: str) -> GuestDefinition:
        """The definition the guest currently runs with (after hot-plugs). Raises ``GuestNotFound``."""
        raise NotSupported("definition", driver=self.kind, guest=name)

    async def console_log(self, name: str, *, max_bytes: int = 64 * 1024) -> str:
        """The last ``max_bytes`` of the guest's console (serial log / workload stdout+stderr)."""
        raise NotSupported("console_log", driver=self.kind, guest=name)

    @abc.abstractmethod
    async def adopt(self) -> dict[str, GuestStatus]:
        """Find this host's guests that are already running (after an agent restart), verify each
        one is really ours (pid + start time, QMP socket), and take them over without restarting
        them. Guests whose process is gone are reported FAILED or STOPPED; stale state is kept for
        ``destroy`` to clean. Returns name → status for every guest found."""

    async def close(self) -> None:  # noqa: B027 - optional hook, default does nothing
        """Release connections (QMP sockets, netlink). Never stops guests."""

    # ---- hot-plug (each raises NotSupported when the capability is off)

    async def set_vcpus(self, name: str, vcpus: int) -> GuestStatus:
        """Change the running guest's vCPUs to ``vcpus`` (≤ ``max_vcpus``) without a restart.
        Raises ``NotSupported`` if this direction (add/remove) is not possible live,
        ``InvalidDefinition`` if above ``max_vcpus``."""
        raise NotSupported("vCPU hot-plug", driver=self.kind, guest=name)

    async def set_memory(self, name: str, memory: int) -> GuestStatus:
        """Change the running guest's memory to ``memory`` bytes (≤ ``max_memory``) without a restart."""
        raise NotSupported("memory hot-plug", driver=self.kind, guest=name)

    async def attach_vnic(self, name: str, vnic: VnicDefinition) -> GuestStatus:
        raise NotSupported("vNIC hot-plug", driver=self.kind, guest=name)

    async def detach_vnic(self, name: str, mac: str) -> GuestStatus:
        raise NotSupported("vNIC unplug", driver=self.kind, guest=name)

    async def attach_disk(self, name: str, disk: DiskDefinition) -> GuestStatus:
        raise NotSupported("disk hot-plug", driver=self.kind, guest=name)

    async def detach_disk(self, name: str, disk_name: str) -> GuestStatus:
        raise NotSupported("disk unplug", driver=self.kind, guest=name)

    async def resize_disk(self, name: str, disk_name: str, size: int) -> GuestStatus:
        """Grow a disk to ``size`` bytes (never shrinks)."""
        raise NotSupported("disk resize", driver=self.kind, guest=name)

    # ---- live migration (destination: prepare_incoming/finish_incoming; source: migrate)

    async def prepare_incoming(self, definition: GuestDefinition) -> MigrationEndpoint:
        """Destination host: create the guest in INCOMING state, ready to receive, and say where."""
        raise NotSupported("live migration", driver=self.kind, guest=definition.name)

    async def migrate(self, name: str, endpoint: MigrationEndpoint, *, timeout: float = 120.0) -> MigrationResult:
        """Source host: copy the running guest to ``endpoint`` and stop it here once the destination
        runs. On failure raises ``MigrationError`` and the guest keeps running here."""
        raise NotSupported("live migration", driver=self.kind, guest=name)

    async def finish_incoming(self, name: str) -> GuestStatus:
        """Destination host: after ``migrate`` returned, make sure the guest runs here and report it."""
        raise NotSupported("live migration", driver=self.kind, guest=name)

    # ---- helpers for implementations

    def supports(self, capability: str) -> bool:
        return bool(getattr(self.capabilities, capability))
