"""The rollout report: every host's level before and after, step durations, guests moved and how.

Role: turn a ``Rollout`` (and the levels the hosts report now) into a JSON-able dict and a rich
table. ``complete`` is true only when every host of the rollout reports the target level — the
rollout record saying "complete" is not enough.

Must not: read the store (callers pass what they read) or decide anything.
"""

from __future__ import annotations

from typing import Any

from rich.table import Table

from nonstop.core.patching.steps import Rollout, step_medians


def report(rollout: Rollout, levels_now: dict[str, str | None]) -> dict[str, Any]:
    hosts = []
    for batch in rollout.batches:
        for host in batch:
            p = rollout.hosts[host]
            hosts.append({
                "host": host, "step": p.step.value, "level_before": p.level_before,
                "level_after": levels_now.get(host), "error": p.error, "output": p.output,
                "failed_step": p.failed_step.value if p.failed_step else None,
                "durations": {s: d for s, d in p.durations},
                "total_seconds": round(sum(d for _, d in p.durations), 3),
                "moves": [{"guest": g, "from": a, "to": b, "how": how} for g, a, b, how in p.moves],
            })
    complete = all(levels_now.get(h) == rollout.target for h in rollout.hosts)
    return {
        "rollout": rollout.header.id, "target": rollout.target, "status": rollout.status.value,
        "complete": complete and rollout.status.value == "complete",
        "total_seconds": round(rollout.header.updated_at - rollout.header.created_at, 3),
        "step_medians": step_medians([rollout]), "hosts": hosts,
    }


def table(doc: dict[str, Any]) -> Table:
    t = Table(title=f"Patch rollout {doc['rollout']} to {doc['target']}: {doc['status']}"
              + (" (complete: every host at the target)" if doc["complete"] else ""), title_justify="left")
    for col in ("host", "before", "after", "step", "seconds", "slowest steps", "guests moved", "error"):
        t.add_column(col, overflow="fold")
    for h in doc["hosts"]:
        slow = sorted(h["durations"].items(), key=lambda kv: -kv[1])[:3]
        t.add_row(h["host"], str(h["level_before"]), str(h["level_after"]), h["step"], f"{h['total_seconds']:.1f}",
                  ", ".join(f"{s} {d:.1f}s" for s, d in slow),
                  ", ".join(f"{m['guest']} {m['from']}->{m['to']} ({m['how']})" for m in h["moves"]) or "-",
                  (f"{h['failed_step']}: {h['error']}" if h["error"] else ""))
    return t
