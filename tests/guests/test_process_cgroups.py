"""The cgroup layer: v2 file formats (laid out in a temporary directory as the kernel formats them,
since this machine's cpu/memory controllers are bound to v1), v2 for real on a temporary cgroup2
mount (group, join, accounting, PSI, kill, removal; limits refused clearly without controllers),
and v1 against the real tree."""

from __future__ import annotations

import contextlib
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nonstop.drivers import cgroups
from nonstop.drivers.base import GuestDefinition, GuestStartError
from nonstop.drivers.cgroups import CgroupV1, CgroupV2
from nonstop.drivers.process import LAUNCHER, ProcessDriver
from nonstop.drivers.process_net import netns_name
from nonstop.net import netns


def fake_v2(tmp_path: Path) -> CgroupV2:
    d = tmp_path / "nonstop.c.g"
    d.mkdir()
    files = {
        "cpu.max": "max 100000\n",
        "memory.max": "max\n",
        "memory.current": "12582912\n",
        "memory.events": "low 0\nhigh 0\nmax 7\noom 2\noom_kill 1\noom_group_kill 0\n",
        "memory.pressure": "some avg10=12.50 avg60=3.00 avg300=1.00 total=123\nfull avg10=1.00 avg60=0 avg300=0 total=9\n",
        "cpu.stat": "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\nnr_periods 40\n"
                    "nr_throttled 10\nthrottled_usec 750000\n",
        "cgroup.procs": "",
    }
    for name, text in files.items():
        (d / name).write_text(text)
    return CgroupV2({"unified": str(d)})


def test_v2_limits_are_written_in_kernel_format(tmp_path: Path) -> None:
    cg = fake_v2(tmp_path)
    cg.set_cpu(2)
    cg.set_memory(64 * 2**20)
    assert (cg.paths["unified"] / "cpu.max").read_text() == "200000 100000"
    assert (cg.paths["unified"] / "memory.max").read_text() == str(64 * 2**20)


def test_v2_stats_read_usage_throttling_oom_and_pressure(tmp_path: Path) -> None:
    cg = fake_v2(tmp_path)
    cg.set_cpu(1)
    cg.set_memory(32 * 2**20)
    st = cg.stats()
    assert st.cpu_seconds == 2.5 and st.throttled_seconds == 0.75
    assert (st.nr_periods, st.nr_throttled) == (40, 10)
    assert st.quota_vcpus == 1.0 and st.memory_limit == 32 * 2**20 and st.memory_usage == 12582912
    assert st.oom_kills == 1 and st.limit_hits == 7
    assert st.memory_pressure == pytest.approx(0.125)


def test_record_round_trip_picks_the_version() -> None:
    assert isinstance(cgroups.from_record(2, {"unified": "/x"}), CgroupV2)
    assert isinstance(cgroups.from_record(1, {"cpu": "/x"}), CgroupV1)


@pytest.mark.root
def test_v1_group_on_this_machine_reads_back_what_was_set() -> None:
    if cgroups.detect() != 1:
        pytest.skip("this machine is not cgroup v1")
    cg = cgroups.for_guest(f"nonstop.gcg{secrets.token_hex(3)}.probe", 1)
    cg.create()
    try:
        cg.set_cpu(3)
        cg.set_memory(48 * 2**20)
        cg.set_pids(64)
        st = cg.stats()
        assert st.quota_vcpus == 3.0 and st.memory_limit == 48 * 2**20 and st.oom_kills == 0
        assert (cg.paths["pids"] / "pids.max").read_text().strip() == "64"
        cg.set_memory(96 * 2**20)  # growing keeps memsw >= memory at every step
        assert cg.stats().memory_limit == 96 * 2**20
    finally:
        cg.remove()
    assert not cg.exists()


# ------------------------------------------------------------------ v2 on a real kernel mount
#
# This machine binds cpu/memory/pids to v1 hierarchies, so the unified (v2) tree has none of
# them. A cgroup2 mount under /tmp is the same kernel hierarchy: the v2 code path runs for
# real there (mkdir, join, cpu.stat accounting, PSI, kill, rmdir); what it cannot do here is
# set cpu.max/memory.max, and the driver must say so instead of failing obscurely.


@pytest.fixture
def cgroup2_mount() -> Iterator[Path]:
    mount = Path(f"/tmp/nonstop-cg2-{secrets.token_hex(3)}")
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "cgroup2", "none", str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        mount.rmdir()
        pytest.skip(f"cannot mount cgroup2 here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        for group in mount.glob("nonstop.*"):
            with contextlib.suppress(cgroups.CgroupError):
                CgroupV2({"unified": str(group)}).remove()
        subprocess.run(["umount", str(mount)], check=False)
        mount.rmdir()


@pytest.mark.root
def test_v2_group_on_a_real_cgroup2_mount(cgroup2_mount: Path) -> None:
    cg = cgroups.for_guest(f"nonstop.gcg{secrets.token_hex(3)}.v2", 2, cgroup2_mount)
    assert isinstance(cg, CgroupV2) and cg.paths["unified"].parent == cgroup2_mount
    cg.create()
    burner = subprocess.Popen([sys.executable, "-S", "-E", str(LAUNCHER), *sum((["--procs", p] for p in cg.procs_files()), []),
                               "--", sys.executable, "-c", "while True: pass"])
    try:
        deadline = time.monotonic() + 10
        while burner.pid not in cg.pids() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert cg.pids() == [burner.pid], "the launcher joined the v2 group before exec"
        # The machine is shared: wait (bounded) for the burner to get 0.1 s of CPU time.
        while cg.stats().cpu_seconds < 0.1 and time.monotonic() < deadline + 10:
            time.sleep(0.05)
        stats = cg.stats()
        assert stats.cpu_seconds >= 0.1, "cpu.stat accounts the group's CPU time"
        assert stats.memory_pressure is not None, "PSI memory.pressure is read"
        if "cpu" in cg.controllers():  # a machine with cpu on v2 gets a real quota
            cg.set_cpu(1.5)
            assert cg.stats().quota_vcpus == 1.5
        else:
            with pytest.raises(cgroups.CgroupError, match="no cpu controller"):
                cg.set_cpu(1)
        if "memory" not in cg.controllers():
            with pytest.raises(cgroups.CgroupError, match="no memory controller"):
                cg.set_memory(64 * 2**20)
    finally:
        cg.remove()
        burner.wait(timeout=5)
    assert not cg.exists() and burner.returncode == -9


@pytest.mark.root
async def test_process_driver_on_v2_without_controllers_fails_clearly(cgroup2_mount: Path, tmp_path: Path) -> None:
    probe = CgroupV2({"unified": str(cgroup2_mount)})
    if {"cpu", "memory"} <= probe.controllers():
        pytest.skip("cpu and memory are on v2 here: the regular process tests cover it")
    cluster = f"gcg{secrets.token_hex(3)}"
    driver = ProcessDriver(cluster=cluster, host="h1", state_dir=tmp_path / "state", cgroup_version=2,
                           cgroup_v2_root=str(cgroup2_mount))
    definition = GuestDefinition(name="g0", cluster=cluster, host="h1", vcpus=1, max_vcpus=1, memory=64 * 2**20,
                                 max_memory=64 * 2**20, port=8080)
    with pytest.raises(GuestStartError, match="no cpu controller") as info:
        await driver.spawn(definition)
    assert "cgroup v2" in info.value.reason
    assert await driver.list_guests() == []
    assert not list(cgroup2_mount.glob(f"nonstop.{cluster}.*")), "no group left behind"
    assert not netns.exists(netns_name(cluster, "g0"))
