"""The QEMU driver for real: boot the built-in image, hot-plug, adopt, migrate live, stop.

One VM is booted once for the module (a TCG boot costs seconds) and walks through the
assertions in order: page over the guest network → adoption by a fresh driver → vCPU and
memory hot-add seen by the guest → live migration A→B under a 20 ms client → graceful stop.
Each step asserts what the guest itself reports through its network page, not what the
driver believes. Bad-input cases use their own short-lived guests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from nonstop.core.guests.model import GuestDefinition, VnicDefinition, default_mac
from nonstop.drivers import qemu_runtime as rt
from nonstop.drivers.base import (
    DiskDefinition,
    GuestNotFound,
    GuestStartError,
    GuestState,
    InvalidDefinition,
    MigrationEndpoint,
    MigrationError,
    NotSupported,
)
from nonstop.drivers.qemu import QemuDriver
from nonstop.drivers.qemu_testlab import PagePoller, TwoHostLab, fetch_in, parse_page, transfer_in, wait_http
from nonstop.image import ensure_image

pytestmark = [
    pytest.mark.root,
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="QEMU is not installed"),
]

CLUSTER = "t"
GUEST_IP = "198.18.10.5"
SECOND_IP = "198.18.10.9"
"""The hot-added second vNIC's address."""
MIB = 2**20
VNIC_BANDWIDTH = 8_000_000
"""bits/s each way on the VM's first vNIC: well below what a TCG guest moves, well above the 20 ms poller."""
BANDWIDTH_TOLERANCE = (0.5, 1.15)
"""Measured rate / cap must fall in here: at most 15 % over (the buckets' bursts), and not so far
under that the limit is no longer what bounds the transfer."""


class World:
    """The module's shared lab, drivers and the one VM (which moves from A to B)."""

    def __init__(self, tmp: Path) -> None:
        self.lab = TwoHostLab().build()
        root = tmp / f"nonstop-vm{self.lab.token}"
        self.disk_dir = root / "disks"
        self.a = QemuDriver(cluster=CLUSTER, host="ha", state_dir=root / "ha", netns=self.lab.ns_a,
                            disk_dir=self.disk_dir, migration_address=self.lab.host_a_ip)
        self.b = QemuDriver(cluster=CLUSTER, host="hb", state_dir=root / "hb", netns=self.lab.ns_b,
                            disk_dir=self.disk_dir, migration_address=self.lab.host_b_ip)
        self.where = self.a
        self.boot_id = ""
        self.definition = GuestDefinition(
            name="web-0", cluster=CLUSTER, host="ha", kind="vm", vcpus=1, max_vcpus=3,
            memory=256 * MIB, max_memory=768 * MIB,
            disks=(DiskDefinition(name="data", size=64 * MIB, provisioning="thin"),),
            vnics=(VnicDefinition(network="lan", mac=default_mac(CLUSTER, "web-0", 0), address=f"{GUEST_IP}/24",
                                  bridge=self.lab.bridge, bandwidth=VNIC_BANDWIDTH),),
        )

    def page(self) -> dict[str, str]:
        status, body = fetch_in(self.lab.ns_client, GUEST_IP, "/")
        assert status == 200
        return parse_page(body)

    async def close(self) -> None:
        for driver in (self.a, self.b):
            for name in await driver.list_guests():
                await driver.destroy(name)
        self.lab.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    w = World(tmp_path_factory.mktemp("qemu"))
    try:
        # One-time costs (image build, KVM probe) are set-up, not boot time.
        image = ensure_image()
        rt.probe_accel(image.kernel, image.initrd)
        started = time.monotonic()
        status = asyncio.run(w.a.spawn(w.definition))
        assert status.state is GuestState.RUNNING
        w.boot_id = asyncio.run(w.a.wait_serving("web-0", timeout=90))
        wait_http(w.lab.ns_client, GUEST_IP, timeout=60)
        w.boot_seconds = time.monotonic() - started
        yield w
    finally:
        asyncio.run(w.close())


