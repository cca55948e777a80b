"""Cross-reference checks of a cluster spec: what pydantic's per-field validation cannot see.

Role: ``check_references`` finds every broken cross-reference in a ``ClusterSpec`` at once (unknown
network, duplicate names, a team member that is not a NIC of its host, a subnet too small for its
guests ...) and returns each as a location tuple (pydantic's shape, e.g. ``("guests", 1, "memory")``)
with a message that says what was expected.

Must not: read files or map locations to YAML lines (``nonstop.specfile`` does that).
"""

from __future__ import annotations

import ipaddress
from typing import Any

from nonstop.core.spec import ClusterSpec, GuestKind, Location, NetworkMode
from nonstop.core.units import format_size


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
    ha = spec.policies.ha
    if ha.heartbeat_interval > 0 and ha.self_fence_timeout > 0 and ha.heartbeat_interval * 2 > ha.self_fence_timeout:
        add(
            ("policies", "ha", "heartbeat_interval"),
            f"heartbeat interval {ha.heartbeat_interval:g}s leaves less than two beats per self_fence_timeout "
            f"({ha.self_fence_timeout:g}s): one lost datagram would fence a healthy host; expected at most "
            f"{ha.self_fence_timeout / 2:g}s",
        )
    return problems
