"""The mirrored-disk block graph and QMP plans (pure)."""

from __future__ import annotations

import json

import pytest

from nonstop.core.components.mirror import (
    SYNCED,
    MirrorLeg,
    drop_leg_plan,
    leg_node,
    mirror_blockdev_args,
    quorum_blockdev,
    remirror_plan,
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


@pytest.mark.parametrize("legs", [LEGS[:1], (LEGS[0], MirrorLeg("Disk0", "/run/x.sock"))])
def test_a_mirror_needs_two_legs_on_two_drives(legs: tuple[MirrorLeg, ...]) -> None:
    with pytest.raises(ValueError):
        quorum_blockdev("data", legs)


def test_drop_then_remirror_plan_order() -> None:
    drop = drop_leg_plan("data", 0, LEGS[0])
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