def test_boot_serves_identity_page_over_guest_network(world: World) -> None:
    # The image needs ~1.8 s of CPU to boot under TCG; wall time is that divided by the share
    # of a core it gets. The 8 s promise is for a machine not overloaded by other work (the
    # benchmark reports the median); when the load average exceeds the core count (engineers
    # sharing the machine), only a gross regression fails here.
    overloaded = os.getloadavg()[0] > (os.cpu_count() or 1)
    limit = 20.0 if overloaded else 8.0
    assert world.boot_seconds < limit, f"boot to HTTP took {world.boot_seconds:.1f} s (load {os.getloadavg()[0]:.1f})"
    status, body = fetch_in(world.lab.ns_client, GUEST_IP, "/health")
    assert (status, body.strip()) == (200, "ok")
    page = world.page()
    assert page["guest"] == "web-0"
    assert page["host"] == "ha"
    assert page["boot_id"] == world.boot_id
    assert page["vcpus"] == "1"
    assert int(page["memory_online_mib"]) == 256
    status_now = asyncio.run(world.a.status("web-0"))
    assert status_now.vcpus == 1 and status_now.memory == 256 * MIB
    assert status_now.boot_id == world.boot_id
    assert "nonstop-guest: ready" in asyncio.run(world.a.console_log("web-0"))


def _tap_shaping(world: World, ns: str, tap: str) -> tuple[bool, bool]:
    """(tbf qdisc on the tap, nftables policing table for it) in namespace ``ns``."""
    from pyroute2 import IPRoute

    from nonstop.core.net import names
    from nonstop.net import nft

    with IPRoute(netns=ns) as ipr:
        found = ipr.link_lookup(ifname=tap)
        tbf = bool(found) and any(q.get_attr("TCA_KIND") == "tbf" for q in ipr.get_qdiscs(index=found[0]))
    return tbf, ("netdev", names.bandwidth_table_name(tap)) in nft.list_tables(ns)


def test_vnic_bandwidth_caps_throughput_both_ways(world: World) -> None:
    tap = world.a._taps(world.a._load("web-0"))[0]
    assert _tap_shaping(world, world.lab.ns_a, tap) == (True, True)
    # Guest → client: nftables policing on the tap's ingress. The kernel's byte-mode limit holds
    # one second of rate plus the burst, so the first ~1.1 MB pass at once: time the sustained
    # part, after the first 2 MiB of a 4 MiB response.
    status, timed, seconds = transfer_in(world.lab.ns_client, GUEST_IP, f"/cgi-bin/blob.cgi?kib={4 * 1024}",
                                         skip=2 * MIB)
    assert status == 200 and 2 * MIB - 65536 <= timed <= 2 * MIB
    sent_rate = timed * 8 / seconds
    # Client → guest: tbf on the tap's egress (a shallow bucket): the whole exchange is timed.
    status, _, seconds = transfer_in(world.lab.ns_client, GUEST_IP, "/cgi-bin/blob.cgi", body=bytes(2 * MIB))
    assert status == 200
    received_rate = 2 * MIB * 8 / seconds
    print(f"\nvNIC capped at {VNIC_BANDWIDTH / 1e6:.0f} Mbit/s: guest sent {sent_rate / 1e6:.2f} Mbit/s, "
          f"received {received_rate / 1e6:.2f} Mbit/s")
    low, high = BANDWIDTH_TOLERANCE
    for rate in (sent_rate, received_rate):
        assert low * VNIC_BANDWIDTH <= rate <= high * VNIC_BANDWIDTH, f"{rate / 1e6:.2f} Mbit/s"


def test_fresh_driver_adopts_running_guest(world: World) -> None:
    before = asyncio.run(world.a.status("web-0"))
    again = QemuDriver(cluster=CLUSTER, host="ha", state_dir=world.a.state_dir, netns=world.lab.ns_a,
                       disk_dir=world.disk_dir, migration_address=world.lab.host_a_ip)
    found = asyncio.run(again.adopt())
    assert found["web-0"].state is GuestState.RUNNING
    assert found["web-0"].pid == before.pid
    assert world.page()["boot_id"] == world.boot_id


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _wait_page(world: World, key: str, want: str, timeout: float = 20.0) -> dict[str, str]:
    # A guest onlining a CPU under TCG on a loaded machine can stall a fetch past its 3 s:
    # retry until the deadline; the caller asserts on the last page.
    deadline = time.monotonic() + timeout
    while True:
        try:
            page = world.page()
        except OSError:
            if time.monotonic() > deadline:
                raise
            continue
        if page.get(key) == want or time.monotonic() > deadline:
            return page
        time.sleep(0.1)


