"""Prometheus metrics for component redundancy, read from a running ``HardwareWatcher``.

Role: a prometheus_client collector (register it in any registry) that reports, at scrape
time, what the watcher last read — so the numbers never lag behind the store record:

| metric | labels | value |
|---|---|---|
| ``nonstop_component_up`` | host, group, name | 1 working, 0 failed |
| ``nonstop_component_group_state`` | host, group, state | 1 for the group's current state, 0 for the others |
| ``nonstop_host_component_health`` | host, health | 1 for the host's current health, 0 for the others |
| ``nonstop_component_policy_state`` | host, state | 1 for the policy machine's state |
| ``nonstop_bmc_read_seconds`` | host | duration of the last Redfish read |
| ``nonstop_bmc_read_errors_total`` | host | unreadable polls since start |

The watcher is seen through the ``WatchedHosts`` Protocol (defined here): watcher.py
registers this collector, so this module never imports it.

Must not: read a BMC or the store itself, or import the watcher.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from nonstop.core.components.policy import HostPolicy, PolicyState
from nonstop.core.components.redundancy import MEMBER_KINDS, GroupState, HostAssessment, HostHealth
from nonstop.core.ha.hardware import HardwareInventory


class WatchedHost(Protocol):
    """What the collector reads of one watched host (``watcher.HostWatch``)."""

    @property
    def assessment(self) -> HostAssessment | None: ...

    @property
    def inventory(self) -> HardwareInventory | None: ...

    @property
    def policy(self) -> HostPolicy: ...

    @property
    def read_seconds(self) -> float: ...

    @property
    def errors(self) -> int: ...


class WatchedHosts(Protocol):
    """What the collector reads of the watcher (``watcher.HardwareWatcher``): its hosts."""

    @property
    def hosts(self) -> Mapping[str, WatchedHost]: ...


class ComponentCollector(Collector):
    def __init__(self, watcher: WatchedHosts) -> None:
        self.watcher = watcher

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        up = GaugeMetricFamily("nonstop_component_up", "Component working (1) or failed (0), per the BMC",
                               labels=["host", "group", "name"])
        groups = GaugeMetricFamily("nonstop_component_group_state", "Redundancy state of a component group",
                                   labels=["host", "group", "state"])
        health = GaugeMetricFamily("nonstop_host_component_health", "Host health derived from its components",
                                   labels=["host", "health"])
        policy = GaugeMetricFamily("nonstop_component_policy_state", "Component policy state of the host",
                                   labels=["host", "state"])
        seconds = GaugeMetricFamily("nonstop_bmc_read_seconds", "Duration of the last Redfish read", labels=["host"])
        errors = CounterMetricFamily("nonstop_bmc_read_errors", "Polls that could not read the BMC", labels=["host"])
        for name, w in self.watcher.hosts.items():
            current = w.assessment
            if w.inventory is not None:
                for reading in w.inventory.components:
                    if reading.kind in MEMBER_KINDS.get(reading.group, ()):
                        up.add_metric([name, reading.group.value, reading.name], 0.0 if reading.failed else 1.0)
            if current is not None:
                for g in current.groups:
                    for state in GroupState:
                        groups.add_metric([name, g.group.value, state.value], 1.0 if g.state is state else 0.0)
            for h in HostHealth:
                health.add_metric([name, h.value], 1.0 if current is not None and current.health is h else 0.0)
            for s in PolicyState:
                policy.add_metric([name, s.value], 1.0 if w.policy.state is s else 0.0)
            seconds.add_metric([name], w.read_seconds)
            errors.add_metric([name], float(w.errors))
        yield from (up, groups, health, policy, seconds, errors)
