"""The API's mutations: each validates fully first, then changes the cluster the way its owner allows.

Role: ``apply_spec`` writes a validated ``ClusterSpec`` at ``keys.spec`` (compare-and-set on the
revision read, encoded as ``nonstop.store.state.put_spec`` does) with its audit event in ONE store
transaction. Maintenance and migration are the controller's to carry out — it is the one writer of
``hosts/*/desired`` and ``guests/*/desired`` — so ``request_maintenance`` and ``request_migration``
submit an **intent** (nonstop/store/intents.py; requester ``api:<token role>``, with a reason) and
its audit event, then wait up to ``OUTCOME_WAIT`` seconds for the controller's outcome:

- maintenance: ``done`` → the answer; ``refused`` → ``Conflict`` with the controller's words;
- migrate: ``accepted`` (target chosen, the move under way) or ``done`` → the answer;
  ``refused`` / ``failed`` → ``Conflict``;
- no answer yet → the answer with ``status: "pending"`` and the intent id to follow.

Before a migrate intent is written the request is checked against what the API sees: the guest is
placed and not migrating, the target is another known host, a process guest is not asked to move
live, and the target passes every placement filter (the pure ``fits_on`` the controller uses, over
the snapshot's assignments and host conditions) — so an impossible request is a 409 naming the
filter, not an intent. ``audit_event`` logs chaos actions. Every record names who asked and why.

Must not: write ``hosts/*/desired`` or ``guests/*/desired``, or an intent's outcome; decide
placement or liveness (the pre-check asks the core); call the lab (chaos goes through
``nonstop.api.chaos``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Literal

from nonstop.api.describe import host_conditions
from nonstop.core.controller.placing import fits_on
from nonstop.core.spec import ClusterSpec
from nonstop.specfile import SpecError, load_spec_text
from nonstop.store import events, intents, keys
from nonstop.store.base import Compare, Op, Store
from nonstop.store.events import new_event
from nonstop.store.records import EventRecord
from nonstop.store.state import get_spec, spec_op

OUTCOME_WAIT = 2.0
"""Seconds a maintenance or migrate request waits for the controller's outcome before answering
``pending`` (202)."""
MOVE_ANSWERS = frozenset({"accepted", *intents.FINAL_STATUSES})
"""A migrate intent is answered once the controller has accepted it (the move takes longer)."""


class ActionError(Exception):
    status = 400

    def __init__(self, message: str, field: str | None = None, problems: list[dict[str, Any]] | None = None,
                 intent: str | None = None) -> None:
        super().__init__(message)
        self.message, self.field, self.problems, self.intent = message, field, problems or [], intent

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"detail": self.message}
        if self.field:
            out["field"] = self.field
        if self.problems:
            out["problems"] = self.problems
        if self.intent:
            out["intent"] = self.intent
        return out


class Invalid(ActionError):
    status = 422


class NotFound(ActionError):
    status = 404


class Conflict(ActionError):
    status = 409


class LabFailed(ActionError):
    """The lab could not do a chaos action (its error is in the message)."""

    status = 502


_last_seq = 0


def _seq() -> int:
    global _last_seq
    _last_seq = max(time.time_ns(), _last_seq + 1)
    return _last_seq


def event_op(cluster: str, kind: str, subject: str, reason: str, by: str, **data: Any) -> tuple[Op, EventRecord]:
    """The put of one event-log entry (an ``EventRecord``, as the controller's ``EventLog`` writes)
    and the record."""
    record = new_event(_seq(), kind, subject, reason, by=by, source="api", **data)
    return events.event_op(cluster, record), record


async def audit_event(store: Store, cluster: str, kind: str, subject: str, reason: str, by: str,
                      **data: Any) -> dict[str, Any]:
    """Log one event; its fields (as the API answers with them)."""
    op, record = event_op(cluster, kind, subject, reason, by, **data)
    await store.txn([], [op])
    return record.data()


async def _spec(store: Store, cluster: str) -> ClusterSpec:
    stored = await get_spec(store, cluster)
    if stored is None:
        raise Conflict(f"cluster {cluster} has no spec in the store yet; apply one first")
    return stored.spec


async def apply_spec(store: Store, cluster: str, text: str, by: str, filename: str = "<request>") -> dict[str, Any]:
    """Validate ``text`` (YAML or JSON) as a cluster spec and store it if nobody changed the spec since."""
    try:
        spec = load_spec_text(text, filename)
    except SpecError as exc:
        problems = [p.to_dict() for p in exc.problems]
        first = problems[0] if problems else {}
        raise Invalid(str(exc), field=first.get("field") or "spec", problems=problems) from exc
    if spec.cluster != cluster:
        raise Invalid(f'spec is for cluster "{spec.cluster}", this API serves "{cluster}"', field="cluster")
    key = keys.spec(cluster)
    current = await get_spec(store, cluster)
    before = current.spec if current is not None else None
    changed = _changes(before, spec)
    if before is not None and not changed:
        return {"applied": False, "revision": current.mod_revision if current else 0, "changes": []}
    event, _ = event_op(cluster, "spec-applied", cluster, "; ".join(changed) or "first spec", by, changes=changed)
    result = await store.txn([Compare.mod_revision(key, current.mod_revision if current else 0)],
                             [spec_op(spec), event])
    if not result.succeeded:
        raise Conflict("the spec changed while this request was validated; read it again and retry")
    kv = await store.get(key)
    return {"applied": True, "revision": kv.mod_revision if kv else 0, "changes": changed}


def _changes(before: ClusterSpec | None, after: ClusterSpec) -> list[str]:
    if before is None:
        return [f"new cluster: {len(after.hosts)} hosts, {len(after.guests)} guest groups, "
                f"{len(after.services)} services"]
    out = []
    for section in ("hosts", "networks", "guests", "services"):
        old = {item.name: item for item in getattr(before, section)}
        new = {item.name: item for item in getattr(after, section)}
        out += [f"{section}: +{n}" for n in new if n not in old]
        out += [f"{section}: -{n}" for n in old if n not in new]
        for n in new:
            if n in old and old[n] != new[n]:
                fields = [f for f in type(new[n]).model_fields if getattr(old[n], f) != getattr(new[n], f)]
                out.append(f"{section}: ~{n} ({', '.join(fields)})")
    if before.policies != after.policies:
        out.append("policies changed")
    if before.switches != after.switches:
        out.append("switches changed")
    return out


# ------------------------------------------------------------------ intents: maintenance and migration


def _answer(intent: intents.IntentRequest, outcome: intents.IntentOutcome | None, answered: frozenset[str],
            field: str) -> dict[str, Any]:
    """The outcome part of an answer; ``Conflict`` when the controller refused or the move failed."""
    if outcome is not None and outcome.status in ("refused", "failed"):
        raise Conflict(outcome.message, field=field, intent=intent.id)
    if outcome is None or outcome.status not in answered:
        return {"intent": intent.id, "status": "pending",
                "message": "requested; the controller has not answered yet"}
    return {"intent": intent.id, "status": outcome.status, "message": outcome.message}


async def request_maintenance(store: Store, cluster: str, host: str, enter: bool, by: str,
                              cluster_doc: Mapping[str, Any], reason: str = "",
                              wait: float | None = None) -> dict[str, Any]:
    """Ask the controller to put ``host`` in maintenance (evacuating it) or take it out.
    ``cluster_doc``: the API's snapshot (says whether this changes anything)."""
    spec = await _spec(store, cluster)
    if host not in {h.name for h in spec.hosts}:
        raise NotFound(f'no host "{host}" in cluster {cluster}; expected one of: '
                       f'{", ".join(h.name for h in spec.hosts)}', field="host")
    state = "maintenance" if enter else "up"
    desired = next((h.get("desired") or {} for h in cluster_doc["hosts"] if h["name"] == host), {})
    changed = desired.get("state", "up") != state or (enter and desired.get("evacuate") is False)
    reason = reason or ("enter maintenance" if enter else "exit maintenance")
    intent = await intents.submit(store, cluster, "maintenance", requester=f"api:{by}", reason=reason, host=host,
                                  enter=enter, evacuate=True)
    await audit_event(store, cluster, "maintenance-requested", host, reason, by, state=state, intent=intent.id)
    outcome = await intents.wait_outcome(store, cluster, intent.id, timeout=OUTCOME_WAIT if wait is None else wait)
    return {"host": host, "state": state, "changed": changed,
            **_answer(intent, outcome, intents.FINAL_STATUSES, "host")}


async def request_migration(store: Store, cluster: str, guest: str, target: str, by: str,
                            cluster_doc: Mapping[str, Any], mode: Literal["live", "cold"] = "live", reason: str = "",
                            wait: float | None = None) -> dict[str, Any]:
    """Ask the controller to move ``guest`` to ``target``: live (VMs; same epoch, the agents hand
    it over) or cold (drained, then restarted there under a new epoch). ``cluster_doc``: the API's
    snapshot, for the checks made before anything is written."""
    spec = await _spec(store, cluster)
    hosts = [h.name for h in spec.hosts]
    if target not in hosts:
        raise NotFound(f'no host "{target}"; expected one of: {", ".join(hosts)}', field="to")
    record = next((g for g in cluster_doc["guests"] if g["name"] == guest and g.get("host")), None)
    if record is None:
        raise NotFound(f'no guest "{guest}" is placed in cluster {cluster}', field="guest")
    source, kind = str(record["host"]), str(record.get("kind") or "process")
    if record.get("migrate_to"):
        raise Conflict(f"{guest} is already migrating to {record['migrate_to']}", field="guest")
    if source == target:
        raise Conflict(f"{guest} already runs on {target}", field="to")
    if mode == "live" and kind != "vm":
        raise Conflict(f"{guest} is a {kind} guest: only VMs migrate live; ask for mode cold to move it "
                       f"(drained from its balancers, then restarted on {target})", field="mode")
    assignments = {str(g["name"]): str(g["host"]) for g in cluster_doc["guests"] if g.get("host")}
    why = fits_on(spec, assignments, host_conditions(spec, cluster_doc), guest, target)
    if why is not None:
        raise Conflict(why, field="to")
    reason = reason or f"{mode} migration {source} -> {target} asked through the API"
    intent = await intents.submit(store, cluster, "migrate", requester=f"api:{by}", reason=reason, guest=guest,
                                  target=target, live=mode == "live")
    await audit_event(store, cluster, "migrate-requested", guest, f"move from {source} to {target} ({mode})", by,
                      source_host=source, target=target, mode=mode, intent=intent.id)
    outcome = await intents.wait_outcome(store, cluster, intent.id, timeout=OUTCOME_WAIT if wait is None else wait,
                                         until=MOVE_ANSWERS)
    answer = _answer(intent, outcome, MOVE_ANSWERS, "to")
    chosen = outcome.target if outcome is not None and outcome.target and answer["status"] != "pending" else target
    return {"guest": guest, "from": source, "to": target, "mode": mode, "target": chosen, **answer}
