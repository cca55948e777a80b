"""The baseline: the same scheduling decisions made the way Nova's filter scheduler makes them.

Role: a straightforward pure-Python loop — for each guest, for each host, each filter
(``host_passes``), then for each weigher over the hosts that passed, normalize, weight,
sum, take the best — over plain per-host objects. It applies the same filters and the
same weigher formulas (and fixed-range normalization) as ``nonstop.core.placement``, so
on the same input it must choose the same hosts; the benchmark checks that, then
compares the speed.

Must not: use numpy in the per-host loop (that is the point of the comparison).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from nonstop.core.placement import ClusterState, HostCondition, Spread


@dataclass
class NovaHost:
    index: int
    name: str
    condition: int
    effective: list[float]
    used: list[float]
    networks: frozenset[str]
    labels: dict[str, str]
    groups: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class NovaRequest:
    name: str
    group: str
    request: tuple[float, float, float]
    networks: frozenset[str]
    labels: tuple[tuple[str, str], ...]
    spread: Spread
    anti: frozenset[str]
    affinity: frozenset[str]


def _state_passes(h: NovaHost, r: NovaRequest) -> bool:
    return h.condition in (int(HostCondition.UP), int(HostCondition.DEGRADED))


def _network_passes(h: NovaHost, r: NovaRequest) -> bool:
    return r.networks <= h.networks


def _label_passes(h: NovaHost, r: NovaRequest) -> bool:
    return all(h.labels.get(k) == v for k, v in r.labels)


def _capacity(resource: int) -> Callable[[NovaHost, NovaRequest], bool]:
    def passes(h: NovaHost, r: NovaRequest) -> bool:
        return h.used[resource] + r.request[resource] <= h.effective[resource]

    return passes


def _anti_passes(h: NovaHost, r: NovaRequest) -> bool:
    if any(h.groups.get(g, 0) for g in r.anti):
        return False
    return not (r.spread is Spread.HARD and h.groups.get(r.group, 0))


FILTERS = (_state_passes, _network_passes, _label_passes, _capacity(0), _capacity(1), _capacity(2), _anti_passes)


def _util(h: NovaHost, r: NovaRequest) -> list[float]:
    return [(h.used[i] + r.request[i]) * (1.0 / max(h.effective[i], 1e-9)) for i in range(3)]


def _clip(x: float) -> float:
    return min(max(x, 0.0), 1.0)


def spread_weigher(h: NovaHost, r: NovaRequest, ha_headroom: float) -> float:
    u = _util(h, r)
    return _clip(1.0 - (u[0] + u[1] + u[2]) / 3.0)


def balance_weigher(h: NovaHost, r: NovaRequest, ha_headroom: float) -> float:
    return _clip(1.0 - max(_util(h, r)))


def ha_weigher(h: NovaHost, r: NovaRequest, ha_headroom: float) -> float:
    return _clip((1.0 - max(_util(h, r))) / ha_headroom)


def soft_spread_weigher(h: NovaHost, r: NovaRequest, ha_headroom: float) -> float:
    count = h.groups.get(r.group, 0) if r.spread is Spread.SOFT else 0
    return 1.0 / (1.0 + count)


WEIGHERS = ((spread_weigher, 1.0), (balance_weigher, 1.0), (ha_weigher, 1.0), (soft_spread_weigher, 10.0))


def nova_hosts(state: ClusterState) -> list[NovaHost]:
    return [
        NovaHost(i, h.name, int(state.condition[i]), [float(x) for x in state.effective[i]],
                 [float(x) for x in state.used[i]], h.networks, dict(h.labels))
        for i, h in enumerate(state.hosts)
    ]


def nova_requests(state: ClusterState, order: Iterable[int]) -> list[NovaRequest]:
    out = []
    for g in order:
        guest = state.guests[g]
        group = int(state.group[g])
        out.append(NovaRequest(guest.name, guest.group, guest.request, guest.networks,
                               tuple(sorted(guest.labels.items())), state.group_spread[group],
                               frozenset(state.group_names[o] for o in state.group_anti[group]), guest.affinity))
    return out


def schedule(hosts: list[NovaHost], requests: list[NovaRequest], ha_headroom: float,
             progress: Callable[[], None] | None = None) -> list[tuple[str, str | None]]:
    """Nova's shape: filter every host, weigh the survivors, pick the best, consume resources."""
    decisions: list[tuple[str, str | None]] = []
    for r in requests:
        passing = [h for h in hosts if all(f(h, r) for f in FILTERS)]
        best: NovaHost | None = None
        best_score = float("-inf")
        for h in passing:
            score = 0.0
            for weigher, weight in WEIGHERS:
                score = score + weight * weigher(h, r, ha_headroom)
            if score > best_score:  # strict: ties keep the lowest host index
                best, best_score = h, score
        if best is not None:
            for i in range(3):
                best.used[i] += r.request[i]
            best.groups[r.group] = best.groups.get(r.group, 0) + 1
        decisions.append((r.name, best.name if best else None))
        if progress is not None:
            progress()
    return decisions
