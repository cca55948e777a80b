"""A mirrored VM disk survives a drive failure (root, QEMU/TCG): the built-in image boots, a
mirrored disk (quorum over two NBD-served qcow2 legs, one per host drive) is hot-plugged, and
the guest writes and verifies 64 KiB blocks through its disk CGI while the lab BMC fails
Disk0 (its leg's server dies), the dead leg is dropped, Disk0 is repaired (a blank leg) and
re-mirrored. Afterwards Disk1 fails too: every block must still read back with the checksum
the guest computed when it wrote it — so the re-mirrored copy holds all the data."""

from __future__ import annotations

import asyncio
import random
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from nonstop.bmc.model import ComponentKind, HostHardware
from nonstop.bmc.server import BmcConfig, BmcHooks, start_bmc
from nonstop.components.chaos import fail_component
from nonstop.components.mirror import DriveLegs, MirrorQmp
from nonstop.core.guests.model import GuestDefinition, VnicDefinition, default_mac
from nonstop.core.spec import HostSpec
from nonstop.drivers import qemu_runtime as rt
from nonstop.drivers.qemu import QemuDriver
from nonstop.drivers.qemu_testlab import TwoHostLab, fetch_in, wait_http
from nonstop.image import ensure_image

pytestmark = [
    pytest.mark.root, pytest.mark.timeout(240),
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None or shutil.which("qemu-nbd") is None,
                       reason="QEMU / qemu-nbd not installed"),
]

GUEST_IP = "198.18.10.7"
MIB = 2**20


class Workload:
    """Writes fresh blocks and re-reads random earlier ones through the guest; every answer
    that is not "ok" or a checksum that differs from the one the guest wrote is a failure."""

    def __init__(self, ns: str, dev: str = "vda", blocks: int = 64) -> None:
        self.ns, self.dev, self.blocks = ns, dev, blocks
        self.written: dict[int, str] = {}
        self.ops = 0
        self.failures: list[str] = []
        self.stop = threading.Event()
        self.rng = random.Random(7)
        self.thread = threading.Thread(target=self.run, daemon=True)

    def call(self, op: str, block: int) -> str | None:
        try:
            status, body = fetch_in(self.ns, GUEST_IP, f"/cgi-bin/disk.cgi?dev={self.dev}&op={op}&block={block}",
                                    timeout=20)
        except OSError as exc:
            self.failures.append(f"{op} {block}: {exc!r}")
            return None
        word, _, value = body.strip().partition(" ")
        if status != 200 or word != "ok":
            self.failures.append(f"{op} {block}: {status} {body.strip()[:80]}")
            return None
        self.ops += 1
        return value

    def verify(self, block: int) -> None:
        got = self.call("read", block)
        if got is not None and got != self.written[block]:
            self.failures.append(f"block {block}: read {got[:12]}, wrote {self.written[block][:12]}")

    def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            block = i % self.blocks
            digest = self.call("write", block)
            if digest is not None:
                self.written[block] = digest
            if self.written:
                self.verify(self.rng.choice(sorted(self.written)))
            i += 1

    def wait_ops(self, more: int, timeout: float = 60) -> None:
        target, deadline = self.ops + more, time.monotonic() + timeout
        while self.ops < target:
            assert time.monotonic() < deadline and self.thread.is_alive(), f"workload stalled at {self.ops} ops"
            time.sleep(0.05)


async def test_drive_failure_under_mirrored_disk_keeps_data(tmp_path: Path) -> None:
    image = await asyncio.to_thread(ensure_image)
    await asyncio.to_thread(rt.probe_accel, image.kernel, image.initrd)
    lab = await asyncio.to_thread(lambda: TwoHostLab().build())
    driver = QemuDriver(cluster="t", host="ha", state_dir=tmp_path / "ha", netns=lab.ns_a,
                        disk_dir=tmp_path / "disks", migration_address=lab.host_a_ip)
    legs = DriveLegs("vm-0", "data", 64 * MIB, {"Disk0": tmp_path / "Disk0", "Disk1": tmp_path / "Disk1"},
                     sockets=tmp_path / "legs")
    mirror = MirrorQmp(tmp_path / "ha" / "vm-0" / "qmp.sock")
    timings: dict[str, Any] = {}

    async def on_component(kind: ComponentKind, name: str, failed: bool) -> None:
        # The lab's drive emulation: the BMC's drive failure kills that drive's leg server,
        # a repair brings a blank drive.
        if kind is ComponentKind.DRIVE:
            if failed:
                legs.fail_drive(name)
            else:
                legs.repair_drive(name)

    bmc = await start_bmc(BmcConfig(HostHardware.from_spec(HostSpec(name="ha", cpus=2, memory="4GiB")), None),
                          BmcHooks(on_component=on_component))
    definition = GuestDefinition(
        name="vm-0", cluster="t", host="ha", kind="vm", vcpus=1, memory=256 * MIB,
        vnics=(VnicDefinition(network="lan", mac=default_mac("t", "vm-0", 0), address=f"{GUEST_IP}/24",
                              bridge=lab.bridge),))
    workload = Workload(lab.ns_client)
    try:
        await driver.spawn(definition)
        await driver.wait_serving("vm-0", timeout=60)
        await asyncio.to_thread(wait_http, lab.ns_client, GUEST_IP, 60)
        await mirror.attach("data", legs.start(), slot=0)
        deadline = time.monotonic() + 20
        while (await asyncio.to_thread(fetch_in, lab.ns_client, GUEST_IP, "/cgi-bin/disk.cgi?dev=vda&op=read&block=0")
               )[1].startswith("error"):
            assert time.monotonic() < deadline, "hot-plugged mirrored disk never appeared in the guest"
            await asyncio.sleep(0.3)
        workload.thread.start()
        await asyncio.to_thread(workload.wait_ops, 20)

        failed_at = time.monotonic()
        await asyncio.to_thread(fail_component, bmc.url, "drive", "ha", "Disk0")
        await asyncio.to_thread(workload.wait_ops, 16)  # running on the dead leg's quorum: no error
        timings["ops_before_dropping_dead_leg"] = workload.ops
        await mirror.drop_leg("data", "Disk0")
        await asyncio.to_thread(workload.wait_ops, 10)
        await asyncio.to_thread(fail_component, bmc.url, "drive", "ha", "Disk0", False)
        new_leg = legs.running["Disk0"].leg
        timings["remirror"] = await mirror.remirror("data", new_leg)
        timings["repaired_after_s"] = time.monotonic() - failed_at
        await asyncio.to_thread(workload.wait_ops, 10)
        workload.stop.set()
        await asyncio.to_thread(workload.thread.join, 30)
        assert workload.failures == [], workload.failures[:5]

        # Now the other drive dies: all data must come from the re-mirrored leg.
        await asyncio.to_thread(fail_component, bmc.url, "drive", "ha", "Disk1")
        await mirror.drop_leg("data", "Disk1")
        for block in sorted(workload.written):
            await asyncio.to_thread(workload.verify, block)
        assert workload.failures == [], workload.failures[:5]
        errors = await asyncio.to_thread(fetch_in, lab.ns_client, GUEST_IP, "/cgi-bin/disk.cgi?dev=vda&op=errors")
        assert errors[1].strip() == "ok 0", errors
        timings.update(ops=workload.ops, blocks=len(workload.written))
        print("\nmirror:", timings)
        assert timings["remirror"]["paused"] < 2.0
    finally:
        workload.stop.set()
        for name in await driver.list_guests():
            await driver.destroy(name)
        legs.close()
        await bmc.stop()
        await asyncio.to_thread(lab.close)
