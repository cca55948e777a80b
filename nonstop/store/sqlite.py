"""The embedded state store: one SQLite file in WAL mode, shared by the processes of one machine.

Role: implement ``nonstop.store.base.Store`` with etcd's semantics on SQLite. Tables: ``kv`` (live
keys), ``history`` (every PUT/DELETE by revision, for watches; compacted to the last
``HISTORY_KEEP`` revisions), ``leases`` (TTL and absolute expiry) and ``meta`` (the global
revision and the compaction point). Every write is one ``BEGIN IMMEDIATE`` transaction, so
writers in several processes serialize on SQLite's lock and revisions are assigned in commit
order. Expired leases are removed at the start of every write and by each process's watch
poller; until then reads skip keys whose lease has expired, so an expired key is never returned.

Watches (``nonstop.store.sqlite_watch``): one poller thread per store object, with its own
connection, follows the ``history`` table and hands new events to the loop; this module keeps the
set of watches and dispatches to them. All other SQLite calls run on one dedicated thread per
store object, so the event loop never blocks on the database.

Must not: interpret keys or values; use the event-loop thread for SQLite calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import secrets
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from nonstop.store.base import (
    CompactedError,
    Compare,
    KeyValue,
    LeaseNotFound,
    Op,
    Store,
    StoreError,
    StoreUnavailable,
    TxnResult,
    Watch,
    WatchEvent,
    check_ops,
    prefix_end,
)
from nonstop.store.sqlite_watch import DELETE, PUT, HistoryPoller, SqliteWatch, event_from_row

HISTORY_KEEP = 10_000
"""Revisions of history kept for watches that start in the past."""
COMPACT_EVERY = 1_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS kv (
    key BLOB PRIMARY KEY, value BLOB NOT NULL, create_revision INTEGER NOT NULL,
    mod_revision INTEGER NOT NULL, version INTEGER NOT NULL, lease INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS kv_by_lease ON kv(lease) WHERE lease != 0;
CREATE TABLE IF NOT EXISTS history (
    revision INTEGER NOT NULL, seq INTEGER NOT NULL, type INTEGER NOT NULL, key BLOB NOT NULL,
    value BLOB NOT NULL, create_revision INTEGER NOT NULL, version INTEGER NOT NULL, lease INTEGER NOT NULL,
    PRIMARY KEY (revision, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS leases (id INTEGER PRIMARY KEY, ttl INTEGER NOT NULL, expires_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS leases_by_expiry ON leases(expires_at);
INSERT OR IGNORE INTO meta VALUES ('revision', 1), ('compacted', 0);
"""
_KV_COLUMNS = "kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease"
_LIVE = "(kv.lease = 0 OR EXISTS (SELECT 1 FROM leases l WHERE l.id = kv.lease AND l.expires_at > ?))"

T = TypeVar("T")


def _kv(row: Sequence[Any]) -> KeyValue:
    return KeyValue(bytes(row[0]).decode(), bytes(row[1]), row[2], row[3], row[4], row[5])


