"""Migration stress: ping-pong live migrations of one VM between two lab hosts under CPU load.

Role: the deliberate reproduction of the post-migration guest crashes (docs/guests-vm.md,
"Guest crashes after live migration"): boot the built-in image in a throw-away TwoHostLab,
optionally hot-add a vCPU and/or a DIMM, start shell busy-loops to load the CPUs and a client
fetching the guest's page every 20 ms, then migrate A→B→A… and after each move watch the guest
for a few seconds. A guest that dies is reported with the oops from its serial console.
``.venv/bin/python -m bench.guests.migration_stress [--migrations N] [--boot-vcpus 1|2]
[--hot-vcpu] [--hot-memory] [--burners N] [--kernel-args ...]``; exit status 1 on a crash.

Must not: run unbounded (the migrations and the watch time are bounded), leave processes,
namespaces or disks behind, or talk to anything outside the lab.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from nonstop.core.guests.model import GuestDefinition, VnicDefinition, default_mac
from nonstop.drivers.base import GuestState
from nonstop.drivers.qemu import QemuDriver
from nonstop.drivers.qemu_testlab import PagePoller, TwoHostLab, wait_http

MIB = 2**20
GUEST_IP = "198.18.10.7"
WATCH_SECONDS = 4.0


def run(args: argparse.Namespace) -> int:
    lab = TwoHostLab().build()
    root = Path(tempfile.mkdtemp(prefix=f"nonstop-vm{lab.token}-stress-"))

    def driver(host: str, ns: str, address: str) -> QemuDriver:
        return QemuDriver(cluster="stress", host=host, state_dir=root / host, netns=ns, disk_dir=root / "disks",
                          migration_address=address, kernel_args=tuple(args.kernel_args))

    a, b = driver("ha", lab.ns_a, lab.host_a_ip), driver("hb", lab.ns_b, lab.host_b_ip)
    definition = GuestDefinition(
        name="g", cluster="stress", host="ha", kind="vm", vcpus=args.boot_vcpus, max_vcpus=2, memory=256 * MIB,
        max_memory=512 * MIB,
        vnics=(VnicDefinition(network="lan", mac=default_mac("stress", "g", 0), address=f"{GUEST_IP}/24",
                              bridge=lab.bridge),))
    burners = [subprocess.Popen(["sh", "-c", "while :; do :; done"]) for _ in range(args.burners)]
    crashed = False
    try:
        asyncio.run(a.spawn(definition))
        wait_http(lab.ns_client, GUEST_IP, 120)
        if args.hot_vcpu and definition.vcpus < 2:
            asyncio.run(a.set_vcpus("g", 2))
            definition = definition.with_changes(vcpus=2)
        if args.hot_memory:
            asyncio.run(a.set_memory("g", 512 * MIB))
            definition = definition.with_changes(memory=512 * MIB)
        poller = PagePoller(lab.ns_client, GUEST_IP, interval=0.02).start()
        source, destination = a, b
        try:
            for index in range(args.migrations):
                endpoint = asyncio.run(destination.prepare_incoming(definition))
                result = asyncio.run(source.migrate("g", endpoint))
                asyncio.run(destination.finish_incoming("g"))
                state = GuestState.RUNNING
                watch_until = time.monotonic() + WATCH_SECONDS
                while time.monotonic() < watch_until and state is GuestState.RUNNING:
                    state = asyncio.run(destination.status("g")).state
                    time.sleep(0.2)
                print(f"migration {index + 1}: {source.host}->{destination.host} total {result.total_seconds:.2f} s "
                      f"downtime {result.downtime_seconds} s mode {result.extra.get('mode', 'live')[:6]} "
                      f"state {state.value} failed fetches {len(poller.failures)}", flush=True)
                if state is not GuestState.RUNNING:
                    crashed = True
                    print(asyncio.run(destination.console_log("g", max_bytes=6000)))
                    break
                source, destination = destination, source
        finally:
            poller.stop()
        print(f"{'CRASH' if crashed else 'ok'}: {args.migrations if not crashed else index + 1} migrations, "
              f"{poller.ok} fetches, {len(poller.failures)} failed, boot ids seen {len(poller.boot_ids)}")
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()
        for each in (a, b):
            asyncio.run(each.destroy("g"))
        lab.close()
        shutil.rmtree(root, ignore_errors=True)
    return 1 if crashed else 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.guests.migration_stress")
    parser.add_argument("--migrations", type=int, default=12)
    parser.add_argument("--boot-vcpus", type=int, choices=(1, 2), default=2)
    parser.add_argument("--hot-vcpu", action="store_true")
    parser.add_argument("--hot-memory", action="store_true")
    parser.add_argument("--burners", type=int, default=2)
    parser.add_argument("--kernel-args", nargs="*", default=[])
    return run(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
