"""Process-guest figures: start to first HTTP 200, hot-add latency, memory overhead, stop time.

Role: drive the real process driver (namespaces, veth on a bridge, cgroups) for ``rounds`` fresh
guests and take medians, next to a bare baseline — the same workload server started as a plain
process on 127.0.0.1 with no namespace, vNIC or cgroup — so the cost of isolation shows as a ratio.
Everything it creates carries a ``nonstop-gb<token>`` prefix and is removed at the end.

Must not: leave guests, namespaces or cgroups behind, or talk to anything outside 127.0.0.0/8 and
its own namespaces.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute

from nonstop.drivers.base import GuestDefinition, VnicDefinition
from nonstop.drivers.probe import http_get, wait_http_ok
from nonstop.drivers.process import ProcessDriver, default_command
from nonstop.drivers.process_net import netns_name
from nonstop.net import netns as nsutil

MiB = 2**20
PORT = 8080
SUBNET = "198.18.99"


def _host_switch(host_ns: str) -> None:
    nsutil.create(host_ns)
    with IPRoute(netns=host_ns) as ipr:
        ipr.link("add", ifname="nsbr0", kind="bridge")
        idx = ipr.link_lookup(ifname="nsbr0")[0]
        ipr.addr("add", index=idx, address=f"{SUBNET}.1", prefixlen=24)
        ipr.link("set", index=idx, state="up")
        ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")


def _rss(pid: int | None) -> int:
    if pid is None:
        return 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def baseline_round() -> dict[str, float]:
    """The same workload as a bare process on loopback: no namespace, vNIC or cgroup."""
    port = _free_port()
    t0 = time.perf_counter()
    proc = subprocess.Popen([*default_command(port)[:-2], "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http_ok(None, "127.0.0.1", port, deadline=10, interval=0.002)
        start = time.perf_counter() - t0
        time.sleep(0.3)
        return {"start_to_200_s": start, "rss_mib": _rss(proc.pid) / MiB}
    finally:
        proc.terminate()
        proc.wait(timeout=5)


async def guest_round(driver: ProcessDriver, index: int) -> dict[str, float]:
    name = f"b{index}"
    vnic = VnicDefinition(network="bench", mac=f"02:00:00:99:00:{index + 2:02x}",
                          address=f"{SUBNET}.{index + 2}/24", gateway=f"{SUBNET}.1", bridge="nsbr0")
    d = GuestDefinition(name=name, cluster=driver.cluster, host=driver.host, vcpus=1, max_vcpus=2,
                        memory=128 * MiB, max_memory=256 * MiB, port=PORT, vnics=(vnic,))
    ns = netns_name(driver.cluster, name)
    out: dict[str, float] = {}
    t0 = time.perf_counter()
    status = await driver.spawn(d)
    out["spawn_returns_s"] = time.perf_counter() - t0
    await asyncio.to_thread(wait_http_ok, ns, "127.0.0.1", PORT, "/health", 10, 0.002)
    out["start_to_200_s"] = time.perf_counter() - t0
    await asyncio.to_thread(wait_http_ok, driver.host_netns, vnic.ip or "", PORT, "/health", 10, 0.002)
    out["start_to_200_over_vnic_s"] = time.perf_counter() - t0

    t1 = time.perf_counter()
    await driver.set_vcpus(name, 2)
    out["vcpu_hotadd_s"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    await driver.set_memory(name, 256 * MiB)
    out["memory_hotadd_s"] = time.perf_counter() - t2
    while True:
        _, body = await asyncio.to_thread(http_get, ns, "127.0.0.1", PORT, "/")
        page = json.loads(body)
        if page["vcpus"] == 2.0 and page["memory_limit"] == 256 * MiB:
            break
    out["hotadd_seen_in_guest_s"] = time.perf_counter() - t1
    assert page["boot_id"] == status.boot_id, "hot-add restarted the guest"

    await asyncio.sleep(0.3)
    idle = await driver.status(name)
    out["cgroup_memory_mib"] = (idle.memory_usage or 0) / MiB
    out["rss_mib"] = _rss(idle.pid) / MiB
    t3 = time.perf_counter()
    await driver.stop(name, timeout=5)
    out["stop_s"] = time.perf_counter() - t3
    await driver.destroy(name)
    return out


async def _run(rounds: int) -> dict[str, Any]:
    token = secrets.token_hex(3)
    cluster = f"gb{token}"
    host_ns = f"nonstop-{cluster}-host"
    state = Path(tempfile.mkdtemp(prefix=f"nonstop-gb{token}-"))
    await asyncio.to_thread(_host_switch, host_ns)
    driver = ProcessDriver(cluster=cluster, host="bench", state_dir=state, host_netns=host_ns)
    samples: list[dict[str, float]] = []
    try:
        await guest_round(driver, 99 - 2)  # warm-up: page cache, bytecode; not measured
        for index in range(rounds):
            samples.append(await guest_round(driver, index))
    finally:
        for name in await driver.list_guests():
            await driver.destroy(name)
        await asyncio.to_thread(nsutil.delete, host_ns)
    base = [baseline_round() for _ in range(rounds)]
    keys = list(samples[0])
    return {
        "rounds": rounds,
        "cgroup_version": driver.cgroup_version,
        "median": {k: statistics.median(s[k] for s in samples) for k in keys},
        "baseline_median": {k: statistics.median(b[k] for b in base) for k in base[0]},
        "samples": samples,
        "baseline_samples": base,
        "loadavg_after": Path("/proc/loadavg").read_text().split()[:3],
    }


def run_process_benchmarks(rounds: int = 5) -> dict[str, Any]:
    return asyncio.run(_run(rounds))


ROWS = [
    ("spawn_returns_s", "process guest: spawn() returns (netns + veth + cgroup + exec)", "s", None),
    ("start_to_200_s", "process guest: start to first HTTP 200 (in its namespace)", "s", "start_to_200_s"),
    ("start_to_200_over_vnic_s", "process guest: start to first 200 over its vNIC from the host switch", "s",
     "start_to_200_s"),
    ("vcpu_hotadd_s", "vCPU hot-add 1→2 (cgroup quota written)", "s", None),
    ("memory_hotadd_s", "memory hot-add 128→256 MiB (limit written)", "s", None),
    ("hotadd_seen_in_guest_s", "hot-add until the guest's page shows both", "s", None),
    ("cgroup_memory_mib", "memory per idle process guest (cgroup usage)", "MiB", None),
    ("rss_mib", "memory per idle process guest (workload RSS)", "MiB", "rss_mib"),
    ("stop_s", "graceful stop (SIGTERM → exited, cgroup + netns removed)", "s", None),
]


def to_markdown(report: dict[str, Any]) -> str:
    med, base = report["median"], report["baseline_median"]
    lines = [
        f"## Process guests (cgroup v{report['cgroup_version']}, median of {report['rounds']})",
        "",
        "Baseline: the same workload server as a bare process on 127.0.0.1 (no namespace, vNIC or cgroup).",
        f"2-core machine, load average after the run: {' '.join(report['loadavg_after'])} (near 2 or above: "
        "other work shared the cores, noisy).",
        "",
        "| measure | median | unit | bare baseline | ratio |",
        "|---|---|---|---|---|",
    ]
    for key, label, unit, base_key in ROWS:
        value = med[key]
        if base_key is not None:
            b = base[base_key]
            lines.append(f"| {label} | {value:.4f} | {unit} | {b:.4f} | {value / b:.2f}× |")
        else:
            lines.append(f"| {label} | {value:.4f} | {unit} | | |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    result = run_process_benchmarks(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
    print(to_markdown(result))
