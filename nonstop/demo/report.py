"""The availability tour's report and plot.

Role: ``build_report`` turns the load samples, the tour's steps and the controller's events into
figures: requests sent/failed overall and per event window (injection → recovered), p99 latency
per window, detection/fence/failover/failback times; a per-second series for the plot.
``print_report`` prints it (rich); ``write_plot`` draws request rate and latency over time with
the events marked (matplotlib, Agg backend, PNG).

Must not: measure anything itself, or talk to the cluster.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nonstop.demo.load import Sample
from nonstop.store.records import EventRecord

TIMELINE_KINDS = ("host-dead", "fence", "failover-done", "link-degraded", "failback", "chaos")


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[k]


def _window(samples: list[Sample], start: float, end: float) -> dict[str, Any]:
    inside = [s for s in samples if start <= s.at < end]
    ok = [s.latency for s in inside if s.status == 200]
    p99 = percentile(ok, 99)
    p50 = percentile(ok, 50)
    return {"requests": len(inside), "failed": sum(1 for s in inside if s.status != 200),
            "p50_ms": round(p50 * 1000, 2) if p50 is not None else None,
            "p99_ms": round(p99 * 1000, 2) if p99 is not None else None}


def _series(samples: list[Sample], began: float) -> list[dict[str, Any]]:
    if not samples:
        return []
    last = int(samples[-1].at - began)
    buckets: list[list[Sample]] = [[] for _ in range(last + 1)]
    for s in samples:
        buckets[max(0, int(s.at - began))].append(s)
    if len(buckets) > 1:
        buckets = buckets[:-1]  # the last second is partial: the load stopped inside it
    out = []
    for second, group in enumerate(buckets):
        ok = [s.latency for s in group if s.status == 200]
        p50, p99 = percentile(ok, 50), percentile(ok, 99)
        out.append({"t": second, "ok": len(ok), "failed": len(group) - len(ok),
                    "p50_ms": round(p50 * 1000, 2) if p50 is not None else None,
                    "p99_ms": round(p99 * 1000, 2) if p99 is not None else None})
    return out


def build_report(cluster: str, service: str, samples: list[Sample], steps: list[dict[str, Any]],
                 events: list[EventRecord], began: float) -> dict[str, Any]:
    windows = []
    for step in steps:
        fig = {k: v for k, v in step.items() if k not in ("at", "end", "healed_at")}
        fig |= _window(samples, step["at"], step["end"])
        fig["t_inject"] = round(step["at"] - began, 2)
        fig["t_heal"] = round(step["healed_at"] - began, 2) if step.get("healed_at") else None
        fig["t_end"] = round(step["end"] - began, 2)
        windows.append(fig)
    failures = [s for s in samples if s.status != 200]
    ok = [s.latency for s in samples if s.status == 200]
    p99 = percentile(ok, 99)
    return {
        "cluster": cluster, "service": service,
        "requests": len(samples), "failed": len(failures),
        "p99_ms": round(p99 * 1000, 2) if p99 is not None else None,
        "duration_s": round(samples[-1].at - began, 1) if samples else 0.0,
        "events": windows,
        "failures": [{"t": round(s.at - began, 3), "status": s.status, "latency_ms": round(s.latency * 1000, 1)}
                     for s in failures[:50]],
        "timeline": [{"t": round(e.at - began, 3), "kind": e.kind, "subject": e.subject, "reason": e.reason}
                     for e in events if e.kind in TIMELINE_KINDS],
        "series": _series(samples, began),
    }


def print_report(report: dict[str, Any], say: Callable[[str], None]) -> None:
    say(f"[bold]availability report[/] — cluster {report['cluster']}, service {report['service']}: "
        f"{report['requests']} requests in {report['duration_s']} s, [{'green' if not report['failed'] else 'red'}]"
        f"{report['failed']} failed[/], p99 {report['p99_ms']} ms")
    for e in report["events"]:
        times = ", ".join(f"{k.removesuffix('_s')} {v} s" for k, v in e.items()
                          if k.endswith("_s") and v is not None and not k.startswith("t_"))
        say(f"  {e['event']:<13} {e['target']:<12} requests {e['requests']:>5}, failed {e['failed']:>3}, "
            f"p99 {e['p99_ms']} ms | {times}")
    if report.get("up_seconds") is not None:
        say(f"  up → serving {report['up_seconds']} s; down {report.get('down_seconds')} s")
    if report.get("plot"):
        say(f"  plot: {report['plot']}")


def write_plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = report["series"]
    t = [p["t"] for p in series]
    fig, (rate_ax, lat_ax) = plt.subplots(2, 1, figsize=(12, 6.5), sharex=True,
                                          gridspec_kw={"height_ratios": [1, 1]})
    rate_ax.plot(t, [p["ok"] for p in series], color="tab:green", label="succeeded / s", linewidth=1.5)
    rate_ax.bar(t, [p["failed"] for p in series], color="tab:red", label="failed / s", width=1.0)
    rate_ax.set_ylabel("requests per second")
    rate_ax.set_ylim(bottom=0, top=max([p["ok"] + p["failed"] for p in series] + [1]) * 1.35)
    rate_ax.legend(loc="upper right", fontsize=8)
    lat_ax.plot(t, [p["p50_ms"] for p in series], color="tab:blue", label="p50", linewidth=1.2)
    lat_ax.plot(t, [p["p99_ms"] for p in series], color="tab:orange", label="p99", linewidth=1.2)
    lat_ax.set_yscale("log")
    lat_ax.set_ylabel("latency (ms, log)")
    lat_ax.set_xlabel("seconds since the load started")
    lat_ax.legend(loc="upper right", fontsize=8)
    colors = {"host-failure": "tab:red", "link-cut": "tab:purple", "partition": "tab:brown"}
    for e in report["events"]:
        color = colors.get(e["event"], "black")
        for ax in (rate_ax, lat_ax):
            ax.axvspan(e["t_inject"], e["t_heal"] or e["t_end"], color=color, alpha=0.08)
            ax.axvline(e["t_inject"], color=color, linestyle="--", linewidth=1)
            if e["t_heal"] is not None:
                ax.axvline(e["t_heal"], color="tab:green", linestyle=":", linewidth=1)
        rate_ax.annotate(f"{e['event']}\n{e['target']}\nfailed {e['failed']}", (e["t_inject"], 1), xycoords=("data", "axes fraction"),
                         xytext=(3, -3), textcoords="offset points", va="top", fontsize=8, color=color)
        if e["t_heal"] is not None:
            rate_ax.annotate("heal", (e["t_heal"], 0.02), xycoords=("data", "axes fraction"), xytext=(3, 2),
                             textcoords="offset points", fontsize=7, color="tab:green")
        if e.get("failover_s") is not None:
            lat_ax.annotate(f"failover {e['failover_s']:.1f} s", (e["t_inject"] + e["failover_s"], 1),
                            xycoords=("data", "axes fraction"), xytext=(3, -3), textcoords="offset points",
                            va="top", fontsize=7, color=color)
    for item in report.get("timeline", []):
        if item["kind"] == "failback":
            for ax in (rate_ax, lat_ax):
                ax.axvline(item["t"], color="tab:cyan", linestyle="-.", linewidth=1)
            rate_ax.annotate(f"failback\n{item['subject']}", (item["t"], 0.55), xycoords=("data", "axes fraction"),
                             xytext=(3, 0), textcoords="offset points", fontsize=7, color="tab:cyan")
    rate_ax.set_title(f"nonstop availability tour — {report['cluster']}/{report['service']}: "
                      f"{report['requests']} requests, {report['failed']} failed")
    for ax in (rate_ax, lat_ax):
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
