"""The pure QEMU renderer and hot-plug planners: snapshots, tables and properties (no QEMU runs).

Snapshots live in tests/guests/snapshots/*.argv (one argument per line). After an intended
change of the command line, regenerate with ``NONSTOP_UPDATE_SNAPSHOTS=1`` and review the diff.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nonstop.core.guests.qemu_argv import (
    DIMM_ALIGN,
    TCG_RAM_SHORTFALL,
    CpuDevice,
    DimmDevice,
    DiskAttachment,
    LayoutError,
    MachineLayout,
    NicAttachment,
    QemuLaunch,
    boot_memory_arg,
    initial_layout,
    kernel_append,
    plan_memory,
    plan_memory_removal,
    plan_vcpu_removal,
    plan_vcpus,
    render_argv,
)

MIB = 2**20
SNAPSHOTS = Path(__file__).parent / "snapshots"

LAUNCH = QemuLaunch(
    guest="web-0",
    host="h1",
    kernel="/var/cache/nonstop/images/abc/vmlinuz",
    initrd="/var/cache/nonstop/images/abc/initrd.cpio",
    qmp_socket="/run/nonstop/c/h1/guests/web-0/qmp.sock",
    console_log="/run/nonstop/c/h1/guests/web-0/console.log",
    pid_file="/run/nonstop/c/h1/guests/web-0/qemu.pid",
    host_channel="/run/nonstop/c/h1/guests/web-0/host.sock",
    status_socket="/run/nonstop/c/h1/guests/web-0/status.sock",
    disks=(
        DiskAttachment("root", "/var/lib/nonstop/disks/c/web-0/root.qcow2", "qcow2"),
        DiskAttachment("data", "/var/lib/nonstop/disks/c/web-0/data.raw", "raw"),
    ),
    nics=(
        NicAttachment("nvabc0", "02:aa:bb:cc:dd:01", "198.18.10.5/24", "198.18.10.1"),
        NicAttachment("nvabc1", "02:aa:bb:cc:dd:02"),
    ),
)

CASES = {
    "fresh_boot": (LAUNCH, initial_layout(1, 4, 256 * MIB, 1024 * MIB)),
    "fixed_size": (
        QemuLaunch(guest="tiny", host="h2", kernel="/k", initrd="/i", qmp_socket="/r/q", console_log="/r/c",
                   pid_file="/r/p", accel="kvm"),
        initial_layout(2, 2, 128 * MIB, 128 * MIB),
    ),
    "incoming_after_hotplug": (
        QemuLaunch(**{**LAUNCH.__dict__, "incoming": "defer"}),
        MachineLayout(
            boot_vcpus=1, max_vcpus=4, boot_memory=256 * MIB, max_memory=1024 * MIB,
            cpus=(CpuDevice("vcpu1", socket_id=1),), dimms=(DimmDevice("dimm0", 256 * MIB),),
        ),
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_argv_matches_snapshot(case: str) -> None:
    launch, layout = CASES[case]
    rendered = "\n".join(render_argv(launch, layout)) + "\n"
    path = SNAPSHOTS / f"qemu_{case}.argv"
    if os.environ.get("NONSTOP_UPDATE_SNAPSHOTS") == "1" or not path.exists():
        path.parent.mkdir(exist_ok=True)
        path.write_text(rendered)
        if os.environ.get("NONSTOP_UPDATE_SNAPSHOTS") != "1":
            pytest.fail(f"snapshot {path.name} was missing and has been written; review and commit it")
    assert rendered == path.read_text()


def test_kernel_command_line_carries_identity_and_addresses() -> None:
    append = kernel_append(LAUNCH)
    assert "nonstop.guest=web-0" in append.split()
    assert "nonstop.host=h1" in append.split()
    assert "nonstop.ip=eth0:198.18.10.5/24:198.18.10.1" in append.split()
    assert not any(word.startswith("nonstop.ip=eth1") for word in append.split())


@pytest.mark.parametrize(
    ("vcpus", "max_vcpus", "memory", "max_memory", "problem"),
    [
        (0, 1, 256 * MIB, 256 * MIB, "vcpus"),
        (3, 2, 256 * MIB, 256 * MIB, "max_vcpus"),
        (1, 300, 256 * MIB, 256 * MIB, "255"),
        (1, 1, 32 * MIB, 32 * MIB, "64 MiB"),
        (1, 1, 256 * MIB, 128 * MIB, "below memory"),
        (1, 1, 256 * MIB, 300 * MIB, "multiple of 128 MiB"),
    ],
)
def test_impossible_shapes_are_refused(vcpus: int, max_vcpus: int, memory: int, max_memory: int, problem: str) -> None:
    with pytest.raises(LayoutError, match=problem):
        initial_layout(vcpus, max_vcpus, memory, max_memory)


def test_paths_with_commas_are_refused() -> None:
    launch = QemuLaunch(**{**LAUNCH.__dict__, "disks": (DiskAttachment("root", "/a,b.qcow2", "qcow2"),)})
    with pytest.raises(LayoutError, match="comma"):
        render_argv(launch, initial_layout(1, 1, 256 * MIB, 256 * MIB))


def test_kernel_words_with_spaces_are_refused() -> None:
    launch = QemuLaunch(**{**LAUNCH.__dict__, "guest": "web 0"})
    with pytest.raises(LayoutError, match="whitespace"):
        kernel_append(launch)


def _free_slots(layout: MachineLayout) -> list[tuple[int, int, int]]:
    used = {c.socket_id for c in layout.cpus} | set(range(layout.boot_vcpus))
    return [(s, 0, 0) for s in range(layout.max_vcpus) if s not in used]


@given(
    boot=st.integers(1, 8), extra=st.integers(0, 8), steps=st.lists(st.integers(0, 16), max_size=5),
)
def test_vcpu_plans_reach_the_target_and_never_exceed_max(boot: int, extra: int, steps: list[int]) -> None:
    layout = initial_layout(boot, boot + extra, 256 * MIB, 256 * MIB)
    for target in steps:
        if target < layout.vcpus or target > layout.max_vcpus:
            with pytest.raises(LayoutError):
                plan_vcpus(layout, target, _free_slots(layout))
            continue
        devices = plan_vcpus(layout, target, _free_slots(layout))
        layout = MachineLayout(**{**layout.__dict__, "cpus": (*layout.cpus, *devices)})
        assert layout.vcpus == target
        ids = [c.id for c in layout.cpus]
        sockets = [c.socket_id for c in layout.cpus]
        assert len(set(ids)) == len(ids) and len(set(sockets)) == len(sockets)
        assert all(s >= boot for s in sockets)


@given(boot_blocks=st.integers(1, 8), extra_blocks=st.integers(0, 20), targets=st.lists(st.integers(0, 30), max_size=6))
def test_memory_plans_are_aligned_and_bounded(boot_blocks: int, extra_blocks: int, targets: list[int]) -> None:
    layout = initial_layout(1, 1, boot_blocks * DIMM_ALIGN, (boot_blocks + extra_blocks) * DIMM_ALIGN)
    for blocks in targets:
        target = blocks * DIMM_ALIGN
        if target < layout.memory or target > layout.max_memory or (
            target > layout.memory and len(layout.dimms) >= layout.memory_slots
        ):
            with pytest.raises(LayoutError):
                plan_memory(layout, target)
            continue
        dimm = plan_memory(layout, target)
        if dimm is not None:
            assert dimm.size % DIMM_ALIGN == 0 and dimm.size > 0
            layout = MachineLayout(**{**layout.__dict__, "dimms": (*layout.dimms, dimm)})
        assert layout.memory == target
        assert len(layout.dimms) <= layout.memory_slots


@given(boot=st.integers(1, 4), cpus=st.integers(0, 3), dimms=st.lists(st.integers(1, 4), max_size=3))
def test_layout_round_trips_through_json_dicts(boot: int, cpus: int, dimms: list[int]) -> None:
    layout = MachineLayout(
        boot_vcpus=boot, max_vcpus=boot + cpus, boot_memory=256 * MIB, max_memory=4096 * MIB,
        cpus=tuple(CpuDevice(f"vcpu{boot + i}", socket_id=boot + i) for i in range(cpus)),
        dimms=tuple(DimmDevice(f"dimm{i}", n * DIMM_ALIGN) for i, n in enumerate(dimms)),
    )
    assert MachineLayout.from_dict(layout.to_dict()) == layout


@given(boot=st.integers(1, 4), extra=st.integers(0, 6), up=st.integers(0, 6), down=st.integers(0, 10))
def test_vcpu_removal_takes_newest_hotplugged_first_and_keeps_boot_vcpus(boot: int, extra: int, up: int,
                                                                        down: int) -> None:
    layout = initial_layout(boot, boot + extra, 256 * MIB, 256 * MIB)
    target = min(boot + up, layout.max_vcpus)
    layout = MachineLayout(**{**layout.__dict__, "cpus": tuple(plan_vcpus(layout, target, _free_slots(layout)))})
    goal = target - down
    if goal < boot:
        with pytest.raises(LayoutError, match="booted with"):
            plan_vcpu_removal(layout, goal)
        return
    removed = plan_vcpu_removal(layout, goal)
    assert removed == list(reversed(layout.cpus))[: target - goal]
    kept = tuple(c for c in layout.cpus if c not in removed)
    assert MachineLayout(**{**layout.__dict__, "cpus": kept}).vcpus == goal


@given(sizes=st.lists(st.integers(1, 3), max_size=4), goal_blocks=st.integers(0, 16))
def test_memory_removal_is_whole_newest_dimms_or_refused(sizes: list[int], goal_blocks: int) -> None:
    layout = MachineLayout(boot_vcpus=1, max_vcpus=1, boot_memory=2 * DIMM_ALIGN, max_memory=16 * DIMM_ALIGN,
                           dimms=tuple(DimmDevice(f"dimm{i}", n * DIMM_ALIGN) for i, n in enumerate(sizes)))
    goal = goal_blocks * DIMM_ALIGN
    suffix_totals = {layout.memory - sum(d.size for d in layout.dimms[len(layout.dimms) - k:])
                     for k in range(len(layout.dimms) + 1)}
    if goal > layout.memory or goal not in suffix_totals:
        with pytest.raises(LayoutError):
            plan_memory_removal(layout, goal)
        return
    removed = plan_memory_removal(layout, goal)
    assert removed == list(reversed(layout.dimms))[: len(removed)]
    assert layout.memory - sum(d.size for d in removed) == goal


def test_tcg_boot_ram_is_8k_short_and_kvm_is_exact() -> None:
    layout = initial_layout(1, 2, 256 * MIB, 512 * MIB)
    assert boot_memory_arg(layout, "tcg") == f"{256 * 1024 - 8}k,slots=2,maxmem=512M"
    assert boot_memory_arg(layout, "kvm") == "256M,slots=2,maxmem=512M"
    # QEMU's fast dirty-sync path needs a length that is a multiple of 64 pages; TCG must miss
    # it, also after QEMU rounds -m up to a multiple of 8 KiB.
    rendered = layout.boot_memory - TCG_RAM_SHORTFALL
    assert -(-rendered // 8192) * 8192 == rendered and rendered % (64 * 4096) != 0
