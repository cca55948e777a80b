"""VM benchmark: boot to first HTTP 200, hot-add latency, live migration, idle memory overhead.

Role: ``run_vm_benchmarks(rounds=5) -> dict`` boots the built-in image ``rounds`` times with
the real QEMU driver in a throw-away two-host lab (``nonstop.drivers.qemu_testlab``) and
reports medians: boot → first ``/health`` 200 from a client namespace, vCPU and memory
hot-add latency (QMP call until the guest's own page shows the new count), live migration
total time and QEMU-reported downtime (with a client fetching the page every 20 ms; failed
fetches are counted), and the RSS of an idle QEMU. Runnable alone:
``.venv/bin/python -m bench.guests.vm_bench`` writes bench/results/vm_bench.{json,md}.

Must not: leave namespaces, processes or disks behind, or talk to anything outside the lab.
The machine is shared while engineers work, so figures are noisy; the table says TCG/KVM.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from nonstop.core.guests.model import GuestDefinition, VnicDefinition, default_mac
from nonstop.drivers import qemu_runtime as rt
from nonstop.drivers.qemu import QemuDriver
from nonstop.drivers.qemu_testlab import PagePoller, TwoHostLab, fetch_in, parse_page, wait_http
from nonstop.image import ensure_image

MIB = 2**20
GUEST_IP = "198.18.10.5"
RESULTS = Path(__file__).resolve().parent.parent / "results"


def _wait_page(lab: TwoHostLab, key: str, want: str, timeout: float = 20.0) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            if parse_page(fetch_in(lab.ns_client, GUEST_IP, "/", timeout=1.0)[1]).get(key) == want:
                return time.monotonic() - started
        except OSError:
            pass
        time.sleep(0.01)
    raise TimeoutError(f"guest page never showed {key}={want}")


def _one_round(lab: TwoHostLab, root: Path, index: int) -> dict[str, float]:
    name = f"bench-{index}"
    drivers = [
        QemuDriver(cluster="bench", host=host, state_dir=root / host, netns=ns, disk_dir=root / "disks",
                   migration_address=address)
        for host, ns, address in (("ha", lab.ns_a, lab.host_a_ip), ("hb", lab.ns_b, lab.host_b_ip))
    ]
    a, b = drivers
    definition = GuestDefinition(
        name=name, cluster="bench", host="ha", kind="vm", vcpus=1, max_vcpus=2, memory=256 * MIB,
        max_memory=512 * MIB,
        vnics=(VnicDefinition(network="lan", mac=default_mac("bench", name, 0), address=f"{GUEST_IP}/24",
                              bridge=lab.bridge),),
    )
    out: dict[str, float] = {}
    try:
        started = time.monotonic()
        asyncio.run(a.spawn(definition))
        wait_http(lab.ns_client, GUEST_IP, timeout=60)
        out["boot_to_http_s"] = time.monotonic() - started
        time.sleep(2.0)  # let the guest go idle before sampling memory
        status = asyncio.run(a.status(name))
        rss, _ = rt.process_usage(status.pid or 0)
        out["idle_rss_mib"] = (rss or 0) / MIB

        started = time.monotonic()
        asyncio.run(a.set_vcpus(name, 2))
        out["vcpu_hotadd_qmp_s"] = time.monotonic() - started
        _wait_page(lab, "vcpus", "2")
        out["vcpu_hotadd_seen_s"] = time.monotonic() - started

        started = time.monotonic()
        asyncio.run(a.set_memory(name, 512 * MIB))
        out["memory_hotadd_qmp_s"] = time.monotonic() - started
        _wait_page(lab, "memory_online_mib", "512")
        out["memory_hotadd_seen_s"] = time.monotonic() - started

        poller = PagePoller(lab.ns_client, GUEST_IP, interval=0.02).start()
        try:
            time.sleep(0.2)
            endpoint = asyncio.run(b.prepare_incoming(definition.with_changes(vcpus=2, memory=512 * MIB)))
            result = asyncio.run(a.migrate(name, endpoint))
            asyncio.run(b.finish_incoming(name))
            time.sleep(0.3)
        finally:
            poller.stop()
        if result.total_seconds > 5:
            print(f"slow migration: {result.extra.get('trace')}", file=sys.stderr)
        out["migration_total_s"] = result.total_seconds
        out["migration_downtime_s"] = result.downtime_seconds or float("nan")
        out["migration_transferred_mib"] = (result.transferred_bytes or 0) / MIB
        out["migration_failed_fetches"] = float(len(poller.failures))
        out["migration_slowest_fetch_s"] = poller.slowest
        out["migration_boot_id_changes"] = float(max(0, len(poller.boot_ids) - 1))
    finally:
        for driver in drivers:
            asyncio.run(driver.destroy(name))
    return out


def run_vm_benchmarks(rounds: int = 5) -> dict[str, Any]:
    """Medians (and all samples) of the VM figures over ``rounds`` fresh VMs."""
    if shutil.which("qemu-system-x86_64") is None:
        return {"skipped": "QEMU is not installed"}
    # One-time set-up (image build, KVM probe) is not part of any boot measured below.
    image = ensure_image()
    accel = rt.probe_accel(image.kernel, image.initrd)
    lab = TwoHostLab().build()
    root = Path(tempfile.mkdtemp(prefix=f"nonstop-vm{lab.token}-"))
    samples: list[dict[str, float]] = []
    try:
        for index in range(rounds):
            samples.append(_one_round(lab, root, index))
    finally:
        lab.close()
        shutil.rmtree(root, ignore_errors=True)
    keys = list(samples[0])
    return {
        "accel": accel,
        "rounds": rounds,
        "median": {k: statistics.median(s[k] for s in samples) for k in keys},
        "samples": samples,
    }


ROWS = [
    ("boot_to_http_s", "VM boot to first HTTP 200", "s"),
    ("vcpu_hotadd_qmp_s", "vCPU hot-add (QMP device_add returns)", "s"),
    ("vcpu_hotadd_seen_s", "vCPU hot-add (guest page shows it)", "s"),
    ("memory_hotadd_qmp_s", "memory hot-add 256 MiB (QMP returns)", "s"),
    ("memory_hotadd_seen_s", "memory hot-add 256 MiB (guest page shows it)", "s"),
    ("migration_total_s", "live migration total time (512 MiB guest)", "s"),
    ("migration_downtime_s", "live migration downtime (QEMU query-migrate)", "s"),
    ("migration_slowest_fetch_s", "slowest 20 ms-client fetch during migration", "s"),
    ("migration_failed_fetches", "failed client fetches during migration", ""),
    ("idle_rss_mib", "idle VM memory overhead (QEMU RSS, 256 MiB guest)", "MiB"),
]


def to_markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# VM benchmark ({report['accel'].upper()}, median of {report['rounds']})",
        "",
        "Shared 2-core machine while other engineers ran their work: figures are noisy.",
        "",
        "| measure | median | unit |",
        "|---|---|---|",
    ]
    for key, label, unit in ROWS:
        lines.append(f"| {label} | {report['median'][key]:.3f} | {unit} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    report = run_vm_benchmarks(rounds)
    if "skipped" in report:
        print(report["skipped"])
        return 0
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "vm_bench.json").write_text(json.dumps(report, indent=2))
    markdown = to_markdown(report)
    (RESULTS / "vm_bench.md").write_text(markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
