"""One consistent read of a cluster from the store, shaped for the API, dashboard and metrics.

Role: list everything under ``/nonstop/<cluster>/`` once (one revision) and join it into plain
JSON-able records — hosts (state, NICs, teams, components, physical / effective / allocated /
used capacity, guests), per-host component groups (power, network, storage, cooling), guests (desired vs observed), services (backends, health and request
rates from the balancers' admin APIs when known), networks (with IPAM use), teams, switches,
operations and the latest events. Host state is derived level-wise from what the store holds:
a failover operation for a host whose agent is gone → ``failed``; an operator's maintenance
request → ``maintenance``; the controller's liveness verdict when present (``hosts`` in the
leader record it republishes every second, else the last ``host-state`` event's ``after``); else ``up`` while the
agent's ``alive`` key exists and ``down`` when it does not.

Must not: write anything, or decide anything beyond presenting (placement explanations come
from the pure core in ``nonstop.api.describe``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from nonstop.core.operation_kinds import is_final
from nonstop.core.spec import ClusterSpec
from nonstop.store import keys
from nonstop.store.base import KeyValue, Store

EVENTS_IN_SNAPSHOT = 200
FAILED_STEPS = {"detected", "fencing", "fence-failed", "fenced", "moved", "done"}


@dataclass
class RawCluster:
    """The store's keys of one cluster, grouped by kind (the unjoined read)."""

    revision: int = 0
    spec: ClusterSpec | None = None
    spec_revision: int = 0
    hosts: dict[str, dict[str, Any]] = field(default_factory=dict)
    """host → leaf (desired / observed / alive) → decoded value."""
    guests: dict[str, dict[str, Any]] = field(default_factory=dict)
    guest_revisions: dict[str, int] = field(default_factory=dict)
    services: dict[str, dict[str, Any]] = field(default_factory=dict)
    ipam: dict[str, int] = field(default_factory=dict)
    epochs: dict[str, int] = field(default_factory=dict)
    ops: dict[str, dict[str, Any]] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    leader: Any = None


def _decode(kv: KeyValue) -> Any:
    try:
        return json.loads(kv.value)
    except ValueError:
        return kv.value.decode(errors="replace")


async def read_raw(store: Store, cluster: str) -> RawCluster:
    raw = RawCluster()
    kvs = await store.list(keys.cluster_prefix(cluster))
    raw.revision = max((kv.mod_revision for kv in kvs), default=0)
    for kv in kvs:
        try:
            parsed = keys.parse(kv.key)
        except ValueError:
            continue
        value = _decode(kv)
        if parsed.kind == "spec":
            try:
                raw.spec = ClusterSpec.model_validate(value)
                raw.spec_revision = kv.mod_revision
            except ValueError:
                raw.spec = None
        elif parsed.kind == "leader":
            raw.leader = value
        elif parsed.kind == "hosts" and parsed.leaf:
            raw.hosts.setdefault(parsed.name, {})[parsed.leaf] = value
        elif parsed.kind == "guests" and parsed.leaf:
            raw.guests.setdefault(parsed.name, {})[parsed.leaf] = value
            if parsed.leaf == "desired":
                raw.guest_revisions[parsed.name] = kv.mod_revision
        elif parsed.kind == "services" and parsed.leaf:
            raw.services.setdefault(parsed.name, {})[parsed.leaf] = value
        elif parsed.kind == "ipam" and parsed.name:
            raw.ipam[parsed.name] = raw.ipam.get(parsed.name, 0) + 1
        elif parsed.kind == "epoch" and parsed.name:
            try:
                raw.epochs[parsed.name] = int(value["epoch"] if isinstance(value, dict) else value)
            except (TypeError, ValueError, KeyError):
                continue
        elif parsed.kind == "ops" and parsed.name and isinstance(value, dict):
            raw.ops[parsed.name] = value
        elif parsed.kind == "events" and isinstance(value, dict):
            raw.events.append(value)
    raw.events.sort(key=lambda e: int(e.get("seq", 0)))
    return raw


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def host_states(raw: RawCluster) -> dict[str, tuple[str, str]]:
    """host → (state, why) derived from the store (see the module docstring)."""
    names = [h.name for h in raw.spec.hosts] if raw.spec else []
    names += [n for n in raw.hosts if n not in names]
    liveness: dict[str, str] = {}
    for event in raw.events:
        if event.get("kind") == "host-state":
            state = event.get("after") or event.get("state")
            if isinstance(state, str):
                liveness[str(event.get("subject"))] = state
    # The active controller publishes its live verdict per host in the leader record every second.
    published = _dict(_dict(raw.leader).get("hosts"))
    liveness.update({str(h): s for h, s in published.items() if isinstance(s, str)})
    failed_by: dict[str, dict[str, Any]] = {}
    for op in raw.ops.values():
        if op.get("kind") == "failover" and op.get("step") in FAILED_STEPS:
            failed_by[str(_dict(op.get("body")).get("host"))] = op
    out = {}
    for name in names:
        records = raw.hosts.get(name, {})
        alive = "alive" in records
        desired = _dict(records.get("desired"))
        observed = _dict(records.get("observed"))
        if name in failed_by and not alive:
            op = failed_by[name]
            out[name] = ("failed", f"failover {op.get('id')}: {op.get('step')}")
        elif desired.get("state") == "maintenance":
            out[name] = ("maintenance", str(desired.get("reason") or "operator request"))
        elif name in liveness:
            out[name] = (liveness[name], "controller liveness verdict")
        elif isinstance(observed.get("state"), str) and alive:
            out[name] = (observed["state"], "reported")
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
        if event.get("kind") == "host-state" and isinstance(event.get("down_links"), list):
            out[str(event.get("subject"))] = {str(x) for x in event["down_links"]}
    return out


