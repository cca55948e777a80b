"""The state store interface: a small, etcd-shaped key-value store with revisions, leases and watches.

Role: define the ONE asynchronous interface every shell (controller, agents, API, load balancer)
uses to keep desired and observed state, plus the value types it speaks in. Two backends
implement it — ``nonstop.store.sqlite`` (embedded default, several processes on one machine)
and ``nonstop.store.etcd`` (etcd 3.4, for clusters that span machines) — and one conformance
suite (tests/store) holds both to the contracts written in the docstrings below.

The model is etcd's: one global revision counter that every write bumps (a transaction bumps it
once); each key carries ``create_revision``, ``mod_revision`` and ``version`` (writes since it was
created; 0 = absent); a watch replays history from a revision still kept and then follows live
changes; a lease with a TTL takes its keys with it when it is not kept alive.

Must not: know the key layout (``nonstop.store.keys``) or what values mean; block the event loop.
"""

from __future__ import annotations

import abc
import json
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from types import TracebackType
from typing import Any, Literal


class StoreError(Exception):
    """Base of every error a store raises on purpose."""


class LeaseNotFound(StoreError):
    """A put or keep-alive named a lease that does not exist (never granted, revoked or expired)."""


class CompactedError(StoreError):
    """A watch asked for history older than the store still keeps."""

    def __init__(self, requested: int, compacted: int) -> None:
        super().__init__(f"revision {requested} is compacted; the oldest revision kept is {compacted}")
        self.requested = requested
        self.compacted = compacted


class StoreUnavailable(StoreError):
    """The backend cannot be reached (etcd down) or the database cannot be opened."""


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    """Number of writes since the key was (re)created; 1 after the first put."""
    lease: int = 0
    """The lease the key is attached to; 0 for none."""

    def json(self) -> Any:
        return json.loads(self.value)


class EventType(str, Enum):
    PUT = "put"
    DELETE = "delete"


@dataclass(frozen=True)
class WatchEvent:
    type: EventType
    key: str
    value: bytes
    """The new value for PUT; empty for DELETE."""
    revision: int
    """The revision of the write (the key's mod_revision for PUT)."""
    create_revision: int = 0
    version: int = 0
    lease: int = 0


CompareTarget = Literal["mod_revision", "create_revision", "version", "value"]
CompareOp = Literal["==", "!=", "<", ">"]


@dataclass(frozen=True)
class Compare:
    """One condition of a transaction. An absent key has version, mod and create revision 0;
    a ``value`` comparison on an absent key is always false (as in etcd)."""

    key: str
    target: CompareTarget
    op: CompareOp
    operand: int | bytes

    @classmethod
    def mod_revision(cls, key: str, revision: int, op: CompareOp = "==") -> Compare:
        return cls(key, "mod_revision", op, revision)

    @classmethod
    def version(cls, key: str, version: int, op: CompareOp = "==") -> Compare:
        return cls(key, "version", op, version)

    @classmethod
    def value(cls, key: str, value: bytes, op: CompareOp = "==") -> Compare:
        return cls(key, "value", op, value)

    @classmethod
    def exists(cls, key: str) -> Compare:
        return cls(key, "version", ">", 0)

    @classmethod
    def missing(cls, key: str) -> Compare:
        return cls(key, "version", "==", 0)

    def holds(self, current: KeyValue | None) -> bool:
        """Evaluate against the key's current state (used by backends without server-side txns)."""
        if self.target == "value":
            if current is None:
                return False
            left: int | bytes = current.value
        elif current is None:
            left = 0
        else:
            left = {
                "mod_revision": current.mod_revision,
                "create_revision": current.create_revision,
                "version": current.version,
            }[self.target]
        right = self.operand
        if isinstance(left, bytes) != isinstance(right, bytes):
            raise TypeError(f"cannot compare {self.target} with {type(right).__name__}")
        if self.op == "==":
            return left == right
        if self.op == "!=":
            return left != right
        if self.op == "<":
            return left < right  # type: ignore[operator]
        return left > right  # type: ignore[operator]


@dataclass(frozen=True)
class Op:
    """One write of a transaction: put a key, delete a key, or delete every key under a prefix."""

    kind: Literal["put", "delete", "delete_prefix"]
    key: str
    value: bytes = b""
    lease: int | None = None

    @classmethod
    def put(cls, key: str, value: bytes, lease: int | None = None) -> Op:
        return cls("put", key, value, lease)

    @classmethod
    def put_json(cls, key: str, obj: Any, lease: int | None = None) -> Op:
        return cls("put", key, encode_json(obj), lease)

    @classmethod
    def delete(cls, key: str) -> Op:
        return cls("delete", key)

    @classmethod
    def delete_prefix(cls, prefix: str) -> Op:
        return cls("delete_prefix", prefix)


@dataclass(frozen=True)
class TxnResult:
    succeeded: bool
    """True when every compare held and the ``success`` ops ran; else the ``failure`` ops ran."""
    revision: int
    """The store's revision after the transaction (bumped once if it wrote anything)."""


