"""``python -m bench.availability [--spec examples/lab.yaml] [--rate 40]`` (root).

Role: runs the availability tour non-interactively (``nonstop.demo.tour.run_tour``: starts ``nonstop
up``, constant load through the balancer, host power-off, cable cut, partition, heal, ``nonstop
down``) and writes bench/results/availability.json, .md and .png: failed requests per event
(target 0), p99 latency per event window, detection/fence/failover/failback times, time from
``up`` to a fully serving lab and for ``down``. The peers' defaults (docs: anchors) are quoted
beside the figures, not run: Proxmox VE HA and vSphere HA cannot run on this machine.

Must not: run without a bound (the tour's waits are bounded; the whole run is capped).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent.parent / "results"
PEERS = [
    ("vSphere HA (defaults)", "host declared failed 15 s after the last heartbeat; isolation response at 30 s"),
    ("Proxmox VE HA (defaults)", "about 2 minutes from failure to the guest restarted; watchdog self-fence 60 s"),
]


def markdown(report: dict, spec: str, rate: float, started: str, name: str) -> str:  # type: ignore[type-arg]
    lines = [
        f"# Availability tour (bench/availability): service {report['service']}", "",
        f"`python -m bench.availability --spec {spec} --rate {rate:g} --service {report['service']} --name {name}`, run {started} on a 2-core "
        f"machine (load average at the end {os.getloadavg()[0]:.1f}).", "",
        f"Service `{report['service']}` of cluster `{report['cluster']}`: {report['requests']} requests "
        f"(`GET {report.get('path', '/')}`, each on a new connection, 2 s client timeout) at {rate:g}/s over {report['duration_s']} s, **{report['failed']} failed**, p99 {report['p99_ms']} ms.", "",
        f"- `nonstop up` to a fully serving lab: **{report.get('up_seconds')} s**; `nonstop down`: "
        f"**{report.get('down_seconds')} s**", "",
        "| event | target | requests | failed | p50 ms | p99 ms | detected s | fenced s | failover done s "
        "| all replicas serving s | team failover s | host up after heal s | failback s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for e in report["events"]:
        def f(key: str, e: dict = e) -> str:  # type: ignore[type-arg]
            v = e.get(key)
            return "-" if v is None else f"{v}"
        detected = e.get("dead_s", e.get("detection_s"))
        lines.append(f"| {e['event']} | {e['target']} | {e['requests']} | {e['failed']} | {f('p50_ms')} | "
                     f"{f('p99_ms')} | {'-' if detected is None else detected} | {f('fence_s')} | {f('failover_s')} | "
                     f"{f('serving_full_s')} | {f('team_failover_s')} | {f('host_up_s') if 'host_up_s' in e else f('restored_s')} | "
                     f"{f('failback_s')} |")
    for settle in report.get("settles") or []:
        if settle.get("powered_on") or settle.get("seconds", 0) > 1:
            lines.append(f"- steady {settle['why']}: {settle['seconds']} s"
                         + (f"; powered on {', '.join(settle['powered_on'])} (left off by a fence)" if settle.get("powered_on") else ""))
    lines += ["", "Times are seconds after the fault was injected (heal-relative for 'host up' and failback), "
              "read from the controller's event log. Event windows run from the injection to recovery + 2 s.", "",
              "Peers (their documented defaults, not run here):", ""]
    lines += [f"- {name}: {text}" for name, text in PEERS]
    lines += ["", f"Plot: `bench/results/{name}.png`", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.availability")
    parser.add_argument("--spec", default="examples/lab.yaml")
    parser.add_argument("--rate", type=float, default=None,
                        help="requests/s (default: 40 for process replicas, 10 for VM replicas under TCG)")
    parser.add_argument("--service", default="api", help="service to load (api: process replicas; web: VMs)")
    parser.add_argument("--path", default=None, help="path to GET (default: / for process replicas, /health for VMs)")
    parser.add_argument("--name", default="availability", help="result file name (without extension)")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)

    from nonstop.demo.tour import run_tour
    from nonstop.specfile import load_spec

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    spec = load_spec(Path(args.spec))
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    from rich.console import Console

    console = Console(highlight=False, soft_wrap=True)
    report = run_tour(spec, Path(args.spec).resolve(), say=console.print, interactive=False,
                      rate=args.rate, service=args.service, path=args.path,
                      plot=out / f"{args.name}.png")
    report["spec"] = args.spec
    report["rate"] = report.get("rate", args.rate)
    report["run_at"] = started
    (out / f"{args.name}.json").write_text(json.dumps(report, indent=2))
    if report.get("completed"):
        (out / f"{args.name}.md").write_text(markdown(report, args.spec, float(report["rate"]), started, args.name))
    print(f"wrote {out / args.name}.json" + (f", {out / args.name}.md" if report.get("completed") else ""))
    return 0 if report.get("completed") else 1


if __name__ == "__main__":
    sys.exit(main())