def test_hot_add_vcpu_and_memory_seen_by_guest(world: World) -> None:
    status = asyncio.run(world.a.set_vcpus("web-0", 2))
    assert status.vcpus == 2
    assert _wait_page(world, "vcpus", "2")["vcpus"] == "2"
    status = asyncio.run(world.a.set_memory("web-0", 512 * MIB))
    assert status.memory == 512 * MIB
    page = _wait_page(world, "memory_online_mib", "512")
    assert int(page["memory_online_mib"]) == 512
    assert page["boot_id"] == world.boot_id, "hot-plug must not reboot the guest"
    with pytest.raises(InvalidDefinition):
        asyncio.run(world.a.set_vcpus("web-0", 4))  # above max_vcpus


def test_hot_add_disk_and_vnic_and_grow_a_disk(world: World) -> None:
    assert world.page()["disks"] == "data:64M" and world.page()["nics"] == "eth0"
    asyncio.run(world.a.attach_disk("web-0", DiskDefinition(name="extra", size=32 * MIB, provisioning="thick")))
    asyncio.run(world.a.resize_disk("web-0", "data", 96 * MIB))
    second = VnicDefinition(network="lan", mac=default_mac(CLUSTER, "web-0", 1), bridge=world.lab.bridge,
                            bandwidth=VNIC_BANDWIDTH, address=f"{SECOND_IP}/24")
    status = asyncio.run(world.a.attach_vnic("web-0", second))
    assert "vnic_address_error" not in status.extra, status.extra
    assert _tap_shaping(world, world.lab.ns_a, world.a._taps(world.a._load("web-0"))[1]) == (True, True)
    page = _wait_page(world, "nics", "eth0,eth1")
    # the hot-added vNIC got its address from the driver over the guest channel: the guest answers on it
    code, body = fetch_in(world.lab.ns_client, SECOND_IP, "/")
    assert code == 200 and "guest=web-0" in body, (code, body[:200])
    page = _wait_page(world, "disks", "data:96M,extra:32M")
    assert (page["disks"], page["nics"]) == ("data:96M,extra:32M", "eth0,eth1")
    with pytest.raises(InvalidDefinition, match="shrinking"):
        asyncio.run(world.a.resize_disk("web-0", "data", 32 * MIB))
    definition = asyncio.run(world.a.definition("web-0"))
    assert [d.name for d in definition.disks] == ["data", "extra"] and len(definition.vnics) == 2
    world.definition = definition


async def _migrate_watching(world: World, endpoint: MigrationEndpoint) -> tuple[Any, list[tuple[GuestState, Any]]]:
    seen: list[tuple[GuestState, Any]] = []
    migration = asyncio.create_task(world.a.migrate("web-0", endpoint))
    while not migration.done():
        with contextlib.suppress(GuestNotFound):
            status = await world.a.status("web-0")
            seen.append((status.state, status.extra.get("qmp_error")))
        await asyncio.sleep(0.05)
    return await migration, seen


def test_failed_migration_leaves_guest_running_on_source(world: World) -> None:
    nowhere = MigrationEndpoint(guest="web-0", host="hb", uri=f"tcp:{world.lab.host_b_ip}:9")  # nothing listens
    with pytest.raises(MigrationError, match="failed"):
        asyncio.run(world.a.migrate("web-0", nowhere, timeout=20))
    status = asyncio.run(world.a.status("web-0"))
    assert status.state is GuestState.RUNNING and status.extra["qemu_status"] == "running"
    assert world.page()["boot_id"] == world.boot_id


