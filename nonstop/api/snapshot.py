"""One consistent read of a cluster from the store, shaped for the API, dashboard and metrics.

Role: list everything under ``/nonstop/<cluster>/`` once (one revision), read each value as its
family's typed record (nonstop/store/records.py; a value that is not one is left out and named in
``RawCluster.unreadable``) and join them into plain JSON-able records — hosts (state, NICs, teams,
components, physical / effective / allocated / used capacity, guests), per-host component groups
(power, network, storage, cooling), guests (desired vs observed), services (backends, health and
request rates from the balancers' admin APIs when known), networks (with IPAM use), teams,
switches, operations and the latest events. Host state is derived level-wise from what the store
holds: a failover operation for a host whose agent is gone → ``failed``; an operator's maintenance
request → ``maintenance``; the controller's liveness verdict when present (``hosts`` in the leader
record it republishes every second, else the last ``host-state`` event's ``after``); else ``up``
while the agent's ``alive`` key exists and ``down`` when it does not.

Must not: write anything, or decide anything beyond presenting (placement explanations come
from the pure core in ``nonstop.api.describe``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from nonstop.core.guests.model import GuestDefinition
from nonstop.core.operation_kinds import is_final
from nonstop.core.spec import ClusterSpec
from nonstop.store import keys
from nonstop.store import operations as op_store
from nonstop.store.base import KeyValue, Store
from nonstop.store.operations import OperationRecord
from nonstop.store.records import (
    EpochRecord,
    EventRecord,
    GuestDesired,
    HostAlive,
    HostComponents,
    HostDesired,
    HostObserved,
    LeaderRecord,
    ObservedGuestRecord,
    RunnerLock,
    ServiceBackends,
    model_for,
)
from nonstop.store.state import decode_spec

EVENTS_IN_SNAPSHOT = 200
FAILED_STEPS = {"detected", "fencing", "fence-failed", "fenced", "moved", "done"}


@dataclass
class HostLeaves:
    desired: HostDesired | None = None
    observed: HostObserved | None = None
    alive: HostAlive | None = None
    components: HostComponents | None = None


@dataclass
class GuestLeaves:
    desired: GuestDefinition | None = None
    revision: int = 0
    """The desired record's mod revision."""
    observed: ObservedGuestRecord | None = None
    runner: RunnerLock | None = None


@dataclass
class RawCluster:
    """The store's records of one cluster, grouped by kind (the unjoined read)."""

    revision: int = 0
    spec: ClusterSpec | None = None
    spec_revision: int = 0
    hosts: dict[str, HostLeaves] = field(default_factory=dict)
    guests: dict[str, GuestLeaves] = field(default_factory=dict)
    services: dict[str, ServiceBackends] = field(default_factory=dict)
    ipam: dict[str, int] = field(default_factory=dict)
    epochs: dict[str, int] = field(default_factory=dict)
    ops: dict[str, OperationRecord] = field(default_factory=dict)
    events: list[EventRecord] = field(default_factory=list)
    leader: LeaderRecord | None = None
    unreadable: dict[str, str] = field(default_factory=dict)
    """key → why its value was left out."""

    def host(self, name: str) -> HostLeaves:
        return self.hosts.setdefault(name, HostLeaves())

    def guest(self, name: str) -> GuestLeaves:
        return self.guests.setdefault(name, GuestLeaves())

    def add(self, kv: KeyValue) -> None:
        """File one key/value under its kind (``ValueError`` when the value is not its family's record)."""
        parsed = keys.parse(kv.key)
        kind, name, leaf = parsed.kind, parsed.name, parsed.leaf
        if kind == "spec":
            self.spec, self.spec_revision = decode_spec(kv.value), kv.mod_revision
        elif kind == "ipam" and name:
            self.ipam[name] = self.ipam.get(name, 0) + 1
        elif kind == "ops" and name:
            if (op := op_store.parse(kv.value)) is not None:
                self.ops[name] = op
        elif kind == "guests" and leaf == "desired":
            self.guest(name).desired, self.guest(name).revision = GuestDesired.decode(kv.value), kv.mod_revision
        elif (model := model_for(kv.key)) is not None:
            self._file(name, model.decode(kv.value))

    def _file(self, name: str, record: Any) -> None:
        if isinstance(record, LeaderRecord):
            self.leader = record
        elif isinstance(record, EventRecord):
            self.events.append(record)
        elif isinstance(record, EpochRecord):
            self.epochs[name] = record.epoch
        elif isinstance(record, ServiceBackends):
            self.services[name] = record
        elif isinstance(record, ObservedGuestRecord):
            self.guest(name).observed = record
        elif isinstance(record, RunnerLock):
            self.guest(name).runner = record
        elif isinstance(record, HostDesired):
            self.host(name).desired = record
        elif isinstance(record, HostObserved):
            self.host(name).observed = record
        elif isinstance(record, HostAlive):
            self.host(name).alive = record
        elif isinstance(record, HostComponents):
            self.host(name).components = record


