"""From the declarative spec to the engine's state model and configuration.

Role: ``cluster_state_from_spec`` turns a ``ClusterSpec`` (plus, optionally, observed
host conditions and current assignments) into a ``ClusterState``; ``config_from_spec``
turns its policies into a ``SchedulerConfig``. The mapping, in one place:

- host capacity = (cpus, memory, disk); ratios = policies.allocation_ratios; reserved =
  policies.reserved (cpus, memory, disk) on every host — effective = capacity × ratio −
  reserved, as in Nova;
- a host reaches every network of the spec, except a network that names an uplink
  (team or NIC) the host lacks;
- one guest per replica, named ``<group>-<i>``; request = (vcpus, memory, the sum of its
  disk sizes — thin disks count at full size too: the disk allocation ratio is where
  thin provisioning's overcommit is declared); networks = its vNICs' networks.

Must not: read files or decide placements.
"""

from __future__ import annotations

from collections.abc import Mapping

from nonstop.core.placement.engine import SchedulerConfig
from nonstop.core.placement.model import ClusterState, Guest, Host, HostCondition, Spread
from nonstop.core.spec import ClusterSpec


def cluster_state_from_spec(
    spec: ClusterSpec,
    host_states: Mapping[str, HostCondition | str] | None = None,
    assignments: Mapping[str, str] | None = None,
) -> ClusterState:
    """The spec's hosts and guests as a ``ClusterState``; unknown names raise ValueError."""
    host_states = dict(host_states or {})
    assignments = dict(assignments or {})
    policies = spec.policies
    ratios = (policies.allocation_ratios.cpu, policies.allocation_ratios.memory, policies.allocation_ratios.disk)
    reserved = (float(policies.reserved.cpus), float(policies.reserved.memory), float(policies.reserved.disk))
    known_hosts = {h.name for h in spec.hosts}
    for name in host_states:
        if name not in known_hosts:
            raise ValueError(f"host state given for unknown host {name}")
    hosts = []
    for h in spec.hosts:
        uplinks = set(h.uplink_names())
        networks = frozenset(n.name for n in spec.networks if n.uplink is None or n.uplink in uplinks)
        condition = host_states.get(h.name, HostCondition.UP)
        if isinstance(condition, str):
            condition = HostCondition[condition.upper()]
        hosts.append(
            Host(
                name=h.name,
                capacity=(float(h.cpus), float(h.memory), float(h.disk)),
                ratios=ratios,
                reserved=reserved,
                condition=condition,
                networks=networks,
                labels=dict(h.labels),
            )
        )
    guests = []
    for group in spec.guests:
        request = (float(group.vcpus), float(group.memory), float(group.disk_bytes()))
        networks = frozenset(v.network for v in group.nics)
        for name in group.guest_names():
            guests.append(
                Guest(
                    name=name,
                    group=group.name,
                    request=request,
                    priority=group.priority,
                    networks=networks,
                    spread=Spread(group.spread.value),
                    affinity=frozenset(group.affinity),
                    anti_affinity=frozenset(group.anti_affinity),
                    labels=dict(group.labels),
                    host=assignments.pop(name, None),
                )
            )
    if assignments:
        raise ValueError(f"assignments name unknown guests: {', '.join(sorted(assignments))}")
    return ClusterState(hosts, guests)


def config_from_spec(spec: ClusterSpec, weights: Mapping[str, float] | None = None) -> SchedulerConfig:
    """Default filters and weighers, tuned by the spec's policies (HA reserve, degraded hosts)."""
    return SchedulerConfig.default(
        hosts=len(spec.hosts),
        failures=spec.policies.ha.host_failures_to_tolerate,
        weights=weights,
        accept_degraded=spec.policies.components.on_degraded == "alert",
    )
