"""Controller leadership: the election, the leader lease's length, and leader-guarded writes.

Role: one controller leads a cluster at a time. It holds the ``leader`` key on a store lease
(etcd's election pattern): a candidate creates the key if it is missing (or takes over a record
of its own ``--id``: a restart on the same machine), and leads while its lease lives. Any other
controller process is a hot standby: it polls the key and leads as soon as the old lease runs out.

Two rules make a change of leader safe and quiet:

- **The leader lease is shorter than half the self-fence timeout** (``leader_lease_ttl``). An
  agent counts controller silence only while a leader record stands (docs/ha.md: it restarts
  its clock while there is none); a dead controller's record must therefore vanish well before
  the agents' timeout, or every agent stops its guests whenever a controller dies.
- **Every write of a leader is guarded** (``LeaderGuardedStore``): it runs in a transaction that
  also compares the leader key's create revision with the one this controller created. A
  controller that lost its lease — stalled for longer than the TTL, cut from the store — cannot
  reassign a guest, rewrite a balancer's backends or advance a failover after a successor has
  taken over: its writes fail with ``NotLeader`` and it steps down. (A takeover of its own
  record by the same ``--id`` deletes and re-creates the key, so it too changes the revision.)

Must not: decide anything about hosts or guests; re-grant a lost lease behind the owner's back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from nonstop.store.base import Compare, KeyValue, Op, Store, StoreError, TxnResult, Watch
from nonstop.store.records import LeaderRecord, RecordError, put_op

log = logging.getLogger("nonstop.controller.leadership")

MIN_LEADER_TTL = 2
"""etcd's own minimum with default election settings; shorter leases also expire whenever a
loaded machine stalls the controller or the store for a second, making it step down for nothing."""
MAX_LEADER_TTL = 5


def leader_lease_ttl(self_fence_timeout: float) -> int:
    """Seconds of the leader lease: under half the agents' self-fence timeout, 2–5 s
    (a self-fence timeout under 5 s cannot keep the half rule; docs/ha.md)."""
    return max(MIN_LEADER_TTL, min(MAX_LEADER_TTL, int(self_fence_timeout / 2 - 0.01)))


class NotLeader(StoreError):
    """A guarded write found that this controller no longer holds the leader key."""


class LeaderGuardedStore(Store):
    """A ``Store`` whose writes succeed only while the leader key is the one this controller
    created (``arm(create_revision)`` after winning the election; before that every write
    raises ``NotLeader``). Reads, watches and leases pass through unchanged."""

    def __init__(self, inner: Store, leader_key: str) -> None:
        self.inner = inner
        self.url = inner.url
        self.leader_key = leader_key
        self.create_revision = 0

    def arm(self, create_revision: int) -> None:
        self.create_revision = create_revision

    def _guard(self) -> Compare:
        if not self.create_revision:
            raise NotLeader("not elected yet")
        return Compare(self.leader_key, "create_revision", "==", self.create_revision)

    async def still_leader(self) -> bool:
        kv = await self.inner.get(self.leader_key)
        return kv is not None and self.create_revision != 0 and kv.create_revision == self.create_revision

    async def _refused(self) -> None:
        """After a failed guarded transaction: raise ``NotLeader`` if the guard was what failed."""
        if not await self.still_leader():
            raise NotLeader(f"{self.leader_key} is no longer ours (created at revision {self.create_revision})")

    # --- writes, guarded -------------------------------------------------------------------

    async def put(self, key: str, value: bytes, lease: int | None = None) -> int:
        result = await self.inner.txn([self._guard()], [Op.put(key, value, lease)])
        if not result.succeeded:
            await self._refused()
            raise StoreError(f"guarded put of {key} failed")  # pragma: no cover - the guard is the only compare
        return result.revision

    async def delete(self, key: str) -> bool:
        result = await self.inner.txn([self._guard(), Compare.exists(key)], [Op.delete(key)])
        if not result.succeeded:
            await self._refused()
        return result.succeeded

    async def delete_prefix(self, prefix: str) -> int:
        if not await self.still_leader():
            raise NotLeader(f"{self.leader_key} is no longer ours")
        found = len(await self.inner.list(prefix))
        result = await self.inner.txn([self._guard()], [Op.delete_prefix(prefix)])
        if not result.succeeded:
            await self._refused()
        return found

    async def txn(self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()) -> TxnResult:
        if failure:
            # The failure branch would also run when only the guard failed: an unguarded write.
            raise ValueError("a leader-guarded transaction cannot have failure ops")
        result = await self.inner.txn([self._guard(), *compares], success)
        if not result.succeeded:
            await self._refused()
        return result

    async def revoke(self, lease_id: int) -> None:
        # Not a key write, so no transaction can guard it: checked just before (it only ever
        # releases a fenced host's locks, which a successor would release as well).
        if not await self.still_leader():
            raise NotLeader(f"{self.leader_key} is no longer ours")
        await self.inner.revoke(lease_id)

    # --- everything else, unchanged --------------------------------------------------------

    async def get(self, key: str) -> KeyValue | None:
        return await self.inner.get(key)

    async def list(self, prefix: str) -> list[KeyValue]:
        return await self.inner.list(prefix)

    def watch(self, prefix: str, start_revision: int | None = None) -> Watch:
        return self.inner.watch(prefix, start_revision)

    async def grant_lease(self, ttl_seconds: int) -> int:
        return await self.inner.grant_lease(ttl_seconds)

    async def keepalive(self, lease_id: int) -> bool:
        return await self.inner.keepalive(lease_id)

    async def revision(self) -> int:
        return await self.inner.revision()

    async def compact(self, revision: int) -> None:
        await self.inner.compact(revision)

    async def close(self) -> None:
        """The inner store belongs to whoever opened it."""


async def campaign(store: Store, key: str, record: LeaderRecord, lease: int, *, my_id: str,
                   lease_lost: Callable[[], bool], poll: float = 0.25) -> tuple[int, bool]:
    """Wait until this controller holds ``key`` on ``lease``; the key's create revision and
    whether it took over its own previous record.

    Creates the key when it is missing; a record with our own ``my_id`` on another lease (our
    previous life, a restart on this machine) is deleted and re-created at once instead of
    waited out. Any other holder is waited out (hot standby).
    Raises ``StoreError`` when ``lease_lost()`` turns true while waiting."""
    waiting_logged = took_over = False
    while True:
        if lease_lost():
            raise StoreError("the candidate's own lease was lost while waiting to lead")
        won = await store.txn([Compare.missing(key)], [put_op(key, record, lease=lease)])
        current = await store.get(key)
        if won.succeeded and current is not None and current.lease == lease:
            return current.create_revision, took_over
        if current is not None and current.lease != lease and _holder(current) == my_id:
            # Deleted, not overwritten: the record is created anew, so its create revision —
            # what guards every write — changes, and a previous life still running cannot write.
            deleted = await store.txn([Compare.mod_revision(key, current.mod_revision)], [Op.delete(key)])
            took_over = took_over or deleted.succeeded
            continue
        if not waiting_logged:
            log.info("%s holds %s; standing by until its lease ends", _holder(current) if current else "?", key)
            waiting_logged = True
        await asyncio.sleep(poll)

def _holder(kv: KeyValue) -> str | None:
    try:
        return LeaderRecord.decode(kv.value).id or None
    except RecordError:
        return None

