"""Per-backend and per-service counters, a latency histogram, and the Prometheus rendering.

Role: plain counters the data planes bump on the hot path (attribute increments, no locks,
no prometheus objects there), a JSON view for the admin API, merging of per-worker
snapshots, and a prometheus-client collector that renders them in the text exposition
format for ``/metrics``.

Must not: do I/O or decide anything; the data planes count, the admin API reads.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class BackendStats:
    __slots__ = ("requests", "errors", "retries_from", "connections", "buckets", "latency_sum", "bytes_in", "bytes_out")

    def __init__(self) -> None:
        self.requests = 0
        self.errors = 0
        self.retries_from = 0
        self.connections = 0
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0
        self.bytes_in = 0
        self.bytes_out = 0

    def observe(self, seconds: float) -> None:
        self.buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_sum += seconds

    def to_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "retries_from": self.retries_from,
            "connections": self.connections,
            "latency_buckets": list(self.buckets),
            "latency_sum": self.latency_sum,
        }


class ServiceStats:
    __slots__ = ("requests", "by_class", "retries", "client_errors", "connections", "active_connections")

    def __init__(self) -> None:
        self.requests = 0
        self.by_class = [0] * 6
        """Responses by status class, indexed by status // 100 (0: no valid status)."""
        self.retries = 0
        self.client_errors = 0
        self.connections = 0
        self.active_connections = 0

    def count_response(self, status: int) -> None:
        self.by_class[status // 100 if 0 < status < 600 else 0] += 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "responses": {f"{k}xx": v for k, v in enumerate(self.by_class) if v},
            "retries": self.retries,
            "client_errors": self.client_errors,
            "connections": self.connections,
            "active_connections": self.active_connections,
        }


def merge_snapshots(snapshots: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Sum per-worker ``stats`` documents ({service: {"service": {...}, "backends": {...}}})."""
    total: dict[str, Any] = {}

    def add(into: dict[str, Any], other: dict[str, Any]) -> None:
        for key, value in other.items():
            if isinstance(value, dict):
                add(into.setdefault(key, {}), value)
            elif isinstance(value, list):
                current = into.setdefault(key, [0] * len(value))
                into[key] = [a + b for a, b in zip(current, value, strict=False)]
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                into[key] = into.get(key, 0) + value
            else:
                into[key] = value

    for snapshot in snapshots:
        add(total, snapshot)
    return total


class _StatsCollector(Collector):
    def __init__(self, source: Any) -> None:
        self._source = source  # callable -> (stats document, {service: [backend snapshot]})

    def collect(self) -> Iterator[Any]:
        stats, states = self._source()
        requests = CounterMetricFamily("nonstop_lb_backend_requests", "Requests sent to a backend", labels=["service", "backend"])
        errors = CounterMetricFamily("nonstop_lb_backend_errors", "Failed requests/connections per backend", labels=["service", "backend"])
        active = GaugeMetricFamily("nonstop_lb_backend_active", "In-flight requests or connections", labels=["service", "backend"])
        up = GaugeMetricFamily("nonstop_lb_backend_serving", "1 when the backend takes new work", labels=["service", "backend"])
        latency = HistogramMetricFamily("nonstop_lb_backend_latency_seconds", "Backend response latency", labels=["service", "backend"])
        svc_requests = CounterMetricFamily("nonstop_lb_requests", "Requests received", labels=["service"])
        svc_responses = CounterMetricFamily("nonstop_lb_responses", "Responses by status class", labels=["service", "code"])
        svc_retries = CounterMetricFamily("nonstop_lb_retries", "Requests retried on another backend", labels=["service"])
        svc_conns = GaugeMetricFamily("nonstop_lb_client_connections", "Open client connections", labels=["service"])
        for service, doc in sorted(stats.items()):
            s = doc.get("service", {})
            svc_requests.add_metric([service], s.get("requests", 0))
            for code, n in sorted(s.get("responses", {}).items()):
                svc_responses.add_metric([service, code], n)
            svc_retries.add_metric([service], s.get("retries", 0))
            svc_conns.add_metric([service], s.get("active_connections", 0))
            for name, b in sorted(doc.get("backends", {}).items()):
                requests.add_metric([service, name], b.get("requests", 0))
                errors.add_metric([service, name], b.get("errors", 0))
                buckets, cumulative = [], 0
                for bound, count in zip((*LATENCY_BUCKETS, float("inf")), b.get("latency_buckets", []), strict=False):
                    cumulative += count
                    buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
                latency.add_metric([service, name], buckets, b.get("latency_sum", 0.0))
        for service, backends in sorted(states.items()):
            for b in backends:
                active.add_metric([service, b["name"]], b.get("active", 0))
                up.add_metric([service, b["name"]], 1 if b.get("serving") else 0)
        yield from (requests, errors, active, up, latency, svc_requests, svc_responses, svc_retries, svc_conns)


def prometheus_registry(source: Any) -> CollectorRegistry:
    """A registry whose only collector reads ``source()`` at scrape time."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_StatsCollector(source))
    return registry
