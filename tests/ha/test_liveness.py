"""The host liveness machine: its table, illegal transitions, and link-degraded vs dead."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nonstop.core.ha.liveness import (
    TRANSITIONS,
    ClusterLiveness,
    HostState,
    IllegalTransition,
    LinkEvent,
    LivenessConfig,
    LivenessMachine,
    classify,
)

S, E = HostState, LinkEvent


@pytest.mark.parametrize(
    ("state", "event", "after"),
    [
        (S.UNKNOWN, E.ALL_LINKS_UP, S.UP),
        (S.UP, E.SOME_LINKS_DOWN, S.LINK_DEGRADED),
        (S.LINK_DEGRADED, E.ALL_LINKS_UP, S.UP),
        (S.UP, E.ALL_LINKS_SUSPECT, S.SUSPECT),
        (S.SUSPECT, E.ALL_LINKS_DEAD, S.DEAD),
        (S.SUSPECT, E.ALL_LINKS_UP, S.UP),
        (S.DEAD, E.ALL_LINKS_UP, S.UP),
        (S.UP, E.ENTER_MAINTENANCE, S.MAINTENANCE),
        (S.MAINTENANCE, E.ALL_LINKS_SUSPECT, S.MAINTENANCE),
        (S.MAINTENANCE, E.EXIT_MAINTENANCE, S.UNKNOWN),
    ],
)
def test_legal_transitions(state: HostState, event: LinkEvent, after: HostState) -> None:
    machine = LivenessMachine("h1", state)
    machine.apply(event, 1.0)
    assert machine.state is after


@pytest.mark.parametrize(
    ("state", "event"),
    [
        (S.UP, E.ALL_LINKS_DEAD),
        (S.LINK_DEGRADED, E.ALL_LINKS_DEAD),
        (S.UNKNOWN, E.ALL_LINKS_DEAD),
        (S.MAINTENANCE, E.ALL_LINKS_DEAD),
        (S.UP, E.EXIT_MAINTENANCE),
        (S.DEAD, E.EXIT_MAINTENANCE),
    ],
)
def test_illegal_transitions_raise(state: HostState, event: LinkEvent) -> None:
    machine = LivenessMachine("h1", state)
    with pytest.raises(IllegalTransition):
        machine.apply(event, 1.0)
    assert machine.state is state


def test_only_suspect_or_dead_lead_to_dead_and_maintenance_never_fails() -> None:
    for state, row in TRANSITIONS.items():
        for event, after in row.items():
            if after is S.DEAD:
                assert state in (S.SUSPECT, S.DEAD), (state, event)
            if state is S.MAINTENANCE:
                assert after in (S.MAINTENANCE, S.UNKNOWN)


@pytest.mark.parametrize(
    ("phis", "event", "down"),
    [
        ({"a": 0.1, "b": 0.2}, E.ALL_LINKS_UP, set()),
        ({"a": 9.0, "b": 0.2}, E.SOME_LINKS_DOWN, {"a"}),
        ({"a": 9.0, "b": 8.0}, E.ALL_LINKS_SUSPECT, {"a", "b"}),
        ({"a": 50.0, "b": 9.0}, E.ALL_LINKS_SUSPECT, {"a", "b"}),
        ({"a": 50.0, "b": 12.0}, E.ALL_LINKS_DEAD, {"a", "b"}),
        ({"a": 13.0}, E.ALL_LINKS_DEAD, {"a"}),
    ],
)
def test_classify(phis: dict[str, float], event: LinkEvent, down: set[str]) -> None:
    assert classify(phis, 8.0, 12.0) == (event, frozenset(down))


def feed(cluster: ClusterLiveness, host: str, links: list[str], start: float, end: float, step: float = 0.1) -> float:
    t = start
    while t < end:
        t += step
        for link in links:
            cluster.heartbeat(host, link, t)
        cluster.evaluate(t)
    return t


def test_one_link_down_on_two_link_host_is_link_degraded_not_dead() -> None:
    cluster = ClusterLiveness({"h1": ["eth0", "eth1"]})
    t = feed(cluster, "h1", ["eth0", "eth1"], 0.0, 10.0)
    assert cluster.state("h1") is S.UP
    t = feed(cluster, "h1", ["eth1"], t, t + 30.0)  # eth0's cable is cut for 30 s
    assert cluster.state("h1") is S.LINK_DEGRADED
    assert cluster.machines["h1"].down_links == {"eth0"}
    feed(cluster, "h1", ["eth0", "eth1"], t, t + 1.0)
    assert cluster.state("h1") is S.UP


def test_silent_host_goes_suspect_then_dead_within_500ms() -> None:
    cluster = ClusterLiveness({"h1": ["eth0", "eth1"], "h2": ["eth0"]})
    t = 0.0
    while t < 10.0:
        t += 0.1
        for host, links in (("h1", ["eth0", "eth1"]), ("h2", ["eth0"])):
            for link in links:
                cluster.heartbeat(host, link, t)
    cluster.evaluate(t)
    last, seen = t, []
    while cluster.state("h1") is not S.DEAD:
        t += 0.005
        cluster.heartbeat("h2", "eth0", t)
        seen += [tr for tr in cluster.evaluate(t) if tr.host == "h1"]
        assert t - last < 1.0
    assert [tr.after for tr in seen] == [S.SUSPECT, S.DEAD]
    assert 0.3 <= seen[0].at - last <= seen[1].at - last <= 0.5
    assert cluster.state("h2") is S.UP


def test_late_tick_passes_through_suspect() -> None:
    cluster = ClusterLiveness({"h1": ["eth0"]})
    t = feed(cluster, "h1", ["eth0"], 0.0, 5.0)
    transitions = cluster.evaluate(t + 5.0)
    assert [tr.after for tr in transitions] == [S.SUSPECT, S.DEAD]


def test_maintenance_host_is_never_suspect_or_dead() -> None:
    cluster = ClusterLiveness({"h1": ["eth0"]})
    t = feed(cluster, "h1", ["eth0"], 0.0, 5.0)
    cluster.set_maintenance("h1", True, t)
    for dt in (0.5, 5.0, 500.0):
        cluster.evaluate(t + dt)
        assert cluster.state("h1") is S.MAINTENANCE
    cluster.set_maintenance("h1", False, t + 501)
    assert cluster.state("h1") is S.UNKNOWN
    t = feed(cluster, "h1", ["eth0"], t + 501, t + 502)
    assert cluster.state("h1") is S.UP


def test_never_heard_host_becomes_suspect_then_dead_after_grace() -> None:
    cluster = ClusterLiveness({"h1": ["eth0"]}, LivenessConfig(startup_grace=2.0), started_at=100.0)
    assert cluster.evaluate(101.0) == []
    assert [tr.after for tr in cluster.evaluate(102.5)] == [S.SUSPECT]
    assert [tr.after for tr in cluster.evaluate(104.5)] == [S.DEAD]


@given(st.lists(st.sampled_from(list(LinkEvent)), max_size=50))
def test_machine_state_is_always_from_the_table(events: list[LinkEvent]) -> None:
    machine = LivenessMachine("h1")
    for i, event in enumerate(events):
        before = machine.state
        try:
            machine.apply(event, float(i))
        except IllegalTransition:
            assert event not in TRANSITIONS[before]
            assert machine.state is before
        else:
            assert machine.state is TRANSITIONS[before][event]


def test_hosts_and_links_can_change_at_run_time() -> None:
    cluster = ClusterLiveness({"h1": ["eth0"]})
    t = feed(cluster, "h1", ["eth0"], 0.0, 3.0)
    cluster.set_links("h1", ["eth0", "eth1"])  # a second link was cabled
    cluster.set_links("h2", ["eth0"], now=t)  # a host joined: its grace starts now
    t = feed(cluster, "h1", ["eth0", "eth1"], t, t + 1.0)
    assert cluster.state("h1") is S.UP
    assert cluster.state("h2") is S.UNKNOWN
    feed(cluster, "h1", ["eth0", "eth1"], t, t + 1.5)
    assert cluster.state("h2") is S.SUSPECT  # never heard, grace over
    cluster.remove_host("h2")
    assert "h2" not in cluster.machines and not cluster.heartbeat("h2", "eth0", t)
    with pytest.raises(ValueError):
        cluster.set_links("h1", [])


def test_config_from_the_spec_policy_scales_with_the_interval() -> None:
    from nonstop.core.ha.liveness import liveness_config
    from nonstop.core.ha.phi import PhiAccrualDetector
    from nonstop.core.spec import HaPolicy

    assert liveness_config(HaPolicy()) == LivenessConfig()
    for interval in (0.05, 0.1, 1.0):
        config = liveness_config(HaPolicy(heartbeat_interval=interval))
        detector = PhiAccrualDetector(config.phi)
        t = 0.0
        for _ in range(100):
            t += interval
            detector.heartbeat(t)
        assert 3.0 * interval <= detector.silence_for_phi(config.phi.threshold) <= 5.0 * interval
    assert liveness_config(HaPolicy(phi_threshold=10)).dead_threshold == 15