def encode_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def prefix_end(prefix: bytes) -> bytes:
    """The smallest key greater than every key starting with ``prefix`` (etcd's range_end)."""
    for i in range(len(prefix) - 1, -1, -1):
        if prefix[i] < 0xFF:
            return prefix[:i] + bytes([prefix[i] + 1])
    return b"\0"  # empty or all 0xff: to the end of the key space


def check_ops(ops: Sequence[Op]) -> None:
    """etcd refuses a transaction branch that writes the same key twice; so do we, on every backend."""
    seen: set[str] = set()
    for op in ops:
        if op.kind != "delete_prefix":
            if op.key in seen:
                raise ValueError(f'key "{op.key}" is written twice in one transaction branch')
            seen.add(op.key)


class Watch(abc.ABC):
    """An async iterator of WatchEvents for one prefix, in revision order, without gaps.

    Use ``async with store.watch(prefix, start_revision=r) as events: async for ev in events``.
    Entering the context registers the watch, so a write that completes after entry is never
    missed; iterating without entering registers on the first ``__anext__``. Leaving the context
    (or ``aclose()``) stops it. Raises ``CompactedError`` when ``start_revision`` is older than the
    history kept, and ``StoreError`` subclasses if the backend goes away; once a watch has failed,
    every later ``__anext__`` raises the same error (start a new watch from the last revision seen).
    After ``aclose()`` or the store's ``close()``, iteration ends (``StopAsyncIteration``).
    """

    @abc.abstractmethod
    async def start(self) -> None:
        """Register the watch (idempotent)."""

    @abc.abstractmethod
    async def __anext__(self) -> WatchEvent: ...

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Stop delivering events (idempotent)."""

    def __aiter__(self) -> Watch:
        return self

    async def __aenter__(self) -> Watch:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


class Store(abc.ABC):
    """The state store. Keys are ``str`` (compared as UTF-8 bytes), values ``bytes``.

    Every method is safe to call concurrently from several tasks, and — for the SQLite backend —
    from several processes sharing one database file. Revisions are positive and strictly
    increase with every write that changes something.
    """

    url: str

    @abc.abstractmethod
    async def get(self, key: str) -> KeyValue | None:
        """The key's current value, or None if absent (a key whose lease expired is absent)."""

    @abc.abstractmethod
    async def put(self, key: str, value: bytes, lease: int | None = None) -> int:
        """Write the key (attaching it to ``lease``, or detaching it when None); return the new revision.

        Raises ``LeaseNotFound`` when the lease does not exist; nothing is written then.
        """

    @abc.abstractmethod
    async def delete(self, key: str) -> bool:
        """Delete the key; True if it existed. Deleting an absent key changes no revision."""

    @abc.abstractmethod
    async def delete_prefix(self, prefix: str) -> int:
        """Delete every key starting with ``prefix`` in one revision; return how many were deleted."""

    @abc.abstractmethod
    async def list(self, prefix: str) -> list[KeyValue]:
        """Every live key starting with ``prefix``, sorted by key (byte order). ``""`` lists all."""

    @abc.abstractmethod
    async def txn(self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()) -> TxnResult:
        """Atomically: if every compare holds, apply ``success``, else ``failure``; all writes share one
        revision and other clients see all of them or none. A branch may not write one key twice
        (``ValueError``); a put naming an unknown lease raises ``LeaseNotFound`` and writes nothing."""

    @abc.abstractmethod
    def watch(self, prefix: str, start_revision: int | None = None) -> Watch:
        """Events for keys under ``prefix``: from ``start_revision`` (inclusive; history still kept is
        replayed first) or, when None, those after the watch is registered. See ``Watch``."""

    @abc.abstractmethod
    async def grant_lease(self, ttl_seconds: int) -> int:
        """A new lease id. Its keys are deleted (with DELETE events) once ``ttl_seconds`` pass without a
        keep-alive. A backend may round the TTL up to its minimum (etcd: about 2 s)."""

    @abc.abstractmethod
    async def keepalive(self, lease_id: int) -> bool:
        """Restart the lease's TTL; False if the lease is gone (expired or revoked)."""

    @abc.abstractmethod
    async def revoke(self, lease_id: int) -> None:
        """End the lease now, deleting its keys; revoking an unknown lease is not an error."""

    @abc.abstractmethod
    async def revision(self) -> int:
        """The store's current revision (that of the latest write)."""

    @abc.abstractmethod
    async def compact(self, revision: int) -> None:
        """Forget history older than ``revision``; watches from before it then raise CompactedError."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections and stop watches; the store is unusable afterwards (idempotent)."""

    # ------------------------------------------------------------------ helpers on top

    async def compare_and_set(
        self, key: str, value: bytes, expected_mod_revision: int, lease: int | None = None
    ) -> bool:
        """Write only if the key's mod_revision is still ``expected_mod_revision`` (0: only if absent)."""
        result = await self.txn([Compare.mod_revision(key, expected_mod_revision)], [Op.put(key, value, lease)])
        return result.succeeded

    async def get_json(self, key: str) -> Any | None:
        kv = await self.get(key)
        return None if kv is None else kv.json()

    async def put_json(self, key: str, obj: Any, lease: int | None = None) -> int:
        return await self.put(key, encode_json(obj), lease)

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
