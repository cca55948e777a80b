"""The agent's self-fence when the store stops answering (the SQLite store, the fake driver).

A cut network does not make a store call fail, it makes it hang until the client's own deadline
(5 s for etcd). The lease check must not wait that long: it gives up after half the self-fence
timeout, says so in the log, and the agent fences on the lease going stale.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from nonstop.agent.selffence import FenceGate, SelfFence
from nonstop.drivers.fake import FakeDriver
from nonstop.store import keys, open_store
from nonstop.store.base import Store


class StallingStore:
    """A real store whose reads hang while ``stalled`` is set (as a call over a cut link does)."""

    def __init__(self, store: Store) -> None:
        self.store, self.stalled = store, False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    async def get(self, key: str) -> Any:
        while self.stalled:
            await asyncio.sleep(0.01)
        return await self.store.get(key)


class AckedHeartbeats:
    """The controller keeps acknowledging: only the store goes quiet."""

    self_fence_timeout = 1.0
    leader_since = None

    def last_ack(self) -> float:
        return time.monotonic()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = open_store(f"sqlite:///{tmp_path}/state.db")
    yield s
    await s.close()


async def test_a_stalled_store_is_logged_and_fences_on_the_lease(store: Store, tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    cluster, host = f"sf{secrets.token_hex(3)}", "h1"
    lease = await store.grant_lease(30)
    await store.put(keys.host_alive(cluster, host), b"1", lease=lease)
    stalling = StallingStore(store)
    gate = FenceGate()
    driver = FakeDriver(cluster=cluster, host=host, state_dir=tmp_path / host)
    fence = SelfFence(stalling, cluster=cluster, host=host, drivers={"process": driver}, gate=gate,  # type: ignore[arg-type]
                      heartbeats=AckedHeartbeats(), lease=lambda: lease)  # type: ignore[arg-type]
    caplog.set_level(logging.WARNING, logger="nonstop.agent.selffence")
    task = asyncio.create_task(fence.run())
    try:
        await asyncio.sleep(0.7)
        assert not gate.fenced, gate.reason
        stalling.stalled = True
        cut = time.monotonic()
        while not gate.fenced and time.monotonic() - cut < 3.0:
            await asyncio.sleep(0.02)
        assert gate.fenced and "store lease not renewed" in gate.reason, gate.reason
        assert time.monotonic() - cut < 1.8, "fenced on the lease within the timeout (+ one check period)"
        assert any("lease check: the store did not answer within 0.5 s" in r.getMessage() for r in caplog.records), \
            [r.getMessage() for r in caplog.records]
        stalling.stalled = False
        healed = time.monotonic()
        while gate.fenced and time.monotonic() - healed < 3.0:
            await asyncio.sleep(0.02)
        assert not gate.fenced, "the fence lifts once the lease is read back again"
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