DEAD_STATES = ("failed", "dead", "down")


def _nics_and_teams(spec: ClusterSpec | None, name: str, observed: dict[str, Any], state: str,
                    silent: set[str], alive: bool = True) -> tuple[list[Any], list[Any]]:
    """NIC and team state: the agent's report (``nics``/``teams``, from the host's team daemon) while the
    host is alive; else the heartbeat evidence — a link of a host the controller hears is up unless it
    is among the silent ones; every link of a failed host is down (its last report is history)."""
    host = next((h for h in spec.hosts if h.name == name), None) if spec else None
    believed = alive and state not in DEAD_STATES
    obs_nics = _dict(observed.get("nics")) if believed else {}
    obs_teams = _dict(observed.get("teams")) if believed else {}
    nics: list[dict[str, Any]] = []
    teams: list[dict[str, Any]] = []
    if host is None or spec is None:
        return nics, teams
    by_name: dict[str, str] = {}
    for i, nic in enumerate(host.nics):
        switch = spec.nic_switch(host, i)
        seen = _dict(obs_nics.get(nic.name))
        if "state" in seen:
            nic_state = str(seen["state"])
        elif state in DEAD_STATES:
            nic_state = "down"
        elif state in HEARD_STATES:
            nic_state = "down" if nic.name in silent or switch in silent else "up"
        else:
            nic_state = "unknown"
        by_name[nic.name] = nic_state
        nics.append({"name": nic.name, "switch": switch, "state": nic_state,
                     "source": "agent" if "state" in seen else "heartbeats"})
    for team in host.teams:
        seen = _dict(obs_teams.get(team.name))
        members = _dict(seen.get("members"))
        member_states = [{"name": m, "state": str(_dict(members.get(m)).get("state", by_name.get(m, "unknown")))}
                         for m in team.members]
        up = [m["name"] for m in member_states if m["state"] == "up"]
        derived = "up" if len(up) == len(member_states) else "degraded" if up else "down"
        active = seen.get("active") or seen.get("active_member")
        if active is None and up and not seen:  # no report: the primary carries while it is up
            active = team.primary if team.primary in up else up[0]
        teams.append({"host": name, "name": team.name, "mode": team.mode.value, "members": member_states,
                      "active": active, "state": seen.get("state", derived),
                      "failovers": seen.get("failovers"), "last_failover_at": seen.get("last_failover_at"),
                      "reported_at": observed.get("teams_at") if seen else None,
                      "source": "agent" if seen else "heartbeats"})
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
        desired, observed = _dict(leaves.get("desired")), _dict(leaves.get("observed"))
        if not desired and not observed:
            continue
        vnics = desired.get("vnics") or []
        address = observed.get("address") or next((v.get("address") or v.get("ip") for v in vnics
                                                   if isinstance(v, dict) and (v.get("address") or v.get("ip"))), None)
        out.append({
            "name": name, "group": desired.get("group"), "kind": desired.get("kind", observed.get("kind")),
            "host": desired.get("host"), "observed_host": observed.get("host"),
            "state": observed.get("state", "pending" if desired else "unknown"),
            "vcpus": desired.get("vcpus"), "max_vcpus": desired.get("max_vcpus"),
            "memory": desired.get("memory"), "max_memory": desired.get("max_memory"),
            "cpu_usage": observed.get("cpu_usage"), "memory_usage": observed.get("memory_usage"),
            "address": address, "epoch": raw.epochs.get(name, desired.get("fencing_epoch", 0)),
            "migrate_to": desired.get("migrate_to"), "migration": _migration(raw, desired.get("migration_id")),
            "running": desired.get("running", True),
            "note": observed.get("note") or observed.get("failure_reason"),
            "runner": _dict(leaves.get("runner")).get("host"), "pid": observed.get("pid"),
        })
    return out