async def read_raw(store: Store, cluster: str) -> RawCluster:
    raw = RawCluster()
    kvs = await store.list(keys.cluster_prefix(cluster))
    raw.revision = max((kv.mod_revision for kv in kvs), default=0)
    for kv in kvs:
        try:
            raw.add(kv)
        except ValueError as exc:
            raw.unreadable[kv.key] = str(exc).splitlines()[0]
    raw.events.sort(key=lambda e: e.seq)
    return raw


def host_states(raw: RawCluster) -> dict[str, tuple[str, str]]:
    """host → (state, why) derived from the store (see the module docstring)."""
    names = [h.name for h in raw.spec.hosts] if raw.spec else []
    names += [n for n in raw.hosts if n not in names]
    liveness: dict[str, str] = {}
    for event in raw.events:
        if event.kind == "host-state":
            state = event.detail("after") or event.detail("state")
            if isinstance(state, str):
                liveness[event.subject] = state
    # The active controller publishes its live verdict per host in the leader record every second.
    if raw.leader is not None:
        liveness.update(raw.leader.hosts)
    failed_by: dict[str, OperationRecord] = {}
    for op in raw.ops.values():
        if op.kind == "failover" and op.step in FAILED_STEPS:
            failed_by[str(op.body.get("host"))] = op
    out = {}
    for name in names:
        records = raw.hosts.get(name) or HostLeaves()
        alive = records.alive is not None
        desired, observed = records.desired, records.observed
        if name in failed_by and not alive:
            op = failed_by[name]
            out[name] = ("failed", f"failover {op.id}: {op.step}")
        elif desired is not None and desired.state == "maintenance":
            out[name] = ("maintenance", desired.reason or "operator request")
        elif name in liveness:
            out[name] = (liveness[name], "controller liveness verdict")
        elif observed is not None and observed.state is not None and alive:
            out[name] = (observed.state, "reported")
        elif alive:
            out[name] = ("up", "agent alive")
        else:
            out[name] = ("down", "no agent presence key")
    return out


HEARD_STATES = {"up", "link-degraded", "maintenance"}


def down_links(raw: RawCluster) -> dict[str, set[str]]:
    """host → links the controller last reported silent (``down_links`` of its ``host-state`` events;
    links are named by switch or NIC)."""
    out: dict[str, set[str]] = {}
    for event in raw.events:
        links = event.detail("down_links")
        if event.kind == "host-state" and isinstance(links, list):
            out[event.subject] = {str(x) for x in links}
    return out


DEAD_STATES = ("failed", "dead", "down")


def _nics_and_teams(spec: ClusterSpec | None, name: str, observed: HostObserved | None, state: str,
                    silent: set[str], alive: bool = True) -> tuple[list[Any], list[Any]]:
    """NIC and team state: the agent's report (``nics``/``teams``, from the host's team daemon) while the
    host is alive; else the heartbeat evidence — a link of a host the controller hears is up unless it
    is among the silent ones; every link of a failed host is down (its last report is history)."""
    host = next((h for h in spec.hosts if h.name == name), None) if spec else None
    believed = alive and state not in DEAD_STATES and observed is not None
    obs_nics = observed.nics if believed and observed is not None else {}
    obs_teams = observed.teams if believed and observed is not None else {}
    nics: list[dict[str, Any]] = []
    teams: list[dict[str, Any]] = []
    if host is None or spec is None:
        return nics, teams
    by_name: dict[str, str] = {}
    for i, nic in enumerate(host.nics):
        switch = spec.nic_switch(host, i)
        seen = obs_nics.get(nic.name)
        reported = seen.state if seen is not None else None
        if reported is not None:
            nic_state = reported
        elif state in DEAD_STATES:
            nic_state = "down"
        elif state in HEARD_STATES:
            nic_state = "down" if nic.name in silent or switch in silent else "up"
        else:
            nic_state = "unknown"
        by_name[nic.name] = nic_state
        nics.append({"name": nic.name, "switch": switch, "state": nic_state,
                     "source": "agent" if reported is not None else "heartbeats"})
    for team in host.teams:
        seen_team = obs_teams.get(team.name)
        members = seen_team.members if seen_team is not None else {}
        member_states = [{"name": m, "state": (members[m].state if m in members and members[m].state is not None
                                               else by_name.get(m, "unknown"))}
                         for m in team.members]
        up = [m["name"] for m in member_states if m["state"] == "up"]
        derived = "up" if len(up) == len(member_states) else "degraded" if up else "down"
        active = seen_team.active if seen_team is not None else None
        if active is None and up and seen_team is None:  # no report: the primary carries while it is up
            active = team.primary if team.primary in up else up[0]
        teams.append({"host": name, "name": team.name, "mode": team.mode.value, "members": member_states,
                      "active": active,
                      "state": seen_team.state if seen_team is not None and seen_team.state is not None else derived,
                      "failovers": seen_team.failovers if seen_team is not None else None,
                      "last_failover_at": seen_team.last_failover_at if seen_team is not None else None,
                      "reported_at": observed.teams_at if seen_team is not None and observed is not None else None,
                      "source": "agent" if seen_team is not None else "heartbeats"})
    return nics, teams


