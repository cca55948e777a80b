"""The rolling guest update machine (pure): surge, replace each replica, shrink; roll back."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nonstop.core.patching.update import GuestUpdate, IllegalUpdateStep, Phase, advance


def _update(replicas: int = 3) -> GuestUpdate:
    return GuestUpdate("u1", "api", replicas, {"command": None}, {"command": ["v2"]})


def test_happy_path_replaces_every_replica_in_order() -> None:
    u = _update()
    seen = []
    while u.phase is not Phase.DONE:
        seen.append((u.phase, u.current() if u.phase is Phase.REPLACE else None))
        u = advance(u, True)
    assert seen == [(Phase.SURGE, None), (Phase.REPLACE, "api-0"), (Phase.REPLACE, "api-1"),
                    (Phase.REPLACE, "api-2"), (Phase.SHRINK, None)]
    assert u.replaced == ("api-0", "api-1", "api-2") and u.surge_name() == "api-3"


@pytest.mark.parametrize("fail_at", [0, 1, 2, 3, 4])
def test_unhealthy_anywhere_rolls_back(fail_at: int) -> None:
    u = _update()
    for _ in range(fail_at):
        u = advance(u, True)
    u = advance(u, False, "not healthy")
    assert u.phase is Phase.ROLLING_BACK and u.reason == "not healthy"
    assert len(u.replaced) == min(max(0, fail_at - 1), 3)
    u = advance(u, True)
    assert u.phase is Phase.ROLLED_BACK
    with pytest.raises(IllegalUpdateStep):
        advance(u, True)


def test_a_rollback_is_never_abandoned() -> None:
    u = advance(_update(), False, "x")
    with pytest.raises(IllegalUpdateStep):
        advance(u, False)


def test_zero_replicas_goes_straight_to_shrink() -> None:
    assert advance(_update(0), True).phase is Phase.SHRINK


@given(st.integers(0, 6), st.lists(st.booleans(), max_size=20))
def test_round_trip_and_final_phases(replicas: int, oks: list[bool]) -> None:
    u = _update(replicas)
    for ok in oks:
        if u.phase in (Phase.DONE, Phase.ROLLED_BACK):
            break
        u = advance(u, ok or u.phase is Phase.ROLLING_BACK)
        assert GuestUpdate.from_dict(u.to_dict()) == u
        assert len(u.replaced) <= replicas
        assert len(set(u.replaced)) == len(u.replaced)