class _Writer:
    """Applies the ops of one write transaction at ``revision``, appending history rows."""

    def __init__(self, con: sqlite3.Connection, revision: int, now: float) -> None:
        self.con, self.revision, self.now = con, revision, now
        self.seq = 0
        self.deleted = 0

    def _history(self, kind: int, key: bytes, value: bytes, create: int, version: int, lease: int) -> None:
        self.con.execute(
            "INSERT INTO history VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (self.revision, self.seq, kind, key, value, create, version, lease),
        )
        self.seq += 1

    def put(self, key: bytes, value: bytes, lease: int | None) -> None:
        if lease:
            row = self.con.execute("SELECT expires_at FROM leases WHERE id = ?", (lease,)).fetchone()
            if row is None or row[0] <= self.now:
                raise LeaseNotFound(f"lease {lease} not found")
        old = self.con.execute("SELECT create_revision, version FROM kv WHERE key = ?", (key,)).fetchone()
        create, version = (old[0], old[1] + 1) if old else (self.revision, 1)
        self.con.execute(
            "INSERT OR REPLACE INTO kv VALUES (?, ?, ?, ?, ?, ?)",
            (key, value, create, self.revision, version, lease or 0),
        )
        self._history(PUT, key, value, create, version, lease or 0)

    def delete_where(self, where: str, args: tuple[Any, ...]) -> None:
        rows = self.con.execute(f"SELECT key FROM kv WHERE {where} ORDER BY key", args).fetchall()
        for (key,) in rows:
            self.con.execute("DELETE FROM kv WHERE key = ?", (key,))
            self._history(DELETE, bytes(key), b"", 0, 0, 0)
        self.deleted += len(rows)

    def apply(self, op: Op) -> None:
        key = op.key.encode()
        if op.kind == "put":
            self.put(key, op.value, op.lease)
        elif op.kind == "delete":
            self.delete_where("key = ?", (key,))
        elif key:
            self.delete_where("key >= ? AND key < ?", (key, prefix_end(key)))
        else:
            self.delete_where("1", ())


