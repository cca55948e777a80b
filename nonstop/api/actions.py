"""The API's mutations: each validates fully, then writes desired state and its audit event in ONE
store transaction (nothing half-applied; a concurrent change makes the compare fail → 409).

Role: ``apply_spec`` (a validated ``ClusterSpec`` at ``keys.spec``, compare-and-set on the revision
read, encoded as ``nonstop.store.state.put_spec`` does), ``request_maintenance`` (the operator's wish
in ``hosts/<h>/desired``: ``{"state": "maintenance" | "up", "requested_by", "requested_at",
"reason"}``, merged into whatever the controller keeps there), ``request_migration``
(``migrate_to`` in the guest's desired record, the field the agents' live-migration hand-off acts on,
docs/agent.md), and ``audit_event`` for chaos actions. Every record names who asked (the token's
role) and why. The controller's reconcile loops act on these records; this module never moves a
guest or touches a host itself.

Must not: decide placement or liveness; call the lab (chaos goes through ``nonstop.api.chaos``).
"""

from __future__ import annotations

import json
import time
from typing import Any

from nonstop.core.spec import ClusterSpec
from nonstop.specfile import SpecError, load_spec_text
from nonstop.store import keys
from nonstop.store.base import Compare, Op, Store, encode_json


class ActionError(Exception):
    status = 400

    def __init__(self, message: str, field: str | None = None, problems: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.message, self.field, self.problems = message, field, problems or []

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"detail": self.message}
        if self.field:
            out["field"] = self.field
        if self.problems:
            out["problems"] = self.problems
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


def event_op(cluster: str, kind: str, subject: str, reason: str, by: str, **data: Any) -> tuple[Op, dict[str, Any]]:
    """The put of one event-log entry (same shape as the controller's ``EventLog``) and the record."""
    seq = _seq()
    record = {"seq": seq, "at": seq / 1e9, "kind": kind, "subject": subject, "reason": reason, "by": by,
              "source": "api", **data}
    return Op.put(keys.event(cluster, seq), encode_json(record)), record


async def audit_event(store: Store, cluster: str, kind: str, subject: str, reason: str, by: str,
                      **data: Any) -> dict[str, Any]:
    op, record = event_op(cluster, kind, subject, reason, by, **data)
    await store.txn([], [op])
    return record


async def _spec(store: Store, cluster: str) -> ClusterSpec:
    kv = await store.get(keys.spec(cluster))
    if kv is None:
        raise Conflict(f"cluster {cluster} has no spec in the store yet; apply one first")
    return ClusterSpec.model_validate_json(kv.value)


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
    current = await store.get(key)
    before = ClusterSpec.model_validate_json(current.value) if current is not None else None
    changed = _changes(before, spec)
    if before is not None and not changed:
        return {"applied": False, "revision": current.mod_revision if current else 0, "changes": []}
    event, _ = event_op(cluster, "spec-applied", cluster, "; ".join(changed) or "first spec", by, changes=changed)
    result = await store.txn([Compare.mod_revision(key, current.mod_revision if current else 0)],
                             [Op.put(key, encode_json(spec.model_dump(mode="json"))), event])
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


async def request_maintenance(store: Store, cluster: str, host: str, enter: bool, by: str,
                              reason: str = "") -> dict[str, Any]:
    spec = await _spec(store, cluster)
    if host not in {h.name for h in spec.hosts}:
        raise NotFound(f'no host "{host}" in cluster {cluster}; expected one of: '
                       f'{", ".join(h.name for h in spec.hosts)}', field="host")
    key = keys.host_desired(cluster, host)
    kv = await store.get(key)
    record = json.loads(kv.value) if kv is not None else {}
    if not isinstance(record, dict):
        record = {}
    state = "maintenance" if enter else "up"
    if record.get("state", "up") == state:
        return {"host": host, "state": state, "changed": False}
    record.update(state=state, evacuate=True, requested_by=by, requested_at=time.time(),
                  reason=reason or ("enter maintenance" if enter else "exit maintenance"))
    event, _ = event_op(cluster, "maintenance-requested", host, record["reason"], by, state=state)
    result = await store.txn([Compare.mod_revision(key, kv.mod_revision if kv else 0)],
                             [Op.put_json(key, record), event])
    if not result.succeeded:
        raise Conflict(f"host {host}'s desired record changed meanwhile; retry")
    return {"host": host, "state": state, "changed": True}


async def request_migration(store: Store, cluster: str, guest: str, target: str, by: str,
                            host_state: str | None) -> dict[str, Any]:
    spec = await _spec(store, cluster)
    hosts = [h.name for h in spec.hosts]
    if target not in hosts:
        raise NotFound(f'no host "{target}"; expected one of: {", ".join(hosts)}', field="to")
    key = keys.guest_desired(cluster, guest)
    kv = await store.get(key)
    if kv is None:
        raise NotFound(f'no guest "{guest}" is placed in cluster {cluster}', field="guest")
    record = json.loads(kv.value)
    if record.get("kind", "process") != "vm":
        raise Conflict(f"{guest} is a {record.get('kind', 'process')} guest: only VMs migrate live; "
                       f"put its host in maintenance to move it (cold)", field="guest")
    if record.get("migrate_to"):
        raise Conflict(f"{guest} is already migrating to {record['migrate_to']}", field="guest")
    if record.get("host") == target:
        raise Conflict(f"{guest} already runs on {target}", field="to")
    if host_state not in ("up", "link-degraded"):
        raise Conflict(f"{target} is {host_state}; a guest can only move to a host that is up", field="to")
    record["migrate_to"] = target
    event, _ = event_op(cluster, "migrate-requested", guest, f"move from {record.get('host')} to {target}", by,
                        source_host=record.get("host"), target=target)
    result = await store.txn([Compare.mod_revision(key, kv.mod_revision)], [Op.put_json(key, record), event])
    if not result.succeeded:
        raise Conflict(f"{guest}'s desired record changed meanwhile; retry")
    return {"guest": guest, "from": record.get("host"), "to": target, "requested": True}
