"""Failover, admission control, admit and rebalance on small hand-made clusters."""

from __future__ import annotations

import pytest

from nonstop.core.placement import ClusterState, HostCondition, Spread, admission, admit, plan_failover, plan_rebalance

from .builders import guest, host, recomputed_usage

ONE = (1.0, 1.0, 1.0)


def three_hosts(guests_per_host: int, cpus: int = 4) -> ClusterState:
    hosts = [host(f"h{i}", cpus=cpus, ratios=ONE) for i in range(3)]
    guests = [guest(f"g{h}{i}-0", cpus=1, host=f"h{h}", priority=100 + 10 * i)
              for h in range(3) for i in range(guests_per_host)]
    return ClusterState(hosts, guests)


def test_failover_moves_every_guest_by_priority() -> None:
    state = three_hosts(2)
    plan = plan_failover(state, ["h0"])
    assert plan.ok
    assert [m.guest for m in plan.moves] == ["g01-0", "g00-0"]  # priority 110 before 100
    assert {m.source for m in plan.moves} == {"h0"}
    assert {m.target for m in plan.moves} == {"h1", "h2"}  # spread over the survivors
    assert plan.state.condition[state.host_index["h0"]] == HostCondition.FAILED
    assert (recomputed_usage(plan.state) <= plan.state.effective + 1e-9).all()


def test_failover_reports_what_does_not_fit_and_why() -> None:
    state = three_hosts(3)  # 3 of 4 cpus used on each host: 2 spare cpus for 3 guests
    plan = plan_failover(state, ["h2"])
    assert not plan.ok
    assert [u.guest for u in plan.unplaced] == ["g20-0"]  # the lowest priority is the one left out
    assert "HostStateFilter removed 1 (h2)" in plan.unplaced[0].reason
    assert "CpuCapacityFilter removed 2 (h0, h1)" in plan.unplaced[0].reason


def test_admission_yes_and_no_agree_with_failover() -> None:
    ok = admission(three_hosts(2))
    assert ok.tolerates and ok.exact and len(ok.worst_case) == 1
    assert ok.headroom["cpu"] == pytest.approx((8 - 6) / 8)
    full = admission(three_hosts(3))
    assert not full.tolerates
    assert full.worst_case == ("h0",) and "cannot restart" in full.reason
    assert full.headroom["cpu"] == pytest.approx((8 - 9) / 8)
    assert [u.guest for u in full.unplaced] == ["g00-0"]


def test_admission_hard_spread_needs_a_spare_host() -> None:
    hosts = [host(f"h{i}") for i in range(3)]
    guests = [guest(f"web-{i}", spread=Spread.HARD, host=f"h{i}") for i in range(3)]
    assert not admission(ClusterState(hosts, guests)).tolerates
    assert admission(ClusterState(hosts + [host("h3")], guests)).tolerates


@pytest.mark.parametrize("prove", [True, False])
def test_admission_two_failures_enumerated(prove: bool) -> None:
    state = three_hosts(1)
    report = admission(state, 2, prove=prove)
    assert report.tolerates and report.exact and len(report.worst_case) == 2
    state4 = ClusterState([host(f"h{i}", cpus=2, ratios=ONE) for i in range(4)],
                          [guest(f"g{i}-0", cpus=1, host=f"h{i}") for i in range(4)])
    assert admission(state4, 2, prove=prove).tolerates  # 2 spare cpus left for 2 displaced guests
    assert not admission(state4, 3, prove=prove).tolerates


def test_admission_conservative_bound_says_so() -> None:
    hosts = [host(f"h{i}", cpus=16, ratios=ONE) for i in range(8)]
    state = ClusterState(hosts, [guest(f"g{i}-0", host=f"h{i}") for i in range(8)])
    report = admission(state, 2, combination_limit=5)
    assert report.tolerates and not report.exact and "conservative" in report.reason
    tight = ClusterState([host(f"h{i}", cpus=1, ratios=ONE) for i in range(8)],
                         [guest(f"g{i}-0", host=f"h{i}") for i in range(8)])
    report = admission(tight, 2, combination_limit=5)
    assert not report.tolerates and not report.exact and "aggregate capacity is short" in report.reason


