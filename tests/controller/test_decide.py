"""``decide``: tables, scripted sequences with a fake clock, and properties (pure, milliseconds)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parent))

from world import World, spec  # noqa: E402

from nonstop.core.controller import commands as c  # noqa: E402
from nonstop.core.controller.decide import decide  # noqa: E402
from nonstop.core.controller.memory import ControllerMemory  # noqa: E402
from nonstop.core.controller.ops import Step  # noqa: E402
from nonstop.core.controller.placing import fits_on  # noqa: E402
from nonstop.core.intents import IntentRequest  # noqa: E402


def placed_world(**kw: object) -> World:
    w = World(spec(**kw))  # type: ignore[arg-type]
    w.run(1.0)
    assert len(w.desired) == sum(g.replicas for g in w.spec.guests)
    return w


# ---------------------------------------------------------------------- conditions (table)

@pytest.mark.parametrize(("liveness", "maintenance", "failover", "expected"), [
    ("up", False, False, "up"),
    ("link-degraded", False, False, "up"),
    ("dead", False, False, "failed"),
    ("suspect", False, False, "failed"),
    ("unknown", False, False, "failed"),
    ("up", True, False, "maintenance"),
    ("dead", True, False, "maintenance"),
    ("up", False, True, "failed"),
])
def test_host_conditions(liveness: str, maintenance: bool, failover: bool, expected: str) -> None:
    w = placed_world()
    w.liveness["h1"] = liveness
    if maintenance:
        w.maintenance["h1"] = True
    if failover:
        from nonstop.core.controller.ops import FailoverOp
        w.failovers["f"] = FailoverOp("f", "h1", Step.FENCING, detected_at=w.now)
    assert w.view().conditions()["h1"] == expected


# ---------------------------------------------------------------------- scripted sequences

def test_host_death_fence_failover_and_failback_after_the_window() -> None:
    w = placed_world(stability="10s")
    before = w.hosts_of()
    victims = sorted(g for g, h in before.items() if h == "h1")
    w.liveness["h1"] = "dead"
    w.run(2.0)
    assert [e.subject for e in w.events("host-dead")] == ["h1"]
    assert len(w.of(c.Fence)) == 1
    op = next(iter(w.failovers.values()))
    assert op.step is Step.DONE and {g for g, _ in op.moves} == set(victims)
    assert all(h != "h1" for h in w.hosts_of().values())
    # the host comes back: nothing moves before the stability window, then its guests go home
    w.liveness["h1"] = "up"
    moved_before = len(w.of(c.MoveGuest))
    w.run(9.0)
    assert len(w.of(c.MoveGuest)) == moved_before
    w.run(2.0)
    assert sorted(g for g, h in w.hosts_of().items() if h == "h1") == victims
    assert w.events("failback")


def test_fence_failure_retries_and_never_moves_guests() -> None:
    w = placed_world()
    w.fence_works = False
    on_h1 = {g for g, h in w.hosts_of().items() if h == "h1"}
    w.liveness["h1"] = "dead"
    w.run(5.0)
    assert len(w.of(c.Fence)) >= 3  # retried with back-off
    assert {g for g, h in w.hosts_of().items() if h == "h1"} == on_h1  # unconfirmed fence: nothing moved
    assert not w.of(c.ReleaseHost)
    w.fence_works = True
    w.run(12.0)
    assert not any(h == "h1" for h in w.hosts_of().values())


def test_host_heard_again_before_the_fence_aborts_the_failover() -> None:
    w = placed_world()
    w.fence_works = False
    w.liveness["h1"] = "dead"
    w.run(0.5)
    w.liveness["h1"] = "up"
    w.run(3.0)
    op = next(iter(w.failovers.values()))
    assert op.step is Step.ABORTED
    assert w.events("failover-aborted")


def test_a_flapping_host_gets_nothing_back() -> None:
    w = placed_world(stability="2s")
    for _ in range(4):
        w.liveness["h1"] = "dead"
        w.run(2.0)
        w.liveness["h1"] = "up"
        w.run(1.0)
    moves_home = [m for m in w.of(c.MoveGuest) if m.target == "h1"]
    w.run(5.0)  # 4 failures within 10 windows (20 s): held until they age out
    assert [m for m in w.of(c.MoveGuest) if m.target == "h1"] == moves_home
    assert any("flapping" in e.reason for e in w.events("failback-check"))


def test_a_migrate_intent_mid_failover_waits_for_nothing_and_is_refused_for_a_busy_guest() -> None:
    w = placed_world(web=1)
    w.fence_works = False
    web_host = w.hosts_of()["web-0"]
    w.liveness[web_host] = "dead"
    w.run(0.5)
    w.submit(IntentRequest(id="i1", kind="migrate", requester="patcher", reason="patch", created_at=w.now,
                           guest="web-0"))
    w.run(0.5)
    assert w.outcomes["i1"].status == "refused" and "failed over" in w.outcomes["i1"].message
    assert w.hosts_of()["web-0"] == web_host


def test_migrate_intent_moves_a_vm_live_and_reports_done() -> None:
    w = placed_world(web=1)
    source = w.hosts_of()["web-0"]
    target = next(h.name for h in w.spec.hosts if h.name != source)
    w.submit(IntentRequest(id="i1", kind="migrate", requester="api", reason="operator", created_at=w.now,
                           guest="web-0", target=target))
    w.run(1.0)
    assert w.of(c.RequestMigration) and w.of(c.CompleteMigration)
    assert not w.of(c.MoveGuest)  # live: no new epoch
    assert w.hosts_of()["web-0"] == target
    assert w.outcomes["i1"].status == "done"


def test_migrate_intent_to_a_host_that_does_not_fit_is_refused_with_the_filter() -> None:
    w = placed_world(memory="1GiB", api=6)
    full = max({h for h in w.hosts_of().values()}, key=lambda h: list(w.hosts_of().values()).count(h))
    guest = next(g for g, h in w.hosts_of().items() if h != full)
    w.maintenance[full] = False  # maintenance without evacuation: the filter refuses new guests
    w.submit(IntentRequest(id="i1", kind="migrate", requester="api", reason="x", created_at=w.now,
                           guest=guest, target=full))
    w.run(0.4)
    assert w.outcomes["i1"].status == "refused"
    assert "removed by" in w.outcomes["i1"].message


def test_replace_intent_changes_the_definition_on_another_host_and_never_the_same() -> None:
    w = placed_world(hosts=1, api=1)
    w.submit(IntentRequest(id="i1", kind="replace", requester="guest-update", reason="v2", created_at=w.now,
                           guest="api-0", avoid="h1", changes={"command": ["v2"]}))
    w.run(0.4)
    assert w.outcomes["i1"].status == "refused"
    assert w.desired["api-0"].command != ("v2",)


def test_maintenance_intent_evacuates_and_leaving_it_reports() -> None:
    w = placed_world()
    w.submit(IntentRequest(id="m1", kind="maintenance", requester="api", reason="disk", created_at=w.now,
                           host="h2", enter=True, evacuate=True))
    w.run(1.0)
    assert w.outcomes["m1"].status == "done"
    assert not any(h == "h2" for h in w.hosts_of().values())
    assert w.events("evacuated")
    w.submit(IntentRequest(id="m2", kind="maintenance", requester="api", reason="done", created_at=w.now,
                           host="h2", enter=False))
    w.run(0.4)
    assert "h2" not in w.maintenance and [e.reason for e in w.events("maintenance")][-1] == "left"


def test_memory_survives_a_restart_and_resumes_the_failback_window() -> None:
    w = placed_world(stability="10s")
    w.liveness["h1"] = "dead"
    w.run(2.0)
    w.liveness["h1"] = "up"
    w.run(6.0)
    # a successor controller: same store records, memory read back from its persisted form
    w.memory = ControllerMemory.from_dict(w.memory.to_dict())
    w.liveness = {h: ("unknown" if h == "h1" else s) for h, s in w.liveness.items()}
    w.run(0.4)  # not heard yet by the successor: the window is not restarted
    w.liveness["h1"] = "up"
    w.run(4.0)
    assert [m for m in w.of(c.MoveGuest) if m.target == "h1"], "failback happened at the original window"


def test_a_successor_does_not_fail_over_a_host_that_is_still_down() -> None:
    w = placed_world()
    w.liveness["h1"] = "dead"
    w.run(2.0)
    w.memory = ControllerMemory.from_dict(w.memory.to_dict())
    w.run(2.0)
    assert len(w.events("host-dead")) == 1 and len(w.failovers) == 1


def test_unknown_guests_are_removed_and_pending_wait_for_every_host() -> None:
    w = World(spec())
    w.liveness["h3"] = "unknown"
    w.now = 2.0  # within 2 × startup grace of leading
    assert not [x for x in w.step() if isinstance(x, c.PlaceGuest)]
    w.now = 100.0
    assert [x for x in w.step() if isinstance(x, c.PlaceGuest)]


# ---------------------------------------------------------------------- properties

@st.composite
def scenarios(draw: st.DrawFn) -> tuple[World, list[str]]:
    w = World(spec(hosts=draw(st.integers(2, 4)), api=draw(st.integers(1, 6)), web=draw(st.integers(0, 2)),
                   memory=draw(st.sampled_from(["1GiB", "2GiB"]))))
    w.run(0.6)
    states = draw(st.lists(st.sampled_from(["up", "dead", "suspect", "unknown", "link-degraded"]),
                           min_size=len(w.spec.hosts), max_size=len(w.spec.hosts)))
    for h, s in zip(w.spec.hosts, states, strict=True):
        w.liveness[h.name] = s
    w.fence_works = draw(st.booleans())
    if draw(st.booleans()):
        w.maintenance[w.spec.hosts[0].name] = True
    return w, states


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios(), st.integers(1, 12))
def test_properties_over_random_sequences(scenario: tuple[World, list[str]], steps: int) -> None:
    w, _ = scenario
    for _ in range(steps):
        view = w.view()
        decision = decide(view, w.memory)
        again = decide(view, w.memory)
        assert decision == again, "decisions are deterministic for equal input"
        per_guest: dict[str, int] = {}
        unconfirmed = {op.host for op in view.failovers.values() if op.step in (Step.DETECTED, Step.FENCING,
                                                                                  Step.FENCE_FAILED)}
        assignments = view.assignments()
        conditions = view.conditions()
        for cmd in decision.commands:
            if isinstance(cmd, (c.PlaceGuest, c.MoveGuest, c.RequestMigration)):
                per_guest[cmd.guest] = per_guest.get(cmd.guest, 0) + 1
                target = cmd.host if isinstance(cmd, c.PlaceGuest) else cmd.target
                assert conditions.get(target) in ("up", "degraded"), f"{cmd} onto a {conditions.get(target)} host"
                # every placement filter passes for the target, against the cluster as the commands
                # before this one left it
                why = fits_on(view.spec, assignments, conditions, cmd.guest, target)
                assert why is None, f"{cmd}: {why}"
                assignments[cmd.guest] = target
            if isinstance(cmd, (c.MoveGuest, c.RequestMigration)):
                assert cmd.source not in unconfirmed, f"{cmd}: its host's fence is not confirmed"
        assert all(n == 1 for n in per_guest.values()), f"a guest got two hosts in one decision: {per_guest}"
        w.step()
