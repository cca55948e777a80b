"""``describe KIND NAME``: one object's full record, and for guests the placement explanation.

Role: pick one host / guest / service / network / team / switch out of a cluster snapshot, and
for a guest ask the pure placement engine (docs/placement.md) where it would be placed now,
given the current assignments and host states — every filter step (how many hosts it removed)
and every weigher score of the chosen host and the runners-up — next to where it runs.
``host_conditions`` maps the snapshot's host states to the placement engine's conditions as the
controller's view does (the migrate pre-check in ``nonstop.api.actions`` uses it too).

Must not: write anything; re-implement placement (the core decides, this only maps state in).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nonstop.core.patching.planner import placement_conditions
from nonstop.core.placement import cluster_state_from_spec, config_from_spec, place
from nonstop.core.spec import ClusterSpec

KINDS = ("host", "guest", "service", "network", "team", "switch")

HEARD = frozenset({"up", "link-degraded"})
"""Liveness states the controller places guests on (a link-degraded host is alive on its other links)."""


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
    states = host_conditions(spec, cluster)
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


def host_conditions(spec: ClusterSpec, cluster: Mapping[str, Any]) -> dict[str, str]:
    """Each host of ``spec``: ``maintenance`` (asked for, or so reported), ``degraded`` (heard, but its
    hardware watcher allows no new guests), ``up`` (heard), else its state — which
    ``placement_conditions`` turns into ``failed`` (dead, suspect, down, unknown …)."""
    known = {h.name for h in spec.hosts}
    out = {}
    for h in cluster["hosts"]:
        if h["name"] not in known:
            continue
        desired, components = h.get("desired") or {}, h.get("components") or {}
        if h["state"] == "maintenance" or desired.get("state") == "maintenance":
            out[h["name"]] = "maintenance"
        elif h["state"] in HEARD:
            out[h["name"]] = "degraded" if components.get("placement") == "no-new-guests" else "up"
        else:
            out[h["name"]] = str(h["state"])
    return placement_conditions(out)
