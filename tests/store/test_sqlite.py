"""SQLite backend specifics: several processes on one file, watch latency, lazy lease expiry, retention."""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from nonstop.store import CompactedError, EventType, StoreUnavailable, open_store
from nonstop.store.sqlite import SqliteStore

from .helpers import next_events

REPO = Path(__file__).resolve().parents[2]


def spawn(script: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


WRITER = """
    import asyncio, sys, time
    from nonstop.store import open_store

    async def main(url, count, gap):
        store = open_store(url)
        await store.put("/ready", b"1")
        for i in range(count):
            await store.put(f"/lat/{i:03d}", repr(time.time()).encode())
            await asyncio.sleep(gap)
        await store.close()

    asyncio.run(main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3])))
"""


async def test_watch_sees_another_process_writes_within_50ms(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path / 'state.db'}"
    store = open_store(url)
    count = 50
    try:
        async with store.watch("/lat/") as watch:
            writer = spawn(WRITER, url, str(count), "0.02")
            latencies = []
            try:
                for _ in range(count):
                    event = await asyncio.wait_for(watch.__anext__(), 10)
                    latencies.append(time.time() - float(event.value))
            finally:
                _, stderr = await asyncio.to_thread(writer.communicate, timeout=30)
            assert writer.returncode == 0, stderr
    finally:
        await store.close()
    median = statistics.median(latencies)
    assert median < 0.05, f"median watch latency {median * 1000:.1f} ms"
    assert max(latencies) < 0.5, f"max watch latency {max(latencies) * 1000:.1f} ms"


INCREMENTER = """
    import asyncio, sys
    from nonstop.store import open_store

    async def main(url, times):
        store = open_store(url)
        for _ in range(times):
            while True:
                kv = await store.get("/n")
                if await store.compare_and_set("/n", str(int(kv.value) + 1).encode(), kv.mod_revision):
                    break
        await store.close()

    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


async def test_processes_sharing_the_file_lose_no_update(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path / 'state.db'}"
    store = open_store(url)
    await store.put("/n", b"0")
    workers = [spawn(INCREMENTER, url, "40") for _ in range(3)]
    for worker in workers:
        _, stderr = await asyncio.to_thread(worker.communicate, timeout=60)
        assert worker.returncode == 0, stderr
    kv = await store.get("/n")
    await store.close()
    assert kv is not None and kv.value == b"120"
    assert kv.version == 121


async def test_expired_key_is_never_returned_even_before_a_sweep(tmp_path: Path) -> None:
    now = [1_000_000.0]
    store = SqliteStore(tmp_path / "state.db", clock=lambda: now[0])
    try:
        lease = await store.grant_lease(10)
        await store.put("/a", b"1", lease=lease)
        await store.put("/b", b"2")
        revision = await store.revision()
        now[0] += 10.5
        assert await store.get("/a") is None
        assert [kv.key for kv in await store.list("/")] == ["/b"]
        assert await store.revision() == revision, "reading did not write"
        assert await store.keepalive(lease) is False
        async with store.watch("/", start_revision=revision + 1) as watch:
            await store.put("/c", b"3")  # any write sweeps expired leases first
            events = await next_events(watch, 2)
        assert [(e.type, e.key, e.revision) for e in events] == [
            (EventType.DELETE, "/a", revision + 1),
            (EventType.PUT, "/c", revision + 2),
        ]
    finally:
        await store.close()


async def test_keepalive_moves_expiry_from_now(tmp_path: Path) -> None:
    now = [500.0]
    store = SqliteStore(tmp_path / "state.db", clock=lambda: now[0])
    try:
        lease = await store.grant_lease(10)
        await store.put("/a", b"1", lease=lease)
        for _ in range(5):
            now[0] += 8
            assert await store.keepalive(lease) is True
        now[0] += 9.9
        assert await store.get("/a") is not None
        now[0] += 0.2
        assert await store.get("/a") is None
    finally:
        await store.close()


async def test_history_is_compacted_to_the_retention(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "state.db", history_keep=10, compact_every=5)
    try:
        first = await store.put("/k", b"0")
        for i in range(30):
            last = await store.put("/k", str(i).encode())
        with pytest.raises(CompactedError) as info:
            async with store.watch("/", start_revision=first) as watch:
                await next_events(watch, 1)
        assert info.value.compacted > first
        async with store.watch("/", start_revision=last - 5) as watch:
            events = await next_events(watch, 6)
        assert [e.revision for e in events] == list(range(last - 5, last + 1))
    finally:
        await store.close()


async def test_reopening_keeps_state_and_revision(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = SqliteStore(path)
    revision = await store.put("/persist", b"yes")
    await store.close()
    again = SqliteStore(path)
    try:
        assert (await again.get("/persist")).value == b"yes"  # type: ignore[union-attr]
        assert await again.revision() == revision
        assert await again.put("/persist", b"more") == revision + 1
    finally:
        await again.close()


def test_unopenable_database_is_a_store_error(tmp_path: Path) -> None:
    (tmp_path / "dir.db").mkdir()
    with pytest.raises(StoreUnavailable):
        SqliteStore(tmp_path / "dir.db")


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("sqlite:///tmp/x/state.db", "SqliteStore"),
        ("etcd://127.0.0.1:2379", "EtcdStore"),
        ("etcd://10.0.0.1", "EtcdStore"),
    ],
)
async def test_open_store_picks_the_backend(url: str, kind: str, tmp_path: Path) -> None:
    if url.startswith("sqlite"):
        url = f"sqlite://{tmp_path / 'x' / 'state.db'}"
    store = open_store(url)
    try:
        assert type(store).__name__ == kind
    finally:
        await store.close()


@pytest.mark.parametrize("url", ["sqlite://relative.db", "sqlite:///", "redis://x", "etcd://", "state.db"])
def test_open_store_rejects_bad_urls(url: str) -> None:
    with pytest.raises(ValueError, match="expected"):
        open_store(url)
