"""Redfish resources of the lab BMC, rendered from the hardware model.

Role: map a ``HostHardware`` (and the live sessions) to the Redfish resource tree — URI →
JSON payload — plus ``$metadata`` and the OData service document. Every resource type and
the schema version it claims is listed once in ``TYPES``; ``$metadata`` is generated from
the same table, so the two can never disagree (the Service Validator checks both).

Layout (one system, one chassis, one manager per BMC, all named after the host)::

    /redfish/v1/Systems/<host>                      ComputerSystem (PowerState, Reset)
    /redfish/v1/Systems/<host>/Storage/1            Storage, Volumes/1 (RAID1 over the drives)
    /redfish/v1/Chassis/<host>/Drives/<drive>
    /redfish/v1/Chassis/<host>/PowerSubsystem       PowerSupplies/<psu> (current model)
    /redfish/v1/Chassis/<host>/NetworkAdapters/<nic>/Ports/1
    /redfish/v1/Chassis/<host>/ThermalSubsystem     Fans/<fan>, ThermalMetrics; Sensors/<sensor>
    /redfish/v1/Managers/BMC, SessionService, AccountService
    /redfish/v1/EventService                        Subscriptions/<id> (push events)

Must not: do I/O or change the model; server.py serves what this renders.
"""

from __future__ import annotations

from typing import Any

from nonstop.bmc.model import Health, HostHardware, PowerState, worst

ROOT = "/redfish/v1"
REDFISH_VERSION = "1.21.0"
RESET_TYPES = ["On", "ForceOff", "GracefulShutdown", "GracefulRestart", "ForceRestart", "PowerCycle"]

# schema namespace -> version used in @odata.type
TYPES: dict[str, str] = {
    "ServiceRoot": "v1_17_0",
    "ComputerSystemCollection": "",
    "ComputerSystem": "v1_22_0",
    "ChassisCollection": "",
    "Chassis": "v1_25_0",
    "PowerSubsystem": "v1_1_0",
    "PowerSupplyCollection": "",
    "PowerSupply": "v1_5_0",
    "NetworkAdapterCollection": "",
    "NetworkAdapter": "v1_9_0",
    "PortCollection": "",
    "Port": "v1_9_0",
    "StorageCollection": "",
    "Storage": "v1_15_0",
    "DriveCollection": "",
    "Drive": "v1_17_0",
    "VolumeCollection": "",
    "Volume": "v1_9_0",
    "ThermalSubsystem": "v1_3_0",
    "FanCollection": "",
    "Fan": "v1_5_0",
    "ThermalMetrics": "v1_3_0",
    "SensorCollection": "",
    "Sensor": "v1_9_0",
    "ManagerCollection": "",
    "Manager": "v1_19_0",
    "SessionService": "v1_1_9",
    "SessionCollection": "",
    "Session": "v1_7_0",
    "AccountService": "v1_13_0",
    "ManagerAccountCollection": "",
    "ManagerAccount": "v1_10_0",
    "RoleCollection": "",
    "Role": "v1_3_1",
    "EventService": "v1_10_0",
    "EventDestinationCollection": "",
    "EventDestination": "v1_14_0",
    "Event": "v1_10_0",
}
EVENTS = f"{ROOT}/EventService"
SUBSCRIPTIONS = f"{EVENTS}/Subscriptions"
MANAGER_ID = "BMC"


def odata_type(name: str) -> str:
    version = TYPES[name]
    return f"#{name}.{version}.{name}" if version else f"#{name}.{name}"


def link(uri: str) -> dict[str, str]:
    return {"@odata.id": uri}


def status(health: Health, state: str = "Enabled", rollup: Health | None = None) -> dict[str, str]:
    out = {"State": state, "Health": health.value}
    if rollup is not None:
        out["HealthRollup"] = rollup.value
    return out


