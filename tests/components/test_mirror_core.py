"""The mirrored-disk block graph and QMP plans (pure)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nonstop.core.components.mirror import (
    DROP,
    REMIRROR,
    SYNCED,
    DriveView,
    LegView,
    MirrorLeg,
    drop_leg_plan,
    leg_node,
    mirror_blockdev_args,
    plan_mirror,
    quorum_blockdev,
    quorum_child,
    remirror_plan,
    track_ok_since,
)

LEGS = (MirrorLeg("Disk0", "/run/d0.sock"), MirrorLeg("Disk1", "/run/d1.sock"))


def test_quorum_is_raid1_over_two_nbd_legs() -> None:
    argv = mirror_blockdev_args("data", LEGS)
    nodes = [json.loads(argv[i + 1]) for i in range(0, len(argv), 2)]
    assert argv[::2] == ["-blockdev"] * 3
    assert [n["node-name"] for n in nodes] == ["data-Disk0-g0", "data-Disk1-g0", "disk-data"]
    assert nodes[0]["file"] == {"driver": "nbd", "server": {"type": "unix", "path": "/run/d0.sock"}, "reconnect-delay": 0}
    quorum = nodes[2]
    assert (quorum["driver"], quorum["vote-threshold"], quorum["read-pattern"]) == ("quorum", 1, "fifo")
    assert quorum["children"] == ["data-Disk0-g0", "data-Disk1-g0"]


@pytest.mark.parametrize("legs", [(), (LEGS[0], MirrorLeg("Disk0", "/run/x.sock"))])
def test_a_mirror_needs_a_leg_and_distinct_drives(legs: tuple[MirrorLeg, ...]) -> None:
    with pytest.raises(ValueError):
        quorum_blockdev("data", legs)


def test_drop_then_remirror_plan_order() -> None:
    drop = drop_leg_plan("data", "children.0", LEGS[0])
    assert [(c.command, c.arguments) for c in drop] == [
        ("x-blockdev-change", {"parent": "disk-data", "child": "children.0"}),
        ("blockdev-del", {"node-name": "data-Disk0-g0"}),
    ]
    new = MirrorLeg("Disk0", "/run/d0b.sock", generation=1)
    plan = remirror_plan("data", new)
    assert [c.command for c in plan] == ["blockdev-add", "blockdev-mirror", "stop", "block-job-cancel",
                                         "x-blockdev-change", "cont"]
    assert plan[1].arguments["copy-mode"] == "write-blocking" and plan[1].wait_event == "BLOCK_JOB_READY"
    assert plan[2].wait_event == SYNCED and plan[3].wait_event == "BLOCK_JOB_COMPLETED"
    assert plan[4].arguments == {"parent": "disk-data", "node": leg_node("data", new)} != leg_node("data", LEGS[0])


def test_one_leg_is_a_degraded_mirror() -> None:
    assert quorum_blockdev("data", LEGS[:1])["children"] == ["data-Disk0-g0"]


def test_quorum_child_name_comes_from_the_block_graph() -> None:
    graph = {"nodes": [{"id": 1, "name": "disk-data"}, {"id": 2, "name": "data-Disk0-g0"},
                       {"id": 3, "name": "data-Disk1-g0"}],
             "edges": [{"parent": 1, "child": 3, "name": "children.1"}, {"parent": 1, "child": 2, "name": "children.0"}]}
    assert quorum_child(graph, "data", LEGS[1]) == "children.1"
    assert quorum_child(graph, "data", MirrorLeg("Disk0", "/x", 5)) is None


UP = (LegView("Disk0", True), LegView("Disk1", True))
OK = (DriveView("Disk0", False, 0.0), DriveView("Disk1", False, 0.0))

# legs, drives, now, expected (kind, drive) or None
CASES = [
    (UP, OK, 100.0, None),
    ((LegView("Disk0", False), LegView("Disk1", True)), OK, 100.0, (DROP, "Disk0")),
    (UP, (DriveView("Disk0", True), DriveView("Disk1", False, 0.0)), 100.0, (DROP, "Disk0")),
    (UP, (DriveView("Disk0", None), DriveView("Disk1", None)), 100.0, None),
    ((LegView("Disk1", False),), OK, 100.0, None),  # the last leg is never dropped
    ((LegView("Disk1", True),), (DriveView("Disk0", False, 95.0), DriveView("Disk1", False, 0.0)), 100.0, None),
    ((LegView("Disk1", True),), (DriveView("Disk0", False, 90.0), DriveView("Disk1", False, 0.0)), 100.0,
     (REMIRROR, "Disk0")),
    ((LegView("Disk1", True),), (DriveView("Disk0", None, None), DriveView("Disk1", None)), 100.0, None),
    ((LegView("Disk1", True),), (DriveView("Disk0", True), DriveView("Disk1", False, 0.0)), 100.0, None),
    ((LegView("Disk1", False),), (DriveView("Disk0", False, 0.0), DriveView("Disk1", False, 0.0)), 100.0, None),
]


@pytest.mark.parametrize(("legs", "drives", "now", "expected"), CASES)
def test_plan_mirror_table(legs: tuple[LegView, ...], drives: tuple[DriveView, ...], now: float,
                           expected: tuple[str, str] | None) -> None:
    actions = plan_mirror("data", legs, drives, now, window=10.0)
    assert [(a.kind, a.drive) for a in actions] == ([expected] if expected else [])


states = st.sampled_from([True, False, None])


@given(st.lists(st.tuples(st.sampled_from(["Disk0", "Disk1", "Disk2"]), st.booleans()), max_size=3,
                unique_by=lambda t: t[0]),
       st.tuples(states, states, states), st.floats(0, 100), st.floats(0, 100))
def test_plan_mirror_properties(legs: list[tuple[str, bool]], failed: tuple[bool | None, ...], since: float,
                                now: float) -> None:
    names = ("Disk0", "Disk1", "Disk2")
    drives = tuple(DriveView(n, f, since if f is False else None) for n, f in zip(names, failed, strict=True))
    views = tuple(LegView(d, alive) for d, alive in legs)
    actions = plan_mirror("data", views, drives, now, window=5.0)
    assert len(actions) <= 1
    for action in actions:
        if action.kind == DROP:
            assert len(views) > 1  # never the last leg
        else:
            state = next(d for d in drives if d.name == action.drive)
            assert state.failed is False and now - since >= 5.0  # only a known, settled drive
            assert any(v.alive for v in views) and action.drive not in {v.drive for v in views}


def test_ok_since_resets_on_failure_and_on_no_data() -> None:
    clock = track_ok_since({}, {"Disk0": False, "Disk1": True}, 10.0)
    assert clock == {"Disk0": 10.0, "Disk1": None}
    clock = track_ok_since(clock, {"Disk0": False, "Disk1": False}, 20.0)
    assert clock == {"Disk0": 10.0, "Disk1": 20.0}
    assert track_ok_since(clock, {"Disk0": None, "Disk1": False}, 30.0) == {"Disk0": None, "Disk1": 20.0}


def test_a_dead_leg_restarts_its_drives_clock_even_before_the_bmc_says_so() -> None:
    clock = track_ok_since({"Disk0": 1.0, "Disk1": 1.0}, {"Disk0": False, "Disk1": False}, 50.0,
                           dead_legs=frozenset({"Disk0"}))
    assert clock == {"Disk0": 50.0, "Disk1": 1.0}
    # so the leg's drive, still "working" in a lagging reading, gets no copy within the window
    legs = (LegView("Disk1", True),)
    drives = (DriveView("Disk0", False, clock["Disk0"]), DriveView("Disk1", False, clock["Disk1"]))
    assert plan_mirror("data", legs, drives, 55.0, window=10.0) == ()
    assert [a.kind for a in plan_mirror("data", legs, drives, 60.0, window=10.0)] == [REMIRROR]
