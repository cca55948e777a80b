"""Watches for the SQLite store: a history-following thread and the per-watch event queues.

Role: ``HistoryPoller`` is one thread per store object with its own SQLite connection. Every
``POLL_INTERVAL`` it asks ``PRAGMA data_version`` whether any other connection (another process,
or this process's writer connection) has committed; only then does it read the new ``history``
rows and hand them to the event loop (``call_soon_threadsafe``), in revision order. It also
notices expired leases and asks the loop to sweep them (a write), so DELETE events for expired
keys arrive even when nobody writes. ``SqliteWatch`` is the per-watch side: backlog replay from a
past revision, then live events from its queue, filtered by prefix and start revision. It
knows the store only as ``WatchedStore`` (what it calls on it), so this module does not import
nonstop/store/sqlite.py, which imports it.

Must not: write to the database (sweeps go through the store's writer), touch asyncio objects
from its thread other than through ``call_soon_threadsafe``, or block the event loop.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from nonstop.store.base import CompactedError, EventType, Watch, WatchEvent

POLL_INTERVAL = 0.01
"""Seconds between ``data_version`` checks (other processes' writes); this process's wake the poller."""
SWEEP_INTERVAL = 0.1
"""Seconds between checks for expired leases."""
BATCH = 5000
"""History rows read per poll; more are read on the next poll, at once."""
PUT, DELETE = 0, 1


def event_from_row(row: Sequence[Any]) -> WatchEvent:
    """A ``history`` row (revision, seq, type, key, value, create_revision, version, lease) as an event."""
    kind = EventType.PUT if row[2] == PUT else EventType.DELETE
    return WatchEvent(kind, bytes(row[3]).decode(), bytes(row[4]), row[0], row[5], row[6], row[7])


class HistoryPoller(threading.Thread):
    """Follows the history table after ``position`` and posts events to the loop."""

    def __init__(
        self,
        path: Path,
        position: int,
        loop: asyncio.AbstractEventLoop,
        on_events: Callable[[list[WatchEvent], int], None],
        on_expired: Callable[[], None],
        on_error: Callable[[BaseException], None],
        clock: Callable[[], float],
    ) -> None:
        super().__init__(name=f"nonstop-store-poller {path.name}", daemon=True)
        self._path, self._cursor, self._loop = path, position, loop
        self._on_events, self._on_expired, self._on_error = on_events, on_expired, on_error
        self._clock = clock
        self._stopping = threading.Event()
        self._wake = threading.Event()

    def wake(self) -> None:
        """Poll now (called after this process writes, so its own watches see the write at once)."""
        self._wake.set()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    def _post(self, callback: Callable[..., None], *args: Any) -> bool:
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            return False
        return True

    def run(self) -> None:
        try:
            con = sqlite3.connect(self._path, isolation_level=None, timeout=30.0)
        except sqlite3.Error as exc:
            self._post(self._on_error, exc)
            return
        try:
            con.execute("PRAGMA busy_timeout = 30000")
            self._follow(con)
        except Exception as exc:  # reported to every watch; they must not hang
            self._post(self._on_error, exc)
        finally:
            con.close()

    def _follow(self, con: sqlite3.Connection) -> None:
        seen_version = None
        last_sweep = 0.0
        while not self._stopping.is_set():
            data_version = con.execute("PRAGMA data_version").fetchone()[0]
            if data_version != seen_version:
                rows = con.execute(
                    "SELECT * FROM history WHERE revision > ? ORDER BY revision, seq LIMIT ?", (self._cursor, BATCH)
                ).fetchall()
                compacted = con.execute("SELECT value FROM meta WHERE name = 'compacted'").fetchone()[0]
                if len(rows) < BATCH:
                    seen_version = data_version
                if rows or compacted > self._cursor + 1:
                    events = [event_from_row(row) for row in rows]
                    if not self._post(self._on_events, events, compacted):
                        return
                    if events:
                        self._cursor = events[-1].revision
                if len(rows) == BATCH:
                    continue
            if time.monotonic() - last_sweep >= SWEEP_INTERVAL:
                last_sweep = time.monotonic()
                expired = con.execute("SELECT 1 FROM leases WHERE expires_at <= ? LIMIT 1", (self._clock(),))
                if expired.fetchone() is not None and not self._post(self._on_expired):
                    return
            self._wake.wait(POLL_INTERVAL)
            self._wake.clear()


class WatchedStore(Protocol):
    """What a ``SqliteWatch`` needs of its store (``nonstop.store.sqlite.SqliteStore``)."""

    _watches: set[SqliteWatch]

    async def _register(self, watch: SqliteWatch) -> int: ...

    async def _backlog(self, prefix: bytes, start: int | None, upto: int) -> tuple[int, int, Sequence[WatchEvent]]: ...


class SqliteWatch(Watch):
    def __init__(self, store: WatchedStore, prefix: str, start_revision: int | None) -> None:
        self._store = store
        self._prefix = prefix.encode()
        self._start_revision = start_revision
        self._queue: asyncio.Queue[WatchEvent | BaseException | None] = asyncio.Queue()
        self._backlog: deque[WatchEvent] = deque()
        self._min_revision = 0
        self._started = False
        self._done = False

    async def start(self) -> None:
        if self._started or self._done:
            return
        store = self._store
        try:
            upto = await store._register(self)
            current, compacted, backlog = await store._backlog(self._prefix, self._start_revision, upto)
            if self._start_revision is not None and self._start_revision < compacted:
                raise CompactedError(self._start_revision, compacted)
        except BaseException:
            store._watches.discard(self)  # not started: the next call tries again (and fails the same way)
            self._queue = asyncio.Queue()
            raise
        self._started = True
        if self._start_revision is None:
            self._min_revision = current + 1
        else:
            self._min_revision = self._start_revision
            self._backlog.extend(backlog)

    def deliver(self, event: WatchEvent) -> None:
        if not self._done and event.key.encode().startswith(self._prefix):
            self._queue.put_nowait(event)

    def finish(self, error: BaseException | None) -> None:
        if not self._done:
            self._done = True
            self._backlog.clear()
            self._store._watches.discard(self)
            self._queue.put_nowait(error)

    async def __anext__(self) -> WatchEvent:
        await self.start()
        if self._backlog:
            return self._backlog.popleft()
        while True:
            item = await self._queue.get()
            if item is None:
                self._queue.put_nowait(None)  # stay finished for later calls
                raise StopAsyncIteration
            if isinstance(item, BaseException):
                self._queue.put_nowait(item)  # a failed watch keeps failing the same way
                raise item
            if item.revision >= self._min_revision:
                return item

    async def aclose(self) -> None:
        self.finish(None)
