"""The informer cache (list once, then watch from the revision), on SQLite and a real etcd."""

from __future__ import annotations

import asyncio

from nonstop.store.base import Store
from nonstop.store.cache import StoreCache


async def _until(predicate, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_lists_once_then_follows_every_write_without_relisting(store: Store, prefix: str) -> None:
    await store.put(f"{prefix}a", b"1")
    await store.put(f"{prefix}skip/x", b"0")
    changed: list[str] = []
    cache = StoreCache(store, prefix, keep=lambda k: "/skip/" not in k, on_change=changed.append)
    await cache.start()
    try:
        assert {kv.key: kv.value for kv in cache.snapshot()} == {f"{prefix}a": b"1"}
        await store.put(f"{prefix}b", b"2")
        await store.put(f"{prefix}a", b"3")
        await store.delete(f"{prefix}b")
        await store.put(f"{prefix}skip/y", b"0")
        await _until(lambda: cache.get(f"{prefix}a") is not None and cache.get(f"{prefix}a").value == b"3"
                     and cache.get(f"{prefix}b") is None and cache.events >= 3)
        assert cache.relists == 0
        assert f"{prefix}skip/y" not in changed
        kv = cache.get(f"{prefix}a")
        assert kv is not None and kv.mod_revision == (await store.get(f"{prefix}a")).mod_revision  # type: ignore[union-attr]
    finally:
        await cache.close()


async def test_write_through_is_never_overwritten_by_an_older_event(store: Store, prefix: str) -> None:
    cache = StoreCache(store, prefix)
    await cache.start()
    try:
        r1 = await store.put(f"{prefix}k", b"old")
        r2 = await store.put(f"{prefix}k", b"new")
        kv = await store.get(f"{prefix}k")
        assert kv is not None
        cache.write_through(kv, kv.key, r2)
        await asyncio.sleep(0.2)  # the watch delivers r1 and r2 after the write-through
        assert cache.get(f"{prefix}k").value == b"new"  # type: ignore[union-attr]
        assert r1 < r2
        cache.write_through(None, f"{prefix}k", r2 + 1000)
        await store.put(f"{prefix}k", b"late")  # a revision below the recorded delete: ignored
        await asyncio.sleep(0.2)
        assert cache.get(f"{prefix}k") is None
    finally:
        await cache.close()


async def test_a_compacted_watch_relists_and_loses_nothing(store: Store, prefix: str) -> None:
    cache = StoreCache(store, prefix, retry=0.05)
    await cache.start()
    await cache.close()  # stop watching: writes pile up, then history is compacted past them
    try:
        for i in range(5):
            await store.put(f"{prefix}k{i}", str(i).encode())
        await store.delete(f"{prefix}k0")
        await store.compact(await store.revision())
        await cache.start()  # resumes from the old revision, which is compacted now
        await _until(lambda: cache.relists >= 1, timeout=10)
        assert {kv.key for kv in cache.snapshot()} == {f"{prefix}k{i}" for i in range(1, 5)}
    finally:
        await cache.close()