def test_live_migration_keeps_serving_and_boot_id(world: World) -> None:
    # The guest has a hot-plugged DIMM, so under TCG it is copied paused (~1-2 s): a fetch may
    # wait that long plus a TCP retransmit on a loaded machine, so the client waits up to 10 s.
    # (Live copies are covered by test_boot_ram_survives_a_live_copy_bit_for_bit.)
    poller = PagePoller(world.lab.ns_client, GUEST_IP, interval=0.02, timeout=10.0).start()
    try:
        _wait_for(lambda: poller.ok >= 3, "the client fetching before the move")
        endpoint = asyncio.run(world.b.prepare_incoming(world.definition))
        assert asyncio.run(world.b.status("web-0")).state is GuestState.INCOMING
        result, seen = asyncio.run(_migrate_watching(world, endpoint))
        status = asyncio.run(world.b.finish_incoming("web-0"))
        world.where = world.b
        after = poller.ok
        _wait_for(lambda: poller.ok >= after + 5, "the client fetching after the move")
    finally:
        poller.stop()
    print(f"\nmigration: total {result.total_seconds:.3f} s, downtime {result.downtime_seconds} s, "
          f"{poller.ok} fetches, slowest {poller.slowest * 1000:.0f} ms")
    assert poller.failures == []
    # Observing the source during the move never blocked behind the migration's QMP session.
    assert seen and all(state in (GuestState.RUNNING, GuestState.MIGRATING) for state, _ in seen)
    # (the last samples may race with the source QEMU quitting after the switch-over: errors are
    # allowed only in a trailing run, never before a sample that succeeded)
    errors = [error is not None for _, error in seen]
    while errors and errors[-1]:
        errors.pop()
    assert not any(errors), seen
    assert poller.boot_ids == [world.boot_id]
    assert status.state is GuestState.RUNNING and status.vcpus == 2 and status.memory == 512 * MIB
    assert result.downtime_seconds is not None and result.downtime_seconds < 5.0
    paused = asyncio.run(world.b.status("web-0")).extra.get("accel") == "tcg"
    assert result.extra["mode"].startswith("paused" if paused else "live"), result.extra["mode"]
    assert asyncio.run(world.a.list_guests()) == []
    with pytest.raises(GuestNotFound):
        asyncio.run(world.a.status("web-0"))
    # The shared layout was handed to B (a later clean-up on A must leave it: a failback needs it).
    assert json.loads((world.disk_dir / CLUSTER / "web-0" / "layout.json").read_text())["owner"] == "hb"
    page = _wait_page(world, "host", "hb", timeout=5)
    assert page["boot_id"] == world.boot_id and page["vcpus"] == "2"
    assert page["host"] == "hb", "the destination tells the guest its new host over virtio-serial"
    assert asyncio.run(world.b.status("web-0")).boot_id == world.boot_id


def test_unplug_disk_and_vnic_after_migration(world: World) -> None:
    assert world.page()["disks"] == "data:96M,extra:32M", "hot-plugged devices moved with the guest"
    taps = world.b._taps(world.b._load("web-0"))
    assert [_tap_shaping(world, world.lab.ns_b, tap) for tap in taps] == [(True, True)] * 2, "shaped on B too"
    assert all(_tap_shaping(world, world.lab.ns_a, tap)[1] is False for tap in taps), "A cleaned up"
    asyncio.run(world.b.detach_disk("web-0", "extra"))
    asyncio.run(world.b.detach_vnic("web-0", default_mac(CLUSTER, "web-0", 1)))
    page = _wait_page(world, "nics", "eth0")
    assert (page["disks"], page["nics"]) == ("data:96M", "eth0")
    assert page["boot_id"] == world.boot_id
    assert _tap_shaping(world, world.lab.ns_b, taps[1]) == (False, False)


def test_unplug_memory_seen_by_guest_and_vcpu_unplug_refused_under_tcg(world: World) -> None:
    # After the move the hot-plugged DIMM is a command-line device on B: unplug it live.
    started = time.monotonic()
    status = asyncio.run(world.b.set_memory("web-0", 256 * MIB))
    assert status.memory == 256 * MIB
    page = _wait_page(world, "memory_online_mib", "256")
    assert page["memory_online_mib"] == "256" and page["boot_id"] == world.boot_id, "unplug must not reboot"
    print(f"\nunplug of 256 MiB took {time.monotonic() - started:.1f} s")
    assert world.b._layout("web-0").dimms == ()
    with pytest.raises(InvalidDefinition, match="booted with"):
        asyncio.run(world.b.set_memory("web-0", 128 * MIB))  # boot memory stays
    # vCPU unplug would work in the guest but kills QEMU 7.2 under TCG at the next memory-map
    # change: refused, and the capability says so (the agent restarts to shrink instead).
    assert world.b.capabilities.unplug_vcpu is False and world.b.capabilities.unplug_memory is True
    with pytest.raises(NotSupported, match="TCG"):
        asyncio.run(world.b.set_vcpus("web-0", 1))
    # Plug again after the unplug: the freed slot and DIMM id are reused; QEMU survives.
    assert asyncio.run(world.b.set_memory("web-0", 384 * MIB)).memory == 384 * MIB
    page = _wait_page(world, "memory_online_mib", "384")
    assert (page["memory_online_mib"], page["vcpus"]) == ("384", "2")


