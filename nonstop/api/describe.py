"""``describe KIND NAME``: one object's full record, and for guests the placement explanation.

Role: pick one host / guest / service / network / team / switch out of a cluster snapshot, and
for a guest ask the pure placement engine (docs/placement.md) where it would be placed now,
given the current assignments and host states — every filter step (how many hosts it removed)
and every weigher score of the chosen host and the runners-up — next to where it runs.

Must not: write anything; re-implement placement (the core decides, this only maps state in).
"""

from __future__ import annotations

from typing import Any

from nonstop.core.placement import cluster_state_from_spec, config_from_spec, place
from nonstop.core.spec import ClusterSpec

KINDS = ("host", "guest", "service", "network", "team", "switch")

_CONDITION = {"up": "up", "link-degraded": "up", "unknown": "up", "maintenance": "maintenance",
              "degraded": "degraded"}


def find(cluster: dict[str, Any], kind: str, name: str) -> dict[str, Any] | None:
    if kind == "team":
        host, _, team = name.partition("/")
        return next((t for t in cluster["teams"] if t["host"] == host and t["name"] == team), None)
    collection = {"host": "hosts", "guest": "guests", "service": "services", "network": "networks",
                  "switch": "switches"}[kind]
    return next((item for item in cluster[collection] if item["name"] == name), None)


def placement_explanation(spec: ClusterSpec, cluster: dict[str, Any], guest: str) -> dict[str, Any]:
    """Where ``guest`` would be placed now, explained; ``available: false`` with why when it cannot say."""
    names = {n for g in spec.guests for n in g.guest_names()}
    if guest not in names:
        return {"available": False, "reason": f"{guest} is not a replica of a guest group in the spec"}
    states = {h["name"]: _CONDITION.get(h["state"], "failed") for h in cluster["hosts"]
              if h["name"] in {s.name for s in spec.hosts}}
    assignments = {g["name"]: g["host"] for g in cluster["guests"]
                   if g["name"] in names and g["host"] in states and g["name"] != guest}
    state = cluster_state_from_spec(spec, host_states=states, assignments=assignments)
    result = place(state, pending=[guest], config=config_from_spec(spec), explain=[guest])
    explanation = result.explanations.get(guest)
    chosen = dict(result.placed).get(guest)
    current = next((g["host"] for g in cluster["guests"] if g["name"] == guest), None)
    return {
        "available": True,
        "current_host": current,
        "would_place_on": chosen,
        "agrees": chosen == current if current else None,
        "explanation": explanation.to_dict() if explanation else None,
        "unplaced_reason": next((u.reason for u in result.unplaced if u.guest == guest), None),
    }
