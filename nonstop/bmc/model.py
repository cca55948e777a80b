"""The lab BMC's hardware model: one host's power state and its redundant components.

Role: hold what a BMC knows about its host — power on/off, power supplies, NICs, drives
in a RAID-1 volume, fans (two, not in the spec: every lab chassis has them) — and derive health the way Redfish reports it (``OK``, ``Warning``
for a group running on its last member, ``Critical`` for a failed part or a lost group).
Built from the cluster spec's ``HostSpec`` so the BMC reflects the host that is declared.

Must not: do I/O. Killing processes, calling the lab's hooks and HTTP live in power.py
and server.py; this is plain data with a few derived properties.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from enum import Enum

from nonstop.core.spec import HostSpec


class Health(str, Enum):
    OK = "OK"
    WARNING = "Warning"
    CRITICAL = "Critical"


class PowerState(str, Enum):
    ON = "On"
    OFF = "Off"
    POWERING_ON = "PoweringOn"
    POWERING_OFF = "PoweringOff"


class ComponentKind(str, Enum):
    PSU = "psu"
    NIC = "nic"
    DRIVE = "drive"
    FAN = "fan"


@dataclass
class Component:
    name: str
    failed: bool = False

    @property
    def health(self) -> Health:
        return Health.CRITICAL if self.failed else Health.OK

    @property
    def state(self) -> str:
        return "UnavailableOffline" if self.failed else "Enabled"


@dataclass
class PowerSupply(Component):
    watts: int = 800


@dataclass
class Nic(Component):
    mac: str = "02:00:00:00:00:00"
    speed_gbps: float = 10.0


@dataclass
class Fan(Component):
    @property
    def speed_percent(self) -> float:
        return 0.0 if self.failed else 40.0


@dataclass
class Drive(Component):
    size: int = 100 * 1024**3
    media: str = "ssd"


def group_health(members: list[Component], needed: int = 1) -> Health:
    """Redundancy rollup: all working → OK; fewer than all but ≥ ``needed`` → Warning; else Critical."""
    working = sum(not m.failed for m in members)
    if working == len(members):
        return Health.OK
    return Health.WARNING if working >= needed else Health.CRITICAL


def worst(*healths: Health) -> Health:
    order = [Health.OK, Health.WARNING, Health.CRITICAL]
    return max(healths, key=order.index, default=Health.OK)


@dataclass
class HostHardware:
    """Everything the BMC of one host models; mutated only by the BMC server."""

    host: str
    cpus: int = 1
    memory: int = 1024**3
    power: PowerState = PowerState.ON
    psus: dict[str, PowerSupply] = field(default_factory=dict)
    nics: dict[str, Nic] = field(default_factory=dict)
    drives: dict[str, Drive] = field(default_factory=dict)
    fans: dict[str, Fan] = field(default_factory=lambda: {f"Fan{i}": Fan(f"Fan{i}") for i in (1, 2)})
    uuid: str = field(default_factory=lambda: str(uuid.uuid4()))
    power_off_reason: str = ""

    @classmethod
    def from_spec(cls, host: HostSpec, power: PowerState = PowerState.ON) -> HostHardware:
        digest = uuid.uuid5(uuid.NAMESPACE_DNS, f"{host.name}.nonstop")
        nics = {}
        for i, nic in enumerate(host.nics):
            mac = f"02:{digest.bytes[0]:02x}:{digest.bytes[1]:02x}:{digest.bytes[2]:02x}:{digest.bytes[3]:02x}:{i:02x}"
            nics[nic.name] = Nic(nic.name, mac=mac, speed_gbps=(nic.speed or 10 * 10**9) / 1e9)
        return cls(
            host=host.name,
            cpus=host.cpus,
            memory=host.memory,
            power=power,
            psus={p.name: PowerSupply(p.name, watts=p.watts) for p in host.power_supplies},
            nics=nics,
            drives={d.name: Drive(d.name, size=d.size, media=d.media) for d in host.drives},
            uuid=str(digest),
        )

    def component(self, kind: ComponentKind, name: str) -> Component:
        table: dict[str, Component]
        table = {  # type: ignore[assignment]
            ComponentKind.PSU: self.psus, ComponentKind.NIC: self.nics,
            ComponentKind.DRIVE: self.drives, ComponentKind.FAN: self.fans,
        }[kind]
        if name not in table:
            raise KeyError(f"{self.host} has no {kind.value} {name!r} (has: {', '.join(table) or 'none'})")
        return table[name]

    @property
    def is_on(self) -> bool:
        return self.power in (PowerState.ON, PowerState.POWERING_OFF)

    @property
    def has_power(self) -> bool:
        """False once every power supply has failed: the host cannot run."""
        return any(not p.failed for p in self.psus.values()) if self.psus else True

    @property
    def power_health(self) -> Health:
        return group_health(list(self.psus.values())) if self.psus else Health.OK

    @property
    def network_health(self) -> Health:
        return group_health(list(self.nics.values())) if self.nics else Health.OK

    @property
    def storage_health(self) -> Health:
        """The drives form one RAID-1 volume: it survives while any member works."""
        return group_health(list(self.drives.values())) if self.drives else Health.OK

    @property
    def cooling_health(self) -> Health:
        return group_health(list(self.fans.values())) if self.fans else Health.OK

    def temperatures(self) -> dict[str, float]:
        """Modelled readings (°C): the CPU runs hotter for every failed fan."""
        failed = sum(f.failed for f in self.fans.values())
        cpu = 45.0 + 15.0 * failed if self.is_on else 25.0
        return {"CPUTemp": cpu, "InletTemp": 25.0}

    @property
    def health(self) -> Health:
        return worst(self.power_health, self.network_health, self.storage_health, self.cooling_health)
