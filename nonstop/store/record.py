"""What a stored record is: a versioned pydantic model per key family, and how one is read and written.

Role: the base every typed store record derives from (nonstop/store/records.py holds the models,
one per key family of docs/store.md). A record carries ``schema`` — its family's schema version —
in the stored JSON; a value without it is old data and reads as version 1; a value of a newer
version than this code knows is refused with ``RecordVersionError`` naming the key family (a
newer nonstop wrote it: reading it half would be wrong). Families that once stored bare values
(an epoch as a number, an IPAM owner as plain text, a backend list as a list) turn them into
their record in ``legacy``.

Helpers: ``read`` (one key → record or None), ``read_or_none`` (unreadable counts as absent), ``put`` and ``put_op`` (a record → a write, alone
or in a transaction), ``read_prefix`` (a listing → name → record, unreadable values skipped and
named).

Must not: know the key layout (nonstop/store/keys.py does) or what any record means.
"""

from __future__ import annotations

import json
import logging
from typing import Any, ClassVar, Self, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from nonstop.store.base import KeyValue, Op, Store, encode_json

log = logging.getLogger("nonstop.store.records")

SCHEMA = 1
"""The first schema version of every family (a value without ``schema`` is one)."""


class RecordError(ValueError):
    """A stored value that is not a readable record of its family."""


class RecordVersionError(RecordError):
    """A record written with a newer schema version than this code reads."""

    def __init__(self, family: str, version: int, newest: int) -> None:
        super().__init__(f"{family}: the record has schema {version}, this nonstop reads schema {newest} at most "
                         f"(a newer nonstop wrote it)")
        self.family, self.version, self.newest = family, version, newest


def check_version(family: str, data: Any, newest: int) -> None:
    """Refuse ``data`` (a decoded value) when its ``schema`` is not a version up to ``newest``."""
    if not isinstance(data, dict):
        return
    version = data.get("schema", data.get("schema_version", SCHEMA))
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise RecordError(f"{family}: schema {version!r} is not a version number")
    if version > newest:
        raise RecordVersionError(family, version, newest)


class Record(BaseModel):
    """One stored value of a key family. Subclasses name their ``FAMILY`` and may raise
    ``SCHEMA`` (keeping ``legacy`` able to read what older versions wrote)."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    FAMILY: ClassVar[str] = "?"
    """The key family as docs/store.md writes it (``hosts/<host>/alive``), for error messages."""
    SCHEMA: ClassVar[int] = SCHEMA

    schema_version: int = Field(SCHEMA, alias="schema")

    @classmethod
    def legacy(cls, data: Any) -> Any:
        """A decoded value as older writers stored it → the record's fields (default: as is)."""
        return data

    @model_validator(mode="before")
    @classmethod
    def _versioned(cls, data: Any) -> Any:
        data = cls.legacy(data)
        check_version(cls.FAMILY, data, cls.SCHEMA)
        return data

    @classmethod
    def load_json(cls, value: bytes) -> Any:
        """The stored bytes → the decoded value ``legacy`` and validation see."""
        return json.loads(value)

    @classmethod
    def decode(cls, value: bytes) -> Self:
        """The record stored as ``value``; ``RecordError`` (a ``ValueError``) naming the family when
        it is not one, ``RecordVersionError`` when a newer schema wrote it."""
        try:
            data = cls.legacy(cls.load_json(value))
        except ValueError as exc:
            raise RecordError(f"{cls.FAMILY}: not JSON ({exc})") from exc
        check_version(cls.FAMILY, data, cls.SCHEMA)
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": str(exc)}
            where = ".".join(str(p) for p in first["loc"]) or "record"
            raise RecordError(f"{cls.FAMILY}: {where}: {first['msg']}") from exc

    def dump(self) -> dict[str, Any]:
        """The JSON-able value as stored (with ``schema``)."""
        return self.model_dump(mode="json", by_alias=True)

    def data(self) -> dict[str, Any]:
        """The record's fields without ``schema`` (for presenting it)."""
        out = self.dump()
        out.pop("schema", None)
        return out

    def encode(self) -> bytes:
        return encode_json(self.dump())

    def detail(self, name: str) -> Any:
        """A field an open record (``extra="allow"``) carries that its model does not name; None when absent."""
        return (self.model_extra or {}).get(name)

    def with_changes(self, **changes: Any) -> Self:
        """A copy with ``changes`` applied, validated like a read."""
        return type(self).model_validate({**self.dump(), **changes})


R = TypeVar("R", bound=Record)


async def read(store: Store, key: str, model: type[R]) -> R | None:
    """The record at ``key`` (None when absent); ``RecordError`` when the value is not one."""
    kv = await store.get(key)
    return model.decode(kv.value) if kv is not None else None


async def read_or_none(store: Store, key: str, model: type[R]) -> R | None:
    """The record at ``key``, or None when it is absent or unreadable (logged): for readers to
    whom an unreadable record means the same as none."""
    try:
        return await read(store, key, model)
    except RecordError as exc:
        log.warning("ignoring %s: %s", key, exc)
        return None


async def put(store: Store, key: str, record: Record, lease: int | None = None) -> int:
    """Store ``record`` at ``key``; the new revision."""
    return await store.put(key, record.encode(), lease=lease)


def put_op(key: str, record: Record, lease: int | None = None) -> Op:
    """The transaction op that stores ``record`` at ``key``."""
    return Op.put(key, record.encode(), lease=lease)


def decode_kvs(kvs: list[KeyValue], prefix: str, model: type[R]) -> dict[str, R]:
    """``kvs`` listed under ``prefix`` → (key without the prefix) → record; values that are not
    records of ``model`` are skipped and logged, never half-read."""
    out: dict[str, R] = {}
    for kv in kvs:
        try:
            out[kv.key[len(prefix):]] = model.decode(kv.value)
        except RecordError as exc:
            log.warning("skipping %s: %s", kv.key, exc)
    return out


async def read_prefix(store: Store, prefix: str, model: type[R]) -> dict[str, R]:
    """Every record of ``model`` under ``prefix`` (one listing), by the rest of its key."""
    return decode_kvs(await store.list(prefix), prefix, model)


async def merge(store: Store, key: str, model: type[R], fields: dict[str, Any], attempts: int = 5) -> bool:
    """Set ``fields`` of the record at ``key``, keeping every other field (compare-and-set, retried
    ``attempts`` times against concurrent writers). An unreadable value is replaced; a record of a
    newer schema is left alone (False, logged): its fields are not ours to drop."""
    for _ in range(attempts):
        kv = await store.get(key)
        current: dict[str, Any] = {}
        if kv is not None:
            try:
                current = model.decode(kv.value).dump()
            except RecordVersionError as exc:
                log.error("not merging into %s: %s", key, exc)
                return False
            except RecordError as exc:
                log.warning("replacing %s: %s", key, exc)
        record = model.model_validate({**current, **fields, "schema": model.SCHEMA})
        if await store.compare_and_set(key, record.encode(), kv.mod_revision if kv is not None else 0):
            return True
    return False