def test_graceful_stop_powers_off_via_acpi(world: World) -> None:
    driver = world.where
    started = time.monotonic()
    status = asyncio.run(driver.stop("web-0", timeout=20))
    assert status.state is GuestState.STOPPED
    assert time.monotonic() - started < 20, "ACPI power-off should not need the force path"
    assert "power button" in asyncio.run(driver.console_log("web-0"))
    record = driver._load("web-0")
    assert record["forced"] is False
    with pytest.raises(OSError):
        fetch_in(world.lab.ns_client, GUEST_IP, "/health", timeout=1.0)


def _ram_image(sock: Path, size: int, out: Path) -> bytes:
    async def save() -> None:
        async with rt.qmp_session(sock) as qmp:
            await qmp.execute("pmemsave", {"val": 0, "size": size, "filename": str(out)})
    asyncio.run(save())
    return out.read_bytes()


def _plain_guest(world: World, name: str, ip: str, *, vcpus: int) -> GuestDefinition:
    """A 256 MiB guest with no hot-plug headroom (so no DIMM) and one vNIC on the lab bridge."""
    return GuestDefinition(
        name=name, cluster=CLUSTER, host="ha", kind="vm", vcpus=vcpus, max_vcpus=vcpus, memory=256 * MIB,
        max_memory=256 * MIB, vnics=(VnicDefinition(network="lan", mac=default_mac(CLUSTER, name, 0),
                                                    address=f"{ip}/24", bridge=world.lab.bridge),))


def test_boot_ram_survives_a_live_copy_bit_for_bit(world: World, tmp_path: Path) -> None:
    """Regression guard for the post-migration crashes (docs/guests-vm.md): QEMU 7.2's fast
    dirty-bitmap sync loses TCG writes unless the boot RAM block is sized off the 256 KiB grid.
    Copy a busy 2-vCPU guest into a destination that stays paused (-S) and compare both RAM
    images page by page; without the fix about one copy in three differs."""
    name, ip = "ram-0", "198.18.10.6"
    definition = _plain_guest(world, name, ip, vcpus=2)
    asyncio.run(world.a.spawn(definition))
    try:
        wait_http(world.lab.ns_client, ip, timeout=60)
        source = world.a._run_dir(name)
        argv = world.a._load(name)["argv"]
        size = definition.memory - (8192 if "tcg" in " ".join(argv) else 0)
        poller = PagePoller(world.lab.ns_client, ip, interval=0.02).start()
        differing: list[int] = []
        try:
            for copy in range(2):
                target = tmp_path / f"dst{copy}"
                target.mkdir()
                dst_argv = [a.replace(str(source), str(target)).replace("ifname=", "ifname=x") for a in argv]
                dst = rt.spawn([*dst_argv, "-S", "-incoming", f"tcp:127.0.0.1:{47000 + copy}"], world.lab.ns_a,
                               target / "qemu.log")
                try:
                    asyncio.run(rt.wait_qmp(target / "qmp.sock", dst.pid, dst, timeout=30))

                    async def copy_over(port: int) -> None:
                        async with rt.qmp_session(source / "qmp.sock") as qmp:
                            await qmp.execute("migrate-set-parameters", {"downtime-limit": 100})
                            await qmp.execute("migrate", {"uri": f"tcp:127.0.0.1:{port}"})
                            while (await qmp.execute("query-migrate"))["status"] != "completed":  # type: ignore[index]
                                await asyncio.sleep(0.02)
                    asyncio.run(asyncio.wait_for(copy_over(47000 + copy), 60))
                    before = _ram_image(source / "qmp.sock", size, tmp_path / "src.bin")
                    after = _ram_image(target / "qmp.sock", size, tmp_path / "dst.bin")
                    differing += [i for i in range(0, size, 4096) if before[i:i + 4096] != after[i:i + 4096]]
                finally:
                    rt.kill_process(dst.pid, dst)

                async def resume() -> None:  # the source takes over again, as after a failed move
                    async with rt.qmp_session(source / "qmp.sock") as qmp:
                        await qmp.execute("cont")
                asyncio.run(resume())
                time.sleep(1.0)
        finally:
            poller.stop()
        assert differing == [], f"{len(differing)} pages differ after the copy, e.g. {[hex(a) for a in differing[:4]]}"
        assert poller.ok > 0 and fetch_in(world.lab.ns_client, ip, "/health")[0] == 200
    finally:
        asyncio.run(world.a.destroy(name))