class SqliteStore(Store):
    """``sqlite:///abs/path.db``. Create one per process (or per event loop) and ``close()`` it."""

    def __init__(
        self,
        path: str | Path,
        clock: Callable[[], float] = time.time,
        history_keep: int = HISTORY_KEEP,
        compact_every: int = COMPACT_EVERY,
    ) -> None:
        self.path = Path(path)
        self._history_keep, self._compact_every = history_keep, compact_every
        self.url = f"sqlite://{self.path}"
        self._clock = clock
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nonstop-sqlite")
        self._closed = False
        self._watches: set[SqliteWatch] = set()
        self._position = 0  # the last revision handed to watches (event-loop side)
        self._poller: HistoryPoller | None = None
        self._sweeper: asyncio.Future[None] | None = None
        self._register_lock: asyncio.Lock | None = None
        try:
            self._con = self._executor.submit(self._connect).result()
        except sqlite3.Error as exc:
            self._executor.shutdown(wait=False)
            raise StoreUnavailable(f"cannot open {self.path}: {exc}") from exc

    # ------------------------------------------------------------ executor thread

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30.0)
        con.execute("PRAGMA busy_timeout = 30000")
        con.execute("PRAGMA journal_mode = WAL")
        con.execute("PRAGMA synchronous = NORMAL")
        con.execute("BEGIN IMMEDIATE")
        try:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    con.execute(statement)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        return con

    def _meta(self, name: str) -> int:
        return int(self._con.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()[0])

    def _expire(self, revision: int, now: float) -> int:
        """Delete expired leases and their keys, one revision per lease that had keys (inside a write)."""
        for (lease,) in self._con.execute("SELECT id FROM leases WHERE expires_at <= ?", (now,)).fetchall():
            writer = _Writer(self._con, revision + 1, now)
            writer.delete_where("lease = ?", (lease,))
            self._con.execute("DELETE FROM leases WHERE id = ?", (lease,))
            if writer.deleted:
                revision += 1
        return revision

    def _write(self, body: Callable[[int, float], tuple[T, int]]) -> tuple[T, int]:
        """Run ``body(revision, now) -> (result, new_revision)`` in one BEGIN IMMEDIATE transaction."""
        con, now = self._con, self._clock()
        con.execute("BEGIN IMMEDIATE")
        try:
            start = self._meta("revision")
            revision = self._expire(start, now)
            result, revision = body(revision, now)
            if revision != start:
                con.execute("UPDATE meta SET value = ? WHERE name = 'revision'", (revision,))
                if revision // self._compact_every != start // self._compact_every:
                    self._compact_locked(revision - self._history_keep)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        return result, revision

    def _txn(self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op]) -> tuple[bool, int, int]:
        def body(revision: int, now: float) -> tuple[tuple[bool, int], int]:
            ok = all(compare.holds(self._get_locked(compare.key, now)) for compare in compares)
            writer = _Writer(self._con, revision + 1, now)
            for op in success if ok else failure:
                writer.apply(op)
            return (ok, writer.deleted), revision + 1 if writer.seq else revision

        (ok, deleted), revision = self._write(body)
        return ok, revision, deleted

    def _get_locked(self, key: str, now: float) -> KeyValue | None:
        row = self._con.execute(
            f"SELECT {_KV_COLUMNS} FROM kv WHERE kv.key = ? AND {_LIVE}", (key.encode(), now)
        ).fetchone()
        return _kv(row) if row else None

    def _list(self, prefix: str) -> list[KeyValue]:
        start = prefix.encode()
        args: tuple[bytes, ...] = (start,)
        where = "kv.key >= ?"  # the empty prefix: every key
        if start:
            where, args = "kv.key >= ? AND kv.key < ?", (start, prefix_end(start))
        sql = f"SELECT {_KV_COLUMNS} FROM kv WHERE {where} AND {_LIVE} ORDER BY kv.key"
        return [_kv(row) for row in self._con.execute(sql, (*args, self._clock())).fetchall()]

    def _grant(self, ttl: int) -> int:
        lease = secrets.randbits(62) + 1
        self._write(
            lambda rev, now: (self._con.execute("INSERT INTO leases VALUES (?, ?, ?)", (lease, ttl, now + ttl)), rev)
        )
        return lease

    def _keepalive(self, lease: int) -> bool:
        def body(revision: int, now: float) -> tuple[bool, int]:
            cursor = self._con.execute(
                "UPDATE leases SET expires_at = ? + ttl WHERE id = ? AND expires_at > ?", (now, lease, now)
            )
            return cursor.rowcount > 0, revision

        return self._write(body)[0]

    def _revoke(self, lease: int) -> int:
        def body(revision: int, now: float) -> tuple[None, int]:
            writer = _Writer(self._con, revision + 1, now)
            writer.delete_where("lease = ?", (lease,))
            self._con.execute("DELETE FROM leases WHERE id = ?", (lease,))
            return None, revision + 1 if writer.deleted else revision

        return self._write(body)[1]

    def _compact_locked(self, revision: int) -> None:
        if revision > self._meta("compacted"):
            self._con.execute("DELETE FROM history WHERE revision < ?", (revision,))
            self._con.execute("UPDATE meta SET value = ? WHERE name = 'compacted'", (revision,))

    def _compact(self, revision: int) -> None:
        def body(current: int, now: float) -> tuple[None, int]:
            self._compact_locked(min(revision, current))
            return None, current

        self._write(body)

    def _read_backlog(self, prefix: bytes, start: int | None, upto: int) -> tuple[int, int, list[WatchEvent]]:
        current, compacted = self._meta("revision"), self._meta("compacted")
        if start is None or start > upto:
            return current, compacted, []
        rows = self._con.execute(
            "SELECT * FROM history WHERE revision >= ? AND revision <= ? ORDER BY revision, seq", (start, upto)
        ).fetchall()
        return current, compacted, [e for e in map(event_from_row, rows) if e.key.encode().startswith(prefix)]

    # ------------------------------------------------------------ event loop side

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._closed:
            raise StoreError("the store is closed")
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, functools.partial(fn, *args))
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"{self.path}: {exc}") from exc

    def _wrote(self) -> None:
        if self._poller is not None:
            self._poller.wake()

    async def get(self, key: str) -> KeyValue | None:
        return await self._run(lambda: self._get_locked(key, self._clock()))

    async def put(self, key: str, value: bytes, lease: int | None = None) -> int:
        _, revision, _ = await self._run(self._txn, (), (Op.put(key, value, lease),), ())
        self._wrote()
        return revision

    async def delete(self, key: str) -> bool:
        _, _, deleted = await self._run(self._txn, (), (Op.delete(key),), ())
        self._wrote()
        return deleted > 0

    async def delete_prefix(self, prefix: str) -> int:
        _, _, deleted = await self._run(self._txn, (), (Op.delete_prefix(prefix),), ())
        self._wrote()
        return deleted

    async def list(self, prefix: str) -> list[KeyValue]:
        return await self._run(self._list, prefix)

    async def txn(self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()) -> TxnResult:
        check_ops(success)
        check_ops(failure)
        ok, revision, _ = await self._run(self._txn, tuple(compares), tuple(success), tuple(failure))
        self._wrote()
        return TxnResult(ok, revision)

    def watch(self, prefix: str, start_revision: int | None = None) -> Watch:
        return SqliteWatch(self, prefix, start_revision)

    async def grant_lease(self, ttl_seconds: int) -> int:
        if ttl_seconds <= 0:
            raise ValueError(f"expected a positive TTL, got {ttl_seconds}")
        return await self._run(self._grant, ttl_seconds)

    async def keepalive(self, lease_id: int) -> bool:
        alive = await self._run(self._keepalive, lease_id)
        self._wrote()
        return alive

    async def revoke(self, lease_id: int) -> None:
        await self._run(self._revoke, lease_id)
        self._wrote()

    async def revision(self) -> int:
        return await self._run(self._meta, "revision")

    async def compact(self, revision: int) -> None:
        await self._run(self._compact, revision)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for watch in list(self._watches):
            watch.finish(None)
        if self._poller is not None:
            self._poller.stop()
            await asyncio.to_thread(self._poller.join, 10)
        if self._sweeper is not None:
            with contextlib.suppress(BaseException):
                await self._sweeper
        await asyncio.get_running_loop().run_in_executor(self._executor, self._con.close)
        self._executor.shutdown(wait=False)

    # ---------------------------------------------------------------- watches

    async def _backlog(self, prefix: bytes, start: int | None, upto: int) -> tuple[int, int, Sequence[WatchEvent]]:
        """(current revision, compaction point, history events under ``prefix`` in [start, upto])."""
        return await self._run(self._read_backlog, prefix, start, upto)

    async def _register(self, watch: SqliteWatch) -> int:
        """Add a watch to the dispatch set; return the revision up to which it needs a backlog.

        Every event the poller hands over later has a higher revision, and reaches this watch.
        """
        if self._register_lock is None:
            self._register_lock = asyncio.Lock()
        async with self._register_lock:
            if self._poller is None:
                self._position = await self._run(self._meta, "revision")
                self._poller = HistoryPoller(
                    self.path,
                    self._position,
                    asyncio.get_running_loop(),
                    self._dispatch,
                    self._sweep_soon,
                    self._poller_failed,
                    self._clock,
                )
                self._poller.start()
            self._watches.add(watch)
            return self._position

    def _dispatch(self, events: Sequence[WatchEvent], compacted: int) -> None:
        if compacted > self._position + 1:  # history this process had not read yet is gone
            for watch in list(self._watches):
                watch.finish(CompactedError(self._position + 1, compacted))
        for event in events:
            for watch in list(self._watches):
                watch.deliver(event)
        if events:
            self._position = events[-1].revision

    def _sweep_soon(self) -> None:
        if not self._closed and (self._sweeper is None or self._sweeper.done()):
            self._sweeper = asyncio.ensure_future(self._sweep())

    async def _sweep(self) -> None:
        with contextlib.suppress(StoreError):
            await self._run(self._txn, (), (), ())  # every write expires leases first
            self._wrote()

    def _poller_failed(self, exc: BaseException) -> None:
        error = exc if isinstance(exc, StoreError) else StoreUnavailable(f"watch poller failed: {exc!r}")
        for watch in list(self._watches):
            watch.finish(error)
