"""What a guest is, as data: its definition (desired) and its status (observed).

Role: the frozen dataclasses every layer passes around for one guest — ``GuestDefinition``
(built from the spec's ``GuestGroupSpec`` plus placement: host, addresses, fencing epoch),
``DiskDefinition``, ``VnicDefinition``, ``GuestStatus`` (what a driver sees right now) and
``GuestState``. Each round-trips through ``to_dict``/``from_dict`` as plain JSON-able dicts,
because that is how they live in the store (``desired`` and ``observed`` records).

Must not: do I/O, look at a clock, or know any driver. The drivers re-export these names from
``nonstop.drivers.base``; the reconcile logic in ``nonstop.core.guests.reconcile`` uses them
directly. Additive changes only: other engineers build on these field names.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field, fields, replace
from enum import Enum
from typing import Any

from nonstop.core.net import names
from nonstop.core.spec import GuestGroupSpec, GuestKind


class GuestState(str, Enum):
    """Lifecycle states; the legal moves between them are the table in ``lifecycle.py``."""

    PENDING = "pending"
    """Desired, not yet created on its host."""
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"
    """Could not start, or died; ``failure_reason`` says why."""
    MIGRATING = "migrating"
    """Running and being copied to another host (live migration)."""
    INCOMING = "incoming"
    """The receiving side of a live migration: not yet running here."""


@dataclass(frozen=True)
class Capabilities:
    """What a driver can do; the agent never asks for an operation whose flag is off."""

    live_migration: bool = False
    hotplug_vcpu: bool = False
    """vCPUs can be added to a running guest (up to ``max_vcpus``)."""
    unplug_vcpu: bool = False
    hotplug_memory: bool = False
    """Memory can be added to a running guest (up to ``max_memory``)."""
    unplug_memory: bool = False
    hotplug_nic: bool = False
    hotplug_disk: bool = False
    resize_disk: bool = False
    adoption: bool = True
    """The driver finds its running guests again after an agent restart."""
    console_log: bool = True


@dataclass(frozen=True)
class DiskDefinition:
    name: str = "root"
    size: int = 1024**3
    provisioning: str = "thin"
    """``thin`` (qcow2 overlay) or ``thick`` (raw, fully allocated)."""
    path: str | None = None
    """Where the disk file lives; drivers pick a path under their disk directory when None."""
    redundancy: str = "none"
    """``mirror``: a RAID-1 over two host drives (QEMU driver; nonstop/drivers/qemu_mirror.py)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DiskDefinition:
        return cls(**_known(cls, data))


@dataclass(frozen=True)
class VnicDefinition:
    network: str
    mac: str
    address: str | None = None
    """``ip/prefixlen`` from nonstop's IPAM, e.g. ``198.18.10.5/24``; None = no address."""
    gateway: str | None = None
    bandwidth: int | None = None
    """Bits per second in each direction; None = unlimited."""
    bridge: str | None = None
    """The host's virtual switch (a Linux bridge in the host's namespace) to plug the host end into."""
    host_ifname: str | None = None
    """Host-side interface name (≤ 15 chars); drivers derive one when None."""

    @property
    def ip(self) -> str | None:
        return self.address.split("/", 1)[0] if self.address else None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VnicDefinition:
        return cls(**_known(cls, data))