def test_live_migration_of_a_plain_guest_is_live_under_a_20ms_client(world: World) -> None:
    """The issue's migration test in its strict form: a guest without hot-plugged memory is copied
    live (not paused) from A to B while a client fetches its page every 20 ms: no failed fetch,
    the same boot id before and after."""
    name, ip = "live-0", "198.18.10.8"
    definition = _plain_guest(world, name, ip, vcpus=1)
    asyncio.run(world.a.spawn(definition))
    try:
        boot_id = asyncio.run(world.a.wait_serving(name, timeout=90))
        wait_http(world.lab.ns_client, ip, timeout=60)
        poller = PagePoller(world.lab.ns_client, ip, interval=0.02).start()
        try:
            _wait_for(lambda: poller.ok >= 3, "the client fetching before the move", timeout=30)
            endpoint = asyncio.run(world.b.prepare_incoming(definition))
            result = asyncio.run(world.a.migrate(name, endpoint, timeout=120))
            asyncio.run(world.b.finish_incoming(name))
            after = poller.ok
            _wait_for(lambda: poller.ok >= after + 5, "the client fetching after the move", timeout=30)
        finally:
            poller.stop()
        print(f"\nlive migration: total {result.total_seconds:.3f} s, downtime {result.downtime_seconds} s, "
              f"mode {result.extra.get('mode')}, {poller.ok} fetches, slowest {poller.slowest * 1000:.0f} ms")
        assert result.extra["mode"] == "live", result.extra["mode"]
        assert poller.failures == []
        assert poller.boot_ids == [boot_id]
        assert result.downtime_seconds is not None and result.downtime_seconds < 1.0
        assert asyncio.run(world.b.status(name)).boot_id == boot_id
        assert name not in asyncio.run(world.a.list_guests())
    finally:
        for driver in (world.a, world.b):
            if name in asyncio.run(driver.list_guests()):
                asyncio.run(driver.destroy(name))


# --------------------------------------------------------------------------- bad input


def _driver(tmp_path: Path, netns: str | None = None) -> QemuDriver:
    return QemuDriver(cluster=CLUSTER, host="hx", state_dir=tmp_path / "run", disk_dir=tmp_path / "disks",
                      netns=netns)


def test_missing_image_is_rejected_before_anything_is_created(tmp_path: Path) -> None:
    driver = _driver(tmp_path)
    definition = GuestDefinition(name="bad-0", cluster=CLUSTER, host="hx", kind="vm",
                                 image=str(tmp_path / "nope.qcow2"))
    with pytest.raises(InvalidDefinition, match="nope.qcow2 not found"):
        asyncio.run(driver.spawn(definition))
    assert asyncio.run(driver.list_guests()) == []


def test_bad_disk_is_rejected_with_reason(tmp_path: Path) -> None:
    driver = _driver(tmp_path)
    bad = tmp_path / "garbage.qcow2"
    bad.write_bytes(b"QFI\xfb" + b"\xff" * 1020)  # qcow2 magic, nonsense header
    definition = GuestDefinition(name="bad-1", cluster=CLUSTER, host="hx", kind="vm",
                                 disks=(DiskDefinition(name="root", path=str(bad)),))
    with pytest.raises(GuestStartError, match="bad disk") as caught:
        asyncio.run(driver.create(definition))
    assert caught.value.permanent
    assert asyncio.run(driver.list_guests()) == []


def test_disk_vanished_before_start_ends_failed_without_process(tmp_path: Path) -> None:
    driver = _driver(tmp_path)
    definition = GuestDefinition(name="bad-4", cluster=CLUSTER, host="hx", kind="vm",
                                 disks=(DiskDefinition(name="root", size=16 * MIB),))
    asyncio.run(driver.create(definition))
    (tmp_path / "disks" / CLUSTER / "bad-4" / "root.qcow2").unlink()
    with pytest.raises(GuestStartError) as caught:
        asyncio.run(driver.start("bad-4"))
    status = asyncio.run(driver.status("bad-4"))
    assert status.state is GuestState.FAILED
    assert "root.qcow2" in (status.failure_reason or "") and caught.value.reason == status.failure_reason
    assert status.pid is None and not (tmp_path / "run" / "bad-4" / "qmp.sock").exists()
    asyncio.run(driver.destroy("bad-4"))