def test_admit_refuses_a_guest_that_breaks_n_plus_one() -> None:
    state = three_hosts(2)  # 6 of 12 cpus: one host failure leaves 8 for 6
    accepted = admit(state, [guest("new-0", cpus=1)])
    assert accepted.admitted, accepted.reason
    # Both fit (4 + 4 + 2 of 12 cpus), but then no host's guests fit on the other two.
    too_much = admit(state, [guest("big-0", cpus=2), guest("big-1", cpus=2)])
    assert not too_much.admitted
    assert "break tolerance of 1 host failure" in too_much.reason
    unplaceable = admit(state, [guest("huge-0", cpus=5)])
    assert not unplaceable.admitted and "cannot place huge-0" in unplaceable.reason


def test_rebalance_evens_out_a_lopsided_cluster() -> None:
    hosts = [host(f"h{i}", cpus=6, ratios=ONE) for i in range(3)]
    state = ClusterState(hosts, [guest(f"g{i}-0", cpus=1, host="h0") for i in range(6)])
    plan = plan_rebalance(state, 0.15)
    assert plan.reached and plan.deviation_before == pytest.approx(2 / 3)
    assert plan.deviation_after <= 0.15
    assert len(plan.moves) == 4  # 6/0/0 -> 2/2/2 needs exactly four moves
    assert (recomputed_usage(plan.state) <= plan.state.effective).all()
    assert plan_rebalance(plan.state, 0.15).moves == ()


def test_rebalance_respects_filters_and_says_when_it_cannot() -> None:
    hosts = [host("h0", cpus=6, ratios=ONE), host("h1", cpus=6, ratios=ONE, networks=frozenset({"x"}))]
    guests = [guest(f"g{i}-0", cpus=1, host="h0", networks=frozenset({"y"})) for i in range(4)]
    plan = plan_rebalance(ClusterState(hosts, guests), 0.1)
    assert not plan.reached and plan.moves == ()
    assert "no single guest move" in plan.reason


def test_failover_simulator_agrees_with_plan_failover_and_rolls_back_exactly() -> None:
    import numpy as np

    from nonstop.core.placement import SchedulerConfig, place
    from nonstop.core.placement.engine import Engine
    from nonstop.core.placement.failover import FailoverSimulator
    from nonstop.core.placement.view import RunView

    hosts = [host(f"h{i:02d}", cpus=6 + 2 * (i % 3), mem_gib=16 + 2 * (i % 4), ratios=ONE) for i in range(24)]
    guests = []
    for g in range(40):
        spread = (Spread.HARD, Spread.SOFT, Spread.NONE)[g % 3]
        affinity = frozenset({f"grp{g - 1:02d}"}) if g % 7 == 3 else frozenset()
        for i in range(3):
            guests.append(guest(f"grp{g:02d}-{i}", cpus=1 + g % 2, mem_gib=1 + g % 3, spread=spread,
                                affinity=affinity, priority=100 + 50 * (g % 3)))
    state = place(ClusterState(hosts, guests)).state
    config = SchedulerConfig.for_state(state)
    simulator = FailoverSimulator(state, config)
    verdicts = []
    for h, name in enumerate(state.host_names):
        tolerated = not simulator.unplaced(np.array([h]))
        assert tolerated == plan_failover(state, [name], config).ok
        verdicts.append(tolerated)
    assert np.array_equal(simulator.view.used, state.used)
    assert np.array_equal(simulator.view.assignment, state.assignment)
    fresh = Engine(RunView.start(state, config.accept_degraded), config)
    fresh.prepare(set(state.klass.tolist()))
    assert simulator.engine._cache is not None and fresh._cache is not None
    assert np.array_equal(simulator.engine._cache, fresh._cache)  # bit for bit, after 24 what-ifs
    assert admission(state, 1, config, prove=False).tolerates == all(verdicts)
    assert 0 < sum(verdicts) < len(verdicts), verdicts  # both outcomes occur: the comparison means something
