"""Prometheus metrics of one cluster, computed from a snapshot of the store (``/metrics``).

Role: a prometheus-client custom collector over the API's cluster snapshot (``nonstop.api.snapshot``):

- hosts: ``nonstop_host_up`` / ``nonstop_host_state{state}``, physical, effective (× allocation
  ratio − reserved) and allocated vCPUs and memory, observed usage, guests per host;
- guests: ``nonstop_guest_state{state}``, vCPUs, memory, CPU and memory use, fencing epoch;
- teams: ``nonstop_team_member_up``, ``nonstop_team_member_active``, ``nonstop_team_failovers``
  (from the agents' reports of their team daemons); NICs: ``nonstop_nic_up``;
- balancer: ``nonstop_service_backends``, ``nonstop_backend_healthy``, request counters and rates;
- controller: events by kind, failover operations by step, heartbeats by verdict, reconcile passes
  and balancer sync errors from the leader record, and histograms of heartbeat gaps at
  detection (``detected_at − last_heard``), detection-to-done failover durations and fence times,
  from the persisted failover operations, plus any event carrying ``seconds``.

Must not: read the store itself or keep state between scrapes (it is a pure view of the snapshot).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0)
HOST_STATES = ("up", "link-degraded", "suspect", "dead", "failed", "maintenance", "down", "unknown")


def histogram(name: str, doc: str, values: Iterable[float], labels: dict[str, str] | None = None) -> HistogramMetricFamily:
    values = [v for v in values if v is not None and math.isfinite(v) and v >= 0]
    buckets = [(str(b), sum(1 for v in values if v <= b)) for b in DURATION_BUCKETS] + [("+Inf", len(values))]
    family = HistogramMetricFamily(name, doc, labels=list(labels or {}))
    family.add_metric(list((labels or {}).values()), buckets, sum(values))
    return family


def failover_durations(ops: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Heartbeat gap at detection, fence time and failover time from persisted failover operations."""
    out: dict[str, list[float]] = {"gap": [], "fence": [], "failover": []}
    for op in ops:
        if op.get("kind") != "failover":
            continue
        body = op.get("body") or {}
        detected = body.get("detected_at")
        heard = body.get("last_heard")
        times = op.get("progress") or {}
        if isinstance(detected, (int, float)) and isinstance(heard, (int, float)):
            out["gap"].append(float(detected) - float(heard))
        if isinstance(detected, (int, float)):
            if isinstance(times.get("fenced"), (int, float)):
                out["fence"].append(float(times["fenced"]) - float(detected))
            if isinstance(times.get("done"), (int, float)):
                out["failover"].append(float(times["done"]) - float(detected))
    return out