def test_stopped_guest_takes_new_shape_for_its_next_boot(tmp_path: Path) -> None:
    driver = _driver(tmp_path)
    definition = GuestDefinition(name="cold-0", cluster=CLUSTER, host="hx", kind="vm", vcpus=2, max_vcpus=4,
                                 memory=512 * MIB, max_memory=1024 * MIB)
    asyncio.run(driver.create(definition))
    asyncio.run(driver.set_vcpus("cold-0", 1))
    asyncio.run(driver.set_memory("cold-0", 256 * MIB))
    assert asyncio.run(driver.definition("cold-0")).vcpus == 1
    layout = driver._layout("cold-0")
    assert (layout.boot_vcpus, layout.boot_memory, layout.cpus, layout.dimms) == (1, 256 * MIB, (), ())
    with pytest.raises(InvalidDefinition, match="maxima"):
        asyncio.run(driver.set_vcpus("cold-0", 5))
    asyncio.run(driver.destroy("cold-0"))


def test_not_enough_memory_fails_with_reason(tmp_path: Path) -> None:
    driver = _driver(tmp_path)
    huge = (rt.host_memory_available() // (128 * MIB) + 8) * 128 * MIB
    definition = GuestDefinition(name="bad-2", cluster=CLUSTER, host="hx", kind="vm", memory=huge)
    asyncio.run(driver.create(definition))
    with pytest.raises(GuestStartError, match="not enough memory"):
        asyncio.run(driver.start("bad-2"))
    status = asyncio.run(driver.status("bad-2"))
    assert status.state is GuestState.FAILED and "not enough memory" in (status.failure_reason or "")
    asyncio.run(driver.destroy("bad-2"))
    asyncio.run(driver.destroy("bad-2"))  # destroying what is gone succeeds
    assert asyncio.run(driver.list_guests()) == []


def test_missing_tap_bridge_cleans_up_partial_start(tmp_path: Path) -> None:
    lab = TwoHostLab().build()
    try:
        driver = _driver(tmp_path, netns=lab.ns_a)
        definition = GuestDefinition(
            name="bad-3", cluster=CLUSTER, host="hx", kind="vm",
            vnics=(VnicDefinition(network="lan", mac=default_mac(CLUSTER, "bad-3", 0), bridge="nosuchbr"),))
        with pytest.raises(GuestStartError, match="bridge nosuchbr does not exist"):
            asyncio.run(driver.spawn(definition))
        assert asyncio.run(driver.list_guests()) == []
        assert not (tmp_path / "disks" / CLUSTER / "bad-3").exists()
    finally:
        lab.close()


AGENT_SCRIPT = """
import asyncio, sys
from nonstop.core.guests.model import GuestDefinition
from nonstop.drivers.qemu import QemuDriver
driver = QemuDriver(cluster="t", host="hx", state_dir=sys.argv[1], disk_dir=sys.argv[2])
asyncio.run(driver.spawn(GuestDefinition(name="orphan-0", cluster="t", host="hx", kind="vm")))
print("started", flush=True)
sys.stdin.read()  # wait to be killed
"""


def test_guest_survives_agent_kill_9_and_is_adopted(tmp_path: Path) -> None:
    agent = subprocess.Popen([sys.executable, "-c", AGENT_SCRIPT, str(tmp_path / "run"), str(tmp_path / "disks")],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    driver = _driver(tmp_path)
    try:
        assert agent.stdout is not None and agent.stdout.readline().strip() == "started"
        before = asyncio.run(driver.status("orphan-0"))
        agent.kill()  # SIGKILL: no clean-up runs in the agent
        agent.wait(timeout=10)
        found = asyncio.run(driver.adopt())
        assert set(found) == {"orphan-0"}
        assert found["orphan-0"].state is GuestState.RUNNING and found["orphan-0"].pid == before.pid
        assert found["orphan-0"].vcpus == 1, "adopted over its QMP socket"
        boot_id = asyncio.run(driver.wait_serving("orphan-0", timeout=30))
        stopped = asyncio.run(driver.stop("orphan-0", timeout=20))
        assert stopped.state is GuestState.STOPPED and driver._load("orphan-0")["forced"] is False
        assert stopped.boot_id == boot_id
    finally:
        if agent.poll() is None:
            agent.kill()
        asyncio.run(driver.destroy("orphan-0"))