def resource(kind: str, uri: str, ident: str, name: str, **props: Any) -> dict[str, Any]:
    return {"@odata.id": uri, "@odata.type": odata_type(kind), "Id": ident, "Name": name, **props}


def collection(kind: str, uri: str, name: str, members: list[str]) -> dict[str, Any]:
    return {
        "@odata.id": uri,
        "@odata.type": odata_type(kind),
        "Name": name,
        "Members": [link(m) for m in members],
        "Members@odata.count": len(members),
    }


def render(hw: HostHardware, sessions: dict[str, str], username: str,
           subscriptions: dict[str, dict[str, str]] | None = None) -> dict[str, dict[str, Any]]:
    """Every resource of the BMC: URI (no trailing slash) → payload. ``sessions``: id → user;
    ``subscriptions``: id → {"Destination", "Context"} (EventService)."""
    h = hw.host
    system = f"{ROOT}/Systems/{h}"
    chassis = f"{ROOT}/Chassis/{h}"
    manager = f"{ROOT}/Managers/{MANAGER_ID}"
    storage = f"{system}/Storage/1"
    power = f"{chassis}/PowerSubsystem"
    adapters = f"{chassis}/NetworkAdapters"
    on = hw.is_on
    host_state = "Enabled" if on else "StandbyOffline"
    tree: dict[str, dict[str, Any]] = {}

    def put(payload: dict[str, Any]) -> None:
        tree[payload["@odata.id"]] = payload

    put(resource(
        "ServiceRoot", ROOT, "RootService", "nonstop lab BMC",
        RedfishVersion=REDFISH_VERSION, UUID=hw.uuid, Vendor="nonstop", Product="nonstop lab BMC",
        Systems=link(f"{ROOT}/Systems"), Chassis=link(f"{ROOT}/Chassis"), Managers=link(f"{ROOT}/Managers"),
        SessionService=link(f"{ROOT}/SessionService"), AccountService=link(f"{ROOT}/AccountService"),
        EventService=link(EVENTS), Links={"Sessions": link(f"{ROOT}/SessionService/Sessions")},
    ))

    # ------------------------------------------------------------- system
    put(collection("ComputerSystemCollection", f"{ROOT}/Systems", "Computer Systems", [system]))
    put(resource(
        "ComputerSystem", system, h, h,
        SystemType="Physical", Manufacturer="nonstop", Model="lab host", SerialNumber=hw.uuid[:8].upper(),
        UUID=hw.uuid, HostName=h, PowerState=hw.power.value,
        Status=status(hw.health, host_state, rollup=hw.health),
        ProcessorSummary={"Count": hw.cpus},
        MemorySummary={"TotalSystemMemoryGiB": round(hw.memory / 1024**3, 3)},
        Storage=link(f"{system}/Storage"),
        Links={"Chassis": [link(chassis)], "ManagedBy": [link(manager)]},
        Actions={
            "#ComputerSystem.Reset": {
                "target": f"{system}/Actions/ComputerSystem.Reset",
                "ResetType@Redfish.AllowableValues": RESET_TYPES,
            }
        },
    ))

    # ------------------------------------------------------------ storage
    # Drives live under the chassis: the Storage/1/Drives URI form is deprecated.
    drive_uris = {name: f"{chassis}/Drives/{name}" for name in hw.drives}
    volume = f"{storage}/Volumes/1"
    put(collection("StorageCollection", f"{system}/Storage", "Storage", [storage]))
    put(resource(
        "Storage", storage, "1", "Local storage",
        Status=status(hw.storage_health, rollup=hw.storage_health),
        Drives=[link(u) for u in drive_uris.values()], **{"Drives@odata.count": len(drive_uris)},
        Volumes=link(f"{storage}/Volumes"),
    ))
    for name, drive in hw.drives.items():
        put(resource(
            "Drive", drive_uris[name], name, name,
            Status=status(drive.health, drive.state), CapacityBytes=drive.size,
            MediaType="HDD" if drive.media == "hdd" else "SSD",
            Protocol="NVMe" if drive.media == "nvme" else "SATA",
            Manufacturer="nonstop", Model=f"lab {drive.media}",
            Links={"Volumes": [link(volume)]},
        ))
    put(collection("VolumeCollection", f"{storage}/Volumes", "Volumes", [volume] if hw.drives else []))
    if hw.drives:
        put(resource(
            "Volume", volume, "1", "Mirror",
            Status=status(hw.storage_health, "Enabled" if hw.storage_health is not Health.CRITICAL else "UnavailableOffline"),
            RAIDType="RAID1" if len(hw.drives) > 1 else "None",
            CapacityBytes=min(d.size for d in hw.drives.values()),
            Links={"Drives": [link(u) for u in drive_uris.values()]},
        ))

    # ------------------------------------------------------------ chassis
    put(collection("ChassisCollection", f"{ROOT}/Chassis", "Chassis", [chassis]))
    put(resource(
        "Chassis", chassis, h, h,
        ChassisType="RackMount", Manufacturer="nonstop", Model="lab chassis", PowerState=hw.power.value,
        Status=status(worst(hw.power_health, hw.network_health, hw.cooling_health), rollup=hw.health),
        PowerSubsystem=link(power), NetworkAdapters=link(adapters), Drives=link(f"{chassis}/Drives"),
        ThermalSubsystem=link(f"{chassis}/ThermalSubsystem"), Sensors=link(f"{chassis}/Sensors"),
        Links={"ComputerSystems": [link(system)], "ManagedBy": [link(manager)]},
    ))
    put(collection("DriveCollection", f"{chassis}/Drives", "Drives", list(drive_uris.values())))
    psu_uris = {name: f"{power}/PowerSupplies/{name}" for name in hw.psus}
    put(resource(
        "PowerSubsystem", power, "PowerSubsystem", "Power subsystem",
        Status=status(hw.power_health, rollup=hw.power_health),
        CapacityWatts=sum(p.watts for p in hw.psus.values() if not p.failed),
        PowerSupplies=link(f"{power}/PowerSupplies"),
        PowerSupplyRedundancy=[{
            "RedundancyType": "Failover",
            "MaxSupportedInGroup": len(hw.psus),
            "MinNeededInGroup": 1,
            "RedundancyGroup": [link(u) for u in psu_uris.values()],
            "Status": status(hw.power_health),
        }] if len(hw.psus) > 1 else [],
    ))
    put(collection("PowerSupplyCollection", f"{power}/PowerSupplies", "Power supplies", list(psu_uris.values())))
    for name, psu in hw.psus.items():
        put(resource(
            "PowerSupply", psu_uris[name], name, name,
            Status=status(psu.health, psu.state), PowerCapacityWatts=psu.watts, PowerSupplyType="AC",
            LineInputStatus="LossOfInput" if psu.failed else "Normal", Manufacturer="nonstop", Model="lab PSU",
        ))
    adapter_uris = {name: f"{adapters}/{name}" for name in hw.nics}
    put(collection("NetworkAdapterCollection", adapters, "Network adapters", list(adapter_uris.values())))
    for name, nic in hw.nics.items():
        port = f"{adapter_uris[name]}/Ports/1"
        put(resource(
            "NetworkAdapter", adapter_uris[name], name, name,
            Status=status(nic.health, nic.state, rollup=nic.health), Manufacturer="nonstop", Model="lab NIC",
            Ports=link(f"{adapter_uris[name]}/Ports"),
        ))
        put(collection("PortCollection", f"{adapter_uris[name]}/Ports", "Ports", [port]))
        link_up = on and not nic.failed
        put(resource(
            "Port", port, "1", f"{name} port",
            Status=status(nic.health, nic.state), PortId="1", PortProtocol="Ethernet", PortType="BidirectionalPort",
            LinkStatus="LinkUp" if link_up else "LinkDown", CurrentSpeedGbps=nic.speed_gbps if link_up else 0,
            Ethernet={"AssociatedMACAddresses": [nic.mac]},
        ))

    _thermal(hw, chassis, put)

    # ------------------------------------------------------------ manager
    put(collection("ManagerCollection", f"{ROOT}/Managers", "Managers", [manager]))
    put(resource(
        "Manager", manager, MANAGER_ID, f"BMC of {h}",
        ManagerType="BMC", FirmwareVersion="nonstop-1", UUID=hw.uuid, PowerState=PowerState.ON.value,
        Status=status(Health.OK),
        Links={"ManagerForServers": [link(system)], "ManagerForChassis": [link(chassis)]},
    ))

    # ------------------------------------------------- sessions, accounts
    sessions_uri = f"{ROOT}/SessionService/Sessions"
    put(resource(
        "SessionService", f"{ROOT}/SessionService", "SessionService", "Session service",
        ServiceEnabled=True, SessionTimeout=1800, Sessions=link(sessions_uri), Status=status(Health.OK),
    ))
    put(collection("SessionCollection", sessions_uri, "Sessions", [f"{sessions_uri}/{s}" for s in sessions]))
    for sid, user in sessions.items():
        put(resource("Session", f"{sessions_uri}/{sid}", sid, f"Session {sid}", UserName=user))
    accounts = f"{ROOT}/AccountService/Accounts"
    roles = f"{ROOT}/AccountService/Roles"
    put(resource(
        "AccountService", f"{ROOT}/AccountService", "AccountService", "Account service",
        ServiceEnabled=True, Accounts=link(accounts), Roles=link(roles), Status=status(Health.OK),
    ))
    put(collection("ManagerAccountCollection", accounts, "Accounts", [f"{accounts}/1"]))
    put(resource(
        "ManagerAccount", f"{accounts}/1", "1", "Administrator account",
        UserName=username, RoleId="Administrator", Enabled=True, Locked=False, AccountTypes=["Redfish"],
        Links={"Role": link(f"{roles}/Administrator")},
    ))
    put(collection("RoleCollection", roles, "Roles", [f"{roles}/Administrator"]))
    put(resource(
        "Role", f"{roles}/Administrator", "Administrator", "Administrator",
        RoleId="Administrator", IsPredefined=True,
        AssignedPrivileges=["Login", "ConfigureManager", "ConfigureUsers", "ConfigureSelf", "ConfigureComponents"],
    ))
    _events(subscriptions or {}, put)
    return tree


