"""The declarative cluster spec: what a person writes in ``lab.yaml``.

Role: pydantic v2 models for one cluster — hosts, lab switches, networks, guest groups,
services and policies — with human units parsed into integers. Checks that span the
document (unknown network, duplicate names, a team member that is not a NIC of its host,
a subnet too small ...) live in ``nonstop.core.spec_refs``.

Must not: read files, resolve YAML line numbers (``nonstop.specfile`` does that), or
decide anything about placement."""

from __future__ import annotations

import ipaddress
from enum import Enum
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, field_validator

from nonstop.core.units import parse_duration, parse_rate, parse_size


def _unit_schema(kind: str, example: str, number_type: str, units: str) -> WithJsonSchema:
    # The JSON Schema must accept what people write (``512MiB``), not only the parsed integer.
    return WithJsonSchema(
        {
            "anyOf": [
                {"type": number_type, "minimum": 0},
                {"type": "string", "pattern": rf"^\s*[0-9]+(\.[0-9]+)?\s*({units})\s*$"},
            ],
            "description": f"{kind}, e.g. {example}",
        }
    )


Size = Annotated[
    int,
    BeforeValidator(parse_size),
    _unit_schema("a size in bytes", "512MiB or 2GiB", "integer", "[bB]?|[kKmMgGtT][iI]?[bB]?"),
]
Rate = Annotated[
    int,
    BeforeValidator(parse_rate),
    _unit_schema("a rate in bits per second", "100Mbit", "integer", "[kKmMgG]?([bB][iI][tT]|[bB][pP][sS])"),
]
Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    _unit_schema("a duration in seconds", "200ms or 1.5s", "number", "[uUmM]?[sS]|[mM]([iI][nN])?|[hH]|"),
]



def _positive_duration(value: float) -> float:
    if value <= 0:
        raise ValueError("expected a duration above 0 (0 would turn this safety loop off), like 100ms")
    return value


PositiveDuration = Annotated[Duration, AfterValidator(_positive_duration)]
"""A duration that drives a safety loop (heartbeats, self-fencing): 0 is refused, never "off"."""

NAME_PATTERN = r"^[a-z][a-z0-9-]{0,14}$"
Name = Annotated[str, Field(pattern=NAME_PATTERN)]
"""Short lowercase names: they end up inside Linux interface names (15 bytes max)."""

Location = tuple[str | int, ...]


class _Model(BaseModel):
    # Attribute docstrings become descriptions in the published JSON Schema (editor hover text).
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


# --------------------------------------------------------------------------- hosts


class NicSpec(_Model):
    name: Name
    switch: Name | None = None
    """Lab switch the NIC is cabled to; default: the i-th NIC goes to the i-th switch."""
    speed: Rate | None = None


class TeamMode(str, Enum):
    ACTIVE_BACKUP = "active-backup"
    BALANCE_XOR = "balance-xor"
    ROUND_ROBIN = "round-robin"
    BROADCAST = "broadcast"


class HashPolicy(str, Enum):
    LAYER2 = "layer2"
    LAYER2_3 = "layer2+3"
    LAYER3_4 = "layer3+4"


class PrimaryReselect(str, Enum):
    ALWAYS = "always"
    BETTER = "better"
    FAILURE = "failure"


class TeamSpec(_Model):
    name: Name
    mode: TeamMode = TeamMode.ACTIVE_BACKUP
    members: list[Name] = Field(min_length=1)
    primary: Name | None = None
    primary_reselect: PrimaryReselect = PrimaryReselect.ALWAYS
    hash_policy: HashPolicy = HashPolicy.LAYER2_3
    miimon: Duration = 0.1
    updelay: Duration = 0.0
    downdelay: Duration = 0.0
    arp_targets: list[str] = Field(default_factory=list)


class PowerSupplySpec(_Model):
    name: str
    watts: int = 800


class DriveSpec(_Model):
    name: str
    size: Size = 100 * 1024**3
    media: Literal["ssd", "hdd", "nvme"] = "ssd"


class BmcSpec(_Model):
    address: str | None = None
    """``host:port`` of the host's Redfish BMC; in the lab nonstop starts one per host."""
    username: str = "admin"
    password_file: str | None = None


