"""Intents: requests to the controller, the one writer of guest placement and host state.

Role: the patcher, the rolling guest update, the API and the components watcher never write
``guests/*/desired`` or ``hosts/*/desired`` themselves. They write an **intent** —
``intents/<id>/request``, an ``IntentRequest`` with a reason and who asks — and read back its
**outcome** — ``intents/<id>/outcome``, written only by the leading controller:

    (none) → accepted (target chosen; the move is under way) → done | failed
    (none) → done (nothing to do, or a host-state change applied at once)
    (none) → refused (the request cannot be met; ``message`` says why, e.g. a placement
             filter's explanation)

Kinds:
- ``migrate``: move ``guest`` to ``target`` (checked against every placement filter) or, with no
  target, to the best host other than ``avoid``; VMs move live when ``live``; process guests
  always move cold (drained from their balancers first).
- ``replace``: reassign ``guest`` cold to a host other than ``avoid`` with its definition
  changed by ``changes`` (``command``, ``image``: a rolling guest update). Refused when no other
  host fits — never the same host.
- ``maintenance``: ``host`` enters (``enter``, ``evacuate``) or leaves maintenance.

Ids are generated (``new_intent_id``), never built from names. Requests are written once and
never changed; outcomes only move forward. Old intents are pruned by the controller.

Must not: decide anything (nonstop/core/controller does) or write an outcome from anywhere but
the controller.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from pydantic import BaseModel, ValidationError

from nonstop.core.intents import FINAL_STATUSES, IntentKind, IntentOutcome, IntentRequest
from nonstop.store import keys
from nonstop.store.base import Compare, Op, Store

__all__ = ["FINAL_STATUSES", "IntentKind", "IntentOutcome", "IntentRequest", "IntentError", "submit",
           "wait_outcome", "get_outcome", "parse_request", "parse_outcome", "new_intent_id"]


class IntentError(Exception):
    pass


def new_intent_id(kind: str) -> str:
    return f"{kind}-{uuid.uuid4().hex[:12]}"


def request_key(cluster: str, intent_id: str) -> str:
    return f"{keys.intent_prefix(cluster, intent_id)}request"


def outcome_key(cluster: str, intent_id: str) -> str:
    return f"{keys.intent_prefix(cluster, intent_id)}outcome"


def dump(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(mode="json", by_alias=True)


async def submit(store: Store, cluster: str, kind: IntentKind, *, requester: str, reason: str,
                 **fields: Any) -> IntentRequest:
    """Write a new intent; returns it (its ``id`` names the outcome to wait for)."""
    intent = IntentRequest(id=new_intent_id(kind), kind=kind, requester=requester, reason=reason,
                           created_at=time.time(), **fields)
    key = request_key(cluster, intent.id)
    result = await store.txn([Compare.missing(key)], [Op.put_json(key, dump(intent))])
    if not result.succeeded:  # a 48-bit id collision: say so rather than overwrite
        raise IntentError(f"intent id {intent.id} already exists")
    return intent


def parse_request(value: bytes) -> IntentRequest | None:
    try:
        return IntentRequest.model_validate_json(value)
    except ValidationError:
        return None


def parse_outcome(value: bytes) -> IntentOutcome | None:
    try:
        return IntentOutcome.model_validate_json(value)
    except ValidationError:
        return None


async def get_outcome(store: Store, cluster: str, intent_id: str) -> IntentOutcome | None:
    kv = await store.get(outcome_key(cluster, intent_id))
    return parse_outcome(kv.value) if kv is not None else None


async def wait_outcome(store: Store, cluster: str, intent_id: str, *, timeout: float,
                       until: frozenset[str] = FINAL_STATUSES, every: float = 0.05) -> IntentOutcome | None:
    """The intent's outcome once its status is in ``until`` (default: final), or the latest
    outcome (possibly None) when ``timeout`` passes first."""
    deadline = time.monotonic() + timeout
    outcome = None
    while True:
        outcome = await get_outcome(store, cluster, intent_id)
        if outcome is not None and outcome.status in until:
            return outcome
        if time.monotonic() >= deadline:
            return outcome
        await asyncio.sleep(every)