def _migration(raw: RawCluster, op_id: Any) -> dict[str, Any] | None:
    """The live migration a desired record asks for (``ops/<migration_id>``, docs/agent.md)."""
    if not isinstance(op_id, str):
        return None
    op = _dict(raw.ops.get(op_id))
    body = _dict(op.get("body"))
    return {"id": op_id, "step": op.get("step"), "source": body.get("source"),
            "destination": body.get("destination"), "reason": op.get("reason") or None}


def host_records(raw: RawCluster, guests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    states = host_states(raw)
    silent = down_links(raw)
    out = []
    for name, (state, why) in states.items():
        records = raw.hosts.get(name, {})
        observed = _dict(records.get("observed"))
        on_host = [g for g in guests if g["host"] == name]
        nics, teams = _nics_and_teams(raw.spec, name, observed, state, silent.get(name, set()), "alive" in records)
        usage = _dict(observed.get("usage"))
        out.append({
            "name": name, "state": state, "state_reason": why, "alive": "alive" in records,
            "desired": _dict(records.get("desired")), "capacity": _capacity(raw.spec, name),
            "allocated": {"vcpus": sum(int(g["vcpus"] or 0) for g in on_host),
                          "memory": sum(int(g["memory"] or 0) for g in on_host)},
            "usage": usage, "nics": nics, "teams": teams,
            "components": _dict(records.get("components")) or _dict(observed.get("components")),
            "guests": [g["name"] for g in on_host],
        })
    return out


def service_records(raw: RawCluster, lb_stats: Mapping[str, Any]) -> list[dict[str, Any]]:
    specs = {s.name: s for s in raw.spec.services} if raw.spec else {}
    out = []
    for name in list(specs) + [n for n in raw.services if n not in specs]:
        spec = specs.get(name)
        stored = _dict(raw.services.get(name, {}).get("backends")).get("backends") or []
        stats = _dict(lb_stats.get(name))
        backends = []
        reported = _dict(stats.get("backends"))
        stored = [b for b in stored if isinstance(b, dict)]
        # The balancer's own list counts too: what it serves is what clients get, stored or not yet.
        stored = [{**b, "in_store": True} for b in stored]
        stored += [{"name": n, "address": _dict(b).get("address"), "in_store": False} for n, b in reported.items()
                   if n not in {str(x.get("name")) for x in stored}]
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


def component_records(hosts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per host, each hardware component group as the hardware watcher last recorded it
    (``hosts/<h>/components``, nonstop/components/watcher.py); ``unknown`` before its first read."""
    out = []
    for h in hosts:
        comp = _dict(h.get("components"))
        groups = _dict(comp.get("groups"))
        names = [g for g in COMPONENT_GROUPS if g in groups] + [g for g in groups if g not in COMPONENT_GROUPS]
        out.append({
            "host": h["name"], "health": comp.get("health", "unknown"), "reason": comp.get("reason"),
            "power_state": comp.get("power_state"), "placement": comp.get("placement"), "policy": comp.get("policy"),
            "watched": bool(comp),
            "groups": [{"group": g, "state": _dict(groups[g]).get("state", "unknown"),
                        "working": _dict(groups[g]).get("working"), "total": _dict(groups[g]).get("total"),
                        "failed": list(_dict(groups[g]).get("failed") or [])} for g in names],
        })
    return out


def build(raw: RawCluster, cluster: str, lb_stats: Mapping[str, Any] | None = None,
          faults: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The whole cluster as one JSON-able document (``GET /api/v1/cluster``)."""
    guests = guest_records(raw)
    hosts = host_records(raw, guests)
    return {
        "cluster": cluster, "revision": raw.revision, "spec_revision": raw.spec_revision,
        "has_spec": raw.spec is not None, "leader": raw.leader,
        "hosts": hosts, "guests": guests,
        "services": service_records(raw, lb_stats or {}),
        "networks": network_records(raw),
        "teams": [t for h in hosts for t in h["teams"]],
        "components": component_records(hosts),
        "switches": switch_records(raw, hosts, faults or {}),
        "ops": sorted((operation_record(o) for o in raw.ops.values()), key=lambda o: (o["created_at"], o["id"])),
        "events": raw.events[-EVENTS_IN_SNAPSHOT:],
        "faults": dict(faults or {}),
    }


def operation_record(op: dict[str, Any]) -> dict[str, Any]:
    """A stored operation (nonstop/store/operations.py) as the API shows it: the record, plus
    ``final`` from its kind's machine and its subject (``host`` or ``guest``) lifted from the body."""
    body = _dict(op.get("body"))
    kind, step = str(op.get("kind", "")), str(op.get("step", ""))
    return {**op, "id": str(op.get("id", "")), "created_at": float(op.get("created_at") or 0.0),
            "final": is_final(kind, step), "host": body.get("host"), "guest": body.get("guest")}
