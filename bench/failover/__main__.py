"""bench/failover: host kills under client load — nonstop vs keepalived + HAProxy, side by side.

``.venv/bin/python -m bench.failover [--kills 10] [--only nonstop|peer]`` (root). Runs nonstop's
lab cluster (bench/failover/nonstop_run.py) and the peer (bench/failover/peer.py) in the same
lab fabric, one after the other, and writes bench/results/failover.json and failover.md with the
median (and min–max) of every figure over the kills. The figures carry the machine's
load average (other work on the 2 cores makes them noisy).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"


def summary(rounds: list[dict[str, Any]], field: str) -> dict[str, Any] | None:
    values = [r[field] for r in rounds if isinstance(r.get(field), int | float)]
    if not values:
        return None
    return {"median": round(statistics.median(values), 3), "min": min(values), "max": max(values), "n": len(values)}


def fields(rounds: list[dict[str, Any]]) -> list[str]:
    """Every field any round has (a round that did not recover has fewer)."""
    return list(dict.fromkeys(k for r in rounds for k in r))


def fmt(s: dict[str, Any] | None, unit: str = "s") -> str:
    if s is None:
        return "—"
    if unit == "n":
        return f"{s['median']:g} (total {sum([s['median']]) if s['n'] == 1 else '—'})".split(" (")[0]
    return f"{s['median'] * 1000:.0f} ms ({s['min'] * 1000:.0f}–{s['max'] * 1000:.0f})"


def markdown(result: dict[str, Any]) -> str:
    n, p, v = result.get("nonstop"), result.get("peer"), result.get("nonstop_vm")
    ns = {k: summary(n["rounds"], k) for k in fields(n["rounds"])} if n else {}
    vs = {k: summary(v["rounds"], k) for k in fields(v["rounds"])} if v else {}
    ps = {k: summary(p["rounds"], k) for k in fields(p["rounds"])} if p else {}
    rows = [
        ("detection (kill → host declared dead / VIP moved)", fmt(ns.get("detection_s")), fmt(ps.get("detection_s"))),
        ("fence (kill → host verified off)", fmt(ns.get("fence_s")), "— (no fencing)"),
        ("process guests running again (observed by the controller)", fmt(ns.get("guests_running_s")), "never (not restarted)"),
        ("process guests serving again through the balancer", fmt(ns.get("serving_again_s")), "never (not restarted)"),
        ("VM run: detection", fmt(vs.get("detection_s")), "—"),
        ("VM run: VM running again on another host (QEMU started)", fmt(vs.get("vm_running_s")), "—"),
        ("VM run: VM serving again (its page answers, new boot, TCG)", fmt(vs.get("vm_serving_again_s")), "—"),
        ("VM run: process guests of the same host serving again", fmt(vs.get("serving_again_s")), "—"),
        ("VM run: failed client requests per kill (median, max)",
         f"{vs['failed_requests']['median']:g}, {vs['failed_requests']['max']:g}" if vs.get("failed_requests") else "—", "—"),
        ("service answering again (first answer after the kill's first failure)",
         f"never interrupted in {sum(1 for r in n['rounds'] if not r['failed_requests'])} of {len(n['rounds'])} kills"
         if n else "—", fmt(ps.get("service_restored_s"))),
        ("last failed request after the kill", "—", fmt(ps.get("clean_again_s"))),
        ("failed client requests per kill (median, max)",
         f"{ns['failed_requests']['median']:g}, {ns['failed_requests']['max']:g}" if ns.get("failed_requests") else "—",
         f"{ps['failed_requests']['median']:g}, {ps['failed_requests']['max']:g}" if ps.get("failed_requests") else "—"),
        ("failed / total client requests (whole run)",
         f"{n['failed_requests_total']} / {n['requests'] + n['failed_requests_total']}" if n else "—",
         f"{p['failed_requests_total']} / {p['requests'] + p['failed_requests_total']}" if p else "—"),
    ]
    lines = [
        "# bench/failover: host kills under load",
        "",
        f"Run {result['started']} ({result['kills']} kills each, median (min–max); load average at start "
        f"{result['loadavg_start']}, at end {result['loadavg_end']}; 2-core machine).",
        "",
        f"nonstop: 3 lab hosts, 6 process guests behind `nonstop lb`, heartbeats every 100 ms on 2 links, "
        f"{result['kills']} kills of the busiest host by Redfish ForceOff through its BMC (every process of the "
        f"host dies). VM run: the same cluster plus 1 VM (QEMU under TCG: no KVM here), {result.get('vm_kills', 0)} "
        "kills of the VM's host. "
        "Peer: 3 lab hosts each running keepalived (VRRP, advert_int 1 s, nopreempt) + HAProxy "
        "(default checks: inter 2 s, fall 3, rise 2; retries 3) + a backend; kill = kill -9 of everything "
        "in the VRRP master's namespace.",
        "",
        "| figure | nonstop | keepalived + HAProxy |",
        "|---|---|---|",
        *[f"| {a} | {b} | {c} |" for a, b, c in rows],
        "",
        "Targets (issue 6): detection ≤ 500 ms; process guests serving again ≤ 2 s; 0 failed requests.",
        "",
    ]
    false_dead = [(side, r["round"], h) for side in ("nonstop", "nonstop_vm")
                  for r in (result.get(side) or {}).get("rounds", []) for h in r.get("falsely_dead") or []]
    lines += [f"Hosts declared dead that were not killed (false detections, fenced): "
              f"{', '.join(f'{h} in {side} round {n}' for side, n, h in false_dead) or 'none'}.", ""]
    failed_rounds = [r for side in ("nonstop", "nonstop_vm") for r in (result.get(side) or {}).get("rounds", [])
                     if r.get("error")]
    if failed_rounds:
        lines += [f"Rounds that did not recover within the bench's wait (kept in failover.json with their events): "
                  f"{len(failed_rounds)} — " + "; ".join(f"round {r['round']} ({r['host']}): {r['error']}"
                                                         for r in failed_rounds), ""]
    return "\n".join(lines)


def render(path: Path) -> None:
    """Re-write failover.md from a stored failover.json (no new run)."""
    (RESULTS / "failover.md").write_text(markdown(json.loads(path.read_text())))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.failover")
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--vm-kills", type=int, default=5, help="kills of the VM's host (0: no VM run)")
    parser.add_argument("--only", choices=["nonstop", "peer"], default=None)
    parser.add_argument("--render", type=Path, default=None, help="only re-write the markdown from this JSON")
    args = parser.parse_args()
    if args.render:
        render(args.render)
        return
    result: dict[str, Any] = {"started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "kills": args.kills,
                              "vm_kills": args.vm_kills,
                              "loadavg_start": round(os.getloadavg()[0], 2)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.only in (None, "nonstop"):
        from bench.failover import nonstop_run

        print("nonstop, process guests ...")
        result["nonstop"] = nonstop_run.run(args.kills, vms=0)
        (RESULTS / "failover.partial.json").write_text(json.dumps(result, indent=1))
        if args.vm_kills:
            print("nonstop, a VM ...")
            result["nonstop_vm"] = nonstop_run.run(args.vm_kills, vms=1)
    if args.only in (None, "peer"):
        from bench.failover import peer

        print("keepalived + HAProxy ...")
        result["peer"] = peer.run(args.kills)
    result["loadavg_end"] = round(os.getloadavg()[0], 2)
    (RESULTS / "failover.partial.json").unlink(missing_ok=True)
    result["summary"] = {side: {k: summary(result[side]["rounds"], k) for k in fields(result[side]["rounds"])
                                if k not in ("round", "host", "new_master")}
                         for side in ("nonstop", "nonstop_vm", "peer") if side in result}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "failover.json").write_text(json.dumps(result, indent=1))
    (RESULTS / "failover.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
