"""The store contract, run against every backend (SQLite and a real etcd): see nonstop/store/base.py."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from nonstop.store import CompactedError, Compare, EventType, LeaseNotFound, Op, Store, keys

from .helpers import Backend, next_events, wait_until


async def test_put_get_and_key_metadata(store: Store, prefix: str) -> None:
    key = prefix + "a"
    assert await store.get(key) is None
    r1 = await store.put(key, b"one")
    r2 = await store.put(key, b"two")
    assert r2 > r1 > 0
    kv = await store.get(key)
    assert kv is not None
    assert (kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease) == (key, b"two", r1, r2, 2, 0)
    assert await store.revision() >= r2


async def test_delete_and_recreate(store: Store, prefix: str) -> None:
    key = prefix + "a"
    await store.put(key, b"1")
    assert await store.delete(key) is True
    revision = await store.revision()
    assert await store.delete(key) is False
    assert await store.revision() == revision, "deleting an absent key must not bump the revision"
    r = await store.put(key, b"2")
    kv = await store.get(key)
    assert kv is not None and kv.version == 1 and kv.create_revision == r


async def test_list_by_prefix_sorted_and_delete_prefix(store: Store, prefix: str) -> None:
    for name in ["b", "a", "c/1", "c/0", "ab"]:
        await store.put(prefix + "x/" + name, name.encode())
    await store.put(prefix + "xy", b"outside")
    listed = await store.list(prefix + "x/")
    assert [kv.key for kv in listed] == [prefix + "x/" + n for n in ["a", "ab", "b", "c/0", "c/1"]]
    assert [kv.value for kv in await store.list(prefix + "x/c/")] == [b"c/0", b"c/1"]
    everything = [kv.key for kv in await store.list("")]
    assert everything == sorted(everything, key=str.encode) and prefix + "xy" in everything
    revision = await store.revision()
    assert await store.delete_prefix(prefix + "x/") == 5
    assert await store.revision() == revision + 1, "one revision for the whole prefix"
    assert [kv.key for kv in await store.list(prefix)] == [prefix + "xy"]


async def test_unicode_keys_and_binary_values(store: Store, prefix: str) -> None:
    key = prefix + "héllo/ключ"
    value = bytes(range(256))
    await store.put(key, value)
    kv = await store.get(key)
    assert kv is not None and kv.value == value
    assert [k.key for k in await store.list(prefix + "héllo/")] == [key]


async def test_json_helpers(store: Store, prefix: str) -> None:
    await store.put_json(prefix + "j", {"b": [1, 2], "a": "x"})
    assert await store.get_json(prefix + "j") == {"a": "x", "b": [1, 2]}
    assert await store.get_json(prefix + "missing") is None


async def test_compare_and_set(store: Store, prefix: str) -> None:
    key = prefix + "cas"
    assert await store.compare_and_set(key, b"first", 0) is True
    assert await store.compare_and_set(key, b"again", 0) is False, "0 means: only if absent"
    kv = await store.get(key)
    assert kv is not None
    assert await store.compare_and_set(key, b"stale", kv.mod_revision - 1) is False
    assert await store.compare_and_set(key, b"second", kv.mod_revision) is True
    assert (await store.get(key)).value == b"second"  # type: ignore[union-attr]


async def test_cas_race_exactly_one_writer_wins(backend: Backend, prefix: str) -> None:
    first, second = backend.open(), backend.open()
    key = prefix + "counter"
    await first.put(key, b"0")
    for round_number in range(10):
        kv = await first.get(key)
        assert kv is not None
        results = await asyncio.gather(
            first.compare_and_set(key, b"first-%d" % round_number, kv.mod_revision),
            second.compare_and_set(key, b"second-%d" % round_number, kv.mod_revision),
        )
        assert sorted(results) == [False, True]
        winner = "first" if results[0] else "second"
        assert (await second.get(key)).value == f"{winner}-{round_number}".encode()  # type: ignore[union-attr]


async def test_concurrent_increments_lose_nothing(backend: Backend, prefix: str) -> None:
    clients = [backend.open() for _ in range(3)]
    key = prefix + "n"
    await clients[0].put(key, b"0")

    async def increment(store: Store, times: int) -> int:
        attempts = 0
        for _ in range(times):
            while True:
                attempts += 1
                kv = await store.get(key)
                assert kv is not None
                if await store.compare_and_set(key, str(int(kv.value) + 1).encode(), kv.mod_revision):
                    break
        return attempts

    await asyncio.gather(*(increment(c, 15) for c in clients))
    assert (await clients[0].get(key)).value == b"45"  # type: ignore[union-attr]


async def test_txn_is_atomic_and_shares_one_revision(store: Store, prefix: str) -> None:
    a, b, c = prefix + "a", prefix + "b", prefix + "c"
    await store.put(c, b"old")
    before = await store.revision()
    async with store.watch(prefix) as watch:
        result = await store.txn(
            [Compare.missing(a), Compare.value(c, b"old")],
            [Op.put(a, b"1"), Op.put_json(b, {"x": 1}), Op.delete(c)],
            [Op.put(prefix + "failed", b"!")],
        )
        assert result.succeeded and result.revision == before + 1
        events = await next_events(watch, 3)
    assert {e.revision for e in events} == {result.revision}
    assert [(e.type, e.key) for e in events] == [(EventType.PUT, a), (EventType.PUT, b), (EventType.DELETE, c)]
    assert [kv.key for kv in await store.list(prefix)] == [a, b]
    kv_a, kv_b = await store.get(a), await store.get(b)
    assert kv_a is not None and kv_b is not None and kv_a.mod_revision == kv_b.mod_revision == result.revision

    failed = await store.txn([Compare.missing(a)], [Op.put(prefix + "never", b"")], [Op.put(prefix + "else", b"e")])
    assert not failed.succeeded and failed.revision == result.revision + 1
    assert await store.get(prefix + "never") is None and await store.get(prefix + "else") is not None


@pytest.mark.parametrize(
    ("compare", "holds"),
    [
        (lambda k: Compare.value(k, b"v"), True),
        (lambda k: Compare.value(k, b"w", "!="), True),
        (lambda k: Compare.version(k, 1), True),
        (lambda k: Compare.version(k, 1, ">"), False),
        (lambda k: Compare.exists(k), True),
        (lambda k: Compare.missing(k), False),
        (lambda k: Compare("/absent-" + k, "value", "!=", b"x"), False),
        (lambda k: Compare.missing("/absent-" + k), True),
        (lambda k: Compare("/absent-" + k, "create_revision", "==", 0), True),
        (lambda k: Compare.mod_revision(k, 1, ">"), True),
        (lambda k: Compare.mod_revision(k, 1, "<"), False),
    ],
)
async def test_txn_compares(store: Store, prefix: str, compare: object, holds: bool) -> None:
    key = prefix + "k"
    await store.put(key, b"v")
    result = await store.txn([compare(key)], [], [])  # type: ignore[operator]
    assert result.succeeded is holds


async def test_txn_writes_nothing_when_a_put_names_an_unknown_lease(store: Store, prefix: str) -> None:
    revision = await store.revision()
    with pytest.raises(LeaseNotFound):
        await store.txn([], [Op.put(prefix + "a", b"1"), Op.put(prefix + "b", b"2", lease=123456789)])
    assert await store.list(prefix) == [] and await store.revision() == revision
    with pytest.raises(LeaseNotFound):
        await store.put(prefix + "c", b"3", lease=987654321)


async def test_txn_refuses_a_key_written_twice(store: Store, prefix: str) -> None:
    with pytest.raises(ValueError, match="written twice"):
        await store.txn([], [Op.put(prefix + "a", b"1"), Op.delete(prefix + "a")])


async def test_watch_delivers_live_events_in_order(store: Store, prefix: str) -> None:
    async with store.watch(prefix + "w/") as watch:
        r1 = await store.put(prefix + "w/a", b"1")
        await store.put(prefix + "other", b"not watched")
        r2 = await store.put(prefix + "w/a", b"2")
        await store.delete(prefix + "w/a")
        events = await next_events(watch, 3)
    assert [(e.type, e.key, e.value) for e in events] == [
        (EventType.PUT, prefix + "w/a", b"1"),
        (EventType.PUT, prefix + "w/a", b"2"),
        (EventType.DELETE, prefix + "w/a", b""),
    ]
    assert [e.revision for e in events[:2]] == [r1, r2] and events[2].revision > r2
    assert events[1].version == 2 and events[1].create_revision == r1


async def test_watch_without_start_sees_only_later_writes(store: Store, prefix: str) -> None:
    await store.put(prefix + "early", b"0")
    async with store.watch(prefix) as watch:
        await store.put(prefix + "late", b"1")
        [event] = await next_events(watch, 1)
    assert event.key == prefix + "late"


async def test_watch_from_a_past_revision_replays_then_follows(store: Store, prefix: str) -> None:
    revisions = [await store.put(prefix + f"k{i}", str(i).encode()) for i in range(5)]
    async with store.watch(prefix, start_revision=revisions[2]) as watch:
        replayed = await next_events(watch, 3)
        live_revision = await store.put(prefix + "k9", b"9")
        [live] = await next_events(watch, 1)
    assert [e.key for e in replayed] == [prefix + "k2", prefix + "k3", prefix + "k4"]
    assert [e.revision for e in replayed] == revisions[2:]
    assert live.revision == live_revision


async def test_two_watches_on_one_store_both_see_everything(store: Store, prefix: str) -> None:
    async with store.watch(prefix) as w1, store.watch(prefix + "b") as w2:
        await store.put(prefix + "a", b"1")
        await store.put(prefix + "b", b"2")
        assert [e.key for e in await next_events(w1, 2)] == [prefix + "a", prefix + "b"]
        assert [e.key for e in await next_events(w2, 1)] == [prefix + "b"]


async def test_closed_watch_stops(store: Store, prefix: str) -> None:
    watch = store.watch(prefix)
    await watch.start()
    await watch.aclose()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(watch.__anext__(), 5)


async def test_watch_from_a_compacted_revision_fails(store: Store, prefix: str) -> None:
    old = await store.put(prefix + "a", b"1")
    await store.put(prefix + "a", b"2")
    recent = await store.put(prefix + "a", b"3")
    await store.compact(recent)
    with pytest.raises(CompactedError):
        async with store.watch(prefix, start_revision=old) as watch:
            await next_events(watch, 1)
    async with store.watch(prefix, start_revision=recent) as watch:
        [event] = await next_events(watch, 1)
    assert event.value == b"3"


async def test_lease_keepalive_expiry_and_delete_event(backend: Backend, store: Store, prefix: str) -> None:
    ttl = backend.min_ttl
    lease = await store.grant_lease(ttl)
    key = prefix + "alive"
    await store.put(key, b"here", lease=lease)
    await store.put(prefix + "plain", b"no lease")
    kv = await store.get(key)
    assert kv is not None and kv.lease == lease
    async with store.watch(prefix) as watch:
        kept_until = time.monotonic() + ttl * 1.5
        while time.monotonic() < kept_until:  # kept alive well past one TTL
            assert await store.keepalive(lease) is True
            await asyncio.sleep(ttl / 4)
        assert await store.get(key) is not None
        gone_after = await wait_until(lambda: _absent(store, key), timeout=ttl + 3)
        assert gone_after <= ttl + 3
        assert [kv.key for kv in await store.list(prefix)] == [prefix + "plain"]
        [event] = await next_events(watch, 1, timeout=5)
    assert (event.type, event.key) == (EventType.DELETE, key)
    assert await store.keepalive(lease) is False
    with pytest.raises(LeaseNotFound):
        await store.put(prefix + "late", b"x", lease=lease)


async def _absent(store: Store, key: str) -> bool:
    return await store.get(key) is None


async def test_revoke_deletes_the_lease_keys_now(store: Store, prefix: str) -> None:
    lease = await store.grant_lease(60)
    await store.put(prefix + "a", b"1", lease=lease)
    await store.put(prefix + "b", b"2", lease=lease)
    await store.put(prefix + "b", b"detached")  # a put without a lease detaches the key
    await store.revoke(lease)
    assert [kv.key for kv in await store.list(prefix)] == [prefix + "b"]
    assert await store.keepalive(lease) is False
    await store.revoke(lease)  # revoking twice is fine


async def test_other_clients_see_writes(backend: Backend, prefix: str) -> None:
    writer, reader = backend.open(), backend.open()
    async with reader.watch(prefix) as watch:
        revision = await writer.put(prefix + "x", b"1")
        [event] = await next_events(watch, 1)
    assert event.revision == revision
    assert (await reader.get(prefix + "x")).value == b"1"  # type: ignore[union-attr]


async def test_desired_spec_round_trips_with_conditional_update(store: Store) -> None:
    from pathlib import Path

    from nonstop.specfile import load_spec
    from nonstop.store.state import get_spec, put_spec

    spec = load_spec(Path(__file__).resolve().parents[2] / "examples" / "lab.yaml")
    spec = spec.model_copy(update={"cluster": "t" + uuid.uuid4().hex[:8]})
    assert await get_spec(store, spec.cluster) is None
    first = await put_spec(store, spec, expected_mod_revision=0)
    assert first is not None
    assert await put_spec(store, spec, expected_mod_revision=0) is None, "someone already stored one"
    stored = await get_spec(store, spec.cluster)
    assert stored is not None and stored.spec == spec and stored.mod_revision == first
    second = await put_spec(store, spec, expected_mod_revision=first)
    assert second is not None and second > first
    await store.delete(keys.spec(spec.cluster))


async def test_a_failed_watch_start_can_be_retried_and_still_fails(store: Store, prefix: str) -> None:
    old = await store.put(prefix + "a", b"1")
    recent = await store.put(prefix + "a", b"2")
    await store.compact(recent)
    watch = store.watch(prefix, start_revision=old)
    for _ in range(2):
        with pytest.raises(CompactedError):
            await asyncio.wait_for(watch.__anext__(), 5)
    await watch.aclose()


async def test_lease_keeper_keeps_revokes_and_reports_loss(backend: Backend, store: Store, prefix: str) -> None:
    from nonstop.store.lease import LeaseKeeper

    ttl = backend.min_ttl
    async with LeaseKeeper(store, ttl) as lease:
        await store.put(prefix + "alive", b"1", lease=lease.id)
        await asyncio.sleep(ttl * 1.6)
        assert await store.get(prefix + "alive") is not None and not lease.lost.is_set()
    assert await store.get(prefix + "alive") is None, "closing the keeper revokes the lease"

    keeper = LeaseKeeper(store, ttl)
    await keeper.start()
    await store.revoke(keeper.id)  # someone else ends it
    await asyncio.wait_for(keeper.lost.wait(), ttl)
    assert "expired or was revoked" in keeper.reason
    await keeper.close()
