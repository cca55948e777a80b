"""The declarative cluster spec: what a person writes in ``lab.yaml``.

Role: pydantic v2 models for one cluster — hosts, lab switches, networks, guest groups,
services and policies — with human units parsed into integers, plus
``check_references``, which finds every broken cross-reference at once (unknown network,
duplicate names, a team member that is not a NIC of its host, a subnet too small ...).

Must not: read files, resolve YAML line numbers (``nonstop.specfile`` does that), or
decide anything about placement. Every problem is reported as a location tuple (the
same shape pydantic uses: ``("guests", 1, "memory")``) and a message that says what was
expected, so the loader can print ``lab.yaml:14 guests[1].memory: ...``.
"""

from __future__ import annotations

import ipaddress
from enum import Enum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, field_validator

from nonstop.core.units import format_size, parse_duration, parse_rate, parse_size


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
    heartbeat_interval: Duration = 0.1
    phi_threshold: float = Field(default=8.0, gt=0)
    self_fence_timeout: Duration = 5.0
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


def _duplicates(names: list[str]) -> list[tuple[int, int]]:
    """``(index, first_index)`` for every name that repeats an earlier one."""
    first: dict[str, int] = {}
    dups = []
    for i, name in enumerate(names):
        if name in first:
            dups.append((i, first[name]))
        first.setdefault(name, i)
    return dups


def _one_of(names: list[str] | set[str] | dict[str, Any]) -> str:
    return ", ".join(names) if names else "none defined"


def _smallest_prefix_for(addresses_needed: int) -> int:
    """The longest IPv4 prefix whose subnet leaves room for that many guests (see usable_addresses)."""
    prefix = 30
    while prefix > 0 and 2 ** (32 - prefix) - 3 < addresses_needed:
        prefix -= 1
    return prefix


