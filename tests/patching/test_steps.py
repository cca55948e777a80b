"""The rollout step machine: table rows (``HOST_STEPS`` and ``ROLLOUT``, ``Machine``s of the one
operation model), batches, failure/resume/abort, the operation header (status as its step,
progress, reason), and properties under random outcome sequences (hypothesis). Pure: no store,
no clock."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nonstop.core.operations import IllegalTransition
from nonstop.core.patching.steps import (
    ACTIVE,
    ACTIVE_ORDER,
    HOST_STEPS,
    ROLLOUT,
    Abort,
    Finished,
    Moved,
    Outcome,
    Resume,
    RolloutStatus,
    RunStep,
    StaleResult,
    Step,
    StepResult,
    Tick,
    new_rollout,
    resume_event,
    transition,
)


def _rollout(batches: tuple[tuple[str, ...], ...] = (("h1",), ("h2",), ("h3",))):
    return new_rollout("r1", "L2", batches, 0.0, levels={h: "L1" for b in batches for h in b})


def _run_ok(rollout, host, now):
    step = rollout.hosts[host].step
    return transition(rollout, StepResult(host, step, ok=True), now)


@pytest.mark.parametrize(("step", "outcome", "after"), [
    (Step.PENDING, Outcome.START, Step.PRECHECK),
    (Step.PRECHECK, Outcome.OK, Step.ENTER_MAINTENANCE),
    (Step.ENTER_MAINTENANCE, Outcome.OK, Step.DRAIN),
    (Step.DRAIN, Outcome.OK, Step.EVACUATE),
    (Step.EVACUATE, Outcome.OK, Step.PATCH),
    (Step.PATCH, Outcome.OK, Step.AWAIT_AGENT),
    (Step.AWAIT_AGENT, Outcome.OK, Step.POSTCHECK),
    (Step.POSTCHECK, Outcome.OK, Step.EXIT_MAINTENANCE),
    (Step.EXIT_MAINTENANCE, Outcome.OK, Step.FAILBACK),
    (Step.FAILBACK, Outcome.OK, Step.DONE),
    (Step.PATCH, Outcome.FAILED, Step.FAILED),
    (Step.PATCH, Outcome.ABORT, Step.ABORTED),
    (Step.PENDING, Outcome.ABORT, Step.ABORTED),
    (Step.FAILED, Outcome.ABORT, Step.ABORTED),
])
def test_table_rows(step: Step, outcome: Outcome, after: Step) -> None:
    assert HOST_STEPS.next(step.value, outcome.value) == after.value


@pytest.mark.parametrize(("step", "outcome"), [
    (Step.DONE, Outcome.OK), (Step.ABORTED, Outcome.RESUME), (Step.PENDING, Outcome.OK),
    (Step.FAILED, Outcome.OK), (Step.PATCH, Outcome.START), (Step.DONE, Outcome.ABORT),
    (Step.FAILED, Outcome.RESUME),  # a resume names the step it goes back to
])
def test_illegal_rows_are_absent(step: Step, outcome: Outcome) -> None:
    assert not HOST_STEPS.allows(step.value, outcome.value)
    with pytest.raises(IllegalTransition) as info:
        HOST_STEPS.next(step.value, outcome.value, "h1")
    assert info.value.kind == "patch-rollout" and info.value.subject == "h1"


def test_every_active_step_can_fail_abort_and_be_resumed() -> None:
    for step in ACTIVE:
        assert HOST_STEPS.next(step.value, Outcome.FAILED.value) == Step.FAILED.value
        assert HOST_STEPS.next(step.value, Outcome.ABORT.value) == Step.ABORTED.value
        assert HOST_STEPS.next(Step.FAILED.value, resume_event(step)) == step.value
    assert HOST_STEPS.is_final(Step.DONE.value) and HOST_STEPS.is_final(Step.ABORTED.value)


@pytest.mark.parametrize(("status", "event", "after"), [
    ("running", "fail", "failed"), ("running", "complete", "complete"), ("running", "abort", "aborted"),
    ("failed", "resume", "running"), ("failed", "abort", "aborted"),
])
def test_rollout_status_rows(status: str, event: str, after: str) -> None:
    assert ROLLOUT.next(status, event) == after


@pytest.mark.parametrize(("status", "event"), [("complete", "abort"), ("aborted", "resume"), ("failed", "complete")])
def test_rollout_status_illegal_rows(status: str, event: str) -> None:
    with pytest.raises(IllegalTransition):
        ROLLOUT.next(status, event)


def test_the_rollout_is_an_operation_whose_step_is_its_status() -> None:
    r = _rollout()
    assert r.header.kind == "patch-rollout" and r.header.id == "r1" and r.header.step == "running"
    assert r.header.progress == {"running": 0.0} and "to L2" in r.header.reason
    r, _ = transition(r, Tick(), 1.0)
    while r.hosts["h1"].step is not Step.PATCH:
        r, _ = _run_ok(r, "h1", 2.0)
    r, _ = transition(r, StepResult("h1", Step.PATCH, ok=False, error="exit code 3"), 3.0)
    assert r.header.step == "failed" and r.header.progress["failed"] == 3.0 and r.header.updated_at == 3.0
    assert r.header.reason == "failed on h1 at patch: exit code 3"
    r, _ = transition(r, Resume(), 4.0)
    assert r.status is RolloutStatus.RUNNING and r.header.progress == {"running": 4.0, "failed": 3.0}


def test_batches_run_one_after_the_other_and_complete() -> None:
    r, actions = transition(_rollout(), Tick(), 1.0)
    assert actions == (RunStep("h1", Step.PRECHECK),)
    now = 2.0
    while r.hosts["h1"].step is not Step.DONE:
        assert r.hosts["h2"].step is Step.PENDING
        r, actions = _run_ok(r, "h1", now)
        now += 1
    assert actions == (RunStep("h2", Step.PRECHECK),)
    for host in ("h2", "h3"):
        while r.hosts[host].step is not Step.DONE:
            r, actions = _run_ok(r, host, now)
            now += 1
    assert r.status is RolloutStatus.COMPLETE
    assert isinstance(actions[-1], Finished) and actions[-1].status is RolloutStatus.COMPLETE
    assert [s for s, _ in r.hosts["h1"].durations] == [s.value for s in ACTIVE_ORDER]
    assert all(d == 1.0 for _, d in r.hosts["h3"].durations)


def test_failure_stops_the_rollout_and_resume_retries_the_step() -> None:
    r, _ = transition(_rollout(), Tick(), 0.0)
    while r.hosts["h1"].step is not Step.DONE:
        r, _ = _run_ok(r, "h1", 1.0)
    while r.hosts["h2"].step is not Step.PATCH:
        r, _ = _run_ok(r, "h2", 2.0)
    r, actions = transition(r, StepResult("h2", Step.PATCH, ok=False, error="exit 3", output="disk full"), 3.0)
    assert r.status is RolloutStatus.FAILED
    assert r.hosts["h2"].step is Step.FAILED and r.hosts["h2"].failed_step is Step.PATCH
    assert r.hosts["h2"].error == "exit 3" and r.hosts["h2"].output == "disk full"
    assert r.hosts["h3"].step is Step.PENDING
    assert isinstance(actions[-1], Finished) and "h2 at patch: exit 3" in actions[-1].reason
    r, actions = transition(r, Tick(), 4.0)  # nothing starts while a host is failed
    assert r.hosts["h3"].step is Step.PENDING and not [a for a in actions if isinstance(a, RunStep)]
    r, actions = transition(r, Resume(), 5.0)
    assert r.hosts["h2"].step is Step.PATCH and r.hosts["h2"].error is None
    assert actions == (RunStep("h2", Step.PATCH),)
    assert r.status is RolloutStatus.RUNNING


def test_abort_ends_every_unfinished_host() -> None:
    r, _ = transition(_rollout(), Tick(), 0.0)
    r, _ = _run_ok(r, "h1", 1.0)
    r, actions = transition(r, Abort(), 2.0)
    assert {p.step for p in r.hosts.values()} == {Step.ABORTED}
    assert r.status is RolloutStatus.ABORTED and isinstance(actions[-1], Finished)


def test_a_stale_result_is_refused() -> None:
    r, _ = transition(_rollout(), Tick(), 0.0)
    with pytest.raises(StaleResult):
        transition(r, StepResult("h1", Step.PATCH, ok=True), 1.0)


def test_illegal_transition_is_typed() -> None:
    r, _ = transition(_rollout(), Tick(), 0.0)
    r, _ = transition(r, Abort(), 1.0)
    with pytest.raises(IllegalTransition):
        from nonstop.core.patching.steps import _move

        _move(r.hosts["h1"], Outcome.OK, 2.0)


def _through_json(r):
    import json

    from nonstop.core.patching.steps import Rollout

    return Rollout.from_body(r.header, json.loads(json.dumps(r.body())))


def test_round_trip_through_json_shape() -> None:
    r, _ = transition(_rollout((("h1", "h2"), ("h3",))), Tick(), 0.0)
    r, _ = transition(r, StepResult("h1", Step.PRECHECK, ok=True, moves=(("g", "h1", "h2", "live"),)), 1.0)
    assert _through_json(r) == r
    doc = r.to_dict()
    assert doc["rollout_id"] == "r1" and doc["status"] == "running" and doc["hosts"]["h1"]["step"] == "enter-maintenance"


def test_a_move_is_recorded_when_asked_for_and_survives_a_resume() -> None:
    r, _ = transition(_rollout(), Tick(), 0.0)
    while r.hosts["h1"].step is not Step.EVACUATE:
        r, _ = _run_ok(r, "h1", 1.0)
    move = ("web-0", "h1", "h2", "live")
    r, actions = transition(r, Moved("h1", Step.EVACUATE, move), 2.0)
    assert actions == () and r.hosts["h1"].step is Step.EVACUATE and r.hosts["h1"].moves == (move,)
    # the patcher dies here: the record read back still has the move
    r = _through_json(r)
    r, _ = transition(r, Moved("h1", Step.EVACUATE, move), 3.0)  # the resumed step asks again
    r, _ = transition(r, StepResult("h1", Step.EVACUATE, ok=True, moves=(move, ("api-0", "h1", "h3", "cold"))), 4.0)
    assert r.hosts["h1"].moves == (move, ("api-0", "h1", "h3", "cold"))
    with pytest.raises(StaleResult):
        transition(r, Moved("h1", Step.EVACUATE, move), 5.0)


events = st.lists(st.tuples(st.sampled_from(["ok", "fail", "resume", "abort", "tick"]),
                            st.sampled_from(["h1", "h2", "h3", "h4"])), max_size=120)


@settings(max_examples=300, deadline=None)
@given(events, st.integers(min_value=1, max_value=2))
def test_properties_under_random_outcomes(seq, width) -> None:
    hosts = ["h1", "h2", "h3", "h4"]
    batches = tuple(tuple(hosts[i:i + width]) for i in range(0, 4, width))
    r, _ = transition(new_rollout("r", "L2", batches, 0.0), Tick(), 0.0)
    now = 0.0
    for kind, host in seq:
        now += 1
        step = r.hosts[host].step
        if kind in ("ok", "fail") and step in ACTIVE:
            r, _ = transition(r, StepResult(host, step, ok=kind == "ok", error=None if kind == "ok" else "x"), now)
        elif kind == "resume":
            r, _ = transition(r, Resume(), now)
        elif kind == "abort" and now > 60:
            r, _ = transition(r, Abort(), now)
        else:
            r, _ = transition(r, Tick(), now)
        busy = [h for h, p in r.hosts.items() if p.step in ACTIVE or p.step is Step.FAILED]
        # never more hosts out of service than one batch
        assert len(busy) <= width
        # a batch only starts once every earlier batch is done
        started = [i for i, b in enumerate(batches) if any(r.hosts[h].step is not Step.PENDING for h in b)]
        for i in started:
            for earlier in batches[:i]:
                assert all(r.hosts[h].step in (Step.DONE, Step.ABORTED) for h in earlier)
        assert (r.status is RolloutStatus.COMPLETE) == all(p.step is Step.DONE for p in r.hosts.values())
        assert r.header.step == r.status.value and r.status.value in r.header.progress
        if r.status is RolloutStatus.FAILED:
            assert any(p.step is Step.FAILED for p in r.hosts.values())