def _default_psus() -> list[PowerSupplySpec]:
    return [PowerSupplySpec(name="PSU1"), PowerSupplySpec(name="PSU2")]


def _default_drives() -> list[DriveSpec]:
    return [DriveSpec(name="Disk0"), DriveSpec(name="Disk1")]


def _host_schema_shorthands(schema: dict[str, Any]) -> None:
    # The validators below accept ``nics: [eth0, eth1]`` and ``power_supplies: 2``; so must editors.
    properties = schema["properties"]
    nics = properties["nics"]
    nics["items"] = {"anyOf": [nics["items"], {"type": "string", "pattern": NAME_PATTERN}]}
    psus = properties["power_supplies"]
    properties["power_supplies"] = {
        "anyOf": [{"type": psus.pop("type"), "items": psus.pop("items")}, {"type": "integer", "minimum": 0}],
        **psus,
    }


class HostSpec(_Model):
    model_config = ConfigDict(json_schema_extra=_host_schema_shorthands)

    name: Name
    cpus: int = Field(ge=1, le=4096)
    memory: Size
    disk: Size = 100 * 1024**3
    nics: list[NicSpec] = Field(default_factory=lambda: [NicSpec(name="eth0"), NicSpec(name="eth1")], min_length=1)
    teams: list[TeamSpec] = Field(default_factory=list)
    power_supplies: list[PowerSupplySpec] = Field(default_factory=_default_psus)
    drives: list[DriveSpec] = Field(default_factory=_default_drives)
    bmc: BmcSpec = Field(default_factory=BmcSpec)
    labels: dict[str, str] = Field(default_factory=dict)
    patch_level: str = "0"

    @field_validator("nics", mode="before")
    @classmethod
    def _nic_shorthand(cls, value: Any) -> Any:
        # ``nics: [eth0, eth1]`` is the common case; expand it to the full form.
        if isinstance(value, list):
            return [{"name": item} if isinstance(item, str) else item for item in value]
        return value

    @field_validator("power_supplies", mode="before")
    @classmethod
    def _psu_count(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            return [{"name": f"PSU{i + 1}"} for i in range(value)]
        return value

    def uplink_names(self) -> list[str]:
        """The host's logical uplinks: every team, then every NIC not in a team."""
        teamed = {member for team in self.teams for member in team.members}
        return [t.name for t in self.teams] + [n.name for n in self.nics if n.name not in teamed]


# ------------------------------------------------------------------------ networks


class NetworkMode(str, Enum):
    BRIDGED = "bridged"
    NAT = "nat"
    ISOLATED = "isolated"


class PortForward(_Model):
    protocol: Literal["tcp", "udp"] = "tcp"
    host_port: int = Field(ge=1, le=65535)
    guest: str
    guest_port: int = Field(ge=1, le=65535)


class NetworkSpec(_Model):
    name: Name
    mode: NetworkMode = NetworkMode.BRIDGED
    subnet: str
    gateway: str | None = None
    uplink: Name | None = None
    """Bridged/NAT: the host uplink (team or NIC) to use; default: the host's first uplink."""
    port_forwards: list[PortForward] = Field(default_factory=list)

    @field_validator("subnet")
    @classmethod
    def _subnet(cls, value: str) -> str:
        try:
            net = ipaddress.ip_network(value, strict=True)
        except ValueError as exc:
            raise ValueError(f'expected a subnet like 198.18.10.0/24, got "{value}" ({exc})') from exc
        if net.version != 4:
            raise ValueError(f'expected an IPv4 subnet, got "{value}"')
        return value

    def network(self) -> ipaddress.IPv4Network:
        net = ipaddress.ip_network(self.subnet)
        assert isinstance(net, ipaddress.IPv4Network)
        return net

    def usable_addresses(self) -> int:
        """Addresses left for guests: all but the network, broadcast and gateway addresses."""
        return max(self.network().num_addresses - 3, 0)


# -------------------------------------------------------------------------- guests


class GuestKind(str, Enum):
    VM = "vm"
    PROCESS = "process"


class Provisioning(str, Enum):
    THIN = "thin"
    THICK = "thick"


class DiskSpec(_Model):
    name: Name = "root"
    size: Size = 1024**3
    provisioning: Provisioning = Provisioning.THIN
    redundancy: Literal["none", "mirror"] = "none"


class VnicSpec(_Model):
    network: Name
    bandwidth: Rate | None = None
    """Limit in each direction (toward and from the guest)."""


class SpreadPolicy(str, Enum):
    HARD = "hard"
    """Replicas never share a host (a filter)."""
    SOFT = "soft"
    """Replicas prefer different hosts (a weigher), but may share one to stay placed."""
    NONE = "none"


class GuestGroupSpec(_Model):
    name: Name
    kind: GuestKind = GuestKind.PROCESS
    replicas: int = Field(default=1, ge=0, le=100_000)
    vcpus: int = Field(default=1, ge=1, le=256)
    max_vcpus: int | None = Field(default=None, ge=1, le=256)
    memory: Size = 256 * 1024**2
    max_memory: Size | None = None
    disks: list[DiskSpec] = Field(default_factory=list)
    nics: list[VnicSpec] = Field(default_factory=list)
    image: str = "builtin"
    command: list[str] | None = None
    """Process guests: the workload to run; default nonstop's built-in workload server."""
    port: int = Field(default=80, ge=1, le=65535)
    priority: int = Field(default=100, ge=0, le=1000)
    """Higher is placed (and failed over) first."""
    spread: SpreadPolicy = SpreadPolicy.SOFT
    affinity: list[Name] = Field(default_factory=list)
    """Guest groups whose guests this group's guests must share a host with."""
    anti_affinity: list[Name] = Field(default_factory=list)
    """Guest groups this group's guests must never share a host with."""
    labels: dict[str, str] = Field(default_factory=dict)
    """Required host labels (every key/value must match)."""

    def guest_names(self) -> list[str]:
        return [f"{self.name}-{i}" for i in range(self.replicas)]

    def disk_bytes(self) -> int:
        return sum(d.size for d in self.disks)


# ------------------------------------------------------------------------ services


class Algorithm(str, Enum):
    ROUND_ROBIN = "round-robin"
    WEIGHTED_ROUND_ROBIN = "weighted-round-robin"
    LEAST_CONNECTIONS = "least-connections"
    LEAST_RECENTLY_USED = "least-recently-used"
    MOST_RECENTLY_USED = "most-recently-used"
    RANDOM = "random"
    POWER_OF_TWO = "power-of-two"
    SOURCE_HASH = "source-hash"
    CONSISTENT_HASH = "consistent-hash"


class HealthCheckSpec(_Model):
    type: Literal["http", "tcp"] = "http"
    path: str = "/health"
    expect_status: int = Field(default=200, ge=100, le=599)
    interval: Duration = 1.0
    timeout: Duration = 0.5
    rise: int = Field(default=2, ge=1, le=100)
    fall: int = Field(default=2, ge=1, le=100)
    jitter: float = Field(default=0.1, ge=0.0, le=1.0)
    enabled: bool = True
    """``false``: no active checks; a server is up unless ejected or set down by hand."""


class BackendRef(_Model):
    group: Name
    port: int | None = Field(default=None, ge=1, le=65535)
    """Defaults to the guest group's port."""
    weight: int = Field(default=1, ge=0, le=1000)


class StaticServer(_Model):
    """A backend given by address, for ``nonstop lb`` used on its own like HAProxy."""

    name: str
    address: str
    weight: int = Field(default=1, ge=0, le=1000)
    backup: bool = False
    max_connections: int | None = Field(default=None, ge=1)


class ServiceSpec(_Model):
    name: Name
    listen: str = "127.0.0.1:0"
    """``ip:port`` the balancer listens on (in the lab: a 127.0.0.1 port forwarded in)."""
    mode: Literal["http", "tcp", "nft"] = "http"
    backends: BackendRef | None = None
    servers: list[StaticServer] = Field(default_factory=list)
    algorithm: Algorithm = Algorithm.ROUND_ROBIN
    health: HealthCheckSpec = Field(default_factory=HealthCheckSpec)
    retries: int = Field(default=3, ge=0, le=20)
    connect_timeout: Duration = 1.0
    server_timeout: Duration = 30.0
    client_timeout: Duration = 30.0
    drain_timeout: Duration = 30.0
    slow_start: Duration = 0.0
    # ---- balancer tuning (``nonstop lb``; docs/lb.md): all optional, additive
    retry_budget: float = Field(default=0.2, ge=0.0, le=10.0)
    """Retries allowed per request on average (a token bucket), so a failing pool cannot multiply load."""
    max_client_connections: int = Field(default=10_000, ge=1)
    header_timeout: Duration = 10.0
    """A client must send a whole request head within this (slowloris guard)."""
    max_header_bytes: Size = 16 * 1024
    max_headers: int = Field(default=100, ge=1, le=10_000)
    queue_size: int = Field(default=100, ge=0)
    """Requests waiting for a backend slot when every backend is at max_connections."""
    queue_timeout: Duration = 5.0
    outlier_errors: int = Field(default=5, ge=0)
    """Consecutive connect errors / 5xx that eject a backend (0: passive detection off)."""
    outlier_ejection: Duration = 1.0
    """First ejection time; doubled on each repeated ejection up to ``outlier_max_ejection``."""
    outlier_max_ejection: Duration = 30.0
    access_log: bool = False


# ------------------------------------------------------------------------ policies


class AllocationRatios(_Model):
    cpu: float = Field(default=4.0, gt=0, le=64)
    memory: float = Field(default=1.0, gt=0, le=64)
    disk: float = Field(default=1.0, gt=0, le=64)


class Reserved(_Model):
    cpus: int = Field(default=0, ge=0)
    memory: Size = 0
    disk: Size = 0


class FailbackMode(str, Enum):
    MANUAL = "manual"
    AUTO = "auto"
    BALANCED = "balanced"


class HaPolicy(_Model):
    host_failures_to_tolerate: int = Field(default=1, ge=0, le=100)
    heartbeat_interval: PositiveDuration = 0.1
    phi_threshold: float = Field(default=8.0, gt=0)
    self_fence_timeout: PositiveDuration = 5.0
    failback: FailbackMode = FailbackMode.MANUAL
    failback_stability: Duration = 30.0
    max_restarts: int = Field(default=3, ge=0, le=100)


class PatchingPolicy(_Model):
    max_unavailable: int = Field(default=1, ge=1)
    command_timeout: Duration = 600.0


class ComponentPolicy(_Model):
    on_degraded: Literal["alert", "no-new-guests", "evacuate"] = "alert"
    stability_window: Duration = 30.0


class Policies(_Model):
    allocation_ratios: AllocationRatios = Field(default_factory=AllocationRatios)
    reserved: Reserved = Field(default_factory=Reserved)
    ha: HaPolicy = Field(default_factory=HaPolicy)
    patching: PatchingPolicy = Field(default_factory=PatchingPolicy)
    components: ComponentPolicy = Field(default_factory=ComponentPolicy)
    spread_target: float = Field(default=0.15, ge=0, le=1)
    """Rebalance when host utilization differs from the mean by more than this."""


# ------------------------------------------------------------------------- cluster


class ClusterSpec(_Model):
    cluster: Name
    switches: list[Name] = Field(default_factory=lambda: ["sw0", "sw1"], min_length=1)
    hosts: list[HostSpec] = Field(min_length=1)
    networks: list[NetworkSpec] = Field(default_factory=list)
    guests: list[GuestGroupSpec] = Field(default_factory=list)
    services: list[ServiceSpec] = Field(default_factory=list)
    policies: Policies = Field(default_factory=Policies)

    def host(self, name: str) -> HostSpec:
        return next(h for h in self.hosts if h.name == name)

    def network(self, name: str) -> NetworkSpec:
        return next(n for n in self.networks if n.name == name)

    def group(self, name: str) -> GuestGroupSpec:
        return next(g for g in self.guests if g.name == name)

    def nic_switch(self, host: HostSpec, nic_index: int) -> str:
        nic = host.nics[nic_index]
        return nic.switch or self.switches[nic_index % len(self.switches)]
