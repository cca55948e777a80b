"""Controller leadership on both store backends: the election, the hot standby taking over when
the leader's lease ends, and leader-guarded writes refused to a controller that lost the lead."""

from __future__ import annotations

import asyncio
import json

import pytest

from nonstop.controller.leadership import LeaderGuardedStore, NotLeader, campaign, leader_lease_ttl
from nonstop.store import Compare, Op
from nonstop.store.lease import LeaseKeeper
from nonstop.store.records import LeaderRecord

from .helpers import Backend


@pytest.mark.parametrize(("timeout", "ttl"), [(0.5, 2), (2.0, 2), (4.0, 2), (5.0, 2), (6.0, 2), (10.0, 4),
                                              (11.0, 5), (60.0, 5)])
def test_leader_lease_is_under_half_the_self_fence_timeout(timeout: float, ttl: int) -> None:
    assert leader_lease_ttl(timeout) == ttl
    assert ttl < timeout / 2 or ttl == 2


async def test_standby_leads_when_the_leader_lease_ends_and_the_old_leader_cannot_write(
        backend: Backend, prefix: str) -> None:
    a_store, b_store = backend.open(), backend.open()
    key = prefix + "leader"
    a_lease = await a_store.grant_lease(backend.min_ttl)
    a_rev, took = await campaign(a_store, key, LeaderRecord(id="a"), a_lease, my_id="a", lease_lost=lambda: False)
    assert not took
    a = LeaderGuardedStore(a_store, key)
    with pytest.raises(NotLeader):
        await a.put(prefix + "guest", b"before election")
    a.arm(a_rev)
    await a.put(prefix + "guest", b"a's")
    assert await a.delete(prefix + "absent") is False
    result = await a.txn([Compare.value(prefix + "guest", b"a's")], [Op.put(prefix + "guest", b"a's again")])
    assert result.succeeded
    assert not (await a.txn([Compare.value(prefix + "guest", b"other")], [Op.put(prefix + "guest", b"x")])).succeeded
    with pytest.raises(ValueError, match="failure ops"):
        await a.txn([], [Op.put(prefix + "guest", b"x")], [Op.put(prefix + "other", b"y")])

    async with LeaseKeeper(b_store, backend.min_ttl) as b_lease:
        standby = asyncio.create_task(campaign(b_store, key, LeaderRecord(id="b"), b_lease.id, my_id="b",
                                               lease_lost=b_lease.lost.is_set, poll=0.05))
        await asyncio.sleep(0.3)
        assert not standby.done(), "b must stand by while a's lease lives"
        await a_store.revoke(a_lease)  # a dies: its lease ends
        b_rev, _ = await asyncio.wait_for(standby, 5)
        assert b_rev != a_rev
        b = LeaderGuardedStore(b_store, key)
        b.arm(b_rev)
        await b.put(prefix + "guest", b"b's")
        # a, stalled through all of this, wakes up and tries to write: refused, nothing written
        for write in (a.put(prefix + "guest", b"stale"), a.delete(prefix + "guest"),
                      a.txn([], [Op.put(prefix + "guest", b"stale")]), a.revoke(b_lease.id)):
            with pytest.raises(NotLeader):
                await write
        assert not await a.still_leader() and await b.still_leader()
        kv = await b_store.get(prefix + "guest")
        assert kv is not None and kv.value == b"b's"


async def test_a_restart_with_the_same_id_takes_over_at_once_and_fences_its_previous_life(
        backend: Backend, prefix: str) -> None:
    old_store, new_store = backend.open(), backend.open()
    key = prefix + "leader"
    old_lease = await old_store.grant_lease(60)  # would stand for a minute
    old_rev, _ = await campaign(old_store, key, LeaderRecord(id="ctl@m", pid=1), old_lease, my_id="ctl@m",
                                lease_lost=lambda: False)
    old = LeaderGuardedStore(old_store, key)
    old.arm(old_rev)
    new_lease = await new_store.grant_lease(60)
    new_rev, took = await asyncio.wait_for(
        campaign(new_store, key, LeaderRecord(id="ctl@m", pid=2), new_lease, my_id="ctl@m", lease_lost=lambda: False), 5)
    assert took and new_rev != old_rev
    kv = await new_store.get(key)
    assert kv is not None and kv.lease == new_lease and json.loads(kv.value)["pid"] == 2
    with pytest.raises(NotLeader):
        await old.put(prefix + "guest", b"from the previous life")
    # another id is never taken over
    other_lease = await old_store.grant_lease(60)
    other = asyncio.create_task(campaign(old_store, key, LeaderRecord(id="other"), other_lease, my_id="other",
                                         lease_lost=lambda: False, poll=0.05))
    await asyncio.sleep(0.3)
    assert not other.done()
    other.cancel()
    for lease in (old_lease, new_lease, other_lease):
        await new_store.revoke(lease)


async def test_a_candidate_whose_own_lease_is_lost_stops_campaigning(backend: Backend, prefix: str) -> None:
    store = backend.open()
    key = prefix + "leader"
    holder = await store.grant_lease(60)
    await campaign(store, key, LeaderRecord(id="holder"), holder, my_id="holder", lease_lost=lambda: False)
    lost = asyncio.Event()
    mine = await store.grant_lease(60)
    task = asyncio.create_task(campaign(store, key, LeaderRecord(id="me"), mine, my_id="me", lease_lost=lost.is_set,
                                        poll=0.05))
    await asyncio.sleep(0.2)
    lost.set()
    with pytest.raises(Exception, match="lease was lost"):
        await asyncio.wait_for(task, 5)
    await store.revoke(holder)
    await store.revoke(mine)
