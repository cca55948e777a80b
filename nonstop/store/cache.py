"""An informer-style cache of one store prefix: list once, then watch from that revision.

Role: ``StoreCache`` keeps every key/value under a prefix (those ``keep(key)`` accepts) up to
date without re-listing: ``start`` reads the store's revision, lists the prefix, then watches
from the next revision, applying each event in order; a compacted or broken watch re-lists
(``relists`` counts them). ``on_change`` is called after every applied event (the controller
wakes its loop there). ``write_through`` lets the one writer of a record see its own write at
once, before the watch delivers it; an older revision never overwrites a newer one.

Must not: decide anything or write to the store; hand out mutable state (``snapshot`` copies).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from nonstop.store.base import CompactedError, EventType, KeyValue, Store, StoreError, WatchEvent
from nonstop.vital import vital

log = logging.getLogger("nonstop.store.cache")


class StoreCache:
    def __init__(self, store: Store, prefix: str, *, keep: Callable[[str], bool] = lambda _k: True,
                 on_change: Callable[[str], None] | None = None, retry: float = 0.5) -> None:
        self.store, self.prefix = store, prefix
        self.keep = keep
        self.on_change = on_change or (lambda _k: None)
        self.retry = retry
        self.items: dict[str, KeyValue] = {}
        self.revision = 0
        """The newest revision applied (the list's, then every event's)."""
        self.relists = 0
        self.events = 0
        self.synced = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._deleted: dict[str, int] = {}
        """key → revision of its deletion (so a late write-through of an older value is ignored)."""

    async def start(self) -> None:
        """List and watch; started again after ``close``, it resumes watching from the revision it
        had (a compacted history then makes it list again)."""
        if not self.synced.is_set():
            await self._list()
        self._task = vital(self._watch(), f"cache:{self.prefix}")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None

    def snapshot(self) -> list[KeyValue]:
        return list(self.items.values())

    def get(self, key: str) -> KeyValue | None:
        return self.items.get(key)

    def write_through(self, kv: KeyValue | None, key: str, revision: int) -> None:
        """Record this process's own write (``kv`` None: a delete) at ``revision``."""
        if kv is None:
            self._apply(WatchEvent(EventType.DELETE, key, b"", revision))
        else:
            self._apply(WatchEvent(EventType.PUT, key, kv.value, revision, kv.create_revision, kv.version, kv.lease))

    # ------------------------------------------------------------------ internals

    async def _list(self) -> None:
        revision = await self.store.revision()
        kvs = await self.store.list(self.prefix)
        self.items = {kv.key: kv for kv in kvs if self.keep(kv.key)}
        self._deleted.clear()
        self.revision = max([revision, *(kv.mod_revision for kv in kvs)])
        self.synced.set()
        self.on_change("")

    def _apply(self, ev: WatchEvent) -> None:
        if not self.keep(ev.key):
            return
        current = self.items.get(ev.key)
        if current is not None and current.mod_revision >= ev.revision:
            return
        if ev.type is EventType.DELETE:
            if self._deleted.get(ev.key, 0) < ev.revision:
                self._deleted[ev.key] = ev.revision
            self.items.pop(ev.key, None)
        else:
            if self._deleted.get(ev.key, 0) >= ev.revision:
                return
            self.items[ev.key] = KeyValue(ev.key, ev.value, ev.create_revision or ev.revision, ev.revision,
                                          ev.version or 1, ev.lease)
        self.events += 1
        self.on_change(ev.key)

    async def _watch(self) -> None:
        while True:
            try:
                async with self.store.watch(self.prefix, start_revision=self.revision + 1) as events:
                    async for ev in events:
                        self._apply(ev)
                        self.revision = max(self.revision, ev.revision)
                await asyncio.sleep(self.retry)  # the store was closed under the watch
            except asyncio.CancelledError:
                raise
            except CompactedError:
                log.info("cache of %s: history compacted; listing again", self.prefix)
                await self._relist()
            except (StoreError, OSError) as exc:
                log.warning("cache of %s: watch failed (%s); listing again", self.prefix, exc)
                await asyncio.sleep(self.retry)
                await self._relist()

    async def _relist(self) -> None:
        while True:
            try:
                await self._list()
                self.relists += 1
                return
            except (StoreError, OSError) as exc:
                log.warning("cache of %s: list failed (%s)", self.prefix, exc)
                await asyncio.sleep(self.retry)
