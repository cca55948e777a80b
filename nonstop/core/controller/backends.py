"""Each service's backend list, from the healthy replicas (pure, level-triggered).

Role: the controller keeps ``services/<svc>/backends`` equal to the replicas of the service's
group that are running where they are assigned, with the current fencing epoch, on a host that
is not dead, suspect or fenced — and ``lb_changes`` turns the difference between that list and
what a running balancer reports into add/remove/state operations.

Must not: talk to a balancer or the store.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from nonstop.core.spec import ClusterSpec, ServiceSpec

SERVING_HOST_STATES = frozenset({"up", "link-degraded", "maintenance", "unknown"})


@dataclass(frozen=True)
class GuestFacts:
    name: str
    group: str | None
    host: str
    """Assigned host (desired record)."""
    epoch: int
    address: str | None
    observed_host: str | None = None
    observed_state: str | None = None
    observed_epoch: int | None = None


@dataclass(frozen=True)
class Backend:
    name: str
    address: str
    """``ip:port``."""
    weight: int = 1

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "address": self.address, "weight": self.weight}


def serving(facts: GuestFacts, host_states: Mapping[str, str]) -> bool:
    return (
        facts.address is not None
        and facts.observed_state == "running"
        and facts.observed_host == facts.host
        and (facts.observed_epoch is None or facts.observed_epoch >= facts.epoch)
        and host_states.get(facts.host, "unknown") in SERVING_HOST_STATES
    )


def desired_backends(
    spec: ClusterSpec, service: ServiceSpec, guests: Mapping[str, GuestFacts], host_states: Mapping[str, str]
) -> tuple[Backend, ...]:
    """The service's static servers plus every serving replica of its group, sorted by name."""
    out = [Backend(s.name, s.address, s.weight) for s in service.servers]
    ref = service.backends
    if ref is not None:
        group = next((g for g in spec.guests if g.name == ref.group), None)
        port = ref.port or (group.port if group else 80)
        for facts in guests.values():
            if facts.group == ref.group and serving(facts, host_states):
                out.append(Backend(facts.name, f"{facts.address}:{port}", ref.weight))
    return tuple(sorted(out, key=lambda b: b.name))


@dataclass(frozen=True)
class LbChanges:
    add: tuple[Backend, ...]
    remove: tuple[str, ...]
    readdress: tuple[Backend, ...]
    """Same name, new address (a moved guest keeps its address, but a static server may change)."""

    @property
    def empty(self) -> bool:
        return not (self.add or self.remove or self.readdress)


def lb_changes(want: tuple[Backend, ...], have: Mapping[str, str]) -> LbChanges:
    """``have``: backend name → address as the balancer reports it."""
    wanted = {b.name: b for b in want}
    add = tuple(b for b in want if b.name not in have)
    remove = tuple(sorted(n for n in have if n not in wanted))
    readdress = tuple(b for b in want if b.name in have and have[b.name] != b.address)
    return LbChanges(add, remove, readdress)
