"""Watching a starting cluster until it serves: guests placed and running (with boot times), every
service's balancer holding every replica and answering HTTP through its 127.0.0.1 port.

Role: ``BootWatch.poll()`` reads the store (guests' desired/observed records, services' backends)
and reports each transition once through ``say``; ``serving()`` is true when everything is up.

Must not: change anything (read-only on the store); decide what is healthy beyond what the
controller recorded and one HTTP answer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from nonstop.core.spec import ClusterSpec
from nonstop.store import keys
from nonstop.store.base import Store
from nonstop.store.cluster_records import read_guests
from nonstop.store.records import ServiceBackends, read_or_none

Say = Callable[[str], None]


@dataclass
class GuestBoot:
    name: str
    kind: str
    host: str | None = None
    placed_at: float | None = None
    running_at: float | None = None
    serving_at: float | None = None
    state: str = "pending"
    placements: int = 0
    """How often the controller placed it; more than one during ``up`` = a failover moved it."""

    @property
    def boot_seconds(self) -> float | None:
        if self.placed_at is None or self.running_at is None:
            return None
        return self.running_at - self.placed_at


@dataclass
class BootWatch:
    spec: ClusterSpec
    store: Store
    service_ports: dict[str, int]
    say: Say
    started_at: float = field(default_factory=time.time)
    guests: dict[str, GuestBoot] = field(default_factory=dict)
    backends: dict[str, int] = field(default_factory=dict)
    answering: dict[str, bool] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for group in self.spec.guests:
            for i in range(group.replicas):
                name = f"{group.name}-{i}"
                self.guests[name] = GuestBoot(name, group.kind.value)

    def expected_backends(self) -> dict[str, int]:
        groups = {g.name: g.replicas for g in self.spec.guests}
        return {s.name: groups.get(s.backends.group, 0) for s in self.spec.services if s.backends is not None}

    async def poll(self) -> None:
        from nonstop.drivers.probe import http_get  # not nonstop.demo: the demo is built on `up`

        cluster = self.spec.cluster
        guests = await read_guests(self.store, cluster)
        now = time.time()
        for name, rec in guests.items():
            want = rec.desired
            if want is None:
                continue
            boot = self.guests.setdefault(name, GuestBoot(name, "?"))
            if want.host != boot.host:
                # A new placement starts the clock again: running and serving count on the new host.
                boot.host, boot.placed_at, boot.running_at, boot.serving_at = want.host, now, None, None
                boot.placements += 1
                self.say(f"{name} placed on {boot.host}")
            seen = rec.observed
            state = str(seen.state or "pending") if seen is not None and seen.host == boot.host else "pending"
            if state == "running" and boot.running_at is None:
                boot.running_at = now
                self.say(f"{name} ({boot.kind}) running on {boot.host} after {boot.boot_seconds:.1f} s")
            boot.state = state
        for service, want_n in self.expected_backends().items():
            stored = await read_or_none(self.store, keys.service_backends(cluster, service), ServiceBackends)
            members = stored.names() if stored is not None else set()
            for name in members:
                member = self.guests.get(str(name))
                if (member is not None and member.serving_at is None and member.running_at is not None
                        and member.placed_at is not None):
                    member.serving_at = now
                    self.say(f"{name} serving (in the balancer) {now - member.placed_at:.1f} s after placement")
            n = len(members)
            if n != self.backends.get(service):
                self.backends[service] = n
                self.say(f"service {service}: {n}/{want_n} replicas in the balancer")
            if n == want_n and not self.answering.get(service) and service in self.service_ports:
                port = self.service_ports[service]
                try:
                    status, _ = await asyncio.to_thread(http_get, None, "127.0.0.1", port, "/", 2.0)
                except OSError:  # refused, reset, timed out or not HTTP: not answering yet
                    status = 0
                if status == 200:
                    self.answering[service] = True
                    self.say(f"service {service} answers on 127.0.0.1:{port} "
                             f"({time.time() - self.started_at:.1f} s after start)")

    def serving(self) -> bool:
        expected = self.expected_backends()
        return (all(g.state == "running" for g in self.guests.values())
                and all(self.backends.get(s) == n for s, n in expected.items())
                and all(self.answering.get(s) for s in expected if s in self.service_ports))

    def moved(self) -> list[str]:
        """Guests placed more than once while starting (a host failed over during ``up``)."""
        return sorted(g.name for g in self.guests.values() if g.placements > 1)

    def summary_rows(self) -> list[tuple[str, str, str, str, str, str]]:
        rows = []
        for g in sorted(self.guests.values(), key=lambda b: b.name):
            boot = f"{g.boot_seconds:.1f} s" if g.boot_seconds is not None else "-"
            serving = f"{g.serving_at - g.placed_at:.1f} s" if g.serving_at and g.placed_at else "-"
            rows.append((g.name, g.kind, g.host or "-", g.state, boot, serving))
        return rows
