"""What a BMC says about a host's hardware, as plain data (pure).

Role: the vocabulary shared by the Redfish reader (nonstop/bmc/inventory.py), the lab BMC
and the component-redundancy logic: one ``ComponentReading`` per power supply, fan,
temperature sensor, NIC port, drive or volume, grouped into ``power``, ``cooling``,
``network`` and ``storage``, with Redfish's health words kept as they are (``OK``,
``Warning``, ``Critical``, or ``None`` when the BMC does not say). A reading that the BMC
could not give (a missing resource, an error) is listed in ``missing`` rather than
guessed: "no data" must never look like "healthy".

Must not: talk to a BMC or decide policy (evacuate, alert); it only describes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class ComponentGroup(str, Enum):
    POWER = "power"
    COOLING = "cooling"
    NETWORK = "network"
    STORAGE = "storage"


@dataclass(frozen=True)
class ComponentReading:
    group: ComponentGroup
    kind: str
    """``power-supply``, ``fan``, ``temperature``, ``port``, ``drive``, ``volume``."""
    name: str
    uri: str
    health: str | None
    state: str | None
    details: tuple[tuple[str, str], ...] = ()
    """Extra facts as (key, value) text: LinkStatus, RAIDType, ReadingCelsius ..."""

    @property
    def failed(self) -> bool:
        return self.health == "Critical" or self.state in ("UnavailableOffline", "Absent") or self.detail(
            "LinkStatus"
        ) == "LinkDown"

    def detail(self, key: str) -> str | None:
        return next((value for k, value in self.details if k == key), None)


@dataclass(frozen=True)
class HardwareInventory:
    system: str
    power_state: str | None
    health: str | None
    components: tuple[ComponentReading, ...] = ()
    missing: tuple[str, ...] = field(default=())
    """What could not be read (``"power: no PowerSubsystem or Power"``), for the operator."""

    def group(self, group: ComponentGroup) -> tuple[ComponentReading, ...]:
        return tuple(c for c in self.components if c.group is group)

    def failed(self) -> tuple[ComponentReading, ...]:
        return tuple(c for c in self.components if c.failed)