def _events(subscriptions: dict[str, dict[str, str]], put: Any) -> None:
    """EventService: push subscriptions (server.py delivers an Event on every component or
    power change to each destination)."""
    put(resource(
        "EventService", EVENTS, "EventService", "Event service",
        ServiceEnabled=True, DeliveryRetryAttempts=3, DeliveryRetryIntervalSeconds=1,
        EventFormatTypes=["Event"], Subscriptions=link(SUBSCRIPTIONS), Status=status(Health.OK),
    ))
    put(collection("EventDestinationCollection", SUBSCRIPTIONS, "Event subscriptions",
                   [f"{SUBSCRIPTIONS}/{sid}" for sid in subscriptions]))
    for sid, sub in subscriptions.items():
        put(resource(
            "EventDestination", f"{SUBSCRIPTIONS}/{sid}", sid, f"Subscription {sid}",
            Destination=sub["Destination"], Context=sub.get("Context", ""), Protocol="Redfish",
            SubscriptionType="RedfishEvent", EventFormatType="Event", Status=status(Health.OK),
        ))


def event_payload(event_id: int, context: str, origin: str, message: str, severity: Health,
                  timestamp: str) -> dict[str, Any]:
    """One Redfish Event (``ResourceEvent.1.3.ResourceChanged``) about ``origin``."""
    return {
        "@odata.type": odata_type("Event"), "Id": str(event_id), "Name": "Resource changed", "Context": context,
        "Events": [{"EventId": str(event_id), "EventTimestamp": timestamp, "Message": message,
                    "MessageId": "ResourceEvent.1.3.ResourceChanged", "MessageSeverity": severity.value,
                    "OriginOfCondition": link(origin)}],
    }


