"""Lab fabric and host networking benchmark: what a guest's packets pay for the path.

Paths, each measured with iperf3 (TCP, one stream, 3 s, median of 5 interleaved rounds) and a UDP
echo ping-pong (400 round trips per round after 50 warm-up, 2,000 in all; p50/p99 in µs):

1. ``direct_veth`` -- the peer/baseline: two namespaces joined by one veth pair;
2. ``bridged_cross_host_nic`` -- guest on host1 to guest on host2 over a bridged network
   whose uplink is a plain NIC: vNIC veth, network bridge, patch veth, uplink bridge,
   NIC cable, lab switch, and the same back down;
3. ``bridged_cross_host_team`` -- the same with active-backup teams as uplinks (adds the
   team's veth + nftables netdev ``fwd`` hop on each side);
4. ``nat_guest_to_outside`` -- a NAT guest to the out namespace (masquerade + conntrack).

Must not: leave anything behind (every lab it builds is torn down), or send a packet
outside its own namespaces.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import socket
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from pyroute2 import IPRoute

from nonstop.core.spec import ClusterSpec
from nonstop.lab import fabric, names
from nonstop.net import host as host_net
from nonstop.net import netns

Progress = Callable[[str], None]
RUNS = 5
SECONDS = 3
ECHO = (
    "import socket,sys\n"
    "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.bind((sys.argv[1],int(sys.argv[2])))\n"
    "print('ready',flush=True)\n"
    "while True:\n d,a=s.recvfrom(2048);s.sendto(d,a)\n"
)


def iperf(server_ns: str, client_ns: str, server_ip: str, seconds: int = SECONDS) -> float:
    """Client -> server TCP goodput in bits per second."""
    server = netns.spawn(server_ns, ["iperf3", "-s", "-1", "-B", server_ip])
    try:
        deadline = time.monotonic() + 5
        while True:
            proc = netns.run(client_ns, ["iperf3", "-c", server_ip, "-t", str(seconds), "-J"], timeout=seconds + 30)
            result = json.loads(proc.stdout or b"{}")
            if proc.returncode == 0 and "error" not in result:
                return float(result["end"]["sum_received"]["bits_per_second"])
            if time.monotonic() > deadline:
                raise RuntimeError(f"iperf3 {client_ns} -> {server_ip}: {proc.stdout[-300:]!r}")
            time.sleep(0.1)
    finally:
        netns.stop_pids([server.pid])


def udp_samples(server_ns: str, client_ns: str, server_ip: str, count: int = 400, warmup: int = 50) -> list[float]:
    """UDP echo round trips in microseconds (echo server in its own process)."""
    import subprocess

    echo = subprocess.Popen([sys.executable, "-c", ECHO, server_ip, "7300"], stdout=subprocess.PIPE, text=True,
                            preexec_fn=lambda: netns.enter(server_ns))
    try:
        assert echo.stdout is not None and echo.stdout.readline().strip() == "ready"
        with netns.NetnsThread(client_ns) as thread:
            sock = thread.call(socket.socket, socket.AF_INET, socket.SOCK_DGRAM)
        with sock:
            sock.connect((server_ip, 7300))
            sock.settimeout(1.0)
            samples = []
            for i in range(count + warmup):
                began = time.perf_counter()
                sock.send(i.to_bytes(4, "big"))
                sock.recv(64)
                if i >= warmup:
                    samples.append((time.perf_counter() - began) * 1e6)
    finally:
        netns.stop_pids([echo.pid])
    return samples


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"p50_us": round(ordered[len(ordered) // 2], 1), "p99_us": round(ordered[int(len(ordered) * 0.99)], 1)}


Path = tuple[str, str, str]
"""(server namespace, client namespace, server address)."""


def _direct(stack: contextlib.ExitStack) -> Path:
    token = secrets.token_hex(2)
    a, b = f"nonstop-bn{token}-a", f"nonstop-bn{token}-b"
    for ns in (a, b):
        netns.create(ns)
        stack.callback(netns.delete, ns)
    with IPRoute(netns=a) as ipr:
        ipr.link("add", ifname="eth0", kind="veth", peer={"ifname": "eth0", "net_ns_fd": b})
    for ns, ip in ((a, "198.19.250.1"), (b, "198.19.250.2")):
        with IPRoute(netns=ns) as ipr:
            index = ipr.link_lookup(ifname="eth0")[0]
            ipr.addr("add", index=index, address=ip, prefixlen=24)
            ipr.link("set", index=index, state="up")
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
    return b, a, "198.19.250.2"


def _lab_spec(cluster: str, teamed: bool) -> ClusterSpec:
    hosts = []
    for name in ("host1", "host2"):
        host: dict[str, Any] = {"name": name, "cpus": 1, "memory": "1GiB"}
        if teamed:
            host["teams"] = [{"name": "team0", "members": ["eth0", "eth1"], "primary": "eth0"}]
        hosts.append(host)
    return ClusterSpec.model_validate({
        "cluster": cluster, "hosts": hosts,
        "networks": [{"name": "prod", "mode": "bridged", "subnet": "198.18.10.0/24", "gateway": "198.18.10.1"},
                     {"name": "nat0", "mode": "nat", "subnet": "198.19.20.0/24"}],
    })


def _guest(spec: ClusterSpec, host: str, network: str, guest: str, cidr: str, gateway: str) -> str:
    ns = f"{names.ns_prefix(spec.cluster)}g-{guest}"
    netns.create(ns)
    vnic = host_net.create_vnic(names.host_ns(spec.cluster, host), spec.cluster, network, guest, 0, "veth")
    host_net.move_to_netns(names.host_ns(spec.cluster, host), vnic.peer_name or "", ns, address=cidr, gateway=gateway)
    return ns


def _lab(stack: contextlib.ExitStack, teamed: bool) -> dict[str, Path]:
    cluster = "bn" + secrets.token_hex(2)
    spec = _lab_spec(cluster, teamed)
    stack.callback(fabric.down, cluster)
    fabric.up(spec, start_processes=teamed)  # team daemons only matter with teams
    g1 = _guest(spec, "host1", "prod", "g1", "198.18.10.11/24", "198.18.10.1")
    g2 = _guest(spec, "host2", "prod", "g2", "198.18.10.12/24", "198.18.10.1")
    if teamed:
        return {"bridged_cross_host_team": (g2, g1, "198.18.10.12")}
    n1 = _guest(spec, "host1", "nat0", "n1", "198.19.20.2/24", "198.19.20.1")
    return {"bridged_cross_host_nic": (g2, g1, "198.18.10.12"), "nat_guest_to_outside": (names.out_ns(cluster), n1, "198.18.0.254")}


def run_fabric_benchmarks(progress: Progress = print, with_teams: bool = True) -> dict[str, Any]:
    """Build every path first, then measure them in interleaved rounds (round r measures
    each path once), so load from elsewhere on the shared machine hits all paths alike."""
    began = time.monotonic()
    with contextlib.ExitStack() as stack:
        paths: dict[str, Path] = {"direct_veth": _direct(stack)}
        paths.update(_lab(stack, teamed=False))
        if with_teams:
            paths.update(_lab(stack, teamed=True))
        runs: dict[str, list[float]] = {key: [] for key in paths}
        rtts: dict[str, list[float]] = {key: [] for key in paths}
        for r in range(RUNS):
            for key, (server, client, ip) in paths.items():
                progress(f"network bench: round {r + 1}/{RUNS}, {key}")
                runs[key].append(iperf(server, client, ip))
                rtts[key] += udp_samples(server, client, ip)
        results: dict[str, Any] = {
            key: {"throughput_gbps": round(statistics.median(runs[key]) / 1e9, 2),
                  "throughput_runs_gbps": [round(v / 1e9, 2) for v in runs[key]], **percentiles(rtts[key])}
            for key in paths
        }
    base = results["direct_veth"]
    for key, value in results.items():
        if key != "direct_veth":
            value["vs_direct_throughput"] = round(value["throughput_gbps"] / base["throughput_gbps"], 3)
            value["p99_minus_direct_us"] = round(value["p99_us"] - base["p99_us"], 1)
    results["meta"] = {"duration_s": round(time.monotonic() - began, 1), "runs": RUNS, "seconds_per_run": SECONDS,
                       "method": "paths measured in interleaved rounds; median of the rounds"}
    return results


LABELS = {
    "direct_veth": "one veth pair (peer/baseline)",
    "bridged_cross_host_nic": "bridged guest → guest, other host, NIC uplinks",
    "bridged_cross_host_team": "bridged guest → guest, other host, active-backup team uplinks",
    "nat_guest_to_outside": "NAT guest → out namespace (masquerade)",
}


def markdown(results: dict[str, Any]) -> list[str]:
    lines = [
        "| path | iperf3 TCP Gbit/s (median of 5) | × direct | UDP RTT p50 µs | p99 µs | p99 − direct µs |",
        "|---|---|---|---|---|---|",
    ]
    for key, label in LABELS.items():
        if key in results:
            r = results[key]
            lines.append(f"| {label} | {r['throughput_gbps']} | {r.get('vs_direct_throughput', 1.0)} | {r['p50_us']} | "
                         f"{r['p99_us']} | {r.get('p99_minus_direct_us', 0.0)} |")
    return lines
