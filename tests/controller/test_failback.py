"""Failback policy and hysteresis (pure)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nonstop.core.controller.failback import failback_decision, required_window

HOMES = {"g1": "h1", "g2": "h1", "g3": "h2"}
NOW_ON_H2 = {"g1": "h2", "g2": "h3", "g3": "h2"}


def decide(policy: str = "auto", up_since: float | None = 100.0, now: float = 131.0, failures: tuple[float, ...] = (90.0,),
           **kw: object):  # type: ignore[no-untyped-def]
    return failback_decision(host="h1", policy=policy, up_since=up_since, now=now, stability=30.0, failures=failures,
                             homes=HOMES, assignments=NOW_ON_H2, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("policy", "ready", "moves", "reason_part"),
    [
        ("manual", True, (), "manual: 2 guest(s) could return"),
        ("auto", True, (("g1", "h1"), ("g2", "h1")), "moving 2 guest(s) home"),
        ("balanced", True, (), "spread within target"),
    ],
)
def test_policies_after_the_window(policy: str, ready: bool, moves: tuple[tuple[str, str], ...], reason_part: str) -> None:
    d = decide(policy)
    assert (d.ready, d.moves) == (ready, moves)
    assert reason_part in d.reason


def test_balanced_uses_the_rebalance_moves() -> None:
    d = decide("balanced", balanced_moves=[("g3", "h1")])
    assert d.moves == (("g3", "h1"),)
    assert "rebalancing" in d.reason


def test_not_up_and_inside_the_window() -> None:
    assert not decide(up_since=None).ready
    d = decide(now=110.0)
    assert not d.ready and d.moves == () and d.wait == pytest.approx(20.0)


def test_flapping_doubles_the_window_then_holds() -> None:
    assert required_window(30.0, [90.0], 131.0) == 30.0
    assert required_window(30.0, [50.0, 90.0], 131.0) == 60.0
    assert required_window(30.0, [-500.0, 90.0], 131.0) == 30.0  # outside the memory: forgotten
    d = decide(failures=(40.0, 60.0, 90.0), now=131.0)
    assert not d.ready and "of 120.0s" in d.reason
    held = decide(failures=(10.0, 40.0, 60.0, 90.0), now=131.0)
    assert not held.ready and "flapping" in held.reason


@given(st.lists(st.floats(min_value=0, max_value=1000), max_size=6), st.floats(min_value=0, max_value=2000))
def test_more_failures_never_shorten_the_window(failures: list[float], extra: float) -> None:
    now = 2000.0
    assert required_window(30.0, [*failures, extra], now) >= required_window(30.0, failures, now)


def test_unknown_policy_is_an_error() -> None:
    with pytest.raises(ValueError):
        decide("sometimes")
