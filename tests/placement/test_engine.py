"""The scheduler loop: order, ties, weights, explanations, reasons, and the two paths agreeing."""

from __future__ import annotations

from nonstop.core.placement import ClusterState, HostCondition, SchedulerConfig, Spread, place
from nonstop.core.placement.results import MAX_NAMES

from .builders import guest, host


def test_higher_priority_gets_the_last_room_regardless_of_name() -> None:
    state = ClusterState([host("h0", cpus=2, ratios=(1.0, 1.0, 1.0))],
                         [guest("aaa-0", cpus=2, priority=100), guest("zzz-0", cpus=2, priority=500)])
    result = place(state)
    assert dict(result.placed) == {"zzz-0": "h0"}
    assert [u.guest for u in result.unplaced] == ["aaa-0"]
    assert "CpuCapacityFilter removed 1 (h0)" in result.unplaced[0].reason


def test_equal_scores_go_to_the_lowest_host_index() -> None:
    state = ClusterState([host(f"h{i}") for i in range(5)], [guest("web-0")])
    assert dict(place(state).placed) == {"web-0": "h0"}


def test_spread_by_default_and_pack_when_weighted() -> None:
    hosts = [host(f"h{i}") for i in range(3)]
    guests = [guest(f"g{i}-0", spread=Spread.NONE) for i in range(3)]
    spread = place(ClusterState(hosts, guests))
    assert sorted(h for _, h in spread.placed) == ["h0", "h1", "h2"]
    pack_only = {"SpreadWeigher": 0.0, "BalanceWeigher": 0.0, "HaReserveWeigher": 0.0, "PackWeigher": 1.0}
    packed = place(ClusterState(hosts, guests), config=SchedulerConfig.default(hosts=3, weights=pack_only))
    assert {h for _, h in packed.placed} == {"h0"}


def test_soft_spread_shares_a_host_only_when_nothing_else_fits() -> None:
    hosts = [host("h0", cpus=8), host("h1", cpus=1, ratios=(1.0, 1.0, 1.0))]
    guests = [guest(f"web-{i}", cpus=1, spread=Spread.SOFT) for i in range(3)]
    result = place(ClusterState(hosts, guests))
    assert dict(result.placed) == {"web-0": "h0", "web-1": "h1", "web-2": "h0"}
    hard = [guest(f"web-{i}", cpus=1, spread=Spread.HARD) for i in range(3)]
    result = place(ClusterState(hosts, hard))
    assert len(result.placed) == 2 and [u.guest for u in result.unplaced] == ["web-2"]
    assert "AntiAffinityFilter removed" in result.unplaced[0].reason


def test_affine_group_is_placed_first_even_with_lower_priority() -> None:
    hosts = [host(f"h{i}") for i in range(4)]
    guests = [guest("app-0", priority=900, affinity=frozenset({"db"})), guest("app-1", priority=900,
              affinity=frozenset({"db"})), guest("db-0", priority=100)]
    result = place(ClusterState(hosts, guests))
    assert result.placed[0][0] == "db-0"
    db_host = dict(result.placed)["db-0"]
    assert dict(result.placed)["app-0"] == db_host == dict(result.placed)["app-1"]


def test_pending_subset_and_existing_usage() -> None:
    hosts = [host("h0", cpus=2, ratios=(1.0, 1.0, 1.0)), host("h1", cpus=2, ratios=(1.0, 1.0, 1.0))]
    guests = [guest("old-0", cpus=2, host="h0"), guest("new-0", cpus=2), guest("later-0", cpus=1)]
    result = place(ClusterState(hosts, guests), ["new-0"])
    assert dict(result.placed) == {"new-0": "h1"}
    assert result.state.placement_map() == {"old-0": "h0", "new-0": "h1"}


def test_explanation_counts_every_removed_host_and_caps_names() -> None:
    hosts = [host(f"m{i:02d}", condition=HostCondition.MAINTENANCE) for i in range(15)]
    hosts += [host("small", cpus=1, ratios=(1.0, 1.0, 1.0)), host("big"), host("bigger", cpus=16)]
    state = ClusterState(hosts, [guest("web-0", cpus=2)])
    result = place(state, explain=["web-0"])
    explanation = result.explanations["web-0"]
    steps = {s.filter: s for s in explanation.filters}
    assert steps["HostStateFilter"].removed == 15
    assert len(steps["HostStateFilter"].removed_hosts) == MAX_NAMES
    assert steps["CpuCapacityFilter"].removed_hosts == ("small",)
    assert steps["CpuCapacityFilter"].remaining == 2
    assert explanation.chosen is not None and explanation.chosen.host == dict(result.placed)["web-0"] == "bigger"
    assert [r.host for r in explanation.runners_up] == ["big"]
    names = [s.weigher for s in explanation.chosen.scores]
    assert names == ["SpreadWeigher", "PackWeigher", "BalanceWeigher", "HaReserveWeigher", "SoftSpreadWeigher"]
    total = sum(s.weight * s.normalized for s in explanation.chosen.scores)
    assert abs(total - explanation.chosen.total) < 1e-9
    assert all(0.0 <= s.normalized <= 1.0 for s in explanation.chosen.scores)


def test_unplaceable_explanation_names_the_filters() -> None:
    hosts = [host("h0", networks=frozenset({"a"})), host("h1", condition=HostCondition.FAILED)]
    state = ClusterState(hosts, [guest("web-0", networks=frozenset({"b"}))])
    result = place(state, explain=["web-0"])
    explanation = result.explanations["web-0"]
    assert explanation.chosen is None
    assert explanation.reason == result.unplaced[0].reason
    assert "HostStateFilter removed 1 (h1)" in explanation.reason
    assert "NetworkFilter removed 1 (h0)" in explanation.reason


def test_degraded_hosts_take_no_guests_when_the_policy_says_so() -> None:
    hosts = [host("h0", condition=HostCondition.DEGRADED), host("h1", cpus=1, ratios=(1.0, 1.0, 1.0))]
    guests = [guest("web-0")]
    assert dict(place(ClusterState(hosts, guests)).placed) == {"web-0": "h0"}
    strict = SchedulerConfig.default(hosts=2, accept_degraded=False)
    assert dict(place(ClusterState(hosts, guests), config=strict).placed) == {"web-0": "h1"}


def test_cached_and_explaining_paths_agree_on_a_mixed_cluster() -> None:
    hosts = [host(f"h{i}", cpus=4 + i % 3, mem_gib=8 + 4 * (i % 4), networks=frozenset({"a"} if i % 2 else {"a", "b"}))
             for i in range(12)]
    guests = []
    for g in range(20):
        spread = (Spread.HARD, Spread.SOFT, Spread.NONE)[g % 3]
        nets = frozenset({"b"}) if g % 5 == 0 else frozenset()
        for i in range(3):
            guests.append(guest(f"grp{g:02d}-{i}", cpus=1 + g % 2, mem_gib=1 + g % 4, spread=spread, networks=nets,
                                priority=100 * (1 + g % 3), anti_affinity=frozenset({f"grp{g - 1:02d}"}) if g % 4 == 1
                                else frozenset()))
    state = ClusterState(hosts, guests)
    cached = place(state, use_cache=True)
    full = place(state, use_cache=False)
    explained = place(state, explain=state.guest_names)
    assert cached.placed == full.placed == explained.placed
    assert [u.guest for u in cached.unplaced] == [u.guest for u in full.unplaced]