class ClusterCollector:
    def __init__(self, cluster: dict[str, Any], extra: dict[str, float] | None = None) -> None:
        self.c = cluster
        self.extra = extra or {}

    def collect(self) -> Iterator[Metric]:
        c = self.c
        yield from self._hosts(c["hosts"])
        yield from self._guests(c["guests"])
        yield from self._teams(c["hosts"])
        yield from self._services(c["services"])
        yield from self._controller(c)

    def _hosts(self, hosts: list[dict[str, Any]]) -> Iterator[Metric]:
        up = GaugeMetricFamily("nonstop_host_up", "1 while the host is up (or link-degraded)", labels=["host"])
        state = GaugeMetricFamily("nonstop_host_state", "1 for the host's current state", labels=["host", "state"])
        cap = GaugeMetricFamily("nonstop_host_capacity", "Physical capacity (cpus; memory bytes)", labels=["host", "resource"])
        eff = GaugeMetricFamily("nonstop_host_effective_capacity",
                                "Capacity × allocation ratio − reserved", labels=["host", "resource"])
        alloc = GaugeMetricFamily("nonstop_host_allocated", "Allocated to guests placed here", labels=["host", "resource"])
        guests = GaugeMetricFamily("nonstop_host_guests", "Guests placed on the host", labels=["host"])
        for h in hosts:
            name = h["name"]
            up.add_metric([name], 1.0 if h["state"] in ("up", "link-degraded") else 0.0)
            for s in sorted(set(HOST_STATES) | {h["state"]}):
                state.add_metric([name, s], 1.0 if h["state"] == s else 0.0)
            capacity = h.get("capacity") or {}
            if capacity:
                cap.add_metric([name, "cpu"], capacity["cpus"])
                cap.add_metric([name, "memory"], capacity["memory"])
                eff.add_metric([name, "cpu"], capacity["effective_cpus"])
                eff.add_metric([name, "memory"], capacity["effective_memory"])
            alloc.add_metric([name, "cpu"], h["allocated"]["vcpus"])
            alloc.add_metric([name, "memory"], h["allocated"]["memory"])
            guests.add_metric([name], len(h["guests"]))
        working = GaugeMetricFamily("nonstop_host_component_working", "Working members of a redundant component "
                                    "group (from the BMC)", labels=["host", "group"])
        total = GaugeMetricFamily("nonstop_host_component_total", "Members of a component group", labels=["host", "group"])
        for h in hosts:
            for group, g in ((h.get("components") or {}).get("groups") or {}).items():
                if isinstance(g, dict):
                    working.add_metric([h["name"], str(group)], float(g.get("working", 0)))
                    total.add_metric([h["name"], str(group)], float(g.get("total", 0)))
        yield from (up, state, cap, eff, alloc, guests, working, total)

    def _guests(self, guests: list[dict[str, Any]]) -> Iterator[Metric]:
        running = GaugeMetricFamily("nonstop_guest_running", "1 while the guest is observed running",
                                    labels=["guest", "group", "host"])
        vcpus = GaugeMetricFamily("nonstop_guest_vcpus", "Desired vCPUs", labels=["guest"])
        memory = GaugeMetricFamily("nonstop_guest_memory_bytes", "Desired memory", labels=["guest"])
        cpu = GaugeMetricFamily("nonstop_guest_cpu_usage_cores", "Observed CPU use", labels=["guest"])
        mem_used = GaugeMetricFamily("nonstop_guest_memory_usage_bytes", "Observed memory use", labels=["guest"])
        epoch = GaugeMetricFamily("nonstop_guest_fencing_epoch", "The guest's fencing epoch", labels=["guest"])
        for g in guests:
            running.add_metric([g["name"], str(g["group"] or ""), str(g["host"] or "")],
                               1.0 if g["state"] == "running" else 0.0)
            if g["vcpus"] is not None:
                vcpus.add_metric([g["name"]], g["vcpus"])
            if g["memory"] is not None:
                memory.add_metric([g["name"]], g["memory"])
            if g["cpu_usage"] is not None:
                cpu.add_metric([g["name"]], g["cpu_usage"])
            if g["memory_usage"] is not None:
                mem_used.add_metric([g["name"]], g["memory_usage"])
            epoch.add_metric([g["name"]], g["epoch"] or 0)
        yield from (running, vcpus, memory, cpu, mem_used, epoch)

    def _teams(self, hosts: list[dict[str, Any]]) -> Iterator[Metric]:
        member = GaugeMetricFamily("nonstop_team_member_up", "1 while the team member's link is up",
                                   labels=["host", "team", "member"])
        nic = GaugeMetricFamily("nonstop_nic_up", "1 while the NIC is up", labels=["host", "nic", "switch"])
        active = GaugeMetricFamily("nonstop_team_member_active", "1 for the member carrying the team's traffic "
                                   "(active-backup), as the host's team daemon reports it", labels=["host", "team", "member"])
        failovers = CounterMetricFamily("nonstop_team_failovers", "Team failovers since the team daemon started",
                                        labels=["host", "team"])
        for h in hosts:
            for t in h["teams"]:
                for m in t["members"]:
                    member.add_metric([h["name"], t["name"], m["name"]], 1.0 if m["state"] == "up" else 0.0)
                    active.add_metric([h["name"], t["name"], m["name"]], 1.0 if t.get("active") == m["name"] else 0.0)
                if t.get("failovers") is not None:
                    failovers.add_metric([h["name"], t["name"]], float(t["failovers"]))
            for n in h["nics"]:
                nic.add_metric([h["name"], n["name"], n["switch"]], 1.0 if n["state"] == "up" else 0.0)
        yield from (member, nic, active, failovers)

    def _services(self, services: list[dict[str, Any]]) -> Iterator[Metric]:
        count = GaugeMetricFamily("nonstop_service_backends", "Backends the controller gave the balancer",
                                  labels=["service"])
        healthy = GaugeMetricFamily("nonstop_backend_healthy", "1 while the balancer's health check passes",
                                    labels=["service", "backend"])
        requests = CounterMetricFamily("nonstop_backend_requests", "Requests the balancer sent to the backend",
                                       labels=["service", "backend"])
        rate = GaugeMetricFamily("nonstop_backend_request_rate", "Requests per second (last second)",
                                 labels=["service", "backend"])
        for s in services:
            count.add_metric([s["name"]], len(s["backends"]))
            for b in s["backends"]:
                labels = [s["name"], str(b.get("name"))]
                healthy.add_metric(labels, 1.0 if b.get("health") == "up" else 0.0)
                requests.add_metric(labels, float(b.get("requests") or 0))
                rate.add_metric(labels, float(b.get("rate") or 0.0))
        yield from (count, healthy, requests, rate)

    def _controller(self, c: dict[str, Any]) -> Iterator[Metric]:
        kinds: dict[str, int] = {}
        seconds: dict[str, list[float]] = {}
        for e in c["events"]:
            kind = str(e.get("kind"))
            kinds[kind] = kinds.get(kind, 0) + 1
            if isinstance(e.get("seconds"), (int, float)):
                seconds.setdefault(kind, []).append(float(e["seconds"]))
        events = CounterMetricFamily("nonstop_events", "Event-log entries by kind (recent window)", labels=["kind"])
        for kind, n in sorted(kinds.items()):
            events.add_metric([kind], n)
        ops = GaugeMetricFamily("nonstop_failover_operations", "Failover operations by step", labels=["step"])
        steps: dict[str, int] = {}
        for op in c["ops"]:
            if op.get("kind") == "failover":
                steps[str(op.get("step"))] = steps.get(str(op.get("step")), 0) + 1
        for step, n in sorted(steps.items()):
            ops.add_metric([step], n)
        durations = failover_durations(c["ops"])
        yield events
        yield ops
        yield histogram("nonstop_heartbeat_gap_seconds",
                        "Silence from the last heartbeat heard to the host being declared dead", durations["gap"])
        yield histogram("nonstop_fence_duration_seconds", "Detection to fenced", durations["fence"])
        yield histogram("nonstop_failover_duration_seconds", "Detection to every guest running elsewhere",
                        durations["failover"])
        by_kind = HistogramMetricFamily("nonstop_event_duration_seconds",
                                        "Durations the controller reported with events", labels=["kind"])
        for kind, values in sorted(seconds.items()):
            one = histogram("x", "", values)
            by_kind.add_metric([kind], [(s.labels["le"], s.value) for s in one.samples if s.name == "x_bucket"],
                               sum(values))
        yield by_kind
        leader = GaugeMetricFamily("nonstop_controller_leader", "1 while a controller holds the leader key")
        leader.add_metric([], 1.0 if c.get("leader") else 0.0)
        yield leader
        leader_record = c.get("leader")
        status: dict[str, Any] = leader_record if isinstance(leader_record, dict) else {}
        beats = CounterMetricFamily("nonstop_controller_heartbeats", "Heartbeat datagrams the controller "
                                    "received, by verdict (accepted, forged, replayed ...)", labels=["verdict"])
        for verdict, n in sorted((status.get("heartbeats") or {}).items()):
            if isinstance(n, (int, float)):
                beats.add_metric([str(verdict)], float(n))
        yield beats
        passes = CounterMetricFamily("nonstop_controller_passes", "Reconcile passes of the active controller")
        passes.add_metric([], float(status.get("passes") or 0))
        yield passes
        lb_errors = GaugeMetricFamily("nonstop_controller_balancer_errors",
                                      "1 while the controller cannot sync a service's balancer", labels=["service"])
        for service in sorted(status.get("balancer_errors") or {}):
            lb_errors.add_metric([str(service)], 1.0)
        yield lb_errors
        for name, value in self.extra.items():
            g = GaugeMetricFamily(name, name.replace("_", " "))
            g.add_metric([], value)
            yield g


def metrics_text(cluster: dict[str, Any], runtime: Any = None) -> tuple[bytes, str]:
    extra = {}
    if runtime is not None:
        extra = {"nonstop_api_sse_subscribers": float(len(runtime.subscribers)),
                 "nonstop_api_store_changes_seen": float(runtime.changes_seen)}
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ClusterCollector(cluster, extra))
    return generate_latest(registry), CONTENT_TYPE_LATEST