def _thermal(hw: HostHardware, chassis: str, put: Any) -> None:
    """ThermalSubsystem with its fans, ThermalMetrics, and the sensors both point at."""
    thermal = f"{chassis}/ThermalSubsystem"
    sensors = f"{chassis}/Sensors"
    fan_uris = {name: f"{thermal}/Fans/{name}" for name in hw.fans}
    temps = hw.temperatures()
    put(resource(
        "ThermalSubsystem", thermal, "ThermalSubsystem", "Thermal subsystem",
        Status=status(hw.cooling_health, rollup=hw.cooling_health),
        Fans=link(f"{thermal}/Fans"), ThermalMetrics=link(f"{thermal}/ThermalMetrics"),
    ))
    put(collection("FanCollection", f"{thermal}/Fans", "Fans", list(fan_uris.values())))
    sensor_uris: list[str] = []
    for name, fan in hw.fans.items():
        sensor = f"{sensors}/{name}Speed"
        sensor_uris.append(sensor)
        put(resource(
            "Fan", fan_uris[name], name, name, Status=status(fan.health, fan.state),
            SpeedPercent={"Reading": fan.speed_percent, "DataSourceUri": sensor},
        ))
        put(resource(
            "Sensor", sensor, f"{name}Speed", f"{name} speed", ReadingType="Percent", Reading=fan.speed_percent,
            ReadingUnits="%", Status=status(fan.health, fan.state),
        ))
    for name, reading in temps.items():
        sensor = f"{sensors}/{name}"
        sensor_uris.append(sensor)
        put(resource(
            "Sensor", sensor, name, name, ReadingType="Temperature", Reading=reading, ReadingUnits="Cel",
            Status=status(Health.WARNING if reading >= 70 else Health.OK),
        ))
    put(collection("SensorCollection", sensors, "Sensors", sensor_uris))
    put(resource(
        "ThermalMetrics", f"{thermal}/ThermalMetrics", "ThermalMetrics", "Thermal metrics",
        TemperatureReadingsCelsius=[
            {"DataSourceUri": f"{sensors}/{name}", "Reading": reading} for name, reading in temps.items()
        ],
    ))


