"""Each filter alone, table-driven: which hosts it lets a guest go to."""

from __future__ import annotations

from dataclasses import replace

import pytest

from nonstop.core.placement import ClusterState, HostCondition, Spread
from nonstop.core.placement.filters import (
    AffinityFilter,
    AntiAffinityFilter,
    CapacityFilter,
    HostStateFilter,
    LabelFilter,
    NetworkFilter,
)
from nonstop.core.placement.view import RunView

from .builders import GIB, guest, host

U, M, D, F = HostCondition.UP, HostCondition.MAINTENANCE, HostCondition.DEGRADED, HostCondition.FAILED


def mask(state: ClusterState, flt: object, name: str, accept_degraded: bool = True) -> list[bool]:
    view = RunView.start(state, accept_degraded)
    return view_mask(view, flt, name)


def view_mask(view: RunView, flt: object, name: str) -> list[bool]:
    return [bool(x) for x in flt.host_mask(view, view.state.guest_index[name])]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("conditions", "accept_degraded", "expected"),
    [
        ((U, M, D, F), True, [True, False, True, False]),
        ((U, M, D, F), False, [True, False, False, False]),
        ((F, F), True, [False, False]),
    ],
)
def test_host_state_filter(conditions: tuple[HostCondition, ...], accept_degraded: bool, expected: list[bool]) -> None:
    state = ClusterState([host(f"h{i}", condition=c) for i, c in enumerate(conditions)], [guest("web-0")])
    assert mask(state, HostStateFilter(), "web-0", accept_degraded) == expected


@pytest.mark.parametrize(
    ("host_nets", "guest_nets", "expected"),
    [
        (({"a"}, {"a", "b"}, set()), {"a", "b"}, [False, True, False]),
        (({"a"}, {"a", "b"}, set()), {"a"}, [True, True, False]),
        (({"a"}, {"a", "b"}, set()), set(), [True, True, True]),
        (({"a"}, {"a"}), {"c"}, [False, False]),
    ],
)
def test_network_filter(host_nets: tuple[set[str], ...], guest_nets: set[str], expected: list[bool]) -> None:
    hosts = [host(f"h{i}", networks=frozenset(n)) for i, n in enumerate(host_nets)]
    state = ClusterState(hosts, [guest("web-0", networks=frozenset(guest_nets))])
    assert mask(state, NetworkFilter(), "web-0") == expected


@pytest.mark.parametrize(
    ("host_labels", "required", "expected"),
    [
        (({"zone": "a"}, {"zone": "b"}, {}), {"zone": "a"}, [True, False, False]),
        (({"zone": "a", "ssd": "1"}, {"zone": "a"}), {"zone": "a", "ssd": "1"}, [True, False]),
        (({"zone": "a"}, {}), {}, [True, True]),
    ],
)
def test_label_filter(host_labels: tuple[dict[str, str], ...], required: dict[str, str], expected: list[bool]) -> None:
    hosts = [host(f"h{i}", labels=labels) for i, labels in enumerate(host_labels)]
    state = ClusterState(hosts, [guest("web-0", labels=required)])
    assert mask(state, LabelFilter(), "web-0") == expected