def check_references(spec: ClusterSpec) -> list[tuple[Location, str]]:
    """Every cross-reference problem in the spec; empty when fine. Each message says what was expected."""
    problems: list[tuple[Location, str]] = []

    def add(loc: Location, message: str) -> None:
        problems.append((loc, message))

    for section, items in (
        ("hosts", spec.hosts),
        ("networks", spec.networks),
        ("guests", spec.guests),
        ("services", spec.services),
    ):
        names = [item.name for item in items]
        for i, first in _duplicates(names):
            add(
                (section, i, "name"),
                f'duplicate name "{names[i]}" (already used by {section}[{first}]); expected unique names',
            )
    for i, first in _duplicates(list(spec.switches)):
        add(
            ("switches", i), f'duplicate switch "{spec.switches[i]}" (already switches[{first}]); expected unique names'
        )

    switches = set(spec.switches)
    networks = {n.name: n for n in spec.networks}
    groups = {g.name: g for g in spec.guests}

    for h, host in enumerate(spec.hosts):
        nic_names = [n.name for n in host.nics]
        for i, first in _duplicates(nic_names):
            add(
                ("hosts", h, "nics", i, "name"),
                f'duplicate NIC "{nic_names[i]}" (already nics[{first}]); expected unique NIC names per host',
            )
        for i, nic in enumerate(host.nics):
            if nic.switch is not None and nic.switch not in switches:
                add(
                    ("hosts", h, "nics", i, "switch"),
                    f'unknown switch "{nic.switch}"; expected one of: {_one_of(spec.switches)}',
                )
        teamed: dict[str, str] = {}
        for t, team in enumerate(host.teams):
            if team.name in nic_names:
                add(
                    ("hosts", h, "teams", t, "name"),
                    f'team name "{team.name}" is also a NIC name; expected a name no NIC of the host uses',
                )
            for m, member in enumerate(team.members):
                if member not in nic_names:
                    add(
                        ("hosts", h, "teams", t, "members", m),
                        f'"{member}" is not a NIC of host {host.name}; expected one of: {_one_of(nic_names)}',
                    )
                elif member in teamed:
                    add(
                        ("hosts", h, "teams", t, "members", m),
                        f'NIC "{member}" is already a member of team {teamed[member]}; expected each NIC in one team at most',
                    )
                teamed.setdefault(member, team.name)
            if team.primary is not None and team.primary not in team.members:
                add(
                    ("hosts", h, "teams", t, "primary"),
                    f'primary "{team.primary}" is not a member of the team; expected one of: {_one_of(team.members)}',
                )
        for i, first in _duplicates([p.name for p in host.power_supplies]):
            add(
                ("hosts", h, "power_supplies", i, "name"),
                f"duplicate power supply name (already power_supplies[{first}]); expected unique names",
            )
        for i, first in _duplicates([d.name for d in host.drives]):
            add(
                ("hosts", h, "drives", i, "name"),
                f"duplicate drive name (already drives[{first}]); expected unique names",
            )

    subnets: list[tuple[int, ipaddress.IPv4Network]] = []
    forwarded: dict[tuple[str, int], str] = {}
    for n, net in enumerate(spec.networks):
        network = net.network()
        for other_index, other in subnets:
            if network.overlaps(other):
                add(
                    ("networks", n, "subnet"),
                    f"subnet {net.subnet} overlaps network {spec.networks[other_index].name} ({other}); "
                    "expected subnets that do not overlap",
                )
        subnets.append((n, network))
        if net.gateway is not None:
            try:
                if ipaddress.ip_address(net.gateway) not in network:
                    add(
                        ("networks", n, "gateway"),
                        f"gateway {net.gateway} is outside {net.subnet}; expected an address inside it",
                    )
            except ValueError:
                add(("networks", n, "gateway"), f'expected an IPv4 address, got "{net.gateway}"')
        if net.uplink is not None and net.mode is NetworkMode.ISOLATED:
            add(
                ("networks", n, "uplink"),
                "an isolated network has no uplink; expected no uplink, or mode bridged or nat",
            )
        elif net.uplink is not None:
            for host in spec.hosts:
                if net.uplink not in host.uplink_names():
                    add(
                        ("networks", n, "uplink"),
                        f'uplink "{net.uplink}" is not a team or NIC of host {host.name}; '
                        f"expected one of: {_one_of(host.uplink_names())}",
                    )
                    break
        needed = sum(g.replicas for g in spec.guests for v in g.nics if v.network == net.name)
        if needed > net.usable_addresses():
            add(
                ("networks", n, "subnet"),
                f"subnet {net.subnet} is too small: {net.usable_addresses()} usable addresses but its guests need "
                f"{needed}; expected a /{_smallest_prefix_for(needed)} or larger",
            )
        guest_names = [name for g in spec.guests for name in g.guest_names()]
        for p, forward in enumerate(net.port_forwards):
            host_port = (forward.protocol, forward.host_port)
            if host_port in forwarded:
                add(
                    ("networks", n, "port_forwards", p, "host_port"),
                    f"{forward.protocol} port {forward.host_port} is already forwarded by {forwarded[host_port]}; "
                    "expected a host port used once",
                )
            forwarded.setdefault(host_port, f"networks[{n}].port_forwards[{p}]")
            if forward.guest not in guest_names:
                shown = _one_of(guest_names[:8]) + (", ..." if len(guest_names) > 8 else "")
                add(
                    ("networks", n, "port_forwards", p, "guest"),
                    f'unknown guest "{forward.guest}"; expected a guest name such as: {shown}',
                )

    for g, group in enumerate(spec.guests):
        for v, vnic in enumerate(group.nics):
            if vnic.network not in networks:
                add(
                    ("guests", g, "nics", v, "network"),
                    f'unknown network "{vnic.network}"; expected one of: {_one_of(networks)}',
                )
        for field in ("affinity", "anti_affinity"):
            for i, other in enumerate(getattr(group, field)):
                if other not in groups:
                    add(("guests", g, field, i), f'unknown guest group "{other}"; expected one of: {_one_of(groups)}')
        for i, both in enumerate(group.anti_affinity):
            if both in group.affinity:
                add(
                    ("guests", g, "anti_affinity", i),
                    f'"{both}" is in both affinity and anti_affinity; expected it in one of them',
                )
        if group.max_vcpus is not None and group.max_vcpus < group.vcpus:
            add(
                ("guests", g, "max_vcpus"),
                f"max_vcpus {group.max_vcpus} is below vcpus {group.vcpus}; expected at least {group.vcpus}",
            )
        if group.max_memory is not None and group.max_memory < group.memory:
            add(
                ("guests", g, "max_memory"),
                f"max_memory {format_size(group.max_memory)} is below memory {format_size(group.memory)}; "
                f"expected at least {format_size(group.memory)}",
            )
        if group.kind is GuestKind.VM and group.memory < 64 * 1024**2:
            add(("guests", g, "memory"), "too little memory for a VM; expected at least 64MiB")
        for i, first in _duplicates([d.name for d in group.disks]):
            add(
                ("guests", g, "disks", i, "name"),
                f"duplicate disk name (already disks[{first}]); expected unique names",
            )

    listens: dict[str, int] = {}
    for s, service in enumerate(spec.services):
        if service.backends is None and not service.servers:
            add(("services", s), "no backends; expected backends (a guest group) or servers")
        if service.backends is not None and service.backends.group not in groups:
            add(
                ("services", s, "backends", "group"),
                f'unknown guest group "{service.backends.group}"; expected one of: {_one_of(groups)}',
            )
        host_part, _, port_part = service.listen.rpartition(":")
        if not host_part or not port_part.isdigit() or not 0 <= int(port_part) <= 65535:
            add(("services", s, "listen"), f'expected an address like 127.0.0.1:8080, got "{service.listen}"')
        elif int(port_part) != 0:
            if service.listen in listens:
                add(
                    ("services", s, "listen"),
                    f"listen address already used by service {spec.services[listens[service.listen]].name}; "
                    "expected a distinct address per service",
                )
            listens.setdefault(service.listen, s)
    return problems