def _capacity(spec: ClusterSpec | None, name: str) -> dict[str, Any]:
    host = next((h for h in spec.hosts if h.name == name), None) if spec else None
    if host is None or spec is None:
        return {}
    ratios, reserved = spec.policies.allocation_ratios, spec.policies.reserved
    return {
        "cpus": host.cpus, "memory": host.memory, "disk": host.disk,
        "effective_cpus": host.cpus * ratios.cpu - reserved.cpus,
        "effective_memory": host.memory * ratios.memory - reserved.memory,
        "effective_disk": host.disk * ratios.disk - reserved.disk,
        "ratios": {"cpu": ratios.cpu, "memory": ratios.memory, "disk": ratios.disk},
    }


def guest_records(raw: RawCluster) -> list[dict[str, Any]]:
    out = []
    for name in sorted(raw.guests):
        leaves = raw.guests[name]
        desired, observed = leaves.desired, leaves.observed
        if desired is None and observed is None:
            continue
        seen = observed or ObservedGuestRecord()
        address = seen.detail("address") or next((v.address for v in (desired.vnics if desired else ())
                                                  if v.address), None)
        out.append({
            "name": name, "group": desired.group if desired else None,
            "kind": desired.kind if desired else seen.detail("kind"),
            "host": desired.host if desired else None, "observed_host": seen.host,
            "state": seen.state if seen.state is not None else "pending" if desired else "unknown",
            "vcpus": desired.vcpus if desired else None, "max_vcpus": desired.max_vcpus if desired else None,
            "memory": desired.memory if desired else None, "max_memory": desired.max_memory if desired else None,
            "cpu_usage": seen.detail("cpu_usage"), "memory_usage": seen.detail("memory_usage"),
            "address": address, "epoch": raw.epochs.get(name, desired.fencing_epoch if desired else 0),
            "migrate_to": desired.migrate_to if desired else None,
            "migration": _migration(raw, desired.migration_id if desired else None),
            "running": desired.running if desired else True,
            "note": seen.detail("note") or seen.failure_reason,
            "runner": leaves.runner.host if leaves.runner is not None else None, "pid": seen.detail("pid"),
        })
    return out


def _migration(raw: RawCluster, op_id: str | None) -> dict[str, Any] | None:
    """The live migration a desired record asks for (``ops/<migration_id>``, docs/agent.md)."""
    if op_id is None:
        return None
    op = raw.ops.get(op_id)
    body = op.body if op is not None else {}
    return {"id": op_id, "step": op.step if op else None, "source": body.get("source"),
            "destination": body.get("destination"), "reason": (op.reason if op else None) or None}