def metadata_xml() -> str:
    """The CSDL ``$metadata`` document: a reference to every schema the service uses."""
    refs = []
    for name, version in TYPES.items():
        includes = f'    <edmx:Include Namespace="{name}"/>\n'
        if version:
            includes += f'    <edmx:Include Namespace="{name}.{version}"/>\n'
        refs.append(f'  <edmx:Reference Uri="http://redfish.dmtf.org/schemas/v1/{name}_v1.xml">\n{includes}  </edmx:Reference>\n')
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<edmx:Edmx xmlns:edmx="http://docs.oasis-open.org/odata/ns/edmx" Version="4.0">\n'
        + "".join(refs)
        + '  <edmx:DataServices>\n'
        '    <Schema xmlns="http://docs.oasis-open.org/odata/ns/edm" Namespace="Service">\n'
        f'      <EntityContainer Name="Service" Extends="ServiceRoot.{TYPES["ServiceRoot"]}.ServiceContainer"/>\n'
        "    </Schema>\n"
        "  </edmx:DataServices>\n"
        "</edmx:Edmx>\n"
    )


def service_document() -> dict[str, Any]:
    names = ["Systems", "Chassis", "Managers", "SessionService", "AccountService", "EventService"]
    return {
        "@odata.context": f"{ROOT}/$metadata",
        "value": [{"name": "Service", "kind": "Singleton", "url": f"{ROOT}/"}]
        + [{"name": n, "kind": "Singleton", "url": f"{ROOT}/{n}"} for n in names],
    }
