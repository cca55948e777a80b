"""The failover operation table (pure): every pair, the fence gate, persistence round trip."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nonstop.core.controller.ops import (
    FINAL,
    TRANSITIONS,
    FailoverOp,
    OpEvent,
    Step,
    advance,
    fence_retry_delay,
)
from nonstop.core.operations import IllegalTransition

S, E = Step, OpEvent

EXPECTED = {
    (S.DETECTED, E.FENCE_STARTED): S.FENCING,
    (S.DETECTED, E.HOST_RETURNED): S.ABORTED,
    (S.FENCING, E.FENCED): S.FENCED,
    (S.FENCING, E.FENCE_FAILED): S.FENCE_FAILED,
    (S.FENCE_FAILED, E.FENCE_STARTED): S.FENCING,
    (S.FENCE_FAILED, E.HOST_RETURNED): S.ABORTED,
    (S.FENCED, E.MOVED): S.MOVED,
    (S.MOVED, E.SERVING): S.DONE,
}


@pytest.mark.parametrize("step", list(Step))
@pytest.mark.parametrize("event", list(OpEvent))
def test_every_pair_is_in_the_table_or_illegal(step: Step, event: OpEvent) -> None:
    op = FailoverOp("op", "h1", step=step)
    if (step, event) in EXPECTED:
        assert advance(op, event, 10.0).step is EXPECTED[(step, event)]
    else:
        with pytest.raises(IllegalTransition):
            advance(op, event, 10.0)


def test_table_matches_expected() -> None:
    flat = {(s, e): t for s, row in TRANSITIONS.items() for e, t in row.items()}
    assert flat == EXPECTED


@given(st.lists(st.sampled_from(list(OpEvent)), max_size=30))
def test_guests_never_move_before_the_host_is_fenced(events: list[OpEvent]) -> None:
    """Whatever the order of events, MOVED is reached only through FENCED; a host that
    returns during or after fencing never aborts the failover."""
    op = FailoverOp("op", "h1")
    seen = [op.step]
    for event in events:
        try:
            op = advance(op, event, 1.0)
        except IllegalTransition:
            continue
        seen.append(op.step)
    if S.MOVED in seen:
        assert S.FENCED in seen[: seen.index(S.MOVED)]
    if S.ABORTED in seen:
        assert S.FENCING not in seen[seen.index(S.ABORTED) - 1: seen.index(S.ABORTED)]
    assert all(s not in FINAL for s in seen[:-1])


def test_round_trip_and_attempts() -> None:
    op = FailoverOp("failover-h1-1", "h1", detected_at=5.0, last_heard=4.5)
    op = advance(op, E.FENCE_STARTED, 6.0)
    op = advance(op, E.FENCE_FAILED, 7.0, fence_agent="redfish", fence_detail="unreachable")
    op = advance(op, E.FENCE_STARTED, 8.0)
    op = advance(op, E.FENCED, 9.0, fence_agent="watchdog-wait")
    op = advance(op, E.MOVED, 9.5, moves=(("g1", "h2"),), unplaced=(("g2", "no host has memory"),))
    assert op.attempts == 2
    assert op.times == {"fencing": 8.0, "fence-failed": 7.0, "fenced": 9.0, "moved": 9.5}
    assert FailoverOp.from_parts(op.op_id, op.step.value, dict(op.times), op.body()) == op


@pytest.mark.parametrize(("attempts", "delay"), [(1, 0.5), (2, 1.0), (3, 2.0), (5, 8.0), (6, 10.0), (50, 10.0)])
def test_fence_retry_backoff(attempts: int, delay: float) -> None:
    assert fence_retry_delay(attempts) == delay
