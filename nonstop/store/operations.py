"""Persisted operations: one record shape for every multi-step operation (``ops/<id>``).

Role: failovers, rolling patches, rolling guest updates and live migrations are all stored as an
``OperationRecord``: the shared header of nonstop/core/operations.py (id, kind, step, reason,
created/updated, progress) plus ``body``, the kind's own typed fields as JSON (each kind's
dataclass converts itself to and from it). Ids come from ``new_op_id`` — random, never built
from a host, guest or group name. ``list_operations`` reads them back by kind; a value that is
not a valid record is skipped (and counted), never half-read.

Must not: decide which step comes next (the kind's ``Machine`` does) or know a kind's body.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from nonstop.core.operations import OperationHeader
from nonstop.store import keys
from nonstop.store.base import Op, Store

SCHEMA = 1


class OperationRecord(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: int = Field(SCHEMA, alias="schema")
    id: str
    kind: str
    step: str
    reason: str = ""
    created_at: float
    updated_at: float
    progress: dict[str, float] = Field(default_factory=dict)
    body: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def of(cls, header: OperationHeader, body: Mapping[str, Any]) -> OperationRecord:
        return cls(id=header.id, kind=header.kind, step=header.step, reason=header.reason,
                   created_at=header.created_at, updated_at=header.updated_at,
                   progress=dict(header.progress), body=dict(body))

    @property
    def header(self) -> OperationHeader:
        return OperationHeader(id=self.id, kind=self.kind, step=self.step, created_at=self.created_at,
                               updated_at=self.updated_at, reason=self.reason, progress=dict(self.progress))

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)


def new_op_id(kind: str) -> str:
    """``<kind>-<12 hex digits>``: unique, and unrelated to any name in the spec."""
    return f"{kind}-{uuid.uuid4().hex[:12]}"


def parse(value: bytes) -> OperationRecord | None:
    try:
        return OperationRecord.model_validate_json(value)
    except ValidationError:
        return None


def put_op(cluster: str, record: OperationRecord) -> Op:
    """The transaction op that stores ``record`` (for callers that write it with other keys)."""
    return Op.put_json(keys.op(cluster, record.id), record.to_json())


async def save(store: Store, cluster: str, record: OperationRecord) -> None:
    await store.put_json(keys.op(cluster, record.id), record.to_json())


async def load(store: Store, cluster: str, op_id: str) -> OperationRecord | None:
    kv = await store.get(keys.op(cluster, op_id))
    return parse(kv.value) if kv is not None else None


async def list_operations(store: Store, cluster: str, kind: str | None = None) -> list[OperationRecord]:
    """Every stored operation (of ``kind``), oldest first."""
    out = []
    for kv in await store.list(keys.ops_prefix(cluster)):
        record = parse(kv.value)
        if record is not None and (kind is None or record.kind == kind):
            out.append(record)
    return sorted(out, key=lambda r: (r.created_at, r.id))
