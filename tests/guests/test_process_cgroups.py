"""The cgroup layer's file formats: v2 (not available on this machine's kernel configuration, so its
files are laid out in a temporary directory as the kernel formats them) and v1 against the real tree."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from nonstop.drivers import cgroups
from nonstop.drivers.cgroups import CgroupV1, CgroupV2


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
