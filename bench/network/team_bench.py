"""NIC teaming benchmark: the veth + nft team against a plain veth, failover gap, aggregation.

Run alone with ``.venv/bin/python -m bench.network.team_bench`` (root); writes
bench/results/team.json and team.md. ``bench/network/__main__.py`` calls
:func:`run_team_benchmarks` as part of the whole network benchmark.

What it measures, in one run, on the team testbed (h1 — switch bridge — h2, namespaces):

1. iperf3 TCP throughput (4 s, one stream) and UDP echo round-trip p50/p99 (2,000
   ping-pongs, echo in a separate process) through an active-backup team vs through a
   plain veth NIC on the same topology (the peer: no team at all);
2. failover gap: a 1 ms UDP probe stream while the active member's cable is cut, median
   of 10 cuts (target <= 100 ms, Linux bonding's default miimon); the daemon's own
   detection-to-rules time from its events;
3. aggregate throughput of balance-xor over a switch LAG with each member shaped by tbf
   to the same rate (iperf3 -P 8), vs the same team with one member cut (target >= 1.6x).

Must NOT: leave anything behind (every testbed is removed), or talk to anything outside
its own namespaces.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nonstop.core.spec import TeamSpec
from nonstop.net import netns
from nonstop.net.team_testbed import TeamTestbed, popen_in
from nonstop.net.team_traffic import UdpProbeStream

RESULTS = Path(__file__).resolve().parents[1] / "results"
SHAPED_RATE = "200mbit"
CUTS = 10
ECHO = (
    "import socket,sys\n"
    "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.bind((sys.argv[1],int(sys.argv[2])))\n"
    "print('ready',flush=True)\n"
    "while True:\n d,a=s.recvfrom(2048);s.sendto(d,a)\n"
)

Progress = Callable[[str], None]


def _iperf(tb: TeamTestbed, seconds: float = 4.0, streams: int = 1) -> float:
    """Client h1 -> server h2; received bits per second."""
    server = popen_in(tb.h2, ["iperf3", "-s", "-1", "-B", tb.h2_ip], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.3)
        client = popen_in(tb.h1, ["iperf3", "-c", tb.h2_ip, "-t", str(seconds), "-P", str(streams), "-J"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out, err = client.communicate(timeout=seconds + 20)
        if client.returncode != 0:
            raise RuntimeError(f"iperf3 failed: {err or out}")
        return float(json.loads(out)["end"]["sum_received"]["bits_per_second"])
    finally:
        try:
            server.wait(timeout=5)  # "-1": the server exits after one test
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _rtts(tb: TeamTestbed, count: int = 2000) -> dict[str, float]:
    """UDP ping-pong round trips (microseconds): p50, p99, max."""
    echo = popen_in(tb.h2, [sys.executable, "-c", ECHO, tb.h2_ip, "7300"], stdout=subprocess.PIPE, text=True)
    try:
        assert echo.stdout is not None and echo.stdout.readline().strip() == "ready"
        sock = netns.call(tb.h1, socket.socket, socket.AF_INET, socket.SOCK_DGRAM)
        sock.connect((tb.h2_ip, 7300))
        sock.settimeout(1.0)
        samples = []
        for i in range(count + 100):
            began = time.perf_counter()
            sock.send(i.to_bytes(4, "big"))
            sock.recv(64)
            if i >= 100:  # warm-up excluded
                samples.append((time.perf_counter() - began) * 1e6)
        sock.close()
    finally:
        echo.kill()
        echo.wait()
    samples.sort()
    return {"p50_us": round(samples[len(samples) // 2], 1), "p99_us": round(samples[int(len(samples) * 0.99)], 1),
            "max_us": round(samples[-1], 1)}


def bench_path(progress: Progress) -> dict[str, Any]:
    spec = TeamSpec(name="team0", members=["eth0", "eth1"], primary="eth0")
    out: dict[str, Any] = {}
    for label, plain in (("direct_veth", True), ("team_active_backup", False)):
        progress(f"team bench: throughput and latency, {label}")
        with TeamTestbed(spec, plain=plain) as tb:
            runs = [_iperf(tb) for _ in range(3)]
            out[label] = {"throughput_gbps": round(statistics.median(runs) / 1e9, 2),
                          "throughput_runs_gbps": [round(r / 1e9, 2) for r in runs], **_rtts(tb)}
    out["team_vs_direct_throughput"] = round(
        out["team_active_backup"]["throughput_gbps"] / out["direct_veth"]["throughput_gbps"], 3)
    out["team_minus_direct_p99_us"] = round(out["team_active_backup"]["p99_us"] - out["direct_veth"]["p99_us"], 1)
    return out


def bench_failover(progress: Progress, cuts: int = CUTS) -> dict[str, Any]:
    """Cut eth0 (active) ``cuts`` times; after each, restore it and measure the failback too."""
    spec = TeamSpec(name="team0", members=["eth0", "eth1"], primary="eth0")
    gaps, failback_gaps, lost, apply_ms, announce_ms, detect_ms = [], [], [], [], [], []
    with TeamTestbed(spec) as tb:
        tb.start_daemon()
        for n in range(cuts):
            progress(f"team bench: failover cut {n + 1}/{cuts}")
            tb.wait_for(lambda s: s["active"] == "eth0" and s["members"]["eth1"]["state"] == "up")
            stream = UdpProbeStream(tb.h1, tb.h2, tb.h2_ip, port=7400 + n).start()
            time.sleep(0.3)
            tb.cut("eth0")
            cut_at = tb.last_cable_change
            tb.wait_for(lambda s: s["active"] == "eth1")
            time.sleep(0.3)
            result = stream.stop()
            gaps.append(result.longest_gap * 1000)
            lost.append(result.lost)
            for event in tb.events():
                if event["kind"] == "active-changed" and event["at"] >= cut_at and event["new"] == "eth1":
                    apply_ms.append(event["apply_ms"])
                    announce_ms.append(event["announce_ms"])
                if event["kind"] == "link" and event["at"] >= cut_at and not event["ok"]:
                    detect_ms.append((event["at"] - cut_at) * 1000)
            stream = UdpProbeStream(tb.h1, tb.h2, tb.h2_ip, port=7500 + n).start()
            time.sleep(0.2)
            tb.restore("eth0")  # primary_reselect always: traffic moves back to eth0
            tb.wait_for(lambda s: s["active"] == "eth0")
            time.sleep(0.3)
            failback_gaps.append(stream.stop().longest_gap * 1000)
        failovers = tb.status()["failovers"]

    def median(values: list[float], digits: int = 2) -> float | None:
        return round(statistics.median(values), digits) if values else None

    return {
        "cuts": cuts,
        "gap_ms_median": median(gaps),
        "gap_ms_max": round(max(gaps), 2),
        "gap_ms_all": [round(g, 2) for g in gaps],
        "failback_gap_ms_median": median(failback_gaps),
        "failback_gap_ms_max": round(max(failback_gaps), 2),
        "probes_lost_median": statistics.median(lost),
        "carrier_event_ms_median": median(detect_ms),
        "rules_swap_ms_median": median(apply_ms, 3),
        "garp_sent_ms_median": median(announce_ms, 3),
        "failovers_counted": failovers,
        "target_ms": 100,
        "meets_target": statistics.median(gaps) <= 100,
        "anchor": "Linux bonding default miimon 100 ms: detection alone can take up to 100 ms",
    }


def bench_aggregate(progress: Progress) -> dict[str, Any]:
    spec = TeamSpec(name="team0", members=["eth0", "eth1"], mode="balance-xor", hash_policy="layer3+4")
    with TeamTestbed(spec, lag=True) as tb:
        tb.start_daemon(lag=True)
        for member in spec.members:
            tb.shape(member, SHAPED_RATE)
        progress(f"team bench: balance-xor, 2 members shaped to {SHAPED_RATE} each")
        both = [_iperf(tb, 3.0, 8) for _ in range(2)]
        tb.cut("eth1")
        tb.wait_for(lambda s: s["transmit"] == ["eth0"])
        time.sleep(0.2)
        progress("team bench: balance-xor, one member alone")
        one = [_iperf(tb, 3.0, 8) for _ in range(2)]
    ratio = statistics.median(both) / statistics.median(one)
    return {
        "member_rate": SHAPED_RATE,
        "two_members_mbps": round(statistics.median(both) / 1e6, 1),
        "one_member_mbps": round(statistics.median(one) / 1e6, 1),
        "ratio": round(ratio, 3),
        "target_ratio": 1.6,
        "meets_target": ratio >= 1.6,
    }


def run_team_benchmarks(progress: Progress = print) -> dict[str, Any]:
    """Every team figure in one run; the dict is JSON-ready."""
    began = time.monotonic()
    results = {
        "path": bench_path(progress),
        "failover": bench_failover(progress),
        "aggregate": bench_aggregate(progress),
    }
    results["meta"] = {
        "duration_s": round(time.monotonic() - began, 1),
        "data_path": "veth pair + nftables netdev fwd (no bonding driver in this kernel)",
        "note": f"2-core machine, load average {os.getloadavg()[0]:.1f} at the end",
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    return results


def markdown(results: dict[str, Any]) -> str:
    path, fail, agg = results["path"], results["failover"], results["aggregate"]
    d, t = path["direct_veth"], path["team_active_backup"]
    lines = [
        "# NIC teaming benchmark",
        "",
        f"Data path: {results['meta']['data_path']}. {results['meta']['note']}. Run at {results['meta']['at']}.",
        "",
        "| path | iperf3 TCP (Gbit/s, median of 3) | UDP RTT p50 (µs) | p99 (µs) |",
        "|---|---|---|---|",
        f"| plain veth NIC (peer) | {d['throughput_gbps']} | {d['p50_us']} | {d['p99_us']} |",
        f"| active-backup team | {t['throughput_gbps']} | {t['p50_us']} | {t['p99_us']} |",
        "",
        f"Team / direct throughput: {path['team_vs_direct_throughput']}×; p99 difference {path['team_minus_direct_p99_us']} µs.",
        "",
        "| failover (cable cut, 1 ms UDP probes) | value |",
        "|---|---|",
        f"| gap, median of {fail['cuts']} cuts | {fail['gap_ms_median']} ms (target ≤ {fail['target_ms']} ms) |",
        f"| gap, worst | {fail['gap_ms_max']} ms |",
        f"| failback gap (cable restored, primary_reselect always), median / worst | "
        f"{fail['failback_gap_ms_median']} / {fail['failback_gap_ms_max']} ms |",
        f"| probes lost, median | {fail['probes_lost_median']} |",
        f"| cut → carrier event seen by the daemon, median | {fail['carrier_event_ms_median']} ms |",
        f"| event → nft rules swapped, median | {fail['rules_swap_ms_median']} ms |",
        f"| event → gratuitous ARP sent on the new member, median | {fail['garp_sent_ms_median']} ms |",
        f"| failovers counted by the daemon | {fail['failovers_counted']} |",
        f"| peer anchor | {fail['anchor']} |",
        "",
        f"| balance-xor aggregation (each member tbf {agg['member_rate']}) | Mbit/s |",
        "|---|---|",
        f"| two members | {agg['two_members_mbps']} |",
        f"| one member alone | {agg['one_member_mbps']} |",
        f"| ratio | {agg['ratio']}× (target ≥ {agg['target_ratio']}×) |",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    results = run_team_benchmarks()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "team.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / "team.md").write_text(markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
