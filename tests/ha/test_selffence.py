"""Self-fencing decisions: a table and a property."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nonstop.core.ha.selffence import self_fence_decision


@pytest.mark.parametrize(
    ("now", "ack", "lease", "fence", "words"),
    [
        (10.0, 9.9, 9.8, False, "current"),
        (10.0, 4.0, 9.8, True, "controller"),  # partitioned from the controller
        (10.0, 9.9, 4.0, True, "lease"),  # the store is unreachable
        (10.0, None, 9.9, True, "controller"),  # booted into a partition (started at 0)
        (3.0, None, None, False, "current"),  # still within the timeout after start
    ],
)
def test_table(now: float, ack: float | None, lease: float | None, fence: bool, words: str) -> None:
    decision = self_fence_decision(now, started_at=0.0, last_ack=ack, last_lease=lease, timeout=5.0)
    assert decision.fence is fence and words in decision.reason


@given(ack=st.floats(0, 100), lease=st.floats(0, 100), now=st.floats(0, 200), timeout=st.floats(0.1, 50))
def test_fences_exactly_when_either_silence_reaches_the_timeout(ack: float, lease: float, now: float, timeout: float) -> None:
    d = self_fence_decision(now, started_at=0.0, last_ack=ack, last_lease=lease, timeout=timeout)
    assert d.fence == (now - ack >= timeout or now - lease >= timeout)
    if not d.fence:
        # sleeping due_in seconds in silence lands exactly on the fence decision
        later = self_fence_decision(now + d.due_in, started_at=0.0, last_ack=ack, last_lease=lease, timeout=timeout)
        assert later.fence or later.due_in <= 1e-9 * max(1.0, now + d.due_in)  # float rounding only


def test_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError):
        self_fence_decision(1.0, started_at=0.0, last_ack=None, last_lease=None, timeout=0)


@pytest.mark.parametrize(
    ("now", "ack", "leader_since", "fence"),
    [
        (10.0, 4.0, 7.0, False),  # a new controller appeared 3 s ago: it has not had its chance yet
        (13.0, 4.0, 7.0, True),  # ... and 6 s later it still acknowledges nothing: fence
        (10.0, 4.0, 2.0, True),  # the leader seen long ago: plain silence
        (10.0, 9.9, 1.0, False),
    ],
)
def test_a_new_leader_restarts_the_controller_silence(now: float, ack: float, leader_since: float, fence: bool) -> None:
    d = self_fence_decision(now, started_at=0.0, last_ack=ack, last_lease=now, timeout=5.0, leader_since=leader_since)
    assert d.fence is fence


@given(ack=st.floats(0, 100), leader=st.floats(0, 100), now=st.floats(0, 200), timeout=st.floats(0.1, 50))
def test_leader_change_only_ever_postpones_by_at_most_its_age(ack: float, leader: float, now: float, timeout: float) -> None:
    with_leader = self_fence_decision(now, started_at=0.0, last_ack=ack, last_lease=now, timeout=timeout, leader_since=leader)
    plain = self_fence_decision(now, started_at=0.0, last_ack=ack, last_lease=now, timeout=timeout)
    assert with_leader.fence <= plain.fence  # never fences where silence alone would not
    assert with_leader.fence == (now - max(ack, leader) >= timeout)