def host_records(raw: RawCluster, guests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    states = host_states(raw)
    silent = down_links(raw)
    out = []
    for name, (state, why) in states.items():
        records = raw.hosts.get(name) or HostLeaves()
        observed = records.observed
        on_host = [g for g in guests if g["host"] == name]
        alive = records.alive is not None
        nics, teams = _nics_and_teams(raw.spec, name, observed, state, silent.get(name, set()), alive)
        out.append({
            "name": name, "state": state, "state_reason": why, "alive": alive,
            "desired": records.desired.data() if records.desired else {}, "capacity": _capacity(raw.spec, name),
            "allocated": {"vcpus": sum(int(g["vcpus"] or 0) for g in on_host),
                          "memory": sum(int(g["memory"] or 0) for g in on_host)},
            "usage": dict(observed.usage) if observed else {}, "nics": nics, "teams": teams,
            "components": records.components.data() if records.components else {},
            "guests": [g["name"] for g in on_host],
        })
    return out


def _dict(value: Any) -> dict[str, Any]:
    """A balancer's report (JSON from its admin API) where an object is expected, else empty."""
    return value if isinstance(value, dict) else {}


def service_records(raw: RawCluster, lb_stats: Mapping[str, Any]) -> list[dict[str, Any]]:
    specs = {s.name: s for s in raw.spec.services} if raw.spec else {}
    out = []
    for name in list(specs) + [n for n in raw.services if n not in specs]:
        spec = specs.get(name)
        record = raw.services.get(name)
        stats = _dict(lb_stats.get(name))
        backends = []
        reported = _dict(stats.get("backends"))
        # The balancer's own list counts too: what it serves is what clients get, stored or not yet.
        stored = [{**b.model_dump(), "in_store": True} for b in (record.backends if record else ())]
        stored += [{"name": n, "address": _dict(b).get("address"), "in_store": False} for n, b in reported.items()
                   if record is None or n not in record.names()]
        for b in stored:
            live = _dict(reported.get(str(b.get("name"))))
            backends.append({**b, "health": live.get("health", "unknown"), "admin": live.get("admin"),
                             "rate": live.get("rate", 0.0), "requests": live.get("requests", 0),
                             "active": live.get("active", 0)})
        out.append({
            "name": name, "listen": stats.get("listen") or (spec.listen if spec else None), "mode": spec.mode if spec else None,
            "algorithm": spec.algorithm.value if spec else None,
            "group": spec.backends.group if spec and spec.backends else None,
            "backends": backends, "rate": stats.get("rate", 0.0), "balancer": stats.get("admin"),
            "balancer_error": stats.get("error"),
        })
    return out


def network_records(raw: RawCluster) -> list[dict[str, Any]]:
    if raw.spec is None:
        return []
    return [{"name": n.name, "mode": n.mode.value, "subnet": n.subnet, "gateway": n.gateway, "uplink": n.uplink,
             "addresses_used": raw.ipam.get(n.name, 0), "addresses_total": n.usable_addresses()}
            for n in raw.spec.networks]


def switch_records(raw: RawCluster, hosts: list[dict[str, Any]], faults: Mapping[str, Any]) -> list[dict[str, Any]]:
    names = list(raw.spec.switches) if raw.spec else []
    failed = set(faults.get("switches", ()))
    return [{"name": s, "state": "failed" if s in failed else "up",
             "ports": [f"{h['name']}/{n['name']}" for h in hosts for n in h["nics"] if n["switch"] == s]}
            for s in names]


COMPONENT_GROUPS = ("power", "network", "storage", "cooling")


def component_records(raw: RawCluster, hosts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per host, each hardware component group as the hardware watcher last recorded it
    (``hosts/<h>/components``, nonstop/components/watcher.py); ``unknown`` before its first read."""
    out = []
    for h in hosts:
        leaves = raw.hosts.get(h["name"])
        comp = leaves.components if leaves is not None else None
        groups = comp.groups if comp is not None else {}
        names = [g for g in COMPONENT_GROUPS if g in groups] + [g for g in groups if g not in COMPONENT_GROUPS]
        out.append({
            "host": h["name"], "health": comp.health if comp else "unknown", "reason": comp.reason if comp else None,
            "power_state": comp.power_state if comp else None, "placement": comp.placement if comp else None,
            "policy": comp.policy if comp else None, "watched": comp is not None,
            "groups": [{"group": g, **groups[g].model_dump(), "failed": list(groups[g].failed)} for g in names],
        })
    return out


def build(raw: RawCluster, cluster: str, lb_stats: Mapping[str, Any] | None = None,
          faults: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The whole cluster as one JSON-able document (``GET /api/v1/cluster``)."""
    guests = guest_records(raw)
    hosts = host_records(raw, guests)
    return {
        "cluster": cluster, "revision": raw.revision, "spec_revision": raw.spec_revision,
        "has_spec": raw.spec is not None, "leader": raw.leader.data() if raw.leader else None,
        "hosts": hosts, "guests": guests,
        "services": service_records(raw, lb_stats or {}),
        "networks": network_records(raw),
        "teams": [t for h in hosts for t in h["teams"]],
        "components": component_records(raw, hosts),
        "switches": switch_records(raw, hosts, faults or {}),
        "ops": sorted((operation_record(o) for o in raw.ops.values()), key=lambda o: (o["created_at"], o["id"])),
        "events": [e.data() for e in raw.events[-EVENTS_IN_SNAPSHOT:]],
        "faults": dict(faults or {}),
    }


def operation_record(op: OperationRecord) -> dict[str, Any]:
    """A stored operation (nonstop/store/operations.py) as the API shows it: the record, plus
    ``final`` from its kind's machine and its subject (``host`` or ``guest``) lifted from the body."""
    return {**op.to_json(), "final": is_final(op.kind, op.step), "host": op.body.get("host"),
            "guest": op.body.get("guest")}