@dataclass(frozen=True)
class GuestDefinition:
    """Everything a driver needs to run one guest on one host."""

    name: str
    cluster: str
    host: str
    kind: str = GuestKind.PROCESS.value
    vcpus: int = 1
    max_vcpus: int = 1
    memory: int = 256 * 1024**2
    max_memory: int = 256 * 1024**2
    disks: tuple[DiskDefinition, ...] = ()
    vnics: tuple[VnicDefinition, ...] = ()
    image: str = "builtin"
    command: tuple[str, ...] | None = None
    """Process guests: argv of the workload; None = nonstop's built-in workload server."""
    port: int = 80
    fencing_epoch: int = 0
    """The fencing token this definition was issued under; an agent refuses to start a guest
    whose current epoch in the store is newer (the record is stale)."""
    group: str | None = None
    running: bool = True
    """Desired power state: False = defined but kept stopped."""
    migrate_to: str | None = None
    """When set, the controller asks the current host to move the guest to this host."""
    migration_id: str | None = None
    """With ``migrate_to``: the id of the ``migration`` operation (``ops/<id>``) the two agents
    hand the guest over through; the controller sets both and, once the operation is done,
    rewrites the record on the destination (the one writer of this record)."""
    env: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if self.max_vcpus < self.vcpus:
            object.__setattr__(self, "max_vcpus", self.vcpus)
        if self.max_memory < self.memory:
            object.__setattr__(self, "max_memory", self.memory)

    @property
    def address(self) -> str | None:
        """The first vNIC's IP address, the one services and health checks use."""
        for vnic in self.vnics:
            if vnic.ip:
                return vnic.ip
        return None

    @classmethod
    def from_group(
        cls,
        group: GuestGroupSpec,
        *,
        name: str,
        cluster: str,
        host: str,
        addresses: list[str | None] | None = None,
        gateways: list[str | None] | None = None,
        bridges: list[str | None] | None = None,
        fencing_epoch: int = 0,
    ) -> GuestDefinition:
        """A definition for guest ``name`` of ``group`` placed on ``host``.

        ``addresses``/``gateways``/``bridges`` are per vNIC, in the group's NIC order (from IPAM and
        the host's network layout); MACs are derived deterministically so a restarted guest keeps its.
        """
        vnics = []
        for index, nic in enumerate(group.nics):
            vnics.append(
                VnicDefinition(
                    network=nic.network,
                    mac=default_mac(cluster, name, index),
                    address=_at(addresses, index),
                    gateway=_at(gateways, index),
                    bandwidth=nic.bandwidth,
                    bridge=_at(bridges, index),
                )
            )
        return cls(
            name=name,
            cluster=cluster,
            host=host,
            kind=group.kind.value,
            vcpus=group.vcpus,
            max_vcpus=group.max_vcpus or group.vcpus,
            memory=group.memory,
            max_memory=group.max_memory or group.memory,
            disks=tuple(
                DiskDefinition(name=d.name, size=d.size, provisioning=d.provisioning.value,
                               redundancy=d.redundancy)
                for d in group.disks
            ),
            vnics=tuple(vnics),
            image=group.image,
            command=tuple(group.command) if group.command is not None else None,
            port=group.port,
            fencing_epoch=fencing_epoch,
            group=group.name,
        )

    def with_changes(self, **changes: Any) -> GuestDefinition:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["disks"] = [d.to_dict() for d in self.disks]
        data["vnics"] = [v.to_dict() for v in self.vnics]
        data["command"] = list(self.command) if self.command is not None else None
        data["env"] = [list(pair) for pair in self.env]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GuestDefinition:
        values = _known(cls, data)
        values["disks"] = tuple(DiskDefinition.from_dict(d) for d in values.get("disks", ()))
        values["vnics"] = tuple(VnicDefinition.from_dict(v) for v in values.get("vnics", ()))
        if values.get("command") is not None:
            values["command"] = tuple(str(a) for a in values["command"])
        values["env"] = tuple((str(k), str(v)) for k, v in values.get("env", ()))
        return cls(**values)


@dataclass(frozen=True)
class GuestStatus:
    """What a driver observes about one guest right now (one sample, no history)."""

    name: str
    state: GuestState
    pid: int | None = None
    boot_id: str | None = None
    """Changes on every (re)start: the proof a guest was or was not restarted."""
    address: str | None = None
    vcpus: int | None = None
    """Effective vCPUs (quota / period for process guests; online CPUs for VMs)."""
    memory: int | None = None
    """Effective memory limit in bytes."""
    cpu_seconds: float | None = None
    """Cumulative CPU time used; rates come from two samples (``cpu_usage`` when the driver keeps one)."""
    cpu_usage: float | None = None
    """CPU cores in use, averaged since the previous sample."""
    cpu_throttled_seconds: float | None = None
    """Cumulative time the guest was runnable but held back by its quota (or stolen, for VMs)."""
    throttled_periods: int | None = None
    total_periods: int | None = None
    memory_usage: int | None = None
    memory_pressure: float | None = None
    """0..1: how hard the guest presses on its memory limit (usage / limit, or PSI when available)."""
    memory_limit_hits: int | None = None
    oom_kills: int = 0
    failure_reason: str | None = None
    started_at: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["state"] = self.state.value
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GuestStatus:
        values = _known(cls, data)
        values["state"] = GuestState(values["state"])
        return cls(**values)


def default_mac(cluster: str, guest: str, index: int) -> str:
    """A stable, locally administered unicast MAC for vNIC ``index`` of ``guest`` — the same one the
    lab network code gives the vNIC (one derivation for the whole system)."""
    return names.vnic_mac(cluster, guest, index)


def short_id(*parts: str, length: int = 8) -> str:
    """A short stable hex id for names that must fit 15-char interface names."""
    return hashlib.sha256("/".join(parts).encode()).hexdigest()[:length]


def _at(values: list[str | None] | None, index: int) -> str | None:
    if values is None or index >= len(values):
        return None
    return values[index]


def _known(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    # Records written by a newer agent may carry fields this one does not know: ignore them.
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in data.items() if k in names}