@pytest.mark.parametrize(
    ("resource", "request_", "expected"),
    [
        # h0: 4 cpus × 2.0 − 1 reserved = 7 effective, 2 used -> 5 free; h1: 8 × 2.0 = 16, empty.
        ("cpu", 5, [True, True]),  # exactly full is allowed
        ("cpu", 6, [False, True]),
        ("cpu", 17, [False, False]),
        # memory: h0 16 GiB × 1.5 − 2 GiB reserved = 22 GiB, 4 GiB used -> 18 free; h1 8 GiB × 1.5 = 12.
        ("memory", 12, [True, True]),
        ("memory", 13, [True, False]),
        ("memory", 19, [False, False]),
        # disk: ratio 1.0, h0 100 GiB with 10 used, h1 50 GiB.
        ("disk", 90, [True, False]),
        ("disk", 91, [False, False]),
    ],
)
def test_capacity_filter_per_resource(resource: str, request_: float, expected: list[bool]) -> None:
    h0 = host("h0", cpus=4, mem_gib=16, disk_gib=100, ratios=(2.0, 1.5, 1.0), reserved=(1.0, 2.0 * GIB, 0.0))
    h1 = host("h1", cpus=8, mem_gib=8, disk_gib=50, ratios=(2.0, 1.5, 1.0))
    sizes = {"cpus": 1.0, "mem_gib": 1.0, "disk_gib": 1.0}
    sizes[{"cpu": "cpus", "memory": "mem_gib", "disk": "disk_gib"}[resource]] = request_
    state = ClusterState([h0, h1], [guest("old-0", cpus=2, mem_gib=4, disk_gib=10, host="h0"), guest("new-0", **sizes)])
    # The other resources of new-0 are tiny: only ``resource`` decides.
    assert mask(state, CapacityFilter(resource), "new-0") == expected


def _anti_state(spread: Spread, anti: frozenset[str] = frozenset(), reverse: bool = False) -> ClusterState:
    hosts = [host(f"h{i}") for i in range(4)]
    guests = [
        guest("db-0", host="h0", anti_affinity=frozenset({"web"}) if reverse else frozenset()),
        guest("web-0", host="h1", spread=spread, anti_affinity=anti),
        guest("web-1", spread=spread, anti_affinity=anti),
    ]
    return ClusterState(hosts, guests)


@pytest.mark.parametrize(
    ("spread", "anti", "reverse", "expected"),
    [
        (Spread.HARD, frozenset(), False, [True, False, True, True]),  # sibling on h1
        (Spread.SOFT, frozenset(), False, [True, True, True, True]),  # soft: a weigher's business
        (Spread.NONE, frozenset({"db"}), False, [False, True, True, True]),
        (Spread.HARD, frozenset({"db"}), False, [False, False, True, True]),
        (Spread.NONE, frozenset(), True, [False, True, True, True]),  # db says never with web: symmetric
    ],
)
def test_anti_affinity_filter(spread: Spread, anti: frozenset[str], reverse: bool, expected: list[bool]) -> None:
    assert mask(_anti_state(spread, anti, reverse), AntiAffinityFilter(), "web-1") == expected


@pytest.mark.parametrize(
    ("placed", "affinity", "expected"),
    [
        ({"db-0": "h1", "db-1": "h2"}, {"db"}, [False, True, True, False]),
        ({}, {"db"}, [True, True, True, True]),  # nothing to join yet: binds nothing
        ({"db-0": "h1", "db-1": "h2", "cache-0": "h2"}, {"db", "cache"}, [False, False, True, False]),
        ({"db-0": "h1", "cache-0": "h3"}, {"db", "cache"}, [False, False, False, False]),
        ({"db-0": "h1"}, {"nosuch"}, [True, True, True, True]),
    ],
)
def test_affinity_filter(placed: dict[str, str], affinity: set[str], expected: list[bool]) -> None:
    hosts = [host(f"h{i}") for i in range(4)]
    guests = [guest("db-0"), guest("db-1"), guest("cache-0")]
    guests = [replace(g, host=placed.get(g.name)) for g in guests]
    guests.append(guest("app-0", affinity=frozenset(affinity)))
    state = ClusterState(hosts, guests)
    assert mask(state, AffinityFilter(), "app-0") == expected


def test_group_filters_see_decisions_made_during_the_run() -> None:
    state = ClusterState([host(f"h{i}") for i in range(3)],
                         [guest("web-0", spread=Spread.HARD), guest("web-1", spread=Spread.HARD)])
    view = RunView.start(state)
    assert view_mask(view, AntiAffinityFilter(), "web-1") == [True, True, True]
    view.assign(state.guest_index["web-0"], 2)
    assert view_mask(view, AntiAffinityFilter(), "web-1") == [True, True, False]
