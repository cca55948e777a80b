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
