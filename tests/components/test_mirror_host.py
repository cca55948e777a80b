"""The host side of mirrored disks without QEMU: drive list from the stored spec, drive states
from the watcher's record (fresh, stale, unknown), and the lab's drive failure on leg servers."""

from __future__ import annotations

import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from nonstop.components.mirror_host import MirrorReconciler
from nonstop.core.spec import ClusterSpec
from nonstop.drivers import qemu_mirror_legs as legs_io
from nonstop.store import keys, open_store
from nonstop.store.base import Store, encode_json
from nonstop.store.state import put_spec


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = open_store(f"sqlite:///{tmp_path / 'state.db'}")
    spec = ClusterSpec.model_validate({
        "cluster": "tm", "hosts": [{"name": "h1", "cpus": 2, "memory": "4GiB",
                                    "drives": [{"name": "A"}, {"name": "B"}, {"name": "C"}]}],
        "policies": {"components": {"stability_window": 7}}})
    await put_spec(s, spec)
    yield s
    await s.close()


async def test_drives_from_spec_and_states_from_the_watcher(store: Store, tmp_path: Path) -> None:
    r = MirrorReconciler(store, "tm", "h1", tmp_path / "qemu", tmp_path / "disks" / "tm")
    assert await r.pass_once() == []  # no mirrored VM: nothing to do, but the drive list is written
    assert legs_io.host_drives(tmp_path / "disks" / "tm", "h1") == ["A", "B", "C"] and r.window == 7.0
    now = time.time()
    assert await r.drive_states(now) == {"A": None, "B": None, "C": None}  # no record: unknown
    record = {"health": "degraded", "read_at": now, "groups": {"storage": {"state": "degraded", "failed": ["B"]}}}
    await store.put(keys.host_components("tm", "h1"), encode_json(record))
    assert await r.drive_states(now) == {"A": False, "B": True, "C": False}
    assert await r.drive_states(now + 600) == {"A": False, "B": True, "C": False}  # written on change only
    await store.put(keys.host_components("tm", "h1"), encode_json({**record, "health": "unknown"}))
    assert await r.drive_states(now) == {"A": None, "B": None, "C": None}


@pytest.mark.skipif(shutil.which("qemu-nbd") is None, reason="qemu-nbd not installed")
def test_lab_drive_failure_kills_its_leg_servers_and_repair_is_blank(tmp_path: Path) -> None:
    drive = legs_io.drive_dir(tmp_path, "h1", "Disk0")
    leg = drive / "vm-data-g0.qcow2"
    legs_io.create_leg_file(leg, 2**20)
    legs_io.serve_leg(leg, legs_io.leg_socket(leg))
    try:
        assert legs_io.server_alive(leg)
        assert len(legs_io.fail_drive_dir(drive)) == 1
        assert not legs_io.server_alive(leg) and legs_io.drive_failed(drive)
        with pytest.raises(legs_io.MirrorError):
            legs_io.create_leg_file(drive / "new.qcow2", 2**20)  # a dead drive takes no new leg
        legs_io.repair_drive_dir(drive)
        assert not legs_io.drive_failed(drive) and not leg.exists()
        legs_io.create_leg_file(leg, 2**20)
        legs_io.serve_leg(leg, legs_io.leg_socket(leg))
        assert len(legs_io.fail_drive_dir(drive)) == 1  # the server dies, its socket file stays ...
        assert Path(legs_io.leg_socket(leg)).exists()
        swept, deadline = 0, time.monotonic() + 3
        while not swept and time.monotonic() < deadline:  # (once seen: 0 on the first sweep in a CI run)
            swept = legs_io.sweep_dead_sockets()
            time.sleep(0.05)
        assert swept >= 1  # ... until the sweep
        assert not Path(legs_io.leg_socket(leg)).exists()
        assert not Path(legs_io.leg_socket(leg)).exists()
    finally:
        legs_io.remove_leg(leg)
