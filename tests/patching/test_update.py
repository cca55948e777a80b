"""The rolling guest update machine (pure): surge, replace each replica, shrink; roll back. The
table is a ``Machine`` of the one operation model; the phase is the operation header's step."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nonstop.core.operations import IllegalTransition
from nonstop.core.patching.update import UPDATE, GuestUpdate, Phase, advance, new_update


def _update(replicas: int = 3) -> GuestUpdate:
    return new_update("u1", "api", replicas, {"command": None}, {"command": ["v2"]}, 0.0)


def test_happy_path_replaces_every_replica_in_order() -> None:
    u = _update()
    seen = []
    now = 0.0
    while u.phase is not Phase.DONE:
        seen.append((u.phase, u.current() if u.phase is Phase.REPLACE else None))
        now += 1
        u = advance(u, True, now)
    assert seen == [(Phase.SURGE, None), (Phase.REPLACE, "api-0"), (Phase.REPLACE, "api-1"),
                    (Phase.REPLACE, "api-2"), (Phase.SHRINK, None)]
    assert u.replaced == ("api-0", "api-1", "api-2") and u.surge_name() == "api-3"
    assert u.header.kind == "guest-update" and u.header.step == "done" and u.header.reason == ""
    assert u.header.progress == {"surge": 0.0, "replace": 3.0, "shrink": 4.0, "done": 5.0}  # replace: the last one


@pytest.mark.parametrize("fail_at", [0, 1, 2, 3, 4])
def test_unhealthy_anywhere_rolls_back(fail_at: int) -> None:
    u = _update()
    for i in range(fail_at):
        u = advance(u, True, float(i))
    u = advance(u, False, 10.0, "not healthy")
    assert u.phase is Phase.ROLLING_BACK and u.header.reason == "not healthy"
    assert len(u.replaced) == min(max(0, fail_at - 1), 3)
    u = advance(u, True, 11.0)
    assert u.phase is Phase.ROLLED_BACK and u.to_dict()["reason"] == "not healthy"
    with pytest.raises(IllegalTransition):
        advance(u, True, 12.0)


def test_a_rollback_is_never_abandoned() -> None:
    u = advance(_update(), False, 1.0, "x")
    assert not UPDATE.allows(Phase.ROLLING_BACK.value, "unhealthy")
    with pytest.raises(IllegalTransition) as info:
        advance(u, False, 2.0)
    assert info.value.kind == "guest-update" and info.value.subject == "u1"


def test_zero_replicas_goes_straight_to_shrink() -> None:
    assert advance(_update(0), True, 1.0).phase is Phase.SHRINK


@given(st.integers(0, 6), st.lists(st.booleans(), max_size=20))
def test_round_trip_and_final_phases(replicas: int, oks: list[bool]) -> None:
    u = _update(replicas)
    for i, ok in enumerate(oks):
        if u.phase in (Phase.DONE, Phase.ROLLED_BACK):
            break
        u = advance(u, ok or u.phase is Phase.ROLLING_BACK, float(i))
        assert GuestUpdate.from_body(u.header, json.loads(json.dumps(u.body()))) == u
        assert u.to_dict()["phase"] == u.phase.value == u.header.step
        assert len(u.replaced) <= replicas
        assert len(set(u.replaced)) == len(u.replaced)
