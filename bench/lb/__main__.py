"""Benchmark: nonstop lb (L7, L4, nftables) against HAProxy 2.6 and direct, in one run.

    .venv/bin/python -m bench.lb [--rounds 3] [--seconds 5] [--availability-seconds 60]
                                 [--skip-scaling] [--skip-availability]

Throughput: two nginx backends; then, in alternating order each round: direct to one
backend, HAProxy http and tcp (one thread, keep-alive, roundrobin, checks on), nonstop
L7, nonstop L4 and nonstop nftables (DNAT maps on a 127/8 VIP). wrk -t1 -c50 on core 0;
the proxy and the backends on core 1 (taskset). Each proxy is started for its own run
and stopped after it, so e.g. the nat table's connection tracking costs only the nft run.
Reported: medians over rounds of req/s, p50, p99 and the proxy's CPU (utime+stime from
/proc/<pid>/stat over the run; for nftables the forwarding is kernel work charged to the
client/backends, so its "proxy CPU" is only the control process).

Scaling: nonstop L7 with ``--workers`` 1 and 2 (and HAProxy with 1 and 2 threads), the
proxy allowed on both cores, same wrk settings (see ``scaling``).

Availability: three nginx backends under constant wrk load; one backend is SIGKILLed and
restarted. The load runs as three back-to-back wrk segments (before / event / after) so
the event window's failed requests and p99 are measured on their own; once for nonstop
L7 (defaults: checks every 1 s, rise 2 fall 2, retries 3) and once for HAProxy with its
defaults (inter 2s rise 2 fall 3, retries 3, option redispatch).

Writes bench/results/lb.json and bench/results/lb.md.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.lb.procs import ROOT, Proc, cpu_seconds, free_port, haproxy, listeners, nginx, nonstop_lb, wrk

RESULTS = ROOT / "bench" / "results"
PROXY_CORE, CLIENT_CORE = "1", "0"
TARGETS = ("direct", "haproxy-http", "haproxy-tcp", "nonstop-l7", "nonstop-l4", "nonstop-nft")


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().split(" ", 3)[:3].__str__()


def start_target(name: str, tmp: Path, backends: list[int], table: str) -> tuple[Proc | None, str]:
    port = free_port()
    if name == "direct":
        return None, f"http://127.0.0.1:{backends[0]}/"
    if name.startswith("haproxy"):
        return haproxy(tmp, name.split("-")[1], port, backends, PROXY_CORE), f"http://127.0.0.1:{port}/"
    mode = {"nonstop-l7": "http", "nonstop-l4": "tcp", "nonstop-nft": "nft"}[name]
    host = "127.0.0.100" if mode == "nft" else "127.0.0.1"
    proc = nonstop_lb(tmp, mode, f"{host}:{port}", backends, PROXY_CORE, nft_table=table)
    return proc, f"http://{host}:{port}/"


def throughput(tmp: Path, rounds: int, seconds: float, table: str) -> dict[str, list[dict[str, Any]]]:
    backends = [free_port(), free_port()]
    nginxes = [nginx(tmp, p, PROXY_CORE) for p in backends]
    runs: dict[str, list[dict[str, Any]]] = {t: [] for t in TARGETS}
    try:
        for r in range(rounds):
            order = TARGETS if r % 2 == 0 else tuple(reversed(TARGETS))
            for name in order:
                proc, url = start_target(name, tmp, backends, table)
                try:
                    wrk(url, 1.0, core=CLIENT_CORE)  # warm-up: pools, JIT-free but caches
                    pids = proc.pids if proc else []
                    before = cpu_seconds(pids)
                    t0 = time.monotonic()
                    result = wrk(url, seconds, core=CLIENT_CORE)
                    elapsed = time.monotonic() - t0
                    used = cpu_seconds(pids) - before
                    result["proxy_cpu"] = used / elapsed if proc else None
                    result["cpu_us_per_req"] = used / result["requests"] * 1e6 if proc and result["requests"] else None
                    result.pop("raw")
                    runs[name].append(result)
                    print(f"round {r + 1} {name:13s} {result['rps']:9.0f} req/s  p99 {result['p99']}  "
                          f"cpu {result['proxy_cpu']}", flush=True)  # fmt: skip
                finally:
                    if proc:
                        proc.stop()
    finally:
        for n in nginxes:
            n.stop()
        subprocess.run(["nft", "delete", "table", "ip", table], capture_output=True)
    return runs


SCALING = ("nonstop-l7-w1", "nonstop-l7-w2", "haproxy-http-t1", "haproxy-http-t2")
SCALING_PROXY_CORES = "0,1"


def scaling(tmp: Path, rounds: int, seconds: float) -> dict[str, list[dict[str, Any]]]:
    """Beyond one core: nonstop L7 with 1 and 2 SO_REUSEPORT workers (and HAProxy with 1 and
    2 threads for reference), same wrk settings. The proxy may use both cores (taskset 0,1),
    the nginx backends stay on core 1 and wrk on core 0 — so a second proxy core competes
    with wrk and the backends: this measures what 2 cores give on this 2-core machine, not
    the ideal doubling."""
    backends = [free_port(), free_port()]
    nginxes = [nginx(tmp, p, PROXY_CORE) for p in backends]
    runs: dict[str, list[dict[str, Any]]] = {t: [] for t in SCALING}
    try:
        for r in range(rounds):
            order = SCALING if r % 2 == 0 else tuple(reversed(SCALING))
            for name in order:
                port = free_port()
                n = int(name[-1])
                if name.startswith("haproxy"):
                    proc = haproxy(tmp, "http", port, backends, SCALING_PROXY_CORES, threads=n)
                else:
                    proc = nonstop_lb(tmp, "http", f"127.0.0.1:{port}", backends, SCALING_PROXY_CORES, workers=n)
                url = f"http://127.0.0.1:{port}/"
                try:
                    deadline = time.monotonic() + 60  # every worker listening before wrk connects
                    while name.startswith("nonstop") and listeners(port) < n and time.monotonic() < deadline:
                        time.sleep(0.1)
                    wrk(url, 2.0, core=CLIENT_CORE)
                    pids = proc.pids
                    before = cpu_seconds(pids)
                    t0 = time.monotonic()
                    result = wrk(url, seconds, core=CLIENT_CORE)
                    elapsed = time.monotonic() - t0
                    used = cpu_seconds(pids) - before
                    result["proxy_cpu"] = used / elapsed
                    result["cpu_us_per_req"] = used / result["requests"] * 1e6 if result["requests"] else None
                    result.pop("raw")
                    runs[name].append(result)
                    print(f"round {r + 1} {name:16s} {result['rps']:9.0f} req/s  p99 {result['p99']}  "
                          f"cpu {result['proxy_cpu']}", flush=True)  # fmt: skip
                finally:
                    proc.stop()
    finally:
        for n in nginxes:
            n.stop()
    return runs


def median(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def availability(tmp: Path, name: str, total: float) -> dict[str, Any]:
    """Constant load; kill backend 1 at the start of the event segment, restart it later."""
    ports = [free_port(), free_port(), free_port()]
    nginxes = [nginx(tmp, p, PROXY_CORE) for p in ports]
    port = free_port()
    if name == "haproxy":
        proc = haproxy(tmp, "http", port, ports, PROXY_CORE)
    else:
        proc = nonstop_lb(tmp, "http", f"127.0.0.1:{port}", ports, PROXY_CORE)
    url = f"http://127.0.0.1:{port}/"
    segment = total / 3
    segments: dict[str, Any] = {}
    try:
        time.sleep(2.5)  # both see every backend up
        segments["before"] = wrk(url, segment, core=CLIENT_CORE)

        def event() -> None:
            time.sleep(min(2.0, segment * 0.1))
            nginxes[1].kill()
            time.sleep(segment * 0.5)
            nginxes[1] = nginx(tmp, ports[1], PROXY_CORE)

        thread = threading.Thread(target=event)
        thread.start()
        segments["event"] = wrk(url, segment, core=CLIENT_CORE)
        thread.join()
        segments["after"] = wrk(url, segment, core=CLIENT_CORE)
    finally:
        proc.stop()
        for n in nginxes:
            n.stop()
    out: dict[str, Any] = {}
    for key, seg in segments.items():
        seg.pop("raw", None)
        out[key] = {
            "requests": seg["requests"],
            "failed": seg["non2xx"] + seg["socket_errors"],
            "p99": seg["p99"],
            "rps": seg["rps"],
        }
    out["failed_total"] = sum(v["failed"] for v in out.values() if isinstance(v, dict))
    return out


def fmt_ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1000:.2f}"


def ratio(a: float | None, b: float | None) -> str:
    return "-" if not a or not b else f"{a / b:.2f}"


def markdown(doc: dict[str, Any]) -> str:
    s = doc["summary"]
    lines = [
        "# nonstop lb vs HAProxy 2.6 (and direct)",
        "",
        f"Run {doc['when']} on {doc['machine']}; {doc['rounds']} alternating rounds of {doc['seconds']:g} s, medians. "
        f"wrk -t1 -c50 pinned to core {CLIENT_CORE}; proxy and nginx backends pinned to core {PROXY_CORE} "
        f"(taskset). Load average before/after: {doc['load_before']} / {doc['load_after']} (near 2 or above: "
        "other work shared the cores and absolute figures are noisy); ratios come from alternating runs. "
        "The proxy's CPU per request (utime+stime / requests) is the steadier efficiency figure; for nftables "
        "it is only the control process (forwarding is kernel work charged to client and backends).",
        "",
        "| target | req/s | p50 ms | p99 ms | proxy CPU | proxy CPU µs/req | req/s vs HAProxy (same layer) | "
        "paired req/s ratio | p99 vs HAProxy | paired p99 ratio | vs direct |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    peer = {"nonstop-l7": "haproxy-http", "nonstop-l4": "haproxy-tcp", "nonstop-nft": "haproxy-tcp"}
    runs = doc.get("runs", {})
    for name in TARGETS:
        m = s[name]
        ref = s.get(peer.get(name, ""), {})
        cpu = "-" if m["proxy_cpu"] is None else f"{m['proxy_cpu'] * 100:.0f} %"
        per = "-" if m.get("cpu_us_per_req") is None else f"{m['cpu_us_per_req']:.1f}"
        paired_rps = paired_p99 = "-"
        if name in peer and runs.get(name) and runs.get(peer[name]):
            pairs = list(zip(runs[name], runs[peer[name]], strict=False))
            rr = median([a["rps"] / b["rps"] for a, b in pairs if b["rps"]])
            pr = median([a["p99"] / b["p99"] for a, b in pairs if a["p99"] and b["p99"]])
            paired_rps = "-" if rr is None else f"{rr:.2f}"
            paired_p99 = "-" if pr is None else f"{pr:.2f}"
        lines.append(
            f"| {name} | {m['rps']:.0f} | {fmt_ms(m['p50'])} | {fmt_ms(m['p99'])} | {cpu} | {per} | "
            f"{ratio(m['rps'], ref.get('rps'))} | {paired_rps} | {ratio(m['p99'], ref.get('p99'))} | {paired_p99} | "
            f"{ratio(m['rps'], s['direct']['rps'])} |"
        )
    lines += [
        "",
        "Paired ratios: each round runs the targets back to back, so the ratio of nonstop to HAProxy within a "
        "round sees nearly the same background load; the column is the median over rounds.",
    ]
    if doc.get("scaling"):
        sc = doc["scaling"]
        lines += [
            "",
            "## Beyond one core: SO_REUSEPORT workers",
            "",
            f"Same wrk settings (-t1 -c50, core {CLIENT_CORE}); the proxy may run on both cores (taskset "
            f"{SCALING_PROXY_CORES}: control process and workers), the nginx backends stay on core {PROXY_CORE}. "
            "On this 2-core machine a second proxy core is shared with wrk and the backends, so this shows what "
            f"2 cores give here, not an ideal doubling. {doc.get('scaling_rounds', '-')} alternating rounds, medians.",
            "",
            "| target | req/s | p50 ms | p99 ms | proxy CPU | proxy CPU µs/req | req/s vs 1 worker/thread |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for name in SCALING:
            m = sc.get(name)
            if not m:
                continue
            one = sc.get(name[:-1] + "1", {})
            cpu = "-" if m["proxy_cpu"] is None else f"{m['proxy_cpu'] * 100:.0f} %"
            per = "-" if m.get("cpu_us_per_req") is None else f"{m['cpu_us_per_req']:.1f}"
            lines.append(
                f"| {name} | {m['rps']:.0f} | {fmt_ms(m['p50'])} | {fmt_ms(m['p99'])} | {cpu} | {per} | "
                f"{ratio(m['rps'], one.get('rps'))} |"
            )
    lines += [
        "",
        f"## Availability: one of three backends killed and restarted under constant load ({doc['availability_seconds']:g} s)",
        "",
        "| balancer | failed before | failed during event | failed after | p99 before ms | p99 during event ms | p99 after ms |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, a in doc["availability"].items():
        lines.append(
            f"| {name} | {a['before']['failed']} | {a['event']['failed']} | {a['after']['failed']} | "
            f"{fmt_ms(a['before']['p99'])} | {fmt_ms(a['event']['p99'])} | {fmt_ms(a['after']['p99'])} |"
        )
    lines += [
        "",
        "nonstop: health checks every 1 s, rise 2, fall 2, retries 3 (never on a backend already tried). "
        "HAProxy: its defaults — check inter 2s rise 2 fall 3, retries 3, option redispatch.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.lb", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--availability-seconds", type=float, default=60.0, help="60 (the issue's); 20 for a quick run")
    parser.add_argument("--skip-availability", action="store_true")
    parser.add_argument("--skip-scaling", action="store_true", help="no workers 1 vs 2 section")
    parser.add_argument("--render", metavar="JSON", help="only re-render the markdown from a saved lb.json")
    args = parser.parse_args()
    if args.render:
        doc = json.loads(Path(args.render).read_text())
        text = markdown(doc)
        (RESULTS / "lb.md").write_text(text)
        print(text)
        return
    for tool in ("nginx", "haproxy", "wrk", "taskset", "nft"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            raise SystemExit(f"{tool} is missing: run scripts/setup.sh (Debian haproxy, nginx-light, wrk, nftables)")
    if os.geteuid() != 0:
        raise SystemExit("the nftables target needs root")
    table = f"nonstop_lb_bench_{secrets.token_hex(3)}"
    doc: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{os.cpu_count()} cores",
        "rounds": args.rounds,
        "seconds": args.seconds,
        "availability_seconds": args.availability_seconds,
        "load_before": loadavg(),
    }
    with tempfile.TemporaryDirectory(prefix="nonstop-bench-lb-") as d:
        tmp = Path(d)
        runs = throughput(tmp, args.rounds, args.seconds, table)
        doc["runs"] = runs
        doc["summary"] = {
            name: {k: median([r[k] for r in rs]) for k in ("rps", "p50", "p99", "proxy_cpu", "cpu_us_per_req")} for name, rs in runs.items()
        }
        partial = RESULTS / "lb.partial.json"  # a later phase failing keeps this one's figures
        RESULTS.mkdir(parents=True, exist_ok=True)
        partial.write_text(json.dumps(doc, indent=1))
        if not args.skip_scaling:
            scale_runs = scaling(tmp, args.rounds, args.seconds)
            doc["scaling_runs"] = scale_runs
            doc["scaling_rounds"] = args.rounds
            doc["scaling"] = {
                name: {k: median([r[k] for r in rs]) for k in ("rps", "p50", "p99", "proxy_cpu", "cpu_us_per_req")}
                for name, rs in scale_runs.items()
            }
            partial.write_text(json.dumps(doc, indent=1))
        doc["availability"] = {}
        if not args.skip_availability:
            for name in ("nonstop-l7", "haproxy"):
                doc["availability"][name] = availability(tmp, name, args.availability_seconds)
                print(f"availability {name}: {doc['availability'][name]}", flush=True)
    doc["load_after"] = loadavg()
    (RESULTS / "lb.json").write_text(json.dumps(doc, indent=1))
    partial.unlink(missing_ok=True)
    text = markdown(doc)
    (RESULTS / "lb.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
