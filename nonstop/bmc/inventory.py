"""Read a host's hardware inventory and health from any Redfish BMC through sushy.

Role: the client side of the BMC. ``redfish_session`` opens a sushy session (session auth
with fallback to basic, as sushy does) and closes it in the same thread; ``read_inventory`` walks the system and chassis and
returns a pure ``HardwareInventory``: power supplies (the current PowerSubsystem model,
falling back to the deprecated Power resource that older BMCs and sushy-emulator have),
fans and temperatures (ThermalSubsystem or Thermal), NIC ports (NetworkAdapters/Ports,
or the system's EthernetInterfaces), drives and volumes with their RAID type.

sushy has typed objects only for part of this (no PowerSubsystem, for one), so the walk
reads JSON through sushy's own authenticated connector and follows links. Every step
that fails — a 404, a missing link, a malformed member — is recorded in ``missing`` and
the walk goes on: real BMCs and emulators omit a lot, and a reader that crashes on the
first gap would leave the controller blind.

Must not: change anything on the BMC (fencing lives in nonstop/fence), or retry forever.
Blocking (sushy uses requests): call it from a thread in async code.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import sushy
from sushy import exceptions as sushy_exc

from nonstop.core.ha.hardware import ComponentGroup, ComponentReading, HardwareInventory

G = ComponentGroup


def connect(url: str, username: str, password: str, *, timeout: float = 5.0) -> sushy.Sushy:
    """A sushy root for ``url`` (``http://127.0.0.1:PORT``); raises sushy errors if unreachable.

    Timeouts and retries are bounded: sushy's defaults (60 s reads, 10 retries 3 s apart)
    would let one hung BMC stall a fence far past its deadline.
    """
    return sushy.Sushy(
        url.rstrip("/"), username=username, password=password, verify=False,
        read_timeout=timeout, connect_timeout=min(timeout, 2.0),
        server_side_retries=1, server_side_retries_delay=0.2,
    )


def release(root: sushy.Sushy) -> None:
    """Close the root's Redfish session now, in the calling thread.

    sushy otherwise closes it in ``__del__`` — a blocking HTTP DELETE run by whichever
    thread drops the last reference; if that is an event loop serving the BMC itself, the
    loop waits on itself until the read timeout.
    """
    auth = getattr(root, "_auth", None)
    root._auth = None  # noqa: SLF001
    if auth is not None:
        with contextlib.suppress(Exception):
            auth.close()


@contextlib.contextmanager
def redfish_session(url: str, username: str, password: str, *, timeout: float = 5.0) -> Iterator[sushy.Sushy]:
    """``connect`` + ``release`` in one ``with`` block (use it inside the worker thread)."""
    root = connect(url, username, password, timeout=timeout)
    try:
        yield root
    finally:
        release(root)


class _Walker:
    def __init__(self, root: sushy.Sushy) -> None:
        self.conn = root._conn  # noqa: SLF001 - sushy's authenticated connector
        self.missing: list[str] = []
        self.readings: list[ComponentReading] = []

    def get(self, uri: str | None, what: str) -> dict[str, Any] | None:
        if not uri:
            self.missing.append(f"{what}: no link")
            return None
        try:
            data = self.conn.get(path=uri).json()
        except (sushy_exc.SushyError, ValueError, OSError) as exc:
            self.missing.append(f"{what}: {uri}: {type(exc).__name__}")
            return None
        if not isinstance(data, dict):
            self.missing.append(f"{what}: {uri}: not an object")
            return None
        return data

    def members(self, uri: str | None, what: str) -> list[dict[str, Any]]:
        collection = self.get(uri, what)
        if collection is None:
            return []
        out = []
        for member in collection.get("Members", []):
            if isinstance(member, dict):
                if "Id" in member or "Name" in member:
                    out.append(member)  # expanded inline ($expand), not just a link
                    continue
                data = self.get(member.get("@odata.id"), what)
                if data is not None:
                    out.append(data)
        return out

    def add(self, group: ComponentGroup, kind: str, data: dict[str, Any], details: dict[str, Any] | None = None) -> None:
        st = data.get("Status") if isinstance(data.get("Status"), dict) else {}
        assert isinstance(st, dict)
        facts = tuple((k, str(v)) for k, v in (details or {}).items() if v is not None)
        self.readings.append(ComponentReading(
            group, kind, str(data.get("Name") or data.get("MemberId") or data.get("Id") or "?"),
            str(data.get("@odata.id", "")), st.get("Health"), st.get("State"), facts,
        ))


def _link(data: dict[str, Any] | None, key: str) -> str | None:
    value = (data or {}).get(key)
    return value.get("@odata.id") if isinstance(value, dict) else None


def read_inventory(root: sushy.Sushy, system_id: str | None = None) -> HardwareInventory:
    """Everything the BMC says about one system and its chassis; never raises on gaps."""
    w = _Walker(root)
    service = w.get("/redfish/v1/", "service root")
    systems = w.members(_link(service, "Systems"), "systems")
    if system_id is not None:
        systems = [s for s in systems if s.get("Id") == system_id or str(s.get("@odata.id", "")).endswith("/" + system_id)]
    if not systems:
        return HardwareInventory(system_id or "?", None, None, (), tuple(w.missing + ["system: not found"]))
    system = systems[0]
    status = system.get("Status") if isinstance(system.get("Status"), dict) else {}
    _storage(w, system)
    chassis_uris = [c.get("@odata.id") for c in (system.get("Links") or {}).get("Chassis", []) if isinstance(c, dict)]
    if not chassis_uris:
        chassis_uris = [c.get("@odata.id") for c in w.members(_link(service, "Chassis"), "chassis")][:1]
    for uri in chassis_uris:
        chassis = w.get(uri, "chassis")
        if chassis is not None:
            _power(w, chassis)
            _cooling(w, chassis)
            _network(w, chassis, system)
    return HardwareInventory(
        str(system.get("Id", system_id or "?")), system.get("PowerState"), (status or {}).get("Health"),
        tuple(w.readings), tuple(w.missing),
    )


def _power(w: _Walker, chassis: dict[str, Any]) -> None:
    subsystem_uri = _link(chassis, "PowerSubsystem")
    if subsystem_uri:
        subsystem = w.get(subsystem_uri, "power subsystem")
        for psu in w.members(_link(subsystem, "PowerSupplies"), "power supplies"):
            w.add(G.POWER, "power-supply", psu, {"LineInputStatus": psu.get("LineInputStatus")})
        return
    power = w.get(_link(chassis, "Power"), "power (deprecated Power resource)")
    for psu in (power or {}).get("PowerSupplies", []) or []:
        if isinstance(psu, dict):
            w.add(G.POWER, "power-supply", psu, {"LineInputVoltage": psu.get("LineInputVoltage")})


def _cooling(w: _Walker, chassis: dict[str, Any]) -> None:
    subsystem_uri = _link(chassis, "ThermalSubsystem")
    if subsystem_uri:
        subsystem = w.get(subsystem_uri, "thermal subsystem")
        for fan in w.members(_link(subsystem, "Fans"), "fans"):
            speed = fan.get("SpeedPercent") if isinstance(fan.get("SpeedPercent"), dict) else {}
            w.add(G.COOLING, "fan", fan, {"SpeedPercent": (speed or {}).get("Reading")})
        sensors_uri = _link(chassis, "Sensors")
        for sensor in w.members(sensors_uri, "sensors") if sensors_uri else []:
            if sensor.get("ReadingType") == "Temperature":
                w.add(G.COOLING, "temperature", sensor, {"ReadingCelsius": sensor.get("Reading")})
        return
    if _link(chassis, "Thermal") is None:
        w.missing.append("cooling: no ThermalSubsystem or Thermal")
        return
    thermal = w.get(_link(chassis, "Thermal"), "thermal")
    for fan in (thermal or {}).get("Fans", []) or []:
        if isinstance(fan, dict):
            w.add(G.COOLING, "fan", fan, {"Reading": fan.get("Reading"), "ReadingUnits": fan.get("ReadingUnits")})
    for sensor in (thermal or {}).get("Temperatures", []) or []:
        if isinstance(sensor, dict):
            w.add(G.COOLING, "temperature", sensor, {"ReadingCelsius": sensor.get("ReadingCelsius")})


def _network(w: _Walker, chassis: dict[str, Any], system: dict[str, Any]) -> None:
    adapters_uri = _link(chassis, "NetworkAdapters")
    if adapters_uri:
        for adapter in w.members(adapters_uri, "network adapters"):
            ports_uri = _link(adapter, "Ports") or _link(adapter, "NetworkPorts")
            ports = w.members(ports_uri, "ports") if ports_uri else []
            if not ports:
                w.add(G.NETWORK, "adapter", adapter)
            for port in ports:
                name = f"{adapter.get('Id', '?')}/{port.get('Id', '?')}"
                w.add(G.NETWORK, "port", {**port, "Name": name}, {"LinkStatus": port.get("LinkStatus")})
        return
    # No adapters (sushy-emulator): the system's Ethernet interfaces are the next best thing.
    for nic in w.members(_link(system, "EthernetInterfaces"), "ethernet interfaces"):
        w.add(G.NETWORK, "port", nic, {"LinkStatus": nic.get("LinkStatus"), "MACAddress": nic.get("MACAddress")})


def _storage(w: _Walker, system: dict[str, Any]) -> None:
    storage_uri = _link(system, "Storage")
    if storage_uri is None:
        w.missing.append("storage: no Storage")
        return
    for storage in w.members(storage_uri, "storage"):
        for ref in storage.get("Drives", []) or []:
            drive = w.get(ref.get("@odata.id") if isinstance(ref, dict) else None, "drive")
            if drive is not None:
                w.add(G.STORAGE, "drive", drive, {"CapacityBytes": drive.get("CapacityBytes"), "MediaType": drive.get("MediaType")})
        volumes_uri = _link(storage, "Volumes")
        for volume in w.members(volumes_uri, "volumes") if volumes_uri else []:
            w.add(G.STORAGE, "volume", volume, {"RAIDType": volume.get("RAIDType"), "CapacityBytes": volume.get("CapacityBytes")})
