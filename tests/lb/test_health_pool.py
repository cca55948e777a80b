"""The health table, outlier back-off, slow start, retry rules and the pool's choices (pure)."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nonstop.core.lb.algorithms import make_balancer
from nonstop.core.lb.health import (
    SERVING,
    TRANSITIONS,
    AdminState,
    Health,
    HealthEvent,
    HealthMachine,
    IllegalHealthTransition,
    next_health,
)
from nonstop.core.lb.outlier import OutlierPolicy, OutlierTracker, slow_start_factor
from nonstop.core.lb.pool import ALL_FULL, NO_BACKEND, Pool
from nonstop.core.lb.retry import Failure, RetryBudget, decide_retry

H, E = Health, HealthEvent


@pytest.mark.parametrize(
    ("state", "event", "expected"),
    [
        (H.UP, E.CHECK_FAIL, H.FAILING),
        (H.UP, E.CHECK_FAIL_FALL, H.DOWN),
        (H.FAILING, E.CHECK_OK, H.UP),
        (H.DOWN, E.CHECK_OK, H.RISING),
        (H.RISING, E.CHECK_FAIL, H.DOWN),
        (H.RISING, E.CHECK_OK_RISE, H.UP),
        (H.UP, E.EJECT, H.EJECTED),
        (H.EJECTED, E.CHECK_OK_RISE, H.EJECTED),
        (H.EJECTED, E.CHECK_FAIL_FALL, H.DOWN),
        (H.EJECTED, E.EJECTION_END, H.UP),
        (H.DOWN, E.EJECT, H.DOWN),
    ],
)
def test_transition_table(state, event, expected):
    assert next_health(state, event) is expected


@pytest.mark.parametrize("state", [H.UP, H.FAILING, H.DOWN, H.RISING])
def test_ejection_end_is_illegal_unless_ejected(state):
    with pytest.raises(IllegalHealthTransition, match="ejection-end"):
        next_health(state, E.EJECTION_END)


@pytest.mark.parametrize(
    ("rise", "fall", "results", "states"),
    [
        (2, 3, "fff", ["failing", "failing", "down"]),
        (2, 3, "ffpff", ["failing", "failing", "up", "failing", "failing"]),
        (2, 1, "fpp", ["down", "rising", "up"]),
        (1, 1, "fp", ["down", "up"]),
        (3, 2, "ffppfppp", ["failing", "down", "rising", "rising", "down", "rising", "rising", "up"]),
    ],
)
def test_rise_fall_hysteresis(rise, fall, results, states):
    machine = HealthMachine(rise, fall)
    assert [machine.check_result(r == "p").after.value for r in results] == states


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 5), st.integers(1, 5), st.lists(st.booleans(), max_size=40))
def test_health_follows_streaks(rise, fall, results):
    """Property: DOWN exactly after `fall` failures in a row from serving; UP after `rise` passes."""
    machine = HealthMachine(rise, fall)
    passes = fails = 0
    for ok in results:
        serving_before = machine.serving
        machine.check_result(ok)
        passes, fails = (passes + 1, 0) if ok else (0, fails + 1)
        if serving_before:
            assert machine.serving == (fails < fall)
        else:
            assert machine.serving == (passes >= rise)
    assert set(TRANSITIONS) == set(Health)
    assert {H.UP, H.FAILING} == SERVING


def test_outlier_backoff_doubles_and_caps():
    tracker = OutlierTracker(OutlierPolicy(errors=2, base_ejection=1.0, max_ejection=4.0))
    assert tracker.failure(0.0) is None
    first = tracker.failure(0.1)
    assert first is not None and first.until == pytest.approx(1.1) and first.level == 1
    assert tracker.failure(0.5) is None  # ejected: not counted
    tracker.failure(1.2)
    second = tracker.failure(1.3)
    assert second is not None and second.until == pytest.approx(3.3)
    tracker.failure(3.4)
    third = tracker.failure(3.5)
    assert third is not None and third.until == pytest.approx(7.5)  # 4 s cap
    tracker.failure(7.6)
    assert tracker.failure(7.7).until == pytest.approx(11.7)
    # healthy for max_ejection after the last ejection: back-off level resets
    tracker.success(20.0)
    assert tracker.level == 0


def test_success_resets_the_error_streak():
    tracker = OutlierTracker(OutlierPolicy(errors=3))
    tracker.failure(0)
    tracker.failure(0)
    tracker.success(0)
    assert tracker.failure(0) is None and tracker.failure(0) is None
    assert tracker.failure(0) is not None


@pytest.mark.parametrize(
    ("elapsed", "window", "factor"),
    [(0, 10, 0.05), (5, 10, 0.5), (10, 10, 1.0), (3, 0, 1.0), (0.1, 10, 0.05), (float("inf"), 10, 1.0)],
)
def test_slow_start_factor(elapsed, window, factor):
    assert slow_start_factor(elapsed, window) == pytest.approx(factor)


@pytest.mark.parametrize(
    ("method", "failure", "sent", "replayable", "done", "budget", "retry"),
    [
        (b"GET", Failure.CONNECT, False, True, 0, True, True),
        (b"POST", Failure.CONNECT, False, False, 0, True, True),
        (b"POST", Failure.RESET_BEFORE_RESPONSE, True, True, 0, True, False),
        (b"GET", Failure.RESET_BEFORE_RESPONSE, True, True, 0, True, True),
        (b"PUT", Failure.BACKEND_DOWN, True, True, 1, True, True),
        (b"GET", Failure.RESET_BEFORE_RESPONSE, True, False, 0, True, False),
        (b"GET", Failure.TIMEOUT, True, True, 0, True, False),
        (b"GET", Failure.RESET_AFTER_RESPONSE_STARTED, True, True, 0, True, False),
        (b"GET", Failure.CONNECT, False, True, 3, True, False),
        (b"GET", Failure.CONNECT, False, True, 0, False, False),
    ],
)
def test_retry_rules(method, failure, sent, replayable, done, budget, retry):
    decision = decide_retry(
        method, failure, sent_anything=sent, replayable=replayable, retries_done=done, max_retries=3, budget_ok=budget
    )
    assert decision.retry is retry, decision.reason


def test_retry_budget_refills_per_request():
    budget = RetryBudget(ratio=0.5, floor=1, cap=2)
    assert budget.try_spend() and not budget.try_spend()
    budget.on_request()
    budget.on_request()
    assert budget.try_spend() and not budget.try_spend()


def make_pool(n=3, algorithm="round-robin", **kw):
    pool = Pool(make_balancer(algorithm), rise=2, fall=2, **kw)
    for i in range(n):
        pool.add(f"s{i}", "127.0.0.1", 9000 + i)
    return pool


def test_pool_skips_down_drained_and_maint_and_uses_backups_only_when_all_primaries_down():
    pool = make_pool(3)
    pool.add("b0", "127.0.0.1", 9100, backup=True)
    assert {pool.choose(0).name for _ in range(6)} == {"s0", "s1", "s2"}
    pool.check_result("s0", False, 1)
    pool.check_result("s0", False, 2)
    pool.set_admin("s1", AdminState.DRAIN, 2)
    assert {pool.choose(3).name for _ in range(6)} == {"s2"}
    pool.set_admin("s2", AdminState.MAINT, 3)
    assert {pool.choose(4).name for _ in range(4)} == {"b0"}
    pool.set_admin("s1", AdminState.READY, 5)
    assert {pool.choose(6).name for _ in range(4)} == {"s1"}
    pool.set_admin("s1", AdminState.MAINT, 7)
    pool.set_admin("b0", AdminState.MAINT, 7)
    assert pool.choose(8) is None and pool.last_refusal == NO_BACKEND


def test_pool_excludes_tried_backends_and_full_ones():
    pool = Pool(make_balancer("round-robin"))
    pool.add("a", "127.0.0.1", 1, max_connections=1)
    pool.add("b", "127.0.0.1", 2)
    assert pool.choose(0, exclude={"a"}).name == "b"
    pool.get("a").active = 1
    assert {pool.choose(0).name for _ in range(4)} == {"b"}
    pool.get("b").active = 0
    assert pool.choose(0, exclude={"b"}) is None and pool.last_refusal == ALL_FULL


def test_pool_ejection_and_its_end():
    pool = make_pool(2, outlier=OutlierPolicy(errors=2, base_ejection=1.0))
    s0 = pool.get("s0")
    assert pool.report_failure(s0, 0.0) is None
    event = pool.report_failure(s0, 0.1)
    assert event is not None and event.change.stopped_serving
    assert {pool.choose(0.5).name for _ in range(4)} == {"s1"}
    assert pool.tick(0.9) == []
    ended = pool.tick(1.2)
    assert [e.backend for e in ended] == ["s0"] and ended[0].change.after is Health.UP


def test_pool_slow_start_ramps_traffic_share():
    pool = make_pool(2, slow_start=10.0)
    for t in (0.0, 1.0):
        pool.check_result("s1", False, t)
    for t in (2.0, 3.0):
        pool.check_result("s1", True, t)  # back up at t=3: ramp until 13
    def share(now):
        got = Counter(pool.choose(now).name for _ in range(1000))
        return got["s1"] / 1000
    early, mid, late = share(3.5), share(8.0), share(14.0)
    assert early < 0.1 < mid < late
    assert 0.3 < mid < 0.45  # weight 0.5 vs 1.0 -> one third
    assert 0.45 < late <= 0.55


def test_pool_runtime_membership_and_weight():
    pool = make_pool(2, algorithm="weighted-round-robin")
    pool.set_weight("s0", 3, 0)
    got = Counter(pool.choose(0).name for _ in range(400))
    assert got == Counter({"s0": 300, "s1": 100})
    pool.remove("s0")
    pool.add("s9", "127.0.0.1", 9999)
    assert {pool.choose(1).name for _ in range(4)} == {"s1", "s9"}
    pool.set_weight("s9", 0, 1)
    assert {pool.choose(1).name for _ in range(4)} == {"s1"}
    with pytest.raises(KeyError):
        pool.set_admin("nope", AdminState.DRAIN, 0)
    with pytest.raises(ValueError):
        pool.add("s1", "127.0.0.1", 1)


def test_a_retry_that_excludes_every_primary_falls_back_to_backups():
    pool = make_pool(1)
    pool.add("b0", "127.0.0.1", 9100, backup=True)
    assert pool.choose(0).name == "s0"
    assert pool.choose(0, exclude={"s0"}).name == "b0"
    assert pool.choose(0, exclude={"s0", "b0"}) is None
